"""The certificate ops, each declared once (``services._ops.Op``): the CA agent
serves them; ``enroll.request`` only on its anonymous enrollment address.

Their handlers still read the raw body themselves (``StatusQuery.from_wire``, ...),
so the ops are declared untyped; naming the body types here and dropping the
``from_wire`` from the handler go together (the runtime decodes with ``request``)."""

from __future__ import annotations

from typing import Final

from .._ops import Op

__all__ = ["CRL", "ENROLL", "STATUS"]

#: The CA's current CRL (DER); the query (``fresh_after``) is checked by the handler.
CRL: Final = Op("certificates", "crl")
#: Whether an agent's (or a serial's) certificate is good, expired or revoked:
#: ``StatusQuery`` -> ``StatusReport``.
STATUS: Final = Op("certificates", "status")
#: A newcomer redeems its token for a certificate (protocol.md 7.2):
#: ``EnrollRequest`` -> ``EnrollAnswer``.
ENROLL: Final = Op("enroll", "request")
