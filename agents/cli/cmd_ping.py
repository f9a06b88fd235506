"""``semper ping --config CONFIG PEER``."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import click
import trio
from rich.table import Table

from semper.agents.cli._common import AGENT_ID, config_option, load_config, passphrase_option
from semper.agents.cli._text import console
from semper.agents.runtime._agent import Agent

log = logging.getLogger("semper.cli")


class PingMismatch(Exception):
    code = "agent.ping_mismatch"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@click.command("ping")
@config_option
@click.argument("peer", type=AGENT_ID)
@passphrase_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def command(config_path: Path, peer: str, passphrase_file: Path | None, as_json: bool) -> None:
    """Open a channel to PEER, exchange hello, and time one request round trip."""
    config, passphrase = load_config(config_path, passphrase_file)
    agent = Agent(config, passphrase=passphrase)
    result = trio.run(ping, agent, peer)
    if as_json:
        click.echo(json.dumps(result))
        return
    table = Table(show_header=False, title=f"{config.id} -> {peer}", title_justify="left")
    table.add_row("peer", f"{result['peer']} at {result['address']}")
    table.add_row("role", result["role"])
    table.add_row("services", ", ".join(
        f"{name} v{info['version']}" + (f" ({', '.join(info['modules'])})"
                                         if info["modules"] else "")
        for name, info in result["services"].items()) or "none")
    table.add_row("connect", f"{result['connect_ms']:.2f} ms (TCP, TLS 1.3, hello)")
    table.add_row("round trip", f"{result['rtt_ms']:.3f} ms")
    console().print(table)


async def ping(agent: Agent, peer: str) -> dict[str, Any]:
    """Connect, then one sys.ping round trip; returns what the command prints."""
    started = time.perf_counter()
    async with agent.connect(peer) as channel:
        connected = time.perf_counter()
        nonce = os.urandom(16)
        answer = await channel.request("sys", "ping", nonce)
        rtt = time.perf_counter() - connected
        log.debug("request sys.ping to %s: answered in %.3f ms", peer, rtt * 1000)
        if not isinstance(answer, dict) or answer.get("echo") != nonce:
            raise PingMismatch(f"{peer} answered the ping with something else")
        hello = channel.their_hello
        host, port = await agent.peer_address(peer)  # learned while connecting
        return {
            "peer": hello.agent,
            "address": f"{host}:{port}",
            "role": hello.role,
            "services": {name: info.to_wire() for name, info in hello.services.items()},
            "connect_ms": round((connected - started) * 1000, 3),
            "rtt_ms": round(rtt * 1000, 3),
        }
