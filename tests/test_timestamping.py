"""Timestamps (issue 9, item 4): tokens verify offline with the market root; every
altered field, a proof for another leaf and forked tree heads are refused with their
codes; the notary batches (one signature per batch), stores each batch before any of
its tokens leaves, and continues its chain across restarts and crashes."""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import hashlib
import itertools
import json
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from market_helpers import config_of, make_market, running
from pki import NOW, Market
from pki import TestAgent as PkiAgent

from semper.agents import Agent
from semper.agents.components._timestamps import (
    MIGRATIONS,
    Timestamps,
    _last_state,
    stored_token,
)
from semper.agents.runtime._config import ConfigError
from semper.agents.runtime._storage import Database
from semper.services import ServiceError
from semper.services.certificates import Level, load_certificate, load_crl
from semper.services.statements import Statement, canonical_encode, sign_statement
from semper.services.timestamping import (
    HEAD_TYPE,
    LEAF_DOMAIN,
    REQUEST,
    Batcher,
    ChainState,
    Forked,
    TimestampAnswer,
    TimestampRequest,
    Token,
    TreeHead,
    check_no_fork,
    fork_evidence,
    head_id,
    leaf_input,
    verify_token,
)
from semper.transport import ChannelClosed, RemoteError

DEADLINE = 20.0
T0 = int(NOW.timestamp() * 1000)
LATER = NOW + dt.timedelta(minutes=1)


