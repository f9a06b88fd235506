"""``semper wallet``: what an agent holds (balances at its bank, ecash coins, cards,
recent purchases); ``semper wallet withdraw``: ecash coins from the bank account;
``semper wallet reclaim``: coins of payments that never settled, and coins near expiry.

``semper wallet --json`` is read by scripts: keep its keys (``agent``, ``bank``,
``balances``, ``recent``, ``purchases``, ``balance_unavailable``, ``coins``,
``cards``).
"""

from __future__ import annotations

import json
import re
import secrets
import sqlite3
from pathlib import Path
from typing import Any, ClassVar

import click
import trio
from rich.console import Console
from rich.table import Table

from semper.agents.cli._common import (
    CodedBadParameter,
    config_option,
    load_config,
    passphrase_option,
)
from semper.agents.cli._text import console as make_console
from semper.agents.cli.cmd_call import to_json
from semper.agents.components._cards import read_cards
from semper.agents.components._wallet import Wallet, read_coins
from semper.agents.runtime._agent import Agent
from semper.agents.runtime._config import ConfigError
from semper.services import Amount
from semper.services.money import BadAmount
from semper.services.statements import canonical_decode

__all__ = ["command"]

_DECIMAL = re.compile(r"([0-9]{1,19})\.([0-9]+)\Z")


class WalletAmount(click.ParamType):
    """An amount to withdraw: ``EUR:20.00`` (a decimal point: units and the
    currency's minor digits) or ``EUR:2000`` (minor units, as every other command
    takes), above zero; ``money.bad_amount`` / ``money.out_of_range`` otherwise."""

    name: ClassVar[str] = "amount"  # type: ignore[misc]

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> Amount:
        if isinstance(value, Amount):
            return value
        text = str(value)
        try:
            currency, _, units = text.partition(":")
            decimal = _DECIMAL.match(units)
            if decimal is not None:
                # The currency's minor digits, as an amount of it is shown ("EUR 0.00").
                digits = len(str(Amount(currency, 0)).partition(".")[2])
                whole, frac = decimal.groups()
                if len(frac) != digits:
                    shape = f"{whole}.{'0' * digits}" if digits else whole
                    raise BadAmount(f"{currency} amounts have {digits} digits after the "
                                    f"point (as {currency}:{shape}), not {text!r:.40}")
                amount = Amount.parse(f"{currency}:{int(whole) * 10**digits + int(frac)}")
            else:
                amount = Amount.parse(text)
            if amount.minor_units <= 0:
                raise BadAmount(f"a withdrawal is of more than nothing, got {text!r:.40}")
        except BadAmount as exc:
            raise CodedBadParameter(exc.code, exc.message, ctx, param) from None
        return amount


def _agent(config_path: Path, passphrase_file: Path | None) -> Agent:
    config, passphrase = load_config(config_path, passphrase_file)
    return Agent(config, passphrase=passphrase)


@click.group("wallet", invoke_without_command=True)
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
              help="The agent's agent.toml.")
@passphrase_option
@click.option("--json", "as_json", is_flag=True,
              help="Print {agent, bank, balances, recent, purchases, balance_unavailable, "
                   "coins, cards}.")
