"""An auditor: peers file reports with it; it keeps them and answers who filed what.

Install it next to semper (``pip install ./examples/custom_role``), issue an agent a
certificate with role ``auditor``, and ``semper agent run`` serves ``audit.*``.
"""

from __future__ import annotations

from typing import Any

from semper.agents import Role


class NotAllowed(Exception):
    code = "audit.not_allowed"  # a stable code: the peer receives it as an `err`
    wire = True  # meant for the peer: an error without it reaches it as internal.error

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Auditor(Role):
    name = "auditor"

    def migrations(self) -> dict[str, list[str]]:
        return {"audit": ["CREATE TABLE reports (id INTEGER PRIMARY KEY, "
                          "peer TEXT NOT NULL, subject TEXT NOT NULL, body BLOB NOT NULL)"]}

    def setup(self) -> None:
        self.agent.registry.add_service("audit", version=1)
        self.agent.add_op("audit", "report", self.report)
        self.agent.add_op("audit", "summary", self.summary)

    async def report(self, context: Any, body: Any) -> dict[str, Any]:
        if context.peer.role not in ("seller", "bank"):
            raise NotAllowed(f"{context.peer.role}s do not file reports")
        if not isinstance(body, dict) or not isinstance(body.get("subject"), str):
            raise NotAllowed("a report is {subject: str, body: bytes}")
        peer, subject, data = context.peer.agent_id, body["subject"], bytes(body.get("body", b""))
        number = await self.agent.database.transaction(lambda db: db.execute(
            "INSERT INTO reports (peer, subject, body) VALUES (?, ?, ?)",
            (peer, subject, data)).lastrowid)
        return {"number": number, "filed_by": peer}

    async def summary(self, context: Any, body: Any) -> dict[str, int]:
        rows = await self.agent.database.read(lambda db: db.execute(
            "SELECT peer, count(*) FROM reports GROUP BY peer").fetchall())
        return dict(rows)
