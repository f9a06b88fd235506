"""Pieces several commands share: config and passphrase options."""

from __future__ import annotations

from pathlib import Path

import click

from .._config import AgentConfig

__all__ = ["config_option", "load_config", "passphrase_option", "read_passphrase"]

passphrase_option = click.option(
    "--passphrase-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="File whose first line is the passphrase of the key(s).",
)

config_option = click.option(
    "--config", "config_path", required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The agent's agent.toml.",
)


def read_passphrase(path: Path | None) -> bytes | None:
    if path is None:
        return None
    try:
        text = path.read_bytes().splitlines()
    except OSError as exc:
        raise click.ClickException(f"cannot read passphrase file {path}: {exc.strerror}") from None
    if not text or not text[0]:
        raise click.ClickException(f"passphrase file {path} is empty")
    return text[0]


def load_config(path: Path, passphrase_file: Path | None) -> tuple[AgentConfig, bytes | None]:
    config = AgentConfig.load(path)
    return config, read_passphrase(passphrase_file or config.passphrase_file)
