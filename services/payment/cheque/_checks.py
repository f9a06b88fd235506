"""Pure checks and decisions over the cheque statements (the rules of
``services.payment._checks`` apply: ``verify_statement`` first, then the body, the
signer, and each expected field in body order).

The bank checks a deposited cheque (``check_cheque``), recognises a retry
(``is_cheque_retry``, ``cheque_retry_digest``), decides with its own state passed in
(``decide_cheque_deposit``), posts the entry and signs what ``clear_cheque`` builds;
the payee checks a cheque handed to it (``verify_cheque``), and both sides verify the
cleared statement offline (``verify_cheque_cleared``).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from cryptography import x509

from ...money import Amount
from ...statements import Statement
from .._checks import _cover, _expect, _from_bank, _ms, _require, _verified
from .._errors import BadConfirmation, BadRequest, WrongPayee
from .._idempotency import request_digest
from ._errors import BadCheque, ChequeExpired, ChequeReused, ChequeStopped
from ._schema import Cheque, ChequeCleared

__all__ = [
    "Cleared",
    "check_cheque",
    "cheque_retry_digest",
    "clear_cheque",
    "decide_cheque_deposit",
    "is_cheque_retry",
    "verify_cheque",
    "verify_cheque_cleared",
]


def check_cheque(
    cheque: Statement,
    *,
    drawer_certificate: x509.Certificate,
    root: x509.Certificate,
    crl: x509.CertificateRevocationList,
    now: dt.datetime,
    bank_id: str,
) -> Cheque:
    """The bank's check of a deposited cheque: signed by its payer, drawn on us.
    Whether it clears is ``decide_cheque_deposit``'s question.

    Raises:
        StatementError, CertificateError: from ``verify_statement``.
        BadRequest: a malformed body, a signer other than the cheque's payer, or a
            cheque drawn on another bank; ``detail["field"]``.
    """
    body, signer = _verified(cheque, Cheque, drawer_certificate, (root, crl, now), BadRequest)
    _require(signer.agent_id == body.payer, BadRequest, body, "payer",
             f"signed by {signer.agent_id}, not by its payer")
    _require(body.bank == bank_id, BadRequest, body, "bank", f"drawn on {body.bank}")
    return body


@dataclass(frozen=True, slots=True, kw_only=True)
class Cleared:
    """The bank's decision to pay a cheque: debit ``cheque.payer``, credit
    ``cheque.payee``, ``cheque.amount``; then sign ``clear_cheque(...)``."""

    cheque: Cheque


def decide_cheque_deposit(
    cheque: Cheque,
    *,
    depositor: str,
    now_ms: int,
    balance: Amount,
    stopped: bool,
    already_cleared: bool,
) -> Cleared:
    """Clear or bounce a cheque deposited by ``depositor`` (the channel peer).

    The order of the checks is part of the contract: someone other than the payee
    learns nothing about the cheque's state or the payer's balance.

    Args:
        balance: the payer's balance in the cheque's currency.
        stopped: the payer stopped this serial.
        already_cleared: a cheque with this payer's serial cleared before. (A retry,
            ``is_cheque_retry``, is answered with the stored ``payment.cheque_cleared``
            before this is called.)

    Raises:
        WrongPayee: ``depositor`` is not the cheque's payee.
        ChequeReused: the serial cleared before.
        ChequeStopped: the payer stopped the serial.
        ChequeExpired: ``now_ms`` is after ``expires_at``.
        WrongCurrency: ``balance`` is of another currency than the cheque.
        InsufficientFunds: ``balance`` is below the amount.
    """
    serial = {"serial": cheque.serial}
    if depositor != cheque.payee:
        raise WrongPayee(f"the cheque is payable to {cheque.payee}, not to {depositor}",
                         detail={"payee": cheque.payee, "depositor": depositor})
    if already_cleared:
        raise ChequeReused(f"cheque serial {cheque.serial} of {cheque.payer} cleared before",
                           detail=serial)
    if stopped:
        raise ChequeStopped(f"cheque serial {cheque.serial} was stopped by its payer",
                            detail=serial)
    if now_ms > cheque.expires_at:
        raise ChequeExpired(f"the cheque expired at {cheque.expires_at} (Unix ms)",
                            detail={**serial, "expires_at": cheque.expires_at, "now_ms": now_ms})
    _cover(cheque.amount, balance)
    return Cleared(cheque=cheque)


def cheque_retry_digest(cheque: Cheque) -> bytes:
    """What a bank stores beside a cleared serial to recognise a retry: the digest
    (``request_digest``) of the cheque's body without ``expires_at``, which a payer
    re-signing the same cheque after a crash cannot reproduce."""
    body = cheque.to_body()
    del body["expires_at"]
    return request_digest(body)


def is_cheque_retry(cheque: Cheque, *, depositor: str, stored_digest: bytes | None) -> bool:
    """Whether this deposit repeats one that cleared: the same payee deposits a cheque
    with the cleared serial and the same content (``stored_digest`` is what the bank
    stored for the payer's serial, None if it never cleared). Then the bank answers
    the stored ``payment.cheque_cleared`` and moves nothing; otherwise it calls
    ``decide_cheque_deposit(..., already_cleared=stored_digest is not None)``."""
    return (stored_digest is not None and depositor == cheque.payee
            and stored_digest == cheque_retry_digest(cheque))


def clear_cheque(cheque: Statement, entry: int) -> ChequeCleared:
    """The body the bank signs after paying ``cheque`` (already checked) as ``entry``."""
    body = Cheque.from_statement(cheque)
    return ChequeCleared(cheque=cheque.digest, payer=body.payer, payee=body.payee,
                         amount=body.amount, serial=body.serial, entry=entry)


def verify_cheque(
    cheque: Statement,
    *,
    drawer_certificate: x509.Certificate,
    root: x509.Certificate,
    crl: x509.CertificateRevocationList,
    now: dt.datetime,
    expected_payee: str,
    expected_amount: Amount,
    expected_reference: bytes,
    expected_payer: str | None = None,
) -> Cheque:
    """The payee's check of a cheque handed to it, before depositing it.

    Raises:
        StatementError, CertificateError: from ``verify_statement``.
        BadCheque: a malformed body, signed by another agent than its payer, or a
            payer, amount or reference other than expected; ``detail["field"]``.
        WrongPayee: payable to another agent than ``expected_payee``.
        ChequeExpired: ``now`` is after ``expires_at``.
    """
    body, signer = _verified(cheque, Cheque, drawer_certificate, (root, crl, now), BadCheque)
    _require(signer.agent_id == body.payer, BadCheque, body, "payer",
             f"signed by {signer.agent_id}, not by its payer {body.payer}")
    _expect(body, BadCheque, payer=expected_payer)
    if body.payee != expected_payee:
        raise WrongPayee(f"the cheque is payable to {body.payee}, not to {expected_payee}",
                         detail={"payee": body.payee, "depositor": expected_payee})
    _expect(body, BadCheque, amount=expected_amount, reference=expected_reference)
    now_ms = _ms(now)
    if now_ms > body.expires_at:
        raise ChequeExpired(f"the cheque expired at {body.expires_at} (Unix ms)",
                            detail={"serial": body.serial, "expires_at": body.expires_at,
                                    "now_ms": now_ms})
    return body


def verify_cheque_cleared(
    cleared: Statement,
    *,
    bank_certificate: x509.Certificate,
    root: x509.Certificate,
    crl: x509.CertificateRevocationList,
    now: dt.datetime,
    expected_payee: str,
    expected_amount: Amount,
    expected_serial: str | None = None,
    expected_payer: str | None = None,
    expected_cheque: bytes | None = None,
    expected_bank: str | None = None,
) -> ChequeCleared:
    """Check, offline, that a bank cleared a cheque of ``expected_amount`` to
    ``expected_payee``. ``None`` means "any".

    A retried cheque (re-signed by its payer with the same serial and content) is
    answered with the cleared statement of the first one, whose ``cheque`` digest is
    the first one's: match a retry by ``expected_payer`` and ``expected_serial``,
    which the bank clears once, rather than by ``expected_cheque``.

    Raises:
        StatementError, CertificateError: from ``verify_statement``.
        BadConfirmation: a malformed body, a signer not a ``bank`` (or not
            ``expected_bank``), or a field other than expected; ``detail["field"]``.
    """
    body = _from_bank(cleared, ChequeCleared, bank_certificate, (root, crl, now), expected_bank)
    _expect(body, BadConfirmation, cheque=expected_cheque, payer=expected_payer,
            payee=expected_payee, amount=expected_amount, serial=expected_serial)
    return body
