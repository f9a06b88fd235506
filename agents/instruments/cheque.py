"""The bank half of ``cheque``: ``bank.deposit_cheque`` clears a cheque its payee
deposits, once per ``(payer, serial)``; ``bank.stop_cheque`` lets the payer stop a
serial before it clears; ``bank.cheque_status`` tells the payer (only) what became
of one of its serials, with the clearing: a payee that deposited and vanished never
passed it on, and the payer may need it (a fair purchase's notary). Its table
``bank_cheques`` holds every serial cleared or stopped."""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from typing import Any, Final

from cryptography import x509

from semper.agents.components import _ledger
from semper.agents.components._bank import (
    BankBook,
    BankService,
    Outcome,
    balance_or_zero,
    typed,
)
from semper.agents.runtime._component import Component, handles
from semper.agents.runtime._faults import crash_point
from semper.services.payment import UnknownAccount
from semper.services.payment.cheque import (
    CHEQUE_STATUS,
    DEPOSIT_CHEQUE,
    STOP_CHEQUE,
    Cheque,
    ChequeProof,
    ChequeReused,
    ChequeStatus,
    Cleared,
    DepositAnswer,
    StopCheque,
    TooManyStopped,
    check_cheque,
    cheque_retry_digest,
    clear_cheque,
    decide_cheque_deposit,
    is_cheque_retry,
)
from semper.services.statements import Statement

__all__ = ["MAX_STOPPED", "MIGRATIONS", "ChequeBank", "deposit_cheque", "stop_cheque"]

#: Serials one payer may hold stopped (a stop is for a cheque lost or disputed).
MAX_STOPPED: Final = 10_000

MIGRATIONS: Final = {
    # Files from before instruments were components have the table already (the
    # bank's own migration made it), STRICT or not: step 2 makes it STRICT in both.
    "cheque": [
        "CREATE TABLE IF NOT EXISTS bank_cheques ("
        " payer TEXT NOT NULL, serial TEXT NOT NULL, status TEXT NOT NULL,"
        " retry_digest BLOB, answer BLOB, PRIMARY KEY (payer, serial))",
        "ALTER TABLE bank_cheques RENAME TO bank_cheques_old;"
        "CREATE TABLE bank_cheques ("
        " payer TEXT NOT NULL, serial TEXT NOT NULL, status TEXT NOT NULL,"
        " retry_digest BLOB, answer BLOB, PRIMARY KEY (payer, serial)) STRICT;"
        "INSERT INTO bank_cheques SELECT payer, serial, status, retry_digest, answer"
        " FROM bank_cheques_old;"
        "DROP TABLE bank_cheques_old",
    ],
}


class ChequeBank(Component):
    name = "cheque"
    modules = ("cheque",)
    requires = (BankService,)

    def migrations(self) -> Mapping[str, Sequence[str]]:
        return MIGRATIONS

    @handles(DEPOSIT_CHEQUE)
    async def deposit(self, context: Any, proof: ChequeProof) -> DepositAnswer:
        crash_point("cheque.received")
        bank = self.context.component(BankService)
        cheque = check_cheque(proof.cheque, drawer_certificate=proof.drawer_certificate,
                              bank_id=self.context.id, **bank.checks())
        crash_point("cheque.checked")
        depositor = context.peer.agent_id
        outcome = await self.context.database.transaction(lambda c: deposit_cheque(
            bank.book, c, proof.cheque, cheque, depositor=depositor,
            drawer_certificate=proof.drawer_certificate))
        crash_point("cheque.committed")
        return DepositAnswer(cleared=outcome.statement,
                             bank_certificate=self.context.certificate)

    @handles(STOP_CHEQUE)
    async def stop(self, context: Any, request: StopCheque) -> StopCheque:
        payer = context.peer.agent_id
        await self.context.database.transaction(lambda c: stop_cheque(c, payer, request.serial))
        return request

    @handles(CHEQUE_STATUS)
    async def status(self, context: Any, request: StopCheque) -> ChequeStatus:
        """The requester's own serial only (the channel's peer is the drawer): nobody
        else learns whether a payer's cheque cleared. Changes nothing."""
        payer = context.peer.agent_id
        row = await self.context.database.read(lambda c: c.execute(
            "SELECT status, answer FROM bank_cheques WHERE payer = ? AND serial = ?",
            (payer, request.serial)).fetchone())
        if row is None:
            return ChequeStatus(serial=request.serial, state="open")
        if row[0] != "cleared":
            return ChequeStatus(serial=request.serial, state="stopped")
        return ChequeStatus(serial=request.serial, state="cleared",
                            cleared=Statement.from_bytes(row[1]),
                            bank_certificate=self.context.certificate)


def deposit_cheque(book: BankBook, c: sqlite3.Connection, cheque: Statement, body: Cheque, *,
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
        body, depositor=depositor, now_ms=book.now_ms() if now_ms is None else now_ms,
        balance=balance_or_zero(c, body.payer, body.amount),
        stopped=status == "stopped", already_cleared=status == "cleared")
    cheque_body = decision.cheque
    request = "cheque:" + body.serial
    book.one_payment(c, body.payer, body.payee, body.reference, request)
    _ledger.account(c, cheque_body.payee, cheque_body.amount.currency)
    entry = _ledger.move(c, cheque_body.payer, cheque_body.payee, cheque_body.amount,
                         kind="cheque", time_ms=book.now_ms(), reference=cheque.digest)
    cleared = book.sign(*typed(clear_cheque(cheque, entry)))
    c.execute("INSERT INTO bank_cheques (payer, serial, status, retry_digest, answer)"
              " VALUES (?, ?, 'cleared', ?, ?)",
              (body.payer, body.serial, cheque_retry_digest(body), cleared.to_bytes()))
    book.settled(c, cleared, payer=body.payer, payee=body.payee, amount=body.amount,
                 entry=entry, reference=body.reference, request=request)
    book.archive(c, depositor, cheque, cleared, drawer_certificate)
    crash_point("cheque.applied")  # all written, not committed
    return Outcome(cleared, True)


def stop_cheque(c: sqlite3.Connection, payer: str, serial: str) -> None:
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
