"""The ecash instrument's protocol (services/payment/ecash, docs/protocol.md 8.7) driven
end to end with in-memory contexts: a fake bank built from the package's own pure
checks and E1's ``BlindSigner``, a fake wallet, and the real ``EcashModule`` on both
sides. Every body crosses the "network" through the wire codec.

The real bank (agents/instruments/ecash.py) and wallet (agents/components/_wallet.py)
have their own tests; here each refusal code of the protocol is shown once, with no
money moved, and the books hold: accounts + coins outstanding is constant, and what
is outstanding is the value of the coins not yet deposited plus unredeemed vouchers.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import os
from dataclasses import dataclass, field
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from hypothesis import given, settings
from hypothesis import strategies as st
from pki import NOW, Market
from pki import TestAgent as Agent  # not collected as a test class
from test_payment_modules import Clock, Ctx, Net, caps

from semper.services import Amount
from semper.services.payment import (
    BANK_SERVICE,
    BadConfirmation,
    BadRequest,
    IdempotencyConflict,
    InsufficientFunds,
    Invoice,
    PaymentManager,
    PaymentRequest,
    PaymentResult,
    RefundAnswer,
    RefundOrder,
    RefundRequest,
    RefundResult,
    Unsupported,
    WrongCurrency,
    check_refund_order,
    decide_refund,
    load_modules,
)
from semper.services.payment.ecash import (
    BANK_ECASH_DEPOSIT,
    BANK_ECASH_EXCHANGE,
    BANK_ECASH_WITHDRAW,
    DENOMINATION,
    DEPOSITED,
    MAX_PICK_STEPS,
    REFUND_VOUCHER,
    WITHDRAWN,
    BadBlindSignature,
    BadCoin,
    BadSpend,
    BadWithdrawal,
    BlindedCoin,
    BlindSigner,
    Coin,
    Denomination,
    DepositAnswer,
    DepositRequest,
    DoubleSpent,
    EcashDeposited,
    EcashError,
    EcashModule,
    EcashProof,
    ExchangeAnswer,
    ExchangeRequest,
    ExpiredKey,
    InsufficientCoins,
    KeysAnswer,
    KeysRequest,
    RefundVoucher,
    Spend,
    UnknownKey,
    VoucherExpired,
    VoucherUsed,
    WithdrawAnswer,
    Withdrawn,
    WithdrawRequest,
    blind,
    blinded_order,
    check_exchange,
    check_spends,
    check_withdrawal,
    coin_message,
    decide_double_spend,
    denominations_for,
    finalize,
    key_id_of,
    new_coin_key,
    pick_coins,
    prepare,
    refund_key_of,
    sign_spend,
    spend_message,
    verify_denomination,
    verify_refund_voucher,
    verify_withdrawn,
)
from semper.services.statements import Statement, sign_statement
from semper.transport import decode_body, encode_body

EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
NOW_MS = (NOW - EPOCH) // dt.timedelta(milliseconds=1)
DAY = 86_400_000
REF = b"order-digest-0123456789abcdef012"
OTHER_REF = b"order-digest-of-another-order-99"
VALUES = (1, 2, 5, 10, 20, 50)
BANK, BUYER, SELLER, RIVAL = "bank.one", "buyer.ann", "seller.books", "seller.rival"


def eur(units: int) -> Amount:
    return Amount("EUR", units)


@dataclass(frozen=True)
class Key:
    """A denomination key of the bank: its body, statement and signer."""

    body: Denomination
    statement: Statement
    signer: BlindSigner

    @property
    def public(self) -> rsa.RSAPublicKey:
        return self.body.rsa_key()


@dataclass
class World:
    market: Market
    agents: dict[str, Agent]
    keys: dict[int, Key]     # published, by value
    short: Key               # EUR 100: withdraws for 1 s, deposits for 2 s
    stranger: Key            # EUR 10 under a key the bank never published
    foreign: Key             # USD 10


def _denomination(bank: Agent, currency: str, value: int, *, until: int = DAY,
                  deposit: int = 365 * DAY) -> Key:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    der = private.public_key().public_bytes(serialization.Encoding.DER,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
    body = Denomination(bank=bank.agent_id, currency=currency, value=Amount(currency, value),
                        key_id=key_id_of(der), public_key=der,
                        withdraw_from_ms=NOW_MS - 1000, withdraw_until_ms=NOW_MS + until,
                        deposit_until_ms=NOW_MS + deposit)
    statement = sign_statement(DENOMINATION, body.to_body(), key=bank.key, certificate=bank.cert,
                               now_ms=NOW_MS, nonce=os.urandom(16))
    return Key(body, statement, BlindSigner(private))


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    market = Market(tmp_path_factory.mktemp("ecash"))
    agents = {a.agent_id: a for a in (market.agent(BANK, "bank"), market.agent(BUYER, "buyer"),
                                      market.agent(SELLER, "seller"),
                                      market.agent(RIVAL, "seller"))}
    bank = agents[BANK]
    return World(market, agents, {v: _denomination(bank, "EUR", v) for v in VALUES},
                 short=_denomination(bank, "EUR", 100, until=1000, deposit=2000),
                 stranger=_denomination(bank, "EUR", 10),
                 foreign=_denomination(bank, "USD", 10))


# --- scaffolding: contexts with a holder, a bank, a wallet, a payee ------------------


@dataclass
class EcashCtx(Ctx):
    wallet: Any = None

    def holder(self, module: str) -> Any:
        if module != "ecash" or self.wallet is None:
            raise Unsupported(f"{self.our_id} holds no {module}", detail={"module": module})
        return self.wallet


@dataclass
class FakeBank:
    """The ecash ops of docs/protocol.md 8.7 over dicts, from the package's checks."""

    ctx: EcashCtx
    keys: dict[bytes, Key]
    accounts: dict[str, int]
    outstanding: int = 0
    withdrawals: dict[tuple[str, str], tuple[bytes, Any]] = field(default_factory=dict)
    spent: dict[bytes, dict[str, Any]] = field(default_factory=dict)
    deposits: dict[tuple[str, str], Any] = field(default_factory=dict)
    exchanges: dict[str, Any] = field(default_factory=dict)
    #: settlement digest -> [payee, amount, refunded units, deposited body]
    settlements: dict[bytes, list[Any]] = field(default_factory=dict)
    refunds: dict[tuple[str, str], Any] = field(default_factory=dict)
    vouchers: dict[bytes, int] = field(default_factory=dict)  # digest -> units, unredeemed
    redeemed: set[bytes] = field(default_factory=set)

    @property
    def cert(self) -> Any:
        return self.ctx.certificate

    def keys_by_id(self) -> dict[bytes, Denomination]:
        return {k: v.body for k, v in self.keys.items()}

    def total(self) -> int:
        return sum(self.accounts.values()) + self.outstanding

    async def handle(self, requester: str, service: str, op: str, body: Any) -> Any:
        assert service == BANK_SERVICE
        return await getattr(self, op)(requester, body)

    async def ecash_keys(self, requester: str, body: Any) -> Any:
        currency = KeysRequest.from_wire(body).currency
        now = self.ctx.now_ms()
        return KeysAnswer(denominations=tuple(
            k.statement for k in self.keys.values()
            if k.body.currency == currency and k.body.deposits_at(now)),
            bank_certificate=self.cert).to_wire()

    def _sign_blinded(self, blinded: tuple[BlindedCoin, ...]) -> tuple[bytes, ...]:
        return tuple(self.keys[b.key_id].signer.sign(b.blinded) for b in blinded)

    async def ecash_withdraw(self, requester: str, body: Any) -> Any:
        request = WithdrawRequest.from_wire(body)
        order = blinded_order(request.blinded)
        stored = self.withdrawals.get((requester, request.idempotency_key))
        if stored is not None:
            if stored[0] != order:
                raise IdempotencyConflict("another withdrawal under this key")
            return stored[1]
        amount = check_withdrawal(request.amount, request.blinded, self.keys_by_id(),
                                  self.ctx.now_ms())
        if self.accounts[requester] < amount.minor_units:
            raise InsufficientFunds("no")
        signatures = self._sign_blinded(request.blinded)
        self.accounts[requester] -= amount.minor_units
        self.outstanding += amount.minor_units
        withdrawn = await self.ctx.sign(WITHDRAWN, Withdrawn(
            bank=BANK, holder=requester, amount=amount, coins=len(request.blinded), order=order,
            idempotency_key=request.idempotency_key, entry=len(self.withdrawals) + 1).to_body())
        answer = WithdrawAnswer(withdrawn=withdrawn, blind_signatures=signatures,
                                bank_certificate=self.cert).to_wire()
        self.withdrawals[(requester, request.idempotency_key)] = (order, answer)
        return answer

    async def ecash_deposit(self, requester: str, body: Any) -> Any:
        request = DepositRequest.from_wire(body)
        stored = self.deposits.get((requester, request.idempotency_key))
        if stored is not None:
            return stored
        total = check_spends(request.spends, bank=BANK, payee=requester,
                             reference=request.reference, purpose="payment",
                             keys_by_id=self.keys_by_id(), now_ms=self.ctx.now_ms())
        if total != request.amount:
            raise BadRequest("the coins are not the amount", detail={"field": "amount"})
        decide_double_spend(request.spends, self.spent)
        for spend in request.spends:
            self.spent[spend.coin.coin_key] = spend.to_wire()
        self.outstanding -= total.minor_units
        self.accounts[requester] += total.minor_units
        deposited = EcashDeposited(bank=BANK, payee=requester, amount=total,
                                   reference=request.reference,
                                   coins=tuple(s.coin.coin_key for s in request.spends),
                                   entry=len(self.spent))
        statement = await self.ctx.sign(DEPOSITED, deposited.to_body())
        self.settlements[statement.digest] = [requester, total, 0, deposited]
        answer = DepositAnswer(deposited=statement, bank_certificate=self.cert).to_wire()
        self.deposits[(requester, request.idempotency_key)] = answer
        return answer

    async def ecash_exchange(self, requester: str, body: Any) -> Any:
        request = ExchangeRequest.from_wire(body)
        if request.idempotency_key in self.exchanges:
            return self.exchanges[request.idempotency_key]
        voucher = None
        if request.voucher is not None:
            claimed = RefundVoucher.from_statement(request.voucher)
            voucher = verify_refund_voucher(
                request.voucher, bank_certificate=self.cert, root=self.ctx.root,
                crl=self.ctx.crl, now=self.ctx.now(), expected_original=claimed.original,
                expected_amount=claimed.amount, expected_bank=BANK)
            if request.voucher.digest in self.redeemed:
                raise VoucherUsed("redeemed", detail={"voucher": request.voucher.digest.hex()})
        value = check_exchange(request.spends, request.blinded, bank=BANK,
                               keys_by_id=self.keys_by_id(), now_ms=self.ctx.now_ms(),
                               voucher=voucher, voucher_signature=request.voucher_signature,
                               voucher_digest=None if voucher is None else request.voucher.digest)
        decide_double_spend(request.spends, self.spent)
        signatures = self._sign_blinded(request.blinded)
        for spend in request.spends:
            self.spent[spend.coin.coin_key] = spend.to_wire()
        if request.voucher is not None:
            self.redeemed.add(request.voucher.digest)
            del self.vouchers[request.voucher.digest]
        assert value.minor_units >= 0  # value in == value out: outstanding unchanged
        answer = ExchangeAnswer(blind_signatures=signatures, bank_certificate=self.cert).to_wire()
        self.exchanges[request.idempotency_key] = answer
        return answer

    async def refund(self, requester: str, body: Any) -> Any:
        order = RefundRequest.from_wire(body).refund_order
        checked = check_refund_order(order, certificate=PAYEES[requester], requester=requester,
                                     root=self.ctx.root, crl=self.ctx.crl, now=self.ctx.now())
        stored = self.refunds.get((requester, checked.idempotency_key))
        if stored is not None:
            return stored
        payee, amount, refunded, deposited = self.settlements[checked.original]
        assert payee == requester
        total = decide_refund(amount, eur(refunded), checked.amount)
        self.settlements[checked.original][2] = total.minor_units
        self.accounts[requester] -= checked.amount.minor_units
        self.outstanding += checked.amount.minor_units
        voucher = await self.ctx.sign(REFUND_VOUCHER, RefundVoucher(
            bank=BANK, original=checked.original, amount=checked.amount,
            refund_key=refund_key_of(deposited), expires_ms=self.ctx.now_ms() + DAY).to_body())
        self.vouchers[voucher.digest] = checked.amount.minor_units
        answer = RefundAnswer(confirmation=voucher, bank_certificate=self.cert).to_wire()
        self.refunds[(requester, checked.idempotency_key)] = answer
        return answer


