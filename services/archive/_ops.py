"""The evidence op, declared once (``services._ops.Op``): every agent serves it, so
that a peer can hand over a statement it signed and get a signed receipt back."""

from __future__ import annotations

from typing import Final

from .._ops import Op
from ._bodies import DeliverAnswer, DeliverRequest

__all__ = ["DELIVER"]

#: ``DeliverRequest`` (``{"transaction", "statement"}``, other keys ignored) ->
#: ``DeliverAnswer`` (``{"receipt"}``); protocol.md 7.5.
DELIVER: Final = Op("evidence", "deliver", DeliverRequest, DeliverAnswer)
