"""Issue 7, kind 7: the market keeps working past 30 days, and across clock skew.

A CRL is good for 30 days. The CA agent re-issues it well before that (at start when
it is stale, and on a timer), ``semper ca crl DIR`` re-issues it offline, an agent
whose CRL is stale starts, fetches a fresh one from its CA agent and refuses peers
until it has one. Every date the CA signs (a CRL's thisUpdate, a certificate's
notBefore) is backdated by the allowed clock skew, so a machine whose clock is a
little behind the CA's still completes TLS handshakes (OpenSSL allows no skew).

Real loopback TLS, real SQLite, real clock (OpenSSL reads the system clock): the
market is issued with a CA clock in the past or the future instead.
"""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import trio
from market_helpers import DEADLINE, config_of, running, wait_until

from semper.agents._agent import Agent
from semper.agents._config import Timeouts
from semper.agents._market import init_market
from semper.agents._purchase import Shopper
from semper.services.certificates import crl_number, load_crl

DAY = dt.timedelta(days=1)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _fresh(agent: Agent) -> bool:
    next_update = agent.crl.next_update_utc
    return next_update is not None and next_update > _now()


def _private_crl(market: Path, agent_id: str, refresh: float = 0.5):
    """``agent_id`` reads a private copy of the CRL: only the CA agent, over the
    network, can give it a fresh one."""
    copy = market / agent_id / "private-crl.pem"
    shutil.copy(market / "ca" / "crl.pem", copy)
    return config_of(market, agent_id, crl=copy, timeouts=Timeouts(crl_refresh=refresh))


async def _trade(market: Path, *, private: tuple[str, ...]) -> None:
    """Start the CA, bank, seller and buyer agents, and buy something by transfer and
    by cheque once every agent holds a fresh CRL."""
    ca = Agent(config_of(market, "ca"))
    others = [Agent(_private_crl(market, name) if name in private else
                    config_of(market, name, timeouts=Timeouts(crl_refresh=0.5)))
              for name in ("bank", "seller", "buyer")]
    bank, seller, buyer = others
    async with running(ca), running(bank), running(seller), running(buyer):
        assert _fresh(ca)  # re-issued at start, before it listened
        await wait_until(lambda: all(_fresh(a) for a in others), "every agent fetched a CRL")
        shopper = Shopper(buyer)
        assert (await shopper.buy("seller", "guide-001", "transfer", "k1")).state == "done"
        assert (await shopper.buy("seller", "map-002", "cheque", "k2")).state == "done"
        for a, b in [(a, b) for a in others for b in [ca, *others] if a is not b]:
            answer = await a.request(b.id, "sys", "ping", b"hi")
            assert answer["agent"] == b.id
        account = await buyer.request("bank", "bank", "account", {})
        assert account["balances"] == {"EUR": 100_000 - 1250 - 480}


# -- the instance: a market left alone for 31 days ------------------------------------


async def test_a_market_whose_crl_was_issued_31_days_ago_starts_and_trades(
        tmp_path: Path) -> None:
    market = tmp_path / "m"
    init_market(market, now=_now() - 31 * DAY)
    assert load_crl((market / "ca" / "crl.pem").read_bytes()).next_update_utc < _now()
    with trio.fail_after(DEADLINE * 2):
        # bank and seller fetch over the network; the buyer rereads the shared file
        await _trade(market, private=("bank", "seller"))
    published = load_crl((market / "ca" / "crl.pem").read_bytes())
    assert crl_number(published) == 2
    assert published.next_update_utc > _now() + 29 * DAY
