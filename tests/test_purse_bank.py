"""The purse's bank half against a real bank agent (agents/instruments/purse.py), with
the buyer's ``Purse`` and the seller's ``redeem`` (agents/components/_purse.py), all
in-process over real loopback TLS and real SQLite, on one injected clock.

Issue 10 item 4: the bank reserves a chain's whole value from the buyer (exactly n x
unit into ``@purse-reserved``), pays the seller index x unit and returns the rest at
the one redemption, answers the same redemption again with the same statement, and
refuses with a stable code, moving nothing: insufficient funds, a second redemption
with another index, a payword beyond the chain or forged, a redemption after expiry
+ grace (the sweep then returns the reservation). The books balance after every step
(``check_books``: customers, ``@purse-reserved`` included, hold exactly the minted).

Members of the kind found beyond the issue's list: the same commitment reserved
again under another idempotency key (it would debit the buyer twice for one chain:
``purse.bad_commitment``), and two different redemptions of one chain racing (one
pays, the other is ``purse.already_redeemed``), a reservation no seller could
redeem (no account, or held past 30 days). The bank killed inside a reservation or a
redemption moves the money once after a restart. A Hypothesis state machine
(``PurseBooks``) drives reservations, true/forged/beyond/repeated redemptions, clock
moves and sweeps through the bank half's transaction functions and checks the books
against a model after every step.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from market_helpers import DEADLINE, BankBooks, SharedClock, config_of, running
from pki import Market as PkiMarket

from semper.agents import Agent
from semper.agents.components import _bank, _ledger
from semper.agents.components._purse import Purse, redeem
from semper.agents.instruments import purse as purse_bank
from semper.agents.instruments.purse import RESERVED, PurseBank
from semper.agents.operator._market import DEMO_FUNDS, init_market
from semper.agents.runtime._storage import Database
from semper.services import Amount
from semper.services.payment import BANK_SERVICE, PaymentError
from semper.services.payment.purse import (
    BANK_PURSE_REDEEM,
    BANK_PURSE_RESERVE,
    BANK_PURSE_STATUS,
    COMMITMENT,
    REDEEM_GRACE_MS,
    PayWordChain,
    PurseCommitment,
    PurseRedeemed,
    RedeemRequest,
    ReserveRequest,
    StatusAnswer,
    StatusRequest,
    check_redemption,
    verify_reservation,
)
from semper.services.statements import Statement, sign_statement
from semper.transport import RemoteError

UNIT = Amount("EUR", 25)
ORDER = b"o" * 32


Clock = SharedClock  # one clock for all three agents, moved by the test


@pytest.fixture(scope="module")
def prebuilt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("purse") / "market"
    init_market(folder)
    return folder


@pytest.fixture
def market(prebuilt: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(prebuilt, tmp_path / "market"))


class World(BankBooks):
    def __init__(self, bank: Agent, buyer: Agent, seller: Agent, clock: Clock) -> None:
        self.bank, self.buyer, self.seller, self.clock = bank, buyer, seller, clock
        self.purse = buyer.component(Purse)
        self.before: dict[str, int] = {}

    async def books(self) -> dict[str, int]:
        """EUR balances of buyer, seller and @purse-reserved; the books balance."""
        def read(c: Any) -> dict[str, int]:
            _ledger.check_books(c)  # postings, entries, no overdraft, customers == minted
            return {holder: _ledger.balances(c, holder).get("EUR", 0)
                    for holder in ("buyer", "seller", RESERVED)}

        return await self.bank.database.read(read)

    async def secret_chain(self, chain: bytes) -> PayWordChain:
        secret = await self.buyer.database.read(lambda c: c.execute(
            "SELECT secret FROM purse_chains WHERE chain = ?", (chain,)).fetchone()[0])
        return PayWordChain.from_secret_bytes(secret)


@asynccontextmanager
async def world(market: Path) -> AsyncIterator[World]:
    clock = Clock()
    bank = Agent(config_of(market, "bank"), clock=clock)
    buyer = Agent(config_of(market, "buyer"), clock=clock)
    seller = Agent(config_of(market, "seller"), clock=clock)
    with trio.fail_after(DEADLINE):
        async with running(bank), running(buyer), running(seller):
            w = World(bank, buyer, seller, clock)
            await w.moved()
            yield w


def chain_of(commitment: Statement) -> bytes:
    return PurseCommitment.from_statement(commitment).chain


async def test_a_reservation_takes_exactly_n_units_once_per_key(market: Path) -> None:
    async with world(market) as w:
        commitment, reservation = await w.purse.open_chain("seller", 10, UNIT, ORDER, "k1")
        assert await w.moved() == {"buyer": -250, RESERVED: 250}
        verify_reservation(reservation, bank_certificate=w.bank.context.certificate,
                           root=w.seller.context.root, crl=w.seller.context.crl,
                           now=w.seller.context.now(), commitment=commitment,
                           expected_bank="bank")
        again = await w.purse.open_chain("seller", 10, UNIT, ORDER, "k1")
        assert again == (commitment, reservation)
        assert await w.moved() == {}
        # The same key asked at the bank again (the answer lost): the same reservation.
        answer = await w.buyer.request("bank", BANK_SERVICE, BANK_PURSE_RESERVE, ReserveRequest(
            commitment=commitment, idempotency_key="k1").to_wire())
        assert Statement.from_wire(answer["reservation"]) == reservation
        assert await w.moved() == {}
        assert await w.purse.list() == [{
            "chain": chain_of(commitment).hex(), "seller": "seller",
            "reserved": {"currency": "EUR", "minor_units": 250},
            "spent": {"currency": "EUR", "minor_units": 0},
            "redeemed": {"currency": "EUR", "minor_units": 0}, "state": "reserved"}]


async def test_insufficient_funds_moves_nothing_and_keeps_no_chain(market: Path) -> None:
    async with world(market) as w:
        too_much = Amount("EUR", DEMO_FUNDS.minor_units // 4 + 1)
        await w.refused("payment.insufficient_funds",
                        w.purse.open_chain("seller", 4, too_much, None, "k2"))
        assert await w.purse.list() == []
        await w.purse.open_chain("seller", 4, UNIT, None, "k2")  # the key is free again
        assert await w.moved() == {"buyer": -100, RESERVED: 100}


async def test_the_same_commitment_under_another_key_is_refused(market: Path) -> None:
    """A member of the kind beyond the issue's list: replaying a buyer's commitment
    under a fresh key would hold its chain's value twice."""
    async with world(market) as w:
        commitment, _ = await w.purse.open_chain("seller", 3, UNIT, None, "k3")
        await w.moved()
        refused = await w.refused("purse.bad_commitment", w.buyer.request(
            "bank", BANK_SERVICE, BANK_PURSE_RESERVE,
            ReserveRequest(commitment=commitment, idempotency_key="other").to_wire()))
        assert refused.detail["field"] == "chain"


