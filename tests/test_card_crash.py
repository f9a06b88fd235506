"""Card payments under SIGKILL (issue 11, Done when: "SIGKILL ... at each step ...,
then retry: every coin and every payment is accounted for exactly once"), as
tests/test_ecash_crash.py does for ecash: one market, its bank (the card gateway,
agents/instruments/card.py) and seller real ``semper agent run`` processes, a buyer
of its own per case. A case buys ``map-002`` (EUR 4.80) by card: the seller's
``payment.accept`` has the gateway authorise the amount (held from the buyer's
account in ``@card-held``) and capture it (to the seller). The bank is killed at
each ``card.authorize.*`` and ``card.capture.*`` point, or the seller at
``payment.seller.received`` (nothing asked of the gateway) and
``fair.seller.accepted`` (captured, the sale not stored paid); it is restarted
without the point and the buyer buys again under the same key, and once more. Then:
the books balance; the buyer's card has one authorisation, captured in full, with
one capture, nothing left held (``@card-held`` is zero); the buyer was debited EUR
4.80 once and the seller credited once; the purchase is done with the same receipt.
A purchase captures all it authorised; so that "the rest released" is shown too, the
seller's own calls (in this process) capture EUR 3.00 of EUR 4.80 with ``final``
while the bank dies at each ``card.capture.*`` point: EUR 1.80 released once.

(tests/test_card_agents.py stops the gateway at every point in-process, and
tests/test_card_agents_crash.py kills it with the seller in-process; here the whole
purchase crosses real processes.) A plain run makes two cases (``FAST``),
SEMPER_SLOW=1 or ``-m slow`` all twelve (~35 s).
"""

from __future__ import annotations

import signal
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio
from market_helpers import config_of, running
from test_card_agents import World
from test_ecash_crash import DEADLINE, Processes, _read, _slow_requested

from semper.agents import Agent
from semper.agents.components import _ledger
from semper.agents.components._purchase import PurchaseOutcome, Shopper
from semper.agents.instruments.card import HELD
from semper.agents.operator._market import DEFAULT_AGENTS, DEMO_FUNDS, init_market
from semper.services import Amount, ServiceError
from semper.services.certificates import Level
from semper.transport import ChannelClosed, TransportError

SKU, PRICE = "map-002", 480

#: (who is killed, where); case n's buyer is ``buyer-<n>``.
CASES: list[tuple[str, str]] = [
    ("seller", "payment.seller.received"),  # the order's proof received, no hold asked
    *[("bank", f"card.authorize.{step}") for step in ("received", "checked", "applied",
                                                        "committed")],
    *[("bank", f"card.capture.{step}") for step in ("received", "applied", "committed")],
    ("seller", "fair.seller.accepted"),  # captured, the sale not stored paid
]
#: The points of a partial capture that closes the authorisation (``final``), made by
#: the seller's own code: ``partial-<n>`` is the buyer of point n.
PARTIAL = ["card.capture.received", "card.capture.applied", "card.capture.committed"]
#: Every run: the seller dead with the money moved, and a partial final capture
#: durable and unanswered (tests/test_card_agents_crash.py kills the gateway at
#: card.authorize.applied). The rest: SEMPER_SLOW=1 or -m slow.
FAST = frozenset({"fair.seller.accepted", "partial:card.capture.committed"})


@pytest.fixture(scope="module")
def market(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
           ) -> Iterator[tuple[Path, Processes]]:
    folder = tmp_path_factory.mktemp("card-crash") / "market"
    slow = _slow_requested(request.config)
    buyers = [(f"buyer-{n}", "buyer", Level.VERIFIED_IDENTITY)
              for n, (_, point) in enumerate(CASES) if slow or point in FAST]
    buyers += [(f"partial-{n}", "buyer", Level.VERIFIED_IDENTITY)
               for n, point in enumerate(PARTIAL) if slow or f"partial:{point}" in FAST]
    init_market(folder, agents=[*DEFAULT_AGENTS, *buyers])
    agents = Processes(folder, tmp_path_factory.mktemp("logs"))
    try:
        agents.start("bank")
        agents.start("seller")
        yield folder, agents
    finally:
        agents.close()
        for agent_id in ("bank", "seller"):
            assert "Traceback" not in agents.stderr(agent_id), agents.stderr(agent_id)


@dataclass(frozen=True)
class Accounts:
    buyer: int
    seller: int
    held: int  # @card-held: every authorisation's rest
    holds: list[tuple[int, int, int, str]]  # the buyer's: (amount, captured, released, state)
    captures: list[int]  # the amounts captured of the buyer's authorisations
    entries: dict[str, int]  # the buyer's card.* entries, by kind
    captured: int  # the seller's card.captured entries


def _entries(bank: sqlite3.Connection, holder: str) -> dict[str, int]:
    return dict(bank.execute(
        "SELECT e.kind, count(*) FROM ledger_entries e JOIN ledger_postings p USING (entry)"
        " JOIN ledger_accounts a ON a.id = p.account WHERE a.holder = ?"
        " AND e.kind LIKE 'card.%' GROUP BY e.kind", (holder,)))


