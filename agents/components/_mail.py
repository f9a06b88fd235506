"""Certified mail in an agent: both sides of M1's machines (services/fairexchange
``_mail``, protocol.md 10.4, 10.6). Every agent runs ``CertifiedMail``.

Theory of operation. As the sender it is driven by ``send`` (``semper mail send`` calls
it in a session): the message sealed under a fresh key, the key escrowed for the
notary (its checked ``notary.escrow_key``), the signed ``mail.offer`` stored before
``mail.deliver`` leaves; the receiver's receipt stored before ``mail.reveal`` sends the
key. A sender with no receipt by the offer's deadline closes the exchange with the
notary (``notary.close_mail``): its decision either carries the receipt (the receiver
recovered: ``recovered``) or aborts it (``failed``).

As the receiver it serves ``mail.deliver`` (the receipt signed and stored, with the
offer, before it is answered) and ``mail.reveal`` (a key that opens the mail to the
signed digest). A receiver with a receipt out and no key by the deadline recovers the
key through the notary by itself (``notary.recover_mail``), in the background of the
running agent or from ``semper mail read``; a bad escrow gets the notary's signed
``void`` finding instead, which voids the receipt.

Persist before send: every event goes through ``_step``, which loads the exchange's
row, feeds the machine, and stores the new record with the statements to archive in
ONE transaction (compare-and-set on the row's version: a command and the agent's
process acting on one exchange cannot both win); only then does a message leave.

Restart: ``run`` resumes every exchange in flight: a sender's at once (still
offering, it delivers again until the deadline, then closes; holding a receipt, it
reveals the key again), a receiver's at its deadline (having signed, it recovers).

Crash points (``SEMPER_CRASH_AT``): ``mail.sender.offered`` (the offer stored, before
``mail.deliver``), ``mail.sender.receipted`` (the receipt stored, before the key
leaves), ``mail.sender.revealed`` (the key given, stored), ``mail.sender.closing``
(CLOSING stored, before ``notary.close_mail``); ``mail.receiver.signed`` (the receipt
stored, before it is answered), ``mail.receiver.read`` (the key stored, before
``mail.reveal`` is answered), ``mail.receiver.recovering`` (RECOVERING stored, before
``notary.recover_mail``).
"""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Final

import trio
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from semper.agents.components._archive import RECORD_OVERHEAD, append, entry, peer_usage
from semper.agents.components._escrow_keys import EscrowKeys, default_notary, notary_escrow_key
from semper.agents.components._evidence import QuotaExceeded
from semper.agents.runtime._component import Component, handles
from semper.agents.runtime._faults import crash_point
from semper.services.fairexchange import (
    MAIL_DELIVER,
    MAIL_OFFER_TYPE,
    MAIL_RECEIPT_TYPE,
    MAIL_REVEAL,
    NOTARY_CLOSE_MAIL,
    NOTARY_RECOVER_MAIL,
    DeadlinePassed,
    KeyGiven,
    KeyRevealed,
    MailArrived,
    MailOffer,
    MailReceiver,
    MailSender,
    MailState,
    NotaryAnswered,
    ReceiptReceived,
    ReceiptSigned,
    SignReceipt,
    prepare,
)
from semper.services.fairexchange._bodies import DECISION_TYPE
from semper.services.fairexchange._errors import FairExchangeError, TooEarly, WrongExchange
from semper.services.fairexchange._mail import (
    MAX_CIPHERTEXT,
    CiphertextWire,
    CloseMailWire,
    KeyWire,
    ReceiptWire,
    RecoverMailWire,
)
from semper.services.statements import Statement, canonical_decode, canonical_encode
from semper.transport import RemoteError

__all__ = ["MIGRATIONS", "CertifiedMail", "MailView", "NoSuchMail", "Unreadable"]

log = logging.getLogger("semper.mail")

MIGRATIONS: Final = {
    "mail_exchanges": [
        "CREATE TABLE mail_exchanges ("
        " exchange BLOB PRIMARY KEY, role TEXT NOT NULL, peer TEXT NOT NULL,"
        " state TEXT NOT NULL, record BLOB NOT NULL, version INTEGER NOT NULL,"
        " deadline_ms INTEGER NOT NULL, created_ms INTEGER NOT NULL) STRICT"
    ],
}

