"""Commerce statements: every body round trips, every refusal has its stable code.

``World`` (a market with a seller, a buyer and a rival seller, and factories for
signed statements) is also used by test_commerce_machines.py.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pki import NOW, Market
from pki import TestAgent as Agent  # not collected as a test class

from semper.services.certificates import to_ms
from semper.services.commerce import (
    CATALOGUE,
    MAX_MINOR_UNITS,
    OFFER_TYPE,
    ORDER_TYPE,
    BadBody,
    BadDelivery,
    BadGoods,
    BadQuantity,
    BadReceipt,
    BadRefundNote,
    Catalogue,
    CommerceError,
    Delivery,
    Offer,
    OfferAltered,
    OfferExpired,
    Order,
    Receipt,
    RefundNote,
    UnknownOffer,
    UnsupportedPayment,
    WrongAmount,
    WrongSeller,
    check_delivery,
    check_offer,
    check_order,
    check_receipt,
    check_refund_amount,
    check_refund_note,
    sign_body,
)
from semper.services.money import Amount
from semper.services.statements import (
    BadSignature,
    Statement,
    WrongType,
    canonical_decode,
    canonical_encode,
    sign_statement,
    verify_statement,
)

NOW_MS = to_ms(NOW)
HOUR = 3_600_000
GOODS = b"The Art of Computer Programming, vol. 1 (a PDF, small for now)"
PRICE = Amount("EUR", 4_250)
TRANSFER = "payment.transfer_confirmation"
PAYMENT = hashlib.sha256(b"a transfer confirmation").digest()
REFUND = hashlib.sha256(b"a refund confirmation").digest()


@dataclass
class World:
    """A market with ``seller.books``, ``buyer.alice`` and ``seller.rival``."""

    market: Market
    seller: Agent
    buyer: Agent
    rival: Agent

    @classmethod
    def create(cls, folder: Path) -> World:
        market = Market(folder)
        return cls(market, market.agent("seller.books", "seller"),
                   market.agent("buyer.alice", "buyer"), market.agent("seller.rival", "seller"))

    def sign(self, agent: Agent, body: Any, *, now_ms: int = NOW_MS) -> Statement:
        return sign_body(body, key=agent.key, certificate=agent.cert, now_ms=now_ms,
                         nonce=os.urandom(16))

    def offer_body(self, **changes: Any) -> Offer:
        fields: dict[str, Any] = dict(
            seller="seller.books", sku="taocp-1", title="The Art of Computer Programming",
            price=PRICE, terms="PDF, no DRM; refunds within 14 days",
            content_digest=hashlib.sha256(GOODS).digest(), valid_until=NOW_MS + HOUR)
        fields.update(changes)
        return Offer(**fields)

    def offer(self, *, by: Agent | None = None, **changes: Any) -> Statement:
        return self.sign(by or self.seller, self.offer_body(**changes))

    def order_body(self, offer: Statement, **changes: Any) -> Order:
        body = Order.for_offer(offer, buyer="buyer.alice", payment_module="transfer",
                               idempotency_key="alice-0001")
        return dataclasses.replace(body, **changes)

    def order(self, offer: Statement | None = None, **changes: Any) -> Statement:
        return self.sign(self.buyer, self.order_body(offer or self.offer(), **changes))

    def delivery(self, order: Statement, /, goods: bytes = GOODS, **changes: Any) -> Statement:
        body = Delivery(order=order.digest, content_digest=hashlib.sha256(GOODS).digest(),
                        size=len(goods))
        return self.sign(self.seller, dataclasses.replace(body, **changes))

    def receipt_body(self, order: Statement, /, **changes: Any) -> Receipt:
        placed = Order.from_statement(order)
        body = Receipt(order=order.digest, offer=placed.offer_digest, buyer=placed.buyer,
                       amount=placed.amount, payment=PAYMENT, payment_type=TRANSFER,
                       content_digest=placed.offer_terms().content_digest)
        return dataclasses.replace(body, **changes)

    def receipt(self, order: Statement, /, **changes: Any) -> Statement:
        return self.sign(self.seller, self.receipt_body(order, **changes))

    def note_body(self, order: Statement, /, **changes: Any) -> RefundNote:
        placed = Order.from_statement(order)
        body = RefundNote(order=order.digest, buyer=placed.buyer, amount=placed.amount,
                          refund=REFUND, refund_type="payment.refund_confirmation")
        return dataclasses.replace(body, **changes)

    def note(self, order: Statement, /, **changes: Any) -> Statement:
        return self.sign(self.seller, self.note_body(order, **changes))


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return World.create(tmp_path_factory.mktemp("commerce"))


def code_of(call: Callable[[], object]) -> tuple[str, dict[str, Any]]:
    with pytest.raises(CommerceError) as info:
        call()
    return info.value.code, info.value.detail


# -- round trips --------------------------------------------------------------------

def test_every_body_round_trips_through_a_signed_statement(world: World) -> None:
    offer = world.offer()
    order = world.order(offer)
    statements = [offer, order, world.delivery(order), world.receipt(order), world.note(order)]
    for statement, cls in zip(statements, (Offer, Order, Delivery, Receipt, RefundNote),
                              strict=True):
        body = cls.from_statement(statement)
        assert body.to_body() == statement.body
        assert cls.from_body(body.to_body()) == body
        again = Statement.from_bytes(statement.to_bytes())
        assert again == statement and cls.from_statement(again) == body
        assert statement.type == cls.TYPE
        signer = world.buyer if cls is Order else world.seller
        identity = verify_statement(again, certificate=signer.cert,
                                    root=world.market.ca.certificate, crl=world.market.crl,
                                    now=NOW, expected_type=cls.TYPE)
        assert identity.agent_id == signer.agent_id


def test_money_is_currency_and_minor_units_on_the_wire(world: World) -> None:
    body = world.offer_body().to_body()
    assert body["price"] == {"currency": "EUR", "minor_units": 4_250}
    assert Order.from_statement(world.order()).amount == PRICE


def test_the_order_quotes_the_offer_whole(world: World) -> None:
    offer = world.offer()
    order = world.order(offer)
    assert order.body["offer"] == offer.to_wire()
    assert order.body["offer_digest"] == offer.digest
    assert Order.from_statement(order).offer == offer


_SKU = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", fullmatch=True)
_TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cc", "Cs", "Zl", "Zp", "Cf",
                                                                 "Co", "Cn", "Zs")),
                min_size=1, max_size=40)


@settings(max_examples=60, deadline=None)
@given(sku=_SKU, title=_TEXT, terms=st.text(max_size=0) | _TEXT,
       units=st.integers(1, MAX_MINOR_UNITS), currency=st.sampled_from(["EUR", "JPY", "BHD"]),
       digest=st.binary(min_size=32, max_size=32), valid_until=st.integers(0, 2**40))
def test_offer_bodies_round_trip_canonically(sku: str, title: str, terms: str, units: int,
                                             currency: str, digest: bytes,
                                             valid_until: int) -> None:
    offer = Offer(seller="seller.books", sku=sku, title=title, price=Amount(currency, units),
                  terms=terms, content_digest=digest, valid_until=valid_until)
    decoded = canonical_decode(canonical_encode(offer.to_body()))
    assert Offer.from_body(decoded) == offer


# -- malformed bodies ---------------------------------------------------------------

def _offer_wire(world: World) -> dict[str, Any]:
    return world.offer_body().to_body()


BAD_OFFERS = [
    # (field, new value; None deletes the key), with why it is refused
    ("seller", "Seller Books"),            # not an agent id
    ("sku", ""),                           # empty
    ("sku", "-leading-dash"),              # must start with a letter or digit
    ("sku", "x" * 65),                     # longer than 64
    ("title", ""),                         # empty
    ("title", "bell\x07"),                 # control character
    ("title", 7),                          # not a str
    ("terms", "x" * 4097),                 # too long
    ("price", {"currency": "EUR", "minor_units": 0}),       # not positive
    ("price", {"currency": "EUR", "minor_units": -5}),      # negative
    ("price", {"currency": "EUR", "minor_units": True}),    # bool is not money
    ("price", {"currency": "eur", "minor_units": 5}),       # not an ISO 4217 code
    ("price", {"currency": "EUR", "minor_units": MAX_MINOR_UNITS + 1}),  # too large
    ("price", {"currency": "EUR"}),                          # incomplete
    ("price", 4250),                                         # a bare number
    ("content_digest", b"\x00" * 31),      # short digest
    ("content_digest", "00" * 32),         # hex text, not bytes
    ("valid_until", -1),                   # before the epoch
    ("valid_until", "tomorrow"),           # not an int
    ("sku", None),                         # missing
    ("colour", "red"),                     # not a field
]


@pytest.mark.parametrize(("name", "value"), BAD_OFFERS)
def test_malformed_offer_bodies_name_the_field(world: World, name: str, value: Any) -> None:
    body = _offer_wire(world)
    if value is None:
        del body[name]
    else:
        body[name] = value
    code, detail = code_of(lambda: Offer.from_body(body))
    assert code == "commerce.bad_body"
    assert detail == {"type": OFFER_TYPE, "field": name}


BAD_ORDERS = [
    ("buyer", "Alice!", "commerce.bad_body"),
    ("offer", {"not": "a statement"}, "commerce.bad_body"),
    ("offer_digest", b"short", "commerce.bad_body"),
    ("quantity", 0, "commerce.bad_quantity"),
    ("quantity", -1, "commerce.bad_quantity"),
    ("quantity", 1001, "commerce.bad_quantity"),
    ("quantity", "1", "commerce.bad_quantity"),
    ("payment_module", "Transfer", "commerce.bad_body"),
    ("payment_module", "", "commerce.bad_body"),
    ("idempotency_key", "", "commerce.bad_body"),
    ("idempotency_key", "k" * 129, "commerce.bad_body"),
    ("idempotency_key", "tab\there", "commerce.bad_body"),
    ("idempotency_key", "clé-1", "commerce.bad_body"),      # not ASCII, as payment keys
]


@pytest.mark.parametrize(("name", "value", "code"), BAD_ORDERS)
def test_malformed_order_bodies(world: World, name: str, value: Any, code: str) -> None:
    body = world.order_body(world.offer()).to_body()
    body[name] = value
    got, detail = code_of(lambda: Order.from_body(body))
    assert got == code
    if code == "commerce.bad_body":
        assert detail["field"] == name and detail["type"] == ORDER_TYPE


@pytest.mark.parametrize(("cls", "name", "value"), [
    (Delivery, "order", b"\x01" * 33),
    (Delivery, "size", -1),
    (Delivery, "size", 2**53 + 1),
    (Receipt, "payment_type", "Transfer"),
    (Receipt, "amount", {"currency": "EUR", "minor_units": 0}),
    (Receipt, "buyer", ""),
    (RefundNote, "refund", None),
    (RefundNote, "refund_type", "refund"),
])
def test_malformed_other_bodies(world: World, cls: type, name: str, value: Any) -> None:
    order = world.order()
    statement = {Delivery: world.delivery, Receipt: world.receipt,
                 RefundNote: world.note}[cls](order)
    body = dict(statement.body)
    if value is None:
        del body[name]
    else:
        body[name] = value
    code, detail = code_of(lambda: cls.from_body(body))  # type: ignore[attr-defined]
    assert (code, detail) == ("commerce.bad_body", {"type": cls.TYPE, "field": name})  # type: ignore[attr-defined]


def test_reading_a_statement_of_another_type_is_wrong_type(world: World) -> None:
    with pytest.raises(WrongType) as info:
        Receipt.from_statement(world.offer())
    assert info.value.code == "statement.wrong_type"
    assert info.value.detail == {"expected": "commerce.receipt", "type": OFFER_TYPE}


def test_a_body_that_is_not_a_map(world: World) -> None:
    for value in (None, [], b"", "offer", 3):
        assert code_of(lambda v=value: Offer.from_body(v)) == (  # type: ignore[misc]
            "commerce.bad_body", {"type": OFFER_TYPE, "field": "body"})


_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.binary(max_size=40)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner,
                                                                max_size=4),
    max_leaves=12)


@pytest.fixture(scope="module")
def bodies(world: World) -> dict[type, dict[str, Any]]:
    """One valid body of each type."""
    order = world.order()
    return {Offer: order.body["offer"]["body"], Order: order.body,
            Delivery: world.delivery(order).body, Receipt: world.receipt(order).body,
            RefundNote: world.note(order).body}


@settings(max_examples=200, deadline=None)
@given(cls=st.sampled_from([Offer, Order, Delivery, Receipt, RefundNote]),
       index=st.integers(0, 7), value=_VALUES)
def test_hostile_field_values_raise_only_our_errors(bodies: dict[type, dict[str, Any]],
                                                    cls: Any, index: int, value: Any) -> None:
    """Any value in any field, or as the whole body: a valid body, or a CommerceError."""
    body: Any = dict(bodies[cls])
    keys = sorted(body)
    if index < len(keys):
        body[keys[index]] = value
    else:
        body = value
    try:
        parsed = cls.from_body(body)
    except CommerceError:
        return
    assert cls.from_body(parsed.to_body()) == parsed


# -- catalogue ----------------------------------------------------------------------

def test_catalogue_round_trip_and_lookup(world: World) -> None:
    offers = (world.offer(sku="a"), world.offer(sku="b", price=Amount("JPY", 900)))
    catalogue = Catalogue.from_wire([s.to_wire() for s in offers])
    assert catalogue == Catalogue(offers)
    assert catalogue.to_wire() == [s.to_wire() for s in offers]
    assert catalogue.skus == ("a", "b") and len(catalogue) == 2
    assert catalogue.find("b") == offers[1]
    assert catalogue.terms("b").price == Amount("JPY", 900)
    assert catalogue.holds(offers[0]) and not catalogue.holds(world.offer(sku="a"))
    assert code_of(lambda: catalogue.find("c")) == ("commerce.unknown_offer", {"sku": "c"})
    assert len(Catalogue(())) == 0


@pytest.mark.parametrize("case", ["duplicate sku", "two sellers", "not an offer", "not a list",
                                  "not a statement"])
def test_bad_catalogues(world: World, case: str) -> None:
    wire: Any = {
        "duplicate sku": lambda: [world.offer().to_wire(), world.offer().to_wire()],
        "two sellers": lambda: [world.offer(sku="a").to_wire(),
                                world.offer(by=world.rival, seller="seller.rival").to_wire()],
        "not an offer": lambda: [world.order().to_wire()],
        "not a list": lambda: {"offers": []},
        "not a statement": lambda: [{"type": OFFER_TYPE}],
    }[case]()
    code, detail = code_of(lambda: Catalogue.from_wire(wire))
    assert code == "commerce.bad_body"
    assert detail["type"] == CATALOGUE and detail["field"] == "offers"


# -- check_offer ----------------------------------------------------------------------

def test_check_offer(world: World) -> None:
    offer = world.offer(valid_until=NOW_MS + 10)
    assert check_offer(offer, now_ms=NOW_MS + 10, seller_id="seller.books").sku == "taocp-1"
    assert code_of(lambda: check_offer(offer, now_ms=NOW_MS + 11)) == (
        "commerce.offer_expired",
        {"valid_until": NOW_MS + 10, "now_ms": NOW_MS + 11, "sku": "taocp-1"})
    code, detail = code_of(lambda: check_offer(offer, now_ms=NOW_MS, seller_id="seller.rival"))
    assert code == "commerce.wrong_seller" and detail["field"] == "seller"


# -- check_order ----------------------------------------------------------------------

def seller_check(world: World, order: Statement, **kw: Any) -> Order:
    kw.setdefault("seller_certificate", world.seller.cert)
    kw.setdefault("now_ms", NOW_MS)
    return check_order(order, seller_id="seller.books", **kw)


def test_check_order_accepts_a_good_order(world: World) -> None:
    offer = world.offer()
    order = world.order(offer)
    catalogue = Catalogue((offer,))
    expected = Order.from_statement(order)
    assert seller_check(world, order) == expected
    assert seller_check(world, order, catalogue=catalogue, payment_modules={"transfer"}) \
        == expected
    assert seller_check(world, order, seller_certificate=None, catalogue=catalogue) == expected
    # valid_until is inclusive
    assert seller_check(world, order, now_ms=NOW_MS + HOUR) == expected


def _altered_price(world: World) -> Statement:
    """The buyer edits the quoted price and recomputes the digest: the seller's
    signature no longer covers the offer."""
    offer = world.offer()
    wire = offer.to_wire()
    wire["body"] = {**wire["body"], "price": {"currency": "EUR", "minor_units": 1}}
    forged = Statement.from_wire(wire)
    return world.order(forged)


def _quoted_receipt(world: World) -> Statement:
    """A genuine statement of the seller's, but a receipt, quoted as the offer."""
    receipt = world.receipt(world.order())
    body = world.order_body(world.offer())
    return world.sign(world.buyer, dataclasses.replace(body, offer=receipt,
                                                       offer_digest=receipt.digest))


