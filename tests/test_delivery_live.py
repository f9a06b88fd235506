"""Live streams (issue 10, item 3; services/delivery/_live.py, protocol.md 13.5): the
seller signs a head every N chunks or T ms, each chunk goes with its proof against the
latest head and a new head with its consistency proof from the previous one; the
buyer verifies both and keeps the heads; a forked or rewritten head is refused with
both signed heads as the evidence (delivery.fork)."""

from __future__ import annotations

import hashlib
import os
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pki import NOW, Market
from pki import TestAgent as PkiAgent

from semper.services.delivery import (
    HEAD,
    HEAD_TYPE,
    BadChunk,
    BadHead,
    Forked,
    HeadAnswer,
    HeadFork,
    LiveReceiver,
    LiveStream,
    NotYet,
    OutOfOrder,
    StreamHead,
)
from semper.services.merkle import MerkleTree
from semper.services.statements import Statement, sign_statement

T0 = int(NOW.timestamp() * 1000)
SID = bytes(range(16))


@pytest.fixture
def seller(market: Market) -> PkiAgent:
    return market.agent("seller", "seller")


def sign(agent: PkiAgent, head: StreamHead | dict[str, Any], now_ms: int = T0) -> Statement:
    wire = head.to_wire() if isinstance(head, StreamHead) else head
    return sign_statement(HEAD_TYPE, wire, key=agent.key, certificate=agent.cert,
                          now_ms=now_ms, nonce=os.urandom(16))


def receiver(market: Market, seller: PkiAgent, stream_id: bytes = SID) -> LiveReceiver:
    return LiveReceiver(stream_id=stream_id, seller_id="seller", certificate=seller.cert,
                        root=market.ca.certificate, crl=market.crl)


def chunk(i: int, salt: bytes = b"") -> bytes:
    return hashlib.sha256(salt + i.to_bytes(4, "big")).digest() * (1 + i % 3)


def feed(live: LiveStream, seller: PkiAgent, chunks: list[bytes], now_ms: int = T0
         ) -> list[Statement]:
    """Add ``chunks`` and sign every head that falls due; the heads signed."""
    heads = []
    for data in chunks:
        live.add(data, now_ms=now_ms)
        head = live.due(now_ms)
        if head is not None:
            heads.append(sign(seller, head, now_ms))
            live.signed(heads[-1])
    return heads


def test_heads_every_n_chunks_and_every_chunk_verified(market: Market,
                                                       seller: PkiAgent) -> None:
    live = LiveStream(stream_id=SID, every_chunks=4, every_ms=10_000)
    data = [chunk(i) for i in range(10)]
    heads = feed(live, seller, data)
    assert [StreamHead.from_statement(h).size for h in heads] == [4, 8]
    final = live.due(T0, final=True)
    assert final is not None and final.size == 10
    live.signed(sign(seller, final))
    buyer = receiver(market, seller)
    since = 0
    for i, piece in enumerate(data):
        frame = live.frame(i, since=since)
        assert (frame.head is None) == (i > 0)  # one head, 10 chunks: sent with chunk 0
        buyer.receive_chunk(i, piece, frame.proof, head=frame.head,
                            consistency=frame.consistency, now_ms=T0)
        if frame.head is not None:
            since = StreamHead.from_statement(frame.head).size
    assert buyer.received == 10
    assert buyer.latest is not None and buyer.latest.root == MerkleTree(data).root
    assert buyer.heads == [live.heads[-1]]


