"""The card gateway killed with SIGKILL (agents/runtime/_faults.py) inside an
authorisation and after a capture's commit, as tests/test_bank_crash.py does for
transfers and cheques: the bank runs as its own process with ``SEMPER_CRASH_AT``,
the seller (in-process, over TLS) sees its channel close, the bank restarts without
the variable, the seller retries with the same key and again: one hold and one
capture, the retries answered with the same statement, the books balanced.
(test_card_agents.py stops the gateway at every card.* point in-process; these two
are the real kill, before and after a commit.)
"""

from __future__ import annotations

import os
import signal
import sqlite3
from pathlib import Path

import pytest
import trio
from market_helpers import config_of, make_market, running
from test_bank_crash import DEADLINE, start_bank, stop
from test_card_agents import World, eur

from semper.agents import Agent
from semper.agents.components import _ledger
from semper.agents.instruments.card import HELD
from semper.agents.operator._market import DEMO_FUNDS
from semper.transport import ChannelClosed


def _books(folder: Path) -> dict[str, int]:
    connection = sqlite3.connect(folder / "bank" / "data" / "agent.sqlite")
    try:
        _ledger.check_books(connection)
        kinds = dict(connection.execute(
            "SELECT kind, count(*) FROM ledger_entries WHERE kind LIKE 'card.%' GROUP BY kind"))
        return {**{h: _ledger.balances(connection, h).get("EUR", 0)
                   for h in ("buyer", "seller", HELD)}, **kinds}
    finally:
        connection.close()


@pytest.mark.parametrize("point", [
    "card.authorize.applied",
    # Two bank starts cost ~3-8 s on a loaded machine: the second case only on request.
    pytest.param("card.capture.committed", marks=pytest.mark.slow),
])
async def test_the_gateway_killed_then_retried_holds_and_captures_once(
        tmp_path: Path, point: str, request: pytest.FixtureRequest) -> None:
    if "slow" in request.node.keywords and not (
            os.environ.get("SEMPER_SLOW") or "slow" in (request.config.option.markexpr or "")):
        pytest.skip("the second kill: SEMPER_SLOW=1 or -m slow")
    folder = make_market(tmp_path / "m")
    buyer, seller = Agent(config_of(folder, "buyer")), Agent(config_of(folder, "seller"))
    w = World(None, buyer, seller, None)  # type: ignore[arg-type]  # the bank is a process
    with trio.fail_after(DEADLINE * 2):
        bank = await start_bank(folder, point)
        try:
            async with running(buyer), running(seller):
                request = await w.instructions(eur(480), merchant_key="auth-crash")
                if point.startswith("card.authorize"):
                    with pytest.raises(ChannelClosed):
                        await w.authorize(request)
                else:
                    auth = await w.authorize(request)
                    with pytest.raises(ChannelClosed):
                        await w.capture(auth.authorization_id, eur(480), "cap-crash")
                assert await bank.wait() == -signal.SIGKILL
                bank = await start_bank(folder, None)
                auth = await w.authorize(request)
                assert await w.authorize(request) == auth
                captured = await w.capture(auth.authorization_id, eur(480), "cap-crash")
                assert await w.capture(auth.authorization_id, eur(480), "cap-crash") == captured
        finally:
            await stop(bank, signal.SIGKILL)
    assert _books(folder) == {"buyer": DEMO_FUNDS.minor_units - 480, "seller": 480, HELD: 0,
                              "card.authorized": 1, "card.captured": 1}
