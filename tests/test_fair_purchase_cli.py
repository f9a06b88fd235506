"""``semper buy --fair`` end to end: real processes (ca, bank, notary, seller running;
the buyer acts through the command), real loopback TLS (issue 9, protocol.md 10.5, 10.6).

The Done-when run: a seller that dies once paid (``SEMPER_CRASH_AT=fair.seller.paid``)
cannot keep the goods: ``buy --fair`` exits 0 with ``resolved_by: notary`` and the
goods written match the offer's content digest. Then each party killed at its other
steps, restarted, ends with the goods; and a bad escrow gives the buyer the notary's
signed finding and one line, non-zero.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_cli import (
    DEADLINE,
    AgentProcess,
    Market,
    _env,
    assert_one_line_failure,
    semper,
    semper_argv,
    start_agents,
)

BUY_DEADLINE = 60.0


def start(market: Market, agent_id: str, logs: Path, crash_at: str | None = None
          ) -> AgentProcess:
    """``semper agent run`` for ``agent_id``, dying at ``crash_at`` if given; waits
    for its ready line."""
    env = _env()
    env.pop("SEMPER_CRASH_AT", None)
    if crash_at is not None:
        env["SEMPER_CRASH_AT"] = crash_at
    stderr_path = logs / f"{agent_id}-{time.monotonic_ns()}.stderr"
    with stderr_path.open("wb") as stderr:
        process = subprocess.Popen(
            semper_argv("agent", "run", market.config(agent_id)), stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=stderr, env=env, bufsize=0)
    agent = AgentProcess(agent_id, process, stderr_path)
    try:
        agent.ready_line = agent.read_line()
    except BaseException:
        agent.kill()
        raise
    return agent


def buy(market: Market, sku: str, output: Path, *extra: str, pay: str = "transfer",
        crash_at: str | None = None) -> subprocess.CompletedProcess[str]:
    env = _env()
    env.pop("SEMPER_CRASH_AT", None)
    if crash_at is not None:
        env["SEMPER_CRASH_AT"] = crash_at
    return subprocess.run(
        semper_argv("buy", "--config", market.config("buyer"), "--seller", "seller",
                    "--item", sku, "--pay", pay, "--fair", "-o", output, "--json", *extra),
        capture_output=True, text=True, timeout=BUY_DEADLINE, env=env)


class Running:
    """The market's running agents, restartable one at a time."""

    def __init__(self, market: Market, logs: Path) -> None:
        self.market, self.logs = market, logs
        self.agents = start_agents(market, ["ca", "bank", "notary", "seller"], logs)

    def restart(self, agent_id: str, crash_at: str | None = None) -> AgentProcess:
        old = self.agents.pop(agent_id)
        if old.process.poll() is None:
            old.stop()
        old.kill()
        self.agents[agent_id] = start(self.market, agent_id, self.logs, crash_at)
        return self.agents[agent_id]

    def ensure(self) -> None:
        """Every agent running (normally): those an earlier test killed are restarted."""
        for agent_id, agent in list(self.agents.items()):
            if agent.process.poll() is not None:
                self.restart(agent_id)

    def close(self) -> None:
        for agent in self.agents.values():
            agent.kill()


def _market(folder: Path) -> Market:
    market = Market(folder / "market", None)
    done = semper("market", "init", market.root, timeout=30)
    assert done.returncode == 0, done.stderr
    return market


@pytest.fixture(scope="module")
def market(tmp_path_factory: pytest.TempPathFactory) -> Market:
    return _market(tmp_path_factory.mktemp("fair"))


