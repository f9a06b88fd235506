"""Purchase and Sale: every (state, event) pair, random event sequences, and the two
machines wired together with no event loop (h11's ConnectionPair), through a happy
path, refunds, an offer that expires on the way, and a crash at every step."""

from __future__ import annotations

import hashlib
from collections import deque
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pki import NOW
from test_commerce_statements import (
    GOODS,
    NOW_MS,
    PAYMENT,
    PRICE,
    REFUND,
    TRANSFER,
    World,
)

from semper.services.archive import Direction
from semper.services.commerce import (
    TRANSITIONS,
    AcceptOrder,
    Archive,
    Catalogue,
    CommerceError,
    Decision,
    Deliver,
    Failed,
    GoodsDelivered,
    IssueReceipt,
    IssueRefundNote,
    OfferChosen,
    OrderAccepted,
    OrderReceived,
    OrderSent,
    Pay,
    PaymentConfirmed,
    Purchase,
    PurchaseState,
    ReceiptIssued,
    Refund,
    RefundConfirmed,
    RefundNoteIssued,
    RefundRequested,
    RequestDelivery,
    RequestRefund,
    Sale,
    SaleState,
    SendOrder,
    UnexpectedEvent,
)
from semper.services.money import Amount
from semper.services.statements import (
    Statement,
    canonical_decode,
    canonical_encode,
    verify_statement,
)

EVENTS: tuple[type, ...] = (OfferChosen, OrderSent, OrderReceived, OrderAccepted,
                            PaymentConfirmed, GoodsDelivered, ReceiptIssued, RefundRequested,
                            RefundConfirmed, RefundNoteIssued, Failed)
REFUND_TYPE = "payment.refund_confirmation"
MODULES = ("transfer", "cheque")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return World.create(tmp_path_factory.mktemp("machines"))


@dataclass
class Script:
    """One valid event of each class, all for the same purchase."""

    world: World
    events: dict[type, Any]

    @classmethod
    def create(cls, world: World) -> Script:
        offer = world.offer()
        order = world.order(offer)
        return cls(world, {
            OfferChosen: OfferChosen(offer=offer, payment_module="transfer",
                                     idempotency_key="alice-0001"),
            OrderSent: OrderSent(order=order),
            OrderReceived: OrderReceived(order=order, catalogue=Catalogue((offer,))),
            OrderAccepted: OrderAccepted(),
            PaymentConfirmed: PaymentConfirmed(payment=PAYMENT, payment_type=TRANSFER,
                                               amount=PRICE),
            GoodsDelivered: GoodsDelivered(delivery=world.delivery(order), goods=GOODS),
            ReceiptIssued: ReceiptIssued(receipt=world.receipt(order)),
            RefundRequested: RefundRequested(reason="the PDF is damaged"),
            RefundConfirmed: RefundConfirmed(refund=REFUND, refund_type=REFUND_TYPE,
                                             amount=PRICE),
            RefundNoteIssued: RefundNoteIssued(note=world.note(order)),
            Failed: Failed(code="commerce.offer_expired", message="too late"),
        })

    def machine(self, side: type) -> Purchase | Sale:
        if side is Purchase:
            return Purchase(buyer="buyer.alice")
        return Sale(seller="seller.books", certificate=self.world.seller.cert,
                    payment_modules=MODULES)


@pytest.fixture(scope="module")
def script(world: World) -> Script:
    return Script.create(world)


def states_of(side: type) -> type[PurchaseState] | type[SaleState]:
    return PurchaseState if side is Purchase else SaleState


def shortest_paths(side: type) -> dict[Any, list[type]]:
    """Breadth-first over the transition table: the events that reach each state."""
    states = states_of(side)
    paths: dict[Any, list[type]] = {states.IDLE: []}
    queue = deque([states.IDLE])
    while queue:
        here = queue.popleft()
        for (state, event), target in TRANSITIONS.items():
            if state is here and target not in paths:
                paths[target] = [*paths[here], event]
                queue.append(target)
    return paths


def reach(script: Script, side: type, state: Any) -> Purchase | Sale:
    machine = script.machine(side)
    if state.name == "ERROR":
        with pytest.raises(UnexpectedEvent):
            machine.receive(script.events[RefundNoteIssued], now_ms=NOW_MS)
        return machine
    for event in shortest_paths(side)[state]:
        machine.receive(script.events[event], now_ms=NOW_MS)
    assert machine.state is state
    return machine