async def test_redemption_pays_index_units_returns_the_rest_once(market: Path) -> None:
    async with world(market) as w:
        commitment, reservation = await w.purse.open_chain("seller", 10, UNIT, ORDER, "k4")
        chain = chain_of(commitment)
        await w.moved()
        paywords = [await w.purse.pay(chain, i) for i in range(4)]  # chunks 0..3
        assert await w.purse.pay(chain, 3) == paywords[3]  # asked again: the same
        redeemed = await redeem(w.seller.context, commitment, reservation, paywords[3], 4)
        body = PurseRedeemed.from_statement(redeemed)
        assert (body.index, body.paid, body.returned) == (4, Amount("EUR", 100),
                                                          Amount("EUR", 150))
        assert await w.moved() == {"seller": 100, "buyer": 150, RESERVED: -250}
        # The same redemption again: the same statement, nothing moves.
        assert await redeem(w.seller.context, commitment, reservation, paywords[3], 4) \
            == redeemed
        assert await w.moved() == {}
        # Another one (a lower payword, or a higher one the buyer never paid): refused.
        refused = await w.refused("purse.already_redeemed", redeem(
            w.seller.context, commitment, reservation, paywords[2], 3))
        assert refused.detail["index"] == 4
        secret = await w.secret_chain(chain)
        await w.refused("purse.already_redeemed", redeem(
            w.seller.context, commitment, reservation, secret.payword(10), 10))
        # The buyer learns it from the bank.
        record = await w.purse.refresh(chain)
        assert (record.state, record.redeemed, record.spent) == ("redeemed", 4, 4)
        status = StatusAnswer.from_wire(await w.buyer.request(
            "bank", BANK_SERVICE, BANK_PURSE_STATUS, StatusRequest(chain=chain).to_wire()))
        assert status.redeemed == redeemed
        [listed] = await w.purse.list()
        assert listed["redeemed"] == {"currency": "EUR", "minor_units": 100}
        assert listed["state"] == "redeemed"


