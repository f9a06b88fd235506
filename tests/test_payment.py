"""The payment manager's pure layer: negotiation, idempotency, statement schemas, the
bank's checks and decisions, and offline verification. Every refusal by its code."""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from pki import NOW, Market
from pki import TestAgent as Agent  # not collected as a test class

from semper.services import Amount, ServiceError
from semper.services.certificates import Revoked
from semper.services.payment import (
    REFUND_CONFIRMATION,
    REFUND_ORDER,
    AcceptRequest,
    BadConfirmation,
    BadRequest,
    Capabilities,
    Fresh,
    IdempotencyConflict,
    IdempotencyRecord,
    InsufficientFunds,
    Limits,
    ModuleOffer,
    NoCommonInstrument,
    RefundAnswer,
    RefundConfirmation,
    RefundExceedsPayment,
    RefundOrder,
    RefundRequest,
    Replay,
    WrongCurrency,
    WrongPayee,
    check_idempotency_key,
    check_refund_order,
    confirm_refund,
    decide_idempotency,
    decide_refund,
    negotiate,
    request_digest,
    verify_refund_confirmation,
)
from semper.services.payment.cheque import (
    CHEQUE,
    CHEQUE_CLEARED,
    BadCheque,
    Cheque,
    ChequeCleared,
    ChequeExpired,
    ChequeProof,
    ChequeReused,
    ChequeStopped,
    Cleared,
    DepositAnswer,
    StopCheque,
    check_cheque,
    cheque_retry_digest,
    clear_cheque,
    decide_cheque_deposit,
    is_cheque_retry,
    verify_cheque,
    verify_cheque_cleared,
)
from semper.services.payment.transfer import (
    TRANSFER_CONFIRMATION,
    TRANSFER_ORDER,
    TransferConfirmation,
    TransferOrder,
    TransferProof,
    TransferRequest,
    check_transfer_order,
    confirm_transfer,
    decide_transfer,
    verify_transfer_confirmation,
)
from semper.services.statements import (
    BadSignature,
    MalformedStatement,
    Statement,
    WrongSigner,
    WrongType,
    sign_statement,
)

EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
NOW_MS = (NOW - EPOCH) // dt.timedelta(milliseconds=1)
DAY_MS = 86_400_000
REF = bytes(range(32))


def eur(units: int) -> Amount:
    return Amount("EUR", units)


def sign(agent: Agent, type: str, body: dict[str, Any], *, now_ms: int = NOW_MS) -> Statement:
    return sign_statement(type, body, key=agent.key, certificate=agent.cert, now_ms=now_ms,
                          nonce=os.urandom(16))


def tampered(statement: Statement, **changes: Any) -> Statement:
    """The statement with body fields changed and the old signature kept."""
    return dataclasses.replace(statement, body={**statement.body, **changes})


@dataclasses.dataclass
class World:
    market: Market
    buyer: Agent
    seller: Agent
    bank: Agent
    other_bank: Agent

    def trust(self) -> dict[str, Any]:
        return {"root": self.market.ca.certificate, "crl": self.market.crl, "now": NOW}


@pytest.fixture
def w(market: Market) -> World:
    return World(market, market.agent("buyer.ann", "buyer"), market.agent("seller.books", "seller"),
                 market.agent("bank.one", "bank"), market.agent("bank.two", "bank"))


def order_body(**kw: Any) -> TransferOrder:
    fields: dict[str, Any] = dict(payer="buyer.ann", payee="seller.books", bank="bank.one",
                                  amount=eur(1250), reference=REF, idempotency_key="k-1")
    return TransferOrder(**{**fields, **kw})


def cheque_body(**kw: Any) -> Cheque:
    fields: dict[str, Any] = dict(payer="buyer.ann", payee="seller.books", bank="bank.one",
                                  amount=eur(1250), serial="s-1", expires_at=NOW_MS + DAY_MS,
                                  reference=REF)
    return Cheque(**{**fields, **kw})


def confirmation_of(w: World, order: Statement, *, signer: Agent | None = None,
                    **changes: Any) -> Statement:
    body = {**confirm_transfer(order, 7).to_body(), **changes}
    return sign(signer or w.bank, TRANSFER_CONFIRMATION, body)


# --- negotiation -------------------------------------------------------------------


def offer(name: str, *limits: tuple[str, int, int]) -> ModuleOffer:
    return ModuleOffer(name=name, limits=tuple(
        Limits(minimum=Amount(c, lo), maximum=Amount(c, hi)) for c, lo, hi in limits))


WIDE = ("EUR", 1, 10**9)


def test_negotiate_follows_the_payers_preference() -> None:
    payer = Capabilities(modules=(offer("cheque", WIDE), offer("transfer", WIDE)))
    payee = Capabilities(modules=(offer("transfer", WIDE), offer("cheque", WIDE)))
    assert negotiate(payer, payee, eur(500)) == "cheque"
    assert negotiate(payee, payer, eur(500)) == "transfer"


@pytest.mark.parametrize(("amount", "expected"), [
    (99, "transfer"),      # below the payer's cheque minimum
    (100, "cheque"),       # both limits are inclusive
    (5000, "cheque"),
    (5001, "transfer"),    # above the payee's cheque maximum
    (10**6, "transfer"),   # the payer's transfer maximum, inclusive
])
def test_negotiate_respects_both_sides_limits(amount: int, expected: str) -> None:
    payer = Capabilities(modules=(offer("cheque", ("EUR", 100, 10**6)),
                                  offer("transfer", ("EUR", 1, 10**6))))
    payee = Capabilities(modules=(offer("cheque", ("EUR", 1, 5000)),
                                  offer("transfer", ("EUR", 1, 10**7))))
    assert negotiate(payer, payee, eur(amount)) == expected


