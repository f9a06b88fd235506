"""``TlsStream`` over real loopback TCP: what it promises beyond ``trio.SSLStream``.

Each test pairs our ``TlsStream`` (the fd fast path, since the transport is a
``trio.SocketStream``) with an independent TLS 1.3 peer: plain ``trio.SSLStream`` in
process, or ``openssl s_client`` for what Python's ``ssl`` cannot do (KeyUpdate).
Nothing sleeps to wait: a peer says when it is done with an event, "the writer is
stuck on flow control" is ``wait_all_tasks_blocked``, and every wait is bounded by
``fail_after``.

"One receive takes every buffered record" needs every record in our socket buffer
before we read. Loopback TCP delivers synchronously, but Linux autocorking may hold
a burst of small writes back for some milliseconds; so the peer writes with
``TCP_CORK`` set and uncorks before it says it is done, which hands the whole burst
to loopback at once.
"""

from __future__ import annotations

import random
import shutil
import socket
import ssl
import subprocess
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio
import trio.testing
from pki import Market

from semper.transport._tls_stream import TlsStream

DEADLINE = 10  # seconds; a bound on every wait, never reached when things work
RECORD = 16384  # the most plaintext one TLS record carries


# -- harness -------------------------------------------------------------------------


@dataclass
class Loopback:
    ours: TlsStream
    peer: trio.SSLStream[trio.SocketStream]

    @property
    def our_socket(self) -> trio.SocketStream:
        assert isinstance(self.ours.transport_stream, trio.SocketStream)
        return self.ours.transport_stream

    @property
    def peer_socket(self) -> trio.SocketStream:
        return self.peer.transport_stream

    def shrink_buffers(self) -> None:
        """Small kernel buffers, so a peer that does not read stalls us quickly."""
        self.our_socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 16)
        self.peer_socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)


