"""RFC 9474 blind RSA (services/payment/ecash/_blind.py) and its raw RSA (_rawrsa.py):
every vector of the RFC's Appendix A through our code on both backends, the refusals
with their stable codes, the s^e == m check, threads, and the fallback."""

from __future__ import annotations

import functools
import gc
import json
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from semper.services.payment.ecash import (
    PREFIX_LEN,
    BadBlindMessage,
    BadBlindSignature,
    BadCoinSignature,
    BlindSigner,
    _rawrsa,
    blind,
    finalize,
    prepare,
    verify,
)
from semper.services.payment.ecash import _blind as blind_module
from semper.services.payment.ecash._rawrsa import RawRSA, RawRSAError

VECTORS = Path(__file__).resolve().parent / "vectors"
RFC = json.loads((VECTORS / "rfc9474-blind-rsa.json").read_text(encoding="utf-8"))
PSS = json.loads((VECTORS / "wycheproof-rsa-pss-2048-sha384-mgf1-48.json")
                 .read_text(encoding="utf-8"))
BACKENDS = ["python", *(["openssl"] if _rawrsa.load_libcrypto() is not None else [])]


@functools.cache
def _vector_key(p: int, q: int, d: int, e: int, n: int) -> rsa.RSAPrivateKey:
    """The vectors' 4096-bit key (all four share it; validated once)."""
    public = rsa.RSAPublicNumbers(e, n)
    return rsa.RSAPrivateNumbers(p, q, d, rsa.rsa_crt_dmp1(d, p), rsa.rsa_crt_dmq1(d, q),
                                 rsa.rsa_crt_iqmp(p, q), public).private_key()


@pytest.fixture(scope="module")
def key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def other_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def default_signer(key: rsa.RSAPrivateKey) -> BlindSigner:
    return BlindSigner(key)


@pytest.fixture(scope="module", params=BACKENDS)
def signer(request: pytest.FixtureRequest, key: rsa.RSAPrivateKey) -> BlindSigner:
    return BlindSigner(key, backend=request.param)


# -- RFC 9474 Appendix A: every vector, both backends -------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("vector", RFC, ids=[v["name"] for v in RFC])
def test_rfc9474_vector(vector: dict[str, str], backend: str) -> None:
    """The randomized variants prepare with the vector's prefix; the deterministic
    ones prepare by identity (empty prefix). The salt's length is the vector's sLen
    (48, or 0 for PSSZERO); r is the inverse of the vector's inv."""
    private_key = _vector_key(*(int(vector[name], 16) for name in ("p", "q", "d", "e", "n")))
    public_key = private_key.public_key()
    n = public_key.public_numbers().n
    msg, prefix = bytes.fromhex(vector["msg"]), bytes.fromhex(vector["msg_prefix"])
    prepared = prepare(msg, prefix=prefix) if prefix else msg
    assert prepared == bytes.fromhex(vector["input_msg"])
    salt = bytes.fromhex(vector["salt"])
    assert len(salt) == int(vector["sLen"], 16)
    if "encoded_msg" in vector:
        encoded = blind_module._emsa_pss_encode(prepared, n.bit_length() - 1, salt)
        assert encoded.hex() == vector["encoded_msg"]

    inv = int(vector["inv"], 16)
    blinded, inv_bytes = blind(public_key, prepared, salt=salt, r=pow(inv, -1, n))
    assert blinded.hex() == vector["blinded_msg"]
    assert int.from_bytes(inv_bytes, "big") == inv and len(inv_bytes) == 512

    signer = BlindSigner(private_key, backend=backend)
    assert signer.backend == backend
    blind_sig = signer.sign(blinded)
    assert blind_sig.hex() == vector["blind_sig"]

    signature = finalize(public_key, prepared, blind_sig, inv_bytes, salt_len=len(salt))
    assert signature.hex() == vector["sig"]
    verify(public_key, prepared, signature, salt_len=len(salt))


