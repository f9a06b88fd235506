"""RFC 6962 Merkle trees (services/merkle.py): the published roots, the recursive
definitions against the bottom-up tree, and proofs that verify exactly when true."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from semper.services.merkle import (
    EMPTY_ROOT,
    InvalidProof,
    MerkleTree,
    leaf_hash,
    mth,
    node_hash,
    path,
    proof,
    verify_consistency,
    verify_inclusion,
)

VECTORS = json.loads((Path(__file__).parent / "vectors" / "rfc6962-merkle.json").read_text())
LEAVES = [bytes.fromhex(x) for x in VECTORS["leaf_inputs_hex"]]
ROOTS = [bytes.fromhex(x) for x in VECTORS["root_by_tree_size_hex"]]


@pytest.mark.parametrize("size", range(len(ROOTS)))
def test_published_roots(size: int) -> None:
    assert mth(LEAVES[:size]) == ROOTS[size]
    assert MerkleTree(LEAVES[:size]).root == ROOTS[size]


@pytest.mark.parametrize("size", range(1, len(ROOTS)))
def test_every_path_and_proof_of_the_published_trees(size: int) -> None:
    tree = MerkleTree(LEAVES[:size])
    for m in range(size):
        assert tree.inclusion_proof(m) == path(m, LEAVES[:size])
        verify_inclusion(leaf_hash(LEAVES[m]), m, size, tree.inclusion_proof(m), ROOTS[size])
    for m in range(size + 1):
        assert tree.consistency_proof(m) == proof(m, LEAVES[:size])
        verify_consistency(m, size, ROOTS[m], ROOTS[size], tree.consistency_proof(m))


def test_hashes_byte_exact() -> None:
    """The prefixes: leaf 0x00, node 0x01 (the example in docs/protocol.md 11.2)."""
    assert EMPTY_ROOT.hex() == ROOTS[0].hex()
    assert leaf_hash(b"").hex() == ROOTS[1].hex()
    assert node_hash(leaf_hash(b""), leaf_hash(b"\x00")) == ROOTS[2]
    # RFC 6962's split: 3 leaves are (0, 1) and 2, not 0 and (1, 2).
    assert mth(LEAVES[:3]) == node_hash(node_hash(leaf_hash(LEAVES[0]), leaf_hash(LEAVES[1])),
                                        leaf_hash(LEAVES[2]))


def test_inclusion_refusals() -> None:
    tree = MerkleTree(LEAVES)
    good = tree.inclusion_proof(5)
    leaf = leaf_hash(LEAVES[5])
    cases = [
        (leaf, 4, 8, good),                    # another index
        (leaf, 5, 9, good),                    # another size (5, 7 has this path's
                                               # shape too: the signed size binds it)
        (leaf, 8, 8, good),                    # index out of the tree
        (leaf_hash(LEAVES[4]), 5, 8, good),    # another leaf
        (leaf, 5, 8, good[:-1]),               # a path cut short
        (leaf, 5, 8, [*good, good[0]]),        # a path too long
        (leaf, 5, 8, [good[0][:31], *good[1:]]),  # a hash of the wrong size
        (leaf, 5, 8, "notalist"),              # not a path at all
        (leaf, -1, 8, good),                   # a negative index
        (leaf, 5, True, good),                 # a bool is not a size
        (LEAVES[5], 5, 8, good),               # the leaf input, not its hash
    ]
    for case in cases:
        with pytest.raises(InvalidProof):
            verify_inclusion(case[0], case[1], case[2], case[3], tree.root)  # type: ignore[arg-type]
    with pytest.raises(InvalidProof):
        verify_inclusion(leaf, 0, 0, [], EMPTY_ROOT)


def test_consistency_edges() -> None:
    verify_consistency(0, 8, EMPTY_ROOT, ROOTS[8], [])
    verify_consistency(8, 8, ROOTS[8], ROOTS[8], [])
    for bad in [(8, 8, ROOTS[7], ROOTS[8], []), (0, 8, EMPTY_ROOT, ROOTS[8], [ROOTS[1]]),
                (8, 7, ROOTS[8], ROOTS[7], []), (3, 8, ROOTS[3], ROOTS[8], []),
                (4, 8, ROOTS[4], ROOTS[8], MerkleTree(LEAVES).consistency_proof(3))]:
        with pytest.raises(InvalidProof):
            verify_consistency(*bad)  # type: ignore[arg-type]


leaves_st = st.lists(st.binary(max_size=8), min_size=1, max_size=70)


@settings(max_examples=60, deadline=None)
@given(leaves=leaves_st)
def test_tree_is_the_recursive_definition(leaves: list[bytes]) -> None:
    tree = MerkleTree(leaves)
    assert tree.root == mth(leaves)
    for m in range(len(leaves)):
        assert tree.inclusion_proof(m) == path(m, leaves)
    assert tree.inclusion_proofs() == [path(m, leaves) for m in range(len(leaves))]


@settings(max_examples=60, deadline=None)
@given(leaves=leaves_st, data=st.data())
def test_every_inclusion_proof_verifies_and_any_alteration_fails(leaves: list[bytes],
                                                                  data: st.DataObject) -> None:
    tree = MerkleTree(leaves)
    n = len(leaves)
    for m in range(n):
        verify_inclusion(tree.leaf(m), m, n, tree.inclusion_proof(m), tree.root)
    m = data.draw(st.integers(0, n - 1))
    good = tree.inclusion_proof(m)
    if good:
        i = data.draw(st.integers(0, len(good) - 1))
        bit = data.draw(st.integers(0, 255))
        altered = list(good)
        altered[i] = bytes([altered[i][0] ^ (1 << (bit % 8))]) + altered[i][1:]
        with pytest.raises(InvalidProof):
            verify_inclusion(tree.leaf(m), m, n, altered, tree.root)
    other = data.draw(st.integers(0, n - 1))
    if tree.leaf(other) != tree.leaf(m):  # a proof for another leaf
        with pytest.raises(InvalidProof):
            verify_inclusion(tree.leaf(other), m, n, good, tree.root)
    wrong_index = data.draw(st.integers(0, n))
    if wrong_index != m and not (wrong_index < n and tree.leaf(wrong_index) == tree.leaf(m)
                                 and tree.inclusion_proof(wrong_index) == good):
        with pytest.raises(InvalidProof):
            verify_inclusion(tree.leaf(m), wrong_index, n, good, tree.root)


def test_consistency_between_every_pair_of_sizes_up_to_64() -> None:
    leaves = [i.to_bytes(2, "big") for i in range(64)]
    roots = [mth(leaves[:n]) for n in range(65)]
    for n in range(65):
        tree = MerkleTree(leaves[:n])
        assert tree.root == roots[n]
        for m in range(n + 1):
            p = tree.consistency_proof(m)
            verify_consistency(m, n, roots[m], roots[n], p)
            if 0 < m < n:
                assert p == proof(m, leaves[:n])
                with pytest.raises(InvalidProof):  # another first tree
                    verify_consistency(m, n, roots[m - 1] if m > 1 else leaf_hash(b"x"),
                                       roots[n], p)
                with pytest.raises(InvalidProof):  # another second tree
                    verify_consistency(m, n, roots[m], roots[n - 1], p)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(2, 64), data=st.data())
def test_any_altered_consistency_proof_fails(n: int, data: st.DataObject) -> None:
    leaves = [i.to_bytes(2, "big") for i in range(n)]
    m = data.draw(st.integers(1, n - 1))
    tree = MerkleTree(leaves)
    good = tree.consistency_proof(m)
    i = data.draw(st.integers(0, len(good) - 1))
    altered = list(good)
    altered[i] = bytes([altered[i][0] ^ 1]) + altered[i][1:]
    with pytest.raises(InvalidProof):
        verify_consistency(m, n, mth(leaves[:m]), tree.root, altered)
    with pytest.raises(InvalidProof):  # a hash dropped
        verify_consistency(m, n, mth(leaves[:m]), tree.root, good[:i] + good[i + 1:])
