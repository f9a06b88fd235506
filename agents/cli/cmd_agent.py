"""``semper agent run CONFIG``: one long-running agent process."""

from __future__ import annotations

import signal
from pathlib import Path

import click
import trio

from .._agent import Agent
from ._common import load_config, passphrase_option


@click.group("agent")
def command() -> None:
    """Run agents."""


@command.command("run")
@click.argument("config_path", metavar="CONFIG", type=click.Path(dir_okay=False, path_type=Path))
@passphrase_option
def run(config_path: Path, passphrase_file: Path | None) -> None:
    """Run the agent of CONFIG until SIGINT or SIGTERM.

    Prints `ready <id> <host:port>` once it listens.
    """
    config, passphrase = load_config(config_path, passphrase_file)
    agent = Agent(config, passphrase=passphrase)
    trio.run(_run, agent)


async def _run(agent: Agent) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            host, port = await nursery.start(agent.run)
            click.echo(f"ready {agent.id} {host}:{port}")
            click.get_text_stream("stdout").flush()
            async for _ in signals:
                break
            # Say bye first: cancelling alone would cancel the channels' writers too.
            with trio.move_on_after(agent.channel_config.close_timeout + 1):
                await agent.close_channels()
            nursery.cancel_scope.cancel()
