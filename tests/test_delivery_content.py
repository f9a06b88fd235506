"""Streamed content (issue 10, item 2; services/delivery/_content.py): chunks under an
RFC 6962 tree (the published vectors), every chunk's proof verifies and any altered
chunk byte, index or proof element fails with delivery.bad_chunk; the seller's tree
is built in one pass without holding the content; the offer's ``stream`` key."""

from __future__ import annotations

import hashlib
import io
import json
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import semper.services.merkle as merkle
from semper.services import Amount, ServiceError
from semper.services.commerce import BadBody, Offer
from semper.services.delivery import (
    DEFAULT_CHUNK_SIZE,
    MAX_CHUNK_SIZE,
    MAX_CHUNKS,
    BadChunk,
    BadStream,
    ChunkedContent,
    EmptyContent,
    StreamInfo,
    chunk_leaf,
    verify_chunk,
)
from semper.services.delivery._live import _GrowingTree
from semper.services.merkle import MerkleTree, leaf_hash

VECTORS = json.loads((Path(__file__).parent / "vectors" / "rfc6962-merkle.json").read_text())
LEAVES = [bytes.fromhex(x) for x in VECTORS["leaf_inputs_hex"]]
ROOTS = [bytes.fromhex(x) for x in VECTORS["root_by_tree_size_hex"]]
EUR = Amount("EUR", 5)


