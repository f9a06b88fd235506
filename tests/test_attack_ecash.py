"""The ecash instrument attacked as an outsider who read protocol.md 8.7 would (issue
11, brief A1): a hostile buyer, seller or third party with a valid certificate of the
market, talking to a real bank (agents/instruments/ecash.py) over loopback TLS with
its own wallet code (tests/test_ecash_bank.py's). Each attack is refused with its
stable code, moves no money, and the books balance after it (``World.books``:
``check_books`` and ``@ecash-outstanding`` == what the ecash tables say is out).

Faults found, each an instance and another member of its kind:
- blind signatures for free: requests sent at once each passed the bank's checks
  and were signed, to be refused at commit (one coin exchanged 8 times at once;
  withdrawals beyond the account, one voucher redeemed 6 times at once);
- a wallet left holding spent coins as fresh by a seller that deposited the coins
  it was shown and refused the payment (all deposited; one deposited and the two
  kept back, which the seller could still deposit, were fresh again);
- a made-up key id made the seller ask the bank for its keys and verify them all,
  once a proof (one after another; 16 at once).
The attacks that found nothing stay as regressions ("attacks that found nothing").
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import test_ecash_bank
import trio
from test_ecash_bank import ORDER, World, blind_coins, total, unblind, world

from semper.agents.components._wallet import Wallet
from semper.agents.instruments.ecash import OUTSTANDING, EcashBank
from semper.services import Amount
from semper.services.payment import BANK_SERVICE, PaymentRequest
from semper.services.payment.ecash import Spend, blinded_order
from semper.services.payment.ecash._wire import WithdrawRequest
from semper.services.statements import Statement
from semper.transport import RemoteError

#: tests/test_ecash_bank's market (its bank's keys made once for the module).
prebuilt = test_ecash_bank.prebuilt
market = test_ecash_bank.market


def count_signatures(w: World) -> list[int]:
    """The number of blind signatures of each ``_sign`` call the bank makes from now."""
    bank = w.bank.component(EcashBank)
    signed: list[int] = []
    sign = bank._sign

    async def counting(blinded: Any) -> list[bytes]:
        signed.append(len(blinded))
        return await sign(blinded)

    bank._sign = counting  # type: ignore[method-assign]
    return signed


async def at_once(*calls: Any) -> list[Any]:
    """Run ``calls`` concurrently; each one's answer or RemoteError code, in order."""
    out: list[Any] = [None] * len(calls)

    async def one(i: int, call: Any) -> None:
        try:
            out[i] = await call
        except RemoteError as exc:
            out[i] = exc.code

    async with trio.open_nursery() as nursery:
        for i, call in enumerate(calls):
            nursery.start_soon(one, i, call)
    return out


# -- DoS: blind signatures for free --------------------------------------------------------


async def test_one_coin_exchanged_many_times_at_once_is_signed_for_once(market: Path) -> None:
    """A holder of one coin sends 8 exchanges of it at once, each for other new coins:
    one is signed, the others are ecash.double_spent, and the bank made blind
    signatures for that one only (channels take 1024 requests in flight: without
    this, one coin bought 1024 x 64 RSA private operations)."""
    async with world(market) as w:
        [coin] = await w.withdraw([5], "w1")
        await w.moved()
        keys = await w.keys()
        signed = count_signatures(w)
        calls = []
        for _ in range(8):
            pending = blind_coins([keys[2], keys[2], keys[1]])
            order = blinded_order([p.asked for p in pending])
            calls.append(w.exchange([coin.spend(purpose="exchange", payee="bank",
                                                reference=order)], pending))
        got = await at_once(*calls)
        assert sorted(map(str, got)).count("ecash.double_spent") == 7, got
        assert signed == [3], signed
        assert await w.moved() == {}


async def test_withdrawals_beyond_the_account_at_once_are_signed_for_once(
        market: Path) -> None:
    """The same kind from an account: the seller, holding EUR 0.05, asks 6 withdrawals
    of EUR 0.05 at once under 6 keys: one is signed, 5 are
    payment.insufficient_funds, and the bank signed for that one only."""
    async with world(market) as w:
        await w.pay(await w.withdraw([5], "w1"))
        assert (await w.books())["seller"] == 5
        await w.moved()
        keys = await w.keys()
        signed = count_signatures(w)
        calls = []
        for n in range(6):
            pending = blind_coins([keys[2], keys[2], keys[1]])
            request = WithdrawRequest(amount=total(pending),
                                      blinded=tuple(p.asked for p in pending),
                                      idempotency_key=f"s{n}")
            calls.append(w.seller.request("bank", BANK_SERVICE, "ecash_withdraw",
                                          request.to_wire()))
        got = await at_once(*calls)
        assert got.count("payment.insufficient_funds") == 5, got
        assert signed == [3], signed
        assert await w.moved() == {"seller": -5, OUTSTANDING: 5}


