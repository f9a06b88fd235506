"""The bank (role ``bank``): accounts, transfers, cheques and refunds.

Each op checks what it is asked (signatures, certificates, schema) outside any
transaction, then applies it in one SQLite transaction through ``BankBook``:
idempotency lookup, decision, journal entry, the bank's signed answer and the
evidence, committed together (and, under load, in one group commit with other
requests). The op answers only after that commit.
"""

from __future__ import annotations

from typing import Any

from semper.agents.components import _bank, _ledger
from semper.agents.runtime._faults import crash_point
from semper.agents.runtime._identity import utcnow
from semper.agents.runtime._roles import Role
from semper.services.payment import (
    BANK_REFUND,
    BANK_SERVICE,
    BadRequest,
    RefundAnswer,
    RefundRequest,
    check_refund_order,
)
from semper.services.payment.cheque import (
    BANK_DEPOSIT_CHEQUE,
    BANK_STOP_CHEQUE,
    ChequeProof,
    DepositAnswer,
    StopCheque,
    check_cheque,
)
from semper.services.payment.transfer import (
    BANK_TRANSFER,
    TransferProof,
    TransferRequest,
    check_transfer_order,
)

__all__ = ["Bank"]


class Bank(Role):
    name = "bank"

    def migrations(self) -> dict[str, Any]:
        return dict(_bank.MIGRATIONS)

    def setup(self) -> None:
        agent = self.agent
        self.book = _bank.BankBook(agent.id, agent.evidence.sign,
                                   agent.credentials.identity.certificate)
        agent.registry.add_service(BANK_SERVICE, version=1, modules=("transfer", "cheque"))
        agent.add_op(BANK_SERVICE, BANK_TRANSFER, self.transfer)
        agent.add_op(BANK_SERVICE, BANK_DEPOSIT_CHEQUE, self.deposit_cheque)
        agent.add_op(BANK_SERVICE, BANK_REFUND, self.refund)
        agent.add_op(BANK_SERVICE, BANK_STOP_CHEQUE, self.stop_cheque)
        agent.add_op(BANK_SERVICE, "account", self.account)

    def _checks(self) -> dict[str, Any]:
        return {"root": self.agent.credentials.root, "crl": self.agent.crl, "now": utcnow()}


    async def transfer(self, context: Any, body: Any) -> dict[str, Any]:
        request = TransferRequest.from_wire(body)
        crash_point("transfer.received")
        peer = context.peer
        order = check_transfer_order(request.order, payer_certificate=peer.certificate,
                                     bank_id=self.agent.id, requester=peer.agent_id,
                                     **self._checks())
        crash_point("transfer.checked")
        outcome = await self.agent.database.transaction(lambda c: self.book.transfer(
            c, request.order, order, payer_certificate=peer.certificate))
        crash_point("transfer.committed")
        return TransferProof(confirmation=outcome.statement,
                             bank_certificate=self.agent.credentials.identity.certificate
                             ).to_wire()

    async def deposit_cheque(self, context: Any, body: Any) -> dict[str, Any]:
        proof = ChequeProof.from_wire(body)
        crash_point("cheque.received")
        cheque = check_cheque(proof.cheque, drawer_certificate=proof.drawer_certificate,
                              bank_id=self.agent.id, **self._checks())
        crash_point("cheque.checked")
        depositor = context.peer.agent_id
        outcome = await self.agent.database.transaction(lambda c: self.book.deposit_cheque(
            c, proof.cheque, cheque, depositor=depositor,
            drawer_certificate=proof.drawer_certificate))
        crash_point("cheque.committed")
        return DepositAnswer(cleared=outcome.statement,
                             bank_certificate=self.agent.credentials.identity.certificate
                             ).to_wire()

    async def refund(self, context: Any, body: Any) -> dict[str, Any]:
        request = RefundRequest.from_wire(body)
        peer = context.peer
        order = check_refund_order(request.refund_order, certificate=peer.certificate,
                                   requester=peer.agent_id, **self._checks())
        outcome = await self.agent.database.transaction(lambda c: self.book.refund(
            c, request.refund_order, order, certificate=peer.certificate))
        return RefundAnswer(confirmation=outcome.statement,
                            bank_certificate=self.agent.credentials.identity.certificate
                            ).to_wire()

    async def stop_cheque(self, context: Any, body: Any) -> dict[str, Any]:
        request = StopCheque.from_wire(body)
        payer = context.peer.agent_id
        await self.agent.database.transaction(
            lambda c: self.book.stop_cheque(c, payer, request.serial))
        return request.to_wire()

    async def account(self, context: Any, body: Any) -> dict[str, Any]:
        """The caller's balances and latest journal entries (``semper wallet``)."""
        if body not in (None, {}):
            raise BadRequest("bank.account takes an empty map")
        holder = context.peer.agent_id
        return await self.agent.database.read(lambda c: account_view(c, holder))


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