def _forged_by_rival(world: World) -> Statement:
    """The rival signs an offer in seller.books' name."""
    return world.order(world.offer(by=world.rival))


def _digest_mismatch(world: World) -> Statement:
    offer = world.offer()
    return world.sign(world.buyer, world.order_body(offer, offer_digest=bytes(32)))


def _bad_signature(world: World) -> Statement:
    offer = world.offer()
    wire = {**offer.to_wire(), "signature": bytes(64)}
    return world.order(Statement.from_wire(wire))


REFUSED_ORDERS: list[tuple[str, Callable[[World], Statement], dict[str, Any], str, Any]] = [
    ("an expired offer", lambda w: w.order(w.offer(valid_until=NOW_MS - 1)), {},
     "commerce.offer_expired", None),
    ("a price edited by the buyer", _altered_price, {}, "commerce.offer_altered",
     "offer.signature"),
    ("an offer_digest that is not the quoted offer's", _digest_mismatch, {},
     "commerce.offer_altered", "offer_digest"),
    ("a zeroed signature", _bad_signature, {}, "commerce.offer_altered", "offer.signature"),
    ("an offer signed by another certificate in our name", _forged_by_rival, {},
     "commerce.offer_altered", "offer.signer"),
    ("a receipt quoted as an offer", _quoted_receipt, {}, "commerce.offer_altered",
     "offer.type"),
    ("an order for another seller",
     lambda w: w.sign(w.buyer, w.order_body(w.offer(), seller="seller.rival")), {},
     "commerce.wrong_seller", "seller"),
    ("another seller's offer",
     lambda w: w.sign(w.buyer, w.order_body(w.offer(by=w.rival, seller="seller.rival"),
                                            seller="seller.books")), {},
     "commerce.wrong_seller", "offer.seller"),
    ("two of an item", lambda w: w.order(quantity=2), {}, "commerce.bad_quantity", None),
    ("an unknown SKU", lambda w: w.order(w.offer(sku="nope")), {"catalogue": "default"},
     "commerce.unknown_offer", None),
    ("an offer replaced in the catalogue", lambda w: w.order(), {"catalogue": "default"},
     "commerce.unknown_offer", None),
    ("an altered offer, and only the catalogue to check it", _altered_price,
     {"catalogue": "default", "seller_certificate": None}, "commerce.unknown_offer", None),
    ("a payment module not accepted", lambda w: w.order(payment_module="ecash"),
     {"payment_modules": ("transfer", "cheque")}, "commerce.unsupported_payment", None),
]


