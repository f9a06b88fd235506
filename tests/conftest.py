from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
# Set in the first process (xdist's controller) before its workers start: they inherit it,
# so pki.NOW, and a test id built from it, is one value in all of them.
os.environ.setdefault("SEMPER_TEST_NOW", repr(time.time()))

from pki import Market


@pytest.fixture
def market(tmp_path: Path) -> Market:
    return Market(tmp_path)
