"""``semper catalogue``, ``semper buy``, ``semper refund``, ``semper goods``
(``semper wallet`` is cmd_wallet.py).

Each runs the agent of ``--config`` for the length of the command (its database and
archive, channels out, no listener), so it works whether or not that agent's own
process is running. The ``--json`` forms are read by scripts: keep their keys.
"""

from __future__ import annotations

import dataclasses
import json
import secrets
import sys
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import click
import trio
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn
from rich.table import Table

from semper.agents.cli._common import (
    AGENT_ID,
    AMOUNT,
    CodedBadParameter,
    config_option,
    load_config,
    passphrase_option,
)
from semper.agents.cli._text import console as make_console
from semper.agents.cli._text import counted, shown, styled
from semper.agents.components import _fair_buyer, _purchase
from semper.agents.components._delivery_buyer import StreamClient, StreamOutcome, StreamProgress
from semper.agents.components._escrow_keys import default_notary
from semper.agents.components._purchase import Shopper
from semper.agents.runtime._agent import Agent
from semper.agents.runtime._config import ConfigError
from semper.agents.runtime._files import write_file
from semper.services import Amount
from semper.services.payment import MODULES_GROUP

__all__ = ["buy", "catalogue", "goods", "refund"]


class UnknownPurchase(Exception):
    """``semper goods`` of a key this buyer has no purchase under."""

    code = "agent.unknown_purchase"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NoGoods(Exception):
    """A purchase that has not (yet) received its goods: nothing to write."""

    code = "agent.no_goods"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class CannotWrite(Exception):
    code = "agent.cannot_write"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _check_writable(output: Path) -> None:
    """Before paying: the goods must have somewhere to go."""
    if str(output) != "-" and not output.resolve().parent.is_dir():
        raise CannotWrite(f"cannot write {output}: no folder {output.parent}")


def _write_goods(output: Path, goods: bytes, *, after: str = "") -> None:
    """Write atomically (a failed write leaves no half file); ``-`` is stdout."""
    if str(output) == "-":
        sys.stdout.flush()
        sys.stdout.buffer.write(goods)
        sys.stdout.buffer.flush()
        return
    try:
        write_file(output, goods)
    except OSError as exc:
        raise CannotWrite(f"cannot write {output}: {exc.strerror or exc}{after}") from exc


def _agent(config_path: Path, passphrase_file: Path | None) -> Agent:
    config, passphrase = load_config(config_path, passphrase_file)
    return Agent(config, passphrase=passphrase)


def _shopper_agent(config_path: Path, passphrase_file: Path | None) -> Agent:
    """An agent whose role keeps purchases (a buyer): ``buy`` and ``refund`` need it."""
    agent = _agent(config_path, passphrase_file)
    if not set(_purchase.MIGRATIONS) <= set(agent.migrations()):
        raise ConfigError(f"{config_path} is the config of a {agent.config.role}, which keeps "
                          "no purchases: buy and refund with a buyer's config")
    return agent


def _amount(wire: dict[str, Any]) -> str:
    return str(Amount(wire["currency"], wire["minor_units"]))


@click.command("catalogue")
@config_option
@click.option("--seller", required=True, type=AGENT_ID, help="The seller's agent id.")
@passphrase_option
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of offers.")
def catalogue(config_path: Path, seller: str, passphrase_file: Path | None,
              as_json: bool) -> None:
    """The seller's signed offers, each verified against the market root."""
    agent = _agent(config_path, passphrase_file)

    async def fetch() -> list[dict[str, Any]]:
        async with agent.session():
            cat, _ = await Shopper(agent).catalogue(seller)
        return [{"sku": o.body["sku"], "title": o.body["title"], "price": o.body["price"],
                 "terms": o.body["terms"], "valid_until": o.body["valid_until"],
                 "refund_days": o.body.get("refund_days"),
                 "content_digest": o.body["content_digest"].hex(),
                 **_stream_json(o.body.get("stream"))} for o in cat.offers]

    offers = trio.run(fetch)
    if as_json:
        click.echo(json.dumps(offers))
        return
    table = Table(title=f"catalogue of {seller} (offers signed by {seller}, verified)",
                  title_justify="left")
    for column, justify in (("sku", "left"), ("title", "left"), ("price", "right"),
                            ("refunds", "left"), ("terms", "left")):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for offer in offers:
        days = offer["refund_days"]
        table.add_row(offer["sku"], offer["title"], _amount(offer["price"]),
                      "-" if days is None else "none" if days == 0 else f"{days} days",
                      offer["terms"])
    make_console().print(table)


