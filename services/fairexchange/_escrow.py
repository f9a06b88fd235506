"""Escrow: content under a fresh key, the key HPKE-sealed to the notary, both labelled.

Theory of operation. Certified mail and fair purchase give the receiver a ciphertext
first and the key later; if the key never comes, the notary opens the escrow and
gives it. Three layers, each bound to the exchange so nothing moves between them:

* the *content*: ``nonce (12) || ChaCha20-Poly1305(key, nonce, plaintext, aad)``
  under a fresh 32-byte key, ``aad`` the canonical map of the label
  (``protocol``, ``purpose``, ``exchange``, ``sender``, ``receiver``, ``notary``);
* the *escrow*: the key sealed with HPKE (RFC 9180, base mode, single shot:
  ``enc || ct``) in the suite DHKEM(X25519, HKDF-SHA256), HKDF-SHA256,
  ChaCha20-Poly1305 to the notary's X25519 escrow key; its ``info`` (RFC 9180
  section 8.1: the single-shot API's auxiliary authenticated data) is the canonical
  map of the label plus the ciphertext's SHA-256, so an escrow opens only for its
  exchange, its parties, its notary, its purpose and its ciphertext (a moved escrow
  fails to open, which is a bad escrow);
* the notary's escrow key: a ``notary.escrow_key`` statement the notary signs
  (the X25519 public key, the notary's id, a validity window), which parties check
  with the market root before sealing to it.

``recover`` is the notary's one check: the escrow opens, its key opens the
ciphertext, the plaintext has the digest the sender signed. Each failure is
``BadEscrow`` with a ``reason`` the notary copies into its signed finding.
Randomness (the content key, the nonce) comes in; HPKE draws its own ephemeral key.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Final

from cryptography import x509
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric import ed25519, x25519
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.hpke import AEAD, KDF, KEM, Suite

from .._schema import AGENT, DIGEST, STATEMENT, TIME, Body, Schema, binary, form, wire
from ..statements import Statement, canonical_encode, sign_statement, verify_statement
from ._bodies import CERTIFICATES
from ._errors import BadBody, BadEscrow, BadEscrowKey, BadKey

__all__ = [
    "ESCROW_KEY_TYPE",
    "ESCROW_SIZE",
    "EXCHANGE_SIZE",
    "KEY_SIZE",
    "NONCE_SIZE",
    "PROTOCOL",
    "PURPOSES",
    "SCHEMA",
    "EscrowKey",
    "EscrowKeyRequest",
    "EscrowKeyWire",
    "EscrowLabel",
    "check_escrow_key",
    "digest",
    "open_content",
    "open_escrow",
    "recover",
    "seal",
    "seal_content",
    "seal_key",
    "sign_escrow_key",
]

#: Names this escrow format in every label: a label of another protocol never matches.
PROTOCOL: Final = "semper-escrow-v1"
#: What an escrowed content is for: a certified mail's message, a fair purchase's goods.
PURPOSES: Final = frozenset({"mail", "goods"})
ESCROW_KEY_TYPE: Final = "notary.escrow_key"
KEY_SIZE: Final = 32
NONCE_SIZE: Final = 12
EXCHANGE_SIZE: Final = 32
_TAG: Final = 16
#: RFC 9180 suite: KEM 0x0020, KDF 0x0001, AEAD 0x0003.
SUITE: Final = Suite(KEM.X25519, KDF.HKDF_SHA256, AEAD.CHACHA20_POLY1305)
#: enc (Npk 32) || sealed key (32) || tag (16).
ESCROW_SIZE: Final = 32 + KEY_SIZE + _TAG
#: The role whose certificate may sign an escrow key.
NOTARY_ROLE: Final = "notary"

#: One meaning per key, for every body of this package's escrow, mail and fair purchase.
SCHEMA: Final = Schema(BadBody, {
    "key": binary(32, 32, "32 bytes (an X25519 public key)"),
    "notary": AGENT, "sender": AGENT, "receiver": AGENT, "seller": AGENT, "buyer": AGENT,
    "valid_from": TIME, "valid_until": TIME, "deadline": TIME,
    "exchange": binary(EXCHANGE_SIZE, EXCHANGE_SIZE, f"{EXCHANGE_SIZE} bytes"),
    "ciphertext": DIGEST, "content": DIGEST, "offer": DIGEST, "order": DIGEST,
    "receipt": DIGEST, "payment": DIGEST,
    "escrow": binary(ESCROW_SIZE, ESCROW_SIZE, f"{ESCROW_SIZE} bytes (an HPKE escrow)"),
    "purpose": form(r"mail|goods", "'mail' or 'goods'"),
    "certificates": CERTIFICATES,
})


def digest(data: bytes) -> bytes:
    """SHA-256, the one digest of contents and ciphertexts."""
    return hashlib.sha256(data).digest()


@dataclass(frozen=True, slots=True, kw_only=True)
class EscrowLabel:
    """What an escrowed content belongs to: its purpose, its exchange, its parties
    and its notary. Bound into the content's AEAD and the escrow's HPKE info.

    Raises:
        ValueError: a purpose other than ``mail``/``goods``, an exchange id that is not
            32 bytes, a party or notary that is not an agent id.
    """

    purpose: str
    exchange: bytes
    sender: str
    receiver: str
    notary: str

    def __post_init__(self) -> None:
        if self.purpose not in PURPOSES:
            raise ValueError(f"purpose must be one of {sorted(PURPOSES)}")
        if type(self.exchange) is not bytes or len(self.exchange) != EXCHANGE_SIZE:
            raise ValueError(f"exchange must be {EXCHANGE_SIZE} bytes")
        for name in ("sender", "receiver", "notary"):
            if not AGENT.check(getattr(self, name)):
                raise ValueError(f"{name} must be an agent id")

    def _map(self) -> dict[str, object]:
        return {"protocol": PROTOCOL, "purpose": self.purpose, "exchange": self.exchange,
                "sender": self.sender, "receiver": self.receiver, "notary": self.notary}

    def aad(self) -> bytes:
        """The content's associated data: the canonical map of the label."""
        return canonical_encode(self._map())

    def info(self, ciphertext_digest: bytes) -> bytes:
        """The escrow's HPKE ``info``: the label and the ciphertext's digest."""
        return canonical_encode({**self._map(), "ciphertext": ciphertext_digest})


