"""Notary benchmark: durable timestamp tokens per second against sys.ping round trips
per second to the same notary, over the same channel, in one run.

A market in a temporary folder; the notary is a real ``semper agent run`` process
(as bench/payments.py runs the bank). This process acts as the buyer: it opens one
mutually authenticated TLS 1.3 channel to the notary and keeps ``--concurrency``
requests in flight on it for ``--seconds``, alternately ``sys.ping`` (a 32-byte
body, echoed) and ``timestamp.request`` (a fresh 32-byte digest; the answer is a
token whose batch the notary committed, fsync'd, before answering), ``--rounds``
times each, and keeps each kind's best round. The answers are kept as they arrive
(msgpack-decoded by the channel, as the pings' are) and, after the timed rounds,
every one is read as a token and checked offline against the market root and the
CRL, and the notary's database is checked to hold every token answered: the client's
own checks stay out of the notary's figure (they share the machine's cores).

``ping_ratio`` = tokens_per_s / ping_per_s: how close a durable, signed, batched
token comes to a bare round trip on the same channel (issue 9: done at >= 0.8).

    python bench/notary.py [--json] [--seconds S] [--rounds R] [--concurrency C]
                           [--batch-ms MS] [--batch-max N] [--split-min N]
                           [--dir DIR] [--profile FILE]

``--json`` prints one object: ``tokens_per_s``, ``ping_per_s``, ``ping_ratio``, and
``tokens`` (counted in the best round), ``batches`` and ``tokens_per_batch`` (the
notary's, over the whole run), ``cpu_us_per_request`` (``{"ping"|"token": {"notary",
"notary_main", "client"}}``: CPU microseconds per request over all rounds, from /proc;
``notary_main`` is the notary's event-loop thread alone, the rest of ``notary`` its
database writer's and event log's threads), ``cores``,
``batch_latency_ms`` (``p10``, ``p50``, ``p90`` of the ms from sealing a batch to
answering it, from the notary's event log), ``seconds``, ``rounds``,
``concurrency``, ``batch_ms``, ``batch_max``, ``split_min`` (null: the notary's defaults).

Where a token's time goes. With 32 in flight and one batch per round, the client and
the notary work in turns, and a round also waits for the batch's fsync'd commit
(median 315 us on this disk; p90 1.5 ms), which nothing overlapped: ping_ratio stayed
at 0.62-0.68 (issue 9's last stop, brief T3). Two changes took it past 0.8:

- The batch commits on the event loop's thread (``Database.transaction(inline=True)``)
  when the database's writer thread is idle. Handing the batch to the thread and the
  answers back, and the GIL passed to and fro while SQLite works, cost 311 us of CPU
  a batch in the thread against 140 for the same commit alone (measured inside the
  notary); the notary's CPU per token went from ~62 to ~55 us.
- A batch of at least ``2 * split_min`` requests (default 16) is cut in two, and the
  first half's answers are sent (three scheduler passes) before the second half
  commits: the client works on the first half's answers while the notary commits the
  second, so the commit's wait overlaps the other process's work instead of adding to
  the round. The notary spends more CPU a token (~78 against ~55 us: two signatures
  and commits a round) and the client a little more (~48 against ~43), but the two
  processes now run side by side on the 2 cores instead of in turns.

Measured on a quiet machine, seven default runs: 0.73-0.89, median 0.81 (in one
batch, ``--split-min 0``: 0.61-0.67). The spread follows the disk: a run's ratio
tracks its fsync latency (``batch_latency_ms`` p50 0.52-0.70 ms here). Under other
processes' writes (fsync 1-3 ms) the split loses: 0.43-0.60 against 0.60-0.66 in one
batch. Tried and not kept: the batch written without its fsync
(``synchronous=NORMAL``) and an fdatasync of the WAL in a worker thread, answering
once it returned, so that the loop seals the next batch meanwhile: 0.56-0.61 (the
thread hand-over, and a slower fsync); the commit as one INSERT ... SELECT ... WHERE
in autocommit instead of BEGIN, SELECT, INSERT, COMMIT: no difference measurable
(the fsync and the pages written are the cost, not the statements).

Tried earlier, not kept (brief T3, A/B alternating runs): the answer without the
certificate (~1 us a token); signing while the writer thread wakes (slower under the
GIL); ``--batch-max`` 16 or 8 with the commit in the writer thread (0.47-0.53 and
0.17: the thread's GIL contention doubled with the commits, and nothing made the first
half's answers leave before the second half's commit); a GIL switch interval of 0.2 ms.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Any

import tomli_w
import trio

from semper.agents import Agent, AgentConfig
from semper.agents.operator._market import init_market
from semper.services.certificates import load_crl
from semper.services.timestamping import TimestampAnswer, verify_token

DEADLINE = 60.0


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def make_market(folder: Path, settings: dict[str, int]) -> Path:
    """The market; ``settings`` go to the notary's ``[components.timestamps]``."""
    market = folder / "market"
    init_market(market)
    if settings:
        path = market / "notary" / "agent.toml"
        config = tomllib.loads(path.read_text())
        config.setdefault("components", {})["timestamps"] = settings
        path.write_text(tomli_w.dumps(config))
    return market


