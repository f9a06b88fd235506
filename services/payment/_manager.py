"""The payment manager: one interface over the installed modules.

Modules are found through the ``semper.payment_modules`` entry-point group; each
entry point names a ``PaymentModule`` class (instantiated with no arguments) or
instance, under the module's name::

    [project.entry-points."semper.payment_modules"]
    transfer = "semper.services.payment.transfer:TransferModule"

The manager holds this side's ``Capabilities``, restricted to the modules it has.
As payer it asks the payee's ``payment.capabilities``, negotiates and runs the
chosen module; as payee it answers ``payment.capabilities`` and routes a
``payment.accept`` to its module after checking it against the invoice. Both sides
keep to the market's policy, and a payee to its own rules per payer level
(``_policy``, protocol.md 8.9).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from importlib.metadata import entry_points
from typing import Any, Final

from .._errors import ServiceError
from ..certificates import AgentIdentity
from ..money import Amount
from ..statements import Statement
from ._errors import BadRequest, NoCommonInstrument, UnknownModule, WrongBank
from ._modules import (
    Invoice,
    PayeeContext,
    PayerContext,
    PaymentModule,
    PaymentRequest,
    PaymentResult,
)
from ._negotiation import Capabilities, negotiate
from ._policy import (
    ALL_ALLOWED,
    MarketPolicy,
    PayeePolicy,
    PolicyRefused,
    is_guaranteed,
    tailor_capabilities,
)
from ._wire import PAYMENT_CAPABILITIES, PAYMENT_SERVICE, AcceptRequest

__all__ = ["MODULES_GROUP", "PaymentManager", "load_modules"]

MODULES_GROUP: Final = "semper.payment_modules"


def load_modules(group: str = MODULES_GROUP, *,
                 broken: list[tuple[str, str]] | None = None) -> dict[str, PaymentModule]:
    """Load every payment module registered in the entry-point ``group``.

    With ``broken`` (a list), a registration that fails for any reason below is
    left out and appended to it as ``(name, why)`` instead of raising: an agent runs
    the instruments that load (one broken plugin must not stop every seller).

    Returns:
        Module name -> module, in the order of the names.

    Raises:
        TypeError: an entry point that is not a ``PaymentModule`` (class or instance),
            or whose module's ``name`` is not the entry point's name.
        ValueError: two installed distributions register the same name.
        Whatever importing a registered module raises.
    """
    found: dict[str, PaymentModule] = {}
    for point in sorted(entry_points(group=group), key=lambda p: p.name):
        try:
            found_one = _load_one(point, found)
        except Exception as exc:
            if broken is None:
                raise
            broken.append((point.name, f"{point.value}: {type(exc).__name__}: {exc}"))
            continue
        found[point.name] = found_one
    return found


def _load_one(point: Any, found: Mapping[str, PaymentModule]) -> PaymentModule:
    obj = point.load()
    module = obj() if isinstance(obj, type) else obj
    if not isinstance(module, PaymentModule):
        raise TypeError(f"payment module {point.name!r} ({point.value}) is not a PaymentModule")
    if module.name != point.name:
        raise TypeError(f"payment module {point.value} calls itself {module.name!r}, "
                        f"registered as {point.name!r}")
    if point.name in found:
        raise ValueError(f"two payment modules are registered as {point.name!r}")
    return module


class PaymentManager:
    """Negotiates an instrument and drives its module, for either side.

    Args:
        modules: name -> module (``load_modules()``).
        capabilities: what this side accepts, in its order of preference; modules
            not in ``modules`` are dropped from it.
        policy: as payee, the rules per payer level (None: every payer alike).
        market: the market policy in force now (called at each use: a newer one
            arrives with the CRL); None: every module permitted.
    """

    def __init__(self, *, modules: Mapping[str, PaymentModule],
                 capabilities: Capabilities, policy: PayeePolicy | None = None,
                 market: Callable[[], MarketPolicy] | None = None) -> None:
        self._modules = dict(modules)
        self._capabilities = capabilities.restricted_to(frozenset(self._modules))
        self.policy = policy
        self._market = market

    @property
    def market(self) -> MarketPolicy:
        """The market policy this side keeps to now."""
        return ALL_ALLOWED if self._market is None else self._market()

    def guaranteed(self, name: str) -> bool:
        """Whether module ``name`` (installed here) says it is guaranteed."""
        return is_guaranteed(self._modules.get(name))

    def capabilities_for(self, payer: AgentIdentity | None) -> Capabilities:
        """What we take from ``payer`` (the channel's peer): our capabilities without
        what the market forbids, and tailored to its level by our policy (None: no
        payer known, the level rules not applied)."""
        return tailor_capabilities(
            self._capabilities, payer_level=None if payer is None else payer.level,
            liability=None if payer is None else payer.liability, policy=self.policy,
            market=self.market, guaranteed=self.guaranteed)

    def payer_capabilities(self) -> Capabilities:
        """What we pay with, in our order, without what the market forbids."""
        return tailor_capabilities(self._capabilities, payer_level=None, liability=None,
                                   policy=None, market=self.market,
                                   guaranteed=self.guaranteed)

    @property
    def capabilities(self) -> Capabilities:
        """What this side accepts: the ``payment.capabilities`` answer is its wire."""
        return self._capabilities

    def module(self, name: str) -> PaymentModule:
        """Raises UnknownModule for a module this side does not offer."""
        if self._capabilities.offer(name) is None:
            raise UnknownModule(f"no payment module {name!r} here", detail={"module": name})
        return self._modules[name]

    def choose(self, payee: Capabilities, request: PaymentRequest,
               *, only: str | None = None) -> str:
        """The module to pay ``request`` with (``negotiate``), ``only`` that one if given.

        Raises:
            ForbiddenInstrument: ``only`` is forbidden by the market policy.
            NoCommonInstrument: none fits.
        """
        ours = self.payer_capabilities()
        if only is not None:
            self.market.check(only)
            ours = ours.restricted_to(frozenset({only}))
        return negotiate(ours, payee, request.amount)

    async def pay(self, ctx: PayerContext, request: PaymentRequest,
                  *, only: str | None = None) -> PaymentResult:
        """Ask the payee's capabilities, choose a module, and pay with it.

        Raises:
            ForbiddenInstrument: ``only`` is forbidden by the market (nothing asked).
            NoCommonInstrument: the two sides have no module in common for the amount.
            WrongBank: the payee names another bank than ours (nothing is signed).
            BadRequest: the payee's capabilities are malformed.
            Whatever the module's ``pay`` raises.
        """
        if only is not None:
            self.market.check(only)
        answer = await ctx.request(request.payee, PAYMENT_SERVICE, PAYMENT_CAPABILITIES, {})
        payee = Capabilities.from_wire(answer)
        if payee.bank is not None and payee.bank != ctx.bank_id:
            raise WrongBank(f"{request.payee} is paid through {payee.bank}, we pay through "
                            f"{ctx.bank_id}", detail={"bank": payee.bank,
                                                       "expected": ctx.bank_id})
        name = self.choose(payee, request, only=only)
        return await self._modules[name].pay(ctx, request)

    async def accept(self, ctx: PayeeContext, request: AcceptRequest, *,
                     invoice: Invoice, payer: AgentIdentity | None = None) -> PaymentResult:
        """Handle a ``payment.accept``: the agent decoded ``request`` and found the
        ``invoice`` it issued for ``request.reference``; ``payer`` is the identity
        the channel's certificate gives the peer handing it over (None: the level
        rules are not applied). Every check is made before the module runs.

        Raises:
            UnknownModule: the module is not one we offer.
            ForbiddenInstrument: the market forbids the module.
            NoCommonInstrument: we do not take the invoice's amount with that module.
            PolicyRefused: our policy does not take it from this payer (its level,
                or the amount over its cap).
            BadRequest: the invoice is for another reference.
            Whatever the module's ``accept`` raises.
        """
        module = self.module(request.module)
        if request.reference != invoice.reference:
            raise BadRequest("the proof is for another reference than the invoice",
                             detail={"type": "payment.accept", "field": "reference"})
        self.market.check(request.module)
        if not self._capabilities.admits(request.module, invoice.amount):
            raise NoCommonInstrument(
                f"{request.module} is not accepted here for {invoice.amount}",
                detail={"amount": invoice.amount.to_wire(), "payer": [],
                        "payee": self._capabilities.to_wire()["modules"]})
        self.check_payer(request.module, invoice.amount, payer)
        return await module.accept(ctx, request.proof, invoice=invoice)

    def check_payer(self, module: str, amount: Amount, payer: AgentIdentity | None) -> None:
        """Raise unless the market permits ``module`` and our policy takes ``amount``
        by it from ``payer`` (None: the market only): for every path a payment takes
        to us, ``payment.accept`` or another (a purse's ``delivery.ticket``).

        Raises:
            ForbiddenInstrument, PolicyRefused.
        """
        self.market.check(module)
        if payer is None:
            return
        tailored = self.capabilities_for(payer)
        if tailored.admits(module, amount):
            return
        reason = dict(tailored.declined).get(module)
        offer = tailored.offer(module)
        if reason is None and offer is not None:
            reason = "is taken from it only for " + ", ".join(
                f"{x.minimum}..{x.maximum}" for x in offer.limits)
        raise PolicyRefused(
            f"{module} {reason or 'is not taken'} here "
            f"(from {payer.agent_id}, {payer.level.label}, for {amount})",
            detail={"module": module, "level": payer.level.label, "reason": reason or ""})

    def received(self, ctx: PayeeContext, proof: Any, *, payer: str,
                 reference: bytes) -> PaymentResult | None:
        """The money ``proof`` shows already moved to us from ``payer`` for
        ``reference``, by the first installed module that says so (``received``,
        optional), whether or not we offer it and whatever module the proof came
        under: money that reached us is given back if not used. None: none did."""
        for module in self._modules.values():
            received = getattr(module, "received", None)
            if received is None:
                continue
            try:
                result = received(ctx, proof, payer=payer, reference=reference)
            except ServiceError:  # a module that refuses rather than answer None
                continue
            if result is not None:
                return result  # type: ignore[no-any-return]
        return None

    def prepaid(self, statements: Sequence[Statement], *, module: str | None = None
                ) -> tuple[Statement, Amount] | None:
        """The settlement, and its amount, of a payment that we made before handing
        it over, among ``statements`` (our archive of its transaction), as the
        installed modules say (``prepaid``, optional): ``module`` (the payment's)
        first, then every other, since money moved by any instrument is money out.
        None: no module finds one."""
        names = sorted(self._modules, key=lambda name: name != module)
        for name in names:
            prepaid = getattr(self._modules[name], "prepaid", None)
            if prepaid is None:
                continue
            found = prepaid(statements)
            if found is not None:
                return found  # type: ignore[no-any-return]
        return None

    def answer_capabilities(self, body: Any = None, *,
                            payer: AgentIdentity | None = None) -> dict[str, Any]:
        """The ``payment.capabilities`` answer (the request body is ignored), for the
        peer ``payer`` asking (``capabilities_for``)."""
        return self.capabilities_for(payer).to_wire()
