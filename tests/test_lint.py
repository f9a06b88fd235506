"""`make lint` holds: mypy --strict on transport/ and services/ is clean, and ruff on
the whole tree.

Cheap enough for the suite (about 3 s cold on 2 cores), so a type error fails
``make test`` and not only ``make lint``, which nobody is made to run.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_mypy_is_clean_on_transport_and_services() -> None:
    # [tool.mypy] in pyproject.toml names the packages and the strictness; no cache
    # is written (parallel runs would share it), so each run checks from scratch.
    done = subprocess.run([sys.executable, "-m", "mypy", "--cache-dir", "/dev/null"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Success" in done.stdout


def test_ruff_is_clean() -> None:
    """The stop hook and `make lint` run ruff over the tree; helpers' docstrings went
    past 100 columns unseen because only `make lint` ran it. Cheap: under a second."""
    done = subprocess.run([sys.executable, "-m", "ruff", "check", "--quiet", "."],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
