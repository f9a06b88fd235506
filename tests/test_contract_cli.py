"""``semper contract ...`` against real processes (issue 9's command line and its
Done-when line; protocol.md 10.6): the notary and the responder (the seller) run as
``semper agent run``, the buyer is the originator through the command line.

* approve, sign (text and ``--json``), show, export; an unapproved text refused in
  one line, the responder having signed nothing;
* THE Done-when run: the responder dies right after sending its commitment
  (``SEMPER_CRASH_AT=contract.responder.sent_m2``); ``contract sign`` ends ``signed``
  with ``resolved_by: notary``, and the restarted responder shows the same contract;
* every crash point of each party (originator, responder, notary): the party is
  killed there (SIGKILL), restarted (the originator by ``contract show``, which
  drives its exchange to a fair end), and both parties end alike: both signed, or
  both aborted, or the originator aborted and the responder holding nothing; the
  notary decided at most once.

The commands that do not crash run in-process (click's runner); a command that must
die at a crash point is a process of its own (the variable is read at import).
"""

from __future__ import annotations

import json
import os
import select
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cli_helpers import refused, semper
from cryptography.hazmat.primitives.serialization import Encoding
from market_helpers import newer_crl

from semper.agents.operator._market import init_market
from semper.services.archive import EvidenceBundle
from semper.services.statements import Statement

DEADLINE = 20.0  # real seconds: a bound on every wait, never reached when it works
TEXT = b"The seller delivers 12 crates of apples to the buyer by 1 March.\n"
KEYS = {"contract", "state", "resolved_by"}


def _env(crash_at: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("SEMPER_CRASH_AT", "SEMPER_DEBUG", "PYTHONUNBUFFERED")}
    if crash_at is not None:
        env["SEMPER_CRASH_AT"] = crash_at
    return env


@dataclass
class Process:
    """One ``semper agent run``; its ready line read with a bound, no sleep."""

    agent_id: str
    popen: subprocess.Popen[bytes]
    stderr_path: Path
    _out: bytes = field(default=b"", repr=False)

    @classmethod
    def launch(cls, market: Path, agent_id: str, crash_at: str | None = None) -> Process:
        """Start it; ``wait_ready`` reads its ready line (not for one that may die at
        its crash point before it is ready)."""
        stderr_path = market / f"{agent_id}-{time.monotonic_ns()}.stderr"
        with stderr_path.open("wb") as stderr:
            popen = subprocess.Popen(
                [sys.executable, "-m", "semper.agents.cli", "agent", "run",
                 str(market / agent_id / "agent.toml")],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr,
                env=_env(crash_at), bufsize=0)
        return cls(agent_id, popen, stderr_path)

    def wait_ready(self) -> None:
        line = self.read_line()
        assert line.startswith(f"ready {self.agent_id} "), line

    def read_line(self) -> str:
        out = self.popen.stdout
        assert out is not None
        deadline = time.monotonic() + DEADLINE
        while b"\n" not in self._out:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"{self.agent_id}: no ready line ({self.stderr()})"
            readable, _, _ = select.select([out], [], [], remaining)
            if readable:
                chunk = os.read(out.fileno(), 4096)
                assert chunk, f"{self.agent_id} exited: {self.stderr()}"
                self._out += chunk
        line, self._out = self._out.split(b"\n", 1)
        return line.decode()

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def died(self) -> int:
        """Wait (bounded) for the process to end by itself, at its crash point."""
        return self.popen.wait(DEADLINE)

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait(DEADLINE)
        if self.popen.stdout is not None:
            self.popen.stdout.close()
        assert "Traceback" not in self.stderr(), self.stderr()


@dataclass
class Done:
    returncode: int
    stdout: str
    stderr: str