#: Certificates the fake bank's channel would authenticate (set by the fixture).
PAYEES: dict[str, Any] = {}


@dataclass
class Held:
    private: ed25519.Ed25519PrivateKey
    coin: Coin
    value: int


@dataclass
class FakeWallet:
    """The payer's coins: withdraws, spends (the same spends for the same key), and
    redeems vouchers; ``state`` of a coin key: fresh, bound, spent."""

    ctx: EcashCtx
    keys: dict[int, Key]
    coins: dict[bytes, Held] = field(default_factory=dict)
    state: dict[bytes, str] = field(default_factory=dict)
    bound: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    settled_keys: list[str] = field(default_factory=list)
    refused_keys: list[str] = field(default_factory=list)
    holds = ("ecash",)

    def fresh(self) -> list[Held]:
        return [h for k, h in self.coins.items() if self.state[k] == "fresh"]

    def value(self) -> int:
        return sum(h.value for h in self.fresh())

    def _draw(self, units: list[int], keys: dict[int, Key] | None = None
              ) -> list[tuple[ed25519.Ed25519PrivateKey, bytes, Key, bytes, bytes, bytes]]:
        drawn = []
        for value in units:
            key = (keys or self.keys)[value]
            private, coin_key = new_coin_key()
            prepared = prepare(coin_message(key.body.key_id, coin_key))
            blinded, inv = blind(key.public, prepared)
            drawn.append((private, coin_key, key, prepared, blinded, inv))
        return drawn

    def _keep(self, drawn: list[Any], signatures: tuple[bytes, ...]) -> list[Held]:
        kept = []
        for (private, coin_key, key, prepared, _, inv), blind_sig in zip(drawn, signatures,
                                                                          strict=True):
            signature = finalize(key.public, prepared, blind_sig, inv)
            coin = Coin(key_id=key.body.key_id, coin_key=coin_key, prefix=prepared[:32],
                        signature=signature)
            self.coins[coin_key] = held = Held(private, coin, key.body.value.minor_units)
            self.state[coin_key] = "fresh"
            kept.append(held)
        return kept

    async def withdraw(self, units: list[int], key: str = "w-1") -> list[Held]:
        drawn = self._draw(units)
        blinded = tuple(BlindedCoin(key_id=d[2].body.key_id, blinded=d[4]) for d in drawn)
        request = WithdrawRequest(amount=eur(sum(units)), blinded=blinded, idempotency_key=key)
        answer = WithdrawAnswer.from_wire(await self.ctx.request(
            BANK, BANK_SERVICE, BANK_ECASH_WITHDRAW, request.to_wire()))
        verify_withdrawn(answer.withdrawn, bank_certificate=answer.bank_certificate,
                         root=self.ctx.root, crl=self.ctx.crl, now=self.ctx.now(),
                         expected_holder=self.ctx.our_id, expected_amount=eur(sum(units)),
                         expected_order=blinded_order(blinded), expected_bank=BANK,
                         expected_idempotency_key=key)
        return self._keep(drawn, answer.blind_signatures)

    async def spend(self, request: PaymentRequest) -> list[dict[str, Any]]:
        if request.idempotency_key in self.bound:
            return self.bound[request.idempotency_key]
        fresh = self.fresh()
        positions = pick_coins([h.value for h in fresh], request.amount.minor_units)
        if positions is None:
            raise InsufficientCoins("no exact coins", detail={"amount": request.amount.to_wire()})
        spends = []
        for i in positions:
            held = fresh[i]
            self.state[held.coin.coin_key] = "bound"
            spends.append(sign_spend(held.private, held.coin, purpose="payment", bank=BANK,
                                     payee=request.payee, reference=request.reference,
                                     amount=eur(held.value)).to_wire())
        self.bound[request.idempotency_key] = spends
        return spends

    async def settled(self, request: PaymentRequest, result: PaymentResult) -> None:
        self.settled_keys.append(request.idempotency_key)
        for spend in self.bound[request.idempotency_key]:
            self.state[Spend.from_wire(spend).coin.coin_key] = "spent"

    async def refused(self, request: PaymentRequest) -> None:
        self.refused_keys.append(request.idempotency_key)

    async def refunded(self, result: RefundResult) -> None:
        voucher = RefundVoucher.from_statement(result.confirmation)
        drawn = self._draw(denominations_for(voucher.amount.minor_units, VALUES))
        blinded = tuple(BlindedCoin(key_id=d[2].body.key_id, blinded=d[4]) for d in drawn)
        signature = self.coins[voucher.refund_key].private.sign(spend_message(
            purpose="refund", bank=BANK, payee=BANK, reference=blinded_order(blinded),
            amount=voucher.amount))
        request = ExchangeRequest(spends=(), blinded=blinded,
                                  idempotency_key=f"refund-{result.confirmation.digest.hex()}",
                                  voucher=result.confirmation, voucher_signature=signature)
        answer = ExchangeAnswer.from_wire(await self.ctx.request(
            BANK, BANK_SERVICE, BANK_ECASH_EXCHANGE, request.to_wire()))
        self._keep(drawn, answer.blind_signatures)


