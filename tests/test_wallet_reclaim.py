"""The wallet gives back what a vanished seller or time would take (brief W2, issue 11's
"a coin is never lost"): ``Wallet.reclaim`` / ``semper wallet reclaim``, and the notary's
check of an ecash settlement's bank.

Kind 1, coins bound to a payment that never settles: coins handed to a seller that
then vanished stayed bound to the payment forever, outside the balance
(``test_coins_handed_to_a_vanished_seller_come_back_after_the_grace``, the instance);
members: the seller deposited them before it vanished (the coins are spent, the bank's
evidence kept, and a retry under the key hands over the same spends, paying once:
``test_coins_a_vanished_seller_deposited_stay_paid_with_the_evidence``); a payee that
deposited the coins and refused the payment (``refused``): the coins were counted
spent but unbound, so a retry under the key bound new coins and paid twice
(``test_a_payee_that_deposits_then_refuses_is_not_paid_again_by_a_retry``); a purchase
that ended FAILED is reclaimed at once (``test_a_failed_purchase_is_reclaimed_at_once``);
the reclaim's answer lost (``test_a_lost_reclaim_answer_is_finished_before_a_retry_pays``)
or the wallet killed inside it (``test_a_reclaim_killed_midway_is_finished_once``).

Kind 2, coins that lose their value with time: fresh coins were never refreshed before
their key's deposit window closed (``test_coins_whose_key_expires_soon_are_refreshed``);
member: a refresh that would gain nothing (the bank's current keys end within the
margin too) is not made again and again
(``test_no_refresh_when_the_current_keys_end_within_the_margin_too``).

Kind 3, a third party's check that does not name the bank: ``EcashModule.settles``
took a deposit signed by any bank of the market
(``test_settles_refuses_a_deposit_of_another_bank``).
"""

from __future__ import annotations

import json
import secrets
import time
from pathlib import Path
from typing import Any

import pytest
import trio
from cli_helpers import semper
from market_helpers import DEADLINE
from test_wallet import OUTSTANDING, World, eur, in_thread, lose, market, world

from semper.agents.components._wallet import RECLAIM_AFTER_MS, Wallet
from semper.agents.runtime import _faults
from semper.agents.runtime._config import ConfigError
from semper.services.payment import BadConfirmation, PaymentRequest
from semper.services.payment.ecash import (
    BANK_ECASH_EXCHANGE,
    DepositAnswer,
    EcashModule,
    Spend,
)
from semper.transport import RemoteError

__all__ = ["market"]  # test_wallet's fixture: one market for this module


class Later:
    """The machine's clock moved ``offset_ms`` on (the wallet's injected clock)."""

    def __init__(self, offset_ms: int) -> None:
        self.offset_ms = offset_ms

    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000 + self.offset_ms


class later:
    """``with later(w, ms):`` the buyer's components see the clock ``ms`` on."""

    def __init__(self, w: World, offset_ms: int) -> None:
        self.context, self.clock = w.wallet.context, Later(offset_ms)

    def __enter__(self) -> None:
        self.real, self.context.clock = self.context.clock, self.clock

    def __exit__(self, *exc: object) -> None:
        self.context.clock = self.real


async def pay(w: World, amount: int, tag: str) -> tuple[PaymentRequest, list[dict[str, Any]]]:
    request = PaymentRequest(payee="seller", amount=eur(amount),
                             reference=tag.encode().ljust(32, b"."),
                             idempotency_key=f"{tag}-{secrets.token_hex(4)}")
    return request, await w.wallet.spend(request)


async def deposit(w: World, request: PaymentRequest, spends: list[dict[str, Any]]) -> Any:
    return await w.deposit(spends, request.reference, request.amount,
                           "d-" + request.idempotency_key)


async def rows(w: World, sql: str, *args: Any) -> list[Any]:
    return await w.buyer.database.read(lambda c: c.execute(sql, args).fetchall())


def of(report: dict[str, Any], request: PaymentRequest) -> list[dict[str, Any]]:
    """The report's lines about ``request`` (the module's wallet is shared: earlier
    tests' payments, deposited but never settled by hand, are reclaimed too)."""
    return [p for p in report["payments"] if p["key"] == request.idempotency_key]


def coin_keys(spends: list[dict[str, Any]]) -> set[bytes]:
    return {Spend.from_wire(s).coin.coin_key for s in spends}


# -- kind 1: coins bound to a payment that never settles ------------------------------


