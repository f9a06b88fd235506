"""Statements: canonical msgpack, Ed25519 (Wycheproof), signing, offline verification,
replay protection. Every refusal is checked by its stable code."""

from __future__ import annotations

import datetime as dt
import enum
import hashlib
import json
import random
from collections import OrderedDict
from dataclasses import replace
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pki import NOW, Market
from pki import TestAgent as Agent  # not collected as a test class

from semper.services.certificates import (
    CertificateError,
    Expired,
    Revoked,
    Untrusted,
    issue_crl,
)
from semper.services.statements import (
    MAX_SKEW_MS,
    MAX_STRING,
    BadSignature,
    MalformedStatement,
    NotCanonical,
    Replayed,
    ReplayGuard,
    Stale,
    Statement,
    StatementError,
    WrongSigner,
    WrongType,
    canonical_decode,
    canonical_encode,
    sign_statement,
    verify_ed25519,
    verify_statement,
)
from semper.transport import decode_body, encode_body

VECTORS = Path(__file__).parent / "vectors"
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
NOW_MS = (NOW - EPOCH) // dt.timedelta(milliseconds=1)
NONCE = bytes(range(16))


def at(ms: int) -> dt.datetime:
    return EPOCH + dt.timedelta(milliseconds=ms)


def sign(agent: Agent, body: dict[str, Any] | None = None, *, type: str = "commerce.offer",
         now_ms: int = NOW_MS, nonce: bytes = NONCE) -> Statement:
    return sign_statement(type, {"item": "book-1", "price": 1250} if body is None else body,
                          key=agent.key, certificate=agent.cert, now_ms=now_ms, nonce=nonce)


def verify(market: Market, statement: Statement, agent: Agent, **kw: Any):
    kw.setdefault("now", NOW)
    return verify_statement(statement, certificate=agent.cert, root=market.ca.certificate,
                            crl=market.crl, **kw)


@pytest.fixture
def seller(market: Market) -> Agent:
    return market.agent("seller.books", "seller")


# --- Ed25519: every Wycheproof case -------------------------------------------------


def test_wycheproof_ed25519_every_case() -> None:
    data = json.loads((VECTORS / "wycheproof-ed25519.json").read_text())
    counts = {"valid": 0, "invalid": 0, "acceptable": 0}
    wrong: list[str] = []
    for group in data["testGroups"]:
        key = bytes.fromhex(group["publicKey"]["pk"])
        for case in group["tests"]:
            msg, sig = bytes.fromhex(case["msg"]), bytes.fromhex(case["sig"])
            counts[case["result"]] += 1
            try:
                verify_ed25519(key, msg, sig)
                accepted = True
            except BadSignature:
                accepted = False
            # Any other exception escapes and fails the test: that is the point.
            if case["result"] == "valid" and not accepted:
                wrong.append(f"tcId {case['tcId']} valid but refused ({case['comment']})")
            if case["result"] == "invalid" and accepted:
                wrong.append(f"tcId {case['tcId']} invalid but accepted ({case['comment']})")
    assert wrong == []
    assert counts == {"valid": 88, "invalid": 63, "acceptable": 0}
    assert sum(counts.values()) == data["numberOfTests"] == 151


@pytest.mark.parametrize(
    ("key", "msg", "sig"),
    [
        (b"", b"m", bytes(64)),  # empty key
        (bytes(31), b"m", bytes(64)),  # short key
        (bytes(32), b"m", bytes(63)),  # short signature
        (bytes(32), b"m", bytes(65)),  # long signature
        ("00" * 32, b"m", bytes(64)),  # key as str: misuse still gives our error
        (bytes(32), None, bytes(64)),  # message not bytes
    ],
)
def test_verify_ed25519_raises_only_bad_signature(key: Any, msg: Any, sig: Any) -> None:
    with pytest.raises(BadSignature) as info:
        verify_ed25519(key, msg, sig)
    assert info.value.code == "statement.bad_signature"


