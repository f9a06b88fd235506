"""The evidence archive's pure logic: hash-chained records and offline evidence bundles.

Storage is the agent's (SQLite); this package decides what a record is, whether a
chain holds, and whether a bundle proves what it claims with only the CA root.
"""

from ._bundle import (
    CHUNK,
    EvidenceBundle,
    VerifiedStatement,
    collect_bundle,
    crl_covers_until,
    named_digests,
    newest_crl,
    verify_bundle,
)
from ._errors import (
    ArchiveError,
    ChainBroken,
    CrlTooOld,
    InvalidEvidence,
    MalformedEvidence,
    MissingCertificate,
    RecordTampered,
    WrongRoot,
)
from ._record import ZERO_HASH, ArchiveRecord, Direction, next_record, verify_chain

__all__ = [
    "CHUNK",
    "ZERO_HASH",
    "ArchiveError",
    "ArchiveRecord",
    "ChainBroken",
    "CrlTooOld",
    "Direction",
    "EvidenceBundle",
    "InvalidEvidence",
    "MalformedEvidence",
    "MissingCertificate",
    "RecordTampered",
    "VerifiedStatement",
    "WrongRoot",
    "collect_bundle",
    "named_digests",
    "crl_covers_until",
    "newest_crl",
    "next_record",
    "verify_bundle",
    "verify_chain",
]
