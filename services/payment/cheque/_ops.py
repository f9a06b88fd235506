"""The ``bank`` ops the cheque instrument adds, declared once (``services._ops``):
the bank's cheque component serves them, the payee (deposit) and the payer (stop)
call them."""

from __future__ import annotations

from typing import Final

from ..._ops import Op
from .._wire import BANK_SERVICE
from ._wire import BANK_DEPOSIT_CHEQUE, BANK_STOP_CHEQUE, ChequeProof, DepositAnswer, StopCheque

__all__ = ["DEPOSIT_CHEQUE", "STOP_CHEQUE"]

#: ``bank.deposit_cheque``: clear a cheque the payee deposits, answer the cleared statement.
DEPOSIT_CHEQUE: Final = Op(BANK_SERVICE, BANK_DEPOSIT_CHEQUE, ChequeProof, DepositAnswer)
#: ``bank.stop_cheque``: the payer stops one of its serials.
STOP_CHEQUE: Final = Op(BANK_SERVICE, BANK_STOP_CHEQUE, StopCheque, StopCheque)
