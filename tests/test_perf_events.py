"""The event log writes its lines a batch at a time (issue 8, item 6: a write per
request, in the event loop's thread, on each side). Every line is still written,
whole and in order: by a timer soon after, when many wait, and at close.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from semper.agents.runtime import _events
from semper.agents.runtime._events import EventLog


def _count_writes(log: EventLog, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    writes: list[str] = []
    file = log._file
    assert file is not None
    write = file.write

    def counting(text: str) -> int:
        writes.append(text)
        return write(text)

    monkeypatch.setattr(file, "write", counting)
    return writes


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_requests_logged_together_are_one_write(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The instance: 100 requests were 100 writes."""
    monkeypatch.setattr(_events, "FLUSH_SECONDS", 60.0)  # the timer does not fire here
    log = EventLog("seller", tmp_path / "events.jsonl")
    writes = _count_writes(log, monkeypatch)
    for n in range(100):
        log.emit("served", peer="buyer", service="commerce", op="order", request_id=n,
                 outcome="ok", ms=0.5)
    assert writes == []
    log.close()
    assert len(writes) == 1
    lines = _lines(tmp_path / "events.jsonl")
    assert [line["request_id"] for line in lines] == list(range(100))
    assert lines[0]["agent"] == "seller" and lines[0]["event"] == "served"


def test_many_waiting_are_written_without_the_timer(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_events, "FLUSH_SECONDS", 60.0)
    log = EventLog("bank", tmp_path / "events.jsonl")
    writes = _count_writes(log, monkeypatch)
    for n in range(_events.MAX_PENDING * 2 + 3):
        log.emit("requested", n=n)
    assert len(writes) == 2
    assert len(_lines(tmp_path / "events.jsonl")) == _events.MAX_PENDING * 2
    log.close()
    assert [line["n"] for line in _lines(tmp_path / "events.jsonl")] \
        == list(range(_events.MAX_PENDING * 2 + 3))


def test_the_timer_writes_a_quiet_tail(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_events, "FLUSH_SECONDS", 0.01)
    log = EventLog("buyer", tmp_path / "events.jsonl")
    written = threading.Event()
    write_pending = log._write_pending

    def noting() -> None:
        write_pending()
        if threading.current_thread() is not threading.main_thread():
            written.set()

    monkeypatch.setattr(log, "_write_pending", noting)
    log.emit("requested", op="catalogue")
    assert written.wait(10)  # the timer thread wrote it, without close or more lines
    assert [line["op"] for line in _lines(tmp_path / "events.jsonl")] == ["catalogue"]
    log.emit("requested", op="order")  # the timer keeps going
    written.clear()
    assert written.wait(10)
    assert [line["op"] for line in _lines(tmp_path / "events.jsonl")] == ["catalogue", "order"]
    timer = log._timer
    log.close()
    assert timer is not None and not timer.is_alive()
    log.emit("requested", op="after close")  # dropped, as before
    assert len(_lines(tmp_path / "events.jsonl")) == 2


def test_rotation_keeps_every_line_in_order(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_events, "MAX_BYTES", 2_000)
    monkeypatch.setattr(_events, "FLUSH_SECONDS", 60.0)
    log = EventLog("seller", tmp_path / "events.jsonl")
    for n in range(30):
        log.emit("served", n=n)
    log.close()
    old = _lines(tmp_path / "events.jsonl.1")
    new = _lines(tmp_path / "events.jsonl")
    assert (tmp_path / "events.jsonl").stat().st_size <= 2_000
    assert [line["n"] for line in old + new] == list(range(old[0]["n"], 30))


def test_a_command_s_lines_are_written_at_exit(tmp_path: Path) -> None:
    """A command (``semper buy``) ends without closing its agent's log: what it kept
    is written at exit, not lost with the timer thread."""
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from semper.agents.runtime import _events\n"
        "_events.FLUSH_SECONDS = 600\n"
        "log = _events.EventLog('buyer', Path(sys.argv[1]))\n"
        "for n in range(3):\n"
        "    log.emit('requested', n=n)\n")
    path = tmp_path / "events.jsonl"
    subprocess.run([sys.executable, "-c", script, str(path)], check=True, timeout=60)
    assert [line["n"] for line in _lines(path)] == [0, 1, 2]


def test_a_line_is_encoded_by_one_c_encoder_made_once() -> None:
    """The C encoder ``JSONEncoder.encode`` set up at every line is made once: the
    same line, byte for byte (``default=str`` for what JSON has no type for, ASCII
    escapes, NaN as JSON's own ``NaN``)."""
    assert _events._encode.__module__ == _events.__name__  # not JSONEncoder's method
    reference = json.JSONEncoder(separators=(",", ":"), default=str).encode
    for record in [{"time": 1795984663.064434, "agent": "seller", "event": "served",
                    "peer": "buyer-1", "request_id": 7, "outcome": "ok", "ms": 1.234},
                   {"n": None, "ok": True, "text": "é\u2028\x00\"", "path": Path("/x"),
                    "nested": [1, {"a": 2.5}], "nan": float("nan")}, {}]:
        assert _events._encode(record) == reference(record)
