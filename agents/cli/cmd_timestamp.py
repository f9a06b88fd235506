"""``semper timestamp --config X.toml FILE -o TOKEN`` and ``semper timestamp verify
FILE TOKEN --root ROOT.pem [--crl CRL]`` (docs/protocol.md 11.7).

The first acts as the agent of ``--config`` for the length of the command (as ``buy``
does): it asks the notary for a token of FILE's SHA-256, checks the token offline
before writing it, and writes it atomically. The second needs no agent at all: the
token, the file, the market root (and a CRL) decide. ``--json`` keys are read by
scripts: ``token``, ``digest``, ``serial``, ``time``, ``notary``, ``sequence``,
``head``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path
from typing import Any

import click
import trio

from semper.agents.cli._common import (
    AGENT_ID,
    CliError,
    config_option,
    load_config,
    passphrase_option,
)
from semper.agents.runtime._agent import Agent
from semper.agents.runtime._files import write_file
from semper.agents.runtime._identity import utcnow
from semper.services.certificates import load_certificate, load_crl
from semper.services.timestamping import (
    REQUEST,
    TimestampRequest,
    Verified,
    head_id,
    verify_token,
)

__all__ = ["command"]

_FILE = click.Path(exists=False, dir_okay=False, path_type=Path)


class TimestampGroup(click.Group):
    """``timestamp FILE ...`` is the request; ``timestamp verify ...`` the check."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("-h", "--help"):
            args = ["request", *args]
        return super().parse_args(ctx, args)


def _digest_of(path: Path) -> bytes:
    """SHA-256 of the file, read in pieces; a file that cannot be read is one line."""
    digest = hashlib.sha256()
    try:
        with path.open("rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    except OSError as exc:
        raise CliError("agent.bad_file", f"cannot read {path}: {exc.strerror or exc}") from None
    return digest.digest()


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise CliError("agent.bad_file",
                       f"cannot read {what} {path}: {exc.strerror or exc}") from None


def _when(ms: int) -> str:
    return (dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(milliseconds=ms)
            ).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _result(verified: Verified, token_path: Path) -> dict[str, Any]:
    return {"token": str(token_path), "digest": verified.digest.hex(),
            "serial": verified.serial, "time": verified.time,
            "notary": verified.identity.agent_id, "sequence": verified.head.sequence,
            "head": head_id(verified.head).hex()}


@click.group("timestamp", cls=TimestampGroup)
def command() -> None:
    """Timestamp a file with the market's notary, or verify a token.

    \b
    `semper timestamp --config X.toml FILE -o TOKEN [--notary ID] [--json]`
    `semper timestamp verify FILE TOKEN --root ROOT.pem [--crl CRL.pem] [--json]`
    """


@command.command("request", hidden=True)
@config_option
@click.argument("file", type=_FILE)
@click.option("-o", "--output", required=True, type=_FILE, help="Where to write the token.")
@click.option("--notary", default="notary", show_default=True, type=AGENT_ID,
              help="The notary's agent id.")
@passphrase_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def request(config_path: Path, file: Path, output: Path, notary: str,
            passphrase_file: Path | None, as_json: bool) -> None:
    """Ask the notary for a token of FILE's digest; check it; write it to -o."""
    digest = _digest_of(file)
    if not output.resolve().parent.is_dir():
        raise CliError("agent.cannot_write", f"cannot write {output}: no folder {output.parent}")
    config, passphrase = load_config(config_path, passphrase_file)
    agent = Agent(config, passphrase=passphrase)

    async def run() -> Verified:
        async with agent.session():
            answer = await agent.context.call(notary, REQUEST, TimestampRequest(digest=digest))
        return verify_token(answer.token, root=agent.credentials.root, crl=agent.crl,
                            now=utcnow(), digest=digest)

    verified = trio.run(run)
    if verified.identity.agent_id != notary:
        raise CliError("timestamp.wrong_notary",
                       f"the token is signed by {verified.identity.agent_id!r}, not {notary!r}")
    try:
        write_file(output, verified.token.to_bytes())
    except OSError as exc:
        raise CliError("agent.cannot_write",
                       f"cannot write {output}: {exc.strerror or exc}") from None
    result = _result(verified, output)
    if as_json:
        click.echo(json.dumps(result))
        return
    click.echo(f"timestamped {file}: serial {verified.serial} by {result['notary']} at "
               f"{_when(verified.time)}; token written to {output}")


@command.command("verify")
@click.argument("file", type=_FILE)
@click.argument("token", type=_FILE)
@click.option("--root", "root_path", required=True, type=_FILE, help="The market root (PEM).")
@click.option("--crl", "crl_path", type=_FILE,
              help="The market's CRL (PEM): without it, revocation is not checked.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def verify(file: Path, token: Path, root_path: Path, crl_path: Path | None,
           as_json: bool) -> None:
    """Exit 0 only if TOKEN is a valid timestamp of FILE under the market root."""
    digest = _digest_of(file)
    root = load_certificate(_read(root_path, "root"))
    crl = None if crl_path is None else load_crl(_read(crl_path, "CRL"))
    verified = verify_token(_read(token, "token"), root=root, crl=crl, now=utcnow(),
                            digest=digest)
    result = _result(verified, token)
    if as_json:
        click.echo(json.dumps(result))
        return
    click.echo(f"valid: {file} existed at {_when(verified.time)} (serial {verified.serial}, "
               f"notary {result['notary']}"
               + (", revocation not checked: no --crl)" if crl is None else ")"))
