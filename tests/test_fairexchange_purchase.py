"""Fair purchase, sans-IO: goods against payment with the key escrowed; a seller silent
once paid cannot keep the goods (the notary releases them), a bad escrow gives the
buyer a refund finding, and the notary refuses a recovery without this order's
payment."""

from __future__ import annotations

import hashlib
import os
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_fairexchange_mail import NOW_MS, World, receiver_signs

from semper.services.commerce import Offer, Order, Pay
from semper.services.commerce._bodies import OFFER_TYPE, ORDER_TYPE
from semper.services.fairexchange._errors import (
    BadKey,
    BadPayment,
    MixedEvidence,
    NotParty,
    UnexpectedStep,
    WrongExchange,
)
from semper.services.fairexchange._escrow import digest, seal_key
from semper.services.fairexchange._fairpurchase import (
    DELIVERY_TYPE,
    AskGoods,
    AskKey,
    AskRecoverGoods,
    DeliverGoods,
    FairBuyer,
    FairDelivery,
    FairSeller,
    FairState,
    GoodsArrived,
    Paid,
    RecoverGoodsWire,
    ReleaseKey,
    prepare_goods,
    purchase_outcome,
    recover_goods,
)
from semper.services.fairexchange._mail import (
    DeadlinePassed,
    KeyGiven,
    KeyRevealed,
    MailReceiver,
    MailSender,
    NotaryAnswered,
    ReceiptReceived,
)
from semper.services.money import Amount
from semper.services.statements import Statement
from semper.services.statements._errors import WrongSigner

GOODS = b"a PDF of the goods, as offered"
PRICE = Amount("EUR", 4_250)
WAIT = 30_000
PAYMENT_TYPE = "payment.transfer_confirmation"


class Shop:
    """A seller's offer, a buyer's order and a bank's payment in ``world``."""

    def __init__(self, world: World, *, goods: bytes = GOODS, key_seed: bytes = b"k") -> None:
        self.world = world
        offer = Offer(seller="shop", sku="book-1", title="A book", price=PRICE, terms="",
                      content_digest=hashlib.sha256(GOODS).digest(), valid_until=NOW_MS + 3_600_000)
        self.offer = world.sign("shop")(OFFER_TYPE, offer.to_body(), NOW_MS)
        order = Order.for_offer(self.offer, buyer="bob", payment_module="transfer",
                                idempotency_key="bob-" + key_seed.hex())
        self.order = world.sign("bob")(ORDER_TYPE, order.to_body(), NOW_MS)
        self.key = hashlib.sha256(b"goods key" + key_seed).digest()
        body, self.ciphertext = prepare_goods(goods, order=self.order, notary="notary",
                                              escrow_key=world.escrow_key.public_key(),
                                              key=self.key, nonce=bytes(12))
        self.delivery_body = body
        self.delivery = world.sign("shop")(DELIVERY_TYPE, body.to_body(), NOW_MS)

    def bad_escrow(self) -> None:
        """The seller escrows another key than the goods' (well formed, this exchange's)."""
        escrow = seal_key(os.urandom(32), escrow_key=self.world.escrow_key.public_key(),
                          label=self.delivery_body.label(),
                          ciphertext_digest=digest(self.ciphertext))
        body = FairDelivery(**{**self.delivery_body.to_wire(), "escrow": escrow})
        self.delivery = self.world.sign("shop")(DELIVERY_TYPE, body.to_body(), NOW_MS)

    def pay(self, *, payee: str = "shop", amount: Amount = PRICE,
            order: bytes | None = None) -> Statement:
        body = {"order": order or self.order.digest, "payee": payee, "amount": amount.to_wire()}
        return self.world.sign("bank")(PAYMENT_TYPE, body, NOW_MS)

    def verify_payment(self, payment: Statement, *, order: bytes, seller: str,
                       amount: Amount) -> None:
        """The test's payment module: a bank-signed confirmation of this order."""
        self.world.verify(payment, expected_type=PAYMENT_TYPE, expected_signer="bank")
        if payment.body != {"order": order, "payee": seller, "amount": amount.to_wire()}:
            raise WrongExchange("not this order's payment", detail={"field": "payment"})

    def recover(self, book: Any, payment: Statement, *, requester: str = "bob") -> Any:
        wire = RecoverGoodsWire(order=self.order, delivery=self.delivery,
                                ciphertext=self.ciphertext, payment=payment)
        return recover_goods(book, wire, requester=requester,
                             private_keys=[self.world.escrow_key], verify=self.world.verify,
                             verify_payment=self.verify_payment, now_ms=NOW_MS + WAIT + 1)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    made = World.make(tmp_path_factory.mktemp("fair"))
    made.agents["bank"] = made.market.agent("bank", "bank")
    return made


