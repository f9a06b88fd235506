"""The root of every error the services layer raises.

Each class carries a stable dotted ``code`` that goes on the wire unchanged; codes
are API and are never reused. The transport layer has its own root (the layer rule
forbids a shared module); ``docs/protocol.md`` lists the codes of both, and a test
checks that the table and the classes agree.
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = ["ServiceError"]


class ServiceError(Exception):
    """A service refused something; ``code`` says what, ``message`` says it for humans."""

    code: ClassVar[str] = "service.error"

    def __init__(self, message: str, *, detail: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.detail: dict[str, Any] = dict(detail or {})

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"
