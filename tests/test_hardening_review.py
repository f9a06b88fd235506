"""Issue 7 review: faults found reviewing the hardening work, each as a test.

The fixture ``m`` (a running bank, seller and buyers) is the one of
test_hardening_payments.
"""

from __future__ import annotations

from pathlib import Path

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
