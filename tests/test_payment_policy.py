"""Choosing an instrument by liability level and market policy (issue 11 item 3,
protocol.md 8.9).

Instances from the issue: a seller takes cheques only from buyers certified
``verified-identity`` or above and caps unguaranteed instruments (at level
``liable``, at the certificate's liability); a market policy signed by the CA and
distributed with the CRL forbids an instrument, which no agent negotiates;
``semper buy`` without ``--pay`` picks the best permitted instrument and says why.
Other members found: a forbidden instrument handed over anyway is refused at the
payee, and a transfer that already moved is given back; a tampered, foreign or older
policy is ignored and the kept one stays; ``payment.capabilities`` is tailored per
peer and a capped cheque above the cap is refused at accept with nothing deposited.
"""

from __future__ import annotations

import dataclasses
import types
from pathlib import Path
from typing import Any

import pytest
import trio
from cryptography.hazmat.primitives.asymmetric import ed25519
from hypothesis import given, settings
from hypothesis import strategies as st
from market_helpers import DEADLINE, config_of, running, wait_until

from semper.agents.components._payments import MARKET_POLICY_FILE, MarketPolicyBook
from semper.agents.components._purchase import Shopper
from semper.agents.operator._market import (
    DEFAULT_AGENTS,
    init_market,
    load_authority,
    market_policy,
    set_market_policy,
)
from semper.agents.runtime._agent import Agent
from semper.agents.runtime._config import ConfigError, PaymentSettings, Timeouts
from semper.services import Amount
from semper.services.certificates import Level, create_ca
from semper.services.payment import (
    ALL_ALLOWED,
    AcceptRequest,
    BadMarketPolicy,
    Capabilities,
    ForbiddenInstrument,
    Invoice,
    Limits,
    MarketPolicy,
    ModuleOffer,
    NoCommonInstrument,
    PayeePolicy,
    PaymentManager,
    PolicyRefused,
    choose_instrument,
    sign_market_policy,
    verify_market_policy,
)
from semper.services.statements import Statement
from semper.transport import RemoteError

EUR = "EUR"
WIDE = (Limits(minimum=Amount(EUR, 1), maximum=Amount(EUR, 10**8)),)


def offer(name: str) -> ModuleOffer:
    return ModuleOffer(name=name, limits=WIDE)


def caps(*names: str) -> Capabilities:
    return Capabilities(modules=tuple(offer(n) for n in names))


class _Module:
    """A module that records whether it was asked to accept: a refusal must come first."""

    def __init__(self, name: str, guaranteed: bool) -> None:
        self.name, self.guaranteed, self.accepted = name, guaranteed, 0

    async def pay(self, ctx: Any, request: Any) -> Any:  # pragma: no cover - not paid
        raise AssertionError

    async def accept(self, ctx: Any, proof: Any, *, invoice: Any) -> Any:
        self.accepted += 1
        return "accepted"

    async def refund(self, *args: Any) -> Any:  # pragma: no cover
        raise AssertionError


def peer(level: Level, liability: Amount | None = None) -> Any:
    return types.SimpleNamespace(agent_id="someone", level=level, liability=liability)


def manager(market: MarketPolicy = ALL_ALLOWED, table: dict[str, Any] | None = None
            ) -> PaymentManager:
    modules = {"transfer": _Module("transfer", True), "cheque": _Module("cheque", False)}
    return PaymentManager(modules=modules, capabilities=caps("transfer", "cheque"),
                          policy=PayeePolicy.from_table(table), market=lambda: market)


# -- the payee's rules ------------------------------------------------------------------