#: The largest message ``send`` takes (its ciphertext fits one frame with room).
MAX_MESSAGE: Final = MAX_CIPHERTEXT - 28
#: States after which nothing more happens.
FINAL: Final = frozenset({MailState.REVEALED, MailState.RESOLVED, MailState.READ,
                          MailState.DECLINED, MailState.ERROR})
RETRY_FIRST: Final = 0.5
RETRY_MAX: Final = 30.0
#: Steps one drive may take (a bound on its loop).
_MAX_STEPS: Final = 64
#: How often a sender asks to close while the notary says it is too early.
_CLOSE_TRIES: Final = 5


class NoSuchMail(FairExchangeError):
    """No certified mail with this id here (``detail``: ``mail``)."""

    code: ClassVar[str] = "mail.unknown_mail"


class Unreadable(FairExchangeError):
    """A mail whose key is not held (yet): before its deadline, or voided
    (``detail``: ``mail``, ``state``)."""

    code: ClassVar[str] = "mail.unreadable"


class _Stale(Exception):
    """Another actor stored the exchange since we read it."""


@dataclass
class _Row:
    exchange: bytes
    role: str
    peer: str
    version: int
    deadline_ms: int
    record: dict[str, Any]


@dataclass(frozen=True, slots=True)
class MailView:
    """A mail as this party holds it; ``to_json`` is ``semper mail send --json``."""

    exchange: bytes
    role: str
    peer: str
    state: str
    receipt: Statement | None
    plaintext: bytes | None
    #: nothing more will happen to it
    final: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"mail": self.exchange.hex(), "state": self.state,
                "receipt": None if self.receipt is None else self.receipt.digest.hex()}