def test_each_new_head_comes_with_its_consistency_proof(market: Market,
                                                        seller: PkiAgent) -> None:
    """Chunks fetched as they are produced: every head reaches the buyer, each checked
    against the one before, and the buyer keeps them all."""
    live = LiveStream(stream_id=SID, every_chunks=3, every_ms=10_000)
    buyer = receiver(market, seller)
    since, data = 0, []
    for i in range(12):
        data.append(chunk(i))
        feed(live, seller, [data[-1]])
        while buyer.received < live.covered:
            j = buyer.received
            frame = live.frame(j, since=since)
            buyer.receive_chunk(j, data[j], frame.proof, head=frame.head,
                                consistency=frame.consistency, now_ms=T0)
            if frame.head is not None:
                since = StreamHead.from_statement(frame.head).size
    assert buyer.received == 12
    assert [StreamHead.from_statement(h).size for h in buyer.heads] == [3, 6, 9, 12]
    assert buyer.heads == live.heads
    head, consistency = live.head_for(6)
    assert head == live.heads[-1] and consistency == MerkleTree(data).consistency_proof(6)
    answer = HeadAnswer(head=head, consistency=consistency)
    assert HEAD.decode_response(HEAD.encode_response(answer)) == answer


def test_a_head_every_t_ms_when_chunks_come_slowly(seller: PkiAgent) -> None:
    live = LiveStream(stream_id=SID, every_chunks=100, every_ms=500)
    assert live.next_timer() is None and live.due(T0) is None
    live.add(b"a", now_ms=T0)
    assert live.next_timer() == T0 + 500
    live.add(b"b", now_ms=T0 + 200)
    assert live.due(T0 + 499) is None
    head = live.due(T0 + 500)
    assert head is not None and (head.size, head.time) == (2, T0 + 500)
    live.signed(sign(seller, head))
    assert live.next_timer() is None and live.due(T0 + 10_000) is None
    live.add(b"c", now_ms=T0 + 10_000)
    assert live.next_timer() == T0 + 10_500


def test_a_chunk_before_any_head_is_not_yet(seller: PkiAgent) -> None:
    live = LiveStream(stream_id=SID, every_chunks=2, every_ms=1000)
    live.add(b"a", now_ms=T0)
    with pytest.raises(NotYet) as refused:
        live.frame(0, since=0)
    assert refused.value.code == "delivery.not_yet"
    feed(live, seller, [b"b", b"c"])
    live.frame(1, since=0)
    with pytest.raises(NotYet):
        live.frame(2, since=2)  # added, not covered yet


def test_the_seller_records_only_its_next_head(seller: PkiAgent) -> None:
    live = LiveStream(stream_id=SID, every_chunks=2, every_ms=1000)
    feed(live, seller, [b"a", b"b", b"c"])
    for wrong in ({"stream": bytes(16), "size": 3, "root": bytes(32), "time": T0},  # another
                  {"stream": SID, "size": 2, "root": bytes(32), "time": T0},  # not next
                  {"stream": SID, "size": 4, "root": bytes(32), "time": T0}):  # beyond
        with pytest.raises(ValueError):
            live.signed(sign(seller, wrong))


# -- refusals: a fork with both heads as evidence ----------------------------------------------

def _two_streams(seller: PkiAgent, changed_at: int) -> tuple[list[Statement], list[Statement],
                                                             LiveStream, LiveStream]:
    """The same stream told twice by the seller: chunk ``changed_at`` rewritten."""
    honest = LiveStream(stream_id=SID, every_chunks=4, every_ms=10_000)
    forged = LiveStream(stream_id=SID, every_chunks=4, every_ms=10_000)
    first = feed(honest, seller, [chunk(i) for i in range(8)])
    second = feed(forged, seller, [chunk(i, b"x" if i == changed_at else b"")
                                   for i in range(8)])
    return first, second, honest, forged


def test_a_rewritten_head_is_a_fork_with_both_heads(market: Market, seller: PkiAgent) -> None:
    """The buyer holds the honest head of 4 chunks; the seller then sends a head of 8
    over a history whose chunk 2 was rewritten, with the consistency proof of that
    history: it does not extend the held head."""
    first, second, _, forged = _two_streams(seller, changed_at=2)
    buyer = receiver(market, seller)
    buyer.receive_head(first[0], [], now_ms=T0)
    with pytest.raises(Forked) as refused:
        buyer.receive_head(second[1], forged.head_for(4)[1], now_ms=T0)
    fork = refused.value.evidence
    assert refused.value.code == "delivery.fork"
    assert isinstance(fork, HeadFork) and fork.kind == "inconsistent"
    assert (fork.first, fork.second) == (first[0], second[1])
    assert refused.value.detail["heads"] == [first[0].to_bytes().hex(),
                                             second[1].to_bytes().hex()]
    assert fork.to_wire()["heads"] == [first[0].to_wire(), second[1].to_wire()]
    assert buyer.heads == [first[0]]  # the refused head is not kept as a good one