def test_negotiate_needs_the_currency_on_both_sides() -> None:
    payer = Capabilities(modules=(offer("cheque", WIDE, ("USD", 1, 10**9)),
                                  offer("transfer", WIDE, ("USD", 1, 10**9))))
    payee = Capabilities(modules=(offer("cheque", WIDE), offer("transfer", ("USD", 1, 10**9))))
    assert negotiate(payer, payee, Amount("USD", 10)) == "transfer"
    assert negotiate(payer, payee, eur(10)) == "cheque"


@pytest.mark.parametrize(("payer", "payee", "amount"), [
    # no module in common
    (Capabilities(modules=(offer("cheque", WIDE),)),
     Capabilities(modules=(offer("transfer", WIDE),)), eur(10)),
    # the module in common, but not in this currency
    (Capabilities(modules=(offer("transfer", WIDE),)),
     Capabilities(modules=(offer("transfer", ("USD", 1, 10**9)),)), eur(10)),
    # in common, but above the payee's maximum
    (Capabilities(modules=(offer("transfer", WIDE),)),
     Capabilities(modules=(offer("transfer", ("EUR", 1, 9)),)), eur(10)),
    # a side with nothing to offer
    (Capabilities(modules=()), Capabilities(modules=(offer("transfer", WIDE),)), eur(10)),
])
def test_no_common_instrument_lists_both_offers(payer: Capabilities, payee: Capabilities,
                                                amount: Amount) -> None:
    with pytest.raises(NoCommonInstrument) as info:
        negotiate(payer, payee, amount)
    assert info.value.code == "payment.no_common_instrument"
    assert info.value.detail == {"amount": amount.to_wire(), "payer": payer.to_wire()["modules"],
                                 "payee": payee.to_wire()["modules"]}


def test_capabilities_round_trip_and_restriction() -> None:
    caps = Capabilities(modules=(offer("transfer", WIDE, ("USD", 5, 50)), offer("cheque", WIDE)))
    assert Capabilities.from_wire(caps.to_wire()) == caps
    assert caps.to_wire()["modules"][0] == {"name": "transfer", "limits": [
        {"min": {"currency": "EUR", "minor_units": 1},
         "max": {"currency": "EUR", "minor_units": 10**9}},
        {"min": {"currency": "USD", "minor_units": 5},
         "max": {"currency": "USD", "minor_units": 50}}]}
    assert [m.name for m in caps.restricted_to({"cheque", "ecash"}).modules] == ["cheque"]
    assert caps.offer("transfer").currencies == ("EUR", "USD")  # type: ignore[union-attr]


LIMIT = {"min": {"currency": "EUR", "minor_units": 1}, "max": {"currency": "EUR", "minor_units": 9}}


@pytest.mark.parametrize("wire", [
    None,
    [],
    {},                                                            # no modules key
    {"modules": {}},                                               # not a list
    {"modules": [], "extra": 1},
    {"modules": ["transfer"]},                                     # an offer is a map
    {"modules": [{"name": "transfer"}]},                           # no limits
    {"modules": [{"name": "transfer", "limits": []}]},             # empty limits
    {"modules": [{"name": "Transfer", "limits": [LIMIT]}]},        # bad name
    {"modules": [{"name": "transfer", "limits": [LIMIT, LIMIT]}]},  # currency twice
    {"modules": [{"name": "t", "limits": [LIMIT]}, {"name": "t", "limits": [LIMIT]}]},
    {"modules": [{"name": "t", "limits": [{"min": 1, "max": 9}]}]},  # amounts as ints
    {"modules": [{"name": "t", "limits": [{**LIMIT, "min": LIMIT["max"], "max": LIMIT["min"]}]}]},
    {"modules": [{"name": "t", "limits": [{**LIMIT, "max": {"currency": "USD",
                                                            "minor_units": 9}}]}]},
    {"modules": [{"name": "t", "limits": [{**LIMIT, "min": {"currency": "EUR",
                                                            "minor_units": 0}}]}]},
    {"modules": [{"name": f"m{i}", "limits": [LIMIT]} for i in range(33)]},
])
def test_capabilities_refuse_malformed_wire(wire: object) -> None:
    with pytest.raises(BadRequest) as info:
        Capabilities.from_wire(wire)
    assert info.value.code == "payment.bad_request"


# --- idempotency -------------------------------------------------------------------


@pytest.mark.parametrize("key", [
    "",               # empty
    "x" * 129,        # too long
    "caf\u00e9",      # not ASCII
    "a\nb",           # a control character
    "tab\there",
    b"bytes",         # not a str
    7,
])
def test_idempotency_keys_are_printable_ascii(key: object) -> None:
    with pytest.raises(BadRequest) as info:
        check_idempotency_key(key)
    assert info.value.detail["field"] == "idempotency_key"


@pytest.mark.parametrize("key", ["k", "x" * 128, " spaced out ~!", "0f7a-uuid-like"])
def test_idempotency_keys_accepted(key: str) -> None:
    assert check_idempotency_key(key) == key