async def tcp_pair() -> tuple[trio.SocketStream, trio.SocketStream]:
    """A connected (client, server) pair of TCP streams on 127.0.0.1."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    async with listeners[0] as listener:
        port = listener.socket.getsockname()[1]
        client = await trio.open_tcp_stream("127.0.0.1", port)
        server = await listener.accept()
    assert isinstance(server, trio.SocketStream)
    return client, server


@asynccontextmanager
async def loopback(market: Market, *, we_are_server: bool = False,
                   our_context: ssl.SSLContext | None = None) -> AsyncIterator[Loopback]:
    """Our TlsStream and a trio.SSLStream peer, handshaken over loopback TCP."""
    ours_agent = market.agent("seller.one" if we_are_server else "buyer.one",
                              "seller" if we_are_server else "buyer")
    peer_agent = market.agent("buyer.peer" if we_are_server else "seller.peer",
                              "buyer" if we_are_server else "seller")
    our_tls, peer_tls = market.tls(ours_agent), market.tls(peer_agent)
    client_tcp, server_tcp = await tcp_pair()
    our_tcp, peer_tcp = (server_tcp, client_tcp) if we_are_server else (client_tcp, server_tcp)
    if our_context is None:
        our_context = our_tls.server if we_are_server else our_tls.client
    ours = TlsStream(our_tcp, our_context, server_side=we_are_server)
    peer = trio.SSLStream(peer_tcp, peer_tls.client if we_are_server else peer_tls.server,
                          server_side=not we_are_server)
    try:
        with trio.fail_after(DEADLINE):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(ours.do_handshake)
                nursery.start_soon(peer.do_handshake)
        assert ours.version() == "TLSv1.3"
        yield Loopback(ours, peer)
    finally:
        await trio.aclose_forcefully(ours)
        await trio.aclose_forcefully(peer)


@contextmanager
def corked(stream: trio.SocketStream) -> Iterator[None]:
    """Hold the peer's writes in its kernel until the block ends, then send them
    all at once (Linux ``TCP_CORK``)."""
    if not hasattr(socket, "TCP_CORK"):
        pytest.skip("needs Linux TCP_CORK to put a burst in our buffer at once")
    stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)
    try:
        yield
    finally:
        stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 0)


def payload(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def assert_same(got: bytes | bytearray, want: bytes | bytearray) -> None:
    """Exact equality, reported without diffing megabytes."""
    assert len(got) == len(want), f"{len(got)} bytes arrived, {len(want)} were sent"
    if got != want:
        first = next(i for i, (a, b) in enumerate(zip(got, want, strict=True)) if a != b)
        pytest.fail(f"the bytes differ first at offset {first} of {len(want)}")


async def receive_exactly(stream: trio.abc.ReceiveStream, n: int) -> bytearray:
    got = bytearray()
    while len(got) < n:
        data = await stream.receive_some()
        assert data, f"EOF after {len(got)} of {n} bytes"
        got += data
    assert len(got) == n, f"{len(got) - n} bytes more than expected"
    return got


# -- 1. many records per receive -------------------------------------------------------


async def test_one_receive_returns_all_records_of_a_64k_send(market: Market) -> None:
    data = payload(1 << 16, seed=1)
    async with loopback(market) as lb:
        sent = trio.Event()

        async def peer_sends() -> None:
            with corked(lb.peer_socket):
                await lb.peer.send_all(data)  # OpenSSL cuts it into 4 records of 16 KiB
            sent.set()

        with trio.fail_after(DEADLINE):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(peer_sends)
                await sent.wait()  # all its ciphertext is in our socket buffer now
                got = await lb.ours.receive_some()
    # trio.SSLStream would return one record (16384 bytes) here
    assert len(got) == len(data) > RECORD
    assert got == data


async def test_many_small_records_come_back_in_few_receives(market: Market) -> None:
    chunks = [payload(100, seed=i) for i in range(100)]
    async with loopback(market) as lb:
        sent = trio.Event()

        async def peer_sends() -> None:
            with corked(lb.peer_socket):
                for chunk in chunks:  # one record per send_all
                    await lb.peer.send_all(chunk)
            sent.set()

        receives = 0
        got = bytearray()
        with trio.fail_after(DEADLINE):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(peer_sends)
                await sent.wait()
                while len(got) < 100 * 100:
                    got += await lb.ours.receive_some()
                    receives += 1
    assert got == b"".join(chunks)
    assert receives == 1, f"100 buffered records took {receives} receives"


async def test_max_bytes_leaves_the_rest_for_the_next_receive(market: Market) -> None:
    data = payload(3 * RECORD + 1000, seed=2)
    async with loopback(market) as lb:
        with trio.fail_after(DEADLINE):
            with corked(lb.peer_socket):
                await lb.peer.send_all(data)
            first = await lb.ours.receive_some(1000)
            second = await lb.ours.receive_some(RECORD + 5)  # crosses a record boundary
            rest = await receive_exactly(lb.ours, len(data) - len(first) - len(second))
        assert (len(first), len(second)) == (1000, RECORD + 5)
        assert first + second + rest == data
        with pytest.raises(ValueError):
            await lb.ours.receive_some(0)


# -- 2. how the session ends, as the reader sees it -----------------------------------


async def test_close_notify_reads_as_eof(market: Market) -> None:
    async with loopback(market) as lb:
        with trio.fail_after(DEADLINE):
            await lb.peer.send_all(b"last words")
            await lb.peer.aclose()  # close_notify, then the TCP close
            got = bytearray()
            while data := await lb.ours.receive_some():
                got += data
            assert got == b"last words"
            assert await lb.ours.receive_some() == b""  # and again: EOF stays EOF


async def test_tcp_close_without_close_notify_is_broken(market: Market) -> None:
    async with loopback(market) as lb:
        with trio.fail_after(DEADLINE):
            await lb.peer.send_all(b"partial")
            await lb.peer_socket.aclose()  # ragged EOF: no close_notify
            assert await lb.ours.receive_some() == b"partial"
            with pytest.raises(trio.BrokenResourceError) as info:
                await lb.ours.receive_some()
            assert isinstance(info.value.__cause__, ssl.SSLError), repr(info.value.__cause__)
            with pytest.raises(trio.BrokenResourceError) as again:
                await lb.ours.receive_some()
            assert isinstance(again.value.__cause__, ssl.SSLError)
            assert not lb.ours.send_nowait(b"too late")


# -- 3. send_nowait, needs_flush and flush against a peer that does not read ----------


async def test_send_nowait_queues_what_the_socket_refuses_in_order(market: Market) -> None:
    rng = random.Random(3)
    expected = bytearray()  # everything handed to OpenSSL, in the order it was
    async with loopback(market) as lb:
        lb.shrink_buffers()
        ours = lb.ours
        # The line is free: send_nowait writes synchronously, until the socket is full.
        for i in range(1000):
            chunk = payload(rng.randrange(1, 1 << 17), seed=100 + i)
            assert ours.send_nowait(chunk), "send_nowait refused with nothing queued"
            expected += chunk
            if ours.needs_flush:
                break
        assert ours.needs_flush, "the peer does not read, yet the socket took everything"
        # Something is queued: send_nowait refuses, and queues nothing.
        assert not ours.send_nowait(b"refused")

        done = trio.Event()
        chunks = [payload(rng.randrange(1, 1 << 17), seed=200 + i) for i in range(48)]
        tail = payload(5000, seed=4)
        total = len(expected) + sum(map(len, chunks)) + len(tail)
        assert total > 2 << 20

        async def writer() -> None:
            """The channel's pattern: send_nowait if it can, else send_all; then
            flush whatever the socket did not take. Several MiB: it gets stuck."""
            for chunk in chunks:
                if ours.send_nowait(chunk):
                    expected.extend(chunk)
                else:
                    expected.extend(chunk)  # send_all hands it to OpenSSL before waiting
                    await ours.send_all(chunk)
                if ours.needs_flush:
                    await ours.flush()
            done.set()

        received = bytearray()

        async def peer_reads() -> None:
            received.extend(await receive_exactly(lb.peer, total))

        with trio.fail_after(DEADLINE):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(writer)
                await trio.testing.wait_all_tasks_blocked()
                assert not done.is_set(), "the writer was never stuck"
                # A flush is in progress: it will send what is queued, so no one else
                # needs to, and send_nowait refuses (send_all would wait its turn).
                assert not ours.needs_flush
                assert not ours.send_nowait(b"refused too")
                expected.extend(tail)
                nursery.start_soon(ours.send_all, tail)  # queued behind the flush
                await trio.testing.wait_all_tasks_blocked()
                nursery.start_soon(peer_reads)
        assert done.is_set()
        assert not ours.needs_flush
        assert_same(received, expected)


async def test_send_nowait_refuses_before_the_handshake(market: Market) -> None:
    client_tcp, server_tcp = await tcp_pair()
    agent = market.agent("buyer.one", "buyer")
    stream = TlsStream(client_tcp, market.tls(agent).client, server_side=False)
    try:
        assert not stream.send_nowait(b"early")
        assert not stream.needs_flush
    finally:
        await trio.aclose_forcefully(stream)
        await server_tcp.aclose()


async def test_memory_transport_takes_the_generic_path(market: Market) -> None:
    ours_agent, peer_agent = market.agent("buyer.one", "buyer"), market.agent("seller.one",
                                                                              "seller")
    our_transport, peer_transport = trio.testing.memory_stream_pair()
    ours = TlsStream(our_transport, market.tls(ours_agent).client, server_side=False)
    peer = trio.SSLStream(peer_transport, market.tls(peer_agent).server, server_side=True)
    data = payload(3 * RECORD, seed=5)
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ours.do_handshake)
            nursery.start_soon(peer.do_handshake)
        assert not ours.send_nowait(b"no socket")  # no fd: the caller must send_all
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ours.send_all, data)
            assert_same(await receive_exactly(peer, len(data)), data)
        await peer.send_all(data[:1000])
        assert await ours.receive_some() == data[:1000]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ours.aclose)
            assert await peer.receive_some() == b""  # close_notify on this path too
    await peer.aclose()


# -- 4. TLS 1.3 KeyUpdate and other output a read produces ----------------------------


class Lines:
    """A child's merged stdout/stderr, accumulated, with a bounded wait for text."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self.stream = stream
        self.text = bytearray()
        self.eof = False
        self._changed = trio.Event()

    async def pump(self) -> None:
        while data := await self.stream.receive_some():
            self.text += data
            self._changed.set()
            self._changed = trio.Event()
        self.eof = True
        self._changed.set()

    async def wait_for(self, needle: bytes, start: int = 0) -> int:
        """Offset just past the first ``needle`` at or after ``start``."""
        while (at := self.text.find(needle, start)) < 0:
            if self.eof:
                pytest.fail(f"{needle!r} never came; the output was:\n"
                            + self.text.decode(errors="replace"))
            await self._changed.wait()
        return at + len(needle)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