@pytest.mark.parametrize(("case", "make", "kw", "code", "field"), REFUSED_ORDERS,
                         ids=[r[0] for r in REFUSED_ORDERS])
def test_check_order_refusals(world: World, case: str, make: Callable[[World], Statement],
                              kw: dict[str, Any], code: str, field: Any) -> None:
    order = make(world)
    if kw.get("catalogue") == "default":
        kw = {**kw, "catalogue": Catalogue((world.offer(),))}  # a fresh taocp-1 offer
    got, detail = code_of(lambda: seller_check(world, order, **kw))
    assert got == code, case
    if field is not None:
        assert detail["field"] == field


def test_check_order_refusal_details(world: World) -> None:
    order = world.order(world.offer(valid_until=NOW_MS - 1))
    assert code_of(lambda: seller_check(world, order))[1] == {
        "valid_until": NOW_MS - 1, "now_ms": NOW_MS, "sku": "taocp-1"}
    assert code_of(lambda: seller_check(world, world.order(quantity=3)))[1] == {
        "quantity": 3, "max": 1}
    detail = code_of(lambda: seller_check(world, world.order(payment_module="ecash"),
                                          payment_modules=["transfer"]))[1]
    assert detail == {"module": "ecash", "accepted": ["transfer"]}
    order = world.sign(world.buyer, world.order_body(world.offer(), seller="seller.rival"))
    assert code_of(lambda: seller_check(world, order))[1] == {
        "field": "seller", "expected": "seller.books", "got": "seller.rival"}


