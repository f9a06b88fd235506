"""Enrollment tokens, proofs and CSR checks (services/certificates/_enrollment.py),
and one certificate's status (_status.py): pure, no network, no clock."""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import hashlib

import msgpack
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from cryptography.x509.oid import NameOID
from hypothesis import given
from hypothesis import strategies as st
from pki import NOW, Market

from semper.services.certificates import (
    TOKEN_PREFIX,
    BadCsr,
    BadEnrollRequest,
    BadProof,
    BadStatusQuery,
    CertStatus,
    CsrKeyMismatch,
    EnrollmentToken,
    EnrollRequest,
    IssuedCertificate,
    Level,
    MalformedToken,
    Revocation,
    StatusQuery,
    StatusReport,
    TokenExpired,
    TokenUsed,
    UnknownToken,
    WrongCa,
    certificate_status,
    check_ca_certificate,
    check_csr,
    check_redemption,
    enrollment_proof,
    invite,
    issue_crl,
    make_csr,
    to_ms,
)
from semper.services.money import Amount

NOW_MS = to_ms(NOW)
DAY_MS = 86_400_000
CA_FP = hashlib.sha256(b"the CA agent's certificate").digest()


def _invite(**kw: object):
    args = dict(agent_id="shop.books", role="seller", level=Level.VERIFIED_CONTACT,
                liability=None, now_ms=NOW_MS, expires_in_ms=DAY_MS, ca_id="ca",
                ca_address="127.0.0.1:4100", ca_fingerprint=CA_FP)
    args.update(kw)
    return invite(**args)  # type: ignore[arg-type]


# -- the token's text form ---------------------------------------------------------


def test_token_round_trips_through_its_text_form() -> None:
    invitation, token = _invite()
    text = token.encode()
    assert text.startswith(TOKEN_PREFIX) and "=" not in text and "\n" not in text
    assert EnrollmentToken.parse(f"  {text}\n") == token
    assert (token.token_id, token.secret) == (invitation.token_id, invitation.secret)
    assert token.expires_ms == invitation.expires_ms == NOW_MS + DAY_MS
    assert (token.agent_id, token.role, token.ca_id) == ("shop.books", "seller", "ca")


def test_every_token_is_new() -> None:
    first, second = _invite()[1], _invite()[1]
    assert first.token_id != second.token_id and first.secret != second.secret


def _text(value: object) -> str:
    raw = msgpack.packb(value, use_bin_type=True)
    return TOKEN_PREFIX + base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _wire(**changes: object) -> dict[str, object]:
    wire = _invite()[1].to_wire()
    wire.update(changes)
    return dict(sorted(wire.items()))


@pytest.mark.parametrize("text", [
    "",                                         # nothing
    "semper-enroll-2.AAAA",                     # a later version
    "semper-enroll-1.",                         # prefix only
    "semper-enroll-1.!!!!",                     # not base64url
    "semper-enroll-1.A",                        # impossible base64 length
    "semper-enroll-1.AAAA",                     # base64 of zero bytes: not msgpack map
    "x" * 5000,                                 # far too long
    _text([1, 2, 3]),                           # not a map
    _text({"id": b"x"}),                        # fields missing
    _text({**_wire(), "extra": 1}),             # a field too many
    _text(_wire(id=b"short")),                  # id not 16 bytes
    _text(_wire(secret="not bytes")),           # secret not bin
    _text(_wire(fingerprint=b"\0" * 31)),       # fingerprint not 32 bytes
    _text(_wire(agent="Not A Name")),           # agent id outside the name grammar
    _text(_wire(address="no port")),            # address not HOST:PORT
    _text(_wire(expires=True)),                 # bool is not an int
    _text(_wire(expires=-5)),                   # not positive
    _text(dict(reversed(list(_wire().items())))),  # keys not in canonical order
])
def test_malformed_tokens_are_refused(text: str) -> None:
    with pytest.raises(MalformedToken):
        EnrollmentToken.parse(text)


def test_a_truncated_token_is_malformed() -> None:
    text = _invite()[1].encode()
    for cut in range(len(TOKEN_PREFIX), len(text) - 1, 7):
        with pytest.raises(MalformedToken):
            EnrollmentToken.parse(text[:cut])