# --- canonical encoding -------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "hex_bytes"),
    [
        ({"b": 1, "a": 2}, "82a16102a16201"),  # keys sorted
        (127, "7f"),
        (128, "cc80"),  # uint 8, not int 16
        (-32, "e0"),
        (-33, "d0df"),
        ((1 << 64) - 1, "cf" + "ff" * 8),
        (-(1 << 63), "d3" + "80" + "00" * 7),
        (b"\x00", "c40100"),  # bytes in the bin family
        ("a" * 32, "d920" + "61" * 32),  # str 8, not str 16
        ([True, False, None], "93c3c2c0"),
        # U+FF61 before U+10000 in UTF-8 (ef.. < f0..), the other way round in UTF-16
        ({"\U00010000": 1, "\uff61": 2}, "82a3efbda102a4f090808001"),
    ],
)
def test_canonical_bytes(value: Any, hex_bytes: str) -> None:
    assert canonical_encode(value).hex() == hex_bytes
    assert canonical_decode(bytes.fromhex(hex_bytes)) == value


class Colour(enum.IntEnum):
    RED = 1


def _nest(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth - 1):
        value = [value]
    return value


@pytest.mark.parametrize(
    "value",
    [
        1.5,  # floats never
        (1, 2),  # tuples are not lists
        msgpack.ExtType(1, b"x"),  # no ext types
        Colour.RED,  # int subclasses are refused, not flattened
        OrderedDict(a=1),  # dict subclass
        bytearray(b"x"),  # only bytes
        {1: "int key"},
        {b"k": "bytes key"},
        {True: "bool key"},
        1 << 64,  # above uint 64
        -(1 << 63) - 1,  # below int 64
        "\udc80",  # lone surrogate
        {"a": {1, 2}},  # set, nested
        _nest(33),  # 33 nested containers
        [0] * 65537,  # container too long
        b"x" * ((1 << 20) + 1),  # bin too long
    ],
    ids=lambda v: type(v).__name__,
)
def test_canonical_encode_refuses_values_outside_the_model(value: Any) -> None:
    with pytest.raises(ValueError):
        canonical_encode(value)


def test_canonical_bounds_match_the_transport() -> None:
    assert canonical_decode(canonical_encode(_nest(32))) == _nest(32)
    assert len(canonical_decode(canonical_encode([0] * 65536))) == 65536
    encode_body(_nest(32))  # the transport agrees on the limit
    with pytest.raises(ValueError):
        encode_body(_nest(33))


def test_text_is_bounded_by_its_utf8_bytes() -> None:
    for char in ("a", "\u00e9", "\u20ac", "\U0001f600"):  # 1 to 4 bytes each
        size = len(char.encode())
        fits = char * (MAX_STRING // size)
        assert len(canonical_decode(canonical_encode(fits))) == len(fits)
        assert canonical_encode({fits: 1})
        for too_long in (fits + "a" * size, {fits + "a" * size: 1}):
            with pytest.raises(ValueError, match="longer than"):
                canonical_encode(too_long)
    with pytest.raises(ValueError, match="lone surrogate"):
        canonical_encode({"ok": 1, "\ud800": 2})


@given(st.dictionaries(st.text(max_size=6), st.none(), min_size=2, max_size=8))
def test_keys_sort_by_their_utf8_bytes(mapping: dict[str, Any]) -> None:
    keys = list(msgpack.unpackb(canonical_encode(mapping), raw=True))
    assert keys == sorted(key.encode() for key in mapping)


@pytest.mark.parametrize(
    ("data", "error"),
    [
        ("82a16202a16101", NotCanonical),  # keys unsorted
        ("82a16101a16102", NotCanonical),  # repeated key
        ("cd0005", NotCanonical),  # 5 as uint 16
        ("d00a", NotCanonical),  # 10 as int 8
        ("d90161", NotCanonical),  # "a" as str 8
        ("c5000100", NotCanonical),  # one byte as bin 16
        ("dc000101", NotCanonical),  # one element as array 16
        ("de0001a16101", NotCanonical),  # one pair as map 16
        ("0101", MalformedStatement),  # trailing bytes
        ("", MalformedStatement),  # nothing
        ("cb3ff0000000000000", MalformedStatement),  # float 64
        ("ca3f800000", MalformedStatement),  # float 32
        ("d6ff00000000", MalformedStatement),  # timestamp ext
        ("c70001", MalformedStatement),  # empty ext 8
        ("8101a161", MalformedStatement),  # int key
        ("81c40161a161", MalformedStatement),  # bin key
        ("a2c328", MalformedStatement),  # invalid UTF-8
        ("c1", MalformedStatement),  # never-used byte
        ("92", MalformedStatement),  # truncated
        ("91" * 33 + "90", MalformedStatement),  # 34 nested arrays
        ("dd00010001" + "00" * 65537, MalformedStatement),  # array of 65537
    ],
)
def test_canonical_decode_refuses(data: str, error: type[StatementError]) -> None:
    with pytest.raises(error) as info:
        canonical_decode(bytes.fromhex(data))
    assert type(info.value) is error
    assert info.value.code == error.code


values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(1 << 63), max_value=(1 << 64) - 1)
    | st.binary(max_size=40)
    | st.text(max_size=20),
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=30,
)


