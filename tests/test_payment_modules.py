"""The transfer and cheque modules driven end to end through the payment manager, with
in-memory contexts and an in-memory bank.

The bank here is test scaffolding for the pure layer only: dicts instead of SQLite,
built from the same checks and decisions (``check_*``, ``decide_*``) the real bank
role uses. Every body crosses the "network" through the wire codec, so a value
outside the value model fails here as it would on a channel. After every scenario the
sum of all balances is what it was: no money created or lost.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
from dataclasses import dataclass, field
from typing import Any

import pytest
from cryptography import x509
from pki import NOW, Market
from pki import TestAgent as Agent  # not collected as a test class

from semper.services import Amount
from semper.services.payment import (
    BANK_REFUND,
    BANK_SERVICE,
    MODULES_GROUP,
    PAYMENT_ACCEPT,
    PAYMENT_CAPABILITIES,
    PAYMENT_SERVICE,
    REFUND_CONFIRMATION,
    AcceptRequest,
    BadConfirmation,
    BadRequest,
    Capabilities,
    IdempotencyConflict,
    IdempotencyRecord,
    InsufficientFunds,
    Invoice,
    Limits,
    ModuleOffer,
    NoCommonInstrument,
    PaymentManager,
    PaymentModule,
    PaymentRequest,
    PaymentResult,
    RefundAnswer,
    RefundExceedsPayment,
    RefundRequest,
    RefundResult,
    Replay,
    UnknownAccount,
    UnknownModule,
    UnknownPayment,
    WrongCurrency,
    check_refund_order,
    confirm_refund,
    decide_idempotency,
    decide_refund,
    load_modules,
    verify_refund_confirmation,
)
from semper.services.payment.cheque import (
    BANK_DEPOSIT_CHEQUE,
    BANK_STOP_CHEQUE,
    CHEQUE_CLEARED,
    ChequeExpired,
    ChequeModule,
    ChequeProof,
    ChequeStopped,
    DepositAnswer,
    StopCheque,
    check_cheque,
    cheque_retry_digest,
    cheque_serial,
    clear_cheque,
    decide_cheque_deposit,
    is_cheque_retry,
)
from semper.services.payment.transfer import (
    BANK_TRANSFER,
    TRANSFER_CONFIRMATION,
    TransferModule,
    TransferProof,
    TransferRequest,
    check_transfer_order,
    confirm_transfer,
    decide_transfer,
)
from semper.services.statements import BadSignature, Statement, sign_statement
from semper.transport import decode_body, encode_body

EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
NOW_MS = (NOW - EPOCH) // dt.timedelta(milliseconds=1)
REF = b"order-digest-0123456789abcdef012"


def eur(units: int) -> Amount:
    return Amount("EUR", units)


# --- scaffolding: a clock, a network, contexts, a bank --------------------------------


@dataclass
class Clock:
    ms: int = NOW_MS


@dataclass
class Net:
    """Routes ``ctx.request`` to the peer's handler, through the wire codec."""

    handlers: dict[str, Any] = field(default_factory=dict)
    log: list[tuple[str, str, str, str]] = field(default_factory=list)

    async def request(self, sender: str, peer: str, service: str, op: str, body: Any) -> Any:
        self.log.append((sender, peer, service, op))
        wire = decode_body(encode_body(body))
        answer = await self.handlers[peer](sender, service, op, wire)
        return decode_body(encode_body(answer))


@dataclass
class Ctx:
    """An agent's side of the context protocols, in memory."""

    me: Agent
    bank_id: str
    market: Market
    clock: Clock
    net: Net
    signed: list[Statement] = field(default_factory=list)
    records: list[Statement] = field(default_factory=list)

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

    async def sign(self, type: str, body: dict[str, Any]) -> Statement:
        statement = sign_statement(type, body, key=self.me.key, certificate=self.me.cert,
                                   now_ms=self.clock.ms, nonce=os.urandom(16))
        self.signed.append(statement)
        return statement

    async def record(self, statement: Statement, certificate: x509.Certificate) -> None:
        self.records.append(statement)

    async def request(self, peer: str, service: str, op: str, body: Any) -> Any:
        return await self.net.request(self.our_id, peer, service, op, body)

    def now(self) -> dt.datetime:
        return EPOCH + dt.timedelta(milliseconds=self.clock.ms)


