"""The ``purse`` instrument, sans-IO: PayWord micropayments (Rivest and Shamir,
1996) backed by funds the bank holds. The hash chains and the payee's payword check
(``PayWordChain``, ``PaywordChecker``), the statements (``purse.commitment``,
``purse.reservation``, ``purse.redeemed``), the bank's checks and decisions, the
offline verification, the ``bank`` ops, and the module class (``PurseModule``,
registered in the ``semper.payment_modules`` entry-point group). It builds on the
shared part of ``services.payment`` and on nothing of another instrument.
docs/protocol.md 8.
"""

from ._chain import MAX_LENGTH, PAYWORD_SIZE, PayWordChain, PaywordChecker, hash_to_root
from ._checks import (
    MAX_VALIDITY_MS,
    REDEEM_GRACE_MS,
    check_commitment,
    check_redemption,
    redeemed_of,
    reservation_of,
    verify_commitment,
    verify_purse,
    verify_redeemed,
    verify_reservation,
)
from ._errors import (
    AlreadyRedeemed,
    BadCommitment,
    BadPayword,
    BeyondChain,
    OutOfOrder,
    PurseError,
    PurseExpired,
    Replayed,
    UnknownChain,
    Unsupported,
)
from ._module import PurseModule
from ._ops import PURSE_REDEEM, PURSE_RESERVE, PURSE_STATUS
from ._schema import (
    COMMITMENT,
    REDEEMED,
    RESERVATION,
    PurseCommitment,
    PurseRedeemed,
    PurseReservation,
)
from ._wire import (
    BANK_PURSE_REDEEM,
    BANK_PURSE_RESERVE,
    BANK_PURSE_STATUS,
    PURSE_STATES,
    RedeemAnswer,
    RedeemRequest,
    ReserveAnswer,
    ReserveRequest,
    StatusAnswer,
    StatusRequest,
)

__all__ = [
    "BANK_PURSE_REDEEM",
    "BANK_PURSE_RESERVE",
    "BANK_PURSE_STATUS",
    "COMMITMENT",
    "MAX_LENGTH",
    "MAX_VALIDITY_MS",
    "PAYWORD_SIZE",
    "PURSE_REDEEM",
    "PURSE_RESERVE",
    "PURSE_STATES",
    "PURSE_STATUS",
    "REDEEMED",
    "REDEEM_GRACE_MS",
    "RESERVATION",
    "AlreadyRedeemed",
    "BadCommitment",
    "BadPayword",
    "BeyondChain",
    "OutOfOrder",
    "PayWordChain",
    "PaywordChecker",
    "PurseCommitment",
    "PurseError",
    "PurseExpired",
    "PurseModule",
    "PurseRedeemed",
    "PurseReservation",
    "RedeemAnswer",
    "RedeemRequest",
    "Replayed",
    "ReserveAnswer",
    "ReserveRequest",
    "StatusAnswer",
    "StatusRequest",
    "UnknownChain",
    "Unsupported",
    "check_commitment",
    "check_redemption",
    "hash_to_root",
    "redeemed_of",
    "reservation_of",
    "verify_commitment",
    "verify_purse",
    "verify_redeemed",
    "verify_reservation",
]
