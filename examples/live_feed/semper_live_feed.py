"""A live seller: a ticker feed produced while it is sent, paid chunk by chunk by purse.

Install it next to semper (``pip install ./examples/live_feed``), issue an agent a
certificate with role ``feed`` (``semper ca issue DIR feed-1 --role feed ...``), open
it an account at the bank (``semper bank open``), run it, and a buyer receives N
chunks with ``semper live --seller feed-1 --chunks N --output FILE
--idempotency-key KEY``.

Theory of operation. A buyer asks ``delivery.live_terms`` (the price of a chunk),
opens a purse chain of N paywords for us at its bank, and hands us the commitment and
the bank's reservation in ``delivery.subscribe`` (protocol.md 13.6): we answer a
signed ``delivery.ticket`` whose ``chain`` is that chain and whose ``stream`` map
says the stream is live: ``root`` is the empty tree's (RFC 6962 MTH of nothing,
SHA-256 of no bytes), ``chunks`` the N paid for, ``chunk_size`` the largest chunk
(protocol.md 13.5). The ticket's own id is
the live stream's id, so every signed head names the ticket it serves.

The buyer opens the stream with ``delivery.open``; from then on a producer task makes
one ticker line a ``period_ms`` (on the agent's clock) and adds it to a
``LiveStream``, which asks for a signed ``delivery.stream_head`` every
``every_chunks`` chunks or ``every_ms``, whichever first, and one at the end.
``delivery.chunk`` waits (bounded) until a head covers the chunk, checks and
commits payword index+1 before the chunk leaves (one chunk at risk either way, as
for stored content), and answers the chunk with its proof against the latest head,
and that head with the consistency proof from the head sent before when it is new to
the buyer. The highest payword is redeemed at the bank soon after the last chunk or
the stream's close; a stream a restart ended, at once when the feed starts again
(its chunks are gone with the memory that held them).

Kept in memory: the chunks of open feeds (at most ``max_chunks`` lines each); a
restarted feed refuses a ticket it had started (``delivery.bad_ticket``) rather than
produce another history under the same stream id.
"""

from __future__ import annotations

import math
import random
import secrets
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import trio

from semper.agents import Component, Role, handles
from semper.agents.components._purse import redeem
from semper.agents.runtime._config import ConfigError
from semper.services import Amount, ServiceError
from semper.services.delivery import (
    CHUNK,
    CLOSE,
    HEAD,
    HEAD_TYPE,
    LIVE_ROOT,
    LIVE_TERMS,
    OPEN,
    SUBSCRIBE,
    TICKET_TYPE,
    BadRequest,
    BadTicket,
    Busy,
    ChunkAnswer,
    ChunkRequest,
    CloseRequest,
    HeadAnswer,
    HeadRequest,
    LiveStream,
    LiveTerms,
    NotYet,
    OpenAnswer,
    OpenRequest,
    OutOfOrder,
    StreamInfo,
    SubscribeAnswer,
    SubscribeRequest,
    Ticket,
    TicketExpired,
    TooManyStreams,
    UnknownStream,
    check_ticket,
)
from semper.services.payment.purse import (
    AlreadyRedeemed,
    BadCommitment,
    BadPayword,
    PaywordChecker,
    PurseCommitment,
    Replayed,
    verify_purse,
)
from semper.services.statements import Statement

__all__ = ["SKU", "Feed", "TickerFeed"]

SKU: Final = "ticker"
#: The longest ticker line: the stream map's ``chunk_size``.
CHUNK_SIZE: Final = 256
#: How long ``delivery.chunk`` waits for its chunk to be produced and covered by a
#: head before it answers ``delivery.not_yet`` (well under a request's timeout).
WAIT_S: Final = 10.0
#: The last chunk sent (or the stream closed), the chain is redeemed this soon.
REDEEM_AFTER_MS: Final = 2_000
REDEEM_RETRY_MS: Final = 30_000


