"""The evidence archive on disk: the hash chain of ``services.archive`` in SQLite.

Appending reads the chain's head and inserts the next record in one ``BEGIN
IMMEDIATE`` transaction, so concurrent writers (one per request handler) still
form one chain; the commit is fsync'd (``synchronous=FULL``) before ``record``
returns, and callers acknowledge a statement to a peer only after that. Writes that
arrive while a commit is in progress share the next one (the database's group commit):
one fsync for the batch, each caller still waits for its own record to be durable.

The certificates of every signer seen are kept beside the chain, so that an
evidence bundle can be exported long after the channel that carried them closed.
``archive_usage`` counts each peer's records and bytes in the same commit as the
records (the quota of ``evidence.deliver``); the tables are STRICT.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, ClassVar, Final

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from semper.agents.runtime._storage import Database
from semper.services.archive import (
    ZERO_HASH,
    ArchiveRecord,
    ChainBroken,
    Direction,
    EvidenceBundle,
    collect_bundle,
    named_digests,
    verify_chain,
)
from semper.services.certificates import (
    AgentIdentity,
    certificate_der,
    fingerprint,
    load_certificate,
)
from semper.services.statements import Statement, StatementError

__all__ = [
    "MIGRATIONS",
    "RECORD_OVERHEAD",
    "AmbiguousTransaction",
    "Archive",
    "UnknownTransaction",
    "append",
    "bundle_records",
    "entry",
    "peer_usage",
    "resolve_transaction",
    "transaction_peers",
]

#: Bytes a record costs beyond its statement (row, hash, prev, indexes), counted
#: against a peer's quota, so that many tiny statements cost what they take.
RECORD_OVERHEAD: Final = 256


class UnknownTransaction(Exception):
    """No transaction, purchase idempotency key or transaction prefix of that name."""

    code: ClassVar[str] = "archive.unknown_transaction"

    def __init__(self, message: str, *, detail: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail or {}


class AmbiguousTransaction(UnknownTransaction):
    """The name is a prefix of (or an idempotency key of) more than one transaction."""

    code: ClassVar[str] = "archive.ambiguous_transaction"

MIGRATIONS: Final = {
    "archive": [
        "CREATE TABLE archive_records ("
        " seq INTEGER PRIMARY KEY, prev BLOB NOT NULL, hash BLOB NOT NULL UNIQUE,"
        " direction TEXT NOT NULL, peer TEXT NOT NULL, txn TEXT NOT NULL,"
        " statement BLOB NOT NULL, digest BLOB NOT NULL, recorded_at INTEGER NOT NULL);"
        "CREATE INDEX archive_records_txn ON archive_records (txn);"
        "CREATE INDEX archive_records_digest ON archive_records (digest);"
        "CREATE TABLE archive_certificates (fingerprint BLOB PRIMARY KEY, der BLOB NOT NULL)",
        # 2: STRICT tables, so that a column can hold nothing but its type; existing
        # rows are copied with CAST, which leaves honest rows as they are and turns a
        # hand-edited value into one whose record hash no longer matches (so `semper
        # archive verify` still names the edit instead of the file failing to open).
        # The (txn, peer) index answers "whose transaction is this" (evidence.deliver);
        # archive_usage counts each peer's records and statement bytes (its quota).
        "CREATE TABLE archive_records_v2 ("
        " seq INTEGER PRIMARY KEY, prev BLOB NOT NULL, hash BLOB NOT NULL UNIQUE,"
        " direction TEXT NOT NULL,"
        " peer TEXT NOT NULL, txn TEXT NOT NULL, statement BLOB NOT NULL,"
        " digest BLOB NOT NULL, recorded_at INTEGER NOT NULL) STRICT;"
        "INSERT INTO archive_records_v2 SELECT CAST(seq AS INTEGER), CAST(prev AS BLOB),"
        " CAST(hash AS BLOB), CAST(direction AS TEXT), CAST(peer AS TEXT), CAST(txn AS TEXT),"
        " CAST(statement AS BLOB), CAST(digest AS BLOB), CAST(recorded_at AS INTEGER)"
        " FROM archive_records;"
        "DROP TABLE archive_records;"
        "ALTER TABLE archive_records_v2 RENAME TO archive_records;"
        "CREATE INDEX archive_records_txn ON archive_records (txn, peer);"
        "CREATE INDEX archive_records_digest ON archive_records (digest);"
        "CREATE TABLE archive_certificates_v2 ("
        " fingerprint BLOB PRIMARY KEY, der BLOB NOT NULL) STRICT;"
        "INSERT OR IGNORE INTO archive_certificates_v2 SELECT CAST(fingerprint AS BLOB),"
        " CAST(der AS BLOB) FROM archive_certificates;"
        "DROP TABLE archive_certificates;"
        "ALTER TABLE archive_certificates_v2 RENAME TO archive_certificates;"
        "CREATE TABLE archive_usage (peer TEXT PRIMARY KEY, records INTEGER NOT NULL,"
        " bytes INTEGER NOT NULL) STRICT;"
        "INSERT INTO archive_usage SELECT peer, count(*), sum(length(statement))"
        " FROM archive_records GROUP BY peer",
        # 3: hash no longer UNIQUE. No query looks a record up by its hash (the chain's
        # links are checked by verify_chain, and seq, the primary key, already refuses
        # a second record at a place), yet that index, on a random 32-byte key, cost
        # ~5 us of each append (~7 a purchase per party). SQLite cannot drop a
        # constraint's index: the table is rebuilt, its rows copied as they are.
        "CREATE TABLE archive_records_v3 ("
        " seq INTEGER PRIMARY KEY, prev BLOB NOT NULL, hash BLOB NOT NULL,"
        " direction TEXT NOT NULL,"
        " peer TEXT NOT NULL, txn TEXT NOT NULL, statement BLOB NOT NULL,"
        " digest BLOB NOT NULL, recorded_at INTEGER NOT NULL) STRICT;"
        "INSERT INTO archive_records_v3 (seq, prev, hash, direction, peer, txn, statement,"
        " digest, recorded_at) SELECT seq, prev, hash, direction, peer, txn, statement,"
        " digest, recorded_at FROM archive_records ORDER BY seq;"
        "DROP TABLE archive_records;"
        "ALTER TABLE archive_records_v3 RENAME TO archive_records;"
        "CREATE INDEX archive_records_txn ON archive_records (txn, peer);"
        "CREATE INDEX archive_records_digest ON archive_records (digest)",
    ],
}

_COLUMNS: Final = "seq, prev, hash, direction, peer, txn, statement, recorded_at"
#: Rows one INSERT of ``append`` carries (9 parameters each: under SQLite's 999).
_ROWS: Final = 100


@dataclass(frozen=True, slots=True)
class _Entry:
    statement: Statement
    direction: Direction
    peer: str
    transaction: str
    certificate: x509.Certificate | None


def entry(
    statement: Statement,
    *,
    direction: Direction | str,
    peer: str,
    transaction: str,
    certificate: x509.Certificate | None = None,
) -> _Entry:
    """One statement to archive with ``Archive.record_all``."""
    return _Entry(statement, Direction(direction), peer, transaction, certificate)


class Archive:
    """An agent's evidence archive. Made by the agent once its database is open."""

    def __init__(self, database: Database, now_ms: Callable[[], int] | None = None) -> None:
        self._db = database
        #: The agent's clock, for each record's ``recorded_at``.
        self._now_ms = now_ms

    async def record(
        self,
        statement: Statement,
        *,
        direction: Direction | str,
        peer: str,
        transaction: str,
        certificate: x509.Certificate | None = None,
    ) -> ArchiveRecord:
        """Append ``statement`` to the chain; returns once it is durable on disk.

        ``certificate`` (the signer's) is kept for evidence bundles. Cancelling the
        caller does not undo the write once it is queued.
        """
        entry = _Entry(statement, Direction(direction), peer, transaction, certificate)
        return (await self.record_all([entry]))[0]

    async def record_all(self, entries: list[_Entry]) -> list[ArchiveRecord]:
        """Append several entries in one commit, in order (see ``entry``).

        ``Database.transaction`` batches concurrent callers into one commit (one
        fsync), each appending after the records the earlier ones wrote."""
        now_ms = None if self._now_ms is None else self._now_ms()
        return await self._db.transaction(lambda c: append(c, entries, now_ms=now_ms))

    async def record_exchange(
        self,
        statements: list[tuple[Statement, Direction | str]],
        *,
        peer: str,
        transaction: str,
        ours: AgentIdentity,
        theirs: x509.Certificate | None,
    ) -> None:
        """Archive statements of one exchange with ``peer``: each kept with our
        certificate if we signed it, else with ``theirs``."""
        if statements:
            await self.record_all([
                entry(s, direction=d, peer=peer, transaction=transaction,
                      certificate=ours.certificate if s.signer == ours.fingerprint else theirs)
                for s, d in statements])

    async def remember_certificate(self, certificate: x509.Certificate) -> None:
        der = certificate.public_bytes(Encoding.DER)
        await self._db.transaction(lambda c: c.execute(
            "INSERT OR IGNORE INTO archive_certificates (fingerprint, der) VALUES (?, ?)",
            (fingerprint(certificate), der)))

    async def records(self, transaction: str | None = None) -> list[ArchiveRecord]:
        """The chain in order, or the records of one transaction."""
        if transaction is None:  # the whole chain: off the event loop
            return await self._db.scan(read_records)
        return await self._db.read(lambda c: read_records(c, transaction))

    async def certificate(self, fingerprint: bytes) -> x509.Certificate | None:
        """A signer's certificate kept with the records, by its SHA-256 fingerprint."""
        der = await self._db.read(lambda c: c.execute(
            "SELECT der FROM archive_certificates WHERE fingerprint = ?",
            (fingerprint,)).fetchone())
        return None if der is None else load_certificate(der[0])

    async def contains(self, digest: bytes) -> bool:
        """Whether a statement with this digest is archived."""
        return await self._db.read(lambda c: c.execute(
            "SELECT 1 FROM archive_records WHERE digest = ? LIMIT 1", (digest,)
        ).fetchone() is not None)

    async def verify(self) -> int:
        """Check the whole chain; returns its length.

        Raises:
            ChainBroken: naming the record edited, deleted or reordered.
        """
        records = await self.records()
        verify_chain(records)
        return len(records)

    async def export_bundle(
        self, transaction: str, *, crl: x509.CertificateRevocationList, root: x509.Certificate
    ) -> EvidenceBundle:
        """The statements of ``transaction`` (and those they name, e.g. the offer an
        order quotes) with what is needed to check them offline."""
        records = await self._db.scan(lambda c: bundle_records(c, transaction))
        certificates = await self._db.read(read_certificates)
        return collect_bundle(records, transaction=transaction, certificates=certificates,
                              crl=crl, root=root)

    async def usage(self, peer: str) -> tuple[int, int]:
        """``(records, statement bytes)`` archived with ``peer``."""
        return await self._db.read(lambda c: peer_usage(c, peer))


