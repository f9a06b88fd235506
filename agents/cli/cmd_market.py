"""``semper market init DIR``."""

from __future__ import annotations

from pathlib import Path

import click
from rich.table import Table

from semper.agents.cli._common import passphrase_option, read_passphrase
from semper.agents.cli._text import console
from semper.agents.operator._market import init_market


@click.group("market")
def command() -> None:
    """Create a local market (a folder holding its CA and its agents)."""


@command.command("init")
@click.argument("folder", type=click.Path(file_okay=False, path_type=Path))
@passphrase_option
def init(folder: Path, passphrase_file: Path | None) -> None:
    """Create a local market in FOLDER: root CA, CRL, and six agents ready to run."""
    configs = init_market(folder, passphrase=read_passphrase(passphrase_file))
    table = Table(title=f"market in {folder}", title_justify="left")
    for column in ("agent", "role", "listen", "config"):
        table.add_column(column)
    for config in configs:
        table.add_row(config.id, config.role, config.listen, str(config.path))
    console().print(table)
    click.echo(f"root certificate: {folder / 'ca' / 'root.pem'}")
    click.echo(f"start the CA first (the others publish their cards to it):  semper agent run "
               f"{folder / 'ca' / 'agent.toml'}")
    click.echo(f"then each other agent, e.g.:  semper agent run {folder / 'bank' / 'agent.toml'}")
