"""The request bodies of ``certificates.crl`` and ``certificates.status``
(protocol.md 7.3), on the one schema (``services._schema``), so that the runtime
hands the CA's handlers a checked request.

``certificates.status`` refuses with ``certificates.bad_status_query`` as before
(detail ``type``, ``field``; a bad agent id or serial also ``key``, as before the
schema); ``certificates.crl``, which took anything before, refuses a body that is not
``{"known": int?, "fresh_after": int?}`` with ``certificates.bad_crl_query``.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import ClassVar, Final, Self

from .._errors import ServiceError
from .._schema import AGENT, TIME, Body, Kind, Schema, integer, wire
from ._errors import BadStatusQuery
from ._issue import check_name
from ._status import StatusQuery

__all__ = ["CRL_TYPE", "STATUS_TYPE", "BadCrlQuery", "CrlRequest", "StatusRequest"]

CRL_TYPE: Final = "certificates.crl"
STATUS_TYPE: Final = "certificates.status"
#: Hex digits of a serial (RFC 5280: at most 20 octets).
MAX_SERIAL_DIGITS: Final = 40
_HEX: Final = re.compile(rf"[0-9a-f]{{1,{MAX_SERIAL_DIGITS}}}\Z")


class BadCrlQuery(ServiceError):
    """A ``certificates.crl`` body that is not ``{"known": int?, "fresh_after": int?}``."""

    code: ClassVar[str] = "certificates.bad_crl_query"


def _bad_agent(value: object) -> BadStatusQuery:
    try:
        check_name("agent id", value)  # type: ignore[arg-type]
        why = "agent is not an agent id"
    except ValueError as exc:
        why = str(exc)
    return BadStatusQuery(why, detail={"type": STATUS_TYPE, "field": "agent", "key": "agent"})


class _NotHex:
    """A wire serial that is not hex: refused by the check (an int on the wire, 12,
    must not pass as the serial 12)."""

    __slots__ = ()


def _serial_or_refused(value: object) -> object:
    return int(value, 16) if type(value) is str and _HEX.match(value) else _NotHex()


def _bad_serial(value: object) -> BadStatusQuery:
    return BadStatusQuery(f"serial must be lowercase hex, at most {MAX_SERIAL_DIGITS} digits",
                          detail={"type": STATUS_TYPE, "field": "serial", "key": "serial"})


#: The kind of every key of the two requests.
KINDS: Final[dict[str, Kind]] = {
    "agent": dataclasses.replace(AGENT, refuse=_bad_agent),
    "serial": Kind(f"lowercase hex, 1 to {MAX_SERIAL_DIGITS} digits",
                   lambda v: type(v) is int and 0 <= v < 1 << (4 * MAX_SERIAL_DIGITS),
                   decode=_serial_or_refused, encode=lambda v: f"{v:x}", refuse=_bad_serial),
    # a CRL number (RFC 5280: non-negative), any that msgpack carries
    "known": integer(0, (1 << 64) - 1, "a CRL number (a non-negative int)"),
    "fresh_after": TIME,
    # the serial of the market policy the requester holds (protocol.md 8.9)
    "policy": integer(0, (1 << 63) - 1, "a market policy serial (a non-negative int)"),
}
STATUS_SCHEMA: Final = Schema(BadStatusQuery, KINDS)
CRL_SCHEMA: Final = Schema(BadCrlQuery, KINDS)


@dataclass(frozen=True, slots=True, kw_only=True)
class StatusRequest(Body):
    """``{"agent": ID}`` (its latest certificate) or ``{"serial": HEX}``, exactly one."""

    TYPE: ClassVar[str] = STATUS_TYPE
    SCHEMA: ClassVar[Schema] = STATUS_SCHEMA

    agent_id: str | None = field(default=None, metadata=wire(key="agent"))
    serial: int | None = None

    def _check(self) -> None:
        if (self.agent_id is None) == (self.serial is None):
            STATUS_SCHEMA.fail(STATUS_TYPE, "body", 'must be {"agent": ID} or {"serial": HEX}')

    @classmethod
    def from_wire(cls, value: object) -> Self:
        """Raises BadStatusQuery (also for ``{"agent": ID, "serial": nil}``: one key)."""
        if type(value) is dict and len(value) != 1:
            STATUS_SCHEMA.fail(STATUS_TYPE, "body", 'must be {"agent": ID} or {"serial": HEX}')
        return super(StatusRequest, cls).from_wire(value)  # slots: no bare super()

    def query(self) -> StatusQuery:
        """The question, as ``certificate_status`` takes it."""
        return StatusQuery(agent_id=self.agent_id, serial=self.serial)


@dataclass(frozen=True, slots=True, kw_only=True)
class CrlRequest(Body):
    """``{"known": int?, "fresh_after": int?, "policy": int?}``: the CRL number the
    requester holds (missing: none), a time the CRL must have been issued after, and
    the serial of the market policy it holds (missing: it asks for none)."""

    TYPE: ClassVar[str] = CRL_TYPE
    SCHEMA: ClassVar[Schema] = CRL_SCHEMA

    known: int | None = None
    fresh_after: int | None = None
    policy: int | None = None

    @property
    def known_number(self) -> int:
        return 0 if self.known is None else self.known