def start_notary(market: Path, profile: Path | None = None) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "semper.agents.cli", "agent", "run",
            str(market / "notary" / "agent.toml")]
    if profile is not None:
        argv = [sys.executable, "-m", "cProfile", "-o", str(profile), *argv[1:]]
    # stderr to a file: a pipe nobody reads would block the notary once it filled
    log = (market / "notary.stderr").open("wb")
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=log)
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line.startswith(b"ready notary "):
        process.kill()
        raise SystemExit(f"the notary did not start: {line!r}\n"
                         f"{(market / 'notary.stderr').read_text(errors='replace')}")
    return process


def _cpu(pid: int, task: int | None = None) -> float:
    """CPU seconds (user + system) the process (or its thread ``task``) has used, from
    /proc (0 elsewhere)."""
    where = f"/proc/{pid}/stat" if task is None else f"/proc/{pid}/task/{task}/stat"
    try:
        fields = Path(where).read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _window(channel: Any, kind: str, seconds: float, concurrency: int,
                  tokens: list[Any]) -> int:
    """Requests of ``kind`` answered within ``seconds``, ``concurrency`` in flight."""
    done = [0]
    deadline = trio.current_time() + seconds

    async def one_task() -> None:
        while trio.current_time() < deadline:
            if kind == "ping":
                await channel.request("sys", "ping", os.urandom(32))
            else:
                tokens.append(await channel.request("timestamp", "request",
                                                    {"digest": os.urandom(32)}))
            if trio.current_time() <= deadline:
                done[0] += 1

    async with trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(one_task)
    return done[0]


