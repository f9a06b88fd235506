"""The ``semper`` command line end to end: real processes, real loopback TLS 1.3.

The contract tested here is used from outside the project (scripts start agents and
read their ready line, parse ``ping --json``, revoke with ``ca revoke``), so it must
hold exactly:

* ``market init DIR`` writes the layout in ``agents/operator/_market.py``: keys PKCS#8 and
  0600, encrypted under ``--passphrase-file``; certificates issued by the root.
* ``agent run`` prints exactly one line ``ready <id> <host:port>`` once it listens,
  flushed at once (we read it from a pipe while the agent runs), and exits 0 on
  SIGINT or SIGTERM after saying ``bye`` on its channels.
* ``ping`` prints the peer's role, services and round trip (``--json`` for scripts);
  every failure is one line on stderr, no traceback, a non-zero exit.
* ``ca revoke`` is honoured by running agents within 10 s, without a restart.

Two markets are shared by the whole module (one with encrypted keys, one plain)
because each ``semper`` process costs a few hundred milliseconds to start. Every
process started is killed in a teardown, and every wait is bounded.
"""

from __future__ import annotations

import json
import os
import re
import select
import shutil
import signal
import stat
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import tomli_w
import trio
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.x509.oid import NameOID

from semper.agents.runtime._agent import Agent
from semper.agents.runtime._config import AgentConfig

AGENTS = ("ca", "bank", "seller", "buyer", "notary", "arbiter")
PASSPHRASE = b"correct horse battery staple"
DEADLINE = 10.0  # seconds: a bound on every wait, never reached when things work
REVOCATION_BOUND = 10.0  # the contract: running agents refuse a revoked cert within this


# -- harness -----------------------------------------------------------------------


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("SEMPER_DEBUG", None)  # it turns one-line errors back into tracebacks
    env.pop("PYTHONUNBUFFERED", None)  # the ready line must be flushed by semper itself
    return env


def semper_argv(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", "semper.agents.cli", *map(str, args)]


def semper(*args: str | Path, timeout: float = DEADLINE) -> subprocess.CompletedProcess[str]:
    return subprocess.run(semper_argv(*args), capture_output=True, text=True, timeout=timeout,
                          env=_env(), stdin=subprocess.DEVNULL, check=False)


def assert_one_line_failure(done: subprocess.CompletedProcess[str], code: str) -> str:
    """A failure as the CLI contract has it: one stderr line, no traceback, exit != 0."""
    assert done.returncode != 0, done
    assert done.stdout == "", done
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].strip() and done.stderr.endswith("\n"), done.stderr
    assert lines[0].startswith(f"semper: {code}: "), lines[0]
    return lines[0]


@dataclass
class Market:
    root: Path
    passphrase_file: Path | None

    def config(self, agent_id: str) -> Path:
        return self.root / agent_id / "agent.toml"

    def listen(self, agent_id: str) -> str:
        return tomllib.loads(self.config(agent_id).read_text())["listen"]

    def passphrase_args(self) -> list[str | Path]:
        return [] if self.passphrase_file is None else ["--passphrase-file", self.passphrase_file]

    def ping(self, source: str, peer: str, *extra: str | Path,
             config: Path | None = None) -> subprocess.CompletedProcess[str]:
        return semper("ping", "--config", config or self.config(source), *self.passphrase_args(),
                      *extra, peer)


