"""The delivery channel's ops, declared once (``services._ops.Op``): a seller serves
them on a second channel the buyer opens for the stream, a buyer calls them
(protocol.md 13.3)."""

from __future__ import annotations

from typing import Final

from .._ops import Op
from ._frames import (
    ChunkAnswer,
    ChunkRequest,
    CloseRequest,
    HeadAnswer,
    HeadRequest,
    OpenAnswer,
    OpenRequest,
    TicketAnswer,
    TicketRequest,
)

__all__ = ["CHUNK", "CLOSE", "HEAD", "OPEN", "SERVICE", "TICKET"]

SERVICE: Final = "delivery"

#: ``{ticket, from}`` -> ``{stream, from, chunks, chunk_size, length, root}``.
OPEN: Final = Op(SERVICE, "open", OpenRequest, OpenAnswer)
#: ``{stream, index, payword?}`` -> ``{index, data, proof, head?, consistency?}``.
CHUNK: Final = Op(SERVICE, "chunk", ChunkRequest, ChunkAnswer)
#: ``{stream, payword?}`` -> ``{}`` (a purse stream's last payword rides on it).
CLOSE: Final = Op(SERVICE, "close", CloseRequest)
#: ``{stream, size}`` -> ``{head, consistency}`` (live streams).
HEAD: Final = Op(SERVICE, "head", HeadRequest, HeadAnswer)
#: ``{order, commitment, reservation}`` -> ``{ticket}``: a purse order's ticket, asked on
#: the request channel (protocol.md 13.2); the quoted statements are checked by the
#: seller's handler.
TICKET: Final = Op(SERVICE, "ticket", TicketRequest, TicketAnswer)