@given(values)
def test_canonical_round_trip(value: Any) -> None:
    data = canonical_encode(value)
    assert canonical_decode(data) == value
    assert canonical_encode(canonical_decode(data)) == data


@given(st.dictionaries(st.text(max_size=10), values, min_size=2, max_size=8), st.randoms())
def test_key_order_does_not_change_the_bytes(mapping: dict[str, Any], rnd: random.Random) -> None:
    items = list(mapping.items())
    rnd.shuffle(items)
    assert canonical_encode(dict(items)) == canonical_encode(mapping)
    assert canonical_encode(dict(reversed(items))) == canonical_encode(mapping)


@settings(max_examples=500)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_raise_only_statement_errors(data: bytes) -> None:
    try:
        value = canonical_decode(data)
    except StatementError:
        pass
    else:
        assert canonical_encode(value) == data  # whatever decodes is canonical
    with pytest.raises(StatementError):
        Statement.from_bytes(data)


@settings(max_examples=300)
@given(values, st.integers(min_value=0), st.integers(min_value=0, max_value=255))
def test_damaged_canonical_bytes_decode_canonically_or_fail(
    value: Any, where: int, byte: int
) -> None:
    data = bytearray(canonical_encode(value))
    data[where % len(data)] = byte
    try:
        again = canonical_decode(bytes(data))
    except StatementError:
        return
    assert canonical_encode(again) == bytes(data)


# --- statements: signing and verifying ----------------------------------------------


def test_sign_and_verify(market: Market, seller: Agent) -> None:
    statement = sign(seller)
    identity = verify(market, statement, seller, expected_type="commerce.offer",
                      expected_signer="seller.books")
    assert (identity.agent_id, identity.role) == ("seller.books", "seller")
    assert statement.signer == identity.fingerprint and len(statement.signature) == 64
    assert statement.signed_bytes().startswith(b"semper-statement-v1\x00")


def test_encodings_round_trip(market: Market, seller: Agent) -> None:
    statement = sign(seller, {"z": [1, b"\x00"], "a": {"nested": None}})
    data = statement.to_bytes()
    assert Statement.from_bytes(data) == statement
    assert canonical_decode(data)["v"] == 1
    assert statement.digest == hashlib.sha256(data).digest()
    # embedded in a message, through the transport's codec and back
    message = {"type": "req", "id": 1, "service": "commerce", "op": "offer",
               "body": {"offer": statement.to_wire()}}
    received = Statement.from_wire(decode_body(encode_body(message))["body"]["offer"])
    assert received == statement and received.digest == statement.digest
    verify(market, received, seller)


def test_every_altered_byte_is_refused(market: Market, seller: Agent) -> None:
    """Flip each byte of the encoding: it is malformed, or not canonical, or does not
    verify; never a statement that verifies, never an unexpected exception."""
    data = sign(seller).to_bytes()
    codes: set[str] = set()
    for i in range(len(data)):
        for mask in (0x01, 0x80):
            altered = bytearray(data)
            altered[i] ^= mask
            with pytest.raises((StatementError, CertificateError)) as info:
                verify(market, Statement.from_bytes(bytes(altered)), seller)
            codes.add(info.value.code)
    assert codes <= {"statement.malformed", "statement.not_canonical", "statement.bad_signature",
                     "statement.wrong_signer", "statement.from_the_future",
                     "statement.unsupported_version",
                     # issued_at moved before the certificate or the root was valid
                     "auth.untrusted", "auth.not_yet_valid", "auth.expired"}
    assert {"statement.malformed", "statement.bad_signature", "statement.wrong_signer"} <= codes


def _reencode(statement: Statement, **override: Any) -> bytes:
    """The statement's map packed by plain msgpack, keys in the given order."""
    return msgpack.packb({**statement.to_wire(), **override}, use_bin_type=True)


