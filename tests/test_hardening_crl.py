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
import functools
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio
import trio.testing
from channel_helpers import REAL_WAIT, echo_registry
from cryptography.hazmat.primitives import serialization
from market_helpers import DEADLINE, config_of, running, wait_until
from pki import NOW, Market

from semper.agents.cli import main
from semper.agents.components._castore import publish_crl
from semper.agents.components._purchase import Shopper
from semper.agents.operator._market import init_market, load_authority, revoke_agent
from semper.agents.roles.ca import CertificationAuthority
from semper.agents.runtime._agent import Agent
from semper.agents.runtime._config import Timeouts
from semper.agents.runtime._identity import peer_verifier
from semper.services.certificates import (
    CLOCK_SKEW,
    CRL_VALIDITY,
    BadCrl,
    CrlStale,
    create_ca,
    crl_number,
    crl_renewal_due,
    issue_crl,
    load_crl,
    validate_certificate,
    validate_crl,
)
from semper.transport import ChannelClosed, HandshakeFailed, ServiceRegistry, open_channel, serve

DAY = dt.timedelta(days=1)
MINUTE = dt.timedelta(minutes=1)
DER = serialization.Encoding.DER
PEM = serialization.Encoding.PEM
X509_V_ERR_CRL_NOT_YET_VALID = 11  # OpenSSL's x509_vfy.h
X509_V_ERR_CRL_HAS_EXPIRED = 12


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


# -- a stale agent starts, refuses peers until it has a fresh CRL, then works -----------


async def test_a_stale_agent_starts_refuses_peers_and_recovers_from_its_ca(
        tmp_path: Path) -> None:
    market = tmp_path / "m"
    init_market(market, now=_now() - 31 * DAY)
    authority = load_authority(market / "ca" / "root.pem", market / "ca" / "root-key.pem", None)
    seller = Agent(_private_crl(market, "seller", refresh=0.05))  # starts: stale is no error
    buyer_config = _private_crl(market, "buyer", refresh=3600.0)
    publish_crl(buyer_config.crl, authority, now=_now())  # the buyer holds a fresh one
    buyer = Agent(buyer_config)
    assert _fresh(buyer) and not _fresh(seller)
    with trio.fail_after(DEADLINE):
        async with running(seller), running(buyer):  # the CA agent is down
            # OpenSSL refuses every certificate against a stale CRL, in both directions
            with pytest.raises(HandshakeFailed) as dialled:
                async with seller.connect("buyer") as channel:
                    await channel.request("sys", "ping", None)
            assert dialled.value.detail.get("verify_code") == X509_V_ERR_CRL_HAS_EXPIRED
            with pytest.raises((HandshakeFailed, ChannelClosed)):
                async with buyer.connect("seller") as channel:
                    await channel.request("sys", "ping", None)
            # and our own check refuses with a code of its own
            with pytest.raises(CrlStale) as stale:
                seller.verify_peer(buyer.identity.certificate.public_bytes(DER), "buyer")
            assert stale.value.code == "auth.crl_stale"
            assert seller.running  # the agent lives

            async with running(Agent(config_of(market, "ca"))):
                await wait_until(lambda: _fresh(seller), "the seller fetched a fresh CRL")
            assert crl_number(seller.crl) == 2  # the CA renewed its own at start
            cache = seller.config.data_dir / "crl.pem"  # written in a thread after
            await wait_until(cache.exists, "the seller cached the CRL")
            cached = load_crl(cache.read_bytes())
            assert crl_number(cached) == 2  # kept for its next start
            async with seller.connect("buyer") as channel:
                assert (await channel.request("sys", "ping", None))["agent"] == "buyer"
            async with buyer.connect("seller") as channel:
                assert (await channel.request("sys", "ping", None))["agent"] == "seller"


def test_a_forged_or_foreign_crl_still_stops_the_start(tmp_path: Path) -> None:
    market = tmp_path / "m"
    init_market(market)
    other = create_ca("semper market root", now=_now())  # same name, another key
    for when in (_now(), _now() - 31 * DAY):  # fresh or stale: not ours either way
        forged = market / "seller" / "forged-crl.pem"
        forged.write_bytes(issue_crl(other, [], now=when, number=99).public_bytes(PEM))
        with pytest.raises(BadCrl) as info:
            Agent(config_of(market, "seller", crl=forged))
        assert info.value.code == "auth.bad_crl"


# -- the CA agent renews its CRL well before nextUpdate ---------------------------------


