"""The ecash bank half killed with SIGKILL at each of its crash points
(agents/runtime/_faults.py; ``ecash.withdraw|deposit|exchange.received|checked|
applied|committed``), as tests/test_bank_crash.py does for transfers and cheques:
the bank runs as its own process with ``SEMPER_CRASH_AT``, the buyer or the seller
(in-process, over TLS) sees its channel close, the bank restarts without the
variable, and the same request is sent again, twice: right after the kill the
books hold the request applied exactly when the point was ``.committed``
(``books_after``: tests/test_ecash_statemachine.py checks that its in-process
simulation of a kill leaves the same); after the retries the money moved once, the
retries answered alike (the same blind signatures, the same settlement), every coin
taken once, the books balanced. A bank start costs 1-4 s: one point runs by
default, the others with SEMPER_SLOW=1 or ``-m slow``.
"""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
from pathlib import Path

import pytest
import trio
from market_helpers import config_of, running
from test_bank_crash import DEADLINE, start_bank, stop
from test_ecash_bank import SETTINGS, Clock, World, bank_config, blind_coins, unblind

from semper.agents import Agent
from semper.agents.components import _ledger
from semper.agents.instruments.ecash import OUTSTANDING, EcashBank
from semper.agents.operator._market import DEMO_FUNDS, init_market
from semper.services.payment.ecash import blinded_order
from semper.transport import ChannelClosed

STEPS = ("received", "checked", "applied", "committed")
#: The point that runs by default: inside the deposit's transaction, before COMMIT.
DEFAULT = "ecash.deposit.applied"


@pytest.fixture(scope="module")
def prebuilt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A market whose bank keeps [components.ecash] SETTINGS in its agent.toml and
    made its keys once."""
    folder = tmp_path_factory.mktemp("ecash-crash") / "market"
    init_market(folder)
    config = bank_config(folder)
    (folder / "bank" / "agent.toml").write_text(config.to_toml(base=folder / "bank"))
    assert config_of(folder, "bank").components == {"ecash": SETTINGS}

    async def make_keys() -> None:
        async with running(Agent(config)) as bank:
            await bank.component(EcashBank).keys_of("EUR")

    trio.run(make_keys)
    return folder


def _books(folder: Path) -> dict[str, int]:
    connection = sqlite3.connect(folder / "bank" / "data" / "agent.sqlite")
    try:
        _ledger.check_books(connection)
        kinds = dict(connection.execute(
            "SELECT kind, count(*) FROM ledger_entries WHERE kind LIKE 'ecash.%' GROUP BY kind"))
        spent = connection.execute("SELECT count(*) FROM ecash_spent").fetchone()[0]
        return {**{h: _ledger.balances(connection, h).get("EUR", 0)
                   for h in ("buyer", "seller", OUTSTANDING)}, **kinds, "spent": spent}
    finally:
        connection.close()


def books_after(op: str, *, done: bool) -> dict[str, int]:
    """What ``_books`` reads once the scenario below has run up to ``op`` (a
    withdrawal of 8 in three coins, then their deposit or their exchange): ``op``
    applied (``done``) or not."""
    withdrawn = op != "withdraw" or done
    paid = 8 if op == "deposit" and done else 0
    return {"buyer": DEMO_FUNDS.minor_units - 8 * withdrawn, "seller": paid,
            OUTSTANDING: 8 * withdrawn - paid,
            **({"ecash.withdrawn": 1} if withdrawn else {}),
            **({"ecash.deposited": 1} if paid else {}),
            "spent": 3 if op != "withdraw" and done else 0}


@pytest.mark.parametrize("point", [
    pytest.param(f"ecash.{op}.{step}",
                 marks=() if f"ecash.{op}.{step}" == DEFAULT else pytest.mark.slow)
    for op in ("withdraw", "deposit", "exchange") for step in STEPS])
async def test_the_bank_killed_then_retried_moves_the_money_once(
        prebuilt: Path, tmp_path: Path, point: str, request: pytest.FixtureRequest) -> None:
    if "slow" in request.node.keywords and not (
            os.environ.get("SEMPER_SLOW") or "slow" in (request.config.option.markexpr or "")):
        pytest.skip("another crash point: SEMPER_SLOW=1 or -m slow")
    folder = Path(shutil.copytree(prebuilt, tmp_path / "market"))
    op = point.split(".")[1]
    killed = books_after(op, done=point.endswith(".committed"))  # as the kill leaves it
    buyer, seller = Agent(config_of(folder, "buyer")), Agent(config_of(folder, "seller"))
    w = World(None, buyer, seller, Clock())  # type: ignore[arg-type]  # the bank is a process
    with trio.fail_after(DEADLINE * 3):
        bank = await start_bank(folder, point)
        try:
            async with running(buyer), running(seller):
                keys = await w.keys()
                pending = blind_coins([keys[5], keys[2], keys[1]])
                if op == "withdraw":
                    with pytest.raises(ChannelClosed):
                        await w.ask_withdraw(pending, "w1")
                    assert await bank.wait() == -signal.SIGKILL
                    assert _books(folder) == killed
                    bank = await start_bank(folder, None)
                answer = await w.ask_withdraw(pending, "w1")
                assert await w.ask_withdraw(pending, "w1") == answer
                coins = unblind(pending, answer.blind_signatures)
                if op == "deposit":
                    with pytest.raises(ChannelClosed):
                        await w.pay(coins)
                    assert await bank.wait() == -signal.SIGKILL
                    assert _books(folder) == killed
                    bank = await start_bank(folder, None)
                    deposited = await w.pay(coins)
                    assert await w.pay(coins) == deposited
                if op == "exchange":
                    new = blind_coins([keys[2], keys[2], keys[2], keys[1], keys[1]])
                    order = blinded_order([p.asked for p in new])
                    spends = [h.spend(purpose="exchange", payee="bank", reference=order)
                              for h in coins]
                    with pytest.raises(ChannelClosed):
                        await w.exchange(spends, new)
                    assert await bank.wait() == -signal.SIGKILL
                    assert _books(folder) == killed
                    bank = await start_bank(folder, None)
                    exchanged = await w.exchange(spends, new)
                    assert await w.exchange(spends, new) == exchanged
                    assert len(unblind(new, exchanged.blind_signatures)) == 5
        finally:
            await stop(bank, signal.SIGKILL)
    assert _books(folder) == books_after(op, done=True)