async def test_coins_handed_to_a_vanished_seller_come_back_after_the_grace(
        market: Path) -> None:
    async with world(market) as w:
        await w.drain()
        await w.wallet.withdraw(eur(700), f"w-{secrets.token_hex(4)}")
        await w.moved()
        request, spends = await pay(w, 700, "vanished")
        assert await w.held() == 0
        # Within the grace the payment may still settle: nothing is touched.
        assert of(await w.wallet.reclaim(), request) == []
        with later(w, RECLAIM_AFTER_MS - 1_000):
            assert of(await w.wallet.reclaim(), request) == []
        assert await w.held() == 0
        with later(w, RECLAIM_AFTER_MS + 1_000):
            report = await w.wallet.reclaim()
        assert [(p["state"], p["amount"]) for p in of(report, request)] == [
            ("refreshed", eur(700).to_wire())]
        assert await w.held() == 700 and await w.moved() == {}  # no money moved
        assert await rows(w, "SELECT count(*) FROM ecash_coins WHERE spend = ?",
                          request.idempotency_key) == [(0,)]
        # The seller comes back and deposits what it was shown: refused, the coins
        # were exchanged by us first.
        with pytest.raises(RemoteError) as info:
            await deposit(w, request, spends)
        assert info.value.code == "ecash.double_spent"
        # A retry of the purchase under the same key pays with new coins, once.
        again = await w.wallet.spend(request)
        assert not coin_keys(again) & coin_keys(spends)
        await deposit(w, request, again)
        assert await w.moved() == {"seller": 700, OUTSTANDING: -700}
        assert await w.wallet.spend(request) == again
        assert of(await w.wallet.reclaim(), request) == []


async def test_coins_a_vanished_seller_deposited_stay_paid_with_the_evidence(
        market: Path) -> None:
    async with world(market) as w:
        await w.drain()
        await w.wallet.withdraw(eur(700), f"w-{secrets.token_hex(4)}")
        request, spends = await pay(w, 700, "deposited")
        first = await deposit(w, request, spends)  # then the seller vanishes unanswered
        await w.moved()
        with later(w, RECLAIM_AFTER_MS + 1_000):
            report = await w.wallet.reclaim()
        [payment] = of(report, request)
        assert payment["state"] == "paid"
        evidence = payment["evidence"]
        assert evidence["code"] == "ecash.double_spent"
        assert evidence["detail"]["first"] in spends  # our spend the seller deposited
        assert await w.moved() == {} and await w.held() == 0
        assert await rows(w, "SELECT DISTINCT state, spend FROM ecash_coins WHERE"
                          " coin_key IN (?, ?)", *coin_keys(spends)) == [
            ("spent", request.idempotency_key)]
        assert {"key": request.idempotency_key, "state": "paid", "evidence": evidence} \
            in await w.wallet.reclaims()
        # A retry hands over the same spends: the seller's deposit answers the first.
        assert await w.wallet.spend(request) == spends
        assert await deposit(w, request, spends) == first
        assert await w.moved() == {}
        with later(w, RECLAIM_AFTER_MS * 2):
            assert of(await w.wallet.reclaim(), request) == []


async def test_a_payee_that_deposits_then_refuses_is_not_paid_again_by_a_retry(
        market: Path) -> None:
    async with world(market) as w:
        await w.drain()
        await w.wallet.withdraw(eur(500), f"w-{secrets.token_hex(4)}")
        await w.wallet.withdraw(eur(500), f"w-{secrets.token_hex(4)}")
        request, spends = await pay(w, 500, "lying")
        first = await deposit(w, request, spends)  # the payee deposits, then refuses
        await w.moved()
        await w.wallet.refused(request)
        assert [r["state"] for r in await w.wallet.reclaims()
                if r["key"] == request.idempotency_key] == ["paid"]
        assert await w.held() == 500 and await w.moved() == {}
        # A retry under the key hands over the same spends: paid once, not twice.
        assert await w.wallet.spend(request) == spends
        assert await deposit(w, request, spends) == first
        assert await w.moved() == {} and await w.held() == 500


async def test_a_failed_purchase_is_reclaimed_at_once(market: Path) -> None:
    async with world(market) as w:
        await w.drain()
        await w.wallet.withdraw(eur(200), f"w-{secrets.token_hex(4)}")
        request, _ = await pay(w, 200, "failed")
        # The purchase of that key ended FAILED (its seller refused it, say, and the
        # refresh of the coins shown failed then).
        await w.buyer.database.transaction(lambda c: c.execute(
            "INSERT INTO commerce_purchases (key, seller, sku, module, state, machine,"
            " updated_ms) VALUES (?, 'seller', 'x', 'ecash', 'failed', x'', 0)",
            (request.idempotency_key,)))
        report = await w.wallet.reclaim()
        assert [p["state"] for p in of(report, request)] == ["refreshed"]
        assert await w.held() == 200