def append(connection: sqlite3.Connection, entries: Iterable[_Entry], *,
           now_ms: int | None = None) -> list[ArchiveRecord]:
    """Append to the chain inside the caller's transaction (so that evidence commits
    with whatever else the caller writes, e.g. a bank's journal entry), recorded at
    ``now_ms`` (the agent's clock; the machine's if not given)."""
    # The head's seq and hash are all the next record needs: not its statement, nor
    # a whole record built and checked from its row (~20 us, at every append).
    head = connection.execute(
        "SELECT seq, hash FROM archive_records ORDER BY seq DESC LIMIT 1").fetchone()
    seq, prev = (head[0] + 1, head[1]) if head else (0, ZERO_HASH)
    if now_ms is None:
        now_ms = time.time_ns() // 1_000_000
    records = []
    rows: list[Any] = []
    certificates: dict[bytes, bytes] = {}  # each signer's once (a purchase: 2-3 a step)
    usage: dict[str, list[int]] = {}
    for entry in entries:
        record = ArchiveRecord(seq=seq, prev=prev, direction=entry.direction,
                               peer=entry.peer, transaction=entry.transaction,
                               statement=entry.statement.to_bytes(), recorded_at=now_ms)
        rows += (record.seq, record.prev, record.hash, str(record.direction), record.peer,
                 record.transaction, record.statement, entry.statement.digest,
                 record.recorded_at)
        if entry.certificate is not None:
            key = fingerprint(entry.certificate)
            if key not in certificates:
                certificates[key] = certificate_der(entry.certificate)
        records.append(record)
        seq, prev = seq + 1, record.hash
        growth = usage.setdefault(entry.peer, [0, 0])
        growth[0] += 1
        growth[1] += len(record.statement)
    # A statement for all the rows of a table (at most _ROWS at once: SQLite's bound
    # on parameters), not one per row: each execute costs a call into SQLite with
    # the GIL released and taken back, ~5 us in the writer thread.
    for start in range(0, len(rows), 9 * _ROWS):
        part = rows[start:start + 9 * _ROWS]
        connection.execute(
            "INSERT INTO archive_records (seq, prev, hash, direction, peer, txn, statement,"
            " digest, recorded_at) VALUES "
            + ", ".join(["(?, ?, ?, ?, ?, ?, ?, ?, ?)"] * (len(part) // 9)), part)
    pairs = [value for pair in certificates.items() for value in pair]
    for start in range(0, len(pairs), 2 * _ROWS):
        part = pairs[start:start + 2 * _ROWS]
        connection.execute(
            "INSERT OR IGNORE INTO archive_certificates (fingerprint, der) VALUES "
            + ", ".join(["(?, ?)"] * (len(part) // 2)), part)
    for peer, (count, size) in usage.items():
        connection.execute(
            "INSERT INTO archive_usage (peer, records, bytes) VALUES (?, ?, ?)"
            " ON CONFLICT (peer) DO UPDATE SET records = records + excluded.records,"
            " bytes = bytes + excluded.bytes", (peer, count, size))
    return records


def peer_usage(connection: sqlite3.Connection, peer: str) -> tuple[int, int]:
    """``(records, statement bytes)`` the archive holds with ``peer``."""
    row = connection.execute("SELECT records, bytes FROM archive_usage WHERE peer = ?",
                             (peer,)).fetchone()
    return (0, 0) if row is None else (row[0], row[1])


def transaction_peers(connection: sqlite3.Connection, transaction: str, peer: str
                      ) -> tuple[bool, bool]:
    """``(exists, only_with_peer)``: whether ``transaction`` has records, and whether
    every one of them is with ``peer``. Two index look-ups, however many records."""
    exists = connection.execute("SELECT 1 FROM archive_records WHERE txn = ? LIMIT 1",
                                (transaction,)).fetchone() is not None
    # Two range look-ups on (txn, peer): one "OR" would scan the transaction's records.
    other = any(connection.execute(
        f"SELECT 1 FROM archive_records WHERE txn = ? AND peer {op} ? LIMIT 1",
        (transaction, peer)).fetchone() is not None for op in ("<", ">"))
    return exists, exists and not other


def resolve_transaction(connection: sqlite3.Connection, name: str) -> str:
    """The transaction ``name`` means: a transaction of the archive, else the one of
    the purchase whose idempotency key it is (its ``commerce.order``), else the one
    transaction it is a prefix of.

    Raises:
        UnknownTransaction: none of these.
        AmbiguousTransaction: several purchases or transactions match.
    """
    if connection.execute("SELECT 1 FROM archive_records WHERE txn = ? LIMIT 1",
                          (name,)).fetchone():
        return name
    by_key = _transactions_of_key(connection, name)
    if len(by_key) == 1:
        return by_key.pop()
    if by_key:
        raise AmbiguousTransaction(
            f"idempotency key {name!r} names orders of {len(by_key)} transactions: give "
            f"the transaction", detail={"name": name, "matches": sorted(by_key)[:8]})
    # A range over the (txn, peer) index: every name that starts with ``name``.
    found = [txn for (txn,) in connection.execute(
        "SELECT DISTINCT txn FROM archive_records WHERE txn > ? AND txn < ? LIMIT 9",
        (name, name + "\U0010ffff"))]
    if len(found) == 1:
        return found[0]
    if found:
        raise AmbiguousTransaction(
            f"{name!r} is the start of {'more than 8' if len(found) > 8 else len(found)} "
            f"transactions: give more of it", detail={"name": name, "matches": found[:8]})
    raise UnknownTransaction(
        f"no transaction, purchase idempotency key or transaction prefix {name!r} in the "
        f"archive", detail={"name": name})


def _transactions_of_key(connection: sqlite3.Connection, key: str) -> set[str]:
    """Transactions holding a ``commerce.order`` whose ``idempotency_key`` is ``key``
    (found by the key's bytes, then read properly)."""
    needle = key.encode("utf-8")
    if not needle:
        return set()
    found = set()
    for txn, data in connection.execute(
            "SELECT txn, statement FROM archive_records WHERE instr(statement, ?) > 0",
            (needle,)):
        try:
            statement = Statement.from_bytes(data)
        except StatementError:
            continue
        if statement.type == "commerce.order" and statement.body.get("idempotency_key") == key:
            found.add(txn)
    return found


def bundle_records(connection: sqlite3.Connection, transaction: str) -> list[ArchiveRecord]:
    """The records of ``transaction`` and those (of any transaction) whose statement
    one of them names by digest: what ``collect_bundle`` picks a bundle from."""
    records = read_records(connection, transaction)
    named: set[bytes] = set()
    for record in records:
        try:
            named |= named_digests(Statement.from_bytes(record.statement))
        except StatementError:
            continue
    related = []
    for digest in sorted(named):  # the first record of each (an offer bought twice)
        row = connection.execute(
            f"SELECT {_COLUMNS} FROM archive_records WHERE digest = ? AND txn != ?"
            " ORDER BY seq LIMIT 1", (digest, transaction)).fetchone()
        if row is not None:
            related.append(_row_to_record(row))
    return records + related


def read_records(connection: sqlite3.Connection, transaction: str | None = None
                 ) -> list[ArchiveRecord]:
    """Records as stored (hashes kept as stored, so ``verify_chain`` sees any edit)."""
    if transaction is None:
        rows = connection.execute(f"SELECT {_COLUMNS} FROM archive_records ORDER BY seq")
    else:
        rows = connection.execute(
            f"SELECT {_COLUMNS} FROM archive_records WHERE txn = ? ORDER BY seq", (transaction,))
    records = []
    for row in rows:
        try:
            records.append(_row_to_record(row))
        except ValueError as exc:  # a column edited to something no record can hold
            raise ChainBroken(f"record {row[0]} is edited: {exc}",
                              detail={"kind": "edited", "seq": row[0]}) from None
    return records


def read_certificates(connection: sqlite3.Connection) -> list[x509.Certificate]:
    return [load_certificate(der) for (der,) in
            connection.execute("SELECT der FROM archive_certificates")]


def _row_to_record(row: tuple[Any, ...]) -> ArchiveRecord:
    seq, prev, hash_, direction, peer, txn, statement, recorded_at = row
    return ArchiveRecord(seq=seq, prev=prev, hash=hash_, direction=direction, peer=peer,
                         transaction=txn, statement=statement, recorded_at=recorded_at)
