"""``semper purse list``: the buyer's PayWord chains (``semper buy --pay purse`` opens
and spends them), as its purse records them, brought up to date from the bank."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
import trio
from rich.table import Table

from semper.agents.cli._common import config_option, load_config, passphrase_option
from semper.agents.cli._text import console
from semper.agents.components import _purse
from semper.agents.runtime._agent import Agent
from semper.agents.runtime._config import ConfigError
from semper.agents.runtime._roles import load_role
from semper.services import Amount


@click.group("purse")
def command() -> None:
    """The buyer's purse: PayWord chains reserved at its bank."""


@command.command("list")
@config_option
@passphrase_option
@click.option("--json", "as_json", is_flag=True,
              help='Print a JSON list of {"chain", "seller", "reserved", "spent", "redeemed", '
                   '"state"}.')
@click.option("--offline", is_flag=True,
              help="Show the purse's own records without asking the bank.")
def list_chains(config_path: Path, passphrase_file: Path | None, as_json: bool,
                offline: bool) -> None:
    """Every chain, newest first: its seller, what the bank reserved, what was spent
    (paywords revealed) and redeemed (what the seller was paid), and its state
    (reserving, reserved, redeemed, released).

    The bank is asked what became of the chains not yet redeemed or released
    (bank.purse_status); when it cannot be, the purse's own records are shown."""
    config, passphrase = load_config(config_path, passphrase_file)
    if _purse.Purse not in load_role(config.role).components:
        raise ConfigError(f"{config_path} is the config of a {config.role}, which keeps no "
                          "purse: list it with a buyer's config")
    agent = Agent(config, passphrase=passphrase)

    async def run() -> list[dict[str, Any]]:
        async with agent.session():
            purse = agent.component(_purse.Purse)
            if not offline:
                await purse.refresh_open()
            return await purse.list()

    chains = trio.run(run)
    if as_json:
        click.echo(json.dumps(chains))
        return
    table = Table(title=f"purse of {config.id}", title_justify="left")
    for column, justify in (("chain", "left"), ("seller", "left"), ("reserved", "right"),
                            ("spent", "right"), ("redeemed", "right"), ("state", "left")):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for chain in chains:
        table.add_row(chain["chain"][:16], chain["seller"],
                      *(str(Amount(**chain[k])) for k in ("reserved", "spent", "redeemed")),
                      chain["state"])
    console().print(table)
