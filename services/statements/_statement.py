"""Signed statements: who said what, when, in bytes anyone can check offline.

A statement is ``(type, body, signer, issued_at, nonce)`` signed with the signer's
Ed25519 key. The signature covers a domain-separation prefix and the canonical
encoding of those five fields, so the same bytes can never be read as another kind
of signed object (a TLS transcript, a CSR) or as a statement of another version:

    signed_bytes = b"semper-statement-v1\\x00"
                   + canonical({"body", "issued_at", "nonce", "signer", "type"})
    to_bytes     = canonical({"body", "issued_at", "nonce", "signature", "signer",
                              "type", "v": 1})

``signer`` is the SHA-256 fingerprint of the signer's certificate (DER), not a key
or a name: the certificate travels beside the statement (in a channel, in a bundle)
and must be that exact certificate, so an agent with two certificates cannot be
confused with itself under another role.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final

import msgpack
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ed25519

from ..certificates import (
    CLOCK_SKEW,
    AgentIdentity,
    Expired,
    NotYetValid,
    Revoked,
    fingerprint,
    identity_of,
    validate_crl,
)

# validate_certificate judges the certificate and the CRL at one instant; statements
# need two (see _certificate_at_issue), so they reuse its private building blocks
# rather than copy them.
from ..certificates._validate import _check_issuer, _check_usage
from ._canonical import canonical_decode, encode_at
from ._errors import (
    BadSignature,
    FromTheFuture,
    MalformedStatement,
    UnsupportedVersion,
    WrongSigner,
    WrongType,
)

__all__ = [
    "MAX_SKEW_MS",
    "Statement",
    "sign_statement",
    "verify_ed25519",
    "verify_statement",
]

DOMAIN: Final = b"semper-statement-v1\x00"
VERSION: Final = 1
#: How far a statement's issue time may lie ahead of the verifier's clock: the one
#: clock skew the market allows (certificates and CRLs are backdated by it too).
MAX_SKEW_MS: Final = int(CLOCK_SKEW.total_seconds() * 1000)
#: Unix milliseconds of 9999-12-31T23:59:59.999Z: every issue time is a datetime.
MAX_TIME_MS: Final = 253_402_300_799_999

_TYPE = re.compile(r"[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+\Z")
_MAX_TYPE: Final = 128
_EPOCH: Final = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
#: A packer of leaves (int, bytes or ASCII str) in msgpack's shortest form, as
#: canonical_encode writes them (one per call: a packer is not shared between threads).
_packer: Final = functools.partial(msgpack.Packer, use_bin_type=True, strict_types=True)
_KEYS: Final = frozenset({"body", "issued_at", "nonce", "signature", "signer", "type", "v"})


@dataclass(frozen=True, slots=True, kw_only=True)
class Statement:
    """One signed fact. Construction checks every field's type and size (``ValueError``);
    it does not check the signature: that is ``verify_statement``'s job."""

    type: str
    body: dict[str, Any]
    signer: bytes
    issued_at: int
    nonce: bytes
    signature: bytes

    NONCE_SIZE: ClassVar[int] = 16
    SIGNER_SIZE: ClassVar[int] = 32
    SIGNATURE_SIZE: ClassVar[int] = 64
    #: ``to_bytes()`` once made: a purchase asks a statement's digest many times, each
    #: a canonical encoding (the fields never change; the body is never mutated).
    _bytes: bytes | None = field(default=None, init=False, repr=False, compare=False)
    #: The body's canonical encoding where it sits in the statement map, made once by
    #: the check below: ``signed_bytes`` and ``to_bytes`` are built around it rather
    #: than walking the body again (a map's encoding is its header, then each key and
    #: value in key order).
    _body: bytes = field(default=b"", init=False, repr=False, compare=False)
    _digest: bytes | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _check_type(self.type)
        if type(self.body) is not dict:
            raise ValueError(f"body must be a dict, not {type(self.body).__name__}")
        # In the value model and within the bounds one level down, where the body sits
        # in the statement map: what is built here can always be encoded and signed.
        object.__setattr__(self, "_body", encode_at(self.body, 1))
        _check_bytes("signer", self.signer, self.SIGNER_SIZE)
        _check_bytes("nonce", self.nonce, self.NONCE_SIZE)
        _check_bytes("signature", self.signature, self.SIGNATURE_SIZE)
        if type(self.issued_at) is not int or not 0 <= self.issued_at <= MAX_TIME_MS:
            raise ValueError("issued_at must be an int of Unix milliseconds (0 to year 9999)")

    def signed_bytes(self) -> bytes:
        """The exact bytes the signature covers: ``DOMAIN`` and the canonical encoding
        of ``_unsigned()``, its keys in order (body, issued_at, nonce, signer, type)."""
        pack = _packer().pack
        return b"".join((DOMAIN, b"\x85\xa4body", self._body, b"\xa9issued_at",
                         pack(self.issued_at), b"\xa5nonce", pack(self.nonce),
                         b"\xa6signer", pack(self.signer), b"\xa4type", pack(self.type)))

    def to_wire(self) -> dict[str, Any]:
        """The statement as one msgpack map, to embed in a message body."""
        return {**self._unsigned(), "signature": self.signature, "v": VERSION}

    def to_bytes(self) -> bytes:
        """The canonical encoding of ``to_wire()``: what archives store and digests hash."""
        encoded = self._bytes
        if encoded is None:  # canonical_encode(self.to_wire()), keys in order
            pack = _packer().pack
            encoded = b"".join((
                b"\x87\xa4body", self._body, b"\xa9issued_at", pack(self.issued_at),
                b"\xa5nonce", pack(self.nonce), b"\xa9signature", pack(self.signature),
                b"\xa6signer", pack(self.signer), b"\xa4type", pack(self.type),
                b"\xa1v", b"\x01"))  # VERSION
            object.__setattr__(self, "_bytes", encoded)
        return encoded

    @property
    def digest(self) -> bytes:
        """SHA-256 of ``to_bytes()``: names this statement, signature included."""
        digest = self._digest
        if digest is None:
            digest = hashlib.sha256(self.to_bytes()).digest()
            object.__setattr__(self, "_digest", digest)
        return digest

    @property
    def issued_at_datetime(self) -> dt.datetime:
        return _EPOCH + dt.timedelta(milliseconds=self.issued_at)

    @classmethod
    def from_wire(cls, value: object) -> Statement:
        """Read a statement from a decoded message value.

        Raises:
            MalformedStatement: not a map of exactly the statement's keys, or a field
                of the wrong type or size.
            UnsupportedVersion: ``v`` is not 1.
        """
        if type(value) is not dict:
            raise MalformedStatement(f"a statement is a map, not {type(value).__name__}")
        if "v" in value and (type(value["v"]) is not int or value["v"] != VERSION):
            raise UnsupportedVersion(
                f"statement version {value['v']!r} is not supported",
                detail={"supported": [VERSION]},
            )
        if set(value) != _KEYS:
            missing, extra = sorted(_KEYS - set(value)), sorted(set(value) - _KEYS)
            raise MalformedStatement(
                f"statement keys wrong: missing {missing}, unexpected {extra}",
                detail={"missing": missing, "unexpected": extra},
            )
        try:
            return cls(
                type=value["type"],
                body=value["body"],
                signer=value["signer"],
                issued_at=value["issued_at"],
                nonce=value["nonce"],
                signature=value["signature"],
            )
        except (ValueError, TypeError) as exc:
            raise MalformedStatement(f"bad statement field: {exc}") from None

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview) -> Statement:
        """Read a statement from its canonical bytes.

        Raises:
            NotCanonical: valid msgpack, but not the canonical encoding.
            MalformedStatement: anything else wrong with the bytes or the fields.
            UnsupportedVersion: ``v`` is not 1.
        """
        statement = cls.from_wire(canonical_decode(data))
        object.__setattr__(statement, "_bytes", bytes(data))  # canonical: to_bytes() is it
        return statement

    def _signed(self, signature: bytes) -> Statement:
        """This draft with ``signature``: its fields were checked when it was built,
        and a signature from ``Ed25519PrivateKey.sign`` is 64 bytes."""
        _check_bytes("signature", signature, self.SIGNATURE_SIZE)
        signed = object.__new__(Statement)
        for name, value in (("type", self.type), ("body", self.body), ("signer", self.signer),
                            ("issued_at", self.issued_at), ("nonce", self.nonce),
                            ("signature", signature), ("_body", self._body),
                            ("_bytes", None), ("_digest", None)):
            object.__setattr__(signed, name, value)
        return signed

    def _unsigned(self) -> dict[str, Any]:
        return {
            "body": self.body,
            "issued_at": self.issued_at,
            "nonce": self.nonce,
            "signer": self.signer,
            "type": self.type,
        }


