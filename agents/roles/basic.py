"""Roles whose services come with later issues: for now they run what every agent
runs (channels, archive, evidence, directory card) and answer ``sys.ping``."""

from __future__ import annotations

from semper.agents.components._arbiter import Arbitration
from semper.agents.components._notary import NotaryDecisions
from semper.agents.components._notary_escrow import NotaryEscrow
from semper.agents.components._timestamps import Timestamps
from semper.agents.runtime._roles import Role

__all__ = ["Arbiter", "Notary"]


class Notary(Role):
    name = "notary"
    components = (Timestamps, NotaryDecisions, NotaryEscrow)


class Arbiter(Role):
    """Judges evidence bundles (``dispute.file``): agents/components/_arbiter.py."""

    name = "arbiter"
    components = (Arbitration,)
