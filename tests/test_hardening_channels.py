"""Issue 7, kinds 1-3 on the channels: authentication re-checked whenever it could
have changed, one connection's failure never reaching the agent, and bounded
resources against a peer that misbehaves. Real TLS 1.3 (memory streams where the
clock must be virtual, loopback sockets and real agents where it need not be)."""

from __future__ import annotations

import logging
import socket
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from channel_helpers import (
    REAL_WAIT,
    channel_pair,
    echo_registry,
    raw_client,
    running_server,
)
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from market_helpers import DEADLINE, config_of, make_market, running
from pki import Market

from semper.agents.operator._market import revoke_agent
from semper.agents.runtime._agent import Agent
from semper.agents.runtime._identity import Credentials
from semper.transport import (
    NEED_DATA,
    ChannelClosed,
    ChannelConfig,
    FrameDecoder,
    RemoteError,
    RequestContext,
    ServiceRegistry,
    TlsContexts,
    encode_frame,
    make_hello,
)
from semper.transport._channel import ERR_MAX_MESSAGE, error_wire


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return make_market(tmp_path / "market")


class EpochVerifier:
    """The test market's verifier, with the epoch an agent's verifier has."""

    def __init__(self, market: Market) -> None:
        self._verify = market.verifier()
        self.epoch = 0

    def __call__(self, der: bytes, expected: str | None) -> Any:
        return self._verify(der, expected)


# -- kind 1: authentication is re-checked whenever it could have changed -------------


async def _tls_as(folder: Path, agent_id: str, address: tuple[str, int]) -> trio.SSLStream:
    """A TLS 1.3 connection with ``agent_id``'s real credentials, handshake done."""
    config = config_of(folder, agent_id)
    credentials = Credentials.load(cert=config.cert, key=config.key, root=config.ca_root,
                                   crl=config.crl)
    context = TlsContexts(credentials.tls_config()).client
    tcp = await trio.open_tcp_stream(*address)
    stream = trio.SSLStream(tcp, context, server_side=False)
    await stream.do_handshake()
    return stream


async def _next_frame(stream: trio.SSLStream, decoder: FrameDecoder) -> Any:
    """The next frame, or None at EOF."""
    with trio.fail_after(REAL_WAIT):
        while (obj := decoder.next_object()) is NEED_DATA:
            try:
                data = await stream.receive_some(1 << 16)
            except trio.BrokenResourceError:
                return None
            if not data:
                return None
            decoder.feed(data)
    return obj


def _hello_of(folder: Path, agent_id: str, role: str) -> dict[str, Any]:
    return make_hello(agent_id, role, ServiceRegistry(), ChannelConfig()).to_wire()


async def test_hello_sent_after_a_revocation_is_refused(folder: Path) -> None:
    # The instance: TLS done, hello withheld, the CA revokes the peer, the agent
    # applies the CRL, then the hello comes: it must be checked against that CRL.
    bank = Agent(config_of(folder, "bank"))
    async with running(bank):
        assert bank.address is not None
        stream = await _tls_as(folder, "seller", bank.address)
        decoder = FrameDecoder()
        try:
            assert (await _next_frame(stream, decoder))["type"] == "hello"  # bank waits
            crl = revoke_agent(folder, "seller")
            assert bank.apply_crl((folder / "ca" / "crl.pem").read_bytes())
            assert bank.crl.get_revoked_certificate_by_serial_number(
                crl[0].serial_number) is not None
            await stream.send_all(encode_frame(_hello_of(folder, "seller", "seller")))
            await stream.send_all(encode_frame(
                {"type": "req", "id": 1, "service": "bank", "op": "account", "body": {}}))
            refusal = await _next_frame(stream, decoder)
            assert refusal is not None and refusal["type"] == "err"
            assert (refusal["id"], refusal["code"]) == (None, "auth.revoked")
            assert await _next_frame(stream, decoder) is None  # closed, nothing served
        finally:
            await trio.aclose_forcefully(stream)


