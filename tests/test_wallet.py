"""The buyer's ecash wallet (agents/components/_wallet.py) against a real bank agent
(agents/instruments/ecash.py), in-process over real loopback TLS and real SQLite,
and ``semper wallet`` / ``semper wallet withdraw`` (issue 11, Command line).

One market for the module (the bank makes its denomination keys once): each test
measures what moved at the bank (``World.moved``) and checks the books after each
step (customers plus @ecash-outstanding hold exactly the minted).

The instance from the issue: ``semper wallet withdraw`` killed between storing the
coins and asking the bank, and after the bank answered, then the wallet used again,
gives the coins once and debits once (``test_the_wallet_killed_inside_a_withdrawal_...``,
a real SIGKILL at the wallet's crash points). Members of the kind found beyond it: a
lost answer finished by a spend in a restarted agent (``test_a_lost_answer_...``);
the same loss for an exchange made for change (``test_a_lost_exchange_answer_...``)
and for a refund voucher's redemption (``test_a_purchase_paid_in_coins_...``); a
garbled blind signature (``test_a_bad_blind_signature_...``); and the same
withdrawal or payment run by two processes at once, which stored the batch twice
(internal.error) or bound two sets of coins to one payment
(``test_two_processes_...``).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from cli_helpers import refused, semper
from market_helpers import DEADLINE, config_of, running

from semper.agents import Agent
from semper.agents.components import _ledger
from semper.agents.components._payments import AgentPaymentContext
from semper.agents.components._purchase import Shopper
from semper.agents.components._wallet import Wallet
from semper.agents.operator._market import init_market
from semper.services import Amount
from semper.services.payment import IdempotencyConflict, PaymentRequest
from semper.services.payment.ecash import (
    BANK_ECASH_DEPOSIT,
    BANK_ECASH_EXCHANGE,
    BANK_ECASH_WITHDRAW,
    BadBlindSignature,
    DepositRequest,
    InsufficientCoins,
    Spend,
)
from semper.transport import RequestTimeout

OUTSTANDING = _ledger.system_account("ecash-outstanding")


def eur(units: int) -> Amount:
    return Amount("EUR", units)


@pytest.fixture(scope="module")
def market(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("wallet") / "market"
    init_market(folder)
    return folder


class World:
    def __init__(self, bank: Agent, buyer: Agent, seller: Agent) -> None:
        self.bank, self.buyer, self.seller = bank, buyer, seller
        self.wallet = buyer.component(Wallet)
        self.before: dict[str, int] = {}

    async def books(self) -> dict[str, int]:
        def read(c: Any) -> dict[str, int]:
            _ledger.check_books(c)
            return {holder: _ledger.balances(c, holder).get("EUR", 0)
                    for holder in ("buyer", "seller", OUTSTANDING)}

        return await self.bank.database.read(read)

    async def moved(self) -> dict[str, int]:
        """What moved at the bank since the last call (zeros left out)."""
        now = await self.books()
        delta = {h: now[h] - self.before.get(h, now[h]) for h in now}
        self.before = now
        return {h: d for h, d in delta.items() if d}

    async def held(self) -> int:
        return await self.wallet.balance("EUR")

    async def states(self) -> dict[str, int]:
        return dict(await self.buyer.database.read(lambda c: c.execute(
            "SELECT state, count(*) FROM ecash_coins GROUP BY state").fetchall()))

    async def drain(self) -> None:
        """Pay every coin the wallet holds to the seller (tests share one wallet: each
        that counts coins starts from none)."""
        total = await self.held()
        if total:
            key = f"drain-{secrets.token_hex(8)}"
            reference = key.encode()
            spends = await self.wallet.spend(PaymentRequest(
                payee="seller", amount=eur(total), reference=reference, idempotency_key=key))
            await self.deposit(spends, reference, eur(total), key)
        assert await self.held() == 0
        await self.moved()

    async def batches(self) -> int:
        return await self.buyer.database.read(lambda c: c.execute(
            "SELECT count(*) FROM ecash_batches").fetchone()[0])

    async def deposit(self, spends: list[dict[str, Any]], reference: bytes, amount: Amount,
                      key: str) -> Any:
        """The seller deposits what it was paid (its side of the module, by hand)."""
        return await self.seller.request("bank", "bank", BANK_ECASH_DEPOSIT, DepositRequest(
            spends=tuple(Spend.from_wire(s) for s in spends), reference=reference,
            amount=amount, idempotency_key=key).to_wire())


@asynccontextmanager
async def world(market: Path) -> AsyncIterator[World]:
    bank = Agent(config_of(market, "bank"))
    buyer = Agent(config_of(market, "buyer"))
    seller = Agent(config_of(market, "seller"))
    with trio.fail_after(DEADLINE * 3):
        async with running(bank), running(buyer), running(seller):
            w = World(bank, buyer, seller)
            await w.moved()
            yield w


async def in_thread(*args: str | Path) -> tuple[int, str, str]:
    """``semper`` from an async test: the command runs a trio loop of its own."""
    return await trio.to_thread.run_sync(lambda: semper(*args))


def lose(monkeypatch: pytest.MonkeyPatch, op: str) -> None:
    """The next answer to bank op ``op`` is lost (a timeout after the bank applied
    it)."""
    real = AgentPaymentContext.request
    lost = [0]

    async def request(self: Any, peer: str, service: str, name: str, body: Any) -> Any:
        answer = await real(self, peer, service, name, body)
        if name != op or lost[0]:
            return answer
        lost[0] += 1
        raise RequestTimeout(f"{op}: the answer lost by the test")

    monkeypatch.setattr(AgentPaymentContext, "request", request)


# -- withdrawing ---------------------------------------------------------------------


async def test_withdraw_on_the_command_line_and_the_wallet_shows_coins(market: Path) -> None:
    config = market / "buyer" / "agent.toml"
    async with world(market) as w:
        status, out, err = await in_thread("wallet", "withdraw", "--config", config,
                                           "EUR:20.00", "--idempotency-key", "w-cli", "--json")
        assert status == 0, err
        shown = json.loads(out)
        assert shown["idempotency_key"] == "w-cli"
        assert shown["withdrawn"] == {"currency": "EUR", "minor_units": 2000}
        assert await w.moved() == {"buyer": -2000, OUTSTANDING: 2000}  # no fee
        status, out, err = await in_thread("wallet", "--config", config, "--json")
        assert status == 0, err
        wallet = json.loads(out)
        # The table form names the coins too.
        status, table, err = await in_thread("wallet", "--config", config)
        assert status == 0, err
        assert "ecash coins" in table and "EUR 20.00" in table
    assert {"agent", "bank", "balances", "recent", "purchases", "balance_unavailable",
            "coins", "cards"} <= set(wallet)
    coins = wallet["coins"]["EUR"]
    assert all(type(n) is int and int(v) > 0 for v, n in coins.items())
    assert sum(int(v) * n for v, n in coins.items()) >= 2000  # and what other tests left
    assert isinstance(wallet["cards"], list)
    for card in wallet["cards"]:
        assert set(card) == {"number", "expiry"}


async def test_withdraw_splits_into_denominations_once_per_key(market: Path) -> None:
    async with world(market) as w:
        before = await w.held()
        coins = await w.wallet.withdraw(eur(3850), "w-split")
        assert await w.moved() == {"buyer": -3850, OUTSTANDING: 3850}
        assert await w.held() == before + 3850
        assert await w.wallet.withdraw(eur(3850), "w-split") == coins
        assert await w.moved() == {}
        with pytest.raises(IdempotencyConflict):
            await w.wallet.withdraw(eur(100), "w-split")
        assert await w.moved() == {}


async def test_a_lost_answer_is_finished_by_the_next_use_of_the_wallet(
        market: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The bank signed and debited, the answer never came: the wallet restarted (a
    new agent on the same database) finishes it at its next use (a spend), with the
    bank's same signatures, debiting nothing more."""
    async with world(market) as w:
        await w.drain()
        before = await w.held()
        lose(monkeypatch, BANK_ECASH_WITHDRAW)
        with pytest.raises(RequestTimeout):
            await w.wallet.withdraw(eur(1000), "w-lost")
        assert await w.moved() == {"buyer": -1000, OUTSTANDING: 1000}
        assert await w.held() == before
        monkeypatch.undo()
    async with world(market) as w:  # a restarted buyer
        await w.moved()
        request = PaymentRequest(payee="seller", amount=eur(1), reference=b"r" * 32,
                                 idempotency_key="p-after-lost")
        await w.wallet.spend(request)  # finishes the withdrawal first
        assert await w.moved() == {}
        assert await w.held() == before + 1000 - 1
        assert "withdrawing" not in await w.states()
        await w.wallet.refused(request)  # the coin shown comes back as a new one
        assert await w.held() == before + 1000
        assert await w.moved() == {}


