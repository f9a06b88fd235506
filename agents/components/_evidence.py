"""Saying things one cannot later deny: the ``evidence`` service every agent runs.

``evidence.deliver`` carries one signed statement to a peer, which checks it (signed
by the channel's peer, whose certificate the CA vouches for, not seen before),
archives it and answers with its own signed ``evidence.receipt`` naming the
statement's digest. The receiver's archive holds both in one commit before the
answer leaves, and the sender archives its statement and the receipt before
``deliver`` returns: when either side says "done", both hold the evidence.

A peer writes only into its own transactions (docs/protocol.md section 7.5): one
whose every record is with that peer, or a new one named ``<its agent id>/...``.
Otherwise a stranger could file statements under a purchase of ours and ship them
inside its evidence bundle. And each peer may grow the archive only up to a quota
(``[evidence] peer_quota_bytes``).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, ClassVar, Final

from semper.agents.components._archive import (
    RECORD_OVERHEAD,
    append,
    entry,
    peer_usage,
    transaction_peers,
)
from semper.services.archive import Direction
from semper.services.archive._bodies import DeliverAnswer, DeliverRequest
from semper.services.statements import (
    Replayed,
    ReplayGuard,
    Statement,
    sign_statement,
    verify_statement,
)

if TYPE_CHECKING:
    import sqlite3

    from semper.agents.runtime._agent import Agent
    from semper.transport import RequestContext

__all__ = ["RECEIPT", "EvidenceService", "ForeignTransaction", "QuotaExceeded",
           "ReceiptMismatch", "own_transaction"]

RECEIPT: Final = "evidence.receipt"
#: How far a delivered statement's issue time may be from ours.
REPLAY_WINDOW_MS: Final = 10 * 60 * 1000


class ReceiptMismatch(Exception):
    """The peer's receipt is not a receipt for what we delivered."""

    code: ClassVar[str] = "evidence.bad_receipt"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class _Refusal(Exception):
    code: ClassVar[str] = "evidence.error"
    wire: ClassVar[bool] = True  # refusals of evidence.deliver, meant for the peer

    def __init__(self, message: str, *, detail: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.detail: dict[str, Any] = dict(detail or {})


class ForeignTransaction(_Refusal):
    """``evidence.deliver`` into a transaction the requester does not share with us
    alone, and that is not new in its own name space."""

    code: ClassVar[str] = "evidence.foreign_transaction"


class QuotaExceeded(_Refusal):
    """The requester has grown our archive by its quota already."""

    code: ClassVar[str] = "evidence.quota_exceeded"


def own_transaction(peer: str, label: str) -> str:
    """The name of a new transaction ``peer`` may open with us: ``peer/label``."""
    return f"{peer}/{label}"


class EvidenceService:
    """Sign, deliver and receive statements, archiving each side's evidence."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.guard = ReplayGuard(REPLAY_WINDOW_MS)

    async def deliver_handler(self, context: RequestContext,
                              request: DeliverRequest) -> DeliverAnswer:
        """``evidence.deliver``, served through the ``Evidence`` component (the runtime
        decoded and checked the body: ``services.archive._bodies``)."""
        return await self._deliver(context, request)

    def sign(self, type: str, body: dict[str, Any]) -> Statement:
        """Sign ``body`` as a statement of ``type`` by this agent, now, with a fresh
        nonce: the one place an agent signs."""
        credentials = self.agent.credentials
        return sign_statement(type, body, key=credentials.key,
                              certificate=credentials.identity.certificate,
                              now_ms=self.agent.clock.now_ms(), nonce=os.urandom(16))

    async def deliver(self, peer_id: str, transaction: str, statement: Statement) -> Statement:
        """Deliver ``statement`` to ``peer_id``; returns its verified, archived receipt.

        Raises:
            RemoteError: the peer refused the statement (its code says why).
            ReceiptMismatch, StatementError, CertificateError: the receipt is bad.
        """
        channel = await self.agent.channel(peer_id)
        answer = await self.agent.request(peer_id, "evidence", "deliver", {
            "transaction": transaction, "statement": statement.to_wire()})
        if not isinstance(answer, dict):
            raise ReceiptMismatch("the answer carries no receipt")
        receipt = Statement.from_wire(answer.get("receipt"))
        certificate = channel.peer.certificate
        verify_statement(receipt, certificate=certificate, root=self.agent.credentials.root,
                         crl=self.agent.crl, now=self.agent.context.now(), expected_type=RECEIPT,
                         expected_signer=peer_id)
        if receipt.body.get("statement") != statement.digest or (
            receipt.body.get("transaction") != transaction
        ):
            raise ReceiptMismatch(f"{peer_id}'s receipt is for another statement")
        await self.agent.archive.record_all([
            entry(statement, direction=Direction.SENT, peer=peer_id, transaction=transaction,
                  certificate=self.agent.credentials.identity.certificate),
            entry(receipt, direction=Direction.RECEIVED, peer=peer_id,
                  transaction=transaction, certificate=certificate),
        ])
        return receipt

    async def _deliver(self, context: RequestContext,
                       request: DeliverRequest) -> DeliverAnswer:
        # A malformed body was refused before this runs, so before the replay guard
        # remembers the nonce: that statement can be delivered again, well wrapped.
        transaction, statement = request.transaction, request.statement
        peer = context.peer
        database = self.agent.database
        await database.read(lambda c: _check_transaction(c, transaction, peer.agent_id))
        verify_statement(statement, certificate=peer.certificate,
                         root=self.agent.credentials.root, crl=self.agent.crl,
                         now=self.agent.context.now(),
                         expected_signer=peer.agent_id)
        archive = self.agent.archive
        if await archive.contains(statement.digest):
            raise Replayed("this statement was delivered before",
                           detail={"digest": statement.digest})
        receipt = self.sign(RECEIPT, {"transaction": transaction, "statement": statement.digest,
                                      "from": peer.agent_id})
        entries = [
            entry(statement, direction=Direction.RECEIVED, peer=peer.agent_id,
                  transaction=transaction, certificate=peer.certificate),
            entry(receipt, direction=Direction.SENT, peer=peer.agent_id,
                  transaction=transaction, certificate=self.agent.credentials.identity.certificate),
        ]
        quota = self.agent.config.evidence_peer_quota
        cost = sum(len(e.statement.to_bytes()) + RECORD_OVERHEAD for e in entries)
        await database.read(lambda c: _check_quota(c, peer.agent_id, cost, quota))
        # Last, so that a refusal above leaves the nonce unspent (section 6A.5).
        self.guard.check(statement, self.agent.clock.now_ms())

        def write(c: sqlite3.Connection) -> None:
            # Again inside the write: concurrent deliveries must not pass together.
            _check_transaction(c, transaction, peer.agent_id)
            _check_quota(c, peer.agent_id, cost, quota)
            append(c, entries, now_ms=self.agent.clock.now_ms())

        await database.transaction(write)
        return DeliverAnswer(receipt=receipt)


def _check_transaction(connection: sqlite3.Connection, transaction: str, peer: str) -> None:
    """Raises ForeignTransaction unless ``transaction`` is ``peer``'s to write into."""
    exists, only_theirs = transaction_peers(connection, transaction, peer)
    if only_theirs or (not exists and transaction.startswith(own_transaction(peer, ""))):
        return
    raise ForeignTransaction(
        f"transaction {transaction[:80]!r} is not ours with {peer!r} alone: deliver into "
        f"one we share only with you, or open a new one named '{peer}/...'",
        detail={"transaction": transaction})


def _check_quota(connection: sqlite3.Connection, peer: str, cost: int, quota: int) -> None:
    records, size = peer_usage(connection, peer)
    used = size + records * RECORD_OVERHEAD
    if used + cost > quota:
        raise QuotaExceeded(f"{peer!r} has used {used} of its {quota} bytes of our archive",
                            detail={"used": used, "quota": quota, "cost": cost})
