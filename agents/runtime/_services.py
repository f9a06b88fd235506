"""What every agent runs, as components: ``sys`` (ping), the evidence archive, the
``evidence`` service, the peer book, the certificates (the CRL it keeps current), and
contract signing (``contracts``: either party of an exchange, protocol.md 10.6), and
certified mail (``mail``: sender and receiver, protocol.md 10.4).

They are thin: the agent owns the objects behind them (``agent.evidence``,
``agent.peers``, its CRL), which roles and other components reach too, and these
components give them the shape every component has: tables, ops, background work.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from typing import Any

import trio

from semper.agents.components import _archive, _directory
from semper.agents.components._contracts import Contracts
from semper.agents.components._mail import CertifiedMail
from semper.agents.runtime._component import Component
from semper.services._ops import PING, Op
from semper.services.archive._ops import DELIVER

__all__ = ["RUNTIME_COMPONENTS", "ArchiveTables", "Certificates", "Evidence", "Peers", "Sys"]


class Sys(Component):
    """``sys.ping``: who we are, and our clock."""

    name = "sys"

    def handlers(self) -> Iterator[tuple[Op, Callable[..., Awaitable[Any]]]]:
        yield PING, self.ping

    async def ping(self, context: Any, body: Any) -> dict[str, Any]:
        return {"agent": self.context.id, "role": self.context.role, "echo": body,
                "time_ns": time.time_ns()}


class ArchiveTables(Component):
    """The evidence archive's tables (the hash chain of everything signed)."""

    name = "archive"

    def migrations(self) -> Mapping[str, Sequence[str]]:
        return _archive.MIGRATIONS


class Evidence(Component):
    """``evidence.deliver``: statements from peers, receipted and archived."""

    name = "evidence"
    requires = (ArchiveTables,)

    def handlers(self) -> Iterator[tuple[Op, Callable[..., Awaitable[Any]]]]:
        yield DELIVER, self.context.agent.evidence.deliver_handler


class Peers(Component):
    """The peer book's tables. Its work (publishing our card) starts once the agent
    listens, so the agent runs it after binding (``Agent.run``)."""

    name = "peers"

    def migrations(self) -> Mapping[str, Sequence[str]]:
        return _directory.PEER_MIGRATIONS


class Certificates(Component):
    """The CRL kept current: reread from its file and fetched from the CA agent."""

    name = "certificates"

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        agent = self.context.agent
        task_status.started()
        await agent.keep_running(agent.watch_crl)


RUNTIME_COMPONENTS: tuple[type[Component], ...] = (Sys, ArchiveTables, Evidence, Peers,
                                                   Certificates, Contracts, CertifiedMail)
