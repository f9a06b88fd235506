"""The ``semper`` command line: thin commands over the ``semper.agents`` API.

Every failure ends here, in ``main``: an exception that carries a stable ``code``
prints one line ``semper: <code>: <message>`` and exits 1; usage errors exit 2
(click's convention); nothing prints a traceback unless SEMPER_DEBUG is set.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

import click

from . import (
    cmd_agent,
    cmd_archive,
    cmd_bank,
    cmd_ca,
    cmd_call,
    cmd_commerce,
    cmd_demo,
    cmd_market,
    cmd_ping,
)
from ._logging import configure_logging

__all__ = ["cli", "main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True,
              help="Log to stderr: -v each step (connect, hello, requests), -vv everything.")
@click.version_option(package_name="semper")
def cli(verbose: int) -> None:
    """semper: secure electronic commerce between peers."""
    configure_logging(verbose)


for module in (cmd_market, cmd_agent, cmd_ping, cmd_call, cmd_ca, cmd_bank, cmd_archive,
               cmd_demo):
    cli.add_command(module.command)
for command in (cmd_commerce.catalogue, cmd_commerce.buy, cmd_commerce.refund,
                cmd_commerce.wallet):
    cli.add_command(command)


def _leaf(exc: BaseException) -> BaseException:
    """trio wraps errors from nurseries in groups; a single one is shown bare."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def describe(exc: BaseException) -> str:
    """One line for a user: the stable code when there is one."""
    exc = _leaf(exc)
    code, message = getattr(exc, "code", None), getattr(exc, "message", None)
    if isinstance(code, str):
        return f"{code}: {message if isinstance(message, str) else exc}"
    if isinstance(exc, OSError):
        where = f": {exc.filename}" if exc.filename else ""
        return f"{exc.strerror or exc}{where}"
    return f"internal error: {type(exc).__name__}: {exc}"


def main(argv: Sequence[str] | None = None) -> None:
    try:
        status = cli.main(args=argv, prog_name="semper", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.Abort:
        click.echo("semper: aborted", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
    except BaseException as exc:
        if isinstance(exc, SystemExit):
            raise
        if os.environ.get("SEMPER_DEBUG"):
            raise
        click.echo(f"semper: {describe(exc)}", err=True)
        sys.exit(1)
    sys.exit(status if isinstance(status, int) else 0)
