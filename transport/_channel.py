"""A semper channel: an authenticated TLS 1.3 stream carrying envelope messages.

Theory of operation. After ``establish`` has run the TLS handshake, checked the
peer's certificate and exchanged ``hello``, the channel runs two tasks:

* the **writer** owns ``send_all``. Everyone else appends whole frames to a queue
  (a plain list, no await); the writer wakes, joins every queued frame into one
  buffer and sends it: one TLS record and one syscall for many frames. Only the
  writer ever awaits ``send_all``, so cancelling a caller never tears a frame.
* the **reader** owns ``receive_some``. It feeds what arrives to a ``FrameDecoder``
  and handles every whole frame in it before receiving again. Responses wake the
  waiting ``request``; requests start a handler task in the channel's nursery.

Closing is one path (``_begin_close``): note why, queue a last frame (``bye`` or a
fatal ``err``), fail the pending requests, let the writer flush within a deadline,
then cancel the reader and handlers and close the TLS stream.

Bounds against a peer that misbehaves (docs/protocol.md 5.4, 5.8):

* the outgoing queue is bounded: while more than ``write_high_water`` bytes wait to
  be sent, the reader stops reading (so a peer that sends requests and never reads
  our answers stops being served) and ``request``/``notify`` wait;
* so are the requests we hold: while the peer's requests being handled or waiting
  (their frames) add up to more than ``write_high_water`` bytes, the reader stops
  too (1,024 requests of 1 MB in flight, each waiting on a lock, held 1 GiB);
* every write must make progress within ``write_timeout``, and closing never waits
  on a stuck write for longer than ``close_timeout``;
* the peer is authenticated again before the next frame is handled whenever the
  verifier's answers may have changed (a new CRL: the verifier's ``epoch`` grew);
  a peer that no longer verifies is refused with its code and the channel closes,
  cancelling the handlers it started;
* any failure inside the channel's own tasks closes this channel, is logged (within
  a per-channel log budget) and never propagates to the caller's nursery.
"""

from __future__ import annotations

import functools
import logging
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Protocol

import trio

from ._codec import NEED_DATA, CodecLimits, FrameDecoder, FrameSizeError, encode_frame
from ._errors import (
    AnswerTooLarge,
    BadMessage,
    ChannelClosed,
    IdleTimeout,
    InternalError,
    PeerNotValid,
    PeerUnavailable,
    ProtocolError,
    RemoteError,
    RequestTimeout,
    ReusedId,
    TooManyRequests,
    TransportError,
    UnexpectedMessage,
    WriteTimeout,
    is_wire_error,
)
from ._messages import (
    Bye,
    ErrorMessage,
    Hello,
    Note,
    Request,
    Response,
    parse_message,
    shown,
)
from ._registry import RequestContext, ServiceRegistry

__all__ = ["Channel", "ChannelConfig", "PeerIdentity", "PeerVerifier"]

log = logging.getLogger("semper.transport")

RECEIVE_SIZE: Final = 1 << 18
MAX_QUEUED_NOTES: Final = 64
#: Requests received but not yet started before the reader stops reading.
MAX_WAITING_REQUESTS: Final = 64
#: The size of an answer assumed until answers tell: none, so that a fresh channel
#: runs all of ``max_in_flight`` at once, as its hello promised.
INITIAL_ANSWER_ESTIMATE: Final = 0
WRITE_BATCH: Final = 262144
_DEFAULT: Final = object()


class PeerIdentity(Protocol):
    """What the transport needs from the peer verifier's answer."""

    @property
    def agent_id(self) -> str: ...

    @property
    def role(self) -> str: ...


#: Called with the peer's DER certificate and the agent id we expected (None on the
#: accepting side); returns the peer's identity or raises an error with a ``code``.
#: A verifier whose answers can change (it reads the current CRL) has an integer
#: ``epoch`` attribute that grows with every change; channels then verify their
#: peer again before handling the next frame (``Channel.recheck``).
PeerVerifier = Callable[[bytes, str | None], PeerIdentity]


