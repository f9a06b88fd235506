"""The bank half of ``voucher``: a component with two ops and one table, registered in
the ``semper.payment_banks`` entry-point group. The bank role serves it beside the
built-in instruments; nothing in semper names it.

Each op checks what it was sent outside any transaction (signatures), then applies
everything in one ``database.transaction``: the idempotency record, the journal
entry, the voucher table, the signed answer and the archive commit together or not
at all. Money for vouchers sold and not yet redeemed sits in the bank's own account
``@vouchers``, so the books still balance to the total minted.
"""

from __future__ import annotations

import dataclasses
import sqlite3
from collections.abc import Mapping, Sequence
from typing import Any, Final

from semper.agents import Component, crash_point, handles
from semper.agents.components.bank import BankBook, BankService, Outcome
from semper.agents.components.bank import ledger as _ledger
from semper.services.certificates import fingerprint
from semper.services.statements import Statement

from .protocol import (
    BUY,
    MODULE,
    REDEEM,
    AlreadyRedeemed,
    BuyAnswer,
    BuyRequest,
    PurchaseOrder,
    RedeemAnswer,
    RedeemRequest,
    Trust,
    Voucher,
    VoucherRecord,
    check_own_voucher,
    check_purchase_order,
    decide_purchase_retry,
    decide_redemption,
    issue_voucher,
    purchase_content,
    redeem,
    voucher_serial,
)

__all__ = ["MIGRATIONS", "VoucherBank", "apply_purchase", "apply_redemption"]

#: The bank's own account that holds what vouchers sold and not redeemed are worth.
VOUCHERS: Final = _ledger.system_account("vouchers")

MIGRATIONS: Final = {
    "voucher": [
        "CREATE TABLE voucher_vouchers ("
        " serial TEXT PRIMARY KEY, payer TEXT NOT NULL,"
        " voucher BLOB NOT NULL,"  # the current voucher's canonical bytes
        " digest BLOB NOT NULL, lock BLOB NOT NULL,"
        " redeemer TEXT, answer BLOB) STRICT",
        # How many times retries relocked the voucher: capped (MAX_RELOCKS).
        "ALTER TABLE voucher_vouchers ADD COLUMN relocks INTEGER NOT NULL DEFAULT 0",
    ],
}


class VoucherBank(Component):
    name = MODULE
    modules = (MODULE,)
    requires = (BankService,)

    def migrations(self) -> Mapping[str, Sequence[str]]:
        return MIGRATIONS

    def _trust(self) -> Trust:
        return self.context.root, self.context.crl, self.context.now()

    @handles(BUY)
    async def buy(self, context: Any, request: BuyRequest) -> BuyAnswer:
        peer = context.peer
        order = check_purchase_order(request.order, payer_certificate=peer.certificate,
                                     trust=self._trust(), bank_id=self.context.id,
                                     requester=peer.agent_id)
        book = self.context.component(BankService).book
        outcome = await self.context.database.transaction(
            lambda c: apply_purchase(book, c, request.order, order,
                                     payer_certificate=peer.certificate))
        return BuyAnswer(voucher=outcome.statement, bank_certificate=self.context.certificate)

    @handles(REDEEM)
    async def redeem(self, context: Any, request: RedeemRequest) -> RedeemAnswer:
        # What we stored vouches for a voucher signed before our certificate was renewed.
        stored = None
        serial = request.voucher.body.get("serial")
        if request.voucher.signer != fingerprint(self.context.certificate) and isinstance(
                serial, str):
            stored = await self.context.database.read(lambda c: _stored_digest(c, serial))
        voucher = check_own_voucher(request.voucher, trust=self._trust(),
                                    bank_certificate=self.context.certificate, stored=stored)
        book = self.context.component(BankService).book
        redeemer = context.peer
        outcome = await self.context.database.transaction(
            lambda c: apply_redemption(book, c, request.voucher, voucher, request.secret,
                                       redeemer=redeemer.agent_id))
        # A test kills the bank here: paid, the answer lost; the payee's retry gets it.
        crash_point("voucher.redeem_committed")
        return RedeemAnswer(redemption=outcome.statement,
                            bank_certificate=self.context.certificate)


