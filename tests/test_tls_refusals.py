"""Refusals at the socket: real TLS 1.3 over loopback, one bad peer at a time.

OpenSSL is the first line (DESIGN §3): a missing, foreign, expired or revoked
certificate is refused in the handshake, before any application code runs. Each test
shows what the refused side really reads (the alert, as OpenSSL 3.0 names it), what
the server logs, that the server's handler never ran, and that the server still
serves a good client afterwards.

The TLS 1.3 pitfall: the server checks the client's certificate only after the
client's side of the handshake has finished, so a refused client sees its
``do_handshake`` succeed and gets the alert on its first read.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import trio
from pki import NOW, Market

from semper.services.certificates import (
    ARC,
    Level,
    WrongPeer,
    fingerprint,
    identity_of,
    load_certificate,
)
from semper.services.money import Amount
from semper.transport import (
    NEED_DATA,
    FrameDecoder,
    HandshakeFailed,
    ServiceRegistry,
    TlsContexts,
    open_channel,
    serve,
)

if TYPE_CHECKING:  # imported by name, pytest would try to collect it
    from pki import TestAgent

DEADLINE = 10  # seconds; a bound on every wait, never reached when things work
PAST = {"not_before": NOW - dt.timedelta(days=10), "not_after": NOW - dt.timedelta(days=1)}


# -- harness -----------------------------------------------------------------------


class _Collect(logging.Handler):
    """Forwards the exceptions ``serve`` logs as refused connections into a channel."""

    def __init__(self, send: trio.MemorySendChannel[BaseException]) -> None:
        super().__init__(logging.INFO)
        self.send = send

    def emit(self, record: logging.LogRecord) -> None:
        if record.msg == "refused connection: %s" and record.args:
            exc = record.args[0] if isinstance(record.args, tuple) else record.args
            assert isinstance(exc, BaseException)
            self.send.send_nowait(exc)


@pytest.fixture
def refusals() -> Iterator[trio.MemoryReceiveChannel[BaseException]]:
    send, receive = trio.open_memory_channel[BaseException](math.inf)
    logger = logging.getLogger("semper.transport")
    handler, level = _Collect(send), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield receive
    logger.removeHandler(handler)
    logger.setLevel(level)


@dataclass
class Server:
    agent: TestAgent
    port: int
    tls: TlsContexts
    accepted: trio.MemoryReceiveChannel[str]  # the peer id of every handler call
    refusals: trio.MemoryReceiveChannel[BaseException]

    async def next_refusal(self) -> BaseException:
        with trio.fail_after(DEADLINE):
            return await self.refusals.receive()

    def assert_handler_never_ran(self) -> None:
        with pytest.raises(trio.WouldBlock):
            self.accepted.receive_nowait()


@pytest.fixture
async def server_factory(
    nursery: trio.Nursery, refusals: trio.MemoryReceiveChannel[BaseException]
) -> AsyncIterator[Callable[..., object]]:
    """Starts servers in pytest-trio's ``nursery``, which is cancelled after the test."""
    async def start(market: Market, agent: TestAgent, tls: TlsContexts | None = None) -> Server:
        send, accepted = trio.open_memory_channel[str](math.inf)
        registry = ServiceRegistry()

        async def handler(channel) -> None:
            send.send_nowait(channel.peer.agent_id)
            await channel.wait_closed()

        tls = tls or market.tls(agent)
        _, port = await nursery.start(partial(
            serve, "127.0.0.1", 0, tls=tls, verify_peer=market.verifier(),
            hello=market.hello(agent, registry), registry=registry, handler=handler))
        return Server(agent, port, tls, accepted, refusals)

    yield start


async def assert_serves(server: Server, market: Market, client: TestAgent,
                        tls: TlsContexts | ssl.SSLContext | None = None,
                        verify_peer=None) -> None:
    """A good client gets a channel, and the server's handler runs for it next."""
    registry = ServiceRegistry()
    with trio.fail_after(DEADLINE):
        async with open_channel("127.0.0.1", server.port, tls=tls or market.tls(client),
                                verify_peer=verify_peer or market.verifier(),
                                expected_id=server.agent.agent_id,
                                hello=market.hello(client, registry)) as channel:
            assert channel.peer.agent_id == server.agent.agent_id
            # FIFO: had a refused client reached the handler, its id would come first.
            assert await server.accepted.receive() == client.agent_id
    server.assert_handler_never_ran()