@dataclass
class Payee:
    """A seller answering ``payment.accept`` with a manager, the payer named by the channel."""

    ctx: EcashCtx
    manager: PaymentManager
    invoices: dict[bytes, Invoice] = field(default_factory=dict)
    accepted: list[PaymentResult] = field(default_factory=list)

    async def handle(self, requester: str, service: str, op: str, body: Any) -> Any:
        from semper.services.payment import AcceptRequest

        request = AcceptRequest.from_wire(body)
        invoice = dataclasses.replace(self.invoices[request.reference], payer=requester)
        result = await self.manager.accept(self.ctx, request, invoice=invoice)
        self.accepted.append(result)
        return result.to_wire()


@dataclass
class M:
    world: World
    clock: Clock
    net: Net
    bank: FakeBank
    buyer: EcashCtx
    seller: EcashCtx
    rival: EcashCtx
    wallet: FakeWallet
    payee: Payee
    module: EcashModule
    start: int = 0

    def invoice(self, units: int, reference: bytes = REF) -> PaymentRequest:
        self.payee.invoices[reference] = Invoice(amount=eur(units), reference=reference)
        return PaymentRequest(payee=SELLER, amount=eur(units), reference=reference,
                              idempotency_key=f"pay-{reference.hex()[:8]}-{units}")

    def books(self) -> None:
        """Money is neither made nor lost, and what is outstanding is the coins not
        deposited plus the vouchers not redeemed."""
        assert self.bank.total() == self.start
        live = sum(h.value for k, h in self.wallet.coins.items()
                   if k not in self.bank.spent and h.coin.key_id in self.bank.keys)
        assert self.bank.outstanding == live + sum(self.bank.vouchers.values())


