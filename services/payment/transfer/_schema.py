"""The bodies of the transfer statements: ``services._schema`` bodies whose keys are
the shared payment keys (``services.payment._schema.SCHEMA``) plus ``order``.

    payment.transfer_order        payer -> its bank: "move this amount to payee"
        payer, payee, bank: agent ids; amount; reference: bin; idempotency_key: str
    payment.transfer_confirmation bank -> payer (and on to the payee): "done"
        order: digest of the order statement; payer; payee; amount; reference; entry: int
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Final

from ..._schema import DIGEST, Schema
from ...money import Amount
from .._schema import SCHEMA as PAYMENT_SCHEMA
from .._schema import PaymentBody

__all__ = ["SCHEMA", "TRANSFER_CONFIRMATION", "TRANSFER_ORDER", "TransferConfirmation",
           "TransferOrder"]

TRANSFER_ORDER: Final = "payment.transfer_order"
TRANSFER_CONFIRMATION: Final = "payment.transfer_confirmation"

#: The payment keys, and the confirmation's digest of its order.
SCHEMA: Final = Schema(PAYMENT_SCHEMA.error, {**PAYMENT_SCHEMA.kinds, "order": DIGEST})


@dataclass(frozen=True, slots=True, kw_only=True)
class TransferOrder(PaymentBody):
    """``payment.transfer_order``, signed by ``payer``: move ``amount`` from the payer's
    account at ``bank`` to ``payee``'s account there. ``reference`` ties the payment
    to what it pays for (e.g. the digest of a commerce order). The bank applies one
    order per ``(payer, idempotency_key)``."""

    TYPE: ClassVar[str] = TRANSFER_ORDER
    SCHEMA: ClassVar[Schema] = SCHEMA

    payer: str
    payee: str
    bank: str
    amount: Amount
    reference: bytes
    idempotency_key: str


@dataclass(frozen=True, slots=True, kw_only=True)
class TransferConfirmation(PaymentBody):
    """``payment.transfer_confirmation``, signed by the bank: ``order`` was applied as
    journal entry ``entry``; the other fields repeat the order's."""

    TYPE: ClassVar[str] = TRANSFER_CONFIRMATION
    SCHEMA: ClassVar[Schema] = SCHEMA

    order: bytes
    payer: str
    payee: str
    amount: Amount
    reference: bytes
    entry: int
