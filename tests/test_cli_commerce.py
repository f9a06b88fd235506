"""``semper catalogue``, ``buy``, ``refund``, ``wallet`` and ``bank mint|accounts`` end to
end: real processes over real loopback TLS 1.3, against a market's running ca, bank
and seller.

The contract tested here is used from outside the project, so it must hold exactly:

* ``catalogue --json``: a list of objects, each with ``sku`` and
  ``price: {currency, minor_units}``;
* ``buy --json``: an object with ``receipt`` and ``payment``; the same
  ``--idempotency-key`` again returns the same receipt and pays nothing more, and
  with another item is refused;
* ``wallet --json``: ``balances`` maps a currency code to integer minor units;
* every user error is one line ``semper: <code>: ...`` on stderr, a non-zero exit
  and no traceback, and changes no balance.

One market is shared by the whole module (each ``semper`` process costs about half a
second to start), so each test measures the balances it needs itself, reading the
bank's books directly (``bank_balances``) except where the wallet is what is tested.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from test_cli import (
    AgentProcess,
    Market,
    assert_one_line_failure,
    semper,
    start_agents,
)

from semper.agents.components import _bank, _ledger
from semper.agents.operator._market import DEMO_CATALOGUE
from semper.agents.runtime._storage import Database
from semper.services import Amount

PRICES = {item["sku"]: int(item["price"].split(":")[1]) for item in DEMO_CATALOGUE}
SETTLEMENTS = {"transfer": "payment.transfer_confirmation", "cheque": "payment.cheque_cleared"}
HEX64 = frozenset("0123456789abcdef")


@pytest.fixture(scope="module")
def market(tmp_path_factory: pytest.TempPathFactory) -> Market:
    market = Market(tmp_path_factory.mktemp("commerce") / "market", None)
    done = semper("market", "init", market.root, timeout=30)
    assert done.returncode == 0, done.stderr
    return market


@pytest.fixture(scope="module")
def agents(market: Market, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[dict[str, AgentProcess]]:
    """ca, bank and seller running for the whole module (the buyer acts through the
    commands only). A test that stops one puts a new one in this dict."""
    logs = tmp_path_factory.mktemp("logs")
    running = start_agents(market, ["ca"], logs)  # the others publish their cards to it
    running.update(start_agents(market, ["bank", "seller"], logs))
    try:
        yield running
    finally:
        for agent in running.values():
            agent.kill()
        for agent in running.values():
            assert "Traceback" not in agent.stderr(), agent.stderr()


def buyer(market: Market) -> Path:
    return market.config("buyer")


def buy(market: Market, sku: str, pay: str, *extra: str) -> Any:
    done = semper("buy", "--config", buyer(market), "--seller", "seller", "--item", sku,
                  "--pay", pay, *extra, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def wallet(market: Market, agent_id: str) -> dict[str, Any]:
    done = semper("wallet", "--config", market.config(agent_id), "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def with_bank_books(market: Market, fn: Callable[[Any], Any]) -> Any:
    """Run ``fn`` in one transaction on the running bank's own database (WAL), as
    ``semper bank mint`` does beside the bank agent."""
    database = Database.open_sync(market.root / "bank" / "data" / "agent.sqlite",
                                  _bank.MIGRATIONS)
    try:
        return database.transaction_sync(fn)
    finally:
        database.close()


def bank_balances(market: Market) -> dict[str, int]:
    """EUR balances of buyer and seller, read from the bank's books; checked to balance."""
    def read(c: Any) -> dict[str, int]:
        _ledger.check_books(c)
        return {holder: _ledger.balance(c, holder, "EUR").minor_units
                for holder in ("buyer", "seller")}
    return with_bank_books(market, read)  # type: ignore[no-any-return]


