"""The card instrument's protocol (issue 11, SET-style dual signature; protocol.md 8.8),
driven with in-memory contexts and a fake gateway built from the package's pure checks.

The gateway here is scaffolding: dicts instead of SQLite, the same ``check_*`` and
``decide_*`` the bank's gateway component uses. Every body crosses the "network"
through the wire codec. What the merchant receives is kept, to show that no card number
or expiry ever reaches it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
from dataclasses import dataclass, field
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import x25519
from hypothesis import given, settings
from hypothesis import strategies as st
from pki import NOW, Market
from pki import TestAgent as Agent  # not collected as a test class

from semper.services import Amount, ServiceError
from semper.services.payment import (
    BANK_REFUND,
    BANK_SERVICE,
    PAYMENT_ACCEPT,
    PAYMENT_SERVICE,
    AcceptRequest,
    BadConfirmation,
    BadRequest,
    Invoice,
    PaymentRequest,
    RefundAnswer,
    RefundRequest,
    WrongCurrency,
    check_refund_order,
    confirm_refund,
    decide_refund,
)
from semper.services.payment.card import (
    AUTHORIZATION,
    BANK_CARD_AUTHORIZE,
    BANK_CARD_CAPTURE,
    BANK_CARD_GATEWAY_KEY,
    GATEWAY_KEY,
    SUITE,
    AuthorizeAnswer,
    AuthorizeRequest,
    BadDualSignature,
    BadGatewayKey,
    BadInstructions,
    CaptureAnswer,
    CaptureRequest,
    CardError,
    CardModule,
    CardProof,
    Declined,
    DualSignature,
    ExpiredCard,
    GatewayKey,
    GatewayKeyAnswer,
    GatewayKeyRequest,
    OrderInformation,
    OverAuthorized,
    PaymentInstructions,
    UnknownAuthorization,
    UnknownCard,
    authorize,
    capture,
    card_expired,
    check_authorize,
    check_card_proof,
    check_gateway_key,
    decide_authorization,
    decide_capture,
    dual_signature,
    instructions_digest,
    luhn_ok,
    oimd_of,
    pimd_of,
    seal_instructions,
    verify_captured,
)
from semper.services.statements import Statement, sign_statement
from semper.transport import decode_body, encode_body

EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
NOW_MS = (NOW - EPOCH) // dt.timedelta(milliseconds=1)
DAY_MS = 86_400_000
BUYER, SELLER, OTHER_SELLER, OTHER_BUYER, BANK = (
    "buyer.ann", "seller.books", "seller.eve", "buyer.bob", "bank")
NUMBER = "4539578763621486"           # passes Luhn
OTHER_NUMBER = "4556737586899855"     # passes Luhn, issued to buyer.bob
EXPIRY = f"{NOW.year + 2:04d}-07"


def eur(units: int) -> Amount:
    return Amount("EUR", units)


# --- scaffolding -----------------------------------------------------------------------

@dataclass
class Clock:
    ms: int = NOW_MS


@dataclass
class Net:
    """Routes ``ctx.request`` to the peer's handler, through the wire codec; keeps
    every request and answer each agent received."""

    handlers: dict[str, Any] = field(default_factory=dict)
    received: dict[str, list[bytes]] = field(default_factory=dict)

    async def request(self, sender: str, peer: str, service: str, op: str, body: Any) -> Any:
        data = encode_body(body)
        self.received.setdefault(peer, []).append(data)
        answer = encode_body(await self.handlers[peer](sender, service, op, decode_body(data)))
        self.received.setdefault(sender, []).append(answer)
        return decode_body(answer)


@dataclass
class Cards:
    """The cardholder's Cards component, as ``ctx.holder("card")`` returns it."""

    number: str
    expiry: str
    holds = ("card",)

    async def card(self) -> tuple[str, str]:
        return self.number, self.expiry


@dataclass
class Ctx:
    me: Agent
    market: Market
    clock: Clock
    net: Net
    cards: Cards | None = None
    records: list[Statement] = field(default_factory=list)
    bank_id: str = BANK

    @property
    def our_id(self) -> str:
        return self.me.agent_id

    @property
    def certificate(self) -> x509.Certificate:
        return self.me.cert

    @property
    def root(self) -> x509.Certificate:
        return self.market.ca.certificate

    @property
    def crl(self) -> x509.CertificateRevocationList:
        return self.market.crl

    def now_ms(self) -> int:
        return self.clock.ms

    def now(self) -> dt.datetime:
        return EPOCH + dt.timedelta(milliseconds=self.clock.ms)

    def holder(self, module: str) -> Any:
        assert module == "card" and self.cards is not None
        return self.cards

    async def sign(self, type: str, body: dict[str, Any]) -> Statement:
        return sign_statement(type, body, key=self.me.key, certificate=self.me.cert,
                              now_ms=self.clock.ms, nonce=os.urandom(16))

    async def record(self, statement: Statement, certificate: x509.Certificate) -> None:
        self.records.append(statement)

    async def request(self, peer: str, service: str, op: str, body: Any) -> Any:
        return await self.net.request(self.our_id, peer, service, op, body)