async def test_open_channel_is_closed_and_its_handlers_cancelled_on_revocation(
        folder: Path) -> None:
    # Another state: open, with a request in progress when the CRL comes.
    seller = Agent(config_of(folder, "seller"))
    started, cancelled = trio.Event(), trio.Event()

    async def slow(_ctx: RequestContext, _body: Any) -> Any:
        started.set()
        try:
            await trio.sleep_forever()
        finally:
            cancelled.set()

    seller.registry.add_service("slow")
    seller.registry.add_op("slow", "wait", slow)
    buyer = Agent(config_of(folder, "buyer"))
    async with running(seller), running(buyer):
        channel = await buyer.channel("seller")
        async with trio.open_nursery() as nursery:
            outcome: list[BaseException] = []

            async def call() -> None:
                try:
                    await channel.request("slow", "wait")
                except (RemoteError, ChannelClosed) as exc:
                    outcome.append(exc)

            nursery.start_soon(call)
            with trio.fail_after(DEADLINE):
                await started.wait()
                revoke_agent(folder, "buyer")
                assert seller.apply_crl((folder / "ca" / "crl.pem").read_bytes())
                await cancelled.wait()  # the handler did not run on
                await channel.wait_closed()
        assert len(outcome) == 1


async def test_a_channel_checks_its_peer_again_before_the_next_frame(market: Market) -> None:
    # The member in between: established, not yet known to any list of channels that
    # a CRL update walks. The verifier's epoch alone makes the next frame re-check.
    verifier = EpochVerifier(market)
    registry = echo_registry()
    async with channel_pair(market, server_registry=registry) as pair:
        pair.server._verify = pair.server._epochs = verifier  # as establish would
        assert await pair.client.request("echo", "echo", 1) == 1
        market.revoke(pair.client_agent)
        verifier._verify = market.verifier()  # reads the new CRL
        verifier.epoch += 1
        with trio.fail_after(REAL_WAIT), pytest.raises(ChannelClosed) as refused:
            await pair.client.request("echo", "echo", 2)
        assert refused.value.detail["reason"] == "auth.revoked"
        assert (await pair.server.wait_closed()).code == "auth.revoked"


async def test_our_own_requests_to_a_revoked_peer_are_not_sent(market: Market) -> None:
    # The outbound direction: the client checks the server before sending.
    verifier = EpochVerifier(market)
    served: list[Any] = []

    async def record(_ctx: RequestContext, body: Any) -> Any:
        served.append(body)
        return body

    registry = ServiceRegistry()
    registry.add_service("echo")
    registry.add_op("echo", "echo", record)
    async with channel_pair(market, server_registry=registry) as pair:
        pair.client._verify = pair.client._epochs = verifier
        assert await pair.client.request("echo", "echo", 1) == 1
        market.revoke(pair.server_agent)
        verifier._verify = market.verifier()
        verifier.epoch += 1
        with pytest.raises(ChannelClosed):
            await pair.client.request("echo", "echo", 2)
        assert served == [1]


# -- kind 2: one connection's failure never reaches the agent -----------------------


def test_an_err_always_encodes() -> None:
    class Relayed(Exception):
        def __init__(self) -> None:
            self.code = "x" * 100_000  # a peer's code, passed on
            self.message = "m" * 2_000_000
            self.detail = {"blob": b"\x00" * 3_000_000}

    wire = error_wire(7, Relayed())
    frame = encode_frame(wire)
    assert len(frame) < 4096  # inside the smallest max_frame a peer may announce
    assert wire["code"] == "internal.error" and wire["id"] == 7
    assert len(wire["message"]) <= ERR_MAX_MESSAGE + 3

    class Surrogate(Exception):
        code = "shop.bad"
        message = "bad \udcff"

    assert encode_frame(error_wire(None, Surrogate()))


