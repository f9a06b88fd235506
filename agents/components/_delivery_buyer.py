"""The buyer's streamed delivery (issue 10): fetch a ticket's stream into a file.

Theory of operation. ``StreamClient.fetch`` opens a second channel to the seller of
its own (``Agent.connect``: never the pooled request channel, which other requests
share), presents the ticket (``delivery.open``) from the first chunk not yet
verified, and keeps two chunk requests in flight (so the next chunk travels while
this one is checked, written and committed). Each chunk is verified against the
offer's root with its inclusion proof before a byte of it is written, at its offset,
into ``FILE.part``; then the count of verified chunks is committed in the buyer's
database (``delivery_downloads``, keyed by the purchase's idempotency key). For a
purse ticket the request for chunk j carries payword j (paying chunks 0..j-1; the
seller sends chunk j on credit), drawn from the ``Purse`` (which records it spent
before it leaves) with the count of chunk j-2 verified, in one commit; the last
chunk is paid with ``delivery.close``. So the buyer never paid for more than one
chunk it has not received (protocol.md 13.3). When every chunk is in and the SHA-256 of
the file is the offer's ``content_digest``, ``FILE.part`` is renamed to ``FILE``.

Run again with the same key after a break (the seller killed, the buyer killed, a
channel lost), it resumes at the first unverified chunk (``resumed_from``).
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Final

import trio

from semper.agents.components._purse import DURABLE_EVERY
from semper.agents.runtime._component import Component
from semper.agents.runtime._faults import crash_point
from semper.services import Amount
from semper.services.delivery import BadChunk, StreamInfo, verify_chunk
from semper.services.statements import Statement

__all__ = ["DeliveryDownloads", "StreamClient", "StreamInterrupted", "StreamOutcome",
           "StreamProgress"]

MIGRATIONS: Final = {
    "delivery_downloads": [
        "CREATE TABLE delivery_downloads ("
        " key TEXT PRIMARY KEY, seller TEXT NOT NULL, ticket BLOB NOT NULL,"
        " output TEXT NOT NULL, chunks INTEGER NOT NULL, chunk_size INTEGER NOT NULL,"
        " length INTEGER NOT NULL, root BLOB NOT NULL, content_digest BLOB NOT NULL,"
        " verified INTEGER NOT NULL, state TEXT NOT NULL, chain BLOB,"
        " paid_currency TEXT NOT NULL, paid_units INTEGER NOT NULL,"
        " updated_ms INTEGER NOT NULL) STRICT",
    ],
}

#: Bytes hashed at a time when the whole file is checked.
_READ: Final = 1 << 20
#: What a chunk's answer holds beyond the chunk (envelope, proof, a live stream's
#: signed head and consistency proof): the delivery channel accepts frames of
#: chunk_size plus this, so a 1 MiB chunk is not refused as too large.
CHUNK_FRAME_MARGIN: Final = 64 * 1024


class DeliveryDownloads(Component):
    """The buyer's streamed downloads (the client, ``StreamClient``, runs in
    ``semper buy``)."""

    name = "downloads"

    def migrations(self) -> Mapping[str, Sequence[str]]:
        return MIGRATIONS


class StreamInterrupted(Exception):
    """A stream that broke before its last chunk; the same command resumes it."""

    code: ClassVar[str] = "delivery.interrupted"

    def __init__(self, key: str, index: int, cause: BaseException) -> None:
        why = getattr(cause, "code", None) or type(cause).__name__
        super().__init__(f"purchase {key} stopped at chunk {index} ({why}: "
                         f"{getattr(cause, 'message', cause)}); run the same semper buy "
                         f"with --idempotency-key {key} to resume")
        self.message = str(self)
        self.key, self.index, self.cause = key, index, cause


class DigestMismatch(Exception):
    """Every chunk verified, yet the file's SHA-256 is not the offer's."""

    code: ClassVar[str] = "delivery.bad_content"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True, slots=True)
class StreamProgress:
    chunks: int
    of: int
    bytes: int
    length: int
    paid: Amount


@dataclass(frozen=True, slots=True)
class StreamOutcome:
    """What ``semper buy --output --json`` prints for a streamed item."""

    key: str
    chunks: int
    bytes: int
    root: bytes
    paid: Amount
    resumed_from: int
    output: Path

    def to_json(self) -> dict[str, Any]:
        return {"state": "done", "chunks": self.chunks, "bytes": self.bytes,
                "root": self.root.hex(), "paid": self.paid.to_wire(),
                "resumed_from": self.resumed_from}


#: ``pay(index)`` -> payword index+1 of the purse chain (recorded spent first).
Pay = Callable[[int], Awaitable[bytes]]


class StreamClient:
    """Fetches streams for ``agent`` (a buyer whose database is open)."""

    def __init__(self, agent: Any, progress: Callable[[StreamProgress], None] | None = None
                 ) -> None:
        self.agent = agent
        self._progress = progress or (lambda p: None)

    async def row(self, key: str) -> dict[str, Any] | None:
        def read(c: sqlite3.Connection) -> dict[str, Any] | None:
            cursor = c.execute("SELECT * FROM delivery_downloads WHERE key = ?", (key,))
            found = cursor.fetchone()
            return None if found is None else dict(
                zip([d[0] for d in cursor.description], found, strict=True))

        return await self.agent.database.read(read)

    async def fetch(self, key: str, seller: str, ticket: Statement, info: StreamInfo, *,
                    content_digest: bytes, output: Path, paid: Amount,
                    pay: Pay | None = None, chain: bytes | None = None) -> StreamOutcome:
        """Fetch the stream of ``ticket`` into ``output``; resumes under ``key``.

        ``paid`` is what the whole content costs (paid already, for a ticket paid
        whole); with ``pay`` each chunk is paid as it is asked for (purse), and
        ``paid`` is the price per chunk.

        Raises:
            StreamInterrupted: the stream broke; running it again resumes it.
            and the seller's refusal (``delivery.*``, ``purse.*``) with its code.
        """
        row = await self._start(key, seller, ticket, info, content_digest, output, paid,
                                chain)
        output = Path(row["output"])
        unit = paid if pay is not None else None
        start = row["verified"]
        if row["state"] == "done":
            return self._outcome(key, info, row, start)
        part = output.with_name(output.name + ".part")
        fd = os.open(part, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if start < info.chunks or pay is not None:  # (the last payword, if due)
                await self._stream(key, seller, ticket, info, fd, start, unit, pay)
            await self._finish(key, fd, part, output, content_digest)
        finally:
            os.close(fd)
        row = await self.row(key)
        assert row is not None
        return self._outcome(key, info, row, start)

    def _outcome(self, key: str, info: StreamInfo, row: dict[str, Any], start: int
                 ) -> StreamOutcome:
        return StreamOutcome(key=key, chunks=info.chunks, bytes=info.length, root=info.root,
                             paid=Amount(row["paid_currency"], row["paid_units"]),
                             resumed_from=start, output=Path(row["output"]))

    async def _start(self, key: str, seller: str, ticket: Statement, info: StreamInfo,
                     content_digest: bytes, output: Path, paid: Amount,
                     chain: bytes | None) -> dict[str, Any]:
        now = self.agent.clock.now_ms()
        whole = paid if chain is None else Amount(paid.currency, 0)

        def start(c: sqlite3.Connection) -> None:
            c.execute("INSERT OR IGNORE INTO delivery_downloads (key, seller, ticket, output,"
                      " chunks, chunk_size, length, root, content_digest, verified, state,"
                      " chain, paid_currency, paid_units, updated_ms)"
                      " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 0, 'streaming', ?, ?, ?, ?)",
                      (key, seller, ticket.to_bytes(), str(output.resolve()), info.chunks,
                       info.chunk_size, info.length, info.root, content_digest, chain,
                       whole.currency, whole.minor_units, now))

        await self.agent.database.transaction(start)
        row = await self.row(key)
        assert row is not None
        return row

    async def _stream(self, key: str, seller: str, ticket: Statement, info: StreamInfo,
                      fd: int, start: int, unit: Amount | None, pay: Pay | None) -> None:
        """Chunks ``start``.. over a channel of the stream's own; a break (the channel
        lost, the seller gone, a timeout) is ``StreamInterrupted``."""
        held = await self.row(key)
        assert held is not None
        progress = [start, held["paid_units"]]  # the next chunk, what is paid
        async with AsyncExitStack() as stack:
            try:
                channel = await stack.enter_async_context(self.agent.connect(
                    seller, max_frame=info.chunk_size + CHUNK_FRAME_MARGIN))
            except Exception as exc:
                raise StreamInterrupted(key, start, exc) from exc
            try:
                await self._chunks(key, channel, ticket, info, fd, unit, pay, progress,
                                   held["paid_currency"])
            except Exception as exc:
                code = getattr(exc, "code", "")
                if code == "delivery.bad_chunk" and isinstance(exc, BadChunk):
                    # Nothing of it written, nothing paid beyond it: say how to resume.
                    raise BadChunk(f"{exc.message} (the seller sent it); nothing of it was "
                                   f"written. Run the same semper buy with --idempotency-key "
                                   f"{key} to resume at chunk {progress[0]}",
                                   detail=exc.detail) from exc
                if isinstance(exc, DigestMismatch) or (
                        code.startswith(("delivery.", "purse.")) and code != "delivery.busy"):
                    raise  # a refusal or a bad chunk: running it again would not help
                raise StreamInterrupted(key, progress[0], exc) from exc

    async def _chunks(self, key: str, channel: Any, ticket: Statement, info: StreamInfo,
                      fd: int, unit: Amount | None, pay: Pay | None, progress: list[int],
                      currency: str) -> None:
        opened = await channel.request("delivery", "open",
                                       {"ticket": ticket.to_bytes(), "from": progress[0]})
        _check_opened(opened, info, progress[0])
        failure: list[Exception] = []
        async with trio.open_nursery() as nursery:
            try:
                await self._pipeline(key, channel, opened["stream"], info, fd, unit, pay,
                                     progress, currency, nursery)
            except Exception as exc:  # raised bare below, not in the nursery's group
                failure.append(exc)
                nursery.cancel_scope.cancel()
        if failure:
            raise failure[0]

    async def _pipeline(self, key: str, channel: Any, stream: int, info: StreamInfo,
                        fd: int, unit: Amount | None, pay: Pay | None,
                        progress: list[int], currency: str, nursery: trio.Nursery) -> None:
        """Two chunk requests in flight (the credit window): the request for chunk j
        carries payword j, paying chunks 0..j-1, and the seller sends chunk j on
        credit. Once chunk i has verified, its count and payword i+2 (paying chunk
        i+1, in flight) are committed together, then chunk i+2 is asked for: the
        buyer never paid for more than one chunk it has not received, and the next
        chunk's transfer overlaps this one's verify, write and commit. The last
        chunk is paid by ``delivery.close``."""
        asked: dict[int, _Asked] = {}

        def ask(index: int, payword: bytes | None) -> None:
            request: dict[str, Any] = {"stream": stream, "index": index}
            if payword is not None:
                request["payword"] = payword
            asked[index] = slot = _Asked()
            nursery.start_soon(slot.run, channel, request)

        start = progress[0]
        if start < info.chunks:
            ask(start, await pay(start - 1) if pay is not None and start > 0 else None)
        if start + 1 < info.chunks:
            payword = None
            if pay is not None:
                payword = await pay(start)
                crash_point("stream.buyer.chunk", start)  # chunk start paid, in flight
            ask(start + 1, payword)
        for index in range(start, info.chunks):
            data, proof = _chunk_answer(await asked.pop(index).answer(), index)
            verify_chunk(info, index, data, proof)  # before a byte is written
            os.pwrite(fd, data, index * info.chunk_size)  # page cache: cheaper than a hop
            if unit is not None:
                progress[1] = unit.minor_units * (index + 1)
            following = index + 2
            if pay is not None and (following < info.chunks or index + 1 == info.chunks):
                paying = following - 1 if following < info.chunks else index
                drawn = await self._verified_and_pay(
                    key, index + 1, progress[1], lambda _count, p=paying: pay(p))
                if isinstance(drawn, Exception):
                    raise drawn
                if following < info.chunks:
                    crash_point("stream.buyer.chunk", following - 1)  # paid, in flight
                    ask(following, drawn)
                else:  # the last chunk's payment, which no chunk request carries
                    crash_point("stream.buyer.chunk", index)
                    progress[0] = index + 1
                    await channel.request("delivery", "close",
                                          {"stream": stream, "payword": drawn})
            else:
                await self._verified(key, index + 1, progress[1])
                if following < info.chunks:
                    ask(following, None)
            progress[0] = index + 1
            self._progress(StreamProgress(
                chunks=index + 1, of=info.chunks,
                bytes=min(info.length, (index + 1) * info.chunk_size), length=info.length,
                paid=Amount(currency, progress[1])))
        if pay is None:
            await channel.request("delivery", "close", {"stream": stream})
        elif start == info.chunks:  # resumed after the last chunk: its payment still due
            await channel.request("delivery", "close",
                                  {"stream": stream, "payword": await pay(start - 1)})

    async def _verified_and_pay(self, key: str, count: int, paid_units: int, pay: Pay
                                ) -> bytes | Exception:
        """Commit ``count`` chunks verified and draw the payword of chunk ``count`` in
        one commit group (one fsync instead of two in series: each chunk waited for
        both; bench/stream.py). The count is queued first (``transaction`` queues
        before it first yields, and the draw starts only then), so on disk the
        purse's spent never runs more than one ahead of the count. The draw's
        failure is returned, to be raised where the payword is needed."""
        drawn: list[bytes | Exception] = []

        async def draw() -> None:
            try:
                drawn.append(await pay(count))
            except Exception as exc:
                drawn.append(exc)

        failed: Exception | None = None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(draw)
            try:
                await self._verified(key, count, paid_units)
            except Exception as exc:
                failed = exc
        if failed is not None:
            raise failed
        return drawn[0]

    async def _verified(self, key: str, count: int, paid_units: int) -> None:
        """Fsync'd every ``DURABLE_EVERY`` chunks; in between committed without (a
        kill loses none; a power loss, the count since the last fsync: the chunks
        are verified again from the file, or fetched and paid again by the same
        paywords, which the seller answers as paid)."""
        now = self.agent.clock.now_ms()
        await self.agent.database.transaction(lambda c: c.execute(
            "UPDATE delivery_downloads SET verified = ?, paid_units = ?, updated_ms = ?"
            " WHERE key = ? AND verified = ?", (count, paid_units, now, key, count - 1)),
            durable=count % DURABLE_EVERY == 0)

    async def _finish(self, key: str, fd: int, part: Path, output: Path,
                      content_digest: bytes) -> None:
        """The whole file checked against the offer's digest, then renamed into place."""

        def digest() -> bytes:
            h = hashlib.sha256()
            offset = 0
            while chunk := os.pread(fd, _READ, offset):
                h.update(chunk)
                offset += len(chunk)
            os.fsync(fd)
            return h.digest()

        got = await trio.to_thread.run_sync(digest)
        if got != content_digest:
            raise DigestMismatch(f"{part}: every chunk verified, but its SHA-256 is not the "
                                 "offer's content digest")
        os.replace(part, output)
        now = self.agent.clock.now_ms()
        await self.agent.database.transaction(lambda c: c.execute(
            "UPDATE delivery_downloads SET state = 'done', updated_ms = ? WHERE key = ?",
            (now, key)))


