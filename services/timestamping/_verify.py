"""Offline verification of timestamp tokens, and the evidence of a forked notary.

``verify_token`` checks, in order (docs/protocol.md 11.5): the token's fields; the
notary's certificate and the head's signature under the market root (and the CRL,
when one is given: without one, revocation is not checked); that the head's signer
is a notary and the one the token and the head name; the head's body and that the
token agrees with it (index inside the tree, serial = first serial + index, time
not after the head's); the leaf's inclusion proof up to the signed root; and last,
the digest the verifier holds. Each refusal has its own code.

What a fork is. A notary's heads form one chain: sequence numbers 0, 1, 2, ...,
each naming the previous head's id, times never decreasing, serial ranges following
each other. Two heads by the same notary (its agent id: a renewed certificate
continues the chain) *fork* when they cannot both lie on one such chain, which two
heads alone show in four ways:

``same_sequence``  the same sequence number, different heads;
``unlinked``       consecutive sequence numbers, and the later one's ``previous`` is
                   not the earlier one's id;
``backdated``      a later sequence number with an earlier time;
``serials``        a later sequence number whose serials do not come after the
                   earlier one's (serials reused or running backwards).

Heads further apart that agree on time and serials may still belong to two
histories; two tokens cannot show it (the heads in between can).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ed25519

from ..certificates import (
    AgentIdentity,
    Expired,
    NotYetValid,
    fingerprint,
    identity_of,
    load_certificate,
)
from ..certificates._validate import _check_issuer, _check_usage
from ..merkle import InvalidProof, verify_inclusion
from ..statements import (
    MAX_SKEW_MS,
    BadSignature,
    FromTheFuture,
    Statement,
    WrongSigner,
    WrongType,
    verify_ed25519,
    verify_statement,
)
from ._errors import BadProof, BadToken, Forked, WrongDigest, WrongNotary
from ._token import HEAD_TYPE, Token, TreeHead, head_id

__all__ = ["FORK_KINDS", "ForkEvidence", "Verified", "check_no_fork", "fork_evidence",
           "verify_token"]

_EPOCH: Final = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
FORK_KINDS: Final = ("same_sequence", "unlinked", "backdated", "serials")


@dataclass(frozen=True, slots=True, kw_only=True)
class Verified:
    """What a valid token proves: ``digest`` existed at ``time`` (Unix ms), by the
    notary ``identity``, as serial ``serial`` under ``head``."""

    digest: bytes
    time: int
    serial: int
    identity: AgentIdentity
    head: TreeHead
    token: Token


@dataclass(frozen=True, slots=True, kw_only=True)
class ForkEvidence:
    """Two signed heads of one notary that cannot both be in its history."""

    kind: str
    first: Statement
    second: Statement

    def to_wire(self) -> dict[str, object]:
        return {"kind": self.kind, "heads": [self.first.to_wire(), self.second.to_wire()]}


def verify_token(token: Token | bytes, *, root: x509.Certificate,
                 crl: x509.CertificateRevocationList | None = None, now: dt.datetime,
                 digest: bytes | None = None) -> Verified:
    """Check a token offline (see the module docstring for the order of checks).

    Args:
        token: a ``Token``, or its file bytes.
        crl: the market's CRL; None checks no revocation.
        now: the verifier's time (a head from more than 5 minutes later is refused).
        digest: the SHA-256 the verifier holds; None skips that check.

    Raises:
        BadToken: malformed, or fields that contradict the head.
        CertificateError (``auth.*``), BadSignature, WrongSigner, FromTheFuture,
            WrongType: the head's signature or certificate.
        WrongNotary: the head's signer is not a notary, or not the token's.
        BadProof: the leaf is not under the signed root.
        WrongDigest: the token is for another digest.
    """
    if not isinstance(token, Token):
        token = Token.from_bytes(token)
    certificate = load_certificate(token.certificate)
    identity = _check_head(token.head, certificate, root=root, crl=crl, now=now)
    head = TreeHead.from_statement(token.head)
    if identity.role != "notary":
        raise WrongNotary(f"the head is signed by {identity.agent_id!r}, a "
                          f"{identity.role}, not a notary", detail={"signer": identity.agent_id})
    if not identity.agent_id == head.notary == token.notary:
        raise WrongNotary(f"the token names {token.notary!r}, its head {head.notary!r}, "
                          f"signed by {identity.agent_id!r}",
                          detail={"signer": identity.agent_id, "notary": token.notary})
    if token.index >= head.size:
        raise BadToken(f"index {token.index} is outside a tree of {head.size}",
                       detail={"field": "index"})
    if token.serial != head.first_serial + token.index:
        raise BadToken(f"serial {token.serial} is not the head's first serial "
                       f"{head.first_serial} plus index {token.index}", detail={"field": "serial"})
    if token.time > head.time:
        raise BadToken(f"the token's time {token.time} is after its head's {head.time}",
                       detail={"field": "time"})
    try:
        verify_inclusion(token.leaf_hash, token.index, head.size, token.proof, head.root)
    except InvalidProof:
        raise BadProof("the token's leaf is not in the tree its head signs") from None
    if digest is not None and digest != token.digest:
        raise WrongDigest("the token is for another digest",
                          detail={"token": token.digest.hex(), "given": digest.hex()})
    return Verified(digest=token.digest, time=token.time, serial=token.serial,
                    identity=identity, head=head, token=token)


def _check_head(head: Statement, certificate: x509.Certificate, *, root: x509.Certificate,
                crl: x509.CertificateRevocationList | None, now: dt.datetime) -> AgentIdentity:
    if crl is not None:
        return verify_statement(head, certificate=certificate, root=root, crl=crl, now=now,
                                expected_type=HEAD_TYPE)
    # verify_statement's checks, in its order, less the CRL's.
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware (UTC)")
    if fingerprint(certificate) != head.signer:
        raise WrongSigner("the certificate given is not the one that signed the head",
                          detail={"signer": head.signer.hex()})
    now_ms = (now - _EPOCH) // dt.timedelta(milliseconds=1)
    if head.issued_at > now_ms + MAX_SKEW_MS:
        raise FromTheFuture(f"issued {head.issued_at - now_ms} ms in the future",
                            detail={"issued_at": head.issued_at, "now_ms": now_ms,
                                    "skew_ms": MAX_SKEW_MS})
    issued = head.issued_at_datetime
    _check_issuer(certificate, root, issued)
    if issued < certificate.not_valid_before_utc:
        raise NotYetValid("the head predates its certificate")
    if issued > certificate.not_valid_after_utc:
        raise Expired("the head was signed after its certificate expired")
    _check_usage(certificate)
    identity = identity_of(certificate)
    public = certificate.public_key()
    if not isinstance(public, ed25519.Ed25519PublicKey):
        raise BadSignature("the signature does not verify")
    verify_ed25519(public.public_bytes_raw(), head.signed_bytes(), head.signature)
    if head.type != HEAD_TYPE:
        raise WrongType(f"expected a {HEAD_TYPE!r} statement, got {head.type!r}",
                        detail={"expected": HEAD_TYPE, "type": head.type})
    return identity


def fork_evidence(token_a: Token, token_b: Token) -> ForkEvidence | None:
    """The evidence that the two tokens' heads fork (see the module docstring), or
    None if two heads cannot show one (another notary, or heads that agree).

    The heads' signatures are not checked here: verify each token first
    (``check_no_fork`` does both)."""
    a, b = token_a.head, token_b.head
    ha, hb = TreeHead.from_statement(a), TreeHead.from_statement(b)
    if ha.notary != hb.notary:
        return None
    if ha.sequence > hb.sequence:
        (a, ha), (b, hb) = (b, hb), (a, ha)
    kind = None
    if ha.sequence == hb.sequence:
        if head_id(ha) != head_id(hb):
            kind = "same_sequence"
    elif hb.sequence == ha.sequence + 1 and hb.previous != head_id(ha):
        kind = "unlinked"
    elif hb.time < ha.time:
        kind = "backdated"
    elif hb.first_serial < ha.first_serial + ha.size:
        kind = "serials"
    return None if kind is None else ForkEvidence(kind=kind, first=a, second=b)


def check_no_fork(token_a: Token | bytes, token_b: Token | bytes, *, root: x509.Certificate,
                  crl: x509.CertificateRevocationList | None = None,
                  now: dt.datetime) -> tuple[Verified, Verified]:
    """Verify both tokens, then refuse them if their heads fork.

    Raises:
        Forked: ``timestamp.fork``, with the ``ForkEvidence`` as ``evidence`` (and in
            ``detail``: the kind and both heads' canonical bytes, hex).
        anything ``verify_token`` raises, for either token.
    """
    first = verify_token(token_a, root=root, crl=crl, now=now)
    second = verify_token(token_b, root=root, crl=crl, now=now)
    evidence = fork_evidence(first.token, second.token)
    if evidence is not None:
        raise Forked(f"the notary {first.head.notary!r} forked its history "
                     f"({evidence.kind}): two signed heads cannot both be in it",
                     evidence=evidence,
                     detail={"kind": evidence.kind, "heads": [evidence.first.to_bytes().hex(),
                                                              evidence.second.to_bytes().hex()]})
    return first, second
