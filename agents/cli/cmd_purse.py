"""``semper purse list``: the buyer's PayWord chains, read from its own database (no
channel is opened; ``semper buy --pay purse`` opens and spends them)."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from semper.agents.cli._common import config_option
from semper.agents.components import _purse
from semper.agents.runtime._config import AgentConfig, ConfigError
from semper.agents.runtime._roles import load_role
from semper.agents.runtime._storage import Database
from semper.services import Amount


@click.group("purse")
def command() -> None:
    """The buyer's purse: PayWord chains reserved at its bank."""


@command.command("list")
@config_option
@click.option("--json", "as_json", is_flag=True,
              help='Print a JSON list of {"chain", "seller", "reserved", "spent", "redeemed", '
                   '"state"}.')
def list_chains(config_path: Path, as_json: bool) -> None:
    """Every chain, newest first: its seller, what the bank reserved, what was spent
    (paywords revealed) and redeemed (what the seller was paid), and its state
    (reserving, reserved, redeemed, released)."""
    config = AgentConfig.load(config_path)
    if _purse.Purse not in load_role(config.role).components:
        raise ConfigError(f"{config_path} is the config of a {config.role}, which keeps no "
                          "purse: list it with a buyer's config")
    database = Database.open_sync(config.data_dir / "agent.sqlite", _purse.MIGRATIONS)
    try:
        chains = [record.to_json() for record in database.read_sync(_purse.read_chains)]
    finally:
        database.close()
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
    Console().print(table)