@pytest.mark.parametrize(
    ("how", "code"),
    [
        ("unsorted keys", "statement.not_canonical"),
        ("v as uint 8", "statement.not_canonical"),
        ("type as str 16", "statement.not_canonical"),
        ("type as bin", "statement.malformed"),
        ("nonce as str", "statement.malformed"),
        ("extra key", "statement.malformed"),
        ("v = 2", "statement.unsupported_version"),
        ("v = true", "statement.unsupported_version"),
    ],
)
def test_non_canonical_and_mistyped_encodings(seller: Agent, how: str, code: str) -> None:
    statement = sign(seller)
    good = statement.to_bytes()
    wire = statement.to_wire()
    if how == "unsorted keys":
        data = msgpack.packb(dict(reversed(list(canonical_decode(good).items()))),
                             use_bin_type=True)
    elif how == "v as uint 8":
        data = good.replace(b"\xa1v\x01", b"\xa1v\xcc\x01")
    elif how == "type as str 16":
        t = statement.type.encode()
        data = good.replace(b"\xa4type" + bytes([0xA0 | len(t)]) + t,
                            b"\xa4type\xda" + len(t).to_bytes(2, "big") + t)
    elif how == "type as bin":
        data = canonical_encode({**wire, "type": statement.type.encode()})
    elif how == "nonce as str":
        data = canonical_encode({**wire, "nonce": "n" * 16})
    elif how == "extra key":
        data = canonical_encode({**wire, "extra": 1})
    elif how == "v = 2":
        data = canonical_encode({**wire, "v": 2})
    else:
        data = canonical_encode({**wire, "v": True})
    assert data != good
    with pytest.raises(StatementError) as info:
        Statement.from_bytes(data)
    assert info.value.code == code


def test_statement_fields_are_checked(seller: Agent) -> None:
    good = sign(seller)
    for bad in ({"nonce": bytes(15)}, {"signer": bytes(31)}, {"signature": bytes(65)},
                {"type": "Offer"}, {"type": "offer"}, {"issued_at": -1},
                {"issued_at": True}, {"body": [1]}, {"body": {"x": 1.5}}):
        with pytest.raises(ValueError):
            replace(good, **bad)
        with pytest.raises(MalformedStatement):
            Statement.from_wire({**good.to_wire(), **bad})
    with pytest.raises(ValueError, match="does not belong"):
        sign_statement("commerce.offer", {}, key=seller.key,
                       certificate=Market(seller.cert_path.parent).agent("x").cert,
                       now_ms=NOW_MS, nonce=NONCE)


def test_revoked_signer_is_refused_with_auth_revoked(market: Market, seller: Agent) -> None:
    statement = sign(seller)
    market.revoke(seller)
    with pytest.raises(Revoked) as info:
        verify(market, statement, seller)
    assert info.value.code == "auth.revoked"


def test_foreign_ca_agent_is_refused(market: Market, tmp_path: Path) -> None:
    (tmp_path / "foreign").mkdir()
    foreign = Market(tmp_path / "foreign")
    impostor = foreign.agent("seller.books", "seller")
    with pytest.raises(Untrusted) as info:
        verify(market, sign(impostor), impostor)
    assert info.value.code == "auth.untrusted"


def test_wrong_signer_type_and_time(market: Market, seller: Agent) -> None:
    buyer = market.agent("buyer-1")
    statement = sign(seller)
    with pytest.raises(WrongSigner):  # another agent's certificate
        verify(market, statement, buyer)
    with pytest.raises(WrongSigner):
        verify(market, statement, seller, expected_signer="seller.games")
    with pytest.raises(WrongType) as info:
        verify(market, statement, seller, expected_type="commerce.order")
    assert info.value.code == "statement.wrong_type"
    verify(market, sign(seller, now_ms=NOW_MS + MAX_SKEW_MS), seller)
    with pytest.raises(StatementError) as info:
        verify(market, sign(seller, now_ms=NOW_MS + MAX_SKEW_MS + 1), seller)
    assert info.value.code == "statement.from_the_future"


def test_signature_without_the_domain_prefix_is_refused(
    market: Market, seller: Agent
) -> None:
    good = sign(seller)
    bare = seller.key.sign(good.signed_bytes().removeprefix(b"semper-statement-v1\x00"))
    with pytest.raises(BadSignature):
        verify(market, replace(good, signature=bare), seller)


