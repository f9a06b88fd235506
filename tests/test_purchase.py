"""The buyer's driver (agents/components/_purchase.py) against real agents: a refusal before any
money moved ends the purchase, and a retry under its key reports it again."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from semper.agents import Agent, AgentConfig
from semper.agents.components import _bank, _ledger
from semper.agents.components._purchase import PurchaseFailed, Shopper
from semper.agents.operator._market import init_market
from semper.agents.runtime._storage import Database
from semper.services import Amount
from semper.transport import RemoteError

DEADLINE = 30.0


@asynccontextmanager
async def market(tmp_path: Path, *, drain_to: int | None = None) -> AsyncIterator[Agent]:
    init_market(tmp_path / "m")
    if drain_to is not None:  # the buyer spent most of its money (a recorded transfer)
        db = Database.open_sync(tmp_path / "m" / "bank" / "data" / "agent.sqlite",
                                _bank.MIGRATIONS)
        db.transaction_sync(lambda c: _ledger.move(
            c, "buyer", "seller", Amount("EUR", 100_000 - drain_to), kind="transfer",
            time_ms=0))
        db.close()
    agents = [Agent(AgentConfig.load(tmp_path / "m" / n / "agent.toml"))
              for n in ("bank", "seller", "buyer")]
    async with trio.open_nursery() as nursery:
        for agent in agents[:2]:
            await nursery.start(agent.run)
        async with agents[2].session():
            yield agents[2]
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("module", ["transfer", "cheque"])
async def test_a_refused_payment_fails_the_purchase_and_moves_nothing(
    tmp_path: Path, module: str
) -> None:
    with trio.fail_after(DEADLINE):
        async with market(tmp_path, drain_to=1000) as buyer:  # EUR 10.00 left
            shopper = Shopper(buyer)
            with pytest.raises(RemoteError) as info:
                await shopper.buy("seller", "guide-001", module, "k1")  # EUR 12.50
            assert info.value.code == "payment.insufficient_funds"
            with pytest.raises(PurchaseFailed) as again:
                await shopper.buy("seller", "guide-001", module, "k1")
            assert again.value.code == "payment.insufficient_funds"
            account = await buyer.request("bank", "bank", "account", {})
            assert account["balances"] == {"EUR": 1000}
            # A fresh key, for something affordable, goes through.
            done = await shopper.buy("seller", "map-002", module, "k2")
            assert done.state == "done"
            account = await buyer.request("bank", "bank", "account", {})
            assert account["balances"] == {"EUR": 1000 - 480}


async def test_a_retry_after_success_pays_nothing_more(tmp_path: Path) -> None:
    with trio.fail_after(DEADLINE):
        async with market(tmp_path) as buyer:
            shopper = Shopper(buyer)
            first = await shopper.buy("seller", "guide-001", "transfer", "same")
            again = await shopper.buy("seller", "guide-001", "transfer", "same")
            assert (first.replayed, again.replayed) == (False, True)
            assert again.receipt == first.receipt
            account = await buyer.request("bank", "bank", "account", {})
            assert account["balances"] == {"EUR": 100_000 - 1250}
            with pytest.raises(Exception) as info:  # the key names another purchase
                await shopper.buy("seller", "map-002", "transfer", "same")
            assert getattr(info.value, "code", None) == "payment.idempotency_conflict"