def raw_context(market: Market, agent: TestAgent | None, *,
                max_version: ssl.TLSVersion | None = None) -> ssl.SSLContext:
    """A plain stdlib client that trusts ``market`` and shows ``agent``'s certificate."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(cadata=market.root_pem.decode("ascii"))
    if agent is not None:
        ctx.load_cert_chain(agent.cert_path, agent.key_path)
    if max_version is not None:
        ctx.maximum_version = max_version
    return ctx


async def raw_refusal(port: int, ctx: ssl.SSLContext) -> tuple[bool, ssl.SSLError]:
    """Handshake, then read; return whether the handshake finished and the SSL error."""
    tcp = await trio.open_tcp_stream("127.0.0.1", port)
    stream = trio.SSLStream(tcp, ctx, server_side=False)
    handshake_done = False
    try:
        with pytest.raises(trio.BrokenResourceError) as info, trio.fail_after(DEADLINE):
            await stream.do_handshake()
            handshake_done = True
            await stream.receive_some()
    finally:
        await trio.aclose_forcefully(stream)
    cause = info.value.__cause__
    assert isinstance(cause, ssl.SSLError), repr(cause)
    return handshake_done, cause


async def raw_frames_then_refusal(port: int, ctx: ssl.SSLContext
                                  ) -> tuple[list[Any], ssl.SSLError]:
    """Handshake, then read frames until the connection fails; return both."""
    tcp = await trio.open_tcp_stream("127.0.0.1", port)
    stream = trio.SSLStream(tcp, ctx, server_side=False)
    decoder = FrameDecoder()
    frames: list[Any] = []
    try:
        with pytest.raises(trio.BrokenResourceError) as info, trio.fail_after(DEADLINE):
            await stream.do_handshake()
            while True:
                data = await stream.receive_some()
                assert data, "closed with close_notify"
                decoder.feed(data)
                while (frame := decoder.next_object()) is not NEED_DATA:
                    frames.append(frame)
    finally:
        await trio.aclose_forcefully(stream)
    cause = info.value.__cause__
    assert isinstance(cause, ssl.SSLError), repr(cause)
    return frames, cause


def assert_tls_refusal(exc: BaseException, reason: str, fragment: str) -> None:
    assert isinstance(exc, HandshakeFailed), repr(exc)
    assert exc.code == "auth.handshake_failed"
    assert exc.detail["reason"] == reason
    assert fragment in exc.message


# -- a raw client refused by a semper server ---------------------------------------

# Each case: how to make the client context; whether the client's handshake finishes
# before the refusal (TLS 1.3: yes, unless the ClientHello itself is refused); the
# alert the client reads; OpenSSL's reason and words on the server side.
RAW_CASES = {
    # a. TLS 1.2 at most, with a valid certificate: refused at the ClientHello
    "tls12": (lambda m, f: raw_context(m, m.agent("old-client"),
                                       max_version=ssl.TLSVersion.TLSv1_2),
              False, "TLSV1_ALERT_PROTOCOL_VERSION", "UNSUPPORTED_PROTOCOL", "1.3 only"),
    # b. no client certificate: TLS 1.3 finishes the client's handshake first
    "no-cert": (lambda m, f: raw_context(m, None),
                True, "TLSV13_ALERT_CERTIFICATE_REQUIRED", "PEER_DID_NOT_RETURN_A_CERTIFICATE",
                "sent no certificate"),
    # c. a certificate from another market's root (same root name, other key)
    "foreign-ca": (lambda m, f: raw_context(m, f.agent("intruder")),
                   True, "TLSV1_ALERT_UNKNOWN_CA", "CERTIFICATE_VERIFY_FAILED",
                   "unable to get local issuer certificate"),
    # d. a certificate of this market, expired yesterday
    "expired": (lambda m, f: raw_context(m, m.agent("late", **PAST)),
                True, "SSLV3_ALERT_CERTIFICATE_EXPIRED", "CERTIFICATE_VERIFY_FAILED",
                "certificate has expired"),
}


@pytest.fixture
def foreign(tmp_path: Path) -> Market:
    folder = tmp_path / "foreign"
    folder.mkdir()
    return Market(folder)


@pytest.mark.parametrize("case", list(RAW_CASES))
async def test_raw_client_is_refused_in_the_handshake(
    case: str, market: Market, foreign: Market, server_factory
) -> None:
    make_ctx, handshake_done, alert, server_reason, server_words = RAW_CASES[case]
    seller, buyer = market.agent("seller", "seller"), market.agent("buyer")
    server = await server_factory(market, seller)

    done, error = await raw_refusal(server.port, make_ctx(market, foreign))

    assert done is handshake_done
    assert error.reason == alert
    assert_tls_refusal(await server.next_refusal(), server_reason, server_words)
    server.assert_handler_never_ran()
    await assert_serves(server, market, buyer)


async def test_revoked_client_is_refused(market: Market, server_factory) -> None:
    # e. the server's context is built after the revocation: an SSLContext takes its
    # CRL at creation and cannot drop it later.
    seller, buyer, revoked = (market.agent("seller", "seller"), market.agent("buyer"),
                              market.agent("fired"))
    market.revoke(revoked)
    server = await server_factory(market, seller)

    done, error = await raw_refusal(server.port, raw_context(market, revoked))

    assert done is True
    assert error.reason == "SSLV3_ALERT_CERTIFICATE_REVOKED"
    assert_tls_refusal(await server.next_refusal(), "CERTIFICATE_VERIFY_FAILED",
                       "certificate revoked")
    server.assert_handler_never_ran()
    await assert_serves(server, market, buyer)


async def test_update_crl_refuses_new_connections_of_a_revoked_client(
    market: Market, server_factory
) -> None:
    seller, buyer, client = (market.agent("seller", "seller"), market.agent("buyer"),
                             market.agent("soon-fired"))
    server = await server_factory(market, seller)
    await assert_serves(server, market, client)  # fine before the revocation

    market.revoke(client)
    # The running server's SSLContext still holds the old CRL, so OpenSSL lets the
    # handshake through; the peer verifier (our second line, reading the current CRL)
    # refuses before any hello is read, says why in one `err` frame, and closes
    # without close_notify.
    frames, error = await raw_frames_then_refusal(server.port, raw_context(market, client))
    assert [(f["type"], f["id"], f["code"]) for f in frames] == [("err", None, "auth.revoked")]
    assert error.reason == "UNEXPECTED_EOF_WHILE_READING"  # no close_notify
    refusal = await server.next_refusal()
    assert getattr(refusal, "code", None) == "auth.revoked", repr(refusal)

    # A semper client reports the server's reason as a failed handshake.
    with pytest.raises(HandshakeFailed) as info, trio.fail_after(DEADLINE):
        async with open_channel("127.0.0.1", server.port, tls=market.tls(client),
                                verify_peer=market.verifier(), expected_id="seller",
                                hello=market.hello(client, ServiceRegistry())):
            pytest.fail("a revoked client got a channel")
    assert info.value.detail["reason"] == "auth.revoked"
    assert "refused the channel before its hello: auth.revoked" in info.value.message
    await server.next_refusal()

    server.tls.update_crl(market.crl_pem)  # new contexts for new connections
    done, error = await raw_refusal(server.port, raw_context(market, client))
    assert done is True
    assert error.reason == "SSLV3_ALERT_CERTIFICATE_REVOKED"
    assert_tls_refusal(await server.next_refusal(), "CERTIFICATE_VERIFY_FAILED",
                       "certificate revoked")

    # A semper client learns why in words.
    with pytest.raises(HandshakeFailed) as info, trio.fail_after(DEADLINE):
        async with open_channel("127.0.0.1", server.port, tls=market.tls(client),
                                verify_peer=market.verifier(), expected_id="seller",
                                hello=market.hello(client, ServiceRegistry())):
            pytest.fail("a revoked client got a channel")
    assert_tls_refusal(info.value, "SSLV3_ALERT_CERTIFICATE_REVOKED", "revoked")
    await server.next_refusal()
    server.assert_handler_never_ran()
    await assert_serves(server, market, buyer)


async def test_semper_client_is_told_why_it_was_refused(
    market: Market, foreign: Market, server_factory
) -> None:
    seller = market.agent("seller", "seller")
    server = await server_factory(market, seller)
    for client, reason, words in [
        (foreign.agent("intruder"), "TLSV1_ALERT_UNKNOWN_CA", "does not trust"),
        (market.agent("late", **PAST), "SSLV3_ALERT_CERTIFICATE_EXPIRED", "expired"),
    ]:
        with pytest.raises(HandshakeFailed) as info, trio.fail_after(DEADLINE):
            async with open_channel("127.0.0.1", server.port, tls=market.tls(client),
                                    verify_peer=market.verifier(), expected_id="seller",
                                    hello=market.hello(client, ServiceRegistry())):
                pytest.fail("a bad client got a channel")
        # Our side of the handshake finished; the alert came while awaiting hello.
        assert_tls_refusal(info.value, reason, words)
        assert "awaiting hello" in info.value.message
        await server.next_refusal()
    server.assert_handler_never_ran()
    await assert_serves(server, market, market.agent("buyer"))


# -- f. the right CA, the wrong agent --------------------------------------------


async def test_wrong_peer_is_refused_before_any_hello(market: Market, server_factory) -> None:
    seller, buyer = market.agent("seller", "seller"), market.agent("buyer")
    server = await server_factory(market, seller)

    with pytest.raises(WrongPeer) as info, trio.fail_after(DEADLINE):
        async with open_channel("127.0.0.1", server.port, tls=market.tls(buyer),
                                verify_peer=market.verifier(), expected_id="bank",
                                hello=market.hello(buyer, ServiceRegistry())):
            pytest.fail("a channel to the wrong agent was opened")
    assert info.value.code == "auth.wrong_peer"
    assert "'bank'" in info.value.message and "'seller'" in info.value.message

    # The server passed TLS and its verifier, sent its hello and never got ours.
    refusal = await server.next_refusal()
    assert isinstance(refusal, HandshakeFailed), repr(refusal)
    assert "hello" in refusal.message
    server.assert_handler_never_ran()
    await assert_serves(server, market, buyer)


# -- the reverse: a semper client refuses a bad server -----------------------------


def lenient_client(market: Market, agent: TestAgent) -> ssl.SSLContext:
    """A client that checks nothing about the server, to show the server still serves."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(agent.cert_path, agent.key_path)
    return ctx


