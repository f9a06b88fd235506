"""The timestamp op, declared once (``services._ops.Op``): the notary serves it."""

from __future__ import annotations

from typing import Final

from .._ops import Op
from ._token import TimestampAnswer, TimestampRequest

__all__ = ["REQUEST"]

#: ``TimestampRequest`` (``{"digest"}``) -> ``TimestampAnswer`` (``{"token"}``), the
#: token durable at the notary before it is sent; protocol.md 11.4.
REQUEST: Final = Op("timestamp", "request", TimestampRequest, TimestampAnswer)
