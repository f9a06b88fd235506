"""``semper market policy`` and ``semper buy`` with and without ``--pay`` under a market
policy (issue 11 item 3, protocol.md 8.9): real processes over loopback TLS; the
buyer is a command, which takes the policy from the CA agent with the CRL before its
first dial."""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterator

import pytest
from cli_helpers import refused as refused_in_process
from cli_helpers import semper as in_process
from test_cli import AgentProcess, Market, assert_one_line_failure, semper, start_agents

from semper.agents.operator._market import init_market
from semper.agents.runtime._config import AgentConfig


@pytest.fixture(scope="module")
def market(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Market]:
    market = Market(tmp_path_factory.mktemp("policy-cli") / "market", None)
    init_market(market.root)
    # The buyer prefers transfer, then cheque (whatever else is installed).
    path = market.config("buyer")
    config = AgentConfig.load(path)
    config = dataclasses.replace(config, payment=dataclasses.replace(
        config.payment, modules=("transfer", "cheque")))
    path.write_text(config.to_toml(base=path.parent))
    yield market


@pytest.fixture(scope="module")
def agents(market: Market, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[dict[str, AgentProcess]]:
    logs = tmp_path_factory.mktemp("logs")
    running = start_agents(market, ["ca"], logs)
    running.update(start_agents(market, ["bank", "seller"], logs))
    try:
        yield running
    finally:
        for agent in running.values():
            agent.kill()
        for agent in running.values():
            assert "Traceback" not in agent.stderr(), agent.stderr()


def buy(market: Market, sku: str, *extra: str) -> object:
    return semper("buy", "--config", market.config("buyer"), "--seller", "seller", "--item",
                  sku, "--idempotency-key", f"k-{sku}", *extra)


def test_a_forbidden_instrument_is_refused_and_another_chosen(
        market: Market, agents: dict[str, AgentProcess]) -> None:
    # The operator's commands need no network: in this process.
    status, out, _ = in_process("market", "policy", market.root)
    assert (status, out) == (0, "market policy 1: allowed any; forbidden none; required none\n")
    status, out, err = in_process("market", "policy", market.root, "--set", "--forbid",
                                  "transfer")
    assert status == 0, err
    assert out.startswith("market policy 2: allowed any; forbidden transfer;")
    refused = buy(market, "guide-001", "--pay", "transfer")
    line = assert_one_line_failure(refused, "payment.forbidden_instrument")
    assert "transfer is forbidden by the market (market policy 2)" in line
    # Without --pay: cheque, and the output says why; --json keeps receipt and payment.
    chosen = buy(market, "guide-001", "--json")
    assert chosen.returncode == 0, chosen.stderr
    outcome = json.loads(chosen.stdout)
    assert outcome["payment"]["module"] == "cheque" and outcome["receipt"] is not None
    assert outcome["instrument"] == {
        "module": "cheque",
        "why": "cheque: the seller accepts it for EUR 12.50; transfer is forbidden by the market"}
    table = buy(market, "map-002")
    assert table.returncode == 0, table.stderr
    text = re.sub(r"[\s│|]+", " ", table.stdout)
    assert "cheque: the seller accepts it for EUR 4.80; transfer is forbidden by the market" \
        in text
    refused_in_process(in_process("market", "policy", market.root, "--set", "--forbid",
                                  "cheque", "--require", "cheque"), "payment.bad_market_policy")