async def test_a_payword_beyond_the_chain_or_forged_is_refused(market: Path) -> None:
    async with world(market) as w:
        commitment, reservation = await w.purse.open_chain("seller", 5, UNIT, None, "k5")
        chain = chain_of(commitment)
        await w.moved()
        paid = await w.secret_chain(chain)
        # The buyer's seed as payword 6 of a chain one longer: refused by its index,
        # before any hashing.
        refused = await w.refused("purse.beyond_chain", redeem(
            w.seller.context, commitment, reservation, paid.seed, 6))
        assert refused.detail == {"index": 6, "length": 5}
        await w.refused("purse.bad_payword", redeem(
            w.seller.context, commitment, reservation, b"\x00" * 32, 2))
        await w.refused("purse.bad_payword", redeem(
            w.seller.context, commitment, reservation, paid.payword(3), 2))  # wrong index
        await w.refused("purse.bad_payword", redeem(
            w.seller.context, commitment, reservation, commitment.body["root"], 0))
        # Only the chain's seller redeems it: to anyone else the chain is unknown.
        await w.refused("purse.unknown_chain", w.buyer.request(
            "bank", BANK_SERVICE, BANK_PURSE_REDEEM, RedeemRequest(
                commitment=commitment, reservation=reservation, payword=paid.payword(2),
                index=2).to_wire()))
        # The buyer's purse never reveals past its chain, nor skips.
        with pytest.raises(Exception) as beyond:
            await w.purse.pay(chain, 5)
        assert getattr(beyond.value, "code", None) == "purse.beyond_chain"
        with pytest.raises(Exception) as skipped:
            await w.purse.pay(chain, 1)
        assert getattr(skipped.value, "code", None) == "purse.out_of_order"
        # After all that, the true payword redeems.
        await redeem(w.seller.context, commitment, reservation, paid.payword(2), 2)
        assert await w.moved() == {"seller": 50, "buyer": 75, RESERVED: -125}


async def test_expired_is_refused_and_the_sweep_gives_it_back(market: Path) -> None:
    async with world(market) as w:
        commitment, reservation = await w.purse.open_chain("seller", 8, UNIT, None, "k6",
                                                           validity_ms=60_000)
        chain = chain_of(commitment)
        await w.moved()
        payword = [await w.purse.pay(chain, i) for i in range(2)][-1]
        body = PurseCommitment.from_statement(commitment)
        sweeper = w.bank.component(PurseBank)
        w.clock.ms = body.expires + REDEEM_GRACE_MS  # the last instant it redeems
        assert await sweeper.sweep() == 0
        assert await w.moved() == {}
        w.clock.ms += 1
        with pytest.raises(Exception) as late:
            await w.purse.pay(chain, 2)
        assert getattr(late.value, "code", None) == "purse.expired"
        await w.refused("purse.expired", redeem(
            w.seller.context, commitment, reservation, payword, 2))
        assert await sweeper.sweep() == 1
        assert await w.moved() == {"buyer": 200, RESERVED: -200}
        assert await sweeper.sweep() == 0  # released once
        assert await w.moved() == {}
        await w.refused("purse.expired", redeem(
            w.seller.context, commitment, reservation, payword, 2))
        assert (await w.purse.refresh(chain)).state == "released"


