"""SET's dual signature and the sealed payment instructions (SET 1997, Book 3).

The cardholder writes two halves of one purchase: the payment instructions (PI) for
the bank's gateway and the order information (OI) for the merchant. Each is digested
under its own domain (PIMD, OIMD; the canonical encoding of the body, protocol.md 3),
and the cardholder signs both digests at once, ``card.dual_signature`` {pimd, oimd,
pomd}: SET's signature over POMD = SHA-256(PIMD || OIMD). The merchant, handed the OI
and the PIMD, and the gateway, handed the PI and the OIMD, each recompute the digest
of the half they see and check the one signature; neither learns the other half.

The PI travels sealed to the gateway's X25519 key with HPKE (RFC 9180 base mode,
single shot ``enc || ct``, the suite of the notary's escrow:
DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, ChaCha20-Poly1305), its ``info`` the PI
domain and the OIMD: a sealed PI opens only for its own order, so a merchant cannot
move it to another. The PI's secret 16-byte nonce keeps its digest, which the
merchant sees, from being searched over card numbers.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric import x25519
from cryptography.hazmat.primitives.hpke import AEAD, KDF, KEM, Suite

from ...statements import canonical_decode, canonical_encode
from ._errors import BadInstructions
from ._schema import DualSignature, OrderInformation, PaymentInstructions

__all__ = [
    "OI_DOMAIN",
    "PI_DOMAIN",
    "SUITE",
    "authorization_id_of",
    "dual_signature",
    "instructions_digest",
    "oimd_of",
    "open_instructions",
    "pi_info",
    "pimd_of",
    "pomd_of",
    "seal_instructions",
]

PI_DOMAIN: Final = b"semper-set-pi-v1\x00"
OI_DOMAIN: Final = b"semper-set-oi-v1\x00"
_AUTHORIZATION_DOMAIN: Final = b"semper-set-authorization-v1\x00"
#: RFC 9180 suite: KEM 0x0020, KDF 0x0001, AEAD 0x0003 (the notary escrow's, section 10).
SUITE: Final = Suite(KEM.X25519, KDF.HKDF_SHA256, AEAD.CHACHA20_POLY1305)


def pimd_of(pi: PaymentInstructions) -> bytes:
    """PIMD = SHA-256(PI_DOMAIN || canonical(PI))."""
    return hashlib.sha256(PI_DOMAIN + canonical_encode(pi.to_wire())).digest()


def oimd_of(oi: OrderInformation) -> bytes:
    """OIMD = SHA-256(OI_DOMAIN || canonical(OI))."""
    return hashlib.sha256(OI_DOMAIN + canonical_encode(oi.to_wire())).digest()


def pomd_of(pimd: bytes, oimd: bytes) -> bytes:
    """POMD = SHA-256(PIMD || OIMD): what SET's dual signature signs."""
    return hashlib.sha256(pimd + oimd).digest()


def dual_signature(pimd: bytes, oimd: bytes) -> DualSignature:
    """The body the cardholder signs as ``card.dual_signature``."""
    return DualSignature(pimd=pimd, oimd=oimd, pomd=pomd_of(pimd, oimd))


def pi_info(oimd: bytes) -> bytes:
    """The sealed PI's HPKE ``info``: PI_DOMAIN || OIMD (binds it to one order)."""
    return PI_DOMAIN + oimd


def seal_instructions(pi: PaymentInstructions, *,
                      gateway_key: x25519.X25519PublicKey) -> bytes:
    """``enc || ct``: canonical(PI) sealed to the gateway for the order ``pi.order``."""
    return SUITE.encrypt(canonical_encode(pi.to_wire()), gateway_key, info=pi_info(pi.order))


def open_instructions(sealed: bytes, *, private_keys: Sequence[x25519.X25519PrivateKey],
                      oimd: bytes) -> PaymentInstructions:
    """The PI in ``sealed``, tried under each of the gateway's keys (the current one
    and those recently rotated out) with the ``info`` of order ``oimd``.

    Raises:
        BadInstructions: it opens under none of them for this OIMD (``field``
            ``sealed_pi``), or what it holds is not a PI (``field`` names the fault;
            a card number failing the Luhn check is ``number``).
    """
    info = pi_info(oimd)
    for private_key in private_keys:
        try:
            plain = SUITE.decrypt(sealed, private_key, info=info)
        except (InvalidTag, ValueError):
            continue
        try:
            value = canonical_decode(plain)
        except Exception:  # any decoding fault is a bad PI
            raise BadInstructions("the sealed instructions are not a canonical map",
                                  detail={"type": PaymentInstructions.TYPE,
                                          "field": "body"}) from None
        return PaymentInstructions.from_wire(value)
    raise BadInstructions("the sealed instructions do not open for this order",
                          detail={"type": PaymentInstructions.TYPE, "field": "sealed_pi"})


def authorization_id_of(merchant: str, oimd: bytes) -> str:
    """The id of the (one) authorisation of ``merchant``'s order ``oimd``: 32 hex
    digits of SHA-256 over a domain and canonical [merchant, oimd]. The same order
    authorised again is the same authorisation."""
    data = _AUTHORIZATION_DOMAIN + canonical_encode([merchant, oimd])
    return hashlib.sha256(data).hexdigest()[:32]


def instructions_digest(pi: PaymentInstructions) -> bytes:
    """What a gateway stores beside an authorisation to recognise a retry: SHA-256 of
    the canonical PI without its ``nonce`` (a cardholder retrying seals afresh, with
    another nonce, the same card, amount, merchant, order and key)."""
    body = pi.to_wire()
    del body["nonce"]
    return hashlib.sha256(PI_DOMAIN + canonical_encode(body)).digest()
