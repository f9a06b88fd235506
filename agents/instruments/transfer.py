"""The bank half of ``transfer``: ``bank.transfer`` moves money from the payer's
account to the payee's on the payer's signed order, once per
``(payer, idempotency_key)``, and answers with the bank's signed confirmation."""

from __future__ import annotations

import sqlite3
from typing import Any

from cryptography import x509

from semper.agents.components import _ledger
from semper.agents.components._bank import BankBook, BankService, Outcome, typed
from semper.agents.runtime._component import Component, handles
from semper.agents.runtime._faults import crash_point
from semper.services.payment.transfer import (
    TRANSFER,
    TransferOrder,
    TransferProof,
    TransferRequest,
    check_transfer_order,
    confirm_transfer,
    decide_transfer,
)
from semper.services.statements import Statement

__all__ = ["TransferBank", "apply_transfer"]


class TransferBank(Component):
    name = "transfer"
    modules = ("transfer",)
    requires = (BankService,)

    @handles(TRANSFER)
    async def transfer(self, context: Any, request: TransferRequest) -> TransferProof:
        crash_point("transfer.received")
        bank = self.context.component(BankService)
        peer = context.peer
        order = check_transfer_order(request.order, payer_certificate=peer.certificate,
                                     bank_id=self.context.id, requester=peer.agent_id,
                                     **bank.checks())
        crash_point("transfer.checked")
        outcome = await self.context.database.transaction(lambda c: apply_transfer(
            bank.book, c, request.order, order, payer_certificate=peer.certificate))
        crash_point("transfer.committed")
        return TransferProof(confirmation=outcome.statement,
                             bank_certificate=self.context.certificate)


def apply_transfer(book: BankBook, c: sqlite3.Connection, order: Statement,
                   body: TransferOrder, *, payer_certificate: x509.Certificate) -> Outcome:
    """Apply a checked transfer order once per (payer, idempotency key)."""
    replay = book.replay(c, body.payer, body.idempotency_key, "transfer", body.to_body())
    if replay is not None:
        return replay
    request = "transfer:" + body.idempotency_key
    book.one_payment(c, body.payer, body.payee, body.reference, request)
    decide_transfer(body, balance=_ledger.balance(c, body.payer, body.amount.currency))
    _ledger.account(c, body.payee, body.amount.currency)  # UnknownAccount before moving
    entry = _ledger.move(c, body.payer, body.payee, body.amount, kind="transfer",
                         time_ms=book.now_ms(), reference=order.digest)
    confirmation = book.sign(*typed(confirm_transfer(order, entry)))
    book.store(c, body.payer, body.idempotency_key, "transfer", body.to_body(), confirmation)
    book.settled(c, confirmation, payer=body.payer, payee=body.payee, amount=body.amount,
                 entry=entry, reference=body.reference, request=request)
    book.archive(c, body.payer, order, confirmation, payer_certificate)
    crash_point("transfer.applied")  # all written, not committed
    return Outcome(confirmation, True)