@dataclass
class FakeBank:
    """The bank ops of docs/protocol.md section 8, over dicts."""

    me: Agent
    ctx: Ctx
    certificates: dict[str, x509.Certificate]  # what the channel would authenticate
    balances: dict[tuple[str, str], int] = field(default_factory=dict)
    requests: dict[tuple[str, str], tuple[IdempotencyRecord, bytes]] = field(default_factory=dict)
    cheques: dict[tuple[str, str], tuple[str, bytes | None, bytes | None]] = field(
        default_factory=dict)
    #: settlement digest -> [payer, payee, amount, refunded minor units]
    payments: dict[bytes, list[Any]] = field(default_factory=dict)
    entries: int = 0

    def balance(self, agent: str, currency: str) -> Amount:
        if (agent, currency) not in self.balances:
            raise UnknownAccount(f"no {currency} account for {agent}",
                                 detail={"account": agent})
        return Amount(currency, self.balances[(agent, currency)])

    def move(self, payer: str, payee: str, amount: Amount) -> int:
        self.balance(payee, amount.currency)
        self.balances[(payer, amount.currency)] -= amount.minor_units
        self.balances[(payee, amount.currency)] += amount.minor_units
        self.entries += 1
        return self.entries

    def trust(self, requester: str) -> dict[str, Any]:
        return {"root": self.ctx.root, "crl": self.ctx.crl, "now": self.ctx.now()}

    async def handle(self, requester: str, service: str, op: str, body: Any) -> Any:
        assert service == BANK_SERVICE
        return await getattr(self, op)(requester, body)

    async def _sign(self, body: Any) -> Statement:
        return await self.ctx.sign(body.TYPE, body.to_body())

    def _replay(self, requester: str, key: str, content: dict[str, Any]) -> Statement | None:
        stored = self.requests.get((requester, key))
        decision = decide_idempotency(key, stored[0] if stored else None, content)
        return Statement.from_bytes(decision.outcome) if isinstance(decision, Replay) else None

    async def transfer(self, requester: str, body: Any) -> Any:
        order = TransferRequest.from_wire(body).order
        checked = check_transfer_order(order, payer_certificate=self.certificates[requester],
                                       bank_id=self.me.agent_id, requester=requester,
                                       **self.trust(requester))
        answer = self._replay(requester, checked.idempotency_key, checked.to_body())
        if answer is None:
            decide_transfer(checked, balance=self.balance(requester, checked.amount.currency))
            entry = self.move(checked.payer, checked.payee, checked.amount)
            answer = await self._sign(confirm_transfer(order, entry))
            self._store(requester, checked.idempotency_key, checked.to_body(), answer)
            self.payments[answer.digest] = [checked.payer, checked.payee, checked.amount, 0]
        return TransferProof(confirmation=answer, bank_certificate=self.me.cert).to_wire()

    async def deposit_cheque(self, requester: str, body: Any) -> Any:
        proof = ChequeProof.from_wire(body)
        cheque = check_cheque(proof.cheque, drawer_certificate=proof.drawer_certificate,
                              bank_id=self.me.agent_id, **self.trust(requester))
        status, digest, answer = self.cheques.get((cheque.payer, cheque.serial),
                                                  ("", None, None))
        if is_cheque_retry(cheque, depositor=requester, stored_digest=digest):
            assert answer is not None
            cleared = Statement.from_bytes(answer)
        else:
            decide_cheque_deposit(cheque, depositor=requester, now_ms=self.ctx.now_ms(),
                                  balance=Amount(cheque.amount.currency, self.balances.get(
                                      (cheque.payer, cheque.amount.currency), 0)),
                                  stopped=status == "stopped",
                                  already_cleared=status == "cleared")
            entry = self.move(cheque.payer, cheque.payee, cheque.amount)
            cleared = await self._sign(clear_cheque(proof.cheque, entry))
            self.cheques[(cheque.payer, cheque.serial)] = (
                "cleared", cheque_retry_digest(cheque), cleared.to_bytes())
            self.payments[cleared.digest] = [cheque.payer, cheque.payee, cheque.amount, 0]
        return DepositAnswer(cleared=cleared, bank_certificate=self.me.cert).to_wire()

    async def refund(self, requester: str, body: Any) -> Any:
        refund_order = RefundRequest.from_wire(body).refund_order
        checked = check_refund_order(refund_order, certificate=self.certificates[requester],
                                     requester=requester, **self.trust(requester))
        answer = self._replay(requester, checked.idempotency_key, checked.to_body())
        if answer is None:
            if checked.original not in self.payments:
                raise UnknownPayment("no such payment", detail={"original": checked.original})
            payer, payee, amount, refunded = self.payments[checked.original]
            assert (payee, payer) == (checked.payer, checked.payee)
            total = decide_refund(amount, Amount(amount.currency, refunded), checked.amount)
            entry = self.move(checked.payer, checked.payee, checked.amount)
            self.payments[checked.original][3] = total.minor_units
            answer = await self._sign(confirm_refund(refund_order, entry))
            self._store(requester, checked.idempotency_key, checked.to_body(), answer)
        return RefundAnswer(confirmation=answer, bank_certificate=self.me.cert).to_wire()

    async def stop_cheque(self, requester: str, body: Any) -> Any:
        serial = StopCheque.from_wire(body).serial
        self.cheques.setdefault((requester, serial), ("stopped", None, None))
        return StopCheque(serial=serial).to_wire()

    def _store(self, requester: str, key: str, content: dict[str, Any],
               answer: Statement) -> None:
        fresh = decide_idempotency(key, None, content)
        record = IdempotencyRecord(digest=fresh.digest, outcome=answer.to_bytes())  # type: ignore[union-attr]
        self.requests[(requester, key)] = (record, answer.to_bytes())


