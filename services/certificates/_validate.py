"""The one validation function for agent certificates.

Used twice for every channel (after OpenSSL has checked the chain during the TLS
handshake, we check again here, so a logic slip in either place is caught by the
other) and offline for statements and evidence. ``cryptography.x509.verification``
refuses Ed25519 and checks no CRLs, so the checks are explicit, in this order:

1. issued by the root (name and signature), the root itself within its validity;
2. the certificate within its validity at ``now``;
3. the CRL signed by the root and not stale, and the serial not on it;
4. key usage fit for TLS client and server and for signing statements, not a CA;
5. the identity (CN = SAN URI = agent id), role and level; what the caller expected.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ..money import Amount, BadAmount
from ._cache import SignatureCache
from ._errors import (
    BadCertificate,
    BadCrl,
    BadKeyUsage,
    CrlStale,
    Expired,
    InsufficientLevel,
    NotYetValid,
    Revoked,
    Untrusted,
    WrongPeer,
    WrongRole,
)
from ._issue import CLOCK_SKEW, BadAgentId, BadName, check_agent_id, check_name
from ._oids import (
    LIABLE_QUALIFIER_PREFIX,
    ROLE_POLICY,
    ROLE_QUALIFIER_PREFIX,
    Level,
    level_from_oid,
)
from ._pseudonym import check_pseudonym_profile, read_commitment

__all__ = [
    "AgentIdentity",
    "certificate_der",
    "fingerprint",
    "identity_of",
    "load_certificate",
    "load_crl",
    "validate_certificate",
    "validate_crl",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentIdentity:
    """Who a validated certificate names, and how far the CA vouches for it."""

    agent_id: str
    role: str
    level: Level
    liability: Amount | None
    serial: int
    fingerprint: bytes
    not_after: dt.datetime
    certificate: x509.Certificate
    #: A pseudonym's commitment to its real id (protocol.md 2.7); None for a named agent.
    commitment: bytes | None = None


# Certificates are immutable values (hashed and compared by their DER), and each
# statement checked names one: fingerprint and identity_of are asked about the same
# few certificates over and over, so the answers are kept.
_CACHE_SIZE = 1024


#: Signatures (certificates' and CRLs', under a root) and key usages checked already,
#: by the digests of the bytes checked: each is verified once (see ``_cache``).
SIGNATURES: SignatureCache = SignatureCache()


def fingerprint(cert: x509.Certificate) -> bytes:
    """SHA-256 over the DER encoding, as ``openssl x509 -fingerprint -sha256`` shows it."""
    known = _DERS.get(id(cert))
    if known is not None and known[0] is cert and known[2] is not None:
        return known[2]
    digest = _fingerprint(cert)
    _keep(cert, certificate_der(cert), digest)
    return digest


@functools.lru_cache(maxsize=_CACHE_SIZE)
def _fingerprint(cert: x509.Certificate) -> bytes:
    """By value: another object of the same certificate (one read from a message)."""
    return hashlib.sha256(certificate_der(cert)).digest()


#: ``certificate_der``'s and ``fingerprint``'s answers by certificate object (held, so
#: that its id is not reused): ``public_bytes`` encodes afresh at each call (~8 us),
#: and hashing a certificate for ``lru_cache`` hashes its DER (~2 us). A purchase
#: asked for the DER of the same three certificates ~20 times (archive rows, sale and
#: purchase machines, payment answers), and for fingerprints ~4 times a statement
#: verified (its certificate's and the root's, twice each).
_DERS: dict[int, tuple[x509.Certificate, bytes, bytes | None]] = {}


def certificate_der(cert: x509.Certificate) -> bytes:
    """``cert.public_bytes(DER)``, encoded once per certificate object."""
    known = _DERS.get(id(cert))
    if known is not None and known[0] is cert:
        return known[1]
    der = cert.public_bytes(_DER)
    _keep(cert, der, None)
    return der


def _keep(cert: x509.Certificate, der: bytes, digest: bytes | None) -> None:
    try:
        while len(_DERS) >= _CACHE_SIZE:
            del _DERS[next(iter(_DERS))]
    except (KeyError, RuntimeError, StopIteration):  # another thread evicted meanwhile
        pass
    _DERS[id(cert)] = (cert, der, digest)


def load_certificate(data: bytes) -> x509.Certificate:
    """Parse one PEM or DER certificate.

    Raises:
        BadCertificate: the bytes are not a certificate, or ``data`` is not bytes
            (a peer's answer may carry anything in its place).
    """
    if not isinstance(data, (bytes, bytearray)):
        raise BadCertificate(f"not a certificate: {type(data).__name__}, not bytes")
    try:
        if data.lstrip().startswith(b"-----"):
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except (ValueError, x509.InvalidVersion) as exc:  # InvalidVersion is no ValueError
        raise BadCertificate(f"not a certificate: {exc}") from exc


def load_crl(data: bytes) -> x509.CertificateRevocationList:
    """Parse one PEM or DER CRL.

    Raises:
        BadCrl: the bytes are not a CRL, or ``data`` is not bytes.
    """
    if not isinstance(data, (bytes, bytearray)):
        raise BadCrl(f"not a CRL: {type(data).__name__}, not bytes")
    try:
        if data.lstrip().startswith(b"-----"):
            return x509.load_pem_x509_crl(data)
        return x509.load_der_x509_crl(data)
    except (ValueError, x509.InvalidVersion) as exc:
        raise BadCrl(f"not a CRL: {exc}") from exc


def validate_crl(
    crl: x509.CertificateRevocationList, *, root: x509.Certificate, now: dt.datetime,
    stale_ok: bool = False,
) -> None:
    """Check that the root signed ``crl`` and that it is not past its next update
    (unless ``stale_ok``: an agent starts with a stale CRL and fetches a fresh one).

    Raises:
        BadCrl: the CRL is forged, from another CA, or dated in the future.
        CrlStale: the CRL is genuine but past its nextUpdate.
    """
    SIGNATURES.check(b"crl" + _crl_digest(crl) + fingerprint(root),
                     lambda: _verify_crl_signature(crl, root))
    if now < crl.last_update_utc - CLOCK_SKEW:
        raise BadCrl("the CRL is dated in the future")
    next_update = crl.next_update_utc
    if next_update is None:
        raise BadCrl("the CRL has no nextUpdate")
    if now > next_update and not stale_ok:
        raise CrlStale(f"the CRL is stale (its nextUpdate was {next_update:%Y-%m-%d %H:%M}Z); "
                       "fetch a fresh one from the CA",
                       detail={"next_update": next_update.strftime("%Y-%m-%dT%H:%M:%SZ")})


def validate_certificate(
    cert: x509.Certificate,
    *,
    root: x509.Certificate,
    crl: x509.CertificateRevocationList,
    now: dt.datetime,
    expected_id: str | None = None,
    expected_role: str | None = None,
    min_level: Level | None = None,
    stale_crl_ok: bool = False,
) -> AgentIdentity:
    """Validate an agent certificate against the market root and CRL at ``now``.

    ``stale_crl_ok`` accepts a CRL past its nextUpdate (still signed by the root and
    still consulted): for our own certificate at start, and for the CA agent's when
    fetching a fresh CRL, never for a peer's.

    Returns:
        The identity the certificate proves.

    Raises:
        CertificateError: a subclass naming the first check that failed.
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware (UTC)")
    _check_issuer(cert, root, now)
    if now < cert.not_valid_before_utc:
        start = cert.not_valid_before_utc
        raise NotYetValid(f"certificate valid only from {start:%Y-%m-%d %H:%M}Z")
    if now > cert.not_valid_after_utc:
        raise Expired(f"certificate expired at {cert.not_valid_after_utc:%Y-%m-%d %H:%M}Z")
    validate_crl(crl, root=root, now=now, stale_ok=stale_crl_ok)
    if crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None:
        raise Revoked(f"certificate {cert.serial_number:x} is revoked")
    _check_usage(cert)
    identity = identity_of(cert)
    if expected_id is not None and identity.agent_id != expected_id:
        raise WrongPeer(
            f"expected agent {expected_id!r}, the certificate names {identity.agent_id!r}"
        )
    if expected_role is not None and identity.role != expected_role:
        raise WrongRole(f"expected role {expected_role!r}, the certificate says {identity.role!r}")
    if min_level is not None and identity.level < min_level:
        raise InsufficientLevel(
            f"level {identity.level.label!r} is below the required {min_level.label!r}"
        )
    return identity


_DER = serialization.Encoding.DER


def _check_issuer(cert: x509.Certificate, root: x509.Certificate, now: dt.datetime) -> None:
    SIGNATURES.check(b"certificate" + fingerprint(cert) + fingerprint(root),
                     lambda: _verify_issued(cert, root))
    if not root.not_valid_before_utc <= now <= root.not_valid_after_utc:
        raise Untrusted("the market root is outside its validity period")


def _verify_issued(cert: x509.Certificate, root: x509.Certificate) -> None:
    """Issued by ``root``: its name, then its signature (both facts of the bytes, so
    checked once per certificate and root, see ``SIGNATURES``)."""
    if cert.issuer != root.subject:
        raise Untrusted("certificate not issued by this market's root")
    try:
        cert.verify_directly_issued_by(root)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise Untrusted("certificate signature does not verify under the market root") from exc


def _verify_crl_signature(crl: x509.CertificateRevocationList, root: x509.Certificate) -> None:
    key = root.public_key()  # Ed25519 (protocol.md 2.4); any other is not our root
    if crl.issuer != root.subject or not isinstance(key, ed25519.Ed25519PublicKey) \
            or not crl.is_signature_valid(key):
        raise BadCrl("the CRL is not signed by the market root")


#: The CRL last digested and its SHA-256 (CRL objects are unhashable; an agent checks
#: one CRL over and over). Holding the object keeps its id from being reused.
_last_crl: tuple[x509.CertificateRevocationList, bytes] | None = None


def _crl_digest(crl: x509.CertificateRevocationList) -> bytes:
    global _last_crl
    last = _last_crl
    if last is not None and last[0] is crl:
        return last[1]
    digest = crl.fingerprint(hashes.SHA256())
    _last_crl = (crl, digest)
    return digest


def _ext(cert: x509.Certificate, kind: type) -> object | None:
    try:
        return cert.extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None
    except (ValueError, x509.DuplicateExtension) as exc:  # duplicate or malformed
        raise BadCertificate(f"malformed extensions: {exc}") from exc


def _check_usage(cert: x509.Certificate) -> None:
    SIGNATURES.check(b"usage" + fingerprint(cert), lambda: _check_usage_now(cert))


def _check_usage_now(cert: x509.Certificate) -> None:
    basic = _ext(cert, x509.BasicConstraints)
    if isinstance(basic, x509.BasicConstraints) and basic.ca:
        raise BadKeyUsage("a CA certificate cannot act as an agent")
    usage = _ext(cert, x509.KeyUsage)
    if not isinstance(usage, x509.KeyUsage) or not usage.digital_signature:
        raise BadKeyUsage("key usage must include digitalSignature")
    eku = _ext(cert, x509.ExtendedKeyUsage)
    wanted = {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    if not isinstance(eku, x509.ExtendedKeyUsage) or not wanted <= set(eku):
        raise BadKeyUsage("extended key usage must include serverAuth and clientAuth")
    if not isinstance(cert.public_key(), ed25519.Ed25519PublicKey):
        raise BadKeyUsage("agent keys are Ed25519")


@functools.lru_cache(maxsize=_CACHE_SIZE)
def identity_of(cert: x509.Certificate) -> AgentIdentity:
    """Read id, role and level from a certificate without judging its validity.

    Raises:
        BadCertificate: the semper fields are missing or inconsistent.
    """
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(cns) != 1 or not isinstance(cns[0].value, str):
        raise BadCertificate("certificate subject needs exactly one common name")
    agent_id = cns[0].value
    try:
        check_agent_id(agent_id, "the certificate's CN")
    except BadAgentId as exc:
        raise BadCertificate(exc.message) from None
    san = _ext(cert, x509.SubjectAlternativeName)
    uris = san.get_values_for_type(x509.UniformResourceIdentifier) if isinstance(
        san, x509.SubjectAlternativeName
    ) else []
    if uris != [f"semper:agent/{agent_id}"]:
        raise BadCertificate(f"SAN must be exactly the URI semper:agent/{agent_id}")
    role, level, liability = _read_policies(cert)
    commitment = read_commitment(cert)
    if commitment is not None:
        try:
            check_pseudonym_profile(agent_id, role, level)
        except ValueError as exc:
            raise BadCertificate(f"not a pseudonym's certificate: {exc}") from None
    return AgentIdentity(
        agent_id=agent_id,
        role=role,
        level=level,
        liability=liability,
        serial=cert.serial_number,
        fingerprint=fingerprint(cert),
        not_after=cert.not_valid_after_utc,
        certificate=cert,
        commitment=commitment,
    )


def _read_policies(cert: x509.Certificate) -> tuple[str, Level, Amount | None]:
    policies = _ext(cert, x509.CertificatePolicies)
    if not isinstance(policies, x509.CertificatePolicies):
        raise BadCertificate("certificate carries no semper policies")
    roles: list[str] = []
    levels: list[tuple[Level, list[str]]] = []
    for info in policies:
        qualifiers = [q for q in info.policy_qualifiers or [] if isinstance(q, str)]
        if info.policy_identifier == ROLE_POLICY:
            roles += [q.removeprefix(ROLE_QUALIFIER_PREFIX) for q in qualifiers
                      if q.startswith(ROLE_QUALIFIER_PREFIX)]
        elif (level := level_from_oid(info.policy_identifier)) is not None:
            levels.append((level, qualifiers))
    if len(roles) != 1 or len(levels) != 1:
        raise BadCertificate("certificate needs exactly one semper role and one level")
    try:
        check_name("the certificate's role", roles[0])
    except BadName as exc:
        raise BadCertificate(exc.message) from None
    level, qualifiers = levels[0]
    liability = None
    if level is Level.LIABLE:
        liability = _read_liability(qualifiers)
    return roles[0], level, liability


def _read_liability(qualifiers: list[str]) -> Amount:
    found = [q.removeprefix(LIABLE_QUALIFIER_PREFIX) for q in qualifiers
             if q.startswith(LIABLE_QUALIFIER_PREFIX)]
    if len(found) != 1:
        raise BadCertificate("level 'liable' needs exactly one liability amount")
    currency, _, units = found[0].partition("/")
    try:
        # ASCII digits, bounded: str.isdigit() admits "²", which int() then refuses.
        if not (units.isascii() and units.isdigit() and len(units) <= 19):
            raise BadAmount(units)
        return Amount(currency, int(units))
    except BadAmount as exc:
        raise BadCertificate(f"bad liability amount {found[0]!r}") from exc
