"""The bank's books under random traffic (agents/components/_bank.py, _ledger.py on real SQLite).

A Hypothesis state machine signs transfer orders, cheques and refund orders with
real keys and applies them through ``BankBook`` in real transactions, mixing in
retries with the same idempotency key (same and altered content), duplicate and
wrong-payee cheque deposits, stopped serials, over-refunds and payments in a
currency the payee has no account for. After every step:

* the books balance (``check_books``: postings, entries, currencies, no overdraft),
  and customers hold exactly what was minted: no money created or lost;
* a call that raised moved nothing, and one answered from the idempotency store
  moved nothing; each applied call moved exactly its amount from payer to payee;
* the balances equal a model that applies each payment at most once, and at most
  one payment per (payer, payee, reference) that is not refunded in full (issue 7).
"""

from __future__ import annotations

import os
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from pki import Market

from semper.agents.components import _bank, _ledger
from semper.agents.instruments import cheque as cheque_bank
from semper.agents.instruments import transfer as transfer_bank
from semper.agents.runtime._storage import Database
from semper.services import Amount
from semper.services.payment import PaymentError, RefundOrder
from semper.services.payment.cheque import Cheque
from semper.services.payment.transfer import TransferOrder
from semper.services.statements import Statement, sign_statement

if TYPE_CHECKING:  # imported by name, pytest would try to collect it
    from pki import TestAgent

HOLDERS = ("alice", "bob", "shop")
KEYS = ("k1", "k2", "k3")
SERIALS = ("s1", "s2", "s3")
MINTED = {("alice", "EUR"): 50_000, ("bob", "EUR"): 20_000, ("alice", "USD"): 9_000,
          ("shop", "EUR"): 0}

_SHARED: dict[str, Any] = {}


def _market() -> dict[str, Any]:
    """Keys and certificates are made once for the whole run: building a market per
    example would cost more than the example."""
    if not _SHARED:
        folder = Path(tempfile.mkdtemp(prefix="semper-bank-"))
        market = Market(folder)
        _SHARED["market"] = market
        _SHARED["agents"] = {h: market.agent(h, "buyer") for h in HOLDERS}
        _SHARED["bank"] = market.agent("bank", "bank")
    return _SHARED


