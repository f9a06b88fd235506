"""The bank half of ecash against a real bank agent (agents/instruments/ecash.py):
withdrawals, deposits, exchanges and refunds as vouchers, over real loopback TLS
and real SQLite, one injected clock, with a test wallet that blinds and unblinds as
RFC 9474 says (services/payment/ecash).

Issue 11: the books balance after every step (``check_books``: customers and
``@ecash-outstanding`` hold exactly the minted) and ``@ecash-outstanding`` holds the
value of the coins signed and not spent plus the vouchers not redeemed; refused,
each with its code and no money moved: a coin spent twice (with the first spend as
evidence), a coin of an expired denomination key, a blind signature asked under the
wrong key (the wallet's finalize fails; the bank refuses a blinded message the key
cannot sign), a forged coin, a coin bound to another contract, a voucher redeemed
twice. A withdrawal is applied once per key; an exchange keeps the value; what the
bank stores at withdrawal never appears in what it stores at deposit.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

import pytest
import trio
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.serialization import Encoding
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from market_helpers import DEADLINE, BankBooks, SharedClock, config_of, running

from semper.agents import Agent
from semper.agents.components import _ledger
from semper.agents.instruments.ecash import OUTSTANDING, EcashBank
from semper.agents.operator._market import init_market
from semper.agents.runtime._config import ConfigError
from semper.services import Amount
from semper.services.certificates import fingerprint
from semper.services.payment import (
    BANK_REFUND,
    BANK_SERVICE,
    REFUND_ORDER,
    RefundAnswer,
    RefundOrder,
    RefundRequest,
)
from semper.services.payment.ecash import (
    BadBlindSignature,
    BlindedCoin,
    Coin,
    Denomination,
    RefundVoucher,
    Spend,
    blind,
    blinded_order,
    coin_message,
    denominations_for,
    finalize,
    new_coin_key,
    prepare,
    sign_spend,
    spend_message,
    verify,
    verify_denomination,
    verify_deposited,
    verify_withdrawn,
)
from semper.services.payment.ecash._wire import (
    DepositAnswer,
    DepositRequest,
    ExchangeAnswer,
    ExchangeRequest,
    KeysAnswer,
    KeysRequest,
    WithdrawAnswer,
    WithdrawRequest,
)
from semper.services.statements import Statement
from semper.transport import RemoteError

HOUR_MS = 3_600_000
#: Three small denominations and short windows, so that a test can outlive a key.
SETTINGS = {"denominations": [1, 2, 5], "key_period_ms": HOUR_MS, "deposit_period_ms": HOUR_MS}
ORDER = b"o" * 32


Clock = SharedClock  # one clock for all three agents, moved by the test


def bank_config(market: Path) -> Any:
    return config_of(market, "bank", components={"ecash": dict(SETTINGS)})


@pytest.fixture(scope="module")
def prebuilt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A market whose bank made its EUR keys once (RSA key generation is the slow
    part), copied by each test."""
    folder = tmp_path_factory.mktemp("ecash") / "market"
    init_market(folder)

    async def make_keys() -> None:
        async with running(Agent(bank_config(folder))) as bank:
            await bank.component(EcashBank).keys_of("EUR")

    trio.run(make_keys)
    return folder


@pytest.fixture
def market(prebuilt: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(prebuilt, tmp_path / "market"))


# -- a wallet for tests ----------------------------------------------------------------


@dataclass
class Pending:
    """A coin blinded, not yet signed."""

    key: Denomination
    secret: ed25519.Ed25519PrivateKey
    coin_key: bytes
    prepared: bytes
    blinded: bytes
    inv: bytes

    @property
    def asked(self) -> BlindedCoin:
        return BlindedCoin(key_id=self.key.key_id, blinded=self.blinded)


@dataclass
class Held:
    """A coin and its secret key."""

    coin: Coin
    secret: ed25519.Ed25519PrivateKey
    value: Amount

    def spend(self, *, payee: str = "seller", reference: bytes = ORDER,
              purpose: str = "payment", bank: str = "bank") -> Spend:
        return sign_spend(self.secret, self.coin, purpose=purpose, bank=bank, payee=payee,
                          reference=reference, amount=self.value)


def blind_coins(keys: Sequence[Denomination]) -> list[Pending]:
    out = []
    for key in keys:
        secret, coin_key = new_coin_key()
        prepared = prepare(coin_message(key.key_id, coin_key))
        blinded, inv = blind(key.rsa_key(), prepared)
        out.append(Pending(key, secret, coin_key, prepared, blinded, inv))
    return out


def unblind(pending: Sequence[Pending], signatures: Sequence[bytes]) -> list[Held]:
    held = []
    for p, blind_signature in zip(pending, signatures, strict=True):
        signature = finalize(p.key.rsa_key(), p.prepared, blind_signature, p.inv)
        verify(p.key.rsa_key(), p.prepared, signature)
        coin = Coin(key_id=p.key.key_id, coin_key=p.coin_key, prefix=p.prepared[:32],
                    signature=signature)
        held.append(Held(coin, p.secret, p.key.value))
    return held


def total(values: Sequence[Held] | Sequence[Pending]) -> Amount:
    units = sum((h.value if isinstance(h, Held) else h.key.value).minor_units for h in values)
    return Amount("EUR", units)


