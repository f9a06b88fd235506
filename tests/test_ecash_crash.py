"""Ecash under SIGKILL (issue 11, Done when: "SIGKILL of the wallet, the seller and
the bank at each step of withdraw, spend and deposit, then retry: every coin and
every payment is accounted for exactly once").

One market for the module, its bank and seller real ``semper agent run`` processes;
each case has a buyer of its own (``buyer-<n>``, funded and carded by ``market
init``). A case is one flow: withdraw EUR 20.00 (one coin), then buy ``map-002``
(EUR 4.80) by ecash, which exchanges the coin for change at the bank and has the
seller deposit the spent coins. One process is killed at one crash point of that
flow (agents/runtime/_faults.py): the bank (``ecash.withdraw.*``,
``ecash.exchange.*``, ``ecash.deposit.*``, agents/instruments/ecash.py), the seller
(``payment.seller.received``: the coins received, not deposited;
``fair.seller.accepted``: deposited, the sale not stored paid; roles/seller.py) or
the wallet (``wallet.*``, agents/components/_wallet.py: the flow then runs as
``semper wallet withdraw`` and ``semper buy`` processes). The dead process is
restarted without the point (one restart per case) and the flow retried, in the
test's own process, with the same idempotency keys, and once more. Then, from the
bank's tables and every wallet's:

* the books balance, and ``@ecash-outstanding`` is the value of the coins fresh in
  the wallets: no batch pending, no coin bound to a payment not settled;
* every coin a wallet spent is spent at the bank (deposited or exchanged) exactly
  once, and no fresh coin is;
* the buyer was debited EUR 20.00 once (one ``ecash.withdrawn`` entry), the seller
  credited EUR 4.80 once (one ``ecash.deposited`` entry, one deposit), and the
  wallet holds EUR 15.20 in fresh coins;
* the purchase is done, and its repeat gives the same receipt.

Every point is a case; a plain run makes three of them (``FAST``), ``SEMPER_SLOW=1``
or ``-m slow`` all nineteen (~60 s).
"""

from __future__ import annotations

import os
import select
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio
from market_helpers import config_of, running

from semper.agents import Agent
from semper.agents.components import _ledger
from semper.agents.components._purchase import Shopper
from semper.agents.components._wallet import Wallet
from semper.agents.operator._market import DEFAULT_AGENTS, DEMO_FUNDS, init_market
from semper.services import Amount, ServiceError
from semper.services.certificates import Level
from semper.transport import TransportError

DEADLINE = 30.0  # real seconds per case (each takes a few): never reached when it works
OUTSTANDING = _ledger.system_account("ecash-outstanding")
WITHDRAWN = Amount("EUR", 2000)  # EUR:20.00, one coin: the purchase needs change
SKU, PRICE = "map-002", 480


# -- the agents as processes --------------------------------------------------------------


def _env(crash_at: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("SEMPER_CRASH_AT", "SEMPER_DEBUG", "PYTHONUNBUFFERED")}
    if crash_at is not None:
        env["SEMPER_CRASH_AT"] = crash_at
    return env


