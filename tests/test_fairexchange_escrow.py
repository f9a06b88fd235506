"""Escrow: HPKE (RFC 9180) round trip, and each way an escrow can fail to give the
content refused with its reason: a moved escrow, a tampered ciphertext, a wrong key,
content other than the signed digest; the notary's escrow key statement checked."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import x25519
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from pki import NOW, Market

from semper.services.fairexchange._errors import BadEscrow, BadEscrowKey, BadKey
from semper.services.fairexchange._escrow import (
    ESCROW_SIZE,
    EscrowLabel,
    check_escrow_key,
    digest,
    open_content,
    open_escrow,
    recover,
    seal,
    sign_escrow_key,
)
from semper.services.statements import WrongSigner, canonical_encode

NOW_MS = int(NOW.timestamp() * 1000)
MAIL = b"the message, certified"
NOTARY = x25519.X25519PrivateKey.generate()


def label(**changes: object) -> EscrowLabel:
    fields: dict[str, object] = {"purpose": "mail", "exchange": b"\x01" * 32,
                                 "sender": "alice", "receiver": "bob", "notary": "notary"}
    fields.update(changes)
    return EscrowLabel(**fields)  # type: ignore[arg-type]


def sealed(plaintext: bytes = MAIL, at: EscrowLabel | None = None) -> tuple[bytes, bytes, bytes]:
    key = os.urandom(32)
    ciphertext, escrow = seal(plaintext, key=key, nonce=os.urandom(12), label=at or label(),
                              escrow_key=NOTARY.public_key())
    return key, ciphertext, escrow


def test_round_trip_through_the_notary() -> None:
    key, ciphertext, escrow = sealed()
    assert len(escrow) == ESCROW_SIZE
    got = recover(ciphertext, escrow, private_keys=[NOTARY], label=label(),
                  content_digest=digest(MAIL))
    assert got == key
    assert open_content(ciphertext, key=got, label=label(), content_digest=digest(MAIL)) == MAIL


@pytest.mark.parametrize("moved", [
    {"exchange": b"\x02" * 32},   # the same escrow shown for another exchange
    {"receiver": "carol"},        # ... to another receiver
    {"sender": "mallory"},        # ... as another sender's
    {"notary": "notary2"},        # ... to another notary
    {"purpose": "goods"},         # ... as a purchase's goods
])
def test_a_moved_escrow_does_not_open(moved: dict[str, object]) -> None:
    _, ciphertext, escrow = sealed()
    with pytest.raises(BadEscrow) as caught:
        recover(ciphertext, escrow, private_keys=[NOTARY], label=label(**moved),
                content_digest=digest(MAIL))
    assert caught.value.detail == {"reason": "escrow"}


def test_an_escrow_moved_to_another_ciphertext_does_not_open() -> None:
    _, _, escrow = sealed()
    _, other, _ = sealed()
    with pytest.raises(BadEscrow) as caught:
        recover(other, escrow, private_keys=[NOTARY], label=label(),
                content_digest=digest(MAIL))
    assert caught.value.detail == {"reason": "escrow"}


def test_a_tampered_ciphertext_is_refused() -> None:
    key, ciphertext, escrow = sealed()
    tampered = ciphertext[:-1] + bytes([ciphertext[-1] ^ 1])
    # the escrow names the ciphertext's digest: tampering is a bad escrow for the notary
    with pytest.raises(BadEscrow):
        recover(tampered, escrow, private_keys=[NOTARY], label=label(),
                content_digest=digest(MAIL))
    # and the receiver holding the right key cannot open it either
    with pytest.raises(BadKey) as caught:
        open_content(tampered, key=key, label=label(), content_digest=digest(MAIL))
    assert caught.value.detail == {"reason": "ciphertext"}


def test_a_wrong_key_is_refused() -> None:
    _, ciphertext, escrow = sealed()
    with pytest.raises(BadKey):
        open_content(ciphertext, key=os.urandom(32), label=label(),
                     content_digest=digest(MAIL))
    with pytest.raises(BadEscrow):  # sealed to another notary key
        open_escrow(escrow, private_keys=[x25519.X25519PrivateKey.generate()], label=label(),
                    ciphertext_digest=digest(ciphertext))


def test_content_other_than_the_signed_digest_is_a_bad_escrow() -> None:
    _, ciphertext, escrow = sealed(b"something else")
    with pytest.raises(BadEscrow) as caught:
        recover(ciphertext, escrow, private_keys=[NOTARY], label=label(),
                content_digest=digest(MAIL))
    assert caught.value.detail == {"reason": "content"}


def test_an_escrow_sealing_garbage_or_truncated_is_a_bad_escrow() -> None:
    _, ciphertext, escrow = sealed()
    for bad in (b"", escrow[:-1], bytes(ESCROW_SIZE)):
        with pytest.raises(BadEscrow):
            open_escrow(bad, private_keys=[NOTARY], label=label(),
                        ciphertext_digest=digest(ciphertext))


def test_old_escrow_keys_still_open() -> None:
    _, ciphertext, escrow = sealed()
    newer = x25519.X25519PrivateKey.generate()
    assert open_escrow(escrow, private_keys=[newer, NOTARY], label=label(),
                       ciphertext_digest=digest(ciphertext))


# -- the notary's escrow key statement ----------------------------------------------------

def _escrow_key_statement(market: Market, signer_role: str = "notary", name: str = "notary",
                          **window: int):
    signer = market.agent(name, signer_role)
    statement = sign_escrow_key(NOTARY.public_key(), notary=name,
                                valid_from=window.get("valid_from", NOW_MS - 1000),
                                valid_until=window.get("valid_until", NOW_MS + 86_400_000),
                                key=signer.key, certificate=signer.cert, now_ms=NOW_MS,
                                nonce=os.urandom(16))
    return signer, statement


def test_escrow_key_checked_with_the_market_root(tmp_path: Path) -> None:
    market = Market(tmp_path)
    signer, statement = _escrow_key_statement(market)
    body = check_escrow_key(statement, certificate=signer.cert, root=market.ca.certificate,
                            crl=market.crl, now=NOW, notary="notary")
    assert body.public_key().public_bytes_raw() == NOTARY.public_key().public_bytes_raw()


def test_escrow_key_refusals(tmp_path: Path) -> None:
    market = Market(tmp_path)
    kw = {"root": market.ca.certificate, "crl": market.crl}
    # signed by a seller, not a notary
    signer, statement = _escrow_key_statement(market, "seller", "shop")
    with pytest.raises(BadEscrowKey) as caught:
        check_escrow_key(statement, certificate=signer.cert, now=NOW, notary="shop", **kw)
    assert caught.value.detail == {"field": "role"}
    # a genuine key, but of another notary than the one the party uses
    signer, statement = _escrow_key_statement(market, name="notary2")
    with pytest.raises(WrongSigner):
        check_escrow_key(statement, certificate=signer.cert, now=NOW, notary="notary", **kw)
    # expired, and not yet valid
    signer, statement = _escrow_key_statement(market, valid_from=NOW_MS - 10_000,
                                              valid_until=NOW_MS - 5_000)
    with pytest.raises(BadEscrowKey) as caught:
        check_escrow_key(statement, certificate=signer.cert, now=NOW, notary="notary", **kw)
    assert caught.value.detail == {"field": "valid_until"}
    with pytest.raises(BadEscrowKey) as caught:
        check_escrow_key(statement, certificate=signer.cert,
                         now=NOW - dt.timedelta(seconds=20), notary="notary", **kw)
    assert caught.value.detail == {"field": "valid_from"}


# -- the escrow is RFC 9180 as protocol.md 10.3 says: opened here from the RFC's text ------

def _extract(salt: bytes, ikm: bytes) -> bytes:
    return hmac.new(salt, ikm, hashlib.sha256).digest()


def _expand(prk: bytes, info: bytes, length: int) -> bytes:
    assert length <= 32  # one HMAC block is all this suite needs
    return hmac.new(prk, info + b"\x01", hashlib.sha256).digest()[:length]


def _labeled_extract(suite: bytes, salt: bytes, label: bytes, ikm: bytes) -> bytes:
    return _extract(salt, b"HPKE-v1" + suite + label + ikm)  # RFC 9180 section 4


def _labeled_expand(suite: bytes, prk: bytes, label: bytes, info: bytes, length: int) -> bytes:
    return _expand(prk, length.to_bytes(2, "big") + b"HPKE-v1" + suite + label + info, length)


def _open_by_the_rfc(escrow: bytes, private_key: x25519.X25519PrivateKey, info: bytes) -> bytes:
    """RFC 9180 base mode, single shot, DHKEM(X25519, HKDF-SHA256) (0x0020),
    HKDF-SHA256 (0x0001), ChaCha20-Poly1305 (0x0003), written out from sections 4.1,
    5.1 and 5.2 with nothing but X25519, HMAC-SHA256 and the AEAD."""
    enc, ct = escrow[:32], escrow[32:]
    kem = b"KEM\x00\x20"
    dh = private_key.exchange(x25519.X25519PublicKey.from_public_bytes(enc))
    kem_context = enc + private_key.public_key().public_bytes_raw()
    eae_prk = _labeled_extract(kem, b"", b"eae_prk", dh)
    shared_secret = _labeled_expand(kem, eae_prk, b"shared_secret", kem_context, 32)
    suite = b"HPKE\x00\x20\x00\x01\x00\x03"
    psk_id_hash = _labeled_extract(suite, b"", b"psk_id_hash", b"")
    info_hash = _labeled_extract(suite, b"", b"info_hash", info)
    context = b"\x00" + psk_id_hash + info_hash  # mode_base
    secret = _labeled_extract(suite, shared_secret, b"secret", b"")  # psk = ""
    key = _labeled_expand(suite, secret, b"key", context, 32)
    base_nonce = _labeled_expand(suite, secret, b"base_nonce", context, 12)
    return ChaCha20Poly1305(key).decrypt(base_nonce, ct, b"")  # seq 0, aad ""


def test_the_escrow_opens_by_rfc_9180_with_the_documented_info() -> None:
    key, ciphertext, escrow = sealed()
    info = canonical_encode({"protocol": "semper-escrow-v1", "purpose": "mail",
                             "exchange": b"\x01" * 32, "sender": "alice", "receiver": "bob",
                             "notary": "notary", "ciphertext": digest(ciphertext)})
    assert _open_by_the_rfc(escrow, NOTARY, info) == key
    # and the content is ChaCha20-Poly1305 under it, its AAD the label (protocol.md 10.3)
    aad = canonical_encode({"protocol": "semper-escrow-v1", "purpose": "mail",
                            "exchange": b"\x01" * 32, "sender": "alice", "receiver": "bob",
                            "notary": "notary"})
    assert ChaCha20Poly1305(key).decrypt(ciphertext[:12], ciphertext[12:], aad) == MAIL
