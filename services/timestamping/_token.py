"""Timestamp tokens and tree heads: their fields, wire forms and hashed bytes.

A *tree head* is the notary's signed statement ``timestamp.head`` over one batch::

    {"notary": id, "sequence": n, "time": ms, "first_serial": s, "size": k,
     "root": MTH of the batch's k leaves, "previous": head id of head n-1}

``previous`` chains the heads (32 zero bytes for sequence 0), so a notary that
rewrites, forks or back-dates its history contradicts a head it signed before. A
head's *id* is ``SHA-256("semper-timestamp-head-v1\\0" || canonical(body))``: the
body, not the statement, so the same head signed twice (another nonce) is one head.

A *leaf* is ``"semper-timestamp-leaf-v1\\0" || canonical({"digest", "notary",
"serial", "time"})``; its hash in the tree is RFC 6962's ``SHA-256(0x00 || leaf)``.
A *token* is the leaf's fields, its ``index`` in the batch and audit ``proof``, the
signed ``head`` and the notary's ``certificate`` (DER): all that an offline verifier
needs beside the market root (and a CRL). Serials are ``first_serial + index``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Final

import msgpack

from .._errors import ServiceError
from .._schema import AGENT, DIGEST, MAX_INT64, STATEMENT, TIME, Body, Kind, Schema, binary, integer
from ..merkle import HASH_SIZE, MAX_PATH, leaf_hash
from ..statements import Statement, canonical_decode, canonical_encode
from ._errors import BadTimestampRequest, BadToken

__all__ = [
    "HEAD_DOMAIN",
    "HEAD_TYPE",
    "LEAF_DOMAIN",
    "MAX_TREE",
    "NO_PREVIOUS",
    "TimestampAnswer",
    "TimestampRequest",
    "Token",
    "TreeHead",
    "head_id",
    "leaf_hashes",
    "leaf_input",
]

HEAD_TYPE: Final = "timestamp.head"
HEAD_DOMAIN: Final = b"semper-timestamp-head-v1\x00"
LEAF_DOMAIN: Final = b"semper-timestamp-leaf-v1\x00"
#: ``previous`` of the first head.
NO_PREVIOUS: Final = bytes(HASH_SIZE)
#: Most leaves under one head.
MAX_TREE: Final = 1 << 20
#: Largest certificate a token carries (DER).
MAX_CERTIFICATE: Final = 16 * 1024


def _proof_ok(value: Any) -> bool:
    return type(value) is tuple and len(value) <= MAX_PATH and all(
        type(h) is bytes and len(h) == HASH_SIZE for h in value)


def _proof_decode(value: Any) -> tuple[bytes, ...]:
    if type(value) is not list:
        raise ValueError("a proof is a list")
    return tuple(value)


_COUNT: Final = integer(0, MAX_INT64, "an int from 0 to 2^63-1")
#: The token's schema: a key means the same in heads, leaves and tokens.
TOKEN_SCHEMA: Final = Schema(BadToken, {
    "digest": DIGEST,
    "notary": AGENT,
    "sequence": _COUNT,
    "time": TIME,
    "first_serial": _COUNT,
    "serial": _COUNT,
    "size": integer(1, MAX_TREE),
    "index": integer(0, MAX_TREE - 1),
    "root": DIGEST,
    "previous": DIGEST,
    "proof": Kind(f"a list of at most {MAX_PATH} hashes of {HASH_SIZE} bytes", _proof_ok,
                  decode=_proof_decode, encode=list),
    "head": STATEMENT,
    "certificate": binary(1, MAX_CERTIFICATE, "a DER certificate"),
})


@dataclass(frozen=True, slots=True, kw_only=True)
class TreeHead(Body):
    """The body of a ``timestamp.head`` statement (see the module docstring)."""

    TYPE: ClassVar[str] = HEAD_TYPE
    SCHEMA: ClassVar[Schema] = TOKEN_SCHEMA

    notary: str
    sequence: int
    time: int
    first_serial: int
    size: int
    root: bytes
    previous: bytes

    def _check(self) -> None:
        if self.first_serial + self.size - 1 > MAX_INT64:
            self.SCHEMA.fail(self.TYPE, "size", "runs the serials past 2^63-1")
        if (self.sequence == 0) != (self.previous == NO_PREVIOUS):
            self.SCHEMA.fail(self.TYPE, "previous",
                             "is 32 zero bytes for sequence 0, and only then")

    @property
    def id(self) -> bytes:
        return head_id(self)


def head_id(head: TreeHead) -> bytes:
    """SHA-256 of the head domain and the canonical body: what ``previous`` names."""
    return hashlib.sha256(HEAD_DOMAIN + canonical_encode(head.to_wire())).digest()


def leaf_input(*, digest: bytes, time: int, serial: int, notary: str) -> bytes:
    """The bytes a token's leaf stands for in the tree (before RFC 6962's 0x00):
    ``LEAF_DOMAIN || canonical({"digest", "notary", "serial", "time"})``.

    Written out rather than through ``canonical_encode`` (5x slower; a notary makes
    one per token): a map of four keys in sorted order, a 32-byte bin, and msgpack's
    shortest forms of a str and two non-negative ints, which is what canonical
    encoding is (tests/test_timestamping.py holds the two to the same bytes).
    ValueError for a digest that is not 32 bytes or a negative int."""
    if type(digest) is not bytes or len(digest) != HASH_SIZE or serial < 0 or time < 0:
        raise ValueError("a leaf is a 32-byte digest and non-negative serial and time")
    pack = _PACKER.pack
    return b"".join((LEAF_DOMAIN, b"\x84\xa6digest\xc4\x20", digest, b"\xa6notary",
                     pack(notary), b"\xa6serial", pack(serial), b"\xa4time", pack(time)))


def leaf_hashes(*, digests: Sequence[bytes], time: int, first_serial: int, notary: str
                ) -> list[bytes]:
    """``leaf_hash(leaf_input(...))`` of a batch's leaves (serials from ``first_serial``),
    the parts they share encoded once (the notary makes a batch's in one go)."""
    if any(type(d) is not bytes or len(d) != HASH_SIZE for d in digests) \
            or first_serial < 0 or time < 0:
        raise ValueError("a leaf is a 32-byte digest and non-negative serial and time")
    pack = _PACKER.pack
    head = b"\x00" + LEAF_DOMAIN + b"\x84\xa6digest\xc4\x20"
    middle = b"\xa6notary" + pack(notary) + b"\xa6serial"
    tail = b"\xa4time" + pack(time)
    sha256 = hashlib.sha256
    return [sha256(b"".join((head, digest, middle, pack(first_serial + i), tail))).digest()
            for i, digest in enumerate(digests)]


#: msgpack's shortest forms, as canonical encoding has them (pack is one C call that
#: holds the GIL, so threads may share it).
_PACKER: Final = msgpack.Packer(use_bin_type=True, strict_types=True)


@dataclass(frozen=True, slots=True, kw_only=True)
class Token(Body):
    """A timestamp token (see the module docstring). Its file form is
    ``to_bytes()``: the canonical msgpack of ``to_wire()``."""

    TYPE: ClassVar[str] = "timestamp.token"
    SCHEMA: ClassVar[Schema] = TOKEN_SCHEMA

    digest: bytes
    time: int
    serial: int
    notary: str
    index: int
    proof: tuple[bytes, ...]
    head: Statement
    certificate: bytes

    @property
    def leaf_hash(self) -> bytes:
        return leaf_hash(leaf_input(digest=self.digest, time=self.time, serial=self.serial,
                                    notary=self.notary))

    def to_bytes(self) -> bytes:
        return canonical_encode(self.to_wire())

    @classmethod
    def from_bytes(cls, data: bytes) -> Token:
        """Read a token file.

        Raises:
            BadToken: not the canonical msgpack of a token map.
        """
        try:
            value = canonical_decode(data)
        except ServiceError as exc:
            raise BadToken(f"not a token: {exc.message}", detail={"cause": exc.code}) from None
        return cls.from_wire(value)


def _token_from_bytes(value: Any) -> Token:
    if type(value) is not bytes:
        raise ValueError("a token travels as its canonical bytes (bin)")
    return Token.from_bytes(value)


#: A token travels in ``timestamp.request``'s answer as its file form, the canonical
#: bytes of its map: the notary writes them out once per token (no map for the
#: channel to walk and pack), and the requester keeps them as they came.
_REQUEST_SCHEMA: Final = Schema(BadTimestampRequest, {"digest": DIGEST, "token": Kind(
    "a token's canonical bytes", lambda v: type(v) is Token, decode=_token_from_bytes,
    encode=Token.to_bytes)})


@dataclass(frozen=True, slots=True, kw_only=True)
class TimestampRequest(Body):
    """``{"digest": 32 bytes}``: the SHA-256 of what is to be timestamped."""

    TYPE: ClassVar[str] = "timestamp.request"
    SCHEMA: ClassVar[Schema] = _REQUEST_SCHEMA

    digest: bytes

    @classmethod
    def from_wire(cls, value: object) -> TimestampRequest:
        """The one shape a request has, read without the generic walk (a notary reads
        one per token; the walk and the check after it cost ~10 us); anything else
        goes through ``Body.from_wire`` and its refusals."""
        if type(value) is dict and len(value) == 1:
            digest = value.get("digest")
            if type(digest) is bytes and len(digest) == HASH_SIZE:
                request = object.__new__(cls)
                object.__setattr__(request, "digest", digest)
                return request
        return super(TimestampRequest, cls).from_wire(value)  # (slots: no bare super)


@dataclass(frozen=True, slots=True, kw_only=True)
class TimestampAnswer(Body):
    """``{"token": bin}``: the token's canonical bytes (``Token.to_bytes()``), durable
    at the notary before they are sent."""

    TYPE: ClassVar[str] = "timestamp.request"
    SCHEMA: ClassVar[Schema] = _REQUEST_SCHEMA

    token: Token
