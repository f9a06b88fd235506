"""``semper archive verify|export|check``: the evidence archive from the outside."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
import trio
from cryptography import x509
from rich.table import Table

from semper.agents.cli._common import CliError, config_option, load_config, passphrase_option
from semper.agents.cli._text import console, counted
from semper.agents.components import _archive
from semper.agents.runtime._config import AgentConfig
from semper.agents.runtime._files import write_file
from semper.agents.runtime._identity import utcnow
from semper.agents.runtime._storage import Database
from semper.services.archive import (
    CrlTooOld,
    EvidenceBundle,
    collect_bundle,
    newest_crl,
    verify_bundle,
    verify_chain,
)
from semper.services.certificates import CertificateError, load_certificate, load_crl
from semper.services.statements import Statement, StatementError


@click.group("archive")
def command() -> None:
    """Check and export an agent's evidence archive."""


def _open(config: AgentConfig) -> Database:
    path = config.data_dir / "agent.sqlite"
    if not path.exists():
        raise CliError("archive.empty", f"{config.id} has no archive yet ({path} does not exist)")
    return Database.open_sync(path, _archive.MIGRATIONS)


@command.command("verify")
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def verify(config_path: Path, as_json: bool) -> None:
    """Check the whole hash chain: any edited, deleted or reordered record is named."""
    config = AgentConfig.load(config_path)
    database = _open(config)
    try:
        records = database.read_sync(_archive.read_records)
        verify_chain(records)
    finally:
        database.close()
    head = records[-1].hash.hex() if records else None
    if as_json:
        click.echo(json.dumps({"agent": config.id, "records": len(records), "head": head}))
    else:
        click.echo(f"archive of {config.id}: {counted(len(records), 'record')}, chain intact"
                   + (f", head {head[:16]}" if head else ""))


@command.command("export")
@config_option
@click.argument("transaction")
@click.option("--out", "-o", "out", required=True,
              type=click.Path(dir_okay=False, path_type=Path), help="The bundle file to write.")
def export(config_path: Path, transaction: str, out: Path) -> None:
    """Write TRANSACTION's statements (and those they name, such as a purchase's
    offer), the signers' certificates and the CRL to one file.

    TRANSACTION is a transaction of the archive (a purchase's is the hex digest of its
    order), a purchase's idempotency key, or the start of one transaction's name."""
    config = AgentConfig.load(config_path)
    database = _open(config)
    try:
        name = database.read_sync(lambda c: _archive.resolve_transaction(c, transaction))
        records = database.read_sync(lambda c: _archive.bundle_records(c, name))
        certificates = database.read_sync(_archive.read_certificates)
    finally:
        database.close()
    root = load_certificate(config.ca_root.read_bytes())
    crl = max(_local_crls(config), key=lambda c: (_number(c), c.last_update_utc))
    bundle = collect_bundle(records, transaction=name, certificates=certificates,
                            crl=crl, root=root)
    write_file(out, bundle.to_bytes())  # atomic, and no temporary file left on a failure
    click.echo(f"wrote {counted(len(bundle.records), 'statement')} of {name} to {out}")


@command.command("check")
@click.argument("bundle_path", metavar="BUNDLE", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--root", "root_path", required=True,
              type=click.Path(dir_okay=False, path_type=Path), help="The market's root.pem.")
@click.option("--crl", "crl_paths", multiple=True,
              type=click.Path(dir_okay=False, path_type=Path),
              help="A CRL of the same root (repeatable); the newest CRL at hand decides.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
              help="An agent's agent.toml: use its CRLs and fetch the CA agent's newest.")