@pytest.fixture
def m(world: World) -> M:
    clock, net = Clock(NOW_MS), Net()
    market = world.market

    def ctx(agent_id: str) -> EcashCtx:
        return EcashCtx(world.agents[agent_id], BANK, market, clock, net)

    PAYEES.update({i: a.cert for i, a in world.agents.items()})
    keys = {k.body.key_id: k for k in (*world.keys.values(), world.short, world.foreign)}
    bank = FakeBank(ctx(BANK), keys, {BUYER: 100_000, SELLER: 5_000, RIVAL: 0})
    buyer = ctx(BUYER)
    wallet = FakeWallet(buyer, world.keys)
    buyer.wallet = wallet
    seller = ctx(SELLER)
    module = load_modules()["ecash"]
    assert isinstance(module, EcashModule)
    payee = Payee(seller, PaymentManager(modules={"ecash": module}, capabilities=caps("ecash")))
    net.handlers = {BANK: bank.handle, SELLER: payee.handle}
    return M(world, clock, net, bank, buyer, seller, ctx(RIVAL), wallet, payee, module,
             start=bank.total())


def _wire(body: Any) -> Any:
    return decode_body(encode_body(body))


# --- coins: making change -------------------------------------------------------------


def test_denominations_for_is_the_greedy_exact_split() -> None:
    series = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)
    assert denominations_for(2000, series) == [2000]
    assert denominations_for(1234, series) == [1000, 200, 20, 10, 2, 2]
    assert denominations_for(8, (5, 2, 1)) == [5, 2, 1]
    for bad in (0, -5):
        with pytest.raises(ValueError):
            denominations_for(bad, series)
    with pytest.raises(ValueError):
        denominations_for(3, (2, 5))  # no exact greedy split


def test_pick_coins_finds_an_exact_subset_or_none() -> None:
    have = [50, 20, 20, 20, 5, 2, 2, 1]
    picked = pick_coins(have, 64)
    assert picked is not None and sum(have[i] for i in picked) == 64
    assert picked == sorted(set(picked))  # positions, each once
    # Greedy would take 50 and fail; the search backs off to 20 + 20 + 20.
    three = [50, 20, 20, 20]
    assert sorted(three[i] for i in pick_coins(three, 60) or []) == [20, 20, 20]
    assert pick_coins(have, 7) is not None  # 5 + 2
    assert pick_coins([50, 20], 30) is None  # no exact subset: the wallet exchanges
    assert pick_coins(have, 1000) is None and pick_coins(have, 0) is None
    assert pick_coins([], 1) is None


def test_pick_coins_is_bounded() -> None:
    """Many coins of values with no exact subset: the search gives up after
    MAX_PICK_STEPS nodes rather than exploring every subset."""
    have = [2 * (i + 1) for i in range(60)]  # even values only
    assert MAX_PICK_STEPS <= 20_000
    assert pick_coins(have, 3001) is None  # odd: none, found out within the bound


@settings(max_examples=30, deadline=None)
@given(st.lists(st.sampled_from((1, 2, 5, 10, 20, 50)), max_size=9),
       st.integers(min_value=1, max_value=120))
def test_pick_coins_finds_a_subset_whenever_one_exists(have: list[int], amount: int) -> None:
    sums = {sum(c) for r in range(len(have) + 1) for c in itertools.combinations(have, r)}
    picked = pick_coins(have, amount)
    if amount in sums:
        assert picked is not None and sum(have[i] for i in picked) == amount
        assert len(set(picked)) == len(picked)
    else:
        assert picked is None


# --- statements and wire ----------------------------------------------------------------


def test_a_denomination_statement_checks_its_key(world: World) -> None:
    key = world.keys[5]
    body = verify_denomination(key.statement, bank_certificate=world.agents[BANK].cert,
                               root=world.market.ca.certificate, crl=world.market.crl, now=NOW,
                               expected_bank=BANK, expected_currency="EUR")
    assert body == key.body
    wire = key.body.to_wire()
    with pytest.raises(BadRequest) as info:
        Denomination.from_wire({**wire, "key_id": bytes(32)})
    assert info.value.detail["field"] == "key_id"
    with pytest.raises(BadRequest) as info:
        Denomination.from_wire({**wire, "currency": "USD"})
    assert info.value.detail["field"] == "value"
    with pytest.raises(BadConfirmation):  # a buyer's "denomination" is no bank's
        verify_denomination(
            sign_statement(DENOMINATION, key.body.to_body(), key=world.agents[BUYER].key,
                           certificate=world.agents[BUYER].cert, now_ms=NOW_MS,
                           nonce=os.urandom(16)),
            bank_certificate=world.agents[BUYER].cert, root=world.market.ca.certificate,
            crl=world.market.crl, now=NOW)