async def semper_killed_at(point: str | None, *args: str | Path) -> int:
    """``semper ARGS`` in a process of its own, killed (SIGKILL) at crash point
    ``point``; its exit status."""
    env = {k: v for k, v in os.environ.items() if k != "SEMPER_CRASH_AT"}
    if point is not None:
        env["SEMPER_CRASH_AT"] = point
    done = await trio.run_process([sys.executable, "-m", "semper.agents.cli",
                                   *map(str, args)], env=env, check=False,
                                  stdout=subprocess.DEVNULL, capture_stderr=True)
    return done.returncode


async def test_the_wallet_killed_inside_a_withdrawal_then_rerun_withdraws_once(
        market: Path) -> None:
    """SIGKILL of ``semper wallet withdraw`` after the coins are stored and before
    the bank is asked, then after the bank answered and before the signatures are
    stored, then any use of the wallet: the coins once, the account debited once."""
    command = ("wallet", "withdraw", "--config", market / "buyer" / "agent.toml",
               "EUR:3.00", "--idempotency-key", "w-killed")
    async with world(market) as w:
        await w.drain()
        assert await semper_killed_at("wallet.withdraw.stored", *command) == -signal.SIGKILL
        assert await w.moved() == {}
        assert await semper_killed_at("wallet.withdraw.answered", *command) == -signal.SIGKILL
        assert await w.moved() == {"buyer": -300, OUTSTANDING: 300}
        assert await w.held() == 0 and (await w.states()).get("withdrawing") == 2
        # Any use of the wallet finishes it: here `semper wallet`, which shows the coins.
        status, out, err = await in_thread("wallet", "--config", market / "buyer" / "agent.toml",
                                           "--json")
        assert status == 0, err
        assert json.loads(out)["coins"] == {"EUR": {"100": 1, "200": 1}}
        assert await w.moved() == {}
        assert await w.held() == 300 and "withdrawing" not in await w.states()