class Market:
    """A fresh copy of the prebuilt market and the processes running in it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.processes: list[Process] = []
        self.text = root / "contract.txt"
        self.text.write_bytes(TEXT)

    def config(self, agent_id: str) -> Path:
        return self.root / agent_id / "agent.toml"

    def start(self, *agents: str | tuple[str, str], ready: bool = True) -> list[Process]:
        """Start agents together (``id`` or ``(id, crash point)``), then wait for each
        one's ready line (unless not ``ready``: one may die before it is ready)."""
        started = []
        for spec in agents:
            agent_id, crash_at = (spec, None) if isinstance(spec, str) else spec
            started.append(Process.launch(self.root, agent_id, crash_at))
            self.processes.append(started[-1])
        if ready:
            for process in started:
                process.wait_ready()
        return started

    def sign(self, *extra: str, crash_at: str | None = None, check: bool = True) -> Done:
        """``contract sign``: in-process, or as its own process to die at ``crash_at``
        (the variable is read at import)."""
        args = ["contract", "sign", "--config", str(self.config("buyer")), "--with", "seller",
                "--text", str(self.text), *extra]
        if crash_at is None:
            done = Done(*semper(*args))
        else:
            ran = subprocess.run([sys.executable, "-m", "semper.agents.cli", *args],
                                 capture_output=True, text=True, timeout=DEADLINE * 2,
                                 env=_env(crash_at), stdin=subprocess.DEVNULL, check=False)
            done = Done(ran.returncode, ran.stdout, ran.stderr)
        assert "Traceback" not in done.stderr, done.stderr
        if check:
            assert done.returncode == 0, done.stderr
        return done

    def show(self, agent_id: str, contract: str) -> tuple[int, str, str]:
        return semper("contract", "show", "--config", self.config(agent_id), contract, "--json")

    def approve(self) -> None:
        status, out, err = semper("contract", "approve", "--config", self.config("seller"),
                                  "--from", "buyer", "--text", self.text)
        assert status == 0, err
        assert out.startswith("approved: buyer may ask seller to sign ")

    def contracts(self, agent_id: str) -> list[tuple[str, str]]:
        """(contract hex, state) of every exchange the agent stored."""
        path = self.root / agent_id / "data" / "agent.sqlite"
        if not path.exists():
            return []
        connection = sqlite3.connect(path)
        try:
            return [(x.hex(), s) for x, s in connection.execute(
                "SELECT exchange, state FROM contract_exchanges ORDER BY created_ms")]
        except sqlite3.OperationalError:  # no table yet: the agent never started
            return []
        finally:
            connection.close()

    def decisions(self) -> list[tuple[str, str]]:
        connection = sqlite3.connect(self.root / "notary" / "data" / "agent.sqlite")
        try:
            return [(x.hex(), Statement.from_bytes(s).body["decision"]) for x, s in
                    connection.execute("SELECT exchange, statement FROM notary_decisions")]
        finally:
            connection.close()

    def stop_all(self) -> None:
        for process in self.processes:
            process.kill()


@pytest.fixture(scope="module")
def prebuilt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("contract-cli") / "market"
    init_market(folder)
    return folder


@pytest.fixture
def market(prebuilt: Path, tmp_path: Path) -> Iterator[Market]:
    running = Market(Path(shutil.copytree(prebuilt, tmp_path / "market")))
    try:
        yield running
    finally:
        running.stop_all()


def shown(market: Market, agent_id: str, contract: str) -> dict[str, object]:
    status, out, err = market.show(agent_id, contract)
    assert status == 0, err
    result = json.loads(out)
    assert set(result) == KEYS and result["contract"] == contract
    return result  # type: ignore[no-any-return]


# -- the command line ------------------------------------------------------------------