def test_idempotency_decisions() -> None:
    request = {"payee": "seller.books", "amount": eur(5).to_wire()}
    fresh = decide_idempotency("k", None, request)
    assert fresh == Fresh(key="k", digest=request_digest(request))
    stored = IdempotencyRecord(digest=fresh.digest, outcome={"entry": 1})
    # Key order is not content: the canonical encoding sorts keys.
    assert decide_idempotency("k", stored, dict(reversed(request.items()))) == \
        Replay(key="k", outcome={"entry": 1})
    with pytest.raises(IdempotencyConflict) as info:
        decide_idempotency("k", stored, {**request, "amount": eur(6).to_wire()})
    assert info.value.code == "payment.idempotency_conflict"
    assert info.value.detail == {"key": "k"}
    with pytest.raises(ValueError):
        request_digest({"amount": 1.5})  # floats are outside the value model


VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text(max_size=8)
    | st.binary(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner,
                                                                max_size=4),
    max_leaves=12,
)


@settings(max_examples=200, deadline=None)
@given(first=VALUES, outcome=VALUES, retries=st.integers(1, 4))
def test_same_content_always_replays_the_first_outcome(first: Any, outcome: Any,
                                                       retries: int) -> None:
    decision = decide_idempotency("key", None, first)
    assert isinstance(decision, Fresh)
    stored = IdempotencyRecord(digest=decision.digest, outcome=outcome)
    for _ in range(retries):
        assert decide_idempotency("key", stored, first) == Replay(key="key", outcome=outcome)


def _same(a: Any, b: Any) -> bool:
    """Equal as wire values: Python's == says True == 1, the wire does not."""
    return type(a) is type(b) and (
        [_same(x, y) for x, y in zip(a, b, strict=False)] == [True] * len(a) == [True] * len(b)
        if isinstance(a, list) else
        a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a) if isinstance(a, dict) else
        a == b)


@settings(max_examples=200, deadline=None)
@given(first=VALUES, second=VALUES)
def test_any_change_of_content_conflicts(first: Any, second: Any) -> None:
    assume(not _same(first, second))
    stored = IdempotencyRecord(digest=request_digest(first), outcome="first")
    with pytest.raises(IdempotencyConflict):
        decide_idempotency("key", stored, second)


def test_a_changed_order_body_conflicts() -> None:
    body = order_body().to_body()
    stored = IdempotencyRecord(digest=request_digest(body), outcome=b"confirmation")
    for field, value in [("amount", eur(1251).to_wire()), ("payee", "seller.games"),
                         ("reference", b"other"), ("bank", "bank.two")]:
        with pytest.raises(IdempotencyConflict):
            decide_idempotency("k-1", stored, {**body, field: value})


# --- statement schemas -------------------------------------------------------------


def all_bodies() -> list[Any]:
    digest = bytes(32)
    return [
        order_body(),
        TransferConfirmation(order=digest, payer="buyer.ann", payee="seller.books",
                             amount=eur(1250), reference=REF, entry=0),
        cheque_body(),
        ChequeCleared(cheque=digest, payer="buyer.ann", payee="seller.books", amount=eur(1),
                      serial="s-1", entry=2**63 - 1),
        RefundOrder(original=digest, payer="seller.books", payee="buyer.ann", amount=eur(5),
                    reason="damaged in transit", idempotency_key="r-1"),
        RefundConfirmation(refund_order=digest, original=digest, payer="seller.books",
                           payee="buyer.ann", amount=eur(5), entry=3),
    ]


@pytest.mark.parametrize("body", all_bodies(), ids=lambda b: b.TYPE)
def test_every_schema_round_trips_through_a_signed_statement(w: World, body: Any) -> None:
    wire = body.to_body()
    assert wire["amount"] == {"currency": "EUR", "minor_units": body.amount.minor_units}
    assert type(body).from_body(wire) == body
    statement = sign(w.bank, body.TYPE, wire)
    again = Statement.from_bytes(statement.to_bytes())
    assert type(body).from_statement(again) == body


def test_the_statement_types() -> None:
    assert [b.TYPE for b in all_bodies()] == [
        TRANSFER_ORDER, TRANSFER_CONFIRMATION, CHEQUE, CHEQUE_CLEARED, REFUND_ORDER,
        REFUND_CONFIRMATION]
    assert TRANSFER_ORDER == "payment.transfer_order"
    assert CHEQUE_CLEARED == "payment.cheque_cleared"


