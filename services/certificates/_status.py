"""One certificate's status, as the CA answers it: good, revoked, expired or unknown.

Pure: the CA's record of what it issued, its current CRL and ``now`` come in; a
``StatusReport`` goes out. The same report is printed by ``semper ca status`` and
sent as the answer to ``certificates.status``.
"""

from __future__ import annotations

import datetime as dt
import enum
import re
from dataclasses import dataclass
from typing import Any

from cryptography import x509

from ._errors import BadStatusQuery
from ._issue import check_name
from ._oids import Level

__all__ = [
    "CertStatus",
    "IssuedCertificate",
    "StatusQuery",
    "StatusReport",
    "certificate_status",
    "crl_number",
    "to_ms",
]

_HEX = re.compile(r"[0-9a-f]{1,40}\Z")


def to_ms(when: dt.datetime) -> int:
    """Milliseconds since the Unix epoch (UTC) of an aware datetime."""
    return int(when.timestamp() * 1000)


def crl_number(crl: x509.CertificateRevocationList) -> int:
    try:
        return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except x509.ExtensionNotFound:
        return 0


class CertStatus(enum.Enum):
    GOOD = "good"
    REVOKED = "revoked"
    EXPIRED = "expired"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True, kw_only=True)
class IssuedCertificate:
    """The CA's record of one certificate it issued."""

    serial: int
    agent_id: str
    role: str
    level: Level
    fingerprint: bytes
    not_after_ms: int
    issued_ms: int


@dataclass(frozen=True, slots=True, kw_only=True)
class StatusQuery:
    """``certificates.status`` asks by agent id (its latest certificate) or by serial.

    Wire: ``{"agent": str}`` or ``{"serial": str}`` (lowercase hex, no leading
    ``0x``), exactly one of the two.
    """

    agent_id: str | None = None
    serial: int | None = None

    def __post_init__(self) -> None:
        if (self.agent_id is None) == (self.serial is None):
            raise BadStatusQuery("ask by agent id or by serial, exactly one")

    def to_wire(self) -> dict[str, Any]:
        if self.agent_id is not None:
            return {"agent": self.agent_id}
        assert self.serial is not None
        return {"serial": f"{self.serial:x}"}

    @classmethod
    def from_wire(cls, body: object) -> StatusQuery:
        """Raises BadStatusQuery for anything but the two forms above."""
        if not isinstance(body, dict) or len(body) != 1:
            raise BadStatusQuery('the body must be {"agent": ID} or {"serial": HEX}')
        if "agent" in body:
            agent = body["agent"]
            try:
                check_name("agent id", agent)
            except ValueError as exc:
                raise BadStatusQuery(str(exc), detail={"key": "agent"}) from None
            return cls(agent_id=agent)
        serial = body.get("serial")
        if not isinstance(serial, str) or not _HEX.match(serial):
            raise BadStatusQuery("serial must be lowercase hex, at most 40 digits",
                                 detail={"key": "serial"})
        return cls(serial=int(serial, 16))


@dataclass(frozen=True, slots=True, kw_only=True)
class StatusReport:
    """Wire: ``{"status": "good"|"revoked"|"expired"|"unknown", "agent": str|nil,
    "serial": str|nil (hex), "not_after": int|nil, "revoked_at": int|nil,
    "crl_number": int}``; times in ms since the Unix epoch (UTC)."""

    status: CertStatus
    agent_id: str | None
    serial: int | None
    not_after_ms: int | None
    revoked_ms: int | None
    crl_number: int

    def to_wire(self) -> dict[str, Any]:
        return {"status": self.status.value, "agent": self.agent_id,
                "serial": None if self.serial is None else f"{self.serial:x}",
                "not_after": self.not_after_ms, "revoked_at": self.revoked_ms,
                "crl_number": self.crl_number}

    @classmethod
    def from_wire(cls, body: object) -> StatusReport:
        """Raises BadStatusQuery (here the answer, not the question, is malformed)."""
        bad = BadStatusQuery("a malformed status answer")
        if not isinstance(body, dict):
            raise bad
        serial, agent = body.get("serial"), body.get("agent")
        if serial is not None and not (isinstance(serial, str) and _HEX.match(serial)):
            raise bad
        if agent is not None and not isinstance(agent, str):
            raise bad
        if any(body.get(k) is not None and type(body.get(k)) is not int
               for k in ("not_after", "revoked_at")) or type(body.get("crl_number")) is not int:
            raise bad
        try:
            status = CertStatus(body.get("status"))
        except ValueError:
            raise bad from None
        return cls(status=status, agent_id=agent,
                   serial=None if serial is None else int(serial, 16),
                   not_after_ms=body.get("not_after"), revoked_ms=body.get("revoked_at"),
                   crl_number=body["crl_number"])


def certificate_status(
    issued: IssuedCertificate | None,
    query: StatusQuery,
    *,
    crl: x509.CertificateRevocationList,
    now: dt.datetime,
) -> StatusReport:
    """The status of the certificate ``query`` names; ``issued`` is the CA's record of
    it (None when the CA has none). The CRL is authoritative: a certificate on it is
    ``revoked`` even when it has expired since, or when the CA lost its record.
    """
    number = crl_number(crl)
    serial = issued.serial if issued is not None else query.serial
    entry = crl.get_revoked_certificate_by_serial_number(serial) if serial is not None else None
    agent_id = issued.agent_id if issued is not None else query.agent_id
    not_after = issued.not_after_ms if issued is not None else None
    if entry is not None:
        return StatusReport(status=CertStatus.REVOKED, agent_id=agent_id, serial=serial,
                            not_after_ms=not_after,
                            revoked_ms=to_ms(entry.revocation_date_utc), crl_number=number)
    if issued is None:
        return StatusReport(status=CertStatus.UNKNOWN, agent_id=agent_id, serial=serial,
                            not_after_ms=None, revoked_ms=None, crl_number=number)
    status = CertStatus.EXPIRED if to_ms(now) > issued.not_after_ms else CertStatus.GOOD
    return StatusReport(status=status, agent_id=agent_id, serial=serial,
                        not_after_ms=not_after, revoked_ms=None, crl_number=number)
