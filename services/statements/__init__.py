"""Signed statements: canonical msgpack, Ed25519 signatures, offline verification.

Pure: keys, certificates, CRLs and the time come in; statements and decisions go out.
"""

from ._canonical import (
    MAX_CONTAINER,
    MAX_DEPTH,
    MAX_STRING,
    canonical_decode,
    canonical_encode,
    canonical_join,
)
from ._errors import (
    BadSignature,
    FromTheFuture,
    MalformedStatement,
    NotCanonical,
    Replayed,
    Stale,
    StatementError,
    UnsupportedVersion,
    WrongSigner,
    WrongType,
)
from ._replay import ReplayGuard
from ._statement import (
    MAX_SKEW_MS,
    MAX_TIME_MS,
    Statement,
    sign_statement,
    verify_ed25519,
    verify_statement,
)

__all__ = [
    "MAX_CONTAINER",
    "MAX_DEPTH",
    "MAX_SKEW_MS",
    "MAX_STRING",
    "MAX_TIME_MS",
    "BadSignature",
    "FromTheFuture",
    "MalformedStatement",
    "NotCanonical",
    "ReplayGuard",
    "Replayed",
    "Stale",
    "Statement",
    "StatementError",
    "UnsupportedVersion",
    "WrongSigner",
    "WrongType",
    "canonical_decode",
    "canonical_encode",
    "canonical_join",
    "sign_statement",
    "verify_ed25519",
    "verify_statement",
]
