"""The structured event log: one JSON object per line, for people and for tools.

Every request an agent serves or sends is one line: time, agent, peer, service, op,
request id, outcome (``ok`` or the error code) and how long it took. The file is
append-only and line-buffered, so ``tail -F`` and a crash both see whole lines.

Its size is bounded: past ``MAX_BYTES`` it becomes ``<name>.1`` (replacing the one
before) and a new file starts. A peer pinging as fast as it can wrote ~1.5 MB/s of
lines, without end; now the log costs at most twice ``MAX_BYTES`` of disk.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import IO, Any

__all__ = ["MAX_BYTES", "EventLog"]

#: Bytes after which the log is rotated (one older file is kept).
MAX_BYTES = 64 * 1024 * 1024


class EventLog:
    """Appends events to ``path`` (or keeps none when ``path`` is None)."""

    def __init__(self, agent: str, path: Path | None) -> None:
        self.agent = agent
        self.path = path
        self._file: IO[str] | None = None
        self._size = 0
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._open()

    def _open(self) -> None:
        assert self.path is not None
        self._file = self.path.open("a", encoding="utf-8", buffering=1)
        self._size = self._file.tell()

    def emit(self, event: str, **fields: Any) -> None:
        if self._file is None:
            return
        record = {"time": round(time.time(), 6), "agent": self.agent, "event": event, **fields}
        line = json.dumps(record, separators=(",", ":"), default=str) + "\n"
        if self._size + len(line) > MAX_BYTES and self._size:
            self._rotate()
        self._file.write(line)
        self._size += len(line)  # characters; the lines are ASCII (json.dumps escapes)

    def _rotate(self) -> None:
        """Keep the full file as ``<name>.1`` and start a new one. A failure (say, out
        of descriptors) keeps appending to the file we have rather than lose events."""
        assert self._file is not None and self.path is not None
        try:
            self._file.close()
            os.replace(self.path, self.path.with_name(self.path.name + ".1"))
            rotated = True
        except OSError:
            rotated = False
        try:
            self._open()
        except OSError:
            self._file = None  # nowhere to write: events are dropped, the agent lives
            return
        if not rotated:
            self._size = 0  # try again after another MAX_BYTES, not at every line

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
