"""The local market demo: real processes, real TLS, a table of who reached whom.

Each agent is its own ``semper agent run`` process; each ping is its own
``semper ping`` process using the pinging agent's identity. Nothing is simulated.
"""

from __future__ import annotations

import functools
import json
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from ._config import AgentConfig
from ._market import init_market

__all__ = ["DemoResult", "run_demo"]

READY_TIMEOUT = 30.0
PING_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0


@dataclass
class DemoResult:
    agents: list[str]
    pings: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    exit_codes: dict[str, int | None] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(p.get("ok") for p in self.pings.values()) and all(
            code == 0 for code in self.exit_codes.values())


def _semper(*args: str) -> list[str]:
    return [sys.executable, "-m", "semper.agents.cli", *args]


async def _start(config: AgentConfig, nursery: trio.Nursery,
                 *, task_status: trio.TaskStatus[trio.Process]) -> None:
    """Start one agent process and report it once it printed its ready line."""
    assert config.path is not None
    process = await nursery.start(functools.partial(
        trio.run_process, _semper("agent", "run", str(config.path)),
        stdout=subprocess.PIPE, check=False))
    assert process.stdout is not None
    buffer = b""
    with trio.fail_after(READY_TIMEOUT):
        while b"\n" not in buffer:
            chunk = await process.stdout.receive_some(4096)
            if not chunk:
                raise RuntimeError(f"agent {config.id} exited before it was ready")
            buffer += chunk
    line = buffer.split(b"\n", 1)[0].decode()
    if not line.startswith(f"ready {config.id} "):
        raise RuntimeError(f"agent {config.id} printed {line!r} instead of its ready line")
    task_status.started(process)


async def _ping(config: AgentConfig, peer: str, limiter: trio.CapacityLimiter,
                result: DemoResult) -> None:
    assert config.path is not None
    async with limiter:
        with trio.move_on_after(PING_TIMEOUT):
            done = await trio.run_process(
                _semper("ping", "--config", str(config.path), "--json", peer),
                capture_stdout=True, capture_stderr=True, check=False)
            if done.returncode == 0:
                result.pings[(config.id, peer)] = {"ok": True, **json.loads(done.stdout)}
            else:
                result.pings[(config.id, peer)] = {
                    "ok": False, "error": done.stderr.decode().strip().splitlines()[-1:]}
            return
    result.pings[(config.id, peer)] = {"ok": False, "error": ["timed out"]}


async def run_demo(folder: Path | None = None) -> DemoResult:
    """Init a market, run every agent, ping every pair, stop them all with SIGTERM."""
    with tempfile.TemporaryDirectory(prefix="semper-demo-") as tmp:
        market = (folder or Path(tmp)) / "market"
        configs = init_market(market)
        result = DemoResult(agents=[c.id for c in configs])
        async with trio.open_nursery() as nursery:
            processes = {}
            for config in configs:
                processes[config.id] = await nursery.start(_start, config, nursery)
            limiter = trio.CapacityLimiter(4)
            async with trio.open_nursery() as pings:
                for config in configs:
                    for peer in config.peers:
                        pings.start_soon(_ping, config, peer, limiter, result)
            for process in processes.values():
                process.send_signal(signal.SIGTERM)
            with trio.move_on_after(STOP_TIMEOUT):
                for agent_id, process in processes.items():
                    result.exit_codes[agent_id] = await process.wait()
            for agent_id, process in processes.items():
                if process.returncode is None:
                    process.kill()
                    result.exit_codes[agent_id] = None
        return result