def restore(machine: Purchase | Sale) -> Purchase | Sale:
    """Through canonical msgpack, as a driver keeps it in SQLite."""
    stored = canonical_encode(machine.to_state())
    return type(machine).from_state(canonical_decode(stored))


# -- the table --------------------------------------------------------------------------

def test_every_state_is_reachable_and_the_table_has_one_state_kind_per_side() -> None:
    for side in (Purchase, Sale):
        states = states_of(side)
        assert set(shortest_paths(side)) == set(states) - {states.ERROR}
    for (state, event), target in TRANSITIONS.items():
        assert type(state) is type(target) and event in EVENTS
        assert state.name not in ("ERROR", "FAILED", "REFUNDED")


def test_the_happy_paths_are_in_the_table() -> None:
    B, S = PurchaseState, SaleState
    assert shortest_paths(Purchase)[B.DONE] == [OfferChosen, OrderSent, OrderAccepted,
                                                PaymentConfirmed, GoodsDelivered, ReceiptIssued]
    assert shortest_paths(Sale)[S.RECEIPTED] == [OrderReceived, PaymentConfirmed,
                                                 GoodsDelivered, ReceiptIssued]
    assert shortest_paths(Sale)[S.REFUNDED] == [OrderReceived, PaymentConfirmed,
                                                RefundRequested, RefundConfirmed,
                                                RefundNoteIssued]


@pytest.mark.parametrize("side", [Purchase, Sale])
def test_every_state_event_pair(script: Script, side: type) -> None:
    """Each pair either makes the table's transition or raises unexpected_event and
    leaves the machine in ERROR, which then refuses everything; nothing else."""
    for state in states_of(side):
        for event in EVENTS:
            machine = reach(script, side, state)
            target = TRANSITIONS.get((state, event))
            if target is not None:
                decisions = machine.receive(script.events[event], now_ms=NOW_MS)
                assert machine.state is target, (state, event)
                assert decisions[:len(decisions) - len(machine.pending())] == [
                    d for d in decisions if isinstance(d, Archive)]
                continue
            with pytest.raises(UnexpectedEvent) as info:
                machine.receive(script.events[event], now_ms=NOW_MS)
            assert info.value.code == "commerce.unexpected_event"
            assert info.value.detail == {"state": state.value, "event": event.__name__}
            assert machine.state.name == "ERROR"
            for later in EVENTS:
                with pytest.raises(UnexpectedEvent) as again:
                    machine.receive(script.events[later], now_ms=NOW_MS)
                assert again.value.detail["state"] == "error"
                assert machine.state.name == "ERROR"
            assert machine.pending() == []


@pytest.mark.parametrize("side", [Purchase, Sale])
def test_every_state_persists_and_resumes(script: Script, side: type) -> None:
    for state in states_of(side):
        machine = reach(script, side, state)
        again = restore(machine)
        assert again.state is machine.state
        assert again.to_state() == machine.to_state()
        assert again.pending() == machine.pending()
        assert repr(again) == repr(machine)


def _sequences() -> st.SearchStrategy[list[tuple[bool, int]]]:
    # (follow the table?, which event): mostly valid steps, so deep states are reached
    return st.lists(st.tuples(st.booleans() | st.just(True), st.integers(0, 50)), max_size=14)


@settings(max_examples=150, deadline=None)
@given(side=st.sampled_from([Purchase, Sale]), steps=_sequences(),
       persist_at=st.sets(st.integers(0, 14)))
def test_random_sequences_follow_the_table(script: Script, side: type,
                                           steps: list[tuple[bool, int]],
                                           persist_at: set[int]) -> None:
    machine = script.machine(side)
    model = states_of(side).IDLE
    for i, (follow, pick) in enumerate(steps):
        if i in persist_at:
            machine = restore(machine)
        valid = [e for e in EVENTS if (model, e) in TRANSITIONS]
        event = valid[pick % len(valid)] if follow and valid else EVENTS[pick % len(EVENTS)]
        target = TRANSITIONS.get((model, event))
        if target is None:
            with pytest.raises(UnexpectedEvent):
                machine.receive(script.events[event], now_ms=NOW_MS)
            model = states_of(side).ERROR
        else:
            machine.receive(script.events[event], now_ms=NOW_MS)
            model = target
        assert machine.state is model


# -- content refusals leave the machine unchanged ------------------------------------------