def batch_latency(events: Path) -> dict[str, float]:
    """Percentiles of the ms from sealing a batch to answering it (signature, hand-over
    to the database's thread, fsync'd commit, wake-up back: the notary's
    ``timestamps_issued`` lines): the part of a token's round nothing else overlaps."""
    try:
        lines = events.read_text().splitlines()
    except OSError:
        return {}
    ms = sorted(entry["ms"] for entry in map(json.loads, filter(None, lines))
                if entry.get("event") == "timestamps_issued" and entry.get("outcome") == "ok")
    if not ms:
        return {}
    return {f"p{q}": ms[min(len(ms) - 1, len(ms) * q // 100)] for q in (10, 50, 90)}


def run(market: Path, notary: int, *, seconds: float, rounds: int, concurrency: int
        ) -> dict[str, Any]:
    client = Agent(AgentConfig.load(market / "buyer" / "agent.toml"))
    answers: list[Any] = []
    best = {"ping": 0, "token": 0}
    #: CPU microseconds per request of each kind, notary (all its threads; and its main
    #: thread, the event loop, alone) and client, over all rounds.
    cpu = {kind: {"notary": 0.0, "notary_main": 0.0, "client": 0.0, "count": 0}
           for kind in best}

    async def main() -> None:
        with trio.fail_after(DEADLINE + rounds * 2 * seconds):
            async with client.session():
                channel = await client.channel("notary")
                for kind in ("ping", "token"):  # warm up both paths
                    await _window(channel, kind, min(0.3, seconds), concurrency, [])
                for _ in range(rounds):
                    for kind in ("ping", "token"):
                        # the process before its main thread, and after it: so the
                        # thread's share never exceeds the whole (a tick between reads)
                        before = _cpu(notary), _cpu(notary, notary), time.process_time()
                        count = await _window(channel, kind, seconds, concurrency, answers)
                        cpu[kind]["notary_main"] += _cpu(notary, notary) - before[1]
                        cpu[kind]["notary"] += _cpu(notary) - before[0]
                        cpu[kind]["client"] += time.process_time() - before[2]
                        cpu[kind]["count"] += count
                        best[kind] = max(best[kind], count)

    trio.run(main)
    root = client.credentials.root
    crl = load_crl((market / "ca" / "crl.pem").read_bytes())
    now = dt.datetime.now(dt.UTC)
    tokens = [TimestampAnswer.from_wire(answer).token for answer in answers]
    for token in tokens:  # every token answered is a valid one
        verify_token(token, root=root, crl=crl, now=now)
    with sqlite3.connect(market / "notary" / "data" / "agent.sqlite") as c:
        # a batch is a row: its first serial and its digests end to end
        rows = {first: digests for first, digests in c.execute(
            "SELECT first_serial, digests FROM timestamp_heads")}
    stored, batches = sum(len(d) // 32 for d in rows.values()), len(rows)
    missing = [t.serial for t in tokens if rows.get(t.serial - t.index, b"")[
        t.index * 32:t.index * 32 + 32] != t.digest]
    if missing:
        raise SystemExit(f"tokens answered but not stored: {missing[:10]}")
    cpu_us = {kind: {side: round(cpu[kind][side] / max(1, cpu[kind]["count"]) * 1e6, 1)
                     for side in ("notary", "notary_main", "client")} for kind in cpu}
    return {"tokens_per_s": best["token"] / seconds, "ping_per_s": best["ping"] / seconds,
            "tokens": best["token"], "stored": stored, "batches": batches,
            "cpu_us": cpu_us}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each kind")
    parser.add_argument("--concurrency", type=int, default=32, help="requests in flight")
    parser.add_argument("--batch-ms", type=int, default=0,
                        help="the notary's [components.timestamps] batch_ms")
    parser.add_argument("--batch-max", type=int, default=None,
                        help="the notary's [components.timestamps] batch_max")
    parser.add_argument("--split-min", type=int, default=None,
                        help="the notary's split_min (default: its own, 16; 0: never split)")
    parser.add_argument("--dir", type=Path, help="where the market goes (default: temporary)")
    parser.add_argument("--profile", type=Path, help="cProfile the notary into this file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as name:
        settings = {"batch_ms": args.batch_ms}
        if args.batch_max is not None:
            settings["batch_max"] = args.batch_max
        if args.split_min is not None:
            settings["split_min"] = args.split_min
        market = make_market(Path(name), settings)
        notary = start_notary(market, args.profile)
        try:
            try:
                result = run(market, notary.pid, seconds=args.seconds, rounds=args.rounds,
                             concurrency=args.concurrency)
            except BaseException:
                print((market / "notary.stderr").read_text(errors="replace")[-4000:],
                      file=sys.stderr)
                raise
        finally:
            notary.terminate()
            try:
                notary.wait(timeout=10)
            except subprocess.TimeoutExpired:
                notary.kill()
                notary.wait()
        latency = batch_latency(market / "notary" / "data" / "events.jsonl")
    report = {
        "tokens_per_s": round(result["tokens_per_s"], 1),
        "ping_per_s": round(result["ping_per_s"], 1),
        "ping_ratio": round(result["tokens_per_s"] / result["ping_per_s"], 3)
        if result["ping_per_s"] else 0.0,
        "tokens": result["tokens"],
        "batches": result["batches"],
        "tokens_per_batch": round(result["stored"] / result["batches"], 2)
        if result["batches"] else 0.0,
        "cpu_us_per_request": result["cpu_us"],
        "batch_latency_ms": latency,
        "cores": cores(), "seconds": args.seconds, "rounds": args.rounds,
        "concurrency": args.concurrency, "batch_ms": args.batch_ms,
        "batch_max": args.batch_max,
        "split_min": args.split_min,
    }
    if args.json:
        print(json.dumps(report))
        return
    print(f"notary, {args.concurrency} in flight on one channel, best of {args.rounds} "
          f"rounds of {args.seconds:g} s, {report['cores']} cores:")
    print(f"  sys.ping           {report['ping_per_s']:>10.1f} round trips/s")
    print(f"  timestamp.request  {report['tokens_per_s']:>10.1f} durable tokens/s "
          f"({report['tokens_per_batch']} tokens per signed, committed batch)")
    print(f"  ping_ratio         {report['ping_ratio']:>10.3f}  (tokens/s over pings/s)")
    if latency:
        print(f"  batch latency      {latency['p50']:.3f} ms median, p10 {latency['p10']:.3f}, "
              f"p90 {latency['p90']:.3f} (sealed to answered: signed, committed)")
    for kind, sides in report["cpu_us_per_request"].items():
        print(f"  CPU per {kind:<5}     notary {sides['notary']:.1f} us (event loop "
              f"{sides['notary_main']:.1f}), client {sides['client']:.1f} us")


if __name__ == "__main__":
    main()
