"""Content cut into chunks under an RFC 6962 Merkle tree: the stream's description
(``StreamInfo``), the seller's tree (``ChunkedContent``) and the buyer's check of one
chunk (``verify_chunk``).

Theory of operation. Content of ``length`` bytes is cut into ``chunks`` =
ceil(length / chunk_size) chunks, all ``chunk_size`` long but the last. Leaf ``i`` of
the tree is RFC 6962's leaf hash of chunk ``i``'s raw bytes, SHA-256(0x00 || chunk),
and the root is the Merkle Tree Hash over the leaves (``services.merkle``). The root,
chunk size, length and price per chunk travel in the signed offer (``stream``), so a
buyer holding the offer checks every chunk as it arrives, alone, before it writes a
byte of it: one leaf hash over the chunk and one node hash per proof element.

Speed and memory. The seller never holds the content: ``from_file`` reads it once,
a chunk at a time into one buffer, hashing each chunk's leaf and the whole content's
SHA-256 (the offer's ``content_digest``) in the same pass, and keeps only the leaf
hashes (32 bytes a chunk: a 32 MiB item at 256 KiB is 128 leaves). Proofs come from
the tree over those hashes without hashing; ``read_chunk`` reads one chunk when it is
sent. ``verify_chunk`` feeds the chunk to SHA-256 after the 0x00 prefix rather than
concatenating them (no copy of the data).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import IO, Any, ClassVar, Final

from .._schema import DIGEST, Body, Schema, amount, integer
from ..merkle import HASH_SIZE, InvalidProof, MerkleTree, verify_inclusion
from ..money import Amount
from ._errors import BadChunk, BadStream, EmptyContent

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "MAX_CHUNKS",
    "MAX_CHUNK_SIZE",
    "MAX_LENGTH",
    "MAX_PRICE_PER_CHUNK",
    "STREAM_SCHEMA",
    "ChunkedContent",
    "StreamInfo",
    "chunk_count",
    "chunk_leaf",
    "verify_chunk",
]

#: The chunk size semper cuts content at unless told: the largest, as the per-chunk
#: costs (a payword commit each side, a round trip) decide the stream's speed
#: (bench/stream.py: stream_ratio ~0.7 at 1 MiB, ~0.4 at 256 KiB); the buyer's delivery
#: channel accepts a chunk frame above 1 MiB (its ``max_frame``, protocol.md 13.1).
DEFAULT_CHUNK_SIZE: Final = 1 << 20
#: The largest chunk a stream may have. A chunk frame must also fit the receiver's
#: ``max_frame`` (1 MiB by default, section 5.4): a chunk of 1 MiB does not.
MAX_CHUNK_SIZE: Final = 1 << 20
#: The most chunks a stream may have (a proof is then at most 20 hashes).
MAX_CHUNKS: Final = 1 << 20
#: The longest content: MAX_CHUNKS chunks of MAX_CHUNK_SIZE (1 TiB).
MAX_LENGTH: Final = MAX_CHUNKS * MAX_CHUNK_SIZE
#: A chunk's price, as commerce bounds a price (10^15 minor units).
MAX_PRICE_PER_CHUNK: Final = 10**15

#: The name ``BadStream`` gives the description in its detail.
_STREAM: Final = "delivery.stream"

STREAM_SCHEMA: Final = Schema(BadStream, {
    "chunks": integer(1, MAX_CHUNKS),
    "chunk_size": integer(1, MAX_CHUNK_SIZE),
    "length": integer(1, MAX_LENGTH),
    "root": DIGEST,
    "price_per_chunk": amount(MAX_PRICE_PER_CHUNK),
})


def chunk_count(length: int, chunk_size: int) -> int:
    """ceil(length / chunk_size): how many chunks ``length`` bytes make."""
    return -(-length // chunk_size)


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamInfo(Body):
    """What the offer (``stream``) and the ticket say of the content: ``chunks`` of
    ``chunk_size`` bytes (the last may be shorter), ``length`` bytes in all, the Merkle
    ``root`` over the chunks, and the ``price_per_chunk``.

    Raises (construction, ``from_wire``):
        BadStream: a field out of range, or ``chunks`` is not ceil(length / chunk_size).
    """

    TYPE: ClassVar[str] = _STREAM
    SCHEMA: ClassVar[Schema] = STREAM_SCHEMA

    chunks: int
    chunk_size: int
    length: int
    root: bytes
    price_per_chunk: Amount

    def _check(self) -> None:
        if self.chunks != chunk_count(self.length, self.chunk_size):
            self.SCHEMA.fail(self.TYPE, "chunks", f"must be ceil(length / chunk_size) = "
                             f"{chunk_count(self.length, self.chunk_size)}")

    def chunk_length(self, index: int) -> int:
        """The length of chunk ``index`` (ValueError outside 0..chunks-1)."""
        return _chunk_length(index, self.chunks, self.chunk_size, self.length)

    @property
    def price(self) -> Amount:
        """chunks x price_per_chunk: what the whole content costs."""
        return Amount(self.price_per_chunk.currency,
                      self.price_per_chunk.minor_units * self.chunks)


def _chunk_length(index: int, chunks: int, chunk_size: int, length: int) -> int:
    if type(index) is not int or not 0 <= index < chunks:
        raise ValueError(f"chunk {index!r} is not in a stream of {chunks}")
    return chunk_size if index < chunks - 1 else length - chunk_size * (chunks - 1)


def chunk_leaf(data: bytes | bytearray | memoryview) -> bytes:
    """RFC 6962's leaf hash of a chunk, SHA-256(0x00 || data), without copying data."""
    h = hashlib.sha256(b"\x00")
    h.update(data)
    return h.digest()


