"""Streamed delivery attacked as an outside peer that read protocol.md 13 would
(issue 10 review): chunks without pay or beyond what was paid, a seller made to hold
more than a chunk per stream, and the seller's redemption racing a tick. In-process
agents over loopback TLS, as tests/test_delivery_agents.py."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from market_helpers import wait_until
from test_delivery_agents import (
    DEADLINE,
    REFUNDABLE,
    SKU,
    balances_of,
    half_bought,
    market,
    refused,
    restart_seller,
    seller_chain,
)

from semper.agents.components._delivery_seller import DeliverySeller
from semper.agents.components._purchase import Shopper
from semper.services.statements import Statement
from semper.transport import RemoteError


class Settable:
    """A clock the test sets (Unix ms), starting at the machine's time."""

    def __init__(self) -> None:
        self.ms = time.time_ns() // 1_000_000

    def now_ms(self) -> int:
        return self.ms


# -- (a) chunks beyond what the ticket sold ------------------------------------------


async def test_a_chunk_past_the_last_is_out_of_order_not_an_internal_error(
        tmp_path: Path) -> None:
    """After the last chunk the stream's next index is ``chunks``: asking for it
    passed the order check and the seller failed reading a chunk that is not there
    (internal.error). It is delivery.out_of_order, for a ticket paid whole and for
    a purse ticket alike (the payword is not even looked at)."""
    with trio.fail_after(DEADLINE):
        async with market(tmp_path) as m:
            for module in ("transfer", "purse"):
                ticket, chain = await half_bought(m, tmp_path, f"end-{module}", module,
                                                  chunks=4)
                async with m.buyer.connect("seller") as channel:
                    opened = await channel.request("delivery", "open",
                                                   {"ticket": ticket, "from": 4})
                    asked: dict[str, Any] = {"stream": opened["stream"], "index": 4}
                    if chain is not None:
                        from semper.agents.components._purse import Purse

                        asked["payword"] = await m.buyer.component(Purse).pay(chain, 4)
                    last = await channel.request("delivery", "chunk", asked)
                    assert last["index"] == 4
                    past = {"stream": opened["stream"], "index": 5}
                    error = await refused(channel.request("delivery", "chunk", past),
                                          "delivery.out_of_order")
                    assert error.detail["index"] == 5


# -- (c) a slow or greedy reader: one chunk in hand per stream ------------------------


async def test_concurrent_chunk_requests_of_one_stream_are_answered_one_at_a_time(
        tmp_path: Path) -> None:
    """protocol.md 13.3: the seller answers one chunk request at a time per stream,
    so a reader holds at most one chunk of the seller's. Requests sent together on a
    resumed purse stream (its chunks paid, so no payword stops them) all passed the
    order check before any answered, and the seller read and queued one chunk per
    request (up to max_in_flight, 1024, of them at once). Now one is answered and
    the others are delivery.busy."""
    with trio.fail_after(DEADLINE):
        async with market(tmp_path) as m:
            ticket, _ = await half_bought(m, tmp_path, "greedy", "purse", chunks=3)
            async with m.buyer.connect("seller") as channel:
                opened = await channel.request("delivery", "open", {"ticket": ticket, "from": 0})
                answers: list[Any] = []

                async def ask() -> None:
                    try:
                        answers.append(await channel.request("delivery", "chunk", {
                            "stream": opened["stream"], "index": 0}))
                    except RemoteError as exc:
                        answers.append(exc.code)

                async with trio.open_nursery() as nursery:
                    for _ in range(20):
                        nursery.start_soon(ask)
            served = [a for a in answers if isinstance(a, dict)]
            assert len(served) == 1, [a if isinstance(a, str) else a["index"] for a in answers]
            codes = {a for a in answers if isinstance(a, str)}
            assert codes <= {"delivery.busy", "delivery.out_of_order"}, codes


# -- (b) the seller's redemption racing a tick ----------------------------------------