def accept_anything(der: bytes, expected_id: str | None):
    return identity_of(load_certificate(der))


# Each case: how to make the server's agent (and in which market); what OpenSSL says
# on our (client) side; the alert the server then reads.
REVERSE_CASES = {
    # c. the server's certificate comes from another root; OpenSSL's server sends its
    # root along, so the client sees a self-signed root it does not trust
    "foreign-ca": (lambda m, f: (f, f.agent("seller", "seller")),
                   "self-signed certificate in certificate chain", "TLSV1_ALERT_UNKNOWN_CA", 19),
    # d. the server's certificate expired yesterday
    "expired": (lambda m, f: (m, m.agent("seller", "seller", **PAST)),
                "certificate has expired", "SSLV3_ALERT_CERTIFICATE_EXPIRED", 10),
    # e. the server's certificate is on the CRL the client loaded
    "revoked": (lambda m, f: (m, m.agent("seller", "seller")),
                "certificate revoked", "SSLV3_ALERT_CERTIFICATE_REVOKED", 23),
}


@pytest.mark.parametrize("case", list(REVERSE_CASES))
async def test_semper_client_refuses_a_bad_server(
    case: str, market: Market, foreign: Market, server_factory
) -> None:
    make_server, verify_words, server_alert, verify_code = REVERSE_CASES[case]
    server_market, seller = make_server(market, foreign)
    server = await server_factory(server_market, seller)
    if case == "revoked":
        market.revoke(seller)  # after the server built its contexts, before the client
    buyer = market.agent("buyer")

    with pytest.raises(HandshakeFailed) as info, trio.fail_after(DEADLINE):
        async with open_channel("127.0.0.1", server.port, tls=market.tls(buyer),
                                verify_peer=market.verifier(), expected_id="seller",
                                hello=market.hello(buyer, ServiceRegistry())):
            pytest.fail("a channel to a bad server was opened")
    assert_tls_refusal(info.value, "CERTIFICATE_VERIFY_FAILED", verify_words)
    assert "in the handshake" in info.value.message
    # OpenSSL's X509_V_ERR_* number, so a caller can tell the cases apart by value
    assert info.value.detail["verify_code"] == verify_code

    # The server reads the alert our client sent, and never runs its handler.
    assert_tls_refusal(await server.next_refusal(), server_alert, "")
    server.assert_handler_never_ran()
    # ... and still serves a client that does not look at its certificate.
    client = server_market.agent("lenient")
    await assert_serves(server, server_market, client, tls=lenient_client(server_market, client),
                        verify_peer=accept_anything)


