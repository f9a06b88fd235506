"""Opening channels: the TLS handshake, the peer check, the hello exchange.

Order matters and is the same on both sides: (1) TLS 1.3 handshake, in which
OpenSSL checks the chain and the CRL; (2) the peer verifier checks the certificate
again, with the agent id we expected; (3) only then do we write our ``hello`` and
read theirs, which must name the same agent and role as the certificate; (4) the
peer verifier runs again, so that a CRL applied while the peer held back its hello
counts. Nothing the peer sends is parsed before (2) passed. All of it runs under
one handshake deadline.

``serve`` bounds what unauthenticated peers cost: at most ``max_unauthenticated``
connections may be short of a hello at once (the oldest is dropped for a new one),
nothing large is allocated for them, ``accept`` backs off when the process is out
of file descriptors, and what refused connections make us log is budgeted.
"""

from __future__ import annotations

import errno
import logging
import ssl
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, Final

import trio

from ._channel import (
    RECEIVE_SIZE,
    Channel,
    ChannelConfig,
    LogBudget,
    PeerIdentity,
    PeerVerifier,
    error_wire,
    verifier_epoch,
)
from ._codec import NEED_DATA, CodecLimits, FrameDecoder, encode_frame
from ._errors import (
    BadMessage,
    ChannelClosed,
    HandshakeFailed,
    HandshakeTimeout,
    HelloMismatch,
    InternalError,
    ProtocolError,
    TransportError,
    UnexpectedMessage,
    UnsupportedVersion,
    is_wire_error,
)
from ._messages import PROTOCOL_VERSION, ErrorMessage, Hello, PeerLimits, parse_message
from ._registry import ServiceRegistry
from ._tls import TlsConfig, describe_tls_failure, send_pending_alert
from ._tls_stream import TlsStream

__all__ = ["ConnectFailed", "TlsContexts", "establish", "open_channel", "serve"]

log = logging.getLogger("semper.transport")

_MIN_PEER_FRAME = 1 << 12
_MAX_PEER_FRAME = 0xFFFFFFFF  # what a 4-byte length prefix can say


class ConnectFailed(TransportError):
    """No TCP connection to the peer's address."""

    code = "transport.connect_failed"


class TlsContexts:
    """The current client and server contexts; ``update_crl`` swaps in new ones.

    Connections already open keep the context they started with; the agent closes
    the ones whose peer a new CRL revokes.
    """

    def __init__(self, config: TlsConfig) -> None:
        self.config = config
        self.server = config.server_context()
        self.client = config.client_context()

    def update_crl(self, crl_pem: bytes) -> None:
        config = self.config.with_crl(crl_pem)
        server, client = config.server_context(), config.client_context()
        self.config, self.server, self.client = config, server, client


def make_hello(
    agent: str, role: str, registry: ServiceRegistry, config: ChannelConfig
) -> Hello:
    return Hello(
        agent=agent,
        role=role,
        version=PROTOCOL_VERSION,
        services=registry.services(),
        limits=PeerLimits(max_frame=config.max_frame, max_in_flight=config.max_in_flight),
    )


async def _tls_call(fn: Callable[[], Awaitable[Any]], during: str) -> Any:
    try:
        return await fn()
    except trio.BrokenResourceError as exc:
        raise describe_tls_failure(exc, during=during) from exc


async def _exchange_hellos(
    stream: TlsStream | trio.SSLStream[Any], our: Hello, peer: PeerIdentity, config: ChannelConfig
) -> tuple[Hello, FrameDecoder]:
    await _tls_call(lambda: stream.send_all(encode_frame(our.to_wire())), "sending hello")
    # str/bin bounds follow max_frame: their 1 MiB defaults would refuse, as a fatal
    # bad_frame, a value inside the max_frame this side announced.
    limit = config.max_frame
    decoder = FrameDecoder(CodecLimits(max_frame=limit, max_str=limit, max_bin=limit))
    while (obj := decoder.next_object()) is NEED_DATA:
        data = await _tls_call(lambda: stream.receive_some(RECEIVE_SIZE), "awaiting hello")
        if not data:
            raise HandshakeFailed("the peer closed the connection before its hello",
                                  detail={"reason": "EOF"})
        decoder.feed(data)
    message = parse_message(obj)
    if isinstance(message, ErrorMessage):
        # The peer refused us after TLS (our certificate, our hello): say its reason.
        raise HandshakeFailed(
            f"the peer refused the channel before its hello: {message.code}: {message.message}",
            detail={"reason": message.code, "peer_detail": message.detail})
    if not isinstance(message, Hello):
        raise UnexpectedMessage("the first message must be hello")
    if message.version != PROTOCOL_VERSION:
        raise UnsupportedVersion(
            f"protocol version {message.version} is not supported (we speak {PROTOCOL_VERSION})",
            detail={"supported": [PROTOCOL_VERSION]},
        )
    if message.agent != peer.agent_id or message.role != peer.role:
        raise HelloMismatch(
            f"hello says {message.agent}/{message.role}, "
            f"the certificate says {peer.agent_id}/{peer.role}"
        )
    if not _MIN_PEER_FRAME <= message.limits.max_frame <= _MAX_PEER_FRAME or not (
        1 <= message.limits.max_in_flight
    ):
        raise BadMessage(f"hello limits out of range: max_frame must be {_MIN_PEER_FRAME} to "
                         f"{_MAX_PEER_FRAME}, max_in_flight at least 1")
    return message, decoder


