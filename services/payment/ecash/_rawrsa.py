"""The raw RSA private-key operation (RSASP1, RFC 8017 5.2.1) at OpenSSL's speed.

Why this module exists: a blind signature is the bare ``m^d mod n`` of a value the
signer cannot see, and ``cryptography`` exposes no raw RSA (every private operation
pads). Python's ``pow`` with CRT runs at ~0.04x of OpenSSL (bench/blind.py) and is
not constant time. OpenSSL's own RSA *is* what ``openssl speed rsa2048`` measures: constant-time
(``BN_FLG_CONSTTIME``) and blinded (``RSA_FLAG_BLINDING``, on by default). We reach it
through the libcrypto that Python's ``ssl`` module already links (no new dependency),
with ctypes: ``EVP_PKEY_sign`` under ``RSA_NO_PADDING`` on a context made once per key
and reused (a context is not safe for two threads at once, so contexts live in a small
pool: a thread takes one, or makes one, and puts it back). The RFC 9474 s^e == m check
uses ``EVP_PKEY_verify_recover`` on a second context of the same slot: ~21 us against
~210 for Python's ``pow`` with e = 65537 (measured). Not gmpy2 (a new dependency whose
``powmod`` is not constant time) nor pycryptodome: OpenSSL is the reference the
issue measures against, and we reach it at ~0.9 of ``openssl speed``.

When libcrypto cannot be loaded (or lacks a symbol) the fallback is Python's ``pow``
with CRT and message blinding (``backend == "python"``; a warning is logged once).

Theory of the checks: every OpenSSL call's return code is checked and a failure
clears OpenSSL's (thread-local, shared with ``ssl``) error queue before raising
``RawRSAError``. Key material is never printed, and the DER handed to OpenSSL is
wiped from the ctypes buffer once parsed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import secrets
import threading
import weakref
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

__all__ = ["RawRSA", "RawRSAError", "load_libcrypto"]

_log = logging.getLogger(__name__)

RSA_NO_PADDING = 3
_EVP_PKEY_CTRL_RSA_PADDING = 0x1000 + 1  # EVP_PKEY_ALG_CTRL + 1 (OpenSSL 1.1 path)

_c_p = ctypes.c_void_p
_c_size_p = ctypes.POINTER(ctypes.c_size_t)


class RawRSAError(Exception):
    """A raw RSA operation failed inside OpenSSL (never a peer's fault: the caller
    checks the input range first)."""


def _libcrypto_candidates() -> list[str]:
    """The libcrypto files mapped into this process (``ssl`` maps its own), then the
    one the linker would find; ``load_libcrypto`` picks the one of ``ssl``'s version."""
    import ssl  # noqa: F401  (maps _ssl's libcrypto into the process)

    paths: list[str] = []
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            for line in maps:
                fields = line.split()
                path = fields[-1] if len(fields) >= 6 else ""
                if "/libcrypto" in path and ".so" in path and path not in paths:
                    paths.append(path)
    except OSError:
        pass
    found = ctypes.util.find_library("crypto")
    if found and found not in paths:
        paths.append(found)
    return paths


def _version(lib: Any) -> int | None:
    try:
        lib.OpenSSL_version_num.restype = ctypes.c_ulong
        lib.OpenSSL_version_num.argtypes = []
        return int(lib.OpenSSL_version_num())
    except AttributeError:  # before 1.1
        return None


_LIB_LOCK = threading.Lock()
_LIB: list[Any] = []  # [] not tried yet; [None] unavailable; [lib] loaded


def _declare(lib: Any) -> Any:
    """Set the prototypes; raises AttributeError when a required symbol is missing."""
    lib.d2i_AutoPrivateKey.restype = _c_p
    lib.d2i_AutoPrivateKey.argtypes = [_c_p, ctypes.POINTER(ctypes.c_char_p), ctypes.c_long]
    lib.EVP_PKEY_free.restype = None
    lib.EVP_PKEY_free.argtypes = [_c_p]
    lib.EVP_PKEY_CTX_new.restype = _c_p
    lib.EVP_PKEY_CTX_new.argtypes = [_c_p, _c_p]
    lib.EVP_PKEY_CTX_free.restype = None
    lib.EVP_PKEY_CTX_free.argtypes = [_c_p]
    for name in ("EVP_PKEY_sign_init", "EVP_PKEY_verify_recover_init"):
        getattr(lib, name).restype = ctypes.c_int
        getattr(lib, name).argtypes = [_c_p]
    for name in ("EVP_PKEY_sign", "EVP_PKEY_verify_recover"):
        getattr(lib, name).restype = ctypes.c_int
        getattr(lib, name).argtypes = [_c_p, ctypes.c_char_p, _c_size_p, ctypes.c_char_p,
                                       ctypes.c_size_t]
    lib.ERR_clear_error.restype = None
    lib.ERR_clear_error.argtypes = []
    if hasattr(lib, "EVP_PKEY_CTX_set_rsa_padding"):  # a function from OpenSSL 3.0
        lib.EVP_PKEY_CTX_set_rsa_padding.restype = ctypes.c_int
        lib.EVP_PKEY_CTX_set_rsa_padding.argtypes = [_c_p, ctypes.c_int]
    else:  # 1.1: the macro's expansion
        lib.EVP_PKEY_CTX_ctrl.restype = ctypes.c_int
        lib.EVP_PKEY_CTX_ctrl.argtypes = [_c_p, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                                          ctypes.c_int, _c_p]
    return lib


