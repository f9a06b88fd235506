"""Idempotency keys: the same request twice pays once.

Theory of operation. A money-moving request carries a key chosen by its sender.
Whoever applies it (the bank for an order, a payer agent for ``semper buy``) keeps,
per key, the digest of the request's content and the outcome it produced, in the
same transaction that applied it. When a request comes in, ``decide_idempotency``
compares it with what is stored for its key:

- nothing stored: ``Fresh``, apply it, then store ``(fresh.digest, outcome)``;
- the same digest: ``Replay(outcome)``, answer with the stored outcome, apply nothing;
- another digest: ``IdempotencyConflict``; a key names one request forever.

The digest covers the request's *content* (e.g. an order statement's body), not
its envelope: a retry re-signed with a new nonce and issue time is the same request.
The scope of a key (per payer, per account) is the caller's: it chooses the store.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Final

from ..statements import canonical_encode
from ._errors import IdempotencyConflict
from ._schema import check_idempotency_key

__all__ = [
    "DIGEST_DOMAIN",
    "Fresh",
    "IdempotencyDecision",
    "IdempotencyRecord",
    "Replay",
    "decide_idempotency",
    "request_digest",
]

DIGEST_DOMAIN: Final = b"semper-payment-request-v1\x00"


def request_digest(request_value: Any) -> bytes:
    """SHA-256 of ``DIGEST_DOMAIN`` + the canonical encoding of ``request_value``.

    Raises:
        ValueError: ``request_value`` is outside the value model (``canonical_encode``).
    """
    return hashlib.sha256(DIGEST_DOMAIN + canonical_encode(request_value)).digest()


@dataclass(frozen=True, slots=True, kw_only=True)
class IdempotencyRecord:
    """What is stored for one key: the first request's digest and its outcome."""

    digest: bytes
    outcome: Any

    def __post_init__(self) -> None:
        if type(self.digest) is not bytes or len(self.digest) != 32:
            raise ValueError("digest must be 32 bytes")


@dataclass(frozen=True, slots=True, kw_only=True)
class Fresh:
    """A key not seen before: apply the request, then store ``IdempotencyRecord(
    digest=self.digest, outcome=...)`` under ``self.key``."""

    key: str
    digest: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class Replay:
    """The same request again: answer ``outcome`` and apply nothing."""

    key: str
    outcome: Any


IdempotencyDecision = Fresh | Replay


def decide_idempotency(
    key: str, stored: IdempotencyRecord | None, request_value: Any
) -> IdempotencyDecision:
    """Decide what to do with a request carrying idempotency ``key``.

    Args:
        stored: what the store holds for ``key``, or None.
        request_value: the request's content, in the value model.

    Returns:
        ``Fresh`` or ``Replay``.

    Raises:
        BadRequest: ``key`` is not 1 to 128 printable ASCII characters.
        IdempotencyConflict: ``stored`` is for a request with other content;
            ``detail`` has the ``key``.
        ValueError: ``request_value`` is outside the value model.
    """
    check_idempotency_key(key)
    digest = request_digest(request_value)
    if stored is None:
        return Fresh(key=key, digest=digest)
    if stored.digest == digest:
        return Replay(key=key, outcome=stored.outcome)
    raise IdempotencyConflict(
        f"idempotency key {key!r} was used for a request with other content",
        detail={"key": key},
    )
