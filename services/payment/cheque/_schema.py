"""The bodies of the cheque statements (field kinds: ``services.payment._schema``).

    payment.cheque                payer -> payee: "my bank pays you on deposit"
        payer; payee; bank; amount; serial: str; expires_at: Unix ms; reference
    payment.cheque_cleared        bank -> payee: "the cheque cleared"
        cheque: digest of the cheque statement; payer; payee; amount; serial; entry
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Final

from ...money import Amount
from .._schema import _Body, add_field

__all__ = ["CHEQUE", "CHEQUE_CLEARED", "Cheque", "ChequeCleared"]

CHEQUE: Final = "payment.cheque"
CHEQUE_CLEARED: Final = "payment.cheque_cleared"

add_field("cheque", "digest")  # the cleared statement names its cheque by digest


@dataclass(frozen=True, slots=True, kw_only=True)
class Cheque(_Body):
    """``payment.cheque``, signed by ``payer``: ``bank`` pays ``amount`` from the
    payer's account to ``payee`` when the payee deposits this before ``expires_at``
    (Unix ms, inclusive). A payer's ``serial`` clears at most once."""

    TYPE: ClassVar[str] = CHEQUE

    payer: str
    payee: str
    bank: str
    amount: Amount
    serial: str
    expires_at: int
    reference: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class ChequeCleared(_Body):
    """``payment.cheque_cleared``, signed by the bank: the cheque with digest
    ``cheque`` was paid as journal entry ``entry``."""

    TYPE: ClassVar[str] = CHEQUE_CLEARED

    cheque: bytes
    payer: str
    payee: str
    amount: Amount
    serial: str
    entry: int
