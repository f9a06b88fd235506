"""Issue 7, kinds 8, 9 and 2 (roles), over real channels between running agents.

Kind 8: a payment that reaches a payee is either used or returned. Every transfer
the bank confirms to the seller citing one of its orders either settles that sale or
is refunded to its payer, and the buyer's records describe what was paid; the bank
and the buyer refuse before money moves where they can.

Kind 9: signed terms are honoured: an offer's refund window (``refund_days``) is in
its signed body, a refund outside it is refused, a refund may be partial, and goods
are not delivered again after a refund.

Kind 2 (second half): an agent id inside a statement that the receiver would dial
(a cheque's bank, a settlement's bank) is checked before any connection is opened:
it must be the bank the receiver deals with (its ``[payment] bank``), and a bank.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio
from test_commerce_wire import GUIDE, Market, eur, running_market

from semper.agents import Agent
from semper.agents.components._payments import AgentPaymentContext, payment_manager
from semper.agents.components._purchase import Shopper
from semper.agents.roles.seller import Sales
from semper.services.certificates import Level
from semper.services.commerce import Order
from semper.services.payment import PaymentRequest, PaymentResult
from semper.services.payment.transfer import TRANSFER_CONFIRMATION, TransferConfirmation
from semper.services.statements import Statement, canonical_decode
from semper.transport import RemoteError

SONG = "song-003"  # EUR 0.99, signed "no refunds" (refund_days 0)
MAP = "map-002"    # EUR 4.80


@pytest.fixture
async def m(tmp_path: Path) -> AsyncIterator[Market]:
    """bank, seller, buyer, mallory, notary and a second bank (``bank2``) the seller
    does not deal with."""
    async with running_market(tmp_path / "m",
                              (("bank2", "bank", Level.VERIFIED_CONTACT),)) as market:
        yield market


# -- the invariant ------------------------------------------------------------------


async def money_reaching_the_seller_is_used_or_returned(m: Market) -> None:
    """Every transfer the bank confirmed to the seller citing one of its orders
    settled that sale or was refunded in full; every cheque it cleared settled one."""
    def bank(c: Any) -> list[tuple[Statement, int, int]]:
        rows = c.execute("SELECT answer FROM bank_requests WHERE kind = 'transfer'").fetchall()
        out = []
        for (answer,) in rows:
            statement = Statement.from_bytes(answer)
            amount, refunded = c.execute(
                "SELECT amount, refunded FROM bank_payments WHERE confirmation = ?",
                (statement.digest,)).fetchone()
            out.append((statement, amount, refunded))
        return out

    def sales(c: Any) -> dict[bytes, bytes | None]:
        return {order: None if payment is None else PaymentResult.from_wire(
                    canonical_decode(payment)).settlement.digest
                for order, payment in c.execute(
                    "SELECT order_digest, payment FROM commerce_sales")}

    settled = await m["seller"].database.read(sales)
    for confirmation, amount, refunded in await m["bank"].database.read(bank):
        body = TransferConfirmation.from_statement(confirmation)
        if body.payee != "seller" or body.reference not in settled:
            continue
        assert settled[body.reference] == confirmation.digest or refunded == amount, (
            f"a transfer of {amount} for order {body.reference.hex()[:12]} was neither "
            "used nor returned")


async def buyer_records_describe_what_was_paid(agent: Agent) -> None:
    def rows(c: Any) -> list[tuple[str, str, bytes, bytes | None]]:
        return c.execute("SELECT key, sku, machine, payment FROM commerce_purchases").fetchall()

    for key, sku, machine, payment in await agent.database.read(rows):
        state = canonical_decode(machine)
        if state["order"] is None:
            continue
        order = Statement.from_wire(state["order"])
        assert Order.from_statement(order).offer_terms().sku == sku, key
        if payment is not None:
            assert PaymentResult.from_wire(canonical_decode(payment)).reference == order.digest


async def returned_to(m: Market, refusal: RemoteError, units: int) -> None:
    """The refusal says the money came back, and the seller recorded why."""
    returned = refusal.detail["returned"]
    assert returned["amount"] == eur(units).to_wire()
    rows = await m["seller"].database.read(lambda c: c.execute(
        "SELECT code, state FROM commerce_returns WHERE refund = ?",
        (returned["refund"],)).fetchall())
    assert rows == [(refusal.code, "returned")]


# -- kind 8: instances ----------------------------------------------------------------


async def test_a_transfer_for_a_cheque_order_is_returned(m: Market) -> None:
    """Instance 1: the order names cheque; the buyer pays by transfer anyway."""
    order = await m.place(await m.offer(), key="by-cheque", module="cheque")
    before = await m.balances()
    proof = await m["buyer"].request("bank", "bank", "transfer", m.transfer_order(
        "buyer", "seller", 1250, key="by-transfer", reference=order.digest))
    refusal = await m.refused("buyer", "seller", "payment", "accept", {
        "module": "transfer", "reference": order.digest, "proof": proof})
    assert refusal.code == "commerce.unsupported_payment"
    await returned_to(m, refusal, 1250)
    assert await m.balances() == before
    # Handing the same proof again returns nothing twice, and says the same.
    again = await m.refused("buyer", "seller", "payment", "accept", {
        "module": "transfer", "reference": order.digest, "proof": proof})
    assert (again.code, again.detail) == (refusal.code, refusal.detail)
    assert await m.balances() == before
    await money_reaching_the_seller_is_used_or_returned(m)
    # The order can still be paid as it says: by cheque (the bank lets a returned
    # payment's reference be paid again).
    cheque = m.cheque("buyer", "seller", 1250, serial="c-1", reference=order.digest)
    result = await m["buyer"].request("seller", "payment", "accept", {
        "module": "cheque", "reference": order.digest, "proof": cheque})
    assert result["module"] == "cheque"
    assert (await m.balances())["buyer"] == before["buyer"] - 1250
    await money_reaching_the_seller_is_used_or_returned(m)


async def test_a_paid_order_paid_again_under_a_new_key_is_refused_by_the_bank(
        m: Market) -> None:
    """Instance 2: through the library API, a second transfer under a new key."""
    bought = await Shopper(m["buyer"]).buy("seller", GUIDE, "transfer", "once")
    before = await m.balances()
    ctx = AgentPaymentContext(m["buyer"], bought.order.hex(), "seller")
    request = PaymentRequest(payee="seller", amount=eur(1250), reference=bought.order,
                             idempotency_key="twice")
    with pytest.raises(RemoteError) as info:
        await payment_manager(m["buyer"]).pay(ctx, request, only="transfer")
    assert info.value.code == "payment.already_paid"
    assert await m.balances() == before
    # By cheque, the seller refuses before depositing: nothing moves either.
    with pytest.raises(RemoteError) as info:
        await payment_manager(m["buyer"]).pay(ctx, request, only="cheque")
    assert info.value.code == "commerce.already_paid"
    assert await m.balances() == before
    await money_reaching_the_seller_is_used_or_returned(m)
    await buyer_records_describe_what_was_paid(m["buyer"])


async def race(m: Market, first: str, second: str) -> dict[str, Any]:
    """Two runs with one key (two agents on the buyer's database, as two ``semper buy``
    processes), the bad interleaving forced: run "b" (for ``second``) passes its key
    check, then waits for run "a" (for ``first``) to finish before it goes on.
    Returns each run's outcome or exception, by "a" and "b"."""
    config = m["buyer"].config
    results: dict[str, Any] = {}
    b_checked, a_over = trio.Event(), trio.Event()

    class Racing(Shopper):
        run = ""

        async def catalogue(self, seller: str) -> Any:
            if self.run == "b":
                b_checked.set()
                await a_over.wait()
            else:
                await b_checked.wait()
            return await super().catalogue(seller)

    async def buy(run: str, sku: str) -> None:
        agent = Agent(config)
        async with agent.session():
            shopper = Racing(agent)
            shopper.run = run
            try:
                results[run] = await shopper.buy("seller", sku, "transfer", "shared")
            except Exception as exc:
                results[run] = exc
            finally:
                (a_over if run == "a" else b_checked).set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(buy, "a", first)
        nursery.start_soon(buy, "b", second)
    return results


