"""Pseudonymous certificates and the CA's reveal (issue 9, item 6): a pseudonymous
buyer enrolls with a token and buys in a real market; its certificate names only the
pseudonym; the CA reveals the real id to an arbiter's case alone, records every
grant and refusal, and tells the holder."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import os
import sqlite3
from pathlib import Path

import pytest
import trio
import trio.testing
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from market_helpers import DEADLINE, config_of, running

from semper.agents.cli import cli
from semper.agents.cli.cmd_ca import invite_pseudonym
from semper.agents.components import _bank, _ledger
from semper.agents.components._purchase import Shopper
from semper.agents.components._reveal import request_reveal
from semper.agents.operator._enroll import enroll
from semper.agents.operator._market import DEFAULT_AGENTS, init_market, load_authority
from semper.agents.runtime._agent import Agent
from semper.agents.runtime._config import AgentConfig, PaymentSettings
from semper.agents.runtime._storage import Database
from semper.services import Amount
from semper.services.certificates import (
    BadCertificate,
    Level,
    create_ca,
    identity_of,
    issue_agent_certificate,
    new_pseudonym,
    opens,
)
from semper.services.certificates._reveal import (
    REFUSAL_TYPE,
    REQUEST_TYPE,
    REVEALED_TYPE,
    BadReveal,
    RevealAsk,
    verify_reveal,
)
from semper.services.disputes import make_case
from semper.services.statements import Statement
from semper.transport import RemoteError

NOW = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)


# -- the certificate, offline ---------------------------------------------------------


def test_a_pseudonym_certificate_commits_to_the_real_id_without_showing_it() -> None:
    ca = create_ca("root", now=NOW)
    pseudonym = new_pseudonym("alice.example")
    key = ed25519.Ed25519PrivateKey.generate()
    cert = issue_agent_certificate(ca, agent_id=pseudonym.pseudonym, role="buyer",
                                   level=Level.VERIFIED_IDENTITY, public_key=key.public_key(),
                                   now=NOW, commitment=pseudonym.commitment)
    der = cert.public_bytes(serialization.Encoding.DER)
    assert b"alice" not in der and pseudonym.opening not in der
    identity = identity_of(cert)
    assert identity.agent_id == pseudonym.pseudonym and identity.commitment is not None
    assert opens(identity.commitment, "alice.example", pseudonym.opening)
    assert not opens(identity.commitment, "bob", pseudonym.opening)
    assert not opens(identity.commitment, "alice.example", bytes(32))
    # Two pseudonyms of one agent share nothing.
    other = new_pseudonym("alice.example")
    assert other.pseudonym != pseudonym.pseudonym and other.commitment != pseudonym.commitment


@pytest.mark.parametrize(("role", "level"), [("buyer", Level.LIABLE), ("bank", Level.SELF_ASSERTED),
                                             ("arbiter", Level.VERIFIED_CONTACT)])
def test_a_pseudonym_holds_no_liable_level_nor_a_trusted_role(role: str, level: Level) -> None:
    ca = create_ca("root", now=NOW)
    pseudonym = new_pseudonym("alice")
    key = ed25519.Ed25519PrivateKey.generate()
    with pytest.raises(ValueError, match="pseudonym may not"):
        issue_agent_certificate(ca, agent_id=pseudonym.pseudonym, role=role, level=level,
                                public_key=key.public_key(), now=NOW,
                                liability=Amount("EUR", 100) if level is Level.LIABLE else None,
                                commitment=pseudonym.commitment)


def test_the_profile_check_refuses_a_named_id_with_a_commitment() -> None:
    """A certificate whose CN is a readable name but carries the extension is no
    pseudonym's: the profile check refuses it (it would claim to hide what it shows)."""
    ca = create_ca("root", now=NOW)
    key = ed25519.Ed25519PrivateKey.generate()
    with pytest.raises(ValueError, match="pseudonym's id"):
        issue_agent_certificate(ca, agent_id="alice", role="buyer", level=Level.SELF_ASSERTED,
                                public_key=key.public_key(), now=NOW,
                                commitment=bytes(32))
    # Built past the issuing check: identity_of refuses it.
    from cryptography import x509

    from semper.services.certificates._pseudonym import pseudonym_extension

    good = issue_agent_certificate(ca, agent_id="alice", role="buyer",
                                   level=Level.SELF_ASSERTED, public_key=key.public_key(),
                                   now=NOW)
    builder = x509.CertificateBuilder().subject_name(good.subject).issuer_name(
        good.issuer).public_key(key.public_key()).serial_number(good.serial_number
        ).not_valid_before(good.not_valid_before_utc).not_valid_after(good.not_valid_after_utc)
    for extension in good.extensions:
        builder = builder.add_extension(extension.value, critical=extension.critical)
    forged = builder.add_extension(pseudonym_extension(bytes(32)), critical=False).sign(
        ca.key, None)
    with pytest.raises(BadCertificate, match="pseudonym"):
        identity_of(forged)


