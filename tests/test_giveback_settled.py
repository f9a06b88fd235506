"""Money settled inside ``payment.accept`` is given back when the sale fails after it
(brief G1, issue 11; docs/protocol.md 8.3).

Kind: money that moves while the sale does not. For an instrument whose money moves
inside the payee's accept (a cheque deposited, an ecash deposit, a card capture), a
coded error the seller raised after ``accept`` returned (the sale's step, signing the
delivery or the receipt, archiving) left the money with the seller and the sale
unpaid: only a transfer (money moved before the proof) was given back.

Instance: the seller's ``_fulfil`` fails once after the deposit or capture, for a
cheque, ecash and a card (``test_money_settled_then_refused_is_given_back``): the
buyer's money comes back (for ecash the bank's voucher, redeemed by the buyer's
wallet into new coins), and the buyer's retry of the purchase gets the same refusal
and moves nothing (the bank answers the same deposit or capture again: without the
seller's record of the return it settled the sale with money given back); the
sale's own step refusing the settlement (``sale.receive``) is the same path
(``test_a_settlement_the_sale_refuses_is_given_back``). Member found beyond it: the
give-back ran outside the shielded step, so the buyer's channel closing meanwhile
(revoked, a write deadline) cancelled it at its first wait and the deposited coins
stayed with the seller
(``test_money_settled_is_given_back_when_the_buyers_channel_closes_meanwhile``).
Also: the refund's answer lost (a seller killed between refund and record) is
finished under the same key, and the buyer's retry gets the voucher
(``test_a_give_back_whose_answer_is_lost_is_finished_under_the_same_key``).
"""

from __future__ import annotations

import secrets
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import trio
from test_wallet import OUTSTANDING, World, eur, lose, market, world

from semper.agents.components import _ledger
from semper.agents.components._purchase import PurchaseFailed, Shopper
from semper.agents.roles.seller import Sales
from semper.services.certificates import identity_of
from semper.services.commerce import BadDelivery, Order, PaymentConfirmed, Sale
from semper.services.payment import AcceptRequest, BadRequest, PaymentRequest
from semper.services.payment._wire import BANK_REFUND
from semper.services.statements import Statement, canonical_decode
from semper.transport import RemoteError

__all__ = ["market"]  # test_wallet's fixture: one market for this module

HELD = _ledger.system_account("card-held")
PRICE = 480  # map-002


async def books(w: World) -> dict[str, int]:
    """Balances at the bank (the books checked), and the buyer's coins."""
    def read(c: Any) -> dict[str, int]:
        _ledger.check_books(c)
        return {holder: _ledger.balances(c, holder).get("EUR", 0)
                for holder in ("buyer", "seller", OUTSTANDING, HELD)}

    return {**await w.bank.database.read(read), "coins": await w.held()}


def fail_once(monkeypatch: pytest.MonkeyPatch, method: str, error: Exception) -> list[int]:
    """``Sales.<method>`` (or ``Sale.receive`` for ``"receive"``) raises ``error`` on
    its first call after the payment module's accept returned; counts the calls."""
    owner: Any = Sale if method == "receive" else Sales
    real = getattr(owner, method)
    calls = [0]

    def failing(self: Any, *args: Any, **kwargs: Any) -> Any:
        if method == "receive" and not isinstance(args[0], PaymentConfirmed):
            return real(self, *args, **kwargs)
        calls[0] += 1
        if calls[0] == 1:
            raise error
        return real(self, *args, **kwargs)

    monkeypatch.setattr(owner, method, failing)
    return calls


async def buy_refused(w: World, module: str, key: str) -> RemoteError:
    with pytest.raises(RemoteError) as refused:
        await Shopper(w.buyer).buy("seller", "map-002", module, key)
    return refused.value


async def spends_again(w: World, key: str) -> RemoteError:
    """The ecash payment of purchase ``key`` handed over again as it was (the wallet
    gives the same spends for the same key)."""
    (wire,) = await w.buyer.database.read(lambda c: c.execute(
        "SELECT spend_wire FROM ecash_coins WHERE spend = ? LIMIT 1", (key,)).fetchone())
    reference = canonical_decode(wire)["reference"]
    spends = await w.wallet.spend(PaymentRequest(payee="seller", amount=eur(PRICE),
                                                 reference=reference, idempotency_key=key))
    with pytest.raises(RemoteError) as refused:
        await w.buyer.request("seller", "payment", "accept", {
            "module": "ecash", "reference": reference, "proof": {"spends": spends}})
    return refused.value


async def seller_returns(w: World) -> list[Any]:
    return await w.seller.database.read(lambda c: c.execute(
        "SELECT code, state FROM commerce_returns ORDER BY updated_ms").fetchall())


