"""Contract signing in an agent: both parties' sides of C1's machines
(services/fairexchange, protocol.md 10.2, 10.6).

Theory of operation. Every agent runs ``Contracts``. As the originator it is driven
by ``sign`` (the CLI's ``semper contract sign`` calls it in a session); as the
responder it serves ``contract.propose`` and ``contract.reveal`` and signs m2 only
over a text approved beforehand (``approve``: ``semper contract approve``).

Persist before send: every event goes through ``_step``, which loads the exchange's
row, feeds the machine, and stores the new record together with the statements to
archive in ONE transaction (compare-and-set on the row's version, so that a command
and the agent's process acting on the same exchange cannot both win); only then is
the machine's message sent or answered. A crash anywhere loses at most a message
nobody saw, and every message is safe to send twice.

Restart: ``run`` resumes every exchange in flight: an originator still waiting for
m2 aborts, one waiting for N_R resolves, one asking the notary asks again; a
responder that sent m2 resolves with the notary by itself. A responder also resolves
when ``[fairexchange] deadline`` passes without N_O (the clock is the agent's).
``resume`` does the same for one exchange from a command (``semper contract show``).

Certificates: a statement names its signer by fingerprint. The signers' certificates
come from the channels (the peer's), the archive (kept with every statement recorded)
and the ``certificates`` the notary's requests and answers carry (protocol.md 10.2).
"""

from __future__ import annotations

import hashlib
import logging
import os
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Final

import trio
from cryptography import x509

from semper.agents.components._archive import append, entry
from semper.agents.runtime._component import Component, handles
from semper.agents.runtime._faults import crash_point
from semper.services.certificates import (
    CertificateError,
    certificate_der,
    fingerprint,
    load_certificate,
)
from semper.services.fairexchange import (
    ABORT_REQUEST_TYPE,
    CONTRACT_PROPOSE,
    CONTRACT_REVEAL,
    DECISION_TYPE,
    M1,
    NOTARY_ABORT,
    NOTARY_RESOLVE,
    RESOLVE_REQUEST_TYPE,
    AbortRequest,
    AskNotary,
    Commit,
    Committed,
    DecisionBody,
    NotaryAnswered,
    Originator,
    OState,
    Propose,
    Proposed,
    ResolveRequest,
    Responder,
    Reveal,
    Revealed,
    RState,
    Start,
    TimedOut,
)
from semper.services.fairexchange._bodies import (
    SECRETS_TYPE,
    AbortWire,
    CommitWire,
    DecisionWire,
    ProposeWire,
    ResolveWire,
    RevealWire,
    Secrets,
)
from semper.services.fairexchange._errors import (
    FairExchangeError,
    UnexpectedMessage,
    WrongExchange,
)
from semper.services.statements import (
    Statement,
    StatementError,
    WrongSigner,
    canonical_decode,
    canonical_encode,
)

__all__ = ["MIGRATIONS", "ContractView", "Contracts", "NoNotary", "Unresolved",
           "UnknownContract", "signers_of"]

log = logging.getLogger("semper.contracts")

MIGRATIONS: Final = {
    "contracts": [
        "CREATE TABLE contract_exchanges ("
        " exchange BLOB PRIMARY KEY, role TEXT NOT NULL, peer TEXT NOT NULL,"
        " notary TEXT NOT NULL, state TEXT NOT NULL, record BLOB NOT NULL,"
        " version INTEGER NOT NULL, deadline_ms INTEGER NOT NULL,"
        " created_ms INTEGER NOT NULL) STRICT;"
        "CREATE INDEX contract_exchanges_open ON contract_exchanges (state);"
        "CREATE TABLE contract_approvals ("
        " originator TEXT NOT NULL, text BLOB NOT NULL, approved_ms INTEGER NOT NULL,"
        " PRIMARY KEY (originator, text)) STRICT"
    ],
}

#: Backoff (seconds) between a background party's attempts to reach the notary.
RETRY_FIRST, RETRY_MAX = 0.5, 30.0
FINAL: Final = frozenset({"signed", "aborted"})


class UnknownContract(FairExchangeError):
    """This agent holds no contract exchange with that id. ``detail``: ``contract``."""

    code: ClassVar[str] = "fairexchange.unknown_contract"
    wire = False


