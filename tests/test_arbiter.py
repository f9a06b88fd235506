"""The arbiter (agents/components/_arbiter.py): ``dispute.file`` over a real channel
answers with a verdict that verifies offline, keeps the case, and refuses what it
cannot judge."""

from __future__ import annotations

import hashlib
import sqlite3

import pytest
import trio
from market_helpers import newer_crl, running
from test_disputes import DELIVERED, PAID, RECEIPTED

from semper.agents import Agent, AgentConfig
from semper.agents.components._purchase import Shopper
from semper.agents.operator._market import DEFAULT_AGENTS, init_market
from semper.agents.runtime._identity import utcnow
from semper.services.certificates import Level, load_certificate
from semper.services.disputes import (
    CASE_TYPE,
    VERDICT_TYPE,
    FileAnswer,
    FileRequest,
    verify_case,
    verify_verdict,
)
from semper.transport import RemoteError

DEADLINE = 30.0


async def _file(agent, bundle: bytes, **kw) -> FileAnswer:
    answer = await agent.request("arbiter", "dispute", "file",
                                 FileRequest(bundle=bundle, **kw).to_wire())
    return FileAnswer.from_wire(answer)


async def _refused(agent, bundle: bytes, **kw) -> RemoteError:
    with pytest.raises(RemoteError) as info:
        await _file(agent, bundle, **kw)
    return info.value


async def test_filing_a_purchase_bundle_returns_a_verdict_that_verifies_offline(tmp_path):
    folder = tmp_path / "m"
    agents_of = (*DEFAULT_AGENTS, ("arbiter", "arbiter", Level.VERIFIED_IDENTITY))
    if not any(a[0] == "arbiter" for a in DEFAULT_AGENTS):
        init_market(folder, agents=agents_of)
    else:
        init_market(folder)
    agents = {name: Agent(AgentConfig.load(folder / name / "agent.toml"))
              for name in ("ca", "bank", "seller", "buyer", "arbiter")}
    with trio.fail_after(DEADLINE):
        async with running(agents["ca"]), running(agents["bank"]), \
                running(agents["seller"]), running(agents["buyer"]), \
                running(agents["arbiter"]):
            buyer, seller, arbiter = agents["buyer"], agents["seller"], agents["arbiter"]
            bought = await Shopper(buyer).buy("seller", "guide-001", "transfer", "k-1")
            bundle = (await buyer.archive.export_bundle(
                bought.order.hex(), crl=buyer.crl, root=buyer.credentials.root)).to_bytes()

            answer = await _file(buyer, bundle)
            root = buyer.credentials.root
            certificate = load_certificate(answer.certificate)
            body, identity = verify_verdict(answer.verdict, certificate=certificate,
                                            root=root, crl=newer_crl(folder), now=utcnow())
            assert identity.agent_id == "arbiter" and identity.role == "arbiter"
            assert answer.verdict.type == VERDICT_TYPE
            assert body.transaction == bought.order.hex()
            assert body.protocol == "commerce.purchase"
            assert {(v.obligation, v.party, v.met) for v in body.verdicts} == {
                (PAID, "buyer", True), (DELIVERED, "seller", True), (RECEIPTED, "seller", True)}
            case, _ = verify_case(body.case_statement, certificate=certificate, root=root,
                                  crl=newer_crl(folder), now=utcnow())
            assert (case.claimant, case.respondent) == ("buyer", "seller")
            assert case.bundle == hashlib.sha256(bundle).digest()

            # Filed again: the same answer, the same case.
            again = await _file(buyer, bundle)
            assert again.verdict == answer.verdict

            # The seller files its own bundle of the same purchase: a case of its own.
            own = (await seller.archive.export_bundle(
                bought.order.hex(), crl=seller.crl, root=seller.credentials.root)).to_bytes()
            theirs = await _file(seller, own, respondent="buyer")
            assert theirs.verdict.body["case"] != body.case

            # Not a party; naming a respondent who is not one; a tampered bundle; junk.
            error = await _refused(agents["bank"], bundle)
            assert error.code == "dispute.not_party"
            error = await _refused(buyer, bundle + b"", respondent="bank")
            assert error.code == "dispute.not_party"
            tampered = bytearray(bundle)
            tampered[len(tampered) // 2] ^= 1
            error = await _refused(buyer, bytes(tampered))
            assert error.code.startswith("archive.")
            error = await _refused(buyer, b"not a bundle")
            assert error.code == "archive.malformed"
            with pytest.raises(RemoteError) as info:
                await buyer.request("arbiter", "dispute", "file", {"bundle": 5})
            assert info.value.code == "dispute.bad_body"

            # The arbiter kept both cases, and their statements in its archive.
            records = await arbiter.archive.records(body.case.hex())
            assert [r.direction for r in records] == ["sent", "sent"]
            assert await arbiter.archive.verify() >= 4
    path = folder / "arbiter" / "data" / "agent.sqlite"
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT claimant, respondent, bundle, case_statement "
                          "FROM dispute_cases ORDER BY filed_ms").fetchall()
    assert [(r[0], r[1]) for r in rows] == [("buyer", "seller"), ("seller", "buyer")]
    assert rows[0][2] == bundle
    assert CASE_TYPE.encode() in rows[0][3]


async def test_a_crl_asked_for_a_statement_of_this_second_covers_it(tmp_path):
    """The kind behind the arbiter's instance above (archive.crl_too_old for a bundle
    filed right after its last statement): a CRL the CA agent issues on request for
    ``fresh_after`` = now vouched only up to the start of the second (thisUpdate has
    whole seconds). Another member: any verifier asking ``certificates.crl`` (as
    ``semper archive check --config`` does) for a statement just signed."""
    from semper.services.archive import crl_covers_until
    from semper.services.certificates import load_crl

    folder = tmp_path / "m"
    init_market(folder)
    ca, buyer = (Agent(AgentConfig.load(folder / name / "agent.toml"))
                 for name in ("ca", "buyer"))
    with trio.fail_after(DEADLINE):
        async with running(ca), running(buyer):
            note = buyer.evidence.sign("test.note", {"n": 1})
            if note.issued_at % 1000 == 0:  # on a second's boundary: make it mid-second
                await trio.sleep(0.01)
                note = buyer.evidence.sign("test.note", {"n": 2})
            answer = await buyer.request("ca", "certificates", "crl",
                                         {"known": 0, "fresh_after": note.issued_at})
    crl = load_crl(answer["crl"])
    assert crl_covers_until(crl) >= note.issued_at
