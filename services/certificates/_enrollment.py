"""Joining a market with a one-time token: the token, the proof, the checks of a CSR.

Theory of operation (DESIGN.md section 2, "Joining"). The CA operator invites an
agent id with a role and a level (``invite``): the CA keeps an ``Invitation`` (the
token id, the secret, what to issue, until when) and hands the operator an
``EnrollmentToken`` to pass on out of band. The token carries, besides the id and the
secret, where the CA's enrollment listener is and the SHA-256 fingerprint of the CA
agent's certificate, so the new agent, which has no root yet, can pin the CA
(``check_ca_certificate``) before it sends anything.

The new agent makes a key, a CSR naming its agent id and signed with that key
(``make_csr``), and proves that it holds the token by sending
``HMAC-SHA256(secret, PROOF_DOMAIN || token id || CSR DER)`` (``enrollment_proof``);
the secret itself never travels after the invitation. The CA looks the invitation up
by id and runs ``check_redemption``: the proof first (someone without the secret
learns nothing about the token), then single use, expiry, and the CSR (its signature
is the proof of possession of the key). Marking the invitation used is the caller's
job, in the same transaction that records the certificate it issues.

Text form of a token: ``semper-enroll-1.`` followed by the base64url encoding (no
padding) of a canonical msgpack map (keys sorted, shortest forms): see
``EnrollmentToken``. The version is in the prefix; a reader refuses any other.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from typing import Any, Final

import msgpack
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.x509.oid import NameOID

from ..money import Amount
from ._errors import (
    BadCsr,
    BadEnrollAnswer,
    BadEnrollRequest,
    BadProof,
    CertificateError,
    CsrKeyMismatch,
    MalformedToken,
    TokenExpired,
    TokenUsed,
    UnknownToken,
    WrongCa,
)
from ._issue import check_name
from ._oids import Level
from ._validate import AgentIdentity, load_certificate, load_crl, validate_certificate

__all__ = [
    "PROOF_DOMAIN",
    "TOKEN_PREFIX",
    "EnrollAnswer",
    "EnrollRequest",
    "Enrolled",
    "EnrollmentToken",
    "Invitation",
    "check_ca_certificate",
    "check_enroll_answer",
    "check_csr",
    "check_redemption",
    "enrollment_proof",
    "invite",
    "make_csr",
]

TOKEN_PREFIX: Final = "semper-enroll-1."
PROOF_DOMAIN: Final = b"semper-enroll-1 proof\x00"
TOKEN_ID_SIZE: Final = 16
SECRET_SIZE: Final = 32
FINGERPRINT_SIZE: Final = 32
MAX_TOKEN_TEXT: Final = 2048
MAX_CSR: Final = 16384

_B64URL = re.compile(r"[A-Za-z0-9_-]+\Z")
_ADDRESS = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):[0-9]{1,5}\Z")
_TOKEN_KEYS = frozenset({"id", "secret", "agent", "role", "ca", "address", "fingerprint",
                         "expires"})


def _canonical(value: dict[str, Any]) -> bytes:
    packed: bytes = msgpack.packb(dict(sorted(value.items())), use_bin_type=True)  # untyped
    return packed


@dataclass(frozen=True, slots=True, kw_only=True)
class EnrollmentToken:
    """What the operator hands to the new agent. Secret: whoever holds it may enroll.

    Wire map (all keys required, no others): ``id`` bin 16, ``secret`` bin 32,
    ``agent`` str (the agent id to enroll), ``role`` str, ``ca`` str (the CA agent's
    id), ``address`` str (``HOST:PORT`` of the CA's enrollment listener),
    ``fingerprint`` bin 32 (SHA-256 of the CA agent's certificate, DER), ``expires``
    int (milliseconds since the Unix epoch, UTC).
    """

    token_id: bytes
    secret: bytes
    agent_id: str
    role: str
    ca_id: str
    ca_address: str
    ca_fingerprint: bytes
    expires_ms: int

    def __post_init__(self) -> None:
        _check_bytes("id", self.token_id, TOKEN_ID_SIZE)
        _check_bytes("secret", self.secret, SECRET_SIZE)
        _check_bytes("fingerprint", self.ca_fingerprint, FINGERPRINT_SIZE)
        for kind, value in (("agent", self.agent_id), ("role", self.role), ("ca", self.ca_id)):
            try:
                check_name(kind, value)
            except ValueError as exc:
                raise MalformedToken(f"token field {kind}: {exc}") from None
        if not isinstance(self.ca_address, str) or not _ADDRESS.match(self.ca_address):
            raise MalformedToken(f"token field address must be HOST:PORT, got "
                                 f"{self.ca_address!r}")
        if type(self.expires_ms) is not int or not 0 < self.expires_ms < 1 << 63:
            raise MalformedToken("token field expires must be a positive int (ms)")

    def to_wire(self) -> dict[str, Any]:
        return {"id": self.token_id, "secret": self.secret, "agent": self.agent_id,
                "role": self.role, "ca": self.ca_id, "address": self.ca_address,
                "fingerprint": self.ca_fingerprint, "expires": self.expires_ms}

    def encode(self) -> str:
        """The one-line text form: ``semper-enroll-1.<base64url>``."""
        raw = _canonical(self.to_wire())
        return TOKEN_PREFIX + base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")

    @classmethod
    def parse(cls, text: str) -> EnrollmentToken:
        """Read a token from its text form (surrounding white space is ignored).

        Raises:
            MalformedToken: anything but a well-formed version-1 token.
        """
        if not isinstance(text, str):
            raise MalformedToken("a token is text")
        text = text.strip()
        if len(text) > MAX_TOKEN_TEXT:
            raise MalformedToken(f"token longer than {MAX_TOKEN_TEXT} characters")
        if not text.startswith(TOKEN_PREFIX):
            raise MalformedToken(f"not an enrollment token (it must start with {TOKEN_PREFIX!r})")
        body = text.removeprefix(TOKEN_PREFIX)
        if not _B64URL.match(body) or len(body) % 4 == 1:
            raise MalformedToken("the token is not base64url after its prefix (truncated "
                                 "or mistyped?)")
        raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        try:
            value = msgpack.unpackb(raw, raw=False, strict_map_key=True, use_list=True,
                                    max_str_len=256, max_bin_len=64, max_array_len=0,
                                    max_map_len=len(_TOKEN_KEYS), max_ext_len=0)
        except Exception as exc:  # msgpack raises many types for hostile bytes
            raise MalformedToken("the token's content is not readable (truncated or "
                                 "mistyped?)") from exc
        if not isinstance(value, dict) or set(value) != _TOKEN_KEYS:
            raise MalformedToken("the token does not have the fields of a version-1 token")
        token = cls(token_id=value["id"], secret=value["secret"], agent_id=value["agent"],
                    role=value["role"], ca_id=value["ca"], ca_address=value["address"],
                    ca_fingerprint=value["fingerprint"], expires_ms=value["expires"])
        if _canonical(token.to_wire()) != raw:
            raise MalformedToken("the token is not canonically encoded")
        return token


def _check_bytes(name: str, value: object, size: int) -> None:
    if type(value) is not bytes or len(value) != size:
        raise MalformedToken(f"token field {name} must be {size} bytes")


@dataclass(frozen=True, slots=True, kw_only=True)
class Invitation:
    """The CA's record of a token: what to issue, until when, and whether it was used."""

    token_id: bytes
    secret: bytes
    agent_id: str
    role: str
    level: Level
    liability: Amount | None
    created_ms: int
    expires_ms: int
    used_ms: int | None = None


def invite(
    *,
    agent_id: str,
    role: str,
    level: Level,
    liability: Amount | None,
    now_ms: int,
    expires_in_ms: int,
    ca_id: str,
    ca_address: str,
    ca_fingerprint: bytes,
) -> tuple[Invitation, EnrollmentToken]:
    """A new invitation (for the CA's database) and its token (for the new agent).

    Raises:
        ValueError: a bad id or role, a non-positive lifetime, or a liability amount
            that does not fit the level (``liable`` needs a positive one, no other
            level takes one).
    """
    check_name("agent id", agent_id)
    check_name("role", role)
    if expires_in_ms <= 0:
        raise ValueError("a token must be valid for a positive time")
    if level is Level.LIABLE:
        if liability is None or liability.minor_units <= 0:
            raise ValueError("level 'liable' needs a positive liability amount")
    elif liability is not None:
        raise ValueError("a liability amount is only carried at level 'liable'")
    token_id, secret = secrets.token_bytes(TOKEN_ID_SIZE), secrets.token_bytes(SECRET_SIZE)
    expires_ms = now_ms + expires_in_ms
    invitation = Invitation(token_id=token_id, secret=secret, agent_id=agent_id, role=role,
                            level=level, liability=liability, created_ms=now_ms,
                            expires_ms=expires_ms)
    token = EnrollmentToken(token_id=token_id, secret=secret, agent_id=agent_id, role=role,
                            ca_id=ca_id, ca_address=ca_address, ca_fingerprint=ca_fingerprint,
                            expires_ms=expires_ms)
    return invitation, token


def enrollment_proof(secret: bytes, token_id: bytes, csr_der: bytes) -> bytes:
    """``HMAC-SHA256(secret, PROOF_DOMAIN || token_id || csr_der)``: binds the CSR to
    the token (the id has a fixed length, so the concatenation is unambiguous)."""
    return hmac.new(secret, PROOF_DOMAIN + token_id + csr_der, hashlib.sha256).digest()


def check_ca_certificate(token: EnrollmentToken, der: bytes) -> None:
    """The pin: the enrollment server's certificate is the one the token names.

    Raises:
        WrongCa: its SHA-256 differs from the token's fingerprint.
    """
    got = hashlib.sha256(der).digest()
    if not hmac.compare_digest(got, token.ca_fingerprint):
        raise WrongCa(
            f"the server at {token.ca_address} is not the CA the token names "
            f"(certificate SHA-256 {got.hex()[:16]}..., the token pins "
            f"{token.ca_fingerprint.hex()[:16]}...)",
            detail={"expected": token.ca_fingerprint.hex(), "got": got.hex()})


def make_csr(key: ed25519.Ed25519PrivateKey, agent_id: str) -> bytes:
    """A CSR (DER) with subject ``CN=<agent_id>``, signed by ``key``."""
    check_name("agent id", agent_id)
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, agent_id)]))
           .sign(key, None))
    return csr.public_bytes(serialization.Encoding.DER)