def test_malformed_bodies_are_bad_requests(world: World) -> None:
    for body, field_ in (({"spends": [], "reference": REF, "amount": eur(1).to_wire(),
                           "idempotency_key": "k"}, "spends"),
                         ({"spends": [{"coin": {}, "signature": bytes(64)}], "reference": REF,
                           "amount": eur(1).to_wire(), "idempotency_key": "k"}, "spends"),
                         ({"spends": "x", "reference": REF, "amount": eur(1).to_wire(),
                           "idempotency_key": "k", "extra": 1}, "extra")):
        with pytest.raises(BadRequest) as info:
            DepositRequest.from_wire(body)
        assert info.value.detail["field"] == field_
    with pytest.raises(BadRequest) as info:  # a voucher without its signature
        ExchangeRequest.from_wire({"spends": [], "blinded": [
            {"key_id": bytes(32), "blinded": bytes(256)}], "idempotency_key": "k",
            "voucher": world.keys[1].statement.to_wire()})
    assert info.value.detail["field"] == "voucher_signature"
    with pytest.raises(BadRequest):  # neither coins nor a voucher
        ExchangeRequest.from_wire({"spends": [], "blinded": [
            {"key_id": bytes(32), "blinded": bytes(256)}], "idempotency_key": "k"})


def test_every_ecash_code_is_an_ecash_error() -> None:
    for cls, code in ((BadCoin, "ecash.bad_coin"), (BadSpend, "ecash.bad_spend"),
                      (DoubleSpent, "ecash.double_spent"), (ExpiredKey, "ecash.expired_key"),
                      (UnknownKey, "ecash.unknown_key"), (BadWithdrawal, "ecash.bad_withdrawal"),
                      (BadBlindSignature, "ecash.bad_blind_signature"),
                      (VoucherUsed, "ecash.voucher_used"),
                      (VoucherExpired, "ecash.voucher_expired"),
                      (InsufficientCoins, "ecash.insufficient_coins")):
        assert issubclass(cls, EcashError) and cls.code == code
    assert Unsupported.code == "payment.unsupported"


# --- withdrawing ------------------------------------------------------------------------


async def test_a_withdrawal_debits_the_account_and_gives_valid_coins(m: M) -> None:
    coins = await m.wallet.withdraw([50, 20, 5, 2, 2, 1])
    assert m.bank.accounts[BUYER] == 100_000 - 80
    for held in coins:
        held.coin.verify(m.world.keys[held.value].public)
        assert Coin.from_wire(_wire(held.coin.to_wire())) == held.coin
    m.books()
    # The same request again is answered the same; another under the key is refused.
    again = await m.wallet.withdraw([50, 20, 5, 2, 2, 1], key="w-2")
    assert len(again) == 6 and m.bank.accounts[BUYER] == 100_000 - 160
    with pytest.raises(IdempotencyConflict):
        await m.wallet.withdraw([1], key="w-2")
    m.books()


async def test_withdrawal_refusals_move_nothing(m: M) -> None:
    keys = m.bank.keys_by_id()
    k5 = m.world.keys[5]
    good = BlindedCoin(key_id=k5.body.key_id, blinded=bytes(255) + b"\x01")
    with pytest.raises(BadWithdrawal) as info:
        check_withdrawal(eur(6), (good,), keys, NOW_MS)
    assert info.value.detail["field"] == "amount"
    with pytest.raises(BadWithdrawal) as info:  # not below the modulus
        check_withdrawal(eur(5), (BlindedCoin(key_id=k5.body.key_id, blinded=b"\xff" * 256),),
                         keys, NOW_MS)
    assert info.value.detail["field"] == "blinded"
    with pytest.raises(UnknownKey):
        check_withdrawal(eur(10), (BlindedCoin(key_id=m.world.stranger.body.key_id,
                                               blinded=good.blinded),), keys, NOW_MS)
    with pytest.raises(UnknownKey):  # a USD key for a EUR withdrawal
        check_withdrawal(eur(10), (BlindedCoin(key_id=m.world.foreign.body.key_id,
                                               blinded=good.blinded),), keys, NOW_MS)
    with pytest.raises(ExpiredKey):  # the short key stopped withdrawing
        check_withdrawal(eur(100), (BlindedCoin(key_id=m.world.short.body.key_id,
                                                blinded=good.blinded),), keys, NOW_MS + 1500)
    with pytest.raises(BadWithdrawal):
        check_withdrawal(eur(5), (), keys, NOW_MS)
    with pytest.raises(BadWithdrawal):  # the bank refuses on the wire too
        await m.buyer.request(BANK, BANK_SERVICE, BANK_ECASH_WITHDRAW, WithdrawRequest(
            amount=eur(6), blinded=(good,), idempotency_key="w-bad").to_wire())
    assert m.bank.accounts[BUYER] == 100_000 and m.bank.outstanding == 0


async def test_a_blind_signature_under_the_wrong_key_is_refused(m: M) -> None:
    """The wallet's check (RFC 9474 Finalize): a bank that signs a coin under another
    denomination key than the one asked gives a signature that does not unblind."""
    k5, k10 = m.world.keys[5], m.world.keys[10]
    _, coin_key = new_coin_key()
    prepared = prepare(coin_message(k5.body.key_id, coin_key))
    blinded, inv = blind(k5.public, prepared)
    wrong = k10.signer.sign(blinded)
    with pytest.raises(BadBlindSignature) as info:
        finalize(k5.public, prepared, wrong, inv)
    assert info.value.code == "ecash.bad_blind_signature"


# --- paying -------------------------------------------------------------------------------