def test_the_signed_request_without_a_case_decodes_for_the_ca_to_refuse_and_record() -> None:
    ask = RevealAsk.from_wire({"pseudonym": "p-" + "a" * 24})
    assert ask.case is None
    assert RevealAsk.from_wire({"pseudonym": "p-" + "a" * 24, "case": None}).case is None


# -- a real market ------------------------------------------------------------------------

#: The default market with an arbiter (added unless the default has one).
AGENTS = DEFAULT_AGENTS if any(role == "arbiter" for _, role, _ in DEFAULT_AGENTS) else (
    *DEFAULT_AGENTS, ("arbiter", "arbiter", Level.VERIFIED_IDENTITY))


def _fund(market: Path, holder: str) -> None:
    database = Database.open_sync(market / "bank" / "data" / "agent.sqlite", _bank.MIGRATIONS)
    try:
        database.transaction_sync(lambda c: (
            _ledger.open_account(c, holder, "EUR"),
            _ledger.mint(c, holder, Amount("EUR", 10_000), time_ms=0, memo="test")))
    finally:
        database.close()


def _case(agent: Agent, claimant: str, respondent: str) -> Statement:
    credentials = agent.credentials
    return make_case(case=os.urandom(32), claimant=claimant, respondent=respondent,
                     bundle=hashlib.sha256(b"bundle").digest(),
                     filed_ms=agent.context.now_ms(), key=credentials.key,
                     certificate=credentials.identity.certificate, nonce=os.urandom(16))


async def _types(agent: Agent) -> list[str]:
    return [Statement.from_bytes(record.statement).type
            for record in await agent.archive.records()]


async def _until_archived(agent: Agent, kind: str) -> None:
    """Until ``agent`` archived a statement of ``kind`` (bounded by the caller's
    fail_after; every task idle 5 ms between looks, no sleeps)."""
    while kind not in await _types(agent):
        await trio.testing.wait_all_tasks_blocked(cushion=0.005)