def _stream_json(stream: Any) -> dict[str, Any]:
    """A streamed offer's ``stream`` for ``catalogue --json`` (nothing for others)."""
    if not isinstance(stream, dict):
        return {}
    return {"stream": {"chunks": stream["chunks"], "chunk_size": stream["chunk_size"],
                       "root": stream["root"].hex(),
                       "price_per_chunk": stream["price_per_chunk"]}}


class PaymentModuleName(click.ParamType):
    """The name of a payment module installed (entry-point group
    ``semper.payment_modules``), so that an instrument a package adds is accepted
    without a change here; any other name is ``payment.unknown_module``. Only the
    names are read: a module is loaded when it pays."""

    name = "module"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> str:
        installed = sorted({point.name for point in entry_points(group=MODULES_GROUP)})
        if value not in installed:
            raise CodedBadParameter(
                "payment.unknown_module", f"no payment module {value!r:.80} is installed "
                f"(installed: {', '.join(installed) or 'none'})", ctx, param)
        return str(value)


@click.command("buy")
@config_option
@click.option("--seller", required=True, type=AGENT_ID, help="The seller's agent id.")
@click.option("--item", "sku", required=True, help="The SKU to buy.")
@click.option("--pay", "module", default=None, type=PaymentModuleName(),
              help="How to pay: a payment module installed (transfer, cheque, or one a "
                   "package adds). Without it: the best the market allows and the seller "
                   "takes from us, and the output says why.")
@click.option("--idempotency-key", "key", default=None,
              help="Repeat a purchase safely: the same key returns the first outcome. "
                   "Without it a fresh key is made and printed on stderr first.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the goods bought to this file (also on a replay).")
@click.option("--fair", is_flag=True,
              help="Take the goods encrypted, their key escrowed for a notary, before "
                   "paying: a seller that takes the money and goes silent cannot keep them.")
@click.option("--notary", default=None, type=AGENT_ID,
              help="With --fair: the notary to trust (default: [fairexchange] notary, "
                   "else 'notary').")
