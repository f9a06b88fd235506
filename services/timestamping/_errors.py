"""Why a timestamp request or token was refused; one class per stable code.

The notary's signature and certificate on a tree head are checked by the statement
layer, whose codes (``statement.*``, ``auth.*``) are kept: one code means one thing
across the protocol.
"""

from __future__ import annotations

from typing import Any, ClassVar

from .._errors import ServiceError

__all__ = [
    "BadProof",
    "BadTimestampRequest",
    "BadToken",
    "Forked",
    "TimestampError",
    "Unavailable",
    "WrongDigest",
    "WrongNotary",
]


class TimestampError(ServiceError):
    code: ClassVar[str] = "timestamp.error"


class BadTimestampRequest(TimestampError):
    """A ``timestamp.request`` body that is not ``{"digest": 32 bytes}``."""

    code: ClassVar[str] = "timestamp.bad_request"


class Unavailable(TimestampError):
    """The notary could not make the token now (its batch failed to commit, or it is
    stopping); nothing was issued, and the request may be sent again."""

    code: ClassVar[str] = "timestamp.unavailable"


class BadToken(TimestampError):
    """Not a token: a field missing, mistyped or out of range, or fields that
    contradict each other (a serial that is not its head's first serial plus its
    index, a time after its head's, an index outside the tree)."""

    code: ClassVar[str] = "timestamp.bad_token"
    wire: ClassVar[bool] = False  # a verifier's finding, never a notary's answer


class BadProof(TimestampError):
    """The token's leaf is not in the tree its head signs: an altered digest, time,
    serial, notary, index or proof, or a proof for another leaf."""

    code: ClassVar[str] = "timestamp.bad_proof"
    wire: ClassVar[bool] = False  # a verifier's finding, never a notary's answer


class WrongDigest(TimestampError):
    """A valid token, for another digest than the one the verifier holds."""

    code: ClassVar[str] = "timestamp.wrong_digest"
    wire: ClassVar[bool] = False  # a verifier's finding, never a notary's answer


class WrongNotary(TimestampError):
    """The head is not signed by the notary the token names, or its signer is not a
    notary."""

    code: ClassVar[str] = "timestamp.wrong_notary"
    wire: ClassVar[bool] = False  # a verifier's finding, never a notary's answer


class Forked(TimestampError):
    """Two tokens whose tree heads cannot both be in one history of the notary;
    ``evidence`` holds the two signed heads (also in ``detail``, hex)."""

    code: ClassVar[str] = "timestamp.fork"
    wire: ClassVar[bool] = False

    def __init__(self, message: str, *, evidence: Any, detail: dict[str, Any] | None = None
                 ) -> None:
        super().__init__(message, detail=detail)
        self.evidence = evidence
