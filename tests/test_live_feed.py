"""Live streams end to end (issue 10 item 3): examples/live_feed's ticker seller and
the buyer's LiveClient, in-process agents over loopback TLS. A buyer pays a purse
chain chunk by chunk and receives N live chunks, each verified against a signed head,
the heads consistent and archived; a seller that rewrites history is caught with both
heads as evidence; the example installs with pip and runs as a real process."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st
from market_helpers import wait_until

from semper.agents import Agent, AgentConfig
from semper.agents.cli.cmd_ca import issue_agent_folder
from semper.agents.components import _bank, _ledger
from semper.agents.components._live_buyer import LiveClient
from semper.agents.operator._market import ca_config, init_market
from semper.agents.runtime import _agent
from semper.agents.runtime._storage import Database
from semper.services import ServiceError
from semper.services.certificates import Level
from semper.services.delivery import (
    HEAD_TYPE,
    LIVE_TERMS,
    SUBSCRIBE,
    BadHead,
    Forked,
    LiveStream,
    LiveTerms,
    LiveTermsRequest,
    StreamHead,
    Ticket,
)
from semper.services.merkle import EMPTY_ROOT, MerkleTree
from semper.services.statements import Statement, verify_statement
from semper.transport import RemoteError

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "live_feed"
sys.path.insert(0, str(EXAMPLE))
import semper_live_feed  # noqa: E402

DEADLINE = 30.0
FEED = "feed-1"
#: A chunk every 2 ms, a head every 4 chunks or 40 ms: 10 chunks take ~20 ms.
SETTINGS = {"period_ms": 2, "every_chunks": 4, "every_ms": 40, "price_per_chunk": "EUR:3"}


@dataclass
class Market:
    folder: Path
    bank: Agent
    feed: Agent
    buyer: Agent
    nursery: trio.Nursery
    feed_scope: trio.CancelScope
    feed_config: AgentConfig


async def _serve(agent: Agent, *, task_status: Any) -> None:
    """Run ``agent`` under a cancel scope of its own, given to the caller."""
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:
            await nursery.start(agent.run)
            task_status.started(scope)


async def restart_feed(m: Market) -> None:
    """Stop the feed (its channels closed, its memory gone) and run a new one."""
    with trio.CancelScope(shield=True):
        await m.feed.close_channels()
    m.feed_scope.cancel()
    await trio.testing.wait_all_tasks_blocked()
    m.feed = Agent(m.feed_config)
    m.feed_scope = await m.nursery.start(_serve, m.feed)


def _config(folder: Path, name: str) -> AgentConfig:
    return AgentConfig.load(folder / name / "agent.toml")


def add_feed(folder: Path) -> AgentConfig:
    """A feed agent issued offline as `semper ca issue` does, with an account at the
    bank (as `semper bank open` opens one)."""
    issue_agent_folder(folder, ca_config(folder), FEED, role="feed",
                       level=Level.VERIFIED_CONTACT, listen=None, passphrase=None)
    bank = _config(folder, "bank")
    database = Database.open_sync(bank.data_dir / "agent.sqlite", _bank.MIGRATIONS)
    try:
        database.transaction_sync(lambda c: _ledger.open_account(c, FEED, "EUR"))
    finally:
        database.close()
    return dataclasses.replace(_config(folder, FEED), components={"delivery": SETTINGS})


@asynccontextmanager
async def market(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Market]:
    load = _agent.load_role
    monkeypatch.setattr(semper_live_feed, "REDEEM_AFTER_MS", 50)  # not 2 s in a test
    monkeypatch.setattr(_agent, "load_role",
                        lambda name: semper_live_feed.Feed if name == "feed" else load(name))
    folder = tmp_path / "m"
    init_market(folder)
    feed_config = add_feed(folder)
    buyer_config = _config(folder, "buyer")
    buyer_config = dataclasses.replace(
        buyer_config, peers={**buyer_config.peers, FEED: feed_config.listen})
    bank, feed, buyer = Agent(_config(folder, "bank")), Agent(feed_config), Agent(buyer_config)
    async with trio.open_nursery() as nursery:
        await nursery.start(bank.run)
        scope = await nursery.start(_serve, feed)
        async with buyer.session():
            yield Market(folder, bank, feed, buyer, nursery, scope, feed_config)
        nursery.cancel_scope.cancel()


async def archived(agent: Agent, transaction: str, type_: str) -> list[Statement]:
    found = [Statement.from_bytes(r.statement) for r in await agent.archive.records(transaction)]
    return [s for s in found if s.type == type_]


def ticket_id(head: Statement) -> str:
    return StreamHead.from_statement(head).stream.hex()


def signed_by_feed(m: Market, statement: Statement) -> None:
    verify_statement(statement, certificate=m.feed.credentials.identity.certificate,
                     root=m.buyer.credentials.root, crl=m.buyer.crl,
                     now=dt.datetime.now(dt.UTC), expected_signer=FEED)


async def balances(agent: Agent) -> dict[str, int]:
    return (await agent.request("bank", "bank", "account", {}))["balances"]  # type: ignore[no-any-return]


async def test_a_buyer_receives_live_chunks_under_signed_consistent_heads(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with trio.fail_after(DEADLINE):
        async with market(tmp_path, monkeypatch) as m:
            before = await balances(m.buyer)
            output = tmp_path / "ticker.jsonl"
            seen: list[int] = []
            client = LiveClient(m.buyer, progress=lambda p: seen.append(p.chunks))
            done = await client.fetch(FEED, 10, "live-1", output)
            lines = output.read_text().splitlines()
            assert [json.loads(line)["seq"] for line in lines] == list(range(10))
            assert seen == list(range(1, 11)) and not output.with_name("ticker.jsonl.part").exists()
            assert done.to_json() == {"state": "done", "chunks": 10,
                                      "bytes": output.stat().st_size, "root": done.root.hex(),
                                      "heads": done.heads, "paid": {"currency": "EUR",
                                                                    "minor_units": 30}}
            # The heads are in the buyer's archive: each signed by the feed, each
            # extending the one before, the last one over exactly the 10 chunks.
            heads = await archived(m.buyer, "live-1", HEAD_TYPE)
            assert len(heads) == done.heads >= 1
            bodies = [StreamHead.from_statement(h) for h in heads]
            # The feed signed a head every 4 chunks (or 40 ms) and one at the end; a
            # buyer gets the latest when it asks, so the heads it holds are some of them.
            signed = await archived(m.feed, ticket_id(heads[0]), HEAD_TYPE)
            assert {h.digest for h in heads} <= {h.digest for h in signed} and len(signed) >= 3
            for head in heads:
                signed_by_feed(m, head)
            assert [b.size for b in bodies] == sorted({b.size for b in bodies})
            assert bodies[-1].size == 10 and bodies[-1].root == done.root
            chunks = [line.encode() + b"\n" for line in lines]
            assert MerkleTree(chunks).root == done.root  # what was received is provable
            (ticket,) = await archived(m.buyer, "live-1", "delivery.ticket")
            ticket = Ticket.from_statement(ticket)
            assert ticket.stream.root == EMPTY_ROOT and ticket.stream.chunks == 10
            assert all(b.stream == ticket.ticket for b in bodies)
            # The feed redeems the chain (10 paywords of EUR 0.03) soon after.
            await wait_until(lambda: m.feed.database.read_sync(lambda c: c.execute(
                "SELECT state FROM feed_tickets").fetchone())[0] == "redeemed",
                "the feed redeemed the chain")
            component = m.feed.component(semper_live_feed.TickerFeed)
            await wait_until(lambda: not component._checkers and not component._locks,
                             "the feed forgot the chain it is done with")
            assert (await balances(m.buyer))["EUR"] == before["EUR"] - 30
            # Again with the key: the same chain and ticket, nothing paid twice.
            again = await LiveClient(m.buyer).fetch(FEED, 10, "live-1", output)
            assert again.root == done.root
            # ... and the archive holds the ticket and each head once.
            assert len(await archived(m.buyer, "live-1", "delivery.ticket")) == 1
            assert len(await archived(m.buyer, "live-1", HEAD_TYPE)) == len(heads)
            assert (await balances(m.buyer))["EUR"] == before["EUR"] - 30


class _Rewriter:
    """Once the buyer holds a head, swap the feed's stream for one whose chunk 0 says
    otherwise, with a head of its own over it: another history under the same id,
    sent with the next chunk. The feed's bookkeeping knows a head only by its size:
    when the buyer's head is already of every chunk made (the producer is fast), an
    honest seller has nothing new to send, so the rewriter marks the buyer's head
    unknown and the rewritten one goes out anyway (else the buyer, shown one head
    only, rightly finds chunk 4 delivery.bad_chunk: the race this test once had)."""

    def __init__(self, component: Any) -> None:
        self.component = component
        self.done = False

    def __call__(self) -> None:
        (feed,) = self.component._feeds.values()
        if self.done or feed.live.covered < 4:
            return
        self.done = True
        # Chunk 0 rewritten: the new head, over every chunk so far, covers at least
        # the head held (a larger one is inconsistent, one of its size same_size).
        chunks = [b'{"seq": 0, "price": "999.99"}\n', *feed.chunks[1:]]
        live = LiveStream(stream_id=feed.live.stream_id, every_chunks=feed.live.every_chunks,
                          every_ms=feed.live.every_ms)
        for data in chunks:
            live.add(data, now_ms=self.component.context.now_ms())
        head = live.due(self.component.context.now_ms(), final=True)
        assert head is not None
        live.signed(self.component.context.sign(HEAD_TYPE, head.to_body()))
        feed.chunks[:], feed.live = chunks, live
        (stream,) = self.component._open.values()
        if stream.since == live.covered:  # the buyer holds a head of this size
            stream.since = 0


async def test_a_seller_that_rewrites_history_is_caught_with_both_heads(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with trio.fail_after(DEADLINE):
        async with market(tmp_path, monkeypatch) as m:
            component = m.feed.component(semper_live_feed.TickerFeed)
            rewrite = _Rewriter(component)
            tick = component._tick

            async def tampering(ticket: Any, index: int, payword: Any) -> None:
                await tick(ticket, index, payword)
                if index == 4:  # the buyer holds the head of 4: rewrite before chunk 4
                    rewrite()

            monkeypatch.setattr(component, "_tick", tampering)
            output = tmp_path / "ticker.jsonl"
            with pytest.raises(Forked) as info:
                await LiveClient(m.buyer).fetch(FEED, 12, "live-2", output)
            assert info.value.code == "delivery.fork"
            first, second = info.value.evidence.first, info.value.evidence.second
            one, two = StreamHead.from_statement(first), StreamHead.from_statement(second)
            assert one.size >= 4 and one.stream == two.stream and two.size >= one.size
            # Which kind is the producer's timing: the buyer's head over every chunk
            # made (same size as the rewritten one) or over fewer.
            assert info.value.detail["kind"] == (
                "same_size" if two.size == one.size else "inconsistent")
            assert one.root != two.root
            # Both heads are in the buyer's archive, both signed by the feed; anyone
            # holding them sees that no consistency proof can join them.
            heads = await archived(m.buyer, "live-2", HEAD_TYPE)
            assert first in heads and second in heads
            signed_by_feed(m, first)
            signed_by_feed(m, second)
            assert not output.exists()  # nothing of the rewritten stream was written


async def test_a_history_rewritten_between_two_runs_is_caught_against_the_archive(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same kind, another member: the buyer received the whole stream once (its
    heads archived), and the seller then serves the same ticket again from another
    history, with heads of its own that agree with each other. The rerun holds the
    new heads consistent, but not the archived ones: delivery.fork with the old head
    and the new one."""
    with trio.fail_after(DEADLINE):
        async with market(tmp_path, monkeypatch) as m:
            output = tmp_path / "ticker.jsonl"
            done = await LiveClient(m.buyer).fetch(FEED, 6, "live-3", output)
            component = m.feed.component(semper_live_feed.TickerFeed)
            (feed,) = component._feeds.values()
            chunks = [feed.chunks[0], b'{"seq": 1, "price": "0.01"}\n', *feed.chunks[2:]]
            live = LiveStream(stream_id=feed.live.stream_id, every_chunks=3, every_ms=10**6)
            for data in chunks:
                live.add(data, now_ms=component.context.now_ms())
                head = live.due(component.context.now_ms())
                if head is not None:
                    live.signed(component.context.sign(HEAD_TYPE, head.to_body()))
            feed.chunks[:], feed.live = chunks, live
            old = {StreamHead.from_statement(h).size: h
                   for h in await archived(m.buyer, "live-3", HEAD_TYPE)}
            with pytest.raises(Forked) as info:
                await LiveClient(m.buyer).fetch(FEED, 6, "live-3", output)
            first, second = info.value.evidence.first, info.value.evidence.second
            assert first.digest == old[StreamHead.from_statement(first).size].digest
            assert StreamHead.from_statement(first).size >= 2  # covers the rewritten chunk
            assert second.digest in {h.digest for h in live.heads}
            signed_by_feed(m, first)
            signed_by_feed(m, second)
            assert {h.digest for h in await archived(m.buyer, "live-3", HEAD_TYPE)} >= {
                first.digest, second.digest}
            assert output.read_bytes() != b"".join(chunks)  # the first run's file is kept
            assert done.chunks == 6


