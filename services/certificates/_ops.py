"""The certificate ops, each declared once (``services._ops.Op``): the CA agent
serves them; ``enroll.request`` only on its anonymous enrollment address.

``crl`` and ``status`` are typed (``_bodies``): the runtime decodes and checks the
request before the handler runs. ``enroll.request`` is served outside the channel
registry (the enrollment listener), whose handler reads ``EnrollRequest`` itself."""

from __future__ import annotations

from typing import Final

from .._ops import Op
from ._bodies import CrlRequest, StatusRequest
from ._reveal import RevealAnswer, RevealRequest, RevealsAnswer, RevealsRequest
from ._status import StatusReport

__all__ = ["CRL", "ENROLL", "REVEAL", "REVEALS", "STATUS"]

#: ``CrlRequest`` -> the CA's current CRL: ``{"number", "crl": DER or nil}`` (nil is
#: sent, so the response is not a schema body, which leaves an unset key out).
CRL: Final = Op("certificates", "crl", CrlRequest)
#: Whether an agent's (or a serial's) certificate is good, expired or revoked:
#: ``StatusRequest`` -> ``StatusReport``.
STATUS: Final = Op("certificates", "status", StatusRequest, StatusReport)
#: A newcomer redeems its token for a certificate (protocol.md 7.2):
#: ``EnrollRequest`` -> ``EnrollAnswer``.
ENROLL: Final = Op("enroll", "request")
#: An arbiter asks the CA who a pseudonym is, citing a case (protocol.md 7.6):
#: ``RevealRequest`` -> ``RevealAnswer``.
REVEAL: Final = Op("ca", "reveal", RevealRequest, RevealAnswer)
#: A pseudonym's holder asks which reveals of it the CA granted (protocol.md 7.6):
#: ``RevealsRequest`` -> ``RevealsAnswer``.
REVEALS: Final = Op("ca", "reveals", RevealsRequest, RevealsAnswer)
