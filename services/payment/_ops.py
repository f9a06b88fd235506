"""The payment ops, each declared once (``services._ops.Op``)."""

from __future__ import annotations

from .._ops import Op
from ._wire import (
    BANK_DEPOSIT_CHEQUE,
    BANK_REFUND,
    BANK_SERVICE,
    BANK_STOP_CHEQUE,
    BANK_TRANSFER,
    ChequeProof,
    DepositAnswer,
    RefundAnswer,
    RefundRequest,
    StopCheque,
    TransferProof,
    TransferRequest,
)

__all__ = ["ACCOUNT", "DEPOSIT_CHEQUE", "REFUND", "STOP_CHEQUE", "TRANSFER"]

#: The caller's balances and latest postings; an empty map both ways in type terms
#: (the handler checks the body).
ACCOUNT = Op(BANK_SERVICE, "account")
REFUND = Op(BANK_SERVICE, BANK_REFUND, RefundRequest, RefundAnswer)
# Each instrument's ops move into its own package with it.
TRANSFER = Op(BANK_SERVICE, BANK_TRANSFER, TransferRequest, TransferProof)
DEPOSIT_CHEQUE = Op(BANK_SERVICE, BANK_DEPOSIT_CHEQUE, ChequeProof, DepositAnswer)
STOP_CHEQUE = Op(BANK_SERVICE, BANK_STOP_CHEQUE, StopCheque, StopCheque)
