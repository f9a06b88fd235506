"""``semper purse list --config X.toml [--json]`` (issue 10 item 5): the buyer's chains
from its own records, as ``{"chain", "seller", "reserved", "spent", "redeemed",
"state"}`` with amounts ``{currency, minor_units}``, or a table; another role's
config is refused with one line."""

from __future__ import annotations

import json
from pathlib import Path

import trio
from cli_helpers import market, prebuilt, refused, semper  # noqa: F401  (fixtures)
from market_helpers import DEADLINE, config_of, running

from semper.agents import Agent
from semper.agents.components._purse import Purse, redeem
from semper.services import Amount


async def in_thread(*args: str | Path) -> tuple[int, str, str]:
    """``semper`` from an async test: the command runs a trio loop of its own."""
    return await trio.to_thread.run_sync(lambda: semper(*args))


def test_an_empty_purse_lists_nothing(market: Path) -> None:  # noqa: F811
    status, out, err = semper("purse", "list", "--config", market / "buyer" / "agent.toml",
                              "--json")
    assert (status, json.loads(out), err) == (0, [], "")


async def test_the_list_shows_reserved_spent_redeemed_and_state(market: Path) -> None:  # noqa: F811
    bank = Agent(config_of(market, "bank"))
    buyer = Agent(config_of(market, "buyer"))
    seller = Agent(config_of(market, "seller"))
    with trio.fail_after(DEADLINE):
        async with running(bank), running(buyer), running(seller):
            purse = buyer.component(Purse)
            commitment, reservation = await purse.open_chain(
                "seller", 8, Amount("EUR", 30), None, "first")
            paywords = [await purse.pay(commitment.body["chain"], i) for i in range(3)]
            await redeem(seller.context, commitment, reservation, paywords[-1], 3)
            other, _ = await purse.open_chain("seller", 2, Amount("EUR", 5), None, "second")
            await purse.pay(other.body["chain"], 0)
            # The purse learns the redemption from the bank as it lists (a thread: the
            # command runs its own trio loop).
            asked = await in_thread("purse", "list", "--config",
                                    market / "buyer" / "agent.toml", "--json")
    status, out, err = await in_thread("purse", "list", "--config",
                                       market / "buyer" / "agent.toml", "--json")
    assert (status, err, out) == (0, "", asked[1])  # the bank stopped: the records stand
    assert (await in_thread("purse", "list", "--config", market / "buyer" / "agent.toml",
                            "--json", "--offline"))[1] == out

    def eur(units: int) -> dict[str, object]:
        return {"currency": "EUR", "minor_units": units}

    assert sorted(json.loads(out), key=lambda c: c["reserved"]["minor_units"]) == [
        {"chain": other.body["chain"].hex(), "seller": "seller", "reserved": eur(10),
         "spent": eur(5), "redeemed": eur(0), "state": "reserved"},
        {"chain": commitment.body["chain"].hex(), "seller": "seller", "reserved": eur(240),
         "spent": eur(90), "redeemed": eur(90), "state": "redeemed"}]
    status, out, err = await in_thread("purse", "list", "--config",
                                       market / "buyer" / "agent.toml", "--offline")
    assert status == 0 and err == ""
    assert commitment.body["chain"].hex()[:16] in out and "EUR 2.40" in out
    assert "redeemed" in out and "reserved" in out
    # The bank's books still balance to the minted total, the live reservation (the
    # second chain's 10) in the bank's own account.
    status, out, err = await in_thread("bank", "accounts", "--config",
                                       market / "bank" / "agent.toml", "--json")
    assert status == 0, err
    books = json.loads(out)
    assert books["balanced"] is True
    held = {a["holder"]: a["minor_units"] for a in books["accounts"] if a["currency"] == "EUR"}
    assert held["@purse-reserved"] == 10
    assert sum(held.values()) == books["minted"]["EUR"]


def test_another_roles_config_is_refused_in_one_line(market: Path) -> None:  # noqa: F811
    refused(semper("purse", "list", "--config", market / "bank" / "agent.toml"),
            "agent.bad_config")
    refused(semper("purse", "list", "--config", market / "nobody.toml"), "agent.bad_config")
