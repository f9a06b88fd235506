"""What the CA agent serves on its channels: the CRL (fetched by every agent every
``crl_refresh`` seconds), one certificate's status, and the directory of contact
cards. In one trio loop over real loopback TLS 1.3 and real SQLite."""

from __future__ import annotations

import datetime as dt
import os
import shutil
from pathlib import Path

import pytest
import trio
import trio.testing
from cryptography import x509
from market_helpers import DEADLINE, config_of, make_market, running, wait_until

from semper.agents.operator._market import revoke_agent
from semper.agents.runtime._agent import Agent
from semper.agents.runtime._config import Timeouts
from semper.services.certificates import Revoked, crl_number, load_crl, to_ms
from semper.services.directory import ContactCard, SignedCard, sign_card, verify_card
from semper.services.statements import Statement
from semper.transport import ChannelClosed, HandshakeFailed, RemoteError


@pytest.fixture
def market(tmp_path: Path) -> Path:
    return make_market(tmp_path / "market")


def _private_crl(market: Path, agent_id: str, refresh: float = 2.0, **changes: object):
    """``agent_id``'s config reading a private copy of the CRL, so that only the
    network (the CA agent) can tell it about a revocation."""
    copy = market / agent_id / "private-crl.pem"
    shutil.copy(market / "ca" / "crl.pem", copy)
    return config_of(market, agent_id, crl=copy, timeouts=Timeouts(crl_refresh=refresh),
                     **changes)


# -- the CRL over the network, with a MockClock ---------------------------------------


async def test_a_running_peer_refuses_a_revoked_agent_within_one_refresh(
        market: Path, mock_clock: trio.testing.MockClock) -> None:
    refresh = 5.0
    ca = Agent(config_of(market, "ca", timeouts=Timeouts(crl_refresh=3600.0)))
    seller = Agent(_private_crl(market, "seller", refresh))
    buyer = Agent(_private_crl(market, "buyer", 3600.0))
    async with running(ca), running(seller), running(buyer):
        channel = await buyer.channel("seller")
        assert await channel.request("sys", "ping", b"before") is not None

        revoke_agent(market, "buyer")  # rewrites ca/crl.pem, as `semper ca revoke` does
        await trio.testing.wait_all_tasks_blocked(cushion=0.05)
        assert not channel.closed  # nobody has looked yet: the clock has not moved

        mock_clock.jump(refresh)  # one refresh interval
        await wait_until(lambda: channel.closed, "seller closed the channel to buyer")
        assert crl_number(seller.crl) == 2
        cache = seller.config.data_dir / "crl.pem"  # written (in a thread) once applied
        await wait_until(cache.exists, "seller cached the CRL")
        cached = load_crl(cache.read_bytes())
        assert crl_number(cached) == 2  # kept for the next start

        # New channels from buyer are refused in the handshake.
        with pytest.raises((HandshakeFailed, ChannelClosed)):
            async with buyer.connect("seller") as again:
                await again.request("sys", "ping", b"after")


async def test_an_unreachable_ca_is_retried_and_a_cached_crl_survives_restarts(
        market: Path, mock_clock: trio.testing.MockClock) -> None:
    seller_config = _private_crl(market, "seller", 1.0)
    seller = Agent(seller_config)
    async with running(seller):
        mock_clock.jump(1.0)  # the CA is down: the fetch fails, the agent carries on
        await trio.testing.wait_all_tasks_blocked(cushion=0.05)
        revoke_agent(market, "buyer")
        async with running(Agent(config_of(market, "ca"))):
            mock_clock.jump(1.0)
            await wait_until(lambda: crl_number(seller.crl) == 2, "seller fetched CRL 2")
    # A new start reads the cached CRL, newer than its (private, stale) CRL file.
    assert crl_number(Agent(seller_config).crl) == 2


# -- certificates.status ---------------------------------------------------------------