async def test_a_pseudonymous_buyer_buys_and_the_arbiter_alone_learns_who_it_is(
        tmp_path: Path) -> None:
    market = tmp_path / "m"
    init_market(market, agents=AGENTS)
    token = invite_pseudonym(market, "alice", role="buyer", level=Level.VERIFIED_CONTACT,
                             expires_in=dt.timedelta(hours=1)).token
    pseudonym = token.agent_id
    assert pseudonym.startswith("p-") and "alice" not in token.encode()
    _fund(market, pseudonym)
    with trio.fail_after(DEADLINE * 3):
        async with running(Agent(config_of(market, "ca"))) as ca, \
                running(Agent(config_of(market, "bank"))) as bank, \
                running(Agent(config_of(market, "seller"))) as seller, \
                running(Agent(config_of(market, "arbiter"))) as arbiter:
            config, enrolled = await enroll(token, tmp_path / "alice")
            assert enrolled.identity.agent_id == pseudonym
            assert enrolled.identity.commitment is not None
            cert_der = (tmp_path / "alice" / "cert.pem").read_bytes()
            assert b"alice" not in enrolled.certificate.public_bytes(
                serialization.Encoding.DER) and b"alice" not in cert_der
            config = dataclasses.replace(config, payment=PaymentSettings(bank="bank"))
            for agent in (bank, seller, arbiter):
                await agent.peers.published.wait()

            async with running(Agent(config)) as holder:
                # An ordinary buyer at its level: the purchase completes.
                done = await Shopper(holder).buy("seller", "guide-001", "transfer", "k1")
                assert done.state == "done"
                account = await holder.request("bank", "bank", "account", {})
                assert account["balances"] == {"EUR": 10_000 - 1250}
                await holder.peers.published.wait()

                case = _case(arbiter, "seller", pseudonym)
                refusals = {}
                # No case cited.
                with pytest.raises(RemoteError) as info:
                    await request_reveal(arbiter.context, pseudonym, None)
                refusals["none"] = info.value.code
                # A case signed by a non-arbiter (the seller), cited by the arbiter.
                with pytest.raises(RemoteError) as info:
                    await request_reveal(arbiter.context, pseudonym,
                                         _case(seller, "seller", pseudonym))
                refusals["not_arbiter_case"] = info.value.code
                # A case naming other parties.
                with pytest.raises(RemoteError) as info:
                    await request_reveal(arbiter.context, pseudonym,
                                         _case(arbiter, "seller", "buyer"))
                refusals["other_party"] = info.value.code
                # A non-arbiter citing the arbiter's good case.
                with pytest.raises(RemoteError) as info:
                    await request_reveal(seller.context, pseudonym, case)
                refusals["not_arbiter"] = info.value.code
                assert refusals == {"none": "ca.reveal_no_case",
                                    "not_arbiter_case": "ca.reveal_bad_case",
                                    "other_party": "ca.reveal_not_party",
                                    "not_arbiter": "ca.reveal_not_arbiter"}
                assert "ca.revealed" not in await _types(arbiter)

                # Granted with the arbiter's case that names the pseudonym.
                revealed = await request_reveal(arbiter.context, pseudonym, case)
                assert (revealed.pseudonym, revealed.agent) == (pseudonym, "alice")
                assert revealed.case_statement == case.digest
                assert revealed.request_statement != case.digest
                assert revealed.arbiter == "arbiter"

                # Recorded on the arbiter's side: its signed request (citing the case)
                # sent, the reveal received.
                arbiter_types = await _types(arbiter)
                assert arbiter_types.count(REVEALED_TYPE) == 1
                assert arbiter_types.count(REQUEST_TYPE) == 1
                # ...and on the CA's: every signed request with its refusal or grant.
                ca_types = await _types(ca)
                assert ca_types.count(REFUSAL_TYPE) == 4
                assert ca_types.count(REQUEST_TYPE) == 5
                assert ca_types.count(REVEALED_TYPE) >= 1
                with sqlite3.connect(market / "ca" / "data" / "agent.sqlite") as db:
                    rows = db.execute("SELECT arbiter, code FROM ca_reveals ORDER BY id"
                                      ).fetchall()
                assert rows == [("arbiter", "ca.reveal_no_case"),
                                ("arbiter", "ca.reveal_bad_case"),
                                ("arbiter", "ca.reveal_not_party"),
                                ("seller", "ca.reveal_not_arbiter"),
                                ("arbiter", None)]

                # The holder is told: delivered into its archive, and listed on asking.
                await _until_archived(holder, REVEALED_TYPE)
                listed = await holder.request("ca", "ca", "reveals", {})
                statements = [Statement.from_wire(s) for s in listed["reveals"]]
                assert [s.type for s in statements] == [REVEALED_TYPE]
                assert statements[0].body["agent"] == "alice"
                # Nobody else learns it that way: the seller asks about itself only.
                assert (await seller.request("ca", "ca", "reveals", {}))["reveals"] == []

                # The reveal checks offline against the pseudonym's certificate, and
                # not against another's.
                root = load_authority(market / "ca" / "root.pem",
                                      market / "ca" / "root-key.pem", None).certificate
                body = verify_reveal(statements[0], ca_certificate=ca.credentials.identity
                                     .certificate, pseudonym_certificate=enrolled.certificate,
                                     root=root, crl=ca.crl, now=ca.context.now())
                assert body.agent == "alice"
                with pytest.raises(BadReveal):
                    verify_reveal(statements[0], ca_certificate=ca.credentials.identity
                                  .certificate, pseudonym_certificate=seller.credentials
                                  .identity.certificate, root=root, crl=ca.crl,
                                  now=ca.context.now())


