"""The certificate ops, each declared once (``services._ops.Op``): the CA agent
serves them; ``enroll.request`` only on its anonymous enrollment address."""

from __future__ import annotations

from typing import Final

from .._ops import Op
from ._enrollment import EnrollAnswer, EnrollRequest
from ._status import StatusQuery, StatusReport

__all__ = ["CRL", "ENROLL", "STATUS"]

#: The CA's current CRL (DER); the query (``fresh_after``) is checked by the handler.
CRL: Final = Op("certificates", "crl")
#: Whether an agent's (or a serial's) certificate is good, expired or revoked.
STATUS: Final = Op("certificates", "status", StatusQuery, StatusReport)
#: A newcomer redeems its token for a certificate (protocol.md 7.2).
ENROLL: Final = Op("enroll", "request", EnrollRequest, EnrollAnswer)