# -- the content ----------------------------------------------------------------------

def seal_content(plaintext: bytes, *, key: bytes, nonce: bytes, label: EscrowLabel) -> bytes:
    """``nonce || ChaCha20-Poly1305(key, nonce, plaintext, label.aad())``.

    Raises:
        ValueError: a key that is not 32 bytes, a nonce that is not 12.
    """
    if type(key) is not bytes or len(key) != KEY_SIZE:
        raise ValueError(f"key must be {KEY_SIZE} bytes")
    if type(nonce) is not bytes or len(nonce) != NONCE_SIZE:
        raise ValueError(f"nonce must be {NONCE_SIZE} bytes")
    return nonce + ChaCha20Poly1305(key).encrypt(nonce, plaintext, label.aad())


def open_content(ciphertext: bytes, *, key: bytes, label: EscrowLabel,
                 content_digest: bytes) -> bytes:
    """The plaintext of ``ciphertext`` under ``key``, checked against the signed digest.

    Raises:
        BadKey: ``reason`` ``ciphertext`` (the key is not 32 bytes, or does not open the
            ciphertext with this label) or ``content`` (the plaintext's SHA-256 is not
            ``content_digest``).
    """
    if type(key) is not bytes or len(key) != KEY_SIZE or type(ciphertext) is not bytes \
            or len(ciphertext) < NONCE_SIZE + _TAG:
        raise BadKey("the key does not open the ciphertext", detail={"reason": "ciphertext"})
    try:
        plaintext = ChaCha20Poly1305(key).decrypt(ciphertext[:NONCE_SIZE],
                                                  ciphertext[NONCE_SIZE:], label.aad())
    except InvalidTag:
        raise BadKey("the key does not open the ciphertext",
                     detail={"reason": "ciphertext"}) from None
    if digest(plaintext) != content_digest:
        raise BadKey("the plaintext is not the content the sender signed",
                     detail={"reason": "content"})
    return plaintext


# -- the escrow -----------------------------------------------------------------------

def seal_key(key: bytes, *, escrow_key: x25519.X25519PublicKey, label: EscrowLabel,
             ciphertext_digest: bytes) -> bytes:
    """HPKE-seal ``key`` to the notary (base mode, single shot, ``label.info(...)``)."""
    if type(key) is not bytes or len(key) != KEY_SIZE:
        raise ValueError(f"key must be {KEY_SIZE} bytes")
    return SUITE.encrypt(key, escrow_key, info=label.info(ciphertext_digest))


def seal(plaintext: bytes, *, key: bytes, nonce: bytes, label: EscrowLabel,
         escrow_key: x25519.X25519PublicKey) -> tuple[bytes, bytes]:
    """``(ciphertext, escrow)``: the content under ``key`` and ``key`` sealed to the
    notary, the escrow bound to the ciphertext's digest."""
    ciphertext = seal_content(plaintext, key=key, nonce=nonce, label=label)
    return ciphertext, seal_key(key, escrow_key=escrow_key, label=label,
                                ciphertext_digest=digest(ciphertext))


def open_escrow(escrow: bytes, *, private_keys: Sequence[x25519.X25519PrivateKey],
                label: EscrowLabel, ciphertext_digest: bytes) -> bytes:
    """The content key in ``escrow``, tried under each of the notary's escrow keys.

    Raises:
        BadEscrow: ``reason`` ``escrow``: it opens under none of them with this label
            and ciphertext digest (moved, altered, sealed to another key), or what it
            holds is not a 32-byte key.
    """
    info = label.info(ciphertext_digest)
    if type(escrow) is bytes and len(escrow) == ESCROW_SIZE:
        for private_key in private_keys:
            try:
                key = SUITE.decrypt(escrow, private_key, info=info)
            except (InvalidTag, ValueError):
                continue
            if len(key) == KEY_SIZE:
                return key
    raise BadEscrow("the escrow does not open for this exchange", detail={"reason": "escrow"})