def sign(agent: TestAgent, type_: str, body: dict[str, Any]) -> Statement:
    return sign_statement(type_, body, key=agent.key, certificate=agent.cert,
                          now_ms=time.time_ns() // 1_000_000, nonce=os.urandom(16))


class BankMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        shared = _market()
        self.agents: dict[str, TestAgent] = shared["agents"]
        bank: TestAgent = shared["bank"]
        self.folder = Path(tempfile.mkdtemp(prefix="semper-book-"))
        self.db = Database.open_sync(self.folder / "bank.sqlite",
                                     {**_bank.MIGRATIONS, **cheque_bank.MIGRATIONS})
        self.book = _bank.BankBook("bank", lambda t, b: sign(bank, t, b), bank.cert,
                                   lambda: time.time_ns() // 1_000_000)
        def fund(c: sqlite3.Connection) -> None:
            for (holder, currency), units in MINTED.items():
                _ledger.open_account(c, holder, currency)
                if units:
                    _ledger.mint(c, holder, Amount(currency, units), time_ms=0)

        self.db.transaction_sync(fund)
        self.model: dict[tuple[str, str], int] = dict(MINTED)
        self.requests: dict[tuple[str, str], tuple[dict[str, Any], Statement]] = {}
        self.cleared: dict[tuple[str, str], Statement] = {}
        self.cheques: list[tuple[Statement, Cheque]] = []
        self.payments: list[tuple[Statement, str, str, Amount]] = []  # confirmation, payer..
        self.refunded: dict[bytes, int] = {}
        #: (payer, payee, reference) -> (request, settlement digest, amount): the payment
        #: that stands for it (``payment.already_paid`` for another request).
        self.standing: dict[tuple[str, str, bytes], tuple[str, bytes, int]] = {}

    def teardown(self) -> None:
        self.db.close()

    # -- helpers ------------------------------------------------------------------------

    def balances(self) -> dict[tuple[str, str], int]:
        return dict(((h, c), b) for h, c, b in self.db.read_sync(lambda c: c.execute(
            "SELECT holder, currency, balance FROM ledger_accounts WHERE holder != ?",
            (_ledger.ISSUANCE,)).fetchall()))

    def apply(self, fn: Any) -> tuple[_bank.Outcome | None, PaymentError | None]:
        before = self.balances()
        try:
            outcome = self.db.transaction_sync(fn)
        except PaymentError as exc:
            assert self.balances() == before, "a refused request moved money"
            return None, exc
        if not outcome.applied:
            assert self.balances() == before, "a replayed request moved money"
        return outcome, None

    def paid_already(self, payer: str, payee: str, reference: bytes, request: str) -> bool:
        standing = self.standing.get((payer, payee, reference))
        return standing is not None and standing[0] != request \
            and self.refunded.get(standing[1], 0) < standing[2]

    def moved(self, payer: str, payee: str, amount: Amount) -> None:
        self.model[(payer, amount.currency)] -= amount.minor_units
        self.model[(payee, amount.currency)] += amount.minor_units

    # -- rules --------------------------------------------------------------------------

    @rule(payer=st.sampled_from(HOLDERS), payee=st.sampled_from(HOLDERS),
          units=st.integers(1, 30_000), currency=st.sampled_from(["EUR", "USD"]),
          key=st.sampled_from(KEYS), reference=st.sampled_from([b"o1", b"o2"]))
    def transfer(self, payer: str, payee: str, units: int, currency: str, key: str,
                 reference: bytes) -> None:
        if payer == payee:
            return
        amount = Amount(currency, units)
        body = TransferOrder(payer=payer, payee=payee, bank="bank", amount=amount,
                             reference=reference, idempotency_key=key)
        order = sign(self.agents[payer], "payment.transfer_order", body.to_body())
        outcome, error = self.apply(lambda c: transfer_bank.apply_transfer(
            self.book, c, order, body, payer_certificate=self.agents[payer].cert))
        stored = self.requests.get((payer, key))
        if stored is not None:
            if stored[0] == body.to_body():
                assert outcome is not None and not outcome.applied
                assert outcome.statement == stored[1]  # the first answer, unchanged
            else:
                assert error is not None and error.code == "payment.idempotency_conflict"
            return
        have = self.model.get((payer, currency))
        if self.paid_already(payer, payee, reference, "transfer:" + key):
            assert error is not None and error.code == "payment.already_paid"
        elif have is None:
            assert error is not None and error.code == "payment.unknown_account"
        elif have < units:
            assert error is not None and error.code == "payment.insufficient_funds"
        elif (payee, currency) not in self.model:
            assert error is not None and error.code == "payment.unknown_account"
        else:
            assert outcome is not None and outcome.applied, error
            self.moved(payer, payee, amount)
            self.requests[(payer, key)] = (body.to_body(), outcome.statement)
            self.payments.append((outcome.statement, payer, payee, amount))
            self.standing[(payer, payee, reference)] = (
                "transfer:" + key, outcome.statement.digest, units)

    @rule(payer=st.sampled_from(HOLDERS), payee=st.sampled_from(HOLDERS),
          depositor=st.sampled_from(HOLDERS), units=st.integers(1, 30_000),
          serial=st.sampled_from(SERIALS), expired=st.booleans())
    def cheque(self, payer: str, payee: str, depositor: str, units: int, serial: str,
               expired: bool) -> None:
        if payer == payee:
            return
        now = time.time_ns() // 1_000_000
        body = Cheque(payer=payer, payee=payee, bank="bank", amount=Amount("EUR", units),
                      serial=serial, expires_at=now - 1 if expired else now + 60_000,
                      reference=b"order")
        statement = sign(self.agents[payer], "payment.cheque", body.to_body())
        self.cheques.append((statement, body))
        self._deposit(statement, body, depositor)

    @precondition(lambda self: self.cheques)
    @rule(data=st.data())
    def deposit_again(self, data: st.DataObject) -> None:
        statement, body = data.draw(st.sampled_from(self.cheques))
        self._deposit(statement, body, body.payee)

    def _deposit(self, statement: Statement, body: Cheque, depositor: str) -> None:
        stopped = self.db.read_sync(lambda c: c.execute(
            "SELECT status FROM bank_cheques WHERE payer = ? AND serial = ?",
            (body.payer, body.serial)).fetchone())
        outcome, error = self.apply(lambda c: cheque_bank.deposit_cheque(
            self.book,
            c, statement, body, depositor=depositor,
            drawer_certificate=self.agents[body.payer].cert))
        cleared = self.cleared.get((body.payer, body.serial))
        if outcome is not None and not outcome.applied:
            assert cleared is not None and outcome.statement == cleared
            return
        if error is not None:
            assert error.code in {"payment.wrong_payee", "payment.cheque_reused",
                                  "payment.cheque_stopped", "payment.cheque_expired",
                                  "payment.insufficient_funds", "payment.already_paid"}, \
                error.code
            if error.code == "payment.already_paid":
                assert self.paid_already(body.payer, body.payee, body.reference,
                                         "cheque:" + body.serial)
            if depositor != body.payee:
                assert error.code == "payment.wrong_payee"
            elif cleared is not None:
                assert error.code == "payment.cheque_reused"
            elif stopped is not None:
                assert error.code == "payment.cheque_stopped"
            return
        assert outcome is not None and outcome.applied
        assert cleared is None and stopped is None and depositor == body.payee
        assert self.model[(body.payer, "EUR")] >= body.amount.minor_units
        assert not self.paid_already(body.payer, body.payee, body.reference,
                                     "cheque:" + body.serial)
        self.standing[(body.payer, body.payee, body.reference)] = (
            "cheque:" + body.serial, outcome.statement.digest, body.amount.minor_units)
        self.moved(body.payer, body.payee, body.amount)
        self.cleared[(body.payer, body.serial)] = outcome.statement
        self.payments.append((outcome.statement, body.payer, body.payee, body.amount))

    @rule(payer=st.sampled_from(HOLDERS), serial=st.sampled_from(SERIALS))
    def stop(self, payer: str, serial: str) -> None:
        try:
            self.db.transaction_sync(lambda c: cheque_bank.stop_cheque(c, payer, serial))
        except PaymentError as exc:
            assert exc.code == "payment.cheque_reused"
            assert (payer, serial) in self.cleared

    @precondition(lambda self: self.payments)
    @rule(data=st.data(), units=st.integers(1, 30_000), key=st.sampled_from(KEYS))
    def refund(self, data: st.DataObject, units: int, key: str) -> None:
        confirmation, payer, payee, amount = data.draw(st.sampled_from(self.payments))
        requested = Amount(amount.currency, units)
        body = RefundOrder(original=confirmation.digest, payer=payee, payee=payer,
                           amount=requested, reason="returned", idempotency_key=key)
        order = sign(self.agents[payee], "payment.refund_order", body.to_body())
        outcome, error = self.apply(lambda c: self.book.refund(
            c, order, body, certificate=self.agents[payee].cert))
        stored = self.requests.get((payee, key))
        if stored is not None:
            if stored[0] == body.to_body():
                assert outcome is not None and outcome.statement == stored[1]
            else:
                assert error is not None and error.code == "payment.idempotency_conflict"
            return
        done = self.refunded.get(confirmation.digest, 0)
        if units > amount.minor_units - done:
            assert error is not None and error.code == "payment.refund_exceeds_payment"
        elif self.model[(payee, amount.currency)] < units:
            assert error is not None and error.code == "payment.insufficient_funds"
        else:
            assert outcome is not None and outcome.applied, error
            self.moved(payee, payer, requested)
            self.refunded[confirmation.digest] = done + units
            self.requests[(payee, key)] = (body.to_body(), outcome.statement)

    # -- invariants ---------------------------------------------------------------------

    @invariant()
    def books_balance_and_match_the_model(self) -> None:
        self.db.read_sync(_ledger.check_books)
        assert self.balances() == self.model
        for currency in ("EUR", "USD"):
            minted = sum(u for (_, c), u in MINTED.items() if c == currency)
            assert self.db.read_sync(lambda c, cur=currency: _ledger.customer_total(c, cur)) \
                == minted


TestBankBook = BankMachine.TestCase
TestBankBook.settings = settings(max_examples=40, stateful_step_count=30, deadline=None,
                                 suppress_health_check=[HealthCheck.too_slow])


def test_an_edited_balance_is_caught_by_check_books(tmp_path: Path) -> None:
    db = Database.open_sync(tmp_path / "b.sqlite", _bank.MIGRATIONS)
    db.transaction_sync(lambda c: _ledger.mint(c, "alice", Amount("EUR", 100), time_ms=0))
    db.read_sync(_ledger.check_books)
    with sqlite3.connect(tmp_path / "b.sqlite") as raw:
        raw.execute("UPDATE ledger_accounts SET balance = balance + 1 WHERE holder = 'alice'")
    with pytest.raises(_ledger.BooksUnbalanced, match="its postings"):
        db.read_sync(_ledger.check_books)
    db.close()
