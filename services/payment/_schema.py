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

Each instrument's own statements are bodies of this kind in its package
(``services.payment.<instrument>._schema``); a key it adds is registered once with
``add_field``.

Construction validates every field and raises ``BadRequest`` (``payment.bad_request``)
with ``detail`` ``{"type", "field"}``: these values are built from hostile bytes.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any, ClassVar, Final, Self

from ..certificates import check_agent_id
from ..money import Amount, BadAmount
from ..statements import Statement
from ._errors import BadRequest

__all__ = [
    "MAX_AMOUNT",
    "MAX_IDEMPOTENCY_KEY",
    "MAX_REASON",
    "MAX_REFERENCE",
    "REFUND_CONFIRMATION",
    "REFUND_ORDER",
    "RefundConfirmation",
    "RefundOrder",
    "add_field",
    "amount_from_wire",
    "check_idempotency_key",
]

REFUND_ORDER: Final = "payment.refund_order"
REFUND_CONFIRMATION: Final = "payment.refund_confirmation"

#: Minor units of one payment, inclusive: what fits a signed 64-bit journal column.
MAX_AMOUNT: Final = (1 << 63) - 1
#: Bytes of a reference (a digest is 32).
MAX_REFERENCE: Final = 256
#: Characters of an idempotency key (printable ASCII, 1 or more).
MAX_IDEMPOTENCY_KEY: Final = 128
#: Characters of a refund reason.
MAX_REASON: Final = 512
MAX_TIME_MS: Final = 253_402_300_799_999  # 9999-12-31, as statements allow

_KEY: Final = re.compile(rf"[\x20-\x7e]{{1,{MAX_IDEMPOTENCY_KEY}}}\Z")
_SERIAL: Final = re.compile(r"[A-Za-z0-9._-]{1,64}\Z")
_DIGEST_SIZE: Final = 32


def check_idempotency_key(key: object) -> str:
    """Return ``key`` if it is 1 to 128 printable ASCII characters (0x20-0x7E).

    Raises:
        BadRequest: anything else; ``detail["field"]`` is ``"idempotency_key"``.
    """
    if type(key) is not str or not _KEY.match(key):
        raise BadRequest(f"an idempotency key is 1 to {MAX_IDEMPOTENCY_KEY} printable ASCII "
                         f"characters, got {key!r:.80}", detail={"field": "idempotency_key"})
    return key


def amount_from_wire(value: object) -> Amount:
    """Read ``{"currency": str, "minor_units": int}``.

    Raises:
        BadAmount: not exactly that map, or not a valid amount.
    """
    if type(value) is not dict or set(value) != {"currency", "minor_units"}:
        raise BadAmount("an amount is {currency, minor_units}")
    return Amount(value["currency"], value["minor_units"])


# -- field kinds ---------------------------------------------------------------------
# One checker per kind of field, so that an agent id or a digest is checked the same
# way in every statement.


def _agent(value: object) -> bool:
    try:
        check_agent_id(value)  # the one grammar of section 2.1
    except ValueError:
        return False
    return True


def _amount(value: object) -> bool:
    return isinstance(value, Amount) and 0 < value.minor_units <= MAX_AMOUNT


def _digest(value: object) -> bool:
    return type(value) is bytes and len(value) == _DIGEST_SIZE


def _reference(value: object) -> bool:
    return type(value) is bytes and 0 < len(value) <= MAX_REFERENCE


def _key(value: object) -> bool:
    return type(value) is str and _KEY.match(value) is not None


def _serial(value: object) -> bool:
    return type(value) is str and _SERIAL.match(value) is not None


def _time(value: object) -> bool:
    return type(value) is int and 0 <= value <= MAX_TIME_MS


def _entry(value: object) -> bool:
    return type(value) is int and 0 <= value <= MAX_AMOUNT


def _reason(value: object) -> bool:
    return type(value) is str and len(value) <= MAX_REASON and value.isprintable()


_KINDS: Final = {
    "agent": (_agent, "an agent id"),
    "amount": (_amount, f"a positive Amount of at most {MAX_AMOUNT} minor units"),
    "digest": (_digest, "a 32-byte SHA-256 digest"),
    "reference": (_reference, f"1 to {MAX_REFERENCE} bytes"),
    "key": (_key, f"1 to {MAX_IDEMPOTENCY_KEY} printable ASCII characters"),
    "serial": (_serial, "1 to 64 characters of A-Z a-z 0-9 . _ -"),
    "time": (_time, "Unix milliseconds"),
    "entry": (_entry, "a non-negative journal entry id"),
    "reason": (_reason, f"at most {MAX_REASON} printable characters"),
}