def assert_buy_failure(done: subprocess.CompletedProcess[str], code: str) -> str:
    """A failed `buy` without --idempotency-key says the key it made first (one line,
    before any network step, so the purchase can be resumed), then fails in one line."""
    first, _, rest = done.stderr.partition("\n")
    if first.startswith("idempotency key: buy-"):
        done = subprocess.CompletedProcess(done.args, done.returncode, done.stdout, rest)
    return assert_one_line_failure(done, code)


def fresh_key(name: str) -> str:
    return f"{name}-{time.monotonic_ns()}"


# -- catalogue ---------------------------------------------------------------------


def test_catalogue_json(market: Market, agents: dict[str, AgentProcess]) -> None:
    done = semper("catalogue", "--config", buyer(market), "--seller", "seller", "--json")
    assert done.returncode == 0, done.stderr
    offers = json.loads(done.stdout)
    assert isinstance(offers, list) and offers
    for offer in offers:
        assert isinstance(offer["sku"], str)
        price = offer["price"]
        assert set(price) == {"currency", "minor_units"}, price
        assert price["currency"] == "EUR" and type(price["minor_units"]) is int
    assert {o["sku"]: o["price"]["minor_units"] for o in offers} == PRICES


def test_catalogue_human(market: Market, agents: dict[str, AgentProcess]) -> None:
    done = semper("catalogue", "--config", buyer(market), "--seller", "seller")
    assert done.returncode == 0, done.stderr
    assert "catalogue of seller" in done.stdout
    for sku, text in (("guide-001", "EUR 12.50"), ("map-002", "EUR 4.80"),
                      ("song-003", "EUR 0.99")):
        assert sku in done.stdout and text in done.stdout


# -- buy ---------------------------------------------------------------------------


@pytest.mark.parametrize("pay", ["transfer", "cheque"])
def test_buy_json(pay: str, market: Market, agents: dict[str, AgentProcess]) -> None:
    before = bank_balances(market)
    key = fresh_key(f"json-{pay}")
    outcome = buy(market, "map-002", pay, "--idempotency-key", key)
    assert outcome["idempotency_key"] == key
    assert outcome["state"] == "done" and outcome["replayed"] is False
    assert outcome["goods_size"] > 0 and outcome["refunded"] is False
    price = {"currency": "EUR", "minor_units": PRICES["map-002"]}

    receipt, payment = outcome["receipt"], outcome["payment"]
    assert (receipt["sku"], receipt["seller"], receipt["buyer"]) == ("map-002", "seller", "buyer")
    assert receipt["amount"] == price
    assert receipt["payment_type"] == SETTLEMENTS[pay]
    assert receipt["payment"] == payment["settlement_digest"]
    for digest in ("order", "payment", "content_digest", "digest"):
        assert len(receipt[digest]) == 64 and set(receipt[digest]) <= HEX64, digest
    assert type(receipt["issued_at"]) is int

    assert payment == {"module": pay, "payer": "buyer", "payee": "seller", "amount": price,
                       "bank": "bank", "settlement": SETTLEMENTS[pay],
                       "settlement_digest": payment["settlement_digest"]}
    assert bank_balances(market) == {"buyer": before["buyer"] - price["minor_units"],
                                     "seller": before["seller"] + price["minor_units"]}


def test_buy_human_shows_steps_and_receipt(market: Market,
                                           agents: dict[str, AgentProcess]) -> None:
    done = semper("buy", "--config", buyer(market), "--seller", "seller", "--item",
                  "song-003", "--pay", "cheque")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    for step in ("signing the order for song-003", "sent to seller",
                 "paying EUR 0.99 by cheque through bank", "fetching goods and receipt"):
        assert step in out, out
    assert "receipt" in out and "done" in out and "EUR 0.99" in out
    assert "cheque through bank (payment.cheque_cleared)" in out


