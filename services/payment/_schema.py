"""The bodies of the payment statements, typed, and how they travel.

Every payment statement is a ``services.statements`` statement whose ``body`` is
one of the maps below; each field's wire key is the attribute's name, and a body
has exactly its keys. Money is ``{"currency": str, "minor_units": int}``
(``Amount.to_wire``), always positive. Digests are SHA-256 of a statement's
canonical bytes (``Statement.digest``), so a confirmation names exactly the one
statement it answers, signature included.

    payment.refund_order          original payee -> its bank: "give this back"
        original: digest of the settlement refunded (a transfer confirmation or a
        cleared cheque); payer: the original payee; payee: the original payer;
        amount; reason: str; idempotency_key
    payment.refund_confirmation   bank -> original payee (and on to the payer)
        refund_order: digest of the refund order; original; payer; payee; amount; entry

The bodies are ``services._schema`` bodies (``PaymentBody``): ``SCHEMA`` gives each
shared key its one kind. Each instrument's own statements are bodies of this kind
in its package (``services.payment.<instrument>._schema``), whose schema is this one
plus the keys only it uses.

Construction validates every field and raises ``BadRequest`` (``payment.bad_request``)
with ``detail`` ``{"type", "field"}``: these values are built from hostile bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Final

from .._schema import (
    AGENT,
    DIGEST,
    IDEMPOTENCY_KEY,
    MAX_IDEMPOTENCY_KEY,
    MAX_INT64,
    MAX_REASON,
    Body,
    Schema,
    amount,
    binary,
    integer,
    text,
)
from ..money import Amount, BadAmount
from ._errors import BadRequest

__all__ = [
    "AMOUNT",
    "MAX_AMOUNT",
    "MAX_IDEMPOTENCY_KEY",
    "MAX_REASON",
    "MAX_REFERENCE",
    "REFUND_CONFIRMATION",
    "REFUND_ORDER",
    "SCHEMA",
    "PaymentBody",
    "RefundConfirmation",
    "RefundOrder",
    "amount_from_wire",
    "check_idempotency_key",
]

REFUND_ORDER: Final = "payment.refund_order"
REFUND_CONFIRMATION: Final = "payment.refund_confirmation"

#: Minor units of one payment, inclusive: what fits a signed 64-bit journal column.
MAX_AMOUNT: Final = MAX_INT64
#: Bytes of a reference (a digest is 32).
MAX_REFERENCE: Final = 256

#: A payment's amount: positive, at most ``MAX_AMOUNT`` minor units.
AMOUNT: Final = amount(MAX_AMOUNT)

#: The kind of every key the shared statements use: a key means the same in every
#: payment statement. An instrument's schema adds its own keys to these.
SCHEMA: Final = Schema(BadRequest, {
    "payer": AGENT, "payee": AGENT, "bank": AGENT,
    "amount": AMOUNT,
    "original": DIGEST, "refund_order": DIGEST,
    "reference": binary(1, MAX_REFERENCE),
    "idempotency_key": IDEMPOTENCY_KEY,
    "entry": integer(0, MAX_AMOUNT, "a non-negative journal entry id"),
    "reason": text(MAX_REASON, empty=True),
})


def check_idempotency_key(key: object) -> str:
    """Return ``key`` if it is 1 to 128 printable ASCII characters (0x20-0x7E).

    Raises:
        BadRequest: anything else; ``detail["field"]`` is ``"idempotency_key"``.
    """
    if not IDEMPOTENCY_KEY.check(key):
        raise BadRequest(f"an idempotency key is 1 to {MAX_IDEMPOTENCY_KEY} printable ASCII "
                         f"characters, got {key!r:.80}", detail={"field": "idempotency_key"})
    return key  # type: ignore[return-value]  # checked: a str


def amount_from_wire(value: object) -> Amount:
    """Read ``{"currency": str, "minor_units": int}``.

    Raises:
        BadAmount: not exactly that map, or not a valid amount.
    """
    if type(value) is not dict or set(value) != {"currency", "minor_units"}:
        raise BadAmount("an amount is {currency, minor_units}")
    return Amount(value["currency"], value["minor_units"])


class PaymentBody(Body):
    """A payment statement's body (``services._schema.Body``): its keys' kinds come
    from ``SCHEMA`` (an instrument's bodies set their package's), its refusals are
    ``payment.bad_request``, and nobody pays themselves."""

    __slots__ = ()
    SCHEMA: ClassVar[Schema] = SCHEMA
    payer: str  # every payment body has both (declared, not fields: not a dataclass)
    payee: str

    def _check(self) -> None:
        if self.payer == self.payee:
            self.SCHEMA.fail(self.TYPE, "payee", "and payer must be different agents")


@dataclass(frozen=True, slots=True, kw_only=True)
class RefundOrder(PaymentBody):
    """``payment.refund_order``, signed by ``payer`` (who was paid by ``original``):
    give ``amount`` of it back to ``payee`` (who paid). The bank applies one refund
    per ``(payer, idempotency_key)``."""

    TYPE: ClassVar[str] = REFUND_ORDER

    original: bytes
    payer: str
    payee: str
    amount: Amount
    reason: str
    idempotency_key: str


@dataclass(frozen=True, slots=True, kw_only=True)
class RefundConfirmation(PaymentBody):
    """``payment.refund_confirmation``, signed by the bank: ``refund_order`` was
    applied as journal entry ``entry``."""

    TYPE: ClassVar[str] = REFUND_CONFIRMATION

    refund_order: bytes
    original: bytes
    payer: str
    payee: str
    amount: Amount
    entry: int