class World(BankBooks):
    def __init__(self, bank: Agent, buyer: Agent, seller: Agent, clock: Clock) -> None:
        self.bank, self.buyer, self.seller, self.clock = bank, buyer, seller, clock
        self.before: dict[str, int] = {}

    # -- the bank's books

    async def books(self) -> dict[str, int]:
        """EUR balances of buyer, seller and @ecash-outstanding; the books balance and
        the outstanding account holds what the bank's tables say is out."""
        def read(c: Any) -> dict[str, int]:
            _ledger.check_books(c)  # postings, entries, no overdraft, customers == minted
            got = {holder: _ledger.balances(c, holder).get("EUR", 0)
                   for holder in ("buyer", "seller", OUTSTANDING)}
            assert got[OUTSTANDING] == outstanding_by_tables(c)
            return got

        return await self.bank.database.read(read)

    # -- the wallet's side

    async def keys(self, agent: Agent | None = None) -> dict[int, Denomination]:
        """The newest key of each value, as a wallet verifies them."""
        agent = agent or self.buyer
        answer = KeysAnswer.from_wire(await agent.request(
            "bank", BANK_SERVICE, "ecash_keys", KeysRequest(currency="EUR").to_wire()))
        newest: dict[int, Denomination] = {}
        for statement in answer.denominations:
            body = verify_denomination(statement, bank_certificate=answer.bank_certificate,
                                       root=agent.context.root, crl=agent.context.crl,
                                       now=agent.context.now(), expected_bank="bank",
                                       expected_currency="EUR")
            newest.setdefault(body.value.minor_units, body)  # newest first
        return newest

    async def ask_withdraw(self, pending: Sequence[Pending], key: str,
                           amount: Amount | None = None) -> WithdrawAnswer:
        request = WithdrawRequest(amount=amount or total(pending),
                                  blinded=tuple(p.asked for p in pending), idempotency_key=key)
        return WithdrawAnswer.from_wire(await self.buyer.request(
            "bank", BANK_SERVICE, "ecash_withdraw", request.to_wire()))

    async def withdraw(self, values: Sequence[int], key: str) -> list[Held]:
        keys = await self.keys()
        pending = blind_coins([keys[v] for v in values])
        answer = await self.ask_withdraw(pending, key)
        verify_withdrawn(answer.withdrawn, bank_certificate=answer.bank_certificate,
                         root=self.buyer.context.root, crl=self.buyer.context.crl,
                         now=self.buyer.context.now(), expected_holder="buyer",
                         expected_amount=total(pending),
                         expected_order=blinded_order([p.asked for p in pending]),
                         expected_bank="bank", expected_idempotency_key=key)
        return unblind(pending, answer.blind_signatures)

    async def deposit(self, spends: Sequence[Spend], *, reference: bytes = ORDER,
                      amount: Amount, key: str = "d1", agent: Agent | None = None
                      ) -> Statement:
        agent = agent or self.seller
        request = DepositRequest(spends=tuple(spends), reference=reference, amount=amount,
                                 idempotency_key=key)
        answer = DepositAnswer.from_wire(await agent.request(
            "bank", BANK_SERVICE, "ecash_deposit", request.to_wire()))
        verify_deposited(answer.deposited, bank_certificate=answer.bank_certificate,
                         root=agent.context.root, crl=agent.context.crl,
                         now=agent.context.now(), expected_payee=agent.id,
                         expected_amount=amount, expected_reference=reference,
                         expected_bank="bank")
        return answer.deposited

    async def pay(self, held: Sequence[Held], *, reference: bytes = ORDER,
                  key: str = "d1") -> Statement:
        """The seller deposits ``held``, spent to it for ``reference``."""
        return await self.deposit([h.spend(reference=reference) for h in held],
                                  reference=reference, amount=total(held), key=key)

    async def exchange(self, spends: Sequence[Spend], pending: Sequence[Pending], *,
                       key: str = "x1", voucher: Statement | None = None,
                       voucher_signature: bytes | None = None) -> ExchangeAnswer:
        request = ExchangeRequest(spends=tuple(spends), blinded=tuple(p.asked for p in pending),
                                  idempotency_key=key, voucher=voucher,
                                  voucher_signature=voucher_signature)
        return ExchangeAnswer.from_wire(await self.buyer.request(
            "bank", BANK_SERVICE, "ecash_exchange", request.to_wire()))

    async def swap(self, held: Sequence[Held], values: Sequence[int], key: str = "x1"
                   ) -> list[Held]:
        """Exchange ``held`` for new coins of ``values``."""
        keys = await self.keys()
        pending = blind_coins([keys[v] for v in values])
        order = blinded_order([p.asked for p in pending])
        spends = [h.spend(purpose="exchange", payee="bank", reference=order) for h in held]
        answer = await self.exchange(spends, pending, key=key)
        return unblind(pending, answer.blind_signatures)

    async def refund(self, deposited: Statement, amount: Amount, key: str = "r1"
                     ) -> RefundAnswer:
        body = RefundOrder(original=deposited.digest, payer="seller", payee="buyer",
                           amount=amount, reason="returned", idempotency_key=key)
        order = self.seller.context.sign(REFUND_ORDER, body.to_body())
        return RefundAnswer.from_wire(await self.seller.request(
            "bank", BANK_SERVICE, BANK_REFUND, RefundRequest(refund_order=order).to_wire()))

    async def redeem(self, voucher: Statement, refund_key: ed25519.Ed25519PrivateKey,
                     values: Sequence[int], key: str = "v1",
                     keys: dict[int, Denomination] | None = None) -> list[Held]:
        keys = keys or await self.keys()
        pending = blind_coins([keys[v] for v in values])
        body = RefundVoucher.from_statement(voucher)
        signature = refund_key.sign(spend_message(
            purpose="refund", bank="bank", payee="bank",
            reference=blinded_order([p.asked for p in pending]), amount=body.amount))
        answer = await self.exchange([], pending, key=key, voucher=voucher,
                                     voucher_signature=signature)
        return unblind(pending, answer.blind_signatures)