def _init_market(folder: Path, passphrase: bytes | None) -> Market:
    passphrase_file = None
    if passphrase is not None:
        passphrase_file = folder / "passphrase"
        passphrase_file.write_bytes(passphrase + b"\n")
    market = Market(folder / "market", passphrase_file)
    args = ["market", "init", market.root, *market.passphrase_args()]
    done = semper(*args, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    return market


@pytest.fixture(scope="module")
def locked_market(tmp_path_factory: pytest.TempPathFactory) -> Market:
    """A market whose keys are encrypted: shared, never revoked in."""
    return _init_market(tmp_path_factory.mktemp("locked"), PASSPHRASE)


@pytest.fixture(scope="module")
def plain_market(tmp_path_factory: pytest.TempPathFactory) -> Market:
    """A market with unencrypted keys; the revocation test revokes its buyer."""
    return _init_market(tmp_path_factory.mktemp("plain"), None)


@dataclass
class AgentProcess:
    """One ``semper agent run`` with its stdout pipe; stderr goes to a file."""

    agent_id: str
    process: subprocess.Popen[bytes]
    stderr_path: Path
    ready_line: str = ""
    _stdout: bytes = field(default=b"", repr=False)

    @classmethod
    def start(cls, market: Market, agent_id: str, logs: Path) -> AgentProcess:
        stderr_path = logs / f"{agent_id}-{time.monotonic_ns()}.stderr"
        with stderr_path.open("wb") as stderr:
            process = subprocess.Popen(
                semper_argv("agent", "run", market.config(agent_id), *market.passphrase_args()),
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr, env=_env(),
                bufsize=0)
        return cls(agent_id, process, stderr_path)

    def read_line(self, timeout: float = DEADLINE) -> str:
        """The next stdout line, read while the process runs: so it must be flushed."""
        out = self.process.stdout
        assert out is not None
        deadline = time.monotonic() + timeout
        while b"\n" not in self._stdout:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{self.agent_id}: no whole line on stdout in {timeout}s "
                                   f"(got {self._stdout!r}; stderr: {self.stderr()!r})")
            readable, _, _ = select.select([out], [], [], remaining)
            if readable:
                chunk = os.read(out.fileno(), 4096)
                if not chunk:
                    raise EOFError(f"{self.agent_id} closed stdout after {self._stdout!r}; "
                                   f"exit {self.process.poll()}, stderr: {self.stderr()!r}")
                self._stdout += chunk
        line, self._stdout = self._stdout.split(b"\n", 1)
        return line.decode()

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def stop(self, signum: int | None = signal.SIGTERM, timeout: float = DEADLINE
             ) -> tuple[int, str]:
        """Signal (unless None), wait, and return the exit code and the rest of stdout."""
        if signum is not None:
            self.process.send_signal(signum)
        code = self.process.wait(timeout)
        assert self.process.stdout is not None
        rest = self._stdout + self.process.stdout.read()
        self._stdout = b""
        return code, rest.decode()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(DEADLINE)
        if self.process.stdout is not None:
            self.process.stdout.close()


def start_agents(market: Market, agent_ids: list[str], logs: Path) -> dict[str, AgentProcess]:
    """Start the agents together, then wait for each ready line. Kills all on failure."""
    started: dict[str, AgentProcess] = {}
    try:
        for agent_id in agent_ids:
            started[agent_id] = AgentProcess.start(market, agent_id, logs)
        for agent in started.values():
            agent.ready_line = agent.read_line()
    except BaseException:
        for agent in started.values():
            agent.kill()
        raise
    return started


@pytest.fixture(scope="module")
def locked_agents(locked_market: Market, tmp_path_factory: pytest.TempPathFactory
                  ) -> Iterator[dict[str, AgentProcess]]:
    """seller and buyer of the locked market, running for the whole module."""
    agents = start_agents(locked_market, ["seller", "buyer"], tmp_path_factory.mktemp("logs"))
    try:
        yield agents
    finally:
        for agent in agents.values():
            agent.kill()


# -- market init -------------------------------------------------------------------


@pytest.mark.parametrize("which", ["plain_market", "locked_market"])
def test_market_init_layout(which: str, request: pytest.FixtureRequest) -> None:
    market: Market = request.getfixturevalue(which)
    passphrase = None if market.passphrase_file is None else PASSPHRASE
    ca = market.root / "ca"
    root = x509.load_pem_x509_certificate((ca / "root.pem").read_bytes())
    root_key = _load_key(ca / "root-key.pem", passphrase)
    assert root_key.public_key() == root.public_key()
    crl = x509.load_pem_x509_crl((ca / "crl.pem").read_bytes())
    assert crl.is_signature_valid(root.public_key())
    assert crl.issuer == root.subject

    listens = {agent_id: market.listen(agent_id) for agent_id in AGENTS}
    assert len(set(listens.values())) == len(AGENTS), listens
    for agent_id in AGENTS:
        home = market.root / agent_id
        raw = tomllib.loads((home / "agent.toml").read_text())
        assert raw["id"] == agent_id
        assert raw["role"] == agent_id  # the default market gives every role one agent
        assert re.fullmatch(r"127\.0\.0\.1:\d{1,5}", raw["listen"]), raw["listen"]
        assert (home / raw["data_dir"]).is_dir()
        assert (home / raw["ca_root"]).samefile(ca / "root.pem")
        assert (home / raw["crl"]).samefile(ca / "crl.pem")
        assert raw["peers"] == {peer: listens[peer] for peer in AGENTS if peer != agent_id}
        # The project's own reading of the file agrees with the raw TOML.
        config = AgentConfig.load(home / "agent.toml")
        assert (config.id, config.role, config.listen) == (agent_id, agent_id, raw["listen"])

        cert = x509.load_pem_x509_certificate((home / "cert.pem").read_bytes())
        cert.verify_directly_issued_by(root)
        assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == agent_id
        key = _load_key(home / "key.pem", passphrase)
        assert key.public_key() == cert.public_key()

    for private in [ca / "root-key.pem", *(market.root / a / "key.pem" for a in AGENTS)]:
        assert stat.S_IMODE(private.stat().st_mode) == 0o600, private