#: The kind of every field, by its wire key: a key means the same in every statement.
_FIELD_KINDS: Final = {
    "payer": "agent", "payee": "agent", "bank": "agent",
    "amount": "amount",
    "order": "digest", "original": "digest", "refund_order": "digest",
    "reference": "reference",
    "idempotency_key": "key",
    "serial": "serial",
    "expires_at": "time",
    "entry": "entry",
    "reason": "reason",
}


def add_field(key: str, kind: str) -> None:
    """Give the wire key ``key`` the field kind ``kind`` in every body, for a key that
    only one instrument's statements use. A key keeps one meaning: registering it
    again with another kind is a programming error (ValueError)."""
    if kind not in _KINDS:
        raise ValueError(f"unknown field kind {kind!r}")
    if _FIELD_KINDS.setdefault(key, kind) != kind:
        raise ValueError(f"field {key!r} is a {_FIELD_KINDS[key]}, not a {kind}")


class _Body:
    """Shared behaviour of the body dataclasses: validate, to_body, from_body."""

    __slots__ = ()
    TYPE: ClassVar[str]
    #: Pairs of fields that must differ (nobody pays themselves).
    _DISTINCT: ClassVar[tuple[str, str] | None] = ("payer", "payee")

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            check, wanted = _KINDS[_FIELD_KINDS[f.name]]
            if not check(getattr(self, f.name)):
                raise BadRequest(f"{self.TYPE}: {f.name} must be {wanted}",
                                 detail={"type": self.TYPE, "field": f.name})
        if self._DISTINCT is not None:
            a, b = self._DISTINCT
            if getattr(self, a) == getattr(self, b):
                raise BadRequest(f"{self.TYPE}: {a} and {b} must be different agents",
                                 detail={"type": self.TYPE, "field": b})

    def to_body(self) -> dict[str, Any]:
        """The statement body: a map of the wire's value model."""
        body: dict[str, Any] = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            body[f.name] = value.to_wire() if isinstance(value, Amount) else value
        return body

    @classmethod
    def from_body(cls, body: object) -> Self:
        """Read a statement body of this type.

        Raises:
            BadRequest: not a map of exactly this type's keys, or a bad field;
                ``detail`` names the ``type`` and the ``field``.
        """
        fields = dataclasses.fields(cls)  # type: ignore[arg-type]
        keys = {f.name for f in fields}
        if type(body) is not dict or set(body) != keys:
            found = set(body) if type(body) is dict else set()
            wrong = sorted((keys ^ found), key=str)
            raise BadRequest(f"a {cls.TYPE} body has exactly the keys {sorted(keys)}",
                             detail={"type": cls.TYPE, "field": str(wrong[0]) if wrong else None})
        values: dict[str, Any] = {}
        for f in fields:
            value = body[f.name]
            if _FIELD_KINDS[f.name] == "amount":
                try:
                    value = amount_from_wire(value)
                except BadAmount:
                    raise BadRequest(f"{cls.TYPE}: {f.name} is not an amount",
                                     detail={"type": cls.TYPE, "field": f.name}) from None
            values[f.name] = value
        return cls(**values)

    @classmethod
    def from_statement(cls, statement: Statement) -> Self:
        """The typed body of ``statement`` (its signature is not checked here).

        Raises:
            BadRequest: the statement is of another type (``field`` is ``"type"``),
                or its body is not a body of this type.
        """
        if statement.type != cls.TYPE:
            raise BadRequest(f"expected a {cls.TYPE} statement, got {statement.type!r}",
                             detail={"type": cls.TYPE, "field": "type"})
        return cls.from_body(statement.body)


@dataclass(frozen=True, slots=True, kw_only=True)
class RefundOrder(_Body):
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
class RefundConfirmation(_Body):
    """``payment.refund_confirmation``, signed by the bank: ``refund_order`` was
    applied as journal entry ``entry``."""

    TYPE: ClassVar[str] = REFUND_CONFIRMATION

    refund_order: bytes
    original: bytes
    payer: str
    payee: str
    amount: Amount
    entry: int