def test_rfc9474_file_holds_the_four_variants() -> None:
    assert sorted(v["name"] for v in RFC) == sorted([
        "RSABSSA-SHA384-PSS-Randomized", "RSABSSA-SHA384-PSSZERO-Randomized",
        "RSABSSA-SHA384-PSS-Deterministic", "RSABSSA-SHA384-PSSZERO-Deterministic"])


# -- verify: Wycheproof RSA-PSS (SHA-384, MGF1-SHA-384, salt 48) --------------------

_PSS_CASES = [(group["publicKeyPem"], case) for group in PSS["testGroups"]
              for case in group["tests"]]


@pytest.mark.parametrize(("pem", "case"), _PSS_CASES, ids=[str(c["tcId"]) for _, c in _PSS_CASES])
def test_verify_wycheproof(pem: str, case: dict[str, Any]) -> None:
    """A valid case verifies; an invalid one (modified padding, PKCS #1 v1.5, wrong
    length) raises ecash.bad_coin and never another exception."""
    public_key = serialization.load_pem_public_key(pem.encode())
    assert isinstance(public_key, rsa.RSAPublicKey)
    msg, sig = bytes.fromhex(case["msg"]), bytes.fromhex(case["sig"])
    if case["result"] == "valid":
        verify(public_key, msg, sig)
    else:
        with pytest.raises(BadCoinSignature) as caught:
            verify(public_key, msg, sig)
        assert caught.value.code == "ecash.bad_coin"


# -- round trips ---------------------------------------------------------------------

@settings(max_examples=20, deadline=None)
@given(msg=st.binary(max_size=200))
def test_blind_sign_finalize_round_trip(default_signer: BlindSigner, msg: bytes) -> None:
    public_key = default_signer.public_key
    signer = default_signer
    prepared = prepare(msg)
    assert len(prepared) == PREFIX_LEN + len(msg) and prepared.endswith(msg)
    blinded, inv = blind(public_key, prepared)
    assert len(blinded) == len(inv) == 256
    signature = finalize(public_key, prepared, signer.sign(blinded), inv)
    verify(public_key, prepared, signature)
    # The same message blinded twice looks unrelated to the signer.
    assert blind(public_key, prepared)[0] != blinded


def test_prepare_draws_a_fresh_prefix_and_refuses_a_short_one() -> None:
    assert prepare(b"coin")[:PREFIX_LEN] != prepare(b"coin")[:PREFIX_LEN]
    with pytest.raises(ValueError):
        prepare(b"coin", prefix=b"\0" * 31)


def test_backends_sign_alike(key: rsa.RSAPrivateKey) -> None:
    """RSASP1 is deterministic: the fallback and OpenSSL give the same bytes."""
    blinded, _ = blind(key.public_key(), prepare(b"coin"))
    assert len({BlindSigner(key, backend=b).sign(blinded) for b in BACKENDS}) == 1


# -- refusals ------------------------------------------------------------------------

def test_tampered_blind_signature_fails_finalize(signer: BlindSigner) -> None:
    public_key = signer.public_key
    prepared = prepare(b"coin")
    blinded, inv = blind(public_key, prepared)
    blind_sig = bytearray(signer.sign(blinded))
    blind_sig[100] ^= 0x01
    with pytest.raises(BadBlindSignature) as caught:
        finalize(public_key, prepared, bytes(blind_sig), inv)
    assert caught.value.code == "ecash.bad_blind_signature"


@pytest.mark.parametrize("length", [0, 255, 257])
def test_blind_signature_of_the_wrong_length_fails_finalize(signer: BlindSigner,
                                                             length: int) -> None:
    prepared = prepare(b"coin")
    blinded, inv = blind(signer.public_key, prepared)
    blind_sig = signer.sign(blinded)
    with pytest.raises(BadBlindSignature):
        finalize(signer.public_key, prepared, (blind_sig * 2)[:length], inv)


