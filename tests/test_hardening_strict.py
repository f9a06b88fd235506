"""Kind 6 for the commerce tables: a seller's sales and a buyer's purchases (which
hold what was paid and its evidence) are STRICT tables, and existing files migrate."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from semper.agents.components import _purchase
from semper.agents.roles import seller
from semper.agents.runtime._storage import Database


@pytest.mark.parametrize(("component", "table", "row"), [
    ("commerce_sales", "commerce_sales",
     (b"\x01" * 32, "buyer", "PAID", b"\x80", b"p", None, 1)),
    ("commerce_purchases", "commerce_purchases",
     ("key-1", "seller", "guide", "transfer", "DONE", b"\x80", b"p", None, b"g", 1)),
])
def test_an_existing_commerce_table_becomes_strict_with_its_rows(
        tmp_path: Path, component: str, table: str, row: tuple[object, ...]) -> None:
    migrations = {**seller.MIGRATIONS, **_purchase.MIGRATIONS}
    path = tmp_path / "agent.sqlite"
    first = {component: migrations[component][:1]}  # the file as the old code left it
    database = Database.open_sync(path, first)
    marks = ", ".join("?" * len(row))
    database.transaction_sync(lambda c: c.execute(f"INSERT INTO {table} VALUES ({marks})",
                                                  row))
    database.close()

    database = Database.open_sync(path, {component: migrations[component]})
    try:
        rows = database.read_sync(lambda c: c.execute(f"SELECT * FROM {table}").fetchall())
        assert [tuple(r) for r in rows] == [row]
        sql = database.read_sync(lambda c: c.execute(
            "SELECT sql FROM sqlite_master WHERE name = ?", (table,)).fetchone()[0])
        assert sql.rstrip().endswith("STRICT")
        bad = (*row[:-1], 1.5)  # a REAL where an integer goes
        bad = (b"\x02" * 32, *bad[1:]) if table == "commerce_sales" else ("key-2", *bad[1:])
        with pytest.raises(sqlite3.IntegrityError):
            database.transaction_sync(lambda c: c.execute(
                f"INSERT INTO {table} VALUES ({marks})", bad))
    finally:
        database.close()


def test_revoking_the_ca_agent_itself_is_refused_and_changes_nothing(tmp_path: Path) -> None:
    # Found from outside (kind 10, a command that leaves a broken state): `ca revoke
    # DIR ca` exited 0, and the CA agent could never start again.
    from click.testing import CliRunner

    from semper.agents.cli import cli
    from semper.agents.operator._market import init_market

    market = tmp_path / "m"
    init_market(market)
    before = (market / "ca" / "crl.pem").read_bytes()
    done = CliRunner().invoke(cli, ["ca", "revoke", str(market), "ca"])
    assert done.exit_code == 1
    assert done.stderr.startswith("semper: agent.market: ") and "CA agent" in done.stderr
    assert len(done.stderr.splitlines()) == 1
    assert (market / "ca" / "crl.pem").read_bytes() == before