def sign_statement(
    type: str,
    body: dict[str, Any],
    *,
    key: ed25519.Ed25519PrivateKey,
    certificate: x509.Certificate,
    now_ms: int,
    nonce: bytes,
) -> Statement:
    """Sign ``body`` as a statement of ``type`` by the holder of ``certificate``.

    Args:
        now_ms: the issue time, Unix milliseconds (UTC).
        nonce: 16 fresh random bytes (``os.urandom(16)``); passed in to keep this pure.

    Raises:
        ValueError: a bad type, body, time or nonce, or ``key`` is not the key of
            ``certificate``.
    """
    if not _key_of(key, certificate):
        raise ValueError("the key does not belong to the certificate")
    draft = Statement(type=type, body=body, signer=fingerprint(certificate), issued_at=now_ms,
                      nonce=nonce, signature=bytes(Statement.SIGNATURE_SIZE))
    signature = key.sign(draft.signed_bytes())
    return draft._signed(signature)


#: Objects seen together or checked already (held, so that their ids are not reused):
#: an agent signs with one key and certificate, and verifies a few peers' certificates
#: over and over; their key objects and the check that a key is the certificate's
#: took ~10 us a signature and a verification.
_KEY_OF: dict[tuple[int, int], tuple[Any, Any]] = {}
_PUBLIC: dict[int, tuple[x509.Certificate, ed25519.Ed25519PublicKey | None]] = {}
_MAX_KEPT: Final = 256