async def ticketed(m: Any, tmp_path: Path, key: str, monkeypatch: Any) -> tuple[bytes, bytes]:
    """A purse purchase that got its ticket and stopped before its first chunk."""
    from semper.agents.components._delivery_buyer import StreamClient

    class Stop(Exception):
        pass

    async def stop(*args: Any, **kwargs: Any) -> None:
        raise Stop

    with monkeypatch.context() as patched:
        patched.setattr(StreamClient, "_stream", stop)
        try:
            await Shopper(m.buyer, output=tmp_path / f"{key}.bin").buy("seller", SKU, "purse",
                                                                        key)
        except Stop:
            pass
    row = await m.buyer.database.read(lambda c: c.execute(
        "SELECT ticket, chain FROM delivery_downloads WHERE key = ?", (key,)).fetchone())
    return row[0], row[1]


async def _expiry_race(m: Any, tmp_path: Path, key: str, chunks: int,
                       monkeypatch: Any = None) -> tuple[bytes, int]:
    """A purse stream stopped after ``chunks`` chunks, the seller restarted on a clock
    set to the chain's expiry (the ticket's last instant, when its redemption comes
    due), a tick of the next chunk started while the redemption task looks at the
    chain; the chain and the highest tick the seller committed. (The credit window:
    the stream stopped with the seller at tick ``chunks`` or one more, chunk
    ``chunks`` asked on credit; the racing tick is the next payword after it.)"""
    from semper.agents.components._purse import Purse

    if chunks:
        ticket, chain = await half_bought(m, tmp_path, key, "purse", chunks=chunks)
    else:
        ticket, chain = await ticketed(m, tmp_path, key, monkeypatch)
    assert chain is not None
    expires = Statement.from_bytes(ticket).body["expires"]
    clock = Settable()
    clock.ms = expires - 60_000  # not yet due
    await restart_seller(m, clock=clock)
    delivery = m.seller.component(DeliverySeller)
    ticked = (await seller_chain(m))[1]
    index = ticked + 1  # asked with payword ticked + 1: a new tick
    payword = await m.buyer.component(Purse).pay(chain, ticked)
    lock = delivery._chains.setdefault(chain, trio.Lock())
    await lock.acquire()  # a tick in progress (its commit slow): others queue
    async with m.buyer.connect("seller") as channel:
        opened = await channel.request("delivery", "open", {"ticket": ticket, "from": index})
        async with trio.open_nursery() as nursery:
            got: list[Any] = []

            async def chunk() -> None:
                got.append(await channel.request("delivery", "chunk", {
                    "stream": opened["stream"], "index": index, "payword": payword}))

            nursery.start_soon(chunk)
            await wait_until(lambda: lock.statistics().tasks_waiting == 1, "the tick waits")
            clock.ms = expires  # the chain's redemption is due; a chunk still is too
            delivery._wake.set()
            await wait_until(lambda: lock.statistics().tasks_waiting == 2,
                             "the redemption waits for the tick")
            lock.release()
        assert got[0]["index"] == index  # the chunk left: its predecessors paid by a tick
    await wait_until(lambda: m.seller.database.read_sync(lambda c: c.execute(
        "SELECT redeem_at FROM delivery_chains").fetchone())[0] is None, "redeemed")
    return chain, (await seller_chain(m))[1]


async def test_a_redemption_due_while_a_chunk_is_ticked_redeems_that_tick(
        tmp_path: Path) -> None:
    """The redemption task read the chain's highest tick before it took the chain's
    lock: a tick committed in between (a chunk sent on payword 3 or 4) was left
    out and the bank paid one chunk less than was paid, for good (once per chain).
    It reads the tick under the lock now: the bank pays them all."""
    with trio.fail_after(DEADLINE):
        async with market(tmp_path) as m:
            seller_before = await balances_of(m, "seller")
            _, highest = await _expiry_race(m, tmp_path, "race", chunks=2)
            assert highest in (3, 4)  # one past the tick the stopped stream left
            row = await m.seller.database.read(lambda c: c.execute(
                "SELECT state, redeemed FROM delivery_chains").fetchone())
            assert row[0] == "redeemed", row
            assert Statement.from_bytes(row[1]).body["index"] == highest
            assert (await balances_of(m, "seller"))["EUR"] == (seller_before["EUR"]
                                                              + highest * 3)


