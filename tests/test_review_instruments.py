"""A reviewer's read of issue 11's instruments (brief R1): each fault found, as a
failing test first, then the member of its kind found beyond it.

Kind 1, a read outside the transaction that decides a write: the wallet reads its
fresh coins, awaits the bank (keys, blinding), then stores an exchange of them; its
store took a coin that another process bound to a payment meanwhile (any coin
``spending`` for a payment, not only the one being refreshed), so one coin was
spent under two contracts and the other payment's deposit was refused as double
spent (``test_an_exchange_for_change_does_not_take_a_coin_bound_meanwhile``).
Member: ``refused`` (a payee refused a payment and deposited one of its coins): the
wallet re-reads the rest as fresh and exchanges them again, and that store took one
that another process bound to its own payment meanwhile
(``test_refreshing_a_refused_payment_takes_only_its_own_coins``).

Kind 3, an input that is not checked before use: a ``market.policy`` body (signed by
the root, or read back from the agent's file) whose list holds a map or a list made
``MarketPolicy.from_body`` raise TypeError, not ``payment.bad_market_policy``
(``test_a_policy_naming_no_string_is_a_bad_market_policy``); member: the agent's
``MarketPolicyBook``, which catches only the coded errors, let that TypeError out of
the CRL answer's handling instead of keeping its policy
(``test_the_policy_book_ignores_a_signed_policy_naming_no_string``).

Kind 4, a holder's instrument of another bank taken as ours: the card module paid
with the buyer's first card whatever bank issued it, sealed for our bank's gateway,
which refused it (``card.unknown_card``) though a card of our bank was held
(``test_a_card_of_another_bank_is_not_paid_with``); member: ``semper buy`` without
``--pay`` picked the card with no card of our bank held, to fail at the gateway,
where the wallet says why it cannot pay (``can_pay``)
(``test_choosing_passes_over_the_card_without_a_card_of_our_bank``).

Kind 5, money that moves while the sale does not: the seller checked only that the
item ordered was still sold before taking the payment, not that its goods were still
those the order quoted; goods changed since the order failed the delivery check after
an ecash deposit (or a card capture), where no instrument gives the money back
(``received`` is the transfer's and the cheque's: money moved before the proof), so
the seller kept the money of an unpaid sale and the buyer's coins were counted spent
(``test_ecash_for_goods_changed_since_the_order_is_refused_before_the_deposit``);
member: the same by card, captured and kept
(``test_a_card_for_goods_changed_since_the_order_is_refused_before_the_capture``).

Kind 2, linking data kept where it should not be: a coin unblinded and fresh kept its
blinding inverse and blinded message, and the done batch its request (the blinded
list), so the wallet's database joined each coin to the withdrawal the bank signed
(``test_a_withdrawn_coin_keeps_no_blinding_data``); member: the same for an exchange
batch's new coins (``test_an_exchanged_coin_keeps_no_blinding_data``).
"""

from __future__ import annotations

import dataclasses
import secrets
from pathlib import Path
from typing import Any

import pytest
from test_wallet import OUTSTANDING, World, eur, market, world

from semper.agents.components._cards import add_card, luhn_digit
from semper.agents.components._payments import MarketPolicyBook
from semper.agents.components._purchase import Shopper
from semper.agents.components._wallet import Wallet
from semper.agents.roles.seller import Sales
from semper.services.certificates import create_ca
from semper.services.payment import PaymentRequest
from semper.services.payment._policy import MARKET_POLICY, BadMarketPolicy, MarketPolicy
from semper.services.payment.ecash import InsufficientCoins, Spend
from semper.services.statements import sign_statement
from semper.transport import RemoteError

__all__ = ["market"]  # test_wallet's fixture: one market for this module


async def pay(w: World, amount: int, tag: str) -> tuple[PaymentRequest, list[dict[str, Any]]]:
    """Coins worth ``amount`` bound to a new payment to the seller."""
    request = PaymentRequest(payee="seller", amount=eur(amount),
                             reference=tag.encode().ljust(32, b"."),
                             idempotency_key=f"{tag}-{secrets.token_hex(4)}")
    return request, await w.wallet.spend(request)


async def deposit(w: World, request: PaymentRequest, spends: list[dict[str, Any]]) -> Any:
    """The seller deposits ``spends`` for ``request`` (its half of the module, by hand)."""
    return await w.deposit(spends, request.reference, request.amount,
                           "d-" + request.idempotency_key)


async def rows(w: World, sql: str, *args: Any) -> list[Any]:
    """Rows of the buyer's database."""
    return await w.buyer.database.read(lambda c: c.execute(sql, args).fetchall())


def bind_during_draw(monkeypatch: pytest.MonkeyPatch, w: World,
                     other: PaymentRequest, coins: list[bytes], *, at: int = 0) -> list[Any]:
    """While the wallet awaits the bank for new coins (``_draw`` number ``at``: keys,
    blinding), another process binds ``coins`` to payment ``other`` (its ``_bind``,
    which no lock of this process orders). Returns [the other's spends] once done."""
    real = Wallet._draw
    done: list[Any] = []
    calls = [0]

    async def draw(self: Wallet, currency: str, units: Any) -> Any:
        out = await real(self, currency, units)
        calls[0] += 1
        if calls[0] == at + 1:
            done.append(await self._bind(coins, other))
        return out

    monkeypatch.setattr(Wallet, "_draw", draw)
    return done


