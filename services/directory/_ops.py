"""The directory ops, each declared once (``services._ops.Op``): the CA agent serves
them, every agent calls them. Their request bodies are typed (``_card``), so the
handler gets a checked ``SignedCard`` or ``Lookup``."""

from __future__ import annotations

from typing import Final

from .._ops import Op
from ._card import Lookup, PublishAnswer, SignedCard

__all__ = ["LOOKUP", "PUBLISH"]

#: Publish a ``SignedCard``; the answer is ``PublishAnswer`` (``{"agent", "not_after"}``).
PUBLISH: Final = Op("directory", "publish", SignedCard, PublishAnswer)
#: ``Lookup``: one agent's signed card, or ``{"cards": [...]}`` of a role (two shapes,
#: so the response is not typed here).
LOOKUP: Final = Op("directory", "lookup", Lookup)
