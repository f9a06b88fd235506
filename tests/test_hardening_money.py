"""Issue 7, kind 6: money columns hold integers in range, always; holders are agent ids.

* Every amount and every running total stays within signed 64-bit before anything is
  written (``money.out_of_range``); a refused mint changes nothing.
* The ledger and bank tables refuse a value that is not an integer (STRICT tables),
  and an existing database is converted by a migration.
* An account holder is a well-formed agent id (docs/protocol.md section 2.1).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from cli_helpers import market, prebuilt, refused, semper  # noqa: F401 (fixtures)

from semper.agents.components import _bank, _ledger
from semper.agents.runtime._storage import Database, StorageError
from semper.services import Amount
from semper.services.certificates import BadAgentId, check_agent_id
from semper.services.money import MAX_MINOR_UNITS, AmountOutOfRange, BadAmount

TOP = (1 << 63) - 1


def accounts(market: Path) -> list[tuple[str, str, object, str]]:
    path = market / "bank" / "data" / "agent.sqlite"
    with sqlite3.connect(path) as c:
        return c.execute("SELECT holder, currency, balance, typeof(balance) FROM ledger_accounts"
                         " ORDER BY holder, currency").fetchall()


# -- the instance ------------------------------------------------------------------


def test_mint_past_signed_64_bit_is_refused_and_changes_nothing(market: Path) -> None:
    """The instance: minting the top of int64 to a funded buyer committed the mint, the
    balances became REAL, and `bank accounts` failed forever after."""
    before = accounts(market)
    code, out, err = semper("bank", "mint", "--config", market / "bank" / "agent.toml",
                            "buyer", f"EUR:{TOP}")
    refused((code, out, err), "money.out_of_range")
    assert accounts(market) == before
    assert all(kind == "integer" for *_, kind in accounts(market))
    code, out, err = semper("bank", "accounts", "--config", market / "bank" / "agent.toml",
                            "--json")
    assert code == 0, err


def test_mint_up_to_the_top_then_one_more(market: Path) -> None:
    """Another member: a total that lands exactly on the bound is fine; one more unit
    (on the customer, and so on the issuance account) is refused."""
    config = market / "bank" / "agent.toml"
    minted = sum(b for h, _, b, _ in accounts(market) if h != _ledger.ISSUANCE)
    code, _, err = semper("bank", "mint", "--config", config, "seller", f"EUR:{TOP - minted}")
    assert code == 0, err
    before = accounts(market)
    code, out, err = semper("bank", "mint", "--config", config, "notary", "EUR:1")
    refused((code, out, err), "money.out_of_range")  # the issuance account would pass -TOP
    assert accounts(market) == before
    code, _, err = semper("bank", "accounts", "--config", config)
    assert code == 0, err


def test_ledger_checks_every_running_total(tmp_path: Path) -> None:
    database = Database.open_sync(tmp_path / "bank.sqlite", _bank.MIGRATIONS)
    try:
        database.transaction_sync(lambda c: _ledger.mint(c, "alice", Amount("EUR", TOP - 5),
                                                         time_ms=1))
        database.transaction_sync(lambda c: _ledger.mint(c, "bob", Amount("EUR", 5), time_ms=1))
        with pytest.raises(AmountOutOfRange):
            database.transaction_sync(lambda c: _ledger.mint(c, "bob", Amount("EUR", 1),
                                                             time_ms=1))
        # A move that would push a payee past the top (alice holds TOP-5 + bob's 5 = TOP).
        database.transaction_sync(lambda c: _ledger.move(c, "bob", "alice", Amount("EUR", 5),
                                                         kind="transfer", time_ms=1))
        database.read_sync(_ledger.check_books)
        assert database.read_sync(lambda c: _ledger.minted_total(c, "EUR")) == TOP
    finally:
        database.close()


# -- Amount -------------------------------------------------------------------------


@pytest.mark.parametrize("units", [TOP + 1, -TOP - 1, 10**20, -(10**30)])
def test_amount_outside_signed_64_bit_is_refused(units: int) -> None:
    with pytest.raises(AmountOutOfRange) as info:
        Amount("EUR", units)
    assert info.value.code == "money.out_of_range"
    assert isinstance(info.value, BadAmount)


def test_amount_arithmetic_that_leaves_the_range_raises() -> None:
    top = Amount("EUR", MAX_MINOR_UNITS)
    assert -top == Amount("EUR", -TOP)  # symmetric: negation never leaves the range
    with pytest.raises(AmountOutOfRange):
        _ = top + Amount("EUR", 1)
    with pytest.raises(AmountOutOfRange):
        _ = -top - Amount("EUR", 1)
    with pytest.raises(AmountOutOfRange):
        Amount.parse("EUR:99999999999999999999")
    with pytest.raises(BadAmount):  # not a traceback from int() on a huge string either
        Amount.parse("EUR:" + "9" * 5000)


# -- strict tables and their migration ------------------------------------------------


MONEY_COLUMNS = [("ledger_accounts", "balance"), ("ledger_postings", "amount"),
                 ("bank_payments", "amount"), ("bank_payments", "refunded")]


def test_money_tables_refuse_a_non_integer(tmp_path: Path) -> None:
    database = Database.open_sync(tmp_path / "bank.sqlite", _bank.MIGRATIONS)
    try:
        database.transaction_sync(lambda c: _ledger.mint(c, "alice", Amount("EUR", 10),
                                                         time_ms=1))
        for value in (1e19, 9.3e18, "12.5", "abc", b"\x01", 1.5):  # none is an int64
            with pytest.raises(sqlite3.IntegrityError):
                database.transaction_sync(lambda c, v=value: c.execute(
                    "UPDATE ledger_accounts SET balance = ? WHERE holder = 'alice'", (v,)))
        # An integer overflow in SQL arithmetic would turn the column REAL: refused too.
        with pytest.raises(sqlite3.IntegrityError):
            database.transaction_sync(lambda c: c.execute(
                "UPDATE ledger_accounts SET balance = balance + ? WHERE holder = 'alice'",
                (TOP,)))
        strict = database.read_sync(lambda c: {r[1]: r[5] for r in c.execute(
            "PRAGMA table_list") if r[1].startswith(("ledger_", "bank_"))})
        assert strict and all(strict.values()), strict
    finally:
        database.close()


def _old_schema(path: Path) -> None:
    """A bank database as the build before this issue left it, with a REAL balance."""
    connection = sqlite3.connect(path, isolation_level=None)
    connection.execute("CREATE TABLE schema_versions (component TEXT PRIMARY KEY,"
                       " version INTEGER NOT NULL)")
    for component in ("ledger", "bank"):
        for statement in _bank.MIGRATIONS[component][0].split(";"):
            connection.execute(statement)
        connection.execute("INSERT INTO schema_versions VALUES (?, 1)", (component,))
    connection.execute("INSERT INTO ledger_accounts (holder, currency, balance)"
                       " VALUES ('@issuance', 'EUR', -500), ('buyer', 'EUR', 500)")
    connection.execute("INSERT INTO ledger_entries (time_ms, kind) VALUES (1, 'mint')")
    connection.execute("INSERT INTO ledger_postings VALUES (1, 1, -500), (1, 2, 500)")
    connection.execute("INSERT INTO bank_payments VALUES (x'00', 'buyer', 'seller', 'EUR',"
                       " 5, 0, 1)")
    connection.close()


def test_migration_converts_an_existing_database(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    _old_schema(path)
    database = Database.open_sync(path, _bank.MIGRATIONS)
    try:
        assert database.read_sync(lambda c: c.execute(
            "SELECT holder, balance, typeof(balance) FROM ledger_accounts ORDER BY id"
        ).fetchall()) == [("@issuance", -500, "integer"), ("buyer", 500, "integer")]
        database.read_sync(_ledger.check_books)
        assert database.read_sync(lambda c: c.execute(
            "SELECT amount, refunded FROM bank_payments").fetchall()) == [(5, 0)]
        with pytest.raises(sqlite3.IntegrityError):
            database.transaction_sync(lambda c: c.execute(
                "UPDATE ledger_accounts SET balance = 1.5"))
        database.transaction_sync(lambda c: _ledger.mint(c, "buyer", Amount("EUR", 1),
                                                         time_ms=2))
        database.read_sync(_ledger.check_books)
    finally:
        database.close()


def test_migration_refuses_a_database_holding_a_real_balance(tmp_path: Path) -> None:
    """A file the old bug already damaged is not silently rounded: the migration stops
    with agent.storage, and the file is left as it was."""
    path = tmp_path / "damaged.sqlite"
    _old_schema(path)
    with sqlite3.connect(path) as c:
        c.execute("UPDATE ledger_accounts SET balance = 9.3e18 WHERE holder = 'buyer'")
    with pytest.raises(StorageError) as info:
        Database.open_sync(path, _bank.MIGRATIONS)
    assert info.value.code == "agent.storage"
    with sqlite3.connect(path) as c:
        assert c.execute("SELECT version FROM schema_versions WHERE component = 'ledger'"
                         ).fetchone() == (1,)


# -- holders are agent ids -------------------------------------------------------------


@pytest.mark.parametrize("holder", [
    "buyer\u200b",  # a zero-width space: a look-alike of buyer
    "BUYER",  # ids are lowercase
    "",  # empty
    "../x",  # a path
    "@issuance",  # the issuance account is not a customer (was an IntegrityError)
    "-buyer",  # would parse as an option elsewhere
    "b" * 64,  # too long
    "buyer\n",  # a trailing newline
])
def test_mint_refuses_a_holder_that_is_not_an_agent_id(holder: str, market: Path) -> None:
    before = accounts(market)
    code, out, err = semper("bank", "mint", "--config", market / "bank" / "agent.toml",
                            "--", holder, "EUR:100")
    refused((code, out, err), "agent.bad_id")
    assert accounts(market) == before


def test_ledger_refuses_a_bad_holder_itself(tmp_path: Path) -> None:
    database = Database.open_sync(tmp_path / "bank.sqlite", _bank.MIGRATIONS)
    try:
        for holder in ("BUYER", "buyer\u200b", _ledger.ISSUANCE):
            with pytest.raises((BadAgentId, ValueError)):
                database.transaction_sync(lambda c, h=holder: _ledger.mint(
                    c, h, Amount("EUR", 5), time_ms=1))
            with pytest.raises(BadAgentId):
                database.transaction_sync(lambda c, h=holder: _ledger.open_account(
                    c, h, "EUR") if h != _ledger.ISSUANCE else check_agent_id(h))
        assert database.read_sync(lambda c: c.execute(
            "SELECT count(*) FROM ledger_accounts").fetchone()) == (0,)
    finally:
        database.close()


@pytest.mark.parametrize("good", ["buyer", "seller-2", "seller.books", "buyer_7", "0", "a" * 63])
def test_the_grammar_admits_the_ids_markets_use(good: str) -> None:
    assert check_agent_id(good) == good


def test_bad_agent_id_is_a_value_error_with_a_code() -> None:
    with pytest.raises(ValueError) as info:
        check_agent_id("Buyer")
    assert isinstance(info.value, BadAgentId)
    assert info.value.code == "agent.bad_id"
    assert "Buyer" in str(info.value) and not str(info.value).startswith("agent.bad_id")