async def test_an_unused_chain_due_while_its_first_chunk_is_ticked_is_redeemed(
        tmp_path: Path, monkeypatch: Any) -> None:
    """The same race on a chain with no tick yet: the task saw highest 0 and marked
    the chain 'unused' (never to be redeemed) while the first tick committed and its
    chunk left: the seller was never paid for it. Read under the lock, the tick is
    seen and redeemed."""
    with trio.fail_after(DEADLINE):
        async with market(tmp_path) as m:
            seller_before = await balances_of(m, "seller")
            _, highest = await _expiry_race(m, tmp_path, "race0", chunks=0,
                                              monkeypatch=monkeypatch)
            assert highest == 1
            row = await m.seller.database.read(lambda c: c.execute(
                "SELECT state FROM delivery_chains").fetchone())
            assert row[0] == "redeemed", row
            assert (await balances_of(m, "seller"))["EUR"] == seller_before["EUR"] + 3


# -- (a) chunks after the payment went back ---------------------------------------------


async def test_a_purse_order_refunded_is_not_streamed_again(tmp_path: Path) -> None:
    """A refundable streamed item bought whole by purse (the chain redeemed, the
    sale receipted) and then refunded: the payment is back with the buyer, yet its
    purse ticket opened a stream again and every chunk came without a payword (all
    below the highest tick). As for a ticket paid whole (commerce.fetch refuses a
    refunded order's goods), delivery.open is commerce.refunded."""

    with trio.fail_after(DEADLINE):
        async with market(tmp_path) as m:
            before = await balances_of(m, "buyer")
            shopper = Shopper(m.buyer, output=tmp_path / "r.bin")
            done = await shopper.buy("seller", REFUNDABLE, "purse", "pr1")
            assert done.state == "done"
            refunded = await Shopper(m.buyer).refund("pr1")
            assert refunded.state == "refunded"
            assert (await balances_of(m, "buyer"))["EUR"] == before["EUR"]  # all back
            ticket = await m.buyer.database.read(lambda c: c.execute(
                "SELECT ticket FROM delivery_downloads WHERE key = 'pr1'").fetchone()[0])
            async with m.buyer.connect("seller") as channel:
                await refused(channel.request("delivery", "open", {"ticket": ticket, "from": 0}),
                              "commerce.refunded")


async def test_a_stream_open_when_its_order_is_refunded_stops(tmp_path: Path) -> None:
    """The same kind, found here: a stream opened before the refund went on serving
    chunks after it (only delivery.open looked at the sale). The refund ends what
    is open of that order: the next chunk is commerce.refunded."""

    with trio.fail_after(DEADLINE):
        async with market(tmp_path) as m:
            ticket, _ = await half_bought(m, tmp_path, "sr1", "transfer", sku=REFUNDABLE)
            async with m.buyer.connect("seller") as channel:
                opened = await channel.request("delivery", "open", {"ticket": ticket, "from": 1})
                first = await channel.request("delivery", "chunk",
                                              {"stream": opened["stream"], "index": 1})
                assert first["index"] == 1
                assert (await Shopper(m.buyer).refund("sr1")).state == "refunded"
                await refused(channel.request("delivery", "chunk",
                                              {"stream": opened["stream"], "index": 2}),
                              "commerce.refunded")


# -- (c) the live feed example: one chunk request at a time per stream ----------------


async def test_a_live_stream_answers_one_chunk_request_at_a_time(
        tmp_path: Path, monkeypatch: Any) -> None:
    """The same kind in examples/live_feed: requests of one live stream sent
    together each waited for the chunk and then each was answered with a copy of
    it (the first paid it, the others came under its tick). Now one is answered and
    the others are delivery.busy."""
    from test_live_feed import FEED, _subscribed
    from test_live_feed import market as live_market

    from semper.agents.components._purse import Purse
    from semper.services.delivery import Ticket

    with trio.fail_after(DEADLINE):
        async with live_market(tmp_path, monkeypatch) as m:
            ticket, _ = await _subscribed(m, 4, "greedy-live")
            chain = Ticket.from_statement(ticket).chain
            assert chain is not None
            payword = await m.buyer.component(Purse).pay(chain, 0)
            async with m.buyer.connect(FEED) as channel:
                opened = await channel.request("delivery", "open",
                                               {"ticket": ticket.to_bytes(), "from": 0})
                answers: list[Any] = []

                async def ask() -> None:
                    try:
                        answers.append(await channel.request("delivery", "chunk", {
                            "stream": opened["stream"], "index": 0, "payword": payword}))
                    except RemoteError as exc:
                        answers.append(exc.code)

                async with trio.open_nursery() as nursery:
                    for _ in range(10):
                        nursery.start_soon(ask)
            served = [a for a in answers if isinstance(a, dict)]
            codes = {a for a in answers if isinstance(a, str)}
            assert len(served) == 1 and codes == {"delivery.busy"}, (len(served), codes)


