"""``semper dispute check BUNDLE --root ROOT.pem [--crl CRL] [--json]``: verdicts of a
real purchase's bundle; refusals as one line, exit non-zero."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from cli_helpers import refused, semper
from cryptography.hazmat.primitives import serialization
from pki import Market
from test_disputes import DELIVERED, PAID, RECEIPTED, Trade, _index, _replaced

from semper.services.statements import Statement

DER = serialization.Encoding.DER


@pytest.fixture(scope="module")
def trade(tmp_path_factory):
    return Trade(tmp_path_factory.mktemp("cli-disputes") / "m")


@pytest.fixture
def files(trade, tmp_path):
    bundle = tmp_path / "bundle.semper"
    bundle.write_bytes(trade.bundles["buyer", "done"].to_bytes())
    crl = tmp_path / "crl.der"
    crl.write_bytes(trade.crl.public_bytes(DER))
    return bundle, trade.folder / "ca" / "root.pem", crl


def test_check_json_gives_every_verdict(files):
    bundle, root, crl = files
    status, out, err = semper("dispute", "check", bundle, "--root", root, "--crl", crl, "--json")
    assert status == 0, err
    report = json.loads(out)
    assert set(report) == {"valid", "verdicts"} and report["valid"] is True
    assert {(v["obligation"], v["party"], v["met"]) for v in report["verdicts"]} == {
        (PAID, "buyer", True), (DELIVERED, "seller", True), (RECEIPTED, "seller", True)}
    assert all(set(v) == {"obligation", "party", "met", "reason"} for v in report["verdicts"])


def test_check_prints_a_table(files):
    bundle, root, crl = files
    status, out, err = semper("dispute", "check", bundle, "--root", root, "--crl", crl)
    assert status == 0, err
    assert "commerce.purchase" in out and "buyer paid" in out and "yes" in out


def test_unmet_obligation_still_exits_zero(trade, files, tmp_path):
    _, root, crl = files
    bundle = trade.bundles["buyer", "done"]
    mismatched = tmp_path / "mismatched.semper"
    mismatched.write_bytes(_replaced(bundle, _index(bundle, "commerce.delivery"),
                                     trade.forged_delivery).to_bytes())
    status, out, err = semper("dispute", "check", mismatched, "--root", root, "--crl", crl,
                              "--json")
    assert status == 0, err
    met = {v["obligation"]: v["met"] for v in json.loads(out)["verdicts"]}
    assert met[DELIVERED] is False and met[PAID] is True


def test_refusals_are_one_line(files, tmp_path):
    bundle, root, crl = files
    junk = tmp_path / "junk"
    junk.write_bytes(b"not a bundle")
    refused(semper("dispute", "check", junk, "--root", root, "--crl", crl), "archive.malformed")
    tampered = tmp_path / "tampered"
    data = bytearray(bundle.read_bytes())
    data[len(data) // 2] ^= 0x01
    tampered.write_bytes(bytes(data))
    status, out, err = semper("dispute", "check", tampered, "--root", root, "--crl", crl,
                              "--json")
    assert status != 0 and err.startswith("semper: archive.")
    if out:  # a bundle that does not verify: valid false, and the one line
        assert json.loads(out) == {"valid": False, "verdicts": []}
    other = Market(tmp_path / "other")
    (tmp_path / "other-root.pem").write_bytes(other.root_pem)
    refused(semper("dispute", "check", bundle, "--root", tmp_path / "other-root.pem"),
            "archive.wrong_root")
    refused(semper("dispute", "check", bundle, "--root", root), "archive.crl_too_old")
    refused(semper("dispute", "check", tmp_path / "missing", "--root", root), "os.error")
    refused(semper("dispute", "check", bundle, "--root", bundle), "auth.bad_certificate")
    refused(semper("dispute", "check", bundle), "cli.usage", exit_code=2)


def test_check_as_a_process(files):
    bundle, root, crl = files
    done = subprocess.run([sys.executable, "-m", "semper.agents.cli", "dispute", "check",
                           str(bundle), "--root", str(root), "--crl", str(crl), "--json"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["valid"] is True


def test_check_config_keeps_a_fetched_crl_that_revokes_nothing(files, trade, monkeypatch):
    """An x509 CRL has a length (its entries): one revoking nothing is falsy, and the
    fresh CRL the CA agent issued for ``--config`` was dropped as if none had come
    (archive.crl_too_old; seen in ``semper demo``). The CA agent stands in here."""
    from semper.agents.cli import cmd_archive, cmd_dispute

    bundle, root, _ = files
    assert len(trade.crl) == 0

    async def fetch(config, passphrase, fresh_after):
        return trade.crl

    monkeypatch.setattr(cmd_dispute, "load_config", lambda path, passphrase_file: (None, None))
    monkeypatch.setattr(cmd_archive, "_local_crls", lambda config: [])
    monkeypatch.setattr(cmd_archive, "_fetch_crl", fetch)
    status, out, err = semper("dispute", "check", bundle, "--root", root, "--config",
                              bundle, "--json")
    assert status == 0, err
    assert json.loads(out)["valid"] is True


# -- semper dispute file ---------------------------------------------------------------

async def test_file_as_the_buyer_gets_a_verdict_and_archives_it(tmp_path):
    import trio
    from click.testing import CliRunner
    from market_helpers import running

    from semper.agents import Agent, AgentConfig
    from semper.agents.cli import cli
    from semper.agents.components._purchase import Shopper
    from semper.agents.operator._market import DEFAULT_AGENTS, init_market
    from semper.services.certificates import Level

    folder = tmp_path / "m"
    if any(a[0] == "arbiter" for a in DEFAULT_AGENTS):
        init_market(folder)
    else:
        init_market(folder, agents=(*DEFAULT_AGENTS,
                                    ("arbiter", "arbiter", Level.VERIFIED_IDENTITY)))
    agents = {name: Agent(AgentConfig.load(folder / name / "agent.toml"))
              for name in ("ca", "bank", "seller", "arbiter")}
    shopper = Agent(AgentConfig.load(folder / "buyer" / "agent.toml"))
    bundle = tmp_path / "bundle.semper"
    config = str(folder / "buyer" / "agent.toml")
    runner = CliRunner()
    with trio.fail_after(60):
        async with running(agents["ca"]), running(agents["bank"]), \
                running(agents["seller"]), running(agents["arbiter"]):
            async with shopper.session():
                bought = await Shopper(shopper).buy("seller", "guide-001", "transfer", "k-1")
                exported = await shopper.archive.export_bundle(
                    bought.order.hex(), crl=shopper.crl, root=shopper.credentials.root)
            bundle.write_bytes(exported.to_bytes())
            done = await trio.to_thread.run_sync(lambda: runner.invoke(
                cli, ["dispute", "file", "--config", config, str(bundle), "--json"]))
            assert done.exit_code == 0, done.stderr
            result = json.loads(done.stdout)
            again = await trio.to_thread.run_sync(lambda: runner.invoke(
                cli, ["dispute", "file", "--config", config, str(bundle)]))
            assert again.exit_code == 0, again.stderr
            assert result["case"] in again.stdout and "buyer paid" in again.stdout
            refused = await trio.to_thread.run_sync(lambda: runner.invoke(
                cli, ["dispute", "file", "--config", str(folder / "bank" / "agent.toml"),
                      str(bundle)]))
    assert result["arbiter"] == "arbiter" and result["valid"] is True
    assert result["protocol"] == "commerce.purchase"
    assert result["transaction"] == bought.order.hex()
    assert {(v["obligation"], v["met"]) for v in result["verdicts"]} == {
        (PAID, True), (DELIVERED, True), (RECEIPTED, True)}
    assert refused.exit_code == 1
    assert refused.stderr.startswith("semper: dispute.not_party: ")
    assert len(refused.stderr.splitlines()) == 1
    # the buyer's archive holds the case and the verdict, received from the arbiter
    async with shopper.session():
        records = await shopper.archive.records(result["case"])
    assert [(str(r.direction), r.peer) for r in records] == [("received", "arbiter")] * 2
    assert [Statement.from_bytes(r.statement).type for r in records] == [
        "dispute.case", "dispute.verdict"]


async def test_check_with_config_has_the_ca_agent_issue_a_fresh_crl(trade, tmp_path):
    """Without --crl the bundle's own CRL predates its statements; --config fetches one
    the CA agent issues after them (as ``semper archive check --config``), and says
    why it could not when the CA agent is down."""
    import trio
    from click.testing import CliRunner
    from market_helpers import running

    from semper.agents import Agent, AgentConfig
    from semper.agents.cli import cli

    bundle = tmp_path / "bundle.semper"
    bundle.write_bytes(trade.bundles["seller", "done"].to_bytes())
    args = ["dispute", "check", str(bundle), "--root", str(trade.folder / "ca" / "root.pem"),
            "--config", str(trade.folder / "seller" / "agent.toml"), "--json"]
    runner = CliRunner()
    down = runner.invoke(cli, args)
    assert down.exit_code == 1 and down.stderr.startswith("semper: archive.crl_too_old: ")
    assert "could not be fetched" in down.stderr or "CA agent" in down.stderr
    ca = Agent(AgentConfig.load(trade.folder / "ca" / "agent.toml"))
    with trio.fail_after(60):
        async with running(ca):
            done = await trio.to_thread.run_sync(runner.invoke, cli, args)
    assert done.exit_code == 0, done.stderr
    assert json.loads(done.stdout)["valid"] is True