def test_approve_sign_show_and_export(market: Market) -> None:
    market.start("notary", "seller")
    market.approve()
    done = market.sign("--json")
    result = json.loads(done.stdout)
    assert set(result) == KEYS
    assert (result["state"], result["resolved_by"]) == ("signed", "exchange")
    contract = str(result["contract"])
    assert shown(market, "buyer", contract) == result
    assert shown(market, "seller", contract) == result
    done = market.sign()  # the text form: the state first, then the contract
    lines = done.stdout.splitlines()
    assert lines[0] == "signed" and lines[1].startswith("contract ")
    bundle_path = market.root / "contract.bundle"
    status, out, err = semper("contract", "export", "--config", market.config("buyer"),
                              contract, "-o", bundle_path)
    assert status == 0, err
    assert out == f"wrote 3 statements of contract {contract} to {bundle_path}\n"
    bundle = EvidenceBundle.from_bytes(bundle_path.read_bytes())
    assert bundle.transaction == contract
    assert [Statement.from_bytes(r.statement).type for r in bundle.records] == [
        "fairexchange.m1", "fairexchange.m2", "fairexchange.secrets"]
    assert len(bundle.certificates) == 2  # the buyer's and the seller's


def test_refusals_are_one_line(market: Market) -> None:
    """An unapproved text: the responder signs nothing, the originator aborted with
    the notary, one line; an unknown or malformed contract id; no notary."""
    market.start("notary", "seller")
    done = market.sign(check=False)
    assert done.returncode == 1 and done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("semper: fairexchange.not_approved: ")
    assert market.contracts("seller") == []
    ((contract, state),) = market.contracts("buyer")
    assert state == "aborted" and market.decisions() == [(contract, "abort")]
    refused(market.show("seller", contract), "fairexchange.unknown_contract")
    refused(market.show("buyer", "12ab"), "cli.usage", 2)
    refused(semper("contract", "sign", "--config", market.config("buyer"), "--with",
                   "seller", "--text", market.root / "missing.txt"), "agent.bad_file")
    refused(semper("contract", "sign", "--config", market.config("buyer"), "--with",
                   "Not An Id", "--text", market.text), "agent.bad_id", 2)
    refused(semper("contract", "export", "--config", market.config("buyer"), "0" * 64,
                   "-o", market.root / "x.bundle"), "fairexchange.unknown_contract")


def test_a_responder_dead_after_its_commitment_ends_signed_by_the_notary(
        market: Market) -> None:
    """The Done-when run: the responder exits right after sending m2; the sign ends
    signed, resolved by the notary; the responder, restarted, shows the same."""
    _, seller = market.start("notary", ("seller", "contract.responder.sent_m2"))
    market.approve()
    result = json.loads(market.sign("--json").stdout)
    assert (result["state"], result["resolved_by"]) == ("signed", "notary")
    assert seller.died() != 0
    market.start("seller")
    assert shown(market, "seller", str(result["contract"])) == result
    assert market.decisions() == [(result["contract"], "resolve")]


def test_an_originator_that_never_stored_m2_exports_a_bundle_that_binds_both(
        market: Market) -> None:
    """The originator dies as m2 arrives (never stored); the responder, holding its
    m2 sent, resolves first; the originator's abort gets the replacement contract.
    Its bundle holds m1 and the notary's decision, which quotes m2, and no record of
    the responder: the responder's certificate comes with the quote (protocol.md
    6A.8), so ``semper dispute check`` says both signed."""
    market.start("notary", "seller")
    market.approve()
    done = market.sign(crash_at="contract.originator.m2_received", check=False)
    assert done.returncode == -9, done.stderr
    ((contract, _),) = market.contracts("buyer")
    assert shown(market, "seller", contract)["resolved_by"] == "notary"
    mine = shown(market, "buyer", contract)
    assert (mine["state"], mine["resolved_by"]) == ("signed", "notary")
    bundle_path = market.root / "resolved.bundle"
    status, _, err = semper("contract", "export", "--config", market.config("buyer"),
                            contract, "-o", bundle_path)
    assert status == 0, err
    bundle = EvidenceBundle.from_bytes(bundle_path.read_bytes())
    assert "fairexchange.m2" not in {Statement.from_bytes(r.statement).type
                                     for r in bundle.records}
    crl = market.root / "newer-crl.der"
    crl.write_bytes(newer_crl(market.root).public_bytes(Encoding.DER))
    status, out, err = semper("dispute", "check", bundle_path, "--root",
                              market.root / "ca" / "root.pem", "--crl", crl, "--json")
    assert status == 0, err
    report = json.loads(out)
    assert report["valid"] is True
    assert {(v["party"], v["met"]) for v in report["verdicts"]} == {("buyer", True),
                                                                     ("seller", True)}