async def test_one_voucher_redeemed_many_times_at_once_is_signed_for_once(
        market: Path) -> None:
    """And from a refund voucher: its holder redeems it 6 times at once for other new
    coins: one is signed, 5 are ecash.voucher_used, one set of signatures."""
    async with world(market) as w:
        coins = await w.withdraw([5], "w1")
        voucher = (await w.refund(await w.pay(coins), Amount("EUR", 5))).confirmation
        await w.moved()
        keys = await w.keys()
        signed = count_signatures(w)
        got = await at_once(*(w.redeem(voucher, coins[0].secret, [2, 2, 1], key=f"v{n}",
                                       keys=keys) for n in range(6)))
        assert got.count("ecash.voucher_used") == 5, got
        assert signed == [3], signed
        assert await w.moved() == {}


# -- a seller that refuses after seeing the coins ------------------------------------------


async def shown_and_refused(w: World, deposited: int) -> tuple[Wallet, list[Spend], int]:
    """The buyer's wallet pays EUR 0.08 (coins 5, 2, 1) to a hostile seller, which
    deposits the first ``deposited`` of the spends it was shown for that order, then
    refuses the payment: the wallet gets its ``refused`` (as the module calls it).
    The wallet, the spends shown, and the value of those kept back."""
    wallet = w.buyer.component(Wallet)
    await wallet.withdraw(Amount("EUR", 8), "w1")
    request = PaymentRequest(payee="seller", amount=Amount("EUR", 8), reference=ORDER,
                             idempotency_key="p1")
    spends = [Spend.from_wire(s) for s in await wallet.spend(request)]
    value = {k.key_id: k.value.minor_units for k in (await w.keys()).values()}
    taken = spends[:deposited]
    if taken:
        await w.deposit(taken, amount=Amount("EUR", sum(value[s.coin.key_id] for s in taken)))
    await w.moved()
    with contextlib.suppress(RemoteError):
        await wallet.refused(request)
    return wallet, spends, sum(value[s.coin.key_id] for s in spends[deposited:])


async def test_coins_a_refusing_seller_deposited_are_all_counted_spent(market: Path) -> None:
    """The seller deposited all three coins and refused: the wallet exchanges them
    (they were shown), the bank says ecash.double_spent: every coin is spent, and the
    wallet must hold none (it held the two the bank did not name as fresh, which
    later payments would offer and see refused, one coin per failed payment)."""
    async with world(market) as w:
        wallet, _, _ = await shown_and_refused(w, 3)
        assert await wallet.balance("EUR") == 0
        assert await w.moved() == {}


async def test_coins_a_refusing_seller_kept_back_are_exchanged_all_the_same(
        market: Path) -> None:
    """Another member: the seller deposited one of the three coins and refused. The
    wallet's exchange of the three is refused (ecash.double_spent): the deposited
    coin is spent, and the two it kept back, whose spends the seller still holds,
    are exchanged again (they were fresh again, for the seller to deposit whenever
    it liked and the wallet to offer again), so the seller's later deposit of them
    is refused and the wallet holds new coins of their value."""
    async with world(market) as w:
        wallet, spends, kept = await shown_and_refused(w, 1)
        assert await wallet.balance("EUR") == kept
        assert await w.moved() == {}
        shown = {s.coin.coin_key for s in spends}
        fresh = await w.buyer.database.read(lambda c: [row[0] for row in c.execute(
            "SELECT coin_key FROM ecash_coins WHERE state = 'fresh'")])
        assert fresh and not shown & set(fresh)
        # The seller refunds its deposit in full (its reference is free again) and
        # deposits the coins it kept back: they were exchanged.
        await w.refund(Statement.from_bytes(await w.bank.database.read(lambda c: c.execute(
            "SELECT deposited FROM ecash_deposits").fetchone()[0])), Amount("EUR", 8 - kept))
        await w.moved()
        await w.refused("ecash.double_spent",
                        w.deposit(spends[1:], amount=Amount("EUR", kept), key="d2"))