def delivered(shop: Shop) -> tuple[FairSeller, FairBuyer, Statement]:
    """Seller and buyer up to the payment, which the buyer makes."""
    seller = FairSeller(delivery=shop.delivery, ciphertext=shop.ciphertext, key=shop.key)
    buyer = FairBuyer(order=shop.order, notary="notary", wait_ms=WAIT)
    assert buyer.pending() == [AskGoods(order=shop.order.digest)]
    [deliver] = seller.pending()
    assert deliver == DeliverGoods(delivery=shop.delivery, ciphertext=shop.ciphertext)
    [pay] = buyer.receive(GoodsArrived(deliver.delivery, deliver.ciphertext), now_ms=NOW_MS)
    assert pay == Pay(module="transfer", payee="shop", amount=PRICE, reference=shop.order.digest,
                      idempotency_key=Order.from_statement(shop.order).idempotency_key)
    payment = shop.pay()
    [ask] = buyer.receive(Paid(payment), now_ms=NOW_MS)
    assert ask == AskKey(order=shop.order.digest, payment=payment)
    assert buyer.timer() == NOW_MS + WAIT
    return seller, buyer, payment


def test_faultless_run(world: World) -> None:
    shop = Shop(world)
    seller, buyer, payment = delivered(shop)
    [release] = seller.receive(Paid(payment), now_ms=NOW_MS)
    assert release == ReleaseKey(order=shop.order.digest, key=shop.key)
    buyer.receive(KeyRevealed(release.key), now_ms=NOW_MS)
    seller.receive(KeyGiven(), now_ms=NOW_MS)
    assert buyer.state is FairState.DONE and buyer.goods == GOODS
    assert seller.state is FairState.RELEASED and seller.payment == payment


def test_a_seller_silent_once_paid_cannot_keep_the_goods(world: World) -> None:
    shop = Shop(world, key_seed=b"silent")
    seller, buyer, payment = delivered(shop)
    seller.receive(Paid(payment), now_ms=NOW_MS)  # ... and the seller goes silent
    [ask] = buyer.receive(DeadlinePassed(), now_ms=NOW_MS + WAIT)
    assert isinstance(ask, AskRecoverGoods) and ask.payment == payment
    book = world.book()
    decision = shop.recover(book, payment)
    assert decision.new and decision.decision == "release"
    assert decision.body.request == payment and decision.body.subject == shop.delivery.digest
    buyer.receive(NotaryAnswered(decision.statement), now_ms=NOW_MS + WAIT)
    assert buyer.state is FairState.DONE and buyer.goods == GOODS
    # a key arriving late from the seller changes nothing
    buyer.receive(KeyRevealed(shop.key), now_ms=NOW_MS + WAIT)
    assert buyer.goods == GOODS


def test_a_bad_key_from_the_seller_sends_the_buyer_to_the_notary(world: World) -> None:
    shop = Shop(world, key_seed=b"badkey")
    _, buyer, payment = delivered(shop)
    with pytest.raises(BadKey):
        buyer.receive(KeyRevealed(os.urandom(32)), now_ms=NOW_MS)
    assert buyer.state is FairState.PAYING
    buyer.receive(DeadlinePassed(), now_ms=NOW_MS + WAIT)
    buyer.receive(NotaryAnswered(shop.recover(world.book(), payment).statement),
                  now_ms=NOW_MS + WAIT)
    assert buyer.goods == GOODS


