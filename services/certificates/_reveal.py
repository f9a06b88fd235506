"""The CA's reveal of a pseudonym to an arbiter (``ca.reveal``, protocol.md 7.6) and
the holder's view of it (``ca.reveals``): bodies, statements, refusals, and the
offline check of a reveal.

Pure: the arbiter signs a ``ca.reveal_request`` (``RevealAsk``: the pseudonym and
the ``dispute.case`` it cites), so that the CA keeps evidence of who asked; the CA
agent (``agents/components/_reveal.py``) verifies it and the case
(``services.disputes.verify_case``), decides with ``decide_reveal``, and signs the
``ca.revealed`` statement whose body is ``Revealed``. Anyone holding
the pseudonym's certificate checks it with ``verify_reveal``: the opening must open
the commitment in the certificate, so a CA cannot name the wrong agent unnoticed.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import ClassVar, Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from .._errors import ServiceError
from .._schema import AGENT, DIGEST, STATEMENT, Body, Kind, Schema, binary, form, wire
from ..statements import Statement, verify_statement
from ._pseudonym import COMMITMENT_SIZE, OPENING_SIZE, opens, read_commitment
from ._validate import AgentIdentity, identity_of

__all__ = [
    "REFUSAL_TYPE",
    "REQUEST_TYPE",
    "REVEALED_TYPE",
    "BadReveal",
    "BadRevealRequest",
    "RevealAnswer",
    "RevealAsk",
    "RevealBadCase",
    "RevealNoCase",
    "RevealNotArbiter",
    "RevealNotParty",
    "RevealRefusal",
    "RevealRefused",
    "RevealRequest",
    "Revealed",
    "RevealsAnswer",
    "RevealsRequest",
    "UnknownPseudonym",
    "decide_reveal",
    "verify_reveal",
]

#: The CA's signed answer: who a pseudonym is, for which case, to which arbiter.
REVEALED_TYPE: Final = "ca.revealed"
#: The arbiter's signed request: which pseudonym, citing which case.
REQUEST_TYPE: Final = "ca.reveal_request"
#: The CA's own record of a refused reveal request (archived, never sent).
REFUSAL_TYPE: Final = "ca.reveal_refusal"
#: The role whose signed case a reveal needs.
ARBITER_ROLE: Final = "arbiter"
#: At most this many reveals are listed by ``ca.reveals`` (newest first).
MAX_REVEALS: Final = 64


class RevealRefused(ServiceError):
    """The CA refused to reveal a pseudonym. Subclasses name the reason."""

    code: ClassVar[str] = "ca.reveal_refused"


class BadRevealRequest(RevealRefused):
    """A ``ca.reveal`` or ``ca.reveals`` body that is not the defined map."""

    code: ClassVar[str] = "ca.bad_reveal_request"


class RevealNotArbiter(RevealRefused):
    """The requester's certificate role is not ``arbiter``."""

    code: ClassVar[str] = "ca.reveal_not_arbiter"


class RevealNoCase(RevealRefused):
    """The request cites no ``dispute.case``."""

    code: ClassVar[str] = "ca.reveal_no_case"


class RevealBadCase(RevealRefused):
    """The cited case does not verify, or its arbiter is not the requester."""

    code: ClassVar[str] = "ca.reveal_bad_case"


class RevealNotParty(RevealRefused):
    """The cited case names the pseudonym as neither claimant nor respondent."""

    code: ClassVar[str] = "ca.reveal_not_party"


class UnknownPseudonym(RevealRefused):
    """The CA holds no pseudonym by this id."""

    code: ClassVar[str] = "ca.unknown_pseudonym"


class BadReveal(ServiceError):
    """A ``ca.revealed`` statement that does not verify, or whose opening does not open
    the pseudonym certificate's commitment (local: the arbiter's and the CLI's check)."""

    code: ClassVar[str] = "ca.bad_reveal"
    wire: ClassVar[bool] = False


_STATEMENTS: Final = Kind(
    f"a list of at most {MAX_REVEALS} statements",
    lambda v: type(v) is tuple and len(v) <= MAX_REVEALS
    and all(type(s) is Statement for s in v),
    decode=lambda v: tuple(Statement.from_wire(s) for s in v) if type(v) is list else v,
    encode=lambda v: [s.to_wire() for s in v])

SCHEMA: Final = Schema(BadRevealRequest, {
    "pseudonym": AGENT, "agent": AGENT, "arbiter": AGENT,
    "opening": binary(OPENING_SIZE, OPENING_SIZE, f"{OPENING_SIZE} bytes"),
    "commitment": binary(COMMITMENT_SIZE, COMMITMENT_SIZE, f"{COMMITMENT_SIZE} bytes"),
    "case": DIGEST, "case_statement": DIGEST, "request_statement": DIGEST,
    "request": STATEMENT,
    "code": form(r"[a-z0-9_]+\.[a-z0-9_.]+", "an error code", 64),
    "reveal": STATEMENT,
    "certificate": binary(1, 16384, "a DER certificate of at most 16384 bytes"),
    "reveals": _STATEMENTS,
})


