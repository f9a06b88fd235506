"""The ``cheque`` instrument, sans-IO: a cheque the payer signs and the payee deposits
at the payer's bank. Its statements, its errors, the bank's checks and decisions
(a serial clears once, a payer may stop it), the offline verification, and the payer
and payee halves (``ChequeModule``, registered in the ``semper.payment_modules``
entry-point group). It builds on the shared part of ``services.payment`` and on
nothing of another instrument. docs/protocol.md 8.
"""

from ._checks import (
    Cleared,
    check_cheque,
    cheque_retry_digest,
    clear_cheque,
    decide_cheque_deposit,
    is_cheque_retry,
    verify_cheque,
    verify_cheque_cleared,
)
from ._errors import BadCheque, ChequeExpired, ChequeReused, ChequeStopped, TooManyStopped
from ._module import ChequeModule, cheque_serial
from ._ops import CHEQUE_STATUS, DEPOSIT_CHEQUE, STOP_CHEQUE
from ._schema import CHEQUE, CHEQUE_CLEARED, Cheque, ChequeCleared
from ._wire import (
    BANK_CHEQUE_STATUS,
    BANK_DEPOSIT_CHEQUE,
    BANK_STOP_CHEQUE,
    ChequeProof,
    ChequeStatus,
    DepositAnswer,
    StopCheque,
)

__all__ = [
    "BANK_CHEQUE_STATUS",
    "BANK_DEPOSIT_CHEQUE",
    "BANK_STOP_CHEQUE",
    "CHEQUE",
    "CHEQUE_CLEARED",
    "CHEQUE_STATUS",
    "DEPOSIT_CHEQUE",
    "STOP_CHEQUE",
    "BadCheque",
    "Cheque",
    "ChequeCleared",
    "ChequeExpired",
    "ChequeModule",
    "ChequeProof",
    "ChequeReused",
    "ChequeStatus",
    "ChequeStopped",
    "Cleared",
    "DepositAnswer",
    "StopCheque",
    "TooManyStopped",
    "check_cheque",
    "cheque_retry_digest",
    "cheque_serial",
    "clear_cheque",
    "decide_cheque_deposit",
    "is_cheque_retry",
    "verify_cheque",
    "verify_cheque_cleared",
]
