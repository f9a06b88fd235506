"""The bank (role ``bank``): accounts, refunds, and the bank half of every payment
instrument installed (``components/_bank.py`` says how each applies a payment)."""

from __future__ import annotations

from semper.agents.components._bank import BankService, bank_halves
from semper.agents.runtime._component import Component
from semper.agents.runtime._roles import Role

__all__ = ["Bank"]


class Bank(Role):
    name = "bank"
    components = (BankService,)

    def plugin_classes(self) -> list[type[Component]]:
        return bank_halves(self.agent.config.payment.modules,
                           skipped=self.agent.skipped_components)
