"""``semper dispute check|file``: judge an evidence bundle offline, or file it with an
arbiter for a signed verdict."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from semper.services.certificates import load_certificate, load_crl
from semper.services.disputes import Report, check_bundle

__all__ = ["command", "print_report"]


@click.group("dispute")
def command() -> None:
    """Check evidence bundles per obligation; file disputes with an arbiter."""


@command.command("check")
@click.argument("bundle_path", metavar="BUNDLE", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--root", "root_path", required=True,
              type=click.Path(dir_okay=False, path_type=Path), help="The market's root.pem.")
@click.option("--crl", "crl_paths", multiple=True,
              type=click.Path(dir_okay=False, path_type=Path),
              help="A CRL of the same root, issued after the bundle's statements "
                   "(repeatable); the newest CRL at hand decides.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def check(bundle_path: Path, root_path: Path, crl_paths: tuple[Path, ...],
          as_json: bool) -> None:
    """Verify BUNDLE offline, trusting only the market root, and say per obligation
    who met it. Exits 0 when the bundle verifies (whatever the verdicts), else one
    line `semper: <code>: <reason>`."""
    data = bundle_path.read_bytes()
    root = load_certificate(root_path.read_bytes())
    crls = [load_crl(path.read_bytes()) for path in crl_paths]
    report = check_bundle(data, root, crls=crls)
    print_report(report, as_json)


def print_report(report: Report, as_json: bool) -> None:
    """Print ``report`` (JSON, or a table), then raise its error if it is invalid."""
    if as_json:
        click.echo(json.dumps(report.to_json()))
    elif report.valid:
        _table(report)
    if not report.valid:
        assert report.error is not None
        raise report.error


def _table(report: Report) -> None:
    if report.protocol is None:
        click.echo(f"bundle of {report.transaction} verifies; no registered checker knows "
                   "its protocol: no verdicts")
        return
    table = Table(title=f"bundle of {report.transaction} ({report.protocol}) verifies",
                  title_justify="left")
    for column in ("obligation", "party", "met", "reason"):
        table.add_column(column)
    shown: dict[Any, str] = {True: "yes", False: "NO", None: "unknown"}
    for verdict in report.verdicts:
        table.add_row(verdict.obligation, verdict.party, shown[verdict.met], verdict.reason)
    Console(width=160).print(table)
