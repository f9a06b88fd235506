"""Signatures already checked, so that each is verified once, not once per statement.

Every statement an agent checks names a certificate, and every check also judges the
CRL: before this cache a purchase ran 18 of its 32 Ed25519 operations on the same few
certificates and the one CRL. A certificate's and a CRL's signature under a root are
facts about their bytes alone, so the cache is keyed by the SHA-256 of their DER (and
of the root's): a changed byte is another key. Only the signature is remembered;
validity at ``now``, revocation (answered from the CRL given) and staleness are
judged on every call. A failed check is never remembered.

Bounded (least recently used goes first) and safe to share between the event loop
and worker threads: each operation on the ordered dict is atomic under the GIL, and
a key evicted by another thread between two of them only costs a verification.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Final

__all__ = ["SignatureCache"]

#: Certificates and CRLs remembered: a market's agents, with room for renewals.
CACHE_SIZE: Final = 4096


class SignatureCache:
    """Keys (digests) whose signature verified, least recently used evicted first."""

    def __init__(self, size: int = CACHE_SIZE) -> None:
        if size < 1:
            raise ValueError("the cache holds at least one key")
        self.size = size
        self.hits = 0
        self.misses = 0
        self._keys: OrderedDict[bytes, None] = OrderedDict()

    def check(self, key: bytes, verify: Callable[[], None]) -> None:
        """Run ``verify`` unless ``key`` verified before; remember it if it passes.

        ``verify`` raises when the signature is bad: that propagates and nothing is kept.
        """
        try:
            self._keys.move_to_end(key)
        except KeyError:
            self.misses += 1
            verify()
            self._keys[key] = None
            while len(self._keys) > self.size:
                try:
                    self._keys.popitem(last=False)
                except KeyError:  # emptied meanwhile by another thread
                    break
        else:
            self.hits += 1

    def clear(self) -> None:
        self._keys.clear()
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._keys)
