"""The ``bank`` ops the cheque instrument adds, declared once (``services._ops``):
the bank's cheque component serves them, the payee (deposit) and the payer (stop)
call them."""

from __future__ import annotations

from typing import Final

from ..._ops import Op
from .._wire import BANK_SERVICE
from ._wire import (
    BANK_CHEQUE_STATUS,
    BANK_DEPOSIT_CHEQUE,
    BANK_STOP_CHEQUE,
    ChequeProof,
    ChequeStatus,
    DepositAnswer,
    StopCheque,
)

__all__ = ["CHEQUE_STATUS", "DEPOSIT_CHEQUE", "STOP_CHEQUE"]

#: ``bank.deposit_cheque``: clear a cheque the payee deposits, answer the cleared statement.
DEPOSIT_CHEQUE: Final = Op(BANK_SERVICE, BANK_DEPOSIT_CHEQUE, ChequeProof, DepositAnswer)
#: ``bank.stop_cheque``: the payer stops one of its serials.
STOP_CHEQUE: Final = Op(BANK_SERVICE, BANK_STOP_CHEQUE, StopCheque, StopCheque)
#: ``bank.cheque_status``: the drawer asks what became of one of its serials (the
#: clearing, if it cleared: a payee that deposited and vanished never passed it on).
CHEQUE_STATUS: Final = Op(BANK_SERVICE, BANK_CHEQUE_STATUS, StopCheque, ChequeStatus)
