"""The bodies of the delivery channel's ops (protocol.md 13.3), typed, so that the
seller's handlers get a decoded, checked request and the buyer a checked answer.

They are ``services._schema`` bodies on ``FRAMES``, whose error is
``delivery.bad_request``; a ticket that is not a statement's canonical bytes is
``delivery.bad_ticket`` instead, as any other bad ticket (``check_ticket``).
``from`` is a Python keyword: the field is ``start``, its wire key ``from``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Final

from .._errors import ServiceError
from .._schema import DIGEST, STATEMENT, Body, Kind, Schema, binary, integer, wire
from ..merkle import HASH_SIZE, MAX_PATH
from ..statements import Statement
from ._content import MAX_CHUNK_SIZE, MAX_CHUNKS, MAX_LENGTH
from ._errors import BadRequest, BadTicket

__all__ = [
    "FRAMES",
    "MAX_STREAM_ID",
    "PAYWORD_SIZE",
    "ChunkAnswer",
    "ChunkRequest",
    "CloseRequest",
    "HeadAnswer",
    "HeadRequest",
    "OpenAnswer",
    "OpenRequest",
    "TicketAnswer",
    "TicketRequest",
]

#: A stream's number on its channel: the seller's choice, 0 to 2^31-1.
MAX_STREAM_ID: Final = (1 << 31) - 1
#: Bytes of a payword (a SHA-256 value, purse section 8).
PAYWORD_SIZE: Final = 32
#: The largest purse statement ``delivery.ticket`` quotes (a commitment, a reservation).
MAX_QUOTED: Final = 16 * 1024


def _proof_ok(value: Any) -> bool:
    return type(value) in (list, tuple) and len(value) <= MAX_PATH and all(
        type(h) is bytes and len(h) == HASH_SIZE for h in value)


#: A list of at most 64 hashes: an inclusion or consistency proof.
PROOF: Final = Kind(f"a list of at most {MAX_PATH} hashes of {HASH_SIZE} bytes", _proof_ok,
                    encode=list)


def _ticket_or_as_is(value: object) -> object:
    if type(value) is bytes:
        try:
            return Statement.from_bytes(value)
        except ServiceError:
            pass
    return value  # refused by the check, as delivery.bad_ticket


def _bad_ticket(value: object) -> ServiceError:
    if type(value) is not bytes:
        return BadTicket("a ticket is a statement's canonical bytes (bin)",
                         detail={"field": "ticket"})
    try:
        Statement.from_bytes(value)
    except ServiceError as exc:
        return BadTicket(f"not a statement: {exc.message}", detail={"cause": exc.code})
    return BadTicket("a ticket statement was expected", detail={"field": "ticket"})


#: A ticket travels as the statement's canonical bytes (the seller checks the bytes it
#: signed, and the buyer stores them as they came).
TICKET_BYTES: Final = Kind("a statement's canonical bytes", lambda v: type(v) is Statement,
                           decode=_ticket_or_as_is, encode=Statement.to_bytes,
                           refuse=_bad_ticket)

FRAMES: Final = Schema(BadRequest, {
    "ticket": TICKET_BYTES,
    "from": integer(0, MAX_CHUNKS),
    "stream": integer(0, MAX_STREAM_ID),
    "index": integer(0, MAX_CHUNKS - 1),
    "payword": binary(PAYWORD_SIZE, PAYWORD_SIZE, f"{PAYWORD_SIZE} bytes (a payword)"),
    "data": binary(1, MAX_CHUNK_SIZE),
    "proof": PROOF,
    "consistency": PROOF,
    "head": STATEMENT,
    "size": integer(0, MAX_CHUNKS),
    "chunks": integer(1, MAX_CHUNKS),
    "chunk_size": integer(1, MAX_CHUNK_SIZE),
    "length": integer(1, MAX_LENGTH),
    "root": DIGEST,
    "order": DIGEST,
    "commitment": binary(1, MAX_QUOTED, f"a statement's canonical bytes (at most {MAX_QUOTED})"),
    "reservation": binary(1, MAX_QUOTED, f"a statement's canonical bytes (at most {MAX_QUOTED})"),
})


@dataclass(frozen=True, slots=True, kw_only=True)
class OpenRequest(Body):
    """``delivery.open``: the ticket (its bytes on the wire) and the first chunk the
    buyer wants (``from``: the number it verified already, to resume)."""

    TYPE: ClassVar[str] = "delivery.open"
    SCHEMA: ClassVar[Schema] = FRAMES

    ticket: Statement
    start: int = field(metadata=wire(key="from"))


@dataclass(frozen=True, slots=True, kw_only=True)
class OpenAnswer(Body):
    """``delivery.open``'s answer: the stream's number on this channel, the first
    chunk it will send, and the ticket's content (as its ``stream`` says)."""

    TYPE: ClassVar[str] = "delivery.open"
    SCHEMA: ClassVar[Schema] = FRAMES

    stream: int
    start: int = field(metadata=wire(key="from"))
    chunks: int
    chunk_size: int
    length: int
    root: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class ChunkRequest(Body):
    """``delivery.chunk``: the next chunk, and for a purse ticket payword ``index``
    of its chain, paying chunks ``0..index-1`` (None, the key absent, for chunk 0 or
    chunks paid already): the seller sends chunk ``index`` on credit, one unpaid."""

    TYPE: ClassVar[str] = "delivery.chunk"
    SCHEMA: ClassVar[Schema] = FRAMES

    stream: int
    index: int
    payword: bytes | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ChunkAnswer(Body):
    """``delivery.chunk``'s answer: the chunk and its inclusion proof. For a live
    stream, also the signed head the proof is against and the consistency proof from
    the head sent before on this stream, when that head is new to the buyer."""

    TYPE: ClassVar[str] = "delivery.chunk"
    SCHEMA: ClassVar[Schema] = FRAMES

    index: int
    data: bytes
    proof: list[bytes] | tuple[bytes, ...]
    head: Statement | None = None
    consistency: list[bytes] | tuple[bytes, ...] | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class CloseRequest(Body):
    """``delivery.close``: the stream to end (its ticket may open another); for a
    purse ticket, ``payword`` pays the chunks sent so far (payword ``next``: the
    last chunk's payment, which no later request carries)."""

    TYPE: ClassVar[str] = "delivery.close"
    SCHEMA: ClassVar[Schema] = FRAMES

    stream: int
    payword: bytes | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class HeadRequest(Body):
    """``delivery.head``: a live stream's latest signed head, with the consistency
    proof from the head of ``size`` chunks the buyer holds (0: none)."""

    TYPE: ClassVar[str] = "delivery.head"
    SCHEMA: ClassVar[Schema] = FRAMES

    stream: int
    size: int


@dataclass(frozen=True, slots=True, kw_only=True)
class HeadAnswer(Body):
    """``delivery.head``'s answer: the signed ``delivery.stream_head`` and the
    consistency proof from the size asked."""

    TYPE: ClassVar[str] = "delivery.head"
    SCHEMA: ClassVar[Schema] = FRAMES

    head: Statement
    consistency: list[bytes] | tuple[bytes, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class TicketRequest(Body):
    """``delivery.ticket`` (on the request channel): a purse order's ticket, for the
    order's digest, the buyer's ``purse.commitment`` and its bank's
    ``purse.reservation`` (their canonical bytes, checked by the seller)."""

    TYPE: ClassVar[str] = "delivery.ticket"
    SCHEMA: ClassVar[Schema] = FRAMES

    order: bytes
    commitment: bytes
    reservation: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class TicketAnswer(Body):
    """``delivery.ticket``'s answer: the signed ticket's canonical bytes."""

    TYPE: ClassVar[str] = "delivery.ticket"
    SCHEMA: ClassVar[Schema] = FRAMES

    ticket: Statement = field(metadata=wire(TICKET_BYTES))
