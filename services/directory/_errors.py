"""Why the directory refused a card or a lookup; one class per stable code.

A card's signature and its signer's certificate are judged by the statements and
certificates layers, whose codes (``statement.*``, ``auth.*``) come through as
they are.
"""

from __future__ import annotations

from typing import ClassVar

from .._errors import ServiceError

__all__ = [
    "BadCard",
    "BadLookup",
    "CardExpired",
    "CardMismatch",
    "DirectoryError",
    "OutdatedCard",
    "UnknownAgent",
]


class DirectoryError(ServiceError):
    code: ClassVar[str] = "directory.error"


class BadCard(DirectoryError):
    """A card statement whose body is not a contact card, or whose certificate is
    not readable."""

    code: ClassVar[str] = "directory.bad_card"


class CardMismatch(DirectoryError):
    """The card names another agent or role than its signer's certificate, or was
    published by another agent than the one it names."""

    code: ClassVar[str] = "directory.card_mismatch"


class CardExpired(DirectoryError):
    """The card is outside its own validity period."""

    code: ClassVar[str] = "directory.card_expired"


class OutdatedCard(DirectoryError):
    """The directory holds a card of that agent issued later than this one."""

    code: ClassVar[str] = "directory.outdated_card"


class UnknownAgent(DirectoryError):
    """The directory has no current card for that agent id."""

    code: ClassVar[str] = "directory.unknown_agent"


class BadLookup(DirectoryError):
    """A ``directory.lookup`` body that is not ``{"agent": ID}`` or ``{"role": ROLE}``."""

    code: ClassVar[str] = "directory.bad_lookup"
