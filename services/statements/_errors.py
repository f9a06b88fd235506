"""Why a statement was refused; one class per stable code.

Certificate problems of the signer (untrusted, expired, revoked, ...) are not
repeated here: ``verify_statement`` raises the certificate layer's own errors
(``auth.*``), so one code means one thing across the protocol.
"""

from __future__ import annotations

from typing import ClassVar

from .._errors import ServiceError

__all__ = [
    "BadSignature",
    "FromTheFuture",
    "MalformedStatement",
    "NotCanonical",
    "Replayed",
    "Stale",
    "StatementError",
    "UnsupportedVersion",
    "WrongSigner",
    "WrongType",
]


class StatementError(ServiceError):
    """A statement (or its encoding) was refused. Subclasses name the reason."""

    code: ClassVar[str] = "statement.error"


class MalformedStatement(StatementError):
    """Not one value of the value model, or a statement field missing, mistyped or missized."""

    code: ClassVar[str] = "statement.malformed"


class NotCanonical(MalformedStatement):
    """A valid value in an encoding other than its one canonical encoding."""

    code: ClassVar[str] = "statement.not_canonical"


class UnsupportedVersion(StatementError):
    code: ClassVar[str] = "statement.unsupported_version"


class BadSignature(StatementError):
    """Opaque on purpose: a bad key, a bad length and a forged signature look alike."""

    code: ClassVar[str] = "statement.bad_signature"


class WrongSigner(StatementError):
    code: ClassVar[str] = "statement.wrong_signer"


class FromTheFuture(StatementError):
    code: ClassVar[str] = "statement.from_the_future"


class WrongType(StatementError):
    code: ClassVar[str] = "statement.wrong_type"


class Stale(StatementError):
    code: ClassVar[str] = "statement.stale"


class Replayed(StatementError):
    code: ClassVar[str] = "statement.replayed"
