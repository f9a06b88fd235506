"""Pure checks and decisions over the shared payment statements (refunds), and the
helpers every instrument's checks are written with.

Two audiences:

- the **bank** checks what it is asked to act on (``check_refund_order``), decides
  with its own state passed in (``decide_refund``), posts the journal entry, then
  signs the body that ``confirm_refund`` builds;
- the **payer and payee** verify, offline, what a bank signed
  (``verify_refund_confirmation``).

Each instrument's package does the same for its own statements, with the helpers
below, so that every check of every instrument follows one order: first
``verify_statement`` (signature, signer's certificate under the market root and CRL,
type), whose ``statement.*`` and ``auth.*`` errors pass through unchanged; then the
body's schema; then the signer; then each expected field in the order of the body,
naming the first that differs in ``detail["field"]``.
"""

from __future__ import annotations

import datetime as dt
from typing import Final, TypeVar

from cryptography import x509

from .._schema import Body
from ..certificates import AgentIdentity
from ..money import Amount
from ..statements import Statement, verify_statement
from ._errors import (
    BadConfirmation,
    BadRequest,
    InsufficientFunds,
    PaymentError,
    RefundExceedsPayment,
    WrongCurrency,
)
from ._schema import PaymentBody, RefundConfirmation, RefundOrder

__all__ = [
    "BANK_ROLE",
    "check_refund_order",
    "confirm_refund",
    "decide_refund",
    "verify_refund_confirmation",
]

#: The certificate role of the agents whose statements say that money moved.
BANK_ROLE: Final = "bank"

_EPOCH: Final = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
B = TypeVar("B", bound=PaymentBody)
Trust = tuple[x509.Certificate, x509.CertificateRevocationList, dt.datetime]


# -- the bank: what it is asked to act on ---------------------------------------------


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


def confirm_refund(refund_order: Statement, entry: int) -> RefundConfirmation:
    """The body the bank signs after posting ``refund_order`` (already checked)."""
    body = RefundOrder.from_statement(refund_order)
    return RefundConfirmation(refund_order=refund_order.digest, original=body.original,
                              payer=body.payer, payee=body.payee, amount=body.amount,
                              entry=entry)


# -- payer and payee: verifying offline -----------------------------------------------


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


def _expect(body: Body, error: type[PaymentError], **expected: object) -> None:
    """Compare fields with their expected values (None: not checked), in order."""
    for name, wanted in expected.items():
        if wanted is not None:
            _require(getattr(body, name) == wanted, error, body, name,
                     f"{name} is not the one expected")


def _require(ok: bool, error: type[PaymentError], body: Body, field: str, why: str) -> None:
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