def _malformed() -> list[Any]:
    cases = []
    for body in all_bodies():
        wire = body.to_body()
        name = body.TYPE.removeprefix("payment.")
        first = next(iter(wire))
        cases += [
            pytest.param(type(body), None, "body", id=f"{name}-not-a-map"),
            pytest.param(type(body), [*wire.items()], "body", id=f"{name}-a-list"),
            pytest.param(type(body), {k: v for k, v in wire.items() if k != first}, first,
                         id=f"{name}-missing-{first}"),
            pytest.param(type(body), {**wire, "extra": 1}, "extra", id=f"{name}-extra-key"),
            pytest.param(type(body), {**wire, "amount": 1250}, "amount", id=f"{name}-int-amount"),
            pytest.param(type(body), {**wire, "amount": {"currency": "EUR", "minor_units": 0}},
                         "amount", id=f"{name}-zero-amount"),
            pytest.param(type(body), {**wire, "amount": {"currency": "EUR", "minor_units": -5}},
                         "amount", id=f"{name}-negative-amount"),
            pytest.param(type(body), {**wire, "amount": {"currency": "eur", "minor_units": 5}},
                         "amount", id=f"{name}-bad-currency"),
            pytest.param(type(body), {**wire, "amount": {"currency": "EUR",
                                                         "minor_units": 5, "x": 1}},
                         "amount", id=f"{name}-amount-extra-key"),
            pytest.param(type(body), {**wire, "payer": "Not An Id"}, "payer",
                         id=f"{name}-bad-agent-id"),
            pytest.param(type(body), {**wire, "payee": wire["payer"]}, "payee",
                         id=f"{name}-pays-itself"),
        ]
    digest_fields = {"order", "cheque", "original", "refund_order"}
    for body in all_bodies():
        wire = body.to_body()
        name = body.TYPE.removeprefix("payment.")
        for key in sorted(set(wire) & digest_fields):
            cases.append(pytest.param(type(body), {**wire, key: bytes(31)}, key,
                                      id=f"{name}-short-{key}"))
            cases.append(pytest.param(type(body), {**wire, key: bytes(32).hex()}, key,
                                      id=f"{name}-hex-{key}"))
        for key, bad in [("reference", b""), ("reference", bytes(257)), ("reference", "text"),
                         ("idempotency_key", ""), ("idempotency_key", "\x00"),
                         ("serial", "has space"), ("serial", "x" * 65), ("expires_at", -1),
                         ("expires_at", 1.5), ("entry", -1), ("entry", True), ("entry", 2**63),
                         ("reason", "x" * 513), ("reason", "line\nbreak"), ("bank", 7)]:
            if key in wire:
                cases.append(pytest.param(type(body), {**wire, key: bad}, key,
                                          id=f"{name}-bad-{key}-{bad!r:.12}"))
    return cases


@pytest.mark.parametrize(("schema", "wire", "field"), _malformed())
def test_malformed_bodies_are_refused_naming_the_field(schema: Any, wire: Any,
                                                       field: str | None) -> None:
    with pytest.raises(BadRequest) as info:
        schema.from_body(wire)
    assert info.value.code == "payment.bad_request"
    assert info.value.detail["type"] == schema.TYPE
    if field is not None:
        assert info.value.detail["field"] == field


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_hostile_bodies_raise_only_bad_request(data: st.DataObject) -> None:
    body = data.draw(st.sampled_from(all_bodies()))
    wire = body.to_body()
    key = data.draw(st.sampled_from(sorted(wire)))
    wire[key] = data.draw(VALUES)
    try:
        parsed = type(body).from_body(wire)
    except BadRequest:
        return
    assert parsed.to_body() == wire


def test_from_statement_checks_the_type(w: World) -> None:
    statement = sign(w.buyer, CHEQUE, order_body().to_body())
    with pytest.raises(BadRequest) as info:
        TransferOrder.from_statement(statement)
    assert info.value.detail == {"type": TRANSFER_ORDER, "field": "type"}


# --- transfers -----------------------------------------------------------------------


def test_the_bank_checks_a_transfer_order(w: World) -> None:
    order = sign(w.buyer, TRANSFER_ORDER, order_body().to_body())
    kw = dict(payer_certificate=w.buyer.cert, bank_id="bank.one", requester="buyer.ann",
              **w.trust())
    assert check_transfer_order(order, **kw) == order_body()
    for changes, field in [({"requester": "seller.books"}, "signer"),
                           ({"bank_id": "bank.two"}, "bank")]:
        with pytest.raises(BadRequest) as info:
            check_transfer_order(order, **{**kw, **changes})
        assert info.value.detail["field"] == field
    # Signed by the buyer, but naming someone else as the payer.
    theirs = sign(w.buyer, TRANSFER_ORDER, order_body(payer="buyer.bob").to_body())
    with pytest.raises(BadRequest) as info:
        check_transfer_order(theirs, **kw)
    assert info.value.detail["field"] == "payer"
    with pytest.raises(BadSignature):
        check_transfer_order(tampered(order, amount=eur(1).to_wire()), **kw)


def test_decide_transfer() -> None:
    decide_transfer(order_body(), balance=eur(1250))  # exactly enough
    with pytest.raises(InsufficientFunds) as info:
        decide_transfer(order_body(), balance=eur(1249))
    assert info.value.code == "payment.insufficient_funds"
    assert info.value.detail == {"amount": eur(1250).to_wire()}  # never the balance
    with pytest.raises(WrongCurrency) as info2:
        decide_transfer(order_body(), balance=Amount("USD", 10**9))
    assert info2.value.code == "payment.currency_mismatch"


def test_a_confirmation_verifies_offline(w: World) -> None:
    order = sign(w.buyer, TRANSFER_ORDER, order_body().to_body())
    confirmation = confirmation_of(w, order)
    body = verify_transfer_confirmation(
        confirmation, bank_certificate=w.bank.cert, expected_payee="seller.books",
        expected_amount=eur(1250), expected_reference=REF, expected_payer="buyer.ann",
        expected_order=order.digest, expected_bank="bank.one", **w.trust())
    assert body == TransferConfirmation(order=order.digest, payer="buyer.ann",
                                        payee="seller.books", amount=eur(1250), reference=REF,
                                        entry=7)


