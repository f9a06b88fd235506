"""The card gateway at the bank (agents/instruments/card.py) and the buyer's cards
(agents/components/_cards.py) against real bank, seller and buyer agents over
loopback TLS and real SQLite, on one injected clock (issue 11 item 2).

The gateway holds an authorisation's amount in ``@card-held``, pays the merchant
what it captures (up to the rest of the hold), returns the rest at the final capture
or at expiry (the sweep), refunds a capture through the generic ``bank.refund`` to
the cardholder's account, and answers every repeat with its first statement. It
refuses with a stable code, moving nothing: a card its signer does not hold, an
expired card, an amount beyond the funds (``card.declined``), a capture beyond the
hold or of another merchant's authorisation. The books balance after every step.

Members of the kind found beyond the issue's list: the merchant replaying the same
sealed instructions under another key (one hold, not two); a card number and expiry
known to someone else, signed by that someone (``card.unknown_card``: the number
alone pays nothing).
"""

from __future__ import annotations

import logging
import secrets
import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from cryptography.hazmat.primitives.asymmetric import x25519
from market_helpers import DEADLINE, BankBooks, SharedClock, config_of, running, wait_until

from semper.agents import Agent
from semper.agents.components import _ledger
from semper.agents.components._cards import Card, Cards, check_card_number
from semper.agents.components._payments import AgentPaymentContext
from semper.agents.components._purchase import Shopper
from semper.agents.instruments import card as card_gateway
from semper.agents.instruments.card import AUTH_VALIDITY_MS, HELD, CardGateway
from semper.agents.operator._market import init_market
from semper.services import Amount
from semper.services.payment import PaymentResult, refund_payment
from semper.services.payment.card import (
    CARD_AUTHORIZE,
    CARD_CAPTURE,
    CARD_GATEWAY_KEY,
    DUAL_SIGNATURE,
    Authorization,
    AuthorizeRequest,
    CaptureRequest,
    CardCaptured,
    GatewayKey,
    GatewayKeyRequest,
    OrderInformation,
    PaymentInstructions,
)
from semper.services.payment.card._checks import check_gateway_key
from semper.services.payment.card._set import (
    dual_signature,
    oimd_of,
    pimd_of,
    seal_instructions,
)
from semper.services.statements import Statement
from semper.transport import RemoteError

HOLDERS = ("buyer", "seller", HELD)


Clock = SharedClock  # one clock for all three agents, moved by the test


