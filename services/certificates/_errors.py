"""Why a certificate, CRL or enrollment was refused; one class per stable code."""

from __future__ import annotations

from typing import ClassVar

from .._errors import ServiceError

__all__ = [
    "BadCertificate",
    "BadCrl",
    "BadCsr",
    "BadEnrollAnswer",
    "BadEnrollRequest",
    "BadKeyUsage",
    "BadProof",
    "BadStatusQuery",
    "CertificateError",
    "CrlStale",
    "CsrKeyMismatch",
    "EnrollmentError",
    "Expired",
    "InsufficientLevel",
    "MalformedToken",
    "NotYetValid",
    "Revoked",
    "TokenExpired",
    "TokenUsed",
    "UnknownToken",
    "Untrusted",
    "WrongCa",
    "WrongPeer",
    "WrongRole",
]


class CertificateError(ServiceError):
    """A certificate did not validate. Subclasses name the reason."""

    code: ClassVar[str] = "auth.invalid_certificate"


class BadCertificate(CertificateError):
    code: ClassVar[str] = "auth.bad_certificate"


class Untrusted(CertificateError):
    code: ClassVar[str] = "auth.untrusted"


class Expired(CertificateError):
    code: ClassVar[str] = "auth.expired"


class NotYetValid(CertificateError):
    code: ClassVar[str] = "auth.not_yet_valid"


class Revoked(CertificateError):
    code: ClassVar[str] = "auth.revoked"


class BadCrl(CertificateError):
    code: ClassVar[str] = "auth.bad_crl"


class CrlStale(BadCrl):
    """The CRL is genuine but past its nextUpdate: fetch a fresh one, nothing is
    wrong with the peer. A subclass, so code that refuses any bad CRL still does."""

    code: ClassVar[str] = "auth.crl_stale"


class BadKeyUsage(CertificateError):
    code: ClassVar[str] = "auth.bad_key_usage"


class WrongPeer(CertificateError):
    code: ClassVar[str] = "auth.wrong_peer"


class WrongRole(CertificateError):
    code: ClassVar[str] = "auth.wrong_role"


class InsufficientLevel(CertificateError):
    code: ClassVar[str] = "auth.insufficient_level"


# -- enrollment ---------------------------------------------------------------------


class EnrollmentError(ServiceError):
    """Joining the market with a token was refused. Subclasses name the reason."""

    code: ClassVar[str] = "enroll.error"


class BadEnrollRequest(EnrollmentError):
    """An ``enroll.request`` body that is not the map the protocol defines."""

    code: ClassVar[str] = "enroll.bad_request"


class BadEnrollAnswer(EnrollmentError):
    """The CA's answer to ``enroll.request`` is malformed or does not fit the request."""

    code: ClassVar[str] = "enroll.bad_answer"


class MalformedToken(EnrollmentError):
    """Not a token this version of semper can read (prefix, base64url, msgpack, fields)."""

    code: ClassVar[str] = "enroll.malformed_token"


class UnknownToken(EnrollmentError):
    """The CA has no token with this id."""

    code: ClassVar[str] = "enroll.unknown_token"


class BadProof(EnrollmentError):
    """The proof is not the token secret's MAC over this request's CSR."""

    code: ClassVar[str] = "enroll.bad_proof"


class TokenUsed(EnrollmentError):
    """The token was redeemed already; tokens are single-use."""

    code: ClassVar[str] = "enroll.token_used"


class AgentHasCertificate(EnrollmentError):
    """The agent id holds a certificate that is still good (neither expired nor
    revoked): a second token for the same id cannot mint a second identity."""

    code: ClassVar[str] = "enroll.agent_has_certificate"


class TokenExpired(EnrollmentError):
    code: ClassVar[str] = "enroll.token_expired"


class WrongCa(EnrollmentError):
    """The server's certificate is not the one whose fingerprint the token pins."""

    code: ClassVar[str] = "enroll.wrong_ca"


class BadCsr(EnrollmentError):
    """Not a CSR, not an Ed25519 key, or a subject other than the token's agent id."""

    code: ClassVar[str] = "enroll.bad_csr"


class CsrKeyMismatch(EnrollmentError):
    """The CSR's signature does not verify under the key it carries: no proof of
    possession of that key."""

    code: ClassVar[str] = "enroll.csr_key_mismatch"


class BadStatusQuery(ServiceError):
    """A ``certificates.status`` question (or answer) that is not the defined map."""

    code: ClassVar[str] = "certificates.bad_status_query"