@pytest.mark.parametrize(("expected", "field"), [
    ({"expected_payee": "seller.games"}, "payee"),
    ({"expected_amount": eur(1251)}, "amount"),
    ({"expected_amount": Amount("USD", 1250)}, "amount"),  # no currency error: just wrong
    ({"expected_reference": b"another order"}, "reference"),
    ({"expected_payer": "buyer.bob"}, "payer"),
    ({"expected_order": bytes(32)}, "order"),
    ({"expected_bank": "bank.two"}, "signer"),
])
def test_a_confirmation_for_something_else_is_refused(w: World, expected: dict[str, Any],
                                                      field: str) -> None:
    order = sign(w.buyer, TRANSFER_ORDER, order_body().to_body())
    kw: dict[str, Any] = dict(bank_certificate=w.bank.cert, expected_payee="seller.books",
                              expected_amount=eur(1250), expected_reference=REF, **w.trust())
    with pytest.raises(BadConfirmation) as info:
        verify_transfer_confirmation(confirmation_of(w, order), **{**kw, **expected})
    assert info.value.code == "payment.bad_confirmation"
    assert info.value.detail["field"] == field


def test_tampered_foreign_and_malformed_confirmations_are_refused(w: World) -> None:
    order = sign(w.buyer, TRANSFER_ORDER, order_body().to_body())
    good = confirmation_of(w, order)
    kw: dict[str, Any] = dict(expected_payee="seller.books", expected_amount=eur(1250),
                              expected_reference=REF, **w.trust())
    # The payer raises the amount after the bank signed: the signature breaks.
    with pytest.raises(BadSignature):
        verify_transfer_confirmation(tampered(good, amount=eur(99999).to_wire()),
                                     bank_certificate=w.bank.cert, **kw)
    # The payer signs a "confirmation" itself: a valid signature, but not a bank's.
    forged = confirmation_of(w, order, signer=w.buyer)
    with pytest.raises(BadConfirmation) as info:
        verify_transfer_confirmation(forged, bank_certificate=w.buyer.cert, **kw)
    assert info.value.detail["field"] == "signer"
    # The bank's certificate handed with another bank's confirmation.
    with pytest.raises(WrongSigner):
        verify_transfer_confirmation(good, bank_certificate=w.other_bank.cert, **kw)
    # A bank-signed statement of another type.
    with pytest.raises(WrongType):
        verify_transfer_confirmation(sign(w.bank, CHEQUE_CLEARED, good.body),
                                     bank_certificate=w.bank.cert, **kw)
    # A bank-signed confirmation whose body is not one.
    broken = sign(w.bank, TRANSFER_CONFIRMATION, {**good.body, "entry": "seven"})
    with pytest.raises(BadConfirmation) as info:
        verify_transfer_confirmation(broken, bank_certificate=w.bank.cert, **kw)
    assert info.value.detail == {"type": TRANSFER_CONFIRMATION, "field": "entry"}
    # A bank revoked since (a stolen key can write any issue time).
    w.market.revoke(w.bank)
    with pytest.raises(Revoked):
        verify_transfer_confirmation(good, bank_certificate=w.bank.cert,
                                     **{**kw, "crl": w.market.crl})


# --- cheques -------------------------------------------------------------------------


def test_the_bank_checks_a_cheque(w: World) -> None:
    cheque = sign(w.buyer, CHEQUE, cheque_body().to_body())
    kw: dict[str, Any] = dict(drawer_certificate=w.buyer.cert, bank_id="bank.one", **w.trust())
    assert check_cheque(cheque, **kw) == cheque_body()
    with pytest.raises(BadRequest) as info:
        check_cheque(cheque, **{**kw, "bank_id": "bank.two"})
    assert info.value.detail["field"] == "bank"
    # The seller writes a cheque on the buyer's account.
    forged = sign(w.seller, CHEQUE, cheque_body(payee="seller.games").to_body())
    with pytest.raises(BadRequest) as info:
        check_cheque(forged, **{**kw, "drawer_certificate": w.seller.cert})
    assert info.value.detail["field"] == "payer"
    with pytest.raises(BadSignature):
        check_cheque(tampered(cheque, amount=eur(10**6).to_wire()), **kw)


DEPOSIT: dict[str, Any] = dict(depositor="seller.books", now_ms=NOW_MS, balance=eur(5000),
                               stopped=False, already_cleared=False)


def test_a_good_cheque_clears() -> None:
    assert decide_cheque_deposit(cheque_body(), **DEPOSIT) == Cleared(cheque=cheque_body())
    # Exactly the balance, at the instant of expiry: both inclusive.
    assert decide_cheque_deposit(
        cheque_body(amount=eur(5000), expires_at=NOW_MS), **DEPOSIT).cheque.amount == eur(5000)


