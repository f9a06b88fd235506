"""An agent's credentials on disk and the peer check it applies to every channel."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from semper.services.certificates import (
    AgentIdentity,
    load_certificate,
    load_crl,
    validate_certificate,
    validate_crl,
)
from semper.transport import PeerVerifier, TlsConfig

__all__ = ["Credentials", "KeyError_", "ca_verifier", "check_crl", "crl_is_stale",
           "load_private_key", "peer_verifier", "utcnow"]


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class KeyError_(Exception):
    """The private key file cannot be read (missing, malformed, wrong passphrase)."""

    code = "agent.bad_key"


def load_private_key(path: Path, passphrase: bytes | None) -> ed25519.Ed25519PrivateKey:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise KeyError_(f"cannot read key {path}: {exc.strerror}") from exc
    try:
        key = serialization.load_pem_private_key(data, password=passphrase)
    except TypeError as exc:
        raise KeyError_(f"key {path} is encrypted: give the passphrase file"
                        if passphrase is None else f"key {path}: {exc}") from exc
    except ValueError as exc:
        raise KeyError_(f"cannot decrypt or parse key {path} (wrong passphrase?)") from exc
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise KeyError_(f"key {path} is not an Ed25519 key")
    return key


@dataclass(frozen=True, slots=True)
class Credentials:
    """Everything read from disk to authenticate: our cert and key, root, CRL."""

    cert_path: Path
    key_path: Path
    root: x509.Certificate
    root_pem: bytes
    crl: x509.CertificateRevocationList
    crl_pem: bytes
    passphrase: bytes | None
    identity: AgentIdentity
    key: ed25519.Ed25519PrivateKey  # signs statements; TLS reads the key file itself

    @classmethod
    def load(cls, *, cert: Path, key: Path, root: Path, crl: Path,
             passphrase: bytes | None = None, now: dt.datetime | None = None) -> Credentials:
        """Read and check our own credentials, so a bad setup fails at start, not later.

        Raises:
            OSError: a file is missing. KeyError_: the key is unreadable.
            CertificateError: our certificate does not validate (revoked, expired...),
                or the CRL is not the root's (a merely stale one is accepted).
        """
        root_pem, crl_pem = root.read_bytes(), crl.read_bytes()
        root_cert, crl_obj = load_certificate(root_pem), load_crl(crl_pem)
        own = load_certificate(cert.read_bytes())
        private = load_private_key(key, passphrase)
        if private.public_key() != own.public_key():
            raise KeyError_(f"key {key} does not belong to certificate {cert}")
        # A stale CRL does not stop the start: the agent fetches a fresh one from its
        # CA agent and refuses peers until it has one. A forged or foreign one does.
        identity = validate_certificate(own, root=root_cert, crl=crl_obj, now=now or utcnow(),
                                        stale_crl_ok=True)
        return cls(cert, key, root_cert, root_pem, crl_obj, crl_pem, passphrase, identity,
                   private)

    def tls_config(self) -> TlsConfig:
        return TlsConfig(cert_path=self.cert_path, key_path=self.key_path,
                         root_pem=self.root_pem, crl_pem=self.crl_pem, password=self.passphrase)


def peer_verifier(
    root: x509.Certificate,
    crl: Callable[[], x509.CertificateRevocationList],
    now: Callable[[], dt.datetime] = utcnow,
) -> PeerVerifier:
    """The check each channel runs after TLS: our validation, with the current CRL."""

    def verify(der: bytes, expected_id: str | None) -> AgentIdentity:
        return validate_certificate(load_certificate(der), root=root, crl=crl(), now=now(),
                                    expected_id=expected_id)

    return verify


def ca_verifier(
    root: x509.Certificate,
    crl: Callable[[], x509.CertificateRevocationList],
    now: Callable[[], dt.datetime] = utcnow,
) -> PeerVerifier:
    """The check of the CA agent's certificate on the channel that fetches a fresh CRL
    while ours is stale: everything ``peer_verifier`` checks, on the stale CRL.

    Safe because that channel only carries ``certificates.crl``, whose answer is
    self-authenticating (``check_crl`` checks the root's signature), and serves
    nothing to the CA.
    """

    def verify(der: bytes, expected_id: str | None) -> AgentIdentity:
        return validate_certificate(load_certificate(der), root=root, crl=crl(), now=now(),
                                    expected_id=expected_id, expected_role="ca",
                                    stale_crl_ok=True)

    return verify


def crl_is_stale(crl: x509.CertificateRevocationList, now: dt.datetime | None = None) -> bool:
    """Past its nextUpdate: peers are refused (``auth.crl_stale``) until a fresh one."""
    next_update = crl.next_update_utc
    return next_update is None or (now or utcnow()) > next_update


def check_crl(pem: bytes, root: x509.Certificate, now: dt.datetime | None = None
              ) -> x509.CertificateRevocationList:
    """Parse a CRL and check it came from our root and is current, before it replaces
    the old one."""
    crl = load_crl(pem)
    validate_crl(crl, root=root, now=now or utcnow())
    return crl
