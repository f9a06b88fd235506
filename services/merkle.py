"""Merkle trees as RFC 6962 section 2.1 defines them (SHA-256), with audit paths and
consistency proofs, verified by RFC 9162 section 2.1.3.2 and 2.1.4.2's algorithms.

Theory of operation. The Merkle Tree Hash of ``n`` leaf inputs (RFC 6962 2.1)::

    MTH({})       = SHA-256()
    MTH({d(0)})   = SHA-256(0x00 || d(0))                       leaf hash
    MTH(D[n])     = SHA-256(0x01 || MTH(D[0:k]) || MTH(D[k:n]))  node hash

with ``k`` the largest power of two smaller than ``n``. The 0x00/0x01 prefixes keep a
leaf from ever being read as a node (second-preimage). ``MerkleTree`` computes the
same tree bottom up (pair neighbours level by level; an unpaired last node moves up
unchanged), which gives the same nodes as the recursive definition, once for all
leaves, so that every audit path of a batch costs O(n log n) in all rather than
O(n) each. ``mth``, ``path`` and ``proof`` below are the RFC's recursive
definitions, word for word, kept as the reference the tests hold the tree to.

Verification never trusts the prover's shape: RFC 6962's prose on checking proofs is
loose (it does not say to check that a path is spent exactly), so the checks follow
RFC 9162's algorithms, which end by requiring that the tree-size counter reached 0.
Any failure raises ``InvalidProof`` (``merkle.invalid_proof``), whatever was wrong.
Pure: no I/O. ``semper.services.timestamping`` batches tokens under it; streamed
delivery (issue 10) reuses it for chunks.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import ClassVar, Final

from ._errors import ServiceError

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "InvalidProof",
    "MerkleTree",
    "consistency_path",
    "consistency_proof",
    "inclusion_proof",
    "split_point",
    "leaf_hash",
    "mth",
    "node_hash",
    "root_of",
    "verify_consistency",
    "verify_inclusion",
]

HASH_SIZE: Final = 32
#: MTH of no leaves: SHA-256 of the empty string.
EMPTY_ROOT: Final = hashlib.sha256(b"").digest()
#: The longest path any tree can need (2^64 leaves): a longer one is refused unread.
MAX_PATH: Final = 64


class InvalidProof(ServiceError):
    """An inclusion or consistency proof does not prove what it claims. Opaque: a
    wrong hash, a wrong length and a wrong index look alike."""

    code: ClassVar[str] = "merkle.invalid_proof"


def leaf_hash(data: bytes) -> bytes:
    """SHA-256(0x00 || data)."""
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """SHA-256(0x01 || left || right)."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two smaller than ``n`` (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


# -- the RFC's recursive definitions (reference) -----------------------------------------

def mth(leaves: Sequence[bytes]) -> bytes:
    """MTH(D[n]) over the leaf inputs, recursively as RFC 6962 2.1 writes it."""
    n = len(leaves)
    if n == 0:
        return EMPTY_ROOT
    if n == 1:
        return leaf_hash(leaves[0])
    k = _split(n)
    return node_hash(mth(leaves[:k]), mth(leaves[k:]))


def path(m: int, leaves: Sequence[bytes]) -> list[bytes]:
    """PATH(m, D[n]): the audit path of leaf ``m`` (RFC 6962 2.1.1), recursively."""
    n = len(leaves)
    if not 0 <= m < n:
        raise ValueError(f"leaf {m} is not in a tree of {n}")
    if n == 1:
        return []
    k = _split(n)
    if m < k:
        return [*path(m, leaves[:k]), mth(leaves[k:])]
    return [*path(m - k, leaves[k:]), mth(leaves[:k])]


def proof(m: int, leaves: Sequence[bytes]) -> list[bytes]:
    """PROOF(m, D[n]): consistency of the first ``m`` leaves with all ``n`` (RFC 6962
    2.1.2), recursively. ``m`` of 0 or ``n`` gives the empty proof."""
    n = len(leaves)
    if not 0 <= m <= n:
        raise ValueError(f"a tree of {n} has no earlier size {m}")
    if m in (0, n):
        return []
    return _subproof(m, leaves, True)