async def test_a_redemption_at_the_end_of_the_grace_still_pays(market: Path) -> None:
    async with world(market) as w:
        commitment, reservation = await w.purse.open_chain("seller", 2, UNIT, None, "k7",
                                                           validity_ms=1_000)
        payword = await w.purse.pay(chain_of(commitment), 0)
        await w.moved()
        w.clock.ms = PurseCommitment.from_statement(commitment).expires + REDEEM_GRACE_MS
        await redeem(w.seller.context, commitment, reservation, payword, 1)
        assert await w.moved() == {"seller": 25, "buyer": 25, RESERVED: -50}
        assert await w.bank.component(PurseBank).sweep() == 0


async def test_two_redemptions_racing_pay_once(market: Path) -> None:
    """A member of the kind beyond the issue's list: two different redemptions of one
    chain at once (the payword's hashes run outside the transaction): one pays, the
    other is refused, and the books hold one redemption."""
    async with world(market) as w:
        commitment, reservation = await w.purse.open_chain("seller", 6, UNIT, None, "k8")
        chain = chain_of(commitment)
        await w.moved()
        paywords = [await w.purse.pay(chain, i) for i in range(5)]
        outcomes: list[Any] = []

        async def one(index: int) -> None:
            try:
                outcomes.append(await redeem(w.seller.context, commitment, reservation,
                                             paywords[index - 1], index))
            except RemoteError as exc:
                outcomes.append(exc.code)

        async with trio.open_nursery() as nursery:
            for index in (3, 5):
                nursery.start_soon(one, index)
        [statement] = [o for o in outcomes if isinstance(o, Statement)]
        assert [o for o in outcomes if not isinstance(o, Statement)] == \
            ["purse.already_redeemed"]
        index = PurseRedeemed.from_statement(statement).index
        assert await w.moved() == {"seller": 25 * index, "buyer": 25 * (6 - index),
                                   RESERVED: -150}


async def test_a_chain_nobody_could_redeem_reserves_nothing(market: Path) -> None:
    """More members of the kind (money held for nothing): a seller without an account
    at the bank could never be paid, and a chain past 30 days would lock the buyer's
    money that long; both are refused before anything moves, and the purse forgets
    them."""
    async with world(market) as w:
        await w.refused("payment.unknown_account",
                        w.purse.open_chain("notary", 2, UNIT, None, "k9"))
        refused = await w.refused("purse.bad_commitment", w.purse.open_chain(
            "seller", 2, UNIT, None, "k10", validity_ms=31 * 86_400_000))
        assert refused.detail["field"] == "expires"
        assert await w.purse.list() == []


# -- the bank killed inside a reservation or a redemption --------------------------------

