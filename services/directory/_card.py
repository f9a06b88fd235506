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

import dataclasses
import datetime as dt
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final, NoReturn, Self

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from .._schema import AGENT, STATEMENT_AS_IS, TIME, Body, Kind, Schema, wire
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
    "PublishAnswer",
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


def _services_from_wire(value: object) -> dict[str, tuple[int, tuple[str, ...]]]:
    if type(value) is not dict:
        raise ValueError("a map of service name -> {version, modules}")
    parsed: dict[str, tuple[int, tuple[str, ...]]] = {}
    for name, info in value.items():
        if type(info) is not dict or info.keys() != {"version", "modules"} \
                or type(info["modules"]) is not list:
            raise ValueError(f"service {name!r:.80} must be {{version, modules}}")
        parsed[name] = (info["version"], tuple(info["modules"]))
    return parsed


def _services_to_wire(services: dict[str, tuple[int, tuple[str, ...]]]) -> dict[str, Any]:
    return {name: {"version": version, "modules": list(modules)}
            for name, (version, modules) in sorted(services.items())}


def _good_services(services: object) -> bool:
    if type(services) is not dict or len(services) > MAX_SERVICES:
        return False
    for name, entry in services.items():
        version, modules = entry if type(entry) is tuple and len(entry) == 2 else (None, None)
        if not _is_name(name) or type(version) is not int or not 0 <= version < 1 << 31 \
                or type(modules) is not tuple or len(modules) > MAX_MODULES \
                or not all(type(m) is str and 0 < len(m) <= 64 for m in modules):
            return False
    return True


def _is_name(value: object) -> bool:
    return AGENT.check(value)  # roles and service names share the agent id grammar


#: What a signed card travels as, and (``directory.publish``) its answer.
SIGNED_CARD_TYPE: Final = "directory.signed_card"
PUBLISH_TYPE: Final = "directory.publish"


def _certificate_or_as_is(value: object) -> object:
    if type(value) is not bytes:  # refused at once, before the card's statement
        raise ValueError("DER bytes")
    try:
        return load_certificate(value)
    except CertificateError:
        return value  # refused by the check, after the card's statement


def _unreadable_certificate(value: object) -> BadCard:
    try:
        load_certificate(value)  # type: ignore[arg-type]
        reason = "DER bytes, where a loaded certificate was expected"
    except CertificateError as exc:
        reason = exc.message
    return BadCard(f"the card's certificate is not readable: {reason}",
                   detail={"type": SIGNED_CARD_TYPE, "field": "certificate"})

#: Every key of a card body, a signed card and a publish answer has its one kind
#: (``services._schema``).
SCHEMA: Final = Schema(BadCard, {
    "agent": AGENT,
    "role": Kind("a role (1-63 of a-z 0-9 . _ -)", _is_name),
    "addresses": Kind(
        f"1 to {MAX_ADDRESSES} 'HOST:PORT' strings",
        lambda v: type(v) is tuple and 1 <= len(v) <= MAX_ADDRESSES
        and all(type(a) is str and _ADDRESS.match(a) for a in v),
        decode=lambda v: tuple(v) if type(v) is list else _refuse("a list"), encode=list),
    "services": Kind(
        f"a map of at most {MAX_SERVICES} services, each (version, at most {MAX_MODULES} "
        "module names)", _good_services, decode=_services_from_wire, encode=_services_to_wire),
    "not_before": TIME, "not_after": TIME,
    # A malformed card statement is the statement layer's refusal (statement.malformed).
    "card": STATEMENT_AS_IS,
    "certificate": Kind("a certificate (DER)", lambda v: isinstance(v, x509.Certificate),
                        decode=_certificate_or_as_is,
                        encode=lambda v: v.public_bytes(serialization.Encoding.DER),
                        refuse=_unreadable_certificate),
})


def _refuse(what: str) -> NoReturn:
    raise ValueError(what)


