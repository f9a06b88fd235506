"""The ``bank`` ops the purse adds, declared once (``services._ops``): the bank's
purse component serves them; the buyer reserves and asks the status, the seller
redeems (and asks the status)."""

from __future__ import annotations

from typing import Final

from ..._ops import Op
from .._wire import BANK_SERVICE
from ._wire import (
    BANK_PURSE_REDEEM,
    BANK_PURSE_RESERVE,
    BANK_PURSE_STATUS,
    RedeemAnswer,
    RedeemRequest,
    ReserveAnswer,
    ReserveRequest,
    StatusAnswer,
    StatusRequest,
)

__all__ = ["PURSE_REDEEM", "PURSE_RESERVE", "PURSE_STATUS"]

#: ``bank.purse_reserve``: hold a chain's whole value from the buyer, answer the
#: ``purse.reservation``.
PURSE_RESERVE: Final = Op(BANK_SERVICE, BANK_PURSE_RESERVE, ReserveRequest, ReserveAnswer)
#: ``bank.purse_redeem``: the seller redeems the highest payword, once per chain.
PURSE_REDEEM: Final = Op(BANK_SERVICE, BANK_PURSE_REDEEM, RedeemRequest, RedeemAnswer)
#: ``bank.purse_status``: what became of a chain (its buyer or seller asks).
PURSE_STATUS: Final = Op(BANK_SERVICE, BANK_PURSE_STATUS, StatusRequest, StatusAnswer)
