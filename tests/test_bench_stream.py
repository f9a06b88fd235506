"""bench/stream.py stays runnable: a tiny run of the real thing (bank and seller
processes, a purchase paid by purse) and of the prototype prints the JSON keys."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench" / "stream.py"
KEYS = ("stream_ratio", "ticks_per_s", "mb_per_s", "baseline_mb_per_s", "chunk_size",
        "chunks", "cpu_ms_per_mb")


def run(*args: str) -> dict[str, object]:
    done = subprocess.run([sys.executable, str(BENCH), "--json", "--rounds", "1", *args],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def test_a_purse_stream_of_1_mib_chunks_against_plain_tls() -> None:
    """1 MiB chunks, the largest a catalogue allows: their answers are larger than a
    default frame, so the buyer's delivery channel must announce a larger limit (it
    was refused as protocol.answer_too_large)."""
    report = run("--bytes", str((1 << 20) + 4321), "--chunk-size", str(1 << 20))
    for key in KEYS:
        assert key in report
    assert report["chunks"] == 2 and report["chunk_size"] == 1 << 20
    assert report["stream_ratio"] > 0 and report["ticks_per_s"] > 0  # type: ignore[operator]
    assert set(report["cpu_ms_per_mb"]) == {"seller", "buyer"}  # type: ignore[arg-type]


def test_the_prototype_runs() -> None:
    report = run("--prototype", "--bytes", "200000", "--chunk-size", "65536")
    assert report["chunks"] == 4
    assert report["stream_ratio"] > 0  # type: ignore[operator]
