"""The bank's book-keeping: each ``bank`` op as one SQLite transaction.

Theory of operation. A request that moves money is checked first (signatures,
certificates: ``services.payment.check_*``, outside any transaction), then applied by
one function here that runs inside ``Database.transaction``: it looks up the
idempotency record, decides (``decide_*``, with balances read in the same
transaction), posts the journal entry, signs the bank's statement, stores the answer
under the idempotency key and appends both statements to the evidence archive. All
of that commits together or not at all, so a crash at any point leaves either
nothing or everything, and a retry after a crash finds the stored answer and moves
no money twice.

Idempotency: a transfer or refund is applied once per ``(payer, idempotency_key)``;
the same key with the same body returns the stored answer, with another body
``payment.idempotency_conflict``. A cheque is applied once per ``(payer, serial)``.
And one payment stands per ``(payer, payee, reference)``: another key or serial for
the same is ``payment.already_paid`` until the first is refunded in full.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from cryptography import x509

from semper.agents.components import _archive, _ledger
from semper.agents.runtime._faults import crash_point
from semper.services import Amount
from semper.services.archive import Direction
from semper.services.payment import (
    AlreadyPaid,
    IdempotencyRecord,
    RefundOrder,
    Replay,
    UnknownAccount,
    UnknownPayment,
    WrongPayee,
    confirm_refund,
    decide_idempotency,
    decide_refund,
    request_digest,
)
from semper.services.payment.cheque import (
    Cheque,
    ChequeReused,
    Cleared,
    TooManyStopped,
    cheque_retry_digest,
    clear_cheque,
    decide_cheque_deposit,
    is_cheque_retry,
)
from semper.services.payment.transfer import TransferOrder, confirm_transfer, decide_transfer
from semper.services.statements import Statement

__all__ = ["MIGRATIONS", "BankBook", "Outcome"]

#: Serials one payer may hold stopped (a stop is for a cheque lost or disputed).
MAX_STOPPED: Final = 10_000


MIGRATIONS: Final = {
    **_archive.MIGRATIONS,
    **_ledger.MIGRATIONS,
    # The payment standing for each (payer, payee, reference): a second one under
    # another key or serial is refused while the first is not refunded in full.
    "bank_references": [
        "CREATE TABLE bank_references ("
        " payer TEXT NOT NULL, payee TEXT NOT NULL, reference BLOB NOT NULL,"
        " request TEXT NOT NULL, confirmation BLOB NOT NULL,"
        " PRIMARY KEY (payer, payee, reference)) STRICT"
    ],
    "bank": [
        # One row per applied transfer or refund: the idempotency record.
        "CREATE TABLE bank_requests ("
        " holder TEXT NOT NULL, key TEXT NOT NULL, kind TEXT NOT NULL,"
        " digest BLOB NOT NULL, answer BLOB NOT NULL, PRIMARY KEY (holder, key));"
        # One row per cheque serial the bank has seen cleared or stopped.
        "CREATE TABLE bank_cheques ("
        " payer TEXT NOT NULL, serial TEXT NOT NULL, status TEXT NOT NULL,"
        " retry_digest BLOB, answer BLOB, PRIMARY KEY (payer, serial));"
        # Payments that can be refunded, by the digest of the bank's confirmation.
        "CREATE TABLE bank_payments ("
        " confirmation BLOB PRIMARY KEY, payer TEXT NOT NULL, payee TEXT NOT NULL,"
        " currency TEXT NOT NULL, amount INTEGER NOT NULL,"
        " refunded INTEGER NOT NULL DEFAULT 0, entry INTEGER NOT NULL)",
        # 2: STRICT tables (only integers in amount and refunded, only text in ids);
        # a file holding anything else fails the copy and the migration rolls back.
        "ALTER TABLE bank_requests RENAME TO bank_requests_old;"
        "ALTER TABLE bank_cheques RENAME TO bank_cheques_old;"
        "ALTER TABLE bank_payments RENAME TO bank_payments_old;"
        "CREATE TABLE bank_requests ("
        " holder TEXT NOT NULL, key TEXT NOT NULL, kind TEXT NOT NULL,"
        " digest BLOB NOT NULL, answer BLOB NOT NULL, PRIMARY KEY (holder, key)) STRICT;"
        "CREATE TABLE bank_cheques ("
        " payer TEXT NOT NULL, serial TEXT NOT NULL, status TEXT NOT NULL,"
        " retry_digest BLOB, answer BLOB, PRIMARY KEY (payer, serial)) STRICT;"
        "CREATE TABLE bank_payments ("
        " confirmation BLOB PRIMARY KEY, payer TEXT NOT NULL, payee TEXT NOT NULL,"
        " currency TEXT NOT NULL, amount INTEGER NOT NULL,"
        " refunded INTEGER NOT NULL DEFAULT 0, entry INTEGER NOT NULL) STRICT;"
        "INSERT INTO bank_requests SELECT holder, key, kind, digest, answer"
        " FROM bank_requests_old;"
        "INSERT INTO bank_cheques SELECT payer, serial, status, retry_digest, answer"
        " FROM bank_cheques_old;"
        "INSERT INTO bank_payments SELECT confirmation, payer, payee, currency, amount,"
        " refunded, entry FROM bank_payments_old;"
        "DROP TABLE bank_requests_old;"
        "DROP TABLE bank_cheques_old;"
        "DROP TABLE bank_payments_old",
    ],
}

#: Signs a body as the bank: (statement type, body) -> Statement.
Signer = Callable[[str, dict[str, Any]], Statement]


@dataclass(frozen=True, slots=True)
class Outcome:
    """The bank's signed answer, and whether this call moved money (False: a replay)."""

    statement: Statement
    applied: bool


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class BankBook:
    """The bank's decisions over its own database connection (inside a transaction)."""

    def __init__(self, bank_id: str, sign: Signer, certificate: x509.Certificate) -> None:
        self.bank_id = bank_id
        self._sign = sign
        self._certificate = certificate

    # -- transfers --------------------------------------------------------------------

    def transfer(self, c: sqlite3.Connection, order: Statement, body: TransferOrder,
                 *, payer_certificate: x509.Certificate) -> Outcome:
        """Apply a checked transfer order once per (payer, idempotency key)."""
        replay = self._replay(c, body.payer, body.idempotency_key, "transfer", body.to_body())
        if replay is not None:
            return replay
        request = "transfer:" + body.idempotency_key
        _one_payment_per_reference(c, body.payer, body.payee, body.reference, request)
        decide_transfer(body, balance=_ledger.balance(c, body.payer, body.amount.currency))
        _ledger.account(c, body.payee, body.amount.currency)  # UnknownAccount before moving
        entry = _ledger.move(c, body.payer, body.payee, body.amount, kind="transfer",
                             time_ms=_now_ms(), reference=order.digest)
        confirmation = self._sign(*_typed(confirm_transfer(order, entry)))
        self._store(c, body.payer, body.idempotency_key, "transfer", body.to_body(),
                    confirmation)
        self._payment(c, confirmation, body.payer, body.payee, body.amount, entry)
        _stand(c, body.payer, body.payee, body.reference, request, confirmation)
        self._archive(c, body.payer, order, confirmation, payer_certificate)
        crash_point("transfer.applied")  # all written, not committed
        return Outcome(confirmation, True)

    # -- cheques ------------------------------------------------------------------------

    def deposit_cheque(self, c: sqlite3.Connection, cheque: Statement, body: Cheque, *,
                       depositor: str, drawer_certificate: x509.Certificate,
                       now_ms: int | None = None) -> Outcome:
        """Clear or bounce a checked cheque deposited by ``depositor``."""
        row = c.execute("SELECT status, retry_digest, answer FROM bank_cheques"
                        " WHERE payer = ? AND serial = ?", (body.payer, body.serial)).fetchone()
        status, stored_digest, answer = row if row else (None, None, None)
        cleared_digest = stored_digest if status == "cleared" else None
        if is_cheque_retry(body, depositor=depositor, stored_digest=cleared_digest):
            return Outcome(Statement.from_bytes(answer), False)
        decision: Cleared = decide_cheque_deposit(
            body, depositor=depositor, now_ms=_now_ms() if now_ms is None else now_ms,
            balance=_balance_or_zero(c, body.payer, body.amount),
            stopped=status == "stopped", already_cleared=status == "cleared")
        cheque_body = decision.cheque
        request = "cheque:" + body.serial
        _one_payment_per_reference(c, body.payer, body.payee, body.reference, request)
        _ledger.account(c, cheque_body.payee, cheque_body.amount.currency)
        entry = _ledger.move(c, cheque_body.payer, cheque_body.payee, cheque_body.amount,
                             kind="cheque", time_ms=_now_ms(), reference=cheque.digest)
        cleared = self._sign(*_typed(clear_cheque(cheque, entry)))
        c.execute("INSERT INTO bank_cheques (payer, serial, status, retry_digest, answer)"
                  " VALUES (?, ?, 'cleared', ?, ?)",
                  (body.payer, body.serial, cheque_retry_digest(body), cleared.to_bytes()))
        self._payment(c, cleared, body.payer, body.payee, body.amount, entry)
        _stand(c, body.payer, body.payee, body.reference, request, cleared)
        self._archive(c, depositor, cheque, cleared, drawer_certificate)
        crash_point("cheque.applied")  # all written, not committed
        return Outcome(cleared, True)

    def stop_cheque(self, c: sqlite3.Connection, payer: str, serial: str) -> None:
        """The payer stops a serial before it clears; stopping twice is harmless.

        Only a customer may, and at most ``MAX_STOPPED`` serials that never cleared:
        each is a row kept for good, and a stop costs its sender nothing (any serial
        will do), so stops without bounds would grow our books without bounds.
        """
        row = c.execute("SELECT status FROM bank_cheques WHERE payer = ? AND serial = ?",
                        (payer, serial)).fetchone()
        if row and row[0] == "cleared":
            raise ChequeReused(f"cheque serial {serial} has cleared already",
                               detail={"serial": serial})
        if row:
            return  # stopped already
        if c.execute("SELECT 1 FROM ledger_accounts WHERE holder = ? LIMIT 1",
                     (payer,)).fetchone() is None:
            raise UnknownAccount(f"{payer} has no account at this bank, so no cheques "
                                 "to stop", detail={"holder": payer})
        stopped = c.execute("SELECT count(*) FROM bank_cheques WHERE payer = ? AND"
                            " status = 'stopped'", (payer,)).fetchone()[0]
        if stopped >= MAX_STOPPED:
            raise TooManyStopped(f"{payer} has stopped {stopped} serials that never "
                                 "cleared, as many as this bank keeps",
                                 detail={"stopped": stopped, "max": MAX_STOPPED})
        c.execute("INSERT OR IGNORE INTO bank_cheques (payer, serial, status)"
                  " VALUES (?, ?, 'stopped')", (payer, serial))

    # -- refunds ------------------------------------------------------------------------

    def refund(self, c: sqlite3.Connection, refund_order: Statement, body: RefundOrder, *,
               certificate: x509.Certificate) -> Outcome:
        """Give back part or all of a payment the requester received."""
        replay = self._replay(c, body.payer, body.idempotency_key, "refund", body.to_body())
        if replay is not None:
            return replay
        row = c.execute("SELECT payer, payee, currency, amount, refunded FROM bank_payments"
                        " WHERE confirmation = ?", (body.original,)).fetchone()
        if row is None:
            raise UnknownPayment("no payment with that confirmation at this bank",
                                 detail={"original": body.original})
        payer, payee, currency, amount, refunded = row
        if payee != body.payer or payer != body.payee:
            raise WrongPayee("a refund goes from the payment's payee back to its payer",
                             detail={"payee": payee, "payer": payer})
        total = decide_refund(Amount(currency, amount), Amount(currency, refunded), body.amount)
        entry = _ledger.move(c, body.payer, body.payee, body.amount, kind="refund",
                             time_ms=_now_ms(), reference=refund_order.digest)
        c.execute("UPDATE bank_payments SET refunded = ? WHERE confirmation = ?",
                  (total.minor_units, body.original))
        confirmation = self._sign(*_typed(confirm_refund(refund_order, entry)))
        self._store(c, body.payer, body.idempotency_key, "refund", body.to_body(), confirmation)
        self._archive(c, body.payer, refund_order, confirmation, certificate)
        return Outcome(confirmation, True)

    # -- shared -------------------------------------------------------------------------

    def _replay(self, c: sqlite3.Connection, holder: str, key: str, kind: str,
                request: dict[str, Any]) -> Outcome | None:
        row = c.execute("SELECT kind, digest, answer FROM bank_requests"
                        " WHERE holder = ? AND key = ?", (holder, key)).fetchone()
        stored = None if row is None else IdempotencyRecord(digest=row[1], outcome=row[2])
        if row is not None and row[0] != kind:
            request = {"kind": kind, **request}  # a refund's key reused for a transfer
        decision = decide_idempotency(key, stored, request)
        if isinstance(decision, Replay):
            return Outcome(Statement.from_bytes(decision.outcome), False)
        return None

    def _store(self, c: sqlite3.Connection, holder: str, key: str, kind: str,
               request: dict[str, Any], answer: Statement) -> None:
        c.execute("INSERT INTO bank_requests (holder, key, kind, digest, answer)"
                  " VALUES (?, ?, ?, ?, ?)",
                  (holder, key, kind, request_digest(request), answer.to_bytes()))

    @staticmethod
    def _payment(c: sqlite3.Connection, confirmation: Statement, payer: str, payee: str,
                 amount: Amount, entry: int) -> None:
        c.execute("INSERT INTO bank_payments (confirmation, payer, payee, currency, amount,"
                  " entry) VALUES (?, ?, ?, ?, ?, ?)",
                  (confirmation.digest, payer, payee, amount.currency, amount.minor_units,
                   entry))

    def _archive(self, c: sqlite3.Connection, peer: str, request: Statement,
                 answer: Statement, certificate: x509.Certificate) -> None:
        transaction = request.digest.hex()
        _archive.append(c, [
            _archive.entry(request, direction=Direction.RECEIVED, peer=peer,
                           transaction=transaction, certificate=certificate),
            _archive.entry(answer, direction=Direction.SENT, peer=peer,
                           transaction=transaction, certificate=self._certificate),
        ])


