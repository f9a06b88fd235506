"""The buyer's side of a live stream (issue 10 item 3): subscribe, pay per chunk, keep
every signed head as evidence.

Theory of operation. ``LiveClient.subscribe`` asks a live seller for its terms
(``delivery.live_terms``: the price of a chunk), opens a purse chain of one payword
a chunk for it (``Purse.open_chain``, idempotent per key: a rerun gets the same
chain) and hands the commitment and the bank's reservation over in
``delivery.subscribe`` (protocol.md 13.6); the answer is a ``delivery.ticket`` for
that chain whose stream map's root is the empty tree's (a live stream, 13.5).
``receive`` opens a delivery channel of its own, and for each chunk pays payword
index+1 (only once chunk index-1 verified: at most one chunk paid and not
received), asks ``delivery.chunk`` and hands the answer to a ``LiveReceiver``: a
head that came with it is verified (the seller's signature, consistency with the
head held) and archived before the chunk, checked against it, is written. Every
head accepted is in the archive under the purchase's key, so what was received is
provable later with the chunks and the market root; a head that contradicts one
held raises ``delivery.fork`` after both are archived.

A rerun with the same key asks again from chunk 0 with the same ticket: the chunks
paid before are sent again without a payword (the purse hands out a payword already
spent, the seller needs none below its highest), so nothing is paid twice; the
output is written anew and its heads must agree with those archived before.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Final

from semper.agents.components._delivery_buyer import CHUNK_FRAME_MARGIN
from semper.services import Amount
from semper.services._ops import Op
from semper.services.delivery import (
    HEAD_TYPE,
    LIVE_TERMS,
    SUBSCRIBE,
    TICKET_TYPE,
    BadChunk,
    BadHead,
    BadRequest,
    BadTicket,
    ChunkAnswer,
    Forked,
    HeadFork,
    LiveReceiver,
    LiveTermsRequest,
    NotYet,
    OpenAnswer,
    StreamHead,
    StreamInfo,
    SubscribeRequest,
    Ticket,
    chunk_leaf,
    is_live,
)
from semper.services.merkle import MerkleTree
from semper.services.statements import Statement, StatementError, verify_statement

__all__ = ["LiveClient", "LiveOutcome", "LiveProgress"]

#: How many times a chunk the seller has not produced yet (``delivery.not_yet``,
#: after the seller's own bounded wait) is asked again before the run stops.
NOT_YET_TRIES: Final = 3


@dataclass(frozen=True, slots=True)
class LiveProgress:
    chunks: int
    of: int
    bytes: int
    heads: int
    paid: Amount


@dataclass(frozen=True, slots=True)
class LiveOutcome:
    """What ``semper live --json`` prints."""

    key: str
    chunks: int
    bytes: int
    root: bytes
    heads: int
    paid: Amount
    output: Path

    def to_json(self) -> dict[str, Any]:
        return {"state": "done", "chunks": self.chunks, "bytes": self.bytes,
                "root": self.root.hex(), "heads": self.heads, "paid": self.paid.to_wire()}


class BadTerms(Exception):
    """A subscription the live seller's terms do not allow (local)."""

    code: ClassVar[str] = "delivery.bad_request"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class LiveInterrupted(Exception):
    """The stream broke (a lost channel, a timeout) before its last chunk; the same
    command with the same key asks again, paying nothing twice."""

    code: ClassVar[str] = "delivery.interrupted"

    def __init__(self, key: str, index: int, cause: BaseException) -> None:
        why = getattr(cause, "code", None) or type(cause).__name__
        super().__init__(f"live stream {key} stopped at chunk {index} ({why}: "
                         f"{getattr(cause, 'message', cause)}); run the same command with "
                         f"--idempotency-key {key} to receive it again, paying nothing twice")
        self.message = str(self)


