"""The bodies of the card instrument (SET-style dual signature; docs/protocol.md 8.8):
four statements and the two halves of a purchase the cardholder writes.

    card.gateway_key        bank -> anyone: seal payment instructions to this key
        bank; public_key: X25519, 32 bytes; expires_ms
    card.dual_signature     cardholder: these instructions and this order go together
        pimd; oimd; pomd = SHA-256(pimd || oimd)
    card.authorization      bank (gateway) -> merchant: amount is held for the order
        bank; merchant; amount; oimd; authorization_id; expires_ms
    payment.card_captured   bank -> merchant (and on to the cardholder): the settlement
        bank; merchant; amount; oimd; authorization_id; entry

    PI (payment instructions; sealed to the gateway, never seen by the merchant)
        number: 16 digits passing Luhn; expiry: "YYYY-MM"; amount; merchant;
        order: the OIMD (32 bytes); idempotency_key: the cardholder's; nonce: 16 bytes
    OI (order information; never seen by the gateway)
        order: the commerce order digest (the payment reference); merchant; amount;
        description: str, may be empty

A bad PI is ``card.bad_instructions`` (only the gateway reads one); any other bad body
is ``payment.bad_request``; both with ``detail`` ``{"type", "field"}``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Final

from ..._schema import AGENT, DIGEST, IDEMPOTENCY_KEY, TIME, Body, Schema, binary, form, text, wire
from ...money import Amount
from .._schema import AMOUNT, MAX_REFERENCE
from .._schema import SCHEMA as PAYMENT_SCHEMA
from ._errors import BadInstructions

__all__ = [
    "AUTHORIZATION",
    "AUTHORIZATION_ID",
    "CARD_CAPTURED",
    "DUAL_SIGNATURE",
    "GATEWAY_KEY",
    "MAX_DESCRIPTION",
    "NONCE_SIZE",
    "PI_SCHEMA",
    "SCHEMA",
    "Authorization",
    "CardCaptured",
    "DualSignature",
    "GatewayKey",
    "OrderInformation",
    "PaymentInstructions",
    "luhn_ok",
]

GATEWAY_KEY: Final = "card.gateway_key"
DUAL_SIGNATURE: Final = "card.dual_signature"
AUTHORIZATION: Final = "card.authorization"
CARD_CAPTURED: Final = "payment.card_captured"

#: Bytes of a PI's nonce: it keeps the PIMD the merchant sees from being searched
#: over the (small) space of card numbers and expiries.
NONCE_SIZE: Final = 16
#: Characters of an OI's description (an offer title or sku).
MAX_DESCRIPTION: Final = 256

#: An authorisation's id: the gateway's name for it in ``bank.card_capture``.
AUTHORIZATION_ID: Final = form(r"[A-Za-z0-9._-]{1,64}", "1 to 64 characters of A-Z a-z 0-9 . _ -",
                               64)
#: A card number: 16 decimal digits (the Luhn check is the PI's own rule).
NUMBER: Final = form(r"[0-9]{16}", "16 decimal digits", 16)
#: A card's expiry: the last month it may pay, "YYYY-MM".
EXPIRY: Final = form(r"[0-9]{4}-(0[1-9]|1[0-2])", "a month YYYY-MM", 7)

SCHEMA: Final = Schema(PAYMENT_SCHEMA.error, {
    **PAYMENT_SCHEMA.kinds,
    "merchant": AGENT,
    "public_key": binary(32, 32, "32 bytes (an X25519 public key)"),
    "expires_ms": TIME,
    "pimd": DIGEST, "oimd": DIGEST, "pomd": DIGEST,
    "authorization_id": AUTHORIZATION_ID,
    "description": text(MAX_DESCRIPTION, empty=True),
})
#: The PI's own schema: the gateway refuses a bad one as ``card.bad_instructions``.
PI_SCHEMA: Final = Schema(BadInstructions, {
    "number": NUMBER, "expiry": EXPIRY, "amount": AMOUNT, "merchant": AGENT,
    "order": DIGEST, "idempotency_key": IDEMPOTENCY_KEY,
    "nonce": binary(NONCE_SIZE, NONCE_SIZE, f"{NONCE_SIZE} bytes"),
})


def luhn_ok(number: str) -> bool:
    """Whether ``number`` (decimal digits) passes the Luhn (mod 10) check: from the
    right, every second digit doubled (less 9 past 9), the sum a multiple of 10."""
    if type(number) is not str or not number.isascii() or not number.isdigit():
        return False
    total = 0
    for i, ch in enumerate(reversed(number)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


class _CardBody(Body):
    __slots__ = ()
    SCHEMA: ClassVar[Schema] = SCHEMA


@dataclass(frozen=True, slots=True, kw_only=True)
class GatewayKey(_CardBody):
    """``card.gateway_key``, signed by ``bank``: seal payment instructions for my
    gateway to this X25519 key until ``expires_ms`` (Unix ms, inclusive)."""

    TYPE: ClassVar[str] = GATEWAY_KEY
    bank: str
    public_key: bytes
    expires_ms: int


@dataclass(frozen=True, slots=True, kw_only=True)
class DualSignature(_CardBody):
    """``card.dual_signature``, signed by the cardholder: the PI with digest ``pimd``
    and the OI with digest ``oimd`` are one purchase. ``pomd`` is SHA-256(pimd ||
    oimd) (SET's POMD), carried for readers; the checks recompute it."""

    TYPE: ClassVar[str] = DUAL_SIGNATURE
    pimd: bytes
    oimd: bytes
    pomd: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class Authorization(_CardBody):
    """``card.authorization``, signed by the bank's gateway: ``amount`` of the card
    is held for ``merchant``'s order ``oimd`` until ``expires_ms``; captures name it
    by ``authorization_id``."""

    TYPE: ClassVar[str] = AUTHORIZATION
    bank: str
    merchant: str
    amount: Amount
    oimd: bytes
    authorization_id: str
    expires_ms: int


@dataclass(frozen=True, slots=True, kw_only=True)
class CardCaptured(_CardBody):
    """``payment.card_captured``, signed by the bank: ``amount`` of authorisation
    ``authorization_id`` moved to ``merchant`` as journal entry ``entry``. The
    settlement of a card payment (refunds name its digest)."""

    TYPE: ClassVar[str] = CARD_CAPTURED
    bank: str
    merchant: str
    amount: Amount
    oimd: bytes
    authorization_id: str
    entry: int


@dataclass(frozen=True, slots=True, kw_only=True)
class PaymentInstructions(Body):
    """The PI: pay ``amount`` from card ``number`` (valid through ``expiry``) to
    ``merchant`` for the order whose OI digest is ``order``. Sealed to the gateway;
    ``nonce`` is fresh and secret, so its digest (PIMD) reveals nothing."""

    TYPE: ClassVar[str] = "card.payment_instructions"
    SCHEMA: ClassVar[Schema] = PI_SCHEMA
    number: str
    expiry: str
    amount: Amount
    merchant: str
    order: bytes
    idempotency_key: str
    nonce: bytes

    def _check(self) -> None:
        if not luhn_ok(self.number):
            self.SCHEMA.fail(self.TYPE, "number", "fails the Luhn check")


@dataclass(frozen=True, slots=True, kw_only=True)
class OrderInformation(_CardBody):
    """The OI: the merchant's order ``order`` (the payment reference) of ``amount``,
    described by ``description`` (an offer title or sku; may be empty). The
    merchant sees it whole; the gateway sees only its digest (OIMD)."""

    TYPE: ClassVar[str] = "card.order_information"
    order: bytes = field(metadata=wire(binary(1, MAX_REFERENCE)))
    merchant: str
    amount: Amount
    description: str
