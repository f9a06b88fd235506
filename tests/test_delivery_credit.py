"""The one-chunk credit window of a purse stream (protocol.md 13.3): chunk j is asked
with payword j (paying chunks 0..j-1) and sent on credit; a request that would leave
two chunks unpaid is refused and moves nothing; two requests in flight are answered
in order; the last chunk is paid by ``delivery.close``, also after a break between
the last chunk and the close (the rerun opens ``from`` = chunks to pay it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio
from test_attack_delivery import ticketed
from test_delivery_agents import (
    CHUNK,
    CONTENT,
    DEADLINE,
    PRICE,
    SKU,
    balances_of,
    market,
    redeemed,
    refused,
)

from semper.agents.components._purchase import Shopper
from semper.agents.components._purse import Purse


async def ticks(m: Any) -> tuple[int, int]:
    """The seller's (highest payword, chunks sent) of the one chain."""
    return await m.seller.database.read(lambda c: c.execute(  # type: ignore[no-any-return]
        "SELECT highest, sent FROM delivery_chains").fetchone())


async def test_one_chunk_on_credit_and_no_more(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    import semper.agents.components._delivery_seller as seller_module

    monkeypatch.setattr(seller_module, "REDEEM_AFTER_MS", 0)
    with trio.fail_after(DEADLINE):
        async with market(tmp_path) as m:
            seller_before = await balances_of(m, "seller")
            ticket, chain = await ticketed(m, tmp_path, "credit", monkeypatch)
            purse = m.buyer.component(Purse)
            async with m.buyer.connect("seller") as channel:
                opened = await channel.request("delivery", "open", {"ticket": ticket, "from": 0})
                stream = opened["stream"]

                async def chunk(index: int, payword: bytes | None = None) -> Any:
                    body: dict[str, Any] = {"stream": stream, "index": index}
                    if payword is not None:
                        body["payword"] = payword
                    return await channel.request("delivery", "chunk", body)

                assert (await chunk(0))["index"] == 0  # on credit: nothing paid yet
                assert await ticks(m) == (0, 1)
                # Chunk 1 without payword 1 would leave chunks 0 and 1 unpaid.
                error = await refused(chunk(1), "purse.bad_payword")
                assert error.detail == {"index": 1, "highest": 0}
                assert await ticks(m) == (0, 1)  # nothing ticked, nothing sent
                assert (await chunk(1, await purse.pay(chain, 0)))["index"] == 1
                assert await ticks(m) == (1, 2)
                # The buyer's two requests in flight, sent together: answered in order,
                # the seller never more than one chunk ahead of the paywords.
                two, three = await purse.pay(chain, 1), await purse.pay(chain, 2)
                got: dict[int, Any] = {}

                async def ask(index: int, payword: bytes) -> None:
                    got[index] = await chunk(index, payword)

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(ask, 3, three)
                    nursery.start_soon(ask, 2, two)
                assert [got[i]["data"] for i in (2, 3)] == [CONTENT[2 * CHUNK:3 * CHUNK],
                                                         CONTENT[3 * CHUNK:4 * CHUNK]]
                assert await ticks(m) == (3, 4)
                assert (await chunk(4, await purse.pay(chain, 3)))["index"] == 4
                assert await ticks(m) == (4, 5)  # the last chunk sent on credit
                await channel.request("delivery", "close",
                                      {"stream": stream, "payword": await purse.pay(chain, 4)})
                assert await ticks(m) == (5, 5)
            await redeemed(m)
            assert (await balances_of(m, "seller"))["EUR"] == seller_before["EUR"] + PRICE


async def test_a_break_before_the_last_payment_is_paid_by_the_rerun(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The buyer's run breaks after the last chunk verified and its payword was drawn,
    before ``delivery.close`` carried it: the seller holds one payword less. The
    same purchase again opens ``from`` = chunks, pays the last chunk with the close,
    and ends with the receipt for the whole item; nothing is paid twice."""
    import semper.agents.components._delivery_buyer as buyer_module

    class Broke(Exception):
        pass

    def broke_before_close(name: str, index: int) -> None:
        if name == "stream.buyer.chunk" and index == 4:  # payword 5 drawn, not sent
            raise Broke("the channel broke (test)")

    with trio.fail_after(DEADLINE):
        async with market(tmp_path) as m:
            before = await balances_of(m, "buyer")
            output = tmp_path / "clip.bin"
            with monkeypatch.context() as patched:
                patched.setattr(buyer_module, "crash_point", broke_before_close)
                with pytest.raises(Exception) as info:
                    await Shopper(m.buyer, output=output).buy("seller", SKU, "purse", "last")
                assert getattr(info.value, "code", None) == "delivery.interrupted"
            verified = await m.buyer.database.read(lambda c: c.execute(
                "SELECT verified FROM delivery_downloads WHERE key = 'last'").fetchone()[0])
            assert verified == 5 and await ticks(m) == (4, 5)  # one chunk on credit
            again = Shopper(m.buyer, output=output)
            done = await again.buy("seller", SKU, "purse", "last")
            assert again.streamed["last"].resumed_from == 5
            assert done.state == "done" and done.receipt is not None
            assert output.read_bytes() == CONTENT
            assert await ticks(m) == (5, 5)
            assert (await balances_of(m, "buyer"))["EUR"] == before["EUR"] - PRICE