MIGRATIONS: Final = {
    "feed": [
        # One ticket per chain; its ticks (highest payword accepted, the payword, or the
        # root while none); ``started`` once a producer ran for it; ``redeem_at`` when
        # the redemption task acts (NULL once done).
        "CREATE TABLE feed_tickets ("
        " ticket BLOB PRIMARY KEY, chain BLOB NOT NULL UNIQUE, buyer TEXT NOT NULL,"
        " length INTEGER NOT NULL, highest INTEGER NOT NULL, payword BLOB NOT NULL,"
        " commitment BLOB NOT NULL, reservation BLOB NOT NULL, statement BLOB NOT NULL,"
        " started INTEGER NOT NULL DEFAULT 0, state TEXT NOT NULL, redeem_at INTEGER,"
        " redeemed BLOB, updated_ms INTEGER NOT NULL) STRICT",
    ],
}


@dataclass(slots=True)
class _Feed:
    """One ticket's live stream: the chunks so far and the heads over them."""

    ticket: Ticket
    live: LiveStream
    chunks: list[bytes] = field(default_factory=list)
    changed: trio.Event = field(default_factory=trio.Event)

    def notify(self) -> None:
        self.changed.set()
        self.changed = trio.Event()


@dataclass(slots=True)
class _Open:
    """A stream open on a channel: the chunk it sends next, the head size the buyer
    holds (what a new head's consistency proof starts from)."""

    number: int
    feed: _Feed
    buyer: str
    channel: Any
    next: int
    since: int = 0
    #: a chunk request of this stream is being answered (one at a time: the window)
    busy: bool = False


