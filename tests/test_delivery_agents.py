"""Streamed delivery between in-process agents over loopback TLS (issue 10): a small
streamed item (a few chunks of 4 KiB) bought by transfer and by purse, and each
refusal of the delivery channel with its code and no money moved."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from market_helpers import wait_until

from semper.agents import Agent, AgentConfig
from semper.agents.components import _ledger
from semper.agents.components._purchase import Shopper
from semper.agents.operator._market import init_market
from semper.services.statements import Statement
from semper.transport import RemoteError

DEADLINE = 30.0
CHUNK = 4096
#: 5 chunks, the last shorter; EUR 0.03 a chunk.
CONTENT = bytes((i * 7 + i // CHUNK) % 251 for i in range(4 * CHUNK + 1000))
SKU = "clip-005"
REFUNDABLE = "clip-006"  # the same, refundable for 14 days
PRICE = 5 * 3


def stock(folder: Path, sku: str = SKU, content: bytes = CONTENT, refund_days: int = 0
          ) -> None:
    """Add a streamed item to the seller's catalogue of a market on disk."""
    seller = folder / "seller"
    (seller / "goods" / f"{sku}.bin").write_bytes(content)
    with (seller / "catalogue.toml").open("a", encoding="utf-8") as f:
        f.write(f'\n[[offer]]\nsku = "{sku}"\ntitle = "A clip"\nterms = "streamed"\n'
                f'goods = "goods/{sku}.bin"\nvalid_days = 30\nrefund_days = {refund_days}\n'
                f'stream = {{ chunk_size = {CHUNK}, price_per_chunk = "EUR:3" }}\n')


@dataclass
class Market:
    folder: Path
    bank: Agent
    seller: Agent
    buyer: Agent
    nursery: trio.Nursery
    seller_scope: trio.CancelScope


def _config(folder: Path, name: str) -> AgentConfig:
    return AgentConfig.load(folder / name / "agent.toml")


@asynccontextmanager
async def market(tmp_path: Path, **seller_settings: Any) -> AsyncIterator[Market]:
    folder = tmp_path / "m"
    init_market(folder)
    stock(folder)
    stock(folder, REFUNDABLE, refund_days=14)
    seller_config = _config(folder, "seller")
    if seller_settings:
        import dataclasses

        seller_config = dataclasses.replace(
            seller_config, components={**seller_config.components,
                                       "delivery": seller_settings})
    bank, seller = Agent(_config(folder, "bank")), Agent(seller_config)
    buyer = Agent(_config(folder, "buyer"))
    async with trio.open_nursery() as nursery:
        await nursery.start(bank.run)
        scope = await nursery.start(_serve, seller)
        async with buyer.session():
            yield Market(folder, bank, seller, buyer, nursery, scope)
        nursery.cancel_scope.cancel()


async def _serve(agent: Agent, *, task_status: Any) -> None:
    """Run ``agent`` under a cancel scope of its own (given to the caller), so that a
    test can stop it and start another in its place."""
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:
            await nursery.start(agent.run)
            task_status.started(scope)


async def restart_seller(m: Market, clock: Any = None) -> None:
    """Stop the seller (its channels closed) and run a new one on its folder."""
    with trio.CancelScope(shield=True):
        await m.seller.close_channels()
    m.seller_scope.cancel()
    await trio.testing.wait_all_tasks_blocked()
    m.seller = Agent(_config(m.folder, "seller"), clock=clock)
    m.seller_scope = await m.nursery.start(_serve, m.seller)


async def balances(agent: Agent) -> dict[str, int]:
    return (await agent.request("bank", "bank", "account", {}))["balances"]  # type: ignore[no-any-return]