async def test_one_key_for_two_items_at_once(m: Market) -> None:
    """Instance 3: two ``semper buy`` with one idempotency key for different items, at
    the same moment: the second overwrote the paid purchase's record."""
    before = await m.balances()
    results = await race(m, GUIDE, MAP)
    done = [r for r in results.values() if not isinstance(r, Exception)]
    refused = [r for r in results.values() if isinstance(r, Exception)]
    assert len(done) == 1 and len(refused) == 1, results
    outcome, error = done[0], refused[0]
    assert getattr(error, "code", None) == "payment.idempotency_conflict"
    assert outcome.state == "done"
    sku = outcome.sku
    price = {GUIDE: 1250, MAP: 480}[sku]
    assert (await m.balances())["buyer"] == before["buyer"] - price
    await buyer_records_describe_what_was_paid(m["buyer"])
    again = await Shopper(m["buyer"]).buy("seller", sku, "transfer", "shared")
    assert again.replayed and again.receipt == outcome.receipt and again.sku == sku
    assert (await m.balances())["buyer"] == before["buyer"] - price


async def test_one_key_for_one_item_twice_at_once(m: Market) -> None:
    """Another member: the same purchase run twice at once. One run carries it on, the
    other stops without writing over it; the item is paid once."""
    before = await m.balances()
    results = await race(m, GUIDE, GUIDE)
    assert results["a"].state == "done"
    assert getattr(results["b"], "code", None) == "commerce.purchase_busy"
    assert (await m.balances())["buyer"] == before["buyer"] - 1250
    await buyer_records_describe_what_was_paid(m["buyer"])
    again = await Shopper(m["buyer"]).buy("seller", GUIDE, "transfer", "shared")
    assert again.replayed and again.receipt == results["a"].receipt


