"""Timestamps: the notary's signed tokens, batched under one Merkle tree per signed
tree head, the heads hash-chained; verifiable offline with the market root.

Pure: digests, keys' statements and the time come in; batches, tokens and decisions
go out. ``docs/protocol.md`` section 11 is the specification.
"""

from ._batcher import Batch, Batcher, ChainState, build_batch
from ._errors import (
    BadProof,
    BadTimestampRequest,
    BadToken,
    Forked,
    TimestampError,
    Unavailable,
    WrongDigest,
    WrongNotary,
)
from ._ops import REQUEST
from ._token import (
    HEAD_DOMAIN,
    HEAD_TYPE,
    LEAF_DOMAIN,
    MAX_TREE,
    NO_PREVIOUS,
    TimestampAnswer,
    TimestampRequest,
    Token,
    TreeHead,
    head_id,
    leaf_input,
)
from ._verify import (
    FORK_KINDS,
    ForkEvidence,
    Verified,
    check_no_fork,
    fork_evidence,
    verify_token,
)

__all__ = [
    "FORK_KINDS",
    "HEAD_DOMAIN",
    "HEAD_TYPE",
    "LEAF_DOMAIN",
    "MAX_TREE",
    "NO_PREVIOUS",
    "REQUEST",
    "BadProof",
    "BadTimestampRequest",
    "BadToken",
    "Batch",
    "Batcher",
    "ChainState",
    "ForkEvidence",
    "Forked",
    "TimestampAnswer",
    "TimestampError",
    "TimestampRequest",
    "Token",
    "TreeHead",
    "Unavailable",
    "Verified",
    "WrongDigest",
    "WrongNotary",
    "build_batch",
    "check_no_fork",
    "fork_evidence",
    "head_id",
    "leaf_input",
    "verify_token",
]
