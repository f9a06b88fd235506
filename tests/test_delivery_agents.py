"""Streamed delivery between in-process agents over loopback TLS (issue 10): a small
streamed item (a few chunks of 4 KiB) bought by transfer and by purse, and each
refusal of the delivery channel with its code and no money moved."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio
from market_helpers import wait_until

from semper.agents import Agent, AgentConfig
from semper.agents.components import _ledger
from semper.agents.components._purchase import Shopper
from semper.agents.operator._market import init_market

DEADLINE = 30.0
CHUNK = 4096
#: 5 chunks, the last shorter; EUR 0.03 a chunk.
CONTENT = bytes((i * 7 + i // CHUNK) % 251 for i in range(4 * CHUNK + 1000))
SKU = "clip-005"
PRICE = 5 * 3


def stock(folder: Path, sku: str = SKU, content: bytes = CONTENT) -> None:
    """Add a streamed item to the seller's catalogue of a market on disk."""
    seller = folder / "seller"
    (seller / "goods" / f"{sku}.bin").write_bytes(content)
    with (seller / "catalogue.toml").open("a", encoding="utf-8") as f:
        f.write(f'\n[[offer]]\nsku = "{sku}"\ntitle = "A clip"\nterms = "streamed"\n'
                f'goods = "goods/{sku}.bin"\nvalid_days = 30\n'
                f'stream = {{ chunk_size = {CHUNK}, price_per_chunk = "EUR:3" }}\n')


@dataclass
class Market:
    folder: Path
    bank: Agent
    seller: Agent
    buyer: Agent
    nursery: trio.Nursery


def _config(folder: Path, name: str) -> AgentConfig:
    return AgentConfig.load(folder / name / "agent.toml")


@asynccontextmanager
async def market(tmp_path: Path, **seller_settings: Any) -> AsyncIterator[Market]:
    folder = tmp_path / "m"
    init_market(folder)
    stock(folder)
    seller_config = _config(folder, "seller")
    if seller_settings:
        import dataclasses

        seller_config = dataclasses.replace(
            seller_config, components={**seller_config.components,
                                       "delivery": seller_settings})
    bank, seller = Agent(_config(folder, "bank")), Agent(seller_config)
    buyer = Agent(_config(folder, "buyer"))
    async with trio.open_nursery() as nursery:
        for agent in (bank, seller):
            await nursery.start(agent.run)
        async with buyer.session():
            yield Market(folder, bank, seller, buyer, nursery)
        nursery.cancel_scope.cancel()


async def balances(agent: Agent) -> dict[str, int]:
    return (await agent.request("bank", "bank", "account", {}))["balances"]  # type: ignore[no-any-return]


async def test_a_streamed_item_paid_by_transfer_arrives_whole(tmp_path: Path) -> None:
    with trio.fail_after(DEADLINE):
        async with market(tmp_path) as m:
            before = await balances(m.buyer)
            output = tmp_path / "clip.bin"
            seen: list[int] = []
            shopper = Shopper(m.buyer, output=output, on_chunk=lambda p: seen.append(p.chunks))
            done = await shopper.buy("seller", SKU, "transfer", "k1")
            assert done.state == "done" and done.goods is None
            assert output.read_bytes() == CONTENT
            assert not output.with_name("clip.bin.part").exists()
            streamed = shopper.streamed["k1"].to_json()
            assert streamed["chunks"] == 5 and streamed["bytes"] == len(CONTENT)
            assert streamed["paid"] == {"currency": "EUR", "minor_units": PRICE}
            assert streamed["resumed_from"] == 0 and seen == [1, 2, 3, 4, 5]
            assert (await balances(m.buyer))["EUR"] == before["EUR"] - PRICE
            # Again with the key: nothing paid, nothing fetched again.
            again = Shopper(m.buyer, output=output)
            replay = await again.buy("seller", SKU, "transfer", "k1")
            assert replay.replayed and (await balances(m.buyer))["EUR"] == before["EUR"] - PRICE


async def seller_chain(m: Market) -> tuple[Any, ...]:
    return await m.seller.database.read(lambda c: c.execute(  # type: ignore[no-any-return]
        "SELECT chain, highest, state, redeem_at FROM delivery_chains").fetchone())


async def redeemed(m: Market) -> None:
    """Wait (bounded, real time) until the seller's redemption task redeemed."""
    await wait_until(lambda: m.seller.database.read_sync(lambda c: c.execute(
        "SELECT state FROM delivery_chains").fetchone())[0] == "redeemed",
        "the seller redeemed the chain")


async def test_a_streamed_item_paid_by_purse(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import semper.agents.components._delivery_seller as seller_module

    monkeypatch.setattr(seller_module, "REDEEM_AFTER_MS", 0)
    with trio.fail_after(DEADLINE):
        async with market(tmp_path) as m:
            before = await balances(m.buyer)
            seller_before = await balances_of(m, "seller")
            output = tmp_path / "clip.bin"
            shopper = Shopper(m.buyer, output=output)
            await shopper.buy("seller", SKU, "purse", "p1")
            assert output.read_bytes() == CONTENT
            streamed = shopper.streamed["p1"].to_json()
            assert streamed["paid"] == {"currency": "EUR", "minor_units": PRICE}
            await redeemed(m)
            _, highest, _, _ = await seller_chain(m)
            assert highest == 5
            assert (await balances(m.buyer))["EUR"] == before["EUR"] - PRICE
            assert (await balances_of(m, "seller"))["EUR"] == seller_before["EUR"] + PRICE
            # The same command again: nothing paid, nothing fetched.
            again = Shopper(m.buyer, output=output)
            await again.buy("seller", SKU, "purse", "p1")
            assert again.streamed["p1"].resumed_from == 5
            assert (await balances(m.buyer))["EUR"] == before["EUR"] - PRICE


async def balances_of(m: Market, agent_id: str) -> dict[str, int]:
    """``agent_id``'s balances, read from the bank's books (which must balance)."""

    def read(c: Any) -> dict[str, int]:
        _ledger.check_books(c)
        return _ledger.balances(c, agent_id)

    return await m.bank.database.read(read)
