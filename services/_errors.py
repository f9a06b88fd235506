"""The root of every error the services layer raises.

Each class carries a stable dotted ``code``; codes are API and are never reused.
``wire = True`` declares a refusal meant for the peer: the transport sends only
errors that declare it with their code, anything else as ``internal.error``; a code
that is only ever local sets ``wire = False``. The transport layer has its own root
(the layer rule forbids a shared module); ``docs/protocol.md`` lists the codes of
both, and a test checks that the table and the classes agree.
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = ["ServiceError"]


class ServiceError(Exception):
    """A service refused something; ``code`` says what, ``message`` says it for humans."""

    code: ClassVar[str] = "service.error"
    #: Meant for the peer: sent with code, message and detail when a handler raises it.
    wire: ClassVar[bool] = True

    def __init__(self, message: str, *, detail: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.detail: dict[str, Any] = dict(detail or {})

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"
