"""``semper demo``: the whole local market, one process per agent, money moving, the
notary's services and the arbiter used.

Prints each step as it ends (``✓`` or ``✗``, one line each, never wrapped), the
table of who reached whom, the balances before and after, and a last line: ``ok: ...``
with exit 0 when every check held, else ``demo failed: ...`` naming each failed check,
with exit 1.
"""

from __future__ import annotations

import functools

import click
import trio
from rich.console import Console
from rich.status import Status
from rich.table import Table
from rich.text import Text

from semper.agents.cli._text import console as make_console
from semper.agents.cli._text import styled
from semper.agents.operator._demo import Check, DemoResult, Reporter, run_demo
from semper.services import Amount


class _Live(Reporter):
    def __init__(self, console: Console, status: Status) -> None:
        self.console = console
        self.status = status

    def doing(self, text: str) -> None:
        self.status.update(text + " ...")

    def checked(self, check: Check) -> None:
        mark = ("✓", "green") if check.ok else ("✗", "red")
        detail = (f" - {check.detail}", "dim") if check.detail else ""
        self.console.print(styled(mark, f" {check.what}", detail), soft_wrap=True)

    def pinged(self, result: DemoResult) -> None:
        self.console.print(_ping_table(result))


@click.command("demo")
def command() -> int:
    """Run a local market: start every agent, reach every pair, buy by transfer and by
    cheque, refund, repeat a purchase safely, stream one paid by purse and resume it
    after killing the seller, timestamp, check and file a dispute, send
    certified mail, sign contracts and buy fairly from a seller killed midway, check
    the books, stop cleanly."""
    console = make_console()  # a check's text as it is: no ':100:' emoji, no markup
    with console.status("starting...") as status:
        result = trio.run(functools.partial(run_demo, reporter=_Live(console, status)))
    if result.after:
        console.print(_balance_table(result))
    if result.ok:
        console.print(styled(("ok", "green"), f": {len(result.checks)} checks held in "
                             f"{result.seconds:.1f} s: money moved only as the receipts say, "
                             "the books balance, every agent exited 0"), soft_wrap=True)
        return 0
    console.print(styled(("demo failed", "red"), f": {len(result.failures)} of "
                         f"{len(result.checks)} checks did not hold:"), soft_wrap=True)
    for check in result.failures:
        console.print(styled("  ", ("✗", "red"), f" {check.what}: {check.detail}"),
                      soft_wrap=True)
    return 1


def _ping_table(result: DemoResult) -> Table:
    table = Table(title="who reached whom: round trip of one request (ms)",
                  title_justify="left")
    table.add_column("from \\ to")
    for agent in result.agents:
        table.add_column(agent, justify="right")
    for source in result.agents:
        cells: list[str | Text] = []
        for target in result.agents:
            ping = result.pings.get((source, target))
            if source == target:
                cells.append("-")
            elif ping is None or not ping["ok"]:
                cells.append(styled(("failed", "red")))
            else:
                cells.append(f"{ping['rtt_ms']:.2f}")
        table.add_row(source, *cells)
    return table


def _balance_table(result: DemoResult) -> Table:
    table = Table(title="balances at the bank (expected: what the payments imply)",
                  title_justify="left")
    for column, justify in (("account", "left"), ("before", "right"), ("after", "right"),
                            ("change", "right"), ("expected", "right"),
                            ("", "center")):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    accounts = sorted({*result.before, *result.after, *result.expected},
                      key=lambda a: (a[1], a[0]))
    totals: dict[str, list[int]] = {}
    for holder, currency in accounts:
        before = result.before.get((holder, currency), 0)
        after = result.after.get((holder, currency), 0)
        expected = result.expected.get((holder, currency), 0)
        total = totals.setdefault(currency, [0, 0, 0])
        total[0] += before
        total[1] += after
        total[2] += expected
        table.add_row(holder, *_row(currency, before, after, expected))
    table.add_section()
    for currency, (before, after, expected) in sorted(totals.items()):
        table.add_row(f"total {currency}", *_row(currency, before, after, expected),
                      style="bold")
    return table


def _row(currency: str, before: int, after: int, expected: int) -> list[str | Text]:
    change = after - before

    def signed(units: int) -> str:
        text = str(Amount(currency, units))
        return text.replace(" ", " +", 1) if units > 0 else text

    mark = styled(("✓", "green") if change == expected else ("✗", "red"))
    return [str(Amount(currency, before)), str(Amount(currency, after)), signed(change),
            signed(expected), mark]
