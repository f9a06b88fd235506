"""Which services and ops a side offers: the table a channel dispatches requests by."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ._errors import UnknownOp, UnknownService
from ._messages import ServiceInfo, shown

if TYPE_CHECKING:
    from ._channel import Channel

__all__ = ["Handler", "RequestContext", "ServiceRegistry"]


@dataclass(frozen=True, slots=True)
class RequestContext:
    """What a handler knows about the request besides its body."""

    channel: Channel
    request_id: int | None  # None for a note
    service: str
    op: str

    @property
    def peer(self) -> Any:
        """The identity the peer verifier returned for this channel."""
        return self.channel.peer


#: A handler returns the response body (a value in the wire's value model), or
#: raises an exception with a string ``code`` attribute and ``wire = True`` to answer
#: with that error (any other exception is answered ``internal.error``).
Handler = Callable[[RequestContext, Any], Awaitable[Any]]


class ServiceRegistry:
    """Maps (service, op) to handlers; announces the services in our ``hello``.

    Request ops and note ops are separate tables: a ``note`` reaches only a handler
    registered with ``add_note`` (it has no answer, no id and no in-flight slot), so
    a peer cannot run a request handler by sending it as a note.
    """

    def __init__(self) -> None:
        self._services: dict[str, tuple[ServiceInfo, dict[str, Handler]]] = {}
        self._notes: dict[str, dict[str, Handler]] = {}

    def add_service(self, name: str, *, version: int = 1, modules: Iterable[str] = ()) -> None:
        if name in self._services:
            raise ValueError(f"service {name!r} is registered already")
        self._services[name] = (ServiceInfo(version=version, modules=tuple(modules)), {})
        self._notes[name] = {}

    def add_modules(self, name: str, modules: Iterable[str]) -> None:
        """Advertise more modules of a registered service (each once, in order)."""
        info, ops = self._services[name]
        more = tuple(m for m in modules if m not in info.modules)
        self._services[name] = (ServiceInfo(version=info.version,
                                            modules=info.modules + more), ops)

    def ops(self) -> list[tuple[str, str]]:
        """Every (service, op) with a handler, notes included."""
        return sorted({(service, op) for service, (_, table) in self._services.items()
                       for op in table} | {(service, op) for service, table in
                                           self._notes.items() for op in table})

    def add_op(self, service: str, op: str, handler: Handler) -> None:
        self._add(self._ops(service), service, op, handler)

    def add_note(self, service: str, op: str, handler: Handler) -> None:
        """Register a handler for ``note`` frames (one-way, run in arrival order)."""
        self._ops(service)
        self._add(self._notes[service], service, op, handler)

    def _ops(self, service: str) -> dict[str, Handler]:
        try:
            return self._services[service][1]
        except KeyError:
            raise ValueError(f"register service {service!r} before its ops") from None

    def _add(self, table: dict[str, Handler], service: str, op: str, handler: Handler) -> None:
        if op in self._services[service][1] or op in self._notes[service]:
            raise ValueError(f"{service}.{op} is registered already")
        table[op] = handler

    def lookup(self, service: str, op: str) -> Handler:
        """The request handler. Raises UnknownService or UnknownOp, which go back to
        the peer as `err`."""
        return self._find(service, op, note=False)

    def lookup_note(self, service: str, op: str) -> Handler:
        """The note handler; a request op is no note op (UnknownOp)."""
        return self._find(service, op, note=True)

    def _find(self, service: str, op: str, *, note: bool) -> Handler:
        entry = self._services.get(service)
        if entry is None:
            raise UnknownService(f"no service {shown(service)} here",
                                 detail={"service": service[:64]})
        handler = (self._notes[service] if note else entry[1]).get(op)
        if handler is None:
            raise UnknownOp(f"service {shown(service)} has no {'note' if note else 'op'} "
                            f"{shown(op)}", detail={"service": service[:64], "op": op[:64]})
        return handler

    def services(self) -> dict[str, ServiceInfo]:
        return {name: info for name, (info, _) in self._services.items()}