def _subproof(m: int, leaves: Sequence[bytes], b: bool) -> list[bytes]:
    n = len(leaves)
    if m == n:
        return [] if b else [mth(leaves)]
    k = _split(n)
    if m <= k:
        return [*_subproof(m, leaves[:k], b), mth(leaves[k:])]
    return [*_subproof(m - k, leaves[k:], False), mth(leaves[:k])]


# -- the tree, computed once ---------------------------------------------------------------

class MerkleTree:
    """Every node of the RFC 6962 tree over some leaves, for roots and proofs.

    Build from leaf inputs (``MerkleTree(leaves)``) or from leaf hashes already made
    (``MerkleTree.from_leaf_hashes``)."""

    __slots__ = ("_levels",)

    def __init__(self, leaves: Sequence[bytes] = ()) -> None:
        self._levels = _levels([leaf_hash(leaf) for leaf in leaves])

    @classmethod
    def from_leaf_hashes(cls, hashes: Sequence[bytes]) -> MerkleTree:
        if any(type(h) is not bytes or len(h) != HASH_SIZE for h in hashes):
            raise ValueError(f"a leaf hash is {HASH_SIZE} bytes")
        tree = cls.__new__(cls)
        tree._levels = _levels(list(hashes))
        return tree

    @property
    def size(self) -> int:
        return len(self._levels[0])

    @property
    def root(self) -> bytes:
        return self._levels[-1][0] if self._levels[0] else EMPTY_ROOT

    def leaf(self, index: int) -> bytes:
        """The leaf hash at ``index``."""
        return self._levels[0][index]

    def inclusion_proof(self, index: int) -> list[bytes]:
        """PATH(index, D[n]): the siblings from the leaf up (ValueError if out of range).

        Bottom up, a node with no right neighbour moves up unchanged and contributes
        nothing to the path: that is the recursive PATH's shape."""
        if not 0 <= index < self.size:
            raise ValueError(f"leaf {index} is not in a tree of {self.size}")
        out = []
        for level in self._levels[:-1]:
            sibling = index ^ 1
            if sibling < len(level):
                out.append(level[sibling])
            index >>= 1
        return out

    def inclusion_proofs(self) -> list[list[bytes]]:
        """Every leaf's ``inclusion_proof``, level by level in one pass (a notary
        answers a whole batch at once)."""
        n = self.size
        paths: list[list[bytes]] = [[] for _ in range(n)]
        for depth, level in enumerate(self._levels[:-1]):
            width = len(level)
            for index in range(n):
                sibling = (index >> depth) ^ 1
                if sibling < width:
                    paths[index].append(level[sibling])
        return paths

    def consistency_proof(self, old_size: int) -> list[bytes]:
        """PROOF(old_size, D[n]) (ValueError unless 0 <= old_size <= size)."""
        n = self.size
        if not 0 <= old_size <= n:
            raise ValueError(f"a tree of {n} has no earlier size {old_size}")
        return consistency_path(old_size, n, self.subtree)

    def subtree(self, lo: int, hi: int) -> bytes:
        """MTH(D[lo:hi]) for a range the recursion visits: ``lo`` a multiple of a power
        of two at least ``hi - lo`` long, or ``hi`` the tree's end."""
        if hi - lo == 1:
            return self._levels[0][lo]
        size = hi - lo
        if size & (size - 1) == 0 and lo % size == 0:  # a whole node of the tree
            return self._levels[size.bit_length() - 1][lo // size]
        k = _split(size)
        return node_hash(self.subtree(lo, lo + k), self.subtree(lo + k, hi))


def consistency_path(old: int, size: int, subtree: Callable[[int, int], bytes]
                     ) -> list[bytes]:
    """PROOF(old, D[size]) (RFC 6962 2.1.2) from ``subtree(lo, hi)`` = MTH(D[lo:hi]),
    for any tree that can give the subtrees the recursion visits (a fixed tree, or
    one that grows: the live streams' heads)."""
    def sub(m: int, lo: int, hi: int, b: bool) -> list[bytes]:
        if m == hi - lo:
            return [] if b else [subtree(lo, hi)]
        k = _split(hi - lo)
        if m <= k:
            return [*sub(m, lo, lo + k, b), subtree(lo + k, hi)]
        return [*sub(m - k, lo + k, hi, False), subtree(lo, lo + k)]

    return [] if old in (0, size) else sub(old, 0, size, True)


def split_point(n: int) -> int:
    """The largest power of two smaller than ``n`` (n >= 2): where RFC 6962 splits."""
    return _split(n)


def _levels(hashes: list[bytes]) -> list[list[bytes]]:
    levels = [hashes]
    while len(levels[-1]) > 1:
        below = levels[-1]
        above = [node_hash(below[i], below[i + 1]) for i in range(0, len(below) - 1, 2)]
        if len(below) % 2:
            above.append(below[-1])
        levels.append(above)
    return levels


def root_of(leaves: Sequence[bytes]) -> bytes:
    """MTH of the leaf inputs."""
    return MerkleTree(leaves).root


def inclusion_proof(leaves: Sequence[bytes], index: int) -> list[bytes]:
    return MerkleTree(leaves).inclusion_proof(index)


def consistency_proof(leaves: Sequence[bytes], old_size: int) -> list[bytes]:
    return MerkleTree(leaves).consistency_proof(old_size)


# -- verification (RFC 9162) -----------------------------------------------------------------

def _check_hashes(*values: object) -> None:
    for value in values:
        if type(value) is not bytes or len(value) != HASH_SIZE:
            raise InvalidProof("the proof does not verify")


def _check_path(proof: object) -> list[bytes]:
    if not isinstance(proof, (list, tuple)) or type(proof) not in (list, tuple) \
            or len(proof) > MAX_PATH:
        raise InvalidProof("the proof does not verify")
    _check_hashes(*proof)
    return [bytes(h) for h in proof]


def _int(value: object) -> int:
    if type(value) is not int or value < 0:
        raise InvalidProof("the proof does not verify")
    return value


def verify_inclusion(leaf: bytes, index: int, size: int, proof: Sequence[bytes],
                     root: bytes) -> None:
    """Check that the leaf hash ``leaf`` is leaf ``index`` of the tree of ``size``
    leaves whose root is ``root`` (RFC 9162 2.1.3.2).

    Raises:
        InvalidProof: it is not (any reason; bad types and sizes too).
    """
    fn, sn = _int(index), _int(size) - 1 if _int(size) else -1
    hashes = _check_path(proof)
    _check_hashes(leaf, root)
    if fn > sn:  # index >= size (or an empty tree)
        raise InvalidProof("the proof does not verify")
    r = leaf
    for p in hashes:
        if sn == 0:
            raise InvalidProof("the proof does not verify")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0 or r != root:
        raise InvalidProof("the proof does not verify")


def verify_consistency(first: int, second: int, first_root: bytes, second_root: bytes,
                       proof: Sequence[bytes]) -> None:
    """Check that the tree of ``first`` leaves with root ``first_root`` is a prefix of
    the tree of ``second`` leaves with root ``second_root`` (RFC 9162 2.1.4.2; equal
    sizes need the empty proof and equal roots, an empty first tree the empty proof).

    Raises:
        InvalidProof: it is not (any reason).
    """
    first, second = _int(first), _int(second)
    path_ = _check_path(proof)
    _check_hashes(first_root, second_root)
    if first > second:
        raise InvalidProof("the proof does not verify")
    if first == second:
        if path_ or first_root != second_root:
            raise InvalidProof("the proof does not verify")
        return
    if first == 0:
        if path_:
            raise InvalidProof("the proof does not verify")
        return
    if not path_:  # step 1
        raise InvalidProof("the proof does not verify")
    if first & (first - 1) == 0:  # step 2: first is a power of two
        path_ = [first_root, *path_]
    fn, sn = first - 1, second - 1  # step 3
    while fn & 1:  # step 4
        fn >>= 1
        sn >>= 1
    fr = sr = path_[0]  # step 5
    for c in path_[1:]:  # step 6
        if sn == 0:
            raise InvalidProof("the proof does not verify")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if fr != first_root or sr != second_root or sn != 0:  # step 7
        raise InvalidProof("the proof does not verify")
