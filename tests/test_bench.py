"""The benchmarks stay runnable: a short run prints the JSON keys users read."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench"


def test_channel_bench_json_keys() -> None:
    done = subprocess.run(
        [sys.executable, str(BENCH / "channel.py"), "--json", "--seconds", "0.05",
         "--rounds", "1"],
        capture_output=True, text=True, timeout=120, check=True,
    )
    report = json.loads(done.stdout)
    for key in ("rr1", "rr32", "bulk"):
        assert report[f"{key}_ratio"] > 0
        assert report[f"semper_{key}"] > 0 and report[f"baseline_{key}"] > 0
