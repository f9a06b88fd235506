"""Which services and ops a side offers: the table a channel dispatches requests by."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ._errors import UnknownOp, UnknownService
from ._messages import ServiceInfo

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
#: raises an exception with a string ``code`` attribute to answer with that error.
Handler = Callable[[RequestContext, Any], Awaitable[Any]]


class ServiceRegistry:
    """Maps (service, op) to handlers; announces the services in our ``hello``."""

    def __init__(self) -> None:
        self._services: dict[str, tuple[ServiceInfo, dict[str, Handler]]] = {}

    def add_service(self, name: str, *, version: int = 1, modules: Iterable[str] = ()) -> None:
        if name in self._services:
            raise ValueError(f"service {name!r} is registered already")
        self._services[name] = (ServiceInfo(version=version, modules=tuple(modules)), {})

    def add_op(self, service: str, op: str, handler: Handler) -> None:
        try:
            ops = self._services[service][1]
        except KeyError:
            raise ValueError(f"register service {service!r} before its ops") from None
        if op in ops:
            raise ValueError(f"{service}.{op} is registered already")
        ops[op] = handler

    def lookup(self, service: str, op: str) -> Handler:
        """Raises UnknownService or UnknownOp, which go back to the peer as `err`."""
        entry = self._services.get(service)
        if entry is None:
            raise UnknownService(f"no service {service!r} here", detail={"service": service})
        handler = entry[1].get(op)
        if handler is None:
            raise UnknownOp(f"service {service!r} has no op {op!r}",
                            detail={"service": service, "op": op})
        return handler

    def services(self) -> dict[str, ServiceInfo]:
        return {name: info for name, (info, _) in self._services.items()}