def _bad_event(script: Script, name: str) -> Any:
    w, e = script.world, script.events
    order = e[OrderSent].order
    return {
        "expired offer": OfferChosen(offer=w.offer(valid_until=NOW_MS - 1),
                                     payment_module="transfer", idempotency_key="k"),
        "bad module": OfferChosen(offer=w.offer(), payment_module="Transfer!",
                                  idempotency_key="k"),
        "not the order asked for": OrderSent(order=w.order(idempotency_key="other")),
        "wrong amount": PaymentConfirmed(payment=PAYMENT, payment_type=TRANSFER,
                                         amount=Amount("EUR", 1)),
        "wrong currency": PaymentConfirmed(payment=PAYMENT, payment_type=TRANSFER,
                                           amount=Amount("USD", PRICE.minor_units)),
        "bad goods": GoodsDelivered(delivery=e[GoodsDelivered].delivery, goods=b"junk"),
        "delivery for another order": GoodsDelivered(delivery=w.delivery(w.order()),
                                                     goods=GOODS),
        "bad receipt": ReceiptIssued(receipt=w.receipt(order, payment=REFUND)),
        "refund too large": RefundRequested(amount=Amount("EUR", PRICE.minor_units + 1)),
        "refund of the wrong amount": RefundConfirmed(refund=REFUND, refund_type=REFUND_TYPE,
                                                      amount=Amount("EUR", 1)),
        "note of another amount": RefundNoteIssued(note=w.note(order, amount=Amount("EUR", 1))),
        "note for another refund": RefundNoteIssued(note=w.note(order, refund=PAYMENT)),
        "expired order": OrderReceived(order=w.order(w.offer(valid_until=NOW_MS - 1))),
        "unknown offer": OrderReceived(order=order, catalogue=Catalogue(())),
        "unaccepted module": OrderReceived(order=w.order(payment_module="ecash")),
        "a receipt as the order": OrderReceived(order=w.receipt(order)),
    }[name]


REFUSALS = [
    (Purchase, "IDLE", "expired offer", "commerce.offer_expired"),
    (Purchase, "IDLE", "bad module", "commerce.bad_body"),
    (Purchase, "OFFER_CHOSEN", "not the order asked for", None),
    (Purchase, "PAYING", "wrong amount", "commerce.wrong_amount"),
    (Purchase, "PAYING", "wrong currency", "commerce.wrong_amount"),
    (Purchase, "PAID", "bad goods", "commerce.bad_goods"),
    (Purchase, "PAID", "delivery for another order", "commerce.bad_delivery"),
    (Purchase, "DELIVERED", "bad receipt", "commerce.bad_receipt"),
    (Purchase, "DONE", "refund too large", "commerce.wrong_amount"),
    (Purchase, "REFUND_REQUESTED", "note of another amount", "commerce.bad_refund_note"),
    (Sale, "IDLE", "expired order", "commerce.offer_expired"),
    (Sale, "IDLE", "unknown offer", "commerce.unknown_offer"),
    (Sale, "IDLE", "unaccepted module", "commerce.unsupported_payment"),
    (Sale, "IDLE", "a receipt as the order", "statement.wrong_type"),
    (Sale, "ORDER_ACCEPTED", "wrong currency", "commerce.wrong_amount"),
    (Sale, "PAID", "bad goods", "commerce.bad_goods"),
    (Sale, "DELIVERED", "bad receipt", "commerce.bad_receipt"),
    (Sale, "RECEIPTED", "refund too large", "commerce.wrong_amount"),
    (Sale, "REFUNDING", "refund of the wrong amount", "commerce.wrong_amount"),
    (Sale, "REFUND_CONFIRMED", "note for another refund", "commerce.bad_refund_note"),
]


@pytest.mark.parametrize(("side", "state", "case", "code"), REFUSALS,
                         ids=[f"{r[0].__name__}-{r[2]}" for r in REFUSALS])
def test_a_refused_event_changes_nothing(script: Script, side: type, state: str, case: str,
                                         code: str | None) -> None:
    machine = reach(script, side, states_of(side)[state])
    before = machine.to_state()
    event = _bad_event(script, case)
    if code is None:  # a driver bug, not a peer's fault
        with pytest.raises(ValueError):
            machine.receive(event, now_ms=NOW_MS)
    else:
        with pytest.raises(Exception) as info:
            machine.receive(event, now_ms=NOW_MS)
        assert getattr(info.value, "code", None) == code
    assert machine.to_state() == before
    # and the machine still takes the right event of that class
    machine.receive(script.events[type(event)], now_ms=NOW_MS)
    assert machine.state is TRANSITIONS[(states_of(side)[state], type(event))]


