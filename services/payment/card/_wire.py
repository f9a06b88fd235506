"""The card's wire bodies, typed (docs/protocol.md 8.8): the proof the cardholder
hands the merchant, and the gateway's ``bank`` ops::

    payment.accept proof (module "card"), cardholder -> merchant:
        {"oi": OI, "pimd": bin(32), "dual": statement,        # card.dual_signature
         "sealed_pi": bin, "cardholder_certificate": bin}
    bank.card_gateway_key  {} -> {"key": statement,            # card.gateway_key
                                  "bank_certificate": bin}
    bank.card_authorize    {"sealed_pi": bin, "oimd": bin(32), "dual": statement,
                            "cardholder_certificate": bin, "amount": Amount,
                            "idempotency_key": str}
                        -> {"authorization": statement,        # card.authorization
                            "bank_certificate": bin}
    bank.card_capture      {"authorization_id": str, "amount": Amount,
                            "idempotency_key": str, "final"?: bool}
                        -> {"captured": statement,             # payment.card_captured
                            "bank_certificate": bin}

``sealed_pi`` is HPKE ``enc || ct`` (``_set.seal_instructions``). Nothing the merchant
is handed or sends carries a card number or expiry in the clear.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Final

from cryptography import x509

from ..._schema import STATEMENT_AS_IS, Body, Kind, Schema, binary, wire
from ...money import Amount
from ...statements import Statement
from .._wire import CERTIFICATE
from ._schema import SCHEMA, OrderInformation

__all__ = [
    "BANK_CARD_AUTHORIZE",
    "BANK_CARD_CAPTURE",
    "BANK_CARD_GATEWAY_KEY",
    "MAX_SEALED_PI",
    "AuthorizeAnswer",
    "AuthorizeRequest",
    "CaptureAnswer",
    "CaptureRequest",
    "CardProof",
    "GatewayKeyAnswer",
    "GatewayKeyRequest",
]

BANK_CARD_GATEWAY_KEY: Final = "card_gateway_key"
BANK_CARD_AUTHORIZE: Final = "card_authorize"
BANK_CARD_CAPTURE: Final = "card_capture"

#: Bytes of a sealed PI: enc (32) + the canonical PI (~200) + tag (16), with room.
MAX_SEALED_PI: Final = 1024


OI: Final = Kind("an order information map", lambda v: type(v) is OrderInformation,
                 decode=OrderInformation.from_wire, encode=OrderInformation.to_wire)

_OPS_SCHEMA: Final = Schema(SCHEMA.error, {
    **SCHEMA.kinds,
    "oi": OI,
    "dual": STATEMENT_AS_IS, "key": STATEMENT_AS_IS, "authorization": STATEMENT_AS_IS,
    "captured": STATEMENT_AS_IS,
    "sealed_pi": binary(49, MAX_SEALED_PI, f"49 to {MAX_SEALED_PI} bytes (HPKE enc || ct)"),
    "cardholder_certificate": CERTIFICATE,
    "bank_certificate": CERTIFICATE,
    "final": Kind("a bool", lambda v: type(v) is bool),
})


class _OpBody(Body):
    __slots__ = ()
    SCHEMA: ClassVar[Schema] = _OPS_SCHEMA


@dataclass(frozen=True, slots=True, kw_only=True)
class CardProof(_OpBody):
    """The ``card`` module's ``payment.accept`` proof: the OI in the clear, the PI only
    as its digest and sealed to the gateway, the dual signature binding both, and the
    certificate that signed it."""

    TYPE: ClassVar[str] = "card proof"
    oi: OrderInformation
    pimd: bytes
    dual: Statement
    sealed_pi: bytes
    cardholder_certificate: x509.Certificate


@dataclass(frozen=True, slots=True, kw_only=True)
class GatewayKeyRequest(_OpBody):
    """``bank.card_gateway_key``: ``{}``."""

    TYPE: ClassVar[str] = "bank.card_gateway_key"


@dataclass(frozen=True, slots=True, kw_only=True)
class GatewayKeyAnswer(_OpBody):
    """``bank.card_gateway_key`` answer: the bank's current ``card.gateway_key``."""

    TYPE: ClassVar[str] = "bank.card_gateway_key answer"
    key: Statement
    bank_certificate: x509.Certificate


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthorizeRequest(_OpBody):
    """``bank.card_authorize``, from the merchant: the sealed PI, the OIMD it computed
    from the OI, the cardholder's dual signature and certificate, the amount it
    expects, and its key (one authorisation per (merchant, key))."""

    TYPE: ClassVar[str] = "bank.card_authorize"
    sealed_pi: bytes
    oimd: bytes
    dual: Statement
    cardholder_certificate: x509.Certificate
    amount: Amount
    idempotency_key: str


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthorizeAnswer(_OpBody):
    """``bank.card_authorize`` answer: the gateway's ``card.authorization``."""

    TYPE: ClassVar[str] = "bank.card_authorize answer"
    authorization: Statement
    bank_certificate: x509.Certificate


@dataclass(frozen=True, slots=True, kw_only=True)
class CaptureRequest(_OpBody):
    """``bank.card_capture``, from the merchant: capture ``amount`` (at most what
    remains) of its authorisation; one capture per (merchant, key). ``final`` (absent:
    false) releases what remains to the cardholder with this capture and closes the
    authorisation; a capture of all that remains closes it either way."""

    TYPE: ClassVar[str] = "bank.card_capture"
    authorization_id: str
    amount: Amount
    idempotency_key: str
    final: bool | None = field(default=None, metadata=wire())


@dataclass(frozen=True, slots=True, kw_only=True)
class CaptureAnswer(_OpBody):
    """``bank.card_capture`` answer: the bank's ``payment.card_captured``."""

    TYPE: ClassVar[str] = "bank.card_capture answer"
    captured: Statement
    bank_certificate: x509.Certificate
