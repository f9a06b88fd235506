"""Roles whose services come with later issues: for now they run what every agent
runs (channels, archive, evidence, directory card) and answer ``sys.ping``."""

from __future__ import annotations

from semper.agents.runtime._roles import Role

__all__ = ["Arbiter", "Notary"]


class Notary(Role):
    name = "notary"


class Arbiter(Role):
    name = "arbiter"