def test_check_order_misuse(world: World) -> None:
    order = world.order()
    with pytest.raises(ValueError, match="catalogue or the seller's certificate"):
        check_order(order, seller_id="seller.books", now_ms=NOW_MS)
    with pytest.raises(ValueError, match="not the certificate of seller_id"):
        check_order(order, seller_id="seller.books", now_ms=NOW_MS,
                    seller_certificate=world.rival.cert)
    with pytest.raises(WrongType):
        seller_check(world, world.offer())


def test_the_statement_layer_refuses_a_tampered_order(world: World) -> None:
    """The order's own signature is verify_statement's job, before check_order."""
    order = world.order()
    wire = order.to_wire()
    wire["body"] = {**wire["body"], "idempotency_key": "other"}
    with pytest.raises(BadSignature):
        verify_statement(Statement.from_wire(wire), certificate=world.buyer.cert,
                         root=world.market.ca.certificate, crl=world.market.crl, now=NOW,
                         expected_type=ORDER_TYPE, expected_signer="buyer.alice")


# -- check_delivery -------------------------------------------------------------------

def test_check_delivery(world: World) -> None:
    order = world.order()
    terms = Order.from_statement(order).offer_terms()
    delivery = world.delivery(order)
    assert check_delivery(GOODS, delivery, terms, order=order.digest).size == len(GOODS)
    assert check_delivery(GOODS, delivery, Order.from_statement(order).offer,
                          order=order.digest).content_digest == terms.content_digest
    cases: list[tuple[Statement, bytes, bytes, str, str]] = [
        (delivery, GOODS, bytes(32), "commerce.bad_delivery", "order"),
        (world.delivery(order, content_digest=bytes(32)), GOODS, order.digest,
         "commerce.bad_delivery", "content_digest"),
        (delivery, GOODS + b"!", order.digest, "commerce.bad_goods", "content_digest"),
        (delivery, b"", order.digest, "commerce.bad_goods", "content_digest"),
        (world.delivery(order, size=len(GOODS) + 1), GOODS, order.digest,
         "commerce.bad_delivery", "size"),
    ]
    for statement, goods, digest, code, field in cases:
        got, detail = code_of(lambda s=statement, g=goods, d=digest:  # type: ignore[misc]
                              check_delivery(g, s, terms, order=d))
        assert (got, detail["field"]) == (code, field)
    _, detail = code_of(lambda: check_delivery(b"x", delivery, terms, order=order.digest))
    assert detail["expected"] == terms.content_digest.hex()
    assert detail["got"] == hashlib.sha256(b"x").hexdigest()
    with pytest.raises(WrongType):
        check_delivery(GOODS, order, terms, order=order.digest)
    with pytest.raises(TypeError):
        check_delivery("text", delivery, terms, order=order.digest)  # type: ignore[arg-type]