def _load_key(path: Path, passphrase: bytes | None) -> ed25519.Ed25519PrivateKey:
    """Load a PKCS#8 key, first checking it is encrypted exactly when it should be."""
    pem = path.read_bytes()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    if passphrase is None:
        assert pem.startswith(b"-----BEGIN PRIVATE KEY-----\n"), pem[:40]  # PKCS#8 clear
    else:
        assert pem.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----\n"), pem[:40]
        with pytest.raises(TypeError):  # cryptography: encrypted, but no password given
            serialization.load_pem_private_key(pem, password=None)
        with pytest.raises(ValueError):
            serialization.load_pem_private_key(pem, password=b"not it")
    key = serialization.load_pem_private_key(pem, password=passphrase)
    assert isinstance(key, ed25519.Ed25519PrivateKey)
    return key


# -- agent run ---------------------------------------------------------------------


def test_agent_prints_one_flushed_ready_line(locked_market: Market,
                                             locked_agents: dict[str, AgentProcess]) -> None:
    for agent_id, agent in locked_agents.items():
        # read from the pipe while the agent runs: without a flush it would not be there
        assert agent.process.poll() is None
        assert agent.ready_line == f"ready {agent_id} {locked_market.listen(agent_id)}"
        host, _, port = agent.ready_line.split(" ")[2].rpartition(":")
        assert host == "127.0.0.1" and 0 < int(port) < 65536


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
async def test_agent_stops_on_signal_closing_its_channels(
    signum: int, locked_market: Market, tmp_path: Path,
) -> None:
    bank = start_agents(locked_market, ["bank"], tmp_path)["bank"]
    try:
        # A channel into the running agent, held open across the signal: the agent
        # must close it with a bye rather than just vanish.
        buyer = Agent(AgentConfig.load(locked_market.config("buyer")), passphrase=PASSPHRASE)
        with trio.fail_after(DEADLINE):
            async with buyer.connect("bank") as channel:
                answer = await channel.request("sys", "ping", b"before")
                assert answer["echo"] == b"before"
                bank.process.send_signal(signum)
                reason = await channel.wait_closed()
        assert "the peer said bye" in str(reason), reason
        code, rest = await trio.to_thread.run_sync(bank.stop, None)  # signalled above
        assert code == 0, bank.stderr()
        assert rest == "", "stdout must hold the ready line only"
        assert "Traceback" not in bank.stderr()
    finally:
        bank.kill()


# -- ping --------------------------------------------------------------------------


