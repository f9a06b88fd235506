"""Channels end to end: real TLS 1.3 and real certificates, over memory streams (for
anything timed, under the autojump clock) and over loopback against ``serve`` (for
hostile peers that write raw bytes after a valid handshake).

The invariant after every hostile input: the peer got a clear ``err``, the channel
closed when framing was lost and stayed open otherwise, and the server still
answers a fresh, well-behaved client.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio
import trio.testing
from channel_helpers import (
    Server,
    channel_pair,
    echo_registry,
    raw_client,
    raw_frame,
    running_server,
)
from pki import Market

from semper.transport import (
    PROTOCOL_VERSION,
    ChannelClosed,
    ChannelConfig,
    FrameDecoder,
    HandshakeTimeout,
    HelloMismatch,
    IdleTimeout,
    ProtocolError,
    RemoteError,
    RequestContext,
    RequestTimeout,
    ServiceRegistry,
    TransportError,
    UnexpectedMessage,
    UnsupportedVersion,
    encode_frame,
    establish,
    transport_error_classes,
)

# -- handlers --------------------------------------------------------------------------


class OutOfStock(Exception):
    """A handler's own error: code, message and detail go back to the peer."""

    code = "shop.out_of_stock"
    wire = True  # meant for the peer (transport/_errors.py is_wire_error)

    def __init__(self, sku: str) -> None:
        super().__init__(f"{sku} is out of stock")
        self.message = f"{sku} is out of stock"
        self.detail = {"sku": sku}


class Refused(Exception):
    """Only a ``code`` (and ``wire``), as the Handler contract in _registry.py allows."""

    code = "shop.refused"
    wire = True


async def never(_ctx: RequestContext, _body: Any) -> Any:
    await trio.sleep_forever()


def shop_registry(gate: trio.Event | None = None) -> ServiceRegistry:
    registry = echo_registry()
    registry.add_service("shop")

    async def out_of_stock(_ctx: RequestContext, body: Any) -> Any:
        raise OutOfStock(body)

    async def refused(_ctx: RequestContext, _body: Any) -> Any:
        raise Refused("no")

    async def crash(_ctx: RequestContext, _body: Any) -> Any:
        raise RuntimeError("a bug in the handler")

    async def float_answer(_ctx: RequestContext, _body: Any) -> Any:
        return 1.5

    async def block(_ctx: RequestContext, body: Any) -> Any:
        assert gate is not None
        await gate.wait()
        return body

    registry.add_op("shop", "out_of_stock", out_of_stock)
    registry.add_op("shop", "refused", refused)
    registry.add_op("shop", "crash", crash)
    registry.add_op("shop", "float", float_answer)
    registry.add_op("shop", "block", block)
    registry.add_op("shop", "never", never)
    return registry


# -- a real server for the hostile-client tests ------------------------------------


class Gate:
    event: trio.Event


@pytest.fixture
async def gate() -> Gate:
    g = Gate()
    g.event = trio.Event()
    return g


@pytest.fixture
async def server(market: Market, gate: Gate) -> AsyncIterator[Server]:
    """``serve`` on loopback; announces max_in_flight=2 so the limit is easy to hit."""
    async with running_server(market, shop_registry(gate.event),
                              ChannelConfig(max_in_flight=2)) as srv:
        yield srv


def req(rid: Any, service: str = "echo", op: str = "echo", body: Any = None) -> dict[str, Any]:
    return {"type": "req", "id": rid, "service": service, "op": op, "body": body}


def assert_err(frame: Any, code: str, rid: int | None) -> None:
    assert frame["type"] == "err", frame
    assert frame["code"] == code, frame
    assert frame["id"] == rid, frame
    assert isinstance(frame["message"], str) and frame["message"]


async def assert_still_open(client: Any, rid: int) -> None:
    await client.send(req(rid, body={"still": "open"}))
    assert await client.receive() == {"type": "res", "id": rid, "body": {"still": "open"}}


# -- happy path ---------------------------------------------------------------------


async def test_request_response_and_peer_identity(market: Market) -> None:
    async with channel_pair(market, server_registry=shop_registry()) as pair:
        body = {"s": "é", "b": b"\x00\xff", "n": [-(2**63), 2**64 - 1, None, True]}
        assert await pair.client.request("echo", "echo", body) == body
        # the handler sees the identity the certificate proved
        assert await pair.client.request("echo", "whoami") == "buyer.one"
        assert pair.client.peer.agent_id == "seller.one"
        assert pair.server.peer.agent_id == "buyer.one"
        assert pair.client.their_hello.services.keys() == {"echo", "shop"}


