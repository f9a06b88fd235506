"""The payment manager wired to an agent: its context, capabilities and modules.

``AgentPaymentContext`` is what ``services.payment`` modules run against (the
``PaymentContext`` protocol): it signs with the agent's key and archives what it
signs and what it verified, under the transaction the caller names, and reaches
peers over the agent's cached channels.

``MarketPolicyBook`` keeps the newest market policy (``market.policy``, signed by
the market root) that came with a CRL, and ``payment_manager`` keeps to it and to
the agent's ``[payment.policy]`` (protocol.md 8.9).
"""

from __future__ import annotations

import logging
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio
from cryptography import x509

from semper.agents.runtime._files import write_file
from semper.services import Amount, ServiceError
from semper.services.archive import Direction
from semper.services.payment import (
    ALL_ALLOWED,
    BANK_ROLE,
    BANK_SERVICE,
    MODULES_GROUP,
    Capabilities,
    Limits,
    MarketPolicy,
    ModuleOffer,
    PayeePolicy,
    PaymentManager,
    Unsupported,
    WrongBank,
    load_modules,
    our_bank,
    verify_market_policy,
)
from semper.services.statements import Statement

if TYPE_CHECKING:
    from semper.agents.runtime._agent import Agent

log = logging.getLogger("semper.payment")

__all__ = ["MARKET_POLICY_FILE", "AgentPaymentContext", "MarketPolicyBook", "capabilities_of",
           "installed_modules", "installed_order", "offered_modules", "payment_manager"]

#: Where an agent keeps the newest market policy it applied (in its data_dir), and
#: where the CA keeps the one it serves (beside the root key that signed it).
MARKET_POLICY_FILE = "market-policy.bin"


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
    """The agent's manager: its capabilities, its ``[payment.policy]`` as payee, and
    the market policy its ``market_policy`` book holds at each use."""
    book = agent.market_policy
    return PaymentManager(modules=installed_modules(), capabilities=capabilities_of(agent),
                          policy=PayeePolicy.from_table(agent.config.payment.policy),
                          market=lambda: book.policy)


class MarketPolicyBook:
    """The newest market policy this agent verified (by serial), kept in
    ``data_dir/market-policy.bin`` across runs; every module permitted until one
    arrives. A policy that does not verify against the market root, or is not newer
    than the one kept, is ignored (logged): the kept one stays."""

    def __init__(self, root: x509.Certificate, data_dir: Path) -> None:
        self._root = root
        self._path = data_dir / MARKET_POLICY_FILE
        self.policy: MarketPolicy = ALL_ALLOWED
        self.statement: Statement | None = None
        try:
            kept = self._path.read_bytes()
        except OSError:
            return
        self._take(kept, quiet=True)

    def _take(self, data: object, *, quiet: bool = False) -> bool:
        if self.statement is not None and data == self.statement.to_bytes():
            return False  # the one we hold (the CA rereads its file at every request)
        try:
            statement = Statement.from_bytes(data) if isinstance(data, bytes) \
                else Statement.from_wire(data)
            policy = verify_market_policy(statement, root=self._root)
        except (ServiceError, ValueError) as exc:
            if not quiet:
                log.warning("ignoring a market policy: %s", getattr(exc, "message", exc))
            return False
        if policy.serial <= self.policy.serial:
            if policy.serial == self.policy.serial and statement != self.statement \
                    and not quiet:
                log.warning("ignoring another market policy numbered %d, the serial of ours",
                            policy.serial)
            elif policy.serial < self.policy.serial and not quiet:
                log.warning("ignoring market policy %d, older than %d", policy.serial,
                            self.policy.serial)
            return False
        self.policy, self.statement = policy, statement
        if not quiet:
            log.info("applied market policy %d (forbidden: %s; required: %s)", policy.serial,
                     ", ".join(sorted(policy.forbidden)) or "none",
                     ", ".join(sorted(policy.required)) or "none")
        return True

    async def offer(self, answer: object) -> bool:
        """Apply the ``policy`` a ``certificates.crl`` answer carries, if newer and
        good, and keep it for the next run. True if applied."""
        wire = answer.get("policy") if isinstance(answer, dict) else None
        if wire is None or not self._take(wire):
            return False
        assert self.statement is not None
        try:
            await trio.to_thread.run_sync(write_file, self._path, self.statement.to_bytes())
        except OSError as exc:
            log.warning("cannot keep the market policy in %s: %s", self._path, exc)
        return True


def read_policy_file(path: Path) -> bytes | None:
    """The ``market.policy`` statement's bytes kept in ``path`` (None: no file);
    checked by whoever applies it (``MarketPolicyBook``)."""
    try:
        return path.read_bytes()
    except OSError:
        return None


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