def test_ping_json(locked_market: Market, locked_agents: dict[str, AgentProcess]) -> None:
    done = locked_market.ping("buyer", "seller", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["peer"] == "seller"
    assert result["role"] == "seller"
    assert result["address"] == locked_market.listen("seller")
    assert result["services"]["sys"] == {"version": 1, "modules": []}
    assert isinstance(result["rtt_ms"], float | int) and 0 < result["rtt_ms"] < DEADLINE * 1000
    assert isinstance(result["connect_ms"], float | int) and result["connect_ms"] > 0


def test_ping_human(locked_market: Market, locked_agents: dict[str, AgentProcess]) -> None:
    done = locked_market.ping("seller", "buyer")
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    out = done.stdout
    assert "seller -> buyer" in out
    assert re.search(r"role\s.*\sbuyer\b", out), out
    assert re.search(r"services\s.*\ssys v1\b", out), out
    assert re.search(r"round trip\s.*\s\d+\.\d+ ms", out), out


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize("case", [
    "peer_not_running",  # notary is in the config but nobody listens there
    "unknown_peer",  # not in [peers]
    "missing_config",
    "bad_toml",  # not TOML at all
    "config_missing_id",  # TOML, but no agent id
    "wrong_passphrase",
    "no_passphrase",  # encrypted key, no passphrase file given
])
def test_ping_failures_are_one_line(case: str, locked_market: Market, tmp_path: Path,
                                    locked_agents: dict[str, AgentProcess]) -> None:
    # seller runs throughout: each case fails for its own reason only.
    buyer = locked_market.config("buyer")
    config, peer, extra, code = buyer, "seller", locked_market.passphrase_args(), "agent.bad_config"
    if case == "peer_not_running":
        peer, code = "notary", "transport.connect_failed"
    elif case == "unknown_peer":
        peer = "nobody"
    elif case == "missing_config":
        config = tmp_path / "absent.toml"
    elif case == "bad_toml":
        config = _write(tmp_path / "agent.toml", 'id = "buyer\n[[[')
    elif case == "config_missing_id":
        raw = tomllib.loads(buyer.read_text())
        del raw["id"]
        config = _write(tmp_path / "agent.toml", tomli_w.dumps(raw))
    elif case == "wrong_passphrase":
        extra = ["--passphrase-file", _write(tmp_path / "wrong", "not the passphrase\n")]
        code = "agent.bad_key"
    elif case == "no_passphrase":
        extra, code = [], "agent.bad_key"
    done = semper("ping", "--config", config, *extra, peer)
    line = assert_one_line_failure(done, code)
    if case == "unknown_peer":
        assert "nobody" in line


def test_ca_revoke_without_passphrase_is_one_line(locked_market: Market) -> None:
    crl_before = (locked_market.root / "ca" / "crl.pem").read_bytes()
    assert_one_line_failure(semper("ca", "revoke", locked_market.root, "notary"), "agent.bad_key")
    assert (locked_market.root / "ca" / "crl.pem").read_bytes() == crl_before


# -- revocation --------------------------------------------------------------------


def test_revocation_reaches_running_agents(plain_market: Market, tmp_path: Path) -> None:
    market = plain_market
    crl_refresh = tomllib.loads(market.config("seller").read_text())["timeouts"]["crl_refresh"]
    assert crl_refresh <= 2.0  # what market init writes; the bound below relies on it

    # buyer's ping process checks its own certificate against the CRL it reads, so
    # after the revocation it would stop itself before the seller had a say. A copy
    # of buyer's config that still reads the old CRL lets the seller's refusal show.
    buyer_home = market.root / "buyer"
    shutil.copy(market.root / "ca" / "crl.pem", buyer_home / "stale-crl.pem")
    raw = tomllib.loads(market.config("buyer").read_text())
    raw["crl"] = "stale-crl.pem"
    stale = _write(buyer_home / "stale.toml", tomli_w.dumps(raw))

    agents = start_agents(market, ["seller", "buyer"], tmp_path)
    try:
        before = market.ping("buyer", "seller", "--json")
        assert before.returncode == 0, before.stderr
        assert market.ping("buyer", "seller", "--json", config=stale).returncode == 0

        revoked_at = time.monotonic()
        done = semper("ca", "revoke", market.root, "buyer")
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith("revoked buyer: CRL number 2 with 1 entry ")

        # Poll with fresh ping processes until the running seller refuses buyer.
        deadline = revoked_at + REVOCATION_BOUND
        attempts = 0
        while True:
            attempts += 1
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"seller still accepts revoked buyer after {attempts} pings"
            refused = market.ping("buyer", "seller", config=stale)
            if refused.returncode != 0:
                break
        took = time.monotonic() - revoked_at
        assert took <= REVOCATION_BOUND, took
        line = assert_one_line_failure(refused, "auth.handshake_failed")
        assert "revoked" in line, line

        # ...without a restart, and only buyer is refused.
        assert agents["seller"].process.poll() is None
        assert agents["seller"].stderr().count("Traceback") == 0
        assert market.ping("bank", "seller").returncode == 0
        # buyer's own ping process, reading the current CRL, stops before connecting.
        assert_one_line_failure(market.ping("buyer", "seller"), "auth.revoked")
        for agent in agents.values():
            assert agent.stop() == (0, ""), agent.stderr()
    finally:
        for agent in agents.values():
            agent.kill()
