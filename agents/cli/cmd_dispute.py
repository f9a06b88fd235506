"""``semper dispute check|file``: judge an evidence bundle offline, or file it with an
arbiter for a signed verdict."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import click
import trio
from cryptography.hazmat.primitives import serialization
from rich.table import Table

from semper.agents.cli import cmd_archive
from semper.agents.cli._common import (
    AGENT_ID,
    config_option,
    load_config,
    passphrase_option,
)
from semper.agents.cli._text import console
from semper.services.archive import CrlTooOld, Direction, EvidenceBundle
from semper.services.certificates import load_certificate, load_crl
from semper.services.disputes import (
    FILE,
    BadCase,
    FileAnswer,
    FileRequest,
    Report,
    Verdict,
    check_bundle,
    verify_verdict,
)

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
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
              help="An agent's agent.toml: use its CRLs and have the CA agent issue one "
                   "after the bundle's statements (as `semper archive check`).")
@passphrase_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def check(bundle_path: Path, root_path: Path, crl_paths: tuple[Path, ...],
          config_path: Path | None, passphrase_file: Path | None, as_json: bool) -> None:
    """Verify BUNDLE offline, trusting only the market root, and say per obligation
    who met it. Exits 0 when the bundle verifies (whatever the verdicts), else one
    line `semper: <code>: <reason>`.

    Bundles: a purchase's or a fair purchase's from `semper archive export` (the
    order's digest or the idempotency key), a certified mail's from `semper archive
    export` (the mail's id), a contract's from `semper contract export`."""
    data = bundle_path.read_bytes()
    root = load_certificate(root_path.read_bytes())
    crls = [load_crl(path.read_bytes()) for path in crl_paths]
    report = check_bundle(data, root, crls=crls)
    if config_path is not None and isinstance(report.error, CrlTooOld):
        config, passphrase = load_config(config_path, passphrase_file)
        crls += cmd_archive._local_crls(config)
        latest = cmd_archive._latest_statement(EvidenceBundle.from_bytes(data))
        try:
            fetched = trio.run(cmd_archive._fetch_crl, config, passphrase, latest)
        except Exception as exc:  # the CA agent unreachable: the error stands, and says so
            report.error.message += (f" (the CA agent's CRL could not be fetched: "
                                     f"{getattr(exc, 'code', type(exc).__name__)}: "
                                     f"{getattr(exc, 'message', str(exc))})")
        else:
            # ``is not None``: a CRL revoking nothing has length 0, so it is falsy
            report = check_bundle(data, root, crls=[*crls, *([fetched] if fetched is not None
                                                             else [])])
    print_report(report, as_json)


@command.command("file")
@config_option
@click.argument("bundle_path", metavar="BUNDLE", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--arbiter", default="arbiter", show_default=True, type=AGENT_ID,
              help="The arbiter's agent id.")
@passphrase_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def file(config_path: Path, bundle_path: Path, arbiter: str, passphrase_file: Path | None,
         as_json: bool) -> None:
    """File BUNDLE with the arbiter as the agent of --config (the claimant): the
    arbiter checks it, opens a case and signs its verdicts, which are checked here
    offline and archived (transaction: the case in hex)."""
    from semper.agents.runtime._agent import Agent  # the agent runtime, only for this

    data = bundle_path.read_bytes()
    config, passphrase = load_config(config_path, passphrase_file)
    agent = Agent(config, passphrase=passphrase)
    request = FileRequest(bundle=data, crl=agent.crl.public_bytes(serialization.Encoding.DER))

    async def run() -> dict[str, Any]:
        async with agent.session():
            answer = FileAnswer.from_wire(await agent.request(
                arbiter, FILE.service, FILE.name, request.to_wire()))
            certificate = load_certificate(answer.certificate)
            body, identity = verify_verdict(answer.verdict, certificate=certificate,
                                            root=agent.credentials.root, crl=agent.crl,
                                            now=agent.context.now())
            case = answer.verdict.body["case_statement"]["body"]
            if identity.agent_id != arbiter or case["claimant"] != agent.id \
                    or case["bundle"] != hashlib.sha256(data).digest():
                raise BadCase("the verdict is not the arbiter's on this filing",
                              detail={"type": "dispute.verdict", "field": "case_statement"})
            held = {r.statement for r in await agent.archive.records(body.case.hex())}
            for statement in (body.case_statement, answer.verdict):
                if statement.to_bytes() in held:
                    continue  # filed before: the arbiter gave the first answer again
                await agent.archive.record(statement, direction=Direction.RECEIVED,
                                           peer=arbiter, transaction=body.case.hex(),
                                           certificate=certificate)
            return {"case": body.case.hex(), "arbiter": identity.agent_id,
                    "protocol": body.protocol, "transaction": body.transaction,
                    "valid": True, "verdicts": [v.to_wire() for v in body.verdicts]}

    result = trio.run(run)
    if as_json:
        click.echo(json.dumps(result))
        return
    click.echo(f"case {result['case']} opened by {result['arbiter']}")
    verdicts = tuple(Verdict.from_wire(v) for v in result["verdicts"])
    _table(Report(valid=True, verdicts=verdicts, transaction=result["transaction"],
                  protocol=result["protocol"]))


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
    console().print(table)
