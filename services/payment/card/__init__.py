"""The ``card`` instrument, sans-IO: SET-style card payments (SET 1997, Book 3's
dual signature). The cardholder writes payment instructions (PI: card number,
expiry, amount, merchant, order digest) sealed to the bank's gateway with HPKE, and
order information (OI) for the merchant, and signs SHA-256(PIMD || OIMD) once; so the
merchant checks the order and never sees the card, and the gateway checks the card
and never sees the order. The gateway authorises (holds) and the merchant captures
up to the authorised amount. docs/protocol.md 8.8.
"""

from ._errors import (
    BadDualSignature,
    BadGatewayKey,
    BadInstructions,
    CardError,
    Declined,
    ExpiredCard,
    OverAuthorized,
    UnknownAuthorization,
    UnknownCard,
)
from ._ops import CARD_AUTHORIZE, CARD_CAPTURE, CARD_GATEWAY_KEY
from ._schema import (
    AUTHORIZATION,
    CARD_CAPTURED,
    DUAL_SIGNATURE,
    GATEWAY_KEY,
    Authorization,
    CardCaptured,
    DualSignature,
    GatewayKey,
    OrderInformation,
    PaymentInstructions,
    luhn_ok,
)
from ._wire import (
    BANK_CARD_AUTHORIZE,
    BANK_CARD_CAPTURE,
    BANK_CARD_GATEWAY_KEY,
    AuthorizeAnswer,
    AuthorizeRequest,
    CaptureAnswer,
    CaptureRequest,
    CardProof,
    GatewayKeyAnswer,
    GatewayKeyRequest,
)

__all__ = [
    "AUTHORIZATION",
    "BANK_CARD_AUTHORIZE",
    "BANK_CARD_CAPTURE",
    "BANK_CARD_GATEWAY_KEY",
    "CARD_AUTHORIZE",
    "CARD_CAPTURE",
    "CARD_CAPTURED",
    "CARD_GATEWAY_KEY",
    "DUAL_SIGNATURE",
    "GATEWAY_KEY",
    "Authorization",
    "AuthorizeAnswer",
    "AuthorizeRequest",
    "BadDualSignature",
    "BadGatewayKey",
    "BadInstructions",
    "CaptureAnswer",
    "CaptureRequest",
    "CardCaptured",
    "CardError",
    "CardProof",
    "Declined",
    "DualSignature",
    "ExpiredCard",
    "GatewayKey",
    "GatewayKeyAnswer",
    "GatewayKeyRequest",
    "OrderInformation",
    "OverAuthorized",
    "PaymentInstructions",
    "UnknownAuthorization",
    "UnknownCard",
    "luhn_ok",
]