@dataclass
class Gateway:
    """The bank's card ops over dicts, from the package's pure checks."""

    ctx: Ctx
    key: x25519.X25519PrivateKey
    cards: dict[str, tuple[str, str]]            # number -> (holder, expiry)
    balances: dict[str, int]
    key_statement: Statement | None = None
    auths: dict[str, list[Any]] = field(default_factory=dict)   # id -> [body, captured]
    by_key: dict[tuple[str, str], tuple[bytes, bytes]] = field(default_factory=dict)
    payments: dict[bytes, list[Any]] = field(default_factory=dict)
    entries: int = 0

    def move(self, payer: str, payee: str, amount: Amount) -> int:
        self.balances[payer] -= amount.minor_units
        self.balances[payee] = self.balances.get(payee, 0) + amount.minor_units
        self.entries += 1
        return self.entries

    def trust(self) -> dict[str, Any]:
        return {"root": self.ctx.root, "crl": self.ctx.crl, "now": self.ctx.now()}

    async def handle(self, requester: str, service: str, op: str, body: Any) -> Any:
        assert service == BANK_SERVICE
        if op == BANK_CARD_GATEWAY_KEY:
            GatewayKeyRequest.from_wire(body)
            assert self.key_statement is not None
            return GatewayKeyAnswer(key=self.key_statement,
                                    bank_certificate=self.ctx.certificate).to_wire()
        if op == BANK_CARD_AUTHORIZE:
            return await self.authorize(requester, AuthorizeRequest.from_wire(body))
        if op == BANK_CARD_CAPTURE:
            return await self.capture(requester, CaptureRequest.from_wire(body))
        assert op == BANK_REFUND
        return await self.refund(requester, body)

    async def authorize(self, merchant: str, request: AuthorizeRequest) -> Any:
        checked = check_authorize(request, merchant=merchant, private_keys=[self.key],
                                  **self.trust())
        known = self.by_key.get((merchant, request.idempotency_key))
        if known is not None and known[0] == instructions_digest(checked.pi):
            return AuthorizeAnswer(authorization=Statement.from_bytes(known[1]),
                                   bank_certificate=self.ctx.certificate).to_wire()
        holder, expiry = self.cards.get(checked.pi.number, (None, None))
        balance = None if holder is None else eur(self.balances[holder])
        decide_authorization(checked, holder=holder, expiry=expiry, now_ms=self.ctx.now_ms(),
                             balance=balance)
        assert holder is not None
        self.move(holder, "@card-held", checked.pi.amount)
        body = authorize(checked, bank=BANK, expires_ms=self.ctx.now_ms() + 7 * DAY_MS)
        signed = await self.ctx.sign(AUTHORIZATION, body.to_body())
        self.auths[body.authorization_id] = [body, eur(0), holder]
        self.by_key[(merchant, request.idempotency_key)] = (instructions_digest(checked.pi),
                                                            signed.to_bytes())
        return AuthorizeAnswer(authorization=signed,
                               bank_certificate=self.ctx.certificate).to_wire()

    async def capture(self, merchant: str, request: CaptureRequest) -> Any:
        known = self.by_key.get((merchant, request.idempotency_key))
        if known is not None:
            return CaptureAnswer(captured=Statement.from_bytes(known[1]),
                                 bank_certificate=self.ctx.certificate).to_wire()
        entry = self.auths.get(request.authorization_id)
        if entry is None:
            raise UnknownAuthorization("no such authorisation",
                                       detail={"authorization_id": request.authorization_id})
        body, captured, holder = entry
        total = decide_capture(body, requester=merchant, amount=request.amount,
                               captured=captured, now_ms=self.ctx.now_ms())
        number = self.move("@card-held", merchant, request.amount)
        signed = await self.ctx.sign("payment.card_captured",
                                     capture(body, amount=request.amount,
                                             entry=number).to_body())
        entry[1] = total
        self.by_key[(merchant, request.idempotency_key)] = (b"", signed.to_bytes())
        self.payments[signed.digest] = [holder, merchant, request.amount, 0]
        return CaptureAnswer(captured=signed, bank_certificate=self.ctx.certificate).to_wire()

    async def refund(self, requester: str, body: Any) -> Any:
        order = RefundRequest.from_wire(body).refund_order
        checked = check_refund_order(order, certificate=self.certs[requester],
                                     requester=requester, **self.trust())
        payer, payee, amount, refunded = self.payments[checked.original]
        total = decide_refund(amount, eur(refunded), checked.amount)
        number = self.move(payee, payer, checked.amount)
        self.payments[checked.original][3] = total.minor_units
        signed = await self.ctx.sign("payment.refund_confirmation",
                                     confirm_refund(order, number).to_body())
        return RefundAnswer(confirmation=signed, bank_certificate=self.ctx.certificate).to_wire()

    certs: dict[str, x509.Certificate] = field(default_factory=dict)


