"""Commerce protocols, money and certificates: sans-IO, no sockets, no clocks."""

from ._errors import ServiceError
from .money import Amount, CurrencyMismatch

__all__ = ["Amount", "CurrencyMismatch", "ServiceError"]