@passphrase_option
@click.option("--json", "as_json", is_flag=True, help="Print {receipt, payment, ...} as JSON.")
def buy(config_path: Path, seller: str, sku: str, module: str | None, key: str | None,
        output: Path | None, fair: bool, notary: str | None, passphrase_file: Path | None,
        as_json: bool) -> None:
    """Order --item from --seller, pay with --pay (or the instrument chosen), take
    delivery, and print the signed receipt."""
    if notary is not None and not fair:
        raise CodedBadParameter("cli.usage", "--notary is for a fair purchase: add --fair",
                                None, None)
    agent = _shopper_agent(config_path, passphrase_file)
    if output is not None:
        _check_writable(output)
    if key is None:
        key = f"buy-{secrets.token_hex(12)}"
        # Before any network step: a purchase that fails halfway is resumed with it.
        click.echo(f"idempotency key: {key}", err=True)
    console = make_console(stderr=as_json)
    bar = _StreamBar(console)
    shopper: Shopper | None = None
    #: key -> why the instrument was chosen (without --pay).
    choice: dict[str, str] = {}

    async def run() -> Any:
        nonlocal shopper
        with console.status(f"buying {sku} from {seller}") as status:
            def step(text: str) -> None:
                status.update(text)
                if not as_json:
                    console.print(styled("  ", ("-", "dim"), f" {text}"))

            def chunk(progress: StreamProgress) -> None:
                if not as_json:  # --json: stdout's one object, stderr its failure only
                    status.stop()
                    bar.update(progress)

            async with agent.session():
                if fair:
                    fair_shopper = _fair_buyer.FairShopper(
                        agent, progress=step, notary=notary or default_notary(agent.config),
                        wait_ms=int(agent.config.timeouts.request * 1000))
                    chosen = module
                    if chosen is None:
                        chosen, choice[key] = await fair_shopper.choose(seller, sku, key,
                                                                        fair=True)
                    return await fair_shopper.buy_fair(seller, sku, chosen, key)
                shopper = Shopper(agent, progress=step, output=output, on_chunk=chunk)
                try:
                    outcome = await shopper.buy(seller, sku, module, key)
                    if module is None:
                        choice[key] = shopper.choices[key]
                finally:
                    bar.stop()
                if key not in shopper.streamed:  # a stream finished by an earlier run
                    shopper.streamed.update(await _finished_stream(agent, key))
                return outcome

    outcome = trio.run(run)
    why = choice.get(key)
    instrument = {} if why is None else {
        "instrument": {"module": why.partition(":")[0], "why": why}}
    if shopper is not None and key in shopper.streamed:  # a streamed item, in --output
        streamed = shopper.streamed[key]
        if as_json:  # the keys, and the receipt as a whole purchase's
            click.echo(json.dumps({**streamed.to_json(),
                                   "receipt": outcome.to_json()["receipt"], **instrument}))
            return
        if why is not None:
            click.echo(f"paid by {shown(why)}")  # a seller's words in it: escaped
        click.echo(f"{streamed.chunks} chunks ({counted(streamed.bytes, 'byte')}) verified "
                   f"against root {streamed.root.hex()[:16]}... and written to "
                   f"{streamed.output}; paid {streamed.paid}"
                   + (f"; resumed at chunk {streamed.resumed_from}"
                      if streamed.resumed_from else ""))
        return
    resolved_by = None
    if fair:  # a FairOutcome: the goods opened, and who resolved the exchange
        resolved_by, outcome_goods = outcome.resolved_by, outcome.goods
        outcome = dataclasses.replace(outcome.purchase, goods=outcome_goods)
    if output is not None:
        if outcome.goods is None:
            raise NoGoods(f"purchase {key!r} ended {outcome.state} without goods; "
                          f"nothing written to {output}")
        _write_goods(output, outcome.goods, after=f"; the purchase is {outcome.state}: "
                     f"semper goods --config {config_path} {key} -o FILE writes them")
    result = {**outcome.to_json(), **instrument}
    if resolved_by is not None:
        result["resolved_by"] = resolved_by
    if as_json:
        click.echo(json.dumps(result))
        return
    _print_purchase(console, result)
    if resolved_by is not None:
        click.echo(f"fair exchange resolved by the {resolved_by}")
    if output is not None:
        click.echo(f"goods written to {output}")


