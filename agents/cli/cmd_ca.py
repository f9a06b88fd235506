"""``semper ca revoke DIR AGENT_ID``."""

from __future__ import annotations

from pathlib import Path

import click
from cryptography import x509

from .._market import revoke_agent
from ._common import passphrase_option, read_passphrase


@click.group("ca")
def command() -> None:
    """The market operator's certificate authority."""


@command.command("revoke")
@click.argument("folder", metavar="DIR", type=click.Path(file_okay=False, path_type=Path))
@click.argument("agent_id")
@passphrase_option
def revoke(folder: Path, agent_id: str, passphrase_file: Path | None) -> None:
    """Put AGENT_ID's certificate on the market's CRL; running agents refuse it within
    their CRL refresh interval (2 s by default)."""
    crl = revoke_agent(folder, agent_id, passphrase=read_passphrase(passphrase_file))
    number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    click.echo(f"revoked {agent_id}: CRL number {number} with {len(list(crl))} entries "
               f"published to {folder / 'ca' / 'crl.pem'}")