def verify_chunk(stream: StreamInfo | tuple[bytes, int], index: int,
                 data: bytes | bytearray | memoryview, proof: Sequence[bytes]) -> None:
    """Check that ``data`` is chunk ``index`` of the stream, by its inclusion ``proof``.

    Costs one SHA-256 pass over ``data`` and one node hash per proof element.

    Args:
        stream: the stream's ``StreamInfo`` (the chunk's length is checked too), or
            ``(root, chunks)`` of a tree whose chunks may be of any length (a live
            stream's head).

    Raises:
        BadChunk: it is not (altered data, a wrong length, index or proof alike).
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise _bad(index)
    if isinstance(stream, StreamInfo):
        root, size = stream.root, stream.chunks
        try:
            wanted = stream.chunk_length(index)
        except ValueError:
            raise _bad(index) from None
        if (len(data) if type(data) is not memoryview else data.nbytes) != wanted:
            raise _bad(index)
    else:
        root, size = stream
    try:
        verify_inclusion(chunk_leaf(data), index, size, proof, root)
    except InvalidProof:
        raise _bad(index) from None


def _bad(index: object) -> BadChunk:
    shown = index if type(index) is int else repr(index)[:40]
    return BadChunk(f"chunk {shown} does not verify against the stream's root",
                    detail={"index": shown})


class ChunkedContent:
    """A seller's content as a chunk tree: the leaf hashes, never the bytes.

    Build with ``from_file`` (one pass over the file), ``from_bytes`` (content in
    memory: tests, generated content) or ``from_leaf_hashes`` (a tree stored before).
    """

    __slots__ = ("_tree", "chunk_size", "digest", "length")

    def __init__(self, tree: MerkleTree, *, chunk_size: int, length: int, digest: bytes
                 ) -> None:
        """Use the class methods; this trusts its arguments agree."""
        self._tree = tree
        self.chunk_size = chunk_size
        self.length = length
        #: SHA-256 of the whole content: the offer's ``content_digest``.
        self.digest = digest

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], chunk_size: int = DEFAULT_CHUNK_SIZE
                  ) -> ChunkedContent:
        """Read the file once, a chunk at a time, keeping only the leaf hashes.

        Raises:
            BadStream: a chunk size out of range, or more than MAX_CHUNKS chunks.
            EmptyContent: the file is empty.
            OSError: the file cannot be read.
        """
        _check_chunk_size(chunk_size)
        leaves: list[bytes] = []
        whole = hashlib.sha256()
        buffer = bytearray(chunk_size)
        view = memoryview(buffer)
        length = 0
        with open(path, "rb", buffering=0) as f:
            while True:
                filled = 0
                while filled < chunk_size:  # a short read is not the end until it reads 0
                    got = f.readinto(view[filled:])
                    if not got:
                        break
                    filled += got
                if not filled:
                    break
                if len(leaves) == MAX_CHUNKS:
                    _too_long(chunk_size)
                piece = view[:filled]
                leaves.append(chunk_leaf(piece))
                whole.update(piece)
                length += filled
                if filled < chunk_size:
                    break
        return cls._of(leaves, chunk_size, length, whole.digest())

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview,
                   chunk_size: int = DEFAULT_CHUNK_SIZE) -> ChunkedContent:
        """The tree of content held in memory (sliced, not copied).

        Raises:
            BadStream, EmptyContent: as ``from_file``.
        """
        _check_chunk_size(chunk_size)
        view = memoryview(data).cast("B")
        if chunk_count(view.nbytes, chunk_size) > MAX_CHUNKS:
            _too_long(chunk_size)
        leaves = [chunk_leaf(view[i:i + chunk_size]) for i in range(0, view.nbytes, chunk_size)]
        return cls._of(leaves, chunk_size, view.nbytes, hashlib.sha256(view).digest())

    @classmethod
    def from_leaf_hashes(cls, hashes: Sequence[bytes], *, chunk_size: int, length: int,
                         digest: bytes) -> ChunkedContent:
        """A tree stored before (``leaf_hashes``, ``chunk_size``, ``length``,
        ``digest``), without reading the content again.

        Raises:
            BadStream: the numbers do not describe a stream (or not this many leaves).
            ValueError: a leaf hash or the digest is not 32 bytes.
        """
        _check_chunk_size(chunk_size)
        if type(length) is not int or not 1 <= length <= MAX_LENGTH \
                or chunk_count(length, chunk_size) != len(hashes):
            STREAM_SCHEMA.fail(_STREAM, "length", f"does not make {len(hashes)} chunks "
                               f"of {chunk_size} bytes")
        if type(digest) is not bytes or len(digest) != HASH_SIZE:
            raise ValueError(f"the content digest is {HASH_SIZE} bytes")
        return cls(MerkleTree.from_leaf_hashes(hashes), chunk_size=chunk_size, length=length,
                   digest=digest)

    @classmethod
    def _of(cls, leaves: list[bytes], chunk_size: int, length: int, digest: bytes
            ) -> ChunkedContent:
        if not leaves:
            raise EmptyContent("content of no bytes cannot be streamed")
        return cls(MerkleTree.from_leaf_hashes(leaves), chunk_size=chunk_size, length=length,
                   digest=digest)

    @property
    def chunks(self) -> int:
        return self._tree.size

    @property
    def root(self) -> bytes:
        return self._tree.root

    @property
    def leaf_hashes(self) -> list[bytes]:
        """The leaves, in order (to store the tree: ``from_leaf_hashes``)."""
        return [self._tree.leaf(i) for i in range(self._tree.size)]

    def info(self, price_per_chunk: Amount) -> StreamInfo:
        """The stream's description for the offer and the ticket (BadStream for a
        price out of range)."""
        return StreamInfo(chunks=self.chunks, chunk_size=self.chunk_size, length=self.length,
                          root=self.root, price_per_chunk=price_per_chunk)

    def chunk_length(self, index: int) -> int:
        """The length of chunk ``index`` (ValueError outside 0..chunks-1)."""
        return _chunk_length(index, self.chunks, self.chunk_size, self.length)

    def proof(self, index: int) -> list[bytes]:
        """Chunk ``index``'s inclusion proof (its audit path; ValueError out of range)."""
        return self._tree.inclusion_proof(index)

    def read_chunk(self, f: IO[bytes] | Any, index: int) -> bytes:
        """Chunk ``index`` of the content file ``f`` (open, binary; read at its offset
        with ``os.pread`` when it has a descriptor, else seek and read).

        Raises:
            ValueError: ``index`` is out of range.
            OSError: the file is shorter than the tree says (it changed since).
        """
        wanted = self.chunk_length(index)
        offset = index * self.chunk_size
        try:  # pread: no shared file position, so streams in threads may share ``f``
            data = os.pread(f.fileno(), wanted, offset)
        except (AttributeError, OSError, ValueError):  # io.BytesIO and other file likes
            f.seek(offset)
            data = f.read(wanted)
        if len(data) != wanted:
            raise OSError(f"the content file ends inside chunk {index}: it changed since "
                          "its tree was made")
        return bytes(data)


def _check_chunk_size(chunk_size: int) -> None:
    if type(chunk_size) is not int or not 1 <= chunk_size <= MAX_CHUNK_SIZE:
        STREAM_SCHEMA.fail(_STREAM, "chunk_size", f"must be an int from 1 to {MAX_CHUNK_SIZE}")


def _too_long(chunk_size: int) -> None:
    STREAM_SCHEMA.fail(_STREAM, "chunks", f"must be at most {MAX_CHUNKS}: the content is "
                       f"longer than {MAX_CHUNKS} chunks of {chunk_size} bytes")
