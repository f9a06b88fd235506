"""Each certificate's and CRL's signature is verified once, and nothing else is cached.

A purchase checked the same certificates and the same CRL with every statement: 18 of
its 32 Ed25519 operations (issue 8, item 6). The cache remembers signatures only, by
the digest of the bytes signed; validity at ``now``, revocation (from the CRL given)
and staleness are judged on every call, so a warm cache changes no answer.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from pki import NOW, Market

from semper.services.certificates import (
    BadCrl,
    CrlStale,
    Expired,
    Revoked,
    Untrusted,
    create_ca,
    issue_crl,
    validate_certificate,
    validate_crl,
)
from semper.services.certificates._cache import SignatureCache
from semper.services.certificates._validate import SIGNATURES
from semper.services.statements import sign_statement, verify_statement

DAY = dt.timedelta(days=1)


@pytest.fixture(autouse=True)
def cold_cache() -> None:
    SIGNATURES.clear()


def validate(market: Market, cert: x509.Certificate, **kw: object):
    kw.setdefault("crl", market.crl)
    kw.setdefault("now", NOW)
    return validate_certificate(cert, root=market.ca.certificate, **kw)  # type: ignore[arg-type]


def test_a_certificate_and_its_crl_are_verified_once(market: Market) -> None:
    seller = market.agent("seller", "seller")
    validate(market, seller.cert)
    cold = SIGNATURES.misses
    assert cold == 3  # the certificate's signature, the CRL's, the key usage
    for _ in range(5):
        assert validate(market, seller.cert).agent_id == "seller"
    assert SIGNATURES.misses == cold and SIGNATURES.hits == 15


def test_each_statement_checks_no_signature_but_its_own_once_warm(market: Market) -> None:
    seller = market.agent("seller", "seller")
    statements = [sign_statement("commerce.offer", {"sku": f"s{n}"}, key=seller.key,
                                 certificate=seller.cert, now_ms=int(NOW.timestamp() * 1000),
                                 nonce=bytes(16)) for n in range(4)]
    for statement in statements:
        verify_statement(statement, certificate=seller.cert, root=market.ca.certificate,
                         crl=market.crl, now=NOW)
    assert SIGNATURES.misses == 3  # the first statement's certificate, CRL and usage


def test_a_revoked_certificate_is_refused_with_the_cache_warm(market: Market) -> None:
    seller = market.agent("seller", "seller")
    validate(market, seller.cert)
    market.revoke(seller)
    with pytest.raises(Revoked):
        validate(market, seller.cert)
    statement = sign_statement("commerce.offer", {}, key=seller.key, certificate=seller.cert,
                               now_ms=int(NOW.timestamp() * 1000), nonce=bytes(16))
    with pytest.raises(Revoked):
        verify_statement(statement, certificate=seller.cert, root=market.ca.certificate,
                         crl=market.crl, now=NOW)


def test_an_expired_certificate_is_refused_with_the_cache_warm(market: Market) -> None:
    seller = market.agent("seller", "seller", not_after=NOW + DAY)
    validate(market, seller.cert)
    later = NOW + 2 * DAY
    crl = issue_crl(market.ca, [], now=later, number=5)
    with pytest.raises(Expired):
        validate(market, seller.cert, crl=crl, now=later)


def test_a_stale_crl_is_refused_with_the_cache_warm(market: Market) -> None:
    seller = market.agent("seller", "seller")
    validate(market, seller.cert)
    with pytest.raises(CrlStale):
        validate(market, seller.cert, now=NOW + 40 * DAY)


def test_a_changed_byte_is_another_key(market: Market, tmp_path: Path) -> None:
    """A forged certificate or CRL whose names match the cached ones is verified anew
    (and refused): the key is the digest of the whole DER, and of the root."""
    seller = market.agent("seller", "seller")
    validate(market, seller.cert)
    der = bytearray(seller.cert.public_bytes(serialization.Encoding.DER))
    der[-1] ^= 0x01
    with pytest.raises(Untrusted):
        validate(market, x509.load_der_x509_certificate(bytes(der)))
    impostor = create_ca("test root", now=NOW)  # the same name, another key
    with pytest.raises(BadCrl):
        validate(market, seller.cert, crl=issue_crl(impostor, [], now=NOW, number=1))
    (tmp_path / "other").mkdir()
    other = Market(tmp_path / "other")  # a root of the same name: its own key
    with pytest.raises(Untrusted):
        validate_certificate(seller.cert, root=other.ca.certificate, crl=other.crl, now=NOW)


def test_a_failed_check_is_not_remembered(market: Market) -> None:
    forged = issue_crl(create_ca("test root", now=NOW), [], now=NOW, number=1)
    for _ in range(2):
        with pytest.raises(BadCrl):
            validate_crl(forged, root=market.ca.certificate, now=NOW)
    assert len(SIGNATURES) == 0 and SIGNATURES.misses == 2


def test_the_cache_is_bounded() -> None:
    cache = SignatureCache(size=2)
    calls: list[bytes] = []
    for key in (b"a", b"b", b"a", b"c", b"b"):
        cache.check(key, lambda key=key: calls.append(key))
    assert calls == [b"a", b"b", b"c", b"b"]  # b was evicted (least recently used)
    assert len(cache) == 2