async def test_status_over_the_network(market: Path) -> None:
    with trio.fail_after(DEADLINE):
        async with running(Agent(config_of(market, "ca"))) as ca, \
                running(Agent(config_of(market, "seller"))) as seller:
            good = await seller.request("ca", "certificates", "status", {"agent": "buyer"})
            assert good["status"] == "good" and good["agent"] == "buyer"
            serial = int(good["serial"], 16)
            unknown = await seller.request("ca", "certificates", "status", {"agent": "nobody"})
            assert (unknown["status"], unknown["serial"]) == ("unknown", None)

            revoke_agent(market, "buyer")
            revoked = await seller.request("ca", "certificates", "status",
                                           {"serial": f"{serial:x}"})
            assert (revoked["status"], revoked["agent"], revoked["crl_number"]) == (
                "revoked", "buyer", 2)
            assert isinstance(revoked["revoked_at"], int)
            assert crl_number(ca.crl) == 2  # the CA read the new file to answer

            with pytest.raises(RemoteError) as caught:
                await seller.request("ca", "certificates", "status", {"serial": "xyz"})
            assert caught.value.code == "certificates.bad_status_query"


async def test_the_crl_op_sends_a_crl_only_when_it_is_newer(market: Path) -> None:
    with trio.fail_after(DEADLINE):
        async with running(Agent(config_of(market, "ca"))), \
                running(Agent(config_of(market, "bank"))) as bank:
            fresh = await bank.request("ca", "certificates", "crl", {"known": 0})
            assert fresh["number"] == 1
            assert isinstance(load_crl(fresh["crl"]), x509.CertificateRevocationList)
            same = await bank.request("ca", "certificates", "crl", {"known": 1})
            assert same == {"number": 1, "crl": None}


# -- the directory ---------------------------------------------------------------------


def _card(agent: Agent, **changes: object) -> ContactCard:
    now = dt.datetime.now(dt.UTC)
    fields: dict[str, object] = {
        "agent_id": agent.id, "role": agent.config.role, "addresses": ("127.0.0.1:9",),
        "not_before_ms": to_ms(now), "not_after_ms": to_ms(now + dt.timedelta(hours=1))}
    fields.update(changes)
    return ContactCard(**fields)  # type: ignore[arg-type]


def _signed(agent: Agent, card: ContactCard) -> SignedCard:
    return sign_card(card, key=agent.credentials.key, certificate=agent.identity.certificate,
                     nonce=os.urandom(16))


async def test_publish_and_lookup(market: Path) -> None:
    with trio.fail_after(DEADLINE):
        async with running(Agent(config_of(market, "ca"))), \
                running(Agent(config_of(market, "seller"))) as seller, \
                running(Agent(config_of(market, "buyer", peers={"ca": config_of(
                    market, "buyer").peers["ca"]}))) as buyer:
            await seller.peers.published.wait()
            card = await buyer.peers.lookup("seller")
            assert card.addresses == (seller.advertised_address(),)
            assert card.services["sys"] == (1, ())
            sellers = await buyer.peers.lookup_role("seller")
            assert [c.agent_id for c in sellers] == ["seller"]
            assert await buyer.peer_address("seller") == seller.address

            with pytest.raises(RemoteError) as unknown:
                await buyer.peers.lookup("nobody")
            assert unknown.value.code == "directory.unknown_agent"
            with pytest.raises(RemoteError) as bad:
                await buyer.request("ca", "directory", "lookup", {"agent": "x", "role": "y"})
            assert bad.value.code == "directory.bad_lookup"


def _tamper(signed: SignedCard) -> SignedCard:
    wire = signed.statement.to_wire()
    wire["body"] = {**wire["body"], "addresses": ["10.6.6.6:443"]}  # keeps the signature
    return SignedCard(Statement.from_wire(wire), signed.certificate)