def test_publish_crl_renews_when_half_the_validity_is_gone(tmp_path: Path) -> None:
    market = tmp_path / "m"
    issued = _now() - 20 * DAY
    init_market(market, now=issued)
    path = market / "ca" / "crl.pem"
    authority = load_authority(market / "ca" / "root.pem", market / "ca" / "root-key.pem", None)
    revoked = publish_crl(path, authority, now=issued + DAY, revoke=[12345])
    assert revoked is not None and crl_number(revoked) == 2
    # 14 days after: more than half left, nothing to do
    assert not crl_renewal_due(revoked, issued + 15 * DAY - 2 * CLOCK_SKEW)
    assert publish_crl(path, authority, now=issued + 14 * DAY, if_due=True) is None
    assert load_crl(path.read_bytes()) == revoked
    renewed = publish_crl(path, authority, now=issued + 16 * DAY + CLOCK_SKEW, if_due=True)
    assert renewed is not None and crl_number(renewed) == 3
    entry = renewed.get_revoked_certificate_by_serial_number(12345)
    assert entry is not None and entry.revocation_date_utc == revoked.get_revoked_certificate_by_serial_number(12345).revocation_date_utc  # noqa: E501
    assert renewed.last_update_utc == (issued + 16 * DAY + CLOCK_SKEW - CLOCK_SKEW).replace(
        microsecond=0)
    assert renewed.next_update_utc - renewed.last_update_utc == CRL_VALIDITY + CLOCK_SKEW


async def test_the_ca_agent_renews_on_its_timer_with_its_clock(
        tmp_path: Path, mock_clock: trio.testing.MockClock) -> None:
    market = tmp_path / "m"
    # Issued so that renewal falls due 5 minutes from now: not at start. (The CA's
    # clock can only run a little ahead: peers check CRLs with the real clock.)
    real = _now()
    init_market(market, now=real - CRL_VALIDITY / 2 + CLOCK_SKEW / 2 + 5 * MINUTE)
    ca = Agent(config_of(market, "ca"))
    async with running(ca):
        assert crl_number(ca.crl) == 1
        role = ca.component(CertificationAuthority)
        mock_clock.jump(role.crl_check_interval)
        await trio.testing.wait_all_tasks_blocked(cushion=0.02)
        assert crl_number(ca.crl) == 1  # looked, not due yet
        role.clock = lambda: _now() + 6 * MINUTE
        mock_clock.jump(role.crl_check_interval)
        await wait_until(lambda: crl_number(ca.crl) == 2, "the CA renewed its CRL")
        assert crl_number(load_crl((market / "ca" / "crl.pem").read_bytes())) == 2


# -- semper ca crl DIR ---------------------------------------------------------------


@dataclass
class Done:
    exit_code: int
    output: str  # stdout and stderr


def test_semper_ca_crl_reissues_offline_in_one_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def _cli(*args: object) -> Done:
        with pytest.raises(SystemExit) as exited:
            main([str(a) for a in args])
        out, err = capsys.readouterr()
        return Done(exited.value.code or 0, out + err)

    market = tmp_path / "m"
    init_market(market, now=_now() - 31 * DAY)
    revoke_agent(market, "notary", now=_now() - 31 * DAY)
    done = _cli("ca", "crl", market)
    assert done.exit_code == 0, done.output
    lines = done.output.splitlines()
    assert len(lines) == 1 and lines[0].startswith("re-issued the CRL: number 3, 1 revoked, "
                                                   "good until "), lines
    crl = load_crl((market / "ca" / "crl.pem").read_bytes())
    assert crl_number(crl) == 3 and len(list(crl)) == 1 and crl.next_update_utc > _now()
    Agent(config_of(market, "seller"))  # and agents start with it as before

    before = (market / "ca" / "crl.pem").read_bytes()
    wrong = tmp_path / "passphrase"
    wrong.write_text("not the key's (it has none)\n")
    for args, code in [((tmp_path / "nowhere",), "agent.market"),
                       ((market, "--passphrase-file", wrong), "agent.bad_key")]:
        failed = _cli("ca", "crl", *args)
        assert failed.exit_code == 1
        assert failed.output.startswith(f"semper: {code}: ") and \
            len(failed.output.splitlines()) == 1, failed.output
        assert (market / "ca" / "crl.pem").read_bytes() == before  # nothing written
    (market / "ca" / "crl.pem").write_bytes(b"not a crl")
    failed = _cli("ca", "crl", market)
    assert failed.exit_code == 1 and failed.output.startswith("semper: auth.bad_crl: ")
    (market / "ca" / "crl.pem").write_bytes(before)


# -- clock skew: a client 60 s behind the CA -------------------------------------------