def verifier_epoch(verify_peer: PeerVerifier | None) -> int:
    epoch = getattr(verify_peer, "epoch", 0)
    return epoch if type(epoch) is int else 0


class LogBudget:
    """At most ``burst`` log lines, then one per ``interval`` seconds: what a peer
    can make us write is bounded. Counts what it held back."""

    __slots__ = ("_burst", "_interval", "_left", "_next", "dropped")

    def __init__(self, burst: int = 20, interval: float = 10.0) -> None:
        self._burst, self._interval = burst, interval
        self._left = burst
        self._next = -math.inf
        self.dropped = 0

    def allow(self) -> bool:
        if self._left > 0:
            self._left -= 1
            return True
        now = trio.current_time()
        if now >= self._next:
            self._next = now + self._interval
            return True
        self.dropped += 1
        return False


def clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


@dataclass(frozen=True, slots=True, kw_only=True)
class ChannelConfig:
    """Timeouts (seconds) and limits. ``math.inf`` turns a timeout off."""

    handshake_timeout: float = 10.0
    request_timeout: float = 30.0
    idle_timeout: float = 300.0
    close_timeout: float = 2.0
    #: a write that makes no progress for this long closes the channel
    write_timeout: float = 30.0
    max_frame: int = 1 << 20
    max_in_flight: int = 1024
    #: bytes queued for sending above which we stop reading and senders wait
    write_high_water: int = 1 << 20
    #: connections accepted but not yet past hello (``serve``); the oldest is dropped
    #: to make room for a new one
    max_unauthenticated: int = 256

    def __post_init__(self) -> None:
        for name in ("handshake_timeout", "request_timeout", "idle_timeout", "close_timeout",
                     "write_timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive")
        if self.max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        if self.max_unauthenticated < 1:
            raise ValueError("max_unauthenticated must be at least 1")
        if self.write_high_water < 1:
            raise ValueError("write_high_water must be at least 1")
        CodecLimits(max_frame=self.max_frame)  # validates the range


class _Pending:
    __slots__ = ("event", "message")

    def __init__(self) -> None:
        self.event = trio.Event()
        self.message: Response | ErrorMessage | None = None


