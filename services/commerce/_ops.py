"""The commerce ops, each declared once (``services._ops.Op``): a seller serves them,
a buyer calls them (protocol.md 9.5).

Their request bodies are ``_requests`` bodies, decoded and checked before the
seller's handler runs as section 9.5 says (a bad body is ``payment.bad_request``;
``fetch`` and ``refund`` ignore unknown keys); the statements inside are ``_bodies``
bodies, checked by the seller (section 9.3)."""

from __future__ import annotations

from typing import Final

from .._ops import Op
from ._requests import CatalogueRequest, FetchRequest, OrderRequest, RefundRequest

__all__ = ["CATALOGUE", "FETCH", "ORDER", "REFUND", "SERVICE"]

SERVICE: Final = "commerce"

#: The seller's signed offers and its certificate.
CATALOGUE: Final = Op(SERVICE, "catalogue", CatalogueRequest)
#: ``{"order": statement}`` -> the order's digest, amount and payment module.
ORDER: Final = Op(SERVICE, "order", OrderRequest)
#: ``{"order": digest}`` -> the delivery, the goods and the receipt.
FETCH: Final = Op(SERVICE, "fetch", FetchRequest)
#: ``{"order": digest, "reason"?, "amount"?}`` -> the refund note and refund result.
REFUND: Final = Op(SERVICE, "refund", RefundRequest)
