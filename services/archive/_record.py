"""The evidence archive: an append-only, hash-chained log of every statement.

Theory of operation. Each record holds one statement an agent sent or received, with
whom, for which transaction and when it was recorded. Its hash covers all of that
and the previous record's hash:

    hash = SHA-256(b"semper-archive-record-v1\\x00" + canonical({"direction", "peer",
                   "prev", "recorded_at", "seq", "statement", "transaction"}))

``seq`` counts from 0 and ``prev`` of record 0 is 32 zero bytes. A record stores its
hash, so a record edited in place no longer matches its own hash; one edited with
its hash recomputed no longer matches the ``prev`` of the record after it; a record
deleted leaves a gap in ``seq``; records swapped are out of ``seq`` order. Only the
last record has no successor to betray it, and whoever deletes the tail leaves a
shorter chain that is still whole: that takes a ``head`` hash kept elsewhere (a
timestamp, a counterparty's receipt), which ``verify_chain`` accepts.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, ClassVar, Final, NoReturn

import msgpack

from .._schema import AGENT, Body, Kind, Schema, binary, integer
from ..statements import MAX_STRING, Statement, StatementError, canonical_encode
from ._errors import ChainBroken, MalformedEvidence

__all__ = ["ZERO_HASH", "ArchiveRecord", "Direction", "next_record", "verify_chain"]

#: ``prev`` of the first record.
ZERO_HASH: Final = bytes(32)
DOMAIN: Final = b"semper-archive-record-v1\x00"
MAX_TRANSACTION: Final = 256
MAX_SEQ: Final = (1 << 63) - 1



class Direction(StrEnum):
    SENT = "sent"
    RECEIVED = "received"


_DIRECTIONS: Final = frozenset(d.value for d in Direction)


#: A record's SHA-256 hashes (``prev``, ``hash``).
_HASH: Final = binary(32, 32, "a 32-byte SHA-256 hash")

#: Every key of a record has its one kind (``services._schema``).
SCHEMA: Final = Schema(MalformedEvidence, {
    "seq": integer(0, MAX_SEQ, "a non-negative int"),
    "prev": _HASH,
    "hash": _HASH,
    "direction": Kind("'sent' or 'received'", lambda v: type(v) is Direction,
                      decode=Direction, encode=str),
    "peer": AGENT,
    "transaction": Kind(f"1-{MAX_TRANSACTION} printable characters",
                        lambda v: type(v) is str and 1 <= len(v) <= MAX_TRANSACTION
                        and v.isprintable()),
    "statement": binary(1, MAX_STRING, "the bytes of a statement"),
    "recorded_at": integer(0, MAX_SEQ, "an int of Unix milliseconds"),
})


@dataclass(frozen=True, slots=True, kw_only=True)
class ArchiveRecord(Body):
    """One archived statement. ``hash`` is computed when not given; a stored hash is
    kept as given, so that ``verify_chain`` can tell a record that was edited.

    Raises (construction):
        MalformedEvidence: a field of the wrong type or size (a ValueError, as
            construction raised before the record was a schema body).
    """

    TYPE: ClassVar[str] = "archive.record"
    SCHEMA: ClassVar[Schema] = SCHEMA

    seq: int
    prev: bytes
    direction: Direction
    peer: str
    transaction: str
    statement: bytes
    recorded_at: int
    hash: bytes = b""

    def __post_init__(self) -> None:
        if type(self.direction) is str and self.direction in _DIRECTIONS:
            object.__setattr__(self, "direction", Direction(self.direction))
        compute = self.hash == b""
        if compute:  # a stand-in that passes the field check until the fields are known
            object.__setattr__(self, "hash", ZERO_HASH)
        Body.__post_init__(self)
        if compute:
            object.__setattr__(self, "hash", self.content_hash())

    def content_hash(self) -> bytes:
        """What ``hash`` must be: SHA-256 over the domain prefix and the other fields.

        A record's fields are checked on construction, and ``_content`` lists its keys
        in order: with ASCII text, msgpack's own bytes are the canonical encoding, so
        the generic walk (~3 us at each of a purchase's dozen appends) is skipped."""
        content = self._content()
        if self.peer.isascii() and self.transaction.isascii():
            data: bytes = msgpack.packb(content, use_bin_type=True, strict_types=True)
        else:
            data = canonical_encode(content)
        return hashlib.sha256(DOMAIN + data).digest()

    def _content(self) -> dict[str, Any]:
        # In key order (content_hash packs it as it is).
        return {
            "direction": str(self.direction),  # the canonical encoding refuses a StrEnum
            "peer": self.peer,
            "prev": self.prev,
            "recorded_at": self.recorded_at,
            "seq": self.seq,
            "statement": self.statement,
            "transaction": self.transaction,
        }


def next_record(
    previous: ArchiveRecord | None,
    *,
    direction: Direction | str,
    peer: str,
    transaction: str,
    statement: Statement | bytes,
    recorded_at: int,
) -> ArchiveRecord:
    """The record that follows ``previous`` (``None`` starts a chain at seq 0).

    Raises:
        StatementError: ``statement`` as bytes is not a canonical statement; the
            archive never holds what it could not later show as evidence.
        ValueError: a bad field.
    """
    if isinstance(statement, Statement):
        data = statement.to_bytes()
    else:
        Statement.from_bytes(statement)
        data = bytes(statement)
    return ArchiveRecord(
        seq=0 if previous is None else previous.seq + 1,
        prev=ZERO_HASH if previous is None else previous.hash,
        direction=Direction(direction),
        peer=peer,
        transaction=transaction,
        statement=data,
        recorded_at=recorded_at,
    )


def verify_chain(records: Iterable[ArchiveRecord], *, head: bytes | None = None) -> None:
    """Check a whole archive, from seq 0, in the order it is stored.

    Args:
        head: the hash the last record must have, if known from elsewhere; without it
            a deleted tail cannot be noticed (see the module docstring).

    Raises:
        ChainBroken: the first fault found, first in seq order, then per record. Its
            ``detail`` holds ``kind``: ``"reordered"``, ``"duplicated"``, ``"deleted"``,
            ``"edited"`` or ``"head_mismatch"``, ``seq``: the record at fault (for
            ``deleted``, the first missing seq) and ``position``: its index in
            ``records``.
    """
    chain = list(records)
    for record in chain:
        if not isinstance(record, ArchiveRecord):
            raise TypeError(f"verify_chain takes ArchiveRecords, not {type(record).__name__}")
    _check_order(chain)
    previous: ArchiveRecord | None = None
    for position, record in enumerate(chain):
        _check_record(record, position)
        if previous is not None and record.prev != previous.hash:
            _broken("edited", previous.seq, position - 1,
                    f"record {previous.seq} was edited: its hash is not the prev that "
                    f"record {record.seq} recorded")
        previous = record
    last = previous.hash if previous is not None else ZERO_HASH
    if head is not None and last != head:
        seq = previous.seq if previous is not None else -1
        _broken("head_mismatch", seq, len(chain) - 1,
                f"the chain ends at record {seq}, whose hash is not the known head: "
                f"records after it were deleted, or it was edited")


def _check_order(chain: list[ArchiveRecord]) -> None:
    """Seqs must be exactly 0, 1, 2, ... in storage order; say which way they are not."""
    seqs = [record.seq for record in chain]
    for position, seq in enumerate(seqs):
        if seq == position:
            continue
        # seqs[:position] are exactly 0..position-1, so a smaller seq is a repeat.
        if seq < position:
            _broken("duplicated", seq, position,
                    f"record {seq} appears again at position {position}")
        if position in seqs[position + 1 :]:
            _broken("reordered", seq, position,
                    f"record {seq} is at position {position}, where record {position} "
                    f"belongs: records were reordered")
        missing = f"{position}" if seq == position + 1 else f"{position} to {seq - 1}"
        after = f"record {position - 1} is followed by" if position else "the chain starts at"
        _broken("deleted", position, position,
                f"record {missing} deleted: {after} record {seq}", last_missing=seq - 1)


def _check_record(record: ArchiveRecord, position: int) -> None:
    if record.seq == 0 and record.prev != ZERO_HASH:
        _broken("edited", 0, position, "record 0 was edited: its prev is not zero")
    if record.content_hash() != record.hash:
        _broken("edited", record.seq, position,
                f"record {record.seq} was edited: its fields no longer match its hash")
    try:
        Statement.from_bytes(record.statement)
    except StatementError as exc:
        _broken("edited", record.seq, position,
                f"record {record.seq} was edited: its statement is not a canonical "
                f"statement ({exc.code})")


def _broken(kind: str, seq: int, position: int, message: str, **extra: int) -> NoReturn:
    raise ChainBroken(message, detail={"kind": kind, "seq": seq, "position": position, **extra})
