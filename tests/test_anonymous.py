"""One request without a client certificate (transport/_anonymous.py): real TLS 1.3
over loopback, the server pinned by its certificate's SHA-256."""

from __future__ import annotations

import functools
import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import pytest
import trio
from cryptography.hazmat.primitives import serialization
from pki import Market

from semper.transport import (
    NEED_DATA,
    FrameDecoder,
    HandshakeFailed,
    RemoteError,
    Request,
    ServiceRegistry,
    TlsConfig,
    TlsContexts,
    encode_frame,
    pinned_client_context,
    request_pinned,
    serve,
    serve_anonymous,
)
from semper.transport._tls_stream import TlsStream

if TYPE_CHECKING:  # imported by name, pytest would try to collect it
    from pki import TestAgent

DEADLINE = 10


class Refused(Exception):
    code = "test.refused"
    wire = True

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _config(market: Market, agent: TestAgent) -> TlsConfig:
    return TlsConfig(cert_path=agent.cert_path, key_path=agent.key_path,
                     root_pem=market.root_pem, crl_pem=market.crl_pem)


@asynccontextmanager
async def anonymous_server(market: Market, seen: list[Request]
                           ) -> AsyncIterator[tuple[int, bytes]]:
    server = market.agent("ca", "ca")

    async def handler(request: Request) -> Any:
        seen.append(request)
        if request.op == "refuse":
            raise Refused("no")
        if request.op == "crash":
            raise RuntimeError("a bug")
        return {"echo": request.body, "op": request.op}

    async with trio.open_nursery() as nursery:
        _, port = await nursery.start(functools.partial(
            serve_anonymous, "127.0.0.1", 0, context=_config(market, server).server_only_context(),
            handler=handler, timeout=DEADLINE))
        yield port, hashlib.sha256(server.cert.public_bytes(serialization.Encoding.DER)).digest()
        nursery.cancel_scope.cancel()


def _pin(expected: bytes):
    def check(der: bytes) -> None:
        if hashlib.sha256(der).digest() != expected:
            raise Refused("not the pinned server")
    return check


async def test_one_request_one_answer(market: Market) -> None:
    seen: list[Request] = []
    async with anonymous_server(market, seen) as (port, pin):
        with trio.fail_after(DEADLINE):
            answer = await request_pinned("127.0.0.1", port, check_server=_pin(pin),
                                          service="enroll", op="request", body=b"csr")
            assert answer == {"echo": b"csr", "op": "request"}
            with pytest.raises(RemoteError) as refused:
                await request_pinned("127.0.0.1", port, check_server=_pin(pin),
                                     service="enroll", op="refuse", body=None)
            assert (refused.value.code, refused.value.message) == ("test.refused", "no")
            with pytest.raises(RemoteError) as crashed:  # the peer learns only the code
                await request_pinned("127.0.0.1", port, check_server=_pin(pin),
                                     service="enroll", op="crash", body=None)
            assert crashed.value.code == "internal.error"
    assert [r.op for r in seen] == ["request", "refuse", "crash"]


async def test_a_wrong_pin_sends_nothing(market: Market) -> None:
    seen: list[Request] = []
    async with anonymous_server(market, seen) as (port, _):
        with trio.fail_after(DEADLINE), pytest.raises(Refused):
            await request_pinned("127.0.0.1", port, check_server=_pin(b"\0" * 32),
                                 service="enroll", op="request", body=b"secret proof")
        await trio.testing.wait_all_tasks_blocked()
    assert seen == []


@pytest.mark.parametrize(("frames", "code"), [
    ([b"\x00\x00\x00\x01\xc1"], "protocol.bad_frame"),           # 0xc1 is never msgpack
    ([b"\xff\xff\xff\xff"], "protocol.frame_too_large"),         # refused from the prefix
    ([encode_frame({"type": "res", "id": 1, "body": None})], "protocol.unexpected_message"),
    ([encode_frame({"type": "req", "id": 1, "service": 5, "op": "x"})], "protocol.bad_message"),
])
async def test_garbage_is_answered_with_err_and_never_reaches_the_handler(
        market: Market, frames: list[bytes], code: str) -> None:
    seen: list[Request] = []
    async with anonymous_server(market, seen) as (port, _):
        with trio.fail_after(DEADLINE):
            stream = TlsStream(await trio.open_tcp_stream("127.0.0.1", port),
                               pinned_client_context(), server_side=False)
            await stream.do_handshake()
            for frame in frames:
                await stream.send_all(frame)
            decoder = FrameDecoder()
            while (answer := decoder.next_object()) is NEED_DATA:
                decoder.feed(await stream.receive_some())
            assert answer["type"] == "err" and answer["code"] == code
            assert await stream.receive_some() == b""  # then the server closes
            await stream.aclose()
    assert seen == []


async def test_the_channel_listener_still_requires_a_client_certificate(market: Market) -> None:
    """A client without a certificate gets nowhere on an ordinary listener."""
    server = market.agent("seller", "seller")
    async with trio.open_nursery() as nursery:
        _, port = await nursery.start(functools.partial(
            serve, "127.0.0.1", 0, tls=TlsContexts(_config(market, server)),
            verify_peer=market.verifier(), hello=market.hello(server, ServiceRegistry()),
            registry=ServiceRegistry()))
        with trio.fail_after(DEADLINE), pytest.raises(HandshakeFailed, match="certificate"):
            await request_pinned("127.0.0.1", port, check_server=lambda der: None,
                                 service="sys", op="ping", body=None)
        nursery.cancel_scope.cancel()
