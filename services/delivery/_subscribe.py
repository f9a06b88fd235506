"""Live subscriptions (protocol.md 13.6): how a buyer gets a live ticket paid chunk by
chunk by purse, from a seller whose content is produced while it is sent.

A live seller answers ``delivery.live_terms`` with what it sells (the price of a
chunk, the largest chunk, how often it signs a head, the most chunks one ticket
buys); the buyer opens a purse chain for it of one payword a chunk and hands its
``purse.commitment`` and the bank's ``purse.reservation`` to ``delivery.subscribe``,
which answers a live ticket (``is_live``: its stream map's root is the empty tree's).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Final, Self

from .._ops import Op
from .._schema import Body, Schema, amount, binary, form, integer, wire
from ..merkle import EMPTY_ROOT
from ..money import Amount
from ..statements import Statement
from ._content import MAX_CHUNK_SIZE, MAX_CHUNKS, MAX_PRICE_PER_CHUNK, StreamInfo
from ._errors import BadRequest
from ._frames import MAX_QUOTED, TICKET_BYTES

__all__ = ["LIVE_ROOT", "LIVE_TERMS", "SUBSCRIBE", "LiveTerms", "LiveTermsRequest",
           "SubscribeAnswer", "SubscribeRequest", "is_live"]

#: A live ticket's stream map has this root: the empty tree's (SHA-256 of no bytes),
#: which no stored content has (an empty content is refused).
LIVE_ROOT: Final = EMPTY_ROOT
#: The longest a live seller may say it waits between heads: a day.
MAX_EVERY_MS: Final = 86_400_000

SUBSCRIPTIONS: Final = Schema(BadRequest, {
    "sku": form(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}",
                "1-64 of A-Z a-z 0-9 . _ - (not first: . _ -)"),
    "price_per_chunk": amount(MAX_PRICE_PER_CHUNK),
    "chunk_size": integer(1, MAX_CHUNK_SIZE),
    "every_chunks": integer(1, MAX_CHUNKS),
    "every_ms": integer(1, MAX_EVERY_MS),
    "max_chunks": integer(1, MAX_CHUNKS),
    "commitment": binary(1, MAX_QUOTED, f"a statement's canonical bytes (at most {MAX_QUOTED})"),
    "reservation": binary(1, MAX_QUOTED, f"a statement's canonical bytes (at most {MAX_QUOTED})"),
    "ticket": TICKET_BYTES,
})


def is_live(stream: StreamInfo) -> bool:
    """Whether a ticket's stream map is a live stream's (its root the empty tree's)."""
    return stream.root == LIVE_ROOT


@dataclass(frozen=True, slots=True, kw_only=True)
class LiveTermsRequest(Body):
    """``delivery.live_terms``: any value, ignored (semper sends ``{}``)."""

    TYPE: ClassVar[str] = "delivery.live_terms"
    SCHEMA: ClassVar[Schema] = SUBSCRIPTIONS

    @classmethod
    def from_wire(cls, value: object) -> Self:
        return cls()

    def to_wire(self) -> dict[str, Any]:
        return {}


@dataclass(frozen=True, slots=True, kw_only=True)
class LiveTerms(Body):
    """What a live seller sells: ``sku``, the price of a chunk, the largest chunk,
    a head signed every ``every_chunks`` chunks or ``every_ms``, at most
    ``max_chunks`` chunks a ticket."""

    TYPE: ClassVar[str] = "delivery.live_terms"
    SCHEMA: ClassVar[Schema] = SUBSCRIPTIONS

    sku: str
    price_per_chunk: Amount
    chunk_size: int
    every_chunks: int
    every_ms: int
    max_chunks: int


@dataclass(frozen=True, slots=True, kw_only=True)
class SubscribeRequest(Body):
    """``delivery.subscribe``: the buyer's ``purse.commitment`` for the seller (no
    ``order``; ``unit`` the price of a chunk, ``length`` the chunks bought) and its
    bank's ``purse.reservation``, their canonical bytes (the seller parses them)."""

    TYPE: ClassVar[str] = "delivery.subscribe"
    SCHEMA: ClassVar[Schema] = SUBSCRIPTIONS

    commitment: bytes
    reservation: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class SubscribeAnswer(Body):
    """``delivery.subscribe``'s answer: the live ticket's canonical bytes."""

    TYPE: ClassVar[str] = "delivery.subscribe"
    SCHEMA: ClassVar[Schema] = SUBSCRIPTIONS

    ticket: Statement = field(metadata=wire(TICKET_BYTES))


#: ``{}`` -> ``{sku, price_per_chunk, chunk_size, every_chunks, every_ms, max_chunks}``.
LIVE_TERMS: Final = Op("delivery", "live_terms", LiveTermsRequest, LiveTerms)
#: ``{commitment, reservation}`` -> ``{ticket}``: a live ticket for that purse chain.
SUBSCRIBE: Final = Op("delivery", "subscribe", SubscribeRequest, SubscribeAnswer)