def test_certificate_is_judged_at_issue_time_and_the_crl_at_now(market: Market) -> None:
    """Evidence outlives certificates, and arbiters hold CRLs newer than the statements."""
    hour = dt.timedelta(hours=1)
    short = market.agent("seller.short", "seller", not_after=NOW + hour)
    statement = sign(short)
    later = NOW + 2 * hour
    newer_crl = issue_crl(market.ca, [], now=later, number=9)
    identity = verify_statement(statement, certificate=short.cert, root=market.ca.certificate,
                                crl=newer_crl, now=later)
    assert identity.agent_id == "seller.short"
    after_expiry = sign(short, now_ms=NOW_MS + 2 * 3_600_000)
    with pytest.raises(Expired):
        verify_statement(after_expiry, certificate=short.cert, root=market.ca.certificate,
                         crl=newer_crl, now=later)
    with pytest.raises(CertificateError) as info:  # the CRL must be current at now
        verify(market, statement, short, now=NOW + dt.timedelta(days=31))
    assert info.value.code == "auth.crl_stale"


# --- replay protection --------------------------------------------------------------

WINDOW = 60_000


def _stmt(nonce: int, issued_at: int, signer: bytes = bytes(32)) -> Statement:
    """Signatures do not matter to the guard, which runs after verification."""
    return Statement(type="commerce.offer", body={}, signer=signer, issued_at=issued_at,
                     nonce=nonce.to_bytes(16, "big"), signature=bytes(64))


def test_replay_inside_the_window_is_refused(seller: Agent) -> None:
    guard = ReplayGuard(WINDOW)
    statement = sign(seller)
    guard.check(statement, NOW_MS)
    with pytest.raises(Replayed) as info:
        guard.check(statement, NOW_MS + WINDOW - 1)
    assert info.value.code == "statement.replayed"
    guard.check(_stmt(0, NOW_MS, signer=statement.signer[::-1]), NOW_MS)  # nonce of another


@pytest.mark.parametrize("offset", [-WINDOW - 1, WINDOW + 1])
def test_outside_the_window_is_stale(offset: int) -> None:
    guard = ReplayGuard(WINDOW)
    with pytest.raises(Stale) as info:
        guard.check(_stmt(1, NOW_MS + offset), NOW_MS)
    assert info.value.code == "statement.stale"
    assert len(guard) == 0


def test_memory_is_bounded_and_nothing_is_forgotten_early() -> None:
    guard = ReplayGuard(WINDOW)
    for i in range(1000):
        guard.check(_stmt(i, NOW_MS + i * 1000), NOW_MS + i * 1000)
        assert len(guard) <= WINDOW // 1000 + 1
    first = _stmt(0, NOW_MS)
    with pytest.raises(Stale):  # forgotten, and refused all the same
        guard.check(first, NOW_MS + 999_000)
    with pytest.raises(Stale):  # a clock stepped back does not reopen the past
        guard.check(first, NOW_MS)


def test_state_round_trips_through_canonical_bytes() -> None:
    guard = ReplayGuard(WINDOW)
    for i in range(5):
        guard.check(_stmt(i, NOW_MS + i), NOW_MS)
    restored = ReplayGuard.from_state(canonical_decode(canonical_encode(guard.to_state())))
    assert restored.to_state() == guard.to_state() and len(restored) == 5
    with pytest.raises(Replayed):
        restored.check(_stmt(3, NOW_MS + 3), NOW_MS + 10)
    for bad in (None, {"v": 2}, {**guard.to_state(), "seen": [[1, 2, 3]]},
                {**guard.to_state(), "window_ms": 0}):
        with pytest.raises(ValueError):
            ReplayGuard.from_state(bad)


@settings(max_examples=200)
@given(st.lists(st.tuples(st.integers(0, 5), st.integers(-3, 3), st.integers(-1, 4)),
                max_size=60))
def test_guard_decides_like_one_with_unbounded_memory(
    steps: list[tuple[int, int, int]],
) -> None:
    """Replays of the same statements at random clock readings: forgetting never
    changes a decision."""
    pool = [_stmt(i, NOW_MS + (i - 2) * WINDOW // 2) for i in range(6)]
    guard, accepted, now, high = ReplayGuard(WINDOW), set(), NOW_MS, NOW_MS
    for which, jitter, step in steps:
        now += step * WINDOW // 3 + jitter
        high = max(high, now)
        statement = pool[which]
        if not high - WINDOW <= statement.issued_at <= now + WINDOW:
            expected: str | None = "statement.stale"
        elif which in accepted:
            expected = "statement.replayed"
        else:
            expected = None
        try:
            guard.check(statement, now)
            got = None
        except StatementError as exc:
            got = exc.code
        assert got == expected
        if got is None:
            accepted.add(which)

