"""The ``semper`` command line: thin commands over the ``semper.agents`` API.

Every failure ends here, in ``SemperGroup.main`` (so ``main`` and click's test
runner alike): whatever was raised prints exactly one line ``semper: <code>: <reason>``
on stderr. An exception that carries a stable ``code`` shows it; a usage error
(a bad option, a missing or refused argument) is ``cli.usage`` unless it carries a
code of its own, and exits 2 (click's convention); any other failure exits 1, an
unexpected one as ``internal.error``. Nothing prints a traceback unless
SEMPER_DEBUG is set.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

import click

from semper.agents.cli._common import text_everywhere
from semper.agents.cli._logging import configure_logging

from . import (
    cmd_agent,
    cmd_archive,
    cmd_bank,
    cmd_ca,
    cmd_call,
    cmd_commerce,
    cmd_contract,
    cmd_demo,
    cmd_dispute,
    cmd_live,
    cmd_mail,
    cmd_market,
    cmd_ping,
    cmd_purse,
    cmd_timestamp,
    cmd_wallet,
)

__all__ = ["SemperGroup", "cli", "describe", "main"]


class SemperGroup(click.Group):
    """The top group: its ``main`` turns every failure into one line (see above)."""

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None,
             complete_var: str | None = None, standalone_mode: bool = True,
             **extra: Any) -> NoReturn:
        def body() -> object:
            # A real command line cannot hold a NUL (argv is C strings); refuse one from
            # anywhere else here, once, rather than as a ValueError from the first open().
            if any("\0" in arg for arg in (sys.argv[1:] if args is None else args)):
                raise click.UsageError("an argument contains a NUL character")
            return click.Group.main(self, args, prog_name, complete_var,
                                    standalone_mode=False, **extra)

        run_command(body)


@click.group(cls=SemperGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True,
              help="Log to stderr: -v each step (connect, hello, requests), -vv everything.")
@click.version_option(package_name="semper")
def cli(verbose: int) -> None:
    """semper: secure electronic commerce between peers."""
    configure_logging(verbose)


for module in (cmd_market, cmd_agent, cmd_ping, cmd_call, cmd_ca, cmd_bank, cmd_archive,
               cmd_demo, cmd_dispute):
    cli.add_command(module.command)
cli.add_command(cmd_timestamp.command)
cli.add_command(cmd_contract.command)
cli.add_command(cmd_mail.command)
cli.add_command(cmd_purse.command)
cli.add_command(cmd_live.command)
for command in (cmd_commerce.catalogue, cmd_commerce.buy, cmd_commerce.refund,
                cmd_commerce.goods):
    cli.add_command(command)
cli.add_command(cmd_wallet.command)
text_everywhere(cli)  # no text argument reaches SQLite or msgpack unencodable


def _leaf(exc: BaseException) -> BaseException:
    """trio wraps errors from nurseries in groups; a single one is shown bare."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


_CODE = re.compile(r"[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+\Z")


def _one_line(text: object) -> str:
    """``text`` on one printable line: runs of white space (newlines, form feeds, the
    Unicode line separators) become one space, and any other character that is not
    printable (an escape sequence from a peer's message, a NUL, a lone surrogate from
    an undecodable file name) is shown escaped, never sent to the terminal."""
    words = " ".join(str(text).split())
    shown = "".join(c if c.isprintable() else c.encode("unicode_escape",
                                                       "backslashreplace").decode("ascii")
                    for c in words)
    return shown or "(no reason given)"


def describe(exc: BaseException) -> str:
    """One line for a user, ``<code>: <reason>``: the stable code when there is one."""
    exc = _leaf(exc)
    code, message = getattr(exc, "code", None), getattr(exc, "message", None)
    if isinstance(exc, click.ClickException):  # its own code (CliError), or the kind's
        if not isinstance(code, str):
            code = "cli.usage" if isinstance(exc, click.UsageError) else "cli.failed"
        reason: object = exc.format_message()
    elif isinstance(code, str):
        reason = message if isinstance(message, str) else str(exc)
    elif isinstance(exc, OSError):
        code = "os.error"
        reason = (exc.strerror or str(exc)) + (f": {exc.filename}" if exc.filename else "")
    else:
        code, reason = "internal.error", f"{type(exc).__name__}: {exc}"
    if not _CODE.match(code):  # a peer's code is shown, not trusted to be well formed
        code, reason = "remote.bad_code", f"{code!r}: {reason}"
    return f"{code}: {_one_line(reason)}"


def run_command(body: Callable[[], object]) -> NoReturn:
    """Run ``body`` (a click main in non-standalone mode) and exit: 0, or one line on
    stderr and 1 (2 for a usage error)."""
    for stream in (sys.stdout, sys.stderr):
        # A file name from the command line may hold an undecodable byte (a lone
        # surrogate): printing it must not fail the command after its work is done.
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(errors="backslashreplace")
    try:
        status = body()
    except click.exceptions.NoArgsIsHelpError as exc:
        click.echo(exc.ctx.get_help() if exc.ctx else exc.format_message())
        sys.exit(0)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.Abort:
        click.echo("semper: cli.aborted: aborted", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
    except SystemExit:
        raise
    except BaseException as exc:
        if os.environ.get("SEMPER_DEBUG"):
            raise
        click.echo(f"semper: {describe(exc)}", err=True)
        leaf = _leaf(exc)
        sys.exit(2 if isinstance(leaf, click.UsageError) else 1)
    sys.exit(status if isinstance(status, int) else 0)


def main(argv: Sequence[str] | None = None) -> NoReturn:
    cli.main(args=argv, prog_name="semper")
