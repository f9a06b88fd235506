"""The structured event log: one JSON object per line, for people and for tools.

Every request an agent serves or sends is one line: time, agent, peer, service, op,
request id, outcome (``ok`` or the error code) and how long it took. The file is
append-only and line-buffered, so ``tail -f`` and a crash both see whole lines.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import IO, Any

__all__ = ["EventLog"]


class EventLog:
    """Appends events to ``path`` (or keeps none when ``path`` is None)."""

    def __init__(self, agent: str, path: Path | None) -> None:
        self.agent = agent
        self.path = path
        self._file: IO[str] | None = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file = path.open("a", encoding="utf-8", buffering=1)

    def emit(self, event: str, **fields: Any) -> None:
        if self._file is None:
            return
        record = {"time": round(time.time(), 6), "agent": self.agent, "event": event, **fields}
        self._file.write(json.dumps(record, separators=(",", ":"), default=str) + "\n")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
