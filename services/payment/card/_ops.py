"""The ``bank`` ops the card instrument adds, declared once (``services._ops``): the
bank's gateway component serves them; the cardholder asks the gateway key, the
merchant authorises and captures."""

from __future__ import annotations

from typing import Final

from ..._ops import Op
from .._wire import BANK_SERVICE
from ._wire import (
    BANK_CARD_AUTHORIZE,
    BANK_CARD_CAPTURE,
    BANK_CARD_GATEWAY_KEY,
    AuthorizeAnswer,
    AuthorizeRequest,
    CaptureAnswer,
    CaptureRequest,
    GatewayKeyAnswer,
    GatewayKeyRequest,
)

__all__ = ["CARD_AUTHORIZE", "CARD_CAPTURE", "CARD_GATEWAY_KEY"]

#: ``bank.card_gateway_key``: the gateway's current HPKE key, signed by the bank.
CARD_GATEWAY_KEY: Final = Op(BANK_SERVICE, BANK_CARD_GATEWAY_KEY, GatewayKeyRequest,
                             GatewayKeyAnswer)
#: ``bank.card_authorize``: the merchant forwards the sealed PI and the dual signature;
#: the gateway holds the amount on the card's account.
CARD_AUTHORIZE: Final = Op(BANK_SERVICE, BANK_CARD_AUTHORIZE, AuthorizeRequest,
                           AuthorizeAnswer)
#: ``bank.card_capture``: the merchant captures up to what remains authorised.
CARD_CAPTURE: Final = Op(BANK_SERVICE, BANK_CARD_CAPTURE, CaptureRequest, CaptureAnswer)