def test_one_size_two_roots_is_a_fork(market: Market, seller: PkiAgent) -> None:
    first, second, _, _ = _two_streams(seller, changed_at=6)
    buyer = receiver(market, seller)
    buyer.receive_head(first[0], [], now_ms=T0)
    buyer.receive_head(second[0], [], now_ms=T0)  # chunk 6 is past 4: the same head
    buyer.receive_head(first[1], _consistency(4, 8), now_ms=T0)
    with pytest.raises(Forked) as refused:
        buyer.receive_head(second[1], [], now_ms=T0)
    assert refused.value.evidence.kind == "same_size"
    assert (refused.value.evidence.first, refused.value.evidence.second) == (first[1],
                                                                            second[1])


def _consistency(old: int, new: int) -> list[bytes]:
    data = [chunk(i) for i in range(new)]
    return MerkleTree(data).consistency_proof(old)


def test_a_backdated_head_is_a_fork(market: Market, seller: PkiAgent) -> None:
    live = LiveStream(stream_id=SID, every_chunks=2, every_ms=10_000)
    heads = feed(live, seller, [chunk(i) for i in range(2)], now_ms=T0)
    data = [chunk(i) for i in range(4)]
    tree = MerkleTree(data)
    earlier = sign(seller, StreamHead(stream=SID, size=4, root=tree.root, time=T0 - 1))
    buyer = receiver(market, seller)
    buyer.receive_head(heads[0], [], now_ms=T0)
    with pytest.raises(Forked) as refused:
        buyer.receive_head(earlier, tree.consistency_proof(2), now_ms=T0)
    assert refused.value.evidence.kind == "backdated"


def test_bad_heads(market: Market, seller: PkiAgent) -> None:
    live = LiveStream(stream_id=SID, every_chunks=2, every_ms=10_000)
    heads = feed(live, seller, [chunk(i) for i in range(4)])
    stranger = market.agent("mallory", "seller")
    head = StreamHead.from_statement(heads[1])
    cases = [
        # (what, statement, detail key, value)
        ("signed by another", sign(stranger, head), "cause", "statement.wrong_signer"),
        ("another stream", sign(seller, StreamHead(stream=bytes(16), size=4, root=head.root,
                                                   time=T0)), "field", "stream"),
        ("not a head", sign_statement("delivery.ticket", head.to_wire(), key=seller.key,
                                      certificate=seller.cert, now_ms=T0,
                                      nonce=os.urandom(16)), "cause", "statement.wrong_type"),
        ("a bad body", sign(seller, {**head.to_wire(), "size": 0}), "field", "size"),
        ("from the future", sign(seller, head, now_ms=T0 + 3_600_000), "cause",
         "statement.from_the_future"),
    ]
    for what, statement, key, value in cases:
        buyer = receiver(market, seller)
        with pytest.raises(BadHead) as refused:
            buyer.receive_head(statement, [], now_ms=T0)
        assert refused.value.code == "delivery.bad_head", what
        assert refused.value.detail.get(key) == value, (what, refused.value.detail)
        assert buyer.heads == []
    buyer = receiver(market, seller)
    buyer.receive_head(heads[1], [], now_ms=T0)
    older = sign(seller, StreamHead(stream=SID, size=1, root=bytes(32), time=T0))
    with pytest.raises(BadHead) as refused:  # goes back to a size not held
        buyer.receive_head(older, [], now_ms=T0)
    assert refused.value.detail == {"field": "size"}
    assert buyer.receive_head(heads[1], [], now_ms=T0) == head  # a head held: fine


