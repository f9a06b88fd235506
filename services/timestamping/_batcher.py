"""The notary's batching of timestamp requests, sans-IO.

Theory of operation. Requests are ``add``-ed to the open batch with the time they
arrived. The driver seals the batch when it is ``due``: ``max_size`` requests, or
``max_delay_ms`` after its first request (0: as soon as the driver is free to seal
it; requests that arrive while the last batch is signed and committed wait for the
next one, as writers do in a group commit). ``seal`` gives every leaf the batch's
time and the next serials, builds the Merkle tree and the unsigned head that
continues the chain, and moves the chain on. The driver signs the head, persists
the batch, then tells the batcher ``committed`` (or ``failed``: the chain goes back
to the last committed head, and every batch sealed after the failed one must fail
too, since its ``previous`` names a head that was never stored; the driver's
store checks that).

Time never runs backwards in the chain: a batch's time is the later of the clock and
the previous head's time, so a clock stepped back cannot make the notary look as if
it back-dated.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Final

import msgpack

from ..merkle import MerkleTree
from ..statements import Statement
from ._token import MAX_TREE, NO_PREVIOUS, Token, TreeHead, head_id, leaf_hashes

__all__ = ["Batch", "Batcher", "ChainState"]

_NONE: Final = -1


@dataclass(frozen=True, slots=True, kw_only=True)
class ChainState:
    """Where the chain stands: the next head's sequence and first serial, the id and
    time of the last head (``NO_PREVIOUS`` and 0 before the first)."""

    sequence: int = 0
    serial: int = 0
    previous: bytes = NO_PREVIOUS
    time: int = 0

    @classmethod
    def after(cls, head: TreeHead) -> ChainState:
        return cls(sequence=head.sequence + 1, serial=head.first_serial + head.size,
                   previous=head_id(head), time=head.time)


@dataclass(frozen=True, slots=True, kw_only=True)
class Batch:
    """A sealed batch: the unsigned head, the leaves' digests in order, the tree, and
    the head's id (``head_id(head)``, made once)."""

    head: TreeHead
    digests: tuple[bytes, ...]
    tree: MerkleTree
    id: bytes

    def state_after(self) -> ChainState:
        """``ChainState.after(self.head)``, with the id already made."""
        head = self.head
        return ChainState(sequence=head.sequence + 1, serial=head.first_serial + head.size,
                          previous=self.id, time=head.time)

    def token(self, index: int, head: Statement, certificate: bytes) -> Token:
        """The token of leaf ``index``, under ``head`` (this batch's head, signed)."""
        return Token(digest=self.digests[index], time=self.head.time,
                     serial=self.head.first_serial + index, notary=self.head.notary,
                     index=index, proof=tuple(self.tree.inclusion_proof(index)), head=head,
                     certificate=certificate)

    def token_wire(self, index: int, head: dict[str, Any], certificate: bytes
                   ) -> dict[str, Any]:
        """``token(index, ...).to_wire()`` without building the token: ``head`` is the
        signed head's ``to_wire()``, made once for the batch."""
        head_fields = self.head
        return {"digest": self.digests[index], "time": head_fields.time,
                "serial": head_fields.first_serial + index, "notary": head_fields.notary,
                "index": index, "proof": self.tree.inclusion_proof(index), "head": head,
                "certificate": certificate}

    def token_bytes(self, index: int, head: bytes, certificate: bytes) -> bytes:
        """``token(index, ...).to_bytes()`` (the token's canonical msgpack, its file
        form) written out: ``head`` is the signed head's ``to_bytes()``, made once
        for the batch."""
        parts = self._token_parts(head, certificate)
        return _token_bytes(parts, index, self.digests[index], self.tree.inclusion_proof(index))

    def tokens_bytes(self, head: bytes, certificate: bytes) -> list[bytes]:
        """Every token's ``token_bytes``, in leaf order: what the batch shares (the
        head, the certificate, the notary, the time) encoded once, every audit path
        in one pass over the tree."""
        parts = self._token_parts(head, certificate)
        return [_token_bytes(parts, index, digest, proof) for index, (digest, proof)
                in enumerate(zip(self.digests, self.tree.inclusion_proofs(), strict=True))]

    def _token_parts(self, head: bytes, certificate: bytes) -> tuple[bytes, bytes, bytes,
                                                                     bytes, int]:
        """The bytes around a token's own fields. The token's map has its keys in
        canonical (sorted) order, each value in msgpack's shortest form, which is what
        canonical encoding is (tests hold the result to ``Token.to_bytes``): so the
        shared values' bytes can be spliced in as they are."""
        fields = self.head
        pack = _PACKER.pack
        return (b"\x88\xabcertificate" + pack(certificate) + b"\xa6digest\xc4\x20",
                b"\xa4head" + head + b"\xa5index",
                b"\xa6notary" + pack(fields.notary) + b"\xa5proof",
                b"\xa4time" + pack(fields.time), fields.first_serial)


