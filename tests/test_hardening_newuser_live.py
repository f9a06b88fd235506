"""What a new user ran into (issue 7), against running agents: real ``semper``
processes over real loopback TLS 1.3.

One market for the module, its ca, bank and seller running (the buyer acts through
the commands). A test that stops an agent starts a new one in the dict before it
returns; every wait is bounded.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner
from test_cli import (
    AgentProcess,
    Market,
    _env,
    assert_one_line_failure,
    semper,
    semper_argv,
    start_agents,
)
from test_cli_commerce import agents
from test_custom_role import site

from semper.agents.cli import cli
from semper.agents.components._catalogue import load_catalogue
from semper.agents.operator._market import DEMO_CATALOGUE
from semper.agents.runtime._config import AgentConfig

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "custom_role"
GOODS = {item["sku"]: item["goods"] for item in DEMO_CATALOGUE}
__all__ = ["agents", "site"]  # fixtures shared with test_cli_commerce, test_custom_role

KEY_LINE = re.compile(r"idempotency key: (buy-[0-9a-f]{24})\Z")


@pytest.fixture(scope="module")
def market(tmp_path_factory: pytest.TempPathFactory) -> Market:
    market = Market(tmp_path_factory.mktemp("newuser") / "market", None)
    done = semper("market", "init", market.root, timeout=30)
    assert done.returncode == 0, done.stderr
    return market


def buyer(market: Market) -> Path:
    return market.config("buyer")


def failure_after_key(done: subprocess.CompletedProcess[str], code: str) -> str:
    """A `buy` that made its own key: the key line, then the one-line failure."""
    first, _, rest = done.stderr.partition("\n")
    match = KEY_LINE.match(first)
    assert match, done.stderr
    assert_one_line_failure(subprocess.CompletedProcess(done.args, done.returncode,
                                                        done.stdout, rest), code)
    return match.group(1)


# -- buy prints its key; wallet and goods without the bank ---------------------------


def test_a_failed_buy_prints_the_key_it_made_and_resumes_with_it(
        market: Market, agents: dict[str, AgentProcess], tmp_path: Path) -> None:
    """The instance: `buy` without --idempotency-key failed halfway (the bank down)
    and did not say the key it made, so the purchase could not be resumed. With the
    bank down `wallet` failed entirely, though the purchases are local."""
    assert agents["bank"].stop() == (0, ""), agents["bank"].stderr()
    try:
        done = semper("buy", "--config", buyer(market), "--seller", "seller", "--item",
                      "map-002", "--pay", "transfer", "--json")
        key = failure_after_key(done, "transport.connect_failed")

        # wallet: the local purchases, and why the balance is missing (exit 0)
        shown = semper("wallet", "--config", buyer(market), "--json")
        assert shown.returncode == 0, shown.stderr
        wallet = json.loads(shown.stdout)
        assert wallet["balances"] is None and wallet["recent"] is None
        assert wallet["balance_unavailable"]["code"] == "transport.connect_failed"
        assert key in [p["key"] for p in wallet["purchases"]]
        human = semper("wallet", "--config", buyer(market))
        assert human.returncode == 0 and "balance unavailable" in human.stdout
        assert key in human.stdout

        # goods of the unfinished purchase: none yet, one line
        assert_one_line_failure(semper("goods", "--config", buyer(market), key, "-o",
                                       tmp_path / "early"), "agent.no_goods")
    finally:
        agents["bank"] = start_agents(market, ["bank"], tmp_path)["bank"]
    resumed = semper("buy", "--config", buyer(market), "--seller", "seller", "--item",
                     "map-002", "--pay", "transfer", "--idempotency-key", key, "--json")
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stderr == ""  # a key given is not printed again
    outcome = json.loads(resumed.stdout)
    assert (outcome["idempotency_key"], outcome["state"]) == (key, "done")
    wallet = json.loads(semper("wallet", "--config", buyer(market), "--json").stdout)
    assert wallet["balance_unavailable"] is None and wallet["balances"]["EUR"] > 0


def test_the_key_line_comes_before_any_network_step(market: Market,
                                                    agents: dict[str, AgentProcess]) -> None:
    """The other member: a refusal at the first step (the catalogue) still says the
    key; a failure before any step (a config that keeps no purchases) has none to say."""
    done = semper("buy", "--config", buyer(market), "--seller", "seller", "--item", "nope",
                  "--pay", "cheque")
    failure_after_key(done, "commerce.unknown_offer")
    done = semper("buy", "--config", market.config("seller"), "--seller", "seller", "--item",
                  "nope", "--pay", "cheque")
    assert_one_line_failure(done, "agent.bad_config")


def test_buy_output_and_goods_write_what_was_bought(market: Market,
                                                    agents: dict[str, AgentProcess],
                                                    tmp_path: Path) -> None:
    out = tmp_path / "guide.txt"
    done = semper("buy", "--config", buyer(market), "--seller", "seller", "--item",
                  "guide-001", "--pay", "cheque", "--idempotency-key", "nu-guide", "-o", out)
    assert done.returncode == 0, done.stderr
    assert out.read_bytes() == GOODS["guide-001"]
    assert f"goods written to {out}" in done.stdout
    again = tmp_path / "again.txt"
    done = semper("goods", "--config", buyer(market), "nu-guide", "-o", again)
    assert done.returncode == 0, done.stderr
    assert again.read_bytes() == GOODS["guide-001"]
    # A replay with --output writes them too; a folder that is not there is refused
    # before anything is paid.
    done = semper("buy", "--config", buyer(market), "--seller", "seller", "--item",
                  "guide-001", "--pay", "cheque", "--idempotency-key", "nu-guide", "--json",
                  "-o", tmp_path / "replay.txt")
    assert done.returncode == 0 and json.loads(done.stdout)["replayed"] is True
    assert (tmp_path / "replay.txt").read_bytes() == GOODS["guide-001"]
    done = semper("buy", "--config", buyer(market), "--seller", "seller", "--item",
                  "song-003", "--pay", "cheque", "--idempotency-key", "nu-song", "-o",
                  tmp_path / "missing" / "song.txt")
    assert_one_line_failure(done, "agent.cannot_write")
    assert_one_line_failure(semper("goods", "--config", buyer(market), "nu-song", "-o",
                                   tmp_path / "x"), "agent.unknown_purchase")


# -- -v and -vv ------------------------------------------------------------------------


def test_verbose_logs_the_steps(market: Market, agents: dict[str, AgentProcess]) -> None:
    """The instance: `-v` and `-vv` printed nothing."""
    quiet = semper("wallet", "--config", buyer(market), "--json")
    assert quiet.returncode == 0 and quiet.stderr == ""
    loud = semper("-v", "wallet", "--config", buyer(market), "--json")
    assert loud.returncode == 0, loud.stderr
    json.loads(loud.stdout)  # stdout stays machine-readable
    assert re.search(r"semper\.agent DEBUG connecting to bank at 127\.0\.0\.1:\d+", loud.stderr)
    assert "channel to bank open: hello says role bank" in loud.stderr
    assert "request bank.account to bank: ok" in loud.stderr
    ping = semper("-v", "ping", "--config", buyer(market), "seller", "--json")
    assert ping.returncode == 0, ping.stderr
    assert "connecting to seller" in ping.stderr and "sys.ping" in ping.stderr
    louder = semper("-vv", "ping", "--config", buyer(market), "seller", "--json")
    assert louder.returncode == 0, louder.stderr
    assert "connecting to seller" in louder.stderr


# -- agent run on an address in use -----------------------------------------------------


def test_a_second_agent_on_a_busy_port_names_the_code_and_address(
        market: Market, agents: dict[str, AgentProcess]) -> None:
    """The instance: `semper: Address already in use`."""
    done = semper("agent", "run", market.config("seller"))
    line = assert_one_line_failure(done, "agent.address_in_use")
    assert market.listen("seller") in line


def test_the_cas_enrollment_address_in_use_is_named_too(
        market: Market, agents: dict[str, AgentProcess], tmp_path: Path) -> None:
    """Other members: the CA agent's second listener ([ca] enroll_listen), and an
    address that is not this machine's (agent.cannot_listen)."""
    copy = Path(shutil.copytree(market.root / "ca", tmp_path / "ca"))
    from semper.agents.operator._market import free_ports

    [port] = free_ports(1)  # below the ephemeral range: nobody takes it meanwhile
    config = copy / "agent.toml"
    text = re.sub(r'(?m)^listen = ".*"$', f'listen = "127.0.0.1:{port}"', config.read_text())
    config.write_text(text)
    enroll = tomllib.loads(text)["ca"]["enroll_listen"]
    line = assert_one_line_failure(semper("agent", "run", config), "agent.address_in_use")
    assert enroll in line and "enroll_listen" in line

    notary = market.config("notary")
    original = notary.read_text()
    try:
        notary.write_text(re.sub(r'(?m)^listen = ".*"$', 'listen = "192.0.2.1:4000"',
                                 original))
        line = assert_one_line_failure(semper("agent", "run", notary), "agent.cannot_listen")
        assert "192.0.2.1:4000" in line
    finally:
        notary.write_text(original)


