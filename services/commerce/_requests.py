"""The request bodies of the ``commerce`` ops (protocol.md 9.5), typed, so that the
seller's handlers get a decoded, checked request (``services._ops.Op``).

They are ``services._schema`` bodies on ``REQUESTS``, whose error is the payment
layer's ``payment.bad_request`` (the code these ops have always answered a bad body
with; ``commerce.bad_body`` is for a statement's body). Each keeps the op's rule
about keys: ``commerce.order`` takes exactly ``{order}``; ``commerce.fetch`` and
``commerce.refund`` ignore keys they do not know (a newer buyer may send more);
``commerce.catalogue`` ignores its body. The statements inside are checked by the
seller as section 9.3 says, not here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final, Self

from .._schema import DIGEST, MAX_REASON, STATEMENT_AS_IS, Body, Kind, Schema, text, wire
from ..money import Amount, BadAmount
from ..payment._errors import BadRequest
from ..statements import Statement

__all__ = [
    "REQUESTS",
    "CatalogueRequest",
    "FetchRequest",
    "OrderRequest",
    "RefundRequest",
]


def _any_amount(value: object) -> Amount:
    """Any amount: whether it fits the order is the sale's check
    (``commerce.wrong_amount``), not the body's."""
    if type(value) is not dict or value.keys() != {"currency", "minor_units"}:
        raise ValueError("an amount is a map {currency, minor_units}")
    try:
        return Amount(value["currency"], value["minor_units"])
    except BadAmount as exc:
        raise ValueError(exc.message) from None


#: The kind of each key of a commerce request.
REQUESTS: Final = Schema(BadRequest, {
    "order": DIGEST,
    "reason": text(MAX_REASON, empty=True),
    "amount": Kind("an amount {currency, minor_units}", lambda v: type(v) is Amount,
                   decode=_any_amount, encode=Amount.to_wire),
})


@dataclass(frozen=True, slots=True, kw_only=True)
class CatalogueRequest(Body):
    """``commerce.catalogue``: any value, ignored (semper sends ``{}``)."""

    TYPE: ClassVar[str] = "commerce.catalogue"
    SCHEMA: ClassVar[Schema] = REQUESTS

    @classmethod
    def from_wire(cls, value: object) -> Self:
        return cls()


@dataclass(frozen=True, slots=True, kw_only=True)
class OrderRequest(Body):
    """``commerce.order``: exactly ``{order: statement}``. A malformed statement keeps
    the statement layer's code (``statement.malformed``, ...); its signature and body
    are the seller's checks (section 9.3)."""

    TYPE: ClassVar[str] = "commerce.order"
    SCHEMA: ClassVar[Schema] = REQUESTS

    order: Statement = field(metadata=wire(STATEMENT_AS_IS))


def _known_keys(cls: type[Body], value: object) -> dict[str, Any]:
    """``value`` without the keys ``cls`` does not know (else the schema's error)."""
    if type(value) is not dict:
        cls.SCHEMA.fail(cls.TYPE, "body", "must be a map")
    keys = {f.metadata.get("wire") or f.name
            for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    return {k: v for k, v in value.items() if k in keys}


@dataclass(frozen=True, slots=True, kw_only=True)
class FetchRequest(Body):
    """``commerce.fetch``: ``{order: digest}``; other keys are ignored."""

    TYPE: ClassVar[str] = "commerce.fetch"
    SCHEMA: ClassVar[Schema] = REQUESTS

    order: bytes

    @classmethod
    def from_wire(cls, value: object) -> Self:
        return super(FetchRequest, cls).from_wire(_known_keys(cls, value))


@dataclass(frozen=True, slots=True, kw_only=True)
class RefundRequest(Body):
    """``commerce.refund``: ``{order: digest, reason?: str, amount?: amount}``; other
    keys are ignored. No ``reason`` is ``""``; no ``amount`` (or nil) is the
    order's whole amount."""

    TYPE: ClassVar[str] = "commerce.refund"
    SCHEMA: ClassVar[Schema] = REQUESTS

    order: bytes
    reason: str | None = None
    amount: Amount | None = None

    @classmethod
    def from_wire(cls, value: object) -> Self:
        known = _known_keys(cls, value)
        if "reason" in known and known["reason"] is None:  # a reason is a str, or absent
            cls.SCHEMA.fail(cls.TYPE, "reason", f"must be {REQUESTS.kinds['reason'].wanted}")
        return super(RefundRequest, cls).from_wire(known)

    @property
    def why(self) -> str:
        """The reason, ``""`` when none was given."""
        return self.reason or ""
