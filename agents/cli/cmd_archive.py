"""``semper archive verify|export|check``: the evidence archive from the outside."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import click
from cryptography.hazmat.primitives.serialization import Encoding
from rich.console import Console
from rich.table import Table

from semper.services.archive import EvidenceBundle, collect_bundle, verify_bundle, verify_chain
from semper.services.certificates import load_certificate, load_crl

from .. import _archive
from .._config import AgentConfig
from .._identity import utcnow
from .._storage import Database
from ._common import config_option


@click.group("archive")
def command() -> None:
    """Check and export an agent's evidence archive."""


def _open(config: AgentConfig) -> Database:
    path = config.data_dir / "agent.sqlite"
    if not path.exists():
        raise click.ClickException(f"{config.id} has no archive yet ({path} does not exist)")
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
        click.echo(f"archive of {config.id}: {len(records)} records, chain intact"
                   + (f", head {head[:16]}" if head else ""))


@command.command("export")
@config_option
@click.argument("transaction")
@click.option("--out", "-o", "out", required=True,
              type=click.Path(dir_okay=False, path_type=Path), help="The bundle file to write.")
def export(config_path: Path, transaction: str, out: Path) -> None:
    """Write TRANSACTION's statements, signers' certificates and the CRL to one file."""
    config = AgentConfig.load(config_path)
    database = _open(config)
    try:
        records = database.read_sync(lambda c: _archive.read_records(c, transaction))
        certificates = database.read_sync(_archive.read_certificates)
    finally:
        database.close()
    if not records:
        raise click.ClickException(f"no statements of transaction {transaction!r} in the archive")
    root = load_certificate(config.ca_root.read_bytes())
    crl = load_crl(config.crl.read_bytes())
    bundle = collect_bundle(records, transaction=transaction, certificates=certificates,
                            crl=crl, root=root)
    out.write_bytes(bundle.to_bytes())
    click.echo(f"wrote {len(records)} statements of {transaction} to {out}")


@command.command("check")
@click.argument("bundle_path", metavar="BUNDLE", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--root", "root_path", required=True,
              type=click.Path(dir_okay=False, path_type=Path), help="The market's root.pem.")
@click.option("--crl", "crl_path", type=click.Path(dir_okay=False, path_type=Path),
              help="A newer CRL of the same root, for a bundle whose own CRL is out of date.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def check(bundle_path: Path, root_path: Path, crl_path: Path | None, as_json: bool) -> None:
    """Verify an evidence bundle offline, trusting only the market root."""
    bundle = EvidenceBundle.from_bytes(bundle_path.read_bytes())
    root = load_certificate(root_path.read_bytes())
    if crl_path is not None:  # verify_bundle still checks it is the root's and current
        newer = load_crl(crl_path.read_bytes()).public_bytes(Encoding.DER)
        bundle = dataclasses.replace(bundle, crl=newer)
    verified = verify_bundle(bundle, root=root, now=utcnow())
    rows = [{"seq": v.record.seq, "direction": str(v.record.direction),
             "peer": v.record.peer, "type": v.statement.type, "signer": v.signer.agent_id,
             "role": v.signer.role, "issued_at": v.statement.issued_at,
             "digest": v.statement.digest.hex()} for v in verified]
    if as_json:
        click.echo(json.dumps({"transaction": bundle.transaction, "verified": rows}))
        return
    table = Table(title=f"transaction {bundle.transaction}: {len(rows)} statements verified",
                  title_justify="left")
    for column in ("seq", "type", "signer", "direction", "peer"):
        table.add_column(column)
    for row in rows:
        table.add_row(str(row["seq"]), row["type"], f"{row['signer']} ({row['role']})",
                      row["direction"], row["peer"])
    Console().print(table)