def _argv(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", "semper.agents.cli", *map(str, args)]


@dataclass
class Processes:
    """The market's bank and seller, each a ``semper agent run`` process,
    restartable with or without a crash point; their stderr kept in ``logs``."""

    folder: Path
    logs: Path
    running: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(self, agent_id: str, crash_at: str | None = None) -> None:
        self.stop(agent_id)
        with (self.logs / f"{agent_id}.stderr").open("ab") as stderr:
            process = subprocess.Popen(
                _argv("agent", "run", self.folder / agent_id / "agent.toml"),
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr,
                env=_env(crash_at), bufsize=0)
        self.running[agent_id] = process
        assert process.stdout is not None
        line, deadline = b"", time.monotonic() + DEADLINE
        while not line.endswith(b"\n"):
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"{agent_id} not ready in {DEADLINE}s"
            if select.select([process.stdout], [], [], remaining)[0]:
                chunk = os.read(process.stdout.fileno(), 256)
                assert chunk, f"{agent_id} exited before it was ready: {self.stderr(agent_id)}"
                line += chunk
        assert line.startswith(f"ready {agent_id} ".encode()), line

    def stop(self, agent_id: str) -> None:
        process = self.running.pop(agent_id, None)
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(DEADLINE)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        assert process.stdout is not None
        process.stdout.close()

    def killed(self, agent_id: str) -> int:
        """Wait for ``agent_id`` to die at its crash point; its exit status."""
        return self.running[agent_id].wait(DEADLINE)

    def stderr(self, agent_id: str) -> str:
        return (self.logs / f"{agent_id}.stderr").read_text(errors="replace")

    def close(self) -> None:
        for agent_id in list(self.running):
            self.stop(agent_id)


#: (who is killed, where). Each case has a buyer of its own: ``buyer-<its index>``.
CASES: list[tuple[str, str]] = [
    *[("bank", f"ecash.withdraw.{step}") for step in ("received", "checked", "applied",
                                                        "committed")],
    ("wallet", "wallet.withdraw.stored"),  # the batch stored, the bank not asked
    ("wallet", "wallet.withdraw.answered"),  # the bank signed, nothing of it stored
    ("wallet", "wallet.exchange.stored"),  # spending for change: the exchange stored
    ("wallet", "wallet.exchange.answered"),
    *[("bank", f"ecash.exchange.{step}") for step in ("received", "checked", "applied",
                                                        "committed")],
    ("wallet", "wallet.spend.bound"),  # the coins bound to the payment, not handed over
    ("seller", "payment.seller.received"),  # the coins received, not deposited
    *[("bank", f"ecash.deposit.{step}") for step in ("received", "checked", "applied",
                                                       "committed")],
    ("seller", "fair.seller.accepted"),  # deposited, the sale not stored paid
]


#: The cases every run makes (~2-4 s each: a restart of the bank or the seller, or
#: ``semper`` processes): the wallet killed with its coins bound to the payment, the
#: bank after a deposit it committed and never answered, the seller after the
#: deposit. The others are the same kind at the other points (SEMPER_SLOW=1 or ``-m
#: slow``); tests/test_wallet.py kills ``semper wallet withdraw`` at both its points
#: and tests/test_ecash_bank_crash.py the bank at ``ecash.deposit.applied`` by default.
FAST = frozenset({"wallet.spend.bound", "ecash.deposit.committed", "fair.seller.accepted"})


def _slow_requested(config: pytest.Config) -> bool:
    return bool(os.environ.get("SEMPER_SLOW")) or "slow" in (config.option.markexpr or "")


@pytest.fixture(scope="module")
def market(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
           ) -> Iterator[tuple[Path, Processes]]:
    folder = tmp_path_factory.mktemp("ecash-crash") / "market"
    slow = _slow_requested(request.config)
    buyers = [(f"buyer-{n}", "buyer", Level.VERIFIED_IDENTITY)
              for n, (_, point) in enumerate(CASES) if slow or point in FAST]
    init_market(folder, agents=[*DEFAULT_AGENTS, *buyers])
    agents = Processes(folder, tmp_path_factory.mktemp("logs"))
    try:
        agents.start("bank")
        agents.start("seller")
        yield folder, agents
    finally:
        agents.close()
        for agent_id in ("bank", "seller"):
            assert "Traceback" not in agents.stderr(agent_id), agents.stderr(agent_id)


# -- the accounts ---------------------------------------------------------------------------


def _read(folder: Path, agent_id: str) -> sqlite3.Connection:
    path = folder / agent_id / "data" / "agent.sqlite"
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True)


@dataclass(frozen=True)
class Accounts:
    buyer: int  # the case's buyer's balance at the bank
    seller: int
    withdrawals: int  # the case's buyer's ecash.withdrawn entries
    deposits: int  # every ecash.deposited entry, and ecash_deposits row
    fresh: int  # the value of the case's buyer's fresh coins


