"""``semper market init DIR`` and ``semper market policy DIR``."""

from __future__ import annotations

from pathlib import Path

import click
from rich.table import Table

from semper.agents.cli._common import CodedBadParameter, passphrase_option, read_passphrase
from semper.agents.cli._text import console
from semper.agents.operator._market import init_market, market_policy, set_market_policy


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


@command.command("policy")
@click.argument("folder", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("--forbid", "forbidden", multiple=True, metavar="MODULE",
              help="A payment module no agent may negotiate (repeat for more).")
@click.option("--allow", "allowed", multiple=True, metavar="MODULE",
              help="Allow only these modules (repeat; default: every module).")
@click.option("--require", "required", multiple=True, metavar="MODULE",
              help="A module every payee that has it takes from anyone (repeat).")
@click.option("--set", "change", is_flag=True,
              help="Sign a new policy from the options (an empty one allows all).")
@passphrase_option
def policy(folder: Path, forbidden: tuple[str, ...], allowed: tuple[str, ...],
           required: tuple[str, ...], change: bool, passphrase_file: Path | None) -> None:
    """Show the market's instrument policy, or with --set sign the next one with the
    root key; the CA agent hands it out with the CRL (protocol.md 8.9)."""
    if change:
        current = set_market_policy(folder, allowed=allowed or None, forbidden=forbidden,
                                    required=required,
                                    passphrase=read_passphrase(passphrase_file))
    else:
        if forbidden or allowed or required:
            raise CodedBadParameter("cli.usage", "--forbid, --allow and --require need --set",
                                    None, None)
        current = market_policy(folder)
    allowed_text = "any" if current.allowed is None else ", ".join(sorted(current.allowed))
    click.echo(f"market policy {current.serial}: allowed {allowed_text}; forbidden "
               f"{', '.join(sorted(current.forbidden)) or 'none'}; required "
               f"{', '.join(sorted(current.required)) or 'none'}")