def check_csr(csr_der: bytes, *, agent_id: str) -> ed25519.Ed25519PublicKey:
    """Check a CSR and return the key to certify.

    Raises:
        BadCsr: not a DER CSR, not an Ed25519 key, or a subject other than exactly
            ``CN=<agent_id>``.
        CsrKeyMismatch: its signature does not verify under its own key.
    """
    if type(csr_der) is not bytes or len(csr_der) > MAX_CSR:
        raise BadCsr(f"the CSR must be DER bytes, at most {MAX_CSR}")
    try:
        csr = x509.load_der_x509_csr(csr_der)
        key = csr.public_key()
        subject = csr.subject
    except (ValueError, UnsupportedAlgorithm, x509.InvalidVersion) as exc:
        raise BadCsr(f"not a readable CSR: {exc}") from exc
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise BadCsr("the CSR's key must be Ed25519")
    try:
        valid = csr.is_signature_valid
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise CsrKeyMismatch(f"the CSR's signature cannot be checked: {exc}") from exc
    if not valid:
        raise CsrKeyMismatch("the CSR's signature does not verify under the key it "
                             "carries: no proof of possession of that key")
    expected = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, agent_id)])
    if subject != expected:
        raise BadCsr(f"the CSR's subject must be exactly CN={agent_id}, got "
                     f"{subject.rfc4514_string()!r}", detail={"expected": agent_id})
    return key