# -- kind 8: more members ---------------------------------------------------------------


async def test_a_short_transfer_citing_an_order_is_returned(m: Market) -> None:
    order = await m.place(await m.offer(), key="short")
    before = await m.balances()
    proof = await m["buyer"].request("bank", "bank", "transfer", m.transfer_order(
        "buyer", "seller", 1249, key="short-1", reference=order.digest))
    refusal = await m.refused("buyer", "seller", "payment", "accept", {
        "module": "transfer", "reference": order.digest, "proof": proof})
    assert (refusal.code, refusal.detail["field"]) == ("payment.bad_confirmation", "amount")
    await returned_to(m, refusal, 1249)
    assert await m.balances() == before
    await money_reaching_the_seller_is_used_or_returned(m)


async def test_a_refunded_order_paid_again_is_returned(m: Market) -> None:
    shopper = Shopper(m["buyer"])
    bought = await shopper.buy("seller", GUIDE, "transfer", "again")
    await shopper.refund("again")
    before = await m.balances()
    # The first payment was refunded in full, so the bank lets the reference be paid
    # again; the seller, whose sale is over, gives it back.
    proof = await m["buyer"].request("bank", "bank", "transfer", m.transfer_order(
        "buyer", "seller", 1250, key="again-2", reference=bought.order))
    refusal = await m.refused("buyer", "seller", "payment", "accept", {
        "module": "transfer", "reference": bought.order, "proof": proof})
    assert (refusal.code, refusal.detail["state"]) == ("commerce.already_paid", "refunded")
    await returned_to(m, refusal, 1250)
    assert await m.balances() == before
    await money_reaching_the_seller_is_used_or_returned(m)