# -- every crash point of each party ---------------------------------------------------

#: The originator's points (it is the command): where it dies, and whether the
#: responder approved (the notary path needs a refusal, hence an abort).
ORIGINATOR = {
    "contract.originator.m1_stored": True,
    "contract.originator.m2_received": True,
    "contract.originator.m2_stored": True,
    "contract.originator.n_r_received": True,
    "contract.originator.request_stored": False,
    "contract.originator.decision_received": False,
}
#: The responder's points reached while it serves the originator.
RESPONDER = ["contract.responder.m1_received", "contract.responder.m2_stored",
             "contract.responder.sent_m2", "contract.responder.n_o_stored"]
#: The responder's points on its own way to the notary, after a restart.
RESPONDER_RESTART = ["contract.responder.request_stored",
                     "contract.responder.decision_received"]
NOTARY = ["contract.notary.received", "contract.notary.decided", "contract.notary.committed"]


def fair(market: Market) -> tuple[str, str | None]:
    """Both parties' final states after their restart, checked alike."""
    ((contract, _),) = market.contracts("buyer")
    mine = shown(market, "buyer", contract)
    assert mine["state"] in ("signed", "aborted")
    if not market.contracts("seller"):  # the responder never stored m1: holds nothing
        refused(market.show("seller", contract), "fairexchange.unknown_contract")
        assert mine["state"] == "aborted"
        theirs = None
    else:
        theirs = shown(market, "seller", contract)
        assert theirs["state"] == mine["state"], (mine, theirs)
    decided = market.decisions()
    assert len(decided) <= 1 and all(c == contract for c, _ in decided)
    return str(mine["state"]), None if theirs is None else str(theirs["state"])


@pytest.mark.parametrize("point", list(ORIGINATOR))
def test_the_originator_killed_at_each_step(market: Market, point: str) -> None:
    market.start("notary", "seller")
    if ORIGINATOR[point]:
        market.approve()
    done = market.sign(crash_at=point, check=False)
    assert done.returncode == -9, (done.returncode, done.stderr)
    fair(market)


@pytest.mark.parametrize("point", RESPONDER)
def test_the_responder_killed_at_each_step(market: Market, point: str) -> None:
    _, seller = market.start("notary", ("seller", point))
    market.approve()
    market.sign()
    assert seller.died() != 0
    market.start("seller")  # resumes what it had in flight by itself
    fair(market)


@pytest.mark.parametrize("point", RESPONDER_RESTART)
def test_the_responder_killed_on_its_way_to_the_notary(market: Market, point: str) -> None:
    """Dead after m2, restarted: it resolves by itself, and dies at ``point``; the
    next restart finishes."""
    _, seller = market.start("notary", ("seller", "contract.responder.sent_m2"))
    market.approve()
    market.sign()
    seller.died()
    (seller,) = market.start(("seller", point), ready=False)  # resumes, and dies
    assert seller.died() != 0
    market.start("seller")
    assert fair(market) == ("signed", "signed")


@pytest.mark.parametrize("point", NOTARY)
def test_the_notary_killed_at_each_step(market: Market, point: str) -> None:
    """The responder dead after m2 sends the originator to the notary, which dies at
    ``point``: the command fails in one line (the exchange stays in flight), the
    restarted notary decides once, both parties end signed."""
    notary, seller = market.start(("notary", point),
                                  ("seller", "contract.responder.sent_m2"))
    market.approve()
    done = market.sign(check=False)
    assert done.returncode == 1, done
    assert done.stderr.startswith("semper: fairexchange.unresolved: "), done.stderr
    assert notary.died() != 0 and seller.died() != 0
    market.start("notary", "seller")
    assert fair(market) == ("signed", "signed")
