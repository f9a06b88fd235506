"""The ``transfer`` instrument, sans-IO: an account-to-account transfer that the
payer's bank confirms. Its statements, the bank's checks and decisions, the offline
verification, and the payer and payee halves (``TransferModule``, registered in the
``semper.payment_modules`` entry-point group). It builds on the shared part of
``services.payment`` and on nothing of another instrument. docs/protocol.md 8.
"""

from ._checks import (
    check_transfer_order,
    confirm_transfer,
    decide_transfer,
    verify_transfer_confirmation,
)
from ._module import TransferModule
from ._ops import TRANSFER
from ._schema import TRANSFER_CONFIRMATION, TRANSFER_ORDER, TransferConfirmation, TransferOrder
from ._wire import BANK_TRANSFER, TransferProof, TransferRequest

__all__ = [
    "BANK_TRANSFER",
    "TRANSFER",
    "TRANSFER_CONFIRMATION",
    "TRANSFER_ORDER",
    "TransferConfirmation",
    "TransferModule",
    "TransferOrder",
    "TransferProof",
    "TransferRequest",
    "check_transfer_order",
    "confirm_transfer",
    "decide_transfer",
    "verify_transfer_confirmation",
]