async def test_an_unknown_pseudonym_is_refused_after_the_case_checks(tmp_path: Path) -> None:
    market = tmp_path / "m"
    init_market(market, agents=AGENTS)
    with trio.fail_after(DEADLINE):
        async with running(Agent(config_of(market, "ca"))) as ca, \
                running(Agent(config_of(market, "arbiter"))) as arbiter:
            ghost = "p-" + "b" * 24
            with pytest.raises(RemoteError) as info:
                await request_reveal(arbiter.context, ghost, _case(arbiter, "seller", ghost))
            assert info.value.code == "ca.unknown_pseudonym"
            # Hostile bodies meet the schema's code, never internal.error, and leave no
            # record.
            sign, before = arbiter.context.sign, await _types(ca)
            for op, body in [
                ("reveal", 5), ("reveal", {}), ("reveal", {"request": 5}),
                ("reveal", {"request": {}}), ("reveal", {"request": None}),
                ("reveal", {"request": sign("dispute.case", {"x": 1}).to_wire()}),
                ("reveal", {"request": sign(REQUEST_TYPE, {"pseudonym": 7}).to_wire()}),
                ("reveal", {"request": sign(REQUEST_TYPE, {"pseudonym": ghost,
                                                           "case": {"x": 1}}).to_wire()}),
                ("reveal", {"request": sign(REQUEST_TYPE, {"pseudonym": ghost,
                                                           "extra": 1}).to_wire()}),
                ("reveals", {"pseudonym": ghost}), ("reveals", [])]:
                with pytest.raises(RemoteError) as info:
                    await arbiter.request("ca", "ca", op, body)
                assert info.value.code == "ca.bad_reveal_request", (op, body, info.value)
            assert await _types(ca) == before
            # A named agent is no pseudonym: nothing to reveal either.
            with pytest.raises(RemoteError) as info:
                await request_reveal(arbiter.context, "buyer", _case(arbiter, "seller", "buyer"))
            assert info.value.code == "ca.unknown_pseudonym"


def test_cli_invites_a_pseudonym_and_refuses_a_liable_one(tmp_path: Path) -> None:
    market = tmp_path / "m"
    init_market(market)
    runner = CliRunner()
    result = runner.invoke(cli, ["ca", "invite", str(market), "alice", "--role", "buyer",
                                 "--level", "verified-contact", "--pseudonym"])
    assert result.exit_code == 0, result.output
    assert "under the pseudonym p-" in result.output
    token_line = result.output.strip().splitlines()[-1]
    assert "alice" not in token_line
    result = runner.invoke(cli, ["ca", "invite", str(market), "alice", "--role", "buyer",
                                 "--level", "liable", "--liable-amount", "EUR:100",
                                 "--pseudonym"])
    assert result.exit_code != 0 and "pseudonym may not" in result.output
    with sqlite3.connect(market / "ca" / "data" / "agent.sqlite") as db:
        assert db.execute("SELECT count(*) FROM pseudonyms").fetchone()[0] == 1


async def test_an_arbiter_cannot_cite_another_arbiters_case(tmp_path: Path) -> None:
    """Another member of the kind "a reveal without its own citation": a genuine case,
    naming the pseudonym, but signed by another arbiter than the one asking."""
    market = tmp_path / "m"
    init_market(market, agents=(*AGENTS, ("judge", "arbiter", Level.VERIFIED_IDENTITY)))
    with trio.fail_after(DEADLINE):
        async with running(Agent(config_of(market, "ca"))) as ca, \
                running(Agent(config_of(market, "arbiter"))) as arbiter, \
                running(Agent(config_of(market, "judge"))) as judge:
            ghost = "p-" + "c" * 24
            with pytest.raises(RemoteError) as info:
                await request_reveal(judge.context, ghost, _case(arbiter, "seller", ghost))
            assert info.value.code == "ca.reveal_bad_case"
            assert info.value.detail == {"cause": "statement.wrong_signer"}
            assert REFUSAL_TYPE in await _types(ca)
            # A request the asker did not sign (the judge's, sent by the arbiter) is
            # refused and not recorded: nobody stands behind it.
            before = await _types(ca)
            signed = judge.context.sign(REQUEST_TYPE, RevealAsk(
                pseudonym=ghost, case=_case(arbiter, "seller", ghost)).to_body())
            with pytest.raises(RemoteError) as info:
                await arbiter.request("ca", "ca", "reveal", {"request": signed.to_wire()})
            assert info.value.code == "ca.bad_reveal_request"
            assert info.value.detail["cause"] == "statement.wrong_signer"
            assert await _types(ca) == before