def test_the_buyer_will_not_sign_an_order_for_an_offer_that_expired_meanwhile(
        world: World) -> None:
    offer = world.offer(valid_until=NOW_MS + 5)
    purchase = Purchase(buyer="buyer.alice")
    [_, send] = purchase.receive(OfferChosen(offer=offer, payment_module="transfer",
                                             idempotency_key="k"), now_ms=NOW_MS)
    assert isinstance(send, SendOrder)
    order = world.sign(world.buyer, send.order)
    with pytest.raises(CommerceError) as info:
        purchase.receive(OrderSent(order=order), now_ms=NOW_MS + 6)
    assert info.value.code == "commerce.offer_expired"
    assert purchase.state is PurchaseState.OFFER_CHOSEN
    purchase.receive(Failed(code=info.value.code), now_ms=NOW_MS + 6)
    assert purchase.state is PurchaseState.FAILED
    assert purchase.failure == Failed(code="commerce.offer_expired")


def test_misuse_is_a_type_error_and_changes_nothing(script: Script) -> None:
    machine = script.machine(Purchase)
    with pytest.raises(TypeError):
        machine.receive("OfferChosen", now_ms=NOW_MS)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        machine.receive(script.events[OfferChosen], now_ms=float(NOW_MS))  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        machine.receive(AcceptOrder(order=PAYMENT, amount=PRICE,  # type: ignore[arg-type]
                                    payment_module="transfer"), now_ms=NOW_MS)
    assert machine.state is PurchaseState.IDLE
    with pytest.raises(ValueError):
        Purchase(buyer="Alice")
    with pytest.raises(ValueError):
        Sale(seller="seller.books", certificate=script.world.rival.cert)
    with pytest.raises(TypeError):
        Sale(seller="seller.books", payment_modules="transfer")
    with pytest.raises(ValueError):
        PaymentConfirmed(payment=b"short", payment_type=TRANSFER, amount=PRICE)
    with pytest.raises(ValueError):
        Failed(code="Not A Code")
    with pytest.raises(TypeError):
        GoodsDelivered(delivery=script.events[ReceiptIssued].receipt, goods="text")  # type: ignore[arg-type]


# -- persistence refusals ------------------------------------------------------------------

def test_from_state_refuses_what_is_not_a_state(script: Script) -> None:
    sale = reach(script, Sale, SaleState.PAID)
    good = sale.to_state()
    purchase_state = reach(script, Purchase, PurchaseState.PAID).to_state()
    broken: list[Any] = [
        None, [], {**good, "machine": "commerce.purchase"}, {**good, "v": 2},
        {**good, "state": "shipped"}, {k: v for k, v in good.items() if k != "payment"},
        {**good, "payment": None},                      # PAID needs the payment
        {**good, "order": {"not": "a statement"}},
        {**good, "certificate": b"not DER"},
        {**good, "payment_modules": "transfer"},
        {**good, "payment": {"digest": b"x", "type": TRANSFER, "amount": PRICE.to_wire()}},
        {**good, "extra": 1},
        {**good, "seller": "seller.rival"},             # the certificate is not its
    ]
    for state in broken:
        with pytest.raises(ValueError):
            Sale.from_state(state)
    with pytest.raises(ValueError):
        Sale.from_state(purchase_state)
    wrong = {**purchase_state, "order": script.world.order(idempotency_key="x").to_wire()}
    with pytest.raises(ValueError):
        Purchase.from_state(wrong)  # not the order for the chosen offer
    assert Sale.from_state(good).to_state() == good


@settings(max_examples=100, deadline=None)
@given(side=st.sampled_from([Purchase, Sale]), index=st.integers(0, 20),
       value=st.none() | st.integers() | st.binary(max_size=40) | st.text(max_size=12)
       | st.lists(st.text(max_size=5), max_size=3)
       | st.dictionaries(st.text(max_size=8), st.integers() | st.binary(max_size=33),
                         max_size=3))
def test_from_state_raises_only_value_error(script: Script, side: type, index: int,
                                            value: Any) -> None:
    machine = reach(script, side, states_of(side)["PAID"])
    state = machine.to_state()
    keys = sorted(state)
    state[keys[index % len(keys)]] = value
    try:
        again = side.from_state(state)
    except ValueError:
        return
    assert again.state in states_of(side)