# -- kind 1: a read outside the transaction that decides a write ---------------------


async def test_an_exchange_for_change_does_not_take_a_coin_bound_meanwhile(
        market: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with world(market) as w:
        await w.drain()
        await w.wallet.withdraw(eur(500), f"w-{secrets.token_hex(4)}")  # one 5.00 coin
        [(coin,)] = await rows(w, "SELECT coin_key FROM ecash_coins WHERE state = 'fresh'")
        other = PaymentRequest(payee="seller", amount=eur(500), reference=b"o".ljust(32, b"."),
                               idempotency_key=f"other-{secrets.token_hex(4)}")
        theirs = bind_during_draw(monkeypatch, w, other, [coin])
        before = await w.books()
        # Ours needs change: the 5.00 coin is to be exchanged, but is bound meanwhile.
        with pytest.raises(InsufficientCoins):
            await pay(w, 300, "ours")
        assert theirs and theirs[0] is not None
        # The other payment's coin was spent under its contract only: it deposits.
        await deposit(w, other, theirs[0])
        after = await w.books()
        assert (after["seller"] - before["seller"], after[OUTSTANDING] - before[OUTSTANDING]) \
            == (500, -500)
        assert await rows(w, "SELECT state, spend FROM ecash_coins WHERE coin_key = ?",
                            coin) == [("spending", other.idempotency_key)]
        assert await rows(w, "SELECT count(*) FROM ecash_batches WHERE state = 'pending'") \
            == [(0,)]


async def test_refreshing_a_refused_payment_takes_only_its_own_coins(
        market: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with world(market) as w:
        await w.drain()
        await w.wallet.withdraw(eur(700), f"w-{secrets.token_hex(4)}")  # 5.00 + 2.00
        ours, spends = await pay(w, 700, "refused")
        coins = {Spend.from_wire(s).coin.coin_key: s for s in spends}
        assert len(coins) == 2
        # The payee deposits one of the coins shown (for itself, under our order) and
        # refuses the payment: the wallet refreshes the coins, learns that one was
        # spent, and exchanges the other again; meanwhile another process binds that
        # one to a payment of its own.
        values = dict(await rows(w, "SELECT coin_key, value FROM ecash_coins WHERE spend = ?",
                                   ours.idempotency_key))
        (first, first_value), (kept, kept_value) = sorted(values.items(), key=lambda kv: -kv[1])
        part = PaymentRequest(payee="seller", amount=eur(first_value),
                              reference=ours.reference, idempotency_key=ours.idempotency_key)
        await deposit(w, part, [coins[first]])
        other = PaymentRequest(payee="seller", amount=eur(kept_value),
                               reference=b"q".ljust(32, b"."),
                               idempotency_key=f"other-{secrets.token_hex(4)}")
        theirs = bind_during_draw(monkeypatch, w, other, [kept], at=1)
        before = await w.books()
        await w.wallet.refused(ours)
        # Since W2 the coin not deposited is ``shown`` from the bank's refusal on, never
        # fresh: the other process cannot bind it (None), and it is exchanged.
        assert theirs == [None]
        after = await w.books()
        assert after["seller"] == before["seller"]
        assert await rows(w, "SELECT coin_key, state FROM ecash_coins WHERE coin_key"
                            " IN (?, ?) ORDER BY value DESC", first, kept) == [
            (first, "spent"), (kept, "spent")]
        assert await rows(w, "SELECT spend FROM ecash_coins WHERE coin_key = ?", first) == [
            (ours.idempotency_key,)]


# -- kind 2: linking data kept after use -----------------------------------------------


async def linking(w: World) -> tuple[list[Any], list[Any]]:
    """Fresh coins that still hold a blinded message or its inverse; done batches
    that still hold their request (which lists the blinded messages)."""
    coins = await rows(w, "SELECT coin_key FROM ecash_coins WHERE state != 'withdrawing'"
                         " AND (length(blinded) OR length(inv))")
    batches = await rows(w, "SELECT batch FROM ecash_batches WHERE state = 'done'"
                           " AND length(request) > 8")
    return coins, batches


async def test_a_withdrawn_coin_keeps_no_blinding_data(market: Path) -> None:
    async with world(market) as w:
        key = f"w-{secrets.token_hex(4)}"
        await w.wallet.withdraw(eur(1234), key)
        assert await linking(w) == ([], [])
        assert await w.wallet.withdraw(eur(1234), key)  # the same key: still once
        request, spends = await pay(w, 1234, "blinding")
        await deposit(w, request, spends)


async def test_an_exchanged_coin_keeps_no_blinding_data(market: Path) -> None:
    async with world(market) as w:
        await w.drain()
        await w.wallet.withdraw(eur(500), f"w-{secrets.token_hex(4)}")
        request, spends = await pay(w, 300, "change")  # an exchange for change first
        assert await rows(w, "SELECT count(*) FROM ecash_batches WHERE kind = 'exchange'"
                            " AND state = 'done'") != [(0,)]
        assert await linking(w) == ([], [])
        await deposit(w, request, spends)


# -- kind 3: an input not checked before use -------------------------------------------

_POLICY = {"allowed": None, "forbidden": [], "required": [], "issued_ms": 1, "serial": 5}


@pytest.mark.parametrize("body", [{**_POLICY, "forbidden": [["cheque"]]},
                                  {**_POLICY, "allowed": [{"a": 1}]},
                                  {**_POLICY, "required": [7]}])
def test_a_policy_naming_no_string_is_a_bad_market_policy(body: dict[str, Any]) -> None:
    with pytest.raises(BadMarketPolicy) as caught:
        MarketPolicy.from_body(body)
    assert caught.value.code == "payment.bad_market_policy"


async def test_the_policy_book_ignores_a_signed_policy_naming_no_string(
        tmp_path: Path) -> None:
    import datetime as dt
    root = create_ca("review root", now=dt.datetime.now(dt.UTC))
    book = MarketPolicyBook(root.certificate, tmp_path)
    statement = sign_statement(MARKET_POLICY, {**_POLICY, "forbidden": [["cheque"]]},
                               key=root.key, certificate=root.certificate, now_ms=1,
                               nonce=bytes(16))
    assert not await book.offer({"number": 1, "crl": None, "policy": statement.to_wire()})
    assert book.statement is None and book.policy.serial == 0


# -- kind 4: an instrument of another bank taken as ours ---------------------------------


async def test_a_card_of_another_bank_is_not_paid_with(market: Path) -> None:
    body = "49" + "".join(secrets.choice("0123456789") for _ in range(13))
    foreign = body + luhn_digit(body)
    async with world(market) as w:
        # Held before our bank's (kept first: the order cards are listed in).
        await w.buyer.database.transaction(lambda c: add_card(
            c, foreign, "2099-12", "otherbank", now_ms=0))
        try:
            before = await w.books()
            done = await Shopper(w.buyer).buy("seller", "map-002", "card",
                                              f"card-{secrets.token_hex(4)}")
            assert done.state == "done" and done.payment is not None
            after = await w.books()
            assert after["seller"] - before["seller"] == 480
            assert after["buyer"] - before["buyer"] == -480
        finally:
            await w.buyer.database.transaction(lambda c: c.execute(
                "DELETE FROM cards_cards WHERE number = ?", (foreign,)))


async def test_choosing_passes_over_the_card_without_a_card_of_our_bank(
        market: Path) -> None:
    async with world(market) as w:
        key = f"choose-{secrets.token_hex(4)}"
        mine = await rows(w, "SELECT number FROM cards_cards WHERE bank = 'bank'")
        assert mine
        shopper = Shopper(w.buyer)
        first, _ = await shopper.choose("seller", "map-002", key)
        await w.buyer.database.transaction(lambda c: c.execute(
            "UPDATE cards_cards SET bank = 'otherbank'"))
        try:
            module, why = await shopper.choose("seller", "map-002", key)
        finally:
            await w.buyer.database.transaction(lambda c: c.execute(
                "UPDATE cards_cards SET bank = 'bank'"))
        assert first == "card" or "card" not in why
        assert module != "card"
        assert "card" in why and "no card" in why


# -- kind 5: money that moves while the sale does not ------------------------------------


async def buy_while_the_goods_change(w: World, module: str) -> RemoteError:
    """Buy map-002 by ``module``; the seller's goods for it change once the order is
    accepted, before the payment (a new edition under the same sku). Returns the
    refusal; the goods are put back after."""
    sales = w.seller.component(Sales)
    item = sales.items["map-002"]

    def progress(step: str) -> None:
        if step.startswith("paying"):
            sales.items["map-002"] = dataclasses.replace(
                item, goods=item.goods + b" (second edition)", digest=b"")

    try:
        with pytest.raises(RemoteError) as refused:
            await Shopper(w.buyer, progress).buy("seller", "map-002", module,
                                                 f"{module}-changed-{secrets.token_hex(4)}")
    finally:
        sales.items["map-002"] = item
    return refused.value


async def test_ecash_for_goods_changed_since_the_order_is_refused_before_the_deposit(
        market: Path) -> None:
    async with world(market) as w:
        await w.drain()
        await w.wallet.withdraw(eur(480), f"w-{secrets.token_hex(4)}")
        before = await w.books()
        refusal = await buy_while_the_goods_change(w, "ecash")
        assert await w.books() == before  # nothing deposited
        assert refusal.code == "commerce.unknown_offer"
        assert await w.held() == 480  # the coins shown were refreshed, not lost


async def test_a_card_for_goods_changed_since_the_order_is_refused_before_the_capture(
        market: Path) -> None:
    async with world(market) as w:
        before = await w.books()
        refusal = await buy_while_the_goods_change(w, "card")
        assert refusal.code == "commerce.unknown_offer"
        assert await w.books() == before  # nothing captured, nothing held