def load_libcrypto() -> Any | None:
    """The declared libcrypto, or None when it cannot be loaded (logged once)."""
    with _LIB_LOCK:
        if not _LIB:
            import ssl

            usable: list[Any] = []
            for path in _libcrypto_candidates():
                try:
                    lib = _declare(ctypes.CDLL(path))
                except (OSError, AttributeError) as exc:
                    _log.debug("ecash: %s not usable: %s", path, exc)
                    continue
                usable.append(lib)
            # ssl's own library first (the first mapped of its version): the one
            # Python's TLS links; else any that declares every symbol.
            same = [lib for lib in usable if _version(lib) == ssl.OPENSSL_VERSION_NUMBER]
            lib = (same or usable or [None])[0]
            if lib is None:
                _log.warning("ecash: no usable libcrypto; blind signing falls back to "
                             "Python's pow (slow, not constant time)")
            _LIB.append(lib)
        return _LIB[0]


def _set_no_padding(lib: Any, ctx: int) -> int:
    if hasattr(lib, "EVP_PKEY_CTX_set_rsa_padding"):
        return int(lib.EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_NO_PADDING))
    return int(lib.EVP_PKEY_CTX_ctrl(ctx, -1, -1, _EVP_PKEY_CTRL_RSA_PADDING,
                                     RSA_NO_PADDING, None))


def _free_all(lib: Any, pkey: int, contexts: list[int]) -> None:
    """Finalizer: frees every context made for the key, then the key."""
    while contexts:
        lib.EVP_PKEY_CTX_free(contexts.pop())
    lib.EVP_PKEY_free(pkey)


class _Slot:
    """What one thread holds while it signs: a sign context, a verify-recover context
    and their output buffers, all made once and reused (no allocation per signature)."""

    __slots__ = ("out", "out_len", "recover_ctx", "recovered", "recovered_len", "sign_ctx")

    def __init__(self, sign_ctx: int, recover_ctx: int, k: int) -> None:
        self.sign_ctx, self.recover_ctx = sign_ctx, recover_ctx
        self.out = ctypes.create_string_buffer(k)
        self.recovered = ctypes.create_string_buffer(k)
        self.out_len = ctypes.c_size_t(k)
        self.recovered_len = ctypes.c_size_t(k)


class _OpenSSLKey:
    """One EVP_PKEY and a pool of slots (EVP_PKEY_CTX pairs) for it."""

    def __init__(self, lib: Any, private_key: rsa.RSAPrivateKey) -> None:
        self._lib = lib
        self._k = (private_key.key_size + 7) // 8
        der = private_key.private_bytes(serialization.Encoding.DER,
                                        serialization.PrivateFormat.TraditionalOpenSSL,
                                        serialization.NoEncryption())
        buf = ctypes.create_string_buffer(der, len(der))
        try:
            cursor = ctypes.c_char_p(ctypes.addressof(buf))
            pkey = lib.d2i_AutoPrivateKey(None, ctypes.byref(cursor), len(der))
        finally:
            ctypes.memset(buf, 0, len(der))
            del der
        if not pkey:
            lib.ERR_clear_error()
            raise RawRSAError("d2i_AutoPrivateKey failed")
        self._pkey: int = pkey
        self._all: list[int] = []  # every context made (freed by the finalizer)
        self._pool: list[_Slot] = []
        self._lock = threading.Lock()
        self._finalizer = weakref.finalize(self, _free_all, lib, pkey, self._all)

    def _new_ctx(self, init: Any) -> int:
        lib = self._lib
        ctx = lib.EVP_PKEY_CTX_new(self._pkey, None)
        if not ctx:
            lib.ERR_clear_error()
            raise RawRSAError("EVP_PKEY_CTX_new failed")
        with self._lock:
            self._all.append(ctx)
        if init(ctx) <= 0 or _set_no_padding(lib, ctx) <= 0:
            lib.ERR_clear_error()
            raise RawRSAError("EVP_PKEY context set-up failed")
        return int(ctx)

    def _take(self) -> _Slot:
        with self._lock:
            if self._pool:
                return self._pool.pop()
        return _Slot(self._new_ctx(self._lib.EVP_PKEY_sign_init),
                     self._new_ctx(self._lib.EVP_PKEY_verify_recover_init), self._k)

    def _sign(self, slot: _Slot, block: bytes) -> bytes:
        slot.out_len.value = self._k
        ok = self._lib.EVP_PKEY_sign(slot.sign_ctx, slot.out, ctypes.byref(slot.out_len),
                                     block, len(block))
        if ok <= 0 or slot.out_len.value != self._k:
            self._lib.ERR_clear_error()
            raise RawRSAError("EVP_PKEY_sign failed")
        return slot.out.raw

    def _recover(self, slot: _Slot, block: bytes) -> bytes:
        slot.recovered_len.value = self._k
        ok = self._lib.EVP_PKEY_verify_recover(slot.recover_ctx, slot.recovered,
                                               ctypes.byref(slot.recovered_len),
                                               block, len(block))
        if ok <= 0 or slot.recovered_len.value != self._k:
            self._lib.ERR_clear_error()
            raise RawRSAError("EVP_PKEY_verify_recover failed")
        return slot.recovered.raw

    def private(self, block: bytes) -> bytes:
        slot = self._take()
        try:
            return self._sign(slot, block)
        finally:
            with self._lock:  # a failed op leaves the contexts reusable
                self._pool.append(slot)

    def public(self, block: bytes) -> bytes:
        slot = self._take()
        try:
            return self._recover(slot, block)
        finally:
            with self._lock:
                self._pool.append(slot)

    def sign_checked(self, block: bytes) -> bytes:
        slot = self._take()
        try:
            signature = self._sign(slot, block)
            if self._recover(slot, signature) != block:
                raise RawRSAError("signing failure: s^e != m")
            return signature
        finally:
            with self._lock:
                self._pool.append(slot)