async def test_a_lost_reclaim_answer_is_finished_before_a_retry_pays(
        market: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with world(market) as w:
        await w.drain()
        await w.wallet.withdraw(eur(500), f"w-{secrets.token_hex(4)}")
        request, spends = await pay(w, 500, "lost")
        await w.moved()
        lose(monkeypatch, BANK_ECASH_EXCHANGE)
        with later(w, RECLAIM_AFTER_MS + 1_000):
            report = await w.wallet.reclaim()
        assert [p["state"] for p in of(report, request)] == ["pending"]
        assert any(line.startswith(request.idempotency_key) for line in report["failed"])
        # The retry finishes the reclaim first (the bank answers it again), then pays
        # with the coins it gave back, once.
        again = await w.wallet.spend(request)
        assert not coin_keys(again) & coin_keys(spends)
        assert [r["state"] for r in await w.wallet.reclaims()
                if r["key"] == request.idempotency_key] == ["refreshed"]
        await deposit(w, request, again)
        assert await w.moved() == {"seller": 500, OUTSTANDING: -500}
        assert await w.held() == 0


class Killed(Exception):
    """The wallet's process dies here (what it committed stays, nothing else)."""


@pytest.mark.parametrize("point", ["wallet.exchange.stored", "wallet.exchange.answered"])
async def test_a_reclaim_killed_midway_is_finished_once(
        market: Path, monkeypatch: pytest.MonkeyPatch, point: str) -> None:
    async with world(market) as w:
        await w.drain()
        with later(w, RECLAIM_AFTER_MS + 1_000):  # earlier tests' payments: not killed
            await w.wallet.reclaim()
        await w.wallet.withdraw(eur(200), f"w-{secrets.token_hex(4)}")
        request, spends = await pay(w, 200, "killed")
        held = await w.held()
        await w.moved()

        def crash(name: str) -> None:
            if name == point:
                raise Killed(name)

        monkeypatch.setattr(_faults, "on_crash", crash)
        with later(w, RECLAIM_AFTER_MS + 1_000), pytest.raises(Killed):
            await w.wallet.reclaim()
        monkeypatch.setattr(_faults, "on_crash", None)
        assert await w.held() == held  # not yet back
        report = await w.wallet.reclaim()  # the next use finishes it, once
        assert [r["state"] for r in await w.wallet.reclaims()
                if r["key"] == request.idempotency_key] == ["refreshed"]
        assert await w.held() == held + 200 and await w.moved() == {}
        assert report["failed"] == []
        again = await w.wallet.spend(request)
        assert not coin_keys(again) & coin_keys(spends)


async def test_the_running_wallet_reclaims_by_itself(
        market: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with world(market) as w:
        ran = trio.Event()
        real = Wallet.reclaim

        async def reclaim(self: Wallet) -> dict[str, Any]:
            out = await real(self)
            ran.set()
            return out

        monkeypatch.setattr(Wallet, "reclaim", reclaim)
        monkeypatch.setattr(w.wallet, "housekeeping_ms", 1)
        with trio.fail_after(DEADLINE):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(w.wallet.run)
                await ran.wait()
                nursery.cancel_scope.cancel()


async def test_semper_wallet_reclaim_on_the_command_line(market: Path) -> None:
    config = market / "buyer" / "agent.toml"
    async with world(market) as w:
        await w.drain()
        await w.wallet.withdraw(eur(300), f"w-{secrets.token_hex(4)}")
        paid, spends = await pay(w, 100, "cli-paid")
        await deposit(w, paid, spends)
        back, _ = await pay(w, 200, "cli-back")
        await w.moved()
        await w.buyer.database.transaction(lambda c: c.executemany(
            "INSERT INTO commerce_purchases (key, seller, sku, module, state, machine,"
            " updated_ms) VALUES (?, 'seller', 'x', 'ecash', 'failed', x'', 0)",
            [(paid.idempotency_key,), (back.idempotency_key,)]))
        code, out, err = await in_thread("wallet", "reclaim", "--config", config, "--json")
        assert code == 0, err
        got = json.loads(out)
        assert set(got) == {"payments", "refreshed", "failed", "coins"}
        states = {p["key"]: p["state"] for p in got["payments"]}
        assert states[paid.idempotency_key] == "paid"
        assert states[back.idempotency_key] == "refreshed"
        [evidence] = [p["evidence"] for p in got["payments"]
                      if p["key"] == paid.idempotency_key]
        assert evidence["code"] == "ecash.double_spent"
        assert await w.moved() == {}
        code, out, err = await in_thread("wallet", "reclaim", "--config", config)
        assert code == 0, err
        assert "no payment to reclaim" in out


def test_reclaim_with_a_config_that_keeps_no_wallet_is_one_line(market: Path) -> None:
    code, out, err = semper("wallet", "reclaim", "--config", market / "seller" / "agent.toml")
    assert code != 0 and not out
    assert err.startswith("semper: ") and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("settings", [{"reclaim_after_ms": "1h"}, {"refresh_margin_ms": -1},
                                      {"housekeeping_ms": 1.5}, {"reclaim_ms": 1},
                                      {"reclaim_after_ms": 5, "refresh_margin_ms": True}])
async def test_bad_wallet_settings_are_a_config_error_and_change_nothing(
        market: Path, settings: dict[str, Any]) -> None:
    async with world(market) as w:
        before = (w.wallet.reclaim_after_ms, w.wallet.refresh_margin_ms,
                  w.wallet.housekeeping_ms)
        with pytest.raises(ConfigError):
            w.wallet.configure(settings)
        assert (w.wallet.reclaim_after_ms, w.wallet.refresh_margin_ms,
                w.wallet.housekeeping_ms) == before


# -- kind 2: coins that lose their value with time ------------------------------------


async def test_coins_whose_key_expires_soon_are_refreshed(market: Path) -> None:
    async with world(market) as w:
        await w.drain()
        await w.wallet.withdraw(eur(300), f"w-{secrets.token_hex(4)}")
        await w.wallet.reclaim()  # whatever earlier tests left
        held = await w.held()
        await w.moved()
        old = {k for k, in await rows(w, "SELECT coin_key FROM ecash_coins WHERE"
                                         " state = 'fresh'")}
        assert (await w.wallet.reclaim())["refreshed"] == 0  # a year to go
        # The wallet's copy of the key says its deposit window ends in a day (an old
        # key: the bank's current ones end later).
        await w.buyer.database.transaction(lambda c: c.execute(
            "UPDATE ecash_denominations SET deposit_until_ms = ? WHERE key_id IN (SELECT"
            " key_id FROM ecash_coins WHERE state = 'fresh')",
            (w.wallet.context.now_ms() + 86_400_000,)))
        report = await w.wallet.reclaim()
        assert report["refreshed"] == len(old) and report["failed"] == []
        new = {k for k, in await rows(w, "SELECT coin_key FROM ecash_coins WHERE"
                                         " state = 'fresh'")}
        assert new and not new & old and await w.held() == held
        assert await w.moved() == {}


async def test_no_refresh_when_the_current_keys_end_within_the_margin_too(
        market: Path) -> None:
    async with world(market) as w:
        await w.drain()
        await w.wallet.withdraw(eur(100), f"w-{secrets.token_hex(4)}")
        wallet: Wallet = w.wallet
        margin, wallet.refresh_margin_ms = wallet.refresh_margin_ms, 10 * 365 * 86_400_000
        try:
            report = await wallet.reclaim()
        finally:
            wallet.refresh_margin_ms = margin
        assert report["refreshed"] == 0
        assert report["failed"] == ["refresh EUR: the bank's current keys end within the "
                                    "margin too"]


# -- kind 3: a third party's check that names no bank ---------------------------------


async def test_settles_refuses_a_deposit_of_another_bank(market: Path) -> None:
    async with world(market) as w:
        await w.drain()
        await w.wallet.withdraw(eur(100), f"w-{secrets.token_hex(4)}")
        request, spends = await pay(w, 100, "settles")
        answer = await deposit(w, request, spends)
        got = DepositAnswer.from_wire(answer)
        args = dict(bank_certificate=got.bank_certificate, root=w.buyer.credentials.root,
                    crl=w.buyer.crl, now=w.buyer.context.now(), payer="buyer",
                    payee="seller", amount=eur(100), reference=request.reference,
                    idempotency_key=request.idempotency_key)
        settlement = got.deposited
        EcashModule().settles(settlement, bank="bank", **args)
        with pytest.raises(BadConfirmation):
            EcashModule().settles(settlement, bank="other-bank", **args)