def _one_payment_per_reference(c: sqlite3.Connection, payer: str, payee: str,
                               reference: bytes, request: str) -> None:
    """Refuse a second payment for what ``payer`` already paid ``payee`` (the same
    ``reference``) under another key or serial: the money would reach a payee that
    has nothing to use it for. A payment refunded in full no longer stands."""
    row = c.execute("SELECT request, confirmation FROM bank_references"
                    " WHERE payer = ? AND payee = ? AND reference = ?",
                    (payer, payee, reference)).fetchone()
    if row is None or row[0] == request:
        return
    paid = c.execute("SELECT amount, refunded FROM bank_payments WHERE confirmation = ?",
                     (row[1],)).fetchone()
    if paid is not None and paid[1] >= paid[0]:
        return
    raise AlreadyPaid(f"{payer} paid {payee} for this reference already",
                      detail={"reference": reference})


def _stand(c: sqlite3.Connection, payer: str, payee: str, reference: bytes, request: str,
           settlement: Statement) -> None:
    c.execute("INSERT OR REPLACE INTO bank_references (payer, payee, reference, request,"
              " confirmation) VALUES (?, ?, ?, ?, ?)",
              (payer, payee, reference, request, settlement.digest))


def _typed(body: Any) -> tuple[str, dict[str, Any]]:
    return body.TYPE, body.to_body()


def _balance_or_zero(c: sqlite3.Connection, holder: str, amount: Amount) -> Amount:
    try:
        return _ledger.balance(c, holder, amount.currency)
    except _ledger.UnknownAccount:
        return Amount(amount.currency, 0)