class LiveClient:
    """Subscribes ``agent`` (a buyer whose database is open) to live feeds."""

    def __init__(self, agent: Any, progress: Callable[[LiveProgress], None] | None = None
                 ) -> None:
        self.agent = agent
        self._progress = progress or (lambda p: None)

    async def subscribe(self, seller: str, chunks: int, key: str) -> tuple[Statement, Any]:
        """The ticket for ``chunks`` chunks of ``seller``'s feed, paid by a purse chain
        opened under ``key``, and the seller's certificate.

        Raises:
            BadTicket, BadTerms: an answer that does not check out; the purse's and
            the seller's refusals with their codes.
        """
        from semper.agents.components._purse import Purse

        terms = await self._call(seller, LIVE_TERMS, LiveTermsRequest())
        unit = terms.price_per_chunk
        if not 1 <= chunks <= terms.max_chunks:
            raise BadTerms(f"{seller} sells 1 to {terms.max_chunks} chunks a ticket, not "
                           f"{chunks}")
        purse = self.agent.component(Purse)
        commitment, reservation = await purse.open_chain(seller, chunks, unit, None, key)
        answer = await self._call(seller, SUBSCRIBE, SubscribeRequest(
            commitment=commitment.to_bytes(), reservation=reservation.to_bytes()))
        certificate = (await self.agent.channel(seller)).peer.certificate
        statement = answer.ticket
        try:
            verify_statement(statement, certificate=certificate,
                             root=self.agent.credentials.root, crl=self.agent.crl,
                             now=_now(self.agent), expected_type=TICKET_TYPE,
                             expected_signer=seller)
        except StatementError as exc:
            raise BadTicket(f"the seller's ticket does not verify: {exc.message}",
                            detail={"cause": exc.code}) from None
        body = Ticket.from_statement(statement)
        stream = body.stream
        for name, ok in (("buyer", body.buyer == self.agent.id), ("seller", body.seller == seller),
                         ("chain", body.chain == commitment.body["chain"]),
                         ("stream", is_live(stream) and stream.chunks == chunks
                          and stream.price_per_chunk == unit)):
            if not ok:
                raise BadTicket(f"the seller's ticket names another {name}",
                                detail={"field": name})
        if not await self.agent.archive.contains(statement.digest):  # once, not per run
            await self.agent.archive.record(statement, direction="received", peer=seller,
                                            transaction=key, certificate=certificate)
        return statement, certificate

    async def _call(self, seller: str, op: Op, request: Any) -> Any:
        """``op`` to ``seller`` over the agent's channel, its answer decoded (a bad
        one is ``delivery.bad_request``)."""
        answer = await self.agent.request(seller, op.service, op.name,
                                          op.encode_request(request))
        return op.decode_response(answer)

    async def fetch(self, seller: str, chunks: int, key: str, output: Path) -> LiveOutcome:
        """Subscribe (or find the subscription of ``key``) and receive every chunk."""
        ticket, certificate = await self.subscribe(seller, chunks, key)
        return await self.receive(seller, ticket, certificate, key=key, output=output)

    async def receive(self, seller: str, ticket: Statement, certificate: Any, *, key: str,
                      output: Path) -> LiveOutcome:
        """Receive the ticket's chunks into ``output``, each verified against a signed
        head before a byte is written, paying one payword a chunk.

        Raises:
            Forked (``delivery.fork``): the seller signed two heads that contradict
                each other; both are archived under ``key``.
            BadHead, BadChunk, NotYet, the seller's and the purse's refusals.
        """
        body = Ticket.from_statement(ticket)
        receiver = LiveReceiver(stream_id=body.ticket, seller_id=seller,
                                certificate=certificate, root=self.agent.credentials.root,
                                crl=self.agent.crl)
        progress = [0]
        try:
            return await self._receive(seller, ticket, certificate, body, receiver, key,
                                       output, progress)
        except Exception as exc:
            code = getattr(exc, "code", None)
            if isinstance(code, str) and code.startswith(("delivery.", "purse.", "feed.")):
                raise  # a refusal or a forged stream: asking again would not help
            raise LiveInterrupted(key, progress[0], exc) from exc

    async def _receive(self, seller: str, ticket: Statement, certificate: Any, body: Ticket,
                       receiver: LiveReceiver, key: str, output: Path, progress: list[int]
                       ) -> LiveOutcome:
        from semper.agents.components._purse import Purse

        if body.chain is None:
            raise BadTicket("a live ticket names the purse chain that pays it",
                            detail={"field": "chain"})
        purse, unit = self.agent.component(Purse), body.stream.price_per_chunk
        part = output.with_name(output.name + ".part")
        written, chunks = 0, body.stream.chunks
        before = await self._archived_heads(key, body.ticket)  # an earlier run's
        leaves: list[bytes] = []
        async with self.agent.connect(
                seller, max_frame=body.stream.chunk_size + CHUNK_FRAME_MARGIN) as channel:
            opened = OpenAnswer.from_wire(await channel.request(
                "delivery", "open", {"ticket": ticket.to_bytes(), "from": 0}))
            if (opened.start, opened.chunks, opened.root) != (0, chunks, body.stream.root):
                raise BadRequest("the open's answer is not the ticket's stream",
                                 detail={"type": "delivery.open", "field": "chunks"})
            with part.open("wb") as out:
                for index in range(chunks):
                    payword = await purse.pay(body.chain, index)
                    answer = await self._chunk(channel, opened.stream, index, payword)
                    await self._take(receiver, answer, body.stream, seller, certificate, key,
                                     before)
                    leaves.append(chunk_leaf(answer.data))
                    _agrees(before.get(len(leaves)), leaves, receiver)
                    out.write(answer.data)  # verified against a signed head
                    written += len(answer.data)
                    progress[0] = index + 1
                    self._progress(LiveProgress(
                        chunks=index + 1, of=chunks, bytes=written,
                        heads=len(receiver.heads),
                        paid=Amount(unit.currency, unit.minor_units * (index + 1))))
                out.flush()
                os.fsync(out.fileno())
            await channel.request("delivery", "close", {"stream": opened.stream})
        os.replace(part, output)
        latest = receiver.latest
        assert latest is not None
        return LiveOutcome(key=key, chunks=chunks, bytes=written, root=latest.root,
                           heads=len(receiver.heads), output=output,
                           paid=Amount(unit.currency, unit.minor_units * chunks))

    async def _chunk(self, channel: Any, stream: int, index: int, payword: bytes
                     ) -> ChunkAnswer:
        for tries in range(NOT_YET_TRIES):  # the seller waits for the chunk itself
            try:
                return ChunkAnswer.from_wire(await channel.request(
                    "delivery", "chunk", {"stream": stream, "index": index,
                                          "payword": payword}))
            except Exception as exc:
                if getattr(exc, "code", None) != NotYet.code or tries == NOT_YET_TRIES - 1:
                    raise
        raise AssertionError("unreachable")

    async def _archived_heads(self, key: str, stream: bytes) -> dict[int, Statement]:
        """The heads of ``stream`` an earlier run under ``key`` archived, by size."""
        heads: dict[int, Statement] = {}
        for record in await self.agent.archive.records(key):
            statement = Statement.from_bytes(record.statement)
            if statement.type == HEAD_TYPE:
                body = StreamHead.from_statement(statement)
                if body.stream == stream:
                    heads[body.size] = statement
        return heads

    async def _take(self, receiver: LiveReceiver, answer: ChunkAnswer, stream: StreamInfo,
                    seller: str, certificate: Any, key: str, before: dict[int, Statement]
                    ) -> None:
        """Verify the head the chunk came with (archived once accepted), then the
        chunk against it."""
        now = self.agent.clock.now_ms()
        if len(answer.data) > stream.chunk_size:  # the ticket's bound on a chunk
            raise BadChunk(f"chunk {answer.index} has {len(answer.data)} bytes, the ticket "
                           f"allows {stream.chunk_size}", detail={"index": answer.index})
        if answer.head is not None:
            size = StreamHead.from_statement(answer.head).size
            if size > stream.chunks:  # never accepted, never archived
                raise BadHead(f"a head of {size} chunks on a ticket for {stream.chunks}",
                              detail={"field": "size"})
            held = len(receiver.heads)
            try:
                receiver.receive_head(answer.head, answer.consistency or [], now_ms=now)
            except Forked as exc:  # the first head is archived already: add the second
                await self.agent.archive.record(exc.evidence.second, direction="received",
                                                peer=seller, transaction=key,
                                                certificate=certificate)
                raise
            known = before.get(receiver.heads[-1].body["size"]) if receiver.heads else None
            if len(receiver.heads) > held and (known is None
                                               or known.digest != receiver.heads[-1].digest):
                await self.agent.archive.record(receiver.heads[-1], direction="received",
                                                peer=seller, transaction=key,
                                                certificate=certificate)
            # An earlier run's head of this size is held too (13.5 step 2): a fork
            # given in full now, not only once the chunks reach its size (the stream
            # may break before, and the evidence would go unreported).
            earlier = before.get(size)
            if earlier is not None and receiver.latest is not None \
                    and receiver.latest.size == size \
                    and StreamHead.from_statement(earlier).root != receiver.latest.root:
                raise _forked("same_size", earlier, receiver.heads[-1],
                              f"a head of {size} chunks another root than the one an "
                              "earlier run received")
        receiver.receive_chunk(answer.index, answer.data, answer.proof, now_ms=now)


def _agrees(held: Statement | None, leaves: list[bytes], receiver: LiveReceiver) -> None:
    """An earlier run's head of ``len(leaves)`` chunks must be these chunks' root:
    else the seller rewrote the stream between the runs (``delivery.fork``, with
    that head and the latest one these chunks verified under)."""
    if held is None or StreamHead.from_statement(held).root == \
            MerkleTree.from_leaf_hashes(leaves).root:
        return
    latest = receiver.heads[-1]
    kind = "same_size" if latest.body["size"] == len(leaves) else "inconsistent"
    raise _forked(kind, held, latest, f"the stream's first {len(leaves)} chunks are not "
                  f"those an earlier run received under a signed head ({kind})")


def _forked(kind: str, first: Statement, second: Statement, message: str) -> Forked:
    """``delivery.fork`` with both signed heads as its evidence (both archived)."""
    return Forked(message, evidence=HeadFork(kind=kind, first=first, second=second),
                  detail={"kind": kind, "heads": [first.to_bytes().hex(),
                                                  second.to_bytes().hex()]})


def _now(agent: Any) -> Any:
    import datetime as dt

    return dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(
        milliseconds=agent.clock.now_ms())