def check_redemption(
    invitation: Invitation | None, *, proof: bytes, csr_der: bytes, now_ms: int
) -> ed25519.Ed25519PublicKey:
    """Decide an enrollment request against the invitation found for its token id.

    The order matters: the proof is checked before anything about the token is
    revealed (used, expired), so only the holder of the secret learns those.

    Returns:
        The key to certify, for ``invitation``'s id, role and level.

    Raises:
        UnknownToken, BadProof, TokenUsed, TokenExpired, BadCsr, CsrKeyMismatch.
    """
    if invitation is None:
        raise UnknownToken("the CA knows no such token (mistyped, or from another market?)")
    expected = enrollment_proof(invitation.secret, invitation.token_id, csr_der)
    if type(proof) is not bytes or not hmac.compare_digest(proof, expected):
        raise BadProof("the proof does not match the token's secret and this CSR")
    if invitation.used_ms is not None:
        raise TokenUsed(f"the token for {invitation.agent_id!r} was used already; "
                        "ask the CA operator for a new one")
    if now_ms >= invitation.expires_ms:
        raise TokenExpired(f"the token for {invitation.agent_id!r} has expired; "
                           "ask the CA operator for a new one")
    return check_csr(csr_der, agent_id=invitation.agent_id)


@dataclass(frozen=True, slots=True, kw_only=True)
class EnrollRequest:
    """The body of ``enroll.request``: ``{"token": bin 16, "csr": bin, "proof": bin 32}``."""

    token_id: bytes
    csr_der: bytes
    proof: bytes

    def to_wire(self) -> dict[str, Any]:
        return {"token": self.token_id, "csr": self.csr_der, "proof": self.proof}

    @classmethod
    def from_wire(cls, body: object) -> EnrollRequest:
        """Raises BadEnrollRequest for anything but the map above."""
        if not isinstance(body, dict):
            raise BadEnrollRequest("the body of enroll.request must be a map")
        for key, size in (("token", TOKEN_ID_SIZE), ("proof", 32)):
            value = body.get(key)
            if type(value) is not bytes or len(value) != size:
                raise BadEnrollRequest(f"{key} must be {size} bytes", detail={"key": key})
        csr = body.get("csr")
        if type(csr) is not bytes or not 0 < len(csr) <= MAX_CSR:
            raise BadEnrollRequest(f"csr must be 1 to {MAX_CSR} bytes", detail={"key": "csr"})
        return cls(token_id=body["token"], csr_der=csr, proof=body["proof"])