@dataclass
class Merchant:
    ctx: Ctx
    invoices: dict[bytes, Invoice] = field(default_factory=dict)
    module: CardModule = field(default_factory=CardModule)

    async def handle(self, requester: str, service: str, op: str, body: Any) -> Any:
        assert (service, op) == (PAYMENT_SERVICE, PAYMENT_ACCEPT)
        request = AcceptRequest.from_wire(body)
        assert request.module == "card"
        invoice = dataclasses.replace(self.invoices[request.reference], payer=requester)
        return (await self.module.accept(self.ctx, request.proof, invoice=invoice)).to_wire()


@dataclass
class World:
    market: Market
    clock: Clock
    net: Net
    gateway: Gateway
    bank: Agent
    buyer: Ctx
    other_buyer: Ctx
    seller: Ctx
    other_seller: Ctx
    merchant: Merchant
    module: CardModule = field(default_factory=CardModule)

    def request(self, units: int = 1250, reference: bytes = b"order-1", key: str = "k-1",
                description: str = "") -> PaymentRequest:
        self.merchant.invoices[reference] = Invoice(amount=eur(units), reference=reference)
        return PaymentRequest(payee=SELLER, amount=eur(units), reference=reference,
                              idempotency_key=key)

    def total(self) -> int:
        return sum(self.gateway.balances.values())

    async def proof(self, ctx: Ctx | None = None, units: int = 1250,
                    reference: bytes = b"order-1", merchant: str = SELLER,
                    number: str = NUMBER, expiry: str = EXPIRY,
                    description: str = "") -> CardProof:
        """What ``CardModule.pay`` hands over, built by hand (to tamper with)."""
        ctx = ctx or self.buyer
        oi = OrderInformation(order=reference, merchant=merchant, amount=eur(units),
                              description=description)
        oimd = oimd_of(oi)
        pi = PaymentInstructions(number=number, expiry=expiry, amount=eur(units),
                                 merchant=merchant, order=oimd, idempotency_key="k",
                                 nonce=os.urandom(16))
        pimd = pimd_of(pi)
        dual = await ctx.sign("card.dual_signature", dual_signature(pimd, oimd).to_body())
        sealed = seal_instructions(pi, gateway_key=self.gateway.key.public_key())
        return CardProof(oi=oi, pimd=pimd, dual=dual, sealed_pi=sealed,
                         cardholder_certificate=ctx.certificate)

    def authorize_request(self, proof: CardProof, amount: Amount | None = None,
                          oimd: bytes | None = None, key: str = "a-1") -> AuthorizeRequest:
        return AuthorizeRequest(sealed_pi=proof.sealed_pi, oimd=oimd or oimd_of(proof.oi),
                                dual=proof.dual,
                                cardholder_certificate=proof.cardholder_certificate,
                                amount=amount or proof.oi.amount, idempotency_key=key)


@pytest.fixture(scope="module")
def market(tmp_path_factory: pytest.TempPathFactory) -> Market:
    return Market(tmp_path_factory.mktemp("card"))


@pytest.fixture(scope="module")
def agents(market: Market) -> dict[str, Agent]:
    roles = {BANK: "bank", BUYER: "buyer", OTHER_BUYER: "buyer", SELLER: "seller",
             OTHER_SELLER: "seller"}
    return {name: market.agent(name, role=role) for name, role in roles.items()}


@pytest.fixture
async def w(market: Market, agents: dict[str, Agent]) -> World:
    clock, net = Clock(), Net()
    bank_ctx = Ctx(agents[BANK], market, clock, net)
    gateway = Gateway(ctx=bank_ctx, key=x25519.X25519PrivateKey.generate(),
                      cards={NUMBER: (BUYER, EXPIRY), OTHER_NUMBER: (OTHER_BUYER, EXPIRY)},
                      balances={BUYER: 100_000, OTHER_BUYER: 100_000, SELLER: 0,
                                OTHER_SELLER: 0, "@card-held": 0},
                      certs={a.agent_id: a.cert for a in agents.values()})
    gateway.key_statement = await bank_ctx.sign(GATEWAY_KEY, GatewayKey(
        bank=BANK, public_key=gateway.key.public_key().public_bytes_raw(),
        expires_ms=NOW_MS + 30 * DAY_MS).to_body())
    buyer = Ctx(agents[BUYER], market, clock, net, cards=Cards(NUMBER, EXPIRY))
    other_buyer = Ctx(agents[OTHER_BUYER], market, clock, net,
                      cards=Cards(OTHER_NUMBER, EXPIRY))
    seller = Ctx(agents[SELLER], market, clock, net)
    other_seller = Ctx(agents[OTHER_SELLER], market, clock, net)
    merchant = Merchant(seller)
    net.handlers.update({BANK: gateway.handle, SELLER: merchant.handle})
    return World(market, clock, net, gateway, agents[BANK], buyer, other_buyer, seller,
                 other_seller, merchant)