def test_an_inv_of_the_wrong_length_is_misuse(signer: BlindSigner) -> None:
    """inv is the wallet's own secret: a wrong one is a bug here, not the bank's fault."""
    prepared = prepare(b"coin")
    blinded, inv = blind(signer.public_key, prepared)
    with pytest.raises(ValueError):
        finalize(signer.public_key, prepared, signer.sign(blinded), inv[1:])


def test_blind_signature_under_another_key_fails_finalize(
        key: rsa.RSAPrivateKey, other_key: rsa.RSAPrivateKey) -> None:
    """A bank that signs a withdrawal with another denomination's key (the issue's
    "blind signature on the wrong key"): the wallet finds out at finalize."""
    prepared = prepare(b"coin")
    blinded, inv = blind(key.public_key(), prepared)
    # The other key's modulus may be smaller than the blinded value: reduce it.
    other_n = other_key.public_key().public_numbers().n
    wrong = BlindSigner(other_key).sign(
        (int.from_bytes(blinded, "big") % other_n).to_bytes(256, "big"))
    with pytest.raises(BadBlindSignature):
        finalize(key.public_key(), prepared, wrong, inv)


def test_finalize_against_another_message_fails(signer: BlindSigner) -> None:
    prepared = prepare(b"coin")
    blinded, inv = blind(signer.public_key, prepared)
    with pytest.raises(BadBlindSignature):
        finalize(signer.public_key, prepare(b"coin"), signer.sign(blinded), inv)


def _out_of_range(n: int) -> list[tuple[str, bytes]]:
    return [
        ("n itself", n.to_bytes(256, "big")),  # RSASP1: m must be below n
        ("n + 1", (n + 1).to_bytes(256, "big")),
        ("all ones", b"\xff" * 256),
        ("one byte short", b"\x01" * 255),
        ("one byte long", b"\x00" + b"\x01" * 256),  # value < n, but not k bytes
        ("empty", b""),
    ]


def test_blinded_message_out_of_range_or_wrong_length_is_refused(signer: BlindSigner) -> None:
    n = signer.public_key.public_numbers().n
    for label, blinded in _out_of_range(n):
        with pytest.raises(BadBlindMessage) as caught:
            signer.sign(blinded)
        assert caught.value.code == "ecash.bad_withdrawal", label
    # n - 1 is in range and signs.
    assert len(signer.sign((n - 1).to_bytes(256, "big"))) == 256


def test_signature_under_another_key_fails_verify(
        key: rsa.RSAPrivateKey, other_key: rsa.RSAPrivateKey) -> None:
    """A forged coin: a valid signature, but by a key that is not the denomination's."""
    public_key = other_key.public_key()
    prepared = prepare(b"coin")
    blinded, inv = blind(public_key, prepared)
    signature = finalize(public_key, prepared, BlindSigner(other_key).sign(blinded), inv)
    verify(public_key, prepared, signature)
    with pytest.raises(BadCoinSignature) as caught:
        verify(key.public_key(), prepared, signature)
    assert caught.value.code == "ecash.bad_coin"
    for bad in (b"", signature[:-1], signature + b"\0", b"\xff" * 256):
        with pytest.raises(BadCoinSignature):
            verify(public_key, prepared, bad)
    with pytest.raises(BadCoinSignature):  # the prefix is part of what is signed
        verify(public_key, prepare(prepared[PREFIX_LEN:]), signature)