@pytest.mark.parametrize("point", [
    "purse.applied",  # a reservation written, not committed: the retry applies it
    "purse.redeem_committed",  # a redemption durable, no answer: the retry replays it
])
async def test_the_bank_killed_mid_step_moves_the_money_once(market: Path, point: str) -> None:
    """SIGKILL at the named crash point (the other points, purse.committed and
    purse.redeem_applied, behave alike: test_bank_crash's kind), restart, retry: the
    step applied exactly once, the books balance."""
    import signal
    import sqlite3

    from test_bank_crash import bank_process, start_bank, stop

    from semper.transport import ChannelClosed

    buyer = Agent(config_of(market, "buyer"))
    seller = Agent(config_of(market, "seller"))
    redeeming = point.startswith("purse.redeem")
    with trio.fail_after(DEADLINE):
        async with bank_process(market, point) as bank, running(buyer), running(seller):
            purse = buyer.component(Purse)
            if redeeming:
                commitment, reservation = await purse.open_chain("seller", 4, UNIT, None, "c")
                payword = [await purse.pay(chain_of(commitment), i) for i in range(3)][-1]
                with pytest.raises(ChannelClosed):
                    await redeem(seller.context, commitment, reservation, payword, 3)
            else:
                with pytest.raises(ChannelClosed):
                    await purse.open_chain("seller", 4, UNIT, None, "c")
            assert await bank[0].wait() == -signal.SIGKILL
            bank[0] = await start_bank(market, None)
            if redeeming:
                first = await redeem(seller.context, commitment, reservation, payword, 3)
                assert await redeem(seller.context, commitment, reservation, payword, 3) \
                    == first
            else:
                commitment, reservation = await purse.open_chain("seller", 4, UNIT, None, "c")
                assert await purse.open_chain("seller", 4, UNIT, None, "c") == \
                    (commitment, reservation)
            await stop(bank[0])
    connection = sqlite3.connect(market / "bank" / "data" / "agent.sqlite")
    try:
        _ledger.check_books(connection)
        held = {h: _ledger.balances(connection, h).get("EUR", 0)
                for h in ("buyer", "seller", RESERVED)}
        kinds = dict(connection.execute(
            "SELECT kind, count(*) FROM ledger_entries WHERE kind LIKE 'purse.%'"
            " GROUP BY kind").fetchall())
    finally:
        connection.close()
    if redeeming:
        assert held == {"buyer": DEMO_FUNDS.minor_units - 75, "seller": 75, RESERVED: 0}
        assert kinds == {"purse.reserved": 1, "purse.redeemed": 1, "purse.returned": 1}
    else:
        assert held == {"buyer": DEMO_FUNDS.minor_units - 100, "seller": 0, RESERVED: 100}
        assert kinds == {"purse.reserved": 1}


async def test_a_purse_refuses_bad_terms_before_it_signs_or_stores(market: Path) -> None:
    async with world(market) as w:
        for seller, length, unit in [("seller", 0, UNIT), ("seller", 2**20 + 1, UNIT),
                                     ("buyer", 2, UNIT),  # itself
                                     ("seller", 2**20, Amount("EUR", 2**62))]:  # past int64
            with pytest.raises(Exception) as refused:
                await w.purse.open_chain(seller, length, unit, None, "bad")
            assert getattr(refused.value, "code", None) == "purse.bad_commitment"
        assert await w.purse.list() == [] and await w.moved() == {}


# -- the books under random purse traffic (no network) -----------------------------------