# -- check_receipt ------------------------------------------------------------------

RECEIPT_FIELDS: list[tuple[str, Any]] = [
    ("order", bytes(32)),
    ("offer", bytes(32)),
    ("buyer", "buyer.mallory"),
    ("amount", Amount("EUR", 1)),
    ("payment", REFUND),
    ("payment_type", "payment.cheque_cleared"),
    ("content_digest", bytes(32)),
]


def test_check_receipt_accepts_the_true_receipt(world: World) -> None:
    order = world.order()
    receipt = world.receipt(order)
    assert check_receipt(receipt, order=order, payment=PAYMENT, payment_type=TRANSFER) \
        == Receipt.from_statement(receipt)


@pytest.mark.parametrize(("name", "value"), RECEIPT_FIELDS, ids=[f[0] for f in RECEIPT_FIELDS])
def test_check_receipt_names_the_field(world: World, name: str, value: Any) -> None:
    order = world.order()
    receipt = world.receipt(order, **{name: value})
    assert code_of(lambda: check_receipt(receipt, order=order, payment=PAYMENT,
                                         payment_type=TRANSFER)) == (
        "commerce.bad_receipt", {"field": name})


def test_check_receipt_of_another_currency(world: World) -> None:
    order = world.order()
    receipt = world.receipt(order, amount=Amount("USD", PRICE.minor_units))
    assert code_of(lambda: check_receipt(receipt, order=order, payment=PAYMENT,
                                         payment_type=TRANSFER))[1] == {"field": "amount"}