def caps(*modules: str, currency: str = "EUR", low: int = 1,
         high: int = 10**9) -> Capabilities:
    return Capabilities(modules=tuple(
        ModuleOffer(name=m, limits=(Limits(minimum=Amount(currency, low),
                                           maximum=Amount(currency, high)),))
        for m in modules))


@dataclass
class Payee:
    """A seller answering the ``payment`` service with a manager and its invoices."""

    ctx: Ctx
    manager: PaymentManager
    invoices: dict[bytes, Invoice] = field(default_factory=dict)
    accepted: list[PaymentResult] = field(default_factory=list)

    async def handle(self, requester: str, service: str, op: str, body: Any) -> Any:
        assert service == PAYMENT_SERVICE
        if op == PAYMENT_CAPABILITIES:
            return self.manager.answer_capabilities(body)
        assert op == PAYMENT_ACCEPT
        request = AcceptRequest.from_wire(body)
        invoice = dataclasses.replace(self.invoices[request.reference], payer=requester)
        result = await self.manager.accept(self.ctx, request, invoice=invoice)
        self.accepted.append(result)
        return result.to_wire()


@dataclass
class Market3:
    market: Market
    clock: Clock
    net: Net
    bank: FakeBank
    buyer: Ctx
    seller: Ctx
    payee: Payee
    payer: PaymentManager

    def total(self) -> int:
        return sum(self.bank.balances.values())

    def balances(self) -> tuple[int, int]:
        b = self.bank.balances
        return b[("buyer.ann", "EUR")], b[("seller.books", "EUR")]

    def request(self, units: int = 1250, key: str = "k-1",
                reference: bytes = REF) -> PaymentRequest:
        self.payee.invoices.setdefault(reference, Invoice(amount=eur(units), reference=reference))
        return PaymentRequest(payee="seller.books", amount=eur(units), reference=reference,
                              idempotency_key=key)


