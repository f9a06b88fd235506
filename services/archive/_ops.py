"""The evidence op, declared once (``services._ops.Op``): every agent serves it, so
that a peer can hand over a statement it signed and get a signed receipt back."""

from __future__ import annotations

from typing import Final

from .._ops import Op

__all__ = ["DELIVER"]

#: ``{"transaction", "statement", ...}`` -> a receipt statement; the agents' evidence
#: component checks the bodies (protocol.md 7.5).
DELIVER: Final = Op("evidence", "deliver")
