"""``semper mail send|inbox|read``: certified mail through the market's notary
(docs/protocol.md 10.4, 10.6).

Each acts as the agent of ``--config`` for the length of the command (as ``buy``
does): ``send`` runs the exchange as the sender (the receiver's agent must run) and
returns once the receipt is held or the exchange is closed; ``read`` writes a mail
received, recovering its key through the notary first when its deadline has passed.
``show`` carries an exchange still in flight on first (a sender killed half way).
``--json`` keys are read by scripts: ``send`` and ``show``: ``mail``, ``state``
(``delivered`` | ``recovered`` | ``failed`` for the sender), ``receipt`` (hex or
null); ``inbox``: a list of ``mail``, ``from``, ``state``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
import trio

from semper.agents.cli._common import (
    AGENT_ID,
    CliError,
    CodedBadParameter,
    ExchangeId,
    config_option,
    load_config,
    passphrase_option,
)
from semper.agents.cli._text import counted
from semper.agents.components._mail import MAX_MESSAGE, CertifiedMail, MailView
from semper.agents.runtime._agent import Agent
from semper.agents.runtime._files import write_file

__all__ = ["command"]

_FILE = click.Path(dir_okay=False, path_type=Path)


def _agent(config_path: Path, passphrase_file: Path | None) -> Agent:
    config, passphrase = load_config(config_path, passphrase_file)
    return Agent(config, passphrase=passphrase)


def _read_message(path: Path) -> bytes:
    try:
        with path.open("rb") as f:
            message = f.read(MAX_MESSAGE + 1)
    except OSError as exc:
        raise CliError("agent.bad_file", f"cannot read {path}: {exc.strerror or exc}") from None
    if len(message) > MAX_MESSAGE:
        raise CliError("fairexchange.bad_body",
                       f"{path} is longer than a certified mail may be ({MAX_MESSAGE} bytes)")
    return message


@click.group("mail")
def command() -> None:
    """Certified mail: a message for a signed receipt, fairly, with the market's notary.

    \b
    `semper mail send --config A.toml --to B_ID --file FILE [--json]`
    `semper mail inbox --config B.toml [--json]`
    `semper mail read --config B.toml MAIL -o FILE`
    `semper mail show --config X.toml MAIL [--json]`
    """


@command.command("send")
@config_option
@click.option("--to", "receiver", required=True, type=AGENT_ID,
              help="The receiver (its agent must run).")
@click.option("--file", "file_path", required=True, type=_FILE, help="The message.")
@click.option("--notary", default=None, type=AGENT_ID,
              help="The notary (default: [fairexchange] notary of the config).")
@passphrase_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def send(config_path: Path, receiver: str, file_path: Path, notary: str | None,
         passphrase_file: Path | None, as_json: bool) -> None:
    """Send the --file to --to as certified mail; exit 0 once the exchange ended (the
    receipt held: delivered or recovered; or closed without one: failed)."""
    message = _read_message(file_path)
    agent = _agent(config_path, passphrase_file)
    if receiver == agent.id:
        raise CodedBadParameter("cli.usage", "an agent cannot send certified mail to itself",
                                None, None)

    async def run() -> MailView:
        async with agent.session():
            return await agent.component(CertifiedMail).send(receiver, message, notary=notary)

    view = trio.run(run)
    if as_json:
        click.echo(json.dumps(view.to_json()))
        return
    click.echo(view.state)
    click.echo(f"mail {view.exchange.hex()} to {receiver}: "
               + (f"receipt {view.receipt.digest.hex()}" if view.receipt is not None
                  else "no receipt"))


@command.command("inbox")
@config_option
@passphrase_option
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
def inbox(config_path: Path, passphrase_file: Path | None, as_json: bool) -> None:
    """The mail this agent received: id, sender, state (read, recovered, waiting,
    recovering, void, declined)."""
    agent = _agent(config_path, passphrase_file)

    async def run() -> list[dict[str, Any]]:
        async with agent.session():
            return await agent.component(CertifiedMail).inbox()

    mails = trio.run(run)
    if as_json:
        click.echo(json.dumps(mails))
        return
    if not mails:
        click.echo("no certified mail")
    for mail in mails:
        click.echo(f"{mail['mail']}  from {mail['from']}  {mail['state']}")


@command.command("show")
@config_option
@click.argument("mail", type=ExchangeId("mail", "semper mail inbox"))
@passphrase_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def show(config_path: Path, mail: bytes, passphrase_file: Path | None, as_json: bool) -> None:
    """Show MAIL (sent or received) as this agent holds it, carrying an exchange still
    in flight on first, as a restarted agent does (a sender killed half way: deliver
    again, reveal, or close with the notary)."""
    agent = _agent(config_path, passphrase_file)

    async def run() -> MailView:
        async with agent.session():
            mails = agent.component(CertifiedMail)
            view = await mails.view(mail)
            return view if view.final else await mails.resume(mail)

    view = trio.run(run)
    if as_json:
        click.echo(json.dumps(view.to_json()))
        return
    click.echo(view.state)
    click.echo(f"mail {view.exchange.hex()}: {view.role}, "
               f"{'to' if view.role == 'sender' else 'from'} {view.peer}, "
               + (f"receipt {view.receipt.digest.hex()}" if view.receipt is not None
                  else "no receipt"))


@command.command("read")
@config_option
@click.argument("mail", type=ExchangeId("mail", "semper mail inbox"))
@click.option("-o", "--output", required=True, type=_FILE, help="The file to write it to.")
@passphrase_option
def read(config_path: Path, mail: bytes, output: Path, passphrase_file: Path | None) -> None:
    """Write MAIL (received) to a file, recovered through the notary if its deadline
    passed without the sender's key."""
    agent = _agent(config_path, passphrase_file)

    async def run() -> bytes:
        async with agent.session():
            return await agent.component(CertifiedMail).read(mail)

    plaintext = trio.run(run)
    try:
        write_file(output, plaintext)
    except OSError as exc:
        raise CliError("agent.cannot_write", f"cannot write {output}: {exc.strerror or exc}"
                       ) from None
    click.echo(f"wrote {counted(len(plaintext), 'byte')} of mail {mail.hex()} to {output}")