async def test_an_ecash_payment_end_to_end(m: M) -> None:
    await m.wallet.withdraw([50, 20, 20, 5, 2, 2, 1])
    request = m.invoice(77)
    result = await m.module.pay(m.buyer, request)
    assert (result.module, result.payer, result.payee, result.amount, result.reference) == (
        "ecash", BUYER, SELLER, eur(77), REF)
    assert result.settlement.type == DEPOSITED and result.bank == BANK
    body = EcashDeposited.from_statement(result.settlement)
    assert "payer" not in result.settlement.body  # the bank knows no payer
    assert len(body.coins) == 4 and m.bank.accounts[SELLER] == 5_000 + 77
    assert result.settlement in m.buyer.records and result.settlement in m.seller.records
    assert m.wallet.settled_keys == [request.idempotency_key] and m.wallet.value() == 23
    assert PaymentResult.from_wire(_wire(result.to_wire())) == result
    m.books()
    # The payer retries (a lost answer): the same spends, deposited once.
    again = await m.module.pay(m.buyer, request)
    assert again.settlement == result.settlement and m.bank.accounts[SELLER] == 5_077
    assert m.module.same_payment({"spends": m.wallet.bound[request.idempotency_key]}, result)
    assert not m.module.same_payment({"spends": []}, result)
    m.books()
    # A third party (the notary) can tell the order was paid, offline.
    m.module.settles(result.settlement, bank_certificate=result.bank_certificate,
                     root=m.buyer.root, crl=m.buyer.crl, now=m.buyer.now(), payer=BUYER,
                     payee=SELLER, amount=eur(77), reference=REF, idempotency_key="x")
    with pytest.raises(BadConfirmation):
        m.module.settles(result.settlement, bank_certificate=result.bank_certificate,
                         root=m.buyer.root, crl=m.buyer.crl, now=m.buyer.now(), payer=BUYER,
                         payee=SELLER, amount=eur(77), reference=OTHER_REF, idempotency_key="x")


async def test_a_payer_without_a_wallet_is_unsupported(m: M) -> None:
    m.buyer.wallet = None
    with pytest.raises(Unsupported) as info:
        await m.module.pay(m.buyer, m.invoice(5))
    assert info.value.detail == {"module": "ecash"}


async def _accept(m: M, spends: list[Spend], units: int, reference: bytes = REF) -> Any:
    m.payee.invoices[reference] = Invoice(amount=eur(units), reference=reference, payer=BUYER)
    return await m.module.accept(m.seller, EcashProof(spends=tuple(spends)).to_wire(),
                                 invoice=m.payee.invoices[reference])


def _spend(held: Held, *, payee: str = SELLER, reference: bytes = REF, bank: str = BANK,
           purpose: str = "payment", value: int | None = None) -> Spend:
    return sign_spend(held.private, held.coin, purpose=purpose, bank=bank, payee=payee,
                      reference=reference, amount=eur(held.value if value is None else value))


async def _refused(m: M, error: type[Exception], spends: list[Spend], units: int,
                   reference: bytes = REF) -> Exception:
    """The payee refuses ``spends`` with ``error`` and nothing moves."""
    before = dict(m.bank.accounts), m.bank.outstanding, dict(m.bank.spent)
    with pytest.raises(error) as info:
        await _accept(m, spends, units, reference)
    assert (dict(m.bank.accounts), m.bank.outstanding, dict(m.bank.spent)) == before
    m.books()
    return info.value


async def test_a_spend_bound_to_another_contract_is_refused(m: M) -> None:
    (coin,) = await m.wallet.withdraw([10])
    for other in (_spend(coin, reference=OTHER_REF), _spend(coin, payee=RIVAL),
                  _spend(coin, bank="bank.two"), _spend(coin, purpose="exchange"),
                  _spend(coin, value=20)):
        error = await _refused(m, BadSpend, [other], 10)
        assert error.detail["coin_key"] == coin.coin.coin_key.hex()
    # The bank refuses it too, should a payee deposit it unchecked.
    with pytest.raises(BadSpend):
        await m.seller.request(BANK, BANK_SERVICE, BANK_ECASH_DEPOSIT, DepositRequest(
            spends=(_spend(coin, reference=OTHER_REF),), reference=REF, amount=eur(10),
            idempotency_key="d-1").to_wire())
    assert m.bank.spent == {}
    assert (await _accept(m, [_spend(coin)], 10)).amount == eur(10)  # its own contract


async def test_a_forged_coin_is_refused(m: M) -> None:
    (held,) = await m.wallet.withdraw([20])
    forged = dataclasses.replace(held.coin, signature=os.urandom(256))
    error = await _refused(m, BadCoin, [_spend(dataclasses.replace(held, coin=forged))], 20)
    assert error.code == "ecash.bad_coin"
    # A coin whose signature is another coin's (of the same key) is as forged.
    (other,) = await m.wallet.withdraw([20], key="w-2")
    swapped = dataclasses.replace(held.coin, signature=other.coin.signature)
    await _refused(m, BadCoin, [_spend(dataclasses.replace(held, coin=swapped))], 20)


async def test_a_coin_under_a_key_not_in_the_banks_list_is_refused(m: M) -> None:
    w = m.wallet
    drawn = w._draw([10], {10: m.world.stranger})
    held = w._keep(drawn, (m.world.stranger.signer.sign(drawn[0][4]),))[0]
    held.coin.verify(m.world.stranger.public)  # a real coin, of a key the bank never published
    error = await _refused(m, UnknownKey, [_spend(held)], 10)
    assert error.detail["key_id"] == m.world.stranger.body.key_id.hex()
    del w.coins[held.coin.coin_key]  # never the bank's liability


async def test_a_coin_of_an_expired_key_is_refused(m: M) -> None:
    m.wallet.keys = {**m.wallet.keys, 100: m.world.short}
    (held,) = await m.wallet.withdraw([100])
    m.clock.ms = NOW_MS + 2001  # the short key's deposits ended
    m.seller.wallet = None
    m.module._keys.clear()
    error = await _refused(m, UnknownKey, [_spend(held)], 100)  # no longer listed...
    assert error.code == "ecash.unknown_key"
    with pytest.raises(ExpiredKey) as info:  # ...and the bank, which knows it, refuses
        await m.seller.request(BANK, BANK_SERVICE, BANK_ECASH_DEPOSIT, DepositRequest(
            spends=(_spend(held),), reference=REF, amount=eur(100),
            idempotency_key="d-1").to_wire())
    assert info.value.detail["key_id"] == m.world.short.body.key_id.hex()
    m.books()


