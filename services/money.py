"""Money as integers: ``Amount(currency, minor_units)``.

Floats and Decimals never represent money here; a value carries its ISO 4217 code,
and arithmetic or comparison across currencies raises instead of guessing a rate.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ClassVar, Final

from ._errors import ServiceError

__all__ = ["MAX_MINOR_UNITS", "Amount", "AmountOutOfRange", "BadAmount", "CurrencyMismatch",
           "check_range"]

#: Every amount, and every total made of amounts, fits a signed 64-bit integer: what an
#: SQLite INTEGER and a msgpack int hold. The range is symmetric (-MAX..MAX) so that
#: negating an amount never leaves it.
MAX_MINOR_UNITS: Final = (1 << 63) - 1

_CURRENCY = re.compile(r"[A-Z]{3}\Z")
_UNITS = re.compile(r"-?[0-9]{1,19}\Z")  # 19 digits hold every int64; int() stays cheap
# ISO 4217 minor-unit exponents that are not 2; everything else is shown with 2.
_EXPONENTS = {"JPY": 0, "KRW": 0, "ISK": 0, "CLP": 0, "BHD": 3, "KWD": 3, "OMR": 3, "TND": 3}


class CurrencyMismatch(ServiceError):
    code: ClassVar[str] = "money.currency_mismatch"


class BadAmount(ServiceError):
    code: ClassVar[str] = "money.bad_amount"


class AmountOutOfRange(BadAmount):
    """An amount or a running total outside -MAX_MINOR_UNITS..MAX_MINOR_UNITS."""

    code: ClassVar[str] = "money.out_of_range"


def check_range(units: int, what: str = "an amount") -> int:
    """``units`` if it fits signed 64-bit (symmetric); check before writing a total.

    Raises:
        AmountOutOfRange: it does not.
    """
    if not -MAX_MINOR_UNITS <= units <= MAX_MINOR_UNITS:
        shown = str(units) if abs(units) < 10**40 else "more than 40 digits of"
        raise AmountOutOfRange(f"{what} of {shown} minor units is outside the range "
                               f"of signed 64-bit (at most {MAX_MINOR_UNITS})",
                               detail={"max": MAX_MINOR_UNITS})
    return units


@dataclass(frozen=True, slots=True)
class Amount:
    """An amount of one currency in integer minor units (cents for EUR)."""

    currency: str
    minor_units: int

    def __post_init__(self) -> None:
        if not isinstance(self.currency, str) or not _CURRENCY.match(self.currency):
            raise BadAmount(f"currency must be an ISO 4217 code, got {self.currency!r}")
        # bool is an int subclass; True cents is not money.
        if type(self.minor_units) is not int:
            raise BadAmount(f"minor_units must be an int, got {type(self.minor_units).__name__}")
        check_range(self.minor_units)

    @classmethod
    def parse(cls, text: str) -> Amount:
        """Parse ``"EUR:50000"`` (minor units) as used on command lines.

        Raises:
            BadAmount: the text is not ``CCY:INTEGER``.
            AmountOutOfRange: the integer is outside signed 64-bit.
        """
        currency, sep, units = text.partition(":")
        # ASCII digits only: str.isdigit() admits "²" and "٣", and "--5" would pass lstrip.
        if not sep or not _UNITS.match(units):
            if sep and re.fullmatch(r"-?[0-9]+", units):
                raise AmountOutOfRange(f"{units[:24]}... minor units is outside the range of "
                                       f"signed 64-bit (at most {MAX_MINOR_UNITS})",
                                       detail={"max": MAX_MINOR_UNITS})
            raise BadAmount(f"expected CURRENCY:MINOR_UNITS such as EUR:50000, got {text!r:.80}")
        return cls(currency, int(units))

    def __str__(self) -> str:
        exp = _EXPONENTS.get(self.currency, 2)
        sign = "-" if self.minor_units < 0 else ""
        whole, frac = divmod(abs(self.minor_units), 10**exp)
        body = f"{whole:,}" + (f".{frac:0{exp}d}" if exp else "")
        return f"{self.currency} {sign}{body}"

    def _same(self, other: object) -> Amount:
        if not isinstance(other, Amount):
            raise TypeError(f"cannot combine Amount with {type(other).__name__}")
        if other.currency != self.currency:
            raise CurrencyMismatch(f"{self.currency} and {other.currency} do not mix")
        return other

    def __add__(self, other: Amount) -> Amount:
        return Amount(self.currency, self.minor_units + self._same(other).minor_units)

    def __sub__(self, other: Amount) -> Amount:
        return Amount(self.currency, self.minor_units - self._same(other).minor_units)

    def __neg__(self) -> Amount:
        return Amount(self.currency, -self.minor_units)

    def __lt__(self, other: Amount) -> bool:
        return self.minor_units < self._same(other).minor_units

    def __le__(self, other: Amount) -> bool:
        return self.minor_units <= self._same(other).minor_units

    def __gt__(self, other: Amount) -> bool:
        return self.minor_units > self._same(other).minor_units

    def __ge__(self, other: Amount) -> bool:
        return self.minor_units >= self._same(other).minor_units

    def to_wire(self) -> dict[str, object]:
        return {"currency": self.currency, "minor_units": self.minor_units}