@pytest.mark.parametrize(("case", "code"), [
    ("tampered", "statement.bad_signature"),     # the address changed after signing
    ("other_id", "directory.card_mismatch"),     # buyer signs a card that says "seller"
    ("not_mine", "directory.card_mismatch"),     # buyer publishes seller's genuine card
    ("expired", "directory.card_expired"),       # outside its own validity
    ("garbage", "statement.malformed"),          # not a statement at all
])
async def test_cards_that_do_not_check_out_are_refused(market: Path, case: str,
                                                       code: str) -> None:
    with trio.fail_after(DEADLINE):
        async with running(Agent(config_of(market, "ca"))), \
                running(Agent(config_of(market, "seller"))) as seller, \
                running(Agent(config_of(market, "buyer"))) as buyer:
            body: object
            if case == "tampered":
                body = _tamper(_signed(buyer, _card(buyer))).to_wire()
            elif case == "other_id":
                body = _signed(buyer, _card(buyer, agent_id="seller", role="seller")).to_wire()
            elif case == "not_mine":
                body = _signed(seller, _card(seller)).to_wire()
            elif case == "expired":
                # Signed two minutes ago (the certificate was valid then), for a minute.
                past = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=2)
                body = _signed(buyer, _card(buyer, not_before_ms=to_ms(past),
                                            not_after_ms=to_ms(past) + 60_000)).to_wire()
            else:
                body = {"card": {"type": 1}, "certificate": b"x"}
            with pytest.raises(RemoteError) as caught:
                await buyer.request("ca", "directory", "publish", body)
            assert caught.value.code == code


async def test_a_revoked_agents_card_is_no_longer_served(market: Path) -> None:
    with trio.fail_after(DEADLINE):
        async with running(Agent(config_of(market, "ca"))) as ca, \
                running(Agent(config_of(market, "seller"))) as seller, \
                running(Agent(config_of(market, "buyer"))) as buyer:
            await seller.peers.published.wait()
            wire = await buyer.request("ca", "directory", "lookup", {"agent": "seller"})
            revoke_agent(market, "seller")
            await ca.reread_crl_file()
            await buyer.reread_crl_file()
            with pytest.raises(RemoteError) as caught:
                await buyer.request("ca", "directory", "lookup", {"agent": "seller"})
            assert caught.value.code == "directory.unknown_agent"
            # A copy kept from before is refused by whoever checks it now.
            with pytest.raises(Revoked):
                verify_card(SignedCard.from_wire(wire), root=buyer.credentials.root,
                            crl=buyer.crl, now=dt.datetime.now(dt.UTC))
            assert (await buyer.request("ca", "directory", "lookup", {"role": "seller"})) \
                == {"cards": []}


async def test_peers_that_know_each_other_talk_without_the_ca(market: Path) -> None:
    ca_address = config_of(market, "seller").peers["ca"]
    alone = {"peers": {"ca": ca_address}}  # they know only the CA
    left, right = config_of(market, "seller", **alone), config_of(market, "buyer", **alone)
    with trio.fail_after(DEADLINE):
        async with running(Agent(left)) as seller:
            async with running(Agent(right)) as buyer:
                async with running(Agent(config_of(market, "ca"))):
                    await seller.peers.published.wait()
                    await buyer.peers.published.wait()
                    await buyer.request("seller", "sys", "ping", b"via the directory")
                    await seller.request("buyer", "sys", "ping", b"and back")
                # The CA is gone. Fresh channels both ways, from what each one learned.
                await buyer.close_channels()
                await seller.close_channels()
                assert (await buyer.request("seller", "sys", "ping", b"x"))["agent"] == "seller"
                assert (await seller.request("buyer", "sys", "ping", b"y"))["agent"] == "buyer"
            # ...and after a restart, from the cards kept in buyer's database.
            async with running(Agent(right)) as buyer:
                assert buyer.peers.learned("seller") is not None
                assert (await buyer.request("seller", "sys", "ping", b"z"))["agent"] == "seller"