async def test_a_live_feed_bounds_the_streams_of_one_buyer(
        tmp_path: Path, monkeypatch: Any) -> None:
    """Issue 10: the seller bounds concurrent streams per buyer and in all. The live
    feed bounded them in all only (16), so one buyer with cheap one-chunk tickets
    could hold every stream the feed serves. ``max_streams_per_buyer`` (default 4)
    refuses its next with delivery.too_many_streams, scope buyer."""
    import test_live_feed
    from test_live_feed import FEED, _subscribed
    from test_live_feed import market as live_market

    monkeypatch.setitem(test_live_feed.SETTINGS, "max_streams_per_buyer", 2)
    with trio.fail_after(DEADLINE):
        async with live_market(tmp_path, monkeypatch) as m:
            tickets = [(await _subscribed(m, 1, f"one-{i}"))[0] for i in range(3)]
            async with m.buyer.connect(FEED) as channel:
                for ticket in tickets[:2]:
                    await channel.request("delivery", "open",
                                          {"ticket": ticket.to_bytes(), "from": 0})
                error = await refused(channel.request("delivery", "open", {
                    "ticket": tickets[2].to_bytes(), "from": 0}), "delivery.too_many_streams")
                assert error.detail == {"limit": 2, "scope": "buyer"}


# -- attacks that held ----------------------------------------------------------------


async def test_another_channels_stream_and_two_opens_at_once_are_refused(
        tmp_path: Path) -> None:
    """Held: a stream's number named on another channel (the buyer's own second
    channel, or another agent's) is delivery.unknown_stream; two delivery.open of
    one ticket at once on two channels open one stream (delivery.busy), though the
    seller now reads the sale (an await) for every ticket before it registers it."""
    from semper.agents import Agent, AgentConfig

    with trio.fail_after(DEADLINE):
        async with market(tmp_path) as m:
            ticket, _ = await half_bought(m, tmp_path, "h1", "purse", chunks=2)
            ticked = (await seller_chain(m))[1]
            outcomes: list[Any] = []
            async with m.buyer.connect("seller") as one, m.buyer.connect("seller") as two:

                async def open_on(channel: Any) -> None:
                    try:
                        outcomes.append(await channel.request(
                            "delivery", "open", {"ticket": ticket, "from": 0}))
                    except RemoteError as exc:
                        outcomes.append(exc.code)

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(open_on, one)
                    nursery.start_soon(open_on, two)
                opened = [o for o in outcomes if isinstance(o, dict)]
                assert len(opened) == 1 and "delivery.busy" in outcomes, outcomes
                for channel in (one, two):
                    try:
                        await channel.request("delivery", "chunk",
                                              {"stream": opened[0]["stream"], "index": 0})
                        served_on = channel
                    except RemoteError as exc:
                        assert exc.code == "delivery.unknown_stream"
                other = Agent(AgentConfig.load(m.folder / "arbiter" / "agent.toml"))
                async with other.session(), other.connect("seller") as theirs:
                    await refused(theirs.request("delivery", "chunk", {
                        "stream": opened[0]["stream"], "index": 1}), "delivery.unknown_stream")
                assert served_on is not None
            assert (await seller_chain(m))[1] == ticked  # nothing ticked


