"""The evidence archive on disk: the hash chain of ``services.archive`` in SQLite.

Appending reads the chain's head and inserts the next record in one ``BEGIN
IMMEDIATE`` transaction, so concurrent writers (one per request handler) still
form one chain; the commit is fsync'd (``synchronous=FULL``) before ``record``
returns, and callers acknowledge a statement to a peer only after that. Writes that
arrive while a commit is in progress share the next one (the database's group commit):
one fsync for the batch, each caller still waits for its own record to be durable.

The certificates of every signer seen are kept beside the chain, so that an
evidence bundle can be exported long after the channel that carried them closed.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from semper.services.archive import (
    ArchiveRecord,
    ChainBroken,
    Direction,
    EvidenceBundle,
    collect_bundle,
    next_record,
    verify_chain,
)
from semper.services.certificates import AgentIdentity, fingerprint, load_certificate
from semper.services.statements import Statement

from ._storage import Database

__all__ = ["MIGRATIONS", "Archive", "append", "entry"]

MIGRATIONS: Final = {
    "archive": [
        "CREATE TABLE archive_records ("
        " seq INTEGER PRIMARY KEY, prev BLOB NOT NULL, hash BLOB NOT NULL UNIQUE,"
        " direction TEXT NOT NULL, peer TEXT NOT NULL, txn TEXT NOT NULL,"
        " statement BLOB NOT NULL, digest BLOB NOT NULL, recorded_at INTEGER NOT NULL);"
        "CREATE INDEX archive_records_txn ON archive_records (txn);"
        "CREATE INDEX archive_records_digest ON archive_records (digest);"
        "CREATE TABLE archive_certificates (fingerprint BLOB PRIMARY KEY, der BLOB NOT NULL)"
    ],
}

_COLUMNS: Final = "seq, prev, hash, direction, peer, txn, statement, recorded_at"


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

    def __init__(self, database: Database) -> None:
        self._db = database

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
        return await self._db.transaction(lambda c: append(c, entries))

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
        """The statements of ``transaction`` with what is needed to check them offline."""
        records = await self.records(transaction)
        certificates = await self._db.read(read_certificates)
        return collect_bundle(records, transaction=transaction, certificates=certificates,
                              crl=crl, root=root)


def append(connection: sqlite3.Connection, entries: Iterable[_Entry]) -> list[ArchiveRecord]:
    """Append to the chain inside the caller's transaction (so that evidence commits
    with whatever else the caller writes, e.g. a bank's journal entry)."""
    head = connection.execute(
        f"SELECT {_COLUMNS} FROM archive_records ORDER BY seq DESC LIMIT 1").fetchone()
    previous = _row_to_record(head) if head else None
    now_ms = time.time_ns() // 1_000_000
    records = []
    for entry in entries:
        record = next_record(previous, direction=entry.direction, peer=entry.peer,
                             transaction=entry.transaction, statement=entry.statement,
                             recorded_at=now_ms)
        connection.execute(
            "INSERT INTO archive_records (seq, prev, hash, direction, peer, txn, statement,"
            " digest, recorded_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (record.seq, record.prev, record.hash, str(record.direction), record.peer,
             record.transaction, record.statement, entry.statement.digest,
             record.recorded_at))
        if entry.certificate is not None:
            connection.execute(
                "INSERT OR IGNORE INTO archive_certificates (fingerprint, der) VALUES (?, ?)",
                (fingerprint(entry.certificate), entry.certificate.public_bytes(Encoding.DER)))
        records.append(record)
        previous = record
    return records


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