@pytest.mark.parametrize("module", ["transfer", "cheque"])
async def test_a_streamed_item_paid_whole_arrives_whole(tmp_path: Path, module: str) -> None:
    with trio.fail_after(DEADLINE):
        async with market(tmp_path) as m:
            before = await balances(m.buyer)
            output = tmp_path / "clip.bin"
            seen: list[int] = []
            shopper = Shopper(m.buyer, output=output, on_chunk=lambda p: seen.append(p.chunks))
            done = await shopper.buy("seller", SKU, module, "k1")
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
            replay = await again.buy("seller", SKU, module, "k1")
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
            done = await shopper.buy("seller", SKU, "purse", "p1")
            assert output.read_bytes() == CONTENT
            streamed = shopper.streamed["p1"].to_json()
            assert streamed["paid"] == {"currency": "EUR", "minor_units": PRICE}
            assert streamed["resumed_from"] == 0
            # It ends as any purchase: done, with the seller's receipt naming the
            # payment, the bank's purse.redeemed of the chain (what a dispute shows).
            assert done.state == "done" and done.receipt is not None
            assert done.payment is not None and done.payment.module == "purse"
            settlement = done.payment.settlement
            assert settlement.type == "purse.redeemed" and settlement.body["index"] == 5
            assert done.receipt.body["payment"] == settlement.digest
            assert done.receipt.body["payment_type"] == "purse.redeemed"
            assert done.to_json()["receipt"]["amount"] == {"currency": "EUR",
                                                           "minor_units": PRICE}
            await redeemed(m)  # by the buyer's fetch, before the seller's task
            sale = await m.seller.database.read(lambda c: c.execute(
                "SELECT state FROM commerce_sales").fetchone())
            assert sale == ("receipted",)
            _, highest, _, _ = await seller_chain(m)
            assert highest == 5
            kept = {Statement.from_bytes(r.statement).type for r in await m.seller.archive.records(
                shopper_order(m, "p1").hex())}
            assert {"purse.commitment", "purse.reservation", "purse.redeemed",
                    "delivery.ticket", "commerce.delivery", "commerce.receipt"} <= kept, kept
            held = [Statement.from_bytes(r.statement).type for r in
                    await m.buyer.archive.records(shopper_order(m, "p1").hex())]
            assert held.count("delivery.ticket") == 1, held
            assert held.count("commerce.receipt") == 1, held
            assert (await balances(m.buyer))["EUR"] == before["EUR"] - PRICE
            assert (await balances_of(m, "seller"))["EUR"] == seller_before["EUR"] + PRICE
            # The same command again: nothing paid, nothing fetched.
            again = Shopper(m.buyer, output=output)
            replay = await again.buy("seller", SKU, "purse", "p1")
            assert replay.replayed and replay.receipt == done.receipt
            assert (await balances(m.buyer))["EUR"] == before["EUR"] - PRICE


def shopper_order(m: Market, key: str) -> bytes:
    """The digest of the order the buyer signed under ``key``."""
    from semper.services.commerce import Purchase
    from semper.services.statements import canonical_decode

    row = m.buyer.database.read_sync(lambda c: c.execute(
        "SELECT machine FROM commerce_purchases WHERE key = ?", (key,)).fetchone())
    order = Purchase.from_state(canonical_decode(row[0])).order
    assert order is not None
    return order.digest


async def balances_of(m: Market, agent_id: str) -> dict[str, int]:
    """``agent_id``'s balances, read from the bank's books (which must balance)."""

    def read(c: Any) -> dict[str, int]:
        _ledger.check_books(c)
        return _ledger.balances(c, agent_id)

    return await m.bank.database.read(read)


# -- refusals ---------------------------------------------------------------------------

class Stop(Exception):
    """Raised from a progress callback: the stream stops after that chunk."""


def stop_after(count: int) -> Any:
    def check(progress: Any) -> None:
        if progress.chunks >= count:
            raise Stop

    return check


async def half_bought(m: Market, tmp_path: Path, key: str, module: str,
                      chunks: int = 1, sku: str = SKU) -> tuple[bytes, bytes | None]:
    """A purchase of the streamed item whose stream stopped after ``chunks``
    chunks; its ticket and purse chain as the buyer keeps them."""
    shopper = Shopper(m.buyer, output=tmp_path / f"{key}.bin", on_chunk=stop_after(chunks))
    with pytest.raises(Exception) as stopped:
        await shopper.buy("seller", sku, module, key)
    assert getattr(stopped.value, "code", None) == "delivery.interrupted"
    row = await m.buyer.database.read(lambda c: c.execute(
        "SELECT ticket, chain, verified FROM delivery_downloads WHERE key = ?",
        (key,)).fetchone())
    assert row[2] == chunks
    if module == "purse":  # the chunk asked on credit: taken by the seller, or not
        await streams_ended(m)
    return row[0], row[1]