@pytest.fixture
def m(market: Market) -> Market3:
    clock, net = Clock(), Net()
    agents = {a.agent_id: a for a in (market.agent("bank.one", "bank"),
                                      market.agent("buyer.ann", "buyer"),
                                      market.agent("seller.books", "seller"))}

    def ctx(agent_id: str) -> Ctx:
        return Ctx(agents[agent_id], "bank.one", market, clock, net)

    bank = FakeBank(agents["bank.one"], ctx("bank.one"),
                    {i: a.cert for i, a in agents.items()})
    bank.balances = {("buyer.ann", "EUR"): 100_000, ("seller.books", "EUR"): 5_000,
                     ("buyer.ann", "USD"): 7_000}
    modules = load_modules()
    seller = ctx("seller.books")
    payee = Payee(seller, PaymentManager(modules=modules, capabilities=caps("transfer", "cheque")))
    net.handlers = {"bank.one": bank.handle, "seller.books": payee.handle}
    payer = PaymentManager(modules=modules, capabilities=caps("transfer", "cheque"))
    return Market3(market, clock, net, bank, ctx("buyer.ann"), seller, payee, payer)


TOTAL = 112_000


# --- loading -----------------------------------------------------------------------


def test_modules_are_found_through_entry_points() -> None:
    modules = load_modules()
    assert set(modules) >= {"transfer", "cheque"}
    assert isinstance(modules["transfer"], TransferModule)
    assert isinstance(modules["cheque"], ChequeModule)
    assert all(isinstance(module, PaymentModule) for module in modules.values())
    assert MODULES_GROUP == "semper.payment_modules"
    assert load_modules("semper.no_such_group") == {}


# --- transfer ------------------------------------------------------------------------


async def test_a_transfer_end_to_end(m: Market3) -> None:
    result = await m.payer.pay(m.buyer, m.request())
    assert m.balances() == (100_000 - 1250, 5_000 + 1250)
    assert result.module == "transfer"  # the payer's first preference
    assert (result.payer, result.payee, result.amount, result.reference) == (
        "buyer.ann", "seller.books", eur(1250), REF)
    assert result.settlement.type == TRANSFER_CONFIRMATION
    assert result.bank == "bank.one"
    # Both sides hold the same settlement, and archived it.
    assert m.payee.accepted == [result]
    assert result.settlement in m.buyer.records and result.settlement in m.seller.records
    assert [entry[2:] for entry in m.net.log] == [
        (PAYMENT_SERVICE, PAYMENT_CAPABILITIES), (BANK_SERVICE, BANK_TRANSFER),
        (PAYMENT_SERVICE, PAYMENT_ACCEPT)]
    assert PaymentResult.from_wire(decode_body(encode_body(result.to_wire()))) == result
    assert m.total() == TOTAL


async def test_a_transfer_retried_with_the_same_key_pays_once(m: Market3) -> None:
    first = await m.payer.pay(m.buyer, m.request())
    again = await m.payer.pay(m.buyer, m.request())
    assert again.settlement == first.settlement  # the bank's first confirmation, replayed
    assert m.balances() == (100_000 - 1250, 5_000 + 1250)
    assert len(m.buyer.signed) == 2  # two orders signed, one applied
    assert m.total() == TOTAL


async def test_the_same_key_for_another_payment_is_refused(m: Market3) -> None:
    await m.payer.pay(m.buyer, m.request())
    with pytest.raises(IdempotencyConflict):
        await m.payer.pay(m.buyer, m.request(units=999, reference=b"another order"))
    assert m.balances() == (100_000 - 1250, 5_000 + 1250)
    assert m.total() == TOTAL


async def test_a_transfer_without_funds_moves_nothing(m: Market3) -> None:
    with pytest.raises(InsufficientFunds) as info:
        await m.payer.pay(m.buyer, m.request(units=100_001))
    assert info.value.code == "payment.insufficient_funds"
    assert m.balances() == (100_000, 5_000)
    assert not m.payee.accepted