async def test_a_rerun_given_a_head_of_an_archived_size_with_another_root_is_a_fork(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same kind, another member: the rerun's first chunk comes with a head of the
    size of a head the first run archived, with another root. Both signed heads are
    in the buyer's hands at once (same_size, 13.5 step 2), so the fork is caught
    there, not only once the chunks reach that size: before, a stream that broke
    earlier (here chunk 1 does not verify) stopped with delivery.bad_chunk and the
    fork it was given went unreported."""
    with trio.fail_after(DEADLINE):
        async with market(tmp_path, monkeypatch) as m:
            output = tmp_path / "ticker.jsonl"
            await LiveClient(m.buyer).fetch(FEED, 6, "live-10", output)
            old = {StreamHead.from_statement(h).size: h
                   for h in await archived(m.buyer, "live-10", HEAD_TYPE)}
            component = m.feed.component(semper_live_feed.TickerFeed)
            (feed,) = component._feeds.values()
            chunks = [feed.chunks[0], b'{"seq": 1, "price": "0.01"}\n', *feed.chunks[2:]]
            live = LiveStream(stream_id=feed.live.stream_id, every_chunks=6, every_ms=10**6)
            for data in chunks:
                live.add(data, now_ms=component.context.now_ms())
            head = live.due(component.context.now_ms(), final=True)
            assert head is not None and head.size in old
            live.signed(component.context.sign(HEAD_TYPE, head.to_body()))
            feed.chunks[:], feed.live = [*chunks[:1], b"not chunk 1\n", *chunks[2:]], live
            with pytest.raises(Forked) as info:
                await LiveClient(m.buyer).fetch(FEED, 6, "live-10", output)
            assert info.value.detail["kind"] == "same_size"
            first, second = info.value.evidence.first, info.value.evidence.second
            assert first.digest == old[6].digest and second.digest == live.heads[0].digest
            assert info.value.detail["heads"] == [first.to_bytes().hex(),
                                                  second.to_bytes().hex()]
            assert {h.digest for h in await archived(m.buyer, "live-10", HEAD_TYPE)} >= {
                first.digest, second.digest}


async def test_a_feed_restarted_mid_stream_redeems_what_was_paid_and_ends_the_ticket(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The feed dies after 3 of 8 chunks were paid and sent: started again, it
    redeems those 3 at once (not at the chain's expiry, a day later), the buyer gets
    the other 5 back, and the ticket's stream, whose chunks died with it, is refused
    rather than made again with another history."""
    with trio.fail_after(DEADLINE):
        async with market(tmp_path, monkeypatch) as m:
            before = (await balances(m.buyer))["EUR"]
            ticket, _ = await _subscribed(m, 8, "live-8")
            from semper.agents.components._purse import Purse

            purse = m.buyer.component(Purse)
            chain = Ticket.from_statement(ticket).chain
            async with m.buyer.connect(FEED) as channel:
                opened = await channel.request("delivery", "open",
                                               {"ticket": ticket.to_bytes(), "from": 0})
                for index in range(3):
                    await channel.request("delivery", "chunk", {
                        "stream": opened["stream"], "index": index,
                        "payword": await purse.pay(chain, index)})
            await restart_feed(m)
            await wait_until(lambda: m.feed.database.read_sync(lambda c: c.execute(
                "SELECT state, highest FROM feed_tickets").fetchone()) == ("redeemed", 3),
                "the restarted feed redeemed the 3 paywords")
            assert (await balances(m.buyer))["EUR"] == before - 3 * 3
            # Both sides' records: 3 paywords revealed for 3 chunks received, 3 ticks.
            assert (await purse.get(chain)).spent == 3
            async with m.buyer.connect(FEED) as channel:
                with pytest.raises(RemoteError) as info:
                    await channel.request("delivery", "open",
                                          {"ticket": ticket.to_bytes(), "from": 0})
            assert info.value.code == "delivery.bad_ticket"


async def test_a_head_past_the_tickets_chunks_is_refused_and_not_archived(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A seller that signs a head over more chunks than the ticket sold (so that a
    later ticket's heads could be passed off as this one's): delivery.bad_head, the
    head neither accepted nor archived, nothing written."""
    with trio.fail_after(DEADLINE):
        async with market(tmp_path, monkeypatch) as m:
            component = m.feed.component(semper_live_feed.TickerFeed)
            tick = component._tick

            async def overreaching(ticket: Any, index: int, payword: Any) -> None:
                await tick(ticket, index, payword)
                (feed,) = component._feeds.values()
                now = component.context.now_ms()
                while feed.live.size <= ticket.stream.chunks:
                    feed.chunks.append(b'{"extra": true}\n')
                    feed.live.add(feed.chunks[-1], now_ms=now)
                head = feed.live.due(now, final=True)
                feed.live.signed(component.context.sign(HEAD_TYPE, head.to_body()))

            monkeypatch.setattr(component, "_tick", overreaching)
            output = tmp_path / "ticker.jsonl"
            with pytest.raises(BadHead) as info:
                await LiveClient(m.buyer).fetch(FEED, 3, "live-9", output)
            assert info.value.detail == {"field": "size"}
            assert await archived(m.buyer, "live-9", HEAD_TYPE) == []
            assert not output.exists()


def test_a_feed_refuses_periods_longer_than_a_chunk_request_waits() -> None:
    from semper.agents.runtime._config import ConfigError

    feed = semper_live_feed.TickerFeed(None)  # type: ignore[arg-type]
    for bad in ({"every_ms": 60_000}, {"period_ms": 0}, {"price_per_chunk": "EUR:0"},
                {"price_per_chunk": "EUR:x"}, {"price_per_chunk": 3}, {"colour": 1}):
        with pytest.raises(ConfigError):
            feed.configure(bad)
    feed.configure(SETTINGS)
    assert (feed.period_ms, feed.every_chunks) == (2, 4)


def test_ticker_lines_fit_the_stream_map() -> None:
    line = semper_live_feed._line(2**20 - 1, 2**53, 10**12)
    assert len(line) <= semper_live_feed.CHUNK_SIZE and line.endswith(b"\n")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """examples/live_feed installed by pip, as a user would (into a folder of its own)."""
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
         "--no-build-isolation", "--no-index", "--target", str(target), str(EXAMPLE)],
        check=True, timeout=120, capture_output=True)
    return target


async def test_the_installed_example_serves_semper_live_between_processes(
        site: Path, tmp_path: Path) -> None:
    """The feed a real process (`semper agent run`, its role found through the entry
    point of the installed package), the buyer `semper live --json`."""
    folder = tmp_path / "m"
    init_market(folder)
    feed_config = add_feed(folder)
    with (folder / FEED / "agent.toml").open("a", encoding="utf-8") as f:
        f.write("\n[components.delivery]\n" + "".join(
            f"{k} = {json.dumps(v)}\n" for k, v in SETTINGS.items()))
    buyer = _config(folder, "buyer")
    (folder / "buyer" / "live.toml").write_text(dataclasses.replace(
        buyer, peers={**buyer.peers, FEED: feed_config.listen}).to_toml(base=folder / "buyer"))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(site), *filter(None, [os.environ.get("PYTHONPATH")])])}
    bank = Agent(_config(folder, "bank"))
    output = tmp_path / "ticker.jsonl"
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            await nursery.start(bank.run)
            process = await trio.lowlevel.open_process(
                [sys.executable, "-m", "semper.agents.cli", "agent", "run",
                 str(folder / FEED / "agent.toml")],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
            try:
                line = b""
                while not line.endswith(b"\n"):
                    chunk = await process.stdout.receive_some(1)
                    assert chunk, "the feed exited before it was ready"
                    line += chunk
                assert line.split()[:2] == [b"ready", FEED.encode()]
                done = await trio.run_process(
                    [sys.executable, "-m", "semper.agents.cli", "live", "--config",
                     str(folder / "buyer" / "live.toml"), "--seller", FEED, "--chunks", "6",
                     "--output", str(output), "--idempotency-key", "live-cli", "--json"],
                    capture_stdout=True, capture_stderr=True, check=False, env=env)
                assert done.returncode == 0, done.stderr.decode()
                result = json.loads(done.stdout)
                assert result["state"] == "done" and result["chunks"] == 6
                assert result["paid"] == {"currency": "EUR", "minor_units": 18}
                assert [json.loads(x)["seq"] for x in output.read_text().splitlines()] == \
                    list(range(6))
                assert result["bytes"] == output.stat().st_size and result["heads"] >= 1
            finally:
                process.terminate()
                with trio.move_on_after(DEADLINE):
                    await process.wait()
                if process.returncode is None:
                    process.kill()
                    await process.wait()
            nursery.cancel_scope.cancel()


async def _subscribed(m: Market, chunks: int, key: str) -> tuple[Statement, Any]:
    return await LiveClient(m.buyer).subscribe(FEED, chunks, key)


async def test_two_opens_of_one_fresh_ticket_make_one_history(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The instance: two delivery.open of a ticket never opened, at once on two
    channels, each passed the one-stream-per-ticket check before either was
    registered (a database write between), and each started a producer and a
    LiveStream of its own: two histories signed under one stream id. Now the second
    is delivery.busy and one producer runs."""
    with trio.fail_after(DEADLINE):
        async with market(tmp_path, monkeypatch) as m:
            ticket, _ = await _subscribed(m, 4, "live-4")
            outcomes: list[str] = []

            async def open_one() -> None:
                async with m.buyer.connect(FEED) as channel:
                    try:
                        await channel.request("delivery", "open",
                                              {"ticket": ticket.to_bytes(), "from": 0})
                        outcomes.append("open")
                    except RemoteError as exc:
                        outcomes.append(exc.code)
                    await trio.sleep_forever()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(open_one)
                nursery.start_soon(open_one)
                await wait_until(lambda: len(outcomes) == 2, "both opens answered")
                nursery.cancel_scope.cancel()
            assert sorted(outcomes) == ["delivery.busy", "open"]
            component = m.feed.component(semper_live_feed.TickerFeed)
            assert len(component._feeds) == 1


async def test_live_refusals_have_their_codes_and_move_no_tick(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A chunk without its payword, with another payword, out of order, a head of a
    size never signed; a chain for an order, or longer than the feed sells."""
    with trio.fail_after(DEADLINE):
        async with market(tmp_path, monkeypatch) as m:
            ticket, _ = await _subscribed(m, 4, "live-5")
            from semper.agents.components._purse import Purse

            purse = m.buyer.component(Purse)
            chain = Ticket.from_statement(ticket).chain
            async with m.buyer.connect(FEED) as channel:
                opened = await channel.request("delivery", "open",
                                               {"ticket": ticket.to_bytes(), "from": 0})
                assert opened["root"] == EMPTY_ROOT and opened["chunks"] == 4

                async def refused(op: str, body: dict[str, Any]) -> str:
                    with pytest.raises(RemoteError) as info:
                        await channel.request("delivery", op, body)
                    return info.value.code

                stream = opened["stream"]
                assert await refused("chunk", {"stream": stream, "index": 0}) == \
                    "purse.bad_payword"
                assert await refused("chunk", {"stream": stream, "index": 0,
                                               "payword": bytes(32)}) == "purse.bad_payword"
                assert await refused("chunk", {"stream": stream, "index": 1,
                                               "payword": bytes(32)}) == "delivery.out_of_order"
                assert await refused("head", {"stream": stream, "size": 99}) == \
                    "delivery.out_of_order"
                assert await refused("chunk", {"stream": stream + 1, "index": 0}) == \
                    "delivery.unknown_stream"
                highest = m.feed.database.read_sync(lambda c: c.execute(
                    "SELECT highest FROM feed_tickets WHERE chain = ?", (chain,)).fetchone())
                assert highest == (0,)
                paid = await channel.request("delivery", "chunk", {
                    "stream": stream, "index": 0, "payword": await purse.pay(chain, 0)})
                assert paid["index"] == 0 and paid["head"] is not None
                for index in (1, 2, 3):
                    await channel.request("delivery", "chunk", {
                        "stream": stream, "index": index,
                        "payword": await purse.pay(chain, index)})
                with trio.fail_after(2):  # refused at once, not after the wait for a chunk
                    assert await refused("chunk", {"stream": stream, "index": 4}) == \
                        "delivery.out_of_order"
            for terms, key in (({"order": bytes(range(32))}, "live-6"), ({}, "live-7")):
                commitment, reservation = await purse.open_chain(
                    FEED, 4 if terms else 20_000, semper_live_feed.Amount("EUR", 3),
                    terms.get("order"), key)
                with pytest.raises(RemoteError) as info:
                    await m.buyer.request(FEED, "delivery", "subscribe", {
                        "commitment": commitment.to_bytes(),
                        "reservation": reservation.to_bytes()})
                assert info.value.code == "purse.bad_commitment"
                assert info.value.detail["field"] == ("order" if terms else "length")


_leaf = st.one_of(st.none(), st.booleans(), st.integers(-2**64, 2**64), st.binary(max_size=40),
                  st.text(max_size=8), st.sampled_from([bytes(32), 0, 1, 2**20, "EUR"]))
_values = st.recursive(_leaf, lambda inner: st.one_of(
    st.lists(inner, max_size=4),
    st.dictionaries(st.sampled_from(["sku", "price_per_chunk", "chunk_size", "every_chunks",
                                     "every_ms", "max_chunks", "commitment", "reservation",
                                     "ticket", "currency", "minor_units", "x"]),
                    inner, max_size=8)), max_leaves=12)


@settings(max_examples=200, deadline=None)
@given(value=_values)
def test_hostile_subscription_bodies_raise_only_coded_refusals(value: object) -> None:
    for decode in (LIVE_TERMS.decode_request, LIVE_TERMS.decode_response,
                   SUBSCRIBE.decode_request, SUBSCRIBE.decode_response):
        try:
            decode(value)
        except ServiceError as exc:
            assert exc.code.startswith(("delivery.", "statement.")), exc.code


def test_subscription_bodies_round_trip() -> None:
    terms = LiveTerms(sku="ticker", price_per_chunk=semper_live_feed.Amount("EUR", 3),
                      chunk_size=256, every_chunks=4, every_ms=40, max_chunks=10)
    assert LIVE_TERMS.decode_response(LIVE_TERMS.encode_response(terms)) == terms
    assert LIVE_TERMS.decode_request({"anything": 1}) == LiveTermsRequest()
    with pytest.raises(ServiceError) as info:
        LIVE_TERMS.decode_response({**terms.to_wire(), "every_ms": 0})
    assert info.value.code == "delivery.bad_request"
    with pytest.raises(ServiceError) as info:
        SUBSCRIBE.decode_request({"commitment": b"", "reservation": b"x"})
    assert info.value.code == "delivery.bad_request"
