"""Live streams: content produced while it is sent, under signed tree heads.

Theory of operation. A live stream's chunks are leaves of one growing RFC 6962 tree
(leaf i = SHA-256(0x00 || chunk i), chunks of 1 to MAX_CHUNK_SIZE bytes each). The
seller (``LiveStream``) adds chunks as they are produced and signs a *stream head*,
``delivery.stream_head`` ``{stream, size, root, time}``, every ``every_chunks``
chunks or ``every_ms`` after the first chunk no head covers, whichever comes first.
A chunk is sent only once a head covers it, with its inclusion proof against the
latest head; a head new to the buyer travels with the consistency proof (RFC 6962
2.1.2) from the head sent before it on the stream. The buyer (``LiveReceiver``)
verifies each head's signature, that it extends the head before it, and each chunk
against the latest head, and keeps every head: a head is the seller's signed word
that the first ``size`` chunks were those, so what was received is provable later,
and two heads that cannot both be true are the evidence of a rewritten stream
(``delivery.fork``).

The growing tree keeps every level of the tree so far (a leaf costs log2(n) node
hashes when added); a complete, aligned subtree's node never changes as the tree
grows, so roots, inclusion proofs and consistency proofs for any earlier size are
computed from those nodes, O(log^2 n) hashes at most. Pure: chunks, signed heads and
the time come in; heads to sign, proofs and decisions go out. The caller signs.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any, ClassVar, Final

from cryptography import x509

from .._errors import ServiceError
from .._schema import DIGEST, TIME, Body, Schema, binary, integer
from ..merkle import (
    EMPTY_ROOT,
    InvalidProof,
    consistency_path,
    node_hash,
    split_point,
    verify_consistency,
)
from ..statements import Statement, verify_statement
from ._content import MAX_CHUNK_SIZE, MAX_CHUNKS, chunk_leaf, verify_chunk
from ._errors import BadHead, Forked, NotYet, OutOfOrder

__all__ = [
    "HEAD_TYPE",
    "STREAM_ID_SIZE",
    "HeadFork",
    "LiveFrame",
    "LiveReceiver",
    "LiveStream",
    "StreamHead",
]

HEAD_TYPE: Final = "delivery.stream_head"
#: Bytes of a live stream's id.
STREAM_ID_SIZE: Final = 16
_EPOCH: Final = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def _wrong_type(expected: str, statement: Statement) -> BadHead:
    return BadHead(f"expected a {expected!r} statement, got {statement.type!r}",
                   detail={"field": "type", "type": statement.type})


HEAD_SCHEMA: Final = Schema(BadHead, {
    "stream": binary(STREAM_ID_SIZE, STREAM_ID_SIZE, f"{STREAM_ID_SIZE} bytes"),
    "size": integer(1, MAX_CHUNKS),
    "root": DIGEST,
    "time": TIME,
}, wrong_type=_wrong_type)


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamHead(Body):
    """The body of a ``delivery.stream_head`` statement, signed by the seller: the
    first ``size`` chunks of live stream ``stream`` have the Merkle root ``root``, at
    ``time`` (Unix ms)."""

    TYPE: ClassVar[str] = HEAD_TYPE
    SCHEMA: ClassVar[Schema] = HEAD_SCHEMA

    stream: bytes
    size: int
    root: bytes
    time: int


@dataclass(frozen=True, slots=True, kw_only=True)
class LiveFrame:
    """What goes with chunk ``index``: its inclusion ``proof`` against the latest head
    and, when that head is new to the buyer, the signed ``head`` and the
    ``consistency`` proof from the head it holds (else both None)."""

    index: int
    proof: list[bytes]
    head: Statement | None
    consistency: list[bytes] | None


@dataclass(frozen=True, slots=True, kw_only=True)
class HeadFork:
    """Two signed heads of one live stream that cannot both be true. ``kind``:
    ``same_size`` (one size, two roots), ``inconsistent`` (the later does not extend
    the earlier by the proof given), ``backdated`` (a later head with an earlier
    time)."""

    kind: str
    first: Statement
    second: Statement

    def to_wire(self) -> dict[str, Any]:
        return {"kind": self.kind, "heads": [self.first.to_wire(), self.second.to_wire()]}


class _GrowingTree:
    """Every node of an RFC 6962 tree that grows by appending leaves."""

    __slots__ = ("_levels",)

    def __init__(self) -> None:
        self._levels: list[list[bytes]] = [[]]

    @property
    def size(self) -> int:
        return len(self._levels[0])

    def append(self, leaf: bytes) -> None:
        """Add a leaf hash; recompute the right edge (log2(n) node hashes)."""
        levels = self._levels
        levels[0].append(leaf)
        index, depth = len(levels[0]) - 1, 0
        while not (len(levels[depth]) == 1 and depth == len(levels) - 1):
            level, parent = levels[depth], index >> 1
            left = 2 * parent
            value = node_hash(level[left], level[left + 1]) if left + 1 < len(level) \
                else level[left]
            if depth + 1 == len(levels):
                levels.append([])
            above = levels[depth + 1]
            if parent < len(above):
                above[parent] = value
            else:
                above.append(value)
            index, depth = parent, depth + 1

    def subtree(self, lo: int, hi: int) -> bytes:
        """MTH(D[lo:hi]) for 0 <= lo < hi <= size: a complete aligned node is read,
        anything else split as RFC 6962 splits it."""
        width = hi - lo
        if width == 1:
            return self._levels[0][lo]
        if width & (width - 1) == 0 and lo % width == 0:
            return self._levels[width.bit_length() - 1][lo // width]
        k = split_point(width)
        return node_hash(self.subtree(lo, lo + k), self.subtree(lo + k, hi))

    def root(self, size: int) -> bytes:
        return self.subtree(0, size) if size else EMPTY_ROOT

    def inclusion(self, index: int, size: int) -> list[bytes]:
        """PATH(index, D[size]) (RFC 6962 2.1.1)."""
        out: list[bytes] = []
        lo, hi = 0, size
        while hi - lo > 1:  # top down; the path lists the siblings bottom up
            k = split_point(hi - lo)
            if index < lo + k:
                out.append(self.subtree(lo + k, hi))
                hi = lo + k
            else:
                out.append(self.subtree(lo, lo + k))
                lo += k
        out.reverse()
        return out

    def consistency(self, old: int, size: int) -> list[bytes]:
        """PROOF(old, D[size]) (RFC 6962 2.1.2)."""
        return consistency_path(old, size, self.subtree)


class LiveStream:
    """The seller's side of one live stream.

    Drive it: ``add`` each chunk as it is produced; after ``add`` and whenever the
    clock reaches ``next_timer()``, ask ``due(now_ms)``: a ``StreamHead`` to sign, or
    None; sign it as a ``delivery.stream_head`` statement and hand it to ``signed``.
    ``frame`` gives a chunk's proofs for a buyer, ``head_for`` a ``delivery.head``
    answer. The chunks' bytes are the driver's to keep (the machine keeps hashes).
    """

    def __init__(self, *, stream_id: bytes, every_chunks: int, every_ms: int) -> None:
        """ValueError for an id that is not 16 bytes, or periods below 1."""
        if type(stream_id) is not bytes or len(stream_id) != STREAM_ID_SIZE:
            raise ValueError(f"a stream id is {STREAM_ID_SIZE} bytes")
        if every_chunks < 1 or every_ms < 1:
            raise ValueError("heads come every 1 chunk or 1 ms at the most often")
        self.stream_id = stream_id
        self.every_chunks = every_chunks
        self.every_ms = every_ms
        self._tree = _GrowingTree()
        self._heads: list[Statement] = []
        self._bodies: list[StreamHead] = []
        self._uncovered_since: int | None = None  # when the first uncovered chunk came

    @property
    def size(self) -> int:
        """Chunks added so far."""
        return self._tree.size

    @property
    def heads(self) -> list[Statement]:
        """Every head signed so far, oldest first."""
        return list(self._heads)

    @property
    def covered(self) -> int:
        """Chunks the latest head covers (0 before the first head)."""
        return self._bodies[-1].size if self._bodies else 0

    def add(self, data: bytes | bytearray | memoryview, *, now_ms: int) -> int:
        """Add the next chunk; returns its index.

        Raises:
            ValueError: a chunk of 0 or more than MAX_CHUNK_SIZE bytes, or the stream
                holds MAX_CHUNKS chunks already.
        """
        length = data.nbytes if type(data) is memoryview else len(data)
        if not 1 <= length <= MAX_CHUNK_SIZE:
            raise ValueError(f"a chunk is 1 to {MAX_CHUNK_SIZE} bytes")
        if self._tree.size >= MAX_CHUNKS:
            raise ValueError(f"a stream has at most {MAX_CHUNKS} chunks")
        self._tree.append(chunk_leaf(data))
        if self._uncovered_since is None:
            self._uncovered_since = now_ms
        return self._tree.size - 1

    def next_timer(self) -> int | None:
        """When (Unix ms) ``due`` will give a head for time's sake, or None."""
        if self._uncovered_since is None:
            return None
        return self._uncovered_since + self.every_ms

    def due(self, now_ms: int, *, final: bool = False) -> StreamHead | None:
        """The head to sign now: when ``every_chunks`` chunks are uncovered, when the
        oldest uncovered chunk is ``every_ms`` old, or (``final``) when any chunk is
        uncovered at the stream's end. Its time is never before the previous head's."""
        uncovered = self._tree.size - self.covered
        if not uncovered:
            return None
        timer = self.next_timer()
        if not (final or uncovered >= self.every_chunks
                or (timer is not None and now_ms >= timer)):
            return None
        time = max(now_ms, self._bodies[-1].time) if self._bodies else now_ms
        size = self._tree.size
        return StreamHead(stream=self.stream_id, size=size, root=self._tree.root(size),
                          time=time)

    def signed(self, statement: Statement) -> StreamHead:
        """Record a head the driver signed (one ``due`` gave).

        Raises:
            BadHead: not a stream head; ValueError: a head that is not this stream's
                next (another stream, a size not past the latest or beyond the chunks,
                another root, an earlier time).
        """
        body = StreamHead.from_statement(statement)
        latest = self._bodies[-1] if self._bodies else None
        if body.stream != self.stream_id or body.size > self._tree.size \
                or (latest is not None and (body.size <= latest.size or body.time < latest.time)) \
                or body.root != self._tree.root(body.size):
            raise ValueError("the head is not this stream's next head")
        self._heads.append(statement)
        self._bodies.append(body)
        self._uncovered_since = None if body.size == self._tree.size else self._uncovered_since
        return body

    def _latest_for(self, since: int) -> tuple[int, Statement | None, list[bytes] | None]:
        if not self._bodies:
            raise NotYet("no head is signed yet", detail={"size": 0})
        size = self._bodies[-1].size
        if not 0 <= since <= size:
            raise ValueError(f"no head of {since} chunks precedes the latest ({size})")
        if since == size:
            return size, None, None
        return size, self._heads[-1], self._tree.consistency(since, size)

    def frame(self, index: int, *, since: int) -> LiveFrame:
        """Chunk ``index``'s proofs for a buyer holding the head of ``since`` chunks
        (0: none).

        Raises:
            NotYet: no head covers the chunk yet (ask ``due`` and sign, or wait).
            ValueError: a negative index, or ``since`` is not a size up to the latest.
        """
        if type(index) is not int or index < 0:
            raise ValueError("a chunk index is a non-negative int")
        if index >= self.covered:
            raise NotYet(f"chunk {index} is not under a signed head yet",
                         detail={"index": index, "size": self.covered})
        size, head, consistency = self._latest_for(since)
        return LiveFrame(index=index, proof=self._tree.inclusion(index, size), head=head,
                         consistency=consistency)

    def head_for(self, since: int) -> tuple[Statement, list[bytes]]:
        """``delivery.head``'s answer: the latest signed head and the consistency proof
        from ``since`` chunks (NotYet before the first head)."""
        consistency = self._latest_for(since)[2]
        return self._heads[-1], consistency or []