class Channel:
    """One open channel to one verified peer. Made by ``open_channel`` or ``serve``.

    Safe to use from many tasks at once: ``request`` calls run concurrently and are
    correlated by id; the peer's ``max_in_flight`` is respected by waiting.
    """

    def __init__(
        self,
        stream: trio.abc.Stream,
        *,
        peer: PeerIdentity,
        our_hello: Hello,
        their_hello: Hello,
        registry: ServiceRegistry,
        config: ChannelConfig,
        decoder: FrameDecoder,
        verify_peer: PeerVerifier | None = None,
        peer_certificate: bytes | None = None,
        expected_id: str | None = None,
        epoch: int | None = None,
    ) -> None:
        self._stream = stream
        # Re-authentication (``recheck``): the verifier, what it was given, and the
        # epoch at which it last said yes.
        self._verify = verify_peer
        self._peer_der = peer_certificate
        self._expected_id = expected_id
        self._epoch = verifier_epoch(verify_peer) if epoch is None else epoch
        # Only a verifier with an epoch can change its mind: the hot paths look here.
        self._epochs: Any = verify_peer if hasattr(verify_peer, "epoch") else None
        # TlsStream can send synchronously when the line is free (see _enqueue).
        self._send_nowait = getattr(stream, "send_nowait", None)
        self.peer = peer
        self.our_hello = our_hello
        self.their_hello = their_hello
        self._registry = registry
        self._config = config
        self._decoder = decoder
        # The peer's decoder bounds str and bin by its max_frame (see _connect).
        limit = their_hello.limits.max_frame
        self._out_limits = CodecLimits(max_frame=limit, max_str=limit, max_bin=limit)
        # writer state
        self._outq: list[bytes] = []
        self._outq_bytes = 0
        self._wake = trio.Event()
        self._writable = trio.lowlevel.ParkingLot()
        # requests we sent
        self._next_id = 1
        self._pending: dict[int, _Pending] = {}
        self._slots = trio.lowlevel.ParkingLot()
        # requests the peer sent
        self._last_peer_id = 0
        self._active = 0
        # Requests received and not yet started (``_room_for_an_answer``), and what
        # an answer costs lately: a guess at first, then what answers were.
        self._waiting: deque[tuple[Any, Request, int]] = deque()
        self._held = 0  # bytes of the peer's requests running or waiting
        self._dispatchable = trio.lowlevel.ParkingLot()
        self._answer_estimate = INITIAL_ANSWER_ESTIMATE
        self._last_traffic = trio.current_time()
        self._peer_complaint: RemoteError | None = None
        self._notes: deque[tuple[Any, Note]] = deque()
        self._notes_ready = trio.Event()
        self._notes_drained = trio.Event()
        # lifecycle
        self._nursery: trio.Nursery | None = None  # handlers and the note worker
        self._handlers_scope = trio.CancelScope()
        self._abort = False  # close without flushing (a stuck write, a refused peer)
        self._close_reason: TransportError | None = None
        self._closed = trio.Event()
        self.log_budget = LogBudget()

    # -- public API -------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._close_reason is not None

    @property
    def close_reason(self) -> TransportError | None:
        return self._close_reason

    async def request(
        self, service: str, op: str, body: Any = None, *, timeout: float | object = _DEFAULT
    ) -> Any:
        """Send a request and return the peer's response body.

        Raises:
            RemoteError: the peer answered with `err` (``.code`` is the peer's).
            RequestTimeout: no answer within ``timeout`` (default: the config's).
            ChannelClosed: the channel closed before the answer came.
            ValueError: ``body`` is outside the wire's value model or too large.
        Cancellation forgets the request; a late answer is dropped.
        """
        limit = self._config.request_timeout if timeout is _DEFAULT else timeout
        assert isinstance(limit, (int, float))
        if self._epochs is not None and self._epochs.epoch != self._epoch:
            self.recheck()
        pending: _Pending | None = None
        with trio.move_on_after(limit) as scope:
            while len(self._pending) >= self.their_hello.limits.max_in_flight:
                self._check_open()
                await self._slots.park()
            await self._wait_writable()
            rid = self._next_id
            frame = encode_frame(
                {"type": "req", "id": rid, "service": service, "op": op, "body": body},
                self._out_limits,
            )
            self._next_id = rid + 1
            pending = _Pending()
            self._pending[rid] = pending
            try:
                self._enqueue(frame, direct=True)
                await pending.event.wait()
            finally:
                del self._pending[rid]
                self._slots.unpark()
        message = pending.message if pending is not None else None
        if message is None:
            if scope.cancelled_caught and not self.closed:
                raise RequestTimeout(
                    f"{service}.{op}: no answer from {self.peer.agent_id} in {limit:g}s",
                    detail={"service": service, "op": op},
                )
            raise self._closed_error()
        if isinstance(message, ErrorMessage):
            raise RemoteError(message.code, message.message, detail=message.detail)
        return message.body

    async def notify(self, service: str, op: str, body: Any = None) -> None:
        """Send a one-way ``note``. Returns once it is queued for sending."""
        self.recheck()
        await self._wait_writable()
        self._enqueue(encode_frame(Note(service=service, op=op, body=body).to_wire(),
                                   self._out_limits))

    async def aclose(self, reason: str = "") -> None:
        """Say ``bye``, flush, and close. Idempotent; waits until fully closed."""
        self._begin_close(ChannelClosed(f"closed locally{': ' + reason if reason else ''}"),
                          Bye(reason=reason).to_wire())
        await self._closed.wait()

    def recheck(self) -> bool:
        """Authenticate the peer again if the verifier's answers may have changed
        since it last said yes; refuse and close the channel if it now says no.

        Cheap when nothing changed (one integer compare), so it runs before every
        frame handled and every request sent. Returns whether the channel is usable.
        """
        verify = self._verify
        if verify is None or self._close_reason is not None:
            return self._close_reason is None
        epoch = verifier_epoch(verify)
        if epoch == self._epoch:
            return True
        try:
            assert self._peer_der is not None
            verify(self._peer_der, self._expected_id)
        except Exception as exc:
            if is_wire_error(exc):  # auth.revoked, auth.crl_stale, ...
                self.refuse(PeerNotValid(exc.code,  # type: ignore[attr-defined]
                                         getattr(exc, "message", None) or str(exc)))
            else:  # a local failure of the check: the peer learns only the code
                log.error("the peer verifier failed on %s", self.peer.agent_id, exc_info=exc)
                self.refuse(PeerNotValid(PeerNotValid.code, "the peer check failed"))
            return False
        self._epoch = epoch
        return True

    def refuse(self, reason: TransportError) -> None:
        """Close at once: cancel the handlers this peer started, send one fatal `err`
        naming ``reason`` (best effort, bounded by ``close_timeout``) and close.
        For a peer that lost its authentication (revoked) or broke its bounds."""
        if self._close_reason is not None:
            return
        log.info("refusing %s from now on: %s", self.peer.agent_id, reason)
        self._handlers_scope.cancel()
        self._begin_close(reason, _error_wire(None, reason))

    async def wait_closed(self) -> TransportError:
        """Wait until the channel has closed, and say why."""
        await self._closed.wait()
        assert self._close_reason is not None
        return self._close_reason

    # -- lifecycle --------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run reader and writer until the channel closes. Used by ``establish``.

        Never raises because of what the peer did: a failure in any of the channel's
        own tasks closes this channel and is logged.
        """
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(self._host_handlers)
                nursery.start_soon(self._guarded, self._reader)
                task_status.started()
                await self._guarded(self._writer)
                nursery.cancel_scope.cancel()
        finally:
            if self._close_reason is None:
                self._close_reason = ChannelClosed("channel cancelled")
            self._fail_pending()
            self._closed.set()
            with trio.CancelScope(shield=True):
                if not self._abort:
                    with trio.move_on_after(self._config.close_timeout):
                        try:
                            await self._stream.aclose()
                        except (trio.BrokenResourceError, trio.ClosedResourceError):
                            pass
                await trio.aclose_forcefully(self._stream)

    async def _host_handlers(self, *, task_status: trio.TaskStatus[None]) -> None:
        """The nursery of request handlers and the note worker, in a scope of its own
        so that refusing a peer cancels its handlers without waiting for a flush."""
        with self._handlers_scope:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._guarded, self._note_worker)
                task_status.started()
                await trio.sleep_forever()

    async def _guarded(self, task: Callable[[], Any]) -> None:
        try:
            await task()
        except Exception as exc:
            # A bug, or a case we did not foresee: it ends this channel, not the agent.
            log.error("channel to %s failed: %s", self.peer.agent_id, exc, exc_info=exc)
            self._abort = True
            self._handlers_scope.cancel()
            self._begin_close(InternalError(f"the channel failed: {clip(str(exc), 200)}"))

    def _begin_close(self, reason: TransportError, last: dict[str, Any] | None = None) -> None:
        if self._close_reason is not None:
            return
        self._close_reason = reason
        if last is not None:
            try:
                self._enqueue(encode_frame(last, self._out_limits))
            except ValueError:  # pragma: no cover - our own frames always encode
                log.exception("could not encode closing frame")
        self._fail_pending()
        self._wake.set()

    def _fail_pending(self) -> None:
        for pending in self._pending.values():
            pending.event.set()
        self._slots.unpark_all()
        self._writable.unpark_all()
        self._dispatchable.unpark_all()

    def _check_open(self) -> None:
        if self._close_reason is not None:
            raise self._closed_error()

    def _closed_error(self) -> ChannelClosed:
        reason = self._close_reason
        return ChannelClosed(
            f"channel to {self.peer.agent_id} is closed ({reason})",
            detail={"reason": reason.code if reason else "transport.closed"},
        )

    # -- writer -----------------------------------------------------------------

    def _enqueue(self, frame: bytes, *, direct: bool = False) -> None:
        """Queue a frame for the writer, or send it right here.

        Sending here saves a wake-up of the writer per frame, which is most of the
        cost of a lone round trip; queueing lets the writer coalesce many frames
        into one TLS record. So a request or response goes out directly only when
        it is the one operation in progress on this channel and nothing is queued.
        """
        if (direct and not self._outq and self._send_nowait is not None
                and len(self._pending) + self._active <= 1):
            try:
                sent = self._send_nowait(frame)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                self._begin_close(ChannelClosed(f"connection broke while sending: {exc}"))
                return
            if sent:
                self._last_traffic = trio.current_time()
                if self._stream.needs_flush:  # type: ignore[attr-defined]
                    self._wake.set()  # the writer sends the rest
                return
        self._outq.append(frame)
        self._outq_bytes += len(frame)
        self._wake.set()

    async def _wait_writable(self) -> None:
        self._check_open()
        while self._outq_bytes > self._config.write_high_water:
            await self._writable.park()
            self._check_open()

    async def _writer(self) -> None:
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            if self._send_nowait is not None and self._stream.needs_flush:  # type: ignore[attr-defined]
                if not await self._write(self._stream.flush):  # type: ignore[attr-defined]
                    return
            while self._outq:
                data = self._take_batch()
                if not await self._write(functools.partial(self._stream.send_all, data)):
                    return
                if self._outq_bytes <= self._config.write_high_water:
                    self._writable.unpark_all()
                    if self._waiting:
                        self._start_waiting()
            if self._close_reason is not None:
                return

    async def _write(self, send: Callable[[], Any]) -> bool:
        """One write under its deadline: ``write_timeout`` while open, ``close_timeout``
        once closing. False when the channel must stop writing."""
        closing = self._close_reason is not None
        limit = self._config.close_timeout if closing else self._config.write_timeout
        try:
            with trio.move_on_after(limit) as scope:
                await send()
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self._begin_close(ChannelClosed(f"connection broke while sending: {exc}"))
            return False
        if scope.cancelled_caught:
            # The peer does not read. Part of a record may be out: no clean close.
            self._abort = True
            self._handlers_scope.cancel()
            self._begin_close(WriteTimeout(
                f"{self.peer.agent_id} read nothing for {limit:g}s"))
            return False
        self._last_traffic = trio.current_time()  # sending is not idle either
        return True

    def _take_batch(self) -> bytes:
        """Up to WRITE_BATCH bytes of whole frames from the queue, as one buffer.

        The cap keeps each send cache-sized: one 2 MiB buffer costs more to encrypt
        and copy than sixteen of 128 KiB.
        """
        queue = self._outq
        if len(queue) == 1 or len(queue[0]) >= WRITE_BATCH:
            data = queue.pop(0) if len(queue) > 1 else queue.pop()
        else:
            size, count = 0, 0
            for frame in queue:
                if size and size + len(frame) > WRITE_BATCH:
                    break
                size += len(frame)
                count += 1
            data = b"".join(queue[:count])
            del queue[:count]
        self._outq_bytes -= len(data)
        return data

    # -- reader -----------------------------------------------------------------

    async def _reader(self) -> None:
        try:
            self._drain()
            idle = self._config.idle_timeout
            high_water = self._config.write_high_water
            receive = self._stream.receive_some
            while self._close_reason is None:
                # The deadline is moved only when it fires: updating it on every
                # receive would cost a heap operation per record.
                with trio.CancelScope(deadline=self._last_traffic + idle) as scope:
                    while self._close_reason is None:
                        data = await receive(RECEIVE_SIZE)
                        if not data:
                            complaint = self._peer_complaint
                            self._begin_close(complaint or ChannelClosed(
                                "the peer closed the connection"))
                            return
                        self._last_traffic = trio.current_time()
                        self._decoder.feed(data)
                        self._drain()
                        # Backpressure: handle and read nothing more while our answers
                        # to this peer are not drained (the writer's deadline bounds
                        # the wait), or while its notes wait for their handler.
                        while self._close_reason is None:
                            if len(self._notes) > MAX_QUEUED_NOTES:
                                self._notes_drained = trio.Event()
                                await self._notes_drained.wait()
                            elif self._outq_bytes > high_water:
                                await self._writable.park()
                            elif (len(self._waiting) >= MAX_WAITING_REQUESTS
                                  or self._held > high_water):
                                await self._dispatchable.park()
                            else:
                                break
                            self._drain()
                if not scope.cancelled_caught:
                    return
                if trio.current_time() - self._last_traffic >= idle and not (
                    self._pending or self._active or self._waiting
                ):
                    self._begin_close(IdleTimeout(f"no traffic for {idle:g}s"),
                                      Bye(reason="idle").to_wire())
                elif trio.current_time() - self._last_traffic >= idle:
                    self._last_traffic = trio.current_time()  # busy: count idleness afresh
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            # A peer that refused us says why in an `err` and then drops the TCP
            # connection without close_notify: its reason beats "connection broke".
            self._begin_close(self._peer_complaint or ChannelClosed(
                f"connection broke: {exc.__cause__ or exc}"))
        except ProtocolError as exc:  # fatal by construction: see _drain
            if self.log_budget.allow():
                log.warning("closing channel to %s: %s", self.peer.agent_id, exc)
            self._begin_close(exc, _error_wire(None, exc))

    def _drain(self) -> None:
        """Handle every whole frame buffered, or stop early while our outgoing queue
        is past its high-water mark. Raises only fatal ProtocolErrors."""
        decoder = self._decoder
        high_water = self._config.write_high_water
        waiting = self._waiting
        while (self._close_reason is None and self._outq_bytes <= high_water
               and len(waiting) < MAX_WAITING_REQUESTS and self._held <= high_water):
            obj = decoder.next_object()
            if obj is NEED_DATA:
                return
            epochs = self._epochs
            if epochs is not None and epochs.epoch != self._epoch and not self.recheck():
                return
            try:
                message = parse_message(obj)
            except BadMessage as exc:
                self._send_error(exc.detail.get("id"), exc)
                continue
            kind = type(message)
            if kind is Response or kind is ErrorMessage:
                self._on_answer(message)  # type: ignore[arg-type]
            elif kind is Request:
                self._on_request(message, decoder.last_size)  # type: ignore[arg-type]
            elif kind is Note:
                self._on_note(message)  # type: ignore[arg-type]
            elif kind is Bye:
                reason = message.reason or "no reason"  # type: ignore[union-attr]
                self._begin_close(ChannelClosed(f"the peer said bye ({reason})"))
            else:
                raise UnexpectedMessage("hello is allowed only as the first message")

    def _on_answer(self, message: Response | ErrorMessage) -> None:
        if message.id is None:
            # A complaint about our stream as a whole. If it was fatal the peer closes
            # next; keep it so that the close reason can say why.
            assert isinstance(message, ErrorMessage)
            if self.log_budget.allow():
                log.warning("%s reports %s: %s", self.peer.agent_id, shown(message.code),
                            shown(message.message, 200))
            self._peer_complaint = RemoteError(message.code, message.message,
                                               detail=message.detail)
            return
        pending = self._pending.get(message.id)
        if pending is None:
            # A late answer to a request that timed out or was cancelled, or (id not
            # yet used) a broken peer. Never answered: ids are per direction, so an
            # `err` carrying this id would read as an answer to the peer's own request.
            if message.id >= self._next_id and self.log_budget.allow():
                log.warning("%s answered request %d, which was never sent",
                            self.peer.agent_id, message.id)
            return
        pending.message = message
        pending.event.set()

    def _on_request(self, request: Request, size: int) -> None:
        if request.id <= self._last_peer_id:
            self._send_error(request.id, ReusedId(
                f"request id {request.id} is not above {self._last_peer_id}, "
                "the last id used on this channel"))
            return
        self._last_peer_id = request.id
        if self._active + len(self._waiting) >= self._config.max_in_flight:
            self._send_error(request.id, TooManyRequests(
                f"more than {self._config.max_in_flight} requests in flight"))
            return
        try:
            handler = self._registry.lookup(request.service, request.op)
        except ProtocolError as exc:
            self._send_error(request.id, exc)
            return
        self._held += size
        if self._waiting or not self._room_for_an_answer():
            self._waiting.append((handler, request, size))
            return
        self._active += 1
        assert self._nursery is not None
        self._nursery.start_soon(self._serve, handler, request, size)

    def _room_for_an_answer(self) -> bool:
        """Whether one more handler may run: what is queued plus the answers of those
        running, at the size answers have had lately, must fit under the high-water
        mark (one always runs while the queue is under it).
        So a burst of requests for large answers is served a few at a time instead of
        all at once into the outgoing queue."""
        queued, high_water = self._outq_bytes, self._config.write_high_water
        return queued <= high_water and (
            not self._active or queued + (self._active + 1) * self._answer_estimate <= high_water)

    def _start_waiting(self) -> None:
        nursery = self._nursery
        while self._waiting and self._room_for_an_answer() and self._close_reason is None:
            handler, request, size = self._waiting.popleft()
            self._active += 1
            assert nursery is not None
            nursery.start_soon(self._serve, handler, request, size)
        if len(self._waiting) < MAX_WAITING_REQUESTS:
            self._dispatchable.unpark_all()

    async def _serve(self, handler: Any, request: Request, size: int) -> None:
        context = RequestContext(self, request.id, request.service, request.op)
        try:
            body = await handler(context, request.body)
            frame = self._answer_frame(request, body, context)
        except Exception as exc:
            frame = self._error_frame(request.id, exc, context)
        finally:
            self._active -= 1
            self._held -= size
            if self._dispatchable and self._held <= self._config.write_high_water:
                self._dispatchable.unpark_all()  # the reader, if our requests held it
        # What answers cost lately: up at once to a large one, down by an eighth of
        # the difference per smaller one.
        size, estimate = len(frame), self._answer_estimate
        self._answer_estimate = size if size >= estimate else estimate - (estimate - size) // 8
        if self._close_reason is None:
            self._enqueue(frame, direct=True)
            if self._waiting:
                self._start_waiting()

    def _answer_frame(self, request: Request, body: Any, context: RequestContext) -> bytes:
        """The `res` frame, or, when the answer is more than a frame holds (an echo of
        a body near the limit), the refusal ``protocol.answer_too_large``: the
        requester asked for it, so it is no bug of ours."""
        try:
            return encode_frame({"type": "res", "id": request.id, "body": body},
                                self._out_limits)
        except FrameSizeError as exc:
            return self._error_frame(request.id, AnswerTooLarge(
                f"the answer to {request.service}.{request.op} would be {exc.size} bytes, "
                f"more than the frame limit of {exc.limit}",
                detail={"limit": exc.limit, "size": exc.size}), context)

    def _error_frame(self, rid: int | None, exc: BaseException,
                     context: RequestContext | None = None) -> bytes:
        """The `err` frame for ``exc``; always encodes (see ``_error_wire``)."""
        log_it = self.log_budget.allow()
        return encode_frame(_error_wire(rid, exc, context if log_it else None),
                            self._out_limits)

    def _on_note(self, note: Note) -> None:
        try:
            handler = self._registry.lookup_note(note.service, note.op)
        except ProtocolError as exc:
            if self.log_budget.allow():
                log.info("note from %s dropped: %s", self.peer.agent_id, exc)
            return
        self._notes.append((handler, note))
        self._notes_ready.set()

    async def _note_worker(self) -> None:
        """Run note handlers one at a time, in arrival order (a stream of chunks
        stays a stream), without a task per note."""
        while True:
            await self._notes_ready.wait()
            self._notes_ready = trio.Event()
            while self._notes:
                handler, note = self._notes.popleft()
                try:
                    await handler(RequestContext(self, None, note.service, note.op), note.body)
                except Exception as exc:
                    if not self.log_budget.allow():
                        continue
                    if is_wire_error(exc):  # a refusal; anything else is our failure
                        log.info("note %s.%s from %s refused: %s", note.service, note.op,
                                 self.peer.agent_id, clip(str(exc), 200))
                    else:
                        log.error("note handler %s.%s failed", note.service, note.op,
                                  exc_info=exc)
            self._notes_drained.set()

    def _send_error(self, rid: int | None, exc: TransportError) -> None:
        self._enqueue(self._error_frame(rid, exc))


#: Bounds on what an `err` we send carries, far inside the smallest max_frame a peer
#: may announce (4 KiB): whatever the exception says, its `err` encodes.
ERR_MAX_CODE: Final = 64
ERR_MAX_MESSAGE: Final = 512
ERR_MAX_DETAIL: Final = 2048
_CODE_CHARS: Final = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_.-")


def _error_wire(rid: int | None, exc: BaseException,
                context: RequestContext | None = None) -> dict[str, Any]:
    """The `err` for an exception: its own code if it is meant for the wire
    (``is_wire_error``), else internal.error with a fixed message: a local error's
    message may name our files or other peers (logged here in full instead). A
    transport outcome of the handler's own call to another agent (closed, timed out,
    no connection) is peer.unavailable: no bug, and the requester may retry.

    Always encodable: the code must look like a code, the message is clipped and a
    detail that does not fit is dropped, since an exception may carry what a peer
    sent (a relayed RemoteError, a huge name quoted in a message).
    """
    code = getattr(exc, "code", None)
    message = getattr(exc, "message", None)
    detail = getattr(exc, "detail", None)
    if isinstance(exc, ValueError) and code is None:
        message = f"the response could not be encoded: {clip(str(exc), 200)}"
        code, detail = InternalError.code, {}
        if context is not None:
            log.error("%s.%s: %s", context.service, context.op, message)
    elif isinstance(exc, TransportError) and not exc.wire:  # a call the handler made
        if context is not None:
            log.warning("%s.%s: %s", context.service, context.op, clip(str(exc), 200))
        code, message, detail = PeerUnavailable.code, "an agent it needs cannot be reached", {}
    elif not is_wire_error(exc):
        if context is not None:
            log.error("handler %s.%s failed", context.service, context.op, exc_info=exc)
        code, message, detail = InternalError.code, "the handler failed", {}
    elif not isinstance(message, str):
        message = str(exc) or code
    assert isinstance(code, str)
    if not (0 < len(code) <= ERR_MAX_CODE and _CODE_CHARS.issuperset(code)):
        message = f"unreadable error code {shown(code)}: {message}"
        code = InternalError.code
    assert isinstance(message, str)
    message = clip(message, ERR_MAX_MESSAGE)
    if not isinstance(detail, dict):
        detail = {}
    elif detail:
        try:
            if len(encode_frame(detail)) > ERR_MAX_DETAIL:
                detail = {"clipped": True}
        except ValueError:
            detail = {}
    wire = ErrorMessage(id=rid, code=code, message=message, detail=detail).to_wire()
    try:
        encode_frame(wire)
    except ValueError:  # say, a lone surrogate in the message
        wire["message"] = message.encode("ascii", "backslashreplace").decode("ascii")
    return wire


error_wire = _error_wire
