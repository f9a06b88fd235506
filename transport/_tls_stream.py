"""A TLS stream that moves many records per wake-up, and can send without one.

Why not ``trio.SSLStream``: it returns one TLS record (at most 16 KiB) per
``receive_some`` and runs its generic retry loop, with conflict detectors and
checkpoints, around every record and every send. A channel has one reader task and
one writer task and needs none of that generality. ``TlsStream`` drives the same
OpenSSL through ``ssl.SSLObject`` and two memory BIOs, and:

* ``receive_some`` takes everything the socket has (up to ``RECEIVE_SIZE``) and
  decrypts every whole record in it before returning: a burst of thirty small
  frames, or one 64 KiB frame, costs one wake-up instead of one per record;
* ``send_nowait`` encrypts and writes to the socket synchronously when nothing else
  is being sent, so a lone request leaves without waking the writer task. What the
  socket does not take stays queued, in order, for the next ``flush``.

Sending order is the one invariant: ciphertext leaves in the order OpenSSL wrote it
to the outgoing BIO. One flag (``_sending``) marks a flush in progress; only its
holder takes bytes out of the BIO, and it loops until the BIO and the leftover are
empty, so bytes a read produced meanwhile go out too. (Reads that produce output
are rare: OpenSSL 3.0 holds a KeyUpdate answer until our next write, but answers a
post-handshake certificate request at once.)
A reader never waits for that flag, so it can never be stuck behind a writer that
waits for the peer to read. Data larger than ``SEND_SLICE`` is encrypted a slice at
a time, each sent before the next is encrypted; a second flag (``_slicing``) keeps
``send_nowait`` from slipping a frame between two slices of one ``send_all``.

On a ``trio.SocketStream`` the socket's file descriptor is used directly (non-
blocking ``os.write``/``os.readv`` with ``trio.lowlevel.wait_writable``/
``wait_readable``); any other trio stream (memory streams in tests) goes through
its own ``send_all``/``receive_some``. Errors follow ``trio.SSLStream``, so callers
need not care which one they hold: ``trio.BrokenResourceError`` with the cause
(``ssl.SSLError`` or ``OSError``) as ``__cause__``, and ``b""`` after the peer's
close_notify.

One deviation from ``trio.abc.SendStream``: ``send_all`` that did not have to wait
does not yield. The channel's writer yields on its queue, and a yield per send
was a whole scheduler round per frame.
"""

from __future__ import annotations

import os
import ssl
import threading
from typing import Any, Final

import trio

__all__ = ["RECEIVE_SIZE", "TlsStream"]

#: The most ciphertext taken from the socket per wake-up.
RECEIVE_SIZE: Final = 1 << 18
#: Plaintext encrypted per write when sending more: the peer starts decrypting a
#: large frame (a chunk of content) while we encrypt the rest of it, instead of
#: after we encrypted all of it (1 MiB: 0.4 ms of AES-GCM before the first byte).
SEND_SLICE: Final = 1 << 17

_TLS_ERRORS: Final = (ssl.SSLError, ssl.CertificateError)

_local = threading.local()


def _receive_view() -> memoryview:
    view = getattr(_local, "view", None)
    if view is None:
        view = _local.view = memoryview(bytearray(RECEIVE_SIZE))
    return view