# -- two machines wired together ---------------------------------------------------------------

class Crash(Exception):
    """The process died in the middle of doing a decision."""


class Bank:
    """The payment layer, reduced to what commerce sees: confirmations by digest, each
    payment applied once per idempotency key and refunded once per payment."""

    def __init__(self, payment_type: str) -> None:
        self.payment_type = payment_type
        self.balances = {"buyer.alice": 100_000, "seller.books": 0}
        self.paid: dict[str, PaymentConfirmed] = {}
        self.confirmations: dict[bytes, tuple[Pay, PaymentConfirmed]] = {}
        self.refunded: dict[bytes, RefundConfirmed] = {}

    def _move(self, payer: str, payee: str, amount: Amount) -> None:
        assert amount.currency == "EUR" and 0 < amount.minor_units <= self.balances[payer]
        self.balances[payer] -= amount.minor_units
        self.balances[payee] += amount.minor_units

    def pay(self, pay: Pay) -> PaymentConfirmed:
        if pay.idempotency_key in self.paid:
            return self.paid[pay.idempotency_key]
        self._move("buyer.alice", pay.payee, pay.amount)
        digest = hashlib.sha256(canonical_encode(
            {"key": pay.idempotency_key, "reference": pay.reference})).digest()
        confirmed = PaymentConfirmed(payment=digest, payment_type=self.payment_type,
                                     amount=pay.amount)
        self.paid[pay.idempotency_key] = confirmed
        self.confirmations[digest] = (pay, confirmed)
        return confirmed

    def refund(self, refund: Refund) -> RefundConfirmed:
        if refund.payment in self.refunded:
            return self.refunded[refund.payment]
        pay, _ = self.confirmations[refund.payment]
        assert refund.reference == pay.reference and refund.payee == "buyer.alice"
        self._move(pay.payee, refund.payee, refund.amount)
        digest = hashlib.sha256(b"refund" + refund.payment).digest()
        self.refunded[refund.payment] = RefundConfirmed(refund=digest, refund_type=REFUND_TYPE,
                                                        amount=refund.amount)
        return self.refunded[refund.payment]


