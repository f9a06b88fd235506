"""The bank: what every payment instrument's bank half shares, and refunds.

Theory of operation. A request that moves money is checked first (signatures,
certificates: the instrument's ``check_*``, outside any transaction), then applied
by one function that runs inside ``Database.transaction``: it looks up the
idempotency record, decides (with balances read in the same transaction), posts the
journal entry, signs the bank's statement, stores the answer under the idempotency
key and appends both statements to the evidence archive. All of that commits
together or not at all, so a crash at any point leaves either nothing or
everything, and a retry after a crash finds the stored answer and moves no money
twice.

The bank role is this component (``bank.account``, ``bank.refund``), the ledger, and
the bank half of every payment instrument installed (entry-point group
``semper.payment_banks``), each a component of its own with its own ops and tables
that applies its payments through ``BankBook``:

- idempotency: a request is applied once per ``(holder, idempotency_key)``; the same
  key with the same body returns the stored answer, with another body
  ``payment.idempotency_conflict`` (``replay``, ``store``);
- one payment stands per ``(payer, payee, reference)``: another request for the same
  is ``payment.already_paid`` until the first is refunded in full (``one_payment``);
- every settled payment can be refunded, by the digest of its settlement
  (``settled``), and the two statements of each step go into the archive
  (``archive``).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, Final

from cryptography import x509

from semper.agents.components import _archive, _ledger
from semper.agents.components._payments import installed_order
from semper.agents.runtime._component import Component, Context, handles
from semper.services import Amount
from semper.services.archive import Direction
from semper.services.payment import (
    AlreadyPaid,
    IdempotencyRecord,
    RefundAnswer,
    RefundOrder,
    RefundRequest,
    Replay,
    UnknownPayment,
    WrongPayee,
    check_refund_order,
    confirm_refund,
    decide_idempotency,
    decide_refund,
    request_digest,
)
from semper.services.payment._ops import ACCOUNT, REFUND, AccountRequest
from semper.services.statements import Statement

__all__ = ["BANK_HALVES_GROUP", "MIGRATIONS", "BankBook", "BankService", "Outcome",
           "account_view", "bank_halves"]

#: Entry-point group of the payment instruments' bank halves (Component classes).
BANK_HALVES_GROUP: Final = "semper.payment_banks"

MIGRATIONS: Final = {
    **_archive.MIGRATIONS,
    **_ledger.MIGRATIONS,
    # The payment standing for each (payer, payee, reference): a second one under
    # another key is refused while the first is not refunded in full.
    "bank_references": [
        "CREATE TABLE bank_references ("
        " payer TEXT NOT NULL, payee TEXT NOT NULL, reference BLOB NOT NULL,"
        " request TEXT NOT NULL, confirmation BLOB NOT NULL,"
        " PRIMARY KEY (payer, payee, reference)) STRICT"
    ],
    "bank": [
        # One row per applied request that carries an idempotency key.
        "CREATE TABLE bank_requests ("
        " holder TEXT NOT NULL, key TEXT NOT NULL, kind TEXT NOT NULL,"
        " digest BLOB NOT NULL, answer BLOB NOT NULL, PRIMARY KEY (holder, key));"
        # Payments that can be refunded, by the digest of the bank's settlement.
        "CREATE TABLE bank_payments ("
        " confirmation BLOB PRIMARY KEY, payer TEXT NOT NULL, payee TEXT NOT NULL,"
        " currency TEXT NOT NULL, amount INTEGER NOT NULL,"
        " refunded INTEGER NOT NULL DEFAULT 0, entry INTEGER NOT NULL)",
        # 2: STRICT tables (only integers in amount and refunded, only text in ids);
        # a file holding anything else fails the copy and the migration rolls back.
        "ALTER TABLE bank_requests RENAME TO bank_requests_old;"
        "ALTER TABLE bank_payments RENAME TO bank_payments_old;"
        "CREATE TABLE bank_requests ("
        " holder TEXT NOT NULL, key TEXT NOT NULL, kind TEXT NOT NULL,"
        " digest BLOB NOT NULL, answer BLOB NOT NULL, PRIMARY KEY (holder, key)) STRICT;"
        "CREATE TABLE bank_payments ("
        " confirmation BLOB PRIMARY KEY, payer TEXT NOT NULL, payee TEXT NOT NULL,"
        " currency TEXT NOT NULL, amount INTEGER NOT NULL,"
        " refunded INTEGER NOT NULL DEFAULT 0, entry INTEGER NOT NULL) STRICT;"
        "INSERT INTO bank_requests SELECT holder, key, kind, digest, answer"
        " FROM bank_requests_old;"
        "INSERT INTO bank_payments SELECT confirmation, payer, payee, currency, amount,"
        " refunded, entry FROM bank_payments_old;"
        "DROP TABLE bank_requests_old;"
        "DROP TABLE bank_payments_old",
    ],
}

#: Signs a body as the bank: (statement type, body) -> Statement.
Signer = Callable[[str, dict[str, Any]], Statement]
#: An instrument's refund of a payment it made from its own system account: moves
#: the money inside the refund's transaction and returns the statement to answer
#: (the refund's confirmation): (connection, refund order, its body) -> Statement.
Refunder = Callable[[sqlite3.Connection, Statement, RefundOrder], Statement]


@dataclass(frozen=True, slots=True)
class Outcome:
    """The bank's signed answer, and whether this call moved money (False: a replay)."""

    statement: Statement
    applied: bool