async def test_an_unencodable_refusal_closes_one_channel_and_the_agent_lives(
        folder: Path, market: Market, caplog: pytest.LogCaptureFixture) -> None:
    # The instance: the seller dials "the bank" (really the buyer, named as bank in a
    # cheque); it answers with a frame whose refusal cannot be encoded as it was
    # (a `type` whose repr is over 1 MiB). Here the fake bank is a raw TLS server
    # holding the buyer's real credentials.
    buyer_config = config_of(folder, "buyer")
    credentials = Credentials.load(cert=buyer_config.cert, key=buyer_config.key,
                                   root=buyer_config.ca_root, crl=buyer_config.crl)
    server_context = TlsContexts(credentials.tls_config()).server
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    poisoned = {"type": "\x00" * 300_000, "id": 1}

    async def fake_bank(tcp: trio.SocketStream) -> None:
        stream = trio.SSLStream(tcp, server_context, server_side=True)
        decoder = FrameDecoder()
        try:
            await stream.do_handshake()
            await stream.send_all(encode_frame(_hello_of(folder, "buyer", "buyer")))
            while True:
                obj = await _next_frame(stream, decoder)
                if obj is None:
                    return
                if obj.get("type") == "req":
                    await stream.send_all(encode_frame(poisoned))
                    # The seller refuses the frame (an `err` it can now encode) and
                    # carries on; we hang up so that its request ends.
                    refusal = await _next_frame(stream, decoder)
                    assert refusal is not None and refusal["code"] == "protocol.bad_message"
                    assert len(refusal["message"]) < 1000
                    return
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    seller = Agent(config_of(folder, "seller", peers={
        **config_of(folder, "seller").peers, "buyer": f"127.0.0.1:{port}"}))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, fake_bank, listeners)
        async with running(seller):
            with trio.fail_after(DEADLINE):
                with pytest.raises((ChannelClosed, RemoteError)):
                    await seller.request("buyer", "bank", "deposit_cheque", {})
                # The agent lives and serves others.
                async with Agent(config_of(folder, "bank")).session() as bank:
                    pong = await bank.request("seller", "sys", "ping", b"alive")
                    assert pong["echo"] == b"alive"
        nursery.cancel_scope.cancel()


async def test_a_handler_relaying_a_huge_remote_error_answers_and_the_channel_lives(
        market: Market) -> None:
    # Another member: a handler that passes on a peer's RemoteError.
    async def relay(_ctx: RequestContext, _body: Any) -> Any:
        raise RemoteError("q" * 200_000, "m" * 900_000, detail={"x": "y" * 900_000})

    registry = echo_registry()
    registry.add_service("relay")
    registry.add_op("relay", "it", relay)
    async with channel_pair(market, server_registry=registry) as pair:
        with pytest.raises(RemoteError) as err:
            await pair.client.request("relay", "it")
        assert err.value.code == "internal.error"
        assert await pair.client.request("echo", "echo", "still") == "still"


# -- kind 3: bounded resources --------------------------------------------------------


async def test_a_note_never_runs_a_request_handler(market: Market) -> None:
    # The instance: a `note` naming a request op ran that handler.
    calls: list[Any] = []

    async def pay(_ctx: RequestContext, body: Any) -> Any:
        calls.append(body)
        return body

    registry = echo_registry()
    registry.add_service("shop")
    registry.add_op("shop", "pay", pay)
    async with channel_pair(market, server_registry=registry) as pair:
        for i in range(5):
            await pair.client.notify("shop", "pay", i)
        assert await pair.client.request("echo", "echo", "sync") == "sync"
        assert calls == []
        assert await pair.client.request("shop", "pay", 9) == 9
        assert calls == [9]


async def test_what_one_peer_makes_us_log_is_bounded(
        market: Market, caplog: pytest.LogCaptureFixture) -> None:
    # Another member of "bounded against a misbehaving peer": log volume.
    async def boom(_ctx: RequestContext, _body: Any) -> Any:
        raise RuntimeError("a bug")

    registry = echo_registry()
    registry.add_service("bug")
    registry.add_op("bug", "boom", boom)
    async with channel_pair(market, server_registry=registry) as pair:
        with caplog.at_level(logging.INFO, logger="semper.transport"):
            for _ in range(300):
                with pytest.raises(RemoteError):
                    await pair.client.request("bug", "boom")
                await pair.client.notify("nope", "nothing")
        assert await pair.client.request("echo", "echo", 1) == 1
    assert len(caplog.records) <= 25