def _token_bytes(parts: tuple[bytes, bytes, bytes, bytes, int], index: int, digest: bytes,
                 proof: list[bytes]) -> bytes:
    before_digest, before_index, before_proof, time, first_serial = parts
    pack = _PACKER.pack
    # each hash of the path is a bin 32: its two header bytes, then the hash
    return b"".join((before_digest, digest, before_index, pack(index), before_proof,
                     _PACKER.pack_array_header(len(proof)), _BIN32 if proof else b"",
                     _BIN32.join(proof), b"\xa6serial", pack(first_serial + index), time))


_BIN32: Final = b"\xc4\x20"


#: msgpack's shortest forms (pack is one C call holding the GIL: threads may share it).
_PACKER: Final = msgpack.Packer(use_bin_type=True, strict_types=True)


def build_batch(head_fields: ChainState, *, notary: str, time: int,
                digests: tuple[bytes, ...]) -> Batch:
    """The batch of ``digests`` continuing ``head_fields`` (also used to rebuild a
    stored batch's tokens)."""
    serial = head_fields.serial
    tree = MerkleTree.from_leaf_hashes(leaf_hashes(digests=digests, time=time,
                                                   first_serial=serial, notary=notary))
    head = TreeHead(notary=notary, sequence=head_fields.sequence, time=time,
                    first_serial=serial, size=len(digests), root=tree.root,
                    previous=head_fields.previous)
    return Batch(head=head, digests=digests, tree=tree, id=head_id(head))


class Batcher:
    """Collects requests into batches; see the module docstring."""

    def __init__(self, *, notary: str, max_delay_ms: int = 0, max_size: int = 256,
                 state: ChainState | None = None) -> None:
        if not 1 <= max_size <= MAX_TREE or max_delay_ms < 0:
            raise ValueError(f"max_size is 1 to {MAX_TREE}, max_delay_ms at least 0")
        self.notary = notary
        self.max_delay_ms = max_delay_ms
        self.max_size = max_size
        self.state = state or ChainState()
        self.committed_state = self.state
        self._digests: list[bytes] = []
        self._first = _NONE

    @property
    def pending(self) -> int:
        return len(self._digests)

    def add(self, digest: bytes, now_ms: int) -> int:
        """Put ``digest`` in the open batch; its position there."""
        if not self._digests:
            self._first = now_ms
        self._digests.append(digest)
        return len(self._digests) - 1

    def deadline(self) -> int | None:
        """When the open batch is due by time (None: no batch is open)."""
        return None if not self._digests else self._first + self.max_delay_ms

    def due(self, now_ms: int) -> bool:
        deadline = self.deadline()
        return deadline is not None and (len(self._digests) >= self.max_size
                                         or now_ms >= deadline)

    def seal(self, now_ms: int, limit: int | None = None) -> Batch:
        """Seal the open batch (at most ``max_size`` of it, or ``limit`` if smaller,
        in arrival order; the rest stays open) and move the chain on. ValueError if
        nothing is pending."""
        if not self._digests:
            raise ValueError("no batch is open")
        size = self.max_size if limit is None else max(1, min(limit, self.max_size))
        taken = tuple(self._digests[:size])
        del self._digests[:size]
        if self._digests:
            self._first = now_ms
        batch = build_batch(self.state, notary=self.notary, time=max(now_ms, self.state.time),
                            digests=taken)
        self.state = batch.state_after()
        return batch

    def committed(self, batch: Batch) -> None:
        """``batch`` is durable: the chain may never go back behind it."""
        if batch.head.sequence >= self.committed_state.sequence:
            self.committed_state = batch.state_after()

    def failed(self, batch: Batch) -> None:
        """``batch`` was not stored: continue the chain from the last committed head."""
        if batch.head.sequence >= self.committed_state.sequence:
            self.state = replace(self.committed_state,
                                 time=max(self.committed_state.time, self.state.time))