class NoNotary(FairExchangeError):
    """No notary named: neither ``--notary`` nor ``[fairexchange] notary``."""

    code: ClassVar[str] = "fairexchange.no_notary"
    wire = False


class Unresolved(FairExchangeError):
    """The exchange needs the notary, which could not be reached; it stays in flight
    (the agent's process, or ``semper contract show``, asks again). ``detail``:
    ``contract``, ``cause``."""

    code: ClassVar[str] = "fairexchange.unresolved"
    wire = False


class _Stale(Exception):
    """Another actor (the agent's process, a command) stored this exchange first."""


@dataclass(frozen=True, slots=True)
class ContractView:
    """What ``semper contract show`` prints: ``to_json`` has the keys the command
    line promises (``contract``, ``state``, ``resolved_by``)."""

    exchange: bytes
    role: str
    peer: str
    notary: str
    state: str
    resolved_by: str | None
    text: bytes | None

    def to_json(self) -> dict[str, Any]:
        return {"contract": self.exchange.hex(), "state": self.state,
                "resolved_by": self.resolved_by}


@dataclass(slots=True)
class _Row:
    exchange: bytes
    role: str
    peer: str
    notary: str
    version: int
    deadline_ms: int
    record: dict[str, Any]


def signers_of(statement: Statement) -> list[Statement]:
    """``statement`` and every contract statement it quotes (a decision's request,
    a request's m1 and m2): whose signers' certificates a checker needs."""
    found = [statement]
    try:
        if statement.type == DECISION_TYPE:
            found += signers_of(DecisionBody.from_statement(statement).request)
        elif statement.type == ABORT_REQUEST_TYPE:
            found.append(AbortRequest.from_statement(statement).m1)
        elif statement.type == RESOLVE_REQUEST_TYPE:
            body = ResolveRequest.from_statement(statement)
            found += [body.m1, body.m2]
    except (FairExchangeError, StatementError):
        pass  # a malformed quote is the checker's to refuse
    return found


class CertificateBook:
    """Signers' certificates by fingerprint, for the machines' ``Verifier`` port."""

    def __init__(self, component: Component) -> None:
        self._context = component.context
        self._known: dict[bytes, x509.Certificate] = {}
        self.add(self._context.certificate)

    def add(self, certificate: x509.Certificate | None) -> None:
        if certificate is not None:
            self._known[fingerprint(certificate)] = certificate

    def add_der(self, ders: Iterable[bytes] | None) -> None:
        """Certificates from a peer's message: kept only to look a signer up; each
        is checked against the root and the CRL when a statement is verified."""
        for der in ders or ():
            try:
                self.add(load_certificate(der))
            except CertificateError:
                continue

    async def learn(self, statements: Iterable[Statement]) -> None:
        """Look up, in the archive, the signers of ``statements`` not known yet."""
        for statement in statements:
            for quoted in signers_of(statement):
                if quoted.signer not in self._known:
                    self.add(await self._context.archive.certificate(quoted.signer))

    def get(self, signer: bytes) -> x509.Certificate | None:
        return self._known.get(signer)

    def ders(self, statements: Iterable[Statement]) -> tuple[bytes, ...]:
        """The DER certificates of every signer in ``statements`` (quotes included)."""
        out: dict[bytes, bytes] = {}
        for statement in statements:
            for quoted in signers_of(statement):
                known = self._known.get(quoted.signer)
                if known is not None:
                    out.setdefault(quoted.signer, certificate_der(known))
        return tuple(out.values())[:8]

    def verify(self, statement: Statement, *, expected_type: str,
               expected_signer: str) -> None:
        """The machines' ``Verifier``: the statement layer's checks, now, with the
        root and the CRL the agent holds."""
        certificate = self._known.get(statement.signer)
        if certificate is None:
            raise WrongSigner("no certificate for the signer of a statement quoted",
                              detail={"signer": statement.signer.hex()})
        self._context.verify(statement, certificate, expected_type=expected_type,
                             expected_signer=expected_signer)