async def test_the_bank_refuses_a_second_cheque_for_a_paid_reference(m: Market) -> None:
    first = m.cheque("buyer", "seller", 100, serial="s-1", reference=b"invoice-7")
    await m["seller"].request("bank", "bank", "deposit_cheque", first)
    before = await m.state()
    second = m.cheque("buyer", "seller", 100, serial="s-2", reference=b"invoice-7")
    refusal = await m.refused("seller", "bank", "bank", "deposit_cheque", second)
    assert refusal.code == "payment.already_paid"
    await m.unchanged(before)
    # A payment for another reference, or to another payee, is not affected.
    other = m.cheque("buyer", "seller", 100, serial="s-3", reference=b"invoice-8")
    await m["seller"].request("bank", "bank", "deposit_cheque", other)


# -- kind 9 ---------------------------------------------------------------------------


async def test_a_no_refunds_offer_is_not_refunded_and_goods_stay(m: Market) -> None:
    """Instance: an offer signed "no refunds" was refunded in full, and its goods could
    still be fetched after."""
    song = await m.offer(SONG)
    assert song.body["refund_days"] == 0
    assert (await m.offer(GUIDE)).body["refund_days"] == 14
    shopper = Shopper(m["buyer"])
    bought = await shopper.buy("seller", SONG, "transfer", "song")
    before = await m.state()
    refusal = await m.refused("buyer", "seller", "commerce", "refund",
                              {"order": bought.order, "reason": "changed my mind"})
    assert refusal.code == "commerce.refund_not_allowed"
    assert refusal.detail["refund_days"] == 0
    await m.unchanged(before)
    fetched = await m["buyer"].request("seller", "commerce", "fetch", {"order": bought.order})
    assert fetched["goods"] == bought.goods


async def test_a_partial_refund_then_no_goods(m: Market) -> None:
    shopper = Shopper(m["buyer"])
    bought = await shopper.buy("seller", GUIDE, "transfer", "part")
    before = await m.balances()
    refunded = await shopper.refund("part", "scratched", amount=eur(500))
    assert refunded.state == "refunded"
    assert refunded.refund is not None and refunded.refund["refund"]["amount"] == \
        eur(500).to_wire()
    after = await m.balances()
    assert (after["buyer"], after["seller"]) == (before["buyer"] + 500, before["seller"] - 500)
    refusal = await m.refused("buyer", "seller", "commerce", "fetch", {"order": bought.order})
    assert (refusal.code, refusal.detail["state"]) == ("commerce.refunded", "refunded")
    # More than was paid is refused by the seller before anything is signed.
    other = await shopper.buy("seller", MAP, "transfer", "part-2")
    refusal = await m.refused("buyer", "seller", "commerce", "refund",
                              {"order": other.order, "amount": eur(481).to_wire()})
    assert refusal.code == "commerce.wrong_amount"


# -- kind 2: the bank named in a statement ------------------------------------------------


async def test_a_cheque_naming_the_buyer_as_its_bank_is_refused_without_dialing(
        m: Market) -> None:
    """Instance: a buyer names itself as the bank in a cheque; the seller must not dial
    it to deposit."""
    order = await m.place(await m.offer(), key="own-bank", module="cheque")
    body = m.cheque("buyer", "seller", 1250, serial="own", reference=order.digest)
    cheque = Statement.from_wire(body["cheque"])
    forged = m.sign("buyer", cheque.type, {**cheque.body, "bank": "buyer"})
    before = await m.state()
    refusal = await m.refused("buyer", "seller", "payment", "accept", {
        "module": "cheque", "reference": order.digest,
        "proof": {**body, "cheque": forged.to_wire()}})
    assert (refusal.code, refusal.detail["bank"]) == ("payment.wrong_bank", "buyer")
    assert "buyer" not in m["seller"]._outbound
    assert not [c for c in m["buyer"]._inbound if c.peer.agent_id == "seller"]
    await m.unchanged(before, archived=("seller",))


