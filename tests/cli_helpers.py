"""The command line in-process (click's CliRunner) against a market made once per
module and copied per test: shared by the CLI tests of issue 7."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from semper.agents.cli import cli
from semper.agents.operator._market import init_market

__all__ = ["LINE", "market", "prebuilt", "refused", "semper"]

#: The one line every failed command prints.
LINE = re.compile(r"semper: [a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+: \S.*\Z")


@pytest.fixture(scope="module")
def prebuilt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("cli") / "market"
    init_market(folder)
    return folder


@pytest.fixture
def market(prebuilt: Path, tmp_path: Path) -> Path:
    """A fresh copy of the prebuilt market (configs use relative paths)."""
    return Path(shutil.copytree(prebuilt, tmp_path / "market"))


def semper(*args: str | Path) -> tuple[int, str, str]:
    """Exit status, stdout and stderr of one command."""
    result = CliRunner(env={"SEMPER_DEBUG": ""}).invoke(cli, [str(a) for a in args],
                                                          prog_name="semper")
    return result.exit_code, result.stdout, result.stderr


def refused(done: tuple[int, str, str], code: str, exit_code: int | None = None) -> str:
    """One line ``semper: <code>: <reason>`` on stderr, no traceback, exit != 0;
    returns the line."""
    status, out, err = done
    assert status != 0 and (exit_code is None or status == exit_code), (status, out, err)
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1 and err.endswith("\n"), err
    assert LINE.match(lines[0]), lines[0]
    assert lines[0].startswith(f"semper: {code}: "), lines[0]
    return lines[0]