async def test_amounts_that_differ_from_the_invoice_are_refused(m: M) -> None:
    coins = await m.wallet.withdraw([10, 5])
    error = await _refused(m, BadRequest, [_spend(c) for c in coins], 20)
    assert error.detail["field"] == "amount"
    assert error.detail["got"] == eur(15).to_wire()
    await _refused(m, BadRequest, [_spend(coins[0])], 15)
    with pytest.raises(BadRequest) as info:  # the bank checks the sum too
        await m.seller.request(BANK, BANK_SERVICE, BANK_ECASH_DEPOSIT, DepositRequest(
            spends=(_spend(coins[0]),), reference=REF, amount=eur(15),
            idempotency_key="d-1").to_wire())
    assert info.value.detail["field"] == "amount"
    m.books()


async def test_a_coin_twice_in_one_request_is_refused(m: M) -> None:
    (held,) = await m.wallet.withdraw([10])
    error = await _refused(m, BadSpend, [_spend(held), _spend(held)], 20)
    assert error.detail["field"] == "spends"


async def test_coins_of_two_currencies_are_refused(m: M) -> None:
    (eur10,) = await m.wallet.withdraw([10])
    drawn = m.wallet._draw([10], {10: m.world.foreign})
    usd10 = m.wallet._keep(drawn, (m.world.foreign.signer.sign(drawn[0][4]),))[0]
    keys = m.bank.keys_by_id()
    with pytest.raises(WrongCurrency):
        check_spends([_spend(eur10), sign_spend(usd10.private, usd10.coin, purpose="payment",
                                                 bank=BANK, payee=SELLER, reference=REF,
                                                 amount=Amount("USD", 10))],
                     bank=BANK, payee=SELLER, reference=REF, purpose="payment",
                     keys_by_id=keys, now_ms=NOW_MS)
    del m.wallet.coins[usd10.coin.coin_key]


async def test_a_coin_spent_twice_is_refused_with_the_first_spend(m: M) -> None:
    (held,) = await m.wallet.withdraw([20])
    first = _spend(held)
    await _accept(m, [first], 20)
    m.books()
    # The payer spends it again, to another seller: that seller's offline check passes,
    # the bank refuses with the evidence of the first spend.
    rival = EcashModule()
    again = _spend(held, payee=RIVAL, reference=OTHER_REF)
    with pytest.raises(DoubleSpent) as info:
        await rival.accept(m.rival, EcashProof(spends=(again,)).to_wire(),
                           invoice=Invoice(amount=eur(20), reference=OTHER_REF, payer=BUYER))
    assert info.value.detail["coin_key"] == held.coin.coin_key.hex()
    assert Spend.from_wire(info.value.detail["first"]) == first
    assert m.bank.accounts[RIVAL] == 0
    m.books()
    with pytest.raises(DoubleSpent):  # pure: the decision alone
        decide_double_spend([again], m.bank.spent)


async def test_a_refused_proof_gives_the_coins_back_to_the_wallet(m: M) -> None:
    await m.wallet.withdraw([10])
    request = m.invoice(10)
    m.payee.invoices[REF] = Invoice(amount=eur(12), reference=REF)  # the seller wants more
    with pytest.raises(BadRequest):
        await m.module.pay(m.buyer, request)
    assert m.wallet.refused_keys == [request.idempotency_key] and not m.wallet.settled_keys
    m.books()


# --- exchanging and refunds -----------------------------------------------------------------


async def test_an_exchange_gives_new_coins_of_the_same_value(m: M) -> None:
    (big,) = await m.wallet.withdraw([50])
    drawn = m.wallet._draw([20, 20, 10])
    blinded = tuple(BlindedCoin(key_id=d[2].body.key_id, blinded=d[4]) for d in drawn)
    spend = _spend(big, purpose="exchange", payee=BANK, reference=blinded_order(blinded))
    keys = m.bank.keys_by_id()
    assert check_exchange([spend], blinded, bank=BANK, keys_by_id=keys,
                          now_ms=NOW_MS) == eur(50)
    short = _spend(big, purpose="exchange", payee=BANK, reference=blinded_order(blinded[:2]))
    with pytest.raises(BadWithdrawal):  # value out other than value in
        check_exchange([short], blinded[:2], bank=BANK, keys_by_id=keys, now_ms=NOW_MS)
    with pytest.raises(BadSpend):  # the spend names other new coins
        check_exchange([_spend(big, purpose="exchange", payee=BANK, reference=REF)], blinded,
                       bank=BANK, keys_by_id=keys, now_ms=NOW_MS)
    answer = ExchangeAnswer.from_wire(await m.buyer.request(
        BANK, BANK_SERVICE, BANK_ECASH_EXCHANGE, ExchangeRequest(
            spends=(spend,), blinded=blinded, idempotency_key="x-1").to_wire()))
    m.wallet._keep(drawn, answer.blind_signatures)
    m.wallet.state[big.coin.coin_key] = "spent"
    assert m.wallet.value() == 50
    m.books()
    await m.module.pay(m.buyer, m.invoice(30))  # now payable exactly
    m.books()


async def test_a_refund_comes_back_as_a_voucher_and_new_coins(m: M) -> None:
    await m.wallet.withdraw([20, 10, 5])
    paid = await m.module.pay(m.buyer, m.invoice(35))
    refund = await m.module.refund(m.seller, paid, eur(15), "damaged", "r-1")
    assert refund.confirmation.type == REFUND_VOUCHER
    voucher = RefundVoucher.from_statement(refund.confirmation)
    deposited = EcashDeposited.from_statement(paid.settlement)
    assert (voucher.original, voucher.amount, voucher.refund_key) == (
        paid.settlement.digest, eur(15), deposited.coins[0])
    assert (refund.payer, refund.payee) == (SELLER, BUYER)
    assert refund.confirmation in m.seller.records
    assert m.bank.accounts[SELLER] == 5_000 + 35 - 15
    m.books()
    assert RefundResult.from_wire(_wire(refund.to_wire())) == refund
    await m.module.refunded(m.buyer, refund)  # verified, then the wallet redeems it
    assert m.wallet.value() == 15 and not m.bank.vouchers
    m.books()
    # The voucher is redeemed once: a second redemption (under another key) is refused.
    with pytest.raises(VoucherUsed):
        await _redeem_again(m, refund)
    with pytest.raises(BadConfirmation):  # not ours to redeem: a refund to someone else
        EcashModule.verify_refund(refund, root=m.buyer.root, crl=m.buyer.crl,
                                  now=m.buyer.now(), expected_original=paid.settlement.digest,
                                  expected_payee=RIVAL, expected_amount=eur(15))
    m.books()