# -- a role of one's own: ca issue, agent run, semper call --------------------------------


def test_a_custom_role_tried_from_the_shell(market: Market, agents: dict[str, AgentProcess],
                                            site: Path, tmp_path: Path) -> None:
    """The instance: a role written by a user could not be tried without a running CA
    and enrollment. `ca issue` makes its folder offline; `semper call` sends one
    request (JSON in, JSON out, bytes as {"$hex": ...})."""
    env = {**_env(), "PYTHONPATH": os.pathsep.join(
        [str(site), *filter(None, [os.environ.get("PYTHONPATH")])])}

    def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(semper_argv(*args), capture_output=True, text=True, timeout=30,
                              env=env, stdin=subprocess.DEVNULL, check=False)

    done = run("ca", "issue", market.root, "aud-1", "--role", "auditor", "--level",
               "verified-contact")
    assert done.returncode == 0, done.stderr
    process = subprocess.Popen(semper_argv("agent", "run", market.config("aud-1")),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                               stdin=subprocess.DEVNULL)
    auditor = AgentProcess("aud-1", process, tmp_path / "aud.stderr")
    try:
        assert auditor.read_line().startswith("ready aud-1 ")
        done = run("call", "--config", market.config("seller"), "aud-1", "audit.report",
                   '{"subject": "stock", "body": {"$hex": "3432"}}')
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout) == {"number": 1, "filed_by": "seller"}
        done = run("call", "--config", buyer(market), "aud-1", "audit.summary")
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout) == {"seller": 1}
        # A refusal of the op is the usual one line with its code.
        done = run("call", "--config", buyer(market), "aud-1", "audit.report",
                   '{"subject": "x"}')
        assert_one_line_failure(done, "audit.not_allowed")
        # bytes come back as {"$hex": ...}
        done = run("call", "--config", buyer(market), "seller", "sys.ping",
                   '{"$hex": "00ff"}')
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["echo"] == {"$hex": "00ff"}
    finally:
        auditor.kill()
    # Bodies outside the wire's value model are usage errors, never internal ones.
    # Refused before any channel opens (in this process: no agent needed).
    for peer, operation, body in [("seller", "sys.ping", bad) for bad in (
            "1.5", "{not json", '{"$hex": "zz"}', str(2**64), "[" * 40 + "]" * 40)] + [
            ("BAD PEER", "sys.ping", "{}"), ("seller", "Sys.Ping", "{}"),
            ("seller", "ping", "{}")]:
        result = CliRunner().invoke(cli, ["call", "--config", str(buyer(market)), peer,
                                          operation, body], prog_name="semper")
        assert result.exit_code == 2, result.output
        assert len(result.stderr.splitlines()) == 1 and "Traceback" not in result.stderr
    done = run("call", "--config", buyer(market), "seller", "nosuch.op")
    assert_one_line_failure(done, "protocol.unknown_service")