@pytest.mark.parametrize(("changes", "error", "code"), [
    ({"depositor": "seller.games"}, WrongPayee, "payment.wrong_payee"),
    ({"already_cleared": True}, ChequeReused, "payment.cheque_reused"),
    ({"stopped": True}, ChequeStopped, "payment.cheque_stopped"),
    ({"now_ms": NOW_MS + DAY_MS + 1}, ChequeExpired, "payment.cheque_expired"),
    ({"balance": Amount("USD", 10**9)}, WrongCurrency, "payment.currency_mismatch"),
    ({"balance": eur(1249)}, InsufficientFunds, "payment.insufficient_funds"),
    ({"balance": eur(0)}, InsufficientFunds, "payment.insufficient_funds"),
    # The checks run in a fixed order: the first refusal wins, and a stranger depositing
    # a cheque learns nothing of its state or of the payer's balance.
    ({"depositor": "seller.games", "stopped": True, "already_cleared": True,
      "balance": eur(0)}, WrongPayee, "payment.wrong_payee"),
    ({"already_cleared": True, "stopped": True, "now_ms": 2**50}, ChequeReused,
     "payment.cheque_reused"),
    ({"stopped": True, "now_ms": 2**50, "balance": eur(0)}, ChequeStopped,
     "payment.cheque_stopped"),
    ({"now_ms": 2**50, "balance": eur(0)}, ChequeExpired, "payment.cheque_expired"),
])
def test_every_cheque_refusal(changes: dict[str, Any], error: type[ServiceError],
                              code: str) -> None:
    with pytest.raises(error) as info:
        decide_cheque_deposit(cheque_body(), **{**DEPOSIT, **changes})
    assert info.value.code == code


def test_cheque_refusal_details() -> None:
    with pytest.raises(WrongPayee) as info:
        decide_cheque_deposit(cheque_body(), **{**DEPOSIT, "depositor": "seller.games"})
    assert info.value.detail == {"payee": "seller.books", "depositor": "seller.games"}
    with pytest.raises(ChequeExpired) as info2:
        decide_cheque_deposit(cheque_body(), **{**DEPOSIT, "now_ms": NOW_MS + DAY_MS + 1})
    assert info2.value.detail == {"serial": "s-1", "expires_at": NOW_MS + DAY_MS,
                                  "now_ms": NOW_MS + DAY_MS + 1}
    with pytest.raises(InsufficientFunds) as info3:
        decide_cheque_deposit(cheque_body(), **{**DEPOSIT, "balance": eur(3)})
    assert "3" not in str(info3.value.detail)


def test_a_retried_cheque_is_recognised() -> None:
    first = cheque_body()
    stored = cheque_retry_digest(first)
    # Re-signed after a crash: the same cheque but for its expiry.
    again = cheque_body(expires_at=first.expires_at + 5000)
    assert is_cheque_retry(again, depositor="seller.books", stored_digest=stored)
    assert not is_cheque_retry(again, depositor="seller.books", stored_digest=None)
    assert not is_cheque_retry(again, depositor="seller.games", stored_digest=stored)
    for other in [cheque_body(amount=eur(1251)), cheque_body(reference=b"another order"),
                  cheque_body(payee="seller.games")]:
        assert not is_cheque_retry(other, depositor=other.payee, stored_digest=stored)


def test_the_payee_checks_a_cheque_before_depositing(w: World) -> None:
    cheque = sign(w.buyer, CHEQUE, cheque_body().to_body())
    kw: dict[str, Any] = dict(drawer_certificate=w.buyer.cert, expected_payee="seller.books",
                              expected_amount=eur(1250), expected_reference=REF, **w.trust())
    assert verify_cheque(cheque, expected_payer="buyer.ann", **kw) == cheque_body()
    with pytest.raises(WrongPayee):
        verify_cheque(cheque, **{**kw, "expected_payee": "seller.games"})
    for changes, field in [({"expected_amount": eur(1)}, "amount"),
                           ({"expected_reference": b"x"}, "reference"),
                           ({"expected_payer": "buyer.bob"}, "payer")]:
        with pytest.raises(BadCheque) as info:
            verify_cheque(cheque, **{**kw, **changes})
        assert (info.value.code, info.value.detail["field"]) == ("payment.bad_cheque", field)
    with pytest.raises(ChequeExpired):
        verify_cheque(cheque, **{**kw, "now": NOW + dt.timedelta(days=2)})
    forged = sign(w.seller, CHEQUE, cheque_body().to_body())
    with pytest.raises(BadCheque) as info:
        verify_cheque(forged, **{**kw, "drawer_certificate": w.seller.cert})
    assert info.value.detail["field"] == "payer"
    with pytest.raises(BadCheque) as info:
        verify_cheque(sign(w.buyer, CHEQUE, {**cheque_body().to_body(), "serial": ""}), **kw)
    assert info.value.detail["field"] == "serial"


def test_a_cleared_cheque_verifies_offline(w: World) -> None:
    cheque = sign(w.buyer, CHEQUE, cheque_body().to_body())
    cleared = sign(w.bank, CHEQUE_CLEARED, clear_cheque(cheque, 11).to_body())
    kw: dict[str, Any] = dict(bank_certificate=w.bank.cert, expected_payee="seller.books",
                              expected_amount=eur(1250), **w.trust())
    body = verify_cheque_cleared(cleared, expected_cheque=cheque.digest, expected_serial="s-1",
                                 expected_payer="buyer.ann", expected_bank="bank.one", **kw)
    assert (body.cheque, body.entry, body.serial) == (cheque.digest, 11, "s-1")
    for changes, field in [({"expected_cheque": bytes(32)}, "cheque"),
                           ({"expected_serial": "s-2"}, "serial"),
                           ({"expected_payee": "seller.games"}, "payee"),
                           ({"expected_amount": eur(1)}, "amount"),
                           ({"expected_bank": "bank.two"}, "signer")]:
        with pytest.raises(BadConfirmation) as info:
            verify_cheque_cleared(cleared, **{**kw, **changes})
        assert info.value.detail["field"] == field
    with pytest.raises(BadConfirmation):  # the seller "clears" the cheque itself
        verify_cheque_cleared(sign(w.seller, CHEQUE_CLEARED, cleared.body),
                              **{**kw, "bank_certificate": w.seller.cert})