def outstanding_by_tables(c: Any) -> int:
    """What ``@ecash-outstanding`` must hold by the ecash tables: coins signed
    (withdrawals, exchanges out) less coins taken back (deposited or exchanged in),
    plus vouchers not redeemed."""
    def one(sql: str) -> int:
        return int(c.execute(sql).fetchone()[0])

    withdrawn = one("SELECT coalesce(sum(p.amount), 0) FROM ledger_postings p"
                    " JOIN ledger_entries e ON e.entry = p.entry"
                    " JOIN ledger_accounts a ON a.id = p.account"
                    f" WHERE e.kind = 'ecash.withdrawn' AND a.holder = '{OUTSTANDING}'")
    exchanged_out = one("SELECT coalesce(sum(value), 0) FROM ecash_exchanges")
    taken = one("SELECT coalesce(sum(value), 0) FROM ecash_spent")
    vouchers = one("SELECT coalesce(sum(amount), 0) FROM ecash_vouchers WHERE redeemed IS NULL")
    return withdrawn + exchanged_out - taken + vouchers


@asynccontextmanager
async def world(market: Path) -> AsyncIterator[World]:
    clock = Clock()
    bank = Agent(bank_config(market), clock=clock)
    buyer = Agent(config_of(market, "buyer"), clock=clock)
    seller = Agent(config_of(market, "seller"), clock=clock)
    with trio.fail_after(DEADLINE):
        async with running(bank), running(buyer), running(seller):
            w = World(bank, buyer, seller, clock)
            await w.moved()
            yield w


# -- the tests --------------------------------------------------------------------------


async def test_withdraw_then_deposit_keeps_the_books(market: Path) -> None:
    async with world(market) as w:
        coins = await w.withdraw([5, 2, 1], "w1")
        assert await w.moved() == {"buyer": -8, OUTSTANDING: 8}
        deposited = await w.pay(coins)
        assert await w.moved() == {"seller": 8, OUTSTANDING: -8}
        # The same deposit again, under the same key or another: the same settlement.
        assert await w.pay(coins) == deposited
        assert await w.pay(coins, key="d2") == deposited
        assert await w.moved() == {}


async def test_withdraw_is_applied_once_per_key(market: Path) -> None:
    async with world(market) as w:
        keys = await w.keys()
        pending = blind_coins([keys[5], keys[5]])
        first = await w.ask_withdraw(pending, "w1")
        assert await w.moved() == {"buyer": -10, OUTSTANDING: 10}
        again = await w.ask_withdraw(pending, "w1")
        assert again.blind_signatures == first.blind_signatures
        assert again.withdrawn == first.withdrawn
        assert await w.moved() == {}
        await w.refused("payment.idempotency_conflict",
                        w.ask_withdraw(blind_coins([keys[5], keys[5]]), "w1"))
        assert len(unblind(pending, again.blind_signatures)) == 2


async def test_a_withdrawal_that_does_not_add_up_is_refused(market: Path) -> None:
    async with world(market) as w:
        keys = await w.keys()
        await w.refused("ecash.bad_withdrawal", w.ask_withdraw(
            blind_coins([keys[5], keys[2]]), "w1", amount=Amount("EUR", 8)))


async def test_a_coin_spent_twice_is_refused_with_the_first_spend(market: Path) -> None:
    async with world(market) as w:
        coins = await w.withdraw([5, 2], "w1")
        await w.pay(coins)
        await w.moved()
        first = coins[0].spend()
        refused = await w.refused("ecash.double_spent", w.pay([coins[0]], reference=b"r" * 32,
                                                             key="d2"))
        assert refused.detail["coin_key"] == coins[0].coin.coin_key.hex()
        assert refused.detail["first"] == first.to_wire()
        # A member of the kind: the spent coin brought to an exchange, with a fresh one.
        fresh = await w.withdraw([5], "w2")
        await w.moved()
        refused = await w.refused("ecash.double_spent", w.swap([fresh[0], coins[1]], [5, 2]))
        assert refused.detail["coin_key"] == coins[1].coin.coin_key.hex()
        await w.pay(fresh, reference=b"f" * 32, key="d3")  # the fresh coin is still good
        assert await w.moved() == {"seller": 5, OUTSTANDING: -5}


async def test_a_coin_of_an_expired_key_is_refused(market: Path) -> None:
    async with world(market) as w:
        keys = await w.keys()
        pending = blind_coins([keys[2]])
        withdrawn = await w.ask_withdraw(pending, "w1")
        coins = unblind(pending, withdrawn.blind_signatures)
        await w.moved()
        w.clock.ms = keys[2].deposit_until_ms + 1
        refused = await w.refused("ecash.expired_key", w.pay(coins))
        assert refused.detail["key_id"] == keys[2].key_id.hex()
        # A key past its signing window signs no more coins; the bank has made new ones.
        refused = await w.refused("ecash.expired_key", w.ask_withdraw(
            blind_coins([keys[2]]), "w2"))
        newer = await w.keys()
        assert newer[2].key_id != keys[2].key_id
        assert newer[2].withdraw_from_ms == w.clock.ms
        w.clock.ms = keys[2].deposit_until_ms  # the last instant it takes deposits
        deposited = await w.pay(coins)
        assert await w.moved() == {"seller": 2, OUTSTANDING: -2}
        # A member of the kind: the deposit retried after the window (its answer lost)
        # gets the settlement, not ecash.expired_key; so does a withdrawal retried.
        w.clock.ms += 1
        assert await w.pay(coins) == deposited
        assert await w.pay(coins, key="d2") == deposited
        assert (await w.ask_withdraw(pending, "w1")).withdrawn == withdrawn.withdrawn
        assert await w.moved() == {}