def test_chunk_refusals(market: Market, seller: PkiAgent) -> None:
    live = LiveStream(stream_id=SID, every_chunks=2, every_ms=10_000)
    data = [chunk(i) for i in range(3)]
    feed(live, seller, data)
    buyer = receiver(market, seller)
    frame = live.frame(0, since=0)
    with pytest.raises(BadChunk):  # no head yet
        buyer.receive_chunk(0, data[0], frame.proof, now_ms=T0)
    with pytest.raises(BadChunk):  # altered
        buyer.receive_chunk(0, data[0][:-1] + b"!", frame.proof, head=frame.head,
                            consistency=frame.consistency, now_ms=T0)
    assert buyer.received == 0
    with pytest.raises(OutOfOrder) as refused:
        buyer.receive_chunk(1, data[1], live.frame(1, since=2).proof, now_ms=T0)
    assert refused.value.detail == {"index": 1, "expected": 0}
    buyer.receive_chunk(0, data[0], frame.proof, now_ms=T0)
    buyer.receive_chunk(1, data[1], live.frame(1, since=2).proof, now_ms=T0)
    with pytest.raises(BadChunk):  # chunk 2 is not under the head of 2 the buyer holds
        buyer.receive_chunk(2, data[2], [], now_ms=T0)


# -- any stream, any head periods ------------------------------------------------------------

@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sizes=st.lists(st.integers(1, 40), min_size=1, max_size=40),
       every_chunks=st.integers(1, 7), gaps=st.lists(st.integers(0, 300), max_size=40))
def test_any_live_stream_verifies_end_to_end(market: Market, seller: PkiAgent,
                                             sizes: list[int], every_chunks: int,
                                             gaps: list[int]) -> None:
    live = LiveStream(stream_id=SID, every_chunks=every_chunks, every_ms=250)
    buyer = receiver(market, seller)
    data = [os.urandom(n) for n in sizes]
    now, since = T0, 0
    for i, piece in enumerate(data):
        now += gaps[i] if i < len(gaps) else 0
        live.add(piece, now_ms=now)
        head = live.due(now, final=i == len(data) - 1)
        if head is not None:
            live.signed(sign(seller, head, now))
        while buyer.received < live.covered:
            j = buyer.received
            frame = live.frame(j, since=since)
            buyer.receive_chunk(j, data[j], frame.proof, head=frame.head,
                                consistency=frame.consistency, now_ms=now)
            if frame.head is not None:
                since = StreamHead.from_statement(frame.head).size
    assert buyer.received == len(data)
    assert buyer.latest is not None and buyer.latest.root == MerkleTree(data).root
    times = [StreamHead.from_statement(h).time for h in buyer.heads]
    assert times == sorted(times)


_garbage = st.one_of(st.none(), st.integers(-3, 2**70), st.binary(max_size=40), st.text(max_size=4),
                     st.lists(st.one_of(st.binary(min_size=32, max_size=32), st.binary(max_size=3),
                                        st.integers()), max_size=3))


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(index=_garbage, data=_garbage, proof=_garbage, consistency=_garbage)
def test_hostile_chunk_answers_raise_only_delivery_refusals(
        market: Market, seller: PkiAgent, index: Any, data: Any, proof: Any,
        consistency: Any) -> None:
    live = LiveStream(stream_id=SID, every_chunks=2, every_ms=10_000)
    heads = feed(live, seller, [chunk(0), chunk(1)])
    buyer = receiver(market, seller)
    for head in (None, heads[0]):
        try:
            buyer.receive_chunk(index, data, proof, head=head, consistency=consistency,
                                now_ms=T0)
        except (BadChunk, BadHead, Forked, OutOfOrder):
            pass
    assert buyer.received <= 1
    if buyer.received:  # only chunk 0 itself, with its own proof, can have passed
        assert (index, data) == (0, chunk(0))
