"""Typed bodies and wire ops, for code outside semper's own packages (a role, a
payment instrument): the one schema mechanism ``services/`` uses (``_schema``) and
the op declarations (``_ops``), under names that stay."""

from ._ops import Op, declared_ops
from ._schema import (
    AGENT,
    DIGEST,
    DIGEST_SIZE,
    IDEMPOTENCY_KEY,
    MAX_IDEMPOTENCY_KEY,
    MAX_INT64,
    MAX_REASON,
    MAX_TIME_MS,
    STATEMENT,
    TIME,
    Body,
    Kind,
    Schema,
    amount,
    binary,
    form,
    integer,
    text,
    wire,
)

__all__ = [
    "AGENT",
    "DIGEST",
    "DIGEST_SIZE",
    "IDEMPOTENCY_KEY",
    "MAX_IDEMPOTENCY_KEY",
    "MAX_INT64",
    "MAX_REASON",
    "MAX_TIME_MS",
    "STATEMENT",
    "TIME",
    "Body",
    "Kind",
    "Op",
    "Schema",
    "amount",
    "binary",
    "declared_ops",
    "form",
    "integer",
    "text",
    "wire",
]