def test_capabilities_are_tailored_to_the_peer() -> None:
    m = manager()
    low = m.capabilities_for(peer(Level.VERIFIED_CONTACT))
    assert [o.name for o in low.modules] == ["transfer"]
    assert low.declined == (("cheque", "needs verified-identity"),)
    assert Capabilities.from_wire(low.to_wire()) == low  # the wire carries the reasons
    known = m.capabilities_for(peer(Level.VERIFIED_IDENTITY))
    assert known.offer("cheque").limits[0].maximum == Amount(EUR, 10_000)  # the default cap
    assert known.offer("transfer").limits == WIDE  # guaranteed: not capped
    liable = m.capabilities_for(peer(Level.LIABLE, Amount(EUR, 5_000)))
    assert liable.offer("cheque").limits[0].maximum == Amount(EUR, 5_000)
    big = m.capabilities_for(peer(Level.LIABLE, Amount(EUR, 10**9)))
    assert big.offer("cheque").limits == WIDE  # the liability, within our own limit
    # Configured: cheques from verified-contact, capped at EUR 20.00; transfers only
    # from verified-identity.
    m = manager(table={"cheque": {"min_level": "verified-contact"},
                       "transfer": {"min_level": "verified-identity"},
                       "unguaranteed_cap": {"EUR": 2_000}})
    low = m.capabilities_for(peer(Level.VERIFIED_CONTACT))
    assert [(o.name, o.limits[0].maximum) for o in low.modules] == [("cheque", Amount(EUR, 2_000))]
    assert low.declined == (("transfer", "needs verified-identity"),)
    # In a currency without a cap, an unguaranteed instrument is not taken below liable.
    usd = ModuleOffer(name="cheque", limits=(Limits(minimum=Amount("USD", 1),
                                                    maximum=Amount("USD", 100)),))
    tailored, why = PayeePolicy().tailor(usd, guaranteed=False, level=Level.VERIFIED_IDENTITY,
                                         liability=None)
    assert tailored is None and why == "is not taken unguaranteed from verified-identity"


@pytest.mark.parametrize("table", [
    {"cheque": {"min_level": "trusted"}}, {"cheque": "verified-identity"},
    {"cheque": {"min_level": "liable", "cap": 5}}, {"Cheque": {"min_level": "liable"}},
    {"unguaranteed_cap": {"EUR": -1}}, {"unguaranteed_cap": {"euro": 5}}, ["cheque"]])
def test_a_bad_policy_table_is_a_config_error(table: Any) -> None:
    with pytest.raises(ValueError):
        PayeePolicy.from_table(table)
    with pytest.raises(ConfigError):
        PaymentSettings(policy=table)
    assert PayeePolicy.from_table(PayeePolicy().to_table()) == PayeePolicy()


async def _accept(m: PaymentManager, module: str, units: int, who: Any) -> Any:
    request = AcceptRequest(module=module, reference=b"r" * 32, proof={})
    invoice = Invoice(amount=Amount(EUR, units), reference=b"r" * 32, payer="someone")
    return await m.accept(None, request, invoice=invoice, payer=who)  # type: ignore[arg-type]


async def test_accept_enforces_the_same_rules_before_the_module_runs() -> None:
    m = manager()
    cheque = m.module("cheque")
    with pytest.raises(PolicyRefused) as low:
        await _accept(m, "cheque", 500, peer(Level.VERIFIED_CONTACT))
    assert low.value.code == "payment.policy_refused"
    assert low.value.detail == {"module": "cheque", "level": "verified-contact",
                                "reason": "needs verified-identity"}
    # A liable buyer's cheque above its liability; one at it is taken.
    liable = peer(Level.LIABLE, Amount(EUR, 5_000))
    with pytest.raises(PolicyRefused) as over:
        await _accept(m, "cheque", 5_001, liable)
    assert "EUR 50.00" in over.value.detail["reason"]
    # Below liable, over the EUR 100.00 cap.
    with pytest.raises(PolicyRefused):
        await _accept(m, "cheque", 10_001, peer(Level.VERIFIED_IDENTITY))
    assert cheque.accepted == 0  # nothing reached the module: no cheque deposited
    assert await _accept(m, "cheque", 5_000, liable) == "accepted"
    assert await _accept(m, "transfer", 10**6, peer(Level.SELF_ASSERTED)) == "accepted"
    # A required instrument is taken from anyone, whatever the payee's own rules.
    m = manager(MarketPolicy(required=frozenset({"cheque"}), serial=3))
    assert await _accept(m, "cheque", 10**6, peer(Level.SELF_ASSERTED)) == "accepted"