@click.pass_context
def command(ctx: click.Context, config_path: Path | None, passphrase_file: Path | None,
            as_json: bool) -> None:
    """Balances at our bank, its latest entries, our ecash coins and cards, and our
    recent purchases.

    The coins, cards and purchases are local: when the bank cannot be asked, they are
    still shown, with the reason the balance is unavailable (exit 0).
    """
    if ctx.invoked_subcommand is not None:
        return
    if config_path is None:
        raise click.UsageError("Missing option '--config'.", ctx)
    agent = _agent(config_path, passphrase_file)
    bank = agent.config.payment.bank or "bank"

    async def run() -> tuple[dict[str, Any] | None, dict[str, str] | None, Any]:
        async with agent.session():
            if Wallet in agent.components:  # a crash left a withdrawal half done
                await agent.component(Wallet).finish_pending()
            local = await agent.database.read(_local)
            try:
                account = await agent.request(bank, "bank", "account", {})
            except Exception as exc:
                code = getattr(exc, "code", None)
                if not isinstance(code, str):
                    raise
                message = getattr(exc, "message", None)
                return None, {"code": code, "message": message if isinstance(message, str)
                              else str(exc)}, local
        return account, None, local

    account, unavailable, (purchases, coins, cards) = trio.run(run)
    if as_json:
        click.echo(json.dumps({"agent": agent.id, "bank": bank,
                               "balances": None if account is None else account["balances"],
                               "recent": None if account is None else account["recent"],
                               "purchases": purchases,
                               "balance_unavailable": unavailable,
                               "coins": coins, "cards": cards}))
        return
    console = make_console()
    if account is None:
        assert unavailable is not None
        console.print(f"{agent.id} at {bank}: balance unavailable "
                      f"({unavailable['code']}: {unavailable['message']})")
    else:
        _print_account(console, agent.id, bank, account)
    _print_holdings(console, coins, cards)
    if purchases:
        table = Table(title="purchases", title_justify="left")
        for column in ("key", "seller", "sku", "state"):
            table.add_column(column)
        for p in purchases:
            table.add_row(p["key"], p["seller"], p["sku"], p["state"])
        console.print(table)


@command.command("withdraw")
@config_option
@click.argument("amount", metavar="AMOUNT", type=WalletAmount())
@click.option("--idempotency-key", "key", default=None,
              help="Repeat a withdrawal safely: the same key withdraws once. Without it a "
                   "fresh key is made (a withdrawal interrupted is finished by the next use "
                   "of the wallet, whatever its key).")
@passphrase_option
@click.option("--json", "as_json", is_flag=True,
              help="Print {idempotency_key, withdrawn, coins}.")
def withdraw(config_path: Path, amount: Amount, key: str | None,
             passphrase_file: Path | None, as_json: bool) -> None:
    """Withdraw ecash coins worth exactly AMOUNT (EUR:20.00) from our account at our
    bank, without fee. The bank signs them blindly: it cannot tell them apart when
    they are spent."""
    config, passphrase = load_config(config_path, passphrase_file)
    agent = Agent(config, passphrase=passphrase)
    if Wallet not in agent.components:
        raise ConfigError(f"{config_path} is the config of a {config.role}, which keeps no "
                          "ecash wallet: withdraw with a buyer's config")
    if key is None:  # printed with the outcome: one interrupted needs no key to finish,
        key = f"withdraw-{secrets.token_hex(12)}"  # the wallet's next use finishes it

    async def run() -> dict[str, dict[str, int]]:
        async with agent.session():
            return await agent.component(Wallet).withdraw(amount, key)

    coins = trio.run(run)
    if as_json:
        click.echo(json.dumps({"idempotency_key": key, "withdrawn": amount.to_wire(),
                               "coins": coins}))
        return
    console = make_console()
    console.print(f"withdrew {amount} as ecash coins (idempotency key {key})")
    _print_holdings(console, coins, None)


@command.command("reclaim")
@config_option
@passphrase_option
@click.option("--json", "as_json", is_flag=True,
              help="Print {payments, refreshed, failed, coins}.")