# --- refunds -------------------------------------------------------------------------


def test_decide_refund_limits() -> None:
    assert decide_refund(eur(1000), eur(0), eur(1000)) == eur(1000)
    assert decide_refund(eur(1000), eur(400), eur(600)) == eur(1000)
    assert decide_refund(eur(1000), eur(400), eur(1)) == eur(401)
    with pytest.raises(RefundExceedsPayment) as info:
        decide_refund(eur(1000), eur(400), eur(601))
    assert info.value.code == "payment.refund_exceeds_payment"
    assert info.value.detail == {"original": eur(1000).to_wire(), "refunded": eur(400).to_wire(),
                                 "requested": eur(601).to_wire(),
                                 "refundable": eur(600).to_wire()}
    with pytest.raises(RefundExceedsPayment):
        decide_refund(eur(1000), eur(1000), eur(1))
    with pytest.raises(WrongCurrency):
        decide_refund(eur(1000), eur(0), Amount("USD", 1))
    with pytest.raises(WrongCurrency):
        decide_refund(eur(1000), Amount("USD", 0), eur(1))
    for bad in (eur(0), eur(-5)):
        with pytest.raises(BadRequest):
            decide_refund(eur(1000), eur(0), bad)


@settings(max_examples=200, deadline=None)
@given(original=st.integers(1, 10**6), asks=st.lists(st.integers(1, 10**6), max_size=12))
def test_refunds_never_exceed_the_payment(original: int, asks: list[int]) -> None:
    refunded = eur(0)
    for ask in asks:
        try:
            total = decide_refund(eur(original), refunded, eur(ask))
        except RefundExceedsPayment:
            assert refunded.minor_units + ask > original
            continue
        assert total == refunded + eur(ask)
        refunded = total
        assert refunded <= eur(original)


def test_the_bank_checks_a_refund_order_and_the_payer_its_confirmation(w: World) -> None:
    order = sign(w.buyer, TRANSFER_ORDER, order_body().to_body())
    original = confirmation_of(w, order)
    body = RefundOrder(original=original.digest, payer="seller.books", payee="buyer.ann",
                       amount=eur(250), reason="late", idempotency_key="r-1")
    refund_order = sign(w.seller, REFUND_ORDER, body.to_body())
    kw: dict[str, Any] = dict(certificate=w.seller.cert, requester="seller.books", **w.trust())
    assert check_refund_order(refund_order, **kw) == body
    with pytest.raises(BadRequest) as info:
        check_refund_order(refund_order, **{**kw, "requester": "buyer.ann"})
    assert info.value.detail["field"] == "signer"
    theirs = sign(w.seller, REFUND_ORDER, {**body.to_body(), "payer": "seller.games"})
    with pytest.raises(BadRequest) as info:
        check_refund_order(theirs, **kw)
    assert info.value.detail["field"] == "payer"

    confirmation = sign(w.bank, REFUND_CONFIRMATION, confirm_refund(refund_order, 9).to_body())
    vkw: dict[str, Any] = dict(bank_certificate=w.bank.cert, expected_original=original.digest,
                               expected_payee="buyer.ann", expected_amount=eur(250), **w.trust())
    got = verify_refund_confirmation(confirmation, expected_refund_order=refund_order.digest,
                                     expected_bank="bank.one", **vkw)
    assert (got.refund_order, got.original, got.payer, got.entry) == (
        refund_order.digest, original.digest, "seller.books", 9)
    for changes, field in [({"expected_original": bytes(32)}, "original"),
                           ({"expected_payee": "buyer.bob"}, "payee"),
                           ({"expected_amount": eur(251)}, "amount"),
                           ({"expected_refund_order": bytes(32)}, "refund_order")]:
        with pytest.raises(BadConfirmation) as info2:
            verify_refund_confirmation(confirmation, **{**vkw, **changes})
        assert info2.value.detail["field"] == field
    with pytest.raises(BadSignature):
        verify_refund_confirmation(tampered(confirmation, amount=eur(2500).to_wire()), **vkw)


# --- bank op bodies ------------------------------------------------------------------


def test_bank_op_bodies_round_trip(w: World) -> None:
    order = sign(w.buyer, TRANSFER_ORDER, order_body().to_body())
    cheque = sign(w.buyer, CHEQUE, cheque_body().to_body())
    values = [
        TransferRequest(order=order),
        TransferProof(confirmation=confirmation_of(w, order), bank_certificate=w.bank.cert),
        ChequeProof(cheque=cheque, drawer_certificate=w.buyer.cert),
        DepositAnswer(cleared=sign(w.bank, CHEQUE_CLEARED, clear_cheque(cheque, 1).to_body()),
                      bank_certificate=w.bank.cert),
        RefundRequest(refund_order=order),
        RefundAnswer(confirmation=order, bank_certificate=w.bank.cert),
        StopCheque(serial="s-1"),
        AcceptRequest(module="transfer", reference=REF, proof={"any": "map"}),
    ]
    for value in values:
        assert type(value).from_wire(value.to_wire()) == value
    assert set(values[1].to_wire()) == {"confirmation", "bank_certificate"}
    assert set(values[2].to_wire()) == {"cheque", "drawer_certificate"}