async def test_a_ticket_whose_stream_map_is_not_the_offers_gets_no_payword(
        tmp_path: Path, monkeypatch: Any) -> None:
    """Held (d): a seller whose ticket carries another stream map than its signed
    offer (another root: chunks the buyer could not check against the offer) is
    refused by the buyer, delivery.bad_ticket field stream, before a payword is
    revealed or a byte written."""
    import dataclasses

    import semper.agents.components._delivery_seller as seller_module
    from semper.agents.components._purse import Purse
    from semper.services.delivery import Ticket

    class Lying:  # the seller signs tickets whose stream has another root
        from_statement = staticmethod(Ticket.from_statement)

        def __call__(self, **body: Any) -> Ticket:
            return Ticket(**{**body, "stream": dataclasses.replace(body["stream"],
                                                                   root=bytes(32))})

    monkeypatch.setattr(seller_module, "Ticket", Lying())
    with trio.fail_after(DEADLINE):
        async with market(tmp_path) as m:
            output = tmp_path / "lied.bin"
            with pytest.raises(Exception) as info:
                await Shopper(m.buyer, output=output).buy("seller", SKU, "purse", "lied")
            assert getattr(info.value, "code", None) == "delivery.bad_ticket"
            assert info.value.detail == {"field": "stream"}  # type: ignore[attr-defined]
            chains = await m.buyer.component(Purse).list()
            assert [c["spent"]["minor_units"] for c in chains] == [0]
            assert not output.exists()
            assert not output.with_name("lied.bin.part").exists()


async def test_chunk_requests_left_behind_by_close_and_reopen_take_no_chunk(
        tmp_path: Path) -> None:
    """The same kind, found here: one request at a time per stream, but a buyer that
    asks for a chunk, closes the stream while the request waits (here: the chain's
    tick in progress) and opens the ticket again, N times, left N requests behind,
    and each was answered with a copy of the chunk once the wait ended. A request
    of a stream closed meanwhile is now delivery.unknown_stream, and only the stream
    open takes the chunk."""
    with trio.fail_after(DEADLINE):
        async with market(tmp_path) as m:
            ticket, chain = await half_bought(m, tmp_path, "behind", "purse", chunks=2)
            delivery = m.seller.component(DeliverySeller)
            lock = delivery._chains.setdefault(chain, trio.Lock())
            answers: list[Any] = []
            async with m.buyer.connect("seller") as channel:

                async def ask(stream: int) -> None:
                    try:
                        answers.append(await channel.request("delivery", "chunk", {
                            "stream": stream, "index": 0}))
                    except RemoteError as exc:
                        answers.append(exc.code)

                await lock.acquire()  # a tick of the chain in progress
                async with trio.open_nursery() as nursery:
                    for round_ in range(5):
                        opened = await channel.request("delivery", "open",
                                                       {"ticket": ticket, "from": 0})
                        nursery.start_soon(ask, opened["stream"])
                        await wait_until(lambda n=round_ + 1: lock.statistics().tasks_waiting
                                         == n, "the request waits")
                        if round_ < 4:
                            await channel.request("delivery", "close",
                                                  {"stream": opened["stream"]})
                    lock.release()
            served = [a for a in answers if isinstance(a, dict)]
            codes = [a for a in answers if isinstance(a, str)]
            assert len(served) == 1, (len(served), codes)
            assert codes == ["delivery.unknown_stream"] * 4


async def test_live_chunk_requests_left_behind_by_close_and_reopen_take_no_chunk(
        tmp_path: Path, monkeypatch: Any) -> None:
    """The same in the live feed, where a request waits for its chunk to be
    produced: five open, ask, close rounds before chunk 0 exists left five requests,
    each answered with a copy of it once it came. Now the four of closed streams are
    delivery.unknown_stream (before any payword of theirs is looked at)."""
    import test_live_feed
    from test_live_feed import FEED, _subscribed
    from test_live_feed import market as live_market

    from semper.agents.components._purse import Purse
    from semper.services.delivery import Ticket

    monkeypatch.setitem(test_live_feed.SETTINGS, "period_ms", 1000)  # chunk 0 in ~1 s
    with trio.fail_after(DEADLINE):
        async with live_market(tmp_path, monkeypatch) as m:
            ticket, _ = await _subscribed(m, 2, "behind-live")
            chain = Ticket.from_statement(ticket).chain
            assert chain is not None
            payword = await m.buyer.component(Purse).pay(chain, 0)
            answers: list[Any] = []
            async with m.buyer.connect(FEED) as channel:

                async def ask(stream: int) -> None:
                    try:
                        answers.append(await channel.request("delivery", "chunk", {
                            "stream": stream, "index": 0, "payword": payword}))
                    except RemoteError as exc:
                        answers.append(exc.code)

                async with trio.open_nursery() as nursery:
                    for round_ in range(5):
                        opened = await channel.request("delivery", "open", {
                            "ticket": ticket.to_bytes(), "from": 0})
                        nursery.start_soon(ask, opened["stream"])
                        await trio.testing.wait_all_tasks_blocked()
                        if round_ < 4:
                            await channel.request("delivery", "close",
                                                  {"stream": opened["stream"]})
            served = [a for a in answers if isinstance(a, dict)]
            codes = [a for a in answers if isinstance(a, str)]
            assert len(served) == 1 and codes == ["delivery.unknown_stream"] * 4, (
                len(served), codes)


