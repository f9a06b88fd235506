"""PayWord hash chains (Rivest and Shamir, "PayWord and MicroMint", 1996), sans-IO.

Theory of operation. The buyer draws ``w_n`` at random (32 bytes) and hashes down:
``w_{i-1} = SHA-256(w_i)``; ``w_0`` is the root, which it signs in its commitment.
Payword ``w_k`` is worth k units: revealing it proves the buyer revealed every
``w_j`` below it, since anyone can hash ``w_k`` k times to reach the root, and
nobody but the buyer can go the other way. A stream pays chunk ``i`` (0-based) by
revealing ``w_{i+1}``; the seller checks it with one hash from the last it accepted
(``PaywordChecker``), and redeems the highest once at the bank, which hashes it
``index`` times to the root (``hash_to_root``).

The buyer keeps only ``w_n`` and the length (``to_secret_bytes``); ``payword(k)``
hashes from the nearest of about sqrt(n) checkpoints kept in memory, so any payword
costs at most ~sqrt(n) hashes (1,024 for the longest chain) instead of n - k.
"""

from __future__ import annotations

import hashlib
import math
import secrets
from typing import Final

from ._errors import BadPayword, BeyondChain, OutOfOrder, Replayed

__all__ = ["MAX_LENGTH", "PAYWORD_SIZE", "PayWordChain", "PaywordChecker", "hash_to_root"]

#: Paywords of the longest chain: one per chunk of the longest stream (2**20).
MAX_LENGTH: Final = 1 << 20
#: Bytes of a payword (a SHA-256 output).
PAYWORD_SIZE: Final = 32
_SECRET_SIZE: Final = 4 + PAYWORD_SIZE


def _hash(word: bytes, times: int) -> bytes:
    sha256 = hashlib.sha256
    for _ in range(times):
        word = sha256(word).digest()
    return word


def hash_to_root(payword: bytes, index: int) -> bytes:
    """SHA-256 applied ``index`` times to ``payword``: the root if it is ``w_index``.
    Costs ``index`` hashes (the bank's check of a redemption)."""
    return _hash(payword, index)


class PayWordChain:
    """The buyer's chain: ``w_n`` (``seed``) and ``length`` n. Hold it secret.

    Raises (construction): ValueError for a length outside 1..MAX_LENGTH or a seed
    that is not 32 bytes.
    """

    __slots__ = ("_checkpoints", "_step", "length", "root", "seed")

    def __init__(self, seed: bytes, length: int) -> None:
        if type(length) is not int or not 1 <= length <= MAX_LENGTH:
            raise ValueError(f"a chain has 1 to {MAX_LENGTH} paywords")
        if type(seed) is not bytes or len(seed) != PAYWORD_SIZE:
            raise ValueError(f"a chain's seed is {PAYWORD_SIZE} bytes")
        self.seed = seed
        self.length = length
        # Checkpoints w_n, w_{n-s}, w_{n-2s}, ... down to the root: one pass of n hashes.
        self._step = max(1, math.isqrt(length))
        checkpoints = {length: seed}
        word, k = seed, length
        while k > 0:
            hops = min(self._step, k)
            word, k = _hash(word, hops), k - hops
            checkpoints[k] = word
        self._checkpoints = checkpoints
        self.root: bytes = checkpoints[0]

    @classmethod
    def new(cls, length: int) -> PayWordChain:
        """A fresh chain of ``length`` paywords from the system's CSPRNG."""
        return cls(secrets.token_bytes(PAYWORD_SIZE), length)

    def payword(self, k: int) -> bytes:
        """``w_k`` (``w_0`` is the root).

        Raises: BeyondChain for k > length; BadPayword for k < 0 or not an int."""
        if type(k) is not int or k < 0:
            raise BadPayword(f"payword index {k!r} is not 0 or more", detail={"index": k})
        if k > self.length:
            raise BeyondChain(f"payword {k} is beyond a chain of {self.length}",
                              detail={"index": k, "length": self.length})
        above = self.length - (self.length - k) // self._step * self._step  # checkpoint >= k
        return _hash(self._checkpoints[above], above - k)

    def to_secret_bytes(self) -> bytes:
        """The length (4 bytes, big-endian) and ``w_n``: all the buyer stores."""
        return self.length.to_bytes(4, "big") + self.seed

    @classmethod
    def from_secret_bytes(cls, data: bytes) -> PayWordChain:
        """Raises ValueError for bytes that ``to_secret_bytes`` did not write."""
        if type(data) is not bytes or len(data) != _SECRET_SIZE:
            raise ValueError(f"a chain's secret is {_SECRET_SIZE} bytes")
        return cls(data[4:], int.from_bytes(data[:4], "big"))


class PaywordChecker:
    """The payee's check of paywords as they come, from the signed root.

    ``highest`` is the index of the last payword accepted (0: none, only the root),
    ``payword`` that payword (the root at first): what the payee redeems. With
    ``in_order`` each payword must be the next one (a stream pays one chunk at a
    time); without it a payword k > highest is checked by k - highest hashes.

    A refused payword changes nothing.
    """

    __slots__ = ("highest", "in_order", "length", "payword", "root")

    def __init__(self, root: bytes, length: int, *, in_order: bool = False,
                 highest: int = 0, payword: bytes | None = None) -> None:
        if type(root) is not bytes or len(root) != PAYWORD_SIZE:
            raise ValueError(f"a root is {PAYWORD_SIZE} bytes")
        if type(length) is not int or not 1 <= length <= MAX_LENGTH:
            raise ValueError(f"a chain has 1 to {MAX_LENGTH} paywords")
        self.root = root
        self.length = length
        self.in_order = in_order
        self.highest = 0
        self.payword = root
        if highest:  # resuming from a payword accepted before (a seller restarted)
            if payword is None:
                raise ValueError("resuming needs the highest payword accepted")
            PaywordChecker(root, length).accept(highest, payword)
            self.highest, self.payword = highest, payword

    def accept(self, k: int, payword: bytes) -> None:
        """Accept ``payword`` as ``w_k`` (``check``, then it becomes the highest).

        Raises:
            BadPayword: k < 1, not 32 bytes, or it does not hash to the last accepted.
            Replayed: k <= highest (paid already).
            OutOfOrder: ``in_order`` and k > highest + 1.
            BeyondChain: k > length.
        """
        self.check(k, payword)
        self.highest, self.payword = k, payword

    def check(self, k: int, payword: bytes) -> None:
        """Raise as ``accept`` would, and change nothing: a payee that must commit a
        payword durably before it counts checks it, commits, then ``accept``s it."""
        if type(k) is not int or k < 1:
            raise BadPayword(f"payword index {k!r} is not 1 or more", detail={"index": k})
        if k > self.length:
            raise BeyondChain(f"payword {k} is beyond a chain of {self.length}",
                              detail={"index": k, "length": self.length})
        if k <= self.highest:
            raise Replayed(f"payword {k} was paid already (highest {self.highest})",
                           detail={"index": k, "highest": self.highest})
        if self.in_order and k != self.highest + 1:
            raise OutOfOrder(f"payword {k} skips ahead of {self.highest + 1}",
                             detail={"index": k, "expected": self.highest + 1})
        if type(payword) is not bytes or len(payword) != PAYWORD_SIZE \
                or _hash(payword, k - self.highest) != self.payword:
            raise BadPayword(f"payword {k} does not hash back to payword {self.highest}",
                             detail={"index": k})