class TlsStream(trio.abc.Stream):
    """TLS over a trio socket stream (fast path) or any trio stream."""

    def __init__(self, transport: trio.abc.Stream, context: ssl.SSLContext, *,
                 server_side: bool) -> None:
        self.transport_stream = transport
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._ssl = context.wrap_bio(self._incoming, self._outgoing, server_side=server_side)
        self._fd = -1
        if isinstance(transport, trio.SocketStream) and os.name == "posix":
            self._fd = transport.socket.fileno()
        self._leftover: memoryview | None = None  # ciphertext read from the BIO, unsent
        self._sending = False
        self._slicing = False  # a send_all between two slices of its data
        self._send_done = trio.lowlevel.ParkingLot()
        self._handshake_done = False
        self._broken: BaseException | None = None
        self._closed = False
        self._eof = False

    # -- facts about the session --------------------------------------------------

    def getpeercert(self, binary_form: bool = False) -> Any:
        return self._ssl.getpeercert(binary_form)

    def version(self) -> str | None:
        return self._ssl.version()

    def cipher(self) -> tuple[str, str, int] | None:
        return self._ssl.cipher()

    @property
    def needs_flush(self) -> bool:
        """Ciphertext is queued that no flush in progress will send."""
        return not self._sending and (self._leftover is not None or self._outgoing.pending > 0)

    # -- handshake ------------------------------------------------------------------

    async def do_handshake(self) -> None:
        """Run the handshake. On failure the alert OpenSSL queued stays in the
        outgoing BIO for ``send_pending_alert``."""
        self._check_usable()
        while True:
            try:
                self._ssl.do_handshake()
            except ssl.SSLWantReadError:
                await self.flush()
                if not await self._fill():
                    self._raise_broken(ssl.SSLEOFError(8, "EOF in the handshake"))
                continue
            except _TLS_ERRORS as exc:
                self._raise_broken(exc)
            break
        self._handshake_done = True
        await self.flush()

    async def send_pending_alert(self) -> None:
        """Best effort: send what OpenSSL queued (an alert) after a failed handshake,
        so the peer learns why. Shielded and bounded."""
        pending = self._outgoing.read()
        if not pending or self._closed:
            return
        with trio.CancelScope(shield=True), trio.move_on_after(1):
            try:
                await self._write_raw(memoryview(pending))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

    # -- receiving --------------------------------------------------------------------

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        """Every whole record's plaintext that is buffered or arrives in one receive,
        up to ``max_bytes``; ``b""`` once the peer closed the session."""
        self._check_usable()
        limit = RECEIVE_SIZE if max_bytes is None else max_bytes
        if limit < 1:
            raise ValueError("max_bytes must be >= 1")
        waited = False
        chunks: list[bytes] = []
        total = 0
        read = self._ssl.read
        while total < limit:
            try:
                data = read(limit - total)
            except ssl.SSLWantReadError:
                if chunks or self._eof:
                    break
                self._kick_flush()
                waited = True
                if not await self._fill():
                    continue  # EOF is in the BIO: the next read says how the session ended
                continue
            except ssl.SSLZeroReturnError:  # the peer's close_notify
                self._eof = True
                break
            except _TLS_ERRORS as exc:
                if chunks:
                    break  # hand over what decrypted; the error comes back next call
                self._raise_broken(exc)
            if not data:
                self._eof = True
                break
            chunks.append(data)
            total += len(data)
        self._kick_flush()
        if not waited:
            await trio.lowlevel.checkpoint()  # data was ready: still let others run
        if len(chunks) == 1:
            return chunks[0]
        return b"".join(chunks)

    async def _fill(self) -> bool:
        """Ciphertext from the transport into the incoming BIO; False at EOF."""
        if self._fd < 0:
            try:
                raw = await self.transport_stream.receive_some(RECEIVE_SIZE)
            except trio.BrokenResourceError as exc:
                self._broken = exc
                raise
            if not raw:
                self._incoming.write_eof()
                return False
            self._incoming.write(raw)
            return True
        while True:
            # One receive buffer per thread, shared by every stream: what is read is
            # copied into the BIO before the next await, and an idle connection (say,
            # one that never starts its handshake) costs no buffer of its own.
            view = _receive_view()
            try:
                n = os.readv(self._fd, [view])
            except BlockingIOError:
                await trio.lowlevel.wait_readable(self._fd)
                continue
            except OSError as exc:
                self._raise_broken(exc)
            if n == 0:
                self._incoming.write_eof()
                return False
            self._incoming.write(view[:n])
            return True

    # -- sending ----------------------------------------------------------------------

    def send_nowait(self, data: bytes | bytearray | memoryview) -> bool:
        """Encrypt ``data`` and write it to the socket now, if nothing else is being
        sent. Returns False, having done nothing, if a send is in progress or this is
        no socket; then use ``send_all``. After True, what the socket did not take
        is queued: check ``needs_flush``."""
        if self._fd < 0 or self._sending or self._slicing or self._leftover is not None or (
            self._broken is not None or not self._handshake_done
        ):
            return False
        view = memoryview(data)
        end, pos = len(view), 0
        while True:  # a slice at a time while the socket takes it all (see SEND_SLICE)
            piece = view[pos : pos + SEND_SLICE] if end > SEND_SLICE else view
            pos += len(piece)
            self._encrypt(piece)
            out = memoryview(self._outgoing.read())
            try:
                n = os.write(self._fd, out)
            except BlockingIOError:
                n = 0
            except OSError as exc:
                self._raise_broken(exc)
            if n < len(out):
                self._leftover = out[n:]
                break
            if pos >= end:
                break
        if pos < end:
            self._encrypt(view[pos:])  # queued whole and in order, for the next flush
        return True

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        while self._slicing:  # another send_all's slices go first, whole
            await self._send_done.park()
        self._check_usable()
        view = memoryview(data)
        if len(view) <= SEND_SLICE:
            self._encrypt(view)
            await self.flush()
            return
        # A slice at a time, so that the peer decrypts the first while we encrypt the
        # next. ``_slicing`` keeps send_nowait out between slices; whatever ends the
        # loop early, the rest is encrypted before we return: the stream stays whole.
        pos = 0
        self._slicing = True
        try:
            while pos < len(view):
                piece = view[pos : pos + SEND_SLICE]
                self._encrypt(piece)
                pos += len(piece)
                await self.flush()
        finally:
            self._slicing = False
            if pos < len(view) and self._broken is None:
                self._encrypt(view[pos:])
            self._send_done.unpark_all()

    def _encrypt(self, data: bytes | bytearray | memoryview) -> None:
        try:
            self._ssl.write(data)
        except _TLS_ERRORS as exc:
            self._raise_broken(exc)

    async def flush(self) -> None:
        """Send everything queued, in order. A flush already running sends what we
        queued too; we wait for it, and finish the job if it was cancelled."""
        while self._sending:
            await self._send_done.park()
        self._check_usable()
        if self._leftover is None and not self._outgoing.pending:
            return
        self._sending = True
        try:
            while True:
                out = self._leftover
                if out is None:
                    if not self._outgoing.pending:
                        break
                    out = memoryview(self._outgoing.read())
                self._leftover = None
                await self._write_raw(out)
        finally:
            self._sending = False
            self._send_done.unpark_all()

    async def _write_raw(self, out: memoryview) -> None:
        """Write all of ``out``; on cancellation the unsent rest stays queued."""
        if self._fd < 0:
            try:
                await self.transport_stream.send_all(out)
            except BaseException as exc:
                # Part of a record may be on the wire: the session is unusable.
                self._broken = exc if isinstance(exc, trio.BrokenResourceError) \
                    else trio.BrokenResourceError("a send was interrupted")
                raise
            return
        while out:
            try:
                n = os.write(self._fd, out)
            except BlockingIOError:
                n = 0
            except OSError as exc:
                self._raise_broken(exc)
            out = out[n:]
            if out:
                self._leftover = out
                await trio.lowlevel.wait_writable(self._fd)
                self._leftover = None

    def _kick_flush(self) -> None:
        """Bytes a read produced (a post-handshake auth answer) go out with the flush in
        progress, or with a new one; the reader itself never waits to send."""
        if self._outgoing.pending and not self._sending and self._broken is None:
            trio.lowlevel.spawn_system_task(self._background_flush)

    async def _background_flush(self) -> None:
        try:
            await self.flush()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the reader or writer meets the same broken stream and reports it

    async def wait_send_all_might_not_block(self) -> None:
        await self.transport_stream.wait_send_all_might_not_block()

    # -- closing ----------------------------------------------------------------------

    async def aclose(self) -> None:
        """Send close_notify (without waiting for the peer's), then close the socket.

        The socket is closed however the close_notify fares, cancellation included."""
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        try:
            # Cancelled already (``aclose_forcefully``): abort without close_notify,
            # so that a refused peer does not read a clean end of session.
            await trio.lowlevel.checkpoint_if_cancelled()
            if self._broken is None and self._handshake_done:
                try:
                    self._ssl.unwrap()
                except (ssl.SSLWantReadError, *_TLS_ERRORS):
                    pass
                try:
                    await self.flush()
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
        finally:
            self._closed = True
            self._broken = trio.ClosedResourceError("the TLS stream was closed")
            if self._fd >= 0:
                trio.lowlevel.notify_closing(self._fd)  # wake our own waiters first
            await self.transport_stream.aclose()

    # -- state ----------------------------------------------------------------------

    def _check_usable(self) -> None:
        if self._broken is not None:
            if isinstance(self._broken, trio.ClosedResourceError):
                raise trio.ClosedResourceError("the TLS stream was closed")
            raise trio.BrokenResourceError("the TLS stream is broken") from self._broken

    def _raise_broken(self, exc: BaseException) -> Any:
        self._broken = exc
        raise trio.BrokenResourceError(str(exc)) from exc