class _PythonKey:
    """RSASP1 by CRT with message blinding (RFC 8017 5.2.1 note; Kocher 1996): the
    exponentiation sees m * r^e, never m, so its timing says nothing of m."""

    def __init__(self, private_key: rsa.RSAPrivateKey) -> None:
        numbers = private_key.private_numbers()
        self._n = numbers.public_numbers.n
        self._e = numbers.public_numbers.e
        self._p, self._q = numbers.p, numbers.q
        self._dp, self._dq, self._qinv = numbers.dmp1, numbers.dmq1, numbers.iqmp
        self._k = (self._n.bit_length() + 7) // 8

    def private(self, block: bytes) -> bytes:
        n = self._n
        m = int.from_bytes(block, "big")
        while True:
            r = secrets.randbelow(n - 2) + 2
            try:
                r_inv = pow(r, -1, n)
            except ValueError:  # r shares a factor with n: astronomically unlikely
                continue
            break
        c = m * pow(r, self._e, n) % n
        m1 = pow(c % self._p, self._dp, self._p)
        m2 = pow(c % self._q, self._dq, self._q)
        h = self._qinv * (m1 - m2) % self._p
        s = (m2 + h * self._q) * r_inv % n
        return s.to_bytes(self._k, "big")

    def public(self, block: bytes) -> bytes:
        return pow(int.from_bytes(block, "big"), self._e, self._n).to_bytes(self._k, "big")

    def sign_checked(self, block: bytes) -> bytes:
        signature = self.private(block)
        if self.public(signature) != block:
            raise RawRSAError("signing failure: s^e != m")
        return signature


class RawRSA:
    """RSASP1 and RSAVP1 on ``k``-byte big-endian blocks for one private key.

    The caller checks that a block is ``k`` bytes and below ``n`` (RFC 8017's
    "message representative out of range"); OpenSSL refuses such a block too
    (``RawRSAError``). Safe to call from several threads at once.

    Args:
        private_key: the RSA key.
        backend: ``"openssl"``, ``"python"``, or None for OpenSSL when available.
    """

    def __init__(self, private_key: rsa.RSAPrivateKey, *, backend: str | None = None) -> None:
        if backend not in (None, "openssl", "python"):
            raise ValueError(f"unknown backend {backend!r}")
        lib = load_libcrypto() if backend != "python" else None
        if backend == "openssl" and lib is None:
            raise RawRSAError("libcrypto is not available")
        self._key: _OpenSSLKey | _PythonKey
        if lib is not None:
            self._key = _OpenSSLKey(lib, private_key)
            self.backend = "openssl"
        else:
            self._key = _PythonKey(private_key)
            self.backend = "python"

    def private(self, block: bytes) -> bytes:
        """s = block^d mod n, as k bytes (constant-time and blinded under OpenSSL)."""
        return self._key.private(block)

    def public(self, block: bytes) -> bytes:
        """block^e mod n, as k bytes."""
        return self._key.public(block)

    def sign_checked(self, block: bytes) -> bytes:
        """``private(block)``, then RSAVP1 of the result must give ``block`` back
        (RFC 9474 4.3 steps 3-4: a faulty CRT result would leak the key); raises
        RawRSAError ("signing failure") when it does not. One slot for both ops."""
        return self._key.sign_checked(block)
