"""The directory ops, each declared once (``services._ops.Op``): the CA agent serves
them, every agent calls them.

Their handlers still read the raw body themselves (``SignedCard.from_wire``,
``Lookup.from_wire``), so the ops are declared untyped; naming the body types here
and dropping the ``from_wire`` from the handler go together."""

from __future__ import annotations

from typing import Final

from .._ops import Op

__all__ = ["LOOKUP", "PUBLISH"]

#: Publish a ``SignedCard``; the answer is ``{"agent", "not_after"}``.
PUBLISH: Final = Op("directory", "publish")
#: ``Lookup``: one agent's card, or ``{"cards": [...]}`` of a role.
LOOKUP: Final = Op("directory", "lookup")