async def test_both_sides_serve_requests(market: Market) -> None:
    async with channel_pair(market, client_registry=echo_registry()) as pair:
        assert await pair.server.request("echo", "whoami") == "seller.one"
        assert await pair.client.request("echo", "whoami") == "buyer.one"


async def test_unencodable_request_body_is_refused_locally(market: Market) -> None:
    async with channel_pair(market) as pair:
        for bad in (1.5, (1, 2), {1: 2}, 2**64):
            with pytest.raises(ValueError):
                await pair.client.request("echo", "echo", bad)
        assert not pair.client.closed
        assert await pair.client.request("echo", "echo", "fine") == "fine"


# -- handler errors -------------------------------------------------------------------


async def test_handler_error_with_code_is_returned(server: Server) -> None:
    async with server.connect() as channel:
        with pytest.raises(RemoteError) as info:
            await channel.request("shop", "out_of_stock", "sku-1")
        assert info.value.code == "shop.out_of_stock"
        assert info.value.message == "sku-1 is out of stock"
        assert info.value.detail == {"sku": "sku-1"}
        assert await channel.request("echo", "echo", 1) == 1


async def test_handler_error_with_only_a_code_is_returned(server: Server) -> None:
    # _registry.Handler: "raises an exception with a string ``code`` attribute (and
    # ``wire = True``) to answer with that error".
    async with server.connect() as channel:
        with pytest.raises(RemoteError) as info:
            await channel.request("shop", "refused")
        assert info.value.code == "shop.refused"


@pytest.mark.parametrize("op", ["crash", "float"])
async def test_handler_failure_is_internal_error_and_channel_survives(
        server: Server, op: str) -> None:
    async with server.connect() as channel:
        with pytest.raises(RemoteError) as info:
            await channel.request("shop", op)
        assert info.value.code == "internal.error"
        assert "a bug in the handler" not in info.value.message  # no internals leak
        assert not channel.closed
        assert await channel.request("echo", "echo", "after") == "after"
    await server.check_alive()


# -- hostile bytes after a valid handshake ----------------------------------------------


@pytest.mark.parametrize("size", [2 * 1024 * 1024, 0xFFFFFFFF])
async def test_oversized_prefix_refused_without_the_body(server: Server, size: int) -> None:
    async with raw_client(server) as client:
        await client.send_bytes(size.to_bytes(4, "big"))  # the prefix, never the body
        assert_err(await client.receive(), "protocol.frame_too_large", None)
        await client.expect_eof()
    await server.check_alive()


@pytest.mark.parametrize("body", [
    pytest.param(b"\xc1", id="never-used-byte"),
    pytest.param(b"\xcb\x3f\xf0\x00\x00\x00\x00\x00\x00", id="float64"),
    pytest.param(b"\xd4\x01\x00", id="ext"),
    pytest.param(b"\xd6\xff\x00\x00\x00\x00", id="timestamp"),
    pytest.param(b"\x81\xa4type\xa2\xff\xfe", id="invalid-utf8"),
    pytest.param(b"\x80\x80", id="trailing-bytes"),
    pytest.param(b"", id="zero-length"),
    pytest.param(b"\x91" * 40 + b"\x90", id="too-deep"),
    pytest.param(b"\x81\x01\x02", id="int-key"),
    pytest.param(b"\xdd\xff\xff\xff\xff", id="array-claiming-4G-items"),
])
async def test_malformed_frame_gets_bad_frame_and_close(server: Server, body: bytes) -> None:
    async with raw_client(server) as client:
        await client.send_bytes(raw_frame(body))
        assert_err(await client.receive(), "protocol.bad_frame", None)
        await client.expect_eof()
    await server.check_alive()


async def test_bad_frame_after_a_good_request_in_the_same_write(server: Server) -> None:
    # the reader handles the good frame, then finds the bad one in the same record;
    # closing cancels the request's handler, so its answer may or may not go out
    async with raw_client(server) as client:
        await client.send_bytes(encode_frame(req(1, "shop", "block", "a"))
                                + raw_frame(b"\xc1"))
        assert_err(await client.receive(), "protocol.bad_frame", None)
        await client.expect_eof()
    await server.check_alive()


