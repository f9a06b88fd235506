"""Appending to the archive builds only the records it appends (issue 8, item 6): it
read the head's whole row, statement included, and built and checked an
``ArchiveRecord`` from it, ~20 us at each of a purchase's seven appends, for the two
fields the next record needs (its seq and hash). The chain is the same.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pki import NOW, Market
from pki import TestAgent as Agent  # not collected as a test class

from semper.agents.components import _archive
from semper.agents.runtime._storage import Database
from semper.services.archive import ArchiveRecord, verify_chain
from semper.services.statements import Statement, sign_statement

NOW_MS = int(NOW.timestamp() * 1000)


def _statement(agent: Agent, n: int) -> Statement:
    return sign_statement("commerce.offer", {"item": f"book-{n}"}, key=agent.key,
                          certificate=agent.cert, now_ms=NOW_MS + n,
                          nonce=n.to_bytes(16, "big"))


def _count_records(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    built = [0]
    post_init = ArchiveRecord.__post_init__

    def counting(self: ArchiveRecord) -> None:
        built[0] += 1
        post_init(self)

    monkeypatch.setattr(ArchiveRecord, "__post_init__", counting)
    return built


def test_an_append_builds_only_its_own_records(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The instance: one entry appended to a chain that has a head built one record
    (was two: the head, read back whole)."""
    (tmp_path / "pki").mkdir()
    market = Market(tmp_path / "pki")
    seller = market.agent("seller", role="seller")
    database = Database.open_sync(tmp_path / "agent.sqlite", _archive.MIGRATIONS)
    try:
        def add(n: int, *more: int) -> list[ArchiveRecord]:
            entries = [_archive.entry(_statement(seller, k), direction="sent", peer="buyer",
                                      transaction=f"tx-{k % 2}", certificate=seller.cert)
                       for k in (n, *more)]
            return database.transaction_sync(lambda c: _archive.append(c, entries,
                                                                       now_ms=NOW_MS))

        first = add(0)
        built = _count_records(monkeypatch)
        second = add(1)
        assert built[0] == 1
        third = add(2, 3)  # another member: several entries, one record each
        assert built[0] == 3
        monkeypatch.undo()
        chain: list[Any] = database.read_sync(lambda c: [
            _archive._row_to_record(r) for r in c.execute(
                f"SELECT {_archive._COLUMNS} FROM archive_records ORDER BY seq")])
    finally:
        database.close()
    assert chain == first + second + third
    assert [r.seq for r in chain] == [0, 1, 2, 3]
    verify_chain(chain, head=third[-1].hash)


def _plan(connection: Any, sql: str, params: tuple[Any, ...]) -> str:
    return " | ".join(row[3] for row in connection.execute(f"EXPLAIN QUERY PLAN {sql}", params))


#: Every look-up the code runs on archive_records (the archive's own, contracts',
#: mail's, the seller's), each by an index; the whole-chain reads and the key search
#: (instr over statements) scan by design.
_LOOKUPS: list[tuple[str, tuple[Any, ...], str]] = [
    ("SELECT seq, hash FROM archive_records ORDER BY seq DESC LIMIT 1", (), "SCAN"),
    ("SELECT 1 FROM archive_records WHERE digest = ? LIMIT 1", (b"d",), "archive_records_digest"),
    ("SELECT 1 FROM archive_records WHERE digest = ? AND txn = ? LIMIT 1", (b"d", "t"),
     "USING INDEX"),
    (f"SELECT {_archive._COLUMNS} FROM archive_records WHERE digest = ? AND txn != ?"
     " ORDER BY seq LIMIT 1", (b"d", "t"), "archive_records_digest"),
    ("SELECT 1 FROM archive_records WHERE txn = ? LIMIT 1", ("t",), "archive_records_txn"),
    ("SELECT 1 FROM archive_records WHERE txn = ? AND peer < ? LIMIT 1", ("t", "p"),
     "archive_records_txn"),
    ("SELECT DISTINCT txn FROM archive_records WHERE txn > ? AND txn < ? LIMIT 9",
     ("t", "u"), "archive_records_txn"),
    (f"SELECT {_archive._COLUMNS} FROM archive_records WHERE txn = ? ORDER BY seq", ("t",),
     "archive_records_txn"),
    ("SELECT statement FROM archive_records WHERE txn = ? AND direction = 'sent'", ("t",),
     "archive_records_txn"),
]