@pytest.mark.parametrize("module", ["cheque", "ecash", "card"])
async def test_money_settled_then_refused_is_given_back(
        market: Path, monkeypatch: pytest.MonkeyPatch, module: str) -> None:
    async with world(market) as w:
        await w.drain()
        if module == "ecash":
            await w.wallet.withdraw(eur(2 * PRICE), f"w-{secrets.token_hex(4)}")
        before = await books(w)
        calls = fail_once(monkeypatch, "_fulfil",
                          BadDelivery("the delivery failed (the test)",
                                      detail={"field": "goods"}))
        key = f"{module}-giveback-{secrets.token_hex(4)}"
        refusal = await buy_refused(w, module, key)
        assert calls[0] == 1
        assert refusal.code == "commerce.bad_delivery"
        assert isinstance(refusal.detail.get("returned"), dict)
        assert refusal.detail["returned"]["amount"] == eur(PRICE).to_wire()
        assert await books(w) == before  # the money back where it was, coins included
        assert [r[1] for r in await seller_returns(w)][-1] == "returned"
        # Handed over again (the buyer retries the purchase): the same refusal, and
        # the deposit or capture the bank answers again does not settle the sale.
        if module == "ecash":  # the coins back, the purchase is over: the spends by hand
            with pytest.raises(PurchaseFailed, match="the payment was returned to us"):
                await Shopper(w.buyer).buy("seller", "map-002", module, key)
            again = await spends_again(w, key)
        else:  # a card or cheque refund is not tied to our payment: the purchase retries
            again = await buy_refused(w, module, key)
        assert again.code == "commerce.bad_delivery"
        assert again.detail.get("returned") == refusal.detail["returned"]
        assert await books(w) == before
        # The purchase is over: a new one for the same item pays and is delivered.
        monkeypatch.undo()
        done = await Shopper(w.buyer).buy("seller", "map-002", module,
                                          f"{module}-after-{secrets.token_hex(4)}")
        assert done.state == "done"
        after = await books(w)
        assert after["seller"] == before["seller"] + PRICE


async def test_a_settlement_the_sale_refuses_is_given_back(
        market: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with world(market) as w:
        before = await books(w)
        fail_once(monkeypatch, "receive",
                  BadRequest("the payment is for another amount (the test)",
                             detail={"type": "payment", "field": "amount"}))
        refusal = await buy_refused(w, "card", f"card-receive-{secrets.token_hex(4)}")
        assert refusal.code == "payment.bad_request"
        assert isinstance(refusal.detail.get("returned"), dict)
        assert await books(w) == before


async def test_money_settled_is_given_back_when_the_buyers_channel_closes_meanwhile(
        market: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The sale's step is shielded once the module may move money, but the give-back
    after its refusal was not: the buyer's channel closing meanwhile (revoked, a write
    deadline) cancelled ``payment.accept``'s handler at the give-back's first wait, and
    the deposited coins stayed with the seller. The handler is called here inside a
    scope that ``_fulfil`` cancels as it fails."""
    async with world(market) as w:
        await w.drain()
        await w.wallet.withdraw(eur(PRICE), f"w-{secrets.token_hex(4)}")
        before = await books(w)
        key = f"ecash-cancelled-{secrets.token_hex(4)}"
        offers = (await w.buyer.request("seller", "commerce", "catalogue", {}))["offers"]
        offer = next(o for o in map(Statement.from_wire, offers) if o.body["sku"] == "map-002")
        order = Order.for_offer(offer, buyer="buyer", payment_module="ecash",
                                idempotency_key=key)
        signed = w.buyer.evidence.sign(order.TYPE, order.to_body())
        reference = (await w.buyer.request("seller", "commerce", "order",
                                           {"order": signed.to_wire()}))["order"]
        spends = await w.wallet.spend(PaymentRequest(payee="seller", amount=eur(PRICE),
                                                     reference=reference, idempotency_key=key))
        peer = identity_of(w.buyer.credentials.identity.certificate)
        with trio.CancelScope() as handler:
            real = Sales._fulfil

            def fulfil(self: Sales, *args: Any) -> Any:
                handler.cancel()  # the buyer's channel closes now
                raise BadDelivery("the delivery failed (the test)", detail={"field": "goods"})

            monkeypatch.setattr(Sales, "_fulfil", fulfil)
            with pytest.raises(BadDelivery) as refused:
                await w.seller.component(Sales).accept(
                    SimpleNamespace(peer=peer),
                    AcceptRequest(module="ecash", reference=reference,
                                  proof={"spends": spends}))
            monkeypatch.setattr(Sales, "_fulfil", real)
        assert isinstance(refused.value.detail.get("returned"), dict)
        after = await books(w)
        assert after["seller"] == before["seller"]  # given back: a voucher for the buyer
        assert after[OUTSTANDING] == before[OUTSTANDING]
        assert [r[1] for r in await seller_returns(w)][-1] == "returned"


async def test_a_give_back_whose_answer_is_lost_is_finished_under_the_same_key(
        market: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The bank applied the give-back's refund but its answer was lost (as a seller
    killed between the refund and its record): the refusal says nothing returned, the
    seller's retry refunds under the same key (nothing more moves), and the buyer's
    retry of the purchase gets the refusal with the voucher, which its wallet redeems."""
    async with world(market) as w:
        await w.drain()
        await w.wallet.withdraw(eur(PRICE), f"w-{secrets.token_hex(4)}")
        before = await books(w)
        fail_once(monkeypatch, "_fulfil",
                  BadDelivery("the delivery failed (the test)", detail={"field": "goods"}))
        lose(monkeypatch, BANK_REFUND)
        key = f"ecash-lost-{secrets.token_hex(4)}"
        refusal = await buy_refused(w, "ecash", key)
        assert refusal.code == "commerce.bad_delivery" and "returned" not in refusal.detail
        assert [r[1] for r in await seller_returns(w)][-1] == "returning"
        given = await books(w)
        assert given["seller"] == before["seller"]  # applied at the bank all the same
        assert await w.seller.component(Sales).retry_returns() == 0
        assert await books(w) == given  # the same key: refunded once
        assert [r[1] for r in await seller_returns(w)][-1] == "returned"
        again = await buy_refused(w, "ecash", key)  # the same spends: the voucher now
        assert again.detail["returned"]["amount"] == eur(PRICE).to_wire()
        with pytest.raises(PurchaseFailed, match="the payment was returned to us"):
            await Shopper(w.buyer).buy("seller", "map-002", "ecash", key)
        assert await books(w) == before  # the voucher redeemed: the coins are back
