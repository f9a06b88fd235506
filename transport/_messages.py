"""The envelope: the six message kinds of DESIGN.md section 3, as typed values.

Frames are decoded into these at the edge (``parse_message``), so nothing past the
channel's reader handles a raw map. Every map carries ``type``; the other keys are
listed in ``docs/protocol.md``. Unknown extra keys are ignored, so later versions
can add optional fields without a version bump.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

from ._errors import BadMessage

__all__ = [
    "PROTOCOL_VERSION",
    "Bye",
    "ErrorMessage",
    "Hello",
    "Message",
    "Note",
    "PeerLimits",
    "Request",
    "Response",
    "ServiceInfo",
    "parse_message",
]

PROTOCOL_VERSION: Final = 1
_MAX_ID: Final = (1 << 63) - 1


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceInfo:
    version: int
    modules: tuple[str, ...] = ()

    def to_wire(self) -> dict[str, Any]:
        return {"version": self.version, "modules": list(self.modules)}


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerLimits:
    """What a side promises to accept; the other side must stay within it."""

    max_frame: int
    max_in_flight: int

    def to_wire(self) -> dict[str, Any]:
        return {"max_frame": self.max_frame, "max_in_flight": self.max_in_flight}


@dataclass(frozen=True, slots=True, kw_only=True)
class Hello:
    agent: str
    role: str
    version: int = PROTOCOL_VERSION
    services: dict[str, ServiceInfo] = field(default_factory=dict)
    limits: PeerLimits

    def to_wire(self) -> dict[str, Any]:
        return {
            "type": "hello",
            "agent": self.agent,
            "role": self.role,
            "version": self.version,
            "services": {name: info.to_wire() for name, info in self.services.items()},
            "limits": self.limits.to_wire(),
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class Request:
    id: int
    service: str
    op: str
    body: Any = None

    def to_wire(self) -> dict[str, Any]:
        return {"type": "req", "id": self.id, "service": self.service, "op": self.op,
                "body": self.body}


@dataclass(frozen=True, slots=True, kw_only=True)
class Response:
    id: int
    body: Any = None

    def to_wire(self) -> dict[str, Any]:
        return {"type": "res", "id": self.id, "body": self.body}


@dataclass(frozen=True, slots=True, kw_only=True)
class ErrorMessage:
    id: int | None
    code: str
    message: str
    detail: dict[str, Any] = field(default_factory=dict)

    def to_wire(self) -> dict[str, Any]:
        return {"type": "err", "id": self.id, "code": self.code, "message": self.message,
                "detail": self.detail}


@dataclass(frozen=True, slots=True, kw_only=True)
class Note:
    service: str
    op: str
    body: Any = None

    def to_wire(self) -> dict[str, Any]:
        return {"type": "note", "service": self.service, "op": self.op, "body": self.body}


@dataclass(frozen=True, slots=True, kw_only=True)
class Bye:
    reason: str = ""

    def to_wire(self) -> dict[str, Any]:
        return {"type": "bye", "reason": self.reason}


Message = Hello | Request | Response | ErrorMessage | Note | Bye


def shown(value: Any, limit: int = 64) -> str:
    """A peer's value in a message or log line: its repr, clipped, so that an error
    about a huge value is never huge itself (and always encodes)."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + f"...({len(text)} chars)"


def _get(obj: dict[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    value = obj.get(key)
    # bool is an int subclass: an id of True is a type error, not 1.
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise BadMessage(f"{shown(obj.get('type'))} needs {shown(key)} of type "
                         f"{getattr(kind, '__name__', kind)}", detail={"key": key})
    return value


def _get_id(obj: dict[str, Any]) -> int:
    value: int = _get(obj, "id", int)
    if not 1 <= value <= _MAX_ID:
        raise BadMessage("request ids are integers from 1 to 2**63-1", detail={"key": "id"})
    return value


def _parse_hello(obj: dict[str, Any]) -> Hello:
    services: dict[str, ServiceInfo] = {}
    for name, info in _get(obj, "services", dict).items():
        if not isinstance(info, dict):
            raise BadMessage(f"service {shown(name)} must be a map")
        modules = _get(info, "modules", list)
        if not all(isinstance(m, str) for m in modules):
            raise BadMessage(f"service {shown(name)} modules must be strings")
        services[name] = ServiceInfo(version=_get(info, "version", int), modules=tuple(modules))
    limits = _get(obj, "limits", dict)
    return Hello(
        agent=_get(obj, "agent", str),
        role=_get(obj, "role", str),
        version=_get(obj, "version", int),
        services=services,
        limits=PeerLimits(
            max_frame=_get(limits, "max_frame", int),
            max_in_flight=_get(limits, "max_in_flight", int),
        ),
    )


def _parse_err(obj: dict[str, Any]) -> ErrorMessage:
    rid = None if obj.get("id") is None else _get_id(obj)
    detail = obj.get("detail")
    return ErrorMessage(
        id=rid,
        code=_get(obj, "code", str),
        message=_get(obj, "message", str),
        detail=detail if isinstance(detail, dict) else {},
    )


def parse_message(obj: Any) -> Message:
    """Turn one decoded frame into a typed message.

    Raises:
        BadMessage: not a map, an unknown ``type``, or a missing or mistyped key.
            ``detail["id"]`` carries the request id when one could be read, so the
            refusal can be correlated.
    """
    if not isinstance(obj, dict):
        raise BadMessage("a message is a map")
    kind = obj.get("type")
    try:
        if kind == "req":
            return Request(id=_get_id(obj), service=_get(obj, "service", str),
                           op=_get(obj, "op", str), body=obj.get("body"))
        if kind == "res":
            return Response(id=_get_id(obj), body=obj.get("body"))
        if kind == "err":
            return _parse_err(obj)
        if kind == "note":
            return Note(service=_get(obj, "service", str), op=_get(obj, "op", str),
                        body=obj.get("body"))
        if kind == "bye":
            reason = obj.get("reason")
            return Bye(reason=reason if isinstance(reason, str) else "")
        if kind == "hello":
            return _parse_hello(obj)
    except BadMessage as exc:
        rid = obj.get("id")
        if kind == "req" and type(rid) is int and 1 <= rid <= _MAX_ID:
            exc.detail["id"] = rid
        raise
    raise BadMessage(f"unknown message type {shown(kind)}")