async def test_a_confirmation_from_a_bank_the_seller_does_not_use_is_refused(
        m: Market) -> None:
    """Another member: a transfer's bank is likewise checked; a real bank's
    confirmation is worth nothing to a seller that holds no account there."""
    order = await m.place(await m.offer(), key="elsewhere-bank")
    body = TransferConfirmation(order=b"\x07" * 32, payer="buyer", payee="seller",
                                amount=eur(1250), reference=order.digest, entry=1)
    confirmation = m.sign("bank2", TRANSFER_CONFIRMATION, body.to_body())
    before = await m.state()
    refusal = await m.refused("buyer", "seller", "payment", "accept", {
        "module": "transfer", "reference": order.digest,
        "proof": {"confirmation": confirmation.to_wire(), "bank_certificate": m.der("bank2")}})
    assert (refusal.code, refusal.detail["bank"]) == ("payment.wrong_bank", "bank2")
    await m.unchanged(before, archived=("seller",))
    assert "bank2" not in m["seller"]._outbound


async def test_bank_ops_go_only_to_our_bank(m: Market) -> None:
    """Another member: the payment context refuses a bank op to any agent but the
    configured bank, before dialing."""
    ctx = AgentPaymentContext(m["seller"], "t", "buyer")
    for peer in ("buyer", "bank2"):
        with pytest.raises(Exception) as info:
            await ctx.request(peer, "bank", "deposit_cheque", {})
        assert getattr(info.value, "code", None) == "payment.wrong_bank"
        assert peer not in m["seller"]._outbound


def test_refund_amount_on_the_command_line_is_an_amount(tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]
                                                        ) -> None:
    from semper.agents.cli import main

    with pytest.raises(SystemExit) as info:
        main(["refund", "--config", str(tmp_path / "absent.toml"), "--idempotency-key", "k",
              "--amount", "EUR:ten"])
    assert info.value.code != 0
    err = capsys.readouterr().err
    assert err.startswith("semper: money.bad_amount:") and err.count("\n") == 1, err


def test_the_refund_window_is_the_one_signed() -> None:
    from semper.services.commerce import (
        BadBody,
        Offer,
        RefundNotAllowed,
        check_refund_window,
    )

    day = 86_400_000
    fields = dict(seller="seller", sku="a", title="t", price=eur(100), terms="",
                  content_digest=b"\0" * 32, valid_until=10)
    offer = Offer(**fields, refund_days=14)
    assert Offer.from_body(offer.to_body()) == offer
    check_refund_window(offer, paid_at_ms=5, now_ms=5 + 14 * day)  # the last instant
    with pytest.raises(RefundNotAllowed) as info:
        check_refund_window(offer, paid_at_ms=5, now_ms=5 + 14 * day + 1)
    assert info.value.detail == {"refund_days": 14, "paid_at": 5, "now_ms": 5 + 14 * day + 1}
    with pytest.raises(RefundNotAllowed):
        check_refund_window(Offer(**fields, refund_days=0), paid_at_ms=5, now_ms=5)
    # An offer signed before the term existed has no key, and reads back as it was.
    legacy = Offer(**fields)
    assert "refund_days" not in legacy.to_body()
    assert Offer.from_body(legacy.to_body()) == legacy
    check_refund_window(legacy, paid_at_ms=0, now_ms=10**12)
    for bad in (-1, 3651, True, "14"):
        with pytest.raises(BadBody) as bad_info:
            Offer.from_body({**offer.to_body(), "refund_days": bad})
        assert bad_info.value.detail["field"] == "refund_days"


