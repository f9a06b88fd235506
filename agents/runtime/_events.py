"""The structured event log: one JSON object per line, for people and for tools.

Every request an agent serves or sends is one line: time, agent, peer, service, op,
request id, outcome (``ok`` or the error code) and how long it took. The file is
append-only; lines are kept in memory and written in order, whole, a batch at a time:
when ``MAX_PENDING`` are waiting, by a timer thread ``FLUSH_SECONDS`` after the
first, and at ``close``, so ``tail -F`` sees whole lines at most that late and a
crash loses at most that much of the tail. (A write per line, in the event loop's
thread, was one of the few per-cent costs of every request on each side.)

Its size is bounded: past ``MAX_BYTES`` it becomes ``<name>.1`` (replacing the one
before) and a new file starts. A peer pinging as fast as it can wrote ~1.5 MB/s of
lines, without end; now the log costs at most twice ``MAX_BYTES`` of disk.
"""

from __future__ import annotations

import atexit
import json
import os
import threading
import time
import weakref
from pathlib import Path
from typing import IO, Any

__all__ = ["FLUSH_SECONDS", "MAX_BYTES", "MAX_PENDING", "EventLog"]

#: Bytes after which the log is rotated (one older file is kept).
MAX_BYTES = 64 * 1024 * 1024
#: Lines kept before they are written whatever the timer says.
MAX_PENDING = 256
#: How long a line may wait in memory before the timer thread writes it.
FLUSH_SECONDS = 0.2

_encode = json.JSONEncoder(separators=(",", ":"), default=str).encode
try:  # the C encoder JSONEncoder.encode sets up at every call, made once (~2 us a line)
    from json.encoder import c_make_encoder, encode_basestring_ascii

    if c_make_encoder is not None:
        _lines = c_make_encoder(None, str, encode_basestring_ascii, None, ":", ",", False,
                                False, True)

        def _encode(record: dict[str, Any]) -> str:  # type: ignore[misc]
            return "".join(_lines(record, 0))
except ImportError:  # pragma: no cover - a Python without the C accelerator
    pass


class EventLog:
    """Appends events to ``path`` (or keeps none when ``path`` is None)."""

    def __init__(self, agent: str, path: Path | None) -> None:
        self.agent = agent
        self.path = path
        self._file: IO[str] | None = None
        self._size = 0
        self._pending: list[str] = []
        self._lock = threading.Lock()  # the emitting thread and the timer's
        self._wake = threading.Event()  # a first line is kept
        self._stop = threading.Event()  # closed
        self._timer: threading.Thread | None = None
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
        line = _encode(record) + "\n"
        with self._lock:
            if self._file is None:
                return
            if self._size + len(line) > MAX_BYTES and self._size:
                self._write_pending()
                self._rotate()
                if self._file is None:
                    return
            self._pending.append(line)
            self._size += len(line)  # characters; the lines are ASCII (json.dumps escapes)
            if len(self._pending) >= MAX_PENDING:
                self._write_pending()
            elif len(self._pending) == 1:
                self._start_timer()
                self._wake.set()

    def flush(self) -> None:
        """Write the lines kept so far."""
        with self._lock:
            self._write_pending()

    def _write_pending(self) -> None:
        """Under the lock: the kept lines, in order, in one write. A failure (a full
        disk) drops them, as a line that failed to write was dropped."""
        if not self._pending:
            return
        lines, self._pending = "".join(self._pending), []
        if self._file is not None:
            try:
                self._file.write(lines)
                self._file.flush()
            except OSError:
                pass

    def _start_timer(self) -> None:
        if self._timer is None:
            self._timer = threading.Thread(target=_flush_later, args=(weakref.ref(self),),
                                           name=f"semper-events {self.agent}", daemon=True)
            self._timer.start()
            _OPEN.add(self)

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
        with self._lock:
            self._write_pending()
            if self._file is not None:
                self._file.close()
                self._file = None
            timer, self._timer = self._timer, None
        self._stop.set()
        self._wake.set()
        if timer is not None and timer is not threading.current_thread():
            timer.join()


#: Logs that may hold lines: written at exit (a command such as ``semper buy`` ends
#: without closing its agent's log; the timer thread dies with the process).
_OPEN: weakref.WeakSet[EventLog] = weakref.WeakSet()


@atexit.register
def _flush_at_exit() -> None:
    for log in list(_OPEN):
        log.flush()


def _flush_later(ref: weakref.ref[EventLog]) -> None:
    """The timer: after the first line kept, wait ``FLUSH_SECONDS``, write what is
    kept; end when the log is closed or gone."""
    while True:
        log = ref()
        if log is None:
            return
        wake, stop = log._wake, log._stop
        del log
        if not wake.wait(1.0):
            continue  # nothing kept: look again whether the log is still there
        stop.wait(FLUSH_SECONDS)
        log = ref()
        if log is None:
            return
        with log._lock:
            wake.clear()
            log._write_pending()
            if log._file is None:
                return
        del log