async def test_keys_rotate_before_the_window_ends(market: Path) -> None:
    """A new key of each value when the newest has < 1/4 of its signing window left;
    both are published, newest first, until the old one stops taking deposits."""
    async with world(market) as w:
        old = await w.keys()
        w.clock.ms = old[1].withdraw_until_ms - HOUR_MS // 4 + 1
        new = await w.keys()
        assert all(new[v].key_id != old[v].key_id for v in (1, 2, 5))
        answer = KeysAnswer.from_wire(await w.buyer.request(
            "bank", BANK_SERVICE, "ecash_keys", KeysRequest(currency="EUR").to_wire()))
        ids = [Denomination.from_statement(s).key_id for s in answer.denominations]
        assert ids.index(new[1].key_id) < ids.index(old[1].key_id)
        assert await w.keys() == new  # made once
        await w.refused("payment.currency_mismatch", w.buyer.request(
            "bank", BANK_SERVICE, "ecash_keys", KeysRequest(currency="USD").to_wire()))


async def test_a_blind_signature_under_the_wrong_key(market: Path) -> None:
    """The wallet blinds under key A (the 5-cent key) and names key B (the 2-cent
    key): the bank signs under B, and the wallet's finalize under A fails
    (ecash.bad_blind_signature); a message key B cannot sign the bank refuses."""
    async with world(market) as w:
        keys = await w.keys()
        a, b = keys[5], keys[2]
        modulus_b = b.rsa_key().public_numbers().n
        for _ in range(64):  # blinded under A, yet below B's modulus (about half are)
            [pending] = blind_coins([a])
            if int.from_bytes(pending.blinded, "big") < modulus_b:
                break
        asked = BlindedCoin(key_id=b.key_id, blinded=pending.blinded)
        answer = WithdrawAnswer.from_wire(await w.buyer.request(
            "bank", BANK_SERVICE, "ecash_withdraw", WithdrawRequest(
                amount=Amount("EUR", 2), blinded=(asked,), idempotency_key="w1").to_wire()))
        assert await w.moved() == {"buyer": -2, OUTSTANDING: 2}
        with pytest.raises(BadBlindSignature) as bad:
            finalize(a.rsa_key(), pending.prepared, answer.blind_signatures[0], pending.inv)
        assert bad.value.code == "ecash.bad_blind_signature"
        # The bank refuses what key B cannot sign: not below its modulus, or not its size.
        for blinded in (modulus_b.to_bytes(256, "big"), b"\xff" * 256):
            await w.refused("ecash.bad_withdrawal", w.buyer.request(
                "bank", BANK_SERVICE, "ecash_withdraw", WithdrawRequest(
                    amount=Amount("EUR", 2), blinded=(BlindedCoin(key_id=b.key_id,
                                                                  blinded=blinded),),
                    idempotency_key="w2").to_wire()))
        wire = WithdrawRequest(amount=Amount("EUR", 2), blinded=(asked,),
                               idempotency_key="w3").to_wire()
        wire["blinded"][0]["blinded"] = pending.blinded[:255]
        await w.refused("payment.bad_request", w.buyer.request(
            "bank", BANK_SERVICE, "ecash_withdraw", wire))


async def test_a_forged_coin_is_refused(market: Path) -> None:
    async with world(market) as w:
        keys = await w.keys()
        [real] = await w.withdraw([5], "w1")
        await w.moved()
        secret, coin_key = new_coin_key()
        forgeries = [
            # a signature that is no signature
            Coin(key_id=keys[5].key_id, coin_key=coin_key, prefix=b"p" * 32,
                 signature=b"\x01" * 256),
            # a real coin's signature on another coin key
            Coin(key_id=keys[5].key_id, coin_key=coin_key, prefix=real.coin.prefix,
                 signature=real.coin.signature),
            # a real coin claimed under a key of a higher value (another key)
            Coin(key_id=keys[2].key_id, coin_key=real.coin.coin_key, prefix=real.coin.prefix,
                 signature=real.coin.signature),
        ]
        for forged in forgeries:
            held = Held(forged, secret if forged.coin_key == coin_key else real.secret,
                        keys[5].value if forged.key_id == keys[5].key_id else keys[2].value)
            await w.refused("ecash.bad_coin", w.pay([held]))
        await w.refused("ecash.unknown_key", w.pay([Held(Coin(
            key_id=b"k" * 32, coin_key=coin_key, prefix=b"p" * 32, signature=b"\x01" * 256),
            secret, Amount("EUR", 5))]))
        await w.pay([real])  # the real coin was not spent by any of these
        assert await w.moved() == {"seller": 5, OUTSTANDING: -5}


async def test_a_coin_bound_to_another_contract_is_refused(market: Path) -> None:
    async with world(market) as w:
        coins = await w.withdraw([5, 1], "w1")
        await w.moved()
        spends = [h.spend(reference=ORDER) for h in coins]
        # The seller deposits them for another order; the buyer deposits the seller's.
        await w.refused("ecash.bad_spend", w.deposit(spends, reference=b"x" * 32,
                                                     amount=Amount("EUR", 6)))
        await w.refused("ecash.bad_spend", w.deposit(spends, amount=Amount("EUR", 6),
                                                     agent=w.buyer))
        # A spend for the seller brought to an exchange; an amount other than the coins'.
        keys = await w.keys()
        await w.refused("ecash.bad_spend", w.exchange(spends, blind_coins([keys[5], keys[1]])))
        await w.refused("payment.bad_request", w.deposit(spends, amount=Amount("EUR", 5)))
        await w.deposit(spends, amount=Amount("EUR", 6))
        assert await w.moved() == {"seller": 6, OUTSTANDING: -6}


