"""The buyer (role ``buyer``): buys from sellers (``semper buy``); serves nothing of
its own beyond what every agent serves. Its purchases live in ``commerce_purchases``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from semper.agents.components import _purchase
from semper.agents.components._cards import Cards
from semper.agents.components._delivery_buyer import DeliveryDownloads
from semper.agents.components._fair_buyer import FairPurchases
from semper.agents.components._purse import Purse
from semper.agents.components._wallet import Wallet
from semper.agents.runtime._component import Component
from semper.agents.runtime._roles import Role

__all__ = ["Buyer", "Purchases"]


class Purchases(Component):
    """The purchases a buyer keeps (the driver, ``Shopper``, runs in the commands)."""

    name = "purchases"

    def migrations(self) -> Mapping[str, Sequence[str]]:
        return _purchase.MIGRATIONS


class Buyer(Role):
    name = "buyer"
    components = (Purchases, FairPurchases, DeliveryDownloads, Purse, Cards, Wallet)
