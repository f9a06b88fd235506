"""Resource bounds against hostile peers, measured on a real agent process.

Each scenario starts ``semper agent run`` (the seller of a fresh market) as its own
process and attacks it from this one over loopback, reading the agent's resident
memory from /proc. The baseline of every figure is the same agent, measured in the
same run just before the attack:

* never_reads  - a peer with a valid certificate pipelines ``sys.ping`` requests
  (1 KiB bodies, echoed) and never reads an answer. Reports the agent's memory
  growth against its ``write_high_water`` queue bound, and when it closed the channel
  against its write deadline (``[timeouts] write``).
* idle_unauth  - N TCP connections that never start TLS (default 2,000). Reports the
  memory growth while they are open and after they close, and how long pings from a
  well-behaved peer take meanwhile against the same pings before the attack.
* fd_limit     - the agent runs with an open-file limit of 1,024 (and no cap on
  unauthenticated connections, the worst case), one established channel, then 1,100
  idle connections; the CA revokes someone, and the agent must apply the new CRL,
  stay alive and keep answering on the established channel.

    python bench/hardening.py [--json] [--quick]

``--quick`` uses smaller numbers (the test suite runs it); ``--json`` prints one
object per scenario under its name.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from semper.agents.operator._market import init_market, revoke_agent
from semper.agents.runtime._config import AgentConfig, Timeouts
from semper.agents.runtime._files import write_file
from semper.agents.runtime._identity import Credentials, peer_verifier
from semper.transport import (
    ChannelClosed,
    ChannelConfig,
    ServiceRegistry,
    TlsContexts,
    encode_frame,
    make_hello,
    open_channel,
)

AGENT = "seller"
CLIENT = "buyer"
WRITE_TIMEOUT = 3.0


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def configure(market: Path, **timeouts: float) -> Path:
    path = market / AGENT / "agent.toml"
    config = AgentConfig.load(path)
    config = dataclasses.replace(config, timeouts=Timeouts(**timeouts))
    write_file(path, config.to_toml(base=path.parent).encode())
    return path


def start_agent(config: Path, *, nofile: int | None = None) -> subprocess.Popen:
    def limit() -> None:
        if nofile is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    # The log goes to a file: a pipe nobody reads would stall the agent once full.
    log = config.parent / "bench.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "semper.agents.cli", "-v", "agent", "run", str(config)],
            stdout=subprocess.PIPE, stderr=sink, preexec_fn=limit)
    line = process.stdout.readline()  # type: ignore[union-attr]
    if not line.startswith(b"ready "):
        process.kill()
        raise SystemExit(f"the agent did not start: {line!r}\n{log.read_text()}")
    process.log = log  # type: ignore[attr-defined]
    return process


def stop(process: subprocess.Popen) -> str:
    process.terminate()
    try:
        process.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
    return process.log.read_text(errors="replace")  # type: ignore[attr-defined]


class Client:
    """The buyer's credentials, to open channels and raw TLS connections."""

    def __init__(self, market: Path, address: tuple[str, int]) -> None:
        config = AgentConfig.load(market / CLIENT / "agent.toml")
        credentials = Credentials.load(cert=config.cert, key=config.key, root=config.ca_root,
                                       crl=config.crl)
        self.tls = TlsContexts(credentials.tls_config())
        self.verify = peer_verifier(credentials.root, lambda: credentials.crl)
        self.address = address
        self.hello = make_hello(CLIENT, "buyer", ServiceRegistry(), ChannelConfig())

    async def ping_ms(self) -> float:
        """One fresh channel and one ping, as ``semper ping`` does."""
        started = time.perf_counter()
        with trio.fail_after(30):
            async with open_channel(*self.address, tls=self.tls, verify_peer=self.verify,
                                    expected_id=AGENT, hello=self.hello) as channel:
                await channel.request("sys", "ping", b"x")
        return (time.perf_counter() - started) * 1000

    async def raw(self) -> trio.SSLStream:
        tcp = await trio.open_tcp_stream(*self.address)
        stream = trio.SSLStream(tcp, self.tls.client, server_side=False)
        await stream.do_handshake()
        await stream.send_all(encode_frame(self.hello.to_wire()))
        return stream


def address_of(config: Path) -> tuple[str, int]:
    host, port = AgentConfig.load(config).listen_address
    return host, port


Attack = Callable[[subprocess.Popen, Client], Awaitable[dict[str, Any]]]


def against_agent(config: Path, attack: Attack, *, nofile: int | None = None
                  ) -> tuple[dict[str, Any], str]:
    """Start the agent of ``config``, run ``attack(agent, client)`` in trio, stop the
    agent; the attack's figures and the agent's log."""
    agent = start_agent(config, nofile=nofile)
    client = Client(config.parent.parent, address_of(config))
    try:
        report = trio.run(attack, agent, client)
    finally:
        log = stop(agent)
    if "--verbose" in sys.argv:
        print(log, file=sys.stderr)
    return report, log


# -- never_reads --------------------------------------------------------------------


