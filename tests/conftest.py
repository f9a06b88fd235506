from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from pki import Market


@pytest.fixture
def market(tmp_path: Path) -> Market:
    return Market(tmp_path)