async def test_a_peer_that_never_reads_is_bounded_and_closed_by_the_write_deadline(
        market: Market) -> None:
    # The instance: requests sent, answers never read. The server stops handling and
    # reading once its queue is past the high-water mark, and the write deadline
    # closes the channel.
    served = 0
    queued: list[int] = []

    async def big(ctx: RequestContext, body: Any) -> Any:
        nonlocal served
        served += 1
        queued.append(ctx.channel._outq_bytes)
        return b"a" * 65536

    registry = echo_registry()
    registry.add_service("big")
    registry.add_op("big", "one", big)
    high_water, in_flight = 1 << 18, 8
    config = ChannelConfig(write_timeout=0.5, write_high_water=high_water, close_timeout=0.5,
                           max_in_flight=in_flight)
    closed: list[Any] = []
    done = trio.Event()

    async def handler(channel: Any) -> None:
        closed.append(await channel.wait_closed())
        done.set()

    async with running_server(market, registry, config, handler=handler) as server:
        async with raw_client(server) as client:
            # Small kernel buffers on our side so that "never reads" shows quickly.
            sock = client.stream.transport_stream.socket
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)
            started = trio.current_time()
            with trio.move_on_after(REAL_WAIT):
                try:
                    for chunk in range(250):  # 2000 requests, in-flight limit respected
                        await client.stream.send_all(b"".join(
                            encode_frame({"type": "req", "id": chunk * 8 + i, "service": "big",
                                          "op": "one", "body": None})
                            for i in range(1, 9)))
                except trio.BrokenResourceError:
                    pass
                await done.wait()
            took = trio.current_time() - started
    assert closed and closed[0].code == "timeout.write"
    # 2000 answers of 64 KiB would be 125 MiB queued; the queue stays within the
    # high-water mark plus the answers of requests already running.
    assert max(queued) <= high_water + in_flight * 65600, max(queued)
    assert served < 2000
    assert took < 0.5 + 0.5 + 3.0  # write deadline + close deadline + slack


async def test_unauthenticated_connections_are_capped_and_the_oldest_dropped(
        market: Market) -> None:
    config = ChannelConfig(max_unauthenticated=8)
    async with running_server(market, config=config) as server:
        idle = []
        try:
            for _ in range(20):
                idle.append(await trio.open_tcp_stream(server.host, server.port))
            # A peer that completes its handshake still gets in.
            with trio.fail_after(REAL_WAIT):
                await server.check_alive()
            # The oldest idle ones were closed by the server.
            with trio.fail_after(REAL_WAIT):
                assert await idle[0].receive_some(1) == b""
            assert server.registry is not None
        finally:
            for stream in idle:
                await trio.aclose_forcefully(stream)