async def test_keyupdate_from_openssl_s_client(market: Market, tmp_path: Path) -> None:
    """Our server echoes; s_client asks for a KeyUpdate both ways ('K' command).

    After the client's KeyUpdate(update_requested), both sides switch keys: the
    client reads our next record with a new key only if we sent our own KeyUpdate
    first. OpenSSL 3 queues that answer for our next write (rather than writing it
    from the read), so the echo after 'K' is where it leaves.
    """
    server_agent = market.agent("seller.one", "seller")
    client_agent = market.agent("buyer.one", "buyer")
    root = tmp_path / "root.pem"
    root.write_bytes(market.root_pem)
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    echoed = 0

    async def echo_server() -> None:
        nonlocal echoed
        async with listeners[0] as listener:
            tcp = await listener.accept()
        stream = TlsStream(tcp, market.tls(server_agent).server, server_side=True)
        try:
            await stream.do_handshake()
            while data := await stream.receive_some():
                await stream.send_all(data)
                echoed += len(data)
        finally:
            await stream.aclose()

    process = await trio.lowlevel.open_process(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-tls1_3", "-msg",
         "-cert", str(client_agent.cert_path), "-key", str(client_agent.key_path),
         "-CAfile", str(root)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert process.stdin is not None and process.stdout is not None
    out = Lines(process.stdout)
    try:
        with trio.fail_after(DEADLINE):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(out.pump)
                nursery.start_soon(echo_server)
                # Each command is one read of s_client's stdin: wait before the next.
                await process.stdin.send_all(b"hello semper\n")
                mark = await out.wait_for(b"hello semper\n")
                await process.stdin.send_all(b"K\n")
                mark = await out.wait_for(b"KEYUPDATE", mark)
                sent_at = await out.wait_for(b">>> TLS 1.3, Handshake [length 0005], KeyUpdate",
                                             mark)
                await process.stdin.send_all(b"world after rekey\n")
                echo_at = await out.wait_for(b"world after rekey\n", sent_at)
                # Our KeyUpdate (update_not_requested) reached the client before the echo.
                ours_at = await out.wait_for(
                    b"<<< TLS 1.3, Handshake [length 0005], KeyUpdate", sent_at)
                assert ours_at < echo_at
                # And again, to show the session really moved on to new keys.
                await process.stdin.send_all(b"K\n")
                mark = await out.wait_for(b"KEYUPDATE", echo_at)
                await process.stdin.send_all(b"third\n")
                await out.wait_for(b"third\n", mark)
                await process.stdin.aclose()  # s_client sends close_notify and exits
                assert await process.wait() == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    text = out.text.decode(errors="replace")
    assert "fatal" not in text, text
    assert echoed == len(b"hello semper\nworld after rekey\nthird\n")


async def test_output_from_a_read_is_flushed_without_a_write(market: Market) -> None:
    """TLS 1.3 post-handshake client authentication: our client answers the
    server's CertificateRequest from inside a read (OpenSSL writes Certificate,
    CertificateVerify and Finished there and then). We never call send: the
    background flush the reader kicked must put the answer on the wire."""
    agent = market.agent("buyer.one", "buyer")
    context = market.tls(agent).client
    context.post_handshake_auth = True
    async with loopback(market, our_context=context) as lb:
        # trio.SSLStream does not forward this; it is the stdlib SSLObject's call.
        lb.peer._ssl_object.verify_client_post_handshake()  # type: ignore[attr-defined]
        with trio.fail_after(DEADLINE):
            await lb.peer.send_all(b"prove it")  # the CertificateRequest goes first
            assert await lb.ours.receive_some() == b"prove it"
            # We sent nothing, yet the peer's socket has our answer.
            await trio.lowlevel.wait_readable(lb.peer_socket.socket)
            assert not lb.ours.needs_flush
            # The peer accepts it (a bad answer would break its read) and reads on.
            async with trio.open_nursery() as nursery:
                nursery.start_soon(lb.ours.send_all, b"proved")
                assert await lb.peer.receive_some() == b"proved"


# -- 5. closing --------------------------------------------------------------------------


async def test_aclose_sends_close_notify(market: Market) -> None:
    async with loopback(market) as lb:
        with trio.fail_after(DEADLINE):
            await lb.ours.send_all(b"bye")
            await lb.ours.aclose()
            assert await receive_exactly(lb.peer, 3) == b"bye"
            assert await lb.peer.receive_some() == b""  # a clean end of session
        assert lb.our_socket.socket.fileno() == -1
        await lb.ours.aclose()  # twice is fine
        with pytest.raises(trio.ClosedResourceError):
            await lb.ours.receive_some()
        with pytest.raises(trio.ClosedResourceError):
            await lb.ours.send_all(b"x")
        assert not lb.ours.send_nowait(b"x")


async def test_aclose_forcefully_sends_no_close_notify(market: Market) -> None:
    async with loopback(market) as lb:
        with trio.fail_after(DEADLINE):
            await lb.ours.send_all(b"bye")
            await trio.aclose_forcefully(lb.ours)
            assert await receive_exactly(lb.peer, 3) == b"bye"
            with pytest.raises(trio.BrokenResourceError) as info:
                await lb.peer.receive_some()  # ragged EOF
            assert isinstance(info.value.__cause__, ssl.SSLError), repr(info.value.__cause__)
        assert lb.our_socket.socket.fileno() == -1


async def test_aclose_wakes_a_blocked_reader(market: Market) -> None:
    async with loopback(market) as lb:
        with trio.fail_after(DEADLINE):
            async with trio.open_nursery() as nursery:

                async def reader() -> None:
                    with pytest.raises(trio.ClosedResourceError):
                        await lb.ours.receive_some()

                nursery.start_soon(reader)
                await trio.testing.wait_all_tasks_blocked()
                await lb.ours.aclose()
            assert await lb.peer.receive_some() == b""


# -- 6. cancellation while the socket is full --------------------------------------------


@pytest.mark.parametrize("how", ["send_all", "send_nowait+flush"])
async def test_cancelled_send_leaves_the_rest_for_a_later_flush(market: Market,
                                                                how: str) -> None:
    data = payload(2 << 20, seed=6)
    async with loopback(market) as lb:
        lb.shrink_buffers()
        ours = lb.ours
        scope = trio.CancelScope()

        async def sender() -> None:
            with scope:
                if how == "send_all":
                    await ours.send_all(data)
                else:
                    assert ours.send_nowait(data)
                    assert ours.needs_flush
                    await ours.flush()

        with trio.fail_after(DEADLINE):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(sender)
                await trio.testing.wait_all_tasks_blocked()  # stuck: the peer does not read
                scope.cancel()
            assert scope.cancelled_caught
            assert ours.needs_flush  # the unsent rest is still queued, nothing lost
            assert not ours.send_nowait(b"not now")

            async with trio.open_nursery() as nursery:

                async def peer_reads() -> None:
                    got = await receive_exactly(lb.peer, len(data) + 5)
                    assert_same(got, data + b"after")

                nursery.start_soon(peer_reads)
                await ours.flush()
                assert not ours.needs_flush
                await ours.send_all(b"after")


async def test_full_duplex_bulk_does_not_deadlock(market: Market) -> None:
    """Both sides write megabytes at once: our reader must never wait on our writer."""
    ours_data, peer_data = payload(4 << 20, seed=7), payload(4 << 20, seed=8)
    async with loopback(market, we_are_server=True) as lb:
        lb.shrink_buffers()

        async def check(stream: trio.abc.ReceiveStream, want: bytes) -> None:
            assert_same(await receive_exactly(stream, len(want)), want)

        with trio.fail_after(DEADLINE):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(lb.ours.send_all, ours_data)
                nursery.start_soon(lb.peer.send_all, peer_data)
                nursery.start_soon(check, lb.ours, peer_data)
                nursery.start_soon(check, lb.peer, ours_data)