async def test_a_bad_blind_signature_keeps_the_coins_for_a_retry(
        market: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A blind signature that does not finalize (the answer garbled on its way, or
    signed under another key) is ecash.bad_blind_signature; the withdrawal stays
    stored, and the retry, answered with the bank's same true signatures, gives the
    coins once."""
    real = AgentPaymentContext.request

    async def garbled(self: Any, peer: str, service: str, name: str, body: Any) -> Any:
        answer = await real(self, peer, service, name, body)
        if name == BANK_ECASH_WITHDRAW:
            first = answer["blind_signatures"][0]
            answer["blind_signatures"][0] = first[:-1] + bytes([first[-1] ^ 1])
        return answer

    async with world(market) as w:
        await w.drain()
        monkeypatch.setattr(AgentPaymentContext, "request", garbled)
        with pytest.raises(BadBlindSignature):
            await w.wallet.withdraw(eur(250), "w-garbled")
        assert await w.moved() == {"buyer": -250, OUTSTANDING: 250}
        assert await w.held() == 0 and (await w.states()).get("withdrawing") == 2
        monkeypatch.undo()
        await w.wallet.withdraw(eur(250), "w-garbled")
        assert await w.moved() == {} and await w.held() == 250


# -- spending ------------------------------------------------------------------------


async def test_spend_with_exact_coins_deposits_and_is_the_same_for_the_same_key(
        market: Path) -> None:
    async with world(market) as w:
        await w.drain()
        await w.wallet.withdraw(eur(700), "w-exact")
        await w.moved()
        held = await w.held()
        batches = await w.batches()
        request = PaymentRequest(payee="seller", amount=eur(700), reference=b"o" * 32,
                                 idempotency_key="p-exact")
        spends = await w.wallet.spend(request)
        assert sum(s["coin"]["coin_key"] != b"" for s in spends) == len(spends) >= 2
        assert await w.wallet.spend(request) == spends  # bound to the key, durably
        assert await w.held() == held - 700
        assert await w.batches() == batches  # no exchange
        with pytest.raises(IdempotencyConflict):
            await w.wallet.spend(PaymentRequest(payee="seller", amount=eur(700),
                                                reference=b"x" * 32, idempotency_key="p-exact"))
        await w.deposit(spends, b"o" * 32, eur(700), "d-exact")
        assert await w.moved() == {OUTSTANDING: -700, "seller": 700}


async def test_spend_without_exact_coins_exchanges_for_change_first(market: Path) -> None:
    async with world(market) as w:
        await w.drain()
        await w.wallet.withdraw(eur(5000), "w-big")  # one 50.00 coin
        await w.moved()
        held, batches = await w.held(), await w.batches()
        request = PaymentRequest(payee="seller", amount=eur(1234), reference=b"e" * 32,
                                 idempotency_key="p-change")
        spends = await w.wallet.spend(request)
        assert await w.batches() == batches + 1  # one exchange
        assert await w.moved() == {}  # an exchange moves no account
        assert await w.held() == held - 1234
        await w.deposit(spends, b"e" * 32, eur(1234), "d-change")
        assert await w.moved() == {OUTSTANDING: -1234, "seller": 1234}
        with pytest.raises(InsufficientCoins):
            await w.wallet.spend(PaymentRequest(payee="seller", amount=eur(10**9),
                                                reference=b"e" * 32, idempotency_key="p-no"))


async def test_a_lost_exchange_answer_gives_the_change_once(
        market: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with world(market) as w:
        await w.drain()
        await w.wallet.withdraw(eur(2000), "w-for-lost-exchange")
        await w.moved()
        held = await w.held()
        lose(monkeypatch, BANK_ECASH_EXCHANGE)
        request = PaymentRequest(payee="seller", amount=eur(3), reference=b"l" * 32,
                                 idempotency_key="p-lost-exchange")
        with pytest.raises(RequestTimeout):
            await w.wallet.spend(request)
        assert await w.held() < held  # the coins given are bound to the exchange
        spends = await w.wallet.spend(request)  # finishes the exchange, then pays
        assert await w.held() == held - 3
        assert sum(Spend.from_wire(s).coin.coin_key != b"" for s in spends) == len(spends)
        assert await w.moved() == {}


# -- a purchase and its refund ---------------------------------------------------------


async def test_a_purchase_paid_in_coins_is_refunded_as_new_coins_once(
        market: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``semper buy --pay ecash`` then ``semper refund``: the seller's refund is the
    bank's voucher, which the wallet redeems into fresh coins (none of them a coin it
    paid with). The redemption's answer lost: the refund asked again finishes it,
    once."""
    async with world(market) as w:
        await w.drain()
        shopper = Shopper(w.buyer)
        with pytest.raises(InsufficientCoins):  # no coins: refused, nothing moved
            await shopper.buy("seller", "map-002", "ecash", "buy-ecash-poor")
        assert await w.moved() == {}
        assert await w.wallet.can_pay(eur(1)) == ("the wallet holds EUR 0.00 in coins "
                                                "(semper wallet withdraw)")
        await w.wallet.withdraw(eur(2000), "w-for-purchase")
        await w.moved()
        assert await w.wallet.can_pay(eur(2000)) is None
        done = await shopper.buy("seller", "map-002", "ecash", "buy-ecash-1")
        assert done.state == "done" and done.payment is not None
        assert done.payment.module == "ecash"
        price = done.payment.amount.minor_units
        assert await w.moved() == {OUTSTANDING: -price, "seller": price}
        assert await w.held() == 2000 - price
        paid_with = {k for (k,) in await w.buyer.database.read(lambda c: c.execute(
            "SELECT coin_key FROM ecash_coins WHERE spend = 'buy-ecash-1'").fetchall())}
        assert paid_with  # the coins the purchase was paid with, bound to its key
        lose(monkeypatch, BANK_ECASH_EXCHANGE)
        with pytest.raises(RequestTimeout):
            await shopper.refund("buy-ecash-1")
        monkeypatch.undo()
        assert await w.moved() == {"seller": -price, OUTSTANDING: price}  # the voucher
        refunded = await Shopper(w.buyer).refund("buy-ecash-1")
        assert refunded.state == "refunded"
        assert await w.held() == 2000
        assert await w.moved() == {}
        assert (await shopper.refund("buy-ecash-1")).state == "refunded"
        assert await w.held() == 2000 and await w.moved() == {}
        fresh = {k for (k,) in await w.buyer.database.read(lambda c: c.execute(
            "SELECT coin_key FROM ecash_coins WHERE state = 'fresh'").fetchall())}
        assert not fresh & paid_with


async def test_the_buyer_killed_inside_an_ecash_payment_then_rerun_pays_once(
        market: Path) -> None:
    """SIGKILL of ``semper buy --pay ecash`` after the bank answered the exchange made
    for change (nothing of it stored), then after the coins were bound to the payment
    (not yet shown to the seller), then the same command: paid once, the change kept,
    no coin lost."""
    command = ("buy", "--config", market / "buyer" / "agent.toml", "--seller", "seller",
               "--item", "map-002", "--pay", "ecash", "--idempotency-key", "buy-killed")
    async with world(market) as w:
        await w.drain()
        await w.wallet.withdraw(eur(2000), "w-for-killed-buy")  # one coin: change needed
        await w.moved()
        for point in ("wallet.exchange.answered", "wallet.spend.bound"):
            assert await semper_killed_at(point, *command) == -signal.SIGKILL, point
            assert await w.moved() == {}, point  # nothing deposited yet
        assert await semper_killed_at(None, *command) == 0
        assert await w.moved() == {OUTSTANDING: -480, "seller": 480}
        assert await w.held() == 2000 - 480
        paid = await w.buyer.database.read(lambda c: c.execute(
            "SELECT state, sum(value) FROM ecash_coins WHERE spend = 'buy-killed'"
            " GROUP BY state").fetchall())
        assert paid == [("spent", 480)]
        assert await w.buyer.database.read(lambda c: c.execute(
            "SELECT count(*) FROM ecash_batches WHERE state = 'pending'").fetchone()[0]) == 0


# -- the command line's refusals -------------------------------------------------------


def _files(folder: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")
            if p.is_file()}


@pytest.mark.parametrize("amount, code", [
    ("EUR:20.0", "money.bad_amount"),  # one minor digit short: 20.0 of what?
    ("EUR:20.001", "money.bad_amount"),  # a digit EUR does not have
    ("JPY:5.0", "money.bad_amount"),  # JPY has no minor digits
    ("EUR:0.00", "money.bad_amount"),  # nothing to withdraw
    ("EUR:0", "money.bad_amount"),
    ("EUR:-1.00", "money.bad_amount"),
    ("20.00", "money.bad_amount"),  # no currency
    ("eur:20.00", "money.bad_amount"),  # not an ISO 4217 code
    ("EUR:20,00", "money.bad_amount"),
    ("EUR:1e3", "money.bad_amount"),
    ("EUR:99999999999999999.99", "money.out_of_range"),  # past signed 64-bit minor units
    ("EUR:99999999999999999999", "money.out_of_range"),
])
def test_a_bad_amount_is_one_line_and_changes_nothing(market: Path, amount: str,
                                                      code: str) -> None:
    before = _files(market / "buyer")
    refused(semper("wallet", "withdraw", "--config", market / "buyer" / "agent.toml", amount),
            code)
    assert _files(market / "buyer") == before


def test_other_refusals_of_the_command_line_are_one_line(market: Path) -> None:
    refused(semper("wallet", "withdraw", "--config", market / "seller" / "agent.toml",
                   "EUR:1.00"), "agent.bad_config")  # a seller keeps no wallet
    refused(semper("wallet", "--json"), "cli.usage")  # whose wallet?
    refused(semper("wallet", "withdraw", "--config", market / "buyer" / "agent.toml",
                   "EUR:1.00", "--idempotency-key", "\x7f"), "payment.bad_request")


async def test_a_withdrawal_the_bank_refuses_is_one_line_and_kept_nowhere(
        market: Path) -> None:
    config = market / "buyer" / "agent.toml"
    async with world(market) as w:
        batches = await w.batches()
        done = await in_thread("wallet", "withdraw", "--config", config, "EUR:5000.00",
                               "--idempotency-key", "w-too-much")
        refused(done, "payment.insufficient_funds")
        assert await w.moved() == {}
        assert await w.batches() == batches  # the key is free again


async def test_two_processes_withdrawing_or_paying_under_one_key_do_it_once(
        market: Path) -> None:
    """A member of the kind: the same withdrawal run twice at once (two `semper wallet
    withdraw` with one key, or the command beside the running buyer) stored the batch
    twice (the second failed with internal.error, sqlite's IntegrityError), and the
    same payment bound two sets of coins to one key. Both wallets now end with the
    coins once and the same spends."""
    async with world(market) as w:
        await w.drain()
        other = Agent(config_of(market, "buyer"))
        async with other.session():
            wallets = (w.wallet, other.component(Wallet))
            async with trio.open_nursery() as nursery:
                for wallet in wallets:
                    nursery.start_soon(wallet.withdraw, eur(500), "w-race")
            assert await w.moved() == {"buyer": -500, OUTSTANDING: 500}
            assert await w.held() == 500
            request = PaymentRequest(payee="seller", amount=eur(200), reference=b"race",
                                     idempotency_key="p-race")
            spent: list[list[dict[str, Any]]] = []

            async def spend(wallet: Wallet) -> None:
                spent.append(await wallet.spend(request))

            async with trio.open_nursery() as nursery:
                for wallet in wallets:
                    nursery.start_soon(spend, wallet)
            assert spent[0] == spent[1]
            assert await w.held() == 300
