"""The market PKI: a root, agent certificates with role and liability level, CRLs.

Pure: keys, bytes and ``now`` in; certificates, CRLs and decisions out.
"""

from ._errors import (
    BadCertificate,
    BadCrl,
    BadKeyUsage,
    CertificateError,
    Expired,
    InsufficientLevel,
    NotYetValid,
    Revoked,
    Untrusted,
    WrongPeer,
    WrongRole,
)
from ._issue import (
    CertificateAuthority,
    Revocation,
    check_name,
    create_ca,
    issue_agent_certificate,
    issue_crl,
    private_key_pem,
)
from ._oids import ARC, ROLE_POLICY, Level, level_oid
from ._validate import (
    AgentIdentity,
    fingerprint,
    identity_of,
    load_certificate,
    load_crl,
    validate_certificate,
    validate_crl,
)

__all__ = [
    "ARC",
    "ROLE_POLICY",
    "AgentIdentity",
    "BadCertificate",
    "BadCrl",
    "BadKeyUsage",
    "CertificateAuthority",
    "CertificateError",
    "Expired",
    "InsufficientLevel",
    "Level",
    "NotYetValid",
    "Revocation",
    "Revoked",
    "Untrusted",
    "WrongPeer",
    "WrongRole",
    "check_name",
    "create_ca",
    "fingerprint",
    "identity_of",
    "issue_agent_certificate",
    "issue_crl",
    "level_oid",
    "load_certificate",
    "load_crl",
    "private_key_pem",
    "validate_certificate",
    "validate_crl",
]