def test_a_bad_escrow_entitles_the_buyer_to_a_refund(world: World) -> None:
    shop = Shop(world, key_seed=b"badescrow")
    shop.bad_escrow()
    _, buyer, payment = delivered(shop)
    buyer.receive(DeadlinePassed(), now_ms=NOW_MS + WAIT)
    decision = shop.recover(world.book(), payment)
    assert decision.decision == "refund" and decision.body.payload == b"ciphertext"
    buyer.receive(NotaryAnswered(decision.statement), now_ms=NOW_MS + WAIT)
    assert buyer.refund_due and buyer.goods is None and buyer.decision == decision.statement


def test_goods_other_than_the_offer_are_refused_before_paying(world: World) -> None:
    shop = Shop(world, goods=b"other goods", key_seed=b"other")
    buyer = FairBuyer(order=shop.order, notary="notary", wait_ms=WAIT)
    with pytest.raises(WrongExchange) as caught:  # the delivery names another digest
        buyer.receive(GoodsArrived(shop.delivery, shop.ciphertext), now_ms=NOW_MS)
    assert caught.value.detail == {"field": "content"}
    assert buyer.state is FairState.ORDERED and buyer.pending()[0] == AskGoods(
        order=shop.order.digest)


def test_the_notary_refuses_a_recovery_without_this_orders_payment(world: World) -> None:
    shop = Shop(world, key_seed=b"nopay")
    book = world.book()
    for payment in (shop.pay(payee="mallory"),           # paid to someone else
                    shop.pay(amount=Amount("EUR", 1)),   # too little
                    shop.pay(order=bytes(32))):          # for another order
        with pytest.raises(BadPayment) as caught:
            shop.recover(book, payment)
        assert caught.value.detail == {"reason": "fairexchange.wrong_exchange"}
    forged = world.sign("shop")(PAYMENT_TYPE, shop.pay().body, NOW_MS)  # not the bank's
    with pytest.raises(BadPayment) as caught:
        shop.recover(book, forged)
    assert caught.value.detail == {"reason": WrongSigner.code}
    with pytest.raises(NotParty):
        shop.recover(book, shop.pay(), requester="alice")
    assert book.get(shop.order.digest, initiator="bob") is None


def test_records_restart_and_unexpected_steps(world: World) -> None:
    shop = Shop(world, key_seed=b"records")
    seller, buyer, payment = delivered(shop)
    buyer2 = FairBuyer.from_record(buyer.to_record())
    assert buyer2.pending() == buyer.pending() and buyer2.timer() == buyer.timer()
    seller.receive(Paid(payment), now_ms=NOW_MS)
    seller2 = FairSeller.from_record(seller.to_record())
    assert seller2.pending() == [ReleaseKey(order=shop.order.digest, key=shop.key)]
    with pytest.raises(UnexpectedStep):
        seller2.receive(DeadlinePassed(), now_ms=NOW_MS)
    assert seller2.state is FairState.ERROR
    with pytest.raises(UnexpectedStep):
        seller2.receive(Paid(payment), now_ms=NOW_MS)


def test_a_buyer_restarted_before_saving_its_payment_takes_the_released_key(
        world: World) -> None:
    """Found by the explorer: the buyer paid and crashed before it saved the
    confirmation; the seller, told by the payment module, released the key. The
    restarted buyer (still ``delivered``) takes it instead of entering ERROR."""
    shop = Shop(world, key_seed=b"restarted")
    buyer = FairBuyer(order=shop.order, notary="notary", wait_ms=WAIT)
    buyer.receive(GoodsArrived(shop.delivery, shop.ciphertext), now_ms=NOW_MS)
    restarted = FairBuyer.from_record(buyer.to_record())
    restarted.receive(KeyRevealed(shop.key), now_ms=NOW_MS)
    assert restarted.state is FairState.DONE and restarted.goods == GOODS