# -- the market's rules -----------------------------------------------------------------


@pytest.fixture(scope="module")
def root() -> Any:
    import datetime as dt
    return create_ca("test root", now=dt.datetime.now(dt.UTC))


def signed(root: Any, **fields: Any) -> Statement:
    fields.setdefault("issued_ms", 1_700_000_000_000)
    return sign_market_policy(MarketPolicy(**fields), key=root.key, root=root.certificate,
                              nonce=bytes(16))


async def test_forbidden_is_negotiated_by_neither_side() -> None:
    forbid = MarketPolicy(forbidden=frozenset({"transfer"}), serial=2)
    m = manager(forbid)
    assert [o.name for o in m.capabilities_for(peer(Level.LIABLE, Amount(EUR, 1))).modules] \
        == ["cheque"]
    assert [o.name for o in m.payer_capabilities().modules] == ["cheque"]
    with pytest.raises(ForbiddenInstrument) as caught:
        await _accept(m, "transfer", 100, peer(Level.VERIFIED_IDENTITY))
    assert caught.value.detail == {"module": "transfer", "serial": 2}
    assert m.module("transfer").accepted == 0
    with pytest.raises(ForbiddenInstrument):
        m.choose(caps("transfer"), types.SimpleNamespace(amount=Amount(EUR, 5)),  # type: ignore[arg-type]
                 only="transfer")
    only = manager(MarketPolicy(allowed=frozenset({"transfer"}), serial=2))
    assert only.capabilities_for(None).declined == (("cheque", "is not allowed by the market"),)


def test_a_policy_verifies_only_under_the_root(root: Any) -> None:
    import datetime as dt
    statement = signed(root, forbidden=frozenset({"transfer"}), serial=4)
    policy = verify_market_policy(statement, root=root.certificate)
    assert policy.forbidden == {"transfer"} and policy.serial == 4 and policy.allowed is None
    other = create_ca("another root", now=dt.datetime.now(dt.UTC))
    with pytest.raises(BadMarketPolicy) as foreign:
        verify_market_policy(statement, root=other.certificate)
    assert foreign.value.detail["field"] == "signer"
    body = {**statement.body, "forbidden": []}
    tampered = dataclasses.replace(statement, body=body)
    with pytest.raises(BadMarketPolicy) as bad:
        verify_market_policy(tampered, root=root.certificate)
    assert bad.value.detail["field"] == "signature"
    for body in ({**statement.body, "serial": -1}, {**statement.body, "extra": 1},
                 {**statement.body, "allowed": "transfer"},
                 {**statement.body, "required": ["transfer"]}):  # required and forbidden
        with pytest.raises(BadMarketPolicy):
            MarketPolicy.from_body(body)


async def test_the_book_keeps_the_newest_good_policy(root: Any, tmp_path: Path) -> None:
    book = MarketPolicyBook(root.certificate, tmp_path)
    assert book.policy is ALL_ALLOWED
    second = signed(root, forbidden=frozenset({"transfer"}), serial=2)
    assert await book.offer({"number": 1, "crl": None, "policy": second.to_wire()})
    assert book.policy.serial == 2
    # Bad signature, another root's, older, the same serial with other content,
    # garbage: each ignored, the kept policy stays.
    import datetime as dt
    other = create_ca("another root", now=dt.datetime.now(dt.UTC))
    tampered = {**signed(root, serial=9).to_wire(), "signature": bytes(64)}
    for wire in (tampered, signed(other, serial=9).to_wire(), signed(root, serial=1).to_wire(),
                 signed(root, serial=2).to_wire(), {"v": 1}, b"\x00", 7):
        assert not await book.offer({"policy": wire})
        assert book.statement == second
    assert not await book.offer({"number": 1, "crl": None})  # no policy: nothing changes
    # Kept across runs; a file that does not verify is not used.
    assert MarketPolicyBook(root.certificate, tmp_path).policy.serial == 2
    assert MarketPolicyBook(other.certificate, tmp_path).policy is ALL_ALLOWED
    (tmp_path / MARKET_POLICY_FILE).write_bytes(b"junk")
    assert MarketPolicyBook(root.certificate, tmp_path).policy is ALL_ALLOWED


