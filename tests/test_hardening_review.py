"""Issue 7 review: faults found reviewing the hardening work, each as a test.

The fixture ``m`` (a running bank, seller and buyers) is the one of
test_hardening_payments.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import trio
from click.testing import CliRunner
from test_commerce_wire import Market
from test_hardening_payments import m, money_reaching_the_seller_is_used_or_returned

from semper.agents.cli import cli

__all__ = ["m"]


async def test_the_transfer_that_settled_a_sale_is_not_given_back(m: Market) -> None:
    """The transfer that paid an order, handed over again under another module name,
    is refused as paid already, and NOT refunded: the sale it settled stays paid, so
    giving it back would hand the buyer its goods for nothing."""
    order = await m.place(await m.offer(), key="paid-once")
    proof = await m["buyer"].request("bank", "bank", "transfer", m.transfer_order(
        "buyer", "seller", 1250, key="paid-once-t", reference=order.digest))
    paid = await m["buyer"].request("seller", "payment", "accept", {
        "module": "transfer", "reference": order.digest, "proof": proof})
    assert paid["module"] == "transfer"
    before = await m.balances()
    for module in ("cheque", "no-such-module"):
        refusal = await m.refused("buyer", "seller", "payment", "accept", {
            "module": module, "reference": order.digest, "proof": proof})
        assert refusal.code == "commerce.already_paid"
        assert "returned" not in refusal.detail
        assert await m.balances() == before
    returns = await m["seller"].database.read(lambda c: c.execute(
        "SELECT count(*) FROM commerce_returns").fetchone()[0])
    assert returns == 0
    await money_reaching_the_seller_is_used_or_returned(m)


def test_call_with_json_nested_past_the_parser_is_a_usage_error(tmp_path: Path) -> None:
    """``semper call`` refused a body nested past 32 levels only once parsed: JSON
    nested a few thousand deep failed inside json.loads (RecursionError), an
    internal.error. Now a usage error, before any config is read."""
    body = "[" * 5000 + "]" * 5000
    result = CliRunner().invoke(cli, ["call", "--config", str(tmp_path / "absent.toml"),
                                      "seller", "sys.ping", body], prog_name="semper")
    assert result.exit_code == 2, result.stderr
    assert result.stderr.startswith("semper: cli.usage: ") and result.stderr.count("\n") == 1
    assert "nested too deeply" in result.stderr


async def test_a_failed_pass_of_the_sellers_return_retries_does_not_stop_the_agent(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The seller's background retry of returns ran in the agent's own nursery: one
    pass that raised (the database busy, say) ended the whole agent. Now it is
    logged and the next pass runs; the agent keeps serving."""
    from market_helpers import DEADLINE, config_of, make_market, running

    from semper.agents import Agent
    from semper.agents.roles import seller as seller_module

    folder = make_market(tmp_path / "m")
    calls = 0
    second = trio.Event()

    async def flaky(self: object) -> int:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise sqlite3.OperationalError("database is locked")
        second.set()
        return 0

    monkeypatch.setattr(seller_module, "RETURN_RETRY_S", 0)
    monkeypatch.setattr(seller_module.Sales, "retry_returns", flaky)
    with trio.fail_after(DEADLINE):
        async with running(Agent(config_of(folder, "seller"))):
            await second.wait()
            async with Agent(config_of(folder, "buyer")).session() as buyer:
                pong = await buyer.request("seller", "sys", "ping", b"alive")
    assert pong["echo"] == b"alive" and calls >= 2


async def test_a_refund_asked_in_time_is_honoured_when_retried_after_the_window(
        m: Market, monkeypatch: pytest.MonkeyPatch) -> None:
    """The refund window is judged when the refund was asked (the seller's first refund
    order), not at each retry. Else: the bank applies a refund asked on the window's
    last day, the seller fails before recording it, and the buyer's retry a day later
    is refused (commerce.refund_not_allowed) with the money back at the buyer but the
    sale still paid, its goods fetchable, and no refund in the seller's records."""
    from test_commerce_wire import GUIDE

    from semper.agents.components._purchase import Shopper
    from semper.agents.roles import seller as seller_module
    from semper.transport import RemoteError

    shopper = Shopper(m["buyer"])
    bought = await shopper.buy("seller", GUIDE, "transfer", "late-refund")
    paid_balance = (await m.balances())["buyer"]
    original = seller_module.refund_payment

    async def applied_then_lost(*args: object, **kwargs: object) -> object:
        await original(*args, **kwargs)  # the bank applies it...
        raise RuntimeError("the seller stops before recording the refund")

    monkeypatch.setattr(seller_module, "refund_payment", applied_then_lost)
    with pytest.raises(RemoteError):
        await shopper.refund("late-refund")
    assert (await m.balances())["buyer"] == paid_balance + 1250  # money is back
    monkeypatch.setattr(seller_module, "refund_payment", original)
    sales = m["seller"].component(seller_module.Sales)
    later = sales._ms() + 15 * 86_400_000  # GUIDE grants 14 days
    monkeypatch.setattr(sales, "_ms", lambda: later)  # the sale's time, not the PKI's
    outcome = await shopper.refund("late-refund")  # the retry, a day after the window
    assert outcome.state == "refunded" and outcome.order == bought.order
    assert (await m.balances())["buyer"] == paid_balance + 1250  # refunded once
    fetched = await m.refused("buyer", "seller", "commerce", "fetch",
                              {"order": bought.order})
    assert fetched.code == "commerce.refunded"
