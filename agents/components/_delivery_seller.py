"""The seller's streamed delivery (issue 10): tickets, and the delivery channel's ops.

Theory of operation. A streamed item (a catalogue item with a ``stream`` table) is
never sent in ``commerce.fetch``'s one frame. Once its order is paid whole (a
transfer, a cheque), ``commerce.fetch`` answers the delivery and the receipt with a
signed ``delivery.ticket`` instead of the goods (``ticket_for_paid``); an order to
be paid by purse gets its ticket from ``delivery.ticket``, once the buyer's
``purse.commitment`` and its bank's ``purse.reservation`` check out (the chain's
length is the item's chunk count, its unit the price per chunk). One ticket per
order: asking again gives the same one.

The buyer presents the ticket on a second channel (``delivery.open``) and asks for
chunks (``delivery.chunk``), each answered with its inclusion proof, in order: at
most two requests of a stream are held (the one answered, and the next, which waits
for it), so a slow reader holds at most two chunks of ours. For a purse ticket the
request for chunk j carries payword j (paying chunks 0..j-1): the credit window,
protocol.md 13.3. It is checked with one hash from the last one accepted and the
tick (highest, payword, and sent = j+1) committed before the chunk is read or sent,
so the seller never sent more than one chunk unpaid (sent <= highest + 1); the buyer
pays the last chunk with ``delivery.close``. A chunk sent before (a stream broken
after its tick) is sent again without a new payword. The highest tick is redeemed
at the chain's bank within ``REDEEM_AFTER_MS`` of its last payword, or else at the
chain's expiry (a buyer that never paid the last chunk: one chunk lost), by a
task that reads what is due from the database (so a restart redeems what a crash
left pending); the bank's ``purse.redeemed`` is checked and archived before the
chain is marked redeemed. A chain redeemed for the whole item pays the order's sale:
its ``purse.redeemed`` is the payment, and the sale is delivered and receipted
(``settle``). The buyer asks for that receipt with ``commerce.fetch`` right after the
stream, which redeems a chain paid whole at once if the task has not yet.
"""

from __future__ import annotations

import secrets
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import trio
import trio.testing

from semper.agents.components._purse import DURABLE_EVERY
from semper.agents.components._purse import redeem as purse_redeem
from semper.agents.runtime._component import Component, Context, handles
from semper.agents.runtime._config import ConfigError
from semper.agents.runtime._faults import CRASH_AT, crash_point
from semper.services.commerce import PaymentConfirmed, Refunded, SaleState, UnknownOffer
from semper.services.delivery import (
    BadRequest,
    BadTicket,
    Busy,
    OutOfOrder,
    StreamInfo,
    Ticket,
    TicketExpired,
    TooManyStreams,
    UnknownStream,
    check_ticket,
)
from semper.services.delivery import _ops as delivery_ops
from semper.services.delivery._frames import (
    ChunkAnswer,
    ChunkRequest,
    CloseRequest,
    OpenAnswer,
    OpenRequest,
    TicketAnswer,
    TicketRequest,
)
from semper.services.payment import PaymentResult
from semper.services.payment.purse import (
    AlreadyRedeemed,
    BadCommitment,
    BadPayword,
    PaywordChecker,
    PurseCommitment,
    PurseRedeemed,
    Replayed,
    verify_purse,
)
from semper.services.statements import Statement, StatementError

if TYPE_CHECKING:
    from semper.agents.components._catalogue import CatalogueItem
    from semper.transport import RequestContext

__all__ = ["DeliverySeller"]

#: Sales whose goods are not delivered again (as ``commerce.fetch`` refuses them).
_REFUNDED: Final = frozenset({SaleState.REFUNDING, SaleState.REFUND_CONFIRMED,
                              SaleState.REFUNDED})

TICKET_TYPE: Final = "delivery.ticket"
#: A ticket for an order paid whole is good for resuming this long.
PAID_TICKET_MS: Final = 7 * 86_400_000
#: The stream's last chunk sent, its chain is redeemed this soon (the issue: 10 s).
REDEEM_AFTER_MS: Final = 2_000
#: A redemption the bank did not answer is tried again this much later.
REDEEM_RETRY_MS: Final = 30_000