# -- the payer's pick -------------------------------------------------------------------


def _guaranteed(name: str) -> bool:
    return name != "cheque"


def test_the_pick_and_why() -> None:
    price = Amount(EUR, 1_200)
    seller = Capabilities(modules=(offer("card"), offer("cheque")),
                          declined=(("transfer", "needs verified-identity"),))
    name, why = choose_instrument(caps("cheque", "transfer", "card"), seller, price,
                                  market=ALL_ALLOWED, guaranteed=_guaranteed)
    assert (name, why) == ("card", "card: the seller accepts it for EUR 12.00; cheque is not "
                                   "guaranteed; transfer needs verified-identity")
    # Only an unguaranteed one fits: it is taken.
    name, why = choose_instrument(caps("transfer", "cheque"), seller, price,
                                  market=ALL_ALLOWED, guaranteed=_guaranteed)
    assert (name, why) == ("cheque", "cheque: the seller accepts it for EUR 12.00; "
                                     "transfer needs verified-identity")
    forbid = MarketPolicy(forbidden=frozenset({"card"}), serial=2)
    capped = Capabilities(modules=(offer("card"), ModuleOffer(name="cheque", limits=(
        Limits(minimum=Amount(EUR, 1), maximum=Amount(EUR, 1_000)),))))
    with pytest.raises(NoCommonInstrument) as none:
        choose_instrument(caps("card", "cheque", "purse"), capped, price, market=forbid,
                          guaranteed=_guaranteed,
                          unfit=lambda n: "pays streamed items only" if n == "purse" else None)
    assert str(none.value.message) == (
        "no payment module fits EUR 12.00: card is forbidden by the market; cheque is taken "
        "by the seller only up to EUR 10.00; purse pays streamed items only")


# -- agents: a market's seller, a buyer per level, the CA's policy -------------------------


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("policy") / "market"
    init_market(folder, agents=(*DEFAULT_AGENTS, ("low", "buyer", Level.VERIFIED_CONTACT)))
    return folder


def _agent(folder: Path, agent_id: str) -> Agent:
    """Fetches the CRL (and the policy) every 0.2 s; a buyer prefers transfer, then
    cheque (whatever else is installed)."""
    config = config_of(folder, agent_id, timeouts=Timeouts(crl_refresh=0.2))
    if config.role != "buyer":
        return Agent(config)
    return Agent(dataclasses.replace(config, payment=dataclasses.replace(
        config.payment, modules=("transfer", "cheque", "purse"))))


async def _balance(agent: Agent) -> int:
    return (await agent.request("bank", "bank", "account", {}))["balances"]["EUR"]  # type: ignore[no-any-return]


