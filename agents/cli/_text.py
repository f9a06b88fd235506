"""What the commands print: words for counts, and the one console every command
prints through.

Much of what a command shows comes from a peer or a file: offer titles and terms,
skus, error messages, verdict reasons, service names in a hello. Printed through
rich's default console, ``[green]``, ``[link=...]`` or ``[black on black]`` in such
text would be read as markup and ``:100:`` as an emoji, so a seller could restyle,
hide or fake what a buyer sees; an escape sequence would reach the terminal as it
is (rich passes ESC on). ``console()`` makes the only console the commands use: it
takes no markup, emoji or highlighting from any string, and shows every character
that is not printable escaped (``\\x1b``). Our own styling is ``Text`` built in the
code (``styled``), never parsed from a string.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console, RenderableType
from rich.status import Status
from rich.style import Style
from rich.text import Text

__all__ = ["console", "counted", "shown", "styled"]


def counted(count: int, singular: str, plural: str | None = None) -> str:
    """``1 entry``, ``2 entries``, ``0 bytes``: ``plural`` defaults to ``singular + "s"``."""
    return f"{count} {singular if count == 1 else plural or singular + 's'}"


def shown(text: object) -> str:
    """``text`` with each character that is not printable (an escape sequence, a
    newline that would fake a line of its own, a right-to-left override, a lone
    surrogate) shown escaped, as the one-line errors show it."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape", "backslashreplace")
                   .decode("ascii") for c in str(text))


def styled(*parts: str | tuple[str, str | Style]) -> Text:
    """Our own styling: ``styled(("ok", "green"), ": ", detail)``, each part shown as
    it is (a string is never read as markup, its unprintable characters escaped)."""
    return Text.assemble(*((shown(p), "") if isinstance(p, str) else (shown(p[0]), p[1])
                           for p in parts))


class _Status(Status):
    """A spinner whose text is never read as markup (rich's ``Spinner`` parses a
    string it is given, whatever the console says)."""

    def __init__(self, status: RenderableType, **kwargs: Any) -> None:
        super().__init__(_plain(status), **kwargs)

    def update(self, status: RenderableType | None = None, **kwargs: Any) -> None:
        super().update(None if status is None else _plain(status), **kwargs)


class _Console(Console):
    """A console that reads no string as markup, emoji or highlighting, whoever asks
    (a ``Table`` cell, a title, ``print``), and escapes what is not printable."""

    def render_str(self, text: str, **kwargs: Any) -> Text:
        kwargs.update(markup=False, emoji=False, highlight=False)
        return super().render_str(shown(text), **kwargs)

    def status(self, status: RenderableType, **kwargs: Any) -> Status:
        return _Status(status, console=self, **kwargs)


def _plain(renderable: RenderableType) -> RenderableType:
    return Text(shown(renderable)) if isinstance(renderable, str) else renderable


def console(*, stderr: bool = False) -> Console:
    """The console a command prints through (see the module docstring)."""
    return _Console(stderr=stderr, markup=False, emoji=False, highlight=False)