# -- g. the openssl command line agrees -----------------------------------------------


@pytest.fixture
def openssl() -> Callable[..., subprocess.CompletedProcess[str]]:
    exe = shutil.which("openssl")
    if exe is None:
        pytest.skip("openssl is not installed")

    def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run([exe, *map(str, args)], capture_output=True, text=True,
                              timeout=30, check=False)

    return run


@pytest.fixture
def files(market: Market, tmp_path: Path) -> tuple[Path, Callable[[], Path]]:
    root = tmp_path / "root.pem"
    root.write_bytes(market.root_pem)

    def crl() -> Path:
        path = tmp_path / f"crl-{market.crl_number}.pem"
        path.write_bytes(market.crl_pem)
        return path

    return root, crl


def test_openssl_verify_accepts_issued_certificates(market: Market, openssl, files) -> None:
    root, crl = files
    for agent in (market.agent("seller", "seller"),
                  market.agent("bank", "bank", level=Level.LIABLE,
                               liability=Amount("EUR", 5_000_000))):
        for extra in ([], ["-crl_check", "-CRLfile", crl()]):
            done = openssl("verify", "-x509_strict", "-CAfile", root, *extra, agent.cert_path)
            assert done.returncode == 0, done.stdout + done.stderr
            assert done.stdout.strip().endswith(": OK")


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (lambda m, f: m.agent("late", **PAST), "certificate has expired"),
        (lambda m, f: f.agent("intruder"), "unable to get local issuer certificate"),
    ],
    ids=["expired", "foreign-ca"],
)
def test_openssl_verify_refuses(market: Market, foreign: Market, openssl, files,
                                make, words: str) -> None:
    root, _ = files
    done = openssl("verify", "-CAfile", root, make(market, foreign).cert_path)
    assert done.returncode != 0
    assert words in done.stdout + done.stderr