async def test_accept_backs_off_when_out_of_descriptors(
        market: Market, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    import errno

    failures = 3
    original = trio.SocketListener.accept

    async def accept(self: trio.SocketListener) -> trio.SocketStream:
        nonlocal failures
        if failures:
            failures -= 1
            await trio.lowlevel.checkpoint()
            raise OSError(errno.EMFILE, "Too many open files")
        return await original(self)

    monkeypatch.setattr(trio.SocketListener, "accept", accept)
    with caplog.at_level(logging.INFO, logger="semper.transport"):
        async with running_server(market) as server:
            with trio.fail_after(REAL_WAIT):
                await server.check_alive()
    assert failures == 0
    warnings = [r for r in caplog.records if "backing off" in r.getMessage()]
    assert len(warnings) == 1  # once per episode, not per failure


async def test_a_crl_that_cannot_reach_tls_is_applied_and_retried(
        folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The instance: out of descriptors, building the new TLS contexts raises OSError
    # and killed the agent. Now the CRL applies to every peer check at once and TLS
    # follows when it can.
    bank = Agent(config_of(folder, "bank"))
    calls = 0
    original = TlsContexts.update_crl

    def update_crl(self: TlsContexts, pem: bytes) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise OSError(24, "Too many open files")
        original(self, pem)

    monkeypatch.setattr(TlsContexts, "update_crl", update_crl)
    async with running(bank):
        revoke_agent(folder, "buyer")
        assert bank.apply_crl((folder / "ca" / "crl.pem").read_bytes())
        assert bank._tls_crl_pending is not None and calls == 1
        buyer_der = x509.load_pem_x509_certificate(
            (folder / "buyer" / "cert.pem").read_bytes()).public_bytes(Encoding.DER)
        with pytest.raises(Exception) as refused:
            bank.verify_peer(buyer_der, "buyer")  # the peer check has the CRL already
        assert getattr(refused.value, "code", None) == "auth.revoked"
        bank.retry_tls_update()
        assert bank._tls_crl_pending is None and calls == 2
        async with Agent(config_of(folder, "seller")).session() as seller:
            pong = await seller.request("bank", "sys", "ping", b"x")
            assert pong["echo"] == b"x"


def test_resource_bounds_measured_on_a_real_agent_process() -> None:
    # The "Done when" figures, on a real `semper agent run` process (bench/hardening.py,
    # smaller numbers): a peer that never reads, idle unauthenticated connections, and
    # a 1,024 open-file limit with 1,100 idle connections and a CRL update.
    import json
    import subprocess
    import sys

    bench = Path(__file__).resolve().parent.parent / "bench" / "hardening.py"
    done = subprocess.run([sys.executable, str(bench), "--json", "--quick"],
                          capture_output=True, text=True, timeout=240, check=True)
    report = json.loads(done.stdout)
    never = report["never_reads"]
    assert never["closed"] and never["agent_alive"]
    assert never["rss_increase_mib"] < 32  # the queue bound plus buffers, not GiB
    assert never["closed_after_s"] < never["write_timeout_s"] + 5
    idle = report["idle_unauth"]
    assert idle["agent_alive"] and idle["rss_increase_mib"] < 100
    assert idle["ping_during_max_ms"] < 1000
    fd = report["fd_limit"]
    assert fd["agent_alive"] and fd["established_channel_ok"] and fd["crl_applied"]
    assert fd["tracebacks_in_log"] == 0


async def test_open_channels_are_refused_when_our_crl_goes_stale_while_running(
        tmp_path: Path) -> None:
    # Another member of kind 1: nothing new arrives, but what the check answers
    # changes with time (our CRL passes its nextUpdate and no CA agent renews it).
    import dataclasses
    import datetime as dt

    from semper.agents.operator._market import init_market
    from semper.agents.runtime._config import Timeouts
    from semper.services.certificates import CRL_VALIDITY

    folder = tmp_path / "market"
    init_market(folder, now=dt.datetime.now(dt.UTC) - CRL_VALIDITY + dt.timedelta(seconds=3))
    fast = Timeouts(crl_refresh=0.2)
    seller = Agent(dataclasses.replace(config_of(folder, "seller"), timeouts=fast))
    buyer = Agent(config_of(folder, "buyer"))
    async with running(seller), running(buyer):
        channel = await buyer.channel("seller")
        assert (await channel.request("sys", "ping", b"fresh"))["echo"] == b"fresh"
        with trio.fail_after(DEADLINE):
            reason = await channel.wait_closed()
        assert reason.code == "auth.crl_stale"  # the seller's refusal, as the buyer heard it


async def test_one_peer_holds_at_most_its_share_of_channels(folder: Path) -> None:
    # Another member of kind 3, from an authenticated peer: channels are not free.
    # One more than the limit is refused in the handshake; closing one frees a place.
    import dataclasses

    from semper.agents.runtime._config import Timeouts
    from semper.transport import HandshakeFailed

    seller = Agent(dataclasses.replace(config_of(folder, "seller"),
                                       timeouts=Timeouts(max_channels_per_peer=3)))
    buyer = Agent(config_of(folder, "buyer"))
    async with running(seller), running(buyer), trio.open_nursery() as nursery:
        held: list[Any] = []
        release = trio.Event()

        async def hold(*, task_status: trio.TaskStatus[Any]) -> None:
            async with buyer.connect("seller") as channel:
                task_status.started(channel)
                await release.wait()

        for _ in range(3):
            held.append(await nursery.start(hold))
        # The seller's hello may be out before it refuses (TLS 1.3 and hellos are
        # sent before they are read), so the refusal comes as the handshake's
        # failure or as the reason the channel closed: the code says which.
        with trio.fail_after(DEADLINE), pytest.raises((HandshakeFailed,
                                                       ChannelClosed)) as refused:
            async with buyer.connect("seller") as channel:
                await channel.request("sys", "ping")
        assert refused.value.detail["reason"] == "protocol.too_many_channels"
        # The ones it holds still work; another peer is not affected.
        assert (await held[0].request("sys", "ping", b"x"))["echo"] == b"x"
        async with Agent(config_of(folder, "bank")).session() as bank:
            assert (await bank.request("seller", "sys", "ping", b"y"))["echo"] == b"y"
        await held[2].aclose()
        await seller_sees_fewer(seller, "buyer", 3)
        async with buyer.connect("seller") as channel:
            assert (await channel.request("sys", "ping", b"z"))["echo"] == b"z"
        release.set()


async def seller_sees_fewer(agent: Agent, peer: str, than: int) -> None:
    from market_helpers import wait_until

    await wait_until(lambda: agent._inbound_per_peer.get(peer, 0) < than,
                     f"{agent.id} released a channel of {peer}")


async def test_a_burst_for_large_answers_is_served_a_few_at_a_time(market: Market) -> None:
    # Another member of "a peer that never reads": a burst of requests whose answers
    # are large. The handlers already running all answer into the queue, so once the
    # channel has seen large answers it starts only as many as fit under the mark.
    queued: list[int] = []
    running: list[int] = []
    active = 0

    async def big(ctx: RequestContext, body: Any) -> Any:
        nonlocal active
        active += 1
        running.append(active)
        queued.append(ctx.channel._outq_bytes)
        await trio.lowlevel.checkpoint()
        active -= 1
        return b"a" * 65536

    registry = echo_registry()
    registry.add_service("big")
    registry.add_op("big", "one", big)
    high_water = 1 << 18
    config = ChannelConfig(write_timeout=0.5, write_high_water=high_water, close_timeout=0.5)
    done = trio.Event()

    async def handler(channel: Any) -> None:
        await channel.wait_closed()
        done.set()

    async with running_server(market, registry, config, handler=handler) as server:
        async with raw_client(server) as client:
            sock = client.stream.transport_stream.socket
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)
            await client.send({"type": "req", "id": 1, "service": "big", "op": "one"})
            assert (await client.receive())["id"] == 1  # the channel learns their size
            running.clear()
            burst = b"".join(encode_frame({"type": "req", "id": i, "service": "big",
                                           "op": "one", "body": None})
                             for i in range(2, 1002))
            with trio.move_on_after(REAL_WAIT):
                try:
                    await client.stream.send_all(burst)
                except trio.BrokenResourceError:
                    pass
                await done.wait()
    assert done.is_set()
    assert max(running) <= high_water // 65536  # not 1000 at once
    assert max(queued) <= high_water + 2 * 65600, max(queued)


def test_a_tls_failure_we_raised_ourselves_is_described() -> None:
    # Found by the fuzzing peer: an SSLError made by our own code (EOF in the
    # handshake) has no `reason`, and describing it raised AttributeError.
    import ssl

    from semper.transport._tls import describe_tls_failure

    failure = describe_tls_failure(ssl.SSLEOFError(8, "EOF in the handshake"),
                                   during="in the handshake")
    assert failure.code == "auth.handshake_failed"
    assert failure.detail["reason"] == "SSLEOFError"