def code_of(excinfo: pytest.ExceptionInfo[ServiceError]) -> tuple[str, Any]:
    return excinfo.value.code, excinfo.value.detail


# --- the dual signature and the sealed PI, pure ----------------------------------------

def test_luhn_accepts_valid_numbers_and_refuses_one_digit_off() -> None:
    for good in (NUMBER, OTHER_NUMBER, "4111111111111111", "5555555555554444", "0"):
        assert luhn_ok(good)
    fullwidth = "\uff14\uff11\uff11\uff11"  # digits to str.isdigit, not ASCII
    for bad in ("4111111111111112", "4539578763621487", "", "45395787636214a6", fullwidth):
        assert not luhn_ok(bad)


def test_a_pi_whose_number_fails_luhn_is_bad_instructions() -> None:
    with pytest.raises(BadInstructions) as excinfo:
        PaymentInstructions(number="4111111111111112", expiry=EXPIRY, amount=eur(1),
                            merchant=SELLER, order=bytes(32), idempotency_key="k",
                            nonce=bytes(16))
    assert code_of(excinfo) == ("card.bad_instructions",
                                {"type": "card.payment_instructions", "field": "number"})


def test_the_hpke_suite_is_the_escrows() -> None:
    from semper.services.fairexchange._escrow import SUITE as ESCROW_SUITE
    key = x25519.X25519PrivateKey.generate()
    assert ESCROW_SUITE.decrypt(SUITE.encrypt(b"x", key.public_key(), info=b"i"), key,
                                info=b"i") == b"x"