def _check_opened(opened: Any, info: StreamInfo, start: int) -> None:
    """The open's answer is the offer's stream from the chunk asked (protocol.md 13.3),
    before anything is paid: a seller streaming something else stops here."""
    from semper.services.delivery import BadRequest

    wanted = {"from": start, "chunks": info.chunks, "chunk_size": info.chunk_size,
              "length": info.length, "root": info.root}
    if not isinstance(opened, dict) or type(opened.get("stream")) is not int:
        raise BadRequest("the open's answer names no stream",
                         detail={"type": "delivery.open", "field": "stream"})
    for field, value in wanted.items():
        if opened.get(field) != value:
            raise BadRequest(f"the open's answer has another {field} than the offer's stream",
                             detail={"type": "delivery.open", "field": field})


class _Asked:
    """One chunk request in flight: its answer, or its failure, once it is in."""

    def __init__(self) -> None:
        self._done = trio.Event()
        self._result: Any = None
        self._failure: Exception | None = None

    async def run(self, channel: Any, request: dict[str, Any]) -> None:
        try:
            self._result = await channel.request("delivery", "chunk", request)
        except Exception as exc:  # raised where the chunk is awaited, in order
            self._failure = exc
        self._done.set()

    async def answer(self) -> Any:
        await self._done.wait()
        if self._failure is not None:
            raise self._failure
        return self._result


def _chunk_answer(answer: Any, index: int) -> tuple[bytes, list[bytes]]:
    if not isinstance(answer, dict) or answer.get("index") != index \
            or type(answer.get("data")) is not bytes or not isinstance(answer.get("proof"), list):
        raise BadChunk(f"the answer for chunk {index} is not a chunk", detail={"index": index})
    return answer["data"], answer["proof"]
