"""The card gateway's books under random traffic (agents/instruments/card.py), no
network: authorisations (new, repeated, under a used key, for an order authorised,
beyond the funds), captures (partial, final, repeated, beyond the hold, after
expiry), clock moves, sweeps and refunds, applied through the gateway's transaction
functions on real SQLite. After every step the books balance, each balance is the
model's, and ``@card-held`` holds exactly what the open authorisations have not
captured.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from pki import Market as PkiMarket

from semper.agents.components import _bank, _ledger
from semper.agents.instruments import card as gateway
from semper.agents.instruments.card import HELD
from semper.agents.runtime._storage import Database
from semper.services import Amount
from semper.services.payment import REFUND_ORDER, PaymentError, RefundOrder
from semper.services.payment.card import (
    DUAL_SIGNATURE,
    AuthorizeRequest,
    CaptureRequest,
    PaymentInstructions,
)
from semper.services.payment.card._checks import Authorizing
from semper.services.payment.card._set import authorization_id_of, dual_signature, pimd_of
from semper.services.statements import Statement, sign_statement

_SHARED: dict[str, Any] = {}


def pki() -> dict[str, Any]:
    if not _SHARED:
        market = PkiMarket(Path(tempfile.mkdtemp(prefix="semper-card-pki-")))
        _SHARED.update(alice=market.agent("alice", "buyer"), shop=market.agent("shop", "seller"),
                       bank=market.agent("bank", "bank"))
    return _SHARED


def sign_as(agent: Any, type_: str, body: dict[str, Any]) -> Statement:
    return sign_statement(type_, body, key=agent.key, certificate=agent.cert,
                          now_ms=time.time_ns() // 1_000_000, nonce=os.urandom(16))


def eur(units: int) -> Amount:
    return Amount("EUR", units)


class CardBooks(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.pki = pki()
        self.folder = Path(tempfile.mkdtemp(prefix="semper-card-"))
        self.db = Database.open_sync(self.folder / "bank.sqlite",
                                     {**_bank.MIGRATIONS, **gateway.MIGRATIONS})
        self.now = 1_700_000_000_000
        bank = self.pki["bank"]
        self.book = _bank.BankBook("bank", lambda t, b: sign_as(bank, t, b), bank.cert,
                                   lambda: self.now)

        def fund(c: Any) -> tuple[str, str]:
            _ledger.open_account(c, "alice", "EUR")
            _ledger.mint(c, "alice", eur(5_000), time_ms=0)
            _ledger.open_account(c, "shop", "EUR")
            return gateway.issue_card(c, "alice", "EUR", now_ms=self.now)

        self.number, self.expiry = self.db.transaction_sync(fund)
        self.model = {"alice": 5_000, "shop": 0, HELD: 0}
        #: order -> [auth id, amount, captured, state, expires, instructions, statement]
        self.orders: dict[int, list[Any]] = {}
        self.auth_keys: dict[str, tuple[int, tuple[Any, ...]]] = {}
        self.capture_keys: dict[str, tuple[tuple[Any, ...], Statement]] = {}
        #: capture statement -> [amount, refunded]
        self.captures: list[list[Any]] = []

    def teardown(self) -> None:
        self.db.close()

    def balances(self) -> dict[str, int]:
        return self.db.read_sync(lambda c: {h: _ledger.balances(c, h).get("EUR", 0)
                                            for h in self.model})

    def apply(self, fn: Any) -> tuple[Any, Any]:
        before = self.balances()
        try:
            return self.db.transaction_sync(fn), None
        except PaymentError as exc:
            assert self.balances() == before, "a refusal moved money"
            return None, exc

    @rule(amount=st.sampled_from([100, 250, 700, 1_800, 2_600]), order=st.integers(0, 5),
          key=st.sampled_from([f"k{i}" for i in range(8)]), pi_key=st.sampled_from("pq"),
          validity=st.integers(1, 10_000))
    def authorize(self, amount: int, order: int, key: str, pi_key: str, validity: int) -> None:
        oimd = hashlib.sha256(b"order %d" % order).digest()
        pi = PaymentInstructions(number=self.number, expiry=self.expiry, amount=eur(amount),
                                 merchant="shop", order=oimd, idempotency_key=pi_key,
                                 nonce=os.urandom(16))
        checked = Authorizing(pi=pi, pimd=pimd_of(pi), oimd=oimd, cardholder="alice",
                              merchant="shop",
                              authorization_id=authorization_id_of("shop", oimd))
        dual = sign_as(self.pki["alice"], DUAL_SIGNATURE,
                       dual_signature(checked.pimd, oimd).to_body())
        request = AuthorizeRequest(sealed_pi=bytes(49), oimd=oimd, dual=dual,
                                   cardholder_certificate=self.pki["alice"].cert,
                                   amount=eur(amount), idempotency_key=key)
        outcome, error = self.apply(lambda c: gateway.authorize_card(
            self.book, c, request, checked, expires_ms=self.now + validity))
        event(f"authorize: {error.code if error else 'held' if outcome.applied else 'again'}")
        same = (amount, pi_key)
        if key in self.auth_keys:
            if self.auth_keys[key] == (order, same):
                assert error is None and not outcome.applied
                assert outcome.statement == self.orders[order][6]
            else:
                assert error is not None and error.code == "payment.idempotency_conflict"
        elif order in self.orders:
            if self.orders[order][5] == same:
                assert error is None and not outcome.applied
            else:
                assert error is not None and error.code == "payment.already_paid"
        elif self.model["alice"] < amount:
            assert error is not None and error.code == "card.declined"
        else:
            assert error is None and outcome.applied
            self.model["alice"] -= amount
            self.model[HELD] += amount
            self.auth_keys[key] = (order, same)
            self.orders[order] = [checked.authorization_id, amount, 0, "open",
                                  self.now + validity, same, outcome.statement]

    @precondition(lambda self: self.orders)
    @rule(data=st.data(), amount=st.sampled_from([50, 100, 250, 700, 1_800]), final=st.booleans(),
          key=st.sampled_from([f"c{i}" for i in range(10)]))
    def capture(self, data: st.DataObject, amount: int, final: bool, key: str) -> None:
        order = data.draw(st.sampled_from(sorted(self.orders)))
        auth = self.orders[order]
        request = CaptureRequest(authorization_id=auth[0], amount=eur(amount),
                                 idempotency_key=key, final=final)
        outcome, error = self.apply(lambda c: gateway.capture_card(
            self.book, c, request, merchant="shop", final=final))
        event(f"capture: {error.code if error else 'paid' if outcome.applied else 'again'}")
        asked = (auth[0], amount, final)
        if key in self.capture_keys:
            if self.capture_keys[key][0] == asked:
                assert error is None and outcome.statement == self.capture_keys[key][1]
            else:
                assert error is not None and error.code == "payment.idempotency_conflict"
        elif auth[3] != "open" or self.now > auth[4]:
            assert error is not None and error.code == "card.unknown_authorization"
        elif amount > auth[1] - auth[2]:
            assert error is not None and error.code == "card.over_authorized"
        else:
            assert error is None and outcome.applied
            auth[2] += amount
            self.model["shop"] += amount
            self.model[HELD] -= amount
            rest = auth[1] - auth[2]
            if final or not rest:
                auth[3] = "closed"
                self.model["alice"] += rest
                self.model[HELD] -= rest
            self.capture_keys[key] = (asked, outcome.statement)
            self.captures.append([outcome.statement, amount, 0])

    @precondition(lambda self: self.captures)
    @rule(data=st.data(), amount=st.integers(1, 1_500))
    def refund(self, data: st.DataObject, amount: int) -> None:
        paid = data.draw(st.sampled_from(self.captures))
        body = RefundOrder(original=paid[0].digest, payer="shop", payee="alice",
                           amount=eur(amount), reason="returned",
                           idempotency_key="r" + os.urandom(4).hex())
        order = sign_as(self.pki["shop"], REFUND_ORDER, body.to_body())
        outcome, error = self.apply(lambda c: self.book.refund(
            c, order, body, certificate=self.pki["shop"].cert))
        event(f"refund: {error.code if error else 'refunded'}")
        if amount > paid[1] - paid[2] or amount > self.model["shop"]:
            assert error is not None
        else:
            assert error is None and outcome.applied
            paid[2] += amount
            self.model["shop"] -= amount
            self.model["alice"] += amount

    @rule(ms=st.integers(1, 6_000))
    def advance(self, ms: int) -> None:
        self.now += ms

    @rule()
    def sweep(self) -> None:
        closed = self.db.transaction_sync(lambda c: gateway.release_expired(c, now_ms=self.now))
        due = [a for a in self.orders.values() if a[3] == "open" and a[4] < self.now]
        assert closed == len(due)
        for auth in due:
            rest = auth[1] - auth[2]
            self.model["alice"] += rest
            self.model[HELD] -= rest
            auth[3] = "expired"

    @invariant()
    def books_balance(self) -> None:
        self.db.read_sync(_ledger.check_books)
        assert self.balances() == self.model
        assert self.model[HELD] == sum(a[1] - a[2] for a in self.orders.values()
                                       if a[3] == "open")


TestCardBooks = CardBooks.TestCase
TestCardBooks.settings = settings(max_examples=15, stateful_step_count=30, deadline=None,
                                  suppress_health_check=[HealthCheck.too_slow])