class _StreamBar:
    """``semper buy``'s progress bar for a streamed item: chunks, bytes, rate, paid."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self._progress: Progress | None = None
        self._task: Any = None

    def update(self, p: StreamProgress) -> None:
        if self._progress is None:
            self._progress = Progress(
                TextColumn("{task.fields[chunks]} chunks", markup=False),
                BarColumn(), DownloadColumn(binary_units=True), TransferSpeedColumn(),
                TextColumn("paid {task.fields[paid]}", markup=False), console=self.console,
                transient=False)
            self._progress.start()
            self._task = self._progress.add_task("stream", total=p.length,
                                                 chunks=f"{p.chunks}/{p.of}", paid=str(p.paid))
        self._progress.update(self._task, completed=p.bytes, chunks=f"{p.chunks}/{p.of}",
                              paid=str(p.paid))

    def stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


async def _finished_stream(agent: Agent, key: str) -> dict[str, StreamOutcome]:
    """The stream of ``key`` fetched whole by an earlier run (nothing fetched now)."""
    row = await StreamClient(agent).row(key)
    if row is None or row["state"] != "done":
        return {}
    return {key: StreamOutcome(key=key, chunks=row["chunks"], bytes=row["length"],
                               root=row["root"], output=Path(row["output"]),
                               paid=Amount(row["paid_currency"], row["paid_units"]),
                               resumed_from=row["chunks"])}


@click.command("goods")
@config_option
@click.argument("key", metavar="KEY")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The file to write the goods to ('-' for stdout).")
@passphrase_option
def goods(config_path: Path, key: str, output: Path, passphrase_file: Path | None) -> None:
    """Write the goods of a past purchase (KEY: its idempotency key) to a file.

    Reads the buyer's own records only: no channel is opened.
    """
    agent = _shopper_agent(config_path, passphrase_file)

    async def run() -> tuple[str, bytes | None] | None:
        async with agent.session():
            return await agent.database.read(lambda c: c.execute(
                "SELECT state, goods FROM commerce_purchases WHERE key = ?",
                (key,)).fetchone())

    row = trio.run(run)
    if row is None:
        raise UnknownPurchase(f"{agent.id} has no purchase with idempotency key {key!r} "
                              "(semper wallet lists them)")
    state, content = row
    if content is None:
        raise NoGoods(f"purchase {key!r} is {state} and holds no goods (run the same "
                      "semper buy with --idempotency-key to finish it)")
    _check_writable(output)
    _write_goods(output, content)
    if str(output) != "-":
        click.echo(f"wrote {counted(len(content), 'byte')} of purchase {key} ({state}) to "
                   f"{output}")


@click.command("refund")
@config_option
@click.option("--idempotency-key", "key", required=True, help="The purchase to refund.")
@click.option("--reason", default="returned", help="Why, for the seller's refund note.")
@click.option("--amount", default=None, metavar="CCY:MINOR_UNITS", type=AMOUNT,
              help="Refund only this much of what was paid (default: all of it).")
@passphrase_option
@click.option("--json", "as_json", is_flag=True, help="Print the purchase as JSON.")
def refund(config_path: Path, key: str, reason: str, amount: Amount | None,
           passphrase_file: Path | None, as_json: bool) -> None:
    """Ask the seller to refund a purchase, in full or --amount of it, as its offer's
    signed refund terms allow; repeating it refunds nothing more."""
    agent = _shopper_agent(config_path, passphrase_file)

    async def run() -> Any:
        async with agent.session():
            return await Shopper(agent).refund(key, reason, amount=amount)

    result = trio.run(run).to_json()
    if as_json:
        click.echo(json.dumps(result))
        return
    _print_purchase(make_console(), result)


def _print_purchase(console: Console, result: dict[str, Any]) -> None:
    receipt, payment = result["receipt"], result["payment"]
    table = Table(show_header=False, title="receipt" + (" (replayed: nothing paid again)"
                                                        if result["replayed"] else ""),
                  title_justify="left")
    table.add_row("state", result["state"])
    table.add_row("idempotency key", result["idempotency_key"])
    if receipt is not None:
        table.add_row("item", f"{receipt['sku']} from {receipt['seller']}")
        table.add_row("amount", _amount(receipt["amount"]))
        table.add_row("order", receipt["order"][:32] + "...")
        table.add_row("receipt", receipt["digest"][:32] + "... (signed by the seller)")
    if payment is not None:
        table.add_row("paid by", f"{payment['module']} through {payment['bank']} "
                                 f"({payment['settlement']})")
    if "instrument" in result:  # chosen, not named by --pay: which and why
        table.add_row("instrument", result["instrument"]["why"])
    if result["goods_size"] is not None:
        table.add_row("goods", f"{result['goods_size']} bytes, digest matches the offer")
    if result["refunded"]:
        table.add_row("refund", f"{_amount(result['refund_amount'])} refunded "
                                "(seller's refund note kept)")
    console.print(table)
