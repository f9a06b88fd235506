"""The arbiter's component: ``dispute.file`` (protocol.md section 12).

A party sends an evidence bundle; the arbiter checks it offline as anyone could
(``services.disputes.check_bundle``: the market root, the newest CRL at hand), opens
a case (a signed ``dispute.case``), judges each obligation and answers with a signed
``dispute.verdict`` carrying the case. The bundle, the case and the verdict are kept
(table ``dispute_cases``; the two statements also in the archive, transaction the
case's hex) in the commit that precedes the answer, so a verdict given is never lost.

A claimant that files the same bundle again gets the first answer (the same case),
whatever happened to it: filings are idempotent per (claimant, bundle digest,
respondent), a filing that names no respondent being the first one's.

Bundles are judged against CRLs issued after their statements (6A.8): the arbiter
takes the CRL the claimant brings, its own, and, when neither is recent enough, one
it asks its CA agent to issue (``certificates.crl`` with ``fresh_after``).
"""

from __future__ import annotations

import functools
import hashlib
import os
import sqlite3
from collections.abc import Mapping, Sequence
from typing import Any, Final

import trio
from cryptography.hazmat.primitives import serialization

from semper.agents.components._archive import append, entry
from semper.agents.runtime._component import Component, handles
from semper.services.archive import CrlTooOld, Direction, EvidenceBundle
from semper.services.certificates import CertificateError, load_crl
from semper.services.certificates._bodies import CrlRequest
from semper.services.certificates._ops import CRL
from semper.services.disputes import (
    FILE,
    FileAnswer,
    FileRequest,
    NotParty,
    Report,
    UnknownProtocol,
    check_bundle,
    make_case,
    make_verdict,
)
from semper.services.statements import Statement, StatementError

__all__ = ["MIGRATIONS", "Arbitration"]

MIGRATIONS: Final[Mapping[str, Sequence[str]]] = {"dispute_cases": ["""
    CREATE TABLE dispute_cases (
        case_id BLOB PRIMARY KEY,
        claimant TEXT NOT NULL,
        respondent TEXT NOT NULL,
        bundle_digest BLOB NOT NULL,
        bundle BLOB NOT NULL,
        case_statement BLOB NOT NULL,
        verdict BLOB NOT NULL,
        filed_ms INTEGER NOT NULL,
        UNIQUE (claimant, bundle_digest, respondent)
    )
"""]}

_DER: Final = serialization.Encoding.DER


