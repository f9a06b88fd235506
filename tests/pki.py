"""Test PKI: a market root and agents written to a folder, built in milliseconds."""

from __future__ import annotations

import datetime as dt
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from semper.agents.runtime._identity import peer_verifier
from semper.services.certificates import (
    CertificateAuthority,
    Level,
    Revocation,
    create_ca,
    issue_agent_certificate,
    issue_crl,
    private_key_pem,
)
from semper.transport import ChannelConfig, ServiceRegistry, TlsConfig, TlsContexts, make_hello

#: One instant for the whole run: tests/conftest.py sets SEMPER_TEST_NOW, which xdist's
#: workers inherit, so that values and test ids built from NOW agree between them.
NOW = dt.datetime.fromtimestamp(float(os.environ.get("SEMPER_TEST_NOW") or time.time()),
                                dt.UTC)


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@dataclass
class TestAgent:
    agent_id: str
    role: str
    cert: x509.Certificate
    key: ed25519.Ed25519PrivateKey
    cert_path: Path
    key_path: Path


@dataclass
class Market:
    """A root CA and its agents under ``folder``; ``crl_pem`` is the current CRL."""

    folder: Path
    ca: CertificateAuthority = field(default_factory=lambda: create_ca("test root", now=NOW))
    revoked: list[Revocation] = field(default_factory=list)
    crl_number: int = 1

    def __post_init__(self) -> None:
        self.crl = issue_crl(self.ca, [], now=NOW, number=self.crl_number)

    @property
    def root_pem(self) -> bytes:
        return pem(self.ca.certificate)

    @property
    def crl_pem(self) -> bytes:
        return self.crl.public_bytes(serialization.Encoding.PEM)

    def agent(self, agent_id: str, role: str = "buyer", **kw: object) -> TestAgent:
        key = ed25519.Ed25519PrivateKey.generate()
        cert = issue_agent_certificate(self.ca, agent_id=agent_id, role=role,
                                       public_key=key.public_key(), now=NOW, **kw)  # type: ignore[arg-type]
        cert_path = self.folder / f"{agent_id}-{cert.serial_number:x}.pem"
        key_path = self.folder / f"{agent_id}-{cert.serial_number:x}-key.pem"
        cert_path.write_bytes(pem(cert))
        key_path.write_bytes(private_key_pem(key))
        return TestAgent(agent_id, role, cert, key, cert_path, key_path)

    def revoke(self, agent: TestAgent) -> None:
        self.revoked.append(Revocation(agent.cert.serial_number, NOW))
        self.crl_number += 1
        self.crl = issue_crl(self.ca, self.revoked, now=NOW, number=self.crl_number)

    def tls(self, agent: TestAgent) -> TlsContexts:
        return TlsContexts(TlsConfig(cert_path=agent.cert_path, key_path=agent.key_path,
                                     root_pem=self.root_pem, crl_pem=self.crl_pem))

    def verifier(self):
        return peer_verifier(self.ca.certificate, lambda: self.crl)

    def hello(self, agent: TestAgent, registry: ServiceRegistry,
              config: ChannelConfig | None = None):
        return make_hello(agent.agent_id, agent.role, registry, config or ChannelConfig())


__all__ = ["NOW", "Level", "Market", "TestAgent", "pem"]