def reclaim(config_path: Path, passphrase_file: Path | None, as_json: bool) -> None:
    """Take back the coins of payments that did not settle: bound longer than
    [components.wallet] reclaim_after_ms (1 hour), or at once when their purchase
    failed. Each comes back as new coins, or, when the seller deposited it, stays paid
    with the bank's evidence (a retry of the purchase pays nothing more). Also
    refreshes coins whose key stops being deposited within refresh_margin_ms (30
    days). The running wallet does this by itself every housekeeping_ms."""
    config, passphrase = load_config(config_path, passphrase_file)
    agent = Agent(config, passphrase=passphrase)
    if Wallet not in agent.components:
        raise ConfigError(f"{config_path} is the config of a {config.role}, which keeps no "
                          "ecash wallet: reclaim with a buyer's config")

    async def run() -> dict[str, Any]:
        async with agent.session():
            return await agent.component(Wallet).reclaim()

    report = trio.run(run)
    if as_json:  # the evidence is the bank's wire refusal: bytes as {"$hex": ...}
        click.echo(json.dumps(to_json(report)))
        return
    console = make_console()
    if report["payments"]:
        table = Table(title="payments reclaimed", title_justify="left")
        for column in ("key", "amount", "outcome"):
            table.add_column(column)
        outcomes = {"refreshed": "coins back (the seller never deposited them)",
                    "paid": "paid: the seller deposited them (evidence kept)",
                    "pending": "not finished (the bank did not answer): run again"}
        for p in report["payments"]:
            table.add_row(p["key"], _amount(p["amount"]), outcomes.get(p["state"], p["state"]))
        console.print(table)
    else:
        console.print("no payment to reclaim")
    console.print(f"{report['refreshed']} coins refreshed before their key expires")
    for line in report["failed"]:
        console.print(f"not done: {line}")
    _print_holdings(console, report["coins"], None)


def _local(c: sqlite3.Connection) -> tuple[list[dict[str, Any]], dict[str, dict[str, int]],
                                           list[dict[str, str]]]:
    """What the agent's own database holds: purchases, coins, cards (each empty when
    the role keeps none)."""
    return _purchases(c), _optional(c, read_coins, {}), _optional(c, read_cards, [])


def _optional(c: sqlite3.Connection, read: Any, empty: Any) -> Any:
    try:
        return read(c)
    except sqlite3.OperationalError:  # not this role's table
        return empty


def _print_holdings(console: Console, coins: dict[str, dict[str, int]],
                    cards: list[dict[str, str]] | None) -> None:
    if coins:
        table = Table(title="ecash coins", title_justify="left")
        for column, justify in (("denomination", "right"), ("count", "right"),
                                ("worth", "right")):
            table.add_column(column, justify=justify)  # type: ignore[arg-type]
        for currency, held in sorted(coins.items()):
            for value, count in sorted(held.items(), key=lambda kv: -int(kv[0])):
                table.add_row(str(Amount(currency, int(value))), str(count),
                              str(Amount(currency, int(value) * count)))
            total = sum(int(v) * n for v, n in held.items())
            table.add_row(f"{currency} in all", "", str(Amount(currency, total)))
        console.print(table)
    if cards:
        table = Table(title="cards", title_justify="left")
        table.add_column("number")
        table.add_column("expiry")
        for card in cards:
            table.add_row(card["number"], card["expiry"])
        console.print(table)


def _print_account(console: Console, agent_id: str, bank: str,
                   account: dict[str, Any]) -> None:
    table = Table(title=f"{agent_id} at {bank}", title_justify="left")
    table.add_column("currency")
    table.add_column("balance", justify="right")
    for currency, units in sorted(account["balances"].items()):
        table.add_row(currency, str(Amount(currency, units)))
    console.print(table)
    recent = Table(title="recent entries", title_justify="left")
    for column in ("entry", "kind", "amount"):
        recent.add_column(column)
    for entry in account["recent"]:
        recent.add_row(str(entry["entry"]), entry["kind"], _amount(entry["amount"]))
    console.print(recent)


def _amount(wire: dict[str, Any]) -> str:
    return str(Amount(wire["currency"], wire["minor_units"]))


def _purchases(c: sqlite3.Connection) -> list[dict[str, Any]]:
    try:
        rows = c.execute("SELECT key, seller, sku, module, state, payment FROM commerce_purchases"
                         " ORDER BY updated_ms DESC LIMIT 20").fetchall()
    except sqlite3.OperationalError:  # not a buyer's database
        return []
    out = []
    for key, seller, sku, module, state, payment in rows:
        amount = canonical_decode(payment)["amount"] if payment else None
        out.append({"key": key, "seller": seller, "sku": sku, "module": module, "state": state,
                    "amount": amount})
    return out