def test_a_faulty_private_result_is_never_returned(key: rsa.RSAPrivateKey,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """RFC 9474 4.3: BlindSign checks s^e == m, so a miscomputed signature (a fault
    on the CRT, which would give the key away) raises and is not sent."""
    blinded, _ = blind(key.public_key(), prepare(b"coin"))
    for backend in BACKENDS:
        signer = BlindSigner(key, backend=backend)
        target = type(signer._raw._key)
        method = "_sign" if backend == "openssl" else "private"
        good = getattr(target, method)

        def faulty(*args: Any, good: Any = good) -> bytes:
            s = bytearray(good(*args))
            s[-1] ^= 0x01
            return bytes(s)

        monkeypatch.setattr(target, method, faulty)
        with pytest.raises(RawRSAError, match="signing failure"):
            signer.sign(blinded)
        monkeypatch.undo()
        assert signer.sign(blinded)  # unpatched it signs again: the slot was put back


# -- the raw RSA itself --------------------------------------------------------------

@pytest.mark.skipif("openssl" not in BACKENDS, reason="no libcrypto")
def test_openssl_raw_rsa_refuses_out_of_range_and_stays_usable(key: rsa.RSAPrivateKey) -> None:
    """Below BlindSigner's own check, OpenSSL refuses m >= n too (and clears its error
    queue, which Python's ssl shares)."""
    raw = RawRSA(key, backend="openssl")
    n = key.public_key().public_numbers().n
    with pytest.raises(RawRSAError):
        raw.private(n.to_bytes(256, "big"))
    assert pow(int.from_bytes(raw.private(b"\0" * 255 + b"\x02"), "big"), 65537, n) == 2


def test_signing_from_threads(key: rsa.RSAPrivateKey) -> None:
    """The bank signs from trio.to_thread workers: concurrent signs give the same bytes
    as one at a time, and each thread at most holds one context pair."""
    public_key = key.public_key()
    blocks = [blind(public_key, prepare(bytes([i])))[0] for i in range(8)]
    for backend in BACKENDS:
        signer = BlindSigner(key, backend=backend)
        expected = [signer.sign(b) for b in blocks]
        start = threading.Barrier(4)

        count = 8 if backend == "python" else 40

        def work(offset: int, signer: BlindSigner = signer, start: threading.Barrier = start,
                 count: int = count) -> list[bytes]:
            start.wait(timeout=10)
            return [signer.sign(blocks[(offset + i) % 8]) for i in range(count)]

        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(work, range(4)))
        for offset, got in enumerate(results):
            assert got == [expected[(offset + i) % 8] for i in range(len(got))]
        if backend == "openssl":
            assert len(signer._raw._key._pool) <= 4


@pytest.mark.skipif("openssl" not in BACKENDS, reason="no libcrypto")
def test_openssl_contexts_are_freed_with_the_signer(key: rsa.RSAPrivateKey) -> None:
    signer = BlindSigner(key, backend="openssl")
    signer.sign(blind(key.public_key(), prepare(b"coin"))[0])
    finalizer = signer._raw._key._finalizer
    contexts = finalizer.peek()[2][2]  # type: ignore[index]  # (obj, func, args, kw)
    assert finalizer.alive and len(contexts) == 2
    del signer
    gc.collect()
    assert not finalizer.alive and contexts == []


@pytest.mark.skipif("openssl" not in BACKENDS, reason="no libcrypto")
def test_the_libcrypto_is_the_one_ssl_links() -> None:
    import ssl

    assert _rawrsa._version(_rawrsa.load_libcrypto()) == ssl.OPENSSL_VERSION_NUMBER


def test_fallback_when_libcrypto_cannot_be_loaded(key: rsa.RSAPrivateKey,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    """No libcrypto: the Python CRT backend, said in ``backend``, warned once."""
    monkeypatch.setattr(_rawrsa, "_LIB", [])
    monkeypatch.setattr(_rawrsa, "_libcrypto_candidates", lambda: ["/nonexistent/libcrypto.so"])
    with caplog.at_level(logging.WARNING, logger=_rawrsa.__name__):
        first, second = BlindSigner(key), BlindSigner(key)
    assert first.backend == second.backend == "python"
    assert len([r for r in caplog.records if "falls back" in r.getMessage()]) == 1
    with pytest.raises(RawRSAError):
        BlindSigner(key, backend="openssl")
    prepared = prepare(b"coin")
    blinded, inv = blind(key.public_key(), prepared)
    verify(key.public_key(), prepared, finalize(key.public_key(), prepared,
                                                first.sign(blinded), inv))


def test_unknown_backend_is_misuse(key: rsa.RSAPrivateKey) -> None:
    with pytest.raises(ValueError):
        BlindSigner(key, backend="gmpy2")