def never_reads(market: Path, quick: bool) -> dict[str, Any]:
    body = b"p" * 1024

    async def attack(agent: subprocess.Popen, client: Client) -> dict[str, Any]:
        await client.ping_ms()
        base = rss_mib(agent.pid)
        peak = base
        stream = await client.raw()
        started = time.monotonic()
        sent = 0
        closed_at: float | None = None
        stuck_at: float | None = None

        async def sample() -> None:
            nonlocal peak
            while True:
                peak = max(peak, rss_mib(agent.pid))
                await trio.sleep(0.05)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(sample)
            limit = 20.0 if quick else 60.0
            with trio.move_on_after(limit):
                try:
                    rid = 0
                    while True:
                        batch = []
                        for _ in range(64):
                            rid += 1
                            batch.append(encode_frame({"type": "req", "id": rid,
                                                       "service": "sys", "op": "ping",
                                                       "body": body}))
                        before = time.monotonic()
                        await stream.send_all(b"".join(batch))
                        sent += 64
                        if time.monotonic() - before > 0.5 and stuck_at is None:
                            stuck_at = before  # the agent stopped reading us
                except trio.BrokenResourceError:
                    closed_at = time.monotonic()
            nursery.cancel_scope.cancel()
        await trio.aclose_forcefully(stream)
        after_ping = await client.ping_ms()
        return dict(
            requests_sent=sent,
            rss_base_mib=round(base, 1), rss_peak_mib=round(peak, 1),
            rss_increase_mib=round(peak - base, 1),
            queue_bound_mib=ChannelConfig().write_high_water / 2**20,
            write_timeout_s=WRITE_TIMEOUT,
            closed=closed_at is not None,
            closed_after_s=round(closed_at - started, 2) if closed_at else None,
            closed_after_stuck_s=(round(closed_at - stuck_at, 2)
                                  if closed_at and stuck_at else None),
            ping_after_ms=round(after_ping, 1),
            agent_alive=agent.poll() is None,
        )

    return against_agent(configure(market, write=WRITE_TIMEOUT), attack)[0]


# -- idle_unauth ---------------------------------------------------------------------


def idle_unauth(market: Path, count: int) -> dict[str, Any]:
    async def attack(agent: subprocess.Popen, client: Client) -> dict[str, Any]:
        before = [await client.ping_ms() for _ in range(3)]
        base = rss_mib(agent.pid)
        idle = []
        for _ in range(count):
            idle.append(await trio.open_tcp_stream(*client.address))
        await trio.sleep(1.0)  # let the agent accept them all
        during = [await client.ping_ms() for _ in range(5)]
        held = rss_mib(agent.pid)
        for stream in idle:
            await trio.aclose_forcefully(stream)
        await trio.sleep(1.0)
        released = rss_mib(agent.pid)
        return dict(
            connections=count,
            rss_base_mib=round(base, 1), rss_open_mib=round(held, 1),
            rss_increase_mib=round(held - base, 1),
            rss_after_close_mib=round(released, 1),
            ping_before_ms=round(max(before), 1), ping_during_max_ms=round(max(during), 1),
            ping_ratio=round(max(during) / max(before), 2),
            agent_alive=agent.poll() is None,
        )

    return against_agent(configure(market), attack)[0]


# -- fd_limit ----------------------------------------------------------------------------


def fd_limit(market: Path, count: int) -> dict[str, Any]:
    async def attack(agent: subprocess.Popen, client: Client) -> dict[str, Any]:
        async with open_channel(*client.address, tls=client.tls, verify_peer=client.verify,
                                expected_id=AGENT, hello=client.hello) as channel:
            await channel.request("sys", "ping", b"before")
            idle = []
            refused = 0
            for _ in range(count):
                try:
                    idle.append(await trio.open_tcp_stream(*client.address))
                except OSError:
                    refused += 1
            await trio.sleep(1.0)
            revoke_agent(market, "notary")  # CRL number 2, as `semper ca revoke` writes it
            await trio.sleep(3.0)  # two refreshes of the agent
            started = time.perf_counter()
            try:
                with trio.fail_after(10):
                    pong = await channel.request("sys", "ping", b"after")
                established_ok = pong["echo"] == b"after"
            except (ChannelClosed, trio.TooSlowError):
                established_ok = False
            established_ms = (time.perf_counter() - started) * 1000
            for stream in idle:
                await trio.aclose_forcefully(stream)
        fresh_ms = await client.ping_ms()
        return dict(
            open_file_limit=1024, connections=count, refused_by_os=refused,
            agent_alive=agent.poll() is None,
            established_channel_ok=established_ok,
            established_ping_ms=round(established_ms, 1),
            fresh_ping_after_ms=round(fresh_ms, 1),
        )

    config = configure(market, max_unauthenticated=100_000, crl_refresh=1.0)
    report, log = against_agent(config, attack, nofile=1024)
    report["crl_applied"] = "applied CRL number 2" in log
    report["accept_backed_off"] = "backing off" in log
    report["tracebacks_in_log"] = log.count("Traceback")
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--quick", action="store_true", help="smaller numbers")
    parser.add_argument("--verbose", action="store_true", help="print the agent log")
    parser.add_argument("--only", choices=["never_reads", "idle_unauth", "fd_limit"])
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 8192)), hard))
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        scenarios = {
            "never_reads": lambda m: never_reads(m, args.quick),
            "idle_unauth": lambda m: idle_unauth(m, 300 if args.quick else 2000),
            "fd_limit": lambda m: fd_limit(m, 1100),
        }
        for name, scenario in scenarios.items():
            if args.only not in (None, name):
                continue
            market = Path(tmp) / name
            init_market(market)
            results[name] = scenario(market)
    if args.json:
        print(json.dumps(results))
        return
    for name, figures in results.items():
        print(name)
        for key, value in figures.items():
            print(f"  {key:24} {value}")


if __name__ == "__main__":
    main()