async def test_levels_and_the_market_policy_between_agents(folder: Path,
                                                            tmp_path: Path) -> None:
    assert market_policy(folder).serial == 1  # market init: all allowed
    assert market_policy(folder).allowed is None and not market_policy(folder).forbidden
    agents = [_agent(folder, name) for name in ("ca", "bank", "seller", "buyer", "low")]
    ca, bank, seller, buyer, low = agents
    with trio.fail_after(DEADLINE * 3):
        async with running(ca), running(bank), running(seller), running(buyer), running(low):
            await wait_until(lambda: all(a.market_policy.policy.serial == 1 for a in agents),
                             "every agent took policy 1 with the CRL")
            # Tailored capabilities per peer.
            mine = Capabilities.from_wire(await buyer.request("seller", "payment",
                                                              "capabilities", {}))
            theirs = Capabilities.from_wire(await low.request("seller", "payment",
                                                              "capabilities", {}))
            assert mine.offer("cheque").limits[0].maximum == Amount(EUR, 10_000)
            assert theirs.offer("cheque") is None
            assert ("cheque", "needs verified-identity") in theirs.declined
            # The instance: a verified-contact buyer's cheque, handed over anyway, is
            # refused at accept; nothing deposited.
            before = await _balance(low)
            pushy = Shopper(low)
            pushy.payments.choose = lambda payee, request, only=None: only  # type: ignore[method-assign]
            with pytest.raises(RemoteError) as refused:
                await pushy.buy("seller", "guide-001", "cheque", "low-cheque")
            assert refused.value.code == "payment.policy_refused"
            assert refused.value.detail["reason"] == "needs verified-identity"
            assert (await pushy.outcome("low-cheque")).state == "failed"
            assert await _balance(low) == before
            # Without --pay it gets the transfer, its first choice.
            lows = Shopper(low)
            done = await lows.buy("seller", "song-003", None, "low-auto")
            assert done.payment is not None and done.payment.module == "transfer"
            assert lows.choices["low-auto"] == "transfer: the seller accepts it for EUR 0.99"

            # What holds an instrument of ours may say it cannot pay the price now.
            class Purse:
                holds = ("transfer",)

                async def can_pay(self, amount: Amount) -> str | None:
                    return f"has only EUR 0.10 for {amount}"

            buyer.components[Purse] = Purse()  # type: ignore[index,assignment]
            try:
                assert await Shopper(buyer).choose("seller", "song-003", "k") == (
                    "cheque", "cheque: the seller accepts it for EUR 0.99; "
                              "transfer has only EUR 0.10 for EUR 0.99")
            finally:
                del buyer.components[Purse]  # type: ignore[arg-type]

            # The market forbids transfer (and purse): the CA hands policy 2 out with
            # the CRL.
            set_market_policy(folder, forbidden=["transfer", "purse"])
            await wait_until(lambda: all(a.market_policy.policy.serial == 2 for a in agents),
                             "every agent took policy 2 with the CRL")
            shopper = Shopper(buyer)
            before = await _balance(buyer)
            with pytest.raises(ForbiddenInstrument) as forbidden:
                await shopper.buy("seller", "map-002", "transfer", "by-transfer")
            assert forbidden.value.code == "payment.forbidden_instrument"
            assert await shopper._row("by-transfer") is None  # nothing signed, key free
            done = await shopper.buy("seller", "map-002", None, "auto")
            assert done.payment is not None and done.payment.module == "cheque"
            assert shopper.choices["auto"] == ("cheque: the seller accepts it for EUR 4.80; "
                                               "transfer is forbidden by the market")
            assert "purse" not in shopper.choices["auto"]  # after the pick: not said
            assert await _balance(buyer) == before - 480
            # Again with the same key: the instrument it began with, nothing paid again.
            again = await shopper.buy("seller", "map-002", None, "auto")
            assert again.replayed and await _balance(buyer) == before - 480
            # The other member: a buyer ignoring the policy pays by transfer anyway;
            # the seller refuses it at accept and gives the money back.
            rogue = Shopper(buyer)
            rogue.payments._market = None  # as if no policy had come
            rogue.payments.choose = lambda payee, request, only=None: only  # type: ignore[method-assign]
            with pytest.raises(RemoteError) as caught:
                await rogue.buy("seller", "guide-001", "transfer", "rogue")
            assert caught.value.code == "payment.forbidden_instrument"
            assert "returned" in caught.value.detail
            assert await _balance(buyer) == before - 480
            # The same at a purse's other door, delivery.ticket: refused before a
            # ticket is issued.
            streamer = Shopper(buyer, output=tmp_path / "course.bin")
            streamer.payments._market = None
            with pytest.raises(RemoteError) as caught:
                await streamer.buy("seller", "course-004", "purse", "rogue-purse")
            assert caught.value.code == "payment.forbidden_instrument"
            assert caught.value.detail["module"] == "purse"
            # A low-level buyer now has nothing: neither cheque nor transfer.
            with pytest.raises(NoCommonInstrument) as nothing:
                await lows.buy("seller", "song-003", None, "low-none")
            assert "transfer is forbidden by the market" in nothing.value.message
            assert "cheque needs verified-identity" in nothing.value.message
            # The seller's capabilities were asked again under the new policy, not
            # taken from before it.
            asked = lows._capabilities["seller"][1]
            assert not {"transfer", "cheque"} & {m["name"] for m in asked["modules"]}
            assert ["transfer", "is forbidden by the market"] in [
                [d["name"], d["reason"]] for d in asked["declined"]]


