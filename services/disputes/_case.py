"""The ``dispute.case`` statement: an arbiter's record that it opened a case.

Signed by an agent whose certificate role is ``arbiter``. Body, all keys required:

    case        bytes(32)  the case's identifier (random, chosen by the arbiter)
    claimant    str        agent id of the party that filed
    respondent  str        agent id of the other party
    bundle      bytes(32)  SHA-256 of the evidence bundle's bytes, as filed
    filed_ms    int        Unix ms when the arbiter accepted the filing

Whoever cites a case (the CA revealing a pseudonym, issue 9 item 6) checks it with
``verify_case``: a valid statement by an arbiter, offline, with the market root.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import ClassVar, Final

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ed25519

from .._schema import AGENT, DIGEST, TIME, Body, Schema
from ..certificates import AgentIdentity
from ..statements import Statement, WrongType, sign_statement, verify_statement
from ._errors import BadCase, NotArbiter

__all__ = [
    "ARBITER_ROLE",
    "CASE_TYPE",
    "SCHEMA",
    "Case",
    "make_case",
    "verify_case",
]

CASE_TYPE: Final = "dispute.case"
#: The certificate role that may sign cases and verdicts.
ARBITER_ROLE: Final = "arbiter"


def _wrong_type(expected: str, statement: Statement) -> WrongType:
    return WrongType(f"expected a {expected!r} statement, got {statement.type!r}",
                     detail={"expected": expected, "type": statement.type})


#: The kind of every dispute key (``services._schema``); the verdict's keys join it in
#: ``_verdict``.
SCHEMA: Final = Schema(BadCase, {
    "case": DIGEST, "bundle": DIGEST,
    "claimant": AGENT, "respondent": AGENT,
    "filed_ms": TIME,
}, wrong_type=_wrong_type)


@dataclass(frozen=True, slots=True, kw_only=True)
class Case(Body):
    """``dispute.case``'s body; construction checks every field (``dispute.bad_body``)."""

    TYPE: ClassVar[str] = CASE_TYPE
    SCHEMA: ClassVar[Schema] = SCHEMA

    case: bytes
    claimant: str
    respondent: str
    bundle: bytes
    filed_ms: int


def make_case(
    *,
    case: bytes,
    claimant: str,
    respondent: str,
    bundle: bytes,
    filed_ms: int,
    key: ed25519.Ed25519PrivateKey,
    certificate: x509.Certificate,
    nonce: bytes,
) -> Statement:
    """The arbiter's signed ``dispute.case``, issued at ``filed_ms``.

    ``bundle`` is the bundle's SHA-256 (32 bytes), not the bundle.

    Raises:
        BadCase: a bad field.
        ValueError: ``key`` is not the key of ``certificate``, or a bad nonce.
    """
    body = Case(case=case, claimant=claimant, respondent=respondent, bundle=bundle,
                filed_ms=filed_ms)
    return sign_statement(CASE_TYPE, body.to_body(), key=key, certificate=certificate,
                          now_ms=filed_ms, nonce=nonce)


def verify_case(
    statement: Statement,
    *,
    certificate: x509.Certificate,
    root: x509.Certificate,
    crl: x509.CertificateRevocationList,
    now: dt.datetime,
) -> tuple[Case, AgentIdentity]:
    """Check a ``dispute.case`` offline (``verify_statement``) and that its signer's
    certificate says ``arbiter``.

    Returns:
        The case body and the arbiter's identity.

    Raises:
        StatementError, CertificateError: as ``verify_statement`` (``statement.*``,
            ``auth.*``; ``statement.wrong_type`` for another type).
        NotArbiter: the signer's role is not ``arbiter``.
        BadCase: the body is not a case.
    """
    identity = verify_statement(statement, certificate=certificate, root=root, crl=crl,
                                now=now, expected_type=CASE_TYPE)
    if identity.role != ARBITER_ROLE:
        raise NotArbiter(f"a case is signed by an arbiter, not by {identity.agent_id!r} "
                         f"(role {identity.role!r})",
                         detail={"signer": identity.agent_id, "role": identity.role})
    return Case.from_statement(statement), identity