async def test_a_payee_without_an_account_is_refused(m: Market3) -> None:
    assert ("seller.books", "USD") not in m.bank.balances
    m.payee.manager = PaymentManager(modules=load_modules(),
                                     capabilities=caps("transfer", currency="USD"))
    request = PaymentRequest(payee="seller.books", amount=Amount("USD", 100), reference=REF,
                             idempotency_key="usd")
    m.payee.invoices[REF] = Invoice(amount=Amount("USD", 100), reference=REF)
    m.payer = PaymentManager(modules=load_modules(), capabilities=caps("transfer",
                                                                       currency="USD"))
    with pytest.raises(UnknownAccount):
        await m.payer.pay(m.buyer, request)
    assert m.bank.balances[("buyer.ann", "USD")] == 7_000


async def test_no_common_instrument_pays_nothing(m: Market3) -> None:
    m.payee.manager = PaymentManager(modules=load_modules(), capabilities=caps("cheque", low=5000))
    with pytest.raises(NoCommonInstrument) as info:
        await m.payer.pay(m.buyer, m.request())
    assert info.value.detail["payee"] == caps("cheque", low=5000).to_wire()["modules"]
    assert m.balances() == (100_000, 5_000)
    big = m.request(units=9000, key="k-2", reference=b"a bigger order")
    with pytest.raises(NoCommonInstrument):  # the payer insists on one the payee lacks
        await m.payer.pay(m.buyer, big, only="transfer")
    assert (await m.payer.pay(m.buyer, big)).module == "cheque"
    assert m.total() == TOTAL


async def test_the_payee_refuses_a_proof_for_another_invoice(m: Market3) -> None:
    # The payer pays 10.00 against an invoice of 12.50: the bank moved the money, the
    # payee does not count it as paid (the seller refunds it or the buyer pays the rest).
    m.payee.invoices[REF] = Invoice(amount=eur(1250), reference=REF)
    request = PaymentRequest(payee="seller.books", amount=eur(1000), reference=REF,
                             idempotency_key="short")
    with pytest.raises(BadConfirmation) as info:
        await m.payer.pay(m.buyer, request, only="transfer")
    assert info.value.detail["field"] == "amount"
    assert not m.payee.accepted
    assert m.total() == TOTAL


async def test_a_tampered_confirmation_is_refused_by_the_payee(m: Market3) -> None:
    order_proof = await m.bank.transfer("buyer.ann", TransferRequest(order=await m.buyer.sign(
        "payment.transfer_order",
        {"payer": "buyer.ann", "payee": "seller.books", "bank": "bank.one",
         "amount": eur(100).to_wire(), "reference": REF, "idempotency_key": "t"})).to_wire())
    proof = TransferProof.from_wire(order_proof)
    raised = dataclasses.replace(proof.confirmation, body={**proof.confirmation.body,
                                                           "amount": eur(1250).to_wire()})
    forged = TransferProof(confirmation=raised, bank_certificate=proof.bank_certificate)
    m.payee.invoices[REF] = Invoice(amount=eur(1250), reference=REF)
    with pytest.raises(BadSignature):
        await m.payee.handle("buyer.ann", PAYMENT_SERVICE, PAYMENT_ACCEPT, AcceptRequest(
            module="transfer", reference=REF, proof=forged.to_wire()).to_wire())
    assert not m.payee.accepted


async def test_the_payee_refuses_unknown_modules_and_references(m: Market3) -> None:
    invoice = Invoice(amount=eur(1250), reference=REF)
    with pytest.raises(UnknownModule) as info:
        await m.payee.manager.accept(m.seller, AcceptRequest(module="ecash", reference=REF,
                                                             proof={}), invoice=invoice)
    assert info.value.detail == {"module": "ecash"}
    with pytest.raises(BadRequest) as info2:
        await m.payee.manager.accept(m.seller, AcceptRequest(module="transfer", reference=b"x",
                                                             proof={}), invoice=invoice)
    assert info2.value.detail["field"] == "reference"
    with pytest.raises(NoCommonInstrument):
        await m.payee.manager.accept(
            m.seller, AcceptRequest(module="transfer", reference=REF, proof={}),
            invoice=Invoice(amount=Amount("USD", 5), reference=REF))