def accounts(folder: Path, buyer: str) -> Accounts:
    with closing(_read(folder, "bank")) as bank:
        _ledger.check_books(bank)
        holds = bank.execute("SELECT amount, captured, released, state FROM card_authorizations"
                             " WHERE holder = ?", (buyer,)).fetchall()
        captures = [amount for (amount,) in bank.execute(
            "SELECT c.amount FROM card_captures c JOIN card_authorizations a"
            " USING (authorization_id) WHERE a.holder = ?", (buyer,))]
        return Accounts(buyer=_ledger.balances(bank, buyer)["EUR"],
                        seller=_ledger.balances(bank, "seller").get("EUR", 0),
                        held=_ledger.balances(bank, HELD).get("EUR", 0),
                        holds=holds, captures=captures, entries=_entries(bank, buyer),
                        captured=_entries(bank, "seller").get("card.captured", 0))


async def buy(agent: Agent, n: int) -> PurchaseOutcome:
    return await Shopper(agent).buy("seller", SKU, "card", f"card-{n}")


@pytest.mark.parametrize("n", [
    pytest.param(n, id=point, marks=() if point in FAST else pytest.mark.slow)
    for n, (_, point) in enumerate(CASES)])
async def test_killed_then_retried_holds_and_captures_once(
        market: tuple[Path, Processes], n: int, request: pytest.FixtureRequest) -> None:
    if "slow" in request.node.keywords and not _slow_requested(request.config):
        pytest.skip("one of the kind: SEMPER_SLOW=1 or -m slow runs every crash point")
    folder, agents = market
    who, point = CASES[n]
    buyer = f"buyer-{n}"
    before = await trio.to_thread.run_sync(accounts, folder, buyer)
    with trio.fail_after(DEADLINE):
        await trio.to_thread.run_sync(agents.start, who, point)
        async with running(Agent(config_of(folder, buyer))) as agent:
            with pytest.raises((TransportError, ServiceError)):
                await buy(agent, n)
            assert await trio.to_thread.run_sync(agents.killed, who) == -signal.SIGKILL
            await trio.to_thread.run_sync(agents.start, who)
            done = await buy(agent, n)
            assert done.state == "done" and done.payment is not None
            assert done.payment.module == "card"
            again = await buy(agent, n)
            assert again.receipt == done.receipt
    after = await trio.to_thread.run_sync(accounts, folder, buyer)
    # One hold, captured whole and closed: nothing of it left to release.
    assert after.holds == [(PRICE, PRICE, 0, "closed")]
    assert after.captures == [PRICE]  # one capture
    assert after.held == 0  # nothing of any hold left
    assert after.entries == {"card.authorized": 1}  # held once, nothing released
    assert after.captured == before.captured + 1
    assert (after.buyer, after.seller) == (DEMO_FUNDS.minor_units - PRICE,
                                           before.seller + PRICE)


@pytest.mark.parametrize("n", [
    pytest.param(n, id=point, marks=() if f"partial:{point}" in FAST else pytest.mark.slow)
    for n, point in enumerate(PARTIAL)])
async def test_a_final_partial_capture_killed_then_retried_releases_the_rest_once(
        market: tuple[Path, Processes], n: int, request: pytest.FixtureRequest) -> None:
    """The seller (in this process, for its own calls) authorises EUR 4.80 and
    captures EUR 3.00 with ``final``: the bank dies inside the capture, restarts, and
    the capture is sent again, twice: EUR 3.00 captured once, EUR 1.80 released to the
    buyer once, nothing held."""
    if "slow" in request.node.keywords and not _slow_requested(request.config):
        pytest.skip("one of the kind: SEMPER_SLOW=1 or -m slow runs every crash point")
    folder, agents = market
    buyer_id = f"partial-{n}"
    before = await trio.to_thread.run_sync(accounts, folder, buyer_id)
    await trio.to_thread.run_sync(agents.stop, "seller")  # its port, for this process
    try:
        with trio.fail_after(DEADLINE):
            buyer, seller = Agent(config_of(folder, buyer_id)), Agent(config_of(folder, "seller"))
            w = World(None, buyer, seller, None)  # type: ignore[arg-type]  # bank: a process
            async with running(buyer), running(seller):
                asked = await w.instructions(Amount("EUR", PRICE), merchant_key=f"auth-p{n}")
                auth = await w.authorize(asked)
                await trio.to_thread.run_sync(agents.start, "bank", PARTIAL[n])
                capture = (auth.authorization_id, Amount("EUR", 300), f"capture-p{n}")
                with pytest.raises(ChannelClosed):
                    await w.capture(*capture, final=True)
                assert await trio.to_thread.run_sync(agents.killed, "bank") == -signal.SIGKILL
                await trio.to_thread.run_sync(agents.start, "bank")
                captured = await w.capture(*capture, final=True)
                assert await w.capture(*capture, final=True) == captured
    finally:
        await trio.to_thread.run_sync(agents.start, "seller")
    after = await trio.to_thread.run_sync(accounts, folder, buyer_id)
    assert after.holds == [(PRICE, 300, PRICE - 300, "closed")]
    assert after.captures == [300]
    assert after.held == 0
    assert after.entries == {"card.authorized": 1, "card.released": 1}
    assert (after.buyer, after.seller) == (DEMO_FUNDS.minor_units - 300, before.seller + 300)
    assert after.captured == before.captured + 1