class TickerFeed(Component):
    """``delivery.live_terms``, ``delivery.subscribe`` and the delivery channel's ops
    for live tickets."""

    name = "delivery"
    unlogged = frozenset({"chunk"})

    def __init__(self, context: Any) -> None:
        super().__init__(context)
        self.price = Amount("EUR", 1)
        self.period_ms, self.every_chunks, self.every_ms = 250, 8, 2_000
        self.max_chunks, self.max_streams = 10_000, 16
        self.max_streams_per_buyer = 4
        self._feeds: dict[bytes, _Feed] = {}
        self._open: dict[int, _Open] = {}
        self._next = 1
        self._checkers: dict[bytes, PaywordChecker] = {}
        self._locks: dict[bytes, trio.Lock] = {}
        self._nursery: trio.Nursery | None = None
        self._wake = trio.Event()

    def configure(self, settings: Mapping[str, Any]) -> None:
        known = {"price_per_chunk", "period_ms", "every_chunks", "every_ms", "max_chunks",
                 "max_streams", "max_streams_per_buyer"}
        if set(settings) - known:
            raise ConfigError(f"[components.delivery] takes {', '.join(sorted(known))}")
        if "price_per_chunk" in settings:
            try:
                if type(settings["price_per_chunk"]) is not str:
                    raise ValueError('an amount such as "EUR:1"')
                self.price = Amount.parse(settings["price_per_chunk"])
            except (ValueError, ServiceError) as exc:  # ServiceError: BadAmount
                raise ConfigError(f"[components.delivery] price_per_chunk: {exc}") from None
            if self.price.minor_units < 1:
                raise ConfigError("[components.delivery] price_per_chunk must be positive")
        for key in sorted(known - {"price_per_chunk"}):
            # A chunk and a head must come within the wait of delivery.chunk.
            most = int(WAIT_S * 1000) if key in ("period_ms", "every_ms") else 1_000_000
            value = settings.get(key, getattr(self, key))
            if type(value) is not int or not 1 <= value <= most:
                raise ConfigError(f"[components.delivery] {key} is a whole number, 1 to "
                                  f"{most}")
            setattr(self, key, value)

    def migrations(self) -> Mapping[str, list[str]]:
        return MIGRATIONS

    # -- subscribing ------------------------------------------------------------------

    @handles(LIVE_TERMS)
    async def terms(self, context: Any, request: Any) -> LiveTerms:
        return LiveTerms(sku=SKU, price_per_chunk=self.price, chunk_size=CHUNK_SIZE,
                         every_chunks=self.every_chunks, every_ms=self.every_ms,
                         max_chunks=self.max_chunks)

    @handles(SUBSCRIBE)
    async def subscribe(self, context: Any, request: SubscribeRequest) -> SubscribeAnswer:
        """A ticket for the chain: one payword a chunk at our price, for us, reserved
        at our bank, not tied to an order. The same chain again: the same ticket."""
        buyer = context.peer.agent_id
        commitment = _statement(request.commitment, "commitment")
        reservation = _statement(request.reservation, "reservation")
        bank = self.context.config.payment.bank or "bank"
        bank_channel = await self.context.agent.channel(bank)
        body, _ = verify_purse(
            commitment, reservation, buyer_certificate=context.peer.certificate,
            bank_certificate=bank_channel.peer.certificate, root=self.context.root,
            crl=self.context.crl, now=self.context.now(), seller_id=self.context.id,
            bank_id=bank, expected_buyer=buyer, expected_unit=self.price)
        if body.order is not None:
            raise BadCommitment("a chain for an order pays that order, not a feed",
                                detail={"type": "purse.commitment", "field": "order"})
        if body.length > self.max_chunks:
            raise BadCommitment(f"a ticket buys at most {self.max_chunks} chunks",
                                detail={"type": "purse.commitment", "field": "length"})
        held = await self.context.database.read(lambda c: c.execute(
            "SELECT statement FROM feed_tickets WHERE chain = ?", (body.chain,)).fetchone())
        if held is not None:
            return SubscribeAnswer(ticket=Statement.from_bytes(held[0]))
        ticket_id = secrets.token_bytes(16)
        info = StreamInfo(chunks=body.length, chunk_size=CHUNK_SIZE,
                          length=body.length * CHUNK_SIZE, root=LIVE_ROOT,
                          price_per_chunk=self.price)
        ticket = Ticket(ticket=ticket_id, order=commitment.digest, buyer=buyer,
                        seller=self.context.id, sku=SKU, stream=info, payment="purse",
                        chain=body.chain, expires=body.expires)
        statement = self.context.sign(TICKET_TYPE, ticket.to_body())
        now = self.context.now_ms()

        def store(c: sqlite3.Connection) -> bytes:
            row = c.execute("SELECT statement FROM feed_tickets WHERE chain = ?",
                            (body.chain,)).fetchone()
            if row is not None:  # a concurrent subscribe stored it first
                return bytes(row[0])
            c.execute("INSERT INTO feed_tickets (ticket, chain, buyer, length, highest,"
                      " payword, commitment, reservation, statement, state, redeem_at,"
                      " updated_ms) VALUES (?, ?, ?, ?, 0, ?, ?, ?, ?, 'open', ?, ?)",
                      (ticket_id, body.chain, buyer, body.length, body.root,
                       request.commitment, request.reservation, statement.to_bytes(),
                       body.expires, now))
            return statement.to_bytes()

        stored = await self.context.database.transaction(store)
        if stored == statement.to_bytes():
            await self.context.record(statement, sent=True, peer=buyer,
                                      transaction=ticket_id.hex())
        self._wake.set()
        return SubscribeAnswer(ticket=Statement.from_bytes(stored))

    # -- the live stream --------------------------------------------------------------

    @handles(OPEN)
    async def open(self, context: Any, request: OpenRequest) -> OpenAnswer:
        buyer = context.peer.agent_id
        ticket = check_ticket(request.ticket, seller_id=self.context.id, peer_id=buyer,
                              now_ms=self.context.now_ms(), certificate=self.context.certificate,
                              root=self.context.root, crl=self.context.crl)
        row = await self.context.database.read(lambda c: c.execute(
            "SELECT started FROM feed_tickets WHERE ticket = ?", (ticket.ticket,)).fetchone())
        if row is None:
            raise BadTicket("no ticket of ours has that id", detail={"field": "ticket"})
        if not 0 <= request.start < ticket.stream.chunks:
            raise OutOfOrder(f"from {request.start} is not a chunk of "
                             f"{ticket.stream.chunks}", detail={"index": request.start,
                                                                "expected": 0})
        for stale in [o for o in self._open.values() if o.channel.closed]:
            del self._open[stale.number]
        now = self.context.now_ms()  # an expired ticket's chunks are dropped
        for old in [k for k, f in self._feeds.items() if f.ticket.expires < now]:
            del self._feeds[old]
        if any(o.feed.ticket.ticket == ticket.ticket for o in self._open.values()):
            raise Busy("a stream of this ticket is open already",
                       detail={"ticket": ticket.ticket.hex()})
        mine = sum(1 for o in self._open.values() if o.buyer == buyer)
        if mine >= self.max_streams_per_buyer:
            raise TooManyStreams(f"{buyer} has {mine} streams open, the most one buyer may",
                                 detail={"limit": self.max_streams_per_buyer,
                                         "scope": "buyer"})
        if len(self._open) >= self.max_streams:
            raise TooManyStreams(f"{len(self._open)} streams are open, the most we serve",
                                 detail={"limit": self.max_streams, "scope": "total"})
        # From the checks above to the registrations below nothing awaits, so two opens
        # of one ticket at once cannot both pass: the second is delivery.busy.
        feed = self._feeds.get(ticket.ticket)
        fresh = feed is None
        if feed is None:
            if row[0]:
                raise BadTicket("this ticket's live stream ended when the feed restarted",
                                detail={"field": "ticket"})
            feed = _Feed(ticket=ticket, live=LiveStream(
                stream_id=ticket.ticket, every_chunks=self.every_chunks,
                every_ms=self.every_ms))
            self._feeds[ticket.ticket] = feed
        stream = _Open(number=self._next, feed=feed, buyer=buyer, channel=context.channel,
                       next=request.start)
        self._next += 1
        self._open[stream.number] = stream
        if fresh:
            try:
                await self.context.database.transaction(lambda c: c.execute(
                    "UPDATE feed_tickets SET started = 1 WHERE ticket = ?", (ticket.ticket,)))
            except BaseException:
                del self._feeds[ticket.ticket], self._open[stream.number]
                raise
            assert self._nursery is not None
            self._nursery.start_soon(self._produce, feed)
        info = ticket.stream
        return OpenAnswer(stream=stream.number, start=request.start, chunks=info.chunks,
                          chunk_size=info.chunk_size, length=info.length, root=info.root)

    def _stream(self, context: Any, number: int) -> _Open:
        stream = self._open.get(number)
        if stream is None or stream.channel is not context.channel:
            raise UnknownStream("no stream of that number is open on this channel",
                                detail={"stream": number})
        return stream

    @handles(CHUNK)
    async def chunk(self, context: Any, request: ChunkRequest) -> ChunkAnswer:
        stream = self._stream(context, request.stream)
        index, feed = request.index, stream.feed
        if stream.busy:  # requests sent together would each wait and take a copy
            raise Busy("a chunk of this stream is being answered: one request at a time",
                       detail={"stream": request.stream})
        if index != stream.next or index >= feed.ticket.stream.chunks:
            raise OutOfOrder(f"chunk {index} asked, {stream.next} is next of "
                             f"{feed.ticket.stream.chunks}",
                             detail={"index": index, "expected": stream.next})
        if self.context.now_ms() > feed.ticket.expires:
            raise TicketExpired("the ticket expired", detail={
                "expires": feed.ticket.expires, "now_ms": self.context.now_ms()})
        stream.busy = True
        try:
            with trio.move_on_after(WAIT_S):  # produced and under a signed head
                while feed.live.covered <= index:
                    await feed.changed.wait()
            if self._open.get(stream.number) is not stream:  # closed while it waited
                raise UnknownStream("the stream was closed", detail={"stream": request.stream})
            if feed.live.covered <= index:
                raise NotYet(f"chunk {index} is not under a signed head yet",
                             detail={"index": index, "size": feed.live.covered})
            await self._tick(feed.ticket, index, request.payword)
            if self._open.get(stream.number) is not stream:  # closed while it waited
                raise UnknownStream("the stream was closed",
                                    detail={"stream": request.stream})
            frame = feed.live.frame(index, since=stream.since)
            if frame.head is not None:
                stream.since = feed.live.covered
            stream.next = index + 1
        finally:
            stream.busy = False
        return ChunkAnswer(index=index, data=feed.chunks[index], proof=frame.proof,
                           head=frame.head, consistency=frame.consistency)

    @handles(HEAD)
    async def head(self, context: Any, request: HeadRequest) -> HeadAnswer:
        stream = self._stream(context, request.stream)
        live = stream.feed.live
        if request.size > live.covered:
            raise OutOfOrder(f"no head of {request.size} chunks was signed",
                             detail={"index": request.size, "expected": live.covered})
        head, consistency = live.head_for(request.size)
        stream.since = live.covered
        return HeadAnswer(head=head, consistency=consistency)

    @handles(CLOSE)
    async def close(self, context: Any, request: CloseRequest) -> dict[str, Any]:
        stream = self._stream(context, request.stream)
        del self._open[stream.number]
        soon = self.context.now_ms() + REDEEM_AFTER_MS
        await self.context.database.transaction(lambda c: c.execute(
            "UPDATE feed_tickets SET redeem_at = ? WHERE ticket = ? AND state = 'open'"
            " AND highest > 0", (soon, stream.feed.ticket.ticket)))
        self._wake.set()
        return {}

    async def _tick(self, ticket: Ticket, index: int, payword: bytes | None) -> None:
        """Payword index+1 checked with one hash and committed before the chunk
        leaves; a chunk paid already (sent again after a break) needs none."""
        assert ticket.chain is not None
        chain = ticket.chain
        async with self._locks.setdefault(chain, trio.Lock()):
            checker = self._checkers.get(chain)
            if checker is None:
                highest, last, length, commitment = await self.context.database.read(
                    lambda c: c.execute("SELECT highest, payword, length, commitment FROM"
                                        " feed_tickets WHERE chain = ?", (chain,)).fetchone())
                root = PurseCommitment.from_statement(Statement.from_bytes(commitment)).root
                checker = PaywordChecker(root, length, in_order=True, highest=highest,
                                         payword=last if highest else None)
                self._checkers[chain] = checker
            if index < checker.highest:
                return
            if payword is None:
                raise BadPayword(f"chunk {index} is paid by payword {index + 1}",
                                 detail={"index": index + 1})
            if checker.highest and payword == checker.payword:
                raise Replayed(f"payword {checker.highest} again",
                               detail={"index": index + 1, "highest": checker.highest})
            trial = PaywordChecker(checker.root, checker.length, in_order=True)
            trial.highest, trial.payword = checker.highest, checker.payword
            trial.accept(index + 1, payword)  # the purse's refusals; nothing changed
            now, before = self.context.now_ms(), checker.highest
            last = index + 1 == checker.length

            def commit(c: sqlite3.Connection) -> None:
                if c.execute("UPDATE feed_tickets SET highest = ?, payword = ?, updated_ms = ?,"
                             " redeem_at = CASE WHEN ? THEN ? ELSE redeem_at END"
                             " WHERE chain = ? AND highest = ? AND state = 'open'",
                             (index + 1, payword, now, last, now + REDEEM_AFTER_MS, chain,
                              before)).rowcount != 1:
                    raise AlreadyRedeemed("the chain was redeemed: no more ticks",
                                          detail={"chain": chain.hex()})

            await self.context.database.transaction(commit)
            checker.highest, checker.payword = trial.highest, trial.payword
            if last:
                self._wake.set()

    async def _produce(self, feed: _Feed) -> None:
        """Make one ticker line every ``period_ms`` until the ticket's chunks are made,
        and sign the heads the stream asks for (the last one at the end)."""
        live, length = feed.live, feed.ticket.stream.chunks
        rng = random.Random(feed.ticket.ticket)
        start, price = self.context.now_ms(), 10_000
        while live.size < length or live.covered < live.size:  # bounded: length chunks
            now = self.context.now_ms()
            if live.size < length and now >= start + live.size * self.period_ms:
                price = max(1, price + rng.randint(-25, 25))
                feed.chunks.append(_line(live.size, now, price))
                live.add(feed.chunks[-1], now_ms=now)
            head = live.due(now, final=live.size == length)
            if head is not None:
                statement = self.context.sign(HEAD_TYPE, head.to_body())
                live.signed(statement)
                await self.context.record(statement, sent=True, peer=feed.ticket.buyer,
                                          transaction=feed.ticket.ticket.hex())
                feed.notify()
            wakes = [t for t in (start + live.size * self.period_ms if live.size < length
                                 else None, live.next_timer()) if t is not None]
            if wakes:
                await trio.sleep(max(0, min(wakes) - self.context.now_ms()) / 1000)

    # -- redemption -------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        now = self.context.now_ms()  # streams a restart ended: redeem what they paid now
        await self.context.database.transaction(lambda c: c.execute(
            "UPDATE feed_tickets SET redeem_at = ? WHERE started = 1 AND state = 'open'"
            " AND redeem_at > ?", (now, now)))
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            while True:
                self._wake = trio.Event()
                due = await self.context.database.read(lambda c: c.execute(
                    "SELECT ticket, redeem_at FROM feed_tickets WHERE redeem_at IS NOT NULL"
                    " ORDER BY redeem_at LIMIT 16").fetchall())
                now = self.context.now_ms()
                ready = [ticket for ticket, at in due if at <= now]
                for ticket in ready:
                    await self._redeem(ticket)
                if not ready:
                    wait = (due[0][1] - now) / 1000 if due else math.inf
                    with trio.move_on_after(min(wait, 3600.0)):
                        await self._wake.wait()

    async def _redeem(self, ticket: bytes) -> None:
        """The highest payword to the bank, once (the bank answers a repeat with its
        first statement); a chain never paid is left to the bank's sweep. The chain's
        lock is held from reading the highest tick to recording what the bank said,
        so no tick (a buyer that reopened after a close) slips in between."""
        chain = await self.context.database.read(lambda c: c.execute(
            "SELECT chain FROM feed_tickets WHERE ticket = ?", (ticket,)).fetchone()[0])
        async with self._locks.setdefault(chain, trio.Lock()):
            highest, payword, commitment, reservation = await self.context.database.read(
                lambda c: c.execute("SELECT highest, payword, commitment, reservation"
                                    " FROM feed_tickets WHERE ticket = ?", (ticket,)).fetchone())
            now = self.context.now_ms()
            redeemed: Statement | None = None
            if highest == 0:
                state: str = "unused"
            else:
                try:
                    redeemed = await redeem(self.context, Statement.from_bytes(commitment),
                                            Statement.from_bytes(reservation), payword,
                                            highest)
                    state = "redeemed"
                except Exception as exc:
                    code = getattr(exc, "code", None)
                    if not isinstance(code, str):
                        raise
                    self.context.log.warning("redeeming chain %s: %s", chain.hex()[:16], exc)
                    if code not in ("purse.already_redeemed", "purse.expired"):
                        await self.context.database.transaction(lambda c: c.execute(
                            "UPDATE feed_tickets SET redeem_at = ?, updated_ms = ?"
                            " WHERE ticket = ?", (now + REDEEM_RETRY_MS, now, ticket)))
                        return
                    state = code
            await self.context.database.transaction(lambda c: c.execute(
                "UPDATE feed_tickets SET state = ?, redeem_at = NULL, redeemed = ?,"
                " updated_ms = ? WHERE ticket = ?",
                (state, None if redeemed is None else redeemed.to_bytes(), now, ticket)))
        # Done with for good: no tick is taken any more (state is not 'open').
        self._checkers.pop(chain, None)
        self._locks.pop(chain, None)


def _line(seq: int, now_ms: int, price: int) -> bytes:
    """One ticker chunk: a JSON line (at most CHUNK_SIZE bytes)."""
    return (f'{{"seq": {seq}, "time": {now_ms}, "symbol": "SMPR", '
            f'"price": "{price // 100}.{price % 100:02d}"}}\n').encode()


def _statement(data: bytes, name: str) -> Statement:
    try:
        return Statement.from_bytes(data)
    except ServiceError as exc:
        raise BadRequest(f"{name} is not a statement: {exc.message}",
                         detail={"type": "delivery.subscribe", "field": name,
                                 "cause": exc.code}) from None


class Feed(Role):
    name = "feed"
    components = (TickerFeed,)