class PurseBooks(RuleBasedStateMachine):
    """Reservations, redemptions (true, forged, beyond, repeated, racing after a
    sweep), clock moves and sweeps applied through the bank half's transaction
    functions on real SQLite. After every step the books balance, each balance is
    the model's, and ``@purse-reserved`` holds exactly the live reservations."""

    def __init__(self) -> None:
        super().__init__()
        shared = book_market()
        self.agents = shared["agents"]
        bank = shared["bank"]
        self.folder = Path(tempfile.mkdtemp(prefix="semper-purse-"))
        self.db = Database.open_sync(self.folder / "bank.sqlite",
                                     {**_bank.MIGRATIONS, **purse_bank.MIGRATIONS})
        self.now = 1_700_000_000_000
        self.book = _bank.BankBook("bank", lambda t, b: sign_as(bank, t, b), bank.cert,
                                   lambda: self.now)

        def fund(c: Any) -> None:
            for holder, units in (("alice", 5_000), ("shop", 0)):
                _ledger.open_account(c, holder, "EUR")
                if units:
                    _ledger.mint(c, holder, Amount("EUR", units), time_ms=0)

        self.db.transaction_sync(fund)
        self.model = {"alice": 5_000, "shop": 0, RESERVED: 0}
        #: chain -> [commitment statement, body, chain secret, reservation, state, redeemed]
        self.chains: dict[bytes, list[Any]] = {}
        self.keys: dict[str, bytes] = {}  # key -> chain reserved under it

    def teardown(self) -> None:
        self.db.close()

    def balances(self) -> dict[str, int]:
        return self.db.read_sync(lambda c: {h: _ledger.balances(c, h).get("EUR", 0)
                                            for h in self.model})

    def apply(self, fn: Any) -> tuple[Any, Any]:
        before = self.balances()
        try:
            return self.db.transaction_sync(fn), None
        except PaymentError as exc:
            assert self.balances() == before, "a refusal moved money"
            return None, exc

    @rule(length=st.integers(1, 6), unit=st.integers(1, 300),
          validity=st.integers(1, 10_000), key=st.sampled_from([f"k{i}" for i in range(12)]),
          reuse=st.integers(0, 5).map(lambda n: n == 0))
    def reserve(self, length: int, unit: int, validity: int, key: str, reuse: bool) -> None:
        chain = PayWordChain.new(length)
        chain_id = next(iter(self.chains)) if reuse and self.chains else os.urandom(32)
        body = PurseCommitment(chain=chain_id, buyer="alice", seller="shop", bank="bank",
                               root=chain.root, length=length, unit=Amount("EUR", unit),
                               expires=self.now + validity)
        commitment = sign_as(self.agents["alice"], COMMITMENT, body.to_body())
        outcome, error = self.apply(lambda c: purse_bank.reserve_chain(
            self.book, c, commitment, body, key=key,
            buyer_certificate=self.agents["alice"].cert))
        event(f"reserve: {error.code if error else 'replayed' if not outcome.applied else 'held'}")
        if key in self.keys:  # another body under a used key (the chain or root differ)
            assert error is not None and error.code == "payment.idempotency_conflict"
        elif chain_id in self.chains:
            assert error is not None and error.code == "purse.bad_commitment"
        elif self.model["alice"] < length * unit:
            assert error is not None and error.code == "payment.insufficient_funds"
        else:
            assert error is None and outcome.applied
            self.model["alice"] -= length * unit
            self.model[RESERVED] += length * unit
            self.keys[key] = chain_id
            self.chains[chain_id] = [commitment, body, chain, outcome.statement, "reserved",
                                     None]

    @precondition(lambda self: self.chains)
    @rule(data=st.data(), forged=st.integers(0, 3).map(lambda n: n == 0))
    def redeem(self, data: st.DataObject, forged: bool) -> None:
        chain_id = data.draw(st.sampled_from(list(self.chains)))  # insertion order
        length = self.chains[chain_id][1].length
        self._redeem(chain_id, data.draw(st.one_of(st.integers(1, length),
                                                   st.integers(0, length + 1))), forged)

    @precondition(lambda self: any(v[4] == "redeemed" for v in self.chains.values()))
    @rule(data=st.data())
    def redeem_again(self, data: st.DataObject) -> None:
        """The seller's retry of its redemption (a lost answer): the same statement."""
        chain_id = data.draw(st.sampled_from([k for k, v in self.chains.items()
                                              if v[4] == "redeemed"]))
        self._redeem(chain_id, self.chains[chain_id][5][0], False)

    def _redeem(self, chain_id: bytes, index: int, forged: bool) -> None:
        commitment, body, chain, reservation, state, redeemed = self.chains[chain_id]
        payword = os.urandom(32) if forged or index > body.length else chain.payword(index)
        request = RedeemRequest(commitment=commitment, reservation=reservation,
                                payword=payword, index=index)

        def handler() -> Any:  # PurseBank.redeem's steps, on this database
            stored = self.db.read_sync(lambda c: purse_bank._chain(c, chain_id))
            replay = purse_bank._standing(stored, body, request, seller="shop",
                                          now_ms=self.now)
            if replay is not None:
                return purse_bank.Outcome(replay, False)
            check_redemption(body, index=index, payword=payword)
            return self.db.transaction_sync(lambda c: purse_bank.redeem_chain(
                self.book, c, request, body, seller="shop"))

        before = self.balances()
        outcome, error = None, None
        try:
            outcome = handler()
        except PaymentError as exc:
            error = exc
            assert self.balances() == before, "a refusal moved money"
        event(f"redeem: {error.code if error else 'replayed' if not outcome.applied else 'paid'}")
        true = not forged and 1 <= index <= body.length
        if state == "redeemed":
            if true and redeemed[0] == index:
                assert outcome is not None and outcome.statement == redeemed[1]
            else:
                assert error is not None and error.code == "purse.already_redeemed"
        elif state == "released" or self.now > body.expires + REDEEM_GRACE_MS:
            assert error is not None and error.code == "purse.expired"
        elif index > body.length:
            assert error is not None and error.code == "purse.beyond_chain"
        elif not true:
            assert error is not None and error.code == "purse.bad_payword"
        else:
            assert error is None and outcome.applied
            paid, back = index * body.unit.minor_units, \
                (body.length - index) * body.unit.minor_units
            self.model["shop"] += paid
            self.model["alice"] += back
            self.model[RESERVED] -= paid + back
            self.chains[chain_id][4:] = ["redeemed", (index, outcome.statement)]

    @rule(ms=st.one_of(st.integers(1, 5_000), st.integers(1, 2 * REDEEM_GRACE_MS)))
    def advance(self, ms: int) -> None:
        self.now += ms

    @rule()
    def sweep(self) -> None:
        released = self.db.transaction_sync(lambda c: purse_bank.release_expired(
            self.book, c, now_ms=self.now))
        due = [k for k, v in self.chains.items()
               if v[4] == "reserved" and v[1].expires + REDEEM_GRACE_MS < self.now]
        assert released == len(due)
        event(f"sweep: {'released' if released else 'nothing due'}")
        for chain_id in due:
            value = self.chains[chain_id][1].value.minor_units
            self.model["alice"] += value
            self.model[RESERVED] -= value
            self.chains[chain_id][4] = "released"

    @invariant()
    def books_balance(self) -> None:
        self.db.read_sync(_ledger.check_books)
        assert self.balances() == self.model
        live = sum(v[1].value.minor_units for v in self.chains.values() if v[4] == "reserved")
        assert self.model[RESERVED] == live


