"""The seller reads a sale's row once to settle its payment (issue 8, item 6): it read
the row for the sale, then again for the payment it holds, in the same step under the
sale's lock (five reads a purchase, then four). Then payment.accept asked in one read
whether the buyer was ever given money back and in another for the sale's row, each
read a snapshot of its own (~25 us of CPU before it reads anything): one statement
answers both now (three reads a purchase). The same answers: a repeated payment is
recognised from the payment the row holds; money given back before is refused again.
"""

from __future__ import annotations

import collections
from pathlib import Path
from typing import Any

import pytest
import trio
from test_perf_purchase import DEADLINE, GUIDE, market

from semper.agents.components._purchase import Shopper
from semper.agents.runtime._storage import Database


def _count_reads(monkeypatch: pytest.MonkeyPatch) -> collections.Counter[str]:
    reads: collections.Counter[str] = collections.Counter()
    read = Database.read

    async def counting(self: Database, fn: Any) -> Any:
        reads[self.path.parent.parent.name] += 1  # <agent>/data/agent.sqlite
        return await read(self, fn)

    monkeypatch.setattr(Database, "read", counting)
    return reads


async def test_the_seller_reads_three_times_a_purchase(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    with trio.fail_after(DEADLINE):
        async with market(tmp_path) as agents:
            shopper = Shopper(agents["buyer"])
            await shopper.buy("seller", GUIDE, "transfer", "warm")
            reads = _count_reads(monkeypatch)
            done = await shopper.buy("seller", GUIDE, "transfer", "counted")
            monkeypatch.undo()
            again = await shopper.buy("seller", GUIDE, "transfer", "counted")
    assert done.state == "done" and again.replayed
    assert reads["seller"] <= 3, reads


async def test_a_refund_reads_the_sale_s_row_once(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Another member: a refund read the sale, then the row again for its payment and
    refund. Asked twice, the second answer is the first (the refund the row holds)."""
    with trio.fail_after(DEADLINE):
        async with market(tmp_path) as agents:
            shopper = Shopper(agents["buyer"])
            await shopper.buy("seller", GUIDE, "transfer", "k")
            reads = _count_reads(monkeypatch)
            refunded = await shopper.refund("k")
            monkeypatch.undo()
            again = await shopper.refund("k")
    assert refunded.state == "refunded" and refunded.refund is not None
    assert again.replayed and again.refund == refunded.refund
    assert reads["seller"] <= 1, reads


async def test_money_given_back_before_is_refused_again_in_two_reads(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another member: for a buyer we gave money back to, payment.accept read whether
    it had a return twice (its own check, then again in ``_returned_before``). The same
    proof handed over again gets the first refusal, as before, in two reads: returns
    and row, then the refusal (was three)."""
    from test_commerce_wire import running_market

    async with running_market(tmp_path / "m") as m:
        with trio.fail_after(DEADLINE):
            order = await m.place(await m.offer(), key="by-cheque", module="cheque")
            proof = await m["buyer"].request("bank", "bank", "transfer", m.transfer_order(
                "buyer", "seller", 1250, key="by-transfer", reference=order.digest))
            body = {"module": "transfer", "reference": order.digest, "proof": proof}
            first = await m.refused("buyer", "seller", "payment", "accept", body)
            reads = _count_reads(monkeypatch)
            again = await m.refused("buyer", "seller", "payment", "accept", body)
            monkeypatch.undo()
    assert first.code == "commerce.unsupported_payment" and first.detail["returned"]
    assert (again.code, again.detail) == (first.code, first.detail)
    assert reads["seller"] <= 2, reads
