"""The ``dispute.verdict`` statement: the arbiter's signed answer to a filing.

Signed by the arbiter that signed the case it carries. Body, all keys required:

    case            bytes(32)   the case's identifier (the case statement's ``case``)
    case_statement  statement   the ``dispute.case`` statement, whole
    transaction     str         the bundle's transaction
    protocol        str         the protocol whose checker judged it
    verdicts        [map]       {obligation: str, party: agent id, met: bool or nil,
                                 reason: str}, as ``check_bundle`` gave them

Anyone holding it checks it offline with ``verify_verdict`` (the market root and the
arbiter's certificate): both statements valid, by one arbiter certificate, of one case.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass
from typing import Any, ClassVar, Final

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ed25519

from .._errors import ServiceError
from .._schema import AGENT, STATEMENT, Body, Kind, Schema, form, text, wire
from ..certificates import AgentIdentity
from ..statements import Statement, sign_statement, verify_statement
from ._case import ARBITER_ROLE, SCHEMA, Case, verify_case
from ._check import Verdict
from ._errors import BadCase, NotArbiter

__all__ = [
    "MAX_VERDICTS",
    "VERDICT_TYPE",
    "VerdictBody",
    "make_verdict",
    "verify_verdict",
]

VERDICT_TYPE: Final = "dispute.verdict"
MAX_VERDICTS: Final = 64
MAX_OBLIGATION: Final = 256
MAX_REASON: Final = 2048
_OBLIGATION: Final = text(MAX_OBLIGATION)
_REASON: Final = text(MAX_REASON)


def _good_verdicts(value: object) -> bool:
    return type(value) is tuple and len(value) <= MAX_VERDICTS and all(
        type(v) is Verdict and _OBLIGATION.check(v.obligation) and AGENT.check(v.party)
        and (v.met is None or type(v.met) is bool) and _REASON.check(v.reason)
        for v in value)


def _verdicts_from_wire(value: object) -> tuple[Verdict, ...]:
    if type(value) is not list:
        raise ValueError("a list of verdicts")
    return tuple(Verdict.from_wire(item) for item in value)


_VERDICTS: Final = Kind(
    f"at most {MAX_VERDICTS} verdicts {{obligation: 1-{MAX_OBLIGATION} characters, party: "
    f"agent id, met: bool or nil, reason: 1-{MAX_REASON} characters}}",
    _good_verdicts, decode=_verdicts_from_wire,
    encode=lambda verdicts: [v.to_wire() for v in verdicts])

#: The verdict's keys join the case's (``services._schema``: one kind per key).
VERDICT_SCHEMA: Final = dataclasses.replace(SCHEMA, kinds={
    **SCHEMA.kinds,
    "case_statement": STATEMENT,
    "transaction": text(256),
    "protocol": form(r"[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+", "a dotted protocol name"),
    "verdicts": _VERDICTS,
})


@dataclass(frozen=True, slots=True, kw_only=True)
class VerdictBody(Body):
    """``dispute.verdict``'s body; construction checks every field and that the case
    statement is of this case (``dispute.bad_body``)."""

    TYPE: ClassVar[str] = VERDICT_TYPE
    SCHEMA: ClassVar[Schema] = VERDICT_SCHEMA

    case: bytes
    case_statement: Statement = dataclasses.field(metadata=wire(STATEMENT))
    transaction: str
    protocol: str
    verdicts: tuple[Verdict, ...]

    def _check(self) -> None:
        try:
            opened = Case.from_statement(self.case_statement)
        except ServiceError as exc:  # dispute.bad_body, statement.wrong_type
            self.SCHEMA.fail(self.TYPE, "case_statement", f"is not a case: {exc.message}",
                             cause=exc.code)
        if opened.case != self.case:
            self.SCHEMA.fail(self.TYPE, "case", "is not the case statement's case")


def make_verdict(
    *,
    case_statement: Statement,
    transaction: str,
    protocol: str,
    verdicts: tuple[Verdict, ...] | list[Verdict],
    key: ed25519.Ed25519PrivateKey,
    certificate: x509.Certificate,
    now_ms: int,
    nonce: bytes,
) -> Statement:
    """The arbiter's signed verdict on the case ``case_statement`` opened.

    Raises:
        BadCase: a bad field (a verdict's reason too long, a case of another type).
        ValueError: ``key`` is not the key of ``certificate``, or a bad nonce.
    """
    body = VerdictBody(case=Case.from_statement(case_statement).case,
                       case_statement=case_statement, transaction=transaction,
                       protocol=protocol, verdicts=tuple(_clipped(v) for v in verdicts))
    return sign_statement(VERDICT_TYPE, body.to_body(), key=key, certificate=certificate,
                          now_ms=now_ms, nonce=nonce)


def _clipped(verdict: Verdict) -> Verdict:
    """A verdict whose texts fit the body's limits: a checker's reason may quote what a
    bundle holds, at any length."""
    def clip(text: str, limit: int) -> str:
        return text if len(text) <= limit else text[:limit - 3] + "..."

    return Verdict(clip(verdict.obligation, MAX_OBLIGATION), verdict.party, verdict.met,
                   clip(verdict.reason, MAX_REASON))


def verify_verdict(
    statement: Statement,
    *,
    certificate: x509.Certificate,
    root: x509.Certificate,
    crl: x509.CertificateRevocationList,
    now: dt.datetime,
) -> tuple[VerdictBody, AgentIdentity]:
    """Check a ``dispute.verdict`` offline: a valid statement by an arbiter, carrying a
    valid case statement signed by the same certificate.

    Raises:
        StatementError, CertificateError: as ``verify_statement`` (``statement.*``,
            ``auth.*``).
        NotArbiter: the signer's role is not ``arbiter``.
        BadCase: not a verdict body, or a case signed by another certificate.
    """
    identity = verify_statement(statement, certificate=certificate, root=root, crl=crl,
                                now=now, expected_type=VERDICT_TYPE)
    if identity.role != ARBITER_ROLE:
        raise NotArbiter(f"a verdict is signed by an arbiter, not by {identity.agent_id!r} "
                         f"(role {identity.role!r})",
                         detail={"signer": identity.agent_id, "role": identity.role})
    body = VerdictBody.from_statement(statement)
    if body.case_statement.signer != statement.signer:
        raise BadCase("the verdict's case was opened by another certificate",
                      detail={"type": VERDICT_TYPE, "field": "case_statement"})
    verify_case(body.case_statement, certificate=certificate, root=root, crl=crl, now=now)
    return body, identity


def verdicts_of(body: VerdictBody) -> list[dict[str, Any]]:
    """The verdicts as ``semper dispute check --json`` prints them."""
    return [v.to_wire() for v in body.verdicts]
