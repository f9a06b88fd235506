"""bench/notary.py stays runnable: a short run prints the JSON keys users read
(tokens_per_s, ping_per_s, ping_ratio), every token answered verified and stored."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench"


def test_notary_bench_json_keys() -> None:
    done = subprocess.run(
        [sys.executable, str(BENCH / "notary.py"), "--json", "--seconds", "0.3",
         "--rounds", "1", "--concurrency", "4"],
        capture_output=True, text=True, timeout=120, check=True,
    )
    report = json.loads(done.stdout)
    assert report["tokens_per_s"] > 0 and report["ping_per_s"] > 0
    assert abs(report["ping_ratio"] - report["tokens_per_s"] / report["ping_per_s"]) < 0.01
    assert report["tokens"] > 0 and report["batches"] > 0
    assert report["tokens_per_batch"] >= 1 and report["concurrency"] == 4
    latency = report["batch_latency_ms"]  # from the notary's timestamps_issued lines
    assert latency.keys() == {"p10", "p50", "p90"}
    assert 0 <= latency["p10"] <= latency["p50"] <= latency["p90"]
    # One round: each kind's CPU is over the requests of its one window.
    requests = {"ping": round(report["ping_per_s"] * report["seconds"]),
                "token": report["tokens"]}
    for kind in ("ping", "token"):
        cpu = report["cpu_us_per_request"][kind]
        assert cpu.keys() == {"notary", "notary_main", "client"}
        # The loop thread is part of its process, up to what /proc can tell: a reading
        # is whole clock ticks (each of utime and stime cut down, so the window's
        # difference is off by under 2 ticks, for the thread and for the process alike),
        # and the runtime the kernel reports can lag a tick at each of the 4 reads. With
        # all of a token's work on the loop thread the two are nearly equal, and a
        # loaded machine (fewer requests in the window) showed the thread 33% above
        # (303 against 227 us): the bound is that resolution over this run's requests.
        slack = 6 * 1e6 / os.sysconf("SC_CLK_TCK") / requests[kind]
        assert 0 <= cpu["notary_main"] <= cpu["notary"] + slack, (kind, requests, slack)
