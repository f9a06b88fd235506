"""The bodies of the cheque statements: ``services._schema`` bodies whose keys are
the shared payment keys (``services.payment._schema.SCHEMA``) plus the cheque's own.

    payment.cheque                payer -> payee: "my bank pays you on deposit"
        payer; payee; bank; amount; serial: str; expires_at: Unix ms; reference
    payment.cheque_cleared        bank -> payee: "the cheque cleared"
        cheque: digest of the cheque statement; payer; payee; amount; serial; entry
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Final

from ..._schema import DIGEST, TIME, Schema, form
from ...money import Amount
from .._schema import SCHEMA as PAYMENT_SCHEMA
from .._schema import PaymentBody

__all__ = ["CHEQUE", "CHEQUE_CLEARED", "SCHEMA", "SERIAL", "Cheque", "ChequeCleared"]

CHEQUE: Final = "payment.cheque"
CHEQUE_CLEARED: Final = "payment.cheque_cleared"

#: A payer's cheque serial (``bank.stop_cheque`` names one too).
SERIAL: Final = form(r"[A-Za-z0-9._-]{1,64}", "1 to 64 characters of A-Z a-z 0-9 . _ -", 64)
#: The payment keys, and the cheque's own: the cleared statement names its cheque by
#: digest; a serial; the last Unix ms it may be deposited.
SCHEMA: Final = Schema(PAYMENT_SCHEMA.error, {**PAYMENT_SCHEMA.kinds, "cheque": DIGEST,
                                              "serial": SERIAL, "expires_at": TIME})


@dataclass(frozen=True, slots=True, kw_only=True)
class Cheque(PaymentBody):
    """``payment.cheque``, signed by ``payer``: ``bank`` pays ``amount`` from the
    payer's account to ``payee`` when the payee deposits this before ``expires_at``
    (Unix ms, inclusive). A payer's ``serial`` clears at most once."""

    TYPE: ClassVar[str] = CHEQUE
    SCHEMA: ClassVar[Schema] = SCHEMA

    payer: str
    payee: str
    bank: str
    amount: Amount
    serial: str
    expires_at: int
    reference: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class ChequeCleared(PaymentBody):
    """``payment.cheque_cleared``, signed by the bank: the cheque with digest
    ``cheque`` was paid as journal entry ``entry``."""

    TYPE: ClassVar[str] = CHEQUE_CLEARED
    SCHEMA: ClassVar[Schema] = SCHEMA

    cheque: bytes
    payer: str
    payee: str
    amount: Amount
    serial: str
    entry: int
