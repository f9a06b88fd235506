"""A streamed item cut at 1 MiB, the largest chunk a catalogue allows, bought between
in-process agents: each chunk's answer is larger than a default frame, so the buyer's
delivery channel announces a larger limit (found by bench/stream.py, where every
chunk was refused as protocol.answer_too_large). tests/test_bench_stream.py covers
the purse between processes; this, the order paid whole by transfer."""

from __future__ import annotations

from pathlib import Path

import trio
from test_delivery_agents import DEADLINE, _config

from semper.agents import Agent
from semper.agents.components._delivery_buyer import CHUNK_FRAME_MARGIN
from semper.agents.components._purchase import Shopper
from semper.agents.operator._market import init_market
from semper.transport import DEFAULT_MAX_FRAME

MIB = 1 << 20
CONTENT = bytes(range(256)) * (MIB // 256) + b"tail" * 1000  # 2 chunks, the last short


async def test_a_1_mib_chunk_item_paid_by_transfer(tmp_path: Path) -> None:
    assert MIB + CHUNK_FRAME_MARGIN > DEFAULT_MAX_FRAME
    folder = tmp_path / "m"
    init_market(folder)
    seller_dir = folder / "seller"
    (seller_dir / "goods" / "big-007.bin").write_bytes(CONTENT)
    with (seller_dir / "catalogue.toml").open("a", encoding="utf-8") as f:
        f.write('\n[[offer]]\nsku = "big-007"\ntitle = "Big chunks"\nterms = "streamed"\n'
                'goods = "goods/big-007.bin"\nvalid_days = 30\n'
                f'stream = {{ chunk_size = {MIB}, price_per_chunk = "EUR:3" }}\n')
    bank, seller = Agent(_config(folder, "bank")), Agent(_config(folder, "seller"))
    buyer = Agent(_config(folder, "buyer"))
    output = tmp_path / "big.bin"
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            await nursery.start(bank.run)
            await nursery.start(seller.run)
            async with buyer.session():
                shopper = Shopper(buyer, output=output)
                done = await shopper.buy("seller", "big-007", "transfer", "t1")
                assert done.state == "done"
                assert output.read_bytes() == CONTENT
                assert shopper.streamed["t1"].chunks == 2
            nursery.cancel_scope.cancel()
