"""The payment manager wired to an agent: its context, capabilities and modules.

``AgentPaymentContext`` is what ``services.payment`` modules run against (the
``PaymentContext`` protocol): it signs with the agent's key and archives what it
signs and what it verified, under the transaction the caller names, and reaches
peers over the agent's cached channels.
"""

from __future__ import annotations

import logging
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

from cryptography import x509

from semper.services import Amount
from semper.services.archive import Direction
from semper.services.payment import (
    BANK_ROLE,
    BANK_SERVICE,
    MODULES_GROUP,
    Capabilities,
    Limits,
    ModuleOffer,
    PaymentManager,
    Unsupported,
    WrongBank,
    load_modules,
    our_bank,
)
from semper.services.statements import Statement

if TYPE_CHECKING:
    from semper.agents.runtime._agent import Agent

log = logging.getLogger("semper.payment")

__all__ = ["AgentPaymentContext", "capabilities_of", "installed_modules", "installed_order",
           "offered_modules",
           "payment_manager"]


def installed_order(group: str) -> list[str]:
    """The names registered in an entry-point ``group``, in the order an agent
    prefers them when its configuration does not say: semper's own by name, then
    other packages' by name (a plugin never displaces a built-in instrument)."""
    points = list(entry_points(group=group))
    ours = {p.name for p in points if p.dist is not None and p.dist.name == "semper"}
    return [*sorted(ours), *sorted({p.name for p in points} - ours)]


def offered_modules(agent: Agent) -> tuple[str, ...]:
    """The payment modules this agent offers, most preferred first: ``[payment]
    modules`` if it restricts them, else every module installed."""
    chosen = agent.config.payment.modules
    if chosen is not None:
        return chosen
    installed = installed_modules()
    return tuple(name for name in installed_order(MODULES_GROUP) if name in installed)


def capabilities_of(agent: Agent) -> Capabilities:
    """What this agent takes: its modules in order, 1 minor unit up to the
    ``[payment]`` limit, per currency."""
    limits = tuple(Limits(minimum=Amount(currency, 1), maximum=Amount(currency, units))
                   for currency, units in sorted(agent.config.payment.limit.items()))
    return Capabilities(modules=tuple(ModuleOffer(name=name, limits=limits)
                                      for name in offered_modules(agent)))


def payment_manager(agent: Agent) -> PaymentManager:
    return PaymentManager(modules=installed_modules(), capabilities=capabilities_of(agent))


def installed_modules() -> dict[str, Any]:
    """The payment modules installed that load; each one that does not is logged and
    left out (a plugin with a missing dependency must not stop the agent)."""
    broken: list[tuple[str, str]] = []
    modules = load_modules(broken=broken)
    for name, why in broken:
        log.error("payment module %r is installed but does not load (left out): %s",
                  name, why)
    return modules


class AgentPaymentContext:
    """One payment's context: ``transaction`` names it in both archives."""

    def __init__(self, agent: Agent, transaction: str, peer: str) -> None:
        self._agent = agent
        self.transaction = transaction
        self.peer = peer  # the counterparty, for the archive
        self.our_id = agent.id
        self.bank_id = agent.config.payment.bank or "bank"
        self.certificate: x509.Certificate = agent.credentials.identity.certificate
        self.root = agent.credentials.root

    @property
    def crl(self) -> x509.CertificateRevocationList:
        return self._agent.crl

    def now_ms(self) -> int:
        return self._agent.clock.now_ms()

    def holder(self, module: str) -> Any:
        """The first component whose ``holds`` names ``module`` (the Wallet, Cards)."""
        for component in self._agent.components.values():
            if module in getattr(component, "holds", ()):
                return component
        raise Unsupported(f"{self.our_id} holds no {module} instrument",
                          detail={"module": module})

    async def sign(self, type: str, body: dict[str, Any]) -> Statement:
        statement = self._agent.evidence.sign(type, body)
        await self._agent.archive.record(statement, direction=Direction.SENT, peer=self.peer,
                                         transaction=self.transaction,
                                         certificate=self.certificate)
        return statement

    async def record(self, statement: Statement, certificate: x509.Certificate) -> None:
        await self._agent.archive.record(statement, direction=Direction.RECEIVED,
                                         peer=self.peer, transaction=self.transaction,
                                         certificate=certificate)

    async def request(self, peer: str, service: str, op: str, body: Any) -> Any:
        """A bank op goes only to our configured bank (checked before dialing), and
        only once the channel's certificate says the peer is a bank."""
        if service == BANK_SERVICE:
            our_bank(self, peer)
            channel = await self._agent.channel(peer)
            if channel.peer.role != BANK_ROLE:
                raise WrongBank(f"{peer!r} is not a bank (its certificate says "
                                f"{channel.peer.role!r})",
                                detail={"bank": peer, "expected": self.bank_id})
        return await self._agent.request(peer, service, op, body)
