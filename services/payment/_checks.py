"""Pure checks and decisions over the payment statements.

Two audiences:

- the **bank** checks what it is asked to act on (``check_transfer_order``,
  ``check_cheque``, ``check_refund_order``), decides with its own state passed in
  (``decide_transfer``, ``decide_cheque_deposit``, ``decide_refund``), posts the
  journal entry, then signs the body that ``confirm_transfer``, ``clear_cheque`` or
  ``confirm_refund`` builds;
- the **payer and payee** verify, offline, what a bank or a payer signed
  (``verify_transfer_confirmation``, ``verify_cheque``, ``verify_cheque_cleared``,
  ``verify_refund_confirmation``).

Every check first runs ``verify_statement`` (signature, signer's certificate under
the market root and CRL, type), whose ``statement.*`` and ``auth.*`` errors pass
through unchanged; then the body's schema; then the signer; then each expected
field in the order of the body, naming the first that differs in ``detail["field"]``.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Final, TypeVar

from cryptography import x509

from ..certificates import AgentIdentity
from ..money import Amount
from ..statements import Statement, verify_statement
from ._errors import (
    BadCheque,
    BadConfirmation,
    BadRequest,
    ChequeExpired,
    ChequeReused,
    ChequeStopped,
    InsufficientFunds,
    PaymentError,
    RefundExceedsPayment,
    WrongCurrency,
    WrongPayee,
)
from ._idempotency import request_digest
from ._schema import (
    Cheque,
    ChequeCleared,
    RefundConfirmation,
    RefundOrder,
    TransferConfirmation,
    TransferOrder,
    _Body,
)

__all__ = [
    "BANK_ROLE",
    "Cleared",
    "check_cheque",
    "check_refund_order",
    "check_transfer_order",
    "cheque_retry_digest",
    "clear_cheque",
    "confirm_refund",
    "confirm_transfer",
    "decide_cheque_deposit",
    "decide_refund",
    "decide_transfer",
    "is_cheque_retry",
    "verify_cheque",
    "verify_cheque_cleared",
    "verify_refund_confirmation",
    "verify_transfer_confirmation",
]

#: The certificate role of the agents whose statements say that money moved.
BANK_ROLE: Final = "bank"

_EPOCH: Final = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
B = TypeVar("B", bound=_Body)
Trust = tuple[x509.Certificate, x509.CertificateRevocationList, dt.datetime]


# -- the bank: what it is asked to act on ---------------------------------------------


def check_transfer_order(
    order: Statement,
    *,
    payer_certificate: x509.Certificate,
    root: x509.Certificate,
    crl: x509.CertificateRevocationList,
    now: dt.datetime,
    bank_id: str,
    requester: str,
) -> TransferOrder:
    """The bank's check of the order in a ``bank.transfer`` from channel peer ``requester``.

    Returns:
        The order's typed body.

    Raises:
        StatementError, CertificateError: from ``verify_statement``.
        BadRequest: a malformed body; signed by, or naming as payer, another agent than
            ``requester``; drawn on another bank. ``detail["field"]`` says which.
    """
    body, signer = _verified(order, TransferOrder, payer_certificate, (root, crl, now), BadRequest)
    _require(signer.agent_id == requester, BadRequest, body, "signer",
             f"signed by {signer.agent_id}, not by the requester {requester}")
    _require(body.payer == requester, BadRequest, body, "payer", "the payer is not the signer")
    _require(body.bank == bank_id, BadRequest, body, "bank", f"drawn on {body.bank}")
    return body


def decide_transfer(order: TransferOrder, *, balance: Amount) -> None:
    """Whether the payer's ``balance`` (its account in the order's currency) covers it.

    Raises:
        WrongCurrency: ``balance`` is of another currency.
        InsufficientFunds: ``balance`` is below the amount.
    """
    _cover(order.amount, balance)


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


def check_refund_order(
    refund_order: Statement,
    *,
    certificate: x509.Certificate,
    root: x509.Certificate,
    crl: x509.CertificateRevocationList,
    now: dt.datetime,
    requester: str,
) -> RefundOrder:
    """The bank's check of a ``bank.refund`` order from channel peer ``requester``.
    Whether ``original`` is a payment to the requester, and how much of it remains,
    is the bank's lookup, then ``decide_refund``.

    Raises:
        StatementError, CertificateError: from ``verify_statement``.
        BadRequest: a malformed body; signed by, or naming as payer, another agent
            than ``requester``; ``detail["field"]``.
    """
    body, signer = _verified(refund_order, RefundOrder, certificate, (root, crl, now), BadRequest)
    _require(signer.agent_id == requester, BadRequest, body, "signer",
             f"signed by {signer.agent_id}, not by the requester {requester}")
    _require(body.payer == requester, BadRequest, body, "payer", "the payer is not the signer")
    return body


def decide_refund(original_amount: Amount, refunded_so_far: Amount, requested: Amount) -> Amount:
    """Whether ``requested`` may be refunded of a payment of ``original_amount`` of
    which ``refunded_so_far`` was refunded already.

    Returns:
        The total refunded once this refund is applied.

    Raises:
        BadRequest: ``requested`` is not positive (``field`` ``"amount"``).
        WrongCurrency: the three amounts are not of one currency.
        RefundExceedsPayment: more than ``original_amount - refunded_so_far``;
            ``detail`` has ``original``, ``refunded``, ``requested`` and
            ``refundable`` (amounts, wire form).
    """
    for amount in (refunded_so_far, requested):
        if amount.currency != original_amount.currency:
            raise WrongCurrency(
                f"a refund in {amount.currency} of a payment in {original_amount.currency}",
                detail={"expected": original_amount.currency, "currency": amount.currency})
    if requested.minor_units <= 0:
        raise BadRequest("a refund is of a positive amount", detail={"field": "amount"})
    refundable = original_amount - refunded_so_far
    if requested > refundable:
        raise RefundExceedsPayment(
            f"{requested} asked, {refundable} of {original_amount} remains refundable",
            detail={"original": original_amount.to_wire(), "refunded": refunded_so_far.to_wire(),
                    "requested": requested.to_wire(), "refundable": refundable.to_wire()})
    return refunded_so_far + requested


# -- the bank: what it signs ----------------------------------------------------------


def confirm_transfer(order: Statement, entry: int) -> TransferConfirmation:
    """The body the bank signs after posting ``order`` (already checked) as ``entry``."""
    body = TransferOrder.from_statement(order)
    return TransferConfirmation(order=order.digest, payer=body.payer, payee=body.payee,
                                amount=body.amount, reference=body.reference, entry=entry)


def clear_cheque(cheque: Statement, entry: int) -> ChequeCleared:
    """The body the bank signs after paying ``cheque`` (already checked) as ``entry``."""
    body = Cheque.from_statement(cheque)
    return ChequeCleared(cheque=cheque.digest, payer=body.payer, payee=body.payee,
                         amount=body.amount, serial=body.serial, entry=entry)


def confirm_refund(refund_order: Statement, entry: int) -> RefundConfirmation:
    """The body the bank signs after posting ``refund_order`` (already checked)."""
    body = RefundOrder.from_statement(refund_order)
    return RefundConfirmation(refund_order=refund_order.digest, original=body.original,
                              payer=body.payer, payee=body.payee, amount=body.amount,
                              entry=entry)


# -- payer and payee: verifying offline -----------------------------------------------


def verify_transfer_confirmation(
    confirmation: Statement,
    *,
    bank_certificate: x509.Certificate,
    root: x509.Certificate,
    crl: x509.CertificateRevocationList,
    now: dt.datetime,
    expected_payee: str,
    expected_amount: Amount,
    expected_reference: bytes,
    expected_payer: str | None = None,
    expected_order: bytes | None = None,
    expected_bank: str | None = None,
) -> TransferConfirmation:
    """Check, offline, that a bank confirmed a transfer of ``expected_amount`` to
    ``expected_payee`` for ``expected_reference``. ``None`` means "any".

    Raises:
        StatementError, CertificateError: from ``verify_statement`` (a tampered
            confirmation is ``statement.bad_signature``).
        BadConfirmation: a malformed body, a signer whose certificate role is not
            ``bank`` (or not ``expected_bank``), or a field other than expected;
            ``detail["field"]`` names it (``signer``, ``order``, ``payer``, ``payee``,
            ``amount``, ``reference``).
    """
    body = _from_bank(confirmation, TransferConfirmation, bank_certificate, (root, crl, now),
                      expected_bank)
    _expect(body, BadConfirmation, order=expected_order, payer=expected_payer,
            payee=expected_payee, amount=expected_amount, reference=expected_reference)
    return body


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


def verify_refund_confirmation(
    confirmation: Statement,
    *,
    bank_certificate: x509.Certificate,
    root: x509.Certificate,
    crl: x509.CertificateRevocationList,
    now: dt.datetime,
    expected_original: bytes,
    expected_payee: str,
    expected_amount: Amount,
    expected_refund_order: bytes | None = None,
    expected_bank: str | None = None,
) -> RefundConfirmation:
    """Check, offline, that a bank refunded ``expected_amount`` of the payment whose
    settlement digest is ``expected_original`` to ``expected_payee`` (who paid it).

    Raises:
        StatementError, CertificateError: from ``verify_statement``.
        BadConfirmation: a malformed body, a signer not a ``bank`` (or not
            ``expected_bank``), or a field other than expected; ``detail["field"]``.
    """
    body = _from_bank(confirmation, RefundConfirmation, bank_certificate, (root, crl, now),
                      expected_bank)
    _expect(body, BadConfirmation, refund_order=expected_refund_order,
            original=expected_original, payee=expected_payee, amount=expected_amount)
    return body


# -- helpers --------------------------------------------------------------------------


def _verified(
    statement: Statement, schema: type[B], certificate: x509.Certificate, trust: Trust,
    error: type[PaymentError],
) -> tuple[B, AgentIdentity]:
    root, crl, now = trust
    identity = verify_statement(statement, certificate=certificate, root=root, crl=crl, now=now,
                                expected_type=schema.TYPE)
    try:
        return schema.from_body(statement.body), identity
    except BadRequest as exc:
        if error is BadRequest:
            raise
        raise error(exc.message, detail=exc.detail) from None


def _from_bank(
    statement: Statement, schema: type[B], certificate: x509.Certificate, trust: Trust,
    expected_bank: str | None,
) -> B:
    body, signer = _verified(statement, schema, certificate, trust, BadConfirmation)
    if signer.role != BANK_ROLE or expected_bank not in (None, signer.agent_id):
        raise BadConfirmation(
            f"{schema.TYPE} signed by {signer.agent_id} (role {signer.role}), "
            f"not by {expected_bank or 'a bank'}",
            detail={"type": schema.TYPE, "field": "signer", "signer": signer.agent_id})
    return body


def _expect(body: _Body, error: type[PaymentError], **expected: object) -> None:
    """Compare fields with their expected values (None: not checked), in order."""
    for name, wanted in expected.items():
        if wanted is not None:
            _require(getattr(body, name) == wanted, error, body, name,
                     f"{name} is not the one expected")


def _require(ok: bool, error: type[PaymentError], body: _Body, field: str, why: str) -> None:
    if not ok:
        raise error(f"{body.TYPE}: {why}", detail={"type": body.TYPE, "field": field})


def _cover(amount: Amount, balance: Amount) -> None:
    if balance.currency != amount.currency:
        raise WrongCurrency(f"{amount.currency} cannot be paid from a {balance.currency} balance",
                            detail={"expected": balance.currency, "currency": amount.currency})
    if balance < amount:
        raise InsufficientFunds(f"the balance does not cover {amount}",
                                detail={"amount": amount.to_wire()})


def _ms(when: dt.datetime) -> int:
    if when.tzinfo is None:
        raise ValueError("now must be timezone-aware (UTC)")
    return (when - _EPOCH) // dt.timedelta(milliseconds=1)