async def test_a_transfer_for_an_item_withdrawn_since_the_order_is_returned(
        m: Market) -> None:
    """Another member: the seller cannot deliver what it took the money for (the item
    left its catalogue after the order), so it must not keep the money."""
    order = await m.place(await m.offer(), key="withdrawn")
    m["seller"].component(Sales).items.pop(GUIDE)
    before = await m.balances()
    proof = await m["buyer"].request("bank", "bank", "transfer", m.transfer_order(
        "buyer", "seller", 1250, key="withdrawn", reference=order.digest))
    refusal = await m.refused("buyer", "seller", "payment", "accept", {
        "module": "transfer", "reference": order.digest, "proof": proof})
    assert refusal.code == "commerce.unknown_offer"
    await returned_to(m, refusal, 1250)
    assert await m.balances() == before
    await money_reaching_the_seller_is_used_or_returned(m)


async def test_a_return_the_bank_did_not_apply_is_retried_and_never_used(
        m: Market, monkeypatch: pytest.MonkeyPatch) -> None:
    """The bank cannot be reached when the seller gives a transfer back: the seller
    keeps it due, never lets it settle the sale, and gives it back later by itself."""
    import semper.agents.roles.seller as seller_module

    order = await m.place(await m.offer(), key="later", module="cheque")
    before = await m.balances()
    real = seller_module.refund_payment
    calls: list[int] = []

    async def bank_down_once(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            raise RemoteError("transport.connect_failed", "the bank is down")
        return await real(*args, **kwargs)

    monkeypatch.setattr(seller_module, "refund_payment", bank_down_once)
    proof = await m["buyer"].request("bank", "bank", "transfer", m.transfer_order(
        "buyer", "seller", 1250, key="later", reference=order.digest))
    refusal = await m.refused("buyer", "seller", "payment", "accept", {
        "module": "transfer", "reference": order.digest, "proof": proof})
    assert refusal.code == "commerce.unsupported_payment" and "returned" not in refusal.detail
    assert (await m.balances())["seller"] == before["seller"] + 1250
    seller = m["seller"].component(Sales)
    assert await seller.retry_returns() == 0  # type: ignore[attr-defined]
    assert await m.balances() == before
    await money_reaching_the_seller_is_used_or_returned(m)
    again = await m.refused("buyer", "seller", "payment", "accept", {
        "module": "transfer", "reference": order.digest, "proof": proof})
    assert again.code == refusal.code
    await returned_to(m, again, 1250)
    assert await m.balances() == before


async def test_a_refund_confirmed_by_another_bank_is_not_taken_for_money_back(
        m: Market) -> None:
    """Another member of kind 2: the buyer relies on the bank named in a refund
    confirmation the seller hands over; one from a bank it does not deal with (a real
    bank, where it holds nothing) is refused, and the purchase is not marked refunded."""
    shopper = Shopper(m["buyer"])
    bought = await shopper.buy("seller", GUIDE, "transfer", "forged-refund")
    assert bought.payment is not None
    genuine = m["buyer"].request

    async def forged(peer: str, service: str, op: str, body: Any = None) -> Any:
        answer = await genuine(peer, service, op, body)
        if (service, op) == ("commerce", "refund"):
            refund = dict(answer["refund"])
            confirmation = Statement.from_wire(refund["confirmation"])
            refund["confirmation"] = m.sign("bank2", confirmation.type,
                                            confirmation.body).to_wire()
            refund["bank_certificate"] = m.der("bank2")
            answer = {**answer, "refund": refund}
        return answer

    m["buyer"].request = forged  # type: ignore[method-assign]
    with pytest.raises(Exception) as info:
        await shopper.refund("forged-refund")
    assert getattr(info.value, "code", None) == "payment.wrong_bank"
    m["buyer"].request = genuine  # type: ignore[method-assign]
    row = await m["buyer"].database.read(lambda c: c.execute(
        "SELECT state FROM commerce_purchases WHERE key = 'forged-refund'").fetchone())
    assert row[0] == "refund_requested"


async def test_fetch_after_the_item_was_withdrawn_is_a_refusal(m: Market) -> None:
    bought = await Shopper(m["buyer"]).buy("seller", MAP, "transfer", "gone")
    m["seller"].component(Sales).items.pop(MAP)
    refusal = await m.refused("buyer", "seller", "commerce", "fetch", {"order": bought.order})
    assert (refusal.code, refusal.detail) == ("commerce.unknown_offer", {"sku": MAP})


class _WithdrawnBeforePaying(Shopper):
    """A buyer whose seller withdraws the item between the order and the payment."""

    withdraw: Any = None

    async def _pay(self, decision: Any, purchase: Any) -> Any:
        self.withdraw()
        return await super()._pay(decision, purchase)


async def test_the_buyer_ends_a_purchase_as_returned_only_on_its_banks_word(
        m: Market, monkeypatch: pytest.MonkeyPatch) -> None:
    """The buyer's records describe what was paid: a refusal saying the money was
    returned ends the purchase only with our bank's refund confirmation in it (kept
    as evidence); a seller that says so while keeping the money leaves it open."""
    shopper = _WithdrawnBeforePaying(m["buyer"])
    shopper.withdraw = lambda: m["seller"].component(Sales).items.pop(GUIDE, None)
    item = m["seller"].component(Sales).items[GUIDE]
    with pytest.raises(RemoteError) as refused:
        await shopper.buy("seller", GUIDE, "transfer", "returned-for-real")
    assert refused.value.code == "commerce.unknown_offer"
    outcome = await shopper.outcome("returned-for-real")
    assert outcome.state == "failed"
    kept = [Statement.from_bytes(r.statement).type
            for r in await m["buyer"].archive.records(outcome.order.hex())]
    assert "payment.refund_confirmation" in kept
    await money_reaching_the_seller_is_used_or_returned(m)

    # A seller that claims a return it did not make (the money stays with it).
    m["seller"].component(Sales).items[GUIDE] = item
    before = await m.balances()

    async def keep_it(digest: bytes) -> dict[str, Any]:
        return {"refund": b"\x00" * 32, "amount": eur(1250).to_wire(),
                "confirmation": b"not a statement"}

    monkeypatch.setattr(m["seller"].component(Sales), "_return", keep_it)
    liar = _WithdrawnBeforePaying(m["buyer"])
    liar.withdraw = shopper.withdraw
    with pytest.raises(RemoteError):
        await liar.buy("seller", GUIDE, "transfer", "returned-in-words")
    after = await liar.outcome("returned-in-words")
    assert after.state != "failed"  # paid, not ended: a retry or a dispute goes on
    assert (await m.balances())["buyer"] == before["buyer"] - 1250


async def test_after_a_transfer_only_the_banks_word_of_a_return_ends_the_purchase(
        m: Market, monkeypatch: pytest.MonkeyPatch) -> None:
    """A refusal code that means "nothing moved" before paying does not once our bank
    has moved the money: the order names cheque, this buyer pays by transfer, and the
    seller cannot give it back yet (its bank call fails): the purchase stays open."""
    import semper.agents.roles.seller as seller_module

    async def bank_down(*args: Any, **kwargs: Any) -> Any:
        raise RemoteError("transport.connect_failed", "the bank is down")

    monkeypatch.setattr(seller_module, "refund_payment", bank_down)

    class PaysByTransfer(Shopper):
        async def _pay(self, decision: Any, purchase: Any) -> Any:
            ctx = AgentPaymentContext(self.agent, purchase.order.digest.hex(),
                                      decision.payee)
            request = PaymentRequest(payee=decision.payee, amount=decision.amount,
                                     reference=decision.reference,
                                     idempotency_key=decision.idempotency_key)
            return await self.payments.pay(ctx, request, only="transfer")

    shopper = PaysByTransfer(m["buyer"])
    with pytest.raises(RemoteError) as refused:
        await shopper.buy("seller", GUIDE, "cheque", "mismatch")
    assert refused.value.code == "commerce.unsupported_payment"
    assert "returned" not in refused.value.detail
    assert (await shopper.outcome("mismatch")).state != "failed"
