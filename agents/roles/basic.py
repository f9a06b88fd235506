"""Roles whose services come with later issues: for now they run the agent runtime
(channels, archive, directory card) and answer ``sys.ping``."""

from __future__ import annotations

from .._roles import Role

__all__ = ["Arbiter", "Buyer", "Notary", "Seller"]


class Seller(Role):
    name = "seller"


class Buyer(Role):
    name = "buyer"


class Notary(Role):
    name = "notary"


class Arbiter(Role):
    name = "arbiter"