# -- refunds --------------------------------------------------------------------------

def test_check_refund_note(world: World) -> None:
    order = world.order()
    note = world.note(order)
    assert check_refund_note(note, order=order, amount=PRICE, refund=REFUND,
                             refund_type="payment.refund_confirmation").amount == PRICE
    partial = world.note(order, amount=Amount("EUR", 1_000))
    assert check_refund_note(partial, order=order).amount == Amount("EUR", 1_000)
    cases: list[tuple[Statement, dict[str, Any], str]] = [
        (world.note(order, order=bytes(32)), {}, "order"),
        (world.note(order, buyer="buyer.bob"), {}, "buyer"),
        (partial, {"amount": PRICE}, "amount"),
        (world.note(order, amount=Amount("EUR", PRICE.minor_units + 1)), {}, "amount"),
        (world.note(order, amount=Amount("USD", 10)), {}, "amount"),
        (note, {"refund": bytes(32)}, "refund"),
        (note, {"refund_type": "payment.other"}, "refund_type"),
    ]
    for statement, kw, field in cases:
        assert code_of(lambda s=statement, k=kw: check_refund_note(  # type: ignore[misc]
            s, order=order, **k)) == ("commerce.bad_refund_note", {"field": field})


def test_check_refund_amount() -> None:
    check_refund_amount(Amount("EUR", 1), PRICE)
    check_refund_amount(PRICE, PRICE)
    for amount in (Amount("EUR", 0), Amount("EUR", PRICE.minor_units + 1), Amount("USD", 1)):
        code, detail = code_of(lambda a=amount: check_refund_amount(a, PRICE))  # type: ignore[misc]
        assert code == "commerce.wrong_amount"
        assert detail == {"expected": PRICE.to_wire(), "got": amount.to_wire()}


