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


def test_payments_bench_json_keys() -> None:
    done = subprocess.run(
        [sys.executable, str(BENCH / "payments.py"), "--json", "--seconds", "0.3",
         "--concurrency", "4"],
        capture_output=True, text=True, timeout=120, check=True,
    )
    report = json.loads(done.stdout)
    assert report["pay"] == "transfer"
    assert report["purchases"] > 0 and report["failed"] == 0
    assert report["purchases_per_s"] > 0 and report["floor_purchases_per_s"] > 0
    assert abs(report["floor_ratio"]
               - report["purchases_per_s"] / report["floor_purchases_per_s"]) < 0.02
    assert report["bank_payments"] >= report["purchases"]
    assert report["crypto_floor_purchases_per_s"] > report["floor_purchases_per_s"]
    assert abs(report["crypto_floor_ratio"]
               - report["purchases_per_s"] / report["crypto_floor_purchases_per_s"]) < 0.002
    floor = report["floor"]
    for part in ("sign", "verify", "verify_certificate", "verify_crl", "commits",
                 "round_trips"):
        assert floor[part]["us_each"] > 0
    for part in ("sign", "verify", "commits", "round_trips"):
        assert floor[part]["count"] > 0
    # The protocol's 5 signs and 6 verifies (order, transfer order, confirmation,
    # delivery, receipt; the offer checked once per catalogue version), and no
    # certificate or CRL signature checked again once known.
    assert floor["sign"]["count"] == 5
    assert floor["verify"]["count"] <= 6.5
    assert floor["verify_certificate"]["count"] < 0.5 and floor["verify_crl"]["count"] < 0.5
