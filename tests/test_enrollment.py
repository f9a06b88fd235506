"""Joining a market over the network: the CA agent's enrollment listener and the
newcomer's ``enroll``, in one trio loop over real loopback TLS 1.3 and real SQLite.

Each refusal is checked on both sides: the newcomer gets the stable code, the CA's
database shows the token still unused (or used once), and nothing was written.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import sqlite3
import stat
import tomllib
from pathlib import Path

import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from market_helpers import DEADLINE, config_of, make_market, running

from semper.agents.operator._enroll import EnrollFolderError, enroll
from semper.agents.operator._operator import invite_agent
from semper.agents.roles.ca import CertificationAuthority
from semper.agents.runtime._agent import Agent
from semper.agents.runtime._config import AgentConfig
from semper.services.certificates import (
    EnrollmentToken,
    EnrollRequest,
    Level,
    MalformedToken,
    WrongCa,
    enrollment_proof,
    make_csr,
)
from semper.services.money import Amount
from semper.transport import RemoteError, request_pinned


@pytest.fixture
def market(tmp_path: Path) -> Path:
    return make_market(tmp_path / "market")


def _invite(market: Path, agent_id: str = "shop", **kw: object) -> EnrollmentToken:
    args: dict[str, object] = {"role": "seller", "level": Level.VERIFIED_CONTACT}
    args.update(kw)
    return invite_agent(market, agent_id, **args).token  # type: ignore[arg-type]


def _used(market: Path, token: EnrollmentToken) -> int | None:
    with sqlite3.connect(market / "ca" / "data" / "agent.sqlite") as db:
        return db.execute("SELECT used_ms FROM enroll_invitations WHERE token_id = ?",
                          (token.token_id,)).fetchone()[0]


async def test_enroll_then_run_and_reach_a_peer_through_the_directory(
        market: Path, tmp_path: Path) -> None:
    token = _invite(market, "shop", level=Level.LIABLE, liability=Amount("EUR", 5_000_000))
    home = tmp_path / "shop"
    with trio.fail_after(DEADLINE):
        async with running(Agent(config_of(market, "ca"))) as ca, \
                running(Agent(config_of(market, "seller"))) as seller:
            config, enrolled = await enroll(token, home)
            assert _used(market, token) is not None

            # A ready folder: files, modes, a config naming the CA and nothing else.
            assert stat.S_IMODE((home / "key.pem").stat().st_mode) == 0o600
            assert AgentConfig.load(home / "agent.toml") == dataclasses.replace(
                config, path=home / "agent.toml")
            assert (config.ca_agent, list(config.peers)) == ("ca", ["ca"])
            assert config.peers["ca"] == ca.advertised_address()
            identity = enrolled.identity
            assert (identity.agent_id, identity.role, identity.level, identity.liability) == (
                "shop", "seller", Level.LIABLE, Amount("EUR", 5_000_000))
            root = x509.load_pem_x509_certificate((home / "root.pem").read_bytes())
            assert root == ca.credentials.root

            await seller.peers.published.wait()
            async with running(Agent(AgentConfig.load(home / "agent.toml"))) as shop:
                answer = await shop.request("seller", "sys", "ping", b"hello")
                assert answer["agent"] == "seller" and answer["echo"] == b"hello"
                # ...and the other way round, once shop has published its card.
                await shop.peers.published.wait()
                back = await seller.request("shop", "sys", "ping", b"back")
                assert back["agent"] == "shop"
                assert shop.peers.learned("seller") is not None


async def test_the_ca_records_what_it_issued(market: Path, tmp_path: Path) -> None:
    token = _invite(market)
    with trio.fail_after(DEADLINE):
        async with running(Agent(config_of(market, "ca"))):
            _, enrolled = await enroll(token, tmp_path / "shop")
    with sqlite3.connect(market / "ca" / "data" / "agent.sqlite") as db:
        rows = db.execute("SELECT agent_id, role, fingerprint, via FROM issued_certificates "
                          "ORDER BY agent_id").fetchall()
        used_serial = db.execute("SELECT used_serial FROM enroll_invitations").fetchone()[0]
    # market init recorded its six; enrollment recorded one more, naming the token.
    assert [r[0] for r in rows] == ["arbiter", "bank", "buyer", "ca", "notary", "seller",
                                    "shop"]
    shop = rows[-1]
    assert shop[1] == "seller" and shop[2] == enrolled.identity.fingerprint
    assert shop[3] == f"token:{token.token_id.hex()}"
    assert used_serial == f"{enrolled.identity.serial:x}"


async def test_a_token_works_once(market: Path, tmp_path: Path) -> None:
    token = _invite(market)
    with trio.fail_after(DEADLINE):
        async with running(Agent(config_of(market, "ca"))):
            await enroll(token, tmp_path / "first")
            used = _used(market, token)
            with pytest.raises(RemoteError) as caught:
                await enroll(token, tmp_path / "second")
    assert caught.value.code == "enroll.token_used"
    assert not (tmp_path / "second").exists()
    assert _used(market, token) == used


async def test_two_tokens_for_one_id_yield_one_identity(market: Path, tmp_path: Path) -> None:
    first, second = _invite(market), _invite(market)  # both issued before either is used
    with trio.fail_after(DEADLINE):
        async with running(Agent(config_of(market, "ca"))):
            await enroll(first, tmp_path / "first")
            with pytest.raises(RemoteError) as caught:
                await enroll(second, tmp_path / "second")
    assert caught.value.code == "enroll.agent_has_certificate"
    assert _used(market, second) is None and not (tmp_path / "second").exists()


async def test_an_expired_token_is_refused(market: Path, tmp_path: Path) -> None:
    a_day_ago = dt.datetime.now(dt.UTC) - dt.timedelta(days=1)
    token = invite_agent(market, "shop", role="seller", level=Level.SELF_ASSERTED,
                         expires_in=dt.timedelta(hours=1), now=a_day_ago).token
    with trio.fail_after(DEADLINE):
        async with running(Agent(config_of(market, "ca"))):
            with pytest.raises(RemoteError) as caught:
                await enroll(token, tmp_path / "shop")
    assert caught.value.code == "enroll.token_expired"
    assert _used(market, token) is None and not (tmp_path / "shop").exists()


async def test_a_token_pinning_another_ca_sends_nothing(market: Path, tmp_path: Path) -> None:
    token = _invite(market)
    forged = dataclasses.replace(token, ca_fingerprint=hashlib.sha256(b"another CA").digest())
    with trio.fail_after(DEADLINE):
        async with running(Agent(config_of(market, "ca"))) as ca:
            with pytest.raises(WrongCa):
                await enroll(forged, tmp_path / "shop")
            await trio.testing.wait_all_tasks_blocked()
            events = (ca.config.data_dir / "events.jsonl").read_text()
    assert "enroll" not in events.replace("enroll_listening", "")  # no request reached it
    assert _used(market, token) is None and not (tmp_path / "shop").exists()


async def _raw_enroll(ca: Agent, token: EnrollmentToken, csr: bytes, proof: bytes) -> object:
    host, port = ca.component(CertificationAuthority).enroll_address
    return await request_pinned(
        host, port, check_server=lambda der: None, service="enroll", op="request",
        body=EnrollRequest(token_id=token.token_id, csr_der=csr, proof=proof).to_wire())


def _swap_key(csr_der: bytes) -> bytes:
    """The CSR with another public key in it: its signature no longer matches it."""
    old = x509.load_der_x509_csr(csr_der).public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    new = ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return csr_der.replace(old, new)


@pytest.mark.parametrize("case", [
    "csr_key_mismatch",  # the CSR carries a key its signature was not made with
    "csr_tampered",      # one byte of the signature flipped
    "csr_other_agent",   # a CSR naming another agent id than the token's
    "bad_proof",         # the proof is not the token secret's MAC over this CSR
    "unknown_token",     # a token id the CA never issued
    "bad_request",       # a body that is not the enroll.request map
])
async def test_refused_requests_leave_the_token_unused(market: Path, case: str) -> None:
    token = _invite(market)
    csr = make_csr(ed25519.Ed25519PrivateKey.generate(), "shop")
    code = f"enroll.{case}"
    if case == "csr_key_mismatch":
        csr = _swap_key(csr)
    elif case == "csr_tampered":
        csr = csr[:-1] + bytes([csr[-1] ^ 1])
        code = "enroll.csr_key_mismatch"
    elif case == "csr_other_agent":
        csr, code = make_csr(ed25519.Ed25519PrivateKey.generate(), "bank"), "enroll.bad_csr"
    proof = enrollment_proof(token.secret, token.token_id, csr)
    if case == "bad_proof":
        proof = enrollment_proof(b"\0" * 32, token.token_id, csr)
    elif case == "unknown_token":
        token = dataclasses.replace(token, token_id=b"\7" * 16)
    with trio.fail_after(DEADLINE):
        async with running(Agent(config_of(market, "ca"))) as ca:
            with pytest.raises(RemoteError) as caught:
                if case == "bad_request":
                    host, port = ca.component(CertificationAuthority).enroll_address
                    await request_pinned(host, port, check_server=lambda der: None,
                                         service="enroll", op="request", body={"token": 1})
                else:
                    await _raw_enroll(ca, token, csr, proof)
    assert caught.value.code == code
    if case != "unknown_token":
        assert _used(market, token) is None


async def test_only_enrollment_is_offered_on_the_enrollment_listener(market: Path) -> None:
    with trio.fail_after(DEADLINE):
        async with running(Agent(config_of(market, "ca"))) as ca:
            host, port = ca.component(CertificationAuthority).enroll_address
            for service, op, code in [("certificates", "crl", "protocol.unknown_service"),
                                      ("enroll", "crl", "protocol.unknown_op")]:
                with pytest.raises(RemoteError) as caught:
                    await request_pinned(host, port, check_server=lambda der: None,
                                         service=service, op=op, body=None)
                assert caught.value.code == code


async def test_enroll_never_overwrites_a_folder(market: Path, tmp_path: Path) -> None:
    token = _invite(market)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "agent.toml").write_text("id = 'someone'\n")
    with pytest.raises(EnrollFolderError):
        await enroll(token, tmp_path / "busy")
    assert _used(market, token) is None


def test_invite_refuses_an_agent_with_a_good_certificate(market: Path) -> None:
    from semper.agents.operator._market import MarketError

    with pytest.raises(MarketError, match="already holds a good certificate"):
        _invite(market, "seller")


def test_a_malformed_token_is_refused_before_any_network() -> None:
    with pytest.raises(MalformedToken):
        EnrollmentToken.parse("semper-enroll-1.bm90IGEgdG9rZW4")


def test_tokens_carry_the_advertised_enrollment_address(market: Path) -> None:
    path = market / "ca" / "agent.toml"
    path.write_text(path.read_text().replace(
        "[ca]\n", '[ca]\nenroll_advertise = "ca.market.example:4100"\n'))
    config = AgentConfig.load(path)
    assert config.ca is not None and config.ca.enroll_advertise == "ca.market.example:4100"
    assert AgentConfig.from_dict(tomllib.loads(config.to_toml(base=path.parent)),
                                 base=path.parent, path=path) == config
    assert _invite(market).ca_address == "ca.market.example:4100"
