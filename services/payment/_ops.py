"""The shared payment ops, each declared once (``services._ops.Op``); each
instrument declares its own ops in its package (``transfer._ops``, ``cheque._ops``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Final, Self

from .._ops import Op
from .._schema import Body, Schema
from ._schema import SCHEMA
from ._wire import (
    BANK_REFUND,
    BANK_SERVICE,
    PAYMENT_ACCEPT,
    PAYMENT_CAPABILITIES,
    PAYMENT_SERVICE,
    AcceptRequest,
    CapabilitiesRequest,
    RefundAnswer,
    RefundRequest,
)

__all__ = ["ACCEPT", "ACCOUNT", "CAPABILITIES", "REFUND", "AccountRequest"]

ACCOUNT_TYPE: Final = f"{BANK_SERVICE}.account"


@dataclass(frozen=True, slots=True, kw_only=True)
class AccountRequest(Body):
    """``bank.account``'s request: nothing (``{}``, or nil); any key is
    ``payment.bad_request`` (detail ``type`` ``bank.account``, ``field``)."""

    TYPE: ClassVar[str] = ACCOUNT_TYPE
    SCHEMA: ClassVar[Schema] = SCHEMA

    @classmethod
    def from_wire(cls, value: object) -> Self:
        return super(AccountRequest, cls).from_wire({} if value is None else value)


#: An ``AccountRequest`` -> the caller's balances and latest postings (a map the bank
#: builds from its books, not typed here).
ACCOUNT = Op(BANK_SERVICE, "account", AccountRequest)
REFUND = Op(BANK_SERVICE, BANK_REFUND, RefundRequest, RefundAnswer)

#: Any body (ignored) -> a payee's modules and limits (``Capabilities``); a seller adds
#: its ``bank``, so the response is not typed here.
CAPABILITIES = Op(PAYMENT_SERVICE, PAYMENT_CAPABILITIES, CapabilitiesRequest)
#: A payer hands over a module's proof (``AcceptRequest``); the answer is the module's
#: payment result (``PaymentResult`` wire).
ACCEPT = Op(PAYMENT_SERVICE, PAYMENT_ACCEPT, AcceptRequest)