def content_of(seed: bytes, length: int) -> bytes:
    """``length`` bytes no two of whose 8-byte-or-longer chunks are equal."""
    blocks = -(-length // 32)
    return b"".join(hashlib.sha256(seed + i.to_bytes(4, "big")).digest()
                    for i in range(blocks))[:length]


def chunks_of(data: bytes, size: int) -> list[bytes]:
    return [data[i:i + size] for i in range(0, len(data), size)]


# -- the published vectors -----------------------------------------------------------------

@pytest.mark.parametrize("size", range(1, len(ROOTS)))
def test_rfc6962_vectors_tree_and_proofs_over_chunks(size: int) -> None:
    """The vectors' leaf inputs taken as chunks: the chunk tree's root is the published
    root, and each chunk verifies with its proof against it (and not at another index)."""
    leaves = [chunk_leaf(chunk) for chunk in LEAVES[:size]]
    assert leaves == [leaf_hash(chunk) for chunk in LEAVES[:size]]
    tree = ChunkedContent.from_leaf_hashes(leaves, chunk_size=16, length=16 * (size - 1) + 1,
                                           digest=bytes(32))
    assert tree.root == ROOTS[size]
    grown = _GrowingTree()
    for leaf in leaves:
        grown.append(leaf)
    for m in range(size):
        proof = tree.proof(m)
        assert proof == grown.inclusion(m, size)
        verify_chunk((ROOTS[size], size), m, LEAVES[m], proof)
        for other in range(size):
            if other != m:
                with pytest.raises(BadChunk):
                    verify_chunk((ROOTS[size], size), other, LEAVES[m], proof)
    for earlier in range(size + 1):  # the live tree's roots and consistency proofs
        assert grown.root(earlier) == ROOTS[earlier]
        merkle.verify_consistency(earlier, size, ROOTS[earlier], ROOTS[size],
                                  grown.consistency(earlier, size))


def test_chunk_leaf_is_rfc6962_leaf_hash_without_a_copy() -> None:
    data = bytearray(b"abc" * 1000)
    assert chunk_leaf(data) == chunk_leaf(memoryview(data)) == leaf_hash(bytes(data))


# -- every chunk verifies; any alteration fails ----------------------------------------------

@settings(max_examples=80, deadline=None)
@given(seed=st.binary(max_size=8), length=st.integers(1, 3000),
       chunk_size=st.integers(8, 300), data=st.data())
def test_every_chunk_verifies_and_any_alteration_fails(seed: bytes, length: int,
                                                       chunk_size: int,
                                                       data: st.DataObject) -> None:
    content = content_of(seed, length)
    tree = ChunkedContent.from_bytes(content, chunk_size)
    info = tree.info(EUR)
    chunks = chunks_of(content, chunk_size)
    assert info.chunks == len(chunks) and info.length == length
    assert tree.digest == hashlib.sha256(content).digest()
    assert tree.root == MerkleTree(chunks).root
    for i, chunk in enumerate(chunks):
        verify_chunk(info, i, chunk, tree.proof(i))
        verify_chunk((info.root, info.chunks), i, chunk, tree.proof(i))

    i = data.draw(st.integers(0, len(chunks) - 1), label="chunk")
    chunk, proof = chunks[i], tree.proof(i)
    # a chunk byte altered
    at = data.draw(st.integers(0, len(chunk) - 1), label="byte")
    flip = data.draw(st.integers(1, 255), label="xor")
    altered = bytearray(chunk)
    altered[at] ^= flip
    for stream in (info, (info.root, info.chunks)):
        with pytest.raises(BadChunk) as refused:
            verify_chunk(stream, i, bytes(altered), proof)
        assert refused.value.code == "delivery.bad_chunk"
        assert refused.value.detail == {"index": i}
    # another index (chunks are distinct: content_of)
    other = data.draw(st.integers(0, len(chunks)), label="index")
    if other != i:
        with pytest.raises(BadChunk):
            verify_chunk(info, other, chunk, proof)
        with pytest.raises(BadChunk):
            verify_chunk((info.root, info.chunks), other, chunk, proof)
    # a proof element altered, dropped or added
    if proof:
        k = data.draw(st.integers(0, len(proof) - 1), label="element")
        bit = data.draw(st.integers(0, 255), label="bit")
        bad = list(proof)
        at, mask = bit % 32, 1 << (bit % 8)
        bad[k] = bad[k][:at] + bytes([bad[k][at] ^ mask]) + bad[k][at + 1:]
        for broken in (bad, proof[:-1], [*proof, proof[0]]):
            with pytest.raises(BadChunk):
                verify_chunk(info, i, chunk, broken)
    else:
        with pytest.raises(BadChunk):
            verify_chunk(info, i, chunk, [bytes(32)])
    # a byte more or less (the length binds the chunk to its place)
    with pytest.raises(BadChunk):
        verify_chunk(info, i, chunk + b"\x00", proof)
    if len(chunk) > 1:
        with pytest.raises(BadChunk):
            verify_chunk(info, i, chunk[:-1], proof)


@pytest.mark.parametrize("case", [
    (0, "not a chunk", []),        # data that is not bytes
    ("0", b"x", []),               # an index that is not an int
    (-1, b"x", []),                # a negative index
    (True, b"x", []),              # a bool is not an index
    (0, b"x", "notalist"),         # a proof that is not a list
    (0, b"x", [b"short"]),         # a proof hash of the wrong size
])
def test_verify_chunk_refuses_hostile_values_with_its_code(case: tuple[object, ...]) -> None:
    tree = ChunkedContent.from_bytes(b"xy", 1)
    for stream in (tree.info(EUR), (tree.root, tree.chunks)):
        with pytest.raises(BadChunk):
            verify_chunk(stream, *case)  # type: ignore[arg-type]


def test_verify_chunk_costs_one_leaf_hash_and_one_node_hash_per_proof_element(
        monkeypatch: pytest.MonkeyPatch) -> None:
    content = content_of(b"cost", 100 * 1024)
    tree = ChunkedContent.from_bytes(content, 1024)
    calls = []
    real = merkle.node_hash
    monkeypatch.setattr(merkle, "node_hash", lambda a, b: calls.append(1) or real(a, b))
    for i in (0, 57, 99):
        calls.clear()
        proof = tree.proof(i)
        verify_chunk(tree.info(EUR), i, content[i * 1024:(i + 1) * 1024], proof)
        assert len(calls) == len(proof) <= 7  # ceil(log2(100))


# -- the seller's tree: one pass, never the whole content -----------------------------------

def test_from_file_is_from_bytes_and_reads_chunks_back(tmp_path: Path) -> None:
    content = content_of(b"file", 10 * 4096 + 17)
    path = tmp_path / "content.bin"
    path.write_bytes(content)
    tree = ChunkedContent.from_file(path, 4096)
    same = ChunkedContent.from_bytes(content, 4096)
    assert (tree.root, tree.chunks, tree.length, tree.digest) == \
        (same.root, same.chunks, same.length, same.digest)
    assert tree.chunks == 11 and tree.chunk_length(10) == 17
    assert tree.digest == hashlib.sha256(content).digest()
    with path.open("rb") as f:
        for i in (10, 0, 5):
            assert tree.read_chunk(f, i) == content[i * 4096:(i + 1) * 4096]
    assert tree.read_chunk(io.BytesIO(content), 3) == content[3 * 4096:4 * 4096]
    restored = ChunkedContent.from_leaf_hashes(tree.leaf_hashes, chunk_size=4096,
                                               length=tree.length, digest=tree.digest)
    assert restored.root == tree.root and restored.proof(3) == tree.proof(3)
    path.write_bytes(content[:-1])  # the file changed under the tree
    with path.open("rb") as f, pytest.raises(OSError):
        tree.read_chunk(f, 10)


def test_from_file_never_holds_the_content(tmp_path: Path) -> None:
    """8 MiB at 64 KiB a chunk: the build's peak Python allocation stays a few chunks."""
    path = tmp_path / "big.bin"
    with path.open("wb") as f:
        for i in range(128):
            f.write(bytes([i]) * 65536)
    tracemalloc.start()
    try:
        tree = ChunkedContent.from_file(path, 65536)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert tree.chunks == 128
    assert peak < 4 * 65536, peak


def test_default_chunk_size_and_limits() -> None:
    assert DEFAULT_CHUNK_SIZE == 1 << 20  # the fastest (bench/stream.py)
    assert MAX_CHUNK_SIZE == 1 << 20 and MAX_CHUNKS == 1 << 20


def test_empty_content_is_refused(tmp_path: Path) -> None:
    (tmp_path / "empty").write_bytes(b"")
    for build in (lambda: ChunkedContent.from_file(tmp_path / "empty"),
                  lambda: ChunkedContent.from_bytes(b"")):
        with pytest.raises(EmptyContent) as refused:
            build()
        assert refused.value.code == "delivery.empty_content"


@pytest.mark.parametrize("chunk_size", [0, -1, MAX_CHUNK_SIZE + 1, 1.5, True])
def test_chunk_size_out_of_range_is_refused(chunk_size: object) -> None:
    with pytest.raises(BadStream) as refused:
        ChunkedContent.from_bytes(b"abc", chunk_size)  # type: ignore[arg-type]
    assert refused.value.detail["field"] == "chunk_size"


def test_more_than_max_chunks_is_refused() -> None:
    with pytest.raises(BadStream) as refused:
        ChunkedContent.from_bytes(bytes(MAX_CHUNKS + 1), 1)
    assert refused.value.detail["field"] == "chunks"


# -- StreamInfo ------------------------------------------------------------------------------

def test_stream_info_wire_round_trip() -> None:
    info = ChunkedContent.from_bytes(content_of(b"w", 1000), 300).info(EUR)
    wire = info.to_wire()
    assert wire == {"chunks": 4, "chunk_size": 300, "length": 1000, "root": info.root,
                    "price_per_chunk": {"currency": "EUR", "minor_units": 5}}
    assert StreamInfo.from_wire(wire) == info
    assert info.price == Amount("EUR", 20)
    assert [info.chunk_length(i) for i in range(4)] == [300, 300, 300, 100]


@pytest.mark.parametrize(("change", "field"), [
    ({"chunks": 5}, "chunks"),                        # not ceil(length / chunk_size)
    ({"chunks": 3}, "chunks"),
    ({"chunk_size": MAX_CHUNK_SIZE + 1}, "chunk_size"),
    ({"chunk_size": 0}, "chunk_size"),
    ({"length": 0}, "length"),                        # no empty stream
    ({"chunks": MAX_CHUNKS + 1}, "chunks"),
    ({"root": bytes(31)}, "root"),
    ({"price_per_chunk": {"currency": "EUR", "minor_units": 0}}, "price_per_chunk"),
    ({"price_per_chunk": 5}, "price_per_chunk"),
    ({"extra": 1}, "extra"),
])
def test_stream_info_refusals(change: dict[str, object], field: str) -> None:
    wire = {"chunks": 4, "chunk_size": 300, "length": 1000, "root": bytes(32),
            "price_per_chunk": {"currency": "EUR", "minor_units": 5}, **change}
    with pytest.raises(BadStream) as refused:
        StreamInfo.from_wire(wire)
    assert refused.value.code == "delivery.bad_stream"
    assert refused.value.detail["field"] == field


# -- the offer's stream key ------------------------------------------------------------------

def offer(**change: object) -> Offer:
    info = ChunkedContent.from_bytes(content_of(b"o", 1000), 300).info(EUR)
    fields: dict[str, object] = {
        "seller": "seller", "sku": "course-004", "title": "A course", "price": info.price,
        "terms": "", "content_digest": bytes(32), "valid_until": 2_000_000_000_000,
        "refund_days": 0, "stream": info}
    fields.update(change)
    return Offer(**fields)  # type: ignore[arg-type]


def test_a_streamed_offer_round_trips_and_a_plain_one_has_no_stream_key() -> None:
    streamed = offer()
    wire = streamed.to_wire()
    assert wire["stream"] == streamed.stream.to_wire()  # type: ignore[union-attr]
    assert Offer.from_wire(wire) == streamed
    plain = offer(stream=None, price=Amount("EUR", 7))
    assert "stream" not in plain.to_wire()
    assert Offer.from_wire(plain.to_wire()).stream is None


@pytest.mark.parametrize("price", [
    Amount("EUR", 19),   # not chunks x price_per_chunk (4 x 5)
    Amount("EUR", 21),
    Amount("USD", 20),   # another currency
])
def test_a_streamed_offer_price_must_be_chunks_times_price_per_chunk(price: Amount) -> None:
    with pytest.raises(BadBody) as refused:
        offer(price=price)
    assert refused.value.detail["field"] == "price"
    wire = offer().to_wire()
    wire["price"] = price.to_wire()
    with pytest.raises(BadBody):
        Offer.from_wire(wire)


def test_a_bad_stream_map_in_an_offer_is_commerce_bad_body_with_its_cause() -> None:
    wire = offer().to_wire()
    wire["stream"] = {**wire["stream"], "chunks": 9}
    with pytest.raises(ServiceError) as refused:
        Offer.from_wire(wire)
    assert refused.value.code == "commerce.bad_body"
    assert refused.value.detail["field"] == "stream"
    assert refused.value.detail["cause"] == "delivery.bad_stream"


def test_the_documented_example_is_what_the_code_computes() -> None:
    """docs/protocol.md 13.1's byte-exact example: `hello, world` in chunks of 5."""
    doc = (Path(__file__).resolve().parent.parent / "docs" / "protocol.md").read_text()
    section = doc[doc.index("### 13.1"):doc.index("### 13.2")]
    tree = ChunkedContent.from_bytes(b"hello, world", 5)
    leaves = [leaf_hash(c) for c in (b"hello", b", wor", b"ld")]
    assert tree.leaf_hashes == leaves
    assert tree.proof(0) == leaves[1:] and tree.proof(2) == [merkle.node_hash(*leaves[:2])]
    for value in (*leaves, merkle.node_hash(*leaves[:2]), tree.root, tree.digest):
        assert value.hex() in section
    assert f"{DEFAULT_CHUNK_SIZE:,} bytes" in section