async def streams_ended(m: Market) -> None:
    """Wait (bounded) until the seller saw the broken stream's channel close and no
    chunk request of it holds a chain: its ticks are final."""
    from semper.agents.components._delivery_seller import DeliverySeller

    delivery = m.seller.component(DeliverySeller)
    await wait_until(lambda: not delivery._live() and not any(
        lock.locked() for lock in delivery._chains.values()), "the stream ended")


async def refused(call: Any, code: str) -> RemoteError:
    with pytest.raises(RemoteError) as info:
        await call
    assert info.value.code == code, info.value
    return info.value


async def test_a_ticket_is_only_its_buyers_and_only_the_sellers(tmp_path: Path) -> None:
    with trio.fail_after(DEADLINE):
        async with market(tmp_path) as m:
            ticket, _ = await half_bought(m, tmp_path, "t1", "transfer")
            # Another agent presents the buyer's ticket: not its holder.
            other = Agent(_config(m.folder, "arbiter"))
            async with other.session(), other.connect("seller") as channel:
                await refused(channel.request("delivery", "open",
                                              {"ticket": ticket, "from": 0}),
                              "delivery.wrong_holder")
            # A ticket the buyer signed itself (its own "delivery.ticket"): not the seller's.
            body = Statement.from_bytes(ticket).body
            forged = m.buyer.evidence.sign("delivery.ticket", body)
            async with m.buyer.connect("seller") as channel:
                await refused(channel.request("delivery", "open",
                                              {"ticket": forged.to_bytes(), "from": 0}),
                              "delivery.bad_ticket")
                # The genuine one opens; twice at once is busy.
                opened = await channel.request("delivery", "open", {"ticket": ticket, "from": 1})
                assert opened["from"] == 1 and opened["chunks"] == 5
                await refused(channel.request("delivery", "open",
                                              {"ticket": ticket, "from": 1}), "delivery.busy")
                # Not the next chunk.
                await refused(channel.request("delivery", "chunk",
                                              {"stream": opened["stream"], "index": 3}),
                              "delivery.out_of_order")


async def test_the_buyer_refuses_a_ticket_for_another_order(tmp_path: Path) -> None:
    """The seller's ticket of another purchase (a buggy or lying seller) is refused by
    the buyer before it streams or pays anything."""
    from semper.agents.components import _purchase
    from semper.services.commerce import Purchase
    from semper.services.statements import canonical_decode

    with trio.fail_after(DEADLINE):
        async with market(tmp_path) as m:
            first, _ = await half_bought(m, tmp_path, "o1", "transfer")
            await half_bought(m, tmp_path, "o2", "transfer")
            row = await m.buyer.database.read(lambda c: c.execute(
                "SELECT machine FROM commerce_purchases WHERE key = 'o2'").fetchone())
            purchase = Purchase.from_state(canonical_decode(row[0]))
            shopper = Shopper(m.buyer)
            certificate = (await m.buyer.channel("seller")).peer.certificate
            with pytest.raises(_purchase.BadTicket) as info:
                shopper._check_ticket(first, purchase, "seller", certificate, chain=None)
            assert info.value.code == "delivery.bad_ticket"
            assert info.value.detail["field"] == "order"