def test_openssl_verify_with_the_crl_refuses_a_revoked_certificate(
    market: Market, openssl, files
) -> None:
    root, crl = files
    agent = market.agent("fired")
    market.revoke(agent)
    done = openssl("verify", "-CAfile", root, agent.cert_path)
    assert done.returncode == 0, "without the CRL openssl cannot know"
    done = openssl("verify", "-crl_check", "-CAfile", root, "-CRLfile", crl(), agent.cert_path)
    assert done.returncode != 0
    assert "certificate revoked" in done.stdout + done.stderr


def test_openssl_x509_shows_policies_and_san(market: Market, openssl) -> None:
    agent = market.agent("bank", "bank", level=Level.LIABLE, liability=Amount("EUR", 5_000_000))
    text = openssl("x509", "-text", "-noout", "-in", agent.cert_path).stdout
    assert "Subject: CN = bank" in text
    assert "URI:semper:agent/bank" in text
    assert f"Policy: {ARC}.1" in text
    assert "CPS: semper:role/bank" in text
    assert f"Policy: {ARC}.2.4" in text
    assert "CPS: semper:liable/EUR/5000000" in text
    assert "ED25519" in text
    assert "TLS Web Server Authentication, TLS Web Client Authentication" in text
    assert "CA:FALSE" in text
    done = openssl("x509", "-fingerprint", "-sha256", "-noout", "-in", agent.cert_path)
    assert done.stdout.strip().split("=", 1)[1] == fingerprint(agent.cert).hex(":").upper()