class Pair:
    """A buyer and a seller machine and a bank, wired with no event loop: each side's
    decisions are carried out at once and turned into events for either side."""

    def __init__(self, world: World, *, module: str = "transfer",
                 payment_type: str = TRANSFER, valid_for: int = 3_600_000,
                 persist: bool = False, deliver: bool = True) -> None:
        self.world = world
        self.module = module
        self.offer = world.offer(valid_until=NOW_MS + valid_for)
        self.catalogue = Catalogue((self.offer,))
        self.purchase = Purchase(buyer="buyer.alice")
        self.sale = Sale(seller="seller.books", certificate=world.seller.cert,
                         payment_modules=MODULES)
        self.saved = {"buyer": self.purchase.to_state(), "seller": self.sale.to_state()}
        self.bank = Bank(payment_type)
        self.archives: dict[str, list[tuple[Direction, Statement]]] = {"buyer": [],
                                                                       "seller": []}
        self.now = {"buyer": NOW_MS, "seller": NOW_MS}
        self.persist = persist
        self.deliver = deliver
        self.crash_on: type | None = None
        self.goods: bytes | None = None

    # feeding events: every accepted event is persisted, as a driver would
    def buyer(self, event: Any) -> list[tuple[str, Decision]]:
        decisions = self.purchase.receive(event, now_ms=self.now["buyer"])
        self.saved["buyer"] = self.purchase.to_state()
        if self.persist:
            self.purchase = restore(self.purchase)  # type: ignore[assignment]
        return [("buyer", d) for d in decisions]

    def seller(self, event: Any) -> list[tuple[str, Decision]]:
        decisions = self.sale.receive(event, now_ms=self.now["seller"])
        self.saved["seller"] = self.sale.to_state()
        if self.persist:
            self.sale = restore(self.sale)  # type: ignore[assignment]
        return [("seller", d) for d in decisions]

    def run(self, work: list[tuple[str, Decision]]) -> None:
        queue = deque(work)
        while queue:
            side, decision = queue.popleft()
            queue.extend(self.carry_out(side, decision))

    def buy(self, key: str = "alice-0001") -> None:
        offer = self.verified(self.catalogue.find("taocp-1"), self.world.seller)
        self.run(self.buyer(OfferChosen(offer=offer, payment_module=self.module,
                                        idempotency_key=key)))

    def verified(self, statement: Statement, signer: Any) -> Statement:
        verify_statement(statement, certificate=signer.cert,
                         root=self.world.market.ca.certificate, crl=self.world.market.crl,
                         now=NOW, expected_signer=signer.agent_id)
        return statement

    def crash_point(self, decision: Decision) -> None:
        if type(decision) is self.crash_on:
            self.crash_on = None
            raise Crash(type(decision).__name__)

    def carry_out(self, side: str, d: Decision) -> list[tuple[str, Decision]]:
        """Do one decision of ``side``; return the decisions the events it caused led
        to. One case per decision class, like a driver's dispatch: long but flat."""
        w = self.world
        match side, d:
            case _, Archive():
                self.archives[side].append((d.direction, d.statement))
                return []
            case "buyer", SendOrder():
                order = w.sign(w.buyer, d.order, now_ms=self.now["buyer"])
                self.crash_point(d)
                out = self.buyer(OrderSent(order=order))
                try:
                    return out + self.seller(OrderReceived(
                        order=self.verified(order, w.buyer), catalogue=self.catalogue))
                except CommerceError as refused:  # the seller answers `err`
                    return out + self.buyer(Failed(code=refused.code, message=refused.message))
            case "seller", AcceptOrder():
                assert (d.amount, d.payment_module) == (PRICE, self.module)
                self.crash_point(d)
                return self.buyer(OrderAccepted())
            case "buyer", Pay():
                confirmed = self.bank.pay(d)
                self.crash_point(d)
                return self.buyer(confirmed)
            case "buyer", RequestDelivery():
                self.crash_point(d)
                _, confirmed = self.bank.confirmations[d.payment]  # the seller checks it
                return self.seller(confirmed)
            case "seller", Deliver():
                if not self.deliver:
                    return []
                delivery = w.sign(w.seller, d.body(GOODS), now_ms=self.now["seller"])
                self.crash_point(d)
                out = self.seller(GoodsDelivered(delivery=delivery, goods=GOODS))
                self.goods = GOODS
                return out + self.buyer(GoodsDelivered(
                    delivery=self.verified(delivery, w.seller), goods=GOODS))
            case "seller", IssueReceipt():
                receipt = w.sign(w.seller, d.receipt, now_ms=self.now["seller"])
                self.crash_point(d)
                return self.seller(ReceiptIssued(receipt=receipt)) + self.buyer(
                    ReceiptIssued(receipt=self.verified(receipt, w.seller)))
            case "buyer", RequestRefund():
                self.crash_point(d)
                return self.seller(RefundRequested(reason=d.reason, amount=d.amount))
            case "seller", Refund():
                confirmed = self.bank.refund(d)
                self.crash_point(d)
                return self.seller(confirmed)
            case "seller", IssueRefundNote():
                note = w.sign(w.seller, d.note, now_ms=self.now["seller"])
                self.crash_point(d)
                return self.seller(RefundNoteIssued(note=note)) + self.buyer(
                    RefundNoteIssued(note=self.verified(note, w.seller)))
        raise AssertionError(f"the {side} cannot do {d}")

    def restart(self, side: str) -> None:
        """The crashed side comes back from its last persisted state and redoes what
        its state still needs."""
        if side == "buyer":
            self.purchase = Purchase.from_state(self.saved["buyer"])
            self.run([("buyer", d) for d in self.purchase.pending()])
        else:
            self.sale = Sale.from_state(self.saved["seller"])
            self.run([("seller", d) for d in self.sale.pending()])

    def digests(self, side: str) -> list[tuple[Direction, str]]:
        return [(direction, s.type) for direction, s in self.archives[side]]


SENT, RECEIVED = Direction.SENT, Direction.RECEIVED


@pytest.mark.parametrize(("module", "payment_type"),
                         [("transfer", TRANSFER), ("cheque", "payment.cheque_cleared")])
