"""``semper agent run CONFIG``: one long-running agent process;
``semper agent enroll --token T --data-dir D``: join a market with a token."""

from __future__ import annotations

import signal
from pathlib import Path

import click
import trio

from semper.services.certificates import EnrollmentToken

from .._agent import Agent
from .._enroll import enroll
from ._common import load_config, passphrase_option, read_passphrase


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


@command.command("enroll")
@click.option("--token", required=True, help="The token `semper ca invite` printed.")
@click.option("--data-dir", "folder", required=True,
              type=click.Path(file_okay=False, path_type=Path),
              help="A new (or empty) folder for the agent's key, certificate and config.")
@click.option("--listen", metavar="HOST:PORT",
              help="Where the agent will accept channels (default: a free 127.0.0.1 port).")
@click.option("--timeout", default=10.0, show_default=True, type=click.FloatRange(min=0.1),
              help="Seconds to wait for the CA.")
@passphrase_option
def enroll_command(token: str, folder: Path, listen: str | None, timeout: float,
                   passphrase_file: Path | None) -> None:
    """Join a market: make a key, redeem TOKEN at the CA, write a ready DIR/agent.toml.

    The CA is pinned by the certificate fingerprint inside the token. With
    --passphrase-file the key is encrypted and agent.toml names that file.
    """
    parsed = EnrollmentToken.parse(token)
    passphrase = read_passphrase(passphrase_file)
    config, enrolled = trio.run(lambda: enroll(
        parsed, folder, listen=listen, passphrase=passphrase, passphrase_file=passphrase_file,
        timeout=timeout))
    identity = enrolled.identity
    click.echo(f"enrolled {identity.agent_id} as {identity.role} at level "
               f"{identity.level.label} (certificate serial {identity.serial:x}, valid until "
               f"{identity.not_after:%Y-%m-%d}) with CA agent {enrolled.ca_id} at "
               f"{enrolled.ca_address}")
    click.echo(f"start it:  semper agent run {config.path}")