def test_same_key_returns_the_first_outcome_and_pays_nothing_more(
        market: Market, agents: dict[str, AgentProcess]) -> None:
    key = fresh_key("again")
    first = buy(market, "guide-001", "cheque", "--idempotency-key", key)
    balances = wallet(market, "buyer")["balances"]
    books = bank_balances(market)

    again = buy(market, "guide-001", "cheque", "--idempotency-key", key)
    assert again["replayed"] is True
    assert again["receipt"] == first["receipt"] and again["payment"] == first["payment"]
    assert wallet(market, "buyer")["balances"] == balances
    assert bank_balances(market) == books  # the seller's too

    # ...and the same key for another item is refused, in one line, paying nothing.
    done = semper("buy", "--config", buyer(market), "--seller", "seller", "--item", "map-002",
                  "--pay", "cheque", "--idempotency-key", key, "--json")
    line = assert_one_line_failure(done, "payment.idempotency_conflict")
    assert key in line
    assert bank_balances(market) == books


# -- refund ------------------------------------------------------------------------


def test_refund_returns_the_money_once(market: Market, agents: dict[str, AgentProcess]
                                      ) -> None:
    key = fresh_key("refund")
    buy(market, "guide-001", "transfer", "--idempotency-key", key)
    paid = bank_balances(market)
    for attempt in range(2):
        done = semper("refund", "--config", buyer(market), "--idempotency-key", key, "--json")
        assert done.returncode == 0, done.stderr
        outcome = json.loads(done.stdout)
        assert outcome["state"] == "refunded" and outcome["refunded"] is True
        assert outcome["replayed"] is (attempt == 1)
        assert bank_balances(market) == {"buyer": paid["buyer"] + PRICES["guide-001"],
                                         "seller": paid["seller"] - PRICES["guide-001"]}
    done = semper("refund", "--config", buyer(market), "--idempotency-key", "never-used")
    assert_one_line_failure(done, "commerce.unknown_offer")
    done = semper("refund", "--config", market.config("seller"), "--idempotency-key", key)
    assert_one_line_failure(done, "agent.bad_config")


# -- wallet ------------------------------------------------------------------------


@pytest.mark.parametrize("agent_id", ["buyer", "seller"])
def test_wallet_json(agent_id: str, market: Market, agents: dict[str, AgentProcess]) -> None:
    key = fresh_key("wallet")
    if agent_id == "buyer":
        buy(market, "song-003", "transfer", "--idempotency-key", key)
    shown = wallet(market, agent_id)
    assert shown["agent"] == agent_id and shown["bank"] == "bank"
    balances = shown["balances"]
    assert set(balances) == {"EUR"} and type(balances["EUR"]) is int
    assert balances["EUR"] == bank_balances(market)[agent_id]
    for entry in shown["recent"]:
        assert set(entry["amount"]) == {"currency", "minor_units"}
    if agent_id == "buyer":  # the latest purchase first
        assert shown["purchases"][0] == {
            "key": key, "seller": "seller", "sku": "song-003", "module": "transfer",
            "state": "done", "amount": {"currency": "EUR", "minor_units": PRICES["song-003"]}}
        assert shown["recent"][0]["kind"] == "transfer"
        assert shown["recent"][0]["amount"]["minor_units"] == -PRICES["song-003"]
    else:
        assert shown["purchases"] == []


# -- user errors -------------------------------------------------------------------


@pytest.mark.parametrize("case, code", [
    ("unknown_item", "commerce.unknown_offer"),
    ("unknown_seller", "directory.unknown_agent"),
    ("missing_config", "agent.bad_config"),
    ("not_a_buyer", "agent.bad_config"),  # a seller's database keeps no purchases
])
def test_buy_user_errors_are_one_line(case: str, code: str, market: Market, tmp_path: Path,
                                      agents: dict[str, AgentProcess]) -> None:
    before = bank_balances(market)
    config, seller, item = buyer(market), "seller", "guide-001"
    if case == "unknown_item":
        item = "no-such-item"
    elif case == "unknown_seller":
        seller = "nobody"
    elif case == "missing_config":
        config = tmp_path / "absent.toml"
    else:
        config = market.config("seller")
    done = semper("buy", "--config", config, "--seller", seller, "--item", item,
                  "--pay", "transfer")
    line = assert_buy_failure(done, code)
    assert {"unknown_item": item, "unknown_seller": seller, "missing_config": str(config),
            "not_a_buyer": "config of a seller"}[case] in line
    assert bank_balances(market) == before