# -- an enrolled seller's stub -------------------------------------------------------------


def test_an_enrolled_seller_gets_a_catalogue_and_payment_stub(
        market: Market, agents: dict[str, AgentProcess], tmp_path: Path) -> None:
    """The instance: an agent enrolled as a seller had no catalogue and no bank
    account, and nothing said how to get them."""
    invited = semper("ca", "invite", market.root, "shop-1", "--role", "seller", "--level",
                     "verified-contact")
    assert invited.returncode == 0, invited.stderr
    token = invited.stdout.splitlines()[-1]
    folder = tmp_path / "shop"
    done = semper("agent", "enroll", "--token", token, "--data-dir", folder)
    assert done.returncode == 0, done.stderr
    assert f"edit {folder / 'catalogue.toml'}" in done.stdout
    assert "semper bank open" in done.stdout
    config = AgentConfig.load(folder / "agent.toml")
    assert config.catalogue == folder / "catalogue.toml"
    assert load_catalogue(config.catalogue) == []
    text = (folder / "agent.toml").read_text()
    assert '\n[payment]\n# bank = "bank"' in text
    # The bank's operator opens the account (once is enough; again changes nothing).
    for _ in range(2):
        done = semper("bank", "open", "--config", market.config("bank"), "shop-1", "EUR")
        assert done.returncode == 0, done.stderr
        assert "shop-1 has a EUR account" in done.stdout
    accounts = json.loads(semper("bank", "accounts", "--config", market.config("bank"),
                                 "--json").stdout)["accounts"]
    assert {"holder": "shop-1", "currency": "EUR", "minor_units": 0} in accounts
    # A buyer's folder gets the [payment] stub and no catalogue.
    invited = semper("ca", "invite", market.root, "cust-1", "--role", "buyer", "--level",
                     "self-asserted")
    done = semper("agent", "enroll", "--token", invited.stdout.splitlines()[-1],
                  "--data-dir", tmp_path / "cust")
    assert done.returncode == 0, done.stderr
    assert AgentConfig.load(tmp_path / "cust" / "agent.toml").catalogue is None
    assert "# bank = " in (tmp_path / "cust" / "agent.toml").read_text()