@pytest.mark.parametrize("persist", [False, True], ids=["in-memory", "restored-every-step"])
def test_a_purchase_from_offer_to_receipt(world: World, module: str, payment_type: str,
                                          persist: bool) -> None:
    pair = Pair(world, module=module, payment_type=payment_type, persist=persist)
    pair.buy()
    assert pair.purchase.state is PurchaseState.DONE
    assert pair.sale.state is SaleState.RECEIPTED
    assert pair.goods == GOODS
    assert pair.bank.balances == {"buyer.alice": 100_000 - PRICE.minor_units,
                                  "seller.books": PRICE.minor_units}
    assert pair.digests("buyer") == [(RECEIVED, "commerce.offer"), (SENT, "commerce.order"),
                                     (RECEIVED, "commerce.delivery"),
                                     (RECEIVED, "commerce.receipt")]
    assert pair.digests("seller") == [(RECEIVED, "commerce.order"),
                                      (SENT, "commerce.delivery"), (SENT, "commerce.receipt")]
    # both archives hold the same statements, byte for byte
    assert [s.digest for _, s in pair.archives["buyer"][1:]] == [
        s.digest for _, s in pair.archives["seller"]]
    assert pair.purchase.receipt == pair.sale.receipt
    receipt = pair.purchase.receipt
    assert receipt is not None and pair.purchase.payment is not None
    assert receipt.body["payment"] == pair.purchase.payment.payment
    assert receipt.body["payment_type"] == payment_type
    assert receipt.body["amount"] == PRICE.to_wire()
    assert pair.purchase.pending() == [] and pair.sale.pending() == []


def test_a_refund_after_the_receipt(world: World) -> None:
    pair = Pair(world)
    pair.buy()
    pair.run(pair.buyer(RefundRequested(reason="the PDF is damaged")))
    assert pair.purchase.state is PurchaseState.REFUNDED
    assert pair.sale.state is SaleState.REFUNDED
    assert pair.bank.balances == {"buyer.alice": 100_000, "seller.books": 0}
    assert pair.digests("buyer")[-1] == (RECEIVED, "commerce.refund_note")
    assert pair.digests("seller")[-1] == (SENT, "commerce.refund_note")
    note = pair.purchase.refund_note
    assert note is not None and note == pair.sale.refund_note
    refund = pair.sale.refund
    assert refund is not None and note.body["refund"] == refund.refund
    assert note.body["order"] == pair.sale.order.digest  # type: ignore[union-attr]


def test_a_partial_refund_when_the_goods_never_come(world: World) -> None:
    pair = Pair(world, deliver=False)  # the seller is out of stock after all
    pair.buy()
    assert pair.purchase.state is PurchaseState.PAID
    assert pair.sale.state is SaleState.PAID
    pair.run(pair.buyer(RefundRequested(reason="nothing came", amount=Amount("EUR", 4_000))))
    assert (pair.purchase.state, pair.sale.state) == (PurchaseState.REFUNDED,
                                                      SaleState.REFUNDED)
    assert pair.bank.balances == {"buyer.alice": 100_000 - 250, "seller.books": 250}


def test_an_offer_that_expires_before_the_order_arrives(world: World) -> None:
    pair = Pair(world, valid_for=1_000)
    pair.now["seller"] = NOW_MS + 1_001  # the order took its time
    pair.buy()
    assert pair.purchase.state is PurchaseState.FAILED
    assert pair.purchase.failure is not None
    assert pair.purchase.failure.code == "commerce.offer_expired"
    assert pair.sale.state is SaleState.IDLE  # nothing accepted, nothing recorded
    assert pair.archives["seller"] == []
    assert pair.digests("buyer") == [(RECEIVED, "commerce.offer"), (SENT, "commerce.order")]
    assert pair.bank.balances == {"buyer.alice": 100_000, "seller.books": 0}
    assert pair.bank.paid == {}


CRASHES = [("buyer", SendOrder), ("seller", AcceptOrder), ("buyer", Pay),
           ("buyer", RequestDelivery), ("seller", Deliver), ("seller", IssueReceipt),
           ("buyer", RequestRefund), ("seller", Refund), ("seller", IssueRefundNote)]


@pytest.mark.parametrize(("side", "step"), CRASHES, ids=[c[1].__name__ for c in CRASHES])
def test_a_crash_at_each_step_resumes_from_the_persisted_state(world: World, side: str,
                                                               step: type) -> None:
    """The side doing ``step`` dies after its effect (a bank call, a signature) and
    before it recorded the outcome; it restarts from its last persisted state, redoes
    ``pending()``, and the purchase ends as if nothing happened: paid once, refunded
    once."""
    pair = Pair(world)
    pair.crash_on = step
    refund = step in (RequestRefund, Refund, IssueRefundNote)
    try:
        pair.buy()
        if refund:
            pair.run(pair.buyer(RefundRequested(reason="changed my mind")))
    except Crash:
        pair.restart(side)
    else:
        pytest.fail("no crash")
    final = ((PurchaseState.REFUNDED, SaleState.REFUNDED) if refund
             else (PurchaseState.DONE, SaleState.RECEIPTED))
    assert (pair.purchase.state, pair.sale.state) == final
    assert len(pair.bank.paid) == 1
    paid = 0 if refund else PRICE.minor_units
    assert pair.bank.balances == {"buyer.alice": 100_000 - paid, "seller.books": paid}
    # one receipt (or one note) on each side, whatever was signed twice
    last = "commerce.refund_note" if refund else "commerce.receipt"
    for who in ("buyer", "seller"):
        assert [t for _, t in pair.digests(who)].count(last) == 1