def _record(c: sqlite3.Connection, serial: str) -> tuple[VoucherRecord, Statement] | None:
    row = c.execute("SELECT voucher, digest, lock, redeemer, answer, relocks"
                    " FROM voucher_vouchers WHERE serial = ?", (serial,)).fetchone()
    if row is None:
        return None
    return (VoucherRecord(serial=serial, digest=row[1], lock=row[2], redeemer=row[3],
                          answer=row[4], relocks=row[5]), Statement.from_bytes(row[0]))


def _stored_digest(c: sqlite3.Connection, serial: str) -> bytes | None:
    row = c.execute("SELECT digest FROM voucher_vouchers WHERE serial = ?",
                    (serial,)).fetchone()
    return None if row is None else row[0]


def apply_purchase(book: BankBook, c: sqlite3.Connection, order: Statement,
                   body: PurchaseOrder, *, payer_certificate: Any) -> Outcome:
    """Sell a voucher for a checked order, once per (payer, idempotency key): debit the
    payer into ``@vouchers``; a retry gets the voucher, relocked if still unspent."""
    serial = voucher_serial(body.payer, body.idempotency_key)
    content = purchase_content(body)
    if book.replay(c, body.payer, body.idempotency_key, MODULE, content) is not None:
        found = _record(c, serial)
        assert found is not None, "a stored purchase without its voucher"
        record, current = found
        if not decide_purchase_retry(record, body.lock):
            return Outcome(current, False)
        first = Voucher.from_statement(current)
        relocked = book.sign(*_typed(dataclasses.replace(first, lock=body.lock)))
        c.execute("UPDATE voucher_vouchers SET voucher = ?, digest = ?, lock = ?,"
                  " relocks = relocks + 1 WHERE serial = ?",
                  (relocked.to_bytes(), relocked.digest, body.lock, serial))
        book.archive(c, body.payer, order, relocked, payer_certificate)
        return Outcome(relocked, False)
    _ledger.open_account(c, VOUCHERS, body.amount.currency)
    entry = _ledger.move(c, body.payer, VOUCHERS, body.amount, kind="voucher_sale",
                         time_ms=book.now_ms(), reference=order.digest)
    voucher = book.sign(*_typed(issue_voucher(order, body, serial=serial, entry=entry)))
    c.execute("INSERT INTO voucher_vouchers (serial, payer, voucher, digest, lock)"
              " VALUES (?, ?, ?, ?, ?)",
              (serial, body.payer, voucher.to_bytes(), voucher.digest, body.lock))
    book.store(c, body.payer, body.idempotency_key, MODULE, content, voucher)
    book.archive(c, body.payer, order, voucher, payer_certificate)
    return Outcome(voucher, True)


def apply_redemption(book: BankBook, c: sqlite3.Connection, voucher: Statement, body: Voucher,
                     secret: bytes, *, redeemer: str) -> Outcome:
    """Pay a voucher of ours to ``redeemer`` once: ``@vouchers`` -> redeemer, marked
    spent, the redemption signed and made refundable like any settled payment. Its
    own buyer may redeem an unspent voucher too: that takes the money back, and is
    no payment (nothing to refund)."""
    found = _record(c, body.serial)
    decision = decide_redemption(voucher.digest, body, record=found and found[0],
                                 redeemer=redeemer, secret=secret)
    if isinstance(decision, AlreadyRedeemed):
        return Outcome(Statement.from_bytes(decision.answer), False)
    request = f"{MODULE}:{body.serial}"
    payment = redeemer != body.payer
    if payment:
        book.one_payment(c, body.payer, redeemer, body.reference, request)
    _ledger.account(c, redeemer, body.amount.currency)  # UnknownAccount before moving
    entry = _ledger.move(c, VOUCHERS, redeemer, body.amount, kind="voucher_redemption",
                         time_ms=book.now_ms(), reference=voucher.digest)
    redemption = book.sign(*_typed(redeem(voucher, body, redeemer=redeemer, entry=entry)))
    c.execute("UPDATE voucher_vouchers SET redeemer = ?, answer = ? WHERE serial = ?",
              (redeemer, redemption.to_bytes(), body.serial))
    if payment:
        book.settled(c, redemption, payer=body.payer, payee=redeemer, amount=body.amount,
                     entry=entry, reference=body.reference, request=request)
    # The voucher came back from the redeemer; it is signed by us.
    book.archive(c, redeemer, voucher, redemption, book.certificate)
    return Outcome(redemption, True)


def _typed(body: Any) -> tuple[str, dict[str, Any]]:
    return body.TYPE, body.to_wire()
