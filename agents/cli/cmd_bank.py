"""``semper bank mint|accounts``: the bank operator's commands, run beside the bank
agent on its own database (WAL lets both use it at once)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click
from rich.table import Table

from semper.agents.cli._common import AGENT_ID, AMOUNT, CodedBadParameter, config_option
from semper.agents.cli._text import console
from semper.agents.components import _bank, _ledger
from semper.agents.runtime._config import AgentConfig, ConfigError
from semper.agents.runtime._storage import Database
from semper.services import Amount


@click.group("bank")
def command() -> None:
    """The bank operator's commands (on the bank's own database)."""


def _open(config_path: Path) -> tuple[AgentConfig, Database]:
    config = AgentConfig.load(config_path)
    if config.role != "bank":
        raise ConfigError(f"{config_path} is the config of a {config.role}, not of a bank")
    return config, Database.open_sync(config.data_dir / "agent.sqlite", _bank.MIGRATIONS)


@command.command("mint")
@config_option
@click.argument("holder", type=AGENT_ID)
@click.argument("amount", metavar="AMOUNT", type=AMOUNT)
@click.pass_context
def mint(ctx: click.Context, config_path: Path, holder: str, amount: Amount) -> None:
    """Create AMOUNT in HOLDER's account (opened if need be), recorded in the journal.

    HOLDER is an agent id; AMOUNT is in minor units, e.g. EUR:2500 for EUR 25.00. The
    mint is refused (money.out_of_range) if any balance would leave signed 64-bit.
    """
    value = amount
    if value.minor_units <= 0:
        raise CodedBadParameter("money.bad_amount", "mint a positive amount", ctx,
                                next(p for p in mint.params if p.name == "amount"))
    _, database = _open(config_path)
    try:
        entry = database.transaction_sync(lambda c: _ledger.mint(
            c, holder, value, time_ms=time.time_ns() // 1_000_000, memo="operator mint"))
        now = database.read_sync(lambda c: _ledger.balance(c, holder, value.currency))
    finally:
        database.close()
    click.echo(f"minted {value} to {holder} (journal entry {entry}); balance {now}")


@command.command("accounts")
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def accounts(config_path: Path, as_json: bool) -> None:
    """Every account, the total per currency, and whether the books balance."""
    config, database = _open(config_path)
    try:
        rows = database.read_sync(lambda c: c.execute(
            "SELECT holder, currency, balance FROM ledger_accounts ORDER BY currency, holder"
        ).fetchall())
        database.read_sync(_ledger.check_books)  # raises naming the broken invariant
        minted = {cur: database.read_sync(lambda c, cur=cur: _ledger.minted_total(c, cur))
                  for cur in {r[1] for r in rows}}
    finally:
        database.close()
    customers = [r for r in rows if r[0] != _ledger.ISSUANCE]
    if as_json:
        click.echo(json.dumps({
            "accounts": [{"holder": h, "currency": c, "minor_units": b} for h, c, b in customers],
            "minted": minted, "balanced": True}))
        return
    table = Table(title=f"accounts at {config.id}", title_justify="left")
    for column, justify in (("holder", "left"), ("currency", "left"), ("balance", "right")):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for holder, currency, units in customers:
        table.add_row(holder, currency, str(Amount(currency, units)))
    console().print(table)
    for currency, units in sorted(minted.items()):
        click.echo(f"{currency}: {Amount(currency, units)} minted, all of it in customer "
                   "accounts; the books balance")


@command.command("open")
@config_option
@click.argument("holder", type=AGENT_ID)
@click.argument("currency", metavar="CCY")
def open_account(config_path: Path, holder: str, currency: str) -> None:
    """Open HOLDER's account in currency CCY (e.g. EUR), empty: what a newly enrolled
    buyer or seller needs before it can pay or be paid. Opening it again changes
    nothing."""
    if not (len(currency) == 3 and currency.isascii() and currency.isupper()):
        raise click.BadParameter("an ISO 4217 code such as EUR", param_hint="CCY")
    _, database = _open(config_path)
    try:
        account = database.transaction_sync(
            lambda c: _ledger.open_account(c, holder, currency))
    finally:
        database.close()
    click.echo(f"{holder} has a {currency} account at this bank (balance "
               f"{Amount(currency, account.balance)})")