def _key_of(key: ed25519.Ed25519PrivateKey, certificate: x509.Certificate) -> bool:
    """Whether ``key`` is the private key of ``certificate`` (remembered when so)."""
    known = _KEY_OF.get((id(key), id(certificate)))
    if known is not None and known[0] is key and known[1] is certificate:
        return True
    cert_key = certificate.public_key()
    if not isinstance(cert_key, ed25519.Ed25519PublicKey) or \
            cert_key.public_bytes_raw() != key.public_key().public_bytes_raw():
        return False
    _bounded(_KEY_OF)[(id(key), id(certificate))] = (key, certificate)
    return True


def _public_key(certificate: x509.Certificate) -> ed25519.Ed25519PublicKey | None:
    """The certificate's Ed25519 key object (None for another kind of key)."""
    known = _PUBLIC.get(id(certificate))
    if known is not None and known[0] is certificate:
        return known[1]
    public = certificate.public_key()
    key = public if isinstance(public, ed25519.Ed25519PublicKey) else None
    _bounded(_PUBLIC)[id(certificate)] = (certificate, key)
    return key


def _bounded(kept: dict[Any, Any]) -> dict[Any, Any]:
    try:
        while len(kept) >= _MAX_KEPT:
            del kept[next(iter(kept))]
    except (KeyError, RuntimeError, StopIteration):  # another thread evicted meanwhile
        pass
    return kept


def verify_ed25519(public_key_bytes: bytes, message: bytes, signature: bytes) -> None:
    """Verify an Ed25519 signature (RFC 8032, as OpenSSL checks it).

    Raises:
        BadSignature: for anything wrong: a key of the wrong length or encoding, a
            signature of the wrong length, non-canonical S, a signature that does not
            verify. Never another exception, so callers cannot leak which.
    """
    if not all(isinstance(b, bytes) for b in (public_key_bytes, message, signature)):
        raise BadSignature("the signature does not verify")
    try:
        key = ed25519.Ed25519PublicKey.from_public_bytes(public_key_bytes)
        key.verify(signature, message)
    except (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm):
        raise BadSignature("the signature does not verify") from None