def test_an_append_writes_no_index_that_no_query_reads(tmp_path: Path) -> None:
    """The instance: archive_records kept a UNIQUE index on hash that no query reads
    (~5 us of each append, seven a purchase per party); every look-up the code runs is
    still answered by an index (the plans), and a file of the previous schema is
    rebuilt with its chain intact."""
    (tmp_path / "pki").mkdir()
    seller = Market(tmp_path / "pki").agent("seller", role="seller")
    path = tmp_path / "agent.sqlite"
    old = Database.open_sync(path, {"archive": _archive.MIGRATIONS["archive"][:2]})
    entries = [_archive.entry(_statement(seller, k), direction="sent", peer="buyer",
                              transaction=f"tx-{k % 2}", certificate=seller.cert)
               for k in range(3)]
    try:
        before = old.transaction_sync(lambda c: _archive.append(c, entries, now_ms=NOW_MS))
    finally:
        old.close()
    database = Database.open_sync(path, _archive.MIGRATIONS)
    try:
        indexes = database.read_sync(lambda c: sorted(row[1] for row in c.execute(
            "PRAGMA index_list(archive_records)")))
        assert indexes == ["archive_records_digest", "archive_records_txn"]
        for sql, params, expected in _LOOKUPS:
            plan = database.read_sync(lambda c, s=sql, p=params: _plan(c, s, p))
            assert expected in plan, (sql, plan)
        after = database.transaction_sync(lambda c: _archive.append(
            c, [_archive.entry(_statement(seller, 9), direction="received", peer="buyer",
                               transaction="tx-1")], now_ms=NOW_MS))
        chain = database.read_sync(_archive.read_records)
        assert database.read_sync(lambda c: _archive.peer_usage(c, "buyer"))[0] == 4
    finally:
        database.close()
    assert chain == before + after
    verify_chain(chain, head=after[-1].hash)


@pytest.mark.parametrize(("peer", "transaction", "seq", "at"), [
    ("buyer", "tx-1", 0, 0),
    ("seller", "a" * 64, (1 << 63) - 1, (1 << 53)),
    ("bank", "tx-\u00e9t\u00e9 \u2603", 127, 128),  # not ASCII: the generic encoding
    ("ca", "k" * 256, 65535, 65536),
])
def test_a_record_hash_is_the_canonical_encodings(peer: str, transaction: str, seq: int,
                                                  at: int) -> None:
    """Another member (a walk over values already checked): a record's hash packs
    its checked fields as they are; the bytes are the canonical encoding's."""
    import hashlib

    from semper.services.archive import _record
    from semper.services.statements import canonical_encode

    for direction in ("sent", "received"):
        record = ArchiveRecord(seq=seq, prev=bytes(range(32)), direction=direction,
                               peer=peer, transaction=transaction, statement=b"\x81\xa1a\x01",
                               recorded_at=at)
        assert record.hash == hashlib.sha256(
            _record.DOMAIN + canonical_encode(record._content())).digest()


def test_a_record_hash_walks_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """The instance: each record's hash ran the canonical encoder's walk over fields
    its construction had just checked (~2 us of ~4, a dozen records a purchase)."""
    from semper.services.archive import _record

    walks = [0]
    real = _record.canonical_encode

    def counting(value: Any) -> bytes:
        walks[0] += 1
        return real(value)

    monkeypatch.setattr(_record, "canonical_encode", counting)
    ArchiveRecord(seq=7, prev=bytes(32), direction="sent", peer="seller",
                  transaction="ab" * 32, statement=b"\x80", recorded_at=NOW_MS)
    assert walks[0] == 0


def test_an_append_inserts_its_rows_with_one_statement_per_table(tmp_path: Path) -> None:
    """The instance: an append ran an INSERT per record and another per record's
    certificate (the same signer's again and again), each a call into SQLite with the
    GIL given up and taken back. Now one INSERT of the records and one of the distinct
    certificates; past the bound on parameters, a few (another member: the chain and
    the certificates are the same)."""
    (tmp_path / "pki").mkdir()
    market = Market(tmp_path / "pki")
    signers = [market.agent("seller", role="seller"), market.agent("buyer")]
    database = Database.open_sync(tmp_path / "agent.sqlite", _archive.MIGRATIONS)
    try:
        def add(numbers: range) -> tuple[list[ArchiveRecord], list[str]]:
            entries = [_archive.entry(_statement(signers[k % 2], k), direction="sent",
                                      peer="buyer", transaction=f"tx-{k % 3}",
                                      certificate=signers[k % 2].cert) for k in numbers]
            statements: list[str] = []

            def run(c: Any) -> list[ArchiveRecord]:
                c.set_trace_callback(statements.append)
                try:
                    return _archive.append(c, entries, now_ms=NOW_MS)
                finally:
                    c.set_trace_callback(None)

            return database.transaction_sync(run), statements

        def inserts(statements: list[str], table: str) -> int:
            return sum(1 for s in statements if s.startswith(f"INSERT INTO {table} ")
                       or s.startswith(f"INSERT OR IGNORE INTO {table} "))

        first, statements = add(range(3))
        assert inserts(statements, "archive_records") == 1
        assert inserts(statements, "archive_certificates") == 1
        many, statements = add(range(3, 253))
        assert inserts(statements, "archive_records") == 3  # 100 + 100 + 50
        chain = database.read_sync(_archive.read_records)
        certificates = database.read_sync(_archive.read_certificates)
        usage = database.read_sync(lambda c: _archive.peer_usage(c, "buyer"))
    finally:
        database.close()
    assert chain == first + many and [r.seq for r in chain] == list(range(253))
    verify_chain(chain, head=many[-1].hash)
    assert sorted(c.serial_number for c in certificates) == sorted(
        s.cert.serial_number for s in signers)
    assert usage == (253, sum(len(r.statement) for r in chain))
