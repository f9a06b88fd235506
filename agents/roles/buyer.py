"""The buyer (role ``buyer``): buys from sellers (``semper buy``); serves nothing of
its own beyond what every agent serves. Its purchases live in ``commerce_purchases``."""

from __future__ import annotations

from typing import Any

from semper.agents.components import _purchase
from semper.agents.runtime._roles import Role

__all__ = ["Buyer"]


class Buyer(Role):
    name = "buyer"

    def migrations(self) -> dict[str, Any]:
        return dict(_purchase.MIGRATIONS)
