"""The shared payment ops, each declared once (``services._ops.Op``); each
instrument declares its own ops in its package (``transfer._ops``, ``cheque._ops``)."""

from __future__ import annotations

from .._ops import Op
from ._wire import (
    BANK_REFUND,
    BANK_SERVICE,
    PAYMENT_ACCEPT,
    PAYMENT_CAPABILITIES,
    PAYMENT_SERVICE,
    RefundAnswer,
    RefundRequest,
)

__all__ = ["ACCEPT", "ACCOUNT", "CAPABILITIES", "REFUND"]

#: The caller's balances and latest postings; an empty map both ways in type terms
#: (the handler checks the body).
ACCOUNT = Op(BANK_SERVICE, "account")
REFUND = Op(BANK_SERVICE, BANK_REFUND, RefundRequest, RefundAnswer)

#: A payee's modules and limits (``Capabilities``); a seller adds its ``bank``, so
#: the response is not typed here.
CAPABILITIES = Op(PAYMENT_SERVICE, PAYMENT_CAPABILITIES)
#: A payer hands over a module's proof (``AcceptRequest``); the answer is the module's
#: payment result. Untyped while the payee's handler reads the body itself.
ACCEPT = Op(PAYMENT_SERVICE, PAYMENT_ACCEPT)