@pytest.mark.parametrize(("obj", "rid"), [
    pytest.param({"type": "req", "id": 7, "service": "echo"}, 7, id="req-missing-op"),
    pytest.param({"type": "req", "id": 7, "service": "echo", "op": 1}, 7, id="req-int-op"),
    pytest.param({"service": "echo", "op": "echo"}, None, id="missing-type"),
    pytest.param({"type": "req", "id": True, "service": "echo", "op": "echo"}, None,
                 id="bool-id"),
    pytest.param(req(0), None, id="id-zero"),
    pytest.param(req(2**63), None, id="id-over-int64"),
    pytest.param({"type": "wat"}, None, id="unknown-type"),
    pytest.param([1, 2], None, id="array"),
    pytest.param("req", None, id="string"),
    pytest.param({"type": "note", "service": "echo"}, None, id="note-missing-op"),
])
async def test_not_an_envelope_gets_bad_message_and_stays_open(
        server: Server, obj: Any, rid: int | None) -> None:
    async with raw_client(server) as client:
        await client.send(obj)
        assert_err(await client.receive(), "protocol.bad_message", rid)
        await assert_still_open(client, 100)
    await server.check_alive()


async def test_unknown_service_and_op(server: Server) -> None:
    async with raw_client(server) as client:
        await client.send(req(1, service="nope"))
        reply = await client.receive()
        assert_err(reply, "protocol.unknown_service", 1)
        assert reply["detail"] == {"service": "nope"}
        await client.send(req(2, op="nope"))
        assert_err(await client.receive(), "protocol.unknown_op", 2)
        # a note to an unknown service is dropped without an answer
        await client.send({"type": "note", "service": "nope", "op": "x", "body": None})
        await assert_still_open(client, 3)
    await server.check_alive()


async def test_reused_and_lower_ids_are_refused(server: Server) -> None:
    async with raw_client(server) as client:
        await client.send(req(5, body="first"))
        assert await client.receive() == {"type": "res", "id": 5, "body": "first"}
        await client.send(req(5, body="again"))           # the same id twice
        assert_err(await client.receive(), "protocol.reused_id", 5)
        await client.send(req(3))                           # lower than one used before
        assert_err(await client.receive(), "protocol.reused_id", 3)
        await client.send(req(2**63 - 1))                  # gaps are fine, up to the top
        assert (await client.receive())["id"] == 2**63 - 1
        await client.send(req(6))
        assert_err(await client.receive(), "protocol.reused_id", 6)
    await server.check_alive()


async def test_too_many_requests_in_flight(server: Server, gate: Gate) -> None:
    # the server announced max_in_flight=2; the third concurrent request is refused
    async with raw_client(server) as client:
        await client.send_bytes(b"".join(encode_frame(req(i, "shop", "block", i))
                                         for i in (1, 2, 3)))
        assert_err(await client.receive(), "protocol.too_many_requests", 3)
        gate.event.set()
        answers = [await client.receive(), await client.receive()]
        assert sorted(a["id"] for a in answers) == [1, 2]
        assert all(a == {"type": "res", "id": a["id"], "body": a["id"]} for a in answers)
        await client.send(req(4, "shop", "block", 4))      # slots free again
        assert await client.receive() == {"type": "res", "id": 4, "body": 4}
    await server.check_alive()


async def test_second_hello_is_unexpected_and_closes(server: Server) -> None:
    async with raw_client(server) as client:
        await assert_still_open(client, 1)
        await client.send(client.hello())
        assert_err(await client.receive(), "protocol.unexpected_message", None)
        await client.expect_eof()
    await server.check_alive()


@pytest.mark.parametrize("obj", [
    # an answer to a request the server never sent: ids are per direction, so it is
    # logged and dropped, never answered with an `err` the peer would misread
    pytest.param({"type": "res", "id": 99, "body": None}, id="res-to-unsent-request"),
    pytest.param({"type": "err", "id": 99, "code": "x.y", "message": "m", "detail": {}},
                 id="err-to-unsent-request"),
    # a complaint about the stream as a whole: kept as the reason if the peer closes
    pytest.param({"type": "err", "id": None, "code": "protocol.bad_frame", "message": "m",
                  "detail": {}}, id="err-without-id"),
])
async def test_stray_answers_are_dropped_and_channel_stays_open(server: Server,
                                                                 obj: Any) -> None:
    async with raw_client(server) as client:
        await client.send(obj)
        await assert_still_open(client, 1)  # the next frame is the answer, nothing else
    await server.check_alive()