async def _refuse(stream: TlsStream | trio.SSLStream[Any], exc: Exception) -> None:
    """Best effort: tell the peer why in one ``err`` frame, then let the caller close.
    A local error (not ``is_wire_error``) goes as ``internal.error`` and is logged."""
    if not is_wire_error(exc):
        log.error("refusing a peer after a local failure", exc_info=exc)
        exc = InternalError("the peer check failed")
    frame = encode_frame(error_wire(None, exc))
    with trio.CancelScope(shield=True), trio.move_on_after(1):  # shield outside the deadline
        try:
            await stream.send_all(frame)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass


@asynccontextmanager
async def establish(
    stream: TlsStream | trio.SSLStream[Any],
    *,
    verify_peer: PeerVerifier,
    expected_id: str | None,
    hello: Hello,
    registry: ServiceRegistry,
    config: ChannelConfig,
    on_authenticated: Callable[[], None] | None = None,
    admit: Callable[[PeerIdentity], Callable[[], None]] | None = None,
) -> AsyncIterator[Channel]:
    """Authenticate ``stream`` and run a channel over it for the ``async with`` body.

    ``on_authenticated`` is called once the peer's hello passed every check, before
    the channel handles anything (``serve`` counts unauthenticated connections).
    ``admit(peer)``, called then too, may refuse the peer (raise an error with a
    ``code``, sent to the peer) or return what to call when the channel has closed:
    a bound on what one peer may hold.

    Raises:
        HandshakeFailed: TLS refused us or the peer (``detail["reason"]``).
        HandshakeTimeout: not done within ``config.handshake_timeout``.
        CertificateError-like (any exception with a ``code``): the peer verifier
            refused the certificate, e.g. ``auth.wrong_peer``.
        ProtocolError: the peer's hello was malformed or incompatible.
    """
    try:
        with trio.fail_after(config.handshake_timeout):
            await _tls_call(stream.do_handshake, "in the handshake")
            der = stream.getpeercert(binary_form=True)
            if not der:
                raise HandshakeFailed("the peer presented no certificate",
                                      detail={"reason": "NO_CERTIFICATE"})
            try:
                peer = verify_peer(der, expected_id)
            except Exception as exc:
                if isinstance(getattr(exc, "code", None), str):
                    await _refuse(stream, exc)  # auth.revoked, auth.wrong_peer, ...
                raise
            epoch = verifier_epoch(verify_peer)
            try:
                their_hello, decoder = await _exchange_hellos(stream, hello, peer, config)
            except ProtocolError as exc:
                await _refuse(stream, exc)
                raise
            except HelloMismatch as exc:
                await _refuse(stream, exc)
                raise
            # The peer chose when to send its hello: check it against the CRL of now.
            epoch = verifier_epoch(verify_peer)
            try:
                peer = verify_peer(der, expected_id)
                release = admit(peer) if admit is not None else None
            except Exception as exc:
                if isinstance(getattr(exc, "code", None), str):
                    await _refuse(stream, exc)  # too many channels, ...
                raise
    except trio.TooSlowError:
        await trio.aclose_forcefully(stream)
        raise HandshakeTimeout(
            f"handshake not done within {config.handshake_timeout:g}s") from None
    except HandshakeFailed:
        await send_pending_alert(stream)  # the peer learns why
        await trio.aclose_forcefully(stream)
        raise
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise
    try:
        if on_authenticated is not None:
            on_authenticated()
        channel = Channel(stream, peer=peer, our_hello=hello, their_hello=their_hello,
                          registry=registry, config=config, decoder=decoder,
                          verify_peer=verify_peer, peer_certificate=der,
                          expected_id=expected_id, epoch=epoch)
        async with trio.open_nursery() as nursery:
            await nursery.start(channel.run)
            try:
                yield channel
            finally:
                with trio.CancelScope(shield=True):
                    await channel.aclose()
    except BaseExceptionGroup as group:
        # The body's own exception (say RemoteError) comes out of the channel's
        # nursery wrapped in a group; callers of a context manager expect it bare.
        leaf = _sole_exception(group)
        if leaf is None:
            raise
        raise leaf from None
    finally:
        if release is not None:
            release()