def accounts(folder: Path, buyer: str) -> Accounts:
    """The bank's and every wallet's tables, checked against each other (see the
    module's docstring); the figures of ``buyer`` and the seller."""
    with closing(_read(folder, "bank")) as bank:
        _ledger.check_books(bank)
        outstanding = _ledger.balances(bank, OUTSTANDING).get("EUR", 0)
        spent_at_bank = dict(bank.execute("SELECT coin_key, value FROM ecash_spent"))
        (deposits,), = bank.execute("SELECT count(*) FROM ecash_deposits")
        (entries,), = bank.execute(
            "SELECT count(*) FROM ledger_entries WHERE kind = 'ecash.deposited'")
        assert deposits == entries
        (withdrawals,), = bank.execute(
            "SELECT count(*) FROM ledger_entries e JOIN ledger_postings p USING (entry)"
            " JOIN ledger_accounts a ON a.id = p.account"
            " WHERE e.kind = 'ecash.withdrawn' AND a.holder = ?", (buyer,))
        figures = (_ledger.balances(bank, buyer)["EUR"], _ledger.balances(bank, "seller")["EUR"])
    fresh: dict[bytes, int] = {}
    spent: dict[bytes, int] = {}
    own_fresh = 0
    for agent_id in sorted(p.name for p in folder.iterdir() if p.name.startswith("buyer")):
        if not (folder / agent_id / "data" / "agent.sqlite").exists():
            continue
        with closing(_read(folder, agent_id)) as wallet:
            if wallet.execute("SELECT 1 FROM sqlite_master WHERE name = 'ecash_coins'"
                              ).fetchone() is None:
                continue  # never run: no wallet yet
            pending = wallet.execute("SELECT batch, kind FROM ecash_batches"
                                     " WHERE state != 'done'").fetchall()
            assert pending == [], (agent_id, pending)
            for coin_key, value, state in wallet.execute(
                    "SELECT coin_key, value, state FROM ecash_coins"):
                assert state in ("fresh", "spent"), (agent_id, coin_key.hex(), state)
                (fresh if state == "fresh" else spent)[coin_key] = value
                if agent_id == buyer and state == "fresh":
                    own_fresh += value
    assert outstanding == sum(fresh.values()), (outstanding, sum(fresh.values()))
    assert spent == spent_at_bank  # each spent once (coin_key is the bank's primary key)
    assert not fresh.keys() & spent_at_bank.keys()
    return Accounts(*figures, withdrawals, deposits, own_fresh)


# -- the flow -----------------------------------------------------------------------------


async def flow(agent: Agent, n: int) -> Any:
    """Case ``n``'s withdrawal and purchase, in this process (each idempotent per key)."""
    await agent.component(Wallet).withdraw(WITHDRAWN, f"w-{n}")
    return await Shopper(agent).buy("seller", SKU, "ecash", f"b-{n}")


async def flow_killed(folder: Path, n: int, point: str) -> None:
    """Case ``n``'s flow as ``semper wallet withdraw`` and ``semper buy`` processes,
    killed at ``point``."""
    config = folder / f"buyer-{n}" / "agent.toml"
    for args in (("wallet", "withdraw", "--config", config, "EUR:20.00",
                  "--idempotency-key", f"w-{n}"),
                 ("buy", "--config", config, "--seller", "seller", "--item", SKU, "--pay",
                  "ecash", "--idempotency-key", f"b-{n}")):
        done = await trio.run_process(_argv(*args), env=_env(point), check=False,
                                      stdin=b"", capture_stdout=True, capture_stderr=True)
        if done.returncode == -signal.SIGKILL:
            return
        assert done.returncode == 0, done.stderr.decode()
    raise AssertionError(f"the flow never reached {point}")


@pytest.mark.parametrize("n", [
    pytest.param(n, id=point, marks=() if point in FAST else pytest.mark.slow)
    for n, (_, point) in enumerate(CASES)])
async def test_killed_then_retried_every_coin_and_payment_once(
        market: tuple[Path, Processes], n: int, request: pytest.FixtureRequest) -> None:
    if "slow" in request.node.keywords and not _slow_requested(request.config):
        pytest.skip("one of the kind: SEMPER_SLOW=1 or -m slow runs every crash point")
    folder, agents = market
    who, point = CASES[n]
    buyer = f"buyer-{n}"
    before = await trio.to_thread.run_sync(accounts, folder, buyer)
    with trio.fail_after(DEADLINE):
        if who == "wallet":
            await flow_killed(folder, n, point)
        else:
            await trio.to_thread.run_sync(agents.start, who, point)
            async with running(Agent(config_of(folder, buyer))) as agent:
                with pytest.raises((TransportError, ServiceError)):
                    await flow(agent, n)
            assert await trio.to_thread.run_sync(agents.killed, who) == -signal.SIGKILL
            await trio.to_thread.run_sync(agents.start, who)
        async with running(Agent(config_of(folder, buyer))) as agent:
            done = await flow(agent, n)
            assert done.state == "done" and done.payment.module == "ecash"
            assert (await flow(agent, n)).receipt == done.receipt
    after = await trio.to_thread.run_sync(accounts, folder, buyer)
    assert (after.buyer, after.withdrawals) == (DEMO_FUNDS.minor_units - WITHDRAWN.minor_units, 1)
    assert (after.seller, after.deposits) == (before.seller + PRICE, before.deposits + 1)
    assert after.fresh == WITHDRAWN.minor_units - PRICE
