"""Pieces several commands share: config and passphrase options, and the parameter
types that check an input where it enters (agent ids, amounts), so that a refused
input is one line with a stable code before anything is read or written."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, ClassVar

import click

from semper.agents.runtime._config import AgentConfig
from semper.services import Amount
from semper.services.certificates import BadAgentId, check_agent_id
from semper.services.money import BadAmount

__all__ = ["AGENT_ID", "AMOUNT", "MAX_PASSPHRASE", "TEXT", "CliError", "CodedBadParameter",
           "ExchangeId",
           "config_option", "load_config", "passphrase_option", "read_passphrase"]

#: The longest passphrase the key encryption takes (OpenSSL's PEM limit).
MAX_PASSPHRASE = 1023


class CliError(click.ClickException):
    """A command refused with a stable code: ``semper: <code>: <message>``, exit 1."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class CodedBadParameter(click.BadParameter):
    """A refused argument or option value with a stable code (a usage error, exit 2):
    ``semper: <code>: Invalid value for 'HOLDER': ...``."""

    def __init__(self, code: str, message: str, ctx: click.Context | None,
                 param: click.Parameter | None) -> None:
        super().__init__(message, ctx, param)
        self.code = code


class ExchangeId(click.ParamType):
    """An exchange (a contract, a mail): the 64 hex digits of its id, as the command
    ``printed_by`` prints it (``cli.usage`` otherwise)."""

    _HEX = re.compile(r"[0-9a-f]{64}\Z")

    def __init__(self, name: str, printed_by: str) -> None:
        self.name = name
        self.printed_by = printed_by

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> bytes:
        text = str(value).strip().lower()
        if not self._HEX.match(text):
            raise CodedBadParameter("cli.usage", f"{value!r} is not a {self.name} id (64 hex "
                                    f"digits, as {self.printed_by} prints it)", ctx, param)
        return bytes.fromhex(text)


class AgentIdType(click.ParamType):
    """An agent id (docs/protocol.md section 2.1): ``agent.bad_id`` otherwise."""

    name: ClassVar[str] = "agent id"  # type: ignore[misc]

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> str:
        try:
            return check_agent_id(value)
        except BadAgentId as exc:
            raise CodedBadParameter(exc.code, exc.message, ctx, param) from None


class AmountType(click.ParamType):
    """``CCY:MINOR_UNITS`` as an Amount: ``money.bad_amount`` or
    ``money.out_of_range`` otherwise."""

    name: ClassVar[str] = "amount"  # type: ignore[misc]

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> Amount:
        if isinstance(value, Amount):
            return value
        try:
            return Amount.parse(value)
        except BadAmount as exc:
            raise CodedBadParameter(exc.code, exc.message, ctx, param) from None


class TextType(click.types.StringParamType):
    """Text that can be stored and sent: valid Unicode. A command line may hold a byte
    that is not UTF-8 (Python keeps it as a lone surrogate); that is fine in a file
    name (click.Path keeps it) but not in text that goes into SQLite or msgpack, which
    would fail with UnicodeEncodeError half way through the command."""

    name = "text"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> Any:
        value = super().convert(value, param, ctx)
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            self.fail(f"{value!r:.80} is not valid text (it holds a byte that is not UTF-8)",
                      param, ctx)
        return value


AGENT_ID = AgentIdType()
AMOUNT = AmountType()
TEXT = TextType()


def text_everywhere(command: click.Command) -> None:
    """Give every plain text parameter of ``command`` (and of its subcommands) the
    TEXT type: one place, so a command added later is covered too."""
    for param in command.params:
        if type(param.type) is click.types.StringParamType:
            param.type = TEXT
    for sub in getattr(command, "commands", {}).values():
        text_everywhere(sub)

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
    """The first line of ``path`` (None for no path).

    Raises:
        CliError: ``agent.bad_passphrase``: unreadable, empty, or longer than the key
            encryption takes (checked here, before any file is written with it).
    """
    if path is None:
        return None
    try:
        with path.open("rb") as f:
            head = f.read(MAX_PASSPHRASE + 2)  # a passphrase file is read no further
    except OSError as exc:
        raise CliError("agent.bad_passphrase",
                       f"cannot read passphrase file {path}: {exc.strerror}") from None
    text = head.splitlines()
    if not text or not text[0]:
        raise CliError("agent.bad_passphrase", f"passphrase file {path} is empty")
    if len(text[0]) > MAX_PASSPHRASE:
        raise CliError("agent.bad_passphrase", f"the passphrase in {path} is longer than "
                       f"{MAX_PASSPHRASE} bytes")
    return text[0]


def load_config(path: Path, passphrase_file: Path | None) -> tuple[AgentConfig, bytes | None]:
    config = AgentConfig.load(path)
    return config, read_passphrase(passphrase_file or config.passphrase_file)