@pytest.mark.parametrize(("first", "code"), [
    pytest.param(lambda c: c.send(req(1)), "protocol.unexpected_message", id="request"),
    pytest.param(lambda c: c.send({"type": "bye", "reason": ""}),
                 "protocol.unexpected_message", id="bye"),
    pytest.param(lambda c: c.send(c.hello(agent="buyer.someone_else")),
                 "auth.hello_mismatch", id="hello-other-agent"),
    pytest.param(lambda c: c.send(c.hello(role="bank")), "auth.hello_mismatch",
                 id="hello-other-role"),
    pytest.param(lambda c: c.send(c.hello(version=PROTOCOL_VERSION + 1)),
                 "protocol.unsupported_version", id="hello-version-2"),
    pytest.param(lambda c: c.send(c.hello(version=0)), "protocol.unsupported_version",
                 id="hello-version-0"),
    pytest.param(lambda c: c.send(c.hello(limits={"max_frame": 16, "max_in_flight": 1})),
                 "protocol.bad_message", id="hello-limits-too-small"),
    pytest.param(lambda c: c.send(c.hello(agent=None)), "protocol.bad_message",
                 id="hello-no-agent"),
    pytest.param(lambda c: c.send_bytes(raw_frame(b"\xc1")), "protocol.bad_frame",
                 id="garbage"),
    pytest.param(lambda c: c.send_bytes(b"\x7f\xff\xff\xff"), "protocol.frame_too_large",
                 id="huge-prefix"),
])
async def test_bad_first_message_refuses_the_channel(server: Server, first: Any,
                                                     code: str) -> None:
    async with raw_client(server, send_hello=False) as client:
        await first(client)
        assert_err(await client.receive(), code, None)
        await client.expect_eof()
    await server.check_alive()


# -- the same refusals seen from the connecting side ---------------------------------


@pytest.mark.parametrize(("their_hello", "error"), [
    pytest.param({"agent": "seller.other"}, HelloMismatch, id="other-agent"),
    pytest.param({"role": "bank"}, HelloMismatch, id="other-role"),
    pytest.param({"version": 2}, UnsupportedVersion, id="version-2"),
    pytest.param({"type": "res", "id": 1}, UnexpectedMessage, id="not-hello"),
])
async def test_connecting_side_refuses_a_bad_hello(market: Market, their_hello: dict[str, Any],
                                                  error: type[TransportError]) -> None:
    ours = market.agent("buyer.one", "buyer")
    theirs = market.agent("seller.one", "seller")
    our_transport, their_transport = trio.testing.memory_stream_pair()
    stream = trio.SSLStream(our_transport, market.tls(ours).client, server_side=False)
    peer = trio.SSLStream(their_transport, market.tls(theirs).server, server_side=True)
    registry = ServiceRegistry()
    received: list[bytes] = []

    async def hostile_server() -> None:
        await peer.do_handshake()
        wire = market.hello(theirs, registry).to_wire() | their_hello
        await peer.send_all(encode_frame(wire))
        try:
            while data := await peer.receive_some(1 << 16):
                received.append(data)
        except trio.BrokenResourceError:
            pass  # the refusing side may close without close_notify

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(hostile_server)
            with pytest.raises(error):
                async with establish(stream, verify_peer=market.verifier(),
                                     expected_id="seller.one",
                                     hello=market.hello(ours, registry),
                                     registry=registry, config=ChannelConfig()):
                    pytest.fail("the channel must not open")
    # what the refusing side said before closing: its hello, then err with the code
    decoder = FrameDecoder()
    decoder.feed(b"".join(received))
    assert decoder.next_object()["type"] == "hello"
    assert_err(decoder.next_object(), error.code, None)


# -- concurrency ------------------------------------------------------------------------