def verify_statement(
    statement: Statement,
    *,
    certificate: x509.Certificate,
    root: x509.Certificate,
    crl: x509.CertificateRevocationList,
    now: dt.datetime,
    expected_type: str | None = None,
    expected_signer: str | None = None,
) -> AgentIdentity:
    """Check a statement offline: with the market root, the signer's certificate and a CRL.

    Checks, in order: ``certificate`` is the one the statement names; the issue time
    is at most 5 minutes ahead of ``now``; the certificate is valid at the issue time
    (issuer, validity period, key usage, identity fields); the CRL is the root's and
    current at ``now`` and does not list the certificate; the signature; the type; the
    signer's agent id.

    A revoked signer is refused with the certificate layer's ``Revoked``
    (``auth.revoked``) whenever the statement was issued: a stolen key can write any
    ``issued_at``, so the revocation date cannot tell honest statements from forged.

    Returns:
        The signer's identity (agent id, role, level, liability) as the CA vouched it.

    Raises:
        WrongSigner: ``certificate`` is not the statement's signer, or the signer is not
            ``expected_signer``.
        FromTheFuture: issued more than 5 minutes after ``now``.
        CertificateError: a subclass (``auth.*``) naming what is wrong with the
            certificate or the CRL; ``Revoked`` for a revoked signer.
        BadSignature: the signature does not verify.
        WrongType: the type is not ``expected_type``.
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware (UTC)")
    if fingerprint(certificate) != statement.signer:
        raise WrongSigner("the certificate given is not the one that signed the statement",
                          detail={"signer": statement.signer.hex()})
    now_ms = (now - _EPOCH) // dt.timedelta(milliseconds=1)
    if statement.issued_at > now_ms + MAX_SKEW_MS:
        raise FromTheFuture(
            f"issued {statement.issued_at - now_ms} ms in the future",
            detail={"issued_at": statement.issued_at, "now_ms": now_ms, "skew_ms": MAX_SKEW_MS},
        )
    identity = _certificate_at_issue(certificate, root=root, crl=crl,
                                     issued=statement.issued_at_datetime, now=now)
    public = _public_key(certificate)
    if public is None:  # _check_usage refused it already
        raise BadSignature("the signature does not verify")
    try:  # verify_ed25519 with the key object at hand, not rebuilt from its bytes
        public.verify(statement.signature, statement.signed_bytes())
    except (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm):
        raise BadSignature("the signature does not verify") from None
    if expected_type is not None and statement.type != expected_type:
        raise WrongType(f"expected a {expected_type!r} statement, got {statement.type!r}",
                        detail={"expected": expected_type, "type": statement.type})
    if expected_signer is not None and identity.agent_id != expected_signer:
        raise WrongSigner(
            f"expected a statement by {expected_signer!r}, signed by {identity.agent_id!r}",
            detail={"expected": expected_signer, "signer": identity.agent_id},
        )
    return identity


def _certificate_at_issue(
    cert: x509.Certificate,
    *,
    root: x509.Certificate,
    crl: x509.CertificateRevocationList,
    issued: dt.datetime,
    now: dt.datetime,
) -> AgentIdentity:
    """``validate_certificate``'s checks, in its order, with two clocks.

    Certificate at issue time: a statement signed while the certificate was valid stays
    evidence after the certificate expires, so validity is judged at ``issued``. The
    CRL is judged at ``now``: an arbiter holds a CRL published long after the
    statements it judges, which ``validate_certificate(now=issued)`` would refuse as
    "dated in the future", and the newest CRL is the one that knows of a stolen key.
    """
    _check_issuer(cert, root, issued)
    if issued < cert.not_valid_before_utc:
        raise NotYetValid(f"the statement predates its certificate "
                          f"(valid from {cert.not_valid_before_utc:%Y-%m-%d %H:%M}Z)")
    if issued > cert.not_valid_after_utc:
        raise Expired(f"the statement was issued after its certificate expired "
                      f"({cert.not_valid_after_utc:%Y-%m-%d %H:%M}Z)")
    validate_crl(crl, root=root, now=now)
    if crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None:
        raise Revoked(f"the signer's certificate {cert.serial_number:x} is revoked")
    _check_usage(cert)
    return identity_of(cert)


def _check_type(value: object) -> None:
    if type(value) is not str or len(value) > _MAX_TYPE or not _TYPE.match(value):
        raise ValueError(f"type must be a dotted lowercase name like 'commerce.offer', "
                         f"got {value!r:.80}")


def _check_bytes(name: str, value: object, size: int) -> None:
    if type(value) is not bytes or len(value) != size:
        raise ValueError(f"{name} must be {size} bytes")
