"""The notary's decisions: ``notary.abort`` and ``notary.resolve`` for contracts
(protocol.md 10.2, 10.6), on C1's ``NotaryBook``.

Theory of operation. One ``NotaryBook`` per notary, loaded from the database on first
use: its decisions, in chain order, one row each. A request is checked
(``contract_abort``/``contract_resolve``: signatures, who may ask, one decision per
exchange id) under one lock; a NEW decision is stored, with the request and the
decision archived, in ONE commit before it is answered. A failed commit reloads the
book, so the chain in memory is always the stored one: it continues across restarts
from the last stored decision. A repeated request gets the first decision, byte for
byte, with the certificates stored beside it.

``decide`` is the one entry other exchange kinds (certified mail, fair purchase) use,
so that a notary keeps one chain.

Crash points: ``contract.notary.received`` (a request decoded, nothing done),
``contract.notary.decided`` (inside the transaction, after the decision's row and
evidence were written, before COMMIT), ``contract.notary.committed`` (durable, before
the answer).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

import trio
from cryptography import x509

from semper.agents.components._archive import append, entry
from semper.agents.components._contracts import CertificateBook, signers_of
from semper.agents.runtime._component import Component, handles
from semper.agents.runtime._faults import crash_point
from semper.services.certificates import certificate_der, fingerprint
from semper.services.fairexchange import (
    NOTARY_ABORT,
    NOTARY_RESOLVE,
    Decision,
    DecisionBody,
    NotaryBook,
    contract_abort,
    contract_resolve,
)
from semper.services.fairexchange._bodies import AbortWire, DecisionWire, ResolveWire
from semper.services.statements import Statement, canonical_decode, canonical_encode

__all__ = ["MIGRATIONS", "NotaryDecisions"]

MIGRATIONS: Final = {
    "notary_decisions": [
        "CREATE TABLE notary_decisions ("
        " seq INTEGER PRIMARY KEY, exchange BLOB NOT NULL, kind TEXT NOT NULL,"
        " statement BLOB NOT NULL, certificates BLOB NOT NULL) STRICT"
    ],
}


class NotaryDecisions(Component):
    """The notary's book of decisions and the contract kind's two ops."""

    name = "notary"

    def __init__(self, context: Any) -> None:
        super().__init__(context)
        self.certificates = CertificateBook(self)
        self._book: NotaryBook | None = None
        self._ders: dict[bytes, tuple[bytes, ...]] = {}
        self._lock = trio.Lock()

    def migrations(self) -> Mapping[str, Sequence[str]]:
        return MIGRATIONS

    def _sign(self, type: str, body: dict[str, Any], now_ms: int) -> Statement:
        return self.context.sign(type, body)

    async def book(self) -> NotaryBook:
        """The book as stored (loaded once; reloaded after a failed commit)."""
        if self._book is None:
            rows = await self.context.database.read(lambda c: c.execute(
                "SELECT statement, certificates FROM notary_decisions ORDER BY seq").fetchall())
            statements = [Statement.from_bytes(s) for s, _ in rows]
            self._ders = {s.digest: tuple(canonical_decode(d))
                          for s, (_, d) in zip(statements, rows, strict=True)}
            last = DecisionBody.from_statement(statements[-1]) if statements else None
            self._book = NotaryBook.from_record(
                {"machine": "fairexchange.notary", "v": 1, "notary": self.context.id,
                 "seq": 0 if last is None else last.seq,
                 "head": bytes(32) if last is None else statements[-1].digest,
                 "decisions": [s.to_bytes() for s in statements]}, sign=self._sign)
        return self._book

    async def decide(self, make: Callable[[NotaryBook], Decision], *, requester: str,
                     quoted: Sequence[Statement],
                     certificates: Mapping[bytes, x509.Certificate] | None = None
                     ) -> DecisionWire:
        """Decide with ``make(book)`` under the book's lock; a new decision is stored
        (``quoted``, the request's statements, archived as received from
        ``requester``, and the decision as sent) in one commit before it is answered.
        The one entry for every exchange kind: a notary keeps ONE chain.
        ``certificates``: signers' certificates by fingerprint, to archive with them."""
        for certificate in (certificates or {}).values():
            self.certificates.add(certificate)
        await self.certificates.learn(quoted)
        async with self._lock:
            book = await self.book()
            decision = make(book)
            body = decision.body
            if not decision.new:
                return DecisionWire(statement=decision.statement,
                                    certificates=self._ders.get(decision.statement.digest) or None)
            ders = self.certificates.ders([decision.statement, *quoted])
            txn = body.exchange.hex()
            entries = [entry(s, direction="received", peer=requester, transaction=txn,
                             certificate=self.certificates.get(s.signer)) for s in quoted]
            entries.append(entry(decision.statement, direction="sent", peer=requester,
                                 transaction=txn, certificate=self.context.certificate))
            extra = [c for s in quoted for q in signers_of(s)[1:]
                     if (c := self.certificates.get(q.signer)) is not None]
            now_ms = self.context.now_ms()

            def write(c: sqlite3.Connection) -> None:
                c.execute("INSERT INTO notary_decisions (seq, exchange, kind, statement,"
                          " certificates) VALUES (?, ?, ?, ?, ?)",
                          (body.seq, body.exchange, body.kind, decision.statement.to_bytes(),
                           canonical_encode(list(ders))))
                append(c, entries, now_ms=now_ms)
                for certificate in extra:
                    c.execute("INSERT OR IGNORE INTO archive_certificates (fingerprint, der)"
                              " VALUES (?, ?)", (fingerprint(certificate),
                                                 certificate_der(certificate)))
                crash_point("contract.notary.decided")

            try:
                await self.context.database.transaction(write)
            except BaseException:
                self._book = None  # the chain in memory went ahead of the stored one
                raise
            self._ders[decision.statement.digest] = ders
        crash_point("contract.notary.committed")
        return DecisionWire(statement=decision.statement, certificates=ders or None)

    def _received(self, context: Any, certificates: tuple[bytes, ...] | None) -> str:
        crash_point("contract.notary.received")
        self.certificates.add(context.peer.certificate)
        self.certificates.add_der(certificates)
        return context.peer.agent_id  # type: ignore[no-any-return]

    @handles(NOTARY_ABORT)
    async def abort(self, context: Any, request: AbortWire) -> DecisionWire:
        requester = self._received(context, request.certificates)
        return await self.decide(
            lambda book: contract_abort(book, request.request, requester=requester,
                                        verify=self.certificates.verify,
                                        now_ms=self.context.now_ms()),
            requester=requester, quoted=[request.request])

    @handles(NOTARY_RESOLVE)
    async def resolve(self, context: Any, request: ResolveWire) -> DecisionWire:
        requester = self._received(context, request.certificates)
        return await self.decide(
            lambda book: contract_resolve(book, request.request, requester=requester,
                                          verify=self.certificates.verify,
                                          now_ms=self.context.now_ms()),
            requester=requester, quoted=[request.request])