def test_error_classes_have_distinct_stable_codes() -> None:
    classes = [BadBody, BadDelivery, BadGoods, BadQuantity, BadReceipt, BadRefundNote,
               OfferAltered, OfferExpired, UnknownOffer, UnsupportedPayment, WrongAmount,
               WrongSeller, CommerceError]
    codes = [cls.code for cls in classes]
    assert len(set(codes)) == len(codes)
    assert all(code.startswith("commerce.") for code in codes)
    assert all(issubclass(cls, CommerceError) for cls in classes)


def test_sign_body_refuses_a_key_of_another_certificate(world: World) -> None:
    with pytest.raises(ValueError):
        sign_body(world.offer_body(), key=world.buyer.key, certificate=world.seller.cert,
                  now_ms=NOW_MS, nonce=bytes(16))
    # sign_body is sign_statement with the body's type
    nonce = bytes(range(16))
    assert sign_body(world.offer_body(), key=world.seller.key, certificate=world.seller.cert,
                     now_ms=NOW_MS, nonce=nonce) == sign_statement(
        OFFER_TYPE, world.offer_body().to_body(), key=world.seller.key,
        certificate=world.seller.cert, now_ms=NOW_MS, nonce=nonce)


def test_wrong_amount_is_not_a_bad_body() -> None:
    assert not issubclass(WrongAmount, BadBody)
    assert not issubclass(UnsupportedPayment, BadBody)
    assert issubclass(BadQuantity, CommerceError)
    assert issubclass(OfferExpired, CommerceError) and issubclass(UnknownOffer, CommerceError)
    assert issubclass(BadGoods, CommerceError) and issubclass(BadReceipt, CommerceError)
    assert issubclass(BadRefundNote, CommerceError) and issubclass(WrongSeller, CommerceError)
    assert issubclass(OfferAltered, CommerceError)