def test_market_policy_set_checks_its_input(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    init_market(folder, agents=[("ca", "ca", Level.VERIFIED_IDENTITY)])
    with pytest.raises(BadMarketPolicy):
        set_market_policy(folder, forbidden=["cheque"], required=["cheque"])
    assert market_policy(folder).serial == 1  # nothing written
    policy = set_market_policy(folder, allowed=["transfer", "cheque"], required=["cheque"])
    assert (policy.serial, policy.allowed, policy.required) == (
        2, {"transfer", "cheque"}, {"cheque"})
    # Only the root's key signs one.
    ca = load_authority(folder / "ca" / "root.pem", folder / "ca" / "root-key.pem", None)
    with pytest.raises(ValueError):
        sign_market_policy(MarketPolicy(serial=3), key=ed25519.Ed25519PrivateKey.generate(),
                           root=ca.certificate, nonce=bytes(16))


# -- the pick, as a property --------------------------------------------------------------

NAMES = ("card", "cheque", "ecash", "purse", "transfer")


@settings(max_examples=40, deadline=None)
@given(ours=st.permutations(NAMES).flatmap(lambda p: st.integers(0, 5).map(lambda n: p[:n])),
       theirs=st.lists(st.tuples(st.sampled_from(NAMES), st.integers(1, 3_000)), max_size=5,
                       unique_by=lambda t: t[0]),
       forbidden=st.frozensets(st.sampled_from(NAMES)),
       guaranteed=st.frozensets(st.sampled_from(NAMES)),
       units=st.integers(1, 3_000))
def test_the_pick_is_permitted_taken_and_guaranteed_first(
        ours: tuple[str, ...], theirs: list[tuple[str, int]], forbidden: frozenset[str],
        guaranteed: frozenset[str], units: int) -> None:
    payee = Capabilities(modules=tuple(
        ModuleOffer(name=n, limits=(Limits(minimum=Amount(EUR, 1),
                                           maximum=Amount(EUR, top)),)) for n, top in theirs))
    market = MarketPolicy(forbidden=forbidden, serial=1)
    amount = Amount(EUR, units)
    fits = [n for n in ours if n not in forbidden and payee.admits(n, amount)]
    try:
        name, why = choose_instrument(caps(*ours), payee, amount, market=market,
                                      guaranteed=guaranteed.__contains__)
    except NoCommonInstrument as exc:
        assert fits == []
        for n in ours:  # every module of ours is named with its reason
            assert n in exc.message
        return
    assert name in fits and why.startswith(f"{name}: the seller accepts it for {amount}")
    assert name == next((n for n in fits if n in guaranteed), fits[0])
    before = ours[:ours.index(name)]
    assert why.count("; ") == len(before)  # one reason for each module before the pick