@dataclass(frozen=True, slots=True, kw_only=True)
class EnrollAnswer:
    """The answer to ``enroll.request``: ``{"certificate": bin, "root": bin, "crl": bin,
    "ca": {"id": str, "address": str}}``, certificates and CRL in DER; ``ca.address``
    is the CA agent's channel address (``HOST:PORT``, mutual TLS)."""

    certificate: bytes
    root: bytes
    crl: bytes
    ca_id: str
    ca_address: str

    def to_wire(self) -> dict[str, Any]:
        return {"certificate": self.certificate, "root": self.root, "crl": self.crl,
                "ca": {"id": self.ca_id, "address": self.ca_address}}

    @classmethod
    def from_wire(cls, body: object) -> EnrollAnswer:
        """Raises BadEnrollAnswer for anything but the map above."""
        if not isinstance(body, dict) or not isinstance(body.get("ca"), dict):
            raise BadEnrollAnswer("the answer to enroll.request must be a map with 'ca'")
        for key in ("certificate", "root", "crl"):
            if type(body.get(key)) is not bytes:
                raise BadEnrollAnswer(f"{key} must be DER bytes", detail={"key": key})
        ca = body["ca"]
        ca_id, address = ca.get("id"), ca.get("address")
        if not isinstance(ca_id, str) or not isinstance(address, str) \
                or not _ADDRESS.match(address):
            raise BadEnrollAnswer("ca must be {id, address: HOST:PORT}", detail={"key": "ca"})
        return cls(certificate=body["certificate"], root=body["root"], crl=body["crl"],
                   ca_id=ca_id, ca_address=address)


@dataclass(frozen=True, slots=True, kw_only=True)
class Enrolled:
    """What a newcomer keeps from a checked answer."""

    certificate: x509.Certificate
    root: x509.Certificate
    crl: x509.CertificateRevocationList
    identity: AgentIdentity
    ca_id: str
    ca_address: str


def check_enroll_answer(
    answer: EnrollAnswer,
    *,
    token: EnrollmentToken,
    ca_certificate: bytes,
    public_key: ed25519.Ed25519PublicKey,
    now: dt.datetime,
) -> Enrolled:
    """The newcomer's checks once it has a root: the root is a self-signed CA, the
    pinned CA agent certificate (``ca_certificate``, DER, as seen in TLS) and our new
    certificate both validate under it and its CRL, with the ids and role the token
    names, and the new certificate certifies our key.

    Raises:
        BadEnrollAnswer: unreadable parts, a root that is not a self-signed CA, a
            certificate for another key or another CA agent than the token's.
        CertificateError: a subclass, from validating the two certificates.
    """
    try:
        root = load_certificate(answer.root)
        crl = load_crl(answer.crl)
        certificate = load_certificate(answer.certificate)
        ca_cert = load_certificate(ca_certificate)
    except CertificateError as exc:
        raise BadEnrollAnswer(f"the CA's answer is not readable: {exc.message}") from exc
    try:
        root.verify_directly_issued_by(root)
        basic = root.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        basic = None
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise BadEnrollAnswer("the root the CA sent is not self-signed") from exc
    if basic is None or not basic.ca:
        raise BadEnrollAnswer("the root the CA sent is not a CA certificate")
    if answer.ca_id != token.ca_id:
        raise BadEnrollAnswer(f"the answer names CA agent {answer.ca_id!r}, the token "
                              f"{token.ca_id!r}")
    validate_certificate(ca_cert, root=root, crl=crl, now=now, expected_id=token.ca_id,
                         expected_role="ca")
    identity = validate_certificate(certificate, root=root, crl=crl, now=now,
                                    expected_id=token.agent_id, expected_role=token.role)
    if certificate.public_key() != public_key:
        raise BadEnrollAnswer("the certificate the CA sent is for another key")
    return Enrolled(certificate=certificate, root=root, crl=crl, identity=identity,
                    ca_id=answer.ca_id, ca_address=answer.ca_address)
