"""Why a dispute, a case or a bundle check was refused; one class per stable code."""

from __future__ import annotations

from typing import ClassVar

from .._errors import ServiceError

__all__ = [
    "BadCase",
    "DisputeError",
    "NotArbiter",
    "NotParty",
    "UnknownProtocol",
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



class UnknownProtocol(DisputeError):
    """A bundle that verifies, but of a protocol no registered checker knows: there
    is no obligation to judge."""

    code: ClassVar[str] = "dispute.unknown_protocol"


class NotParty(DisputeError):
    """A filing by an agent that is not a party of the bundle's obligations, or
    against one that is not (or against itself, or with no single other party)."""

    code: ClassVar[str] = "dispute.not_party"
