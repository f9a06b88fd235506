"""``semper contract approve|sign|show|export``: contract signing with a notary
(docs/protocol.md 10.2, 10.6).

Each acts as the agent of ``--config`` for the length of the command (as ``buy``
does): ``sign`` runs the exchange as the originator (the responder's agent must
run); ``show`` drives an exchange still in flight to its fair end first (as a
restarted party does: abort, or resolve with the notary); ``approve`` records the
responder's consent. ``--json`` keys are read by scripts: ``contract``, ``state``
(``signed`` | ``aborted``), ``resolved_by`` (``exchange`` | ``notary``).
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
from semper.agents.components import _archive
from semper.agents.components._contracts import Contracts, ContractView
from semper.agents.runtime._agent import Agent
from semper.agents.runtime._files import write_file
from semper.services.archive import collect_bundle
from semper.services.certificates import load_certificate
from semper.services.fairexchange._bodies import MAX_TEXT

__all__ = ["command"]

_FILE = click.Path(dir_okay=False, path_type=Path)


def _read_text(path: Path) -> bytes:
    try:
        with path.open("rb") as f:
            text = f.read(MAX_TEXT + 1)
    except OSError as exc:
        raise CliError("agent.bad_file", f"cannot read {path}: {exc.strerror or exc}") from None
    if len(text) > MAX_TEXT:
        raise CliError("fairexchange.bad_body",
                       f"{path} is longer than a contract text may be ({MAX_TEXT} bytes)")
    return text


def _agent(config_path: Path, passphrase_file: Path | None) -> Agent:
    config, passphrase = load_config(config_path, passphrase_file)
    return Agent(config, passphrase=passphrase)


def _print(view: ContractView, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(view.to_json()))
        return
    click.echo(view.state)
    click.echo(f"contract {view.exchange.hex()}: {view.role}, with {view.peer}, notary "
               f"{view.notary}" + (f", resolved by the {view.resolved_by}"
                                   if view.resolved_by else ""))


@click.group("contract")
def command() -> None:
    """Sign a contract with another agent, fairly, with the market's notary.

    \b
    `semper contract approve --config R.toml --from O_ID --text FILE`
    `semper contract sign --config O.toml --with R_ID --text FILE [--notary ID] [--json]`
    `semper contract show --config X.toml CONTRACT [--json]`
    `semper contract export --config X.toml CONTRACT -o FILE`
    """


@command.command("approve")
@config_option
@click.option("--from", "originator", required=True, type=AGENT_ID, metavar="O_ID",
              help="The agent that may ask us to sign the text.")
@click.option("--text", "text_path", required=True, type=_FILE, metavar="FILE",
              help="The contract text.")
@passphrase_option
def approve(config_path: Path, originator: str, text_path: Path,
            passphrase_file: Path | None) -> None:
    """Consent beforehand to sign FILE's text with --from (as the responder)."""
    text = _read_text(text_path)
    agent = _agent(config_path, passphrase_file)

    async def run() -> bytes:
        async with agent.session():
            return await agent.component(Contracts).approve(originator, text)

    digest = trio.run(run)
    click.echo(f"approved: {originator} may ask {agent.id} to sign {text_path} "
               f"(sha256 {digest.hex()})")


@command.command("sign")
@config_option
@click.option("--with", "responder", required=True, type=AGENT_ID, metavar="R_ID",
              help="The responder (its agent must run and have approved the text).")
@click.option("--text", "text_path", required=True, type=_FILE, metavar="FILE",
              help="The contract text.")
@click.option("--notary", default=None, type=AGENT_ID, metavar="ID",
              help="The notary (default: [fairexchange] notary of the config).")
@passphrase_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def sign(config_path: Path, responder: str, text_path: Path, notary: str | None,
         passphrase_file: Path | None, as_json: bool) -> None:
    """Sign FILE's text with --with; exit 0 at a fair end (signed or aborted)."""
    text = _read_text(text_path)
    agent = _agent(config_path, passphrase_file)
    if responder == agent.id:
        raise CodedBadParameter("cli.usage", "an agent cannot sign a contract with itself",
                                None, None)

    async def run() -> ContractView:
        async with agent.session():
            return await agent.component(Contracts).sign(responder, text, notary=notary)

    _print(trio.run(run), as_json)


@command.command("show")
@config_option
@click.argument("contract", type=ExchangeId("contract", "semper contract sign"))
@passphrase_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def show(config_path: Path, contract: bytes, passphrase_file: Path | None,
         as_json: bool) -> None:
    """Show CONTRACT as this agent holds it, driving it to a fair end if in flight."""
    agent = _agent(config_path, passphrase_file)

    async def run() -> ContractView:
        async with agent.session():
            contracts = agent.component(Contracts)
            view = await contracts.view(contract)
            if view.state == "pending":
                view = await contracts.resume(contract)
            return view

    _print(trio.run(run), as_json)


@command.command("export")
@config_option
@click.argument("contract", type=ExchangeId("contract", "semper contract sign"))
@click.option("-o", "--out", "out", required=True, type=_FILE, help="The bundle file to write.")
@passphrase_option
def export(config_path: Path, contract: bytes, out: Path,
           passphrase_file: Path | None) -> None:
    """Write CONTRACT's evidence bundle (m1, m2, requests and the notary's decision,
    the signers' certificates, the CRL), as ``semper archive export`` does."""
    from semper.agents.cli.cmd_archive import _local_crls, _number

    agent = _agent(config_path, passphrase_file)
    name = contract.hex()

    async def run() -> tuple[list[Any], list[Any]]:
        async with agent.session():
            await agent.component(Contracts).view(contract)  # UnknownContract if none
            database = agent.database
            records = await database.read(lambda c: _archive.bundle_records(c, name))
            certificates = await database.read(_archive.read_certificates)
            return records, certificates

    records, certificates = trio.run(run)
    config = agent.config
    root = load_certificate(config.ca_root.read_bytes())
    crl = max(_local_crls(config), key=lambda c: (_number(c), c.last_update_utc))
    bundle = collect_bundle(records, transaction=name, certificates=certificates, crl=crl,
                            root=root)
    try:
        write_file(out, bundle.to_bytes())
    except OSError as exc:
        raise CliError("agent.cannot_write", f"cannot write {out}: {exc.strerror or exc}"
                       ) from None
    click.echo(f"wrote {counted(len(bundle.records), 'statement')} of contract {name} to {out}")