# -- attacks that found nothing (kept: each refusal's code, nothing moved) -----------------


async def test_double_spends_at_once_settle_once(market: Path) -> None:
    """A hostile buyer spends one coin to two payees (the seller, and itself as a
    payee) and both deposit at once; another coin is deposited and exchanged at
    once; a deposit is refunded twice at once under two keys for more than it was
    in all. Each time one wins and the other gets its code; the books balance."""
    async with world(market) as w:
        five, two = await w.withdraw([5, 2], "w1")
        await w.moved()
        got = await at_once(
            w.deposit([five.spend()], amount=five.value),
            w.deposit([five.spend(payee="buyer")], amount=five.value, agent=w.buyer))
        assert [g for g in got if isinstance(g, str)] == ["ecash.double_spent"], got
        moved = await w.moved()
        assert moved[OUTSTANDING] == -5 and sum(moved.values()) == 0, moved
        keys = await w.keys()
        pending = blind_coins([keys[2]])
        order = blinded_order([p.asked for p in pending])
        got = await at_once(
            w.deposit([two.spend(reference=b"t" * 32)], reference=b"t" * 32,
                      amount=two.value, key="d2"),
            w.exchange([two.spend(purpose="exchange", payee="bank", reference=order)],
                       pending))
        assert [g for g in got if isinstance(g, str)] == ["ecash.double_spent"], got
        assert (await w.moved()).get(OUTSTANDING, 0) in (0, -2)
        deposited = got[0]
        if isinstance(deposited, str):  # the exchange won: pay with its new coin
            [new] = unblind(pending, got[1].blind_signatures)
            deposited = await w.pay([new], reference=b"u" * 32, key="d3")
            await w.moved()
        got = await at_once(w.refund(deposited, Amount("EUR", 2), key="r1"),
                            w.refund(deposited, Amount("EUR", 1), key="r2"))
        refusals = [g for g in got if isinstance(g, str)]
        assert refusals == ["payment.refund_exceeds_payment"], got
        moved = await w.moved()
        assert moved[OUTSTANDING] in (1, 2) and sum(moved.values()) == 0, moved


async def test_inflation_and_misdirection_are_refused(market: Path) -> None:
    """Value out of nothing: withdrawals whose keys are worth more than the amount, of
    another currency, of 65 coins, of an int64 amount; a deposit claiming more
    than its coins, of one coin twice, for another reference, by a payee the coins
    were not spent to, naming another bank; an exchange out of more than in or of
    nothing; a refund of a deposit by one who did not receive it, in another
    currency; keys of a currency the bank does not issue."""
    async with world(market) as w:
        coins = await w.withdraw([5, 2, 1], "w1")
        await w.moved()
        keys = await w.keys()
        five = blind_coins([keys[5]])
        for pending, amount, code in (
                (five, Amount("EUR", 2), "ecash.bad_withdrawal"),
                (five, Amount("USD", 5), "ecash.unknown_key"),
                (five, Amount("EUR", (1 << 63) - 1), "ecash.bad_withdrawal"),
                (blind_coins([keys[1]] * 65), Amount("EUR", 65), "payment.bad_request")):
            body = {"amount": amount.to_wire(), "idempotency_key": "w2",
                    "blinded": [{"key_id": p.key.key_id, "blinded": p.blinded}
                                for p in pending]}
            await w.refused(code, w.buyer.request("bank", BANK_SERVICE, "ecash_withdraw", body))
        spends = [h.spend() for h in coins]
        for call, code in (
                (w.deposit(spends, amount=Amount("EUR", 9)), "payment.bad_request"),
                (w.deposit(spends[:1] * 2, amount=Amount("EUR", 10)), "ecash.bad_spend"),
                (w.deposit(spends, reference=b"x" * 32, amount=Amount("EUR", 8)),
                 "ecash.bad_spend"),
                (w.deposit(spends, amount=Amount("EUR", 8), agent=w.buyer), "ecash.bad_spend"),
                (w.deposit([h.spend(bank="seller") for h in coins], amount=Amount("EUR", 8)),
                 "ecash.bad_spend")):
            await w.refused(code, call)
        pending = blind_coins([keys[5], keys[5]])
        order = blinded_order([p.asked for p in pending])
        await w.refused("ecash.bad_withdrawal", w.exchange(
            [h.spend(purpose="exchange", payee="bank", reference=order) for h in coins],
            pending))
        await w.refused("payment.bad_request", w.buyer.request(
            "bank", BANK_SERVICE, "ecash_exchange", {
                "spends": [], "idempotency_key": "x9",
                "blinded": [{"key_id": p.key.key_id, "blinded": p.blinded} for p in pending]}))
        deposited = await w.pay(coins)
        await w.moved()
        mine = await w.withdraw([1], "w3")
        await w.moved()
        theirs = await w.deposit([mine[0].spend(payee="buyer")], amount=Amount("EUR", 1),
                                 agent=w.buyer, key="d9")
        await w.moved()
        await w.refused("payment.wrong_payee", w.refund(theirs, Amount("EUR", 1)))
        await w.refused("payment.currency_mismatch", w.refund(deposited, Amount("USD", 1)))
        voucher = (await w.refund(deposited, Amount("EUR", 5), key="r5")).confirmation
        await w.moved()
        await w.refused("ecash.bad_withdrawal", w.redeem(voucher, coins[0].secret, [5, 2]))
        await w.refused("ecash.bad_spend", w.redeem(voucher, mine[0].secret, [5]))
        await w.refused("payment.currency_mismatch", w.buyer.request(
            "bank", BANK_SERVICE, "ecash_keys", {"currency": "USD"}))


