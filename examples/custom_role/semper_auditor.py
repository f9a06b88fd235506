"""An auditor: peers file reports with it; it keeps them and answers who filed what.

Install it next to semper (``pip install ./examples/custom_role``), issue an agent a
certificate with role ``auditor``, and ``semper agent run`` serves ``audit.*``.

The role is a list of components; the one component here declares its ops with typed
bodies, so a handler gets a checked ``Report`` and a bad body is refused with
``audit.bad_request`` before the handler runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from semper.agents import Component, Role, handles
from semper.services import ServiceError
from semper.services.schema import Body, Op, Schema, binary, text


class NotAllowed(ServiceError):  # a ServiceError is meant for the peer (wire = True)
    code: ClassVar[str] = "audit.not_allowed"


class BadReport(ServiceError):
    code: ClassVar[str] = "audit.bad_request"


SCHEMA = Schema(BadReport, {"subject": text(200), "body": binary(0, 65_536)})


@dataclass(frozen=True, slots=True, kw_only=True)
class Report(Body):
    TYPE: ClassVar[str] = "audit.report"
    SCHEMA: ClassVar[Schema] = SCHEMA
    subject: str
    body: bytes | None = None  # optional: absent is an empty report


REPORT = Op("audit", "report", Report)
SUMMARY = Op("audit", "summary")


class Reports(Component):
    name = "audit"

    def migrations(self) -> dict[str, list[str]]:
        return {"audit": ["CREATE TABLE reports (id INTEGER PRIMARY KEY, "
                          "peer TEXT NOT NULL, subject TEXT NOT NULL, body BLOB NOT NULL)"]}

    @handles(REPORT)
    async def report(self, context: Any, report: Report) -> dict[str, Any]:
        if context.peer.role not in ("seller", "bank"):
            raise NotAllowed(f"{context.peer.role}s do not file reports")
        peer = context.peer.agent_id
        number = await self.context.database.transaction(lambda db: db.execute(
            "INSERT INTO reports (peer, subject, body) VALUES (?, ?, ?)",
            (peer, report.subject, report.body or b"")).lastrowid)
        return {"number": number, "filed_by": peer}

    @handles(SUMMARY)
    async def summary(self, context: Any, body: Any) -> dict[str, int]:
        rows = await self.context.database.read(lambda db: db.execute(
            "SELECT peer, count(*) FROM reports GROUP BY peer").fetchall())
        return dict(rows)


class Auditor(Role):
    name = "auditor"
    components = (Reports,)