@dataclass(frozen=True, slots=True, kw_only=True)
class ContactCard(Body):
    """What a card says. Construction validates every field (``BadCard``, detail
    ``type`` ``directory.card`` and ``field``, the wire key)."""

    TYPE: ClassVar[str] = CARD_TYPE
    SCHEMA: ClassVar[Schema] = SCHEMA

    agent_id: str = field(metadata=wire(key="agent"))
    role: str
    addresses: tuple[str, ...]
    not_before_ms: int = field(metadata=wire(key="not_before"))
    not_after_ms: int = field(metadata=wire(key="not_after"))
    #: service name -> (version, modules)
    services: dict[str, tuple[int, tuple[str, ...]]] = field(default_factory=dict)

    def _check(self) -> None:
        if not 0 < self.not_after_ms - self.not_before_ms <= MAX_VALIDITY_MS:
            SCHEMA.fail(CARD_TYPE, "not_after",
                        "must be after not_before, by at most 31 days")


@dataclass(frozen=True, slots=True)
class SignedCard(Body):
    """A card statement with the certificate that signed it: the request of
    ``directory.publish``, and what ``directory.lookup`` answers.

    Wire: ``{"card": <statement map>, "certificate": bin (DER)}``. ``from_wire``
    raises BadCard (detail ``type`` ``directory.signed_card``, ``field``), or the
    statement layer's error (``statement.malformed``, ...) for a malformed card.
    """

    TYPE: ClassVar[str] = SIGNED_CARD_TYPE
    SCHEMA: ClassVar[Schema] = SCHEMA

    statement: Statement = field(metadata=wire(key="card"))
    certificate: x509.Certificate


@dataclass(frozen=True, slots=True, kw_only=True)
class PublishAnswer(Body):
    """``directory.publish``'s answer: whose card the directory keeps, until when."""

    TYPE: ClassVar[str] = PUBLISH_TYPE
    SCHEMA: ClassVar[Schema] = SCHEMA

    agent_id: str = field(metadata=wire(key="agent"))
    not_after_ms: int = field(metadata=wire(key="not_after"))


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


LOOKUP_TYPE: Final = "directory.lookup"


def _name_refusal(key: str) -> Any:
    def refuse(value: object) -> BadLookup:
        try:
            check_name(key, value)  # type: ignore[arg-type]
            why = f"{key} is not a name"
        except ValueError as exc:
            why = str(exc)
        return BadLookup(why, detail={"type": LOOKUP_TYPE, "field": key, "key": key})
    return refuse


#: ``directory.lookup``'s keys mean what they mean in a card; its refusals are
#: ``directory.bad_lookup`` (a bad id or role also with detail ``key``, as before).
LOOKUP_SCHEMA: Final = Schema(BadLookup, {
    "agent": dataclasses.replace(AGENT, refuse=_name_refusal("agent")),
    "role": dataclasses.replace(SCHEMA.kinds["role"], refuse=_name_refusal("role")),
})


@dataclass(frozen=True, slots=True, kw_only=True)
class Lookup(Body):
    """``directory.lookup`` asks for one agent's card or every card of a role.

    Wire: ``{"agent": ID}`` or ``{"role": ROLE}``, exactly one of the two.
    """

    TYPE: ClassVar[str] = LOOKUP_TYPE
    SCHEMA: ClassVar[Schema] = LOOKUP_SCHEMA

    agent_id: str | None = field(default=None, metadata=wire(key="agent"))
    role: str | None = None

    def _check(self) -> None:
        if (self.agent_id is None) == (self.role is None):
            LOOKUP_SCHEMA.fail(LOOKUP_TYPE, "body", 'must be {"agent": ID} or {"role": ROLE}')

    @classmethod
    def from_wire(cls, value: object) -> Self:
        """Raises BadLookup (also for ``{"agent": ID, "role": nil}``: one key)."""
        if type(value) is dict and len(value) != 1:
            LOOKUP_SCHEMA.fail(LOOKUP_TYPE, "body", 'must be {"agent": ID} or {"role": ROLE}')
        return super(Lookup, cls).from_wire(value)  # slots: no bare super()