# -- the command line, against a CA process -------------------------------------------------


def test_cli_reveal_to_the_arbiter_and_one_line_refusals(tmp_path: Path) -> None:
    """The commands in-process (click's runner), the CA agent a real process."""
    from cli_helpers import refused
    from cli_helpers import semper as run
    from test_cli import AgentProcess, Market

    from semper.agents.runtime._identity import load_private_key
    from semper.services.certificates import load_certificate

    root = tmp_path / "m"
    init_market(root, agents=AGENTS)
    market = Market(root, None)
    token = invite_pseudonym(root, "alice", role="buyer", level=Level.SELF_ASSERTED,
                             expires_in=dt.timedelta(hours=1)).token
    logs = tmp_path / "logs"
    logs.mkdir()
    ca = AgentProcess.start(market, "ca", logs)
    try:
        ca.ready_line = ca.read_line()
        status, _, err = run("agent", "enroll", "--token", token.encode(), "--data-dir",
                             tmp_path / "alice")
        assert status == 0, err
        key = load_private_key(root / "arbiter" / "key.pem", None)
        cert = load_certificate((root / "arbiter" / "cert.pem").read_bytes())

        def case_file(name: str, respondent: str) -> Path:
            path = tmp_path / name
            path.write_bytes(make_case(
                case=os.urandom(32), claimant="seller", respondent=respondent,
                bundle=bytes(32), filed_ms=int(dt.datetime.now(dt.UTC).timestamp() * 1000),
                key=key, certificate=cert, nonce=os.urandom(16)).to_bytes())
            return path

        config = market.config("arbiter")
        status, out, err = run("ca", "reveal", "--config", config, token.agent_id, "--case",
                               case_file("good.case", token.agent_id), "--json")
        assert status == 0, err
        shown = json.loads(out)
        assert shown == {"pseudonym": token.agent_id, "agent": "alice", "arbiter": "arbiter",
                         "case": shown["case"]}
        # The holder asks the CA which reveals of it were granted.
        status, out, err = run("call", "--config", tmp_path / "alice" / "agent.toml", "ca",
                               "ca.reveals")
        assert status == 0, err
        [reveal] = json.loads(out)["reveals"]
        assert (reveal["type"], reveal["body"]["agent"]) == (REVEALED_TYPE, "alice")
        refused(run("ca", "reveal", "--config", config, token.agent_id, "--case",
                    case_file("other.case", "buyer")), "ca.reveal_not_party")
        # By case id, from the arbiter's archive (where dispute.file keeps its cases).
        archived = Statement.from_bytes(case_file("kept.case", token.agent_id).read_bytes())
        case_id = archived.body["case"].hex()

        async def keep() -> None:
            agent = Agent(AgentConfig.load(config))
            async with agent.session():
                await agent.archive.record(archived, direction="sent", peer="seller",
                                           transaction=case_id, certificate=cert)

        trio.run(keep)
        status, out, err = run("ca", "reveal", "--config", config, token.agent_id, "--case",
                               case_id, "--json")
        assert status == 0, err
        assert json.loads(out)["case"] == case_id
        refused(run("ca", "reveal", "--config", config, token.agent_id, "--case", "ab" * 32),
                "ca.unknown_case")
        junk = tmp_path / "junk.case"
        junk.write_bytes(b"not a statement")
        refused(run("ca", "reveal", "--config", config, token.agent_id, "--case", junk),
                "statement.malformed")
        # The buyer's config is no arbiter's: refused by the CA, one line.
        refused(run("ca", "reveal", "--config", market.config("buyer"), token.agent_id,
                    "--case", case_file("b.case", token.agent_id)), "ca.reveal_not_arbiter")
    finally:
        ca.kill()