# --- cheque --------------------------------------------------------------------------


async def test_a_cheque_end_to_end(m: Market3) -> None:
    result = await m.payer.pay(m.buyer, m.request(), only="cheque")
    assert result.module == "cheque"
    assert result.settlement.type == CHEQUE_CLEARED
    assert result.settlement.body["serial"] == cheque_serial("buyer.ann", "k-1")
    assert m.balances() == (100_000 - 1250, 5_000 + 1250)
    assert m.payee.accepted == [result]
    assert [entry[1:] for entry in m.net.log] == [
        ("seller.books", PAYMENT_SERVICE, PAYMENT_CAPABILITIES),
        ("seller.books", PAYMENT_SERVICE, PAYMENT_ACCEPT),
        ("bank.one", BANK_SERVICE, BANK_DEPOSIT_CHEQUE)]
    # The payee deposited: the cheque travelled payer -> payee -> bank.
    assert m.net.log[2][0] == "seller.books"
    assert result.settlement in m.buyer.records and result.settlement in m.seller.records
    assert m.total() == TOTAL


async def test_a_cheque_written_again_after_a_crash_clears_once(m: Market3) -> None:
    first = await m.payer.pay(m.buyer, m.request(), only="cheque")
    m.clock.ms += 60_000  # re-signed a minute later: another expiry, the same serial
    again = await m.payer.pay(m.buyer, m.request(), only="cheque")
    assert again.settlement == first.settlement
    assert m.balances() == (100_000 - 1250, 5_000 + 1250)
    assert m.buyer.signed[0].digest != m.buyer.signed[1].digest
    assert m.total() == TOTAL


async def test_a_stopped_cheque_bounces(m: Market3) -> None:
    serial = cheque_serial("buyer.ann", "k-1")
    await m.buyer.request("bank.one", BANK_SERVICE, BANK_STOP_CHEQUE,
                          StopCheque(serial=serial).to_wire())
    with pytest.raises(ChequeStopped):
        await m.payer.pay(m.buyer, m.request(), only="cheque")
    assert m.balances() == (100_000, 5_000)


async def test_a_cheque_deposited_too_late_bounces(m: Market3) -> None:
    modules: dict[str, PaymentModule] = {"cheque": ChequeModule(validity_ms=1000)}
    payer = PaymentManager(modules=modules, capabilities=caps("cheque"))
    slow = m.net.handlers["seller.books"]

    async def after_two_seconds(sender: str, service: str, op: str, body: Any) -> Any:
        if op == PAYMENT_ACCEPT:
            m.clock.ms += 2000
        return await slow(sender, service, op, body)

    m.net.handlers["seller.books"] = after_two_seconds
    with pytest.raises(ChequeExpired):
        await payer.pay(m.buyer, m.request())
    assert m.balances() == (100_000, 5_000)


async def test_a_bounced_cheque_for_lack_of_funds(m: Market3) -> None:
    with pytest.raises(InsufficientFunds):
        await m.payer.pay(m.buyer, m.request(units=100_001), only="cheque")
    assert m.balances() == (100_000, 5_000)
    assert m.total() == TOTAL


async def test_a_cheque_in_a_currency_the_payer_lacks(m: Market3) -> None:
    del m.bank.balances[("buyer.ann", "USD")]
    usd = Capabilities(modules=(ModuleOffer(name="cheque", limits=(
        Limits(minimum=Amount("USD", 1), maximum=Amount("USD", 10**6)),)),))
    m.payee.manager = PaymentManager(modules=load_modules(), capabilities=usd)
    m.payee.invoices[REF] = Invoice(amount=Amount("USD", 500), reference=REF)
    payer = PaymentManager(modules=load_modules(), capabilities=usd)
    # No account counts as no money: a depositor learns nothing more than "no funds".
    with pytest.raises(InsufficientFunds):
        await payer.pay(m.buyer, PaymentRequest(payee="seller.books", amount=Amount("USD", 500),
                                                reference=REF, idempotency_key="usd"))
    assert m.total() == TOTAL - 7_000


