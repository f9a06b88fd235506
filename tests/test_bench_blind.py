"""bench/blind.py stays runnable: a short run prints the JSON keys the issue names
(blind_signs_per_s, openssl_ratio) with sane values."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


@pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl binary")
def test_blind_bench_json_keys() -> None:
    done = subprocess.run(
        [sys.executable, str(BENCH / "blind.py"), "--json", "--seconds", "0.2",
         "--rounds", "1", "--python-seconds", "0.1"],
        capture_output=True, text=True, timeout=120, check=True,
    )
    report = json.loads(done.stdout)
    assert report["blind_signs_per_s"] > 0 and report["openssl_signs_per_s"] > 0
    assert report["backend"] in ("openssl", "python")
    assert report["openssl_ratio"] == pytest.approx(
        report["blind_signs_per_s"] / report["openssl_signs_per_s"], abs=0.002)
    assert 0 < report["openssl_ratio"] < 3
    assert 0 < report["blind_signs_per_wall_s"]
    assert 0 < report["python_ratio"] < report["openssl_ratio"] or report["backend"] == "python"
    assert report["rounds"] == 1 and report["seconds"] == 0.2


def test_blind_bench_refuses_bad_arguments() -> None:
    done = subprocess.run([sys.executable, str(BENCH / "blind.py"), "--seconds", "0"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.startswith("semper: bench.usage:") and "Traceback" not in done.stderr