@pytest.mark.parametrize("server_in_flight", [1024, 16])
async def test_thousand_concurrent_requests(market: Market, server_in_flight: int) -> None:
    n = 1000
    target = min(n, server_in_flight)
    state = {"active": 0, "max": 0}
    all_in = trio.Event()

    async def work(_ctx: RequestContext, body: Any) -> Any:
        state["active"] += 1
        state["max"] = max(state["max"], state["active"])
        if state["active"] >= target:
            all_in.set()
        await all_in.wait()  # hold until `target` handlers run at once
        state["active"] -= 1
        return {"n": body["n"], "square": body["n"] ** 2, "tag": body["tag"] + b"!"}

    registry = ServiceRegistry()
    registry.add_service("work")
    registry.add_op("work", "do", work)
    results: list[Any] = [None] * n
    async with channel_pair(market, server_registry=registry,
                            server_config=ChannelConfig(max_in_flight=server_in_flight)) as pair:

        async def one(i: int) -> None:
            results[i] = await pair.client.request("work", "do",
                                                   {"n": i, "tag": f"t{i}".encode()})

        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                for i in range(n):
                    nursery.start_soon(one, i)
        assert not pair.client.closed and not pair.server.closed
    assert results == [{"n": i, "square": i * i, "tag": f"t{i}!".encode()} for i in range(n)]
    # with room for all, all 1000 really were in flight at once; with 16, the client
    # waited for slots and the server never saw more than 16
    assert state["max"] == target


async def test_thousand_concurrent_requests_over_loopback(market: Market) -> None:
    async with running_server(market) as srv, srv.connect() as channel:
        results: dict[int, Any] = {}

        async def one(i: int) -> None:
            results[i] = await channel.request("echo", "echo", [i, str(i), bytes([i % 256])])

        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                for i in range(1000):
                    nursery.start_soon(one, i)
    assert results == {i: [i, str(i), bytes([i % 256])] for i in range(1000)}


async def test_frames_larger_than_default_limits_when_both_allow(market: Market) -> None:
    # Both sides announce max_frame = 4 MiB, so a 2 MiB body is within every limit
    # either side announced.
    config = ChannelConfig(max_frame=4 << 20, write_high_water=8 << 20)
    async with channel_pair(market, server_config=config, client_config=config) as pair:
        big = {"blob": b"\xab" * (2 << 20)}
        assert await pair.client.request("echo", "echo", big) == big


async def test_frame_over_peer_limit_is_refused_locally(market: Market) -> None:
    async with channel_pair(market) as pair:
        with pytest.raises(ValueError):
            await pair.client.request("echo", "echo", b"\x00" * (1 << 20))
        assert await pair.client.request("echo", "echo", "ok") == "ok"


# -- timeouts (autojump clock, memory streams) -------------------------------------


def elapsed_is(start: float, seconds: float) -> None:
    assert trio.current_time() - start == pytest.approx(seconds, abs=1e-6)


@pytest.mark.parametrize("we_are_server", [False, True], ids=["client", "server"])
@pytest.mark.parametrize("peer_does_tls", [False, True], ids=["silent", "tls-then-silent"])
async def test_handshake_timeout(market: Market, autojump_clock: Any, we_are_server: bool,
                                 peer_does_tls: bool) -> None:
    ours = market.agent("seller.one" if we_are_server else "buyer.one",
                        "seller" if we_are_server else "buyer")
    theirs = market.agent("buyer.one" if we_are_server else "seller.one",
                          "buyer" if we_are_server else "seller")
    our_transport, their_transport = trio.testing.memory_stream_pair()
    our_tls, their_tls = market.tls(ours), market.tls(theirs)
    stream = trio.SSLStream(our_transport, our_tls.server if we_are_server else our_tls.client,
                            server_side=we_are_server)
    peer = trio.SSLStream(their_transport,
                          their_tls.client if we_are_server else their_tls.server,
                          server_side=not we_are_server)
    registry = ServiceRegistry()
    async with trio.open_nursery() as nursery:
        if peer_does_tls:
            nursery.start_soon(peer.do_handshake)  # then never says hello
        start = trio.current_time()
        with pytest.raises(HandshakeTimeout):
            async with establish(stream, verify_peer=market.verifier(),
                                 expected_id=None if we_are_server else "seller.one",
                                 hello=market.hello(ours, registry), registry=registry,
                                 config=ChannelConfig(handshake_timeout=7)):
                pytest.fail("the channel must not open")
        elapsed_is(start, 7)
        if peer_does_tls:
            # the TLS part did finish: the time ran out waiting for the hello
            assert peer.getpeercert(binary_form=True)
        nursery.cancel_scope.cancel()