class CertifiedMail(Component):
    """Certified mail, both sides (see the module docstring)."""

    name = "mail"
    requires = (EscrowKeys,)

    def __init__(self, context: Any) -> None:
        super().__init__(context)
        self._locks: dict[bytes, trio.Lock] = {}
        self._nursery: trio.Nursery | None = None

    def migrations(self) -> Mapping[str, Sequence[str]]:
        return MIGRATIONS

    @property
    def deadline_ms(self) -> int:
        """How long a receiver has to answer before the sender closes (``[fairexchange]
        deadline``)."""
        section = getattr(self.context.config, "fairexchange", None)
        return int(getattr(section, "deadline", 30.0) * 1000)

    # -- storage ---------------------------------------------------------------------

    def _machine(self, row: _Row) -> MailSender | MailReceiver:
        cls = MailSender if row.role == "sender" else MailReceiver
        return cls.from_record(row.record)

    async def _load(self, exchange: bytes) -> _Row | None:
        found = await self.context.database.read(lambda c: c.execute(
            "SELECT role, peer, version, deadline_ms, record FROM mail_exchanges"
            " WHERE exchange = ?", (exchange,)).fetchone())
        if found is None:
            return None
        role, peer, version, deadline_ms, record = found
        return _Row(exchange, role, peer, version, deadline_ms, canonical_decode(record))

    async def _store(self, row: _Row, machine: MailSender | MailReceiver,
                     archived: Sequence[tuple[Statement, str, str, x509.Certificate | None]],
                     *, quota: str | None = None) -> None:
        """The machine's record and the statements to archive (statement, direction,
        peer, certificate) in one commit; ``_Stale`` if another actor stored the
        exchange since ``row`` was read. With ``quota`` (a peer's id), refused with
        ``evidence.quota_exceeded`` if what we hold for that peer (its archive usage
        and the mail it sent us) would pass ``[evidence] peer_quota_bytes``: a peer's
        offers cost it one signature each, and would otherwise grow our database
        without bound."""
        record = machine.to_record()
        encoded = canonical_encode(record)
        txn = row.exchange.hex()
        entries = [entry(s, direction=d, peer=p, transaction=txn, certificate=c)
                   for s, d, p, c in archived]
        now_ms = self.context.now_ms()

        limit = self.context.config.evidence_peer_quota
        cost = len(encoded) + sum(len(e.statement.to_bytes()) + RECORD_OVERHEAD
                                  for e in entries)

        def write(c: sqlite3.Connection) -> None:
            if quota is not None:
                records, size = peer_usage(c, quota)
                held = c.execute("SELECT coalesce(sum(length(record)), 0) FROM"
                                 " mail_exchanges WHERE peer = ? AND role = 'receiver'",
                                 (quota,)).fetchone()[0]
                used = size + records * RECORD_OVERHEAD + held
                if used + cost > limit:
                    raise QuotaExceeded(f"{quota!r} has used {used} of its {limit} bytes "
                                        "of our storage: no new mail",
                                        detail={"used": used, "quota": limit, "cost": cost})
            found = c.execute("SELECT version FROM mail_exchanges WHERE exchange = ?",
                              (row.exchange,)).fetchone()
            if (found[0] if found else 0) != row.version:
                raise _Stale()
            if found is None:
                c.execute("INSERT INTO mail_exchanges (exchange, role, peer, state, record,"
                          " version, deadline_ms, created_ms) VALUES (?, ?, ?, ?, ?, 1, ?, ?)",
                          (row.exchange, row.role, row.peer, record["state"], encoded,
                           row.deadline_ms, now_ms))
            else:
                c.execute("UPDATE mail_exchanges SET state = ?, record = ?,"
                          " version = version + 1 WHERE exchange = ?",
                          (record["state"], encoded, row.exchange))
            fresh = [e for e in entries if c.execute(
                "SELECT 1 FROM archive_records WHERE digest = ? AND txn = ? LIMIT 1",
                (e.statement.digest, txn)).fetchone() is None]
            if fresh:
                append(c, fresh, now_ms=now_ms)

        await self.context.database.transaction(write)
        row.version += 1
        row.record = record

    async def _step(self, exchange: bytes, event: Any,
                    archive: Sequence[tuple[Statement, str, str, x509.Certificate | None]] = ()
                    ) -> MailSender | MailReceiver:
        """Feed ``event`` to the stored machine and store the result before returning
        it (a machine already final is returned as it is)."""
        for _ in range(3):
            row = await self._load(exchange)
            if row is None:
                raise NoSuchMail(f"no certified mail {exchange.hex()}",
                                 detail={"mail": exchange.hex()})
            machine = self._machine(row)
            if machine.state in FINAL:
                return machine
            machine.receive(event, now_ms=self.context.now_ms())
            try:
                await self._store(row, machine, archive)
            except _Stale:
                continue
            return machine
        raise NoSuchMail("the mail kept changing under us; ask again",
                         detail={"mail": exchange.hex(), "cause": "busy"})

    def _lock(self, exchange: bytes) -> trio.Lock:
        return self._locks.setdefault(exchange, trio.Lock())

    async def _peer_certificate(self, peer: str) -> x509.Certificate:
        return (await self.context.agent.channel(peer)).peer.certificate

    async def _decision(self, notary: str, op: Any, request: Any) -> tuple[Statement, Any]:
        """Ask ``notary``; its decision, checked as signed by it, and its certificate."""
        answer = await self.context.call(notary, op, request)
        certificate = await self._peer_certificate(notary)
        self.context.verify(answer.statement, certificate, expected_type=DECISION_TYPE,
                            expected_signer=notary)
        return answer.statement, certificate

    # -- the sender ----------------------------------------------------------------------

    async def send(self, receiver: str, message: bytes, *, notary: str | None = None
                   ) -> MailView:
        """Send ``message`` to ``receiver`` as certified mail; returns once the receipt
        is held (``delivered``, or ``recovered`` from the notary) or the exchange is
        closed without one (``failed``).

        Raises: the notary's or the receiver's refusal before anything was signed;
        ``ValueError`` for a message over ``MAX_MESSAGE`` bytes.
        """
        if len(message) > MAX_MESSAGE:
            raise ValueError(f"a certified mail holds at most {MAX_MESSAGE} bytes")
        notary = notary or default_notary(self.context.config)
        escrow_key = await notary_escrow_key(self.context, notary)
        exchange, key = os.urandom(32), os.urandom(32)
        deadline = self.context.now_ms() + self.deadline_ms
        body, ciphertext = prepare(message, exchange=exchange, sender=self.context.id,
                                   receiver=receiver, notary=notary,
                                   escrow_key=escrow_key.public_key(), deadline=deadline,
                                   key=key, nonce=os.urandom(12))
        offer = self.context.sign(MAIL_OFFER_TYPE, body.to_body())
        machine = MailSender(offer=offer, ciphertext=ciphertext, key=key)
        row = _Row(exchange, "sender", receiver, 0, deadline, {})
        await self._store(row, machine, [(offer, "sent", receiver, self.context.certificate)])
        crash_point("mail.sender.offered")
        return await self.resume(exchange)

    async def resume(self, exchange: bytes) -> MailView:
        """Carry the exchange on as far as it goes now (waiting for its deadline when
        that is what it needs); the mail as held then."""
        async with self._lock(exchange):
            for _ in range(_MAX_STEPS):
                row = await self._load(exchange)
                if row is None:
                    raise NoSuchMail(f"no certified mail {exchange.hex()}",
                                     detail={"mail": exchange.hex()})
                machine = self._machine(row)
                if not await self._act(row, machine):
                    break
        return await self.view(exchange)

    async def _act(self, row: _Row, machine: MailSender | MailReceiver) -> bool:
        """One step of what the machine needs; False when there is nothing to do now."""
        now = self.context.now_ms()
        state, exchange = machine.state, row.exchange
        if isinstance(machine, MailSender):
            if state is MailState.OFFERED:
                if now >= row.deadline_ms:
                    await self._step(exchange, DeadlinePassed())
                    crash_point("mail.sender.closing")
                else:
                    await self._deliver(row, machine)
                return True
            if state is MailState.RECEIPTED:
                try:
                    await self.context.call(row.peer, MAIL_REVEAL,
                                            KeyWire(exchange=exchange,
                                                    key=row.record["key"]))
                except Exception as exc:  # the receiver recovers through the notary
                    if not _coded(exc):
                        raise
                    log.info("mail %s: the key did not reach %s: %s", exchange.hex()[:16],
                             row.peer, exc)
                    return False
                await self._step(exchange, KeyGiven())
                crash_point("mail.sender.revealed")
                return True
            if state is MailState.CLOSING:
                offer = Statement.from_wire(row.record["offer"])
                notary = MailOffer.from_statement(offer).notary
                decision, certificate = await self._close(notary, offer)
                await self._step(exchange, NotaryAnswered(decision=decision),
                                 [(decision, "received", notary, certificate)])
                return True
            return False
        if state in (MailState.RECEIVED, MailState.SIGNED) and now >= row.deadline_ms:
            await self._step(exchange, DeadlinePassed())
            crash_point("mail.receiver.recovering")
            return True
        if state is MailState.RECOVERING:
            offer = Statement.from_wire(row.record["offer"])
            notary = MailOffer.from_statement(offer).notary
            sender = await self.context.archive.certificate(offer.signer)
            decision, certificate = await self._decision(notary, NOTARY_RECOVER_MAIL,
                                                         RecoverMailWire(
                offer=offer, receipt=Statement.from_wire(row.record["receipt"]),
                ciphertext=row.record["ciphertext"],
                certificates=None if sender is None else (_der(sender),)))
            await self._step(exchange, NotaryAnswered(decision=decision),
                             [(decision, "received", notary, certificate)])
            return True
        return False

    async def _close(self, notary: str, offer: Statement) -> tuple[Statement, Any]:
        """``notary.close_mail``, asked again while the notary says it is too early
        (its clock behind ours at the deadline), a few times, backing off."""
        delay = RETRY_FIRST
        for attempt in range(_CLOSE_TRIES):
            try:
                return await self._decision(notary, NOTARY_CLOSE_MAIL,
                                            CloseMailWire(offer=offer))
            except RemoteError as exc:
                if exc.code != TooEarly.code or attempt == _CLOSE_TRIES - 1:
                    raise
            await trio.sleep(delay)
            delay *= 2
        raise AssertionError("unreachable")  # pragma: no cover

    async def _deliver(self, row: _Row, machine: MailSender) -> None:
        """``mail.deliver`` until the receipt comes or the deadline passes (a refusal
        or a failure is tried again, backing off: only the deadline ends the offer)."""
        offer = Statement.from_wire(row.record["offer"])
        request = CiphertextWire(offer=offer, ciphertext=row.record["ciphertext"])
        delay = RETRY_FIRST
        with trio.move_on_after(max(0, row.deadline_ms - self.context.now_ms()) / 1000):
            while True:
                try:
                    answer = await self.context.call(row.peer, MAIL_DELIVER, request)
                    certificate = await self._peer_certificate(row.peer)
                    self.context.verify(answer.receipt, certificate,
                                        expected_type=MAIL_RECEIPT_TYPE,
                                        expected_signer=row.peer)
                    await self._step(row.exchange, ReceiptReceived(receipt=answer.receipt),
                                     [(answer.receipt, "received", row.peer, certificate)])
                except Exception as exc:
                    if not _coded(exc):
                        raise
                    log.info("mail %s: %s did not receipt it yet: %s", row.exchange.hex()[:16],
                             row.peer, exc)
                    await trio.sleep(delay)
                    delay = min(RETRY_MAX, delay * 2)
                    continue
                crash_point("mail.sender.receipted")
                return
        # the deadline passed: the caller closes with the notary

    # -- the receiver ---------------------------------------------------------------------

    @handles(MAIL_DELIVER)
    async def deliver(self, context: Any, request: CiphertextWire) -> ReceiptWire:
        sender = context.peer.agent_id
        self.context.verify(request.offer, context.peer.certificate,
                            expected_type=MAIL_OFFER_TYPE, expected_signer=sender)
        offer = MailOffer.from_statement(request.offer)
        if offer.sender != sender:
            raise WrongExchange("the offer names another sender", detail={"field": "sender"})
        if offer.notary != default_notary(self.context.config):
            raise WrongExchange("the offer names a notary we do not use",
                                detail={"field": "notary"})
        new = False
        async with self._lock(offer.exchange):
            row = await self._load(offer.exchange)
            if row is None:
                machine = MailReceiver(receiver=self.context.id)
                (sign,) = machine.receive(MailArrived(offer=request.offer,
                                                      ciphertext=request.ciphertext),
                                          now_ms=self.context.now_ms())
                assert isinstance(sign, SignReceipt)
                receipt = self.context.sign(MAIL_RECEIPT_TYPE, sign.body.to_body())
                machine.receive(ReceiptSigned(receipt=receipt), now_ms=self.context.now_ms())
                row = _Row(offer.exchange, "receiver", sender, 0, offer.deadline, {})
                await self._store(row, machine, [
                    (request.offer, "received", sender, context.peer.certificate),
                    (receipt, "sent", sender, self.context.certificate)], quota=sender)
                crash_point("mail.receiver.signed")
                new = True
            else:
                if row.role != "receiver" or row.peer != sender:
                    raise WrongExchange("this exchange id belongs to another mail",
                                        detail={"field": "exchange"})
                machine = self._machine(row)
                machine.receive(MailArrived(offer=request.offer, ciphertext=request.ciphertext),
                                now_ms=self.context.now_ms())
                receipt = machine.receipt
                if receipt is None:  # past its deadline unsigned: declined
                    raise WrongExchange("the offer's deadline has passed",
                                        detail={"field": "deadline"})
        if new and self._nursery is not None:
            self._nursery.start_soon(self._settle, offer.exchange,
                                     max(0, offer.deadline - self.context.now_ms()))
        return ReceiptWire(receipt=receipt)

    @handles(MAIL_REVEAL)
    async def reveal(self, context: Any, request: KeyWire) -> dict[str, Any]:
        sender = context.peer.agent_id
        async with self._lock(request.exchange):
            row = await self._load(request.exchange)
            if row is None or row.role != "receiver" or row.peer != sender:
                raise WrongExchange("no such mail from you", detail={"field": "exchange"})
            await self._step(request.exchange, KeyRevealed(key=request.key))
            crash_point("mail.receiver.read")
        return {}

    # -- background -----------------------------------------------------------------------

    async def in_flight(self) -> list[tuple[bytes, str, int]]:
        """``(exchange, role, deadline_ms)`` of every exchange not final yet."""
        final = tuple(s.value for s in FINAL)
        return await self.context.database.read(lambda c: c.execute(
            "SELECT exchange, role, deadline_ms FROM mail_exchanges WHERE state NOT IN"
            f" ({', '.join('?' * len(final))}) ORDER BY deadline_ms", final).fetchall())

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Resume every exchange in flight: a sender's now (it delivers until the
        deadline, reveals, or closes), a receiver's at its deadline."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for exchange, role, deadline in await self.in_flight():
                wait = 0 if role == "sender" else max(0, deadline - self.context.now_ms())
                nursery.start_soon(self._settle, exchange, wait)
            task_status.started()
            await trio.sleep_forever()

    async def _settle(self, exchange: bytes, wait_ms: int) -> None:
        """In the background: at the deadline, carry the exchange on until it is final,
        backing off while a peer or the notary is away."""
        if wait_ms > 0:
            await trio.sleep(wait_ms / 1000)
        delay = RETRY_FIRST
        while True:
            try:
                view = await self.resume(exchange)
            except Exception as exc:
                if not _coded(exc):
                    raise
                log.warning("mail %s: %s; retrying in %.1fs", exchange.hex()[:16], exc, delay)
            else:
                if view.final:
                    return
            await trio.sleep(delay)
            delay = min(RETRY_MAX, delay * 2)

    # -- what a party holds --------------------------------------------------------------

    async def view(self, exchange: bytes) -> MailView:
        row = await self._load(exchange)
        if row is None:
            raise NoSuchMail(f"no certified mail {exchange.hex()}",
                             detail={"mail": exchange.hex()})
        return _view(row, self._machine(row))

    async def inbox(self) -> list[dict[str, Any]]:
        """Every mail received: ``{"mail", "from", "state"}``, oldest first."""
        rows = await self.context.database.read(lambda c: c.execute(
            "SELECT exchange, peer, version, deadline_ms, record FROM mail_exchanges"
            " WHERE role = 'receiver' ORDER BY created_ms").fetchall())
        out = []
        for exchange, peer, version, deadline_ms, record in rows:
            row = _Row(exchange, "receiver", peer, version, deadline_ms,
                       canonical_decode(record))
            out.append({"mail": exchange.hex(), "from": peer,
                        "state": _view(row, self._machine(row)).state})
        return out

    async def read(self, exchange: bytes) -> bytes:
        """The mail's plaintext; past its deadline without a key, recovered through the
        notary first.

        Raises:
            NoSuchMail: no mail with this id was received here.
            Unreadable: no key (yet, or the notary voided the mail).
        """
        row = await self._load(exchange)
        if row is None or row.role != "receiver":
            raise NoSuchMail(f"no certified mail {exchange.hex()} was received here",
                             detail={"mail": exchange.hex()})
        view = await self.resume(exchange)
        if view.plaintext is None:
            raise Unreadable(f"mail {exchange.hex()[:16]} is {view.state}: no key is held"
                             + (" (the sender has until its deadline, then the notary "
                                "gives it)" if view.state == "waiting" else ""),
                             detail={"mail": exchange.hex(), "state": view.state})
        return view.plaintext


def _view(row: _Row, machine: MailSender | MailReceiver) -> MailView:
    state = machine.state
    if isinstance(machine, MailSender):
        receipt = machine.receipt
        if machine.voided or state is MailState.ERROR:
            name = "failed"
        elif receipt is not None:
            name = "recovered" if machine.decision is not None else "delivered"
        else:
            name = "sending"
        return MailView(row.exchange, row.role, row.peer, name, receipt, None, state in FINAL)
    plaintext = machine.plaintext
    if plaintext is not None:
        name = "recovered" if machine.decision is not None else "read"
    elif machine.voided:
        name = "void"
    else:
        name = {MailState.RECOVERING: "recovering", MailState.DECLINED: "declined",
                MailState.ERROR: "error"}.get(state, "waiting")
    return MailView(row.exchange, row.role, row.peer, name, machine.receipt, plaintext,
                    state in FINAL)


def _der(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(Encoding.DER)


def _coded(exc: BaseException) -> bool:
    """A refusal or failure with a stable code (a peer's, the transport's, ours), or
    the network: something to wait out, not a bug."""
    return isinstance(getattr(exc, "code", None), str) or isinstance(exc, OSError)