# -- a buyer that makes the seller ask the bank -------------------------------------------


async def hostile_order(w: World, key: str = "hostile-1") -> bytes:
    """An order of the seller's cheapest offer, to be paid by ecash: its digest."""
    catalogue = await w.buyer.request("seller", "commerce", "catalogue", {})
    offer = min((Statement.from_wire(o) for o in catalogue["offers"]),
                key=lambda o: o.body["price"]["minor_units"])
    order = w.buyer.context.sign("commerce.order", {
        "buyer": "buyer", "seller": "seller", "offer": offer.to_wire(),
        "offer_digest": offer.digest, "quantity": 1, "payment_module": "ecash",
        "idempotency_key": key})
    answer = await w.buyer.request("seller", "commerce", "order", {"order": order.to_wire()})
    return bytes(answer["order"])


def count_key_fetches(w: World) -> list[str]:
    """The currencies of each ``bank.ecash_keys`` the bank serves from now."""
    bank = w.bank.component(EcashBank)
    fetched: list[str] = []
    keys_of = bank.keys_of

    async def counting(currency: str) -> Any:
        fetched.append(currency)
        return await keys_of(currency)

    bank.keys_of = counting  # type: ignore[method-assign]
    return fetched


async def test_coins_of_unknown_keys_do_not_make_the_seller_ask_the_bank_each_time(
        market: Path) -> None:
    """A buyer hands the seller 20 proofs whose coin names a key id no bank has: each
    is ecash.unknown_key, and the seller asked the bank for its keys (and verified
    every statement of the answer: 13 a month of rotation, up to 256) once, not once
    a proof: one payment.accept made the seller make a bank request and verify up
    to 256 statements."""
    async with world(market) as w:
        reference = await hostile_order(w)
        fetched = count_key_fetches(w)
        for n in range(20):
            await w.refused("ecash.unknown_key", made_up(w, reference, n))
        assert len(fetched) <= 1, fetched


def made_up(w: World, reference: bytes, n: int) -> Any:
    """payment.accept of a coin of a made-up key id (``n``) for the order."""
    fake = {"coin": {"key_id": bytes([n]) * 32, "coin_key": bytes(32), "prefix": bytes(32),
                     "signature": bytes(256)}, "signature": bytes(64)}
    return w.buyer.request("seller", "payment", "accept", {
        "module": "ecash", "reference": reference, "proof": {"spends": [fake]}})


async def test_many_such_proofs_at_once_make_the_seller_ask_once(market: Path) -> None:
    """Another member: the made-up proofs come 16 at a time, for 16 orders (a
    channel takes 1024 in flight; the seller takes one proof at a time per order),
    each burst a second after the last: the seller asks the bank once a burst, not
    once a proof (they all saw the cache miss before the first answer came)."""
    async with world(market) as w:
        references = [await hostile_order(w, f"hostile-{n}") for n in range(16)]
        await w.refused("ecash.unknown_key", made_up(w, references[0], 0))
        fetched = count_key_fetches(w)
        for burst in range(3):
            w.clock.ms += 1_001
            got = await at_once(*(made_up(w, r, n) for n, r in enumerate(references)))
            assert set(got) == {"ecash.unknown_key"}, got
            assert len(fetched) == burst + 1, fetched
        assert await w.moved() == {}
