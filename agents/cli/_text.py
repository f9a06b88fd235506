"""Words for counts in what the commands print."""

from __future__ import annotations

__all__ = ["counted"]


def counted(count: int, singular: str, plural: str | None = None) -> str:
    """``1 entry``, ``2 entries``, ``0 bytes``: ``plural`` defaults to ``singular + "s"``."""
    return f"{count} {singular if count == 1 else plural or singular + 's'}"