def sha(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def der(agent: PkiAgent) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding

    return agent.cert.public_bytes(Encoding.DER)


def sign_head(agent: PkiAgent, head: TreeHead, now_ms: int = T0) -> Statement:
    return sign_statement(HEAD_TYPE, head.to_wire(), key=agent.key, certificate=agent.cert,
                          now_ms=now_ms, nonce=os.urandom(16))


def issue(batcher: Batcher, agent: PkiAgent, digests: list[bytes], now_ms: int = T0
          ) -> list[Token]:
    """One batch of ``digests`` through ``batcher``, signed by ``agent``."""
    for d in digests:
        batcher.add(d, now_ms)
    batch = batcher.seal(now_ms)
    head = sign_head(agent, batch.head, now_ms)
    batcher.committed(batch)
    return [batch.token(i, head, der(agent)) for i in range(len(digests))]


@pytest.fixture
def notary(market: Market) -> PkiAgent:
    return market.agent("notary", role="notary", level=Level.VERIFIED_IDENTITY)


@pytest.fixture
def tokens(notary: PkiAgent) -> list[Token]:
    return issue(Batcher(notary="notary"), notary, [sha(bytes([i])) for i in range(5)])


def check(market: Market, token: Token | bytes, **kw: Any) -> Any:
    return verify_token(token, root=market.ca.certificate, crl=market.crl, now=LATER, **kw)


# -- offline verification -------------------------------------------------------------------


def test_every_token_verifies_offline_with_and_without_a_crl(
        market: Market, tokens: list[Token]) -> None:
    for i, token in enumerate(tokens):
        verified = check(market, token.to_bytes(), digest=sha(bytes([i])))
        assert (verified.serial, verified.time, verified.identity.agent_id) == (i, T0, "notary")
        assert Token.from_bytes(token.to_bytes()) == token
        verify_token(token, root=market.ca.certificate, now=LATER)  # no CRL: no revocation
    assert len({t.head.to_bytes() for t in tokens}) == 1  # one signed head for the batch


def _other_head(notary: PkiAgent, token: Token, **changes: Any) -> Statement:
    body = dataclasses.replace(TreeHead.from_statement(token.head), **changes)
    return sign_head(notary, body)


# (field, how to alter it, the code it is refused with)
ALTERATIONS: list[tuple[str, Callable[[Token, PkiAgent, Market], Token], str]] = [
    ("digest", lambda t, n, m: dataclasses.replace(t, digest=sha(b"other")),
     "timestamp.bad_proof"),
    ("time", lambda t, n, m: dataclasses.replace(t, time=t.time - 1), "timestamp.bad_proof"),
    ("time later than the head", lambda t, n, m: dataclasses.replace(t, time=t.time + 1),
     "timestamp.bad_token"),
    ("serial", lambda t, n, m: dataclasses.replace(t, serial=t.serial + 1),
     "timestamp.bad_token"),
    ("notary", lambda t, n, m: dataclasses.replace(t, notary="notary2"),
     "timestamp.wrong_notary"),
    ("index", lambda t, n, m: dataclasses.replace(t, index=t.index + 1, serial=t.serial + 1),
     "timestamp.bad_proof"),
    ("index outside the tree", lambda t, n, m: dataclasses.replace(t, index=9, serial=9),
     "timestamp.bad_token"),
    ("proof hash", lambda t, n, m: dataclasses.replace(
        t, proof=(bytes(32), *t.proof[1:])), "timestamp.bad_proof"),
    ("proof cut", lambda t, n, m: dataclasses.replace(t, proof=t.proof[:-1]),
     "timestamp.bad_proof"),
    ("head body re-signed by the notary", lambda t, n, m: dataclasses.replace(
        t, head=_other_head(n, t, root=sha(b"root"))), "timestamp.bad_proof"),
    ("head body, old signature", lambda t, n, m: dataclasses.replace(t, head=Statement(
        type=t.head.type, body={**t.head.body, "time": t.head.body["time"] + 1},
        signer=t.head.signer, issued_at=t.head.issued_at, nonce=t.head.nonce,
        signature=t.head.signature)), "statement.bad_signature"),
    ("head signature", lambda t, n, m: dataclasses.replace(t, head=Statement(
        type=t.head.type, body=t.head.body, signer=t.head.signer,
        issued_at=t.head.issued_at, nonce=t.head.nonce,
        signature=bytes([t.head.signature[0] ^ 1]) + t.head.signature[1:])),
     "statement.bad_signature"),
    ("head issue time", lambda t, n, m: dataclasses.replace(t, head=Statement(
        type=t.head.type, body=t.head.body, signer=t.head.signer,
        issued_at=t.head.issued_at + 1, nonce=t.head.nonce, signature=t.head.signature)),
     "statement.bad_signature"),
    ("certificate of another agent", lambda t, n, m: dataclasses.replace(
        t, certificate=der(m.agent("notary2", role="notary"))), "statement.wrong_signer"),
]


@pytest.mark.parametrize(("field", "alter", "code"), ALTERATIONS, ids=[a[0] for a in ALTERATIONS])
def test_a_token_altered_in_any_field_is_refused(
        market: Market, notary: PkiAgent, tokens: list[Token], field: str,
        alter: Callable[[Token, PkiAgent, Market], Token], code: str) -> None:
    token = tokens[2]
    altered = alter(token, notary, market)
    with pytest.raises(ServiceError) as refused:
        check(market, altered)
    assert refused.value.code == code, field
    with pytest.raises(ServiceError) as refused:  # its bytes too
        check(market, altered.to_bytes())
    assert refused.value.code == code, field


def test_a_proof_for_another_leaf_is_refused(market: Market, tokens: list[Token]) -> None:
    for a, b in [(0, 1), (1, 0), (2, 4), (4, 3)]:
        stolen = dataclasses.replace(tokens[a], proof=tokens[b].proof)
        with pytest.raises(ServiceError) as refused:
            check(market, stolen)
        assert refused.value.code == "timestamp.bad_proof"
        # the other leaf's whole position (index, serial, proof) for this digest
        moved = dataclasses.replace(tokens[a], proof=tokens[b].proof, index=b, serial=b)
        with pytest.raises(ServiceError) as refused:
            check(market, moved)
        assert refused.value.code == "timestamp.bad_proof"


def test_a_token_for_another_digest_is_refused(market: Market, tokens: list[Token]) -> None:
    with pytest.raises(ServiceError) as refused:
        check(market, tokens[0], digest=sha(b"\x01"))
    assert refused.value.code == "timestamp.wrong_digest"


def test_a_head_signed_by_an_agent_that_is_not_a_notary_is_refused(market: Market) -> None:
    """Another member of the kind: the signature is good, the signer is no notary."""
    seller = market.agent("seller", role="seller")
    forged = issue(Batcher(notary="seller"), seller, [sha(b"x")])[0]
    with pytest.raises(ServiceError) as refused:
        check(market, forged)
    assert refused.value.code == "timestamp.wrong_notary"


def test_a_revoked_notary_is_refused_with_the_crl(market: Market, notary: PkiAgent,
                                                   tokens: list[Token]) -> None:
    market.revoke(notary)
    with pytest.raises(ServiceError) as refused:
        check(market, tokens[0])
    assert refused.value.code == "auth.revoked"


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_garbled_token_bytes_are_refused_with_a_code(market: Market, tokens: list[Token],
                                                      data: st.DataObject) -> None:
    raw = bytearray(tokens[1].to_bytes())
    for _ in range(data.draw(st.integers(1, 3))):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] ^= data.draw(st.integers(1, 255))
    if bytes(raw) == tokens[1].to_bytes():  # two flips undid each other
        return
    try:
        check(market, bytes(raw), digest=tokens[1].digest)
    except ServiceError:
        return
    # the flip landed where it changes nothing the token proves (impossible in practice)
    raise AssertionError(f"garbled token accepted: {bytes(raw).hex()}")