@given(st.binary(max_size=300))
def test_garbage_after_the_prefix_is_only_ever_malformed(data: bytes) -> None:
    text = TOKEN_PREFIX + base64.urlsafe_b64encode(data).rstrip(b"=").decode()
    try:
        EnrollmentToken.parse(text)
    except MalformedToken:
        pass


@pytest.mark.parametrize(("level", "liability"), [
    (Level.LIABLE, None),                       # liable needs an amount
    (Level.LIABLE, Amount("EUR", 0)),           # ...a positive one
    (Level.VERIFIED_CONTACT, Amount("EUR", 5)),  # an amount only at level liable
])
def test_invite_refuses_a_liability_that_does_not_fit_the_level(level, liability) -> None:
    with pytest.raises(ValueError):
        _invite(level=level, liability=liability)


def test_invite_refuses_bad_names_and_lifetimes() -> None:
    for kw in ({"agent_id": "Bad Id"}, {"role": ""}, {"expires_in_ms": 0}):
        with pytest.raises(ValueError):
            _invite(**kw)


# -- the pin ---------------------------------------------------------------------------


def test_the_pin_accepts_exactly_the_named_certificate() -> None:
    token = _invite(ca_fingerprint=hashlib.sha256(b"DER").digest())[1]
    check_ca_certificate(token, b"DER")
    with pytest.raises(WrongCa) as caught:
        check_ca_certificate(token, b"DER of another server")
    assert caught.value.detail["expected"] == token.ca_fingerprint.hex()


# -- CSRs -----------------------------------------------------------------------------


def _swap_key(csr_der: bytes, new_key: ed25519.Ed25519PublicKey) -> bytes:
    """The same CSR with another public key in it: its signature no longer fits."""
    csr = x509.load_der_x509_csr(csr_der)
    old = csr.public_key().public_bytes(serialization.Encoding.Raw,
                                        serialization.PublicFormat.Raw)
    new = new_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert csr_der.count(old) == 1
    return csr_der.replace(old, new)


def test_a_good_csr_yields_its_key() -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    assert check_csr(make_csr(key, "shop.books"), agent_id="shop.books") == key.public_key()


def test_csr_checks() -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    good = make_csr(key, "shop.books")
    other = ed25519.Ed25519PrivateKey.generate().public_key()
    with pytest.raises(CsrKeyMismatch):  # signed by one key, carries another
        check_csr(_swap_key(good, other), agent_id="shop.books")
    flipped = bytearray(good)
    flipped[-1] ^= 1  # last byte of the signature
    with pytest.raises(CsrKeyMismatch):
        check_csr(bytes(flipped), agent_id="shop.books")
    with pytest.raises(BadCsr, match="subject"):  # names another agent
        check_csr(good, agent_id="shop.music")
    with pytest.raises(BadCsr, match="readable"):
        check_csr(b"\x30\x03\x02\x01\x00", agent_id="shop.books")
    with pytest.raises(BadCsr):
        check_csr("not bytes", agent_id="shop.books")  # type: ignore[arg-type]


def test_a_csr_with_an_rsa_key_is_refused() -> None:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "shop.books")]))
           .sign(rsa_key, hashes.SHA256()))
    with pytest.raises(BadCsr, match="Ed25519"):
        check_csr(csr.public_bytes(serialization.Encoding.DER), agent_id="shop.books")


# -- redemption -----------------------------------------------------------------------


def test_redemption_order_of_checks() -> None:
    invitation, token = _invite()
    key = ed25519.Ed25519PrivateKey.generate()
    csr = make_csr(key, "shop.books")
    proof = enrollment_proof(token.secret, token.token_id, csr)

    assert check_redemption(invitation, proof=proof, csr_der=csr, now_ms=NOW_MS) \
        == key.public_key()
    with pytest.raises(UnknownToken):
        check_redemption(None, proof=proof, csr_der=csr, now_ms=NOW_MS)
    # The proof binds the CSR: the same proof for another CSR fails.
    other = make_csr(ed25519.Ed25519PrivateKey.generate(), "shop.books")
    with pytest.raises(BadProof):
        check_redemption(invitation, proof=proof, csr_der=other, now_ms=NOW_MS)
    with pytest.raises(BadProof):
        check_redemption(invitation, proof=b"\0" * 32, csr_der=csr, now_ms=NOW_MS)
    # Whoever lacks the secret learns nothing more: used and expired come after the proof.
    used = dataclasses.replace(invitation, used_ms=NOW_MS)
    with pytest.raises(BadProof):
        check_redemption(used, proof=b"\0" * 32, csr_der=csr, now_ms=NOW_MS)
    with pytest.raises(TokenUsed):
        check_redemption(used, proof=proof, csr_der=csr, now_ms=NOW_MS)
    with pytest.raises(TokenExpired):
        check_redemption(invitation, proof=proof, csr_der=csr,
                         now_ms=invitation.expires_ms)
    # A CSR whose signature does not fit its key, with a valid proof over it.
    swapped = _swap_key(csr, ed25519.Ed25519PrivateKey.generate().public_key())
    with pytest.raises(CsrKeyMismatch):
        check_redemption(invitation, csr_der=swapped, now_ms=NOW_MS,
                         proof=enrollment_proof(token.secret, token.token_id, swapped))