@pytest.mark.parametrize(("cls", "wire", "error"), [
    (TransferRequest, {}, BadRequest),
    (TransferRequest, {"order": {"type": "x"}}, MalformedStatement),
    (TransferProof, {"confirmation": None}, BadRequest),
    (ChequeProof, {"cheque": None, "drawer_certificate": b"not DER"}, MalformedStatement),
    (DepositAnswer, [], BadRequest),
    (RefundRequest, {"refund_order": None, "x": 1}, BadRequest),
    (StopCheque, {"serial": ""}, BadRequest),
    (StopCheque, {"serial": 5}, BadRequest),
    (StopCheque, {}, BadRequest),
    (AcceptRequest, {"module": "transfer", "reference": b"", "proof": {}}, BadRequest),
    (AcceptRequest, {"module": "transfer", "reference": REF, "proof": []}, BadRequest),
    (AcceptRequest, {"module": "", "reference": REF, "proof": {}}, BadRequest),
])
def test_bank_op_bodies_refuse_malformed_wire(cls: Any, wire: object, error: type) -> None:
    with pytest.raises(error):
        cls.from_wire(wire)


def test_a_proof_with_an_unreadable_certificate(w: World) -> None:
    order = sign(w.buyer, TRANSFER_ORDER, order_body().to_body())
    wire = TransferProof(confirmation=confirmation_of(w, order),
                         bank_certificate=w.bank.cert).to_wire()
    for bad in (b"not DER", "text"):
        with pytest.raises(BadRequest) as info:
            TransferProof.from_wire({**wire, "bank_certificate": bad})
        assert info.value.detail["field"] == "bank_certificate"


def test_every_payment_code_is_stable() -> None:
    import semper.services.payment as payment
    import semper.services.payment.cheque as cheque
    import semper.services.payment.transfer as transfer

    codes = {cls.code for package in (payment, cheque, transfer) for name in package.__all__
             if isinstance(cls := getattr(package, name), type) and issubclass(cls, ServiceError)}
    assert codes == {
        "payment.error", "payment.bad_request", "payment.no_common_instrument",
        "payment.unknown_module", "payment.idempotency_conflict", "payment.bad_confirmation",
        "payment.bad_cheque", "payment.insufficient_funds", "payment.currency_mismatch",
        "payment.cheque_expired", "payment.wrong_payee", "payment.cheque_stopped",
        "payment.cheque_reused", "payment.refund_exceeds_payment", "payment.unknown_account",
        "payment.unknown_payment", "payment.wrong_bank", "payment.already_paid",
        "payment.too_many_stopped",
        # protocol.md 8.9
        "payment.policy_refused", "payment.forbidden_instrument", "payment.bad_market_policy",
        "payment.unsupported"}  # a purse's whole payment, or no instrument held (8.6, 8.7)


# --- settles: a third party (the notary of a fair purchase) checks a settlement -----


def _settles_args(w: World, **kw: Any) -> dict[str, Any]:
    fields: dict[str, Any] = dict(bank_certificate=w.bank.cert, payer="buyer.ann",
                                  payee="seller.books", amount=eur(1250), reference=REF,
                                  idempotency_key="k-1", **w.trust())
    return {**fields, **kw}


def test_transfer_settles_only_the_orders_confirmation(w: World) -> None:
    from semper.services.payment.transfer import TransferModule
    confirmation = sign(w.bank, TRANSFER_CONFIRMATION, TransferConfirmation(
        order=bytes(32), payer="buyer.ann", payee="seller.books", amount=eur(1250),
        reference=REF, entry=0).to_body())
    TransferModule().settles(confirmation, **_settles_args(w))
    for changed in ({"reference": bytes(32)}, {"payee": "seller.games"},
                    {"amount": eur(1249)}, {"payer": "buyer.bob"}):
        with pytest.raises(BadConfirmation):
            TransferModule().settles(confirmation, **_settles_args(w, **changed))
    with pytest.raises(ServiceError):  # signed by a buyer, not a bank
        TransferModule().settles(sign(w.buyer, TRANSFER_CONFIRMATION, confirmation.body),
                                 **_settles_args(w, bank_certificate=w.buyer.cert))


def test_cheque_settles_only_the_clearing_of_the_orders_serial(w: World) -> None:
    from semper.services.payment.cheque import ChequeModule, cheque_serial
    cleared = sign(w.bank, CHEQUE_CLEARED, ChequeCleared(
        cheque=bytes(32), payer="buyer.ann", payee="seller.books", amount=eur(1250),
        serial=cheque_serial("buyer.ann", "k-1"), entry=4).to_body())
    ChequeModule().settles(cleared, **_settles_args(w))
    for changed in ({"idempotency_key": "k-2"}, {"payee": "seller.games"},
                    {"amount": eur(1251)}):
        with pytest.raises(ServiceError):
            ChequeModule().settles(cleared, **_settles_args(w, **changed))
    with pytest.raises(ServiceError):  # a transfer's confirmation is no cheque's clearing
        ChequeModule().settles(sign(w.bank, TRANSFER_CONFIRMATION, TransferConfirmation(
            order=bytes(32), payer="buyer.ann", payee="seller.books", amount=eur(1250),
            reference=REF, entry=0).to_body()), **_settles_args(w))