async def _redeem_again(m: M, refund: RefundResult) -> None:
    voucher = RefundVoucher.from_statement(refund.confirmation)
    drawn = m.wallet._draw([10, 5])
    blinded = tuple(BlindedCoin(key_id=d[2].body.key_id, blinded=d[4]) for d in drawn)
    signature = m.wallet.coins[voucher.refund_key].private.sign(spend_message(
        purpose="refund", bank=BANK, payee=BANK, reference=blinded_order(blinded),
        amount=voucher.amount))
    await m.buyer.request(BANK, BANK_SERVICE, BANK_ECASH_EXCHANGE, ExchangeRequest(
        spends=(), blinded=blinded, idempotency_key="again", voucher=refund.confirmation,
        voucher_signature=signature).to_wire())


async def test_a_voucher_redemption_is_checked(m: M) -> None:
    await m.wallet.withdraw([20])
    paid = await m.module.pay(m.buyer, m.invoice(20))
    refund = await m.module.refund(m.seller, paid, eur(20), "", "r-1")
    voucher = RefundVoucher.from_statement(refund.confirmation)
    drawn = m.wallet._draw([20])
    blinded = tuple(BlindedCoin(key_id=d[2].body.key_id, blinded=d[4]) for d in drawn)
    keys = m.bank.keys_by_id()
    owner = m.wallet.coins[voucher.refund_key].private

    def signed(by: ed25519.Ed25519PrivateKey, reference: bytes) -> bytes:
        return by.sign(spend_message(purpose="refund", bank=BANK, payee=BANK,
                                     reference=reference, amount=voucher.amount))

    good = signed(owner, blinded_order(blinded))
    digest = refund.confirmation.digest
    assert check_exchange([], blinded, bank=BANK, keys_by_id=keys, now_ms=NOW_MS,
                          voucher=voucher, voucher_signature=good,
                          voucher_digest=digest) == eur(20)
    for bad in (signed(ed25519.Ed25519PrivateKey.generate(), blinded_order(blinded)),
                signed(owner, REF)):  # a stranger's key; for other coins
        with pytest.raises(BadSpend):
            check_exchange([], blinded, bank=BANK, keys_by_id=keys, now_ms=NOW_MS,
                           voucher=voucher, voucher_signature=bad, voucher_digest=digest)
    with pytest.raises(VoucherExpired) as info:
        check_exchange([], blinded, bank=BANK, keys_by_id=keys, now_ms=voucher.expires_ms + 1,
                       voucher=voucher, voucher_signature=good, voucher_digest=digest)
    assert info.value.detail["voucher"] == digest.hex()
    m.books()


async def test_every_refund_path_checks_an_ecash_refund_as_a_voucher(m: M) -> None:
    """The seller refunds a sale with the generic ``refund_payment`` (agents/roles/
    seller.py: commerce.refund and money given back), not the module's ``refund``: an
    ecash refund is answered with a voucher, which the generic check (a
    payment.refund_confirmation) refused as statement.wrong_type, so a purchase paid
    in coins could not be refunded. The check now goes by the settlement's type
    (REFUND_CHECKS), whoever calls; a voucher for another deposit is still refused."""
    from semper.services.payment import refund_payment
    from semper.services.payment._modules import REFUND_CHECKS

    await m.wallet.withdraw([20, 10])
    paid = await m.module.pay(m.buyer, m.invoice(20))
    refund = await refund_payment(m.seller, paid, eur(5), "late", "r-1")
    assert refund.confirmation.type == REFUND_VOUCHER and refund.amount == eur(5)
    m.books()
    other = await m.module.pay(m.buyer, m.invoice(10, OTHER_REF))
    wrong = RefundAnswer.from_wire(await m.bank.refund(SELLER, RefundRequest(
        refund_order=await m.seller.sign("payment.refund_order", {
            "original": other.settlement.digest, "payer": SELLER, "payee": BUYER,
            "amount": eur(1).to_wire(), "reason": "", "idempotency_key": "r-2"})).to_wire()))
    order = RefundOrder(original=paid.settlement.digest, payer=SELLER, payee=BUYER,
                        amount=eur(1), reason="", idempotency_key="r-3")
    with pytest.raises(BadConfirmation) as info:
        REFUND_CHECKS[DEPOSITED](m.seller, paid, wrong, order)
    assert info.value.detail["field"] == "original"


async def test_a_failure_that_is_not_the_payees_refusal_keeps_the_coins_bound(m: M) -> None:
    """A timeout or a closed channel during payment.accept may follow a deposit: the
    wallet is not told the coins were refused (it would exchange coins the payee may
    hold as paid); a payee's coded refusal does tell it."""
    from semper.services import ServiceError

    class Timeout(ServiceError):
        code = "timeout.request"

    await m.wallet.withdraw([10, 10])

    async def lost(requester: str, service: str, op: str, body: Any) -> Any:
        raise Timeout("no answer")

    m.net.handlers[SELLER] = lost
    first = m.invoice(10)
    with pytest.raises(Timeout):
        await m.module.pay(m.buyer, first)
    assert m.wallet.refused_keys == [] and first.idempotency_key in m.wallet.bound
    m.books()


async def test_bank_statements_must_name_their_signer(m: M) -> None:
    """A statement signed by a bank but naming another bank as ``bank`` is refused
    (payment.bad_confirmation, field bank)."""
    (held,) = await m.wallet.withdraw([10])
    del held
    body = Withdrawn(bank="bank.two", holder=BUYER, amount=eur(10), coins=1, order=bytes(32),
                     idempotency_key="k", entry=1)
    forged = await m.bank.ctx.sign(WITHDRAWN, body.to_body())
    with pytest.raises(BadConfirmation) as info:
        verify_withdrawn(forged, bank_certificate=m.bank.cert, root=m.buyer.root,
                         crl=m.buyer.crl, now=m.buyer.now(), expected_holder=BUYER,
                         expected_amount=eur(10), expected_order=bytes(32))
    assert info.value.detail["field"] == "bank"