@pytest.mark.parametrize("late", ["delivery", "payment"])
def test_a_repeated_delivery_or_payment_after_the_end_changes_nothing(
        world: World, late: str) -> None:
    """The same kind: a message repeated after a restart (a second fair.fetch's
    answer, the payment module's notice) reaches a buyer that is done."""
    shop = Shop(world, key_seed=b"repeated-" + late.encode())
    _, buyer, payment = delivered(shop)
    buyer.receive(KeyRevealed(shop.key), now_ms=NOW_MS)
    event = GoodsArrived(shop.delivery, shop.ciphertext) if late == "delivery" \
        else Paid(payment)
    assert buyer.receive(event, now_ms=NOW_MS) == []
    assert buyer.state is FairState.DONE and buyer.goods == GOODS


def test_what_proves_what(world: World) -> None:
    """purchase_outcome applies protocol.md 10.5's rule to each purchase's evidence."""
    def outcome(*evidence: Statement) -> Any:
        return purchase_outcome(evidence, verify=world.verify)

    shop = Shop(world, key_seed=b"outcome")
    assert outcome().state == "none"
    assert outcome(shop.order).state == "ordered"
    assert outcome(shop.order, shop.delivery).state == "escrowed"
    payment = shop.pay()
    released = shop.recover(world.book(), payment).statement
    found = outcome(shop.order, shop.delivery, released)
    assert (found.state, found.resolved_by, found.payment) == ("delivered", "notary", payment)
    bad = Shop(world, key_seed=b"outcome-bad")
    bad.bad_escrow()
    refund = bad.recover(world.book(), bad.pay()).statement
    found = outcome(bad.order, bad.delivery, refund)
    assert (found.state, found.reason) == ("refund_due", "ciphertext")
    with pytest.raises(MixedEvidence):  # two orders
        outcome(shop.order, bad.order)
    with pytest.raises(MixedEvidence):  # a decision without the delivery it is about
        outcome(shop.order, released)
    with pytest.raises(WrongExchange):  # another order's delivery
        outcome(shop.order, bad.delivery)


def _records(world: World) -> list[tuple[type, dict[str, Any]]]:
    """Records of all four machines at several steps."""
    offer, ciphertext, key = world.offer(exchange=b"\x31" * 32)
    sender = MailSender(offer=offer, ciphertext=ciphertext, key=key)
    receiver = MailReceiver(receiver="bob")
    out: list[tuple[type, dict[str, Any]]] = [(MailSender, sender.to_record()),
                                              (MailReceiver, receiver.to_record())]
    receipt = receiver_signs(world, receiver, offer, ciphertext)
    sender.receive(ReceiptReceived(receipt), now_ms=NOW_MS)
    out += [(MailSender, sender.to_record()), (MailReceiver, receiver.to_record())]
    shop = Shop(world, key_seed=b"records-fuzz")
    seller, buyer, payment = delivered(shop)
    seller.receive(Paid(payment), now_ms=NOW_MS)
    out += [(FairSeller, seller.to_record()), (FairBuyer, buyer.to_record())]
    return out


_STATES = sorted({s.value for s in FairState} | {"idle", "offered", "receipted", "revealed",
                                                 "closing", "received", "signed",
                                                 "recovering", "read", "declined",
                                                 "resolved", "error", "nonsense"})


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_a_damaged_record_is_refused_with_value_error(world: World, data: st.DataObject) -> None:
    """A record with a field dropped, another machine's field, or any state: either
    a machine whose pending() and timer() work, or ValueError; never anything else."""
    records = _records_cache.setdefault("r", _records(world))
    cls, record = data.draw(st.sampled_from(records))
    damaged = dict(record)
    donor = data.draw(st.sampled_from(records))[1]
    for name in data.draw(st.lists(st.sampled_from(sorted(damaged)), max_size=3)):
        damaged[name] = data.draw(st.sampled_from([None, donor.get(name), "x", 7,
                                                   data.draw(st.sampled_from(_STATES))]))
    try:
        machine = cls.from_record(damaged)
    except ValueError:
        return
    machine.pending()
    machine.timer()


_records_cache: dict[str, Any] = {}
