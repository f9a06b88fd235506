"""The directory ops, each declared once (``services._ops.Op``): the CA agent serves
them, every agent calls them."""

from __future__ import annotations

from typing import Final

from .._ops import Op
from ._card import Lookup, SignedCard

__all__ = ["LOOKUP", "PUBLISH"]

#: Publish a signed card; the answer ``{"agent", "not_after"}`` is not typed yet.
PUBLISH: Final = Op("directory", "publish", SignedCard)
#: One agent's card, or ``{"cards": [...]}`` of a role: the answer depends on the
#: request, so it is not typed here.
LOOKUP: Final = Op("directory", "lookup", Lookup)