class Contracts(Component):
    """Contract signing, both parties (see the module docstring)."""

    name = "contracts"

    def __init__(self, context: Any) -> None:
        super().__init__(context)
        self.certificates = CertificateBook(self)
        self._locks: dict[bytes, trio.Lock] = {}
        self._nursery: trio.Nursery | None = None

    def migrations(self) -> Mapping[str, Sequence[str]]:
        return MIGRATIONS

    # -- settings --------------------------------------------------------------------

    @property
    def deadline_ms(self) -> int:
        return int(self.context.config.fairexchange.deadline * 1000)

    def notary(self, chosen: str | None = None) -> str:
        notary = chosen or self.context.config.fairexchange.notary
        if notary is None:
            raise NoNotary("no notary: give --notary or set [fairexchange] notary")
        return notary

    # -- ports -------------------------------------------------------------------------

    def _sign(self, type: str, body: dict[str, Any], now_ms: int) -> Statement:
        return self.context.sign(type, body)

    def _machine(self, row: _Row) -> Originator | Responder:
        cls = Originator if row.role == "originator" else Responder
        return cls.from_record(row.record, sign=self._sign, verify=self.certificates.verify)

    # -- storage ---------------------------------------------------------------------

    def _lock(self, exchange: bytes) -> trio.Lock:
        return self._locks.setdefault(exchange, trio.Lock())

    async def _load(self, exchange: bytes) -> _Row | None:
        found = await self.context.database.read(lambda c: c.execute(
            "SELECT role, peer, notary, version, deadline_ms, record FROM contract_exchanges"
            " WHERE exchange = ?", (exchange,)).fetchone())
        if found is None:
            return None
        role, peer, notary, version, deadline_ms, record = found
        return _Row(exchange, role, peer, notary, version, deadline_ms,
                    canonical_decode(record))

    async def _store(self, row: _Row, machine: Originator | Responder,
                     archived: list[tuple[Statement, str, str]]) -> None:
        """The machine's new record and the statements to archive (statement,
        ``sent``/``received``, peer), in one commit; ``_Stale`` if another actor
        stored the exchange since ``row`` was read."""
        record = machine.to_record()
        encoded = canonical_encode(record)
        txn = row.exchange.hex()
        if record["state"] == "signed" and record.get("peer_secret") is not None \
                and row.record.get("state") != "signed":  # the standard contract, once
            archived = [*archived, (self._secrets(row, machine), "sent", row.peer)]
        entries = [entry(s, direction=d, peer=p, transaction=txn,
                         certificate=self.certificates.get(s.signer)) for s, d, p in archived]
        extra = [c for s, _, _ in archived for q in signers_of(s)[1:]
                 if (c := self.certificates.get(q.signer)) is not None]
        now_ms = self.context.now_ms()

        def write(c: sqlite3.Connection) -> None:
            found = c.execute("SELECT version FROM contract_exchanges WHERE exchange = ?",
                              (row.exchange,)).fetchone()
            if (found[0] if found else 0) != row.version:
                raise _Stale()
            if found is None:
                c.execute("INSERT INTO contract_exchanges (exchange, role, peer, notary, state,"
                          " record, version, deadline_ms, created_ms)"
                          " VALUES (?, ?, ?, ?, ?, ?, 1, ?, ?)",
                          (row.exchange, row.role, row.peer, row.notary, record["state"],
                           encoded, row.deadline_ms, now_ms))
            else:
                c.execute("UPDATE contract_exchanges SET state = ?, record = ?,"
                          " version = version + 1 WHERE exchange = ?",
                          (record["state"], encoded, row.exchange))
            fresh = [e for e in entries if c.execute(
                "SELECT 1 FROM archive_records WHERE digest = ? AND txn = ? LIMIT 1",
                (e.statement.digest, txn)).fetchone() is None]
            append(c, fresh, now_ms=now_ms)
            for certificate in extra:
                c.execute("INSERT OR IGNORE INTO archive_certificates (fingerprint, der)"
                          " VALUES (?, ?)", (fingerprint(certificate),
                                             certificate_der(certificate)))

        await self.context.database.transaction(write)
        row.version += 1
        row.record = record

    def _secrets(self, row: _Row, machine: Originator | Responder) -> Statement:
        """Our signed ``fairexchange.secrets``: N_O and N_R for the bundle (10.2)."""
        assert machine.m1 is not None and machine.m2 is not None
        ours, theirs = machine.secret, machine.peer_secret
        assert theirs is not None
        secret_o, secret_r = (ours, theirs) if row.role == "originator" else (theirs, ours)
        body = Secrets(exchange=row.exchange, m1=machine.m1.digest, m2=machine.m2.digest,
                       secret_o=secret_o, secret_r=secret_r)
        return self.context.sign(SECRETS_TYPE, body.to_body())

    async def _step(self, exchange: bytes, event: Any,
                    archive: list[tuple[Statement, str, str]] | None = None,
                    ) -> tuple[Originator | Responder, list[Any]]:
        """Feed ``event`` to the stored machine of ``exchange`` and store the result
        before returning the messages to send. Retries once on a lost race."""
        for _ in range(3):
            row = await self._load(exchange)
            if row is None:
                raise UnknownContract(f"no contract exchange {exchange.hex()}",
                                      detail={"contract": exchange.hex()})
            machine = self._machine(row)
            if machine.finished:  # another actor (the agent's process) finished it
                return machine, []
            out = machine.receive(event, now_ms=self.context.now_ms())
            try:
                await self._store(row, machine, list(archive or ()))
            except _Stale:
                continue
            return machine, out
        raise Unresolved("the exchange kept changing under us; ask again",
                         detail={"contract": exchange.hex(), "cause": "busy"})

    # -- the originator ----------------------------------------------------------------

    async def sign(self, responder: str, text: bytes, *, notary: str | None = None
                   ) -> ContractView:
        """Run a contract exchange with ``responder`` over ``text`` to a fair end.

        Raises:
            the responder's refusal (``fairexchange.not_approved``, ...) once the
                exchange is aborted with the notary (the responder signed nothing);
            Unresolved: the notary could not be reached (the exchange stays in flight).
        """
        notary = self.notary(notary)
        await self._check_notary(notary)
        exchange, secret = os.urandom(32), os.urandom(32)
        machine = Originator(exchange=exchange, originator=self.context.id,
                             responder=responder, notary=notary, text=text, secret=secret,
                             sign=self._sign, verify=self.certificates.verify)
        out = machine.receive(Start(), now_ms=self.context.now_ms())
        assert machine.m1 is not None
        row = _Row(exchange, "originator", responder, notary, 0,
                   self.context.now_ms() + self.deadline_ms, {})
        async with self._lock(exchange):
            await self._store(row, machine, [(machine.m1, "sent", responder)])
            crash_point("contract.originator.m1_stored")
            refusal = await self._drive_originator(exchange, out, row.deadline_ms)
        view = await self.view(exchange)
        if refusal is not None and view.state == "aborted":
            raise refusal
        return view

    async def _check_notary(self, notary: str) -> None:
        """Before signing anything: the notary answers, as an agent of role notary (an
        exchange its notary cannot settle could stay in flight for good)."""
        try:
            channel = await self.context.agent.channel(notary)
        except Exception as exc:
            if not _coded(exc):
                raise
            code = getattr(exc, "code", None) or "os.error"
            raise Unresolved(f"the notary {notary} cannot be reached ({code}): nothing was "
                             "signed", detail={"contract": "", "cause": code}) from exc
        self.certificates.add(channel.peer.certificate)
        if channel.peer.role != "notary":
            raise WrongExchange(f"{notary} is a {channel.peer.role}, not a notary: nothing "
                                "was signed", detail={"field": "notary"})

    async def _drive_originator(self, exchange: bytes, out: list[Any], deadline_ms: int
                                ) -> BaseException | None:
        """Send what the machine says until it is finished. The responder's refusal
        of m1, if any, is returned for the caller to raise once the exchange ended."""
        refusal: BaseException | None = None
        row = await self._load(exchange)
        assert row is not None
        while out:
            message = out[0]
            if isinstance(message, Propose):
                event, refusal = await self._propose(exchange, message, deadline_ms)
            elif isinstance(message, Reveal):
                event = await self._reveal(exchange, message, deadline_ms)
            elif isinstance(message, AskNotary):
                _, out = await self._ask_notary(exchange, message)
                continue
            else:  # pragma: no cover - the originator sends nothing else
                raise AssertionError(message)
            archive = [(event.m2, "received", row.peer)] if isinstance(event, Committed) \
                else []
            try:
                _, out = await self._step(exchange, event, archive)
            except (FairExchangeError, StatementError, CertificateError) as exc:
                log.warning("contract %s: %s refused (%s): going to the notary",
                            exchange.hex()[:16], type(event).__name__, exc)
                _, out = await self._step(exchange, TimedOut())
            if isinstance(event, Committed):
                crash_point("contract.originator.m2_stored")
        return refusal

    async def _propose(self, exchange: bytes, message: Propose, deadline_ms: int
                       ) -> tuple[Any, BaseException | None]:
        responder = M1.from_statement(message.m1).responder
        try:
            with trio.fail_after(self._remaining(deadline_ms)):
                channel = await self.context.agent.channel(responder)
                self.certificates.add(channel.peer.certificate)
                answer: CommitWire = await self.context.call(
                    responder, CONTRACT_PROPOSE, ProposeWire(text=message.text, m1=message.m1))
        except trio.TooSlowError:
            return TimedOut(), None
        except Exception as exc:
            if not _coded(exc):
                raise
            log.info("contract %s: %s did not commit: %s", exchange.hex()[:16], responder, exc)
            return TimedOut(), exc if _refused(exc) else None
        crash_point("contract.originator.m2_received")
        return Committed(answer.m2), None

    async def _reveal(self, exchange: bytes, message: Reveal, deadline_ms: int) -> Any:
        row = await self._load(exchange)
        assert row is not None
        try:
            with trio.fail_after(self._remaining(deadline_ms)):
                answer: RevealWire = await self.context.call(
                    row.peer, CONTRACT_REVEAL, RevealWire(exchange=exchange,
                                                          secret=message.secret))
        except trio.TooSlowError:
            return TimedOut()
        except Exception as exc:
            if not _coded(exc):
                raise
            log.info("contract %s: no N_R from %s: %s", exchange.hex()[:16], row.peer, exc)
            return TimedOut()
        crash_point("contract.originator.n_r_received")
        if answer.exchange != exchange:
            return TimedOut()
        return Revealed(answer.secret)

    def _remaining(self, deadline_ms: int) -> float:
        """Seconds left before ``deadline_ms``; at least a moment, so that a resumed
        exchange past its deadline still tries its peer once."""
        return max(0.5, (deadline_ms - self.context.now_ms()) / 1000)

    # -- both parties: the notary -------------------------------------------------------

    async def _ask_notary(self, exchange: bytes, message: AskNotary
                          ) -> tuple[Originator | Responder, list[Any]]:
        """Ask the notary (``message`` was stored with the machine); store its answer.

        Raises:
            Unresolved: the notary could not be reached or refused; the exchange stays
                in flight.
        """
        row = await self._load(exchange)
        assert row is not None
        role = row.role
        crash_point(f"contract.{role}.request_stored")
        await self.certificates.learn([message.request])
        wire_type, op = (AbortWire, NOTARY_ABORT) if message.op == "abort" \
            else (ResolveWire, NOTARY_RESOLVE)
        try:
            channel = await self.context.agent.channel(row.notary)
            notary_certificate = channel.peer.certificate
            answer: DecisionWire = await self.context.call(row.notary, op, wire_type(
                request=message.request,
                certificates=self.certificates.ders([message.request]) or None))
        except Exception as exc:
            if not _coded(exc):
                raise
            code = getattr(exc, "code", None) or "os.error"
            raise Unresolved(f"the notary {row.notary} could not decide contract "
                             f"{exchange.hex()} ({code}: {getattr(exc, 'message', exc)})",
                             detail={"contract": exchange.hex(), "cause": code}) from exc
        crash_point(f"contract.{role}.decision_received")
        self.certificates.add(notary_certificate)
        self.certificates.add_der(answer.certificates)
        await self.certificates.learn([answer.statement])
        try:
            return await self._step(exchange, NotaryAnswered(answer.statement),
                                    [(message.request, "sent", row.notary),
                                     (answer.statement, "received", row.notary)])
        except (FairExchangeError, StatementError, CertificateError) as exc:
            raise Unresolved(f"the notary's answer for contract {exchange.hex()} is refused "
                             f"({exc})", detail={"contract": exchange.hex(),
                                                 "cause": getattr(exc, "code", "")}) from exc

    # -- resuming --------------------------------------------------------------------------

    async def resume(self, exchange: bytes) -> ContractView:
        """Drive an exchange in flight to a fair end now, as a restarted party does:
        an originator waiting for m2 aborts, one waiting for N_R resolves, a
        responder that sent m2 resolves; one already asking the notary asks again.

        Raises:
            UnknownContract, Unresolved.
        """
        async with self._lock(exchange):
            row = await self._load(exchange)
            if row is None:
                raise UnknownContract(f"{self.context.id} holds no contract {exchange.hex()}",
                                      detail={"contract": exchange.hex()})
            machine = self._machine(row)
            if not machine.finished:
                if machine.state in (OState.ABORTING, OState.RESOLVING, RState.RESOLVING):
                    out = machine.pending()
                elif machine.state is RState.START:  # never stored: nothing to do
                    out = []
                else:
                    _, out = await self._step(exchange, TimedOut())
                if row.role == "originator":
                    await self._drive_originator(exchange, out, row.deadline_ms)
                else:
                    for message in out:
                        await self._ask_notary(exchange, message)
        return await self.view(exchange)

    async def in_flight(self) -> list[bytes]:
        return await self.context.database.read(lambda c: [x for (x,) in c.execute(
            "SELECT exchange FROM contract_exchanges WHERE state NOT IN ('signed', 'aborted')"
            " ORDER BY created_ms")])

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for exchange in await self.in_flight():
                nursery.start_soon(self._settle, exchange, 0)
            task_status.started()
            await trio.sleep_forever()

    async def _settle(self, exchange: bytes, wait_ms: int) -> None:
        """In the background: wait ``wait_ms`` (a responder's deadline), then resume
        the exchange until it is finished, backing off while the notary is away."""
        if wait_ms > 0:
            await trio.sleep(wait_ms / 1000)
        delay = RETRY_FIRST
        while True:
            try:
                view = await self.resume(exchange)
            except Unresolved as exc:
                log.warning("contract %s: %s; retrying in %.1fs", exchange.hex()[:16],
                            exc.message, delay)
            except Exception as exc:  # a background task must not stop the agent
                log.error("contract %s: resuming failed (%s: %s); retrying in %.1fs",
                          exchange.hex()[:16], getattr(exc, "code", type(exc).__name__),
                          exc, delay, exc_info=not getattr(exc, "code", None))
            else:
                if view.state in FINAL:
                    log.info("contract %s: %s (%s)", exchange.hex()[:16], view.state,
                             view.resolved_by)
                return
            await trio.sleep(delay)
            delay = min(RETRY_MAX, delay * 2)

    # -- the responder -------------------------------------------------------------------

    async def approve(self, originator: str, text: bytes) -> bytes:
        """Consent beforehand to sign ``text`` with ``originator``; its SHA-256."""
        digest = hashlib.sha256(text).digest()
        now_ms = self.context.now_ms()
        await self.context.database.transaction(lambda c: c.execute(
            "INSERT OR IGNORE INTO contract_approvals (originator, text, approved_ms)"
            " VALUES (?, ?, ?)", (originator, digest, now_ms)))
        return digest

    @handles(CONTRACT_PROPOSE)
    async def propose(self, context: Any, request: ProposeWire) -> CommitWire:
        crash_point("contract.responder.m1_received")
        peer = context.peer.agent_id
        self.certificates.add(context.peer.certificate)
        first = M1.from_statement(request.m1)
        exchange = first.exchange
        async with self._lock(exchange):
            row = await self._load(exchange)
            if row is None:
                if first.responder != self.context.id:
                    raise WrongExchange("m1 names another responder",
                                        detail={"field": "responder"})
                approvals = await self.context.database.read(lambda c: {
                    (peer, t) for (t,) in c.execute(
                        "SELECT text FROM contract_approvals WHERE originator = ?", (peer,))})
                notary = self.context.config.fairexchange.notary
                machine = Responder(responder=self.context.id, peer=peer,
                                    secret=os.urandom(32), approvals=approvals,
                                    notaries=() if notary is None else (notary,),
                                    sign=self._sign, verify=self.certificates.verify)
                row = _Row(exchange, "responder", peer, first.notary, 0,
                           self.context.now_ms() + self.deadline_ms, {})
            else:
                if row.role != "responder" or row.peer != peer:
                    raise WrongExchange("this exchange id belongs to another exchange",
                                        detail={"field": "exchange"})
                machine = self._machine(row)
            new = row.version == 0
            out = _wire_refusals(machine.receive, Proposed(request.text, request.m1),
                                 now_ms=self.context.now_ms())
            (commit,) = out
            assert isinstance(commit, Commit)
            await self._store(row, machine, [(request.m1, "received", peer),
                                             (commit.m2, "sent", peer)])
            crash_point("contract.responder.m2_stored")
        if new and self._nursery is not None:
            self._nursery.start_soon(self._settle_when_due, exchange)
        return CommitWire(m2=commit.m2)

    async def _settle_when_due(self, exchange: bytes) -> None:
        row = await self._load(exchange)
        if row is not None:
            await self._settle(exchange, max(0, row.deadline_ms - self.context.now_ms()))

    @handles(CONTRACT_REVEAL)
    async def reveal(self, context: Any, request: RevealWire) -> RevealWire:
        peer = context.peer.agent_id
        exchange = request.exchange
        async with self._lock(exchange):
            row = await self._load(exchange)
            if row is None or row.role != "responder" or row.peer != peer:
                raise WrongExchange("no such exchange with this originator",
                                    detail={"field": "exchange"})
            if row.record.get("state") == RState.AWAIT_SECRET.value:
                # m2 went out: the originator heard it and answers (protocol.md 10.6)
                crash_point("contract.responder.sent_m2")
            for _ in range(3):
                machine = self._machine(row)
                out = _wire_refusals(machine.receive, Revealed(request.secret),
                                     now_ms=self.context.now_ms())
                try:
                    await self._store(row, machine, [])
                except _Stale:
                    row = await self._load(exchange)
                    assert row is not None
                    continue
                break
            else:
                raise Unresolved("busy", detail={"contract": exchange.hex(), "cause": "busy"})
            crash_point("contract.responder.n_o_stored")
        reveal = next(m for m in out if isinstance(m, Reveal))
        return RevealWire(exchange=exchange, secret=reveal.secret)

    # -- what a party holds ------------------------------------------------------------

    async def view(self, exchange: bytes) -> ContractView:
        """The exchange as this party holds it (``UnknownContract`` if it holds none)."""
        row = await self._load(exchange)
        if row is None:
            raise UnknownContract(f"{self.context.id} holds no contract {exchange.hex()}",
                                  detail={"contract": exchange.hex()})
        record = row.record
        state = record["state"]
        if state == "signed":
            by = "exchange" if record.get("peer_secret") is not None else "notary"
        elif state == "aborted":
            by = "notary"
        else:
            state, by = "pending", None
        return ContractView(exchange, row.role, row.peer, row.notary, state, by,
                            record.get("text"))


def _coded(exc: BaseException) -> bool:
    """A failure to talk to a peer that a party survives: a coded refusal or a
    transport error, or the OS refusing a connection; anything else is a bug."""
    return bool(getattr(exc, "code", None)) or isinstance(exc, OSError)


def _refused(exc: BaseException) -> bool:
    """A refusal of m1 by the responder itself (not a channel failure)."""
    code = getattr(exc, "code", "")
    return isinstance(code, str) and code.startswith("fairexchange.")


def _wire_refusals(receive: Any, event: Any, *, now_ms: int) -> list[Any]:
    """``receive``, with a machine's ``unexpected`` (not a wire code) answered as
    ``fairexchange.wrong_exchange`` naming the state."""
    try:
        return receive(event, now_ms=now_ms)  # type: ignore[no-any-return]
    except UnexpectedMessage as exc:
        raise WrongExchange(f"the exchange is {exc.detail.get('state')}: {exc.message}",
                            detail={"field": "state", "state": exc.detail.get("state")}
                            ) from None