# -- (b)/(d) a payword taken for a chunk that is not the ticket's ---------------------


async def test_a_ticket_for_content_the_seller_no_longer_holds_takes_no_payword(
        tmp_path: Path) -> None:
    """The seller's goods changed under a ticket (the item's file replaced, the
    seller restarted): delivery.open served the new content under the old ticket,
    took payword 3 for chunk 2 (committed, to be redeemed) and sent a chunk that
    cannot verify against the ticket's root, so the buyer paid for a chunk it can
    never use, again on every rerun. As commerce.fetch does for goods no longer
    held, delivery.open is now commerce.unknown_offer when the item's stream map is
    not the ticket's, before any payword."""
    from test_delivery_agents import CONTENT

    from semper.agents.components._purse import Purse

    with trio.fail_after(DEADLINE):
        async with market(tmp_path) as m:
            ticket, chain = await half_bought(m, tmp_path, "moved", "purse", chunks=2)
            assert chain is not None
            ticked = (await seller_chain(m))[1]  # 2, or 3 with the chunk on credit
            goods = m.folder / "seller" / "goods" / f"{SKU}.bin"
            goods.write_bytes(bytes(reversed(CONTENT)))
            await restart_seller(m)
            payword = await m.buyer.component(Purse).pay(chain, 2)
            async with m.buyer.connect("seller") as channel:
                await refused(channel.request("delivery", "open", {"ticket": ticket, "from": 2}),
                              "commerce.unknown_offer")
                del payword
            assert (await seller_chain(m))[1] == ticked  # no tick taken


async def test_a_purse_ticket_is_not_issued_for_goods_other_than_those_ordered(
        tmp_path: Path, monkeypatch: Any) -> None:
    """The same kind at delivery.ticket: an order placed, then the seller's goods
    replaced (restarted): the seller signed a ticket with the new stream map for the
    old order, whose chunks the buyer's offer cannot verify. Now
    commerce.unknown_offer, nothing stored."""
    from test_delivery_agents import CONTENT, shopper_order

    from semper.agents.components._purse import Purse

    class Stop(Exception):
        pass

    async def stop(*args: Any, **kwargs: Any) -> Any:
        raise Stop

    with trio.fail_after(DEADLINE):
        async with market(tmp_path) as m:
            with monkeypatch.context() as patched:
                patched.setattr(Purse, "open_chain", stop)
                with pytest.raises(Stop):
                    await Shopper(m.buyer, output=tmp_path / "c.bin").buy("seller", SKU,
                                                                          "purse", "changed")
            order = shopper_order(m, "changed")
            (m.folder / "seller" / "goods" / f"{SKU}.bin").write_bytes(bytes(reversed(CONTENT)))
            await restart_seller(m)
            from semper.services import Amount

            commitment, reservation = await m.buyer.component(Purse).open_chain(
                "seller", 5, Amount("EUR", 3), order, "changed")
            await refused(m.buyer.request("seller", "delivery", "ticket", {
                "order": order, "commitment": commitment.to_bytes(),
                "reservation": reservation.to_bytes()}), "commerce.unknown_offer")
            assert await m.seller.database.read(lambda c: c.execute(
                "SELECT count(*) FROM delivery_tickets").fetchone()[0]) == 0