async def test_an_exchange_keeps_the_value(market: Path) -> None:
    async with world(market) as w:
        coins = await w.withdraw([5], "w1")
        await w.moved()
        change = await w.swap(coins, [2, 2, 1])
        assert await w.moved() == {}  # no account moves: coins in, the same value out
        assert [h.value.minor_units for h in change] == [2, 2, 1]
        keys = await w.keys()
        # More value out than in; and the old coin, spent, is no longer taken.
        pending = blind_coins([keys[5], keys[1]])
        order = blinded_order([p.asked for p in pending])
        await w.refused("ecash.bad_withdrawal", w.exchange(
            [h.spend(purpose="exchange", payee="bank", reference=order) for h in change],
            pending, key="x2"))
        await w.refused("ecash.double_spent", w.pay(coins))
        # The same exchange again: the same signatures, nothing taken twice.
        pending = blind_coins([keys[5]])
        order = blinded_order([p.asked for p in pending])
        spends = [h.spend(purpose="exchange", payee="bank", reference=order) for h in change]
        first = await w.exchange(spends, pending, key="x3")
        again = await w.exchange(spends, pending, key="x3")
        assert again.blind_signatures == first.blind_signatures
        [five] = unblind(pending, first.blind_signatures)
        await w.pay([five])
        assert await w.moved() == {"seller": 5, OUTSTANDING: -5}


async def test_a_refund_comes_back_as_a_voucher_redeemed_once(market: Path) -> None:
    async with world(market) as w:
        coins = await w.withdraw([5, 2, 1], "w1")
        await w.moved()
        deposited = await w.pay(coins)
        await w.moved()
        answer = await w.refund(deposited, Amount("EUR", 7))
        assert await w.moved() == {"seller": -7, OUTSTANDING: 7}
        voucher = RefundVoucher.from_statement(answer.confirmation)
        assert voucher.original == deposited.digest and voucher.amount == Amount("EUR", 7)
        assert voucher.refund_key == coins[0].coin.coin_key  # the first coin's key
        # The refund again: the same voucher; more than what remains: refused.
        assert (await w.refund(deposited, Amount("EUR", 7))).confirmation == answer.confirmation
        await w.refused("payment.refund_exceeds_payment",
                        w.refund(deposited, Amount("EUR", 2), key="r2"))
        # Only the deposit's payee refunds it; a voucher the bank did not issue (the
        # seller signs one itself) buys nothing.
        body = RefundOrder(original=deposited.digest, payer="buyer", payee="seller",
                           amount=Amount("EUR", 1), reason="mine", idempotency_key="r9")
        await w.refused("payment.wrong_payee", w.buyer.request(
            "bank", BANK_SERVICE, BANK_REFUND, RefundRequest(
                refund_order=w.buyer.context.sign(REFUND_ORDER, body.to_body())).to_wire()))
        forged = w.seller.context.sign(answer.confirmation.type, answer.confirmation.body)
        await w.refused("payment.bad_request", w.redeem(forged, coins[0].secret, [5, 2]))
        # A signature by another key than the refund key is no redemption.
        await w.refused("ecash.bad_spend", w.redeem(answer.confirmation, coins[1].secret,
                                                    [5, 2]))
        new = await w.redeem(answer.confirmation, coins[0].secret, [5, 2])
        assert await w.moved() == {}
        await w.refused("ecash.voucher_used",
                        w.redeem(answer.confirmation, coins[0].secret, [5, 2], key="v2"))
        await w.pay(new, reference=b"n" * 32, key="d2")
        assert await w.moved() == {"seller": 7, OUTSTANDING: -7}
        # The last cent refunded: a second voucher of the same deposit.
        second = await w.refund(deposited, Amount("EUR", 1), key="r3")
        assert second.confirmation != answer.confirmation
        assert await w.moved() == {"seller": -1, OUTSTANDING: 1}
        # Redeemed after it expired: refused, the cent stays outstanding.
        keys = await w.keys()
        w.clock.ms = RefundVoucher.from_statement(second.confirmation).expires_ms + 1
        await w.refused("ecash.voucher_expired", w.redeem(
            second.confirmation, coins[0].secret, [1], key="v3", keys=keys))


async def test_a_refused_request_costs_the_bank_no_blind_signature(market: Path) -> None:
    """Found beyond the issue's list: refusals the transaction made after the coins
    were signed (RSA private operations, up to 64 a request): a withdrawal the account
    cannot pay, an exchange of a spent coin or of a used voucher. Each is refused
    now before signing, after the checks that need the coin's key (so the evidence
    of a first spend still goes only to a holder of the coin)."""
    async with world(market) as w:
        bank = w.bank.component(EcashBank)
        signed: list[int] = []
        sign = bank._sign

        async def counting(blinded: Any) -> list[bytes]:
            signed.append(len(blinded))
            return await sign(blinded)

        bank._sign = counting  # type: ignore[method-assign]
        keys = await w.keys()
        pending = blind_coins([keys[5]] * 4)
        request = WithdrawRequest(amount=total(pending), blinded=tuple(p.asked for p in pending),
                                  idempotency_key="poor")
        await w.refused("payment.insufficient_funds", w.seller.request(  # holds EUR 0.00
            "bank", BANK_SERVICE, "ecash_withdraw", request.to_wire()))
        assert signed == []
        coins = await w.withdraw([5, 2, 1], "w1")
        deposited = await w.pay(coins[:1])
        await w.moved()
        signed.clear()
        await w.refused("ecash.double_spent", w.swap(coins, [5, 2, 1]))
        voucher = (await w.refund(deposited, Amount("EUR", 5))).confirmation
        await w.redeem(voucher, coins[0].secret, [5])
        await w.moved()
        signed.clear()
        await w.refused("ecash.voucher_used", w.redeem(voucher, coins[0].secret, [5], key="v2"))
        assert signed == []


