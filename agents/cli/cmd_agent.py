"""``semper agent run CONFIG``: one long-running agent process;
``semper agent enroll --token T --data-dir D``: join a market with a token."""

from __future__ import annotations

import errno
import signal
import socket
from pathlib import Path
from typing import ClassVar

import click
import trio

from semper.agents.cli._common import load_config, passphrase_option, read_passphrase
from semper.agents.operator._enroll import enroll
from semper.agents.runtime._agent import Agent
from semper.agents.runtime._config import AgentConfig, parse_address
from semper.services.certificates import EnrollmentToken


class CannotListen(Exception):
    """An address the agent must listen on cannot be bound; ``address`` names it."""

    code: ClassVar[str] = "agent.cannot_listen"

    def __init__(self, message: str, address: str) -> None:
        super().__init__(message)
        self.message = message
        self.address = address


class AddressInUse(CannotListen):
    code: ClassVar[str] = "agent.address_in_use"


#: bind() failures that mean "this address", not "this machine is broken".
_BIND_ERRORS = (errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES)


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
    try:
        trio.run(_run, agent)
    except BaseException as exc:
        refused = _bind_failure(exc, config)
        if refused is None:
            raise
        raise refused from exc


def _leaf(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def _bind_failure(exc: BaseException, config: AgentConfig) -> CannotListen | None:
    """The bind error behind ``exc``, naming the address: the OS error does not say
    which of the agent's addresses (channels, the CA's enrollment) failed, so each
    is tried again here, and the first that cannot be bound is named."""
    leaf = _leaf(exc)
    if not isinstance(leaf, OSError) or leaf.errno not in _BIND_ERRORS:
        return None
    addresses = [("listen", config.listen)]
    if config.ca is not None:
        addresses.append(("[ca] enroll_listen", config.ca.enroll_listen))
    for key, address in addresses:
        failed = _try_bind(address)
        if failed is None:
            continue
        if failed.errno == errno.EADDRINUSE:
            return AddressInUse(f"{address} ({key} in {config.path}) is already in use: "
                                "is this agent already running?", address)
        return CannotListen(f"cannot listen on {address} ({key} in {config.path}): "
                            f"{failed.strerror}", address)
    return None


def _try_bind(address: str) -> OSError | None:
    host, port = parse_address(address)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        return exc
    for family, kind, proto, _, where in infos:
        with socket.socket(family, kind, proto) as probe:
            if hasattr(socket, "SO_REUSEADDR"):  # as trio's listeners set it
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(where)
            except OSError as exc:
                return exc
    return None


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
    """Join a market: make a key, redeem the --token at the CA, and write a ready
    agent.toml (and key, certificate, root, CRL) into --data-dir.

    The CA is pinned by the certificate fingerprint inside the token. With
    --passphrase-file the key is encrypted and agent.toml names that file. A
    seller's folder gets an empty, commented catalogue.toml to stock; agents that
    pay or are paid get a commented `bank = ...` line in [payment].
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
    if config.catalogue is not None:
        click.echo(f"stock it:  edit {config.catalogue} (one [[offer]] per item; it offers "
                   "nothing until then)")
    if identity.role not in ("ca", "bank"):
        click.echo(f"its bank:  set bank in [payment] of {config.path}; the bank's operator "
                   f"opens the account (semper bank open --config BANK/agent.toml "
                   f"{identity.agent_id} EUR)")
    click.echo(f"start it:  semper agent run {config.path}")