class BankBook:
    """The bank's shared decisions over its own database connection (inside a
    transaction), for every instrument's bank half."""

    def __init__(self, bank_id: str, sign: Signer, certificate: x509.Certificate,
                 now_ms: Callable[[], int]) -> None:
        self.bank_id = bank_id
        self.sign = sign
        self.certificate = certificate
        self.now_ms = now_ms
        #: Payments an instrument made from its own system account (ecash pays a
        #: seller from ``@ecash-outstanding``: the bank knows no payer) are refunded
        #: by that instrument: the account's holder name -> its ``Refunder``.
        self.refunders: dict[str, Refunder] = {}

    # -- refunds ------------------------------------------------------------------------

    def refund(self, c: sqlite3.Connection, refund_order: Statement, body: RefundOrder, *,
               certificate: x509.Certificate) -> Outcome:
        """Give back part or all of a payment the requester received."""
        replay = self.replay(c, body.payer, body.idempotency_key, "refund", body.to_body())
        if replay is not None:
            return replay
        row = c.execute("SELECT payer, payee, currency, amount, refunded FROM bank_payments"
                        " WHERE confirmation = ?", (body.original,)).fetchone()
        if row is None:
            raise UnknownPayment("no payment with that confirmation at this bank",
                                 detail={"original": body.original})
        payer, payee, currency, amount, refunded = row
        refunder = self.refunders.get(payer)  # paid from an instrument's own account
        if payee != body.payer or (refunder is None and payer != body.payee):
            raise WrongPayee("a refund goes from the payment's payee back to its payer",
                             detail={"payee": payee, "payer": payer})
        total = decide_refund(Amount(currency, amount), Amount(currency, refunded), body.amount)
        if refunder is None:
            entry = _ledger.move(c, body.payer, body.payee, body.amount, kind="refund",
                                 time_ms=self.now_ms(), reference=refund_order.digest)
            confirmation = self.sign(*typed(confirm_refund(refund_order, entry)))
        else:
            confirmation = refunder(c, refund_order, body)
        c.execute("UPDATE bank_payments SET refunded = ? WHERE confirmation = ?",
                  (total.minor_units, body.original))
        self.store(c, body.payer, body.idempotency_key, "refund", body.to_body(), confirmation)
        self.archive(c, body.payer, refund_order, confirmation, certificate)
        return Outcome(confirmation, True)

    # -- what each instrument's bank half uses -----------------------------------------

    def replay(self, c: sqlite3.Connection, holder: str, key: str, kind: str,
               request: dict[str, Any]) -> Outcome | None:
        """The stored answer to ``holder``'s request under ``key``, if one was applied.

        Raises IdempotencyConflict: the key was used for another request (or kind)."""
        row = c.execute("SELECT kind, digest, answer FROM bank_requests"
                        " WHERE holder = ? AND key = ?", (holder, key)).fetchone()
        stored = None if row is None else IdempotencyRecord(digest=row[1], outcome=row[2])
        if row is not None and row[0] != kind:
            request = {"kind": kind, **request}  # one kind's key reused for another
        decision = decide_idempotency(key, stored, request)
        if isinstance(decision, Replay):
            return Outcome(Statement.from_bytes(decision.outcome), False)
        return None

    def store(self, c: sqlite3.Connection, holder: str, key: str, kind: str,
              request: dict[str, Any], answer: Statement) -> None:
        """Keep ``answer`` as the outcome of ``holder``'s request under ``key``."""
        c.execute("INSERT INTO bank_requests (holder, key, kind, digest, answer)"
                  " VALUES (?, ?, ?, ?, ?)",
                  (holder, key, kind, request_digest(request), answer.to_bytes()))

    def one_payment(self, c: sqlite3.Connection, payer: str, payee: str, reference: bytes,
                    request: str) -> None:
        """Refuse a second payment for what ``payer`` already paid ``payee`` (the same
        ``reference``) under another ``request`` (an instrument-qualified key): the
        money would reach a payee that has nothing to use it for. A payment refunded
        in full no longer stands."""
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

    def settled(self, c: sqlite3.Connection, settlement: Statement, *, payer: str, payee: str,
                amount: Amount, entry: int, reference: bytes, request: str) -> None:
        """Record a payment the bank settled: refundable by its settlement's digest,
        and standing for ``(payer, payee, reference)``."""
        c.execute("INSERT INTO bank_payments (confirmation, payer, payee, currency, amount,"
                  " entry) VALUES (?, ?, ?, ?, ?, ?)",
                  (settlement.digest, payer, payee, amount.currency, amount.minor_units,
                   entry))
        c.execute("INSERT OR REPLACE INTO bank_references (payer, payee, reference, request,"
                  " confirmation) VALUES (?, ?, ?, ?, ?)",
                  (payer, payee, reference, request, settlement.digest))

    def archive(self, c: sqlite3.Connection, peer: str, request: Statement,
                answer: Statement, certificate: x509.Certificate) -> None:
        """The request received and the answer sent, in the request's transaction."""
        transaction = request.digest.hex()
        _archive.append(c, [
            _archive.entry(request, direction=Direction.RECEIVED, peer=peer,
                           transaction=transaction, certificate=certificate),
            _archive.entry(answer, direction=Direction.SENT, peer=peer,
                           transaction=transaction, certificate=self.certificate),
        ], now_ms=self.now_ms())


