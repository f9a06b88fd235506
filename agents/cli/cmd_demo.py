"""``semper demo``: the whole local market, one process per agent."""

from __future__ import annotations

import click
import trio
from rich.console import Console
from rich.table import Table

from .._demo import DemoResult, run_demo


@click.command("demo")
def command() -> int:
    """Run a local market: start every agent, ping every pair, stop them cleanly."""
    console = Console()
    with console.status("starting five agents and pinging every pair..."):
        result = trio.run(run_demo)
    console.print(_table(result))
    for (source, target), ping in sorted(result.pings.items()):
        if not ping["ok"]:
            console.print(f"[red]{source} -> {target} failed:[/red] {' '.join(ping['error'])}")
    stops = ", ".join(f"{agent} {code if code is not None else 'killed'}"
                      for agent, code in result.exit_codes.items())
    console.print(f"agents stopped with SIGTERM, exit codes: {stops}")
    if result.ok:
        console.print(f"[green]ok[/green]: {len(result.pings)} channels opened over mutually "
                      "authenticated TLS 1.3, every agent exited 0")
        return 0
    console.print("[red]demo failed[/red]")
    return 1


def _table(result: DemoResult) -> Table:
    table = Table(title="who reached whom: round trip of one request (ms)",
                  title_justify="left")
    table.add_column("from \\ to")
    for agent in result.agents:
        table.add_column(agent, justify="right")
    for source in result.agents:
        cells = []
        for target in result.agents:
            ping = result.pings.get((source, target))
            if source == target:
                cells.append("-")
            elif ping is None or not ping["ok"]:
                cells.append("[red]failed[/red]")
            else:
                cells.append(f"{ping['rtt_ms']:.2f}")
        table.add_row(source, *cells)
    return table
