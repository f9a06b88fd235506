"""Which instrument a payee takes from which payer, which the market allows, and
which a payer picks (protocol.md 8.9).

Theory of operation. Three rules meet in negotiation:

* The payee's own rules, by the payer's certified liability level (read from the
  certificate of the channel's peer, so no payer can claim one): per module a
  ``min_level``, and a cap on unguaranteed instruments (a cheque may bounce; a
  module says it is guaranteed with a class attribute ``guaranteed = True``, and a
  plugin that does not say is unguaranteed). At level ``liable`` the cap is the
  certificate's liability amount; below it, ``unguaranteed_cap``. The payee answers
  ``payment.capabilities`` with what it would accept from that peer, and
  ``payment.accept`` refuses anything else (``payment.policy_refused``).
* The market's: a ``market.policy`` statement signed by the market root, carried
  with the CRL; a forbidden module is negotiated by neither side
  (``payment.forbidden_instrument``); a required one is taken by every payee that
  has it, from anyone, whatever its own level rules.
* The payer's pick (``choose_instrument``): the first module in its own order of
  preference that the market permits and the payee takes from it for the amount,
  a guaranteed one before any unguaranteed, with one line saying why.

Pure: identities, statements and the root come in; decisions go out.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ed25519

from ..certificates import Level, fingerprint
from ..money import MAX_MINOR_UNITS, Amount
from ..statements import Statement, StatementError, sign_statement, verify_ed25519
from ._errors import NoCommonInstrument, PaymentError
from ._negotiation import Capabilities, Limits, ModuleOffer

__all__ = [
    "ALL_ALLOWED",
    "DEFAULT_UNGUARANTEED_CAP",
    "DEFAULT_UNGUARANTEED_LEVEL",
    "MARKET_POLICY",
    "BadMarketPolicy",
    "ForbiddenInstrument",
    "MarketPolicy",
    "PayeePolicy",
    "PolicyRefused",
    "choose_instrument",
    "is_guaranteed",
    "sign_market_policy",
    "verify_market_policy",
]

#: The statement type of the market's instrument policy.
MARKET_POLICY: Final = "market.policy"
#: Below ``liable``, an unguaranteed instrument is capped at this, per currency.
DEFAULT_UNGUARANTEED_CAP: Final = {"EUR": 10_000}
#: The level an unguaranteed instrument needs when ``[payment.policy]`` does not say.
DEFAULT_UNGUARANTEED_LEVEL: Final = Level.VERIFIED_IDENTITY
#: Modules one market policy may list in each of its lists.
MAX_LISTED: Final = 64

_NAME: Final = re.compile(r"[a-z][a-z0-9_]{0,31}\Z")
_CURRENCY: Final = re.compile(r"[A-Z]{3}\Z")
_CAP_KEY: Final = "unguaranteed_cap"
_MODULE_KEYS: Final = frozenset({"min_level"})


class PolicyRefused(PaymentError):
    """The payee's ``[payment.policy]`` does not take this module from this payer (its
    certified level is too low, or the amount is over its cap); nothing moved.
    ``detail``: ``module``, ``level`` (the payer's), ``reason``."""

    code: ClassVar[str] = "payment.policy_refused"


class ForbiddenInstrument(PaymentError):
    """The market policy forbids (or does not allow) this module: neither side
    negotiates it; nothing moved. ``detail``: ``module``, ``serial`` (the policy's)."""

    code: ClassVar[str] = "payment.forbidden_instrument"


class BadMarketPolicy(PaymentError):
    """A ``market.policy`` that is malformed or not signed by the market root; it is
    ignored (the policy kept stays). ``detail["field"]`` when one is at fault."""

    code: ClassVar[str] = "payment.bad_market_policy"


def is_guaranteed(module: object) -> bool:
    """Whether a module says its payments cannot bounce (``guaranteed = True``);
    a plugin that does not say is not."""
    return getattr(module, "guaranteed", False) is True


# -- the payee's rules -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PayeePolicy:
    """``[payment.policy]``: ``min_levels`` per module (a module not named needs
    ``verified-identity`` if unguaranteed, nothing if guaranteed) and
    ``unguaranteed_cap`` (currency -> minor units) below level ``liable``."""

    min_levels: Mapping[str, Level] = field(default_factory=dict)
    unguaranteed_cap: Mapping[str, int] = field(
        default_factory=lambda: dict(DEFAULT_UNGUARANTEED_CAP))

    @classmethod
    def from_table(cls, table: Mapping[str, Any] | None) -> PayeePolicy:
        """From the TOML table: ``unguaranteed_cap = {EUR = 10000}`` and one table per
        module, ``cheque = {min_level = "verified-identity"}``.

        Raises:
            ValueError: anything else, naming the key.
        """
        if table is None:
            return cls()
        if not isinstance(table, Mapping):
            raise ValueError("[payment.policy] must be a table")
        levels: dict[str, Level] = {}
        cap = dict(DEFAULT_UNGUARANTEED_CAP)
        for key, value in table.items():
            if key == _CAP_KEY:
                if not isinstance(value, Mapping) or not all(
                        isinstance(c, str) and _CURRENCY.match(c) and type(u) is int
                        and 0 <= u <= MAX_MINOR_UNITS for c, u in value.items()):
                    raise ValueError("payment.policy.unguaranteed_cap maps currency codes to "
                                     "minor units (0 takes none)")
                cap = dict(value)
                continue
            if not isinstance(key, str) or not _NAME.match(key):
                raise ValueError(f"payment.policy: {key!r} is not a module name")
            if not isinstance(value, Mapping) or set(value) - _MODULE_KEYS:
                raise ValueError(f"payment.policy.{key} takes min_level = 'LEVEL'")
            label = value.get("min_level")
            if not isinstance(label, str):
                raise ValueError(f"payment.policy.{key}.min_level must be a level label")
            levels[key] = Level.from_label(label)
        return cls(min_levels=levels, unguaranteed_cap=cap)

    def to_table(self) -> dict[str, Any]:
        """The TOML table ``from_table`` reads back."""
        table: dict[str, Any] = {name: {"min_level": level.label}
                                 for name, level in sorted(self.min_levels.items())}
        table[_CAP_KEY] = dict(self.unguaranteed_cap)
        return table

    def min_level(self, module: str, *, guaranteed: bool) -> Level:
        default = Level.SELF_ASSERTED if guaranteed else DEFAULT_UNGUARANTEED_LEVEL
        return self.min_levels.get(module, default)

    def cap(self, currency: str, level: Level, liability: Amount | None) -> int:
        """The largest unguaranteed payment in ``currency`` from a payer at ``level``."""
        if level >= Level.LIABLE:
            if liability is not None and liability.currency == currency:
                return liability.minor_units
            return 0
        return self.unguaranteed_cap.get(currency, 0)

    def tailor(self, offer: ModuleOffer, *, guaranteed: bool, level: Level,
               liability: Amount | None) -> tuple[ModuleOffer | None, str | None]:
        """``offer`` as taken from a payer at ``level``: the same, capped, or None with
        the reason (for the payer to read)."""
        needed = self.min_level(offer.name, guaranteed=guaranteed)
        if level < needed:
            return None, f"needs {needed.label}"
        if guaranteed:
            return offer, None
        kept = []
        for limit in offer.limits:
            cap = self.cap(limit.currency, level, liability)
            if cap >= limit.minimum.minor_units:
                kept.append(Limits(minimum=limit.minimum, maximum=Amount(
                    limit.currency, min(cap, limit.maximum.minor_units))))
        if not kept:
            return None, f"is not taken unguaranteed from {level.label}"
        return ModuleOffer(name=offer.name, limits=tuple(kept)), None


def tailor_capabilities(base: Capabilities, *, payer_level: Level | None,
                        liability: Amount | None, policy: PayeePolicy | None,
                        market: MarketPolicy, guaranteed: Callable[[str], bool]
                        ) -> Capabilities:
    """What a payee with ``base`` capabilities takes from one payer: the market's
    forbidden modules left out, then the payee's rules for the payer's level
    (``payer_level`` None: not applied). Each module left out is named in
    ``declined`` with its reason."""
    modules: list[ModuleOffer] = []
    declined: list[tuple[str, str]] = []
    for offer in base.modules:
        why = market.why_not(offer.name)
        if why is None and policy is not None and payer_level is not None \
                and offer.name not in market.required:
            tailored, why = policy.tailor(offer, guaranteed=guaranteed(offer.name),
                                          level=payer_level, liability=liability)
            offer = tailored if tailored is not None else offer
        if why is None:
            modules.append(offer)
        else:
            declined.append((offer.name, why))
    return Capabilities(modules=tuple(modules), bank=base.bank, declined=tuple(declined))


# -- the market's rules ----------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class MarketPolicy:
    """The body of a ``market.policy``: ``allowed`` (None: any module), ``forbidden``,
    ``required`` (every payee that has it takes it from anyone), ``issued_ms`` and
    ``serial`` (a newer policy has a larger serial).

    Raises (construction):
        BadMarketPolicy: a bad name, a module both required and forbidden (or not
            allowed), or a bad serial or time.
    """

    allowed: frozenset[str] | None = None
    forbidden: frozenset[str] = frozenset()
    required: frozenset[str] = frozenset()
    issued_ms: int = 0
    serial: int = 0

    def __post_init__(self) -> None:
        for what in ("allowed", "forbidden", "required"):
            names = getattr(self, what)
            if names is None and what == "allowed":
                continue
            if not isinstance(names, frozenset) or len(names) > MAX_LISTED or not all(
                    isinstance(n, str) and _NAME.match(n) for n in names):
                raise _bad(f"{what} lists at most {MAX_LISTED} module names", what)
        if self.required & self.forbidden or (
                self.allowed is not None and not self.required <= self.allowed):
            raise _bad("a required module must be allowed and not forbidden", "required")
        for what in ("issued_ms", "serial"):
            value = getattr(self, what)
            if type(value) is not int or not 0 <= value <= MAX_MINOR_UNITS:
                raise _bad(f"{what} must be a non-negative int", what)

    def why_not(self, module: str) -> str | None:
        """None if the market permits ``module``, else why not (for a person)."""
        if module in self.forbidden:
            return "is forbidden by the market"
        if self.allowed is not None and module not in self.allowed:
            return "is not allowed by the market"
        return None

    def check(self, module: str) -> None:
        """Raises ForbiddenInstrument unless the market permits ``module``."""
        why = self.why_not(module)
        if why is not None:
            raise ForbiddenInstrument(f"{module} {why} (market policy {self.serial})",
                                      detail={"module": module, "serial": self.serial})

    def to_body(self) -> dict[str, Any]:
        return {"allowed": None if self.allowed is None else sorted(self.allowed),
                "forbidden": sorted(self.forbidden), "required": sorted(self.required),
                "issued_ms": self.issued_ms, "serial": self.serial}

    @classmethod
    def from_body(cls, body: object) -> MarketPolicy:
        """Raises BadMarketPolicy."""
        keys = {"allowed", "forbidden", "required", "issued_ms", "serial"}
        if type(body) is not dict or set(body) != keys:
            raise _bad(f"a market policy has the keys {sorted(keys)}", "body")

        def names(what: str) -> frozenset[str]:
            value = body[what]
            # Strings only before the set: a map or a list in it is unhashable.
            if type(value) is not list or len(value) > MAX_LISTED or not all(
                    type(name) is str for name in value):
                raise _bad(f"{what} must be a list of module names", what)
            return frozenset(value)

        return cls(allowed=None if body["allowed"] is None else names("allowed"),
                   forbidden=names("forbidden"), required=names("required"),
                   issued_ms=body["issued_ms"], serial=body["serial"])


#: No market policy known: every module permitted (serial 0, so any signed one is newer).
ALL_ALLOWED: Final = MarketPolicy()


def _bad(message: str, field: str) -> BadMarketPolicy:
    return BadMarketPolicy(message, detail={"type": MARKET_POLICY, "field": field})


def sign_market_policy(policy: MarketPolicy, *, key: ed25519.Ed25519PrivateKey,
                       root: x509.Certificate, nonce: bytes) -> Statement:
    """The ``market.policy`` statement, signed by the market root's own key (its
    signer is the root certificate's fingerprint). Raises ValueError if ``key`` is not
    the root's."""
    return sign_statement(MARKET_POLICY, policy.to_body(), key=key, certificate=root,
                          now_ms=policy.issued_ms, nonce=nonce)


def verify_market_policy(statement: Statement, *, root: x509.Certificate) -> MarketPolicy:
    """The policy a ``market.policy`` statement states, checked against the root.

    Raises:
        BadMarketPolicy: another type, not signed by ``root``'s key, or a bad body.
    """
    if not isinstance(statement, Statement) or statement.type != MARKET_POLICY:
        raise _bad("not a market.policy statement", "type")
    public = root.public_key()
    if statement.signer != fingerprint(root) or not isinstance(public,
                                                               ed25519.Ed25519PublicKey):
        raise _bad("the market policy is not signed by the market root", "signer")
    try:
        verify_ed25519(public.public_bytes_raw(), statement.signed_bytes(),
                       statement.signature)
    except StatementError:
        raise _bad("the market policy's signature does not verify", "signature") from None
    return MarketPolicy.from_body(statement.body)


# -- the payer's pick ------------------------------------------------------------------


def choose_instrument(payer: Capabilities, payee: Capabilities, amount: Amount, *,
                      market: MarketPolicy, guaranteed: Callable[[str], bool],
                      unfit: Callable[[str], str | None] = lambda name: None
                      ) -> tuple[str, str]:
    """The module a payer picks without being told: the first of its own modules, in
    its order, that the market permits, ``unfit`` does not refuse (say, a purse for
    an item that is not streamed), and the payee (tailored to this payer) takes for
    ``amount``; a guaranteed one before any that is not.

    Returns:
        ``(module, why)``: ``why`` is one line, ``"card: the seller accepts it for EUR
        12.00; cheque needs verified-identity"``: the pick, then why each module
        before it in our order was not picked.

    Raises:
        NoCommonInstrument: none fits; its message says why for each module.
    """
    fits: list[str] = []
    reasons: dict[str, str] = {}
    declined = dict(payee.declined)
    for offer in payer.modules:
        name = offer.name
        why = market.why_not(name) or unfit(name)
        if why is None and not offer.admits(amount):
            why = f"is beyond our own limit for {amount}"
        if why is None:
            why = declined.get(name) or _payee_limits(payee, name, amount)
        if why is None:
            fits.append(name)
        else:
            reasons[name] = f"{name} {why}"
    pick = next((n for n in fits if guaranteed(n)), fits[0] if fits else None)
    if pick is None:
        raise NoCommonInstrument(
            f"no payment module fits {amount}: " + "; ".join(reasons.values())
            if reasons else f"we offer no payment module for {amount}",
            detail={"amount": amount.to_wire(), "payer": payer.to_wire()["modules"],
                    "payee": payee.to_wire()["modules"]})
    line = [f"{pick}: the seller accepts it for {amount}"]
    for offer in payer.modules:
        if offer.name == pick:
            break
        line.append(reasons.get(offer.name) or f"{offer.name} is not guaranteed")
    return pick, "; ".join(line)


def _payee_limits(payee: Capabilities, name: str, amount: Amount) -> str | None:
    """None if the payee takes ``amount`` by ``name``, else why not."""
    offer = payee.offer(name)
    if offer is None:
        return "is not taken by the seller"
    if offer.admits(amount):
        return None
    limits = [x for x in offer.limits if x.currency == amount.currency]
    if not limits:
        return f"is not taken by the seller in {amount.currency}"
    limit = limits[0]
    if amount.minor_units > limit.maximum.minor_units:
        return f"is taken by the seller only up to {limit.maximum}"
    return f"is taken by the seller only from {limit.minimum}"