@pytest.mark.parametrize(("expiry", "now", "expired"), [
    ("2026-11", "2026-11-30T23:59:59.999", False),
    ("2026-11", "2026-12-01T00:00:00.000", True),
    ("2026-12", "2026-12-31T23:59:59.999", False),
    ("2026-12", "2027-01-01T00:00:00.000", True),
    ("9999-12", "9999-12-31T23:59:59.999", False),
])
def test_a_card_is_good_through_the_last_millisecond_of_its_month(
        expiry: str, now: str, expired: bool) -> None:
    when = dt.datetime.fromisoformat(now).replace(tzinfo=dt.UTC)
    assert card_expired(expiry, (when - EPOCH) // dt.timedelta(milliseconds=1)) is expired


@settings(max_examples=30, deadline=None)
@given(st.dictionaries(st.sampled_from(["oi", "pimd", "dual", "sealed_pi",
                                        "cardholder_certificate", "amount", "oimd",
                                        "authorization_id", "idempotency_key", "final",
                                        "key", "bank_certificate"]),
                       st.one_of(st.none(), st.integers(), st.binary(max_size=40),
                                 st.text(max_size=10), st.booleans(),
                                 st.dictionaries(st.text(max_size=5), st.integers(),
                                                 max_size=2))))
def test_hostile_wire_bodies_raise_only_coded_refusals(value: dict[str, Any]) -> None:
    for cls in (CardProof, AuthorizeRequest, CaptureRequest, GatewayKeyAnswer,
                OrderInformation, PaymentInstructions):
        try:
            cls.from_wire(value)
        except ServiceError as exc:
            assert exc.code in ("payment.bad_request", "card.bad_instructions")


# --- end to end ------------------------------------------------------------------------

async def test_a_card_payment_authorises_captures_and_refunds_as_credit(w: World) -> None:
    total = w.total()
    request = w.request(1250)
    result = await w.module.pay(w.buyer, request)
    assert (result.module, result.payer, result.payee, result.amount) == (
        "card", BUYER, SELLER, eur(1250))
    assert result.settlement.type == "payment.card_captured"
    assert w.gateway.balances[BUYER] == 100_000 - 1250
    assert w.gateway.balances[SELLER] == 1250 and w.gateway.balances["@card-held"] == 0
    assert w.total() == total
    # The seller archived the dual signature and the capture; the buyer the capture.
    assert {s.type for s in w.seller.records} >= {"card.dual_signature",
                                                  "payment.card_captured"}
    assert result.settlement in w.buyer.records
    refund = await w.module.refund(w.seller, result, eur(250), "damaged", "r-1")
    assert refund.payee == BUYER and w.gateway.balances[BUYER] == 100_000 - 1000
    assert w.total() == total


async def test_settles_names_the_order_amount_and_payee_of_a_capture(w: World) -> None:
    result = await w.module.pay(w.buyer, w.request(640, reference=b"order-fair"))
    args = {"bank_certificate": result.bank_certificate, "root": w.buyer.root,
            "crl": w.buyer.crl, "now": w.buyer.now(), "payer": BUYER, "payee": SELLER,
            "amount": eur(640), "reference": b"order-fair", "idempotency_key": "k-1"}
    w.module.settles(result.settlement, **args)
    for change in ({"reference": b"order-other"}, {"amount": eur(641)},
                   {"payee": OTHER_SELLER}):
        with pytest.raises(BadConfirmation):
            w.module.settles(result.settlement, **{**args, **change})


async def test_a_retried_payment_is_authorised_and_captured_once(w: World) -> None:
    request = w.request(700)
    first = await w.module.pay(w.buyer, request)
    again = await w.module.pay(w.buyer, request)  # a fresh nonce and dual signature
    assert again.settlement == first.settlement
    assert w.gateway.balances[BUYER] == 100_000 - 700
    assert w.module.same_payment((await w.proof(units=700)).to_wire(), first)
    assert not w.module.same_payment((await w.proof(units=701)).to_wire(), first)
    assert not w.module.same_payment({"junk": 1}, first)


async def test_the_seller_never_receives_a_card_number_or_expiry(w: World) -> None:
    await w.module.pay(w.buyer, w.request(999, reference=b"order-privacy"))
    got = w.net.received[SELLER]
    assert len(got) == 3  # payment.accept, the authorisation, the capture
    for needle in (NUMBER.encode(), EXPIRY.encode(), NUMBER[-4:].encode() + b"\x00"):
        assert all(needle not in data for data in got)
    for statement in w.seller.records:
        data = statement.to_bytes()
        assert NUMBER.encode() not in data and EXPIRY.encode() not in data
    # ... and the gateway never receives the order information (its description).
    w.request(998, reference=b"order-privacy-2")
    proof = await w.proof(units=998, reference=b"order-privacy-2",
                          description="The Secret Garden")
    answer = await w.buyer.request(SELLER, PAYMENT_SERVICE, PAYMENT_ACCEPT, AcceptRequest(
        module="card", reference=b"order-privacy-2", proof=proof.to_wire()).to_wire())
    assert answer["settlement"]["type"] == "payment.card_captured"
    assert any(b"The Secret Garden" in data for data in w.net.received[SELLER])
    for data in w.net.received[BANK]:
        assert b"order-privacy" not in data and b"Secret Garden" not in data


# --- the merchant's check --------------------------------------------------------------

async def test_a_dual_signature_over_another_oi_fails_at_the_merchant(w: World) -> None:
    proof = await w.proof()
    other = await w.proof(reference=b"order-2")
    # The OI of order-1 with the dual signature (and PIMD) of order-2.
    moved = dataclasses.replace(proof, dual=other.dual, pimd=other.pimd)
    invoice = Invoice(amount=eur(1250), reference=b"order-1", payer=BUYER)
    with pytest.raises(BadDualSignature) as excinfo:
        check_card_proof(moved, invoice=invoice, merchant=SELLER, root=w.buyer.root,
                         crl=w.buyer.crl, now=w.buyer.now())
    assert excinfo.value.detail["field"] == "oimd"
    # An OI edited after signing (its description) is another OI too.
    edited = dataclasses.replace(proof, oi=dataclasses.replace(proof.oi, description="two"))
    with pytest.raises(BadDualSignature):
        check_card_proof(edited, invoice=invoice, merchant=SELLER, root=w.buyer.root,
                         crl=w.buyer.crl, now=w.buyer.now())
    # Another PIMD than the signed one.
    with pytest.raises(BadDualSignature) as excinfo:
        check_card_proof(dataclasses.replace(proof, pimd=bytes(32)), invoice=invoice,
                         merchant=SELLER, root=w.buyer.root, crl=w.buyer.crl,
                         now=w.buyer.now())
    assert excinfo.value.detail["field"] == "pimd"
    assert check_card_proof(proof, invoice=invoice, merchant=SELLER, root=w.buyer.root,
                            crl=w.buyer.crl, now=w.buyer.now()).cardholder == BUYER


async def test_the_merchant_refuses_an_oi_for_another_order_amount_merchant_or_payer(
        w: World) -> None:
    proof = await w.proof()
    trust = {"root": w.buyer.root, "crl": w.buyer.crl, "now": w.buyer.now()}
    for invoice, merchant, field_ in (
            (Invoice(amount=eur(1250), reference=b"order-9"), SELLER, "order"),
            (Invoice(amount=eur(1251), reference=b"order-1"), SELLER, "amount"),
            (Invoice(amount=eur(1250), reference=b"order-1"), OTHER_SELLER, "merchant")):
        with pytest.raises(BadRequest) as excinfo:
            check_card_proof(proof, invoice=invoice, merchant=merchant, **trust)
        assert excinfo.value.detail["field"] == field_
    with pytest.raises(BadDualSignature) as excinfo:
        check_card_proof(proof, invoice=Invoice(amount=eur(1250), reference=b"order-1",
                                                payer=OTHER_BUYER), merchant=SELLER, **trust)
    assert excinfo.value.detail["field"] == "signer"


async def test_a_dual_signature_whose_pomd_is_not_its_digests_is_refused(w: World) -> None:
    proof = await w.proof()
    body = DualSignature.from_statement(proof.dual)
    forged = await w.buyer.sign("card.dual_signature", {**body.to_body(), "pomd": bytes(32)})
    with pytest.raises(BadDualSignature) as excinfo:
        check_card_proof(dataclasses.replace(proof, dual=forged),
                         invoice=Invoice(amount=eur(1250), reference=b"order-1"),
                         merchant=SELLER, root=w.buyer.root, crl=w.buyer.crl,
                         now=w.buyer.now())
    assert excinfo.value.detail["field"] == "pomd"


# --- the gateway's check ---------------------------------------------------------------

async def test_a_pi_moved_to_another_order_fails_at_the_gateway(w: World) -> None:
    total = w.total()
    proof_a = await w.proof(reference=b"order-a")
    proof_b = await w.proof(reference=b"order-b")
    # The merchant sends order a's sealed PI with order b's OIMD and dual signature.
    moved = dataclasses.replace(w.authorize_request(proof_b), sealed_pi=proof_a.sealed_pi)
    with pytest.raises(BadInstructions) as excinfo:
        await w.seller.request(BANK, BANK_SERVICE, BANK_CARD_AUTHORIZE, moved.to_wire())
    assert excinfo.value.detail["field"] == "sealed_pi"
    # ... or with order a's dual signature and order b's OIMD.
    moved = dataclasses.replace(w.authorize_request(proof_a), oimd=oimd_of(proof_b.oi))
    with pytest.raises(BadDualSignature) as excinfo:
        await w.seller.request(BANK, BANK_SERVICE, BANK_CARD_AUTHORIZE, moved.to_wire())
    assert excinfo.value.detail["field"] == "oimd"
    # ... or order b's dual signature and OIMD, order a's PI sealed for order b's OIMD:
    # a PI that is not the one signed.
    proof_a_as_b = await w.proof(reference=b"order-b")
    mixed = dataclasses.replace(w.authorize_request(proof_b), sealed_pi=proof_a_as_b.sealed_pi)
    with pytest.raises(BadDualSignature) as excinfo:
        await w.seller.request(BANK, BANK_SERVICE, BANK_CARD_AUTHORIZE, mixed.to_wire())
    assert excinfo.value.detail["field"] == "pimd"
    assert w.total() == total and w.gateway.balances[BUYER] == 100_000


async def test_a_seller_that_alters_the_amount_is_refused_by_the_gateway(w: World) -> None:
    proof = await w.proof(units=1250)
    for amount in (eur(12_500), eur(1249), Amount("USD", 1250)):
        with pytest.raises(BadInstructions) as excinfo:
            await w.seller.request(BANK, BANK_SERVICE, BANK_CARD_AUTHORIZE,
                                   w.authorize_request(proof, amount=amount).to_wire())
        assert excinfo.value.detail["field"] == "amount"
    assert w.gateway.balances[BUYER] == 100_000 and w.gateway.auths == {}


async def test_the_gateway_refuses_a_pi_for_another_merchant(w: World) -> None:
    proof = await w.proof(merchant=OTHER_SELLER)
    with pytest.raises(BadInstructions) as excinfo:
        await w.seller.request(BANK, BANK_SERVICE, BANK_CARD_AUTHORIZE,
                               w.authorize_request(proof).to_wire())
    assert excinfo.value.detail["field"] == "merchant"


async def test_a_pi_sealed_to_another_key_does_not_open(w: World) -> None:
    proof = await w.proof()
    oimd = oimd_of(proof.oi)
    stranger = x25519.X25519PrivateKey.generate()
    with pytest.raises(BadInstructions):
        check_authorize(w.authorize_request(proof), merchant=SELLER, private_keys=[stranger],
                        root=w.buyer.root, crl=w.buyer.crl, now=w.buyer.now())
    # The gateway's previous key still opens it when listed (rotation).
    checked = check_authorize(w.authorize_request(proof), merchant=SELLER,
                              private_keys=[stranger, w.gateway.key], root=w.buyer.root,
                              crl=w.buyer.crl, now=w.buyer.now())
    assert checked.oimd == oimd and checked.cardholder == BUYER


async def test_unknown_card_other_holder_and_wrong_expiry_are_one_code(w: World) -> None:
    cases = [
        await w.proof(number="4111111111111111"),          # no such card
        await w.proof(number=OTHER_NUMBER),                # bob's card, ann's signature
        await w.proof(expiry=f"{NOW.year + 3:04d}-07"),    # another expiry
    ]
    for proof in cases:
        with pytest.raises(UnknownCard) as excinfo:
            await w.seller.request(BANK, BANK_SERVICE, BANK_CARD_AUTHORIZE,
                                   w.authorize_request(proof).to_wire())
        assert code_of(excinfo)[0] == "card.unknown_card"
    assert w.gateway.balances[BUYER] == 100_000


async def test_an_expired_card_and_a_short_balance_are_refused(w: World) -> None:
    past = f"{NOW.year - 1:04d}-01"
    w.gateway.cards[NUMBER] = (BUYER, past)
    with pytest.raises(ExpiredCard) as excinfo:
        await w.seller.request(BANK, BANK_SERVICE, BANK_CARD_AUTHORIZE,
                               w.authorize_request(await w.proof(expiry=past)).to_wire())
    assert code_of(excinfo) == ("card.expired_card", {})  # no expiry: the merchant reads it
    w.gateway.cards[NUMBER] = (BUYER, EXPIRY)
    proof = await w.proof()
    w.gateway.balances[BUYER] = 1249
    with pytest.raises(Declined) as excinfo:
        await w.seller.request(BANK, BANK_SERVICE, BANK_CARD_AUTHORIZE,
                               w.authorize_request(proof).to_wire())
    assert code_of(excinfo) == ("card.declined", {"amount": eur(1250).to_wire()})
    assert w.gateway.balances[BUYER] == 1249 and w.gateway.auths == {}


def test_decide_authorization_without_an_account_or_in_another_currency() -> None:
    from semper.services.payment.card import Authorizing
    pi = PaymentInstructions(number=NUMBER, expiry=EXPIRY, amount=eur(5), merchant=SELLER,
                             order=bytes(32), idempotency_key="k", nonce=bytes(16))
    checked = Authorizing(pi=pi, pimd=pimd_of(pi), oimd=bytes(32), cardholder=BUYER,
                          merchant=SELLER, authorization_id="a")
    with pytest.raises(Declined):
        decide_authorization(checked, holder=BUYER, expiry=EXPIRY, now_ms=NOW_MS, balance=None)
    with pytest.raises(Declined):  # the account's currency is not named to the merchant
        decide_authorization(checked, holder=BUYER, expiry=EXPIRY, now_ms=NOW_MS,
                             balance=Amount("USD", 10))
    decide_authorization(checked, holder=BUYER, expiry=EXPIRY, now_ms=NOW_MS, balance=eur(5))


# --- capture ---------------------------------------------------------------------------

async def test_captures_up_to_the_authorised_amount_by_its_merchant_only(w: World) -> None:
    proof = await w.proof(units=1000)
    answer = AuthorizeAnswer.from_wire(await w.seller.request(
        BANK, BANK_SERVICE, BANK_CARD_AUTHORIZE, w.authorize_request(proof).to_wire()))
    auth_id = answer.authorization.body["authorization_id"]
    assert w.gateway.balances["@card-held"] == 1000

    def take(units: int, key: str) -> dict[str, Any]:
        return CaptureRequest(authorization_id=auth_id, amount=eur(units),
                              idempotency_key=key).to_wire()

    with pytest.raises(UnknownAuthorization) as excinfo:
        await w.other_seller.request(BANK, BANK_SERVICE, BANK_CARD_CAPTURE, take(10, "c-0"))
    assert excinfo.value.detail == {"authorization_id": auth_id}
    captured = CaptureAnswer.from_wire(await w.seller.request(
        BANK, BANK_SERVICE, BANK_CARD_CAPTURE, take(600, "c-1"))).captured
    verify_captured(captured, bank_certificate=w.bank.cert, root=w.buyer.root,
                    crl=w.buyer.crl, now=w.buyer.now(), expected_merchant=SELLER,
                    expected_amount=eur(600), expected_oimd=oimd_of(proof.oi),
                    expected_authorization_id=auth_id, expected_bank=BANK)
    with pytest.raises(OverAuthorized) as excinfo:
        await w.seller.request(BANK, BANK_SERVICE, BANK_CARD_CAPTURE, take(401, "c-2"))
    assert excinfo.value.detail["requested"] == eur(401).to_wire()
    await w.seller.request(BANK, BANK_SERVICE, BANK_CARD_CAPTURE, take(400, "c-3"))
    assert w.gateway.balances[SELLER] == 1000 and w.gateway.balances["@card-held"] == 0
    # A capture repeated under its key is the first answer and moves nothing.
    again = CaptureAnswer.from_wire(await w.seller.request(
        BANK, BANK_SERVICE, BANK_CARD_CAPTURE, take(600, "c-1"))).captured
    assert again == captured and w.gateway.balances[SELLER] == 1000


def test_decide_capture_after_expiry_or_close_or_in_another_currency() -> None:
    from semper.services.payment.card import Authorization
    body = Authorization(bank=BANK, merchant=SELLER, amount=eur(10), oimd=bytes(32),
                         authorization_id="a1", expires_ms=NOW_MS)
    for kw in ({"now_ms": NOW_MS + 1}, {"now_ms": NOW_MS, "closed": True}):
        with pytest.raises(UnknownAuthorization):
            decide_capture(body, requester=SELLER, amount=eur(1), captured=eur(0), **kw)
    with pytest.raises(WrongCurrency):
        decide_capture(body, requester=SELLER, amount=Amount("USD", 1), captured=eur(0),
                       now_ms=NOW_MS)
    assert decide_capture(body, requester=SELLER, amount=eur(10), captured=eur(0),
                          now_ms=NOW_MS) == eur(10)
    assert capture(body, amount=eur(3), entry=7).amount == eur(3)


# --- the gateway key -------------------------------------------------------------------

async def test_a_gateway_key_not_from_our_bank_or_expired_is_refused(w: World) -> None:
    trust = {"root": w.buyer.root, "crl": w.buyer.crl, "now": w.buyer.now()}
    key = w.gateway.key_statement
    assert key is not None
    assert check_gateway_key(key, bank_certificate=w.bank.cert, expected_bank=BANK, **trust)
    body = GatewayKey.from_statement(key)
    cases = [
        (await w.seller.sign(GATEWAY_KEY, dataclasses.replace(body, bank=SELLER).to_body()),
         w.seller.certificate, BANK, "signer"),                          # not a bank
        (key, w.bank.cert, "bank.other", "signer"),                      # another bank
        (await w.gateway.ctx.sign(GATEWAY_KEY, dataclasses.replace(
            body, bank="bank.other").to_body()), w.bank.cert, BANK, "bank"),
        (await w.gateway.ctx.sign(GATEWAY_KEY, dataclasses.replace(
            body, expires_ms=NOW_MS - 1).to_body()), w.bank.cert, BANK, "expires_ms"),
    ]
    for statement, cert, bank, field_ in cases:
        with pytest.raises(BadGatewayKey) as excinfo:
            check_gateway_key(statement, bank_certificate=cert, expected_bank=bank, **trust)
        assert code_of(excinfo)[0] == "card.bad_gateway_key"
        assert excinfo.value.detail["field"] == field_
    # The cardholder pays nothing with a bad key.
    w.gateway.key_statement = cases[3][0]
    with pytest.raises(BadGatewayKey):
        await w.module.pay(w.buyer, w.request(5))
    assert w.gateway.balances[BUYER] == 100_000


async def test_gateway_statements_that_do_not_verify_are_bad_confirmations(w: World) -> None:
    from semper.services.payment.card import verify_authorization
    proof = await w.proof()
    answer = AuthorizeAnswer.from_wire(await w.seller.request(
        BANK, BANK_SERVICE, BANK_CARD_AUTHORIZE, w.authorize_request(proof).to_wire()))
    trust = {"root": w.buyer.root, "crl": w.buyer.crl, "now": w.buyer.now()}
    oimd = oimd_of(proof.oi)
    good = verify_authorization(answer.authorization, bank_certificate=w.bank.cert,
                                expected_merchant=SELLER, expected_amount=eur(1250),
                                expected_oimd=oimd, expected_bank=BANK, **trust)
    for kw, field_ in (({"expected_amount": eur(1)}, "amount"),
                       ({"expected_merchant": OTHER_SELLER}, "merchant"),
                       ({"expected_oimd": bytes(32)}, "oimd")):
        args = {"expected_merchant": SELLER, "expected_amount": eur(1250),
                "expected_oimd": oimd, **kw}
        with pytest.raises(BadConfirmation) as excinfo:
            verify_authorization(answer.authorization, bank_certificate=w.bank.cert,
                                 **args, **trust)
        assert excinfo.value.detail["field"] == field_
    # Signed by the seller itself (not a bank): the signer is at fault.
    forged = await w.seller.sign(AUTHORIZATION, good.to_body())
    with pytest.raises(BadConfirmation) as excinfo:
        verify_authorization(forged, bank_certificate=w.seller.certificate,
                             expected_merchant=SELLER, expected_amount=eur(1250),
                             expected_oimd=oimd, **trust)
    assert excinfo.value.detail["field"] == "signer"


def test_every_card_code_is_a_card_error() -> None:
    codes = {cls.code for cls in (BadDualSignature, BadGatewayKey, BadInstructions, Declined,
                                  ExpiredCard, OverAuthorized, UnknownAuthorization,
                                  UnknownCard)}
    assert codes == {"card.bad_dual_signature", "card.bad_gateway_key", "card.bad_instructions",
                     "card.declined", "card.expired_card", "card.over_authorized",
                     "card.unknown_authorization", "card.unknown_card"}
    assert all(issubclass(c, CardError) for c in (BadDualSignature, Declined))
    assert CardError.code == "card.error"

