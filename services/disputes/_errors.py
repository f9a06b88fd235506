"""Why a dispute, a case or a bundle check was refused; one class per stable code."""

from __future__ import annotations

from typing import ClassVar

from .._errors import ServiceError

__all__ = [
    "BadCase",
    "DisputeError",
    "NotArbiter",
]


class DisputeError(ServiceError):
    code: ClassVar[str] = "dispute.error"


class BadCase(DisputeError):
    """A ``dispute.case``, ``dispute.verdict`` or ``dispute.file`` body that is not
    one (a missing key, a field of the wrong type or size)."""

    code: ClassVar[str] = "dispute.bad_body"


class NotArbiter(DisputeError):
    """A case or verdict statement signed by an agent whose certificate role is not
    ``arbiter``: only an arbiter opens a case."""

    code: ClassVar[str] = "dispute.not_arbiter"