@pytest.fixture(scope="module")
def market(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One market for the module: each test pays its own orders and looks at what
    moved, so none depends on another's balances."""
    folder = tmp_path_factory.mktemp("card") / "market"
    init_market(folder)
    return folder


class World(BankBooks):
    def __init__(self, bank: Agent, buyer: Agent, seller: Agent, clock: Clock) -> None:
        self.bank, self.buyer, self.seller, self.clock = bank, buyer, seller, clock
        self.before: dict[str, int] = {}

    async def books(self) -> dict[str, int]:
        def read(c: Any) -> dict[str, int]:
            _ledger.check_books(c)  # customers, @card-held included, hold the minted
            return {h: _ledger.balances(c, h).get("EUR", 0) for h in HOLDERS}

        return await self.bank.database.read(read)

    async def card(self) -> Card:
        return await self.buyer.component(Cards).card()

    async def instructions(self, amount: Amount, *, order: bytes | None = None,
                           card: Card | None = None, signer: Agent | None = None,
                           merchant: str = "seller", key: str = "pay-1",
                           merchant_key: str | None = None) -> AuthorizeRequest:
        """What the merchant forwards to authorise ``amount`` for an order: the PI
        sealed to the gateway, the OIMD, the dual signature (by ``signer``, the
        buyer unless told)."""
        card = card or await self.card()
        signer = signer or self.buyer
        oi = OrderInformation(order=order or secrets.token_bytes(32), merchant=merchant,
                              amount=amount, description="Map of the market")
        oimd = oimd_of(oi)
        pi = PaymentInstructions(number=card.number, expiry=card.expiry, amount=amount,
                                 merchant=merchant, order=oimd, idempotency_key=key,
                                 nonce=secrets.token_bytes(16))
        answer = await signer.context.call("bank", CARD_GATEWAY_KEY, GatewayKeyRequest())
        key_body = check_gateway_key(answer.key, bank_certificate=answer.bank_certificate,
                                     root=signer.context.root, crl=signer.context.crl,
                                     now=signer.context.now(), expected_bank="bank")
        sealed = seal_instructions(pi, gateway_key=x25519.X25519PublicKey.from_public_bytes(
            key_body.public_key))
        dual = signer.context.sign(DUAL_SIGNATURE, dual_signature(pimd_of(pi), oimd).to_body())
        return AuthorizeRequest(sealed_pi=sealed, oimd=oimd, dual=dual,
                                cardholder_certificate=signer.context.certificate,
                                amount=amount,
                                idempotency_key=merchant_key or "auth-" + secrets.token_hex(4))

    async def authorize(self, request: AuthorizeRequest, merchant: Agent | None = None
                        ) -> Authorization:
        answer = await (merchant or self.seller).context.call("bank", CARD_AUTHORIZE, request)
        return Authorization.from_statement(answer.authorization)

    async def capture(self, authorization_id: str, amount: Amount, key: str,
                      merchant: Agent | None = None, **extra: Any) -> Statement:
        request = CaptureRequest(authorization_id=authorization_id, amount=amount,
                                 idempotency_key=key, **extra)
        answer = await (merchant or self.seller).context.call("bank", CARD_CAPTURE, request)
        return answer.captured


@asynccontextmanager
async def world(market: Path) -> AsyncIterator[World]:
    clock = Clock()
    bank = Agent(config_of(market, "bank"), clock=clock)
    buyer = Agent(config_of(market, "buyer"), clock=clock)
    seller = Agent(config_of(market, "seller"), clock=clock)
    with trio.fail_after(DEADLINE):
        async with running(bank), running(buyer), running(seller):
            w = World(bank, buyer, seller, clock)
            await w.moved()
            yield w


def eur(units: int) -> Amount:
    return Amount("EUR", units)


async def test_market_init_issues_the_buyer_a_card_at_the_bank(market: Path) -> None:
    async with world(market) as w:
        [card] = await w.buyer.component(Cards).list()
        assert check_card_number(card.number) and card.bank == "bank"
        assert card.to_json() == {"number": card.number, "expiry": card.expiry}
        row = await w.bank.database.read(lambda c: c.execute(
            "SELECT expiry, holder, currency FROM card_cards WHERE number = ?",
            (card.number,)).fetchone())
        assert row == (card.expiry, "buyer", "EUR")
        assert int(card.expiry[:4]) >= time.gmtime().tm_year + 3
        # The gateway's key: signed by the bank, for itself, valid now.
        answer = await w.buyer.context.call("bank", CARD_GATEWAY_KEY, GatewayKeyRequest())
        body = GatewayKey.from_statement(answer.key)
        assert body.bank == "bank" and body.expires_ms > w.clock.ms
        again = await w.buyer.context.call("bank", CARD_GATEWAY_KEY, GatewayKeyRequest())
        assert again.key == answer.key


async def test_a_pi_sealed_before_the_key_rotated_still_opens(
        market: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The gateway publishes a new key once a quarter of the old one's period is left,
    and keeps the old one: a cardholder that sealed just before is not refused."""
    monkeypatch.setattr(card_gateway, "KEY_PERIOD_MS", 4_000)
    async with world(market) as w:
        async def published() -> GatewayKey:
            answer = await w.buyer.context.call("bank", CARD_GATEWAY_KEY, GatewayKeyRequest())
            return GatewayKey.from_statement(answer.key)

        old = await published()
        assert old.expires_ms - 4_000 <= w.clock.ms < old.expires_ms - 1_000
        request = await w.instructions(eur(30))  # sealed to the old key
        w.clock.ms = old.expires_ms - 1_000  # a quarter of its period left
        new = await published()
        assert new.public_key != old.public_key and new.expires_ms == w.clock.ms + 4_000
        assert await published() == new
        auth = await w.authorize(request)
        assert await w.moved() == {"buyer": -30, HELD: 30}
        await w.capture(auth.authorization_id, eur(30), "rotated")
        assert await w.moved() == {"seller": 30, HELD: -30}


async def test_authorize_capture_refund_each_once(market: Path) -> None:
    async with world(market) as w:
        request = await w.instructions(eur(480), merchant_key="auth-a")
        auth = await w.authorize(request)
        assert (auth.merchant, auth.amount, auth.oimd) == ("seller", eur(480), request.oimd)
        assert auth.expires_ms == w.clock.ms + AUTH_VALIDITY_MS
        assert await w.moved() == {"buyer": -480, HELD: 480}
        # The same request again, and the cardholder's retry with fresh instructions
        # (another nonce) for the same order under the merchant's same key: the same.
        assert await w.authorize(request) == auth
        retry = await w.instructions(eur(480), order=None, merchant_key="auth-a")
        await w.refused("payment.idempotency_conflict", w.authorize(retry))  # another order
        captured = await w.capture(auth.authorization_id, eur(480), "cap-a")
        body = CardCaptured.from_statement(captured)
        assert (body.merchant, body.amount, body.authorization_id) == \
            ("seller", eur(480), auth.authorization_id)
        assert await w.moved() == {"seller": 480, HELD: -480}
        assert await w.capture(auth.authorization_id, eur(480), "cap-a") == captured
        assert await w.moved() == {}
        # The bank's evidence of the order, once each, under its OIMD.
        answer = await w.seller.context.call("bank", CARD_AUTHORIZE, request)
        kept = await w.bank.database.read(lambda c: c.execute(
            "SELECT direction, digest FROM archive_records WHERE txn = ? ORDER BY seq",
            (request.oimd.hex(),)).fetchall())
        assert kept == [("received", request.dual.digest),
                        ("sent", answer.authorization.digest), ("sent", captured.digest)]
        # Closed: nothing more to capture, under any key.
        await w.refused("card.unknown_authorization",
                        w.capture(auth.authorization_id, eur(1), "cap-b"))
        # A refund through the generic bank.refund credits the card's account.
        paid = PaymentResult(module="card", payer="buyer", payee="seller", amount=eur(480),
                             reference=request.oimd, settlement=captured,
                             bank_certificate=w.bank.context.certificate)
        ctx = AgentPaymentContext(w.seller, "card-refund", "buyer")
        await refund_payment(ctx, paid, eur(200), "returned", "refund-a")
        assert await w.moved() == {"seller": -200, "buyer": 200}
        await refund_payment(ctx, paid, eur(200), "returned", "refund-a")
        assert await w.moved() == {}


async def test_a_retry_with_fresh_instructions_for_the_same_order_holds_once(
        market: Path) -> None:
    async with world(market) as w:
        order = secrets.token_bytes(32)
        first = await w.authorize(await w.instructions(eur(99), order=order,
                                                       merchant_key="auth-r"))
        assert await w.moved() == {"buyer": -99, HELD: 99}
        # The cardholder seals again (a new nonce) after a lost answer: the same key,
        # or the merchant's new one, gets the first authorisation.
        for merchant_key in ("auth-r", "auth-r2"):
            again = await w.instructions(eur(99), order=order, merchant_key=merchant_key)
            assert await w.authorize(again) == first
        assert await w.moved() == {}
        # Other instructions (the cardholder's other payment) for the order
        # authorised: refused.
        other = await w.instructions(eur(99), order=order, key="pay-2",
                                     merchant_key="auth-r3")
        await w.refused("payment.already_paid", w.authorize(other))
        await w.capture(first.authorization_id, eur(99), "cap-r")
        assert await w.moved() == {"seller": 99, HELD: -99}


async def test_two_authorisations_of_one_order_racing_hold_once(market: Path) -> None:
    """A member of the kind beyond the issue's list: the cardholder's retry and its
    first attempt reach the gateway at once, under the merchant's two keys (the PI is
    opened outside the transaction): one hold, both answered with it; and two
    captures racing under two keys for the whole amount: one pays, the other is
    refused."""
    async with world(market) as w:
        order = secrets.token_bytes(32)
        requests = [await w.instructions(eur(77), order=order, merchant_key=f"race-{i}")
                    for i in range(2)]
        got: list[Any] = []

        async def one(call: Any) -> None:
            try:
                got.append(await call)
            except RemoteError as exc:
                got.append(exc.code)

        async with trio.open_nursery() as nursery:
            for request in requests:
                nursery.start_soon(one, w.authorize(request))
        assert len(got) == 2 and got[0] == got[1] and isinstance(got[0], Authorization)
        assert await w.moved() == {"buyer": -77, HELD: 77}
        auth_id, got = got[0].authorization_id, []
        async with trio.open_nursery() as nursery:
            for key in ("race-cap-1", "race-cap-2"):
                nursery.start_soon(one, w.capture(auth_id, eur(77), key))
        assert sorted(map(str, (type(g).__name__ if isinstance(g, Statement) else g
                                for g in got))) == ["Statement", "card.unknown_authorization"]
        assert await w.moved() == {"seller": 77, HELD: -77}


async def test_partial_capture_then_the_rest_goes_back(market: Path) -> None:
    async with world(market) as w:
        auth = await w.authorize(await w.instructions(eur(1000)))
        assert await w.moved() == {"buyer": -1000, HELD: 1000}
        await w.capture(auth.authorization_id, eur(300), "part-1")
        assert await w.moved() == {"seller": 300, HELD: -300}
        await w.refused("card.over_authorized",
                        w.capture(auth.authorization_id, eur(701), "part-2"))
        await w.refused("payment.currency_mismatch",
                        w.capture(auth.authorization_id, Amount("USD", 1), "part-2"))
        # Only its merchant captures it: to anyone else it is unknown.
        await w.refused("card.unknown_authorization",
                        w.capture(auth.authorization_id, eur(1), "part-x", merchant=w.buyer))
        await w.capture(auth.authorization_id, eur(200), "part-2")
        assert await w.moved() == {"seller": 200, HELD: -200}
        # The rest (500) is held until the authorisation lapses, then the sweep
        # returns it once; a capture after that is refused.
        sweeper = w.bank.component(CardGateway)
        w.clock.ms = auth.expires_ms
        assert await sweeper.sweep() == 0
        w.clock.ms += 1
        await w.refused("card.unknown_authorization",
                        w.capture(auth.authorization_id, eur(1), "part-3"))
        assert await sweeper.sweep() >= 1
        assert await w.moved() == {"buyer": 500, HELD: -500}
        assert await sweeper.sweep() == 0
        assert await w.moved() == {}


async def test_a_final_capture_returns_the_rest_at_once(market: Path) -> None:
    async with world(market) as w:
        auth = await w.authorize(await w.instructions(eur(750)))
        assert await w.moved() == {"buyer": -750, HELD: 750}
        await w.capture(auth.authorization_id, eur(250), "final-1", final=True)
        assert await w.moved() == {"seller": 250, "buyer": 500, HELD: -750}
        await w.refused("card.unknown_authorization",
                        w.capture(auth.authorization_id, eur(1), "final-2"))
        # The same final capture again: its answer, nothing moves; under the same key
        # as a non-final one: another request.
        await w.capture(auth.authorization_id, eur(250), "final-1", final=True)
        await w.refused("payment.idempotency_conflict",
                        w.capture(auth.authorization_id, eur(250), "final-1"))
        assert await w.bank.component(CardGateway).sweep() == 0


async def test_a_bank_that_starts_after_an_authorisation_lapsed_sweeps_at_once(
        market: Path) -> None:
    """The sweep (``CardGateway.run``) runs at start, then every minute, deciding by
    the injected clock: a hold whose authorisation lapsed while the bank was down goes
    back to the holder when it starts."""
    async with world(market) as w:
        auth = await w.authorize(await w.instructions(eur(64)))
        assert await w.moved() == {"buyer": -64, HELD: 64}
        clock, before = w.clock, await w.books()
    clock.ms = auth.expires_ms + 1
    bank = Agent(config_of(market, "bank"), clock=clock)

    def state() -> str:
        with sqlite3.connect(market / "bank" / "data" / "agent.sqlite") as c:
            return c.execute("SELECT state FROM card_authorizations WHERE"
                             " authorization_id = ?", (auth.authorization_id,)).fetchone()[0]

    assert state() == "open"
    with trio.fail_after(DEADLINE):
        async with running(bank):
            await wait_until(lambda: state() == "expired", "the sweep at start")
            after = await bank.database.read(lambda c: (
                _ledger.check_books(c), {h: _ledger.balances(c, h)["EUR"]
                                         for h in ("buyer", HELD)})[1])
    assert after == {"buyer": before["buyer"] + 64, HELD: before[HELD] - 64}


async def test_refusals_move_nothing(market: Path) -> None:
    async with world(market) as w:
        balance = (await w.books())["buyer"]
        # Beyond the funds: declined, nothing held.
        await w.refused("card.declined", w.authorize(
            await w.instructions(eur(balance + 1))))
        # Someone who learnt the card's number and expiry signs for it: the number
        # alone pays nothing (the gateway's holder is the buyer).
        await w.refused("card.unknown_card", w.authorize(
            await w.instructions(eur(10), signer=w.seller, merchant="seller")))
        card = await w.card()
        wrong = Card(number=card.number, expiry="2099-12", bank="bank")
        await w.refused("card.unknown_card", w.authorize(await w.instructions(eur(10),
                                                                             card=wrong)))
        # Instructions for another merchant, forwarded by this one.
        await w.refused("card.bad_instructions", w.authorize(
            await w.instructions(eur(10), merchant="notary")))
        # A card whose month is over (issued to the buyer long ago).
        old = Card(number="4000000000000002", expiry="2020-01", bank="bank")
        await w.bank.database.transaction(lambda c: c.execute(
            "INSERT OR IGNORE INTO card_cards (number, expiry, holder, currency, issued_ms)"
            " VALUES (?, ?, 'buyer', 'EUR', 0)", (old.number, old.expiry)))
        refused = await w.refused("card.expired_card", w.authorize(
            await w.instructions(eur(10), card=old)))
        assert refused.detail == {}  # the merchant reads it: no expiry (test_attack_card)
        await w.refused("card.unknown_authorization",
                        w.capture("0" * 32, eur(1), "nothing"))


# -- whole purchases: buyer, seller and gateway ----------------------------------------


async def test_a_card_purchase_pays_once_even_when_retried(market: Path) -> None:
    async with world(market) as w:
        shopper = Shopper(w.buyer)
        done = await shopper.buy("seller", "map-002", "card", "card-buy-1")
        assert done.state == "done" and done.receipt is not None
        assert done.payment is not None and done.payment.module == "card"
        captured = CardCaptured.from_statement(done.payment.settlement)
        assert (captured.merchant, captured.amount) == ("seller", eur(480))
        assert await w.moved() == {"buyer": -480, "seller": 480}
        again = await shopper.buy("seller", "map-002", "card", "card-buy-1")
        assert again.replayed and again.payment is not None
        assert again.payment.settlement == done.payment.settlement
        # A new shopper (a restarted `semper buy`) with the same key: nothing more.
        assert (await Shopper(w.buyer).buy("seller", "map-002", "card",
                                           "card-buy-1")).replayed
        assert await w.moved() == {}
        refunded = await shopper.refund("card-buy-1")
        assert refunded.state == "refunded"
        assert await w.moved() == {"buyer": 480, "seller": -480}
        assert (await shopper.refund("card-buy-1")).state == "refunded"
        assert await w.moved() == {}


async def test_a_card_purchase_beyond_the_funds_is_declined(market: Path) -> None:
    async with world(market) as w:
        balance = (await w.books())["buyer"]
        drained = await w.bank.database.transaction(lambda c: _ledger.move(
            c, "buyer", "seller", eur(balance - 100), kind="transfer", time_ms=w.clock.ms))
        assert drained and (await w.moved())["buyer"] == -(balance - 100)
        try:
            with pytest.raises(Exception) as refused:
                await Shopper(w.buyer).buy("seller", "map-002", "card", "card-poor")
            assert getattr(refused.value, "code", None) == "card.declined", refused.value
            assert await w.moved() == {}
        finally:  # give the buyer its money back for the module's other tests
            await w.bank.database.transaction(lambda c: _ledger.move(
                c, "seller", "buyer", eur(balance - 100), kind="transfer",
                time_ms=w.clock.ms))
            await w.moved()


def _found_in_database(path: Path, needles: list[bytes]) -> list[str]:
    """Every (table, column) of the SQLite file at ``path`` holding one of
    ``needles`` in a text or blob value (read through SQLite, so WAL pages count)."""
    found = []
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as c:
        tables = [r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for table in tables:
            columns = [r[1] for r in c.execute(f"PRAGMA table_info('{table}')")]
            for row in c.execute(f"SELECT * FROM '{table}'"):
                for column, value in zip(columns, row, strict=True):
                    raw = value.encode() if isinstance(value, str) else value
                    if isinstance(raw, bytes) and any(n in raw for n in needles):
                        found.append(f"{table}.{column}")
    return found


def _found_in_files(folder: Path, needles: list[bytes]) -> list[str]:
    """Every file under ``folder`` whose bytes hold one of ``needles``."""
    return [str(p) for p in folder.rglob("*")
            if p.is_file() and any(n in p.read_bytes() for n in needles)]


async def test_the_seller_never_stores_the_card_nor_the_bank_the_order(
        market: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Issue 11's separation: after a card purchase and its refund, no table or column
    of the seller's database (its archive included), no file of its folder (event
    log, WAL) and nothing it logged holds the card's number or expiry; nothing of the
    bank's holds the offer's title or sku."""
    caplog.set_level(logging.DEBUG)
    async with world(market) as w:
        card = await w.card()
        shopper = Shopper(w.buyer)
        done = await shopper.buy("seller", "guide-001", "card", "card-sep-1")
        assert done.payment is not None and done.payment.module == "card"
        await shopper.refund("card-sep-1")
        # A refusal's path too (the gateway's error goes through the seller): the
        # buyer's copy of its card with another expiry is no card of the bank's.
        def expiry(value: str) -> Any:
            return lambda c: c.execute("UPDATE cards_cards SET expiry = ? WHERE number = ?",
                                       (value, card.number))

        await w.buyer.database.transaction(expiry("2031-01"))
        try:
            with pytest.raises(Exception) as refused:
                await shopper.buy("seller", "song-003", "card", "card-sep-2")
            assert getattr(refused.value, "code", None) == "card.unknown_card"
        finally:
            await w.buyer.database.transaction(expiry(card.expiry))
        catalogue, _ = await shopper.catalogue("seller")
        offer = next(o for o in catalogue.offers if o.body["sku"] == "guide-001")
        # What the seller holds: the purchase went through it (the proof, the order).
        assert _found_in_database(w.seller.config.data_dir / "agent.sqlite",
                                  [done.order]) != []
    secrets_of_card = [card.number.encode(), card.expiry.encode(), b"2031-01",
                       card.number.encode("utf-16-le"), int(card.number).to_bytes(8, "big")]
    seller_dir = market / "seller"
    for database in seller_dir.rglob("*.sqlite"):
        assert _found_in_database(database, secrets_of_card) == [], database
    assert _found_in_files(seller_dir, secrets_of_card) == []
    logged = "\n".join(f"{r.name} {r.getMessage()}" for r in caplog.records)
    for text in (card.number, card.expiry, "2031-01"):
        assert text not in logged  # any agent's log
    # The bank's side: no title, no sku of the order (the OI stays with the seller).
    order_words = [offer.body["title"].encode(), b"guide-001"]
    bank_dir = market / "bank"
    for database in bank_dir.rglob("*.sqlite"):
        assert _found_in_database(database, order_words) == [], database
    assert _found_in_files(bank_dir, order_words) == []
    # ... while the buyer and the bank do hold the card (the check is not vacuous).
    assert _found_in_database(market / "bank" / "data" / "agent.sqlite",
                              [card.number.encode()]) != []


class Crash(Exception):
    """Where SIGKILL would stop the bank (agents/runtime/_faults.py): the handler
    stops there, its transaction (if open) rolled back, as after a restart."""


AUTHORIZE_POINTS = ("card.authorize.received", "card.authorize.checked",
                    "card.authorize.applied", "card.authorize.committed")
CAPTURE_POINTS = ("card.capture.received", "card.capture.applied", "card.capture.committed")


async def test_a_crash_at_each_point_then_a_retry_moves_money_once(
        market: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The gateway stopped at each of its crash points (in-process: the handler
    raises there, so what was not committed is rolled back, as SIGKILL leaves it),
    then the merchant retries with the same key: one hold, one capture, the first
    answer if the first attempt committed; the books balance throughout."""
    armed: list[str] = []

    def crash_point(name: str, number: int | None = None) -> None:
        if armed and armed[0] == name:
            armed.clear()
            raise Crash(name)

    monkeypatch.setattr(card_gateway, "crash_point", crash_point)
    async with world(market) as w:
        held = (await w.books())[HELD]
        for point in AUTHORIZE_POINTS:
            request = await w.instructions(eur(120), merchant_key="crash-" + point)
            armed.append(point)
            with pytest.raises(RemoteError) as crashed:
                await w.authorize(request)
            assert crashed.value.code == "internal.error", point
            committed = point.endswith("committed")
            assert await w.moved() == ({"buyer": -120, HELD: 120} if committed else {}), point
            auth = await w.authorize(request)
            assert await w.moved() == ({} if committed else {"buyer": -120, HELD: 120}), point
            assert await w.authorize(request) == auth
            for capture_point in CAPTURE_POINTS if point == AUTHORIZE_POINTS[-1] else ():
                armed.append(capture_point)
                key = "crash-" + capture_point
                with pytest.raises(RemoteError):
                    await w.capture(auth.authorization_id, eur(40), key)
                captured_first = capture_point.endswith("committed")
                assert await w.moved() == (
                    {"seller": 40, HELD: -40} if captured_first else {}), capture_point
                captured = await w.capture(auth.authorization_id, eur(40), key)
                assert await w.moved() == (
                    {} if captured_first else {"seller": 40, HELD: -40}), capture_point
                assert await w.capture(auth.authorization_id, eur(40), key) == captured
                assert await w.moved() == {}
            if point != AUTHORIZE_POINTS[-1]:  # (there, three captures took it all)
                await w.capture(auth.authorization_id, eur(120), "crash-rest-" + point)
                assert await w.moved() == {"seller": 120, HELD: -120}
        assert (await w.books())[HELD] == held  # every hold captured, none twice