async def test_an_expired_ticket_is_refused(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import semper.agents.components._delivery_seller as seller_module

    monkeypatch.setattr(seller_module, "PAID_TICKET_MS", -1)  # expired when issued
    with trio.fail_after(DEADLINE):
        async with market(tmp_path) as m:
            shopper = Shopper(m.buyer, output=tmp_path / "x.bin")
            with pytest.raises(RemoteError) as info:
                await shopper.buy("seller", SKU, "transfer", "e1")
            assert info.value.code == "delivery.ticket_expired"
            assert not (tmp_path / "x.bin").exists()


@pytest.mark.parametrize(("caps", "scope"), [
    ({"max_streams_per_buyer": 1, "max_streams": 2}, "buyer"),
    ({"max_streams_per_buyer": 4, "max_streams": 1}, "total"),
])
async def test_stream_caps_per_buyer_and_in_all(tmp_path: Path, caps: dict[str, int],
                                                scope: str) -> None:
    with trio.fail_after(DEADLINE):
        async with market(tmp_path, **caps) as m:
            one, _ = await half_bought(m, tmp_path, "c1", "transfer")
            two, _ = await half_bought(m, tmp_path, "c2", "transfer")
            async with m.buyer.connect("seller") as channel:
                await channel.request("delivery", "open", {"ticket": one, "from": 1})
                error = await refused(channel.request("delivery", "open",
                                                      {"ticket": two, "from": 1}),
                                      "delivery.too_many_streams")
                assert error.detail["scope"] == scope
            # Its channel closed, the stream is gone: the ticket opens again.
            async with m.buyer.connect("seller") as channel:
                opened = await channel.request("delivery", "open", {"ticket": two, "from": 1})
                await channel.request("delivery", "close", {"stream": opened["stream"]})
                await channel.request("delivery", "open", {"ticket": one, "from": 1})


async def test_replayed_and_out_of_order_paywords_move_no_money(tmp_path: Path) -> None:
    from semper.agents.components._purse import Purse

    with trio.fail_after(DEADLINE):
        async with market(tmp_path) as m:
            ticket, chain = await half_bought(m, tmp_path, "r1", "purse", chunks=2)
            assert chain is not None
            purse = m.buyer.component(Purse)
            # Chunk i's request carries payword i (paying chunks 0..i-1).
            _, second, third, fourth = [await purse.pay(chain, i) for i in (0, 1, 2, 3)]
            async with m.buyer.connect("seller") as channel:
                opened = await channel.request("delivery", "open", {"ticket": ticket, "from": 3})
                stream = opened["stream"]
                answer = await channel.request("delivery", "chunk", {
                    "stream": stream, "index": 3, "payword": third})
                assert answer["index"] == 3 and (await seller_chain(m))[1] == 3
                await refused(channel.request("delivery", "chunk", {
                    "stream": stream, "index": 4, "payword": third}), "purse.replayed")
                await refused(channel.request("delivery", "chunk", {
                    "stream": stream, "index": 4, "payword": second}), "purse.bad_payword")
                await refused(channel.request("delivery", "chunk", {
                    "stream": stream, "index": 2, "payword": fourth}), "delivery.out_of_order")
                await refused(channel.request("delivery", "chunk", {
                    "stream": stream, "index": 4}), "purse.bad_payword")
                assert (await seller_chain(m))[1] == 3  # no tick moved
                answer = await channel.request("delivery", "chunk", {
                    "stream": stream, "index": 4, "payword": fourth})
                assert answer["index"] == 4 and (await seller_chain(m))[1] == 4


class Later:
    """The machine's clock, ``offset_ms`` ahead."""

    def __init__(self, offset_ms: int) -> None:
        self.offset_ms = offset_ms

    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000 + self.offset_ms


async def test_an_unfinished_chain_is_redeemed_at_expiry_after_a_restart(
        tmp_path: Path) -> None:
    """The stream stopped after 2 of 5 chunks: the seller, restarted after the chain's
    expiry, redeems what was paid from what it stored (2 x price), and the rest of
    the reservation goes back to the buyer."""
    from semper.agents.components._purse import DEFAULT_VALIDITY_MS

    with trio.fail_after(DEADLINE):
        async with market(tmp_path) as m:
            before = await balances_of(m, "buyer")
            seller_before = await balances_of(m, "seller")
            await half_bought(m, tmp_path, "x1", "purse", chunks=2)
            # Chunks 0, 1 verified, payword 3 drawn (paying chunk 2, asked on credit):
            # the seller took it, or not yet when the stream stopped.
            highest, state = (await seller_chain(m))[1:3]
            assert highest in (2, 3) and state == "open"
            assert (await balances_of(m, "buyer"))["EUR"] == before["EUR"] - PRICE  # reserved
            await restart_seller(m, clock=Later(DEFAULT_VALIDITY_MS + 1000))
            await redeemed(m)
            paid = highest * 3
            assert (await balances_of(m, "seller"))["EUR"] == seller_before["EUR"] + paid
            assert (await balances_of(m, "buyer"))["EUR"] == before["EUR"] - paid
            assert (await balances_of(m, _ledger.system_account("purse-reserved"))
                    ).get("EUR", 0) == 0


async def test_a_refunded_order_is_not_streamed_again(tmp_path: Path) -> None:
    """As commerce.fetch refuses a refunded order's goods, its ticket no longer opens
    a stream (it would deliver again what was paid back)."""
    with trio.fail_after(DEADLINE):
        async with market(tmp_path) as m:
            ticket, _ = await half_bought(m, tmp_path, "f1", "transfer", sku=REFUNDABLE)
            refunded = await Shopper(m.buyer).refund("f1")
            assert refunded.state == "refunded"
            async with m.buyer.connect("seller") as channel:
                await refused(channel.request("delivery", "open",
                                              {"ticket": ticket, "from": 1}),
                              "commerce.refunded")


async def test_a_streamed_item_is_not_sold_by_fair_exchange(tmp_path: Path) -> None:
    """A fair purchase seals the goods whole: a streamed item (32 MiB for course-004)
    would be sealed and stored per order and never fit a frame. Refused before any
    money moves or anything is stored."""
    from semper.agents.components._fair_buyer import FairShopper

    with trio.fail_after(DEADLINE):
        async with market(tmp_path) as m:
            before = await balances(m.buyer)
            shopper = FairShopper(m.buyer, notary="notary", wait_ms=5000)
            shopper.output = tmp_path / "fair.bin"  # past the buyer's own check
            with pytest.raises(RemoteError) as info:
                await shopper.buy_fair("seller", SKU, "transfer", "fair-1")
            assert info.value.code == "commerce.unknown_offer"
            assert await balances(m.buyer) == before
            assert await m.seller.database.read(lambda c: c.execute(
                "SELECT count(*) FROM fair_sales").fetchone()[0]) == 0


async def test_a_streamed_item_needs_a_file_before_anything_is_paid(tmp_path: Path) -> None:
    from semper.agents.components._purchase import NeedsOutput

    with trio.fail_after(DEADLINE):
        async with market(tmp_path) as m:
            before = await balances(m.buyer)
            for output in (None, Path("-")):
                with pytest.raises(NeedsOutput) as info:
                    await Shopper(m.buyer, output=output).buy("seller", SKU, "transfer", "n1")
                assert info.value.code == "delivery.needs_output"
            assert await balances(m.buyer) == before
            assert await m.buyer.database.read(lambda c: c.execute(
                "SELECT count(*) FROM commerce_purchases").fetchone()[0]) == 0


@pytest.mark.parametrize("module", ["transfer", "purse"])
async def test_a_broken_stream_resumes_where_it_stopped(tmp_path: Path, module: str) -> None:
    """Stopped after 3 chunks, the same purchase again fetches chunks 3 and 4 only,
    paying nothing twice."""
    with trio.fail_after(DEADLINE):
        async with market(tmp_path) as m:
            before = await balances_of(m, "buyer")
            await half_bought(m, tmp_path, "b1", module, chunks=3)
            again = Shopper(m.buyer, output=tmp_path / "b1.bin")
            done = await again.buy("seller", SKU, module, "b1")
            assert again.streamed["b1"].resumed_from == 3
            assert done.state == "done" and done.receipt is not None
            assert (tmp_path / "b1.bin").read_bytes() == CONTENT
            assert (await balances_of(m, "buyer"))["EUR"] == before["EUR"] - PRICE


async def test_a_purse_purchase_gets_its_receipt_without_waiting_for_the_task(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The seller's task would redeem long after the stream (here: never in the
    test); the buyer's fetch for its receipt has the chain redeemed at once, and the
    purchase is done: ``semper wallet`` no longer shows it paying."""
    import semper.agents.components._delivery_seller as seller_module

    monkeypatch.setattr(seller_module, "REDEEM_AFTER_MS", 10**9)
    with trio.fail_after(DEADLINE):
        async with market(tmp_path) as m:
            seller_before = await balances_of(m, "seller")
            done = await Shopper(m.buyer, output=tmp_path / "w.bin").buy(
                "seller", SKU, "purse", "w1")
            assert done.state == "done" and done.receipt is not None
            assert (await seller_chain(m))[2:] == ("redeemed", None)
            assert (await balances_of(m, "seller"))["EUR"] == seller_before["EUR"] + PRICE
            state = await m.buyer.database.read(lambda c: c.execute(
                "SELECT state FROM commerce_purchases WHERE key = 'w1'").fetchone())
            assert state == ("done",)


async def test_a_forged_redemption_answer_is_not_recorded_as_redeemed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The seller checks the bank's purse.redeemed before it marks a chain redeemed:
    one for another index (signed by the bank) or signed by another agent is refused,
    kept nowhere, and the chain stays open for a retry, which records the genuine
    statement the bank then answers with."""
    import semper.agents.components._delivery_seller as seller_module
    import semper.agents.instruments.purse as bank_purse
    from semper.agents.components._delivery_seller import DeliverySeller
    from semper.services.payment.purse import PurseRedeemed

    monkeypatch.setattr(seller_module, "REDEEM_AFTER_MS", 10**9)
    from semper.agents.components._bank import BankService

    real_redeem, real_standing = bank_purse.redeem_chain, bank_purse._standing
    lies: list[Any] = []

    def lie(genuine: Statement | None) -> Statement | None:
        return genuine if genuine is None or not lies else lies[0](genuine)

    def redeem_chain(*args: Any, **kwargs: Any) -> Any:  # a first redemption
        outcome = real_redeem(*args, **kwargs)
        return type(outcome)(lie(outcome.statement), outcome.applied)

    def standing(*args: Any, **kwargs: Any) -> Any:  # a repeat: the stored answer
        return lie(real_standing(*args, **kwargs))

    def other_index(genuine: Statement) -> Statement:
        import dataclasses

        body = PurseRedeemed.from_statement(genuine)
        book = m.bank.component(BankService).book
        return book.sign(*bank_purse.typed(dataclasses.replace(
            body, index=body.index + 1, paid=type(body.paid)(
                body.paid.currency, body.paid.minor_units + 3))))

    def signed_by_the_buyer(genuine: Statement) -> Statement:
        return m.buyer.evidence.sign(genuine.type, genuine.body)

    monkeypatch.setattr(bank_purse, "_standing", standing)
    monkeypatch.setattr(bank_purse, "redeem_chain", redeem_chain)
    with trio.fail_after(DEADLINE):
        async with market(tmp_path) as m:
            await half_bought(m, tmp_path, "g1", "purse", chunks=2)
            chain, ticked = (await seller_chain(m))[:2]
            assert ticked in (2, 3)  # payword 3 (on credit) taken, or not yet
            delivery = m.seller.component(DeliverySeller)
            order = shopper_order(m, "g1").hex()
            for forgery in (other_index, signed_by_the_buyer):
                lies[:] = [forgery]
                assert await delivery.redeem(chain) is None
                highest, state, redeem_at = (await seller_chain(m))[1:]
                assert (highest, state) == (ticked, "open") and redeem_at is not None, forgery
                kept = [Statement.from_bytes(r.statement).type
                        for r in await m.seller.archive.records(order)]
                assert "purse.redeemed" not in kept, (forgery, kept)
            lies.clear()
            genuine = await delivery.redeem(chain)
            assert genuine is not None and genuine.body["index"] == ticked
            assert (await seller_chain(m))[2:] == ("redeemed", None)
            kept = [Statement.from_bytes(r.statement) for r in
                    await m.seller.archive.records(order)]
            assert [s for s in kept if s.type == "purse.redeemed"] == [genuine]


async def test_a_one_frame_item_is_not_bought_by_purse(tmp_path: Path) -> None:
    """Another purchase that could never end: a purse pays chunks, so an item sent in
    one frame bought with --pay purse was ordered, then refused locally at the Pay
    step, and left "ordered" for good. Now refused before anything is signed, sent
    or stored (payment.unsupported)."""
    with trio.fail_after(DEADLINE):
        async with market(tmp_path) as m:
            before = await balances(m.buyer)
            with pytest.raises(Exception) as info:
                await Shopper(m.buyer).buy("seller", "guide-001", "purse", "np1")
            assert getattr(info.value, "code", None) == "payment.unsupported"
            assert await balances(m.buyer) == before
            assert await m.buyer.database.read(lambda c: c.execute(
                "SELECT count(*) FROM commerce_purchases").fetchone()[0]) == 0
            assert await m.seller.database.read(lambda c: c.execute(
                "SELECT count(*) FROM commerce_sales").fetchone()[0]) == 0


async def test_a_purse_purchase_is_refunded_like_any(tmp_path: Path) -> None:
    """Its payment being the chain's purse.redeemed, a refundable streamed item
    bought by purse is refunded as one paid by transfer: the money comes back and
    the ticket no longer opens a stream."""
    with trio.fail_after(DEADLINE):
        async with market(tmp_path) as m:
            before = await balances_of(m, "buyer")
            done = await Shopper(m.buyer, output=tmp_path / "r.bin").buy(
                "seller", REFUNDABLE, "purse", "rf1")
            assert done.state == "done"
            assert (await balances_of(m, "buyer"))["EUR"] == before["EUR"] - PRICE
            refunded = await Shopper(m.buyer).refund("rf1")
            assert refunded.state == "refunded"
            assert (await balances_of(m, "buyer"))["EUR"] == before["EUR"]
            ticket = await m.buyer.database.read(lambda c: c.execute(
                "SELECT ticket FROM delivery_downloads WHERE key = 'rf1'").fetchone()[0])
            async with m.buyer.connect("seller") as channel:
                await refused(channel.request("delivery", "open", {"ticket": ticket, "from": 0}),
                              "commerce.refunded")


async def test_a_purse_receipt_delayed_by_the_bank_comes_with_the_rerun(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The seller's bank does not answer the redemption the buyer's fetch asks for:
    the run fails with a code (nothing paid twice, the file whole, the purchase still
    paying), and the same command again gets the receipt."""
    import semper.agents.components._delivery_seller as seller_module
    from semper.transport import ConnectFailed

    monkeypatch.setattr(seller_module, "REDEEM_AFTER_MS", 10**9)
    real = seller_module.purse_redeem

    async def down(*args: Any, **kwargs: Any) -> Any:
        raise ConnectFailed("the bank is down (test)")

    with trio.fail_after(DEADLINE):
        async with market(tmp_path) as m:
            before = await balances_of(m, "buyer")
            output = tmp_path / "d.bin"
            monkeypatch.setattr(seller_module, "purse_redeem", down)
            with pytest.raises(RemoteError) as info:
                await Shopper(m.buyer, output=output).buy("seller", SKU, "purse", "d1")
            assert info.value.code == "payment.bad_request" and "purse" in info.value.message
            assert output.read_bytes() == CONTENT
            assert (await seller_chain(m))[1:3] == (5, "open")
            state = await m.buyer.database.read(lambda c: c.execute(
                "SELECT state FROM commerce_purchases WHERE key = 'd1'").fetchone())
            assert state == ("paying",)
            monkeypatch.setattr(seller_module, "purse_redeem", real)
            again = Shopper(m.buyer, output=output)
            done = await again.buy("seller", SKU, "purse", "d1")
            assert done.state == "done" and done.receipt is not None
            assert again.streamed["d1"].resumed_from == 5  # nothing fetched again
            assert (await balances_of(m, "buyer"))["EUR"] == before["EUR"] - PRICE
