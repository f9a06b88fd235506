"""The ``purse`` module: the instrument's entry in ``semper.payment_modules``.

A purse pays a stream chunk by chunk: the buyer's ``Purse`` (agents/) reserves a
chain at the bank (``bank.purse_reserve``), hands the commitment and reservation to
the seller with the stream, and reveals one payword per chunk on the delivery
channel; the seller redeems the highest at the bank (``bank.purse_redeem``). None of
that goes through ``payment.accept``, so a whole one-shot payment is refused
(``payment.unsupported``); a redemption is refunded like any settlement.
"""

from __future__ import annotations

from typing import Any, ClassVar

from ...money import Amount
from .._modules import (
    Invoice,
    PayeeContext,
    PayerContext,
    PaymentRequest,
    PaymentResult,
    RefundResult,
    refund_payment,
)
from ._errors import Unsupported

__all__ = ["PurseModule"]


class PurseModule:
    """``purse``: PayWord chains backed by a reservation at the bank."""

    name: ClassVar[str] = "purse"
    #: Guaranteed: the bank reserved the chain's value for the payee (protocol.md 8.9).
    guaranteed: ClassVar[bool] = True

    async def pay(self, ctx: PayerContext, request: PaymentRequest) -> PaymentResult:
        raise Unsupported("a purse pays a stream per chunk, not one whole amount: pay "
                          "with transfer or cheque", detail={"module": self.name})

    async def accept(self, ctx: PayeeContext, proof: dict[str, Any], *,
                     invoice: Invoice) -> PaymentResult:
        raise Unsupported("a purse is paid with paywords on a delivery channel, not "
                          "through payment.accept", detail={"module": self.name})

    async def refund(self, ctx: PayeeContext, original: PaymentResult, amount: Amount,
                     reason: str, key: str) -> RefundResult:
        return await refund_payment(ctx, original, amount, reason, key)
