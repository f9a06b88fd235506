"""The cardholder's cards (``Cards``, a component on every buyer): what the ``card``
payment module pays with (``ctx.holder("card")``, docs/protocol.md 8.8).

A card is a number and an expiry its bank issued against the holder's account
(``semper market init`` issues the buyer one, ``add_card``). The buyer keeps them in
``cards_cards`` and nowhere else: the card module seals them for the bank's gateway
(the seller never sees them), and ``semper wallet --json`` lists them (``list``).
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Final

from semper.agents.runtime._component import Component
from semper.services.payment.card import UnknownCard, luhn_ok

__all__ = ["MIGRATIONS", "Card", "Cards", "add_card", "check_card_number", "luhn_digit",
           "read_cards"]

MIGRATIONS: Final = {
    "cards": [
        "CREATE TABLE cards_cards ("
        " number TEXT PRIMARY KEY, expiry TEXT NOT NULL, bank TEXT NOT NULL,"
        " added_ms INTEGER NOT NULL) STRICT"
    ],
}

_NUMBER: Final = re.compile(r"[0-9]{16}\Z")
_EXPIRY: Final = re.compile(r"[0-9]{4}-(0[1-9]|1[0-2])\Z")


def luhn_digit(digits: str) -> str:
    """The Luhn check digit to append to ``digits`` (ISO/IEC 7812-1)."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch) * (2 if i % 2 == 0 else 1)
        total += d - 9 if d > 9 else d
    return str(-total % 10)


def check_card_number(number: object) -> bool:
    """Sixteen digits whose last is their Luhn check digit."""
    return type(number) is str and _NUMBER.match(number) is not None and luhn_ok(number)


@dataclass(frozen=True, slots=True)
class Card:
    """One card as its holder keeps it."""

    number: str
    expiry: str  # "YYYY-MM": valid to the end of that month
    bank: str

    def __iter__(self) -> Iterator[str]:
        """Unpacks as ``(number, expiry)``: what payment instructions take."""
        return iter((self.number, self.expiry))

    def to_json(self) -> dict[str, str]:
        """What ``semper wallet --json`` shows of it."""
        return {"number": self.number, "expiry": self.expiry}


def add_card(c: sqlite3.Connection, number: str, expiry: str, bank: str, *,
             now_ms: int) -> None:
    """Keep a card the bank issued (market init), in the caller's transaction; the
    same card again is harmless.

    Raises:
        ValueError: not a Luhn-valid 16-digit number, or an expiry not ``YYYY-MM``.
    """
    if not check_card_number(number):
        raise ValueError("a card number is 16 digits with a Luhn check digit")
    if type(expiry) is not str or _EXPIRY.match(expiry) is None:
        raise ValueError("a card's expiry is YYYY-MM")
    c.execute("INSERT OR IGNORE INTO cards_cards (number, expiry, bank, added_ms)"
              " VALUES (?, ?, ?, ?)", (number, expiry, bank, now_ms))


def _cards(c: sqlite3.Connection) -> list[Card]:
    return [Card(*row) for row in c.execute(
        "SELECT number, expiry, bank FROM cards_cards ORDER BY added_ms, number")]


class Cards(Component):
    """The cards this agent holds; the ``card`` module's payer-side state."""

    name = "cards"
    #: The payment module whose instrument this component holds (``ctx.holder``).
    holds: ClassVar[tuple[str, ...]] = ("card",)

    def migrations(self) -> Mapping[str, Sequence[str]]:
        return MIGRATIONS

    async def list(self) -> list[Card]:
        """Every card, the first issued first."""
        return await self.context.database.read(_cards)

    def _bank(self) -> str:
        return self.context.config.payment.bank or "bank"

    async def card(self, bank: str | None = None) -> Card:
        """The card to pay with: the first one issued by ``bank`` (None: our payment
        bank, whose gateway the card module seals the instructions for: a card of
        another bank is unknown there).

        Raises:
            UnknownCard: none at that bank: nothing to pay a card payment with.
        """
        bank = bank or self._bank()
        for card in await self.list():
            if card.bank == bank:
                return card
        raise UnknownCard(f"{self.context.id} holds no card issued by {bank!r}",
                          detail={"bank": bank})

    async def can_pay(self, amount: Any) -> str | None:
        """Why no card can pay now (none of our bank, whose gateway a card payment
        goes to), or None: for choosing an instrument before the gateway refuses."""
        bank = self._bank()
        if any(card.bank == bank for card in await self.list()):
            return None
        return f"cannot pay: no card issued by {bank} is held"

    async def add(self, number: str, expiry: str, bank: str) -> None:
        """Keep a card issued later (see ``add_card``)."""
        now_ms = self.context.now_ms()
        await self.context.database.transaction(
            lambda c: add_card(c, number, expiry, bank, now_ms=now_ms))


def read_cards(c: sqlite3.Connection) -> list[dict[str, str]]:
    """``"cards"`` of ``semper wallet --json``, on the database alone (the command
    shows them without running the agent)."""
    return [card.to_json() for card in _cards(c)]