@pytest.mark.parametrize("body", [
    None,
    {"token": b"\0" * 16, "csr": b"x"},                          # no proof
    {"token": b"\0" * 15, "csr": b"x", "proof": b"\0" * 32},    # short token id
    {"token": b"\0" * 16, "csr": "x", "proof": b"\0" * 32},     # csr not bin
    {"token": b"\0" * 16, "csr": b"", "proof": b"\0" * 32},     # empty csr
    {"token": b"\0" * 16, "csr": b"x", "proof": b"\0" * 31},    # short proof
])
def test_bad_enroll_requests(body: object) -> None:
    with pytest.raises(BadEnrollRequest):
        EnrollRequest.from_wire(body)


def test_enroll_request_round_trip() -> None:
    request = EnrollRequest(token_id=b"\1" * 16, csr_der=b"csr", proof=b"\2" * 32)
    assert EnrollRequest.from_wire(request.to_wire()) == request


# -- status -----------------------------------------------------------------------------


def test_status(market: Market) -> None:
    agent = market.agent("shop.books", "seller")
    issued = IssuedCertificate(serial=agent.cert.serial_number, agent_id="shop.books",
                               role="seller", level=Level.SELF_ASSERTED,
                               fingerprint=b"\0" * 32,
                               not_after_ms=to_ms(agent.cert.not_valid_after_utc),
                               issued_ms=NOW_MS)
    by_id = StatusQuery(agent_id="shop.books")
    report = certificate_status(issued, by_id, crl=market.crl, now=NOW)
    assert (report.status, report.serial, report.crl_number) == (
        CertStatus.GOOD, agent.cert.serial_number, 1)
    later = agent.cert.not_valid_after_utc + dt.timedelta(seconds=1)
    assert certificate_status(issued, by_id, crl=market.crl, now=later).status \
        is CertStatus.EXPIRED
    unknown = certificate_status(None, StatusQuery(agent_id="nobody"), crl=market.crl, now=NOW)
    assert (unknown.status, unknown.agent_id, unknown.serial) == (
        CertStatus.UNKNOWN, "nobody", None)

    market.revoke(agent)
    revoked = certificate_status(issued, by_id, crl=market.crl, now=later)
    assert revoked.status is CertStatus.REVOKED  # revoked wins over expired
    assert revoked.revoked_ms == to_ms(NOW.replace(microsecond=0))
    # The CRL speaks even for a serial the CA has no record of.
    crl = issue_crl(market.ca, [Revocation(12345, NOW)], now=NOW, number=9)
    lost = certificate_status(None, StatusQuery(serial=12345), crl=crl, now=NOW)
    assert (lost.status, lost.crl_number) == (CertStatus.REVOKED, 9)
    assert StatusReport.from_wire(revoked.to_wire()) == revoked


@pytest.mark.parametrize("body", [
    None, {}, {"agent": "a", "serial": "1"}, {"agent": "Not Valid"}, {"serial": "0x12"},
    {"serial": 12}, {"serial": "A1"}, {"other": "x"},
])
def test_bad_status_queries(body: object) -> None:
    with pytest.raises(BadStatusQuery):
        StatusQuery.from_wire(body)


def test_status_query_round_trip() -> None:
    for query in (StatusQuery(agent_id="bank"), StatusQuery(serial=0xABCDEF)):
        assert StatusQuery.from_wire(query.to_wire()) == query
