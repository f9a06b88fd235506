"""Every error the transport raises or puts on the wire, with its stable code.

Split by who is at fault (h11's LocalProtocolError / RemoteProtocolError, trio's
ClosedResourceError / BrokenResourceError): a peer that sends garbage gets a
``ProtocolError`` sent back as ``err``; a request the peer refused surfaces here as
``RemoteError`` carrying the peer's code. Codes are API: never reuse one.

Only an error that declares ``wire = True`` goes to a peer with its code, message
and detail (``is_wire_error``); any other exception a handler raises, coded or not,
goes as ``internal.error`` with a fixed message, so that a local error (a config
error naming our files) never reaches a peer by accident. A local outcome of a call
the handler made to another agent (closed, timed out) goes as ``peer.unavailable``.
Services and agents, which may not import this module, declare ``wire`` the same
way on their own error bases.
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = [
    "BadFrame",
    "BadMessage",
    "ChannelClosed",
    "FrameTooLarge",
    "HandshakeFailed",
    "HandshakeTimeout",
    "HelloMismatch",
    "IdleTimeout",
    "InternalError",
    "ProtocolError",
    "RemoteError",
    "RequestTimeout",
    "ReusedId",
    "TooManyChannels",
    "TooManyRequests",
    "TransportError",
    "UnexpectedMessage",
    "UnknownOp",
    "UnknownService",
    "UnsupportedVersion",
    "PeerNotValid",
    "PeerUnavailable",
    "WriteTimeout",
    "is_wire_error",
    "transport_error_classes",
]


class TransportError(Exception):
    """Root of the transport's errors."""

    code: ClassVar[str] = "transport.error"
    #: True when the byte stream can no longer be trusted and must be closed.
    fatal: ClassVar[bool] = False
    #: True when the error is meant for the peer (see ``is_wire_error``); the local
    #: outcomes (closed, timeouts, TLS refusals) are not.
    wire: ClassVar[bool] = False

    def __init__(self, message: str, *, detail: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.detail: dict[str, Any] = dict(detail or {})

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


# -- the peer broke the protocol: we send `err` with this code ----------------------


class ProtocolError(TransportError):
    code: ClassVar[str] = "protocol.error"
    wire: ClassVar[bool] = True


class BadFrame(ProtocolError):
    """Bytes that are not one strict msgpack object; framing is lost."""

    code: ClassVar[str] = "protocol.bad_frame"
    fatal: ClassVar[bool] = True


class FrameTooLarge(ProtocolError):
    """A length prefix above the receiver's limit; refused before the body is read."""

    code: ClassVar[str] = "protocol.frame_too_large"
    fatal: ClassVar[bool] = True


class AnswerTooLarge(ProtocolError):
    """The answer to a request would not fit the requester's ``max_frame`` (say an
    echo of a body near the limit): the request is refused, the channel stays."""

    code: ClassVar[str] = "protocol.answer_too_large"


class BadMessage(ProtocolError):
    """A well-formed frame that is not a valid envelope (missing or mistyped key)."""

    code: ClassVar[str] = "protocol.bad_message"


class UnexpectedMessage(ProtocolError):
    """A message out of order: anything before `hello`, or a second `hello`."""

    code: ClassVar[str] = "protocol.unexpected_message"
    fatal: ClassVar[bool] = True


class UnsupportedVersion(ProtocolError):
    code: ClassVar[str] = "protocol.unsupported_version"
    fatal: ClassVar[bool] = True


class ReusedId(ProtocolError):
    """A request id not above every id the peer used before on this channel."""

    code: ClassVar[str] = "protocol.reused_id"


class UnknownService(ProtocolError):
    code: ClassVar[str] = "protocol.unknown_service"


class UnknownOp(ProtocolError):
    code: ClassVar[str] = "protocol.unknown_op"


class TooManyRequests(ProtocolError):
    """More requests in flight than the `max_in_flight` our hello announced."""

    code: ClassVar[str] = "protocol.too_many_requests"


class TooManyChannels(ProtocolError):
    """The peer already holds as many channels to us as we allow one peer."""

    code: ClassVar[str] = "protocol.too_many_channels"
    fatal: ClassVar[bool] = True


class InternalError(TransportError):
    """A handler failed in a way it did not describe; the peer learns only this code."""

    code: ClassVar[str] = "internal.error"
    wire: ClassVar[bool] = True


class PeerUnavailable(TransportError):
    """A handler could not reach an agent it needed (its channel closed, a request to
    it timed out, no connection): sent instead of that local outcome, whose message
    names the other agent and why. Not a bug, and worth a retry later."""

    code: ClassVar[str] = "peer.unavailable"
    wire: ClassVar[bool] = True


# -- authentication -----------------------------------------------------------------


class HandshakeFailed(TransportError):
    """TLS refused the connection (either side): detail["reason"] is OpenSSL's word."""

    code: ClassVar[str] = "auth.handshake_failed"
    fatal: ClassVar[bool] = True


class HelloMismatch(TransportError):
    """The peer's `hello` names another agent or role than its certificate."""

    code: ClassVar[str] = "auth.hello_mismatch"
    fatal: ClassVar[bool] = True
    wire: ClassVar[bool] = True


# -- local outcomes -----------------------------------------------------------------


class RemoteError(TransportError):
    """The peer answered a request with `err`; ``code`` is the peer's code. A handler
    that lets it through relays it: code and message came from a peer, not from us."""

    code: ClassVar[str] = "remote.error"
    wire: ClassVar[bool] = True

    def __init__(self, code: str, message: str, *, detail: dict[str, Any] | None = None) -> None:
        super().__init__(message, detail=detail)
        self.code = code  # type: ignore[misc]  # the instance carries the peer's code


class PeerNotValid(TransportError):
    """The peer no longer passes the peer check (say a new CRL revokes it); the
    instance carries the verifier's code, e.g. ``auth.revoked``."""

    code: ClassVar[str] = "auth.peer_invalid"
    fatal: ClassVar[bool] = True
    wire: ClassVar[bool] = True

    def __init__(self, code: str, message: str, *, detail: dict[str, Any] | None = None) -> None:
        super().__init__(message, detail=detail)
        self.code = code  # type: ignore[misc]


class WriteTimeout(TransportError):
    """The peer read nothing of what we sent for ``write_timeout`` seconds."""

    code: ClassVar[str] = "timeout.write"
    fatal: ClassVar[bool] = True


class ChannelClosed(TransportError):
    """The channel is closed or broke; pending requests fail with this."""

    code: ClassVar[str] = "transport.closed"


class HandshakeTimeout(TransportError):
    code: ClassVar[str] = "timeout.handshake"
    fatal: ClassVar[bool] = True


class RequestTimeout(TransportError):
    code: ClassVar[str] = "timeout.request"


class IdleTimeout(TransportError):
    code: ClassVar[str] = "timeout.idle"


def is_wire_error(exc: BaseException) -> bool:
    """Whether ``exc`` may go to a peer as it is: it declares ``wire = True`` (exactly
    True, a declaration rather than a guess) and has a str ``code``."""
    return getattr(exc, "wire", False) is True and isinstance(getattr(exc, "code", None), str)


def transport_error_classes() -> list[type[TransportError]]:
    """Every class with its own code, for the documentation check."""
    seen: list[type[TransportError]] = []
    stack: list[type[TransportError]] = [TransportError]
    while stack:
        cls = stack.pop()
        seen.append(cls)
        stack.extend(cls.__subclasses__())
    return [c for c in seen if c is not RemoteError]