# --- refunds ---------------------------------------------------------------------------


@pytest.mark.parametrize("module", ["transfer", "cheque"])
async def test_refunds_up_to_the_payment(m: Market3, module: str) -> None:
    paid = await m.payer.pay(m.buyer, m.request(), only=module)
    refund = m.payee.manager.module(module).refund
    first = await refund(m.seller, paid, eur(250), "one item damaged", "r-1")
    assert isinstance(first, RefundResult)
    assert first.confirmation.type == REFUND_CONFIRMATION
    assert (first.payer, first.payee, first.original) == (
        "seller.books", "buyer.ann", paid.settlement.digest)
    assert m.balances() == (100_000 - 1000, 5_000 + 1000)
    assert m.net.log[-1] == ("seller.books", "bank.one", BANK_SERVICE, BANK_REFUND)
    # Retried: replayed, not applied again.
    assert (await refund(m.seller, paid, eur(250), "one item damaged", "r-1")) == first
    assert m.balances() == (100_000 - 1000, 5_000 + 1000)
    # Another refund key for the same payment: the bank counts what was refunded.
    with pytest.raises(RefundExceedsPayment):
        await refund(m.seller, paid, eur(1001), "the rest and more", "r-2")
    await refund(m.seller, paid, eur(1000), "the rest", "r-3")
    assert m.balances() == (100_000, 5_000)
    with pytest.raises(RefundExceedsPayment):
        await refund(m.seller, paid, eur(1), "once more", "r-4")
    # The buyer verifies the refund offline from what the seller hands it.
    handed = RefundResult.from_wire(decode_body(encode_body(first.to_wire())))
    assert handed == first
    body = verify_refund_confirmation(
        handed.confirmation, bank_certificate=handed.bank_certificate, root=m.buyer.root,
        crl=m.buyer.crl, now=m.buyer.now(), expected_original=paid.settlement.digest,
        expected_payee="buyer.ann", expected_amount=eur(250))
    assert body.entry > 0
    assert m.total() == TOTAL


async def test_refund_refusals_before_asking_the_bank(m: Market3) -> None:
    paid = await m.payer.pay(m.buyer, m.request())
    module = m.payee.manager.module("transfer")
    asked = len(m.net.log)
    with pytest.raises(RefundExceedsPayment):
        await module.refund(m.seller, paid, eur(1251), "too much", "r-1")
    with pytest.raises(WrongCurrency):
        await module.refund(m.seller, paid, Amount("USD", 1), "wrong money", "r-1")
    with pytest.raises(BadRequest):  # only the payee refunds a payment
        await module.refund(m.buyer, paid, eur(1), "not mine", "r-1")
    with pytest.raises(BadRequest):
        await module.refund(m.seller, paid, eur(1), "bad key", "")
    assert len(m.net.log) == asked
    assert m.balances() == (100_000 - 1250, 5_000 + 1250)


async def test_a_refund_of_an_unknown_payment(m: Market3) -> None:
    paid = await m.payer.pay(m.buyer, m.request())
    other = dataclasses.replace(paid, settlement=m.buyer.signed[0])  # not a bank settlement
    with pytest.raises(UnknownPayment):
        await m.payee.manager.module("transfer").refund(m.seller, other, eur(1), "?", "r-1")
    assert m.total() == TOTAL


# --- values and loading edge cases -----------------------------------------------------