class Arbitration(Component):
    """Serves ``dispute.file``: judge a bundle, open a case, sign the verdict."""

    name = "arbitration"

    def migrations(self) -> Mapping[str, Sequence[str]]:
        return MIGRATIONS

    @handles(FILE)
    async def file(self, request_context: Any, request: FileRequest) -> FileAnswer:
        claimant = request_context.peer.agent_id
        digest = hashlib.sha256(request.bundle).digest()
        known = await self._answer_of(claimant, digest, request.respondent)
        if known is not None:
            return known
        report = await self._check(request)
        if not report.valid:
            assert report.error is not None
            raise report.error  # the archive's code: the bundle does not verify
        if report.protocol is None:
            raise UnknownProtocol(f"the bundle of {report.transaction!r} verifies, but no "
                                  "checker here knows its protocol",
                                  detail={"transaction": report.transaction})
        respondent = _respondent(report, claimant, request.respondent)
        context = self.context
        key = context.agent.credentials.key
        filed_ms = context.now_ms()
        case_id = os.urandom(32)
        case = make_case(case=case_id, claimant=claimant, respondent=respondent,
                         bundle=digest, filed_ms=filed_ms, key=key,
                         certificate=context.certificate, nonce=os.urandom(16))
        assert report.transaction is not None
        verdict = make_verdict(case_statement=case, transaction=report.transaction,
                               protocol=report.protocol, verdicts=report.verdicts, key=key,
                               certificate=context.certificate, now_ms=context.now_ms(),
                               nonce=os.urandom(16))
        entries = [entry(statement, direction=Direction.SENT, peer=claimant,
                         transaction=case_id.hex(), certificate=context.certificate)
                   for statement in (case, verdict)]

        def keep(connection: sqlite3.Connection) -> bytes | None:
            first = _first(connection, claimant, digest, respondent)
            if first is not None:  # the same filing, answered meanwhile
                return bytes(first[0])
            connection.execute(
                "INSERT INTO dispute_cases (case_id, claimant, respondent, bundle_digest, "
                "bundle, case_statement, verdict, filed_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (case_id, claimant, respondent, digest, request.bundle, case.to_bytes(),
                 verdict.to_bytes(), filed_ms))
            append(connection, entries, now_ms=context.now_ms())
            return None

        first = await context.database.transaction(keep)
        if first is not None:
            verdict = Statement.from_bytes(first)
        context.log.info("case %s: %s against %s over %s: %s", case_id.hex()[:16], claimant,
                         respondent, report.transaction,
                         ", ".join(f"{v.party} {v.met}" for v in report.verdicts))
        return FileAnswer(verdict=verdict, certificate=context.certificate.public_bytes(_DER))

    async def _answer_of(self, claimant: str, digest: bytes, respondent: str | None
                         ) -> FileAnswer | None:
        row = await self.context.database.read(
            lambda c: _first(c, claimant, digest, respondent))
        if row is None:
            return None
        return FileAnswer(verdict=Statement.from_bytes(bytes(row[0])),
                          certificate=self.context.certificate.public_bytes(_DER))

    async def _check(self, request: FileRequest) -> Report:
        """The bundle checked with the CRLs at hand; if none postdates its statements,
        again with one the CA agent issues for it."""
        context = self.context
        crls = [load_crl(request.crl)] if request.crl is not None else []  # auth.bad_crl
        report = await _checked(request.bundle, context, crls)
        ca = context.config.ca_agent
        if report.valid or not isinstance(report.error, CrlTooOld) or ca is None \
                or ca == context.id:
            return report
        latest = _latest_statement(request.bundle)
        try:
            answer = await context.call(ca, CRL, CrlRequest(fresh_after=latest))
            der = answer.get("crl") if isinstance(answer, dict) else None
            fresh = load_crl(der) if isinstance(der, bytes) else None
        except (CertificateError, OSError) as exc:
            context.log.warning("cannot fetch a CRL to judge a bundle: %s", exc)
            return report
        except Exception as exc:
            if not isinstance(getattr(exc, "code", None), str):
                raise
            context.log.warning("cannot fetch a CRL to judge a bundle: %s", exc)
            return report
        if fresh is None:
            return report
        return await _checked(request.bundle, context, [*crls, fresh])


async def _checked(bundle: bytes, context: Any, crls: list[Any]) -> Report:
    """``check_bundle`` in a worker thread: a bundle of thousands of records takes
    seconds of signature checks, which must not stop the agent's other requests."""
    return await trio.to_thread.run_sync(functools.partial(
        check_bundle, bundle, context.root, context.crl, now=context.now(), crls=crls))


def _first(connection: sqlite3.Connection, claimant: str, digest: bytes,
           respondent: str | None) -> Any:
    """The verdict row of the claimant's earlier filing of this bundle (against
    ``respondent``, or anyone when None), or None."""
    return connection.execute(
        "SELECT verdict FROM dispute_cases WHERE claimant = ? AND bundle_digest = ? "
        "AND (? IS NULL OR respondent = ?) ORDER BY filed_ms LIMIT 1",
        (claimant, digest, respondent, respondent)).fetchone()


def _latest_statement(bundle: bytes) -> int | None:
    """The latest issue time among the bundle's statements (it verified up to its CRL,
    so it parses)."""
    try:
        records = EvidenceBundle.from_bytes(bundle).records
    except StatementError:
        return None
    times = []
    for record in records:
        try:
            times.append(Statement.from_bytes(record.statement).issued_at)
        except StatementError:
            continue
    return max(times, default=None)


def _respondent(report: Report, claimant: str, named: str | None) -> str:
    """The party the claimant disputes with: ``named``, or the one other party."""
    parties = {verdict.party for verdict in report.verdicts}
    if claimant not in parties:
        raise NotParty(f"{claimant!r} is not a party of the bundle's obligations "
                       f"({', '.join(sorted(parties))})",
                       detail={"claimant": claimant, "parties": sorted(parties)})
    others = sorted(parties - {claimant})
    if named is None:
        if len(others) != 1:
            raise NotParty("name the respondent: the bundle's obligations have "
                           f"{len(others)} other parties ({', '.join(others)})",
                           detail={"claimant": claimant, "parties": sorted(parties)})
        return others[0]
    if named not in others:
        raise NotParty(f"{named!r} is not another party of the bundle's obligations "
                       f"({', '.join(others) or 'none'})",
                       detail={"respondent": named, "parties": sorted(parties)})
    return named