async def test_market_init_makes_a_pseudonymous_buyer_that_trades_and_can_be_revealed(
        tmp_path: Path) -> None:
    market = tmp_path / "m"
    configs = init_market(market, agents=AGENTS, pseudonyms={"buyer": "bob"})
    pseudonym = next(c.id for c in configs if c.role == "buyer")
    assert pseudonym.startswith("p-") and not (market / "buyer").exists()
    assert b"bob" not in (market / pseudonym / "cert.pem").read_bytes()
    with trio.fail_after(DEADLINE):
        async with running(Agent(config_of(market, "ca"))), \
                running(Agent(config_of(market, "bank"))), \
                running(Agent(config_of(market, "seller"))), \
                running(Agent(config_of(market, "arbiter"))) as arbiter, \
                running(Agent(config_of(market, pseudonym))) as holder:
            done = await Shopper(holder).buy("seller", "map-002", "transfer", "k")
            assert done.state == "done"
            revealed = await request_reveal(arbiter.context, pseudonym,
                                            _case(arbiter, pseudonym, "seller"))
            assert revealed.agent == "bob"


def test_market_init_refuses_a_pseudonym_for_a_trusted_role(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="pseudonym may not"):
        init_market(tmp_path / "m", pseudonyms={"bank": "bob"})
    assert not (tmp_path / "m").exists()


async def test_done_when_a_pseudonymous_buyers_dispute_case_lets_the_arbiter_learn_who(
        tmp_path: Path) -> None:
    """Issue 9's line, whole: a pseudonymous buyer completes a purchase and files a
    dispute; the arbiter's reveal is refused without the case, granted with the case
    of that dispute, and recorded on the CA's and the arbiter's side."""
    from semper.services.disputes import FileAnswer, FileRequest, VerdictBody

    market = tmp_path / "m"
    configs = init_market(market, agents=AGENTS, pseudonyms={"buyer": "carol"})
    pseudonym = next(c.id for c in configs if c.role == "buyer")
    with trio.fail_after(DEADLINE * 3):
        async with running(Agent(config_of(market, "ca"))) as ca, \
                running(Agent(config_of(market, "bank"))), \
                running(Agent(config_of(market, "seller"))), \
                running(Agent(config_of(market, "arbiter"))) as arbiter, \
                running(Agent(config_of(market, pseudonym))) as holder:
            bought = await Shopper(holder).buy("seller", "guide-001", "transfer", "k-1")
            bundle = (await holder.archive.export_bundle(
                bought.order.hex(), crl=holder.crl, root=holder.credentials.root)).to_bytes()
            answer = FileAnswer.from_wire(await holder.request(
                "arbiter", "dispute", "file", FileRequest(bundle=bundle).to_wire()))
            case = VerdictBody.from_statement(answer.verdict).case_statement
            assert (case.body["claimant"], case.body["respondent"]) == (pseudonym, "seller")

            with pytest.raises(RemoteError) as info:
                await request_reveal(arbiter.context, pseudonym, None)
            assert info.value.code == "ca.reveal_no_case"
            revealed = await request_reveal(arbiter.context, pseudonym, case)
            assert revealed.agent == "carol" and revealed.case == case.body["case"]

            assert REVEALED_TYPE in await _types(arbiter)
            assert {REFUSAL_TYPE, REVEALED_TYPE} <= set(await _types(ca))
            await _until_archived(holder, REVEALED_TYPE)


def test_revoking_an_agent_revokes_its_pseudonyms(tmp_path: Path) -> None:
    """Another member of the kind "a pseudonym escapes what binds its real identity":
    the operator revokes bob; bob's pseudonymous buyer must not go on trading."""
    from semper.agents.operator._market import MarketError, revoke
    from semper.agents.operator._operator import certificate_status_in
    from semper.services.certificates import CertStatus

    market = tmp_path / "m"
    configs = init_market(market, pseudonyms={"buyer": "bob"})
    pseudonym = next(c.id for c in configs if c.role == "buyer")
    crl, _ = revoke(market, "bob")
    assert crl is not None
    assert certificate_status_in(market, pseudonym).status is CertStatus.REVOKED
    assert certificate_status_in(market, "seller").status is CertStatus.GOOD
    with pytest.raises(MarketError):
        revoke(market, "nobody")
