"""Why a cheque was refused: the codes only this instrument raises (codes are API;
they keep the ``payment.`` prefix they always had)."""

from __future__ import annotations

from typing import ClassVar

from .._errors import PaymentError

__all__ = ["BadCheque", "ChequeExpired", "ChequeReused", "ChequeStopped", "TooManyStopped"]


class BadCheque(PaymentError):
    """A cheque handed to the payee that is malformed, not signed by its payer, or
    not for the amount and reference expected; ``detail["field"]``."""

    code: ClassVar[str] = "payment.bad_cheque"


class ChequeExpired(PaymentError):
    code: ClassVar[str] = "payment.cheque_expired"


class ChequeStopped(PaymentError):
    """The payer stopped the cheque's serial before it was deposited."""

    code: ClassVar[str] = "payment.cheque_stopped"


class TooManyStopped(PaymentError):
    """``bank.stop_cheque`` past the serials one payer may hold stopped and never
    cleared (each is kept for good, and a stop costs nothing); ``detail``
    ``stopped``, ``max``."""

    code: ClassVar[str] = "payment.too_many_stopped"


class ChequeReused(PaymentError):
    """Another cheque with this payer's serial cleared before: a serial clears once."""

    code: ClassVar[str] = "payment.cheque_reused"
