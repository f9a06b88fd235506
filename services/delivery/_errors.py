"""Why a streamed delivery was refused; one class per stable code (protocol.md 13).

Faults in a statement's signature or certificate keep the statement and certificate
layers' codes as a ``cause`` in ``detail`` where the protocol folds them into one of
these (a ticket that does not verify is ``delivery.bad_ticket``, whatever was wrong).
"""

from __future__ import annotations

from typing import Any, ClassVar

from .._errors import ServiceError

__all__ = [
    "BadChunk",
    "BadHead",
    "BadRequest",
    "BadStream",
    "BadTicket",
    "Busy",
    "DeliveryError",
    "EmptyContent",
    "Forked",
    "NotYet",
    "OutOfOrder",
    "TicketExpired",
    "TooManyStreams",
    "UnknownStream",
    "WrongHolder",
]


class DeliveryError(ServiceError):
    code: ClassVar[str] = "delivery.error"


class BadRequest(DeliveryError):
    """A delivery op's request (or answer) body that is not its body: a key missing or
    extra, a field of the wrong type or range. ``detail``: ``type``, ``field``."""

    code: ClassVar[str] = "delivery.bad_request"


class BadStream(DeliveryError):
    """A stream description (``StreamInfo``: an offer's ``stream``, a ticket's) that
    is not one: a bad field, or a chunk count that does not fit the length and chunk
    size. ``detail``: ``type``, ``field``."""

    code: ClassVar[str] = "delivery.bad_stream"


class EmptyContent(DeliveryError):
    """Content of no bytes cannot be streamed: a tree needs a leaf."""

    code: ClassVar[str] = "delivery.empty_content"
    wire: ClassVar[bool] = False  # the seller's own stock, never a peer's request


class BadChunk(DeliveryError):
    """A chunk that is not chunk ``index`` of the stream's tree: altered data, a wrong
    length, a wrong index or an altered proof look alike. ``detail``: ``index``."""

    code: ClassVar[str] = "delivery.bad_chunk"
    wire: ClassVar[bool] = False  # the buyer's finding, never a seller's answer


class BadTicket(DeliveryError):
    """Not a valid delivery ticket signed by this seller: not a statement, another
    type, a bad body, a signature or certificate that does not verify, another
    seller. ``detail``: ``field`` or ``cause``."""

    code: ClassVar[str] = "delivery.bad_ticket"


class WrongHolder(DeliveryError):
    """The channel's authenticated peer is not the ticket's buyer.
    ``detail``: ``buyer``, ``peer``."""

    code: ClassVar[str] = "delivery.wrong_holder"


class TicketExpired(DeliveryError):
    """The ticket's ``expires`` is before the seller's clock.
    ``detail``: ``expires``, ``now_ms``."""

    code: ClassVar[str] = "delivery.ticket_expired"


class Busy(DeliveryError):
    """A stream of this ticket is open already (one at a time); close it, or wait for
    the broken one to be dropped. ``detail``: ``ticket`` (hex)."""

    code: ClassVar[str] = "delivery.busy"


class TooManyStreams(DeliveryError):
    """The seller serves as many streams as it allows, to this buyer or in all.
    ``detail``: ``limit``, ``scope`` (``buyer`` or ``total``)."""

    code: ClassVar[str] = "delivery.too_many_streams"


class UnknownStream(DeliveryError):
    """No stream of that number is open on this channel. ``detail``: ``stream``."""

    code: ClassVar[str] = "delivery.unknown_stream"


class OutOfOrder(DeliveryError):
    """A chunk index that is not the next one of the stream (or a ``from`` past its
    end). ``detail``: ``index``, ``expected``."""

    code: ClassVar[str] = "delivery.out_of_order"


class NotYet(DeliveryError):
    """A live stream's chunk that no signed head covers yet; ask again later.
    ``detail``: ``index``, ``size`` (the latest head's)."""

    code: ClassVar[str] = "delivery.not_yet"


class BadHead(DeliveryError):
    """A live stream's head that is not a valid ``delivery.stream_head`` of this seller
    and stream, or that goes back (smaller, or earlier, than one held) without being
    one held. ``detail``: ``field`` or ``cause``."""

    code: ClassVar[str] = "delivery.bad_head"
    wire: ClassVar[bool] = False  # the buyer's finding, never a seller's answer


class Forked(DeliveryError):
    """Two heads of one live stream, both signed by its seller, that cannot both be
    in one history: the later does not extend the earlier (its consistency proof
    fails), or one size has two roots. ``evidence`` holds the two signed heads (also
    in ``detail["heads"]``, hex of their canonical bytes)."""

    code: ClassVar[str] = "delivery.fork"
    wire: ClassVar[bool] = False  # the buyer's finding, never a seller's answer

    def __init__(self, message: str, *, evidence: Any, detail: dict[str, Any] | None = None
                 ) -> None:
        super().__init__(message, detail=detail)
        self.evidence = evidence