class LiveReceiver:
    """The buyer's side of one live stream: heads checked, chunks verified, heads kept.

    ``receive_chunk`` takes each ``delivery.chunk`` answer in order (with its head
    and consistency proof when it carries one); ``receive_head`` a ``delivery.head``
    answer. ``heads`` are the signed heads received, oldest first: the evidence.
    """

    def __init__(self, *, stream_id: bytes, seller_id: str, certificate: x509.Certificate,
                 root: x509.Certificate, crl: x509.CertificateRevocationList) -> None:
        self.stream_id = stream_id
        self.seller_id = seller_id
        self._certificate, self._root, self._crl = certificate, root, crl
        self._heads: list[Statement] = []
        self._bodies: list[StreamHead] = []
        #: Chunks verified, from 0: the next index expected.
        self.received = 0

    @property
    def heads(self) -> list[Statement]:
        return list(self._heads)

    @property
    def latest(self) -> StreamHead | None:
        return self._bodies[-1] if self._bodies else None

    def receive_head(self, statement: Statement, consistency: list[bytes] | tuple[bytes, ...],
                     *, now_ms: int) -> StreamHead:
        """Check a head against the heads held, and keep it.

        Raises:
            BadHead: not a valid ``delivery.stream_head`` of this seller and stream
                (``detail`` ``cause`` or ``field``), or an older size than the latest
                that is not a head held.
            Forked: it contradicts a head held (``evidence``: a ``HeadFork``).
        """
        body = self._verify(statement, now_ms)
        latest = self.latest
        if latest is None:
            self._keep(statement, body)
            return body
        for held, held_body in zip(self._heads, self._bodies, strict=True):
            if held_body.size == body.size:
                if held_body.root != body.root:
                    raise _fork("same_size", held, statement)
                return held_body  # a head held (or its size and root signed again)
        if body.size < latest.size:
            raise BadHead(f"a head of {body.size} chunks after one of {latest.size}",
                          detail={"field": "size"})
        if body.time < latest.time:
            raise _fork("backdated", self._heads[-1], statement)
        if body.size > latest.size:
            try:
                verify_consistency(latest.size, body.size, latest.root, body.root, consistency)
            except InvalidProof:
                raise _fork("inconsistent", self._heads[-1], statement) from None
        self._keep(statement, body)
        return body

    def receive_chunk(self, index: int, data: bytes | bytearray | memoryview,
                      proof: list[bytes] | tuple[bytes, ...], *, head: Statement | None = None,
                      consistency: list[bytes] | tuple[bytes, ...] | None = None,
                      now_ms: int) -> None:
        """Verify the next chunk (and the head it came with) before it is used.

        Raises:
            BadHead, Forked: the head it came with (as ``receive_head``).
            OutOfOrder: ``index`` is not ``received``.
            BadChunk: no head held covers it, or it is not chunk ``index`` under the
                latest head.
        """
        if head is not None:
            self.receive_head(head, consistency or [], now_ms=now_ms)
        if index != self.received:
            raise OutOfOrder(f"chunk {index!r} came, {self.received} was next",
                             detail={"index": index if type(index) is int else None,
                                     "expected": self.received})
        latest = self.latest
        verify_chunk((latest.root, latest.size) if latest else (EMPTY_ROOT, 0), index, data,
                     proof)
        self.received += 1

    def _verify(self, statement: Statement, now_ms: int) -> StreamHead:
        if type(statement) is not Statement:
            raise BadHead("a head is a statement", detail={"field": "head"})
        try:
            verify_statement(statement, certificate=self._certificate, root=self._root,
                             crl=self._crl, now=_EPOCH + dt.timedelta(milliseconds=now_ms),
                             expected_type=HEAD_TYPE, expected_signer=self.seller_id)
        except ServiceError as exc:
            raise BadHead(f"the head does not verify: {exc.message}",
                          detail={"cause": exc.code}) from None
        body = StreamHead.from_statement(statement)
        if body.stream != self.stream_id:
            raise BadHead("the head is another stream's", detail={"field": "stream"})
        return body

    def _keep(self, statement: Statement, body: StreamHead) -> None:
        self._heads.append(statement)
        self._bodies.append(body)


def _fork(kind: str, first: Statement, second: Statement) -> Forked:
    return Forked(f"two heads of the stream contradict each other ({kind})",
                  evidence=HeadFork(kind=kind, first=first, second=second),
                  detail={"kind": kind,
                          "heads": [first.to_bytes().hex(), second.to_bytes().hex()]})