async def test_request_timeout(market: Market, autojump_clock: Any) -> None:
    registry = shop_registry()
    async with channel_pair(market, server_registry=registry,
                            client_config=ChannelConfig(request_timeout=5,
                                                        idle_timeout=math.inf)) as pair:
        start = trio.current_time()
        with pytest.raises(RequestTimeout) as info:
            await pair.client.request("shop", "never")
        elapsed_is(start, 5)
        assert info.value.detail == {"service": "shop", "op": "never"}
        start = trio.current_time()
        with pytest.raises(RequestTimeout):
            await pair.client.request("shop", "never", timeout=2.5)  # per call
        elapsed_is(start, 2.5)
        # the channel still works, at once
        start = trio.current_time()
        assert await pair.client.request("echo", "echo", "after") == "after"
        elapsed_is(start, 0)
        assert not pair.client.closed


async def test_late_answer_after_timeout_is_dropped(market: Market, autojump_clock: Any) -> None:
    done = trio.Event()

    async def slow(_ctx: RequestContext, body: Any) -> Any:
        await trio.sleep(10)  # virtual time
        done.set()
        return body

    registry = echo_registry()
    registry.add_service("slow")
    registry.add_op("slow", "op", slow)
    async with channel_pair(market, server_registry=registry,
                            client_config=ChannelConfig(request_timeout=5)) as pair:
        start = trio.current_time()
        with pytest.raises(RequestTimeout):
            await pair.client.request("slow", "op", "late")
        elapsed_is(start, 5)
        await done.wait()
        elapsed_is(start, 10)
        # the late `res` went out before this answer, so it has been read and dropped
        assert await pair.client.request("echo", "echo", "next") == "next"
        assert not pair.client.closed and not pair.server.closed


async def test_idle_timeout_closes_a_quiet_channel(market: Market, autojump_clock: Any) -> None:
    async with channel_pair(market, client_config=ChannelConfig(idle_timeout=60),
                            server_config=ChannelConfig(idle_timeout=math.inf)) as pair:
        start = trio.current_time()
        reason = await pair.client.wait_closed()
        elapsed_is(start, 60)
        assert isinstance(reason, IdleTimeout)
        assert reason.code == "timeout.idle"
        # the other side was told (bye), not left hanging
        other = await pair.server.wait_closed()
        elapsed_is(start, 60)
        assert isinstance(other, ChannelClosed)
        with pytest.raises(ChannelClosed):
            await pair.client.request("echo", "echo")


async def test_traffic_resets_the_idle_timer(market: Market, autojump_clock: Any) -> None:
    async with channel_pair(market, client_config=ChannelConfig(idle_timeout=60),
                            server_config=ChannelConfig(idle_timeout=math.inf)) as pair:
        start = trio.current_time()
        with trio.move_on_after(50):
            await pair.client.wait_closed()
        assert await pair.client.request("echo", "echo", 1) == 1  # traffic at t=50
        reason = await pair.client.wait_closed()
        assert isinstance(reason, IdleTimeout)
        elapsed_is(start, 110)


async def test_idle_timeout_waits_for_our_request_in_flight(market: Market,
                                                            autojump_clock: Any) -> None:
    async def hundred(_ctx: RequestContext, body: Any) -> Any:
        await trio.sleep(100)
        return body

    registry = echo_registry()
    registry.add_service("slow")
    registry.add_op("slow", "op", hundred)
    client_config = ChannelConfig(idle_timeout=60, request_timeout=math.inf)
    async with channel_pair(market, server_registry=registry, client_config=client_config,
                            server_config=ChannelConfig(idle_timeout=math.inf)) as pair:
        start = trio.current_time()
        assert await pair.client.request("slow", "op", "x") == "x"
        elapsed_is(start, 100)
        assert not pair.client.closed and not pair.server.closed
        assert isinstance(await pair.client.wait_closed(), IdleTimeout)
        elapsed_is(start, 160)  # 60 s after the answer, the last thing received