def _bad_version(der: bytes, field: bytes) -> bytes:
    """``der`` with the last byte of ``field`` (its version, the first such) made 5."""
    at = der.index(field) + len(field) - 1
    return der[:at] + b"\x05" + der[at + 1:]


def test_a_token_whose_certificate_has_a_bad_version_is_refused_with_a_code(
        market: Market, tokens: list[Token]) -> None:
    """Found by test_garbled_token_bytes_are_refused_with_a_code (one flip of the
    certificate's version byte): cryptography raised its InvalidVersion, which is no
    ValueError, through load_certificate: a traceback instead of a code."""
    der = tokens[0].certificate
    bad = dataclasses.replace(tokens[0], certificate=_bad_version(der, b"\xa0\x03\x02\x01\x02"))
    with pytest.raises(ServiceError) as refused:
        check(market, bad.to_bytes())
    assert refused.value.code == "auth.bad_certificate"


def test_a_crl_or_csr_with_a_bad_version_is_refused_with_its_code(market: Market) -> None:
    """Other members of the kind (X.509 read from untrusted bytes): a CRL (PEM or DER,
    as `semper timestamp verify --crl` reads one) and an enrollment CSR whose version
    is not one X.509 knows get their own codes, not cryptography's InvalidVersion."""
    from cryptography.hazmat.primitives.asymmetric import ed25519
    from cryptography.hazmat.primitives.serialization import Encoding

    from semper.services.certificates import check_csr, make_csr

    crl = _bad_version(market.crl.public_bytes(Encoding.DER), b"\x02\x01\x01")
    pem = b"-----BEGIN X509 CRL-----\n%s-----END X509 CRL-----\n" % base64.encodebytes(crl)
    for data in (crl, pem):
        with pytest.raises(ServiceError) as refused:
            load_crl(data)
        assert refused.value.code == "auth.bad_crl"
    csr = _bad_version(make_csr(ed25519.Ed25519PrivateKey.generate(), "buyer"), b"\x02\x01\x00")
    with pytest.raises(ServiceError) as refused:
        check_csr(csr, agent_id="buyer")
    assert refused.value.code == "enroll.bad_csr"


@settings(max_examples=200, deadline=None)
@given(digest=st.binary(min_size=32, max_size=32), time=st.integers(0, 2**63 - 1),
       serial=st.integers(0, 2**63 - 1), notary=st.from_regex(r"[a-z0-9._-]{1,63}",
                                                                fullmatch=True))
def test_the_leaf_is_the_canonical_encoding(digest: bytes, time: int, serial: int,
                                             notary: str) -> None:
    """leaf_input writes the bytes out by hand (speed): they are canonical_encode's."""
    assert leaf_input(digest=digest, time=time, serial=serial, notary=notary) == (
        LEAF_DOMAIN + canonical_encode({"digest": digest, "notary": notary,
                                        "serial": serial, "time": time}))


@pytest.mark.parametrize(("size", "first_serial", "time"),
                         [(7, 0, T0), (1, 0, 0), (130, 2**40, 253_402_300_799_999), (33, 127, 128)])
