"""Issue 7: the archive's tables are STRICT, and a migration converts existing files.

An archive written by the previous schema (plain tables) is opened by this build:
its records are copied as they were, the chain still verifies, each peer's usage is
counted; a value of the wrong type can no longer be stored; and a value that was
edited by hand into another type before the migration shows up as an edited record
instead of a file that cannot be opened.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from pki import NOW, Market

from semper.agents.components import _archive
from semper.agents.runtime._storage import Database
from semper.services.archive import ChainBroken, verify_chain
from semper.services.statements import sign_statement

NOW_MS = int(NOW.timestamp() * 1000)


def _old_archive(path: Path, market: Market, count: int = 4) -> list[bytes]:
    """A file as the previous build left it: migration 1 of ``archive`` only."""
    buyer = market.agent("buyer")
    database = Database.open_sync(path, {"archive": _archive.MIGRATIONS["archive"][:1]})
    notes = [sign_statement("test.note", {"n": n}, key=buyer.key, certificate=buyer.cert,
                            now_ms=NOW_MS + n, nonce=bytes([n]) * 16) for n in range(count)]
    database.transaction_sync(lambda c: [
        c.execute("INSERT INTO archive_records (seq, prev, hash, direction, peer, txn,"
                  " statement, digest, recorded_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                  (r.seq, r.prev, r.hash, str(r.direction), r.peer, r.transaction,
                   r.statement, note.digest, r.recorded_at))
        for r, note in zip(_records(notes), notes, strict=True)])
    database.close()
    return [note.digest for note in notes]


def _records(notes: list) -> list:
    from semper.services.archive import next_record

    chain: list = []
    for note in notes:
        chain.append(next_record(chain[-1] if chain else None, direction="received",
                                 peer="buyer", transaction="buyer/t", statement=note,
                                 recorded_at=NOW_MS))
    return chain


def _open(path: Path) -> Database:
    return Database.open_sync(path, _archive.MIGRATIONS)


def test_an_old_archive_is_migrated_to_strict_tables(market: Market, tmp_path: Path) -> None:
    path = tmp_path / "agent.sqlite"
    digests = _old_archive(path, market)
    database = _open(path)
    try:
        records = database.read_sync(_archive.read_records)
        verify_chain(records)
        assert len(records) == 4
        assert database.read_sync(lambda c: _archive.peer_usage(c, "buyer")) == (
            4, sum(len(r.statement) for r in records))
        assert database.read_sync(lambda c: [row[0] for row in c.execute(
            "SELECT digest FROM archive_records ORDER BY seq")]) == digests
        for table in ("archive_records", "archive_certificates", "archive_usage"):
            sql = database.read_sync(lambda c, t=table: c.execute(
                "SELECT sql FROM sqlite_master WHERE name = ?", (t,)).fetchone()[0])
            assert sql.rstrip().endswith("STRICT"), table
        # A REAL where an INTEGER belongs (issue 7, kind 6) cannot be stored any more.
        with pytest.raises(sqlite3.IntegrityError):
            database.transaction_sync(lambda c: c.execute(
                "UPDATE archive_records SET recorded_at = 1.5 WHERE seq = 0"))
        with pytest.raises(sqlite3.IntegrityError):
            database.transaction_sync(lambda c: c.execute(
                "UPDATE archive_records SET prev = 'text' WHERE seq = 0"))
    finally:
        database.close()


def test_a_value_edited_into_another_type_before_the_migration_is_named(
    market: Market, tmp_path: Path,
) -> None:
    path = tmp_path / "agent.sqlite"
    _old_archive(path, market)
    with sqlite3.connect(path) as db:  # by hand, in the old, loosely typed table
        db.execute("UPDATE archive_records SET recorded_at = 12.75 WHERE seq = 2")
    database = _open(path)  # opens: the migration does not fail on it
    try:
        with pytest.raises(ChainBroken) as info:
            verify_chain(database.read_sync(_archive.read_records))
    finally:
        database.close()
    assert (info.value.detail["kind"], info.value.detail["seq"]) == ("edited", 2)
