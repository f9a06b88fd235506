"""RSA blind signatures, RSABSSA-SHA384-PSS-Randomized (RFC 9474).

Theory of operation. The wallet ``prepare``s a coin message (a 32-byte random
prefix, 4.1), ``blind``s it (EMSA-PSS-ENCODE with SHA-384, MGF1-SHA-384 and a 48-byte
salt, then multiplies by ``r^e``, 4.2) and keeps ``inv = r^-1``; the bank
``BlindSigner.sign``s the blinded value with the raw private operation (4.3), without
seeing the message; the wallet ``finalize``s (multiplies by ``inv``, 4.4), which
yields an ordinary RSASSA-PSS signature of the prepared message, so anyone ``verify``s
a coin with ``cryptography``'s RSA-PSS verify.

The PSS parameters other than the RFC's (the deterministic and PSSZERO variants of
its Appendix A) are reachable through keyword arguments only so the test vectors can
be run through this same code; the instrument always uses the defaults.
"""

from __future__ import annotations

import hashlib
import math
import secrets

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from ._errors import BadBlindMessage, BadBlindSignature, BadCoinSignature
from ._rawrsa import RawRSA

__all__ = ["MODULUS_BITS", "PREFIX_LEN", "SALT_LEN", "BlindSigner", "blind", "finalize",
           "prepare", "verify"]

MODULUS_BITS = 2048
SALT_LEN = 48
PREFIX_LEN = 32
_H_LEN = 48  # SHA-384


def _k(public_key: rsa.RSAPublicKey) -> int:
    return (public_key.key_size + 7) // 8


def _mgf1(seed: bytes, length: int) -> bytes:
    """MGF1 with SHA-384 (RFC 8017 B.2.1)."""
    out = bytearray()
    counter = 0
    while len(out) < length:
        out += hashlib.sha384(seed + counter.to_bytes(4, "big")).digest()
        counter += 1
    return bytes(out[:length])


def _emsa_pss_encode(message: bytes, em_bits: int, salt: bytes) -> bytes:
    """EMSA-PSS-ENCODE (RFC 8017 9.1.1) with SHA-384 and MGF1-SHA-384."""
    em_len = (em_bits + 7) // 8
    m_hash = hashlib.sha384(message).digest()
    if em_len < _H_LEN + len(salt) + 2:
        raise ValueError("encoding error: modulus too small for SHA-384 and this salt")
    h = hashlib.sha384(b"\x00" * 8 + m_hash + salt).digest()
    db = b"\x00" * (em_len - len(salt) - _H_LEN - 2) + b"\x01" + salt
    masked = bytearray(a ^ b for a, b in zip(db, _mgf1(h, em_len - _H_LEN - 1), strict=True))
    masked[0] &= 0xFF >> (8 * em_len - em_bits)
    return bytes(masked) + h + b"\xbc"


def _pss(salt_len: int) -> padding.PSS:
    return padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=salt_len)


def prepare(msg: bytes, *, prefix: bytes | None = None) -> bytes:
    """RFC 9474 4.1 PrepareRandomize: ``prefix || msg`` with a fresh 32-byte prefix
    (``prefix`` given only to replay a known one; it must be 32 bytes)."""
    if prefix is None:
        prefix = secrets.token_bytes(PREFIX_LEN)
    elif len(prefix) != PREFIX_LEN:
        raise ValueError(f"prefix must be {PREFIX_LEN} bytes")
    return bytes(prefix) + bytes(msg)


