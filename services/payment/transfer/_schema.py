"""The bodies of the transfer statements (field kinds: ``services.payment._schema``).

    payment.transfer_order        payer -> its bank: "move this amount to payee"
        payer, payee, bank: agent ids; amount; reference: bin; idempotency_key: str
    payment.transfer_confirmation bank -> payer (and on to the payee): "done"
        order: digest of the order statement; payer; payee; amount; reference; entry: int
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Final

from ...money import Amount
from .._schema import _Body

__all__ = ["TRANSFER_CONFIRMATION", "TRANSFER_ORDER", "TransferConfirmation", "TransferOrder"]

TRANSFER_ORDER: Final = "payment.transfer_order"
TRANSFER_CONFIRMATION: Final = "payment.transfer_confirmation"


@dataclass(frozen=True, slots=True, kw_only=True)
class TransferOrder(_Body):
    """``payment.transfer_order``, signed by ``payer``: move ``amount`` from the payer's
    account at ``bank`` to ``payee``'s account there. ``reference`` ties the payment
    to what it pays for (e.g. the digest of a commerce order). The bank applies one
    order per ``(payer, idempotency_key)``."""

    TYPE: ClassVar[str] = TRANSFER_ORDER

    payer: str
    payee: str
    bank: str
    amount: Amount
    reference: bytes
    idempotency_key: str


@dataclass(frozen=True, slots=True, kw_only=True)
class TransferConfirmation(_Body):
    """``payment.transfer_confirmation``, signed by the bank: ``order`` was applied as
    journal entry ``entry``; the other fields repeat the order's."""

    TYPE: ClassVar[str] = TRANSFER_CONFIRMATION

    order: bytes
    payer: str
    payee: str
    amount: Amount
    reference: bytes
    entry: int
