"""Amount: integer minor units, one ISO 4217 currency per value, no guessing of rates."""

from __future__ import annotations

import dataclasses
from decimal import Decimal
from fractions import Fraction

import pytest

from semper.services import Amount, CurrencyMismatch, ServiceError
from semper.services.money import BadAmount

EUR = "EUR"


def eur(units: int) -> Amount:
    return Amount(EUR, units)


def test_amount_is_a_frozen_hashable_value() -> None:
    a = eur(1250)
    assert (a.currency, a.minor_units) == ("EUR", 1250)
    assert a == eur(1250)
    assert len({a, eur(1250), eur(1251)}) == 2
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.minor_units = 5  # type: ignore[misc]
    assert a.to_wire() == {"currency": "EUR", "minor_units": 1250}


@pytest.mark.parametrize(
    "units",
    [
        1.0,  # a float is never money
        Decimal("1"),  # nor a Decimal
        Fraction(1, 1),  # nor any other number type
        True,  # bool is an int subclass; True cents is not money
        "100",  # a numeric string is not a number
        None,
    ],
)
def test_minor_units_must_be_an_int(units: object) -> None:
    with pytest.raises(BadAmount) as info:
        Amount(EUR, units)  # type: ignore[arg-type]
    assert info.value.code == "money.bad_amount"
    assert isinstance(info.value, ServiceError)


@pytest.mark.parametrize(
    "currency",
    [
        "eur",  # ISO codes are upper case
        "EU",  # too short
        "EURO",  # too long
        "",
        "E1R",  # letters only
        "EUR\n",  # no trailing newline sneaks past the pattern
        "ÉUR",  # ASCII letters only
        978,  # the numeric ISO code is not accepted
        None,
    ],
)
def test_currency_must_be_an_iso_4217_code(currency: object) -> None:
    with pytest.raises(BadAmount):
        Amount(currency, 1)  # type: ignore[arg-type]


def test_arithmetic_within_one_currency() -> None:
    assert eur(150) + eur(-50) == eur(100)
    assert eur(150) - eur(200) == eur(-50)
    assert -eur(7) == eur(-7)
    assert eur(1) < eur(2) <= eur(2)
    assert eur(3) > eur(2) >= eur(2)
    top = (1 << 63) - 1  # the range is signed 64-bit (tests/test_hardening_money.py)
    assert Amount("JPY", top - 1) + Amount("JPY", 1) == Amount("JPY", top)


@pytest.mark.parametrize(
    "op",
    [
        lambda a, b: a + b,
        lambda a, b: a - b,
        lambda a, b: a < b,
        lambda a, b: a <= b,
        lambda a, b: a > b,
        lambda a, b: a >= b,
    ],
    ids=["add", "sub", "lt", "le", "gt", "ge"],
)
def test_no_arithmetic_or_ordering_across_currencies(op) -> None:
    with pytest.raises(CurrencyMismatch) as info:
        op(eur(100), Amount("USD", 100))
    assert info.value.code == "money.currency_mismatch"


def test_equality_across_currencies_is_false_not_an_error() -> None:
    assert eur(100) != Amount("USD", 100)


@pytest.mark.parametrize("other", [1, 1.0, Decimal("1"), "EUR:1"])
def test_no_arithmetic_with_plain_numbers(other: object) -> None:
    with pytest.raises(TypeError):
        eur(1) + other  # type: ignore[operator]
    with pytest.raises(TypeError):
        eur(1) < other  # type: ignore[operator]  # noqa: B015


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("EUR:50000", eur(50000)),
        ("EUR:0", eur(0)),
        ("EUR:-5", eur(-5)),
        ("JPY:1000", Amount("JPY", 1000)),
        ("EUR:007", eur(7)),
    ],
)
def test_parse(text: str, expected: Amount) -> None:
    assert Amount.parse(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "EUR",  # no separator
        "EUR:",  # no units
        "EUR:-",  # a sign alone
        "EUR:--5",  # two signs (int() would raise ValueError, not BadAmount)
        "EUR:+5",  # no plus sign
        "EUR:1.50",  # minor units, never a decimal point
        "EUR:1e3",  # nor an exponent
        "EUR: 5",  # no spaces
        "EUR:5\n",  # nor a trailing newline
        "EUR:1_000",  # nor Python's digit separators
        "EUR:²",  # isdigit() is true for superscripts but int() refuses them
        "EUR:٣",  # non-ASCII digits are not accepted either
        "eur:5",  # the currency is checked too
        ":5",
        "5:EUR",
        "",
    ],
)
def test_parse_refuses_anything_else_with_bad_amount(text: str) -> None:
    with pytest.raises(BadAmount):
        Amount.parse(text)


@pytest.mark.parametrize(
    ("amount", "text"),
    [
        (eur(123456), "EUR 1,234.56"),
        (eur(5), "EUR 0.05"),
        (eur(0), "EUR 0.00"),
        (eur(-5), "EUR -0.05"),
        (eur(-123456789), "EUR -1,234,567.89"),
        (Amount("JPY", 1000), "JPY 1,000"),  # no minor unit
        (Amount("BHD", 1234), "BHD 1.234"),  # three decimals
        (Amount("CHF", 100), "CHF 1.00"),  # two unless listed otherwise
    ],
)
def test_str_shows_major_units_with_the_currency_exponent(amount: Amount, text: str) -> None:
    assert str(amount) == text