def blind(public_key: rsa.RSAPublicKey, prepared: bytes, *, salt: bytes | None = None,
          r: int | None = None) -> tuple[bytes, bytes]:
    """RFC 9474 4.2 Blind: ``(blinded_msg, inv)``, ``k`` bytes each.

    ``salt`` (default 48 random bytes; its length is the PSS salt length) and ``r``
    (default uniform in [1, n)) are given only to replay the RFC's vectors.

    Raises:
        ValueError: the encoded message is not coprime with n ("invalid input"), or
            r is not invertible mod n ("invalid blind"): both mean a broken key.
    """
    numbers = public_key.public_numbers()
    n, e = numbers.n, numbers.e
    k = _k(public_key)
    if salt is None:
        salt = secrets.token_bytes(SALT_LEN)
    encoded = _emsa_pss_encode(prepared, n.bit_length() - 1, salt)
    m = int.from_bytes(encoded, "big")
    if math.gcd(m, n) != 1:
        raise ValueError("invalid input: the encoded message is not coprime with n")
    if r is None:
        r = secrets.randbelow(n - 1) + 1
    try:
        inv = pow(r, -1, n)
    except ValueError as exc:
        raise ValueError("invalid blind: r is not invertible mod n") from exc
    z = m * pow(r, e, n) % n
    return z.to_bytes(k, "big"), inv.to_bytes(k, "big")


def finalize(public_key: rsa.RSAPublicKey, prepared: bytes, blind_sig: bytes, inv: bytes,
             *, salt_len: int = SALT_LEN) -> bytes:
    """RFC 9474 4.4 Finalize: the RSASSA-PSS signature of ``prepared``, verified.

    Raises:
        BadBlindSignature: ``blind_sig`` is not ``k`` bytes or does not unblind to a
            valid signature (signed under another key, or garbage).
    """
    n = public_key.public_numbers().n
    k = _k(public_key)
    if len(inv) != k:  # the wallet's own value: misuse, not the bank's fault
        raise ValueError(f"inv must be {k} bytes")
    if len(blind_sig) != k:
        raise BadBlindSignature("the blind signature is not the key's length",
                                detail={"length": len(blind_sig), "expected": k})
    z = int.from_bytes(blind_sig, "big")
    signature = (z * int.from_bytes(inv, "big") % n).to_bytes(k, "big")
    try:
        public_key.verify(signature, prepared, _pss(salt_len), hashes.SHA384())
    except InvalidSignature as exc:
        raise BadBlindSignature("the blind signature does not unblind to a valid "
                                "signature under this key") from exc
    return signature


def verify(public_key: rsa.RSAPublicKey, prepared: bytes, signature: bytes, *,
           salt_len: int = SALT_LEN) -> None:
    """A coin's signature: RSASSA-PSS, SHA-384, MGF1-SHA-384, salt 48 (RFC 9474 4.5).

    Raises:
        BadCoinSignature: anything else (another key, another message, wrong length).
    """
    try:
        public_key.verify(bytes(signature), prepared, _pss(salt_len), hashes.SHA384())
    except (InvalidSignature, ValueError) as exc:
        raise BadCoinSignature("the coin's signature is not valid under its key") from exc


class BlindSigner:
    """The bank's private key for one denomination: RFC 9474 4.3 BlindSign.

    ``backend`` says which raw RSA runs: ``"openssl"`` (libcrypto through ctypes:
    constant-time, blinded, C speed) or ``"python"`` (the fallback). Thread-safe: the
    bank may sign from worker threads.
    """

    def __init__(self, private_key: rsa.RSAPrivateKey, *, backend: str | None = None) -> None:
        self.public_key = private_key.public_key()
        self._n = self.public_key.public_numbers().n
        self._k = _k(self.public_key)
        self._raw = RawRSA(private_key, backend=backend)
        self.backend: str = self._raw.backend

    def sign(self, blinded: bytes) -> bytes:
        """The blind signature of ``blinded`` (``k`` bytes).

        Raises:
            BadBlindMessage: ``blinded`` is not ``k`` bytes or not below n
                (``ecash.bad_withdrawal``).
            RawRSAError: the RFC's s^e == m check failed, a fault in our own
                computation (never send such a value: a faulty CRT result leaks the
                key), or OpenSSL failed; not a peer's fault, so no wire code.
        """
        blinded = bytes(blinded)
        if len(blinded) != self._k:
            raise BadBlindMessage("a blinded message is not the key's length",
                                  detail={"length": len(blinded), "expected": self._k})
        if int.from_bytes(blinded, "big") >= self._n:
            raise BadBlindMessage("a blinded message is not below the key's modulus")
        # 4.3 steps 2-4: s = RSASP1(sk, m), then RSAVP1(pk, s) must give m back.
        return self._raw.sign_checked(blinded)
