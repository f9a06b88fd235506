"""The bank's books: accounts and a double-entry journal in SQLite.

Theory of operation. Every movement of money is one journal entry with two or more
postings that sum to zero, written in the caller's transaction. Each currency has
one issuance account (holder ``@issuance``) that may go negative: minting posts
``-amount`` there and ``+amount`` to a customer, so the sum over all accounts of a
currency is zero at every commit, and the sum over customer accounts changes only by
a recorded mint. A customer account never goes below zero: the check and the
postings run in one ``BEGIN IMMEDIATE`` transaction, so two payments cannot both
spend the same balance.

``check_books`` recomputes all of it from the postings: each account's balance is
the sum of its postings, each entry sums to zero, each currency sums to zero.

Range. Every balance, the issuance account's included, stays within signed 64-bit
(``money.check_range``): ``_post`` computes each new balance in Python and refuses
before it writes anything. Because the issuance account holds minus the sum of the
customers' balances, that one check also bounds the minted total and the customer
total. The tables are STRICT, so SQLite itself refuses a value that is not an
integer (an overflowing ``balance + ?`` would otherwise turn the column REAL).
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar, Final

from semper.agents.runtime._component import Component
from semper.services import Amount
from semper.services.certificates import check_agent_id
from semper.services.money import check_range
from semper.services.payment import InsufficientFunds, UnknownAccount

__all__ = [
    "ISSUANCE",
    "MIGRATIONS",
    "Ledger",
    "system_account",
    "BooksUnbalanced",
    "InsufficientFunds",
    "UnknownAccount",
    "account",
    "balance",
    "balances",
    "check_books",
    "customer_total",
    "minted_total",
    "mint",
    "move",
    "open_account",
]

ISSUANCE: Final = "@issuance"
_SYSTEM: Final = re.compile(r"@[a-z][a-z0-9_-]{0,31}\Z")

MIGRATIONS: Final = {
    "ledger": [
        "CREATE TABLE ledger_accounts ("
        " id INTEGER PRIMARY KEY, holder TEXT NOT NULL, currency TEXT NOT NULL,"
        " balance INTEGER NOT NULL DEFAULT 0, UNIQUE (holder, currency));"
        "CREATE TABLE ledger_entries ("
        " entry INTEGER PRIMARY KEY, time_ms INTEGER NOT NULL, kind TEXT NOT NULL,"
        " reference BLOB, memo TEXT NOT NULL DEFAULT '');"
        "CREATE TABLE ledger_postings ("
        " entry INTEGER NOT NULL REFERENCES ledger_entries (entry),"
        " account INTEGER NOT NULL REFERENCES ledger_accounts (id),"
        " amount INTEGER NOT NULL, PRIMARY KEY (entry, account));"
        "CREATE INDEX ledger_postings_account ON ledger_postings (account)",
        # 2: STRICT tables, so that only integers are ever stored in money columns. A
        # file holding a non-integer (the REAL balances of the old overflow) makes the
        # copy fail and the migration roll back: such books need a human, not rounding.
        # The old tables are renamed away first (which carries the foreign keys along
        # to the old names), so dropping them never orphans a row of the new ones.
        "ALTER TABLE ledger_postings RENAME TO ledger_postings_old;"
        "ALTER TABLE ledger_entries RENAME TO ledger_entries_old;"
        "ALTER TABLE ledger_accounts RENAME TO ledger_accounts_old;"
        "CREATE TABLE ledger_accounts ("
        " id INTEGER PRIMARY KEY, holder TEXT NOT NULL, currency TEXT NOT NULL,"
        " balance INTEGER NOT NULL DEFAULT 0, UNIQUE (holder, currency)) STRICT;"
        "CREATE TABLE ledger_entries ("
        " entry INTEGER PRIMARY KEY, time_ms INTEGER NOT NULL, kind TEXT NOT NULL,"
        " reference BLOB, memo TEXT NOT NULL DEFAULT '') STRICT;"
        "CREATE TABLE ledger_postings ("
        " entry INTEGER NOT NULL REFERENCES ledger_entries (entry),"
        " account INTEGER NOT NULL REFERENCES ledger_accounts (id),"
        " amount INTEGER NOT NULL, PRIMARY KEY (entry, account)) STRICT;"
        "INSERT INTO ledger_accounts SELECT id, holder, currency, balance"
        " FROM ledger_accounts_old;"
        "INSERT INTO ledger_entries SELECT entry, time_ms, kind, reference, memo"
        " FROM ledger_entries_old;"
        "INSERT INTO ledger_postings SELECT entry, account, amount FROM ledger_postings_old;"
        "DROP TABLE ledger_postings_old;"
        "DROP TABLE ledger_entries_old;"
        "DROP TABLE ledger_accounts_old;"
        "CREATE INDEX ledger_postings_account ON ledger_postings (account)",
    ],
}


class BooksUnbalanced(Exception):
    """An invariant of the books is broken: never expected; the operation fails as
    ``internal.error`` and the transaction rolls back."""

    code: ClassVar[str] = "internal.books_unbalanced"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True, slots=True)
class Account:
    id: int
    holder: str
    currency: str
    balance: int


def open_account(connection: sqlite3.Connection, holder: str, currency: str) -> Account:
    """The holder's account in ``currency``, opened if it does not exist.

    Raises:
        BadAgentId: ``holder`` is neither an agent id nor the issuance account.
        BadAmount: ``currency`` is not an ISO 4217 code.
    """
    if not _SYSTEM.match(holder):
        check_agent_id(holder, "an account holder")
    Amount(currency, 0)  # checks the code
    connection.execute("INSERT OR IGNORE INTO ledger_accounts (holder, currency) VALUES (?, ?)",
                       (holder, currency))
    return account(connection, holder, currency)


def system_account(name: str) -> str:
    """The holder name of the bank's own account ``name`` (``@name``): where an
    instrument keeps money that is no customer's while it is in flight (vouchers
    sold and not redeemed, purse reservations). It may not go below zero, and
    ``customer_total`` counts it: it is money the bank owes."""
    holder = "@" + name
    if not _SYSTEM.match(holder) or holder == ISSUANCE:
        raise ValueError(f"{name!r} is not a system account name")
    return holder


def account(connection: sqlite3.Connection, holder: str, currency: str) -> Account:
    """Raises UnknownAccount."""
    row = connection.execute(
        "SELECT id, holder, currency, balance FROM ledger_accounts"
        " WHERE holder = ? AND currency = ?", (holder, currency)).fetchone()
    if row is None:
        raise UnknownAccount(f"{holder} has no {currency} account at this bank",
                             detail={"holder": holder, "currency": currency})
    return Account(*row)


def balance(connection: sqlite3.Connection, holder: str, currency: str) -> Amount:
    return Amount(currency, account(connection, holder, currency).balance)


def balances(connection: sqlite3.Connection, holder: str) -> dict[str, int]:
    return dict(connection.execute(
        "SELECT currency, balance FROM ledger_accounts WHERE holder = ? ORDER BY currency",
        (holder,)))


def _post(connection: sqlite3.Connection, *, kind: str, time_ms: int, reference: bytes | None,
          memo: str, postings: Sequence[tuple[Account, int]]) -> int:
    if sum(amount for _, amount in postings) != 0:
        raise BooksUnbalanced(f"a {kind} entry would not sum to zero")
    if len({acct.id for acct, _ in postings}) != len(postings):
        raise ValueError(f"a {kind} entry posts to one account twice")
    for acct, amount in postings:  # every new balance in range before anything is written
        check_range(acct.balance + amount, f"{acct.holder}'s {acct.currency} balance")
    entry = connection.execute(
        "INSERT INTO ledger_entries (time_ms, kind, reference, memo) VALUES (?, ?, ?, ?)",
        (time_ms, kind, reference, memo)).lastrowid
    assert entry is not None
    for acct, amount in postings:
        connection.execute("INSERT INTO ledger_postings (entry, account, amount) VALUES (?, ?, ?)",
                           (entry, acct.id, amount))
        connection.execute("UPDATE ledger_accounts SET balance = balance + ? WHERE id = ?",
                           (amount, acct.id))
    return entry


def mint(connection: sqlite3.Connection, holder: str, amount: Amount, *, time_ms: int,
         memo: str = "") -> int:
    """Create money in ``holder``'s account, recorded against the issuance account.

    Returns the journal entry.

    Raises:
        ValueError: a non-positive amount.
        BadAgentId: ``holder`` is not an agent id (the issuance account is not one).
        AmountOutOfRange: a balance, the issuance account's included, would leave
            signed 64-bit; nothing is written.
    """
    if amount.minor_units <= 0:
        raise ValueError("mint a positive amount")
    check_agent_id(holder, "an account holder")
    source = open_account(connection, ISSUANCE, amount.currency)
    target = open_account(connection, holder, amount.currency)
    return _post(connection, kind="mint", time_ms=time_ms, reference=None, memo=memo,
                 postings=[(source, -amount.minor_units), (target, amount.minor_units)])


def move(connection: sqlite3.Connection, payer: str, payee: str, amount: Amount, *, kind: str,
         time_ms: int, reference: bytes | None = None, memo: str = "") -> int:
    """Move ``amount`` from ``payer``'s account to ``payee``'s; returns the entry.

    Raises:
        UnknownAccount: either has no account in that currency.
        InsufficientFunds: the payer's balance is below ``amount``.
        ValueError: a non-positive amount, or payer == payee.
    """
    if amount.minor_units <= 0:
        raise ValueError("move a positive amount")
    if payer == payee:
        raise ValueError("payer and payee are the same account")
    source = account(connection, payer, amount.currency)
    target = account(connection, payee, amount.currency)
    if source.balance < amount.minor_units:
        # Never the balance in the message: who asks for a move (a payee depositing
        # what it was given, say) is not always its payer.
        raise InsufficientFunds(f"{payer}'s account does not cover {amount}",
                                detail={"amount": amount.to_wire()})
    return _post(connection, kind=kind, time_ms=time_ms, reference=reference, memo=memo,
                 postings=[(source, -amount.minor_units), (target, amount.minor_units)])


def customer_total(connection: sqlite3.Connection, currency: str) -> int:
    row = connection.execute("SELECT coalesce(sum(balance), 0) FROM ledger_accounts"
                             " WHERE currency = ? AND holder != ?", (currency, ISSUANCE))
    return int(row.fetchone()[0])


def minted_total(connection: sqlite3.Connection, currency: str) -> int:
    row = connection.execute(
        "SELECT coalesce(sum(p.amount), 0) FROM ledger_postings p"
        " JOIN ledger_entries e ON e.entry = p.entry JOIN ledger_accounts a ON a.id = p.account"
        " WHERE e.kind = 'mint' AND a.holder != ? AND a.currency = ?", (ISSUANCE, currency))
    return int(row.fetchone()[0])


def check_books(connection: sqlite3.Connection) -> None:
    """Recompute every invariant from the postings.

    Raises:
        BooksUnbalanced: naming the first invariant that does not hold.
    """
    bad = connection.execute(
        "SELECT a.id, a.holder, a.currency, a.balance, coalesce(sum(p.amount), 0)"
        " FROM ledger_accounts a LEFT JOIN ledger_postings p ON p.account = a.id"
        " GROUP BY a.id HAVING a.balance != coalesce(sum(p.amount), 0)").fetchone()
    if bad:
        raise BooksUnbalanced(f"account {bad[1]}/{bad[2]} says {bad[3]}, its postings {bad[4]}")
    bad = connection.execute("SELECT entry FROM ledger_postings GROUP BY entry"
                             " HAVING sum(amount) != 0").fetchone()
    if bad:
        raise BooksUnbalanced(f"journal entry {bad[0]} does not sum to zero")
    bad = connection.execute("SELECT currency FROM ledger_accounts GROUP BY currency"
                             " HAVING sum(balance) != 0").fetchone()
    if bad:
        raise BooksUnbalanced(f"the {bad[0]} accounts do not sum to zero")
    bad = connection.execute("SELECT holder, currency FROM ledger_accounts"
                             " WHERE balance < 0 AND holder != ?", (ISSUANCE,)).fetchone()
    if bad:
        raise BooksUnbalanced(f"{bad[0]}'s {bad[1]} account is overdrawn")
    for (currency,) in connection.execute("SELECT DISTINCT currency FROM ledger_accounts"):
        if customer_total(connection, currency) != minted_total(connection, currency):
            raise BooksUnbalanced(f"{currency} held by customers differs from {currency} minted")


class Ledger(Component):
    """The bank's books as a component: its tables. The bank halves of payment
    instruments post through this module's functions inside their transactions."""

    name = "ledger"

    def migrations(self) -> Mapping[str, Sequence[str]]:
        return MIGRATIONS