def _sole_exception(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    while len(group.exceptions) == 1:
        inner = group.exceptions[0]
        if not isinstance(inner, BaseExceptionGroup):
            return inner
        group = inner
    return None


@asynccontextmanager
async def open_channel(
    host: str,
    port: int,
    *,
    tls: TlsContexts | ssl.SSLContext,
    verify_peer: PeerVerifier,
    expected_id: str,
    hello: Hello,
    registry: ServiceRegistry | None = None,
    config: ChannelConfig | None = None,
) -> AsyncIterator[Channel]:
    """Connect to ``host:port`` and open a channel to the agent ``expected_id``.

    Raises:
        ConnectFailed: no TCP connection.
        and everything ``establish`` raises.
    """
    config = config or ChannelConfig()
    context = tls.client if isinstance(tls, TlsContexts) else tls
    try:
        with trio.fail_after(config.handshake_timeout):
            tcp = await trio.open_tcp_stream(host, port)
    except trio.TooSlowError:
        raise HandshakeTimeout(f"no connection to {host}:{port} within "
                               f"{config.handshake_timeout:g}s") from None
    except OSError as exc:
        raise ConnectFailed(f"cannot connect to {expected_id} at {host}:{port}: "
                            f"{exc.strerror or exc}") from exc
    stream = TlsStream(tcp, context, server_side=False)
    async with establish(stream, verify_peer=verify_peer, expected_id=expected_id,
                         hello=hello, registry=registry or ServiceRegistry(),
                         config=config) as channel:
        yield channel


class _Gate:
    """Connections accepted and not yet authenticated, oldest first. Admitting one
    over the limit drops the oldest (cancels its scope): a flood of idle connections
    cannot lock out a peer that completes its handshake promptly."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._waiting: OrderedDict[int, trio.CancelScope] = OrderedDict()
        self._next = 0
        self.dropped = 0

    def admit(self, scope: trio.CancelScope) -> Callable[[], None]:
        while len(self._waiting) >= self.limit:
            self.drop_oldest()
        key = self._next = self._next + 1
        self._waiting[key] = scope
        return lambda: self._waiting.pop(key, None) and None

    def drop_oldest(self, count: int = 1) -> None:
        for _ in range(min(count, len(self._waiting))):
            _key, scope = self._waiting.popitem(last=False)
            scope.cancel()
            self.dropped += 1

    def __len__(self) -> int:
        return len(self._waiting)


#: accept(2) errors that mean "out of resources now", not "the listener is broken".
_ACCEPT_CAPACITY_ERRNOS: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM,
                                            errno.ENOBUFS})


async def serve(
    host: str,
    port: int,
    *,
    tls: TlsContexts | ssl.SSLContext,
    verify_peer: PeerVerifier,
    hello: Hello,
    registry: ServiceRegistry,
    config: ChannelConfig | None = None,
    handler: Callable[[Channel], Awaitable[None]] | None = None,
    admit: Callable[[PeerIdentity], Callable[[], None]] | None = None,
    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Accept channels on ``host:port`` until cancelled.

    Reports the bound ``(host, port)`` through ``task_status.started`` (port 0 picks
    a free one). Each accepted channel runs ``handler(channel)`` (default: wait until
    it closes). A refused or failed connection is logged (within a budget) and never
    stops the server.
    """
    config = config or ChannelConfig()
    listeners = await trio.open_tcp_listeners(port, host=host)
    gate = _Gate(config.max_unauthenticated)
    budget = LogBudget()

    async def on_connection(tcp: trio.SocketStream) -> None:
        context = tls.server if isinstance(tls, TlsContexts) else tls
        with trio.CancelScope() as scope:
            authenticated = gate.admit(scope)
            try:
                stream = TlsStream(tcp, context, server_side=True)
                async with establish(stream, verify_peer=verify_peer, expected_id=None,
                                     hello=hello, registry=registry, config=config,
                                     on_authenticated=authenticated,
                                     admit=admit) as channel:
                    if handler is None:
                        await channel.wait_closed()
                    else:
                        await handler(channel)
            except ChannelClosed:
                pass
            except Exception as exc:
                code = getattr(exc, "code", None)
                if not budget.allow():
                    pass
                elif isinstance(code, str):
                    log.info("refused connection: %s", exc)
                else:
                    log.error("connection handler failed", exc_info=exc)
            finally:
                authenticated()
        if scope.cancelled_caught and budget.allow():
            log.info("dropped an unauthenticated connection: %d others waiting", len(gate))

    async def run_one(tcp: trio.SocketStream) -> None:
        try:
            await on_connection(tcp)
        finally:
            await trio.aclose_forcefully(tcp)

    async def accept_loop(listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        backoff = 0.0
        async with listener:
            while True:
                try:
                    tcp = await listener.accept()
                except OSError as exc:
                    if exc.errno not in _ACCEPT_CAPACITY_ERRNOS:
                        raise
                    if not backoff:
                        log.warning("accept: %s; backing off (established channels are "
                                    "still served)", exc.strerror)
                    # Free descriptors held by peers that have not authenticated.
                    gate.drop_oldest(max(1, len(gate) // 4))
                    backoff = min(max(backoff * 2, 0.05), 1.0)
                    await trio.sleep(backoff)
                    continue
                if backoff:
                    log.info("accept works again")
                    backoff = 0.0
                nursery.start_soon(run_one, tcp)

    sockname = listeners[0].socket.getsockname()
    async with trio.open_nursery() as nursery:
        for listener in listeners:
            nursery.start_soon(accept_loop, listener, nursery)
        task_status.started((sockname[0], sockname[1]))
