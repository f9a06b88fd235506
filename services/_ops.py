"""Wire ops, each declared once: its service, its name, and the types of its request
and response bodies.

An ``Op`` is what both ends of a request agree on. The serving side registers a
handler for it and gets a decoded, validated request (``request.from_wire``); the
calling side sends ``request.to_wire()`` and decodes the answer with
``response.from_wire``. A body type is any class with ``from_wire(value) -> instance``
(raising a coded error, ``*.bad_request``, for a value it refuses) and
``to_wire() -> value``; ``None`` stands for a body that is passed through as it is
(a handler that validates its own, or an empty map).

Every ``Op`` made is kept in ``declared_ops()``, so that a test can hold the code and
docs/protocol.md to the same list.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final, Protocol, Self

__all__ = ["PING", "Body", "Op", "declared_ops"]

_DECLARED: Final[dict[tuple[str, str], Op]] = {}


class Body(Protocol):
    """A typed wire body."""

    @classmethod
    def from_wire(cls, value: Any) -> Self: ...

    def to_wire(self) -> Any: ...


@dataclass(frozen=True, slots=True)
class Op:
    """One request-response op: ``service.name``, with its body types.

    ``note`` marks a one-way message (no response). Declaring one op twice with other
    types is a programming error (ValueError): a name means one thing on the wire.
    """

    service: str
    name: str
    request: type[Body] | None = None
    response: type[Body] | None = None
    note: bool = False

    def __post_init__(self) -> None:
        key = (self.service, self.name)
        known = _DECLARED.setdefault(key, self)
        if known != self:
            if _shape(known) != _shape(self):
                raise ValueError(f"op {self.service}.{self.name} is declared twice, differently")
            _DECLARED[key] = self  # the same declaration run again (a module reloaded)

    @property
    def qualified(self) -> str:
        return f"{self.service}.{self.name}"

    def decode_request(self, value: Any) -> Any:
        return value if self.request is None else self.request.from_wire(value)

    def encode_request(self, request: Any) -> Any:
        return request if self.request is None or not hasattr(request, "to_wire") \
            else request.to_wire()

    def decode_response(self, value: Any) -> Any:
        return value if self.response is None else self.response.from_wire(value)

    def encode_response(self, response: Any) -> Any:
        return response if self.response is None or not hasattr(response, "to_wire") \
            else response.to_wire()


def _shape(op: Op) -> tuple[Any, ...]:
    def name(body: type | None) -> str | None:
        return None if body is None else f"{body.__module__}.{body.__qualname__}"

    return op.service, op.name, name(op.request), name(op.response), op.note


def declared_ops() -> list[Op]:
    """Every op declared by the modules imported so far, sorted by name."""
    return sorted(_DECLARED.values(), key=lambda op: (op.service, op.name))



#: ``sys.ping``, which every agent serves (protocol.md 7.1): any body, echoed back with
#: the responder's id, role and clock. The runtime's own op, so declared here.
PING: Final = Op("sys", "ping")