def typed(body: Any) -> tuple[str, dict[str, Any]]:
    """A statement body's (type, body) for ``BankBook.sign``."""
    return body.TYPE, body.to_body()


def balance_or_zero(c: sqlite3.Connection, holder: str, amount: Amount) -> Amount:
    try:
        return _ledger.balance(c, holder, amount.currency)
    except _ledger.UnknownAccount:
        return Amount(amount.currency, 0)


class BankService(Component):
    """The ``bank`` service's own ops: accounts and refunds. The instruments' bank
    halves reach ``book`` through ``context.component(BankService)``."""

    name = "bank"
    requires = (_ledger.Ledger,)

    def __init__(self, context: Context) -> None:
        super().__init__(context)
        self.book = BankBook(context.id, context.sign, context.certificate, context.now_ms)

    def migrations(self) -> Mapping[str, Sequence[str]]:
        return MIGRATIONS

    def checks(self) -> dict[str, Any]:
        """What an instrument's ``check_*`` needs to know of the market, now."""
        return {"root": self.context.root, "crl": self.context.crl, "now": self.context.now()}

    @handles(REFUND)
    async def refund(self, context: Any, request: RefundRequest) -> RefundAnswer:
        peer = context.peer
        order = check_refund_order(request.refund_order, certificate=peer.certificate,
                                   requester=peer.agent_id, **self.checks())
        outcome = await self.context.database.transaction(lambda c: self.book.refund(
            c, request.refund_order, order, certificate=peer.certificate))
        return RefundAnswer(confirmation=outcome.statement,
                            bank_certificate=self.context.certificate)

    @handles(ACCOUNT)
    async def account(self, context: Any, request: AccountRequest) -> dict[str, Any]:
        """The caller's balances and latest journal entries (``semper wallet``); the
        runtime refused any body but an empty one."""
        holder = context.peer.agent_id
        return await self.context.database.read(lambda c: account_view(c, holder))


def account_view(c: Any, holder: str, limit: int = 20) -> dict[str, Any]:
    """Balances by currency and the ``limit`` latest postings of ``holder``."""
    rows = c.execute(
        "SELECT e.entry, e.time_ms, e.kind, a.currency, p.amount FROM ledger_postings p"
        " JOIN ledger_entries e ON e.entry = p.entry JOIN ledger_accounts a ON a.id = p.account"
        " WHERE a.holder = ? ORDER BY e.entry DESC LIMIT ?", (holder, limit)).fetchall()
    return {"balances": _ledger.balances(c, holder),
            "recent": [{"entry": entry, "time_ms": time_ms, "kind": kind,
                        "amount": {"currency": currency, "minor_units": units}}
                       for entry, time_ms, kind, currency, units in rows]}


def bank_halves(modules: Sequence[str] | None = None, *,
                skipped: set[str] | None = None) -> list[type[Component]]:
    """The bank halves of the payment instruments installed, by name; ``modules``
    restricts (and orders) them. A half that fails to load is skipped and logged:
    the bank serves the others."""
    import logging

    found = {ep.name: ep for ep in entry_points(group=BANK_HALVES_GROUP)}
    if modules is None:
        modules = installed_order(BANK_HALVES_GROUP)
    names = [m for m in modules if m in found]
    halves = []
    for name in names:
        try:
            cls = found[name].load()
        except Exception as exc:
            logging.getLogger("semper.bank").error(
                "payment instrument %r (%s) failed to load: %s", name, found[name].value, exc)
            if skipped is not None:
                skipped.add(name)
            continue
        if isinstance(cls, type) and issubclass(cls, Component):
            halves.append(cls)
    return halves
