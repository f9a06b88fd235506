"""``semper timestamp`` and ``semper timestamp verify`` end to end: real processes,
the market's notary running (docs/protocol.md 11.7). The ``--json`` keys are used
from outside the project: ``token``, ``digest``, ``serial``, ``time``, ``notary``,
``sequence``, ``head``."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_cli import AgentProcess, Market, assert_one_line_failure, semper, start_agents

KEYS = {"token", "digest", "serial", "time", "notary", "sequence", "head"}


@pytest.fixture(scope="module")
def market(tmp_path_factory: pytest.TempPathFactory) -> Market:
    market = Market(tmp_path_factory.mktemp("timestamp") / "market", None)
    done = semper("market", "init", market.root, timeout=30)
    assert done.returncode == 0, done.stderr
    return market


@pytest.fixture(scope="module")
def agents(market: Market, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[dict[str, AgentProcess]]:
    logs = tmp_path_factory.mktemp("logs")
    running = start_agents(market, ["ca"], logs)
    running.update(start_agents(market, ["notary"], logs))
    try:
        yield running
    finally:
        for agent in running.values():
            agent.kill()
        for agent in running.values():
            assert "Traceback" not in agent.stderr(), agent.stderr()


@pytest.fixture(scope="module")
def stamped(market: Market, agents: dict[str, AgentProcess],
            tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, object]]:
    folder = tmp_path_factory.mktemp("files")
    document, token = folder / "contract.txt", folder / "contract.tst"
    document.write_bytes(b"the contract, as agreed\n")
    done = semper("timestamp", "--config", market.config("buyer"), document, "-o", token,
                  "--json")
    assert done.returncode == 0, done.stderr
    return document, token, json.loads(done.stdout)


def root(market: Market) -> Path:
    return market.root / "ca" / "root.pem"


def test_timestamp_json_and_the_token_file(market: Market,
                                           stamped: tuple[Path, Path, dict[str, object]]) -> None:
    document, token, result = stamped
    assert set(result) == KEYS
    assert result["digest"] == hashlib.sha256(document.read_bytes()).hexdigest()
    assert result["notary"] == "notary" and result["token"] == str(token)
    assert isinstance(result["serial"], int) and isinstance(result["time"], int)
    assert len(str(result["head"])) == 64 and token.stat().st_size > 0


def test_verify_accepts_the_token_with_and_without_a_crl(
        market: Market, stamped: tuple[Path, Path, dict[str, object]]) -> None:
    document, token, result = stamped
    done = semper("timestamp", "verify", document, token, "--root", root(market), "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == result
    done = semper("timestamp", "verify", document, token, "--root", root(market),
                  "--crl", market.root / "ca" / "crl.pem")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"valid: {document} existed at ")


def test_a_second_timestamp_continues_the_chain(
        market: Market, stamped: tuple[Path, Path, dict[str, object]], tmp_path: Path) -> None:
    document, _, first = stamped
    done = semper("timestamp", "--config", market.config("seller"), document,
                  "-o", tmp_path / "again.tst")
    assert done.returncode == 0, done.stderr
    assert "timestamped" in done.stdout and "serial" in done.stdout
    done = semper("timestamp", "verify", document, tmp_path / "again.tst", "--root",
                  root(market), "--json")
    second = json.loads(done.stdout)
    assert second["serial"] > first["serial"]  # type: ignore[operator]
    assert second["sequence"] > first["sequence"]  # type: ignore[operator]


def test_verify_refusals_are_one_line(market: Market, tmp_path: Path,
                                      stamped: tuple[Path, Path, dict[str, object]]) -> None:
    document, token, _ = stamped
    other = tmp_path / "other.txt"
    other.write_bytes(b"the contract, as altered\n")
    assert_one_line_failure(semper("timestamp", "verify", other, token, "--root",
                                   root(market)), "timestamp.wrong_digest")
    raw = bytearray(token.read_bytes())
    # the digest inside the token, altered: the leaf is no longer under the signed root
    at = raw.index(hashlib.sha256(document.read_bytes()).digest())
    raw[at] ^= 1
    altered = tmp_path / "altered.tst"
    altered.write_bytes(bytes(raw))
    assert_one_line_failure(semper("timestamp", "verify", document, altered, "--root",
                                   root(market)), "timestamp.bad_proof")
    garbage = tmp_path / "garbage.tst"
    garbage.write_bytes(b"\x81\xa1x\x01")
    assert_one_line_failure(semper("timestamp", "verify", document, garbage, "--root",
                                   root(market)), "timestamp.bad_token")
    assert_one_line_failure(semper("timestamp", "verify", document, token, "--root",
                                   tmp_path / "missing.pem"), "agent.bad_file")
    assert_one_line_failure(semper("timestamp", "verify", document, token, "--root",
                                   document), "auth.bad_certificate")
    assert_one_line_failure(semper("timestamp", "verify", tmp_path / "missing", token,
                                   "--root", root(market)), "agent.bad_file")


def test_timestamp_refusals_are_one_line(market: Market, agents: dict[str, AgentProcess],
                                         tmp_path: Path,
                                         stamped: tuple[Path, Path, dict[str, object]]) -> None:
    document, _, _ = stamped
    out = tmp_path / "t.tst"
    # the CA serves no timestamps
    assert_one_line_failure(semper("timestamp", "--config", market.config("buyer"), document,
                                   "-o", out, "--notary", "ca"), "protocol.unknown_service")
    assert_one_line_failure(semper("timestamp", "--config", market.config("buyer"),
                                   tmp_path / "missing", "-o", out), "agent.bad_file")
    assert_one_line_failure(semper("timestamp", "--config", market.config("buyer"), document,
                                   "-o", tmp_path / "no" / "t.tst"), "agent.cannot_write")
    assert not out.exists()