@pytest.mark.parametrize(("changes", "field"), [
    ({"payee": "Seller Books"}, "payee"),
    ({"amount": eur(0)}, "amount"),
    ({"amount": 1250}, "amount"),
    ({"reference": b""}, "reference"),
    ({"reference": "text"}, "reference"),
    ({"idempotency_key": "x" * 129}, "idempotency_key"),
])
def test_a_payment_request_validates_its_fields(changes: dict[str, Any], field: str) -> None:
    fields: dict[str, Any] = dict(payee="seller.books", amount=eur(5), reference=REF,
                                  idempotency_key="k")
    with pytest.raises(BadRequest) as info:
        PaymentRequest(**{**fields, **changes})
    assert info.value.detail["field"] == field


def test_an_invoice_validates_its_fields() -> None:
    assert Invoice(amount=eur(5), reference=REF).payer is None
    for changes in ({"amount": eur(-1)}, {"reference": bytes(257)}, {"payer": ""}):
        with pytest.raises(BadRequest):
            Invoice(**{"amount": eur(5), "reference": REF, **changes})  # type: ignore[arg-type]


async def test_a_payment_result_refuses_malformed_wire(m: Market3) -> None:
    wire = (await m.payer.pay(m.buyer, m.request())).to_wire()
    for changes in ({"amount": 1250}, {"payer": "x y"}, {"bank_certificate": b"junk"},
                    {"module": ""}, {"reference": b""}):
        with pytest.raises(BadRequest):
            PaymentResult.from_wire({**wire, **changes})
    with pytest.raises(BadRequest):
        PaymentResult.from_wire({k: v for k, v in wire.items() if k != "settlement"})


def test_the_manager_offers_only_modules_it_has() -> None:
    manager = PaymentManager(modules={"cheque": ChequeModule()},
                             capabilities=caps("transfer", "cheque", "ecash"))
    assert [o.name for o in manager.capabilities.modules] == ["cheque"]
    assert manager.answer_capabilities({}) == caps("cheque").to_wire()
    with pytest.raises(UnknownModule):
        manager.module("transfer")


@dataclass
class FakeEntryPoint:
    name: str
    value: str
    obj: Any

    def load(self) -> Any:
        return self.obj


@pytest.mark.parametrize(("points", "error"), [
    ([FakeEntryPoint("transfer", "x:Nothing", object)], TypeError),           # not a module
    ([FakeEntryPoint("wire", "x:TransferModule", TransferModule)], TypeError),  # misnamed
    ([FakeEntryPoint("cheque", "a:C", ChequeModule), FakeEntryPoint("cheque", "b:C",
                                                                    ChequeModule())], ValueError),
])
def test_load_modules_refuses_bad_entry_points(monkeypatch: pytest.MonkeyPatch,
                                               points: list[FakeEntryPoint],
                                               error: type[Exception]) -> None:
    import semper.services.payment._manager as manager

    monkeypatch.setattr(manager, "entry_points", lambda group: points)
    with pytest.raises(error):
        load_modules()


def test_load_modules_takes_classes_and_instances(monkeypatch: pytest.MonkeyPatch) -> None:
    import semper.services.payment._manager as manager

    slow = ChequeModule(validity_ms=1)
    monkeypatch.setattr(manager, "entry_points", lambda group: [
        FakeEntryPoint("transfer", "x:T", TransferModule), FakeEntryPoint("cheque", "x:c", slow)])
    modules = load_modules()
    assert modules["cheque"] is slow and isinstance(modules["transfer"], TransferModule)


async def test_a_refund_result_refuses_malformed_wire(m: Market3) -> None:
    paid = await m.payer.pay(m.buyer, m.request())
    wire = (await m.payee.manager.module("transfer").refund(
        m.seller, paid, eur(5), "", "r-1")).to_wire()
    assert RefundResult.from_wire(wire).amount == eur(5)
    for changes in ({"original": bytes(31)}, {"payee": "seller.books"}, {"reason": "\n"},
                    {"amount": {"currency": "EUR", "minor_units": 0}},
                    {"bank_certificate": None}):
        with pytest.raises(BadRequest):
            RefundResult.from_wire({**wire, **changes})
