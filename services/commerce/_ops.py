"""The commerce ops, each declared once (``services._ops.Op``): a seller serves them,
a buyer calls them (protocol.md 9.5).

Their request bodies are checked by the seller's handlers as section 9.5 says (a
bad body is ``payment.bad_request``; ``fetch`` and ``refund`` ignore unknown keys),
so they are not typed here yet; the statements inside are ``_bodies`` bodies."""

from __future__ import annotations

from typing import Final

from .._ops import Op

__all__ = ["CATALOGUE", "FETCH", "ORDER", "REFUND", "SERVICE"]

SERVICE: Final = "commerce"

#: The seller's signed offers and its certificate.
CATALOGUE: Final = Op(SERVICE, "catalogue")
#: ``{"order": statement}`` -> the order's digest, amount and payment module.
ORDER: Final = Op(SERVICE, "order")
#: ``{"order": digest}`` -> the delivery, the goods and the receipt.
FETCH: Final = Op(SERVICE, "fetch")
#: ``{"order": digest, "reason"?, "amount"?}`` -> the refund note and refund result.
REFUND: Final = Op(SERVICE, "refund")
