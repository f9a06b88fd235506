"""Statements delivered between running agents, archived on both sides, surviving a
SIGKILL of the receiver in the middle of a burst (agents/components/_evidence.py, _archive.py)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
from market_helpers import newer_crl

from semper.agents import Agent, AgentConfig
from semper.agents.components import _archive
from semper.agents.operator._market import init_market
from semper.agents.runtime._storage import Database
from semper.services.archive import ChainBroken, EvidenceBundle, verify_bundle, verify_chain
from semper.transport import RemoteError

DEADLINE = 30.0


@pytest.fixture
def market(tmp_path: Path) -> Path:
    init_market(tmp_path / "m")
    return tmp_path / "m"


def config(market: Path, agent_id: str) -> AgentConfig:
    return AgentConfig.load(market / agent_id / "agent.toml")


@asynccontextmanager
async def running(*agents: Agent) -> AsyncIterator[None]:
    async with trio.open_nursery() as nursery:
        for agent in agents:
            await nursery.start(agent.run)
        yield
        nursery.cancel_scope.cancel()


async def test_delivered_statement_is_archived_by_both_with_a_receipt(market: Path) -> None:
    buyer, seller = Agent(config(market, "buyer")), Agent(config(market, "seller"))
    with trio.fail_after(DEADLINE):
        async with running(buyer, seller):
            note = buyer.evidence.sign("test.note", {"text": "I will buy 3 books"})
            receipt = await buyer.evidence.deliver("seller", "buyer/tx-1", note)
            assert receipt.type == "evidence.receipt"
            assert receipt.body == {"transaction": "buyer/tx-1", "statement": note.digest,
                                    "from": "buyer"}
            for agent, first in ((buyer, "sent"), (seller, "received")):
                records = await agent.archive.records("buyer/tx-1")
                assert [str(r.direction) for r in records] == [
                    first, "received" if first == "sent" else "sent"]
                assert await agent.archive.verify() == 2
            bundle = await seller.archive.export_bundle(
                "buyer/tx-1", crl=seller.crl, root=seller.credentials.root)
            again = EvidenceBundle.from_bytes(bundle.to_bytes())
            newer = newer_crl(market)
            verified = verify_bundle(again, root=seller.credentials.root,
                                     now=note.issued_at_datetime, crls=[newer])
            assert [(v.statement.type, v.signer.agent_id) for v in verified] == [
                ("test.note", "buyer"), ("evidence.receipt", "seller")]


async def test_a_replayed_or_foreign_statement_is_refused_and_not_archived(
    market: Path,
) -> None:
    buyer, seller, bank = (Agent(config(market, name)) for name in ("buyer", "seller", "bank"))
    with trio.fail_after(DEADLINE):
        async with running(buyer, seller, bank):
            note = buyer.evidence.sign("test.note", {"n": 1})
            await buyer.evidence.deliver("seller", "buyer/tx-1", note)
            with pytest.raises(RemoteError) as info:  # the very same statement again
                await buyer.evidence.deliver("seller", "buyer/tx-1", note)
            assert info.value.code == "statement.replayed"
            with pytest.raises(RemoteError) as info:  # bank forwards buyer's statement
                await bank.evidence.deliver("seller", "bank/tx-2", buyer.evidence.sign(
                    "test.note", {"n": 2}))
            assert info.value.code == "statement.wrong_signer"
            assert await seller.archive.verify() == 2  # note and receipt of tx-1 only


def _open_archive(market: Path, agent_id: str) -> Database:
    return Database.open_sync(market / agent_id / "data" / "agent.sqlite", _archive.MIGRATIONS)


def test_an_edited_archive_is_named_by_the_cli(market: Path) -> None:
    async def fill() -> None:
        buyer, seller = Agent(config(market, "buyer")), Agent(config(market, "seller"))
        async with running(buyer, seller):
            for n in range(3):
                await buyer.evidence.deliver("seller", f"buyer/tx-{n}",
                                             buyer.evidence.sign("test.note", {"n": n}))

    trio.run(fill)
    cli = [sys.executable, "-m", "semper.agents.cli", "archive", "verify", "--config",
           str(market / "seller" / "agent.toml")]
    done = subprocess.run(cli, capture_output=True, text=True, timeout=DEADLINE)
    assert done.returncode == 0 and "6 records, chain intact" in done.stdout
    path = market / "seller" / "data" / "agent.sqlite"
    with sqlite3.connect(path) as db:  # delete the third record
        db.execute("DELETE FROM archive_records WHERE seq = 2")
    done = subprocess.run(cli, capture_output=True, text=True, timeout=DEADLINE)
    assert done.returncode == 1 and done.stderr.startswith("semper: archive.chain_broken")
    assert len(done.stderr.splitlines()) == 1
    database = _open_archive(market, "seller")
    with pytest.raises(ChainBroken) as info:
        verify_chain(database.read_sync(_archive.read_records))
    database.close()
    assert info.value.detail["kind"] == "deleted" and info.value.detail["seq"] == 2


async def test_sigkill_in_a_burst_loses_no_acknowledged_statement(market: Path) -> None:
    """The seller runs as its own process; the buyer delivers statements from 16 tasks
    at once; after 60 receipts the seller is killed with SIGKILL. Every statement the
    seller had answered with a receipt must be in its archive after a restart."""
    seller_cfg = market / "seller" / "agent.toml"
    argv = [sys.executable, "-m", "semper.agents.cli", "agent", "run", str(seller_cfg)]

    async def start() -> trio.Process:
        process = await trio.lowlevel.open_process(argv, stdout=subprocess.PIPE)
        line = b""
        while not line.endswith(b"\n"):
            chunk = await process.stdout.receive_some(1)
            assert chunk, "the seller exited before it was ready"
            line += chunk
        assert line.startswith(b"ready seller ")
        return process

    buyer = Agent(config(market, "buyer"))
    acknowledged: list[bytes] = []
    failed = 0
    with trio.fail_after(DEADLINE):
        seller = await start()
        try:
            async with running(buyer):
                killed = trio.Event()

                async def worker(number: int) -> None:
                    nonlocal failed
                    for n in range(1000):  # on until the dead seller refuses us
                        note = buyer.evidence.sign("test.note", {"worker": number, "n": n})
                        try:
                            await buyer.evidence.deliver("seller", f"buyer/tx-{number}", note)
                        except Exception:
                            failed += 1
                            return
                        acknowledged.append(note.digest)
                        if len(acknowledged) == 60 and not killed.is_set():
                            os.kill(seller.pid, signal.SIGKILL)
                            killed.set()

                async with trio.open_nursery() as nursery:
                    for number in range(16):
                        nursery.start_soon(worker, number)
            assert await seller.wait() == -signal.SIGKILL
            assert len(acknowledged) >= 60 and failed > 0  # killed mid-burst
            seller = await start()  # the restart runs the migrations, replays the WAL
        finally:
            seller.send_signal(signal.SIGTERM)
            await seller.wait()
    database = _open_archive(market, "seller")
    records = database.read_sync(_archive.read_records)
    database.close()
    verify_chain(records)
    archived = {row for (row,) in sqlite3.connect(
        market / "seller" / "data" / "agent.sqlite").execute(
        "SELECT digest FROM archive_records WHERE direction = 'received'")}
    assert set(acknowledged) <= archived


def test_a_bundle_is_exported_and_checked_from_the_command_line(market: Path,
                                                                 tmp_path: Path) -> None:
    async def fill() -> None:
        buyer, seller = Agent(config(market, "buyer")), Agent(config(market, "seller"))
        async with running(buyer, seller):
            await buyer.evidence.deliver("seller", "buyer/tx-9",
                                         buyer.evidence.sign("test.note", {"n": 9}))

    trio.run(fill)
    semper = [sys.executable, "-m", "semper.agents.cli"]
    bundle = tmp_path / "tx-9.bundle"
    done = subprocess.run([*semper, "archive", "export", "--config",
                           str(market / "seller" / "agent.toml"), "buyer/tx", "-o", str(bundle)],
                          capture_output=True, text=True, timeout=DEADLINE)
    assert done.returncode == 0, done.stderr
    root = str(market / "ca" / "root.pem")
    done = subprocess.run([*semper, "archive", "check", str(bundle), "--root", root, "--json"],
                          capture_output=True, text=True, timeout=DEADLINE)
    # The bundle's CRL is older than its statements: nothing yet shows their signers
    # were not revoked when they signed.
    assert done.returncode == 1 and done.stderr.startswith("semper: archive.crl_too_old:")
    done = subprocess.run([*semper, "archive", "check", str(bundle), "--root", root, "--json",
                           "--crl", str(_published(market))],
                          capture_output=True, text=True, timeout=DEADLINE)
    assert done.returncode == 0, done.stderr
    verified = json.loads(done.stdout)["verified"]
    assert [(v["type"], v["signer"]) for v in verified] == [
        ("test.note", "buyer"), ("evidence.receipt", "seller")]
    # A newer CRL of the same root stands in for the bundle's (above); another root's
    # may not.
    init_market(tmp_path / "other")
    foreign = str(tmp_path / "other" / "ca" / "crl.pem")
    done = subprocess.run([*semper, "archive", "check", str(bundle), "--root", root,
                           "--crl", foreign], capture_output=True, text=True, timeout=DEADLINE)
    assert done.returncode == 1 and done.stderr.startswith("semper: archive.invalid_evidence")
    assert "Traceback" not in done.stderr


def _published(market: Path) -> Path:
    newer_crl(market)
    return market / "ca" / "crl.pem"