def test_persistence_round_trip_mid_way(world: World) -> None:
    """Stop after the payment, keep only the stored bytes, and finish with new objects."""
    pair = Pair(world, deliver=False)
    pair.buy()
    stored = {side: canonical_encode(state) for side, state in pair.saved.items()}
    pair.purchase = Purchase.from_state(canonical_decode(stored["buyer"]))
    pair.sale = Sale.from_state(canonical_decode(stored["seller"]))
    assert pair.sale.pending() == [Deliver(order=pair.sale.order.digest,  # type: ignore[union-attr]
                                           content_digest=hashlib.sha256(GOODS).digest())]
    pair.deliver = True
    pair.run([("seller", d) for d in pair.sale.pending()])
    assert (pair.purchase.state, pair.sale.state) == (PurchaseState.DONE, SaleState.RECEIPTED)


def test_the_decisions_of_a_purchase(world: World, script: Script) -> None:
    """What each step asks of the driver, exactly."""
    e = script.events
    order = e[OrderSent].order
    purchase = script.machine(Purchase)
    [archive, send] = purchase.receive(e[OfferChosen], now_ms=NOW_MS)
    assert archive == Archive(statement=e[OfferChosen].offer, direction=RECEIVED)
    assert isinstance(send, SendOrder) and send.order.idempotency_key == "alice-0001"
    assert purchase.receive(e[OrderSent], now_ms=NOW_MS) == [
        Archive(statement=order, direction=SENT)]
    assert purchase.receive(e[OrderAccepted], now_ms=NOW_MS) == [
        Pay(module="transfer", payee="seller.books", amount=PRICE, reference=order.digest,
            idempotency_key="alice-0001")]
    assert purchase.receive(e[PaymentConfirmed], now_ms=NOW_MS) == [
        RequestDelivery(order=order.digest, payment=PAYMENT, payment_type=TRANSFER)]
    assert purchase.receive(e[RefundRequested], now_ms=NOW_MS) == [
        RequestRefund(order=order.digest, amount=PRICE, reason="the PDF is damaged")]

    sale = script.machine(Sale)
    assert sale.receive(e[OrderReceived], now_ms=NOW_MS) == [
        Archive(statement=order, direction=RECEIVED),
        AcceptOrder(order=order.digest, amount=PRICE, payment_module="transfer")]
    [deliver] = sale.receive(e[PaymentConfirmed], now_ms=NOW_MS)
    assert deliver == Deliver(order=order.digest, content_digest=hashlib.sha256(GOODS).digest())
    [archive, issue] = sale.receive(e[GoodsDelivered], now_ms=NOW_MS)
    assert isinstance(issue, IssueReceipt)
    assert issue.receipt.to_body() == e[ReceiptIssued].receipt.body
    [archive] = sale.receive(e[ReceiptIssued], now_ms=NOW_MS)
    [refund] = sale.receive(e[RefundRequested], now_ms=NOW_MS)
    assert refund == Refund(module="transfer", payee="buyer.alice", amount=PRICE,
                            payment=PAYMENT, payment_type=TRANSFER, reference=order.digest)
    [note] = sale.receive(e[RefundConfirmed], now_ms=NOW_MS)
    assert isinstance(note, IssueRefundNote)
    assert note.note.to_body() == e[RefundNoteIssued].note.body


def test_a_sale_without_a_certificate_needs_the_catalogue(script: Script) -> None:
    sale = Sale(seller="seller.books")
    order = script.events[OrderSent].order
    with pytest.raises(ValueError):
        sale.receive(OrderReceived(order=order), now_ms=NOW_MS)
    assert sale.state is SaleState.IDLE
    sale.receive(script.events[OrderReceived], now_ms=NOW_MS)
    assert sale.state is SaleState.ORDER_ACCEPTED
    assert Sale.from_state(sale.to_state()).to_state() == sale.to_state()
