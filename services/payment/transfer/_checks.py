"""Pure checks and decisions over the transfer statements (the rules of
``services.payment._checks`` apply: ``verify_statement`` first, then the body, the
signer, and each expected field in body order).

The bank checks a ``bank.transfer`` (``check_transfer_order``), decides with the
payer's balance passed in (``decide_transfer``), posts the entry and signs what
``confirm_transfer`` builds; payer and payee verify that offline
(``verify_transfer_confirmation``).
"""

from __future__ import annotations

import datetime as dt

from cryptography import x509

from ...money import Amount
from ...statements import Statement
from .._checks import _cover, _expect, _from_bank, _require, _verified
from .._errors import BadConfirmation, BadRequest
from ._schema import TransferConfirmation, TransferOrder

__all__ = [
    "check_transfer_order",
    "confirm_transfer",
    "decide_transfer",
    "verify_transfer_confirmation",
]


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


def confirm_transfer(order: Statement, entry: int) -> TransferConfirmation:
    """The body the bank signs after posting ``order`` (already checked) as ``entry``."""
    body = TransferOrder.from_statement(order)
    return TransferConfirmation(order=order.digest, payer=body.payer, payee=body.payee,
                                amount=body.amount, reference=body.reference, entry=entry)


def verify_transfer_confirmation(
    confirmation: Statement,
    *,
    bank_certificate: x509.Certificate,
    root: x509.Certificate,
    crl: x509.CertificateRevocationList,
    now: dt.datetime,
    expected_payee: str,
    expected_amount: Amount | None,
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
