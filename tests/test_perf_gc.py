"""An agent's process runs the cyclic garbage collector less often (issue 8, item 6):
with CPython's young generation of 700 objects it ran every few requests, ~3% of each
agent's CPU in the payments benchmark. The objects loaded before the agent starts
(modules, configuration, keys) are frozen out of its scans.
"""

from __future__ import annotations

import gc
from pathlib import Path

import trio
from test_perf_purchase import DEADLINE, GUIDE, market

from semper.agents.components._purchase import Shopper
from semper.agents.runtime._agent import GC_YOUNG


async def test_an_agent_collects_after_ten_thousand_new_objects(tmp_path: Path) -> None:
    """The instance: the young generation's threshold once an agent has opened its
    storage (``run`` for the seller and the bank, ``session`` for the buyer)."""
    with trio.fail_after(DEADLINE):
        async with market(tmp_path) as agents:
            assert gc.get_threshold()[0] >= GC_YOUNG == 10_000
            assert gc.get_freeze_count() > 0
            done = await Shopper(agents["buyer"]).buy("seller", GUIDE, "transfer", "k")
    assert done.state == "done"
