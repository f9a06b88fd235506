"""Contact cards: a signed statement of type ``directory.card``.

An agent says who it is (agent id and role, as its certificate has them), where it
listens and what services it offers, for a stated period, and signs that with its
own key (``services.statements``). The CA agent keeps the latest card of every agent
and hands it to whoever asks; whoever receives a card checks it offline exactly as
the CA did (``verify_card``), so the CA is trusted to publish, not to vouch.

Card body (the statement's ``body``), all keys required:

    agent       str     the agent id; MUST be the signer certificate's
    role        str     the role; MUST be the signer certificate's
    addresses   [str]   1 to MAX_ADDRESSES "HOST:PORT" where it accepts channels
    services    map     service name -> {"version": int, "modules": [str]}
    not_before  int     validity, Unix ms (UTC); equals the statement's issued_at
    not_after   int     ... at most MAX_VALIDITY_MS after not_before
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from typing import Any, Final

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from ..certificates import (
    CertificateError,
    check_name,
    load_certificate,
    to_ms,
    validate_certificate,
)
from ..statements import MAX_SKEW_MS, Statement, sign_statement, verify_statement
from ._errors import BadCard, BadLookup, CardExpired, CardMismatch

__all__ = [
    "CARD_TYPE",
    "MAX_ADDRESSES",
    "MAX_VALIDITY_MS",
    "ContactCard",
    "Lookup",
    "SignedCard",
    "sign_card",
    "verify_card",
]

CARD_TYPE: Final = "directory.card"
MAX_ADDRESSES: Final = 8
MAX_SERVICES: Final = 64
MAX_MODULES: Final = 32
MAX_VALIDITY_MS: Final = 31 * 86_400_000

_ADDRESS = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]{1,253}):[0-9]{1,5}\Z")
_KEYS: Final = frozenset({"agent", "role", "addresses", "services", "not_before", "not_after"})


@dataclass(frozen=True, slots=True, kw_only=True)
class ContactCard:
    """What a card says. Construction validates every field (``BadCard``)."""

    agent_id: str
    role: str
    addresses: tuple[str, ...]
    not_before_ms: int
    not_after_ms: int
    #: service name -> (version, modules)
    services: dict[str, tuple[int, tuple[str, ...]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        try:
            check_name("agent id", self.agent_id)
            check_name("role", self.role)
        except ValueError as exc:
            raise BadCard(str(exc)) from None
        if type(self.addresses) is not tuple or not 1 <= len(self.addresses) <= MAX_ADDRESSES \
                or not all(isinstance(a, str) and _ADDRESS.match(a) for a in self.addresses):
            raise BadCard(f"addresses must be 1 to {MAX_ADDRESSES} 'HOST:PORT' strings")
        for key in ("not_before_ms", "not_after_ms"):
            value = getattr(self, key)
            if type(value) is not int or not 0 <= value < 1 << 62:
                raise BadCard(f"{key.removesuffix('_ms')} must be Unix milliseconds")
        if not 0 < self.not_after_ms - self.not_before_ms <= MAX_VALIDITY_MS:
            raise BadCard("a card is valid for a positive period of at most 31 days")
        _check_services(self.services)

    def to_body(self) -> dict[str, Any]:
        return {
            "agent": self.agent_id,
            "role": self.role,
            "addresses": list(self.addresses),
            "services": {name: {"version": version, "modules": list(modules)}
                         for name, (version, modules) in sorted(self.services.items())},
            "not_before": self.not_before_ms,
            "not_after": self.not_after_ms,
        }

    @classmethod
    def from_body(cls, body: object) -> ContactCard:
        """Raises BadCard for anything but a card body."""
        if not isinstance(body, dict) or set(body) != _KEYS:
            raise BadCard(f"a card body has exactly the keys {sorted(_KEYS)}")
        addresses, services = body["addresses"], body["services"]
        if not isinstance(addresses, list) or not isinstance(services, dict):
            raise BadCard("addresses must be a list and services a map")
        parsed: dict[str, tuple[int, tuple[str, ...]]] = {}
        for name, info in services.items():
            if not isinstance(info, dict) or set(info) != {"version", "modules"} \
                    or not isinstance(info["modules"], list):
                raise BadCard(f"service {name!r} must be {{version, modules}}")
            parsed[name] = (info["version"], tuple(info["modules"]))
        return cls(agent_id=body["agent"], role=body["role"], addresses=tuple(addresses),
                   services=parsed, not_before_ms=body["not_before"],
                   not_after_ms=body["not_after"])


def _check_services(services: object) -> None:
    if not isinstance(services, dict) or len(services) > MAX_SERVICES:
        raise BadCard(f"services must be a map of at most {MAX_SERVICES}")
    for name, entry in services.items():
        try:
            check_name("service name", name)
        except ValueError as exc:
            raise BadCard(str(exc)) from None
        version, modules = entry if isinstance(entry, tuple) and len(entry) == 2 else (None, None)
        if type(version) is not int or not 0 <= version < 1 << 31:
            raise BadCard(f"service {name!r}: version must be a small non-negative int")
        if not isinstance(modules, tuple) or len(modules) > MAX_MODULES \
                or not all(isinstance(m, str) and 0 < len(m) <= 64 for m in modules):
            raise BadCard(f"service {name!r}: modules must be at most {MAX_MODULES} names")


@dataclass(frozen=True, slots=True)
class SignedCard:
    """A card statement with the certificate that signed it.

    Wire: ``{"card": <statement map>, "certificate": bin (DER)}``.
    """

    statement: Statement
    certificate: x509.Certificate

    def to_wire(self) -> dict[str, Any]:
        return {"card": self.statement.to_wire(),
                "certificate": self.certificate.public_bytes(serialization.Encoding.DER)}

    @classmethod
    def from_wire(cls, value: object) -> SignedCard:
        """Raises BadCard, or MalformedStatement for a malformed statement."""
        if not isinstance(value, dict) or type(value.get("certificate")) is not bytes:
            raise BadCard('a signed card is {"card": statement, "certificate": DER}')
        statement = Statement.from_wire(value.get("card"))
        try:
            certificate = load_certificate(value["certificate"])
        except CertificateError as exc:
            raise BadCard(f"the card's certificate is not readable: {exc.message}") from exc
        return cls(statement, certificate)


def sign_card(card: ContactCard, *, key: ed25519.Ed25519PrivateKey,
              certificate: x509.Certificate, nonce: bytes) -> SignedCard:
    """Sign ``card``; its issue time is its ``not_before``.

    Raises:
        ValueError: ``key`` is not the key of ``certificate``, or a bad nonce.
    """
    statement = sign_statement(CARD_TYPE, card.to_body(), key=key, certificate=certificate,
                               now_ms=card.not_before_ms, nonce=nonce)
    return SignedCard(statement, certificate)


def verify_card(signed: SignedCard, *, root: x509.Certificate,
                crl: x509.CertificateRevocationList, now: dt.datetime) -> ContactCard:
    """Check a card offline: the signature, the signer's certificate (valid now, not
    revoked), that the certificate names the card's agent id and role, and that the
    card is within its validity.

    Raises:
        StatementError, CertificateError: a subclass, from the signature and the
            certificate checks (``statement.*``, ``auth.*``).
        BadCard: the statement's body is not a card, or its issue time is not the
            card's ``not_before``.
        CardMismatch: the certificate names another agent id or role.
        CardExpired: ``now`` is outside the card's validity.
    """
    identity = verify_statement(signed.statement, certificate=signed.certificate, root=root,
                                crl=crl, now=now, expected_type=CARD_TYPE)
    card = ContactCard.from_body(signed.statement.body)
    if signed.statement.issued_at != card.not_before_ms:
        raise BadCard("a card's issue time must be its not_before")
    if (identity.agent_id, identity.role) != (card.agent_id, card.role):
        raise CardMismatch(
            f"the card says {card.agent_id}/{card.role}, its signer's certificate "
            f"{identity.agent_id}/{identity.role}",
            detail={"card": card.agent_id, "signer": identity.agent_id})
    now_ms = to_ms(now)
    if not card.not_before_ms - MAX_SKEW_MS <= now_ms <= card.not_after_ms:
        raise CardExpired(f"the card of {card.agent_id} is valid from {card.not_before_ms} "
                          f"to {card.not_after_ms} (Unix ms), not at {now_ms}",
                          detail={"not_after": card.not_after_ms, "now_ms": now_ms})
    # verify_statement judged the certificate at the issue time; a card must also be
    # backed by a certificate that is valid now.
    validate_certificate(signed.certificate, root=root, crl=crl, now=now)
    return card


@dataclass(frozen=True, slots=True, kw_only=True)
class Lookup:
    """``directory.lookup`` asks for one agent's card or every card of a role.

    Wire: ``{"agent": ID}`` or ``{"role": ROLE}``, exactly one of the two.
    """

    agent_id: str | None = None
    role: str | None = None

    def to_wire(self) -> dict[str, Any]:
        return {"agent": self.agent_id} if self.agent_id is not None else {"role": self.role}

    @classmethod
    def from_wire(cls, body: object) -> Lookup:
        """Raises BadLookup."""
        if not isinstance(body, dict) or len(body) != 1 or not set(body) & {"agent", "role"}:
            raise BadLookup('the body must be {"agent": ID} or {"role": ROLE}')
        (key, value), = body.items()
        try:
            check_name(key, value)
        except ValueError as exc:
            raise BadLookup(str(exc), detail={"key": key}) from None
        return cls(agent_id=value) if key == "agent" else cls(role=value)
