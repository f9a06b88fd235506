"""Issuing the market's certificates and CRLs (Ed25519, real X.509).

Pure functions: keys and ``now`` come in, objects go out. Every certificate is one
that ``openssl verify -CAfile root.pem`` accepts and that serves as both TLS client
and TLS server, because every agent both dials and listens.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import ClassVar, Final

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .._errors import ServiceError
from ..money import Amount
from ._oids import (
    LIABLE_QUALIFIER_PREFIX,
    ROLE_POLICY,
    ROLE_QUALIFIER_PREFIX,
    Level,
    level_oid,
)

__all__ = [
    "CLOCK_SKEW",
    "CRL_VALIDITY",
    "NAME_PATTERN",
    "BadAgentId",
    "BadName",
    "CertificateAuthority",
    "Revocation",
    "check_agent_id",
    "check_name",
    "create_ca",
    "crl_renewal_due",
    "issue_agent_certificate",
    "issue_crl",
    "renew_crl",
]

#: How far a verifier's clock may be behind the CA's. Every date the CA signs as a
#: start (a certificate's notBefore, a CRL's thisUpdate) is backdated by it, because
#: OpenSSL allows no skew at all; ``validate_crl`` allows it too, for a CRL issued
#: before thisUpdate was backdated.
CLOCK_SKEW: Final = dt.timedelta(minutes=5)

#: How long a CRL is good for (its nextUpdate - now at issue). The CA agent issues
#: the next one when less than half of it is left (``crl_renewal_due``).
CRL_VALIDITY: Final = dt.timedelta(days=30)

#: The grammar of agent ids and role names (docs/protocol.md section 2.1). Defined here
#: once: certificates, configs, wire bodies and the command line all check with it.
NAME_PATTERN: Final = r"[a-z0-9][a-z0-9._-]{0,62}"
_NAME = re.compile(NAME_PATTERN + r"\Z")  # \Z, not $: "buyer\n" is not an id


class BadName(ServiceError, ValueError):
    """A name (role, module, service) that is not of the grammar of section 2.1.

    A ValueError too, so callers that turn a bad name into their own code keep doing so.
    """

    code: ClassVar[str] = "name.malformed"

    def __str__(self) -> str:
        return self.message


class BadAgentId(BadName):
    """An agent id that is not of the grammar (a look-alike, a path, upper case...)."""

    code: ClassVar[str] = "agent.bad_id"


def _describe(kind: str, value: object) -> str:
    return (f"{kind} must be 1-63 characters of a-z, 0-9, '.', '_', '-' "
            f"starting with a letter or digit, got {value!r:.80}")


def check_name(kind: str, value: str) -> str:
    """Agent ids and roles are short lowercase tokens, safe in URIs and file names.

    Raises:
        BadName: ``value`` is not such a token (a ValueError).
    """
    if not isinstance(value, str) or not _NAME.match(value):
        raise BadName(_describe(kind, value), detail={"kind": kind})
    return value


def check_agent_id(value: object, kind: str = "agent id") -> str:
    """``value`` if it is a well-formed agent id; ``kind`` names it in the message.

    Raises:
        BadAgentId: it is not (a ValueError).
    """
    if not isinstance(value, str) or not _NAME.match(value):
        raise BadAgentId(_describe(kind, value), detail={"kind": kind})
    return value


@dataclass(frozen=True, slots=True)
class CertificateAuthority:
    """The market root: its signing key and self-signed certificate."""

    key: ed25519.Ed25519PrivateKey
    certificate: x509.Certificate


@dataclass(frozen=True, slots=True)
class Revocation:
    serial: int
    revoked_at: dt.datetime


def create_ca(
    name: str, *, now: dt.datetime, days: int = 3650, key: ed25519.Ed25519PrivateKey | None = None
) -> CertificateAuthority:
    key = key or ed25519.Ed25519PrivateKey.generate()
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "semper market"),
            x509.NameAttribute(NameOID.COMMON_NAME, name),
        ]
    )
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .sign(key, None)
    )
    return CertificateAuthority(key=key, certificate=cert)


def _policies(role: str, level: Level, liability: Amount | None) -> x509.CertificatePolicies:
    level_qualifiers: list[str] | None = None
    if level is Level.LIABLE:
        if liability is None or liability.minor_units <= 0:
            raise ValueError("level 'liable' needs a positive liability amount")
        level_qualifiers = [
            f"{LIABLE_QUALIFIER_PREFIX}{liability.currency}/{liability.minor_units}"
        ]
    elif liability is not None:
        raise ValueError("a liability amount is only carried at level 'liable'")
    return x509.CertificatePolicies(
        [
            x509.PolicyInformation(ROLE_POLICY, [f"{ROLE_QUALIFIER_PREFIX}{role}"]),
            x509.PolicyInformation(level_oid(level), level_qualifiers),
        ]
    )


def issue_agent_certificate(
    ca: CertificateAuthority,
    *,
    agent_id: str,
    role: str,
    public_key: ed25519.Ed25519PublicKey,
    now: dt.datetime,
    level: Level = Level.SELF_ASSERTED,
    liability: Amount | None = None,
    days: int = 365,
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
    commitment: bytes | None = None,
) -> x509.Certificate:
    """Issue an agent's certificate: CN and SAN name the agent, policies its role and level.

    ``not_before``/``not_after`` override the validity window (tests make expired ones).
    ``commitment`` makes it a pseudonym's (protocol.md 2.7): the extension that commits
    to the real id, which ``agent_id`` (a pseudonym id) does not show.

    Raises:
        ValueError: a bad id or role, a liability amount that does not fit the level,
            or a pseudonym that may not hold this role or level.
    """
    check_agent_id(agent_id)
    check_name("role", role)
    extra: list[x509.ExtensionType] = []
    if commitment is not None:
        from ._pseudonym import check_pseudonym_profile, pseudonym_extension  # a cycle

        check_pseudonym_profile(agent_id, role, level)
        extra.append(pseudonym_extension(commitment))
    if not isinstance(public_key, ed25519.Ed25519PublicKey):
        raise TypeError("agent keys are Ed25519")
    start = not_before or now - CLOCK_SKEW
    end = not_after or now + dt.timedelta(days=days)
    ca_ski = ca.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, agent_id)]))
        .issuer_name(ca.certificate.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=True,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(f"semper:agent/{agent_id}")]
            ),
            critical=False,
        )
        .add_extension(_policies(role, level, liability), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
    )
    for extension in extra:
        builder = builder.add_extension(extension, critical=False)
    return builder.sign(ca.key, None)


def issue_crl(
    ca: CertificateAuthority,
    revoked: Iterable[Revocation],
    *,
    now: dt.datetime,
    number: int,
    next_update: dt.timedelta = CRL_VALIDITY,
) -> x509.CertificateRevocationList:
    """Sign a complete CRL. ``number`` must grow with every CRL the CA publishes.

    thisUpdate is ``now - CLOCK_SKEW``, so a verifier whose clock is behind ours by
    up to that much already accepts it (OpenSSL refuses a CRL from the future).
    """
    ca_ski = ca.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.certificate.subject)
        .last_update(now - CLOCK_SKEW)
        .next_update(now + next_update)
        .add_extension(x509.CRLNumber(number), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
    )
    for entry in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(entry.serial)
            .revocation_date(entry.revoked_at)
            .build()
        )
    return builder.sign(ca.key, None)


def renew_crl(
    ca: CertificateAuthority,
    old: x509.CertificateRevocationList,
    *,
    now: dt.datetime,
    revoke: Iterable[int] = (),
) -> x509.CertificateRevocationList:
    """The CRL after ``old``: its entries (and their dates) plus ``revoke``'s serials
    revoked at ``now``, numbered one more, good for ``CRL_VALIDITY`` from ``now``."""
    entries = {r.serial_number: r.revocation_date_utc for r in old}
    for serial in revoke:
        entries.setdefault(serial, now)
    try:
        number = old.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number + 1
    except x509.ExtensionNotFound:
        number = 1
    return issue_crl(ca, [Revocation(s, t) for s, t in sorted(entries.items())], now=now,
                     number=number)


def crl_renewal_due(crl: x509.CertificateRevocationList, now: dt.datetime) -> bool:
    """Whether less than half of ``crl``'s validity is left at ``now`` (or none):
    the CA agent then issues the next one, long before anyone finds it stale."""
    next_update = crl.next_update_utc
    if next_update is None:
        return True
    return now >= crl.last_update_utc + (next_update - crl.last_update_utc) / 2


def private_key_pem(key: ed25519.Ed25519PrivateKey, passphrase: bytes | None = None) -> bytes:
    """PKCS#8 PEM, encrypted with the best available scheme when a passphrase is given."""
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase)
        if passphrase
        else serialization.NoEncryption()
    )
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )
