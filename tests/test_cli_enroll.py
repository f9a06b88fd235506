"""Joining a market from the command line, end to end over real processes.

The contract (used from outside the project; keep it exactly):

* ``semper ca invite DIR ID --role R --level L [--liable-amount CCY:UNITS]`` prints
  the one-time token as the last line of its stdout;
* ``semper agent enroll --token T --data-dir D`` writes a folder that
  ``semper agent run D/agent.toml`` starts with no editing, and the new agent finds
  the others through the CA agent's directory;
* every refusal is one line ``semper: <code>: <reason>`` on stderr and a non-zero
  exit: the same token twice, an expired token, a token pinning another CA, a
  malformed token;
* ``semper ca status DIR ID [--json]`` says good, revoked (with the date), expired or
  unknown.

One market and one CA agent process serve the whole module.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sqlite3
import stat
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from test_cli import (
    DEADLINE,
    AgentProcess,
    Market,
    assert_one_line_failure,
    semper,
    start_agents,
)

from semper.agents.runtime._config import parse_address
from semper.services.certificates import (
    EnrollmentToken,
    EnrollRequest,
    check_ca_certificate,
    enrollment_proof,
    make_csr,
)
from semper.transport import RemoteError, request_pinned

PASSPHRASE = b"new agent passphrase"


@pytest.fixture(scope="module")
def market(tmp_path_factory: pytest.TempPathFactory) -> Market:
    folder = tmp_path_factory.mktemp("enroll")
    done = semper("market", "init", folder / "market", timeout=30)
    assert done.returncode == 0, done.stderr
    return Market(folder / "market", None)


@pytest.fixture(scope="module")
def agents(market: Market, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[dict[str, AgentProcess]]:
    """The CA agent and a seller from `market init`, running for the whole module."""
    started = start_agents(market, ["ca", "seller"], tmp_path_factory.mktemp("logs"))
    try:
        yield started
    finally:
        for agent in started.values():
            agent.kill()


def invite(market: Market, agent_id: str, *extra: str) -> str:
    done = semper("ca", "invite", market.root, agent_id, *extra)
    assert done.returncode == 0 and done.stderr == "", done
    return done.stdout.splitlines()[-1]


def until_ok(*args: str | Path) -> dict[str, object]:
    """Run a ``--json`` command until it succeeds: a card published a moment after
    its agent's ready line may not be in the directory yet. Bounded."""
    deadline = time.monotonic() + DEADLINE
    while True:
        done = semper(*args, "--json")
        if done.returncode == 0:
            return json.loads(done.stdout)
        assert time.monotonic() < deadline, done.stderr


def test_join_with_a_token_and_reach_the_seller(market: Market, agents: dict[str, AgentProcess],
                                                tmp_path: Path) -> None:
    token = invite(market, "shop", "--role", "seller", "--level", "liable",
                   "--liable-amount", "EUR:5000000")
    assert token.startswith("semper-enroll-1.")
    passphrase_file = tmp_path / "passphrase"
    passphrase_file.write_bytes(PASSPHRASE + b"\n")
    home = tmp_path / "shop"
    done = semper("agent", "enroll", "--token", token, "--data-dir", home,
                  "--passphrase-file", passphrase_file)
    assert done.returncode == 0 and done.stderr == "", done
    assert "enrolled shop as seller at level liable" in done.stdout

    # A ready folder: encrypted 0600 key, and a config that needs no editing.
    key = home / "key.pem"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert key.read_bytes().startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    raw = tomllib.loads((home / "agent.toml").read_text())
    assert (raw["id"], raw["role"], raw["ca_agent"]) == ("shop", "seller", "ca")
    assert raw["peers"] == {"ca": market.listen("ca")}
    assert parse_address(raw["listen"])[0] == "127.0.0.1"

    shop = AgentProcess.start(_Home(home), "shop", tmp_path)
    try:
        assert shop.read_line().startswith("ready shop 127.0.0.1:")
        pinged = until_ok("ping", "--config", home / "agent.toml", "seller")
        assert (pinged["peer"], pinged["address"]) == ("seller", market.listen("seller"))
        back = until_ok("ping", "--config", market.config("seller"), "shop")
        assert back["peer"] == "shop" and back["address"] == raw["listen"]

        status = json.loads(semper("ca", "status", market.root, "shop", "--json").stdout)
        assert (status["status"], status["agent"], status["revoked_at"]) == ("good", "shop", None)
        # The same token again: refused, and nothing is written.
        again = semper("agent", "enroll", "--token", token, "--data-dir", tmp_path / "again")
        assert_one_line_failure(again, "enroll.token_used")
        assert not (tmp_path / "again").exists()

        assert semper("ca", "revoke", market.root, "shop").returncode == 0
        revoked = semper("ca", "status", market.root, "shop")
        assert revoked.returncode == 0
        assert revoked.stdout.startswith("shop: revoked on 20"), revoked.stdout
        assert shop.stop() == (0, "")
    finally:
        shop.kill()


@dataclasses.dataclass
class _Home:
    """What AgentProcess.start needs of a market, for an enrolled agent's folder."""

    home: Path
    passphrase_file: None = None

    def config(self, agent_id: str) -> Path:
        return self.home / "agent.toml"

    def passphrase_args(self) -> list[str]:
        return []


def test_an_expired_token_is_refused(market: Market, agents: dict[str, AgentProcess],
                                     tmp_path: Path) -> None:
    token = invite(market, "late", "--role", "buyer", "--level", "self-asserted")
    # A day passes: the CA's record of the token says it ran out.
    with sqlite3.connect(market.root / "ca" / "data" / "agent.sqlite") as db:
        db.execute("UPDATE enroll_invitations SET expires_ms = 1 WHERE agent_id = 'late'")
    done = semper("agent", "enroll", "--token", token, "--data-dir", tmp_path / "late")
    assert_one_line_failure(done, "enroll.token_expired")


def test_a_token_pinning_another_ca_is_refused(market: Market, agents: dict[str, AgentProcess],
                                               tmp_path: Path) -> None:
    token = EnrollmentToken.parse(invite(market, "pinned", "--role", "buyer",
                                         "--level", "self-asserted"))
    other = dataclasses.replace(token, ca_fingerprint=hashlib.sha256(b"impostor").digest())
    done = semper("agent", "enroll", "--token", other.encode(), "--data-dir", tmp_path / "p")
    line = assert_one_line_failure(done, "enroll.wrong_ca")
    assert "not the CA the token names" in line
    # The genuine token was not spent by that attempt.
    assert semper("agent", "enroll", "--token", token.encode(),
                  "--data-dir", tmp_path / "pinned").returncode == 0


@pytest.mark.parametrize("token", [
    "semper-enroll-1.not*base64",
    "semper-enroll-2.AAAA",
    "semper-enroll-1.",
    "hello",
])
def test_a_malformed_token_is_refused(token: str, tmp_path: Path) -> None:
    done = semper("agent", "enroll", "--token", token, "--data-dir", tmp_path / "x")
    assert_one_line_failure(done, "enroll.malformed_token")


def test_a_csr_whose_key_does_not_match_its_signature_is_refused(
        market: Market, agents: dict[str, AgentProcess]) -> None:
    """Not reachable through the CLI (it always makes a good CSR): a raw client."""
    token = EnrollmentToken.parse(invite(market, "forger", "--role", "buyer",
                                         "--level", "self-asserted"))
    csr = make_csr(ed25519.Ed25519PrivateKey.generate(), "forger")
    raw = serialization.PublicFormat.Raw
    own = ed25519.Ed25519PrivateKey.generate()  # a key the CSR was not signed with
    signed_with = _public(csr)
    forged = csr.replace(signed_with, own.public_key().public_bytes(
        serialization.Encoding.Raw, raw))
    request = EnrollRequest(token_id=token.token_id, csr_der=forged,
                            proof=enrollment_proof(token.secret, token.token_id, forged))
    host, port = parse_address(token.ca_address)

    async def send() -> None:
        with trio.fail_after(DEADLINE):
            await request_pinned(host, port, check_server=lambda der: check_ca_certificate(
                token, der), service="enroll", op="request", body=request.to_wire())

    with pytest.raises(RemoteError) as caught:
        trio.run(send)
    assert caught.value.code == "enroll.csr_key_mismatch"


def _public(csr_der: bytes) -> bytes:
    return x509.load_der_x509_csr(csr_der).public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def test_status_of_unknown_and_original_agents(market: Market) -> None:
    unknown = semper("ca", "status", market.root, "nobody")  # never issued: an error
    assert_one_line_failure(unknown, "agent.unknown_agent")
    good = json.loads(semper("ca", "status", market.root, "seller", "--json").stdout)
    assert good["status"] == "good" and good["not_after"].endswith("Z")
    assert good["crl_number"] >= 1


def test_invite_refusals_are_one_line(market: Market) -> None:
    # seller holds a good certificate from `market init`.
    done = semper("ca", "invite", market.root, "seller", "--role", "seller", "--level",
                  "verified-contact")
    assert_one_line_failure(done, "agent.market")
    bad_level = semper("ca", "invite", market.root, "x", "--role", "buyer", "--level", "gold")
    assert bad_level.returncode == 2 and "Traceback" not in bad_level.stderr