def test_start_dates_are_backdated_by_the_allowed_skew(market: Market) -> None:
    """One constant: what the CA subtracts when it signs is what checks allow."""
    t = NOW.replace(microsecond=0)
    agent = market.agent("seller")
    crl = issue_crl(market.ca, [], now=t, number=5)
    assert crl.last_update_utc == t - CLOCK_SKEW
    assert agent.cert.not_valid_before_utc == NOW.replace(microsecond=0) - CLOCK_SKEW
    behind = t - dt.timedelta(seconds=60)  # the verifier's clock, 60 s behind the CA's
    validate_crl(crl, root=market.ca.certificate, now=behind)
    identity = validate_certificate(agent.cert, root=market.ca.certificate, crl=crl,
                                    now=NOW - dt.timedelta(seconds=60))
    assert identity.agent_id == "seller"


async def test_openssl_accepts_a_crl_from_a_ca_60s_ahead_only_because_it_is_backdated(
        tmp_path: Path) -> None:
    """OpenSSL allows no skew: a CRL whose thisUpdate is 60 s in its future fails the
    handshake (the old profile); backdated by CLOCK_SKEW it does not."""
    pki = Market(tmp_path)
    server, client = pki.agent("seller", "seller"), pki.agent("buyer")
    ahead = _now() + dt.timedelta(seconds=60)
    old_profile = issue_crl(pki.ca, [], now=ahead + CLOCK_SKEW, number=2)  # thisUpdate=ahead
    assert old_profile.last_update_utc > _now()
    backdated = issue_crl(pki.ca, [], now=ahead, number=3)
    for crl, works in [(old_profile, False), (backdated, True)]:
        pki.crl = crl
        verify = peer_verifier(pki.ca.certificate, lambda: pki.crl,
                               now=lambda: _now() + CLOCK_SKEW)  # only OpenSSL judges here
        with trio.fail_after(REAL_WAIT):
            async with trio.open_nursery() as nursery:
                host, port = await nursery.start(functools.partial(
                    serve, "127.0.0.1", 0, tls=pki.tls(server), verify_peer=verify,
                    hello=pki.hello(server, echo_registry()), registry=echo_registry()))
                try:
                    async with open_channel(host, port, tls=pki.tls(client), verify_peer=verify,
                                            expected_id="seller",
                                            hello=pki.hello(client, ServiceRegistry())) as ch:
                        assert await ch.request("echo", "echo", b"x") == b"x"
                    assert works
                except HandshakeFailed as exc:
                    assert not works, exc
                    assert exc.detail.get("verify_code") == X509_V_ERR_CRL_NOT_YET_VALID
                nursery.cancel_scope.cancel()


async def test_a_market_whose_ca_clock_is_60s_ahead_trades(tmp_path: Path) -> None:
    """The instance: every agent's clock is 60 s behind the CA's."""
    market = tmp_path / "m"
    init_market(market, now=_now() + dt.timedelta(seconds=60))
    with trio.fail_after(DEADLINE * 2):
        await _trade(market, private=())


async def test_a_command_acting_as_a_stale_agent_fetches_a_crl_first(tmp_path: Path) -> None:
    """Another member of the kind: ``semper buy`` runs the buyer as a session, with no
    CRL watcher; weeks after the buyer last ran, its own CRL copy is stale."""
    market = tmp_path / "m"
    init_market(market, now=_now() - 31 * DAY)
    ca, bank, seller = (Agent(config_of(market, name, timeouts=Timeouts(crl_refresh=0.05)))
                        for name in ("ca", "bank", "seller"))
    buyer = Agent(_private_crl(market, "buyer"))
    with trio.fail_after(DEADLINE):
        async with running(ca), running(bank), running(seller):
            await wait_until(lambda: _fresh(bank) and _fresh(seller), "bank, seller fresh")
            assert not _fresh(buyer)
            async with buyer.session():
                done = await Shopper(buyer).buy("seller", "song-003", "transfer", "k")
                assert done.state == "done"
                assert _fresh(buyer)


async def test_a_one_off_dial_by_a_stale_agent_fetches_a_crl_first(tmp_path: Path) -> None:
    """``semper ping``/``call``/``archive check --config`` dial with Agent.connect and
    no watcher; with the CA agent down the dial fails with a coded TLS error."""
    market = tmp_path / "m"
    init_market(market, now=_now() - 31 * DAY)
    ca, bank = Agent(config_of(market, "ca")), Agent(_private_crl(market, "bank"))
    lost = Agent(_private_crl(market, "seller"))
    buyer = Agent(_private_crl(market, "buyer"))
    with trio.fail_after(DEADLINE):
        async with running(ca), running(bank):
            await wait_until(lambda: _fresh(bank), "the bank fetched a fresh CRL")
            async with buyer.connect("bank") as channel:
                assert (await channel.request("sys", "ping", None))["agent"] == "bank"
            assert _fresh(buyer)
        async with running(bank):  # the CA agent is down now
            with pytest.raises(HandshakeFailed):
                async with lost.connect("bank") as channel:
                    await channel.request("sys", "ping", None)
            assert not _fresh(lost)