def recover(ciphertext: bytes, escrow: bytes, *,
            private_keys: Sequence[x25519.X25519PrivateKey], label: EscrowLabel,
            content_digest: bytes) -> bytes:
    """The notary's check: the key from ``escrow`` if it opens ``ciphertext`` to
    ``content_digest``.

    Raises:
        BadEscrow: ``reason`` ``escrow`` (it does not open), ``ciphertext`` (its key does
            not open the ciphertext), ``content`` (the plaintext is not the signed digest).
    """
    key = open_escrow(escrow, private_keys=private_keys, label=label,
                      ciphertext_digest=digest(ciphertext))
    try:
        open_content(ciphertext, key=key, label=label, content_digest=content_digest)
    except BadKey as exc:
        reason = exc.detail["reason"]
        raise BadEscrow(f"the escrowed key does not give the signed content ({reason})",
                        detail={"reason": reason}) from None
    return key


# -- the notary's escrow key ----------------------------------------------------------

@dataclass(frozen=True, slots=True, kw_only=True)
class EscrowKey(Body):
    """``notary.escrow_key``, signed by the notary: seal escrows for me to this X25519
    key between ``valid_from`` and ``valid_until`` (Unix ms, inclusive)."""

    TYPE: ClassVar[str] = ESCROW_KEY_TYPE
    SCHEMA: ClassVar[Schema] = SCHEMA

    key: bytes
    notary: str
    valid_from: int
    valid_until: int

    def _check(self) -> None:
        if self.valid_until < self.valid_from:
            SCHEMA.fail(self.TYPE, "valid_until", "must not be before valid_from")

    def public_key(self) -> x25519.X25519PublicKey:
        return x25519.X25519PublicKey.from_public_bytes(self.key)


def sign_escrow_key(escrow_key: x25519.X25519PublicKey, *, notary: str, valid_from: int,
                    valid_until: int, key: ed25519.Ed25519PrivateKey,
                    certificate: x509.Certificate, now_ms: int, nonce: bytes) -> Statement:
    """The notary's ``notary.escrow_key`` statement for ``escrow_key``."""
    body = EscrowKey(key=escrow_key.public_bytes_raw(), notary=notary,
                     valid_from=valid_from, valid_until=valid_until)
    return sign_statement(ESCROW_KEY_TYPE, body.to_body(), key=key, certificate=certificate,
                          now_ms=now_ms, nonce=nonce)


def check_escrow_key(statement: Statement, *, certificate: x509.Certificate,
                     root: x509.Certificate, crl: x509.CertificateRevocationList,
                     now: dt.datetime, notary: str) -> EscrowKey:
    """A party's check before it seals to a notary: the statement is ``notary``'s,
    its signer holds the notary role, and its validity covers ``now``.

    Raises:
        StatementError, CertificateError: as ``verify_statement`` (wrong signer, bad
            signature, revoked, ...).
        BadBody: not an escrow key body.
        BadEscrowKey: ``field`` ``role`` (the signer is not a notary), ``notary`` (the
            body names another notary), ``valid_from``/``valid_until`` (not valid now).
    """
    identity = verify_statement(statement, certificate=certificate, root=root, crl=crl,
                                now=now, expected_type=ESCROW_KEY_TYPE, expected_signer=notary)
    body = EscrowKey.from_statement(statement)
    if identity.role != NOTARY_ROLE:
        raise BadEscrowKey(f"the escrow key is signed by a {identity.role!r}, not a notary",
                           detail={"field": "role"})
    if body.notary != identity.agent_id:
        raise BadEscrowKey("the escrow key names another notary than its signer",
                           detail={"field": "notary"})
    now_ms = (now - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)) // dt.timedelta(milliseconds=1)
    if now_ms < body.valid_from:
        raise BadEscrowKey("the escrow key is not valid yet", detail={"field": "valid_from"})
    if now_ms > body.valid_until:
        raise BadEscrowKey("the escrow key has expired", detail={"field": "valid_until"})
    return body


@dataclass(frozen=True, slots=True, kw_only=True)
class EscrowKeyRequest(Body):
    """``notary.escrow_key`` request: ``{}`` (typed, so that any other body is
    ``fairexchange.bad_body`` before a handler sees it)."""

    TYPE: ClassVar[str] = "notary.escrow_key"
    SCHEMA: ClassVar[Schema] = SCHEMA


@dataclass(frozen=True, slots=True, kw_only=True)
class EscrowKeyWire(Body):
    """``notary.escrow_key`` answer: the notary's current ``notary.escrow_key``."""

    TYPE: ClassVar[str] = "notary.escrow_key"
    SCHEMA: ClassVar[Schema] = SCHEMA

    statement: Statement = field(metadata=wire(STATEMENT))
