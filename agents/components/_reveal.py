"""Pseudonyms and their reveal: the CA's tables and ``ca.reveal``/``ca.reveals``
(protocol.md 2.7, 7.6), and the arbiter's client (``request_reveal``).

The CA keeps, per pseudonym, the real agent id and the opening of the commitment in
its certificate (``pseudonyms``), and every reveal it granted or refused
(``ca_reveals``). ``CA_MIGRATIONS`` (``_castore``) includes these tables, so the
operator's ``semper ca invite --pseudonym`` finds them without a running CA.

A reveal is granted only on a signed ``ca.reveal_request`` from an arbiter (by its
certificate role) citing a ``dispute.case`` it signed that names the pseudonym as a
party. Every request that verifies is archived by the CA with its outcome: the
request (received) and the signed ``ca.revealed`` (sent), or the request and a
signed ``ca.reveal_refusal`` (the CA's own record of the code it answered). The
holder is told twice over: the CA delivers the ``ca.revealed`` to it
(``evidence.deliver``, in the background, if it is reachable), and the holder can
always ask ``ca.reveals`` for every reveal of its own id.

The arbiter calls ``request_reveal(context, pseudonym, case)`` from its component
(D1's ``_arbiter.py``) or through ``semper ca reveal``; it checks the answer offline
(``verify_reveal``) and archives its request (sent) and the reveal (received).
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

import trio

from semper.agents.components._archive import entry
from semper.agents.runtime._component import Component, Context, handles
from semper.services._errors import ServiceError
from semper.services.archive import Direction
from semper.services.certificates import Pseudonym, load_certificate
from semper.services.certificates._ops import REVEAL, REVEALS
from semper.services.certificates._reveal import (
    MAX_REVEALS,
    REFUSAL_TYPE,
    REQUEST_TYPE,
    REVEALED_TYPE,
    BadReveal,
    BadRevealRequest,
    RevealAnswer,
    RevealAsk,
    RevealBadCase,
    Revealed,
    RevealNoCase,
    RevealNotArbiter,
    RevealRefusal,
    RevealRefused,
    RevealRequest,
    RevealsAnswer,
    RevealsRequest,
    UnknownPseudonym,
    decide_reveal,
    verify_reveal,
)
from semper.services.statements import Statement, verify_statement

if TYPE_CHECKING:
    from semper.transport import RequestContext

__all__ = [
    "PSEUDONYM_MIGRATIONS",
    "Reveal",
    "add_pseudonym",
    "find_pseudonym",
    "pseudonyms_of",
    "request_reveal",
    "reveal_transaction",
    "reveals_of",
]

log = logging.getLogger("semper.ca")

PSEUDONYM_MIGRATIONS: Final[Mapping[str, Sequence[str]]] = {
    "pseudonyms": ["""
        CREATE TABLE pseudonyms (
            pseudonym TEXT PRIMARY KEY,
            real_id TEXT NOT NULL,
            opening BLOB NOT NULL,
            created_ms INTEGER NOT NULL
        );
        CREATE INDEX pseudonyms_by_real_id ON pseudonyms (real_id);
        CREATE TABLE ca_reveals (
            id INTEGER PRIMARY KEY,
            pseudonym TEXT NOT NULL,
            arbiter TEXT NOT NULL,
            code TEXT,
            statement BLOB NOT NULL,
            at_ms INTEGER NOT NULL
        );
        CREATE INDEX ca_reveals_by_pseudonym ON ca_reveals (pseudonym, id)
    """],
}

#: Seconds the CA tries to deliver a reveal to the pseudonym's holder.
TELL_TIMEOUT: Final = 10.0
#: Reveals waiting to be delivered to holders; more are left to ``ca.reveals``.
TELL_QUEUE: Final = 64


# -- the CA's tables --------------------------------------------------------------------


def add_pseudonym(connection: sqlite3.Connection, pseudonym: Pseudonym, *,
                  created_ms: int) -> None:
    connection.execute("INSERT INTO pseudonyms (pseudonym, real_id, opening, created_ms) "
                       "VALUES (?, ?, ?, ?)",
                       (pseudonym.pseudonym, pseudonym.real_id, pseudonym.opening, created_ms))


def find_pseudonym(connection: sqlite3.Connection, pseudonym: str) -> Pseudonym | None:
    row = connection.execute("SELECT pseudonym, real_id, opening FROM pseudonyms "
                             "WHERE pseudonym = ?", (pseudonym,)).fetchone()
    return None if row is None else Pseudonym(pseudonym=row[0], real_id=row[1],
                                              opening=row[2])


def pseudonyms_of(connection: sqlite3.Connection, real_id: str) -> list[str]:
    """The pseudonym ids the CA gave ``real_id`` (for the operator's revocation)."""
    return [row[0] for row in connection.execute(
        "SELECT pseudonym FROM pseudonyms WHERE real_id = ? ORDER BY pseudonym", (real_id,))]


def _latest_certificate(connection: sqlite3.Connection, agent_id: str) -> bytes | None:
    row = connection.execute("SELECT certificate FROM issued_certificates WHERE agent_id = ? "
                             "ORDER BY issued_ms DESC, rowid DESC LIMIT 1",
                             (agent_id,)).fetchone()
    return None if row is None else bytes(row[0])


def _record_reveal(connection: sqlite3.Connection, *, pseudonym: str, arbiter: str,
                   code: str | None, statement: Statement, at_ms: int) -> None:
    connection.execute("INSERT INTO ca_reveals (pseudonym, arbiter, code, statement, at_ms) "
                       "VALUES (?, ?, ?, ?, ?)",
                       (pseudonym, arbiter, code, statement.to_bytes(), at_ms))


def reveals_of(connection: sqlite3.Connection, pseudonym: str, *, granted: bool = True,
               limit: int = MAX_REVEALS) -> list[Statement]:
    """The CA's ``ca.revealed`` (or, ``granted=False``, ``ca.reveal_refusal``)
    statements about ``pseudonym``, newest first."""
    rows = connection.execute(
        "SELECT statement FROM ca_reveals WHERE pseudonym = ? AND code IS "
        + ("NULL" if granted else "NOT NULL") + " ORDER BY id DESC LIMIT ?",
        (pseudonym, limit)).fetchall()
    return [Statement.from_bytes(bytes(row[0])) for row in rows]


def reveal_transaction(owner: str, case: bytes | None, pseudonym: str) -> str:
    """The archive transaction of a reveal: in ``owner``'s name space (protocol.md
    7.5), so that ``owner`` may open it with a peer."""
    return f"{owner}/reveal/{case.hex() if case is not None else 'none'}/{pseudonym}"


# -- the CA's component -------------------------------------------------------------------


class Reveal(Component):
    """``ca.reveal`` for arbiters, ``ca.reveals`` for a pseudonym's holder."""

    name = "reveal"

    def __init__(self, context: Context) -> None:
        super().__init__(context)
        self._tell_send, self._tell_receive = trio.open_memory_channel[
            tuple[str, str, Statement]](TELL_QUEUE)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        task_status.started()
        async for holder, transaction, statement in self._tell_receive:
            await self._tell(holder, transaction, statement)

    async def _tell(self, holder: str, transaction: str, statement: Statement) -> None:
        """Deliver a reveal to its holder; on failure it still finds it via ca.reveals."""
        with trio.move_on_after(TELL_TIMEOUT) as scope:
            try:
                await self.context.agent.evidence.deliver(holder, transaction, statement)
                self.context.agent.events.emit("reveal_told", pseudonym=holder)
                return
            except Exception as exc:  # unreachable, refused: ca.reveals remains
                log.info("could not tell %s of its reveal (it can ask ca.reveals): %s",
                         holder, getattr(exc, "code", None) or exc)
        if scope.cancelled_caught:
            log.info("could not tell %s of its reveal in %ss (it can ask ca.reveals)",
                     holder, TELL_TIMEOUT)

    @handles(REVEAL)
    async def reveal(self, context: RequestContext, request: RevealRequest) -> RevealAnswer:
        """A request that verifies is archived with its outcome: a refusal (raised
        after) or the grant (answered after)."""
        requester = context.peer
        ask = self._verified(requester, request.request)
        try:
            found = await self._check(requester, ask)
        except RevealRefused as exc:
            await self._refused(requester, request.request, ask, exc.code)
            raise
        case_id, pseudonym, der = found
        assert ask.case is not None  # _check saw to it
        ours = self.context
        body = Revealed(pseudonym=pseudonym.pseudonym, agent=pseudonym.real_id,
                        opening=pseudonym.opening, commitment=pseudonym.commitment,
                        case=case_id, case_statement=ask.case.digest,
                        request_statement=request.request.digest, arbiter=requester.agent_id)
        statement = ours.sign(REVEALED_TYPE, body.to_body())
        transaction = reveal_transaction(requester.agent_id, case_id, pseudonym.pseudonym)
        await ours.archive.record_all([  # one commit: the request and what it granted
            entry(request.request, direction=Direction.RECEIVED, peer=requester.agent_id,
                  transaction=transaction, certificate=requester.certificate),
            entry(statement, direction=Direction.SENT, peer=requester.agent_id,
                  transaction=transaction, certificate=ours.certificate)])
        await ours.database.transaction(lambda c: _record_reveal(
            c, pseudonym=pseudonym.pseudonym, arbiter=requester.agent_id, code=None,
            statement=statement, at_ms=ours.now_ms()))
        ours.agent.events.emit("revealed", pseudonym=pseudonym.pseudonym,
                               arbiter=requester.agent_id, case=case_id.hex()[:16])
        try:
            self._tell_send.send_nowait((pseudonym.pseudonym, reveal_transaction(
                ours.id, case_id, pseudonym.pseudonym), statement))
        except trio.WouldBlock:
            log.warning("too many reveals to tell: %s finds its own via ca.reveals",
                        pseudonym.pseudonym)
        return RevealAnswer(reveal=statement, certificate=der)

    def _verified(self, requester: Any, request: Statement) -> RevealAsk:
        """The requester's signed ``ca.reveal_request``, checked (else
        ``ca.bad_reveal_request``, not recorded: nobody signed it)."""
        ours = self.context
        try:
            verify_statement(request, certificate=requester.certificate, root=ours.root,
                             crl=ours.crl, now=ours.now(), expected_type=REQUEST_TYPE,
                             expected_signer=requester.agent_id)
            return RevealAsk.from_statement(request)
        except ServiceError as exc:
            raise BadRevealRequest(f"the reveal request does not verify: {exc.message}",
                                   detail={"type": REQUEST_TYPE, "field": "request",
                                           "cause": exc.code}) from None

    async def _check(self, requester: Any, ask: RevealAsk) -> tuple[bytes, Pseudonym, bytes]:
        """The case id, the pseudonym's record and its certificate (DER), or a refusal
        naming the first rule broken: arbiter, case, case verifies under the
        requester's certificate, names the pseudonym, the pseudonym is ours (last:
        only arbiters with a case about it learn whether a pseudonym exists)."""
        if requester.role != "arbiter":
            raise RevealNotArbiter(f"only an arbiter may ask for a reveal, not "
                                   f"{requester.agent_id!r} (role {requester.role!r})",
                                   detail={"role": requester.role})
        if ask.case is None:
            raise RevealNoCase("a reveal must cite a dispute.case the arbiter signed")
        # Here, not at the top: the CA's tables (_castore) import this module, and
        # every agent imports those; the disputes package is only needed for a reveal.
        from semper.services.disputes import verify_case

        ours = self.context
        try:
            case, arbiter = verify_case(ask.case, certificate=requester.certificate,
                                        root=ours.root, crl=ours.crl, now=ours.now())
        except ServiceError as exc:
            raise RevealBadCase(f"the cited case does not verify: {exc.message}",
                                detail={"cause": exc.code}) from None
        decide_reveal(requester=requester, pseudonym=ask.pseudonym,
                      case_arbiter=arbiter.agent_id, claimant=case.claimant,
                      respondent=case.respondent)

        def find(connection: sqlite3.Connection) -> tuple[Pseudonym | None, bytes | None]:
            return (find_pseudonym(connection, ask.pseudonym),
                    _latest_certificate(connection, ask.pseudonym))

        pseudonym, der = await ours.database.read(find)
        if pseudonym is None or der is None:
            raise UnknownPseudonym(f"the CA issued no pseudonym {ask.pseudonym!r}",
                                   detail={"pseudonym": ask.pseudonym})
        return case.case, pseudonym, der

    async def _refused(self, requester: Any, request: Statement, ask: RevealAsk,
                       code: str) -> None:
        ours = self.context
        who = requester.agent_id
        body = RevealRefusal(pseudonym=ask.pseudonym, arbiter=who, code=code,
                             request_statement=request.digest,
                             case_statement=ask.case.digest if ask.case else None)
        statement = ours.sign(REFUSAL_TYPE, body.to_body())
        transaction = reveal_transaction(who, None, ask.pseudonym)
        await ours.archive.record_all([  # one commit: the request and its refusal
            entry(request, direction=Direction.RECEIVED, peer=who, transaction=transaction,
                  certificate=requester.certificate),
            entry(statement, direction=Direction.SENT, peer=who, transaction=transaction,
                  certificate=ours.certificate)])
        await ours.database.transaction(lambda c: _record_reveal(
            c, pseudonym=ask.pseudonym, arbiter=who, code=code, statement=statement,
            at_ms=ours.now_ms()))
        ours.agent.events.emit("reveal_refused", pseudonym=ask.pseudonym, requester=who,
                               outcome=code)

    @handles(REVEALS)
    async def reveals(self, context: RequestContext, request: RevealsRequest
                      ) -> RevealsAnswer:
        """Every reveal of the requester's own id (a pseudonym's holder's right)."""
        holder = context.peer.agent_id
        found = await self.context.database.read(lambda c: reveals_of(c, holder))
        return RevealsAnswer(reveals=tuple(found))


# -- the arbiter's side ---------------------------------------------------------------------


async def request_reveal(context: Context, pseudonym: str, case: Statement | None, *,
                         ca: str | None = None) -> Revealed:
    """Ask the CA (``ca``, default the agent's ``ca_agent``) who ``pseudonym`` is, in
    a signed ``ca.reveal_request`` citing ``case``; check the answer offline and
    archive the request (sent) and the reveal (received) under ``reveal_transaction``.

    Raises:
        RemoteError: the CA refused (``ca.reveal_*``, ``ca.unknown_pseudonym``).
        BadReveal: the answer does not verify, or does not open the pseudonym's
            certificate to the agent it names.
    """
    ca = ca or context.config.ca_agent
    if ca is None:
        raise BadReveal("no CA to ask: the agent's config names no ca_agent")
    signed = context.sign(REQUEST_TYPE, RevealAsk(pseudonym=pseudonym, case=case).to_body())
    request = RevealRequest(request=signed)
    channel = await context.agent.channel(ca)
    raw = await context.agent.request(ca, REVEAL.service, REVEAL.name, request.to_wire())
    try:
        answer = RevealAnswer.from_wire(raw)
    except ServiceError as exc:
        raise BadReveal(f"the CA's answer is not a reveal: {exc.message}",
                        detail={"cause": exc.code}) from None
    ca_certificate = channel.peer.certificate
    try:
        certificate = load_certificate(answer.certificate)
    except ServiceError as exc:
        raise BadReveal(f"the CA sent no certificate: {exc.message}") from None
    body = verify_reveal(answer.reveal, ca_certificate=ca_certificate,
                         pseudonym_certificate=certificate, root=context.root,
                         crl=context.crl, now=context.now())
    if body.pseudonym != pseudonym or body.request_statement != signed.digest:
        raise BadReveal("the CA's reveal answers another request")
    transaction = reveal_transaction(context.id, body.case, pseudonym)
    await context.archive.record_all([
        entry(signed, direction=Direction.SENT, peer=ca, transaction=transaction,
              certificate=context.certificate),
        entry(answer.reveal, direction=Direction.RECEIVED, peer=ca, transaction=transaction,
              certificate=ca_certificate)])
    await context.archive.remember_certificate(certificate)
    return body