async def test_a_purse_order_is_ticketed_at_the_price_it_was_sold_at(
        tmp_path: Path, monkeypatch: Any) -> None:
    """Found next to it: the ticket took the stream map (its price per chunk) from the
    catalogue as it is now, not as sold. The seller repriced the item after the
    order: the buyer's chain, at the order's price, was refused (purse.bad_commitment,
    field unit) and its reservation held for a day. The ticket now carries the map
    the order's offer sold, and the purchase completes at the price agreed."""
    from semper.agents.components._purse import Purse

    class Stop(Exception):
        pass

    async def stop(*args: Any, **kwargs: Any) -> Any:
        raise Stop

    with trio.fail_after(DEADLINE):
        async with market(tmp_path) as m:
            before = await balances_of(m, "buyer")
            with monkeypatch.context() as patched:
                patched.setattr(Purse, "open_chain", stop)
                with pytest.raises(Stop):
                    await Shopper(m.buyer, output=tmp_path / "p.bin").buy("seller", SKU,
                                                                          "purse", "repriced")
            catalogue = m.folder / "seller" / "catalogue.toml"
            catalogue.write_text(catalogue.read_text().replace('"EUR:3"', '"EUR:4"'))
            await restart_seller(m)
            shopper = Shopper(m.buyer, output=tmp_path / "p.bin")
            done = await shopper.buy("seller", SKU, "purse", "repriced")
            assert done.state == "done"
            assert shopper.streamed["repriced"].to_json()["paid"]["minor_units"] == 15
            assert (await balances_of(m, "buyer"))["EUR"] == before["EUR"] - 15


async def test_huge_or_negative_numbers_are_refused_with_codes(tmp_path: Path) -> None:
    """Held: a `from` past the stream or past the wire's range, a negative one, a
    chunk index or stream number out of range, are coded refusals (never internal)
    and take nothing."""
    with trio.fail_after(DEADLINE):
        async with market(tmp_path) as m:
            ticket, _ = await half_bought(m, tmp_path, "huge", "purse", chunks=2)
            ticked = (await seller_chain(m))[1]
            async with m.buyer.connect("seller") as channel:
                # from = 5 (= chunks) opens, to pay the last chunk with delivery.close
                for start, code in ((6, "delivery.out_of_order"),
                                    (2 ** 20, "delivery.out_of_order"),
                                    (2 ** 40, "delivery.bad_request"),
                                    (-1, "delivery.bad_request"), ("0", "delivery.bad_request")):
                    await refused(channel.request("delivery", "open",
                                                  {"ticket": ticket, "from": start}), code)
                opened = await channel.request("delivery", "open", {"ticket": ticket, "from": 2})
                for body, code in (({"stream": opened["stream"], "index": 2 ** 40},
                                    "delivery.bad_request"),
                                   ({"stream": opened["stream"], "index": -1},
                                    "delivery.bad_request"),
                                   ({"stream": 2 ** 62, "index": 2}, "delivery.bad_request"),
                                   ({"stream": opened["stream"] + 1, "index": 2},
                                    "delivery.unknown_stream"),
                                   ({"stream": opened["stream"], "index": 2 ** 20 - 1},
                                    "delivery.out_of_order")):
                    await refused(channel.request("delivery", "chunk", body), code)
            assert (await seller_chain(m))[1] == ticked


async def test_the_buyer_checks_the_opens_answer_against_the_offer(
        tmp_path: Path, monkeypatch: Any) -> None:
    """(e)/(d), protocol.md 13.3: "A buyer checks that the answer's chunks,
    chunk_size, length and root are the offer's, and from the one it asked." semper's
    buyer did not look (it asked and verified by the offer's map regardless). A
    seller answering another stream is now delivery.bad_request (type
    delivery.open) before any payword."""
    from semper.agents.components._purse import Purse
    from semper.agents.runtime._component import handles
    from semper.services.delivery import _ops as delivery_ops

    real = DeliverySeller.open

    @handles(delivery_ops.OPEN)
    async def lying(self: Any, context: Any, request: Any) -> Any:
        import dataclasses

        return dataclasses.replace(await real(self, context, request), root=bytes(32))

    monkeypatch.setattr(DeliverySeller, "open", lying)
    with trio.fail_after(DEADLINE):
        async with market(tmp_path) as m:
            with pytest.raises(Exception) as info:
                await Shopper(m.buyer, output=tmp_path / "o.bin").buy("seller", SKU, "purse",
                                                                      "lying-open")
            assert getattr(info.value, "code", None) == "delivery.bad_request", info.value
            assert info.value.detail == {"type": "delivery.open",  # type: ignore[attr-defined]
                                         "field": "root"}
            chains = await m.buyer.component(Purse).list()
            assert [c["spent"]["minor_units"] for c in chains] == [0]