def test_buy_from_a_seller_that_is_not_running(market: Market, tmp_path: Path,
                                               agents: dict[str, AgentProcess]) -> None:
    assert agents["seller"].stop() == (0, ""), agents["seller"].stderr()
    try:
        before = bank_balances(market)
        done = semper("buy", "--config", buyer(market), "--seller", "seller", "--item",
                      "guide-001", "--pay", "transfer", "--json")
        line = assert_buy_failure(done, "transport.connect_failed")
        assert "seller" in line
        assert bank_balances(market) == before
    finally:
        agents["seller"] = start_agents(market, ["seller"], tmp_path)["seller"]


@pytest.mark.parametrize("pay", ["transfer", "cheque"])
def test_insufficient_funds(pay: str, market: Market, agents: dict[str, AgentProcess]
                            ) -> None:
    """The buyer is left with EUR 1.00 by a transfer the test records in the bank's
    books; a EUR 12.50 purchase is refused and moves nothing; the money goes back."""
    def drain(c: Any) -> int:
        left = _ledger.balance(c, "buyer", "EUR").minor_units - 100
        _ledger.move(c, "buyer", "seller", Amount("EUR", left), kind="transfer",
                     time_ms=time.time_ns() // 1_000_000, memo="test: drain the buyer")
        return left

    drained = with_bank_books(market, drain)
    try:
        before = bank_balances(market)
        assert before["buyer"] == 100
        done = semper("buy", "--config", buyer(market), "--seller", "seller", "--item",
                      "guide-001", "--pay", pay, "--json")
        assert_buy_failure(done, "payment.insufficient_funds")
        assert bank_balances(market) == before
    finally:
        with_bank_books(market, lambda c: _ledger.move(
            c, "seller", "buyer", Amount("EUR", drained), kind="transfer",
            time_ms=time.time_ns() // 1_000_000, memo="test: give it back"))


# -- the bank's operator -----------------------------------------------------------


def test_bank_mint_and_accounts(market: Market, agents: dict[str, AgentProcess]) -> None:
    bank = market.config("bank")
    done = semper("bank", "accounts", "--config", bank, "--json")
    assert done.returncode == 0, done.stderr
    books = json.loads(done.stdout)
    assert books["balanced"] is True
    accounts = {(a["holder"], a["currency"]): a["minor_units"] for a in books["accounts"]}
    assert set(accounts) == {("buyer", "EUR"), ("seller", "EUR")}
    assert sum(accounts.values()) == books["minted"]["EUR"]

    done = semper("bank", "mint", "--config", bank, "buyer", "EUR:250")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("minted EUR 2.50 to buyer (journal entry ")

    done = semper("bank", "accounts", "--config", bank, "--json")
    assert done.returncode == 0, done.stderr
    after = json.loads(done.stdout)
    assert after["balanced"] is True
    assert after["minted"]["EUR"] == books["minted"]["EUR"] + 250
    now = {(a["holder"], a["currency"]): a["minor_units"] for a in after["accounts"]}
    assert now == {**accounts, ("buyer", "EUR"): accounts[("buyer", "EUR")] + 250}

    done = semper("bank", "accounts", "--config", bank)
    assert done.returncode == 0, done.stderr
    assert "the books balance" in done.stdout


@pytest.mark.parametrize("command", [["accounts", "--json"], ["mint", "buyer", "EUR:100"]])
def test_bank_commands_refuse_a_non_bank_config(
        command: list[str], market: Market, agents: dict[str, AgentProcess]) -> None:
    before = bank_balances(market)
    done = semper("bank", command[0], "--config", buyer(market), *command[1:])
    line = assert_one_line_failure(done, "agent.bad_config")
    assert "not of a bank" in line
    assert bank_balances(market) == before