MIGRATIONS: Final = {
    "delivery_seller": [
        # One ticket per order; ``chain`` for a purse ticket.
        "CREATE TABLE delivery_tickets ("
        " ticket BLOB PRIMARY KEY, order_digest BLOB NOT NULL UNIQUE, buyer TEXT NOT NULL,"
        " sku TEXT NOT NULL, payment TEXT NOT NULL, chain BLOB, expires INTEGER NOT NULL,"
        " statement BLOB NOT NULL, created_ms INTEGER NOT NULL) STRICT;"
        # A purse chain's ticks: ``highest`` paywords accepted (0: none), the last one
        # (the root while none), what the bank answered; ``redeem_at`` is when the
        # redemption task acts (NULL once it is done).
        "CREATE TABLE delivery_chains ("
        " chain BLOB PRIMARY KEY, ticket BLOB NOT NULL, bank TEXT NOT NULL,"
        " length INTEGER NOT NULL, highest INTEGER NOT NULL, payword BLOB NOT NULL,"
        " commitment BLOB NOT NULL, reservation BLOB NOT NULL, state TEXT NOT NULL,"
        " redeem_at INTEGER, redeemed BLOB, updated_ms INTEGER NOT NULL) STRICT;"
        "CREATE INDEX delivery_chains_due ON delivery_chains (redeem_at)"
        " WHERE redeem_at IS NOT NULL",
        # 2: how many chunks were sent (or being sent) against the chain, committed
        # with each tick: the record that no chunk left unpaid (sent <= highest).
        "ALTER TABLE delivery_chains ADD COLUMN sent INTEGER NOT NULL DEFAULT 0",
    ],
}


@dataclass(frozen=True, slots=True)
class _Peer:
    """The buyer as the sale's archive entries name it."""

    agent_id: str
    certificate: Any


@dataclass(slots=True)
class _Stream:
    """One open stream: its ticket, the channel it is on, the next chunk it sends."""

    id: int
    ticket: Ticket
    ticket_id: bytes
    buyer: str
    channel: Any
    item: CatalogueItem
    next: int
    chain: bytes | None
    #: the next chunk whose tick is to be taken (a tick runs ahead of its send)
    ticked: int = 0
    #: the chunk requests in hand: at most two, ``next`` and ``next + 1``
    hand: set[int] = field(default_factory=set)
    #: chunk requests of this stream that failed in hand (a waiting one gives up)
    failures: int = 0
    #: set (and replaced) whenever a request in hand moves on: waiters look again
    idle: trio.Event | None = None