def test_settings_are_checked(prebuilt: Path) -> None:
    """[components.ecash] settings out of range stop the bank with a ConfigError
    naming them (agent.bad_config at the command line)."""
    bad = [{"denominations": []}, {"denominations": [1, 1]}, {"denominations": [0]},
           {"key_period_ms": 10}, {"deposit_period_ms": "1"}, {"currencies": ["euro"]},
           {"denominations": list(range(1, 33))}, {"colour": "red"}]
    for table in bad:
        with pytest.raises(ConfigError, match=r"\[components.ecash\]"):
            Agent(config_of(prebuilt, "bank", components={"ecash": table}))


def _rows(c: Any) -> set[tuple[str, tuple[tuple[str, Any], ...]]]:
    """Every row of every table of the bank's database: (table, ((column, value), ...))."""
    tables = [name for (name,) in c.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")]
    out = set()
    for table in tables:
        cursor = c.execute(f'SELECT * FROM "{table}"')
        names = [d[0] for d in cursor.description]
        out |= {(table, tuple(zip(names, row, strict=True))) for row in cursor}
    return out


def _texts(rows: set[tuple[str, tuple[tuple[str, Any], ...]]]) -> set[bytes]:
    """The BLOB and TEXT values of ``rows``, as bytes, but for the archive chain's
    link to the record before (``archive_records.prev``: the hash of whatever record
    came last, an order in time like the row ids, which this test does not compare)."""
    return {v if isinstance(v, bytes) else v.encode() for table, row in rows
            for column, v in row if isinstance(v, bytes | str)
            and (table, column) != ("archive_records", "prev")}


async def test_what_the_bank_keeps_at_withdrawal_never_appears_at_deposit(market: Path) -> None:
    async with world(market) as w:
        keys = await w.keys()
        before = await w.bank.database.read(_rows)
        pending = blind_coins([keys[5], keys[2], keys[1]])
        answer = await w.ask_withdraw(pending, "unlinkable-1")
        coins = unblind(pending, answer.blind_signatures)
        at_withdrawal = await w.bank.database.read(_rows) - before
        await w.pay(coins, reference=b"u" * 32, key="unlinkable-deposit")
        at_deposit = await w.bank.database.read(_rows) - before - at_withdrawal

        tables = {table for table, _ in at_withdrawal}
        assert {"ecash_withdrawals", "ledger_entries", "bank_requests"} <= tables
        assert {"ecash_spent", "ecash_deposits", "ledger_entries", "bank_requests",
                "bank_payments"} <= {table for table, _ in at_deposit}
        # What both store and names no coin and no customer: the currency, the bank's
        # own account, an empty memo, the archive's direction "sent", and the bank's
        # certificate and its fingerprint (the signer of every statement it makes).
        certificate = w.bank.context.certificate
        generic = {b"EUR", OUTSTANDING.encode(), b"", b"sent", fingerprint(certificate),
                   certificate.public_bytes(Encoding.DER)}
        # Everything the withdrawal stored, and what it asked and answered.
        kept = (_texts(at_withdrawal) | {p.blinded for p in pending}
                | set(answer.blind_signatures) | {answer.withdrawn.to_bytes(),
                                                   answer.withdrawn.digest}) - generic
        assert b"buyer" in kept  # the holder is among them
        found = _texts(at_deposit)
        assert found
        shared = [(value, stored[:80]) for value in kept for stored in found
                  if value == stored or (len(value) >= 8 and value in stored)]
        assert shared == []
        # The tables of the two share no column that could join them.
        def columns(c: Any, table: str) -> set[str]:
            return {row[1] for row in c.execute(f'PRAGMA table_info("{table}")')}

        withdrawals = await w.bank.database.read(lambda c: columns(c, "ecash_withdrawals"))
        for table in ("ecash_spent", "ecash_deposits"):
            other = await w.bank.database.read(lambda c, t=table: columns(c, t))
            assert withdrawals & other == set(), table


# -- withdrawals, payments, exchanges and refunds mixed, against the running bank -------


@contextmanager
def live_world(market: Path) -> Iterator[tuple[World, Callable[..., Any]]]:
    """The three agents running in a trio loop of their own thread, for a Hypothesis
    state machine (synchronous) to drive: ``call(async_fn, *args)`` runs one step
    there, bounded by DEADLINE. ``call(restart)`` stops the bank and starts another
    on the same files (its caches of keys and signers start empty)."""
    ready = threading.Event()
    box: dict[str, Any] = {"again": None, "restarted": []}

    async def first_of(*events: trio.Event) -> None:
        async with trio.open_nursery() as nursery:
            async def wait(event: trio.Event) -> None:
                await event.wait()
                nursery.cancel_scope.cancel()

            for event in events:
                nursery.start_soon(wait, event)

    async def serve() -> None:
        clock = Clock()
        buyer = Agent(config_of(market, "buyer"), clock=clock)
        seller = Agent(config_of(market, "seller"), clock=clock)
        async with running(buyer), running(seller):
            world = World(None, buyer, seller, clock)  # type: ignore[arg-type]
            stop = trio.Event()
            box.update(world=world, token=trio.lowlevel.current_trio_token(), stop=stop)
            for _ in range(10_000):  # one bank a round; bounded
                box["again"] = again = trio.Event()
                async with running(Agent(bank_config(market), clock=clock)) as bank:
                    world.bank = bank
                    ready.set()
                    for done in box["restarted"]:
                        done.set()
                    box["restarted"].clear()
                    await first_of(stop, again)
                if stop.is_set():
                    break

    async def restart() -> None:
        done = trio.Event()
        box["restarted"].append(done)
        box["again"].set()
        await done.wait()

    def main() -> None:
        try:
            trio.run(serve)
        except BaseException as exc:  # surfaced by the test thread
            box["error"] = exc
        finally:
            ready.set()

    thread = threading.Thread(target=main, name="ecash-bank-agents")
    thread.start()
    try:
        assert ready.wait(DEADLINE) and "error" not in box, box.get("error")

        def call(fn: Callable[..., Any], *args: Any) -> Any:
            async def bounded() -> Any:
                with trio.fail_after(DEADLINE):
                    return await fn(*args)

            return trio.from_thread.run(bounded, trio_token=box["token"])

        box["world"].restart = partial(call, restart)
        yield box["world"], call
    finally:
        if "stop" in box:
            trio.from_thread.run_sync(box["stop"].set, trio_token=box["token"])
        thread.join(DEADLINE)
        assert not thread.is_alive(), box.get("error")
        assert "error" not in box, box["error"]


@dataclass
class Deposit:
    statement: Statement
    amount: int
    refunded: int
    coins: list[Held]  # the first one's key redeems a voucher
    reference: bytes


class EcashTraffic(RuleBasedStateMachine):
    """Withdrawals (and their retries), payments deposited by the seller, coins spent
    again, exchanges, refunds and their vouchers' redemptions (and again), and the
    clock moving through key rotations and expiries, all against the running bank.
    After every step the books balance, each balance moved as the model says,
    ``@ecash-outstanding`` holds the value of the coins out and the vouchers not
    redeemed, and the bank took each coin at most once."""

    world: World
    call: Callable[..., Any]

    def __init__(self) -> None:
        super().__init__()
        self.start = self.call(self.world.books)
        self.delta = {"buyer": 0, "seller": 0, OUTSTANDING: 0}
        self.held: list[Held] = []
        self.spent: list[tuple[Held, bytes]] = []  # the coin, the reference it paid
        self.deposits: list[Deposit] = []
        self.vouchers: list[tuple[Statement, Held, bool]] = []
        self.withdrawals: list[tuple[list[Pending], str, WithdrawAnswer]] = []
        self.taken: set[bytes] = set()  # coin keys the bank took (deposit or exchange)
        self.count = 0
        self.restarted = False

    def fresh(self, what: str) -> str:
        self.count += 1
        return f"{what}-{time.time_ns()}-{self.count}"

    def expect(self, code: str | None, fn: Callable[..., Any], *args: Any) -> Any:
        before = self.call(self.world.books)
        try:
            result = self.call(fn, *args)
        except RemoteError as exc:
            assert exc.code == code, exc
            assert self.call(self.world.books) == before, "a refusal moved money"
            event(f"refused {code}")
            return None
        assert code is None, f"{code} expected"
        return result

    def alive(self, held: Held) -> bool:
        return self.world.clock.ms <= self.key_of(held).deposit_until_ms

    def key_of(self, held: Held) -> Denomination:
        return self.keys_by_id[held.coin.key_id]

    #: Every key a coin of any example was made under.
    keys_by_id: ClassVar[dict[bytes, Denomination]] = {}

    def newest(self) -> dict[int, Denomination]:
        keys = self.call(self.world.keys)
        for key in keys.values():
            EcashTraffic.keys_by_id[key.key_id] = key
        return keys

    @initialize(values=st.lists(st.sampled_from([1, 2, 5]), min_size=2, max_size=5))
    def first_withdrawal(self, values: list[int]) -> None:
        self.withdraw(values)

    @rule(values=st.lists(st.sampled_from([1, 2, 5]), min_size=1, max_size=4))
    def withdraw(self, values: list[int]) -> None:
        keys = self.newest()
        pending = blind_coins([keys[v] for v in values])
        key = self.fresh("w")
        answer = self.expect(None, self.world.ask_withdraw, pending, key)
        self.held += unblind(pending, answer.blind_signatures)
        self.withdrawals.append((pending, key, answer))
        self.delta["buyer"] -= sum(values)
        self.delta[OUTSTANDING] += sum(values)

    @precondition(lambda self: self.withdrawals)
    @rule(data=st.data())
    def withdraw_again(self, data: st.DataObject) -> None:
        """A withdrawal's retry (a lost answer): the same answer, nothing moves."""
        pending, key, answer = data.draw(st.sampled_from(self.withdrawals))
        again = self.expect(None, self.world.ask_withdraw, pending, key)
        assert again.withdrawn == answer.withdrawn
        assert again.blind_signatures == answer.blind_signatures

    def pick(self, data: st.DataObject) -> list[Held]:
        count = data.draw(st.integers(1, min(3, len(self.held))))
        positions = data.draw(st.lists(st.integers(0, len(self.held) - 1), min_size=count,
                                       max_size=count, unique=True))
        return [self.held[p] for p in positions]

    @precondition(lambda self: self.held)
    @rule(data=st.data())
    def pay(self, data: st.DataObject) -> None:
        coins = self.pick(data)
        reference = self.fresh("order").encode()
        amount = total(coins)
        if not all(map(self.alive, coins)):
            self.expect("ecash.expired_key", partial(self.world.pay, coins, reference=reference))
            return
        deposited = self.expect(None, partial(self.world.pay, coins, reference=reference,
                                              key=self.fresh("d")))
        for held in coins:
            self.held.remove(held)
            self.spent.append((held, reference))
            self.taken.add(held.coin.coin_key)
        self.deposits.append(Deposit(deposited, amount.minor_units, 0, coins, reference))
        self.delta["seller"] += amount.minor_units
        self.delta[OUTSTANDING] -= amount.minor_units

    @precondition(lambda self: self.spent)
    @rule(data=st.data())
    def spend_again(self, data: st.DataObject) -> None:
        """A spent coin paid for another order, or exchanged: refused."""
        held, _ = data.draw(st.sampled_from(self.spent))
        code = "ecash.double_spent" if self.alive(held) else "ecash.expired_key"
        if data.draw(st.booleans()):
            self.expect(code, partial(self.world.pay, [held],
                                      reference=self.fresh("again").encode()))
        else:
            self.expect(code, self.world.swap, [held], [held.value.minor_units])

    @precondition(lambda self: self.held)
    @rule(data=st.data())
    def exchange(self, data: st.DataObject) -> None:
        coins = self.pick(data)
        value = total(coins).minor_units
        values = denominations_for(value, [1, 2, 5])
        if data.draw(st.booleans()) and len(values) > 1:
            values = values[::-1]  # another split of the same value
        if not all(map(self.alive, coins)):
            self.expect("ecash.expired_key", self.world.swap, coins, values)
            return
        change = self.expect(None, self.world.swap, coins, values, self.fresh("x"))
        for held in coins:
            self.held.remove(held)
            self.taken.add(held.coin.coin_key)
        self.held += change
        self.newest()

    @precondition(lambda self: any(d.refunded < d.amount for d in self.deposits))
    @rule(data=st.data())
    def refund(self, data: st.DataObject) -> None:
        deposit = data.draw(st.sampled_from([d for d in self.deposits
                                             if d.refunded < d.amount]))
        amount = data.draw(st.integers(1, deposit.amount - deposit.refunded))
        answer = self.expect(None, self.world.refund, deposit.statement, Amount("EUR", amount),
                             self.fresh("r"))
        deposit.refunded += amount
        self.vouchers.append((answer.confirmation, deposit.coins[0], False))
        self.delta["seller"] -= amount
        self.delta[OUTSTANDING] += amount

    @precondition(lambda self: self.vouchers)
    @rule(data=st.data())
    def redeem(self, data: st.DataObject) -> None:
        position = data.draw(st.integers(0, len(self.vouchers) - 1))
        voucher, first, redeemed = self.vouchers[position]
        amount = RefundVoucher.from_statement(voucher).amount.minor_units
        values = denominations_for(amount, [1, 2, 5])
        if redeemed:
            self.expect("ecash.voucher_used", self.world.redeem, voucher, first.secret, values,
                        self.fresh("v"))
            return
        self.held += self.expect(None, self.world.redeem, voucher, first.secret, values,
                                 self.fresh("v"))
        self.vouchers[position] = (voucher, first, True)
        self.newest()

    @precondition(lambda self: not self.restarted)  # once an example: a start costs
    @rule()
    def restart(self) -> None:
        """The bank stopped and started again: what it answered stays answered."""
        self.world.restart()  # type: ignore[attr-defined]
        self.restarted = True
        event("bank restarted")

    @precondition(lambda self: self.deposits)
    @rule(data=st.data())
    def deposit_again(self, data: st.DataObject) -> None:
        """The seller's retry of a deposit (a lost answer, under another key): the
        same settlement, even after the coins' keys stopped taking deposits."""
        deposit = data.draw(st.sampled_from(self.deposits))
        again = self.expect(None, partial(self.world.pay, deposit.coins,
                                          reference=deposit.reference, key=self.fresh("d")))
        assert again == deposit.statement

    @rule(minutes=st.integers(0, 100))
    def advance(self, minutes: int) -> None:
        self.world.clock.ms += minutes * 60_000

    @invariant()
    def books_balance(self) -> None:
        now = self.call(self.world.books)  # check_books, outstanding by the tables
        assert {h: now[h] - self.start[h] for h in now} == self.delta
        out = sum(h.value.minor_units for h in self.held) + sum(
            RefundVoucher.from_statement(v).amount.minor_units
            for v, _, redeemed in self.vouchers if not redeemed)
        assert self.delta[OUTSTANDING] == out  # what this example's wallet holds
        known = self.taken | {h.coin.coin_key for h in self.held}
        taken = self.call(self.world.bank.database.read, lambda c: {
            k for (k,) in c.execute("SELECT coin_key FROM ecash_spent")})
        assert taken & known == self.taken  # each coin taken once, a held one never


def test_ecash_traffic_keeps_the_books(market: Path) -> None:
    with live_world(market) as (w, call):
        EcashTraffic.world, EcashTraffic.call = w, staticmethod(call)
        run_state_machine_as_test(EcashTraffic, settings=settings(
            max_examples=15, stateful_step_count=15, deadline=None,
            suppress_health_check=[HealthCheck.too_slow]))
