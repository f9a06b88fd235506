"""The buyer saves its paid machine in the commit of the goods and the receipt (issue 8,
item 6: each of the buyer's five commits cost it ~13 ms of a purchase's ~255 ms under
load; the paid machine's own commit guarded nothing that leaves). If fetching the
goods fails, the paid machine is saved alone, as before; a crash between the seller's
answer and that commit leaves the purchase paying, which a retry resumes by paying
again under the same key, moving no money twice.
"""

from __future__ import annotations

import collections
from pathlib import Path
from typing import Any

import pytest
import trio
from test_perf_purchase import DEADLINE, GUIDE, market

from semper.agents.components import _ledger
from semper.agents.components._purchase import Shopper
from semper.agents.runtime._storage import Database
from semper.services.commerce import PurchaseState
from semper.transport import RemoteError


def _count_commits(monkeypatch: pytest.MonkeyPatch) -> collections.Counter[str]:
    commits: collections.Counter[str] = collections.Counter()
    run_group = Database._run_group

    def counting(self: Database, fns: list[Any]) -> Any:
        commits[self.path.parent.parent.name] += len(fns)  # <agent>/data/agent.sqlite
        return run_group(self, fns)

    monkeypatch.setattr(Database, "_run_group", counting)
    return commits


async def _state(agent: Any, key: str) -> tuple[str, bool]:
    row = await agent.database.read(lambda c: c.execute(
        "SELECT state, payment IS NOT NULL FROM commerce_purchases WHERE key = ?",
        (key,)).fetchone())
    return row[0], bool(row[1])


@pytest.mark.parametrize("module", ["transfer", "cheque"])
async def test_the_buyer_commits_four_times_a_purchase(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, module: str) -> None:
    """The instance: the signed order, the accepted order with the payment's first
    statement, what the bank gave, then the paid machine, goods and receipt in one
    commit (was 5: the paid machine alone before the fetch)."""
    with trio.fail_after(DEADLINE):
        async with market(tmp_path) as agents:
            shopper = Shopper(agents["buyer"])
            await shopper.buy("seller", GUIDE, module, "warm")
            commits = _count_commits(monkeypatch)
            done = await shopper.buy("seller", GUIDE, module, "counted")
            assert await _state(agents["buyer"], "counted") == ("done", True)
    assert done.state == "done" and done.payment is not None and done.goods
    assert commits["buyer"] <= 4, commits


async def test_a_failed_fetch_leaves_the_purchase_paid(tmp_path: Path) -> None:
    with trio.fail_after(DEADLINE):
        async with market(tmp_path) as agents:
            buyer = agents["buyer"]
            shopper = Shopper(buyer)
            real = buyer.request

            async def no_goods(peer: str, service: str, op: str, body: Any = None) -> Any:
                if (service, op) == ("commerce", "fetch"):
                    raise RemoteError("peer.unavailable", "not now")
                return await real(peer, service, op, body)

            buyer.request = no_goods  # type: ignore[method-assign]
            with pytest.raises(RemoteError):
                await shopper.buy("seller", GUIDE, "transfer", "k1")
            assert await _state(buyer, "k1") == ("paid", True)
            buyer.request = real  # type: ignore[method-assign]
            again = await shopper.buy("seller", GUIDE, "transfer", "k1")
            assert again.state == "done" and again.goods


async def test_a_crash_before_the_goods_commit_is_resumed_without_paying_twice(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another member of the kind (a step's commit merged into the next): the process
    dies after the seller accepted the payment and before anything more is written;
    a new run (a fresh Shopper) resumes from ``paying``: the bank and the seller
    answer its payment again as they did, and the books move once."""
    with trio.fail_after(DEADLINE):
        async with market(tmp_path) as agents:
            buyer, bank = agents["buyer"], agents["bank"]
            shopper = Shopper(buyer)
            await shopper.buy("seller", GUIDE, "transfer", "warm")
            real = buyer.request

            class Died(BaseException):
                pass

            async def dies(peer: str, service: str, op: str, body: Any = None) -> Any:
                if (service, op) == ("commerce", "fetch"):
                    raise Died  # nothing after this point is written by this run
                return await real(peer, service, op, body)

            save = shopper._save

            async def dead_after_paying(key: str, seller: str, sku: str, module: str,
                                        purchase: Any, **kwargs: Any) -> None:
                if purchase.state is PurchaseState.PAID:
                    raise Died  # the process is gone: the paid machine is not written
                await save(key, seller, sku, module, purchase, **kwargs)

            buyer.request = dies  # type: ignore[method-assign]
            monkeypatch.setattr(shopper, "_save", dead_after_paying)
            with pytest.raises(Died):
                await shopper.buy("seller", GUIDE, "transfer", "k1")
            assert await _state(buyer, "k1") == ("paying", False)
            paid_before = await bank.database.read(lambda c: c.execute(
                "SELECT count(*) FROM ledger_entries WHERE kind = 'transfer'").fetchone()[0])
            buyer.request = real  # type: ignore[method-assign]
            again = await Shopper(buyer).buy("seller", GUIDE, "transfer", "k1")
            paid_after = await bank.database.read(lambda c: c.execute(
                "SELECT count(*) FROM ledger_entries WHERE kind = 'transfer'").fetchone()[0])
            await bank.database.read(_ledger.check_books)
    assert again.state == "done" and again.goods and again.payment is not None
    assert paid_after == paid_before