class DeliverySeller(Component):
    """``delivery.*`` on a seller: tickets, open/chunk/close, purse redemption."""

    name = "delivery"
    unlogged = frozenset({"chunk"})  # one line a chunk would swamp the event log

    def __init__(self, context: Context) -> None:
        super().__init__(context)
        self.max_streams = 64
        self.max_streams_per_buyer = 4
        self._streams: dict[int, _Stream] = {}
        #: orders refunded while this seller runs: their open streams stop at once
        self._refunded: set[bytes] = set()
        self._next_id = 1
        self._wake = trio.Event()  # a redemption came due sooner: look again
        self._chains: dict[bytes, trio.Lock] = {}
        #: chain -> its checker as last committed (read from the database once).
        self._checkers: dict[bytes, PaywordChecker] = {}
        #: chain -> chunks sent against it as last committed (with the checker).
        self._sent: dict[bytes, int] = {}

    def configure(self, settings: Mapping[str, Any]) -> None:
        unknown = set(settings) - {"max_streams", "max_streams_per_buyer"}
        if unknown:
            raise ConfigError(f"[components.delivery] takes max_streams and "
                              f"max_streams_per_buyer, not {', '.join(sorted(unknown))}")
        for key in ("max_streams", "max_streams_per_buyer"):
            value = settings.get(key, getattr(self, key))
            if type(value) is not int or not 1 <= value <= 100_000:
                raise ConfigError(f"[components.delivery] {key} is a whole number, 1 to "
                                  "100000")
            setattr(self, key, value)

    def migrations(self) -> Mapping[str, Sequence[str]]:
        return MIGRATIONS

    # -- what is sold ---------------------------------------------------------------

    def _sales(self) -> Any:
        from semper.agents.roles.seller import Sales

        return self.context.component(Sales)

    def _item(self, sku: str) -> CatalogueItem:
        item = self._sales().items.get(sku)
        if item is None or item.stream is None:
            raise BadTicket(f"{sku!r} is not streamed here", detail={"field": "sku"})
        return item

    def _sold(self, sku: str, stream: StreamInfo | None) -> CatalogueItem:
        """The item whose chunks were sold as ``stream`` (the order's or the ticket's
        map): the goods changed since (another file, restarted) is
        ``commerce.unknown_offer``, as ``commerce.fetch`` refuses them, before a
        payword is taken for a chunk that cannot verify."""
        item = self._item(sku)
        held = _info(item)  # the content, whatever its price is now
        if stream is None or (held.chunks, held.chunk_size, held.length, held.root) != (
                stream.chunks, stream.chunk_size, stream.length, stream.root):
            raise UnknownOffer(f"the goods sold as {sku!r} are no longer held here",
                               detail={"sku": sku})
        return item

    # -- tickets ----------------------------------------------------------------------

    async def ticket_for_paid(self, order: bytes, buyer: str, sku: str, module: str,
                              stream: StreamInfo | None = None) -> Statement:
        """The ticket of an order paid whole (``commerce.fetch`` of a streamed item),
        or the one a purse order got from ``delivery.ticket`` (its receipt's fetch);
        ``stream`` the map sold (the order's offer's; default the item's now)."""
        known = await self._ticket_of(order)
        if known is not None and module == "purse":
            return known[0]
        return await self._issue(order, buyer, sku, module, chain=None,
                                 expires=self.context.now_ms() + PAID_TICKET_MS, stream=stream)

    async def _issue(self, order: bytes, buyer: str, sku: str, module: str, *,
                     chain: bytes | None, expires: int,
                     purse: tuple[str, int, bytes, bytes, bytes] | None = None,
                     stream: StreamInfo | None = None) -> Statement:
        """The order's ticket, signed and stored once (a second ask gets the first)."""
        known = await self._ticket_of(order)
        if known is not None:
            statement, held_chain = known
            if held_chain != chain:
                raise Busy("this order has a ticket for another purse chain",
                           detail={"ticket": Ticket.from_statement(statement).ticket.hex()})
            return statement
        item = self._item(sku)
        assert item.stream is not None
        ticket_id = secrets.token_bytes(16)
        body = Ticket(ticket=ticket_id, order=order, buyer=buyer, seller=self.context.id,
                      sku=sku, stream=stream or _info(item), payment=module, chain=chain,
                      expires=expires)
        statement = self.context.sign(TICKET_TYPE, body.to_body())
        now = self.context.now_ms()

        def store(c: sqlite3.Connection) -> Statement:
            row = c.execute("SELECT statement FROM delivery_tickets WHERE order_digest = ?",
                            (order,)).fetchone()
            if row is not None:  # another request issued it meanwhile
                return Statement.from_bytes(row[0])
            c.execute("INSERT INTO delivery_tickets (ticket, order_digest, buyer, sku, payment,"
                      " chain, expires, statement, created_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                      (ticket_id, order, buyer, sku, module, chain, expires,
                       statement.to_bytes(), now))
            if purse is not None:
                bank, length, root, commitment, reservation = purse
                c.execute("INSERT INTO delivery_chains (chain, ticket, bank, length, highest,"
                          " payword, commitment, reservation, state, redeem_at, updated_ms)"
                          " VALUES (?, ?, ?, ?, 0, ?, ?, ?, 'open', ?, ?)",
                          (chain, ticket_id, bank, length, root, commitment, reservation,
                           expires, now))
            return statement

        stored = await self.context.database.transaction(store)
        if stored is statement:
            await self.context.record(statement, sent=True, peer=buyer,
                                      transaction=order.hex())
        self._wake.set()
        return stored

    async def _ticket_of(self, order: bytes) -> tuple[Statement, bytes | None] | None:
        row = await self.context.database.read(lambda c: c.execute(
            "SELECT statement, chain FROM delivery_tickets WHERE order_digest = ?",
            (order,)).fetchone())
        return None if row is None else (Statement.from_bytes(row[0]), row[1])

    @handles(delivery_ops.TICKET)
    async def ticket(self, context: RequestContext, request: TicketRequest) -> TicketAnswer:
        """A purse order's ticket: the buyer's commitment and its bank's reservation
        for exactly the item's chunks at its price per chunk, for this order."""
        buyer = context.peer.agent_id  # request: a TicketRequest, checked on decoding
        order = request.order
        sale = await self._sales()._sale_of(order, buyer)
        from semper.services.commerce import Order

        assert sale.order is not None
        terms = Order.from_statement(sale.order)
        offer = terms.offer_terms()
        self._sold(offer.sku, offer.stream)
        sold = offer.stream  # as sold: the price per chunk the order agreed
        assert sold is not None
        if terms.payment_module != "purse":
            raise BadRequest("this order is not to be paid by purse",
                             detail={"type": "delivery.ticket", "field": "order"})
        # The market's policy and ours, as payment.accept applies them (protocol.md 8.9).
        self._sales().payments.check_payer("purse", terms.amount, context.peer)
        bank = self.context.config.payment.bank or "bank"
        bank_channel = await self.context.agent.channel(bank)
        commitment, _ = verify_purse(
            _statement(request.commitment), _statement(request.reservation),
            buyer_certificate=context.peer.certificate,
            bank_certificate=bank_channel.peer.certificate, root=self.context.root,
            crl=self.context.crl, now=self.context.now(), seller_id=self.context.id,
            bank_id=bank, expected_buyer=buyer, expected_unit=sold.price_per_chunk,
            expected_order=order)
        if commitment.length != sold.chunks:
            raise BadCommitment(f"the chain has {commitment.length} paywords, the item "
                                f"{sold.chunks} chunks",
                                detail={"type": "purse.commitment", "field": "length"})
        chain = commitment.chain
        new = await self._ticket_of(order) is None
        statement = await self._issue(
            order, buyer, offer.sku, "purse", chain=chain, expires=commitment.expires,
            purse=(bank, sold.chunks, commitment.root, request.commitment,
                   request.reservation), stream=sold)
        if new:  # what backs the paywords we take: evidence for the redemption
            await self.context.record(_statement(request.commitment), sent=False,
                                      peer=buyer, transaction=order.hex(),
                                      certificate=context.peer.certificate)
            await self.context.record(_statement(request.reservation), sent=False,
                                      peer=bank, transaction=order.hex(),
                                      certificate=bank_channel.peer.certificate)
        return TicketAnswer(ticket=statement)

    # -- the delivery channel ---------------------------------------------------------

    def _live(self) -> list[_Stream]:
        """The open streams, dropping those whose channel closed (a broken stream)."""
        for stream in [s for s in self._streams.values() if s.channel.closed]:
            del self._streams[stream.id]
        return list(self._streams.values())

    @handles(delivery_ops.OPEN)
    async def open(self, context: RequestContext, request: OpenRequest) -> OpenAnswer:
        statement, start = request.ticket, request.start
        buyer = context.peer.agent_id
        ticket = check_ticket(statement, seller_id=self.context.id, peer_id=buyer,
                              now_ms=self.context.now_ms(), certificate=self.context.certificate,
                              root=self.context.root, crl=self.context.crl)
        row = await self.context.database.read(lambda c: c.execute(
            "SELECT order_digest, sku, chain FROM delivery_tickets WHERE ticket = ?",
            (ticket.ticket,)).fetchone())
        if row is None:
            raise BadTicket("no ticket of ours has that id", detail={"field": "ticket"})
        if row[0] != ticket.order:
            raise BadTicket("the ticket is for another order", detail={"field": "order"})
        # Not once the payment went back: paid whole, or by a purse chain redeemed
        # and refunded (its chunks, all below the highest tick, would come free).
        sale = await self._sales()._sale_of(ticket.order, buyer)
        if sale.state in _REFUNDED or ticket.order in self._refunded:
            raise Refunded("the order was refunded: its goods are not delivered again",
                           detail={"state": sale.state.value})
        item = self._sold(row[1], ticket.stream)
        assert item.stream is not None
        # from = chunks: nothing to send, a stream only to close with the last payword
        if not 0 <= start <= item.stream.chunks:
            raise OutOfOrder(f"from {start} is not a chunk of {item.stream.chunks}",
                             detail={"index": start, "expected": 0})
        live = self._live()
        if any(s.ticket_id == ticket.ticket for s in live):
            raise Busy("a stream of this ticket is open already",
                       detail={"ticket": ticket.ticket.hex()})
        mine = sum(1 for s in live if s.buyer == buyer)
        if mine >= self.max_streams_per_buyer:
            raise TooManyStreams(f"{buyer} has {mine} streams open, the most one buyer may",
                                 detail={"limit": self.max_streams_per_buyer,
                                         "scope": "buyer"})
        if len(live) >= self.max_streams:
            raise TooManyStreams(f"{len(live)} streams are open, the most we serve",
                                 detail={"limit": self.max_streams, "scope": "total"})
        stream = _Stream(id=self._next_id, ticket=ticket, ticket_id=ticket.ticket,
                         buyer=buyer, channel=context.channel, item=item, next=start, ticked=start,
                         chain=row[2])
        self._next_id += 1
        self._streams[stream.id] = stream
        return OpenAnswer(stream=stream.id, start=start, chunks=item.stream.chunks,
                          chunk_size=item.stream.chunk_size, length=item.stream.length,
                          root=item.stream.root)

    def _stream_of(self, context: RequestContext, number: Any) -> _Stream:
        stream = self._streams.get(number)
        if stream is None or stream.channel is not context.channel:
            raise UnknownStream("no stream of that number is open on this channel",
                                detail={"stream": number})
        return stream

    @handles(delivery_ops.CHUNK)
    async def chunk(self, context: RequestContext, request: ChunkRequest) -> ChunkAnswer:
        """Chunk ``index``, in order, at most two requests of a stream in hand: the
        second (the buyer's next, in flight) takes its tick while the first's chunk
        is read and sent, and is sent once the first is (protocol.md 13.3)."""
        number, index, payword = request.stream, request.index, request.payword
        stream = self._stream_of(context, number)
        assert stream.item.stream is not None
        if len(stream.hand) >= 2 or index in stream.hand:  # more would each hold a chunk
            raise Busy("two chunk requests of this stream are in hand already",
                       detail={"stream": number})
        if index not in (stream.next, stream.next + 1) or index >= stream.item.stream.chunks:
            raise OutOfOrder(f"chunk {index} asked, {stream.next} is next of "
                             f"{stream.item.stream.chunks}",
                             detail={"index": index, "expected": stream.next})
        if self.context.now_ms() > stream.ticket.expires:
            raise TicketExpired("the ticket expired", detail={
                "expires": stream.ticket.expires, "now_ms": self.context.now_ms()})
        if stream.ticket.order in self._refunded:
            raise Refunded("the order was refunded: its goods are not delivered again",
                           detail={"state": SaleState.REFUNDED.value})
        stream.hand.add(index)
        try:
            # The request before it may be in hand, or not yet (handled later).
            await self._turn(stream, index, lambda: stream.ticked == index)
            if stream.chain is not None:
                await self._tick(stream.chain, index, payword, sending=index + 1)
                if self._streams.get(stream.id) is not stream:  # closed while it waited:
                    raise UnknownStream("the stream was closed", detail={"stream": number})
            elif payword is not None:
                raise BadRequest("a ticket paid whole takes no payword",
                                 detail={"type": "delivery.chunk", "field": "payword"})
            stream.ticked = index + 1
            _wake(stream)
            await self._turn(stream, index, lambda: stream.next == index)
            if CRASH_AT == f"stream.seller.chunk:{index}":
                # The chunk before was answered, not necessarily written: let the
                # writer send it, so the crash takes chunk ``index`` alone.
                await trio.testing.wait_all_tasks_blocked()
            crash_point("stream.seller.chunk", index)
            data = stream.item.chunk(index)
            proof = stream.item.stream.tree.inclusion_proof(index)
            stream.next = index + 1
        except BaseException:
            stream.failures += 1
            raise
        finally:
            stream.hand.discard(index)
            _wake(stream)
        return ChunkAnswer(index=index, data=data, proof=proof)

    async def _turn(self, stream: _Stream, index: int, ready: Any) -> None:
        """Wait until ``ready()``: the request before ``index`` moved on. It failing,
        or the stream closing, ends the wait with a refusal."""
        failures = stream.failures
        while not ready():
            if stream.failures != failures:
                raise OutOfOrder(f"chunk {index} asked, {stream.next} (before it) failed",
                                 detail={"index": index, "expected": stream.next})
            await _idle(stream).wait()
            if self._streams.get(stream.id) is not stream:  # closed while it waited
                raise UnknownStream("the stream was closed", detail={"stream": stream.id})

    async def _tick(self, chain: bytes, count: int, payword: bytes | None, *,
                    sending: int | None) -> None:
        """See that chunks ``0..count-1`` of ``chain`` are paid, taking payword
        ``count`` (one hash from the last accepted) if they are not yet, and commit
        it and, when ``sending`` chunks will have left, that count, before the chunk
        is read. So the seller sends chunk ``count`` with at most that one chunk
        unpaid (the credit window: sent <= highest + 1), and a chunk sent before
        (a stream broken after its tick) is sent again without a new payword.
        Refusals are the purse's codes and move nothing."""
        lock = self._chains.setdefault(chain, trio.Lock())
        async with lock:
            checker = self._checkers.get(chain)
            if checker is None:
                row = await self.context.database.read(lambda c: c.execute(
                    "SELECT highest, payword, length, commitment, sent FROM delivery_chains"
                    " WHERE chain = ?", (chain,)).fetchone())
                highest, last, length, commitment, sent = row
                root = PurseCommitment.from_statement(Statement.from_bytes(commitment)).root
                checker = PaywordChecker(root, length, in_order=True, highest=highest,
                                         payword=last if highest else None)
                self._checkers[chain] = checker
                self._sent[chain] = sent
            sent = self._sent[chain]
            more = sending is not None and sending > sent
            if count <= checker.highest and not more:
                return  # paid before, and sent before (or nothing to send)
            before = checker.highest
            if count > before:
                if payword is None:
                    raise BadPayword(f"chunks 0 to {count - 1} are paid by payword {count}"
                                     f" (the seller holds {before})",
                                     detail={"index": count, "highest": before})
                if payword == checker.payword and before:
                    raise Replayed(f"payword {before} again",
                                   detail={"index": count, "highest": before})
                checker.check(count, payword)  # the purse's refusals, nothing changed
                highest, last = count, payword
            else:
                highest, last = before, checker.payword
            now = self.context.now_ms()
            done = highest == checker.length and highest > before
            new_sent = max(sent, sending or 0)

            def commit(c: sqlite3.Connection) -> None:
                changed = c.execute(
                    "UPDATE delivery_chains SET highest = ?, payword = COALESCE(?, payword),"
                    " sent = ?, updated_ms = ?,"
                    " redeem_at = CASE WHEN ? THEN ? ELSE redeem_at END"
                    " WHERE chain = ? AND highest = ? AND state = 'open'",
                    (highest, last, new_sent, now, done, now + REDEEM_AFTER_MS, chain,
                     before)).rowcount
                if changed != 1:
                    raise AlreadyRedeemed("the chain was redeemed: no more ticks",
                                          detail={"chain": chain.hex()})

            # Fsync'd every DURABLE_EVERY paywords and at the last; in between a kill
            # loses nothing and a power loss at most that many chunks' pay (we
            # would redeem a lower payword): per-chunk fsyncs were the stream's limit.
            await self.context.database.transaction(
                commit, durable=done or highest % DURABLE_EVERY == 0)
            if highest > before:
                checker.accept(count, payword)  # one hash again, after the commit
            self._sent[chain] = new_sent
            if done:
                self._wake.set()

    def refunded(self, order: bytes) -> None:
        """``order``'s payment went back (``commerce.refund``): a stream of it open
        now serves no more chunks (``delivery.open`` reads the sale for later ones)."""
        self._refunded.add(order)

    @handles(delivery_ops.CLOSE)
    async def close(self, context: RequestContext, request: CloseRequest) -> dict[str, Any]:
        stream = self._stream_of(context, request.stream)
        if request.payword is not None:  # the last chunk's payment (the credit window)
            if stream.chain is None:
                raise BadRequest("a ticket paid whole takes no payword",
                                 detail={"type": "delivery.close", "field": "payword"})
            await self._tick(stream.chain, stream.next, request.payword, sending=None)
        self._streams.pop(stream.id, None)
        _wake(stream)  # a request still waiting ends (delivery.unknown_stream)
        return {}

    # -- redemption -------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        task_status.started()
        while True:
            self._wake = trio.Event()
            due = await self.context.database.read(lambda c: c.execute(
                "SELECT chain, redeem_at FROM delivery_chains WHERE redeem_at IS NOT NULL"
                " ORDER BY redeem_at LIMIT 16").fetchall())
            now = self.context.now_ms()
            ready = [chain for chain, at in due if at <= now]
            for chain in ready:
                try:
                    if await self.redeem(chain) is not None:
                        await self._settle_chain(chain)
                except Exception as exc:  # one chain's failure never stops the others
                    self.context.log.error("redeeming chain %s failed (retrying): %s",
                                           chain.hex()[:16], exc, exc_info=exc)
                    later = self.context.now_ms() + REDEEM_RETRY_MS
                    await self.context.database.transaction(
                        lambda c, ch=chain, at=later: c.execute(
                            "UPDATE delivery_chains SET redeem_at = ? WHERE chain = ?",
                            (at, ch)))
            if ready:
                continue
            wait = (due[0][1] - now) / 1000 if due else 3600.0
            with trio.move_on_after(max(0.0, min(wait, 3600.0))):
                await self._wake.wait()

    async def redeem(self, chain: bytes) -> Statement | None:
        """Redeem ``chain``'s highest tick at its bank (once: the bank answers a repeat
        with its first statement). A chain with no tick is left to the bank's sweep.
        A refusal is logged and tried again ``REDEEM_RETRY_MS`` later. A chain done
        with leaves our memory (its lock, its checker)."""
        try:
            return await self._redeem(chain)
        finally:
            done = await self.context.database.read(lambda c: c.execute(
                "SELECT redeem_at IS NULL FROM delivery_chains WHERE chain = ?",
                (chain,)).fetchone()[0])
            lock = self._chains.get(chain)
            if done and lock is not None and not lock.locked():
                del self._chains[chain]
                self._checkers.pop(chain, None)
                self._sent.pop(chain, None)

    # -- a purse order's receipt ------------------------------------------------------

    async def settle(self, order: bytes, buyer: str) -> None:
        """The sale of purse ``order`` paid, delivered and receipted once its chain is
        redeemed for the whole item: the bank's ``purse.redeemed`` is the payment the
        receipt names (what a dispute shows). A chain whose every chunk was ticked
        and not yet redeemed is redeemed now (the buyer asks for its receipt right
        after the stream: it does not wait for ``REDEEM_AFTER_MS``). Anything short
        of that (chunks unpaid, the bank not answering, a partial redemption at
        expiry) leaves the sale as it is; called again, it carries on."""
        row = await self.context.database.read(lambda c: c.execute(
            "SELECT ch.chain, ch.state, ch.highest, ch.length, ch.redeemed"
            " FROM delivery_chains ch JOIN delivery_tickets t ON ch.ticket = t.ticket"
            " WHERE t.order_digest = ? AND t.buyer = ?", (order, buyer)).fetchone())
        if row is None:
            return
        chain, state, highest, length, redeemed = row
        if redeemed is None and state == "open" and highest == length:
            await self.redeem(chain)
            redeemed = await self.context.database.read(lambda c: c.execute(
                "SELECT redeemed FROM delivery_chains WHERE chain = ?", (chain,)).fetchone()[0])
        if redeemed is None:
            return
        statement = Statement.from_bytes(redeemed)
        body = PurseRedeemed.from_statement(statement)
        if body.index != length:  # paid for part of the item: no receipt for the whole
            return
        certificate = await self.context.agent.archive.certificate(statement.signer)
        if certificate is None:  # archived with it by ``purse.redeem``: never, but safe
            bank = self.context.config.payment.bank or "bank"
            certificate = (await self.context.agent.channel(bank)).peer.certificate
        sales = self._sales()
        async with sales._lock(order):
            sale = await sales._sale_of(order, buyer)
            if sale.state is not SaleState.ORDER_ACCEPTED:
                return  # settled already (or refunded, failed: nothing to sign)
            result = PaymentResult(module="purse", payer=buyer, payee=self.context.id,
                                   amount=body.paid, reference=order, settlement=statement,
                                   bank_certificate=certificate)
            decisions = sale.receive(PaymentConfirmed(
                payment=statement.digest, payment_type=statement.type, amount=body.paid),
                now_ms=self.context.now_ms())
            peer = _Peer(agent_id=buyer, certificate=None)  # we sign all that is kept
            entries = sales._fulfil(sale, decisions, peer, order)
            await sales._save(sale, buyer, payment=result, entries=entries)

    async def _settle_chain(self, chain: bytes) -> None:
        """``settle`` the order of a chain just redeemed, so its receipt is ready; a
        failure is logged (the buyer's fetch settles it again)."""
        try:
            order, buyer = await self.context.database.read(lambda c: c.execute(
                "SELECT t.order_digest, t.buyer FROM delivery_tickets t JOIN delivery_chains"
                " ch ON ch.ticket = t.ticket WHERE ch.chain = ?", (chain,)).fetchone())
            await self.settle(order, buyer)
        except Exception as exc:
            self.context.log.error("the sale of chain %s is not settled yet: %s",
                                   chain.hex()[:16], exc, exc_info=exc)

    async def _redeem(self, chain: bytes) -> Statement | None:
        """``redeem`` itself: ask the bank, record its answer (or when to ask again).
        The tick is read under the chain's lock (a tick between a read and the lock
        would be paid by the buyer and never redeemed); the bank's answer is checked
        (``purse.redeem``: a ``purse.redeemed`` of our bank, for this chain, its
        commitment, us and this index) before the chain is marked redeemed."""
        lock = self._chains.setdefault(chain, trio.Lock())
        async with lock:  # no tick moves on while its redemption is asked
            row = await self.context.database.read(lambda c: c.execute(
                "SELECT ch.highest, ch.payword, ch.commitment, ch.reservation, ch.state,"
                " ch.redeemed, t.order_digest FROM delivery_chains ch JOIN delivery_tickets t"
                " ON ch.ticket = t.ticket WHERE ch.chain = ?", (chain,)).fetchone())
            highest, payword, commitment, reservation, state, redeemed, order = row
            now = self.context.now_ms()
            if state != "open":  # redeemed (or ended) by another call meanwhile
                return None if redeemed is None else Statement.from_bytes(redeemed)
            if highest == 0:
                await self.context.database.transaction(lambda c: c.execute(
                    "UPDATE delivery_chains SET state = 'unused', redeem_at = NULL,"
                    " updated_ms = ? WHERE chain = ?", (now, chain)))
                return None
            try:
                statement = await purse_redeem(
                    self.context, Statement.from_bytes(commitment),
                    Statement.from_bytes(reservation), payword, highest,
                    transaction=order.hex())
            except Exception as exc:
                code = getattr(exc, "code", None)
                if not isinstance(code, str):
                    raise
                self.context.log.warning("redeeming chain %s: %s (retrying)",
                                         chain.hex()[:16], exc)
                final = code in ("purse.already_redeemed", "purse.expired")
                await self.context.database.transaction(lambda c: c.execute(
                    "UPDATE delivery_chains SET state = ?, redeem_at = ?, updated_ms = ?"
                    " WHERE chain = ?", (code if final else "open",
                                         None if final else now + REDEEM_RETRY_MS, now,
                                         chain)))
                return None
            await self.context.database.transaction(lambda c: c.execute(
                "UPDATE delivery_chains SET state = 'redeemed', redeem_at = NULL,"
                " redeemed = ?, updated_ms = ? WHERE chain = ?",
                (statement.to_bytes(), now, chain)))
        return statement


def _idle(stream: _Stream) -> trio.Event:
    """The event the stream's waiting chunk request waits on."""
    if stream.idle is None:
        stream.idle = trio.Event()
    return stream.idle


def _wake(stream: _Stream) -> None:
    """Waiting requests of ``stream`` look again."""
    if stream.idle is not None:
        stream.idle.set()
        stream.idle = None


def _statement(data: bytes) -> Statement:
    try:
        return Statement.from_bytes(data)
    except StatementError as exc:
        raise BadRequest(f"not a statement: {exc.message}",
                         detail={"type": "delivery.ticket", "field": "", "cause": exc.code}
                         ) from None


def _info(item: CatalogueItem) -> StreamInfo:
    spec = item.stream
    assert spec is not None
    return StreamInfo(chunks=spec.chunks, chunk_size=spec.chunk_size, length=spec.length,
                      root=spec.root, price_per_chunk=spec.price_per_chunk)