@pytest.fixture(scope="module")
def running(market: Market, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    agents = Running(market, tmp_path_factory.mktemp("logs"))
    try:
        yield agents
    finally:
        agents.close()
        for agent in agents.agents.values():
            assert "Traceback" not in agent.stderr(), agent.stderr()


_DIGESTS: dict[Path, dict[str, str]] = {}


def offer_digest(market: Market, sku: str) -> str:
    """The content digest the seller signed in its offer (its catalogue read once,
    while it runs)."""
    if market.root not in _DIGESTS:
        done = semper("catalogue", "--config", market.config("buyer"), "--seller", "seller",
                      "--json")
        assert done.returncode == 0, done.stderr
        _DIGESTS[market.root] = {o["sku"]: o["content_digest"] for o in json.loads(done.stdout)}
    return _DIGESTS[market.root][sku]


def key_of(done: subprocess.CompletedProcess[str]) -> str:
    line = next(x for x in done.stderr.splitlines() if x.startswith("idempotency key: "))
    return line.split(": ", 1)[1]


def assert_goods(market: Market, sku: str, output: Path) -> None:
    assert hashlib.sha256(output.read_bytes()).hexdigest() == offer_digest(market, sku)


def test_fair_purchase_by_exchange(market: Market, running: Running, tmp_path: Path) -> None:
    output = tmp_path / "guide.txt"
    running.ensure()
    done = buy(market, "guide-001", output)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["resolved_by"] == "exchange" and result["state"] == "done"
    assert result["receipt"] is not None and result["payment"]["module"] == "transfer"
    assert_goods(market, "guide-001", output)


@pytest.mark.parametrize("pay", ["transfer", "cheque"])
def test_a_seller_dead_once_paid_cannot_keep_the_goods(
        market: Market, running: Running, tmp_path: Path, pay: str) -> None:
    """THE Done-when run: the seller exits once paid, before releasing the key; the
    buyer gets the goods through the notary, checked against the offer's digest."""
    running.ensure()
    offer_digest(market, "map-002")
    seller = running.restart("seller", crash_at="fair.seller.paid")
    output = tmp_path / "map.txt"
    done = buy(market, "map-002", output, pay=pay)
    assert done.returncode == 0, done.stderr
    assert seller.process.wait(DEADLINE) == -9  # it died where it was told to
    result = json.loads(done.stdout)
    assert result["resolved_by"] == "notary"
    assert result["payment"]["module"] == pay and result["goods_size"] == output.stat().st_size
    assert_goods(market, "map-002", output)
    # The seller back: the same purchase again completes the commerce part (receipt)
    # without paying again, and the goods stay the ones the notary released.
    running.restart("seller")
    again = buy(market, "map-002", tmp_path / "again.txt", "--idempotency-key", key_of(done),
                pay=pay)
    assert again.returncode == 0, again.stderr
    replay = json.loads(again.stdout)
    assert replay["resolved_by"] == "notary" and replay["receipt"] is not None
    assert replay["payment"]["settlement_digest"] == result["payment"]["settlement_digest"]
    assert (tmp_path / "again.txt").read_bytes() == output.read_bytes()


@pytest.mark.parametrize("pay", ["cheque", "transfer"])
def test_a_seller_dead_inside_payment_accept_cannot_keep_the_goods(
        market: Market, running: Running, tmp_path: Path, pay: str) -> None:
    """The seller dies inside ``payment.accept`` once the money moved (its deposit of
    our cheque cleared; a transfer moved before the hand-over), before answering:
    the buyer was answered no settlement, yet the notary needs one. A cheque's
    drawer asks its bank for the clearing (``bank.cheque_status``); a transfer's
    confirmation is in the buyer's archive. Either way the buyer goes to the notary
    and gets the goods."""
    running.ensure()
    offer_digest(market, "map-002")
    seller = running.restart("seller", crash_at="fair.seller.accepted")
    output = tmp_path / "map.txt"
    done = buy(market, "map-002", output, pay=pay)
    assert seller.process.wait(DEADLINE) == -9  # it died where it was told to
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["resolved_by"] == "notary" and result["payment"]["module"] == pay
    assert_goods(market, "map-002", output)
    running.restart("seller")


@pytest.mark.parametrize(("party", "point", "first_ok"), [
    ("seller", "fair.seller.fetched", False),
    ("seller", "fair.seller.released", True),
    ("buyer", "fair.buyer.delivered", False),
    ("buyer", "fair.buyer.paid", False),
    ("notary", "notary.escrow.received", False),
    ("recovering buyer", "fair.buyer.recovering", False),
])
def test_each_party_killed_at_a_step_ends_fair(
        market: Market, running: Running, tmp_path: Path, party: str, point: str,
        first_ok: bool) -> None:
    """Killed at ``point``, restarted: the same purchase run again ends with the
    goods of the offer (from the seller or the notary), paid once."""
    output = tmp_path / "song.txt"
    running.ensure()
    offer_digest(market, "song-003")
    if party == "notary":  # reached only when the seller withholds the key
        running.restart("seller", crash_at="fair.seller.paid")
        victim = running.restart("notary", crash_at=point)
    elif party == "seller":
        victim = running.restart("seller", crash_at=point)
    elif party == "recovering buyer":  # the buyer dies on its way to the notary
        running.restart("seller", crash_at="fair.seller.paid")
        party = "buyer"
    done = buy(market, "song-003", output, crash_at=point if party == "buyer" else None)
    if party == "buyer":
        assert done.returncode == -9, done.stderr
    else:
        assert victim.process.wait(DEADLINE) == -9
        assert (done.returncode == 0) == first_ok, done.stderr
    if first_ok:
        assert_goods(market, "song-003", output)
        return
    if party != "buyer":
        running.restart(party)
    if party == "notary":
        running.restart("seller", crash_at="fair.seller.paid")
    again = buy(market, "song-003", output, "--idempotency-key", key_of(done))
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["payment"]["module"] == "transfer"
    assert_goods(market, "song-003", output)
    if party == "notary":
        assert json.loads(again.stdout)["resolved_by"] == "notary"
        running.restart("seller")


def test_a_bad_escrow_gives_the_notarys_finding(tmp_path_factory: pytest.TempPathFactory,
                                                tmp_path: Path) -> None:
    """The seller seals the key to an escrow key the notary cannot open (here: the
    notary's key was replaced after the seller kept it) and dies once paid: the
    notary signs a refund finding, and the buyer gets one line, non-zero, no goods."""
    folder = tmp_path_factory.mktemp("bad-escrow")
    market = _market(folder)
    agents = Running(market, folder)
    try:
        first = buy(market, "song-003", tmp_path / "first.txt")  # the seller keeps the key
        assert first.returncode == 0, first.stderr
        agents.agents["notary"].stop()
        database = market.root / "notary" / "data" / "agent.sqlite"
        if not database.exists():
            database = next(market.root.joinpath("notary").rglob("agent.sqlite"))
        with sqlite3.connect(database) as c:
            c.execute("UPDATE notary_escrow_keys SET private = ?", (os.urandom(32),))
        agents.restart("notary")
        seller = agents.restart("seller", crash_at="fair.seller.paid")
        output = tmp_path / "guide.txt"
        done = buy(market, "guide-001", output, "--idempotency-key", "bad-escrow-1")
        assert seller.process.wait(DEADLINE) == -9
        line = assert_one_line_failure(done, "fairexchange.bad_escrow")
        assert "refund" in line and "escrow" in line
        assert not output.exists()
    finally:
        agents.close()


def test_notary_without_fair_is_a_usage_error(market: Market, tmp_path: Path) -> None:
    done = semper("buy", "--config", market.config("buyer"), "--seller", "seller", "--item",
                  "song-003", "--pay", "transfer", "--notary", "notary",
                  "--idempotency-key", "no-fair-1")
    assert_one_line_failure(done, "cli.usage")