# -- which bank to pay through, on the wire ------------------------------------------------


def test_the_seller_names_its_bank_and_a_buyer_of_another_bank_stops_first(
        market: Market, agents: dict[str, AgentProcess]) -> None:
    """Which bank to pay through could not be learned on the wire: the seller's
    payment.capabilities answer now names it, and a buyer whose bank is another
    refuses before anything is signed or paid (payment.wrong_bank)."""
    done = semper("call", "--config", buyer(market), "seller", "payment.capabilities")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["bank"] == "bank"

    other = Path(shutil.copytree(market.root / "buyer", market.root / "buyer-elsewhere"))
    config = other / "agent.toml"
    config.write_text(re.sub(r'(?m)^bank = "bank"$', 'bank = "bank-2"', config.read_text()))
    assert AgentConfig.load(config).payment.bank == "bank-2"
    before = json.loads(semper("bank", "accounts", "--config", market.config("bank"),
                               "--json").stdout)["accounts"]
    done = semper("buy", "--config", config, "--seller", "seller", "--item", "song-003",
                  "--pay", "transfer", "--idempotency-key", "elsewhere-1", "--json")
    line = assert_one_line_failure(done, "payment.wrong_bank")
    assert "bank-2" in line
    after = json.loads(semper("bank", "accounts", "--config", market.config("bank"),
                              "--json").stdout)["accounts"]
    assert after == before