async def test_idle_timeout_waits_for_a_handler_in_flight(market: Market,
                                                          autojump_clock: Any) -> None:
    async def hundred(_ctx: RequestContext, body: Any) -> Any:
        await trio.sleep(100)
        return body

    registry = echo_registry()
    registry.add_service("slow")
    registry.add_op("slow", "op", hundred)
    async with channel_pair(market, server_registry=registry,
                            server_config=ChannelConfig(idle_timeout=60),
                            client_config=ChannelConfig(idle_timeout=math.inf,
                                                        request_timeout=math.inf)) as pair:
        start = trio.current_time()
        assert await pair.client.request("slow", "op", "x") == "x"
        elapsed_is(start, 100)
        assert not pair.server.closed
        assert isinstance(await pair.server.wait_closed(), IdleTimeout)
        # idleness is counted afresh from when the timer found the handler busy (t=60)
        assert 100 <= trio.current_time() - start <= 160


# -- notes, bye, close ---------------------------------------------------------------------


async def test_notes_are_delivered_in_order(market: Market) -> None:
    n = 500
    got: list[int] = []
    all_here = trio.Event()

    async def record(_ctx: RequestContext, body: Any) -> None:
        if body % 7 == 0:
            await trio.lowlevel.checkpoint()  # a slow handler must not reorder notes
        if body % 50 == 0:
            got.append(body)
            raise RuntimeError("a failing note handler does not stop later notes")
        got.append(body)
        if len(got) == n:
            all_here.set()

    registry = echo_registry()
    registry.add_service("feed")
    registry.add_note("feed", "item", record)
    async with channel_pair(market, server_registry=registry) as pair:
        with trio.fail_after(30):
            for i in range(n):
                await pair.client.notify("feed", "item", i)
                if i == 10:
                    await pair.client.notify("nope", "item", i)  # unknown: dropped
            await all_here.wait()
        assert got == list(range(n))
        assert await pair.client.request("echo", "echo", "after") == "after"


async def test_bye_closes_both_sides_and_fails_pending(market: Market) -> None:
    registry = shop_registry()
    async with channel_pair(market, server_registry=registry,
                            client_registry=shop_registry()) as pair:
        errors: dict[str, BaseException] = {}

        async def pending(name: str, channel: Any) -> None:
            try:
                await channel.request("shop", "never")
            except TransportError as exc:
                errors[name] = exc

        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(pending, "client", pair.client)
                nursery.start_soon(pending, "server", pair.server)
                await trio.testing.wait_all_tasks_blocked()
                await pair.client.aclose("done shopping")
            assert pair.client.closed and pair.server.closed
            reason = await pair.server.wait_closed()
        assert isinstance(errors["client"], ChannelClosed)
        assert isinstance(errors["server"], ChannelClosed)
        assert isinstance(reason, ChannelClosed) and "done shopping" in str(reason)
        for channel in (pair.client, pair.server):
            with pytest.raises(ChannelClosed):
                await channel.request("echo", "echo")
            with pytest.raises(ChannelClosed):
                await channel.notify("echo", "echo")


async def test_aclose_is_idempotent(market: Market) -> None:
    async with channel_pair(market) as pair:
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(pair.client.aclose)
                nursery.start_soon(pair.client.aclose)
            await pair.client.aclose()
            await pair.server.aclose()
            await pair.server.aclose()
        assert isinstance(pair.client.close_reason, ChannelClosed)
        assert pair.client.close_reason is await pair.client.wait_closed()


async def test_peer_vanishing_fails_pending_requests(market: Market) -> None:
    async with channel_pair(market, server_registry=shop_registry()) as pair:
        errors: list[BaseException] = []

        async def pending() -> None:
            try:
                await pair.client.request("shop", "never")
            except TransportError as exc:
                errors.append(exc)

        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(pending)
                await trio.testing.wait_all_tasks_blocked()
                await pair.server_transport.aclose()  # no bye, no close_notify
            assert isinstance(await pair.client.wait_closed(), ChannelClosed)
            await pair.server.wait_closed()
        assert len(errors) == 1 and isinstance(errors[0], ChannelClosed)


async def test_protocol_errors_have_protocol_codes() -> None:
    # every err code a peer can trigger is a ProtocolError's stable code
    codes = [cls.code for cls in transport_error_classes()]
    assert len(codes) == len(set(codes)), "codes are never reused"
    assert all(cls.code.startswith("protocol.")
               for cls in transport_error_classes() if issubclass(cls, ProtocolError))


def test_channel_config_validates() -> None:
    for bad in ({"handshake_timeout": 0}, {"request_timeout": -1}, {"idle_timeout": 0},
                {"max_in_flight": 0}, {"max_frame": 8}):
        with pytest.raises(ValueError):
            ChannelConfig(**bad)  # type: ignore[arg-type]
