"""Agreeing on a payment instrument: each side's modules, currencies and limits.

Theory of operation. Each side states, in its order of preference, the modules it
accepts and, per module, the currencies it takes with an inclusive minimum and
maximum amount. The payer's preference wins: the first module in the payer's list
that the payee also lists, with both sides' limits for the amount's currency
containing the amount. The rule is deterministic and the same on both sides, so
the payee can check the payer's choice by running it again.

Wire (``Capabilities.to_wire``; the ``payment.capabilities`` answer)::

    {"modules": [{"name": "transfer",
                  "limits": [{"min": {"currency": "EUR", "minor_units": 1},
                              "max": {"currency": "EUR", "minor_units": 100000000}}]},
                 ...],
     "bank": "bank",                                              (payee, optional)
     "declined": [{"name": "cheque", "reason": "needs verified-identity"}]}  (optional)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Final

from ..certificates import check_agent_id
from ..money import Amount, BadAmount
from ._errors import BadRequest, NoCommonInstrument
from ._schema import MAX_AMOUNT, amount_from_wire

__all__ = ["MAX_MODULES", "Capabilities", "Limits", "ModuleOffer", "negotiate"]

#: Modules one side may list; currencies one module may list.
MAX_MODULES: Final = 32
MAX_CURRENCIES: Final = 64
#: Characters of one reason in ``declined``.
MAX_REASON: Final = 200

_NAME: Final = re.compile(r"[a-z][a-z0-9_]{0,31}\Z")


def _bad(message: str, field: str) -> BadRequest:
    return BadRequest(message, detail={"type": "payment.capabilities", "field": field})


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    """The inclusive range of amounts one module takes in one currency.

    Raises (construction):
        BadRequest: not two Amounts of one currency with 1 <= minimum <= maximum.
    """

    minimum: Amount
    maximum: Amount

    def __post_init__(self) -> None:
        if not (isinstance(self.minimum, Amount) and isinstance(self.maximum, Amount)):
            raise _bad("limits are two Amounts", "limits")
        if self.minimum.currency != self.maximum.currency:
            raise _bad("a limit's minimum and maximum are of one currency", "limits")
        if not 1 <= self.minimum.minor_units <= self.maximum.minor_units <= MAX_AMOUNT:
            raise _bad("limits need 1 <= minimum <= maximum", "limits")

    @property
    def currency(self) -> str:
        return self.minimum.currency

    def admits(self, amount: Amount) -> bool:
        """Whether ``amount`` is of this currency and within the range."""
        return (amount.currency == self.currency
                and self.minimum.minor_units <= amount.minor_units <= self.maximum.minor_units)

    def to_wire(self) -> dict[str, Any]:
        return {"min": self.minimum.to_wire(), "max": self.maximum.to_wire()}

    @classmethod
    def from_wire(cls, value: object) -> Limits:
        """Raises BadRequest."""
        if type(value) is not dict or set(value) != {"min", "max"}:
            raise _bad("limits are {min, max}", "limits")
        try:
            return cls(minimum=amount_from_wire(value["min"]),
                       maximum=amount_from_wire(value["max"]))
        except BadAmount:
            raise _bad("a limit is not an amount", "limits") from None


@dataclass(frozen=True, slots=True, kw_only=True)
class ModuleOffer:
    """One module a side accepts, with its limits per currency (one entry each).

    Raises (construction):
        BadRequest: a bad name, no limits, too many, or a currency listed twice.
    """

    name: str
    limits: tuple[Limits, ...]

    def __post_init__(self) -> None:
        if type(self.name) is not str or not _NAME.match(self.name):
            raise _bad(f"a module name is 1-32 of a-z 0-9 _, got {self.name!r:.40}", "name")
        if type(self.limits) is not tuple or not 1 <= len(self.limits) <= MAX_CURRENCIES \
                or not all(isinstance(x, Limits) for x in self.limits):
            raise _bad(f"module {self.name}: 1 to {MAX_CURRENCIES} limits", "limits")
        currencies = [x.currency for x in self.limits]
        if len(set(currencies)) != len(currencies):
            raise _bad(f"module {self.name}: a currency is listed twice", "limits")

    @property
    def currencies(self) -> tuple[str, ...]:
        return tuple(x.currency for x in self.limits)

    def admits(self, amount: Amount) -> bool:
        return any(x.admits(amount) for x in self.limits)

    def to_wire(self) -> dict[str, Any]:
        return {"name": self.name, "limits": [x.to_wire() for x in self.limits]}

    @classmethod
    def from_wire(cls, value: object) -> ModuleOffer:
        """Raises BadRequest."""
        if type(value) is not dict or set(value) != {"name", "limits"} \
                or type(value["limits"]) is not list:
            raise _bad("a module offer is {name, limits: [...]}", "modules")
        return cls(name=value["name"],
                   limits=tuple(Limits.from_wire(x) for x in value["limits"][:MAX_CURRENCIES + 1]))


@dataclass(frozen=True, slots=True, kw_only=True)
class Capabilities:
    """What one side accepts, most preferred module first; ``bank``, in a payee's
    answer, the bank it is paid through (optional on the wire): a payer that pays
    through another bank learns it before anything is signed.

    Raises (construction):
        BadRequest: more than ``MAX_MODULES`` modules, a module listed twice, or a
            ``bank`` that is not an agent id.
    """

    modules: tuple[ModuleOffer, ...]
    bank: str | None = None
    #: In a payee's answer tailored to one payer (protocol.md 8.9): each module it has
    #: but will not take from that payer, with why (``"needs verified-identity"``).
    declined: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if type(self.modules) is not tuple or len(self.modules) > MAX_MODULES \
                or not all(isinstance(m, ModuleOffer) for m in self.modules):
            raise _bad(f"at most {MAX_MODULES} module offers", "modules")
        names = [m.name for m in self.modules]
        if len(set(names)) != len(names):
            raise _bad("a module is listed twice", "modules")
        if self.bank is not None:
            try:
                check_agent_id(self.bank, "bank")
            except ValueError:
                raise _bad("bank must be an agent id", "bank") from None
        if type(self.declined) is not tuple or len(self.declined) > MAX_MODULES or not all(
                type(d) is tuple and len(d) == 2 and type(d[0]) is str and _NAME.match(d[0])
                and type(d[1]) is str and 0 < len(d[1]) <= MAX_REASON and d[1].isprintable()
                for d in self.declined):
            # A reason is the payer's words to its user (semper buy prints it): printable
            # only, or a payee could send escape sequences or a bidi override.
            raise _bad(f"declined lists at most {MAX_MODULES} {{name, reason}}, each reason "
                       f"printable", "declined")

    def offer(self, name: str) -> ModuleOffer | None:
        """This side's offer for module ``name``, if it has one."""
        return next((m for m in self.modules if m.name == name), None)

    def admits(self, name: str, amount: Amount) -> bool:
        """Whether this side takes ``amount`` through module ``name``."""
        offer = self.offer(name)
        return offer is not None and offer.admits(amount)

    def restricted_to(self, names: set[str] | frozenset[str]) -> Capabilities:
        """The same offers, keeping only modules in ``names`` (those actually loaded)."""
        return Capabilities(modules=tuple(m for m in self.modules if m.name in names),
                            bank=self.bank,
                            declined=tuple(d for d in self.declined if d[0] in names))

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {"modules": [m.to_wire() for m in self.modules]}
        if self.bank is not None:
            wire["bank"] = self.bank
        if self.declined:
            wire["declined"] = [{"name": n, "reason": r} for n, r in self.declined]
        return wire

    @classmethod
    def from_wire(cls, value: object) -> Capabilities:
        """Raises BadRequest for anything but the capabilities map."""
        if type(value) is not dict or set(value) - {"bank", "declined"} != {"modules"} \
                or type(value["modules"]) is not list:
            raise _bad('capabilities are {"modules": [...], "bank": str (optional), '
                       '"declined": [...] (optional)}', "modules")
        declined = value.get("declined", [])
        if type(declined) is not list or not all(
                type(d) is dict and set(d) == {"name", "reason"} for d in declined):
            raise _bad('declined is [{"name", "reason"}, ...]', "declined")
        return cls(modules=tuple(ModuleOffer.from_wire(m)
                                 for m in value["modules"][:MAX_MODULES + 1]),
                   bank=value.get("bank"),
                   declined=tuple((d["name"], d["reason"])
                                  for d in declined[:MAX_MODULES + 1]))


def negotiate(payer: Capabilities, payee: Capabilities, amount: Amount) -> str:
    """Pick the module to pay ``amount`` with: the payer's most preferred module that
    both sides accept for the amount's currency, with the amount within both sides'
    limits.

    Returns:
        The module's name.

    Raises:
        NoCommonInstrument: no such module; ``detail`` holds ``amount``, and
            ``payer`` and ``payee``: each side's capabilities wire.
    """
    if not isinstance(amount, Amount):
        raise TypeError(f"amount must be an Amount, not {type(amount).__name__}")
    for offer in payer.modules:
        if offer.admits(amount) and payee.admits(offer.name, amount):
            return offer.name
    raise NoCommonInstrument(
        f"no payment module both sides accept for {amount} "
        f"(payer offers {_summary(payer)}; payee offers {_summary(payee)})",
        detail={"amount": amount.to_wire(), "payer": payer.to_wire()["modules"],
                "payee": payee.to_wire()["modules"]},
    )


def _summary(side: Capabilities) -> str:
    if not side.modules:
        return "nothing"
    return ", ".join(
        f"{m.name} ({', '.join(f'{x.minimum}..{x.maximum}' for x in m.limits)})"
        for m in side.modules
    )