_SHARED: dict[str, Any] = {}


def book_market() -> dict[str, Any]:
    if not _SHARED:
        market = PkiMarket(Path(tempfile.mkdtemp(prefix="semper-purse-pki-")))
        _SHARED["agents"] = {"alice": market.agent("alice", "buyer")}
        _SHARED["bank"] = market.agent("bank", "bank")
    return _SHARED


def sign_as(agent: Any, type_: str, body: dict[str, Any]) -> Statement:
    return sign_statement(type_, body, key=agent.key, certificate=agent.cert,
                          now_ms=time.time_ns() // 1_000_000, nonce=os.urandom(16))


TestPurseBooks = PurseBooks.TestCase
TestPurseBooks.settings = settings(max_examples=15, stateful_step_count=30, deadline=None,
                                   suppress_health_check=[HealthCheck.too_slow])


async def test_a_bank_that_starts_after_the_grace_sweeps_at_once(market: Path) -> None:
    """The sweep task (``PurseBank.run``) runs at start, then every minute, deciding
    by the injected clock: a bank down through a chain's grace returns it on start."""
    from market_helpers import wait_until

    async with world(market) as w:
        commitment, _ = await w.purse.open_chain("seller", 3, UNIT, None, "k11",
                                                 validity_ms=1_000)
        clock = w.clock
    clock.ms = PurseCommitment.from_statement(commitment).expires + REDEEM_GRACE_MS + 1
    bank = Agent(config_of(market, "bank"), clock=clock)

    def balances() -> dict[str, int]:
        import sqlite3

        connection = sqlite3.connect(market / "bank" / "data" / "agent.sqlite")
        try:
            return {h: _ledger.balances(connection, h).get("EUR", 0)
                    for h in ("buyer", RESERVED)}
        finally:
            connection.close()

    assert balances() == {"buyer": DEMO_FUNDS.minor_units - 75, RESERVED: 75}
    with trio.fail_after(DEADLINE):
        async with running(bank):
            await wait_until(lambda: balances()[RESERVED] == 0, "the sweep at start")
            await bank.database.read(_ledger.check_books)
    assert balances() == {"buyer": DEMO_FUNDS.minor_units, RESERVED: 0}
