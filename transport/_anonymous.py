"""One request over a server-authenticated TLS 1.3 connection, for clients with no
certificate yet (enrollment).

Theory of operation. A channel (``_connect``) needs both ends to hold a market
certificate. A newcomer has none: it holds only a token that pins the server by the
SHA-256 of the server's certificate. So this is a deliberately smaller exchange on a
listener of its own:

1. TLS 1.3; the server does not ask for a client certificate; the client does not
   check the server's chain (it has no root yet) but, right after the handshake and
   before it sends a byte, hands the server's DER certificate to ``check_server``,
   which compares it with the pin and raises to abort. TLS 1.3's CertificateVerify
   has already proved that the server holds that certificate's key.
2. No ``hello``: the client sends exactly one ``req`` frame, the server answers with
   exactly one ``res`` or ``err`` for it, and closes (``close_notify``). Anything
   else from the client (a malformed frame, another message kind) is answered with
   an ``err`` whose ``id`` is nil, and the connection is closed.

Everything runs under one deadline per connection, on both sides. Frames use the
channel's framing and value model; the server's frames are bounded by
``max_frame`` (small: a request carries a token id, a CSR and a proof). Anyone may
connect, so at most ``max_connections`` connections are served at once; a new one
past that drops the oldest (3,000 idle connections held 145 MiB and 3,000 file
descriptors of the CA agent, which its own listener and CRL file then lacked).
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from ._channel import RECEIVE_SIZE, LogBudget, _error_wire
from ._codec import DEFAULT_MAX_FRAME, NEED_DATA, CodecLimits, FrameDecoder, encode_frame
from ._connect import ConnectFailed, _Gate, _tls_call
from ._errors import (
    BadMessage,
    ChannelClosed,
    HandshakeFailed,
    HandshakeTimeout,
    ProtocolError,
    RemoteError,
    TransportError,
    UnexpectedMessage,
    is_wire_error,
)
from ._messages import ErrorMessage, Request, Response, parse_message
from ._tls import pinned_client_context, send_pending_alert
from ._tls_stream import TlsStream

__all__ = ["ANONYMOUS_MAX_FRAME", "AnonymousHandler", "request_pinned", "serve_anonymous"]

log = logging.getLogger("semper.transport")

#: The largest request frame an anonymous server reads.
ANONYMOUS_MAX_FRAME = 1 << 16

#: Answers one request from a client without a certificate: returns the response
#: body, or raises an exception with a ``code`` to answer with that error.
AnonymousHandler = Callable[[Request], Awaitable[Any]]


async def _read_message(stream: TlsStream, decoder: FrameDecoder) -> Any:
    while (obj := decoder.next_object()) is NEED_DATA:
        data = await _tls_call(lambda: stream.receive_some(RECEIVE_SIZE), "awaiting a message")
        if not data:
            raise ChannelClosed("the peer closed the connection before it sent a message")
        decoder.feed(data)
    return parse_message(obj)


async def serve_anonymous(
    host: str,
    port: int,
    *,
    context: ssl.SSLContext,
    handler: AnonymousHandler,
    timeout: float = 10.0,
    max_frame: int = ANONYMOUS_MAX_FRAME,
    max_connections: int = 256,
    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Answer one request per connection on ``host:port`` until cancelled.

    ``context`` is a server context that does not request client certificates
    (``TlsConfig.server_only_context``). Reports the bound ``(host, port)``; port 0
    picks a free one. A failed connection is logged and never stops the server. At
    most ``max_connections`` are open at once: one more drops the oldest.
    """
    listeners = await trio.open_tcp_listeners(port, host=host)
    limits = CodecLimits(max_frame=max_frame, max_str=max_frame, max_bin=max_frame)
    gate = _Gate(max_connections)
    budget = LogBudget()  # what strangers make us log is bounded

    async def on_connection(tcp: trio.SocketStream) -> None:
        with trio.CancelScope() as scope:
            release = gate.admit(scope)
            try:
                await answer_one(tcp, release)
            finally:
                release()
        if scope.cancelled_caught:
            await trio.aclose_forcefully(tcp)

    async def answer_one(tcp: trio.SocketStream, release: Callable[[], None]) -> None:
        stream = TlsStream(tcp, context, server_side=True)
        try:
            with trio.fail_after(timeout):
                await _tls_call(stream.do_handshake, "in the handshake")
                answer = await _answer(stream, FrameDecoder(limits), handler, release)
                await stream.send_all(encode_frame(answer))
            with trio.move_on_after(1):
                await stream.aclose()
        except trio.TooSlowError:
            if budget.allow():
                log.info("anonymous connection dropped: not done within %gs", timeout)
        except HandshakeFailed as exc:
            await send_pending_alert(stream)
            if budget.allow():
                log.info("anonymous connection refused: %s", exc)
        except (TransportError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            if budget.allow():
                log.info("anonymous connection failed: %s", exc)
        except Exception as exc:
            # A bug met by one connection ends that connection, never the listener
            # and the agent it runs in (the CA agent, for enrollment).
            if budget.allow():
                log.error("anonymous connection handler failed", exc_info=exc)
        finally:
            await trio.aclose_forcefully(stream)

    sockname = listeners[0].socket.getsockname()
    task_status.started((sockname[0], sockname[1]))
    await trio.serve_listeners(on_connection, listeners)


async def _answer(stream: TlsStream, decoder: FrameDecoder, handler: AnonymousHandler,
                  started: Callable[[], None] = lambda: None) -> dict[str, Any]:
    """The one frame to send back: the handler's answer, or an ``err`` with id nil.
    ``started`` is called once the request is read, before the handler runs: from
    then on the connection is no longer idle, and must not be dropped for a newer
    one (a token being redeemed would be spent with its certificate never sent)."""
    try:
        message = await _read_message(stream, decoder)
        if not isinstance(message, Request):
            raise UnexpectedMessage("send exactly one req on this connection")
    except ProtocolError as exc:  # bad frame, too large, bad message, unexpected
        return ErrorMessage(id=exc.detail.get("id"), code=exc.code, message=exc.message,
                            detail=exc.detail).to_wire()
    started()
    try:
        body = await handler(message)
        frame = {"type": "res", "id": message.id, "body": body}
        encode_frame(frame)  # an answer outside the value model is internal.error
        return frame
    except Exception as exc:
        if not is_wire_error(exc):  # answered as internal.error: the detail stays here
            log.error("anonymous %s.%s failed", message.service, message.op, exc_info=exc)
        return _error_wire(message.id, exc)


async def request_pinned(
    host: str,
    port: int,
    *,
    check_server: Callable[[bytes], None],
    service: str,
    op: str,
    body: Any,
    timeout: float = 10.0,
    max_frame: int = DEFAULT_MAX_FRAME,
) -> Any:
    """Connect without a certificate, pin the server with ``check_server``, send one
    request and return the answer's body.

    Raises:
        ConnectFailed: no TCP connection.
        HandshakeFailed: TLS failed. HandshakeTimeout: not done within ``timeout``.
        whatever ``check_server`` raises: the server is not the pinned one (nothing
            was sent).
        RemoteError: the server answered with ``err`` (its code).
        ProtocolError, ChannelClosed: the server answered with something else, or
            closed first.
    """
    try:
        with trio.fail_after(timeout):
            try:
                tcp = await trio.open_tcp_stream(host, port)
            except OSError as exc:
                raise ConnectFailed(f"cannot connect to {host}:{port}: "
                                    f"{exc.strerror or exc}") from exc
            stream = TlsStream(tcp, pinned_client_context(), server_side=False)
            try:
                await _tls_call(stream.do_handshake, "in the handshake")
                check_server(stream.getpeercert(binary_form=True) or b"")
                await stream.send_all(encode_frame(
                    Request(id=1, service=service, op=op, body=body).to_wire()))
                limits = CodecLimits(max_frame=max_frame, max_str=max_frame, max_bin=max_frame)
                message = await _read_message(stream, FrameDecoder(limits))
            finally:
                await trio.aclose_forcefully(stream)
    except trio.TooSlowError:
        raise HandshakeTimeout(f"no answer from {host}:{port} within {timeout:g}s") from None
    if isinstance(message, ErrorMessage):
        raise RemoteError(message.code, message.message, detail=message.detail)
    if not isinstance(message, Response) or message.id != 1:
        raise BadMessage("the server answered with something other than the answer")
    return message.body
