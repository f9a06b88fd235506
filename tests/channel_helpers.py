"""Plumbing for the transport tests: channel pairs, a real server, raw TLS peers.

``channel_pair`` runs two real channels (real certificates, real TLS 1.3, the
production ``TlsStream``) over ``trio.testing.memory_stream_pair``, so it works
under the autojump clock.
``running_server`` runs ``serve`` on 127.0.0.1 port 0; ``RawClient`` completes the
TLS handshake against it and then writes whatever bytes a test wants.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import trio
import trio.testing
from pki import Market, TestAgent

from semper.transport import (
    NEED_DATA,
    Channel,
    ChannelConfig,
    FrameDecoder,
    RequestContext,
    ServiceRegistry,
    encode_frame,
    establish,
    open_channel,
    serve,
)
from semper.transport._tls_stream import TlsStream

#: Bound on every wait on a real socket, so a bug fails the test instead of hanging it.
REAL_WAIT = 10.0


async def echo(_ctx: RequestContext, body: Any) -> Any:
    return body


async def whoami(ctx: RequestContext, _body: Any) -> Any:
    return ctx.peer.agent_id


def echo_registry() -> ServiceRegistry:
    """A registry with ``echo.echo`` (returns the body) and ``echo.whoami``."""
    registry = ServiceRegistry()
    registry.add_service("echo")
    registry.add_op("echo", "echo", echo)
    registry.add_op("echo", "whoami", whoami)
    return registry


def raw_frame(body: bytes) -> bytes:
    """A frame with an arbitrary body: the length prefix, then the bytes as given."""
    return len(body).to_bytes(4, "big") + body


# -- two channels over memory streams ----------------------------------------------


@dataclass
class Pair:
    client: Channel
    server: Channel
    client_agent: TestAgent
    server_agent: TestAgent
    #: the memory streams under the TLS streams, for faults (abrupt close etc.)
    client_transport: trio.abc.Stream
    server_transport: trio.abc.Stream


@asynccontextmanager
async def channel_pair(
    market: Market,
    *,
    server_registry: ServiceRegistry | None = None,
    client_registry: ServiceRegistry | None = None,
    server_config: ChannelConfig | None = None,
    client_config: ChannelConfig | None = None,
) -> AsyncIterator[Pair]:
    """Two established channels (client ``buyer.one``, server ``seller.one``).

    Both ``establish`` calls run in tasks of their own (each needs the other to
    progress); the body runs once both have their channel. Leaving the block closes
    both channels.
    """
    client_agent = market.agent("buyer.one", "buyer")
    server_agent = market.agent("seller.one", "seller")
    server_registry = server_registry if server_registry is not None else echo_registry()
    client_registry = client_registry if client_registry is not None else ServiceRegistry()
    server_config = server_config or ChannelConfig()
    client_config = client_config or ChannelConfig()
    client_transport, server_transport = trio.testing.memory_stream_pair()
    channels: dict[str, Channel] = {}
    ready = {"client": trio.Event(), "server": trio.Event()}
    release = trio.Event()

    async def side(name: str, stream: TlsStream, agent: TestAgent,
                   expected: str | None, registry: ServiceRegistry,
                   config: ChannelConfig) -> None:
        async with establish(stream, verify_peer=market.verifier(), expected_id=expected,
                             hello=market.hello(agent, registry, config), registry=registry,
                             config=config) as channel:
            channels[name] = channel
            ready[name].set()
            await release.wait()

    # The production stream, on its generic path (no socket: send_all/receive_some).
    client_tls = TlsStream(client_transport, market.tls(client_agent).client,
                           server_side=False)
    server_tls = TlsStream(server_transport, market.tls(server_agent).server,
                           server_side=True)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(side, "client", client_tls, client_agent, server_agent.agent_id,
                           client_registry, client_config)
        nursery.start_soon(side, "server", server_tls, server_agent, None,
                           server_registry, server_config)
        await ready["client"].wait()
        await ready["server"].wait()
        try:
            yield Pair(channels["client"], channels["server"], client_agent, server_agent,
                       client_transport, server_transport)
        finally:
            release.set()


# -- a real server on loopback -------------------------------------------------------


@dataclass
class Server:
    market: Market
    agent: TestAgent
    host: str
    port: int
    registry: ServiceRegistry
    clients: int = field(default=0)

    def new_agent(self) -> TestAgent:
        self.clients += 1
        return self.market.agent(f"buyer.c{self.clients}", "buyer")

    @asynccontextmanager
    async def connect(self, config: ChannelConfig | None = None) -> AsyncIterator[Channel]:
        """A well-behaved client channel from a fresh agent."""
        agent = self.new_agent()
        async with open_channel(self.host, self.port, tls=self.market.tls(agent),
                                verify_peer=self.market.verifier(),
                                expected_id=self.agent.agent_id,
                                hello=self.market.hello(agent, ServiceRegistry(), config),
                                config=config) as channel:
            yield channel

    async def check_alive(self) -> None:
        """The server still answers a fresh, well-behaved client."""
        with trio.fail_after(REAL_WAIT):
            async with self.connect() as channel:
                assert await channel.request("echo", "echo", {"ping": b"\x00"}) == {
                    "ping": b"\x00"}


@asynccontextmanager
async def running_server(
    market: Market,
    registry: ServiceRegistry | None = None,
    config: ChannelConfig | None = None,
    handler: Callable[[Channel], Awaitable[None]] | None = None,
) -> AsyncIterator[Server]:
    """``serve`` on 127.0.0.1, a free port, as ``seller.one``; cancelled on exit."""
    agent = market.agent("seller.one", "seller")
    registry = registry if registry is not None else echo_registry()
    async with trio.open_nursery() as nursery:
        host, port = await nursery.start(partial(
            serve, "127.0.0.1", 0, tls=market.tls(agent), verify_peer=market.verifier(),
            hello=market.hello(agent, registry, config), registry=registry, config=config,
            handler=handler))
        yield Server(market, agent, host, port, registry)
        nursery.cancel_scope.cancel()


class RawClient:
    """A TLS 1.3 client with a valid certificate that writes arbitrary frames."""

    def __init__(self, stream: trio.SSLStream[Any], agent: TestAgent,
                 hello: dict[str, Any]) -> None:
        self.stream = stream
        self.agent = agent
        self.decoder = FrameDecoder()
        self._hello = hello

    async def send_bytes(self, data: bytes) -> None:
        with trio.fail_after(REAL_WAIT):
            await self.stream.send_all(data)

    async def send(self, obj: Any) -> None:
        await self.send_bytes(encode_frame(obj))

    async def receive(self) -> Any:
        """The next whole frame from the server, decoded."""
        with trio.fail_after(REAL_WAIT):
            while (obj := self.decoder.next_object()) is NEED_DATA:
                data = await self.stream.receive_some(1 << 16)
                assert data, "the server closed the connection instead of answering"
                self.decoder.feed(data)
        return obj

    async def expect_eof(self) -> None:
        """The server closes the connection and sends nothing more."""
        assert self.decoder.next_object() is NEED_DATA, "unexpected frame before EOF"
        with trio.fail_after(REAL_WAIT):
            try:
                data = await self.stream.receive_some(1 << 16)
            except trio.BrokenResourceError:
                return  # closed without close_notify: still closed
            assert data == b"", f"expected EOF, got {data!r}"

    def hello(self, **changes: Any) -> dict[str, Any]:
        """Our valid hello as a wire map, with ``changes`` applied."""
        return {**self._hello, **changes}


@asynccontextmanager
async def raw_client(server: Server, *, send_hello: bool = True) -> AsyncIterator[RawClient]:
    """Connect, finish TLS, read the server's hello, and (by default) send ours."""
    agent = server.new_agent()
    with trio.fail_after(REAL_WAIT):
        tcp = await trio.open_tcp_stream(server.host, server.port)
        stream = trio.SSLStream(tcp, server.market.tls(agent).client, server_side=False)
        await stream.do_handshake()
    client = RawClient(stream, agent, server.market.hello(agent, ServiceRegistry()).to_wire())
    try:
        their_hello = await client.receive()
        assert their_hello["type"] == "hello"
        assert their_hello["agent"] == server.agent.agent_id
        if send_hello:
            await client.send(client.hello())
        yield client
    finally:
        await trio.aclose_forcefully(stream)
