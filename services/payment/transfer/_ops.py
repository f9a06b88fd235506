"""The ``bank`` op the transfer instrument adds, declared once (``services._ops``):
the bank's transfer component serves it, the payer's module calls it."""

from __future__ import annotations

from typing import Final

from ..._ops import Op
from .._wire import BANK_SERVICE
from ._wire import BANK_TRANSFER, TransferProof, TransferRequest

__all__ = ["TRANSFER"]

#: ``bank.transfer``: apply a signed transfer order, answer the confirmation.
TRANSFER: Final = Op(BANK_SERVICE, BANK_TRANSFER, TransferRequest, TransferProof)