@passphrase_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def check(bundle_path: Path, root_path: Path, crl_paths: tuple[Path, ...],
          config_path: Path | None, passphrase_file: Path | None, as_json: bool) -> None:
    """Verify an evidence bundle offline, trusting only the market root.

    A CRL speaks only up to its thisUpdate: a statement signed after the newest CRL
    at hand fails with archive.crl_too_old until a newer one is given (--crl, or
    --config to fetch it from the CA agent)."""
    bundle = EvidenceBundle.from_bytes(bundle_path.read_bytes())
    root = load_certificate(root_path.read_bytes())
    crls = [load_crl(path.read_bytes()) for path in crl_paths]
    fetch_failure = None
    if config_path is not None:
        config, passphrase = load_config(config_path, passphrase_file)
        crls += _local_crls(config)
        # A CRL issued after the bundle's last statement settles every one of them.
        latest = _latest_statement(bundle)
        try:
            fetched = trio.run(_fetch_crl, config, passphrase, latest)
        except Exception as exc:  # the check goes on with the CRLs at hand
            fetch_failure = f"{getattr(exc, 'code', type(exc).__name__)}: " \
                            f"{getattr(exc, 'message', str(exc))}"
        else:
            if fetched is not None:
                crls.append(fetched)
    now = utcnow()
    try:
        verified = verify_bundle(bundle, root=root, now=now, crls=crls)
    except CrlTooOld as exc:
        if fetch_failure is not None:
            exc.message += f" (the CA agent's CRL could not be fetched: {fetch_failure})"
        raise
    crl = newest_crl(bundle, root=root, now=now, crls=crls)
    _report(bundle, verified, crl, as_json)


def _report(bundle: EvidenceBundle, verified: list[Any], crl: x509.CertificateRevocationList,
            as_json: bool) -> None:
    rows = [{"seq": v.record.seq, "transaction": v.record.transaction,
             "direction": str(v.record.direction),
             "peer": v.record.peer, "type": v.statement.type, "signer": v.signer.agent_id,
             "role": v.signer.role, "issued_at": v.statement.issued_at,
             "digest": v.statement.digest.hex(), "revoked_at": v.revoked_at,
             "witness": v.witness} for v in verified]
    this_update = f"{crl.last_update_utc:%Y-%m-%dT%H:%M:%SZ}"
    if as_json:
        click.echo(json.dumps({"transaction": bundle.transaction, "verified": rows,
                               "crl": {"number": _number(crl), "this_update": this_update}}))
        return
    table = Table(title=f"transaction {bundle.transaction}: {counted(len(rows), 'statement')} "
                        "verified "
                        f"(revocation as of CRL {_number(crl)}, {this_update})",
                  title_justify="left")
    for column in ("seq", "type", "signer", "direction", "peer"):
        table.add_column(column)
    for row in rows:
        signer = f"{row['signer']} ({row['role']})"
        if row["witness"] is not None:
            signer += f", revoked since; dated by record {row['witness']}"
        table.add_row(str(row["seq"]), row["type"], signer, row["direction"], row["peer"])
    console().print(table)


def _number(crl: x509.CertificateRevocationList) -> int:
    try:
        return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except x509.ExtensionNotFound:
        return -1


def _latest_statement(bundle: EvidenceBundle) -> int | None:
    """When the bundle's last statement was signed, by its own say (the fetched CRL
    must have been issued after it); unreadable statements are verify_bundle's to
    report."""
    times = []
    for record in bundle.records:
        try:
            times.append(Statement.from_bytes(record.statement).issued_at)
        except StatementError:
            continue
    return max(times, default=None)


def _local_crls(config: AgentConfig) -> list[x509.CertificateRevocationList]:
    """The agent's CRL file and the newer one its process fetched (``data/crl.pem``)."""
    found = [load_crl(config.crl.read_bytes())]
    cached = config.data_dir / "crl.pem"
    try:
        found.append(load_crl(cached.read_bytes()))
    except (OSError, CertificateError):
        pass  # none fetched yet, or unreadable: the CRL file stands
    return found


async def _fetch_crl(config: AgentConfig, passphrase: bytes | None, fresh_after: int | None
                     ) -> x509.CertificateRevocationList | None:
    """The CA agent's current CRL (``certificates.crl``), issued after ``fresh_after``
    if the CA agent agrees to issue one now, or None without a CA agent."""
    from semper.agents.runtime._agent import Agent  # the agent runtime, only for this option

    if config.ca_agent is None or config.ca_agent == config.id:
        return None
    agent = Agent(config, passphrase=passphrase)
    with trio.fail_after(config.timeouts.handshake + config.timeouts.request):
        async with agent.connect(config.ca_agent) as channel:
            query: dict[str, int] = {"known": 0}
            if fresh_after is not None:
                query["fresh_after"] = fresh_after
            answer = await channel.request("certificates", "crl", query)
    der = answer.get("crl") if isinstance(answer, dict) else None
    return load_crl(der) if isinstance(der, bytes) else None
