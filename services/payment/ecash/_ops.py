"""The ``bank`` ops the ecash instrument adds, declared once (``services._ops``): the
bank's ecash half (agents/instruments/ecash.py) serves them; the wallet (keys,
withdraw, exchange) and the payee (keys, deposit) call them."""

from __future__ import annotations

from typing import Final

from ..._ops import Op
from .._wire import BANK_SERVICE
from ._wire import (
    BANK_ECASH_DEPOSIT,
    BANK_ECASH_EXCHANGE,
    BANK_ECASH_KEYS,
    BANK_ECASH_WITHDRAW,
    DepositAnswer,
    DepositRequest,
    ExchangeAnswer,
    ExchangeRequest,
    KeysAnswer,
    KeysRequest,
    WithdrawAnswer,
    WithdrawRequest,
)

__all__ = ["ECASH_DEPOSIT", "ECASH_EXCHANGE", "ECASH_KEYS", "ECASH_WITHDRAW"]

#: ``bank.ecash_keys``: the denomination keys of a currency, valid now.
ECASH_KEYS: Final = Op(BANK_SERVICE, BANK_ECASH_KEYS, KeysRequest, KeysAnswer)
#: ``bank.ecash_withdraw``: debit the requester, sign its blinded coins.
ECASH_WITHDRAW: Final = Op(BANK_SERVICE, BANK_ECASH_WITHDRAW, WithdrawRequest, WithdrawAnswer)
#: ``bank.ecash_deposit``: the payee deposits coins spent to it; the settlement.
ECASH_DEPOSIT: Final = Op(BANK_SERVICE, BANK_ECASH_DEPOSIT, DepositRequest, DepositAnswer)
#: ``bank.ecash_exchange``: coins (or a refund voucher) in, new coins of the same value out.
ECASH_EXCHANGE: Final = Op(BANK_SERVICE, BANK_ECASH_EXCHANGE, ExchangeRequest, ExchangeAnswer)