@dataclass(frozen=True, slots=True, kw_only=True)
class RevealAsk(Body):
    """The body of ``ca.reveal_request``, signed by the requester:
    ``{"pseudonym": ID, "case": dispute.case statement}``; a missing or nil ``case``
    is refused by the CA (``ca.reveal_no_case``), and recorded."""

    TYPE: ClassVar[str] = REQUEST_TYPE
    SCHEMA: ClassVar[Schema] = SCHEMA

    pseudonym: str
    case: Statement | None = field(default=None, metadata=wire(STATEMENT))


@dataclass(frozen=True, slots=True, kw_only=True)
class RevealRequest(Body):
    """``ca.reveal``: ``{"request": ca.reveal_request statement}``."""

    TYPE: ClassVar[str] = "ca.reveal"
    SCHEMA: ClassVar[Schema] = SCHEMA

    request: Statement


@dataclass(frozen=True, slots=True, kw_only=True)
class RevealAnswer(Body):
    """``{"reveal": ca.revealed statement, "certificate": DER}``: the reveal and the
    pseudonym's certificate, whose commitment its opening opens."""

    TYPE: ClassVar[str] = "ca.reveal answer"
    SCHEMA: ClassVar[Schema] = SCHEMA

    reveal: Statement
    certificate: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class RevealsRequest(Body):
    """``ca.reveals``: ``{}``; the requester asks about its own id."""

    TYPE: ClassVar[str] = "ca.reveals"
    SCHEMA: ClassVar[Schema] = SCHEMA


@dataclass(frozen=True, slots=True, kw_only=True)
class RevealsAnswer(Body):
    """``{"reveals": [ca.revealed statement, ...]}``, newest first."""

    TYPE: ClassVar[str] = "ca.reveals answer"
    SCHEMA: ClassVar[Schema] = SCHEMA

    reveals: tuple[Statement, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Revealed(Body):
    """The body of ``ca.revealed``, signed by the CA agent."""

    TYPE: ClassVar[str] = REVEALED_TYPE
    SCHEMA: ClassVar[Schema] = SCHEMA

    pseudonym: str
    agent: str
    opening: bytes
    commitment: bytes
    case: bytes
    case_statement: bytes
    request_statement: bytes
    arbiter: str

    def _check(self) -> None:
        if not opens(self.commitment, self.agent, self.opening):
            SCHEMA.fail(REVEALED_TYPE, "opening", "does not open the commitment to agent")


@dataclass(frozen=True, slots=True, kw_only=True)
class RevealRefusal(Body):
    """The body of ``ca.reveal_refusal``: the CA's record of a refused request."""

    TYPE: ClassVar[str] = REFUSAL_TYPE
    SCHEMA: ClassVar[Schema] = SCHEMA

    pseudonym: str
    arbiter: str
    code: str
    request_statement: bytes
    case_statement: bytes | None = None


def decide_reveal(*, requester: AgentIdentity, pseudonym: str, case_arbiter: str,
                  claimant: str, respondent: str) -> None:
    """The rules after the case verified: the requester is an arbiter and the case's
    signer, and the case names the pseudonym as a party.

    Raises:
        RevealNotArbiter, RevealBadCase, RevealNotParty.
    """
    if requester.role != ARBITER_ROLE:
        raise RevealNotArbiter(f"only an arbiter may ask for a reveal, not "
                               f"{requester.agent_id!r} (role {requester.role!r})",
                               detail={"role": requester.role})
    if case_arbiter != requester.agent_id:
        raise RevealBadCase(f"the case is {case_arbiter!r}'s, not the requester's",
                            detail={"signer": case_arbiter})
    if pseudonym not in (claimant, respondent):
        raise RevealNotParty(f"the case does not name {pseudonym!r} as a party",
                             detail={"pseudonym": pseudonym})


def verify_reveal(statement: Statement, *, ca_certificate: x509.Certificate,
                  pseudonym_certificate: x509.Certificate, root: x509.Certificate,
                  crl: x509.CertificateRevocationList, now: dt.datetime) -> Revealed:
    """Check a ``ca.revealed`` offline: signed by an agent whose role is ``ca``, its
    pseudonym's certificate issued by ``root`` and carrying the commitment that the
    reveal's opening opens to the named agent.

    Raises:
        BadReveal: anything but that (``detail`` ``cause``: the code below, if any).
    """
    try:
        signer = verify_statement(statement, certificate=ca_certificate, root=root, crl=crl,
                                  now=now, expected_type=REVEALED_TYPE)
        body = Revealed.from_statement(statement)
    except ServiceError as exc:
        raise BadReveal(f"the reveal does not verify: {exc.message}",
                        detail={"cause": exc.code}) from None
    if signer.role != "ca":
        raise BadReveal(f"a reveal is signed by the CA, not by {signer.agent_id!r}")
    try:
        pseudonym_certificate.verify_directly_issued_by(root)
        commitment = read_commitment(pseudonym_certificate)
        named = identity_of(pseudonym_certificate).agent_id
    except InvalidSignature:
        raise BadReveal("the pseudonym certificate is not issued by this market's root") \
            from None
    except (ValueError, TypeError, ServiceError) as exc:
        raise BadReveal(f"not a pseudonym certificate of this market: {exc}") from None
    if named != body.pseudonym or commitment != body.commitment:
        raise BadReveal(f"the certificate is not {body.pseudonym!r}'s with this commitment")
    return body