def test_the_notary_answers_the_token_bytes(notary: PkiAgent, size: int, first_serial: int,
                                            time: int) -> None:
    """The notary splices a batch's tokens from bytes encoded once (tokens_bytes): the
    same bytes as each token's canonical encoding, whatever the msgpack width of the
    index, serial and time (1, 2, 5 and 9 bytes) and the proofs' lengths."""
    batcher = Batcher(notary="notary", max_size=size,
                      state=ChainState(sequence=1, serial=first_serial, previous=sha(b"p")))
    for i in range(size):  # 7: proofs of 2 and 3 hashes; 130: up to 8
        batcher.add(sha(bytes([i % 256, i // 256])), T0)
    batch = batcher.seal(time)
    head = sign_head(notary, batch.head)
    everyone = batch.tokens_bytes(head.to_bytes(), der(notary))
    assert len(everyone) == size
    for i in range(size):
        token = batch.token(i, head, der(notary))
        assert token.leaf_hash == batch.tree.leaf(i)
        assert batch.token_wire(i, head.to_wire(), der(notary)) == token.to_wire()
        assert batch.token_bytes(i, head.to_bytes(), der(notary)) == token.to_bytes()
        assert everyone[i] == token.to_bytes()
        assert TimestampAnswer.from_wire({"token": token.to_bytes()}).token == token


def test_a_request_is_read_by_its_shape_and_refused_as_before() -> None:
    """TimestampRequest.from_wire's short way (the one good shape) gives what the
    generic reading gives; every other shape still gets the generic refusal."""
    digest = sha(b"x")
    assert TimestampRequest.from_wire({"digest": digest}) == TimestampRequest(digest=digest)
    for bad in [{"digest": digest[:31]}, {"digest": bytearray(digest)}, {"digest": 5},
                {"digest": digest, "more": 1}, {"token": digest}, {}, [digest], None,
                {"digest": digest + b"!"}]:
        with pytest.raises(ServiceError) as refused:
            TimestampRequest.from_wire(bad)
        assert refused.value.code == "timestamp.bad_request", bad


def test_a_database_of_the_first_layout_keeps_its_tokens(notary: PkiAgent,
                                                         tmp_path: Path) -> None:
    """Migration step 2 folds the row per token into its batch's row: every token
    stored before is rebuilt the same after (digests with zero bytes, batches of 1 and
    of 33, out of order on disk); a serial past the last batch is unknown, and new
    batches go on from the migrated chain."""
    first = MIGRATIONS["timestamps"][:1]
    batcher = Batcher(notary="notary", max_size=64)
    batches = []
    for size in (3, 1, 33):
        for i in range(size):
            batcher.add(bytes(32) if i == 1 else sha(b"%d %d" % (len(batches), i)), T0)
        batch = batcher.seal(T0 + len(batches))
        batches.append((batch, sign_head(notary, batch.head)))
    database = Database.open_sync(tmp_path / "agent.sqlite", {"timestamps": first})
    with database._connection as c:  # the first layout's rows, as its _store wrote them
        for batch, head in batches:
            c.execute("INSERT INTO timestamp_heads VALUES (?, ?, ?, ?)",
                      (batch.head.sequence, batch.id, head.to_bytes(), der(notary)))
        c.executemany("INSERT INTO timestamp_tokens VALUES (?, ?, ?)", sorted(
            ((b.head.first_serial + i, b.head.sequence, d) for b, _ in batches
             for i, d in enumerate(b.digests)), reverse=True))
    database.close()
    database = Database.open_sync(tmp_path / "agent.sqlite", MIGRATIONS)
    c = database._connection
    assert c.execute("SELECT count(*) FROM sqlite_master WHERE name = 'timestamp_tokens'"
                     ).fetchone() == (0,)
    for batch, head in batches:
        for i in range(batch.head.size):
            assert stored_token(c, batch.head.first_serial + i) == batch.token(
                i, head, der(notary))
    assert stored_token(c, 37) is None
    assert _last_state(c) == batches[-1][0].state_after()
    database.close()


# -- forks ----------------------------------------------------------------------------------


def test_consistent_heads_are_no_fork(market: Market, notary: PkiAgent) -> None:
    batcher = Batcher(notary="notary")
    first = issue(batcher, notary, [sha(b"a"), sha(b"b")])
    second = issue(batcher, notary, [sha(b"c")], T0 + 5)
    third = issue(batcher, notary, [sha(b"d")], T0 + 9)
    for a, b in [(first[0], first[1]), (first[0], second[0]), (second[0], first[1]),
                 (first[1], third[0])]:
        assert fork_evidence(a, b) is None
        check_no_fork(a, b, root=market.ca.certificate, crl=market.crl, now=LATER)
    assert TreeHead.from_statement(second[0].head).previous == head_id(
        TreeHead.from_statement(first[0].head))


def _forks(notary: PkiAgent) -> dict[str, tuple[Token, Token]]:
    honest = Batcher(notary="notary")
    a = issue(honest, notary, [sha(b"a")], T0 + 10)[0]
    state = honest.state  # after head 0
    b = issue(honest, notary, [sha(b"b")], T0 + 20)[0]
    # the same sequence number, another head: a second history from the same point
    twin = issue(Batcher(notary="notary"), notary, [sha(b"evil")], T0 + 10)[0]
    # head 1 of another history: it does not name head 0
    unlinked = issue(Batcher(notary="notary", state=dataclasses.replace(
        state, previous=sha(b"elsewhere"))), notary, [sha(b"c")], T0 + 20)[0]
    # head 2 dated before head 1: back-dated
    backdated = issue(Batcher(notary="notary", state=dataclasses.replace(
        ChainState.after(TreeHead.from_statement(b.head)), time=0)), notary, [sha(b"d")],
        T0 + 15)[0]
    # head 2 reusing head 1's serial
    reused = issue(Batcher(notary="notary", state=dataclasses.replace(
        ChainState.after(TreeHead.from_statement(b.head)), serial=1)), notary,
        [sha(b"e")], T0 + 30)[0]
    return {"same_sequence": (a, twin), "unlinked": (a, unlinked), "backdated": (b, backdated),
            "serials": (b, reused)}


@pytest.mark.parametrize("kind", ["same_sequence", "unlinked", "backdated", "serials"])
def test_forked_heads_are_refused_with_the_evidence(market: Market, notary: PkiAgent,
                                                    kind: str) -> None:
    first, second = _forks(notary)[kind]
    for a, b in [(first, second), (second, first)]:  # in either order
        check(market, a)
        check(market, b)  # each token alone is valid
        evidence = fork_evidence(a, b)
        assert evidence is not None and evidence.kind == kind
        assert {evidence.first.to_bytes(), evidence.second.to_bytes()} == {
            a.head.to_bytes(), b.head.to_bytes()}
        with pytest.raises(Forked) as refused:
            check_no_fork(a.to_bytes(), b.to_bytes(), root=market.ca.certificate,
                          crl=market.crl, now=LATER)
        assert refused.value.code == "timestamp.fork"
        assert refused.value.detail["kind"] == kind
        heads = [Statement.from_bytes(bytes.fromhex(h)) for h in refused.value.detail["heads"]]
        assert {h.to_bytes() for h in heads} == {a.head.to_bytes(), b.head.to_bytes()}


def test_heads_of_two_notaries_are_no_fork(market: Market, notary: PkiAgent) -> None:
    other = market.agent("notary2", role="notary")
    a = issue(Batcher(notary="notary"), notary, [sha(b"a")])[0]
    b = issue(Batcher(notary="notary2"), other, [sha(b"a")])[0]
    assert fork_evidence(a, b) is None


# -- the batcher --------------------------------------------------------------------------


def test_batcher_seals_by_size_and_by_delay_and_keeps_time_monotone() -> None:
    batcher = Batcher(notary="notary", max_delay_ms=5, max_size=3)
    assert batcher.deadline() is None and not batcher.due(T0)
    batcher.add(sha(b"1"), T0)
    assert batcher.deadline() == T0 + 5 and not batcher.due(T0 + 4) and batcher.due(T0 + 5)
    batcher.add(sha(b"2"), T0 + 1)
    batcher.add(sha(b"3"), T0 + 2)
    batcher.add(sha(b"4"), T0 + 2)
    assert batcher.due(T0 + 2)  # full
    first = batcher.seal(T0 + 2)
    assert (first.head.size, first.head.first_serial, first.head.sequence) == (3, 0, 0)
    assert batcher.pending == 1
    second = batcher.seal(T0 - 1000)  # the clock stepped back
    assert second.head.time == first.head.time  # the chain's time does not
    assert (second.head.sequence, second.head.first_serial) == (1, 3)
    assert second.head.previous == first.head.id


def test_a_failed_batch_rewinds_the_chain_to_the_last_committed() -> None:
    batcher = Batcher(notary="notary")
    batcher.add(sha(b"1"), T0)
    one = batcher.seal(T0)
    batcher.committed(one)
    batcher.add(sha(b"2"), T0)
    two = batcher.seal(T0)
    batcher.add(sha(b"3"), T0)
    three = batcher.seal(T0)  # sealed after two, which then fails
    batcher.failed(two)
    batcher.failed(three)
    batcher.add(sha(b"4"), T0)
    again = batcher.seal(T0)
    assert (again.head.sequence, again.head.first_serial) == (1, 1)
    assert again.head.previous == one.head.id


# -- the notary agent -----------------------------------------------------------------------


@pytest.fixture
def world(tmp_path: Path) -> Path:
    return make_market(tmp_path)


def _root_crl(folder: Path) -> tuple[Any, Any]:
    return (load_certificate((folder / "ca" / "root.pem").read_bytes()),
            load_crl((folder / "ca" / "crl.pem").read_bytes()))


async def _stamp(buyer: Agent, digest: bytes) -> Token:
    answer = await buyer.context.call("notary", REQUEST, TimestampRequest(digest=digest))
    return answer.token


async def test_concurrent_requests_are_batched_one_signature_per_batch(world: Path) -> None:
    notary, buyer = Agent(config_of(world, "notary")), Agent(config_of(world, "buyer"))
    root, crl = _root_crl(world)
    tokens: dict[int, Token] = {}
    with trio.fail_after(DEADLINE):
        async with running(notary), running(buyer):
            async def one(i: int) -> None:
                tokens[i] = await _stamp(buyer, sha(b"doc %d" % i))

            async with trio.open_nursery() as nursery:
                for i in range(40):
                    nursery.start_soon(one, i)
            batches = notary.component(Timestamps).batches
    now = dt.datetime.now(dt.UTC)
    for i, token in tokens.items():
        verify_token(token, root=root, crl=crl, now=now, digest=sha(b"doc %d" % i))
    heads = {t.head.to_bytes() for t in tokens.values()}
    assert len(heads) == batches < 40  # one signed head per batch, fewer batches than tokens
    assert sorted(t.serial for t in tokens.values()) == list(range(40))
    bodies = sorted((TreeHead.from_statement(Statement.from_bytes(h)) for h in heads),
                    key=lambda h: h.sequence)
    assert [h.sequence for h in bodies] == list(range(batches))
    for earlier, later in itertools.pairwise(bodies):
        assert later.previous == earlier.id
    # one event line per batch, none per request
    events = [json.loads(line) for line in
              (world / "notary" / "data" / "events.jsonl").read_text().splitlines()]
    assert not [e for e in events if e["event"] == "served" and e.get("service") == "timestamp"]
    issued = [e for e in events if e["event"] == "timestamps_issued"]
    assert [(e["sequence"], e["size"], e["first_serial"]) for e in issued] == [
        (h.sequence, h.size, h.first_serial) for h in bodies]
    assert {(e["outcome"], tuple(e["peers"])) for e in issued} == {("ok", ("buyer",))}


async def test_the_chain_and_serials_continue_across_a_restart(world: Path) -> None:
    buyer = Agent(config_of(world, "buyer"))
    with trio.fail_after(DEADLINE):
        async with running(Agent(config_of(world, "notary"))), running(buyer):
            first = await _stamp(buyer, sha(b"one"))
        async with running(Agent(config_of(world, "notary"))), running(buyer):
            second = await _stamp(buyer, sha(b"two"))
    a, b = TreeHead.from_statement(first.head), TreeHead.from_statement(second.head)
    assert (b.sequence, b.previous, second.serial) == (a.sequence + 1, a.id, first.serial + 1)
    assert fork_evidence(first, second) is None


async def test_a_batch_sealed_after_a_failed_one_is_not_stored(world: Path) -> None:
    """The store refuses a batch that does not continue the stored chain: no gap, no
    fork on disk. (The batcher rewinds; a lost head is never named by a stored one.)"""
    notary, buyer = Agent(config_of(world, "notary")), Agent(config_of(world, "buyer"))
    with trio.fail_after(DEADLINE):
        async with running(notary), running(buyer):
            await _stamp(buyer, sha(b"one"))
            batcher = notary.component(Timestamps)._batcher
            assert batcher is not None
            # a head sealed in memory but never stored (as if its commit had failed)
            batcher.add(sha(b"lost"), 0)
            batcher.seal(T0 + 10**6)
            with pytest.raises(RemoteError) as refused:
                await _stamp(buyer, sha(b"two"))
            assert refused.value.code == "timestamp.unavailable"
            token = await _stamp(buyer, sha(b"three"))  # the chain went back and goes on
    assert (TreeHead.from_statement(token.head).sequence, token.serial) == (1, 1)


async def test_a_stale_wake_up_with_nothing_pending_does_not_stop_the_notary(
        world: Path) -> None:
    """Found by bench/notary.py (the notary closed every channel mid-run): a request
    that arrived during the scheduler turn before a seal was sealed with that batch,
    but its wake-up stayed set, so the next turn sealed an empty batch (ValueError)
    and the notary's run task, and with it the agent, died. Another member of the
    kind: the same stale state under batch_ms (where a stale 'full' signal is also
    left behind) must not seal an empty batch either."""
    for table in ({}, {"batch_ms": 5, "batch_max": 2}):
        config = config_of(world, "notary")
        config = dataclasses.replace(config, components={"timestamps": table})
        notary, buyer = Agent(config), Agent(config_of(world, "buyer"))
        with trio.fail_after(DEADLINE):
            async with running(notary), running(buyer):
                first = await _stamp(buyer, sha(b"one"))
                component = notary.component(Timestamps)
                component._arrived.set()  # the stale state: set, nothing pending
                component._full.set()
                await trio.testing.wait_all_tasks_blocked()
                second = await _stamp(buyer, sha(b"two"))
        assert second.serial == first.serial + 1


async def test_a_batch_that_cannot_be_signed_is_refused_and_the_notary_goes_on(
        world: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another member of the kind (the batch loop must not die): a failure to sign
    answers that batch's requests timestamp.unavailable; the next batch is issued."""
    notary, buyer = Agent(config_of(world, "notary")), Agent(config_of(world, "buyer"))
    with trio.fail_after(DEADLINE):
        async with running(notary), running(buyer):
            sign = notary.context.sign

            def broken(type_: str, body: dict[str, Any]) -> Statement:
                monkeypatch.setattr(notary.context, "sign", sign)  # once
                raise OSError("the key's device went away")

            monkeypatch.setattr(notary.context, "sign", broken)
            with pytest.raises(RemoteError) as refused:
                await _stamp(buyer, sha(b"one"))
            assert refused.value.code == "timestamp.unavailable"
            token = await _stamp(buyer, sha(b"two"))
    assert (TreeHead.from_statement(token.head).sequence, token.serial) == (0, 0)
    issued = [(e["sequence"], e["outcome"]) for e in map(json.loads, (
        world / "notary" / "data" / "events.jsonl").read_text().splitlines())
        if e["event"] == "timestamps_issued"]
    assert issued == [(0, "timestamp.unavailable"), (0, "ok")]  # the refusal logged too


# -- durability: the notary as a process, killed -----------------------------------------


async def _start_notary(folder: Path, crash_at: str | None) -> trio.Process:
    env = {k: v for k, v in os.environ.items() if k != "SEMPER_CRASH_AT"}
    if crash_at is not None:
        env["SEMPER_CRASH_AT"] = crash_at
    argv = [sys.executable, "-m", "semper.agents.cli", "agent", "run",
            str(folder / "notary" / "agent.toml")]
    process = await trio.lowlevel.open_process(argv, stdout=subprocess.PIPE, env=env)
    line = b""
    with trio.fail_after(DEADLINE):
        while not line.endswith(b"\n"):
            chunk = await process.stdout.receive_some(1)  # type: ignore[union-attr]
            assert chunk, "the notary exited before it was ready"
            line += chunk
    assert line.startswith(b"ready notary ")
    return process


@asynccontextmanager
async def notary_process(folder: Path, crash_at: str | None) -> AsyncIterator[trio.Process]:
    process = await _start_notary(folder, crash_at)
    try:
        yield process
    finally:
        with trio.CancelScope(shield=True):
            if process.returncode is None:
                process.kill()
            await process.wait()


def _stored(folder: Path) -> tuple[int, int]:
    """(heads, tokens) in the notary's database."""
    with sqlite3.connect(folder / "notary" / "data" / "agent.sqlite") as c:
        return c.execute("SELECT count(*), coalesce(sum(length(digests)), 0) / 32"
                         " FROM timestamp_heads").fetchone()


@pytest.mark.parametrize(("crash_at", "stored"), [
    ("timestamp.received", (0, 0)),
    ("timestamp.sealed", (0, 0)),
    ("timestamp.batch_committed", (1, 1)),
])
async def test_a_notary_killed_at_each_step_keeps_a_whole_chain(
        world: Path, crash_at: str, stored: tuple[int, int]) -> None:
    buyer = Agent(config_of(world, "buyer"))
    root, crl = _root_crl(world)
    with trio.fail_after(DEADLINE):
        async with running(buyer):
            async with notary_process(world, crash_at) as process:
                with pytest.raises((ChannelClosed, RemoteError, OSError)):
                    await _stamp(buyer, sha(b"one"))
                assert await process.wait() == -signal.SIGKILL
            assert _stored(world) == stored  # the batch whole, or nothing
            await buyer.close_channels()
            async with notary_process(world, None):
                token = await _stamp(buyer, sha(b"two"))
    verify_token(token, root=root, crl=crl, now=dt.datetime.now(dt.UTC))
    assert (TreeHead.from_statement(token.head).sequence, token.serial) == (stored[0],
                                                                          stored[1])


async def test_a_token_answered_is_on_disk_when_the_notary_is_killed_right_after(
        world: Path) -> None:
    buyer = Agent(config_of(world, "buyer"))
    with trio.fail_after(DEADLINE):
        async with running(buyer):
            async with notary_process(world, None) as process:
                token = await _stamp(buyer, sha(b"kept"))
                process.kill()  # SIGKILL: no shutdown, no checkpoint
                await process.wait()
    with sqlite3.connect(world / "notary" / "data" / "agent.sqlite") as c:
        assert stored_token(c, token.serial) == token


async def test_a_big_batch_is_split_so_its_halves_commit_in_turn(world: Path) -> None:
    """``split_min``: a batch of at least twice that many is cut in two, the first
    half answered before the second commits (bench/notary.py: a requester with many
    in flight works while the notary commits). Every token is still issued once, in
    one chain; no batch is more than half of what waited."""
    config = dataclasses.replace(config_of(world, "notary"),
                                 components={"timestamps": {"split_min": 4}})
    notary, buyer = Agent(config), Agent(config_of(world, "buyer"))
    tokens: list[Token] = []
    with trio.fail_after(DEADLINE):
        async with running(notary), running(buyer):
            async with trio.open_nursery() as nursery:
                for i in range(16):
                    nursery.start_soon(lambda i=i: _append(tokens, buyer, i))
    sizes = [TreeHead.from_statement(Statement.from_bytes(h)).size
             for h in {t.head.to_bytes() for t in tokens}]
    assert sum(sizes) == 16 and max(sizes) <= 8 and len(sizes) >= 2
    assert sorted(t.serial for t in tokens) == list(range(16))
    for bad in (-1, "4", 2**40):
        with pytest.raises(ConfigError, match="split_min"):
            notary.component(Timestamps).configure({"split_min": bad})


async def _append(tokens: list[Token], buyer: Agent, i: int) -> None:
    tokens.append(await _stamp(buyer, sha(b"split %d" % i)))
