"""Why a certificate or CRL was refused; one class per stable code."""

from __future__ import annotations

from typing import ClassVar

from .._errors import ServiceError

__all__ = [
    "BadCertificate",
    "BadCrl",
    "BadKeyUsage",
    "CertificateError",
    "Expired",
    "InsufficientLevel",
    "NotYetValid",
    "Revoked",
    "Untrusted",
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


class BadKeyUsage(CertificateError):
    code: ClassVar[str] = "auth.bad_key_usage"


class WrongPeer(CertificateError):
    code: ClassVar[str] = "auth.wrong_peer"


class WrongRole(CertificateError):
    code: ClassVar[str] = "auth.wrong_role"


class InsufficientLevel(CertificateError):
    code: ClassVar[str] = "auth.insufficient_level"
