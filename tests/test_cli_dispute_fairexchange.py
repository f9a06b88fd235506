"""``semper dispute check`` on the agents' own bundles of the notary's three protocols
(issue 9, Done-when: "the right verdicts for a bundle from each protocol, including a
seller that withheld the key and a sender whose escrow was bad").

One market, its agents run in-process (real loopback TLS, real SQLite: ca, bank,
notary and seller running, the buyer acting in sessions as commands do): a contract
signed and one aborted, a certified mail and one sealed to a wrong escrow key (the
receiver gets the notary's void finding), three fair purchases (faultless; a seller
that withholds the key once paid; a seller whose escrow the notary cannot open,
withholding too). Each bundle is written by the command line (``semper contract
export``, ``semper archive export`` of the mail's id or the purchase's idempotency
key) and judged by ``semper dispute check --json``.
"""

from __future__ import annotations

import functools
import json
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from cli_helpers import semper
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import x25519
from market_helpers import config_of, make_market, newer_crl, running

from semper.agents import Agent
from semper.agents.components import _fair_seller
from semper.agents.components._contracts import Contracts
from semper.agents.components._fair_buyer import FairRefundDue, FairShopper
from semper.agents.components._fair_seller import FairSales
from semper.agents.components._mail import CertifiedMail, Unreadable
from semper.agents.components._purchase import Shopper
from semper.agents.roles.seller import Sales
from semper.agents.runtime._identity import utcnow
from semper.services.archive import EvidenceBundle, next_record
from semper.services.certificates import fingerprint, load_certificate, load_crl
from semper.services.commerce import UnknownOrder
from semper.services.disputes import FILE, FileAnswer, FileRequest, verify_verdict
from semper.services.fairexchange import MAIL_DELIVER, MAIL_OFFER_TYPE, prepare
from semper.services.fairexchange._errors import BadPayment
from semper.services.fairexchange._mail import CiphertextWire
from semper.services.statements import Statement
from semper.transport import RemoteError

PAID = "buyer paid"
DELIVERED = "seller delivered goods matching the signed offer's digest"
RELEASED = "seller released the key"
RECEIPTED = "seller issued a receipt"
REFUNDED = "seller refunded the payment"
TEXT = b"the buyer and the seller agree\n"


class AheadClock:
    """The machine's clock, ``ahead_ms`` ahead: a receiver whose deadline has come."""

    def __init__(self) -> None:
        self.ahead_ms = 0

    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000 + self.ahead_ms


@asynccontextmanager
async def agents(market: Path, *ids: str, clocks: dict[str, Any] | None = None
                 ) -> AsyncIterator[dict[str, Agent]]:
    started: dict[str, Agent] = {}
    async with trio.open_nursery() as nursery:
        for agent_id in ids:
            one = Agent(config_of(market, agent_id), clock=(clocks or {}).get(agent_id))

            async def serve(one: Agent = one, *,
                            task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                            ) -> None:
                async with running(one):
                    task_status.started()
                    await trio.sleep_forever()

            await nursery.start(serve)
            started[agent_id] = one
        try:
            yield started
        finally:
            nursery.cancel_scope.cancel()


def _hostile_bodies(order: bytes) -> list[dict[str, Any]]:
    """Bodies that name the order with junk beside it, or fit no schema."""
    return [{}, {"order": order}, {"order": order, "content": "x", "escrow": [1]},
            {"exchange": order, "kind": "fair"},
            {"exchange": order, "kind": "fair", "decision": "release", "subject": order,
             "request": {"type": 1}},
            {"exchange": order, "kind": "fair", "decision": "refund", "payload": b"\n"}]


async def _badly_sealed_mail(sender: Agent, receiver: Agent, clock: AheadClock) -> bytes:
    """A mail whose key the sender sealed to a key the notary does not hold, and never
    revealed: the receiver, at its deadline, gets the notary's void finding."""
    exchange = os.urandom(32)
    body, ciphertext = prepare(
        b"sealed badly\n", exchange=exchange, sender=sender.id, receiver=receiver.id,
        notary="notary", escrow_key=x25519.X25519PrivateKey.generate().public_key(),
        deadline=sender.context.now_ms() + 60_000, key=os.urandom(32), nonce=os.urandom(12))
    offer = sender.context.sign(MAIL_OFFER_TYPE, body.to_body())
    await sender.context.call(receiver.id, MAIL_DELIVER,
                              CiphertextWire(offer=offer, ciphertext=ciphertext))
    clock.ahead_ms = 61_000
    try:
        with pytest.raises(Unreadable) as void:
            await receiver.component(CertifiedMail).read(exchange)
    finally:
        clock.ahead_ms = 0
    assert void.value.detail["state"] == "void"
    return exchange


class _WrongEscrowKey:
    """An escrow key the notary does not hold: the seller's escrow will not open."""

    def public_key(self) -> x25519.X25519PublicKey:
        return x25519.X25519PrivateKey.generate().public_key()


class Trades:
    """The market and what its agents did; ``crl``: a CRL issued after all of it."""

    def __init__(self, folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.folder = make_market(folder)
        self.monkeypatch = monkeypatch
        trio.run(self._trade)
        self.crl = folder / "crl.der"
        self.crl.write_bytes(newer_crl(folder).public_bytes(serialization.Encoding.DER))

    async def _trade(self) -> None:
        # Patched before the seller starts (its handlers are bound then); a flag says
        # when the seller withholds the key and when it seals to a wrong escrow key.
        faults = {"withhold": False, "wrong_escrow": False, "silent": False,
                  "no_reveal": False}
        release, escrow_key = FairSales.release, _fair_seller.notary_escrow_key
        fetch = Sales.fetch

        @functools.wraps(fetch)  # a seller gone once paid: no commerce delivery either
        async def silent(sales: Sales, context: Any, request: Any) -> Any:
            if faults["silent"]:
                raise UnknownOrder("gone", detail={})
            return await fetch(sales, context, request)
        self.monkeypatch.setattr(Sales, "fetch", silent)
        reveal = Contracts.reveal

        @functools.wraps(reveal)  # a responder gone once it committed: no N_R
        async def no_reveal(contracts: Contracts, context: Any, request: Any) -> Any:
            if faults["no_reveal"]:
                raise UnknownOrder("gone", detail={})
            return await reveal(contracts, context, request)
        self.monkeypatch.setattr(Contracts, "reveal", no_reveal)

        @functools.wraps(release)  # keeps what @handles marked on it
        async def withhold(sales: FairSales, request: Any, body: Any) -> Any:
            if faults["withhold"]:
                raise BadPayment("not today", detail={"reason": "unpaid"})
            return await release(sales, request, body)

        async def wrong(*args: Any) -> Any:
            return _WrongEscrowKey() if faults["wrong_escrow"] else await escrow_key(*args)
        self.monkeypatch.setattr(FairSales, "release", withhold)
        self.monkeypatch.setattr(_fair_seller, "notary_escrow_key", wrong)
        clock = AheadClock()
        async with agents(self.folder, "ca", "bank", "notary", "seller", "arbiter",
                          clocks={"seller": clock}) as started:
            await started["seller"].component(Contracts).approve("buyer", TEXT)
            buyer = Agent(config_of(self.folder, "buyer"))
            async with buyer.session():
                self.contract = (await buyer.component(Contracts).sign("seller", TEXT)).exchange
                with pytest.raises(RemoteError) as refused:  # so aborted with the notary
                    await buyer.component(Contracts).sign("seller", b"not approved\n")
                assert refused.value.code == "fairexchange.not_approved"
                faults["no_reveal"] = True
                resolved = await buyer.component(Contracts).sign("seller", TEXT)
                faults["no_reveal"] = False
                assert (resolved.state, resolved.resolved_by) == ("signed", "notary")
                self.resolved = resolved.exchange
                self.aborted = await buyer.database.read(lambda c: c.execute(
                    "SELECT exchange FROM contract_exchanges WHERE state = 'aborted'"
                    ).fetchone()[0])
                mail = await buyer.component(CertifiedMail).send("seller", b"certified\n")
                self.mail = mail.exchange
                self.void_mail = await _badly_sealed_mail(buyer, started["seller"], clock)
                shopper = FairShopper(buyer, notary="notary", wait_ms=5000)
                self.fair = await shopper.buy_fair("seller", "guide-001", "transfer", "fair-1")
                faults["withhold"] = faults["silent"] = True
                self.withheld = await shopper.buy_fair("seller", "map-002", "transfer",
                                                       "fair-2")
                faults["wrong_escrow"] = True
                with pytest.raises(FairRefundDue):
                    await shopper.buy_fair("seller", "song-003", "transfer", "fair-3")
                faults["silent"] = False  # the seller's goods come in clear after all
                with pytest.raises(FairRefundDue):
                    await shopper.buy_fair("seller", "song-003", "transfer", "fair-4")
                plain = await Shopper(buyer).buy("seller", "guide-001", "transfer", "plain-1")
                self.junk = [buyer.evidence.sign(type, {"order": plain.order,
                                                        "exchange": plain.order,
                                                        "kind": "fair"})
                             for type in ("fair.delivery", "fairexchange.decision")]
                order = self.withheld.purchase.order
                bundle = await buyer.archive.export_bundle(order.hex(), crl=buyer.crl,
                                                           root=buyer.credentials.root)
                self.filed = FileAnswer.from_wire(await buyer.request(
                    "arbiter", FILE.service, FILE.name,
                    FileRequest(bundle=bundle.to_bytes()).to_wire()))
                self.hostile = [agent.evidence.sign(type, body)
                                for agent in (buyer, started["seller"], started["notary"])
                                for type in ("fair.delivery", "fairexchange.decision")
                                for body in _hostile_bodies(order)]
        self.monkeypatch.undo()

    def config(self, agent_id: str) -> Path:
        return self.folder / agent_id / "agent.toml"

    def check(self, bundle: Path) -> dict[str, tuple[str, bool | None]]:
        status, out, err = semper("dispute", "check", bundle, "--root",
                                  self.folder / "ca" / "root.pem", "--crl", self.crl, "--json")
        assert status == 0, err
        report = json.loads(out)
        assert report["valid"] is True
        self.reasons = {v["obligation"]: v["reason"] for v in report["verdicts"]}
        return {v["obligation"]: (v["party"], v["met"]) for v in report["verdicts"]}

    def export(self, agent_id: str, transaction: str, out: Path) -> Path:
        status, _, err = semper("archive", "export", "--config", self.config(agent_id),
                                transaction, "-o", out)
        assert status == 0, err
        return out


@pytest.fixture(scope="module")
def trades(tmp_path_factory: pytest.TempPathFactory) -> Any:
    with pytest.MonkeyPatch.context() as monkeypatch:
        yield Trades(tmp_path_factory.mktemp("dispute-fx") / "market", monkeypatch)


@pytest.mark.parametrize("who", ["buyer", "seller"])
def test_a_signed_contracts_bundle(trades: Trades, tmp_path: Path, who: str) -> None:
    bundle = tmp_path / "contract.semper"
    status, _, err = semper("contract", "export", "--config", trades.config(who),
                            trades.contract.hex(), "-o", bundle)
    assert status == 0, err
    assert trades.check(bundle) == {"originator signed the contract": ("buyer", True),
                                    "responder signed the contract": ("seller", True)}


def test_an_aborted_contracts_bundle_faults_nobody(trades: Trades, tmp_path: Path) -> None:
    """The responder refused an unapproved text; the originator holds the notary's
    abort token: neither party is bound, and neither is at fault."""
    bundle = tmp_path / "aborted.semper"
    status, _, err = semper("contract", "export", "--config", trades.config("buyer"),
                            trades.aborted.hex(), "-o", bundle)
    assert status == 0, err
    assert trades.check(bundle) == {"originator signed the contract": ("buyer", None),
                                    "responder signed the contract": ("seller", None)}
    assert "aborted" in trades.reasons["responder signed the contract"]


def test_a_contract_resolved_by_the_notary(trades: Trades, tmp_path: Path) -> None:
    """The responder committed and never revealed N_R: the originator's bundle holds
    the notary's replacement contract, which binds both."""
    bundle = tmp_path / "resolved.semper"
    status, _, err = semper("contract", "export", "--config", trades.config("buyer"),
                            trades.resolved.hex(), "-o", bundle)
    assert status == 0, err
    assert trades.check(bundle) == {"originator signed the contract": ("buyer", True),
                                    "responder signed the contract": ("seller", True)}
    assert "replacement" in trades.reasons["responder signed the contract"]


@pytest.mark.parametrize("who", ["buyer", "seller"])
def test_a_certified_mails_bundle(trades: Trades, tmp_path: Path, who: str) -> None:
    bundle = trades.export(who, trades.mail.hex(), tmp_path / "mail.semper")
    assert trades.check(bundle) == {"receiver received the mail": ("seller", True),
                                    "sender's escrow was good": ("buyer", None)}


def test_a_sender_whose_escrow_was_bad(trades: Trades, tmp_path: Path) -> None:
    """The instance of the Done-when line: the receiver's bundle holds the notary's
    void finding; the receipt is void and the sender's obligation is not met."""
    bundle = trades.export("seller", trades.void_mail.hex(), tmp_path / "void.semper")
    assert trades.check(bundle) == {"receiver received the mail": ("seller", False),
                                    "sender's escrow was good": ("buyer", False)}
    assert "void" in trades.reasons["sender's escrow was good"]


def test_a_faultless_fair_purchases_bundle(trades: Trades, tmp_path: Path) -> None:
    assert trades.fair.resolved_by == "exchange"
    verdicts = trades.check(trades.export("buyer", "fair-1", tmp_path / "fair.semper"))
    assert verdicts == {PAID: ("buyer", True), DELIVERED: ("seller", True),
                        RELEASED: ("seller", None), RECEIPTED: ("seller", True)}


def test_a_seller_that_withheld_the_key(trades: Trades, tmp_path: Path) -> None:
    """The instance of the Done-when line: the seller, gone once paid, never released
    the key nor delivered outright; the buyer paid and got the goods through the
    notary."""
    assert trades.withheld.resolved_by == "notary"
    verdicts = trades.check(trades.export("buyer", "fair-2", tmp_path / "withheld.semper"))
    assert verdicts == {PAID: ("buyer", True), DELIVERED: ("seller", True),
                        RELEASED: ("seller", False), RECEIPTED: ("seller", None)}
    assert "through the notary" in trades.reasons[DELIVERED]


def test_a_seller_whose_escrow_was_bad(trades: Trades, tmp_path: Path) -> None:
    """The notary's refund finding: the seller was paid, its escrow did not give the
    offer's goods, and the refund the finding entitles the buyer to is not shown."""
    verdicts = trades.check(trades.export("buyer", "fair-3", tmp_path / "refund.semper"))
    assert verdicts[PAID] == ("buyer", True)
    assert verdicts[DELIVERED] == ("seller", False)
    assert verdicts[RELEASED] == ("seller", False)
    assert verdicts[REFUNDED] == ("seller", None)
    assert "refund finding" in trades.reasons[DELIVERED]


def test_hostile_statements_never_break_the_fair_checker(trades: Trades, tmp_path: Path
                                                         ) -> None:
    """Fair deliveries and decisions of any shape, signed by the buyer, the seller and
    the notary, beside the withheld purchase's evidence: the same verdicts."""
    path = trades.export("buyer", "fair-2", tmp_path / "withheld.semper")
    bundle = EvidenceBundle.from_bytes(path.read_bytes())
    records, last = list(bundle.records), bundle.records[-1]
    for statement in trades.hostile:
        last = next_record(last, direction="received", peer="seller",
                           transaction=bundle.transaction, statement=statement,
                           recorded_at=last.recorded_at)
        records.append(last)
    certificates = {Statement.from_bytes(r.statement).signer for r in records}
    held = {fingerprint(load_certificate(der)): der for der in bundle.certificates}
    for agent_id in ("notary", "seller", "buyer"):
        for pem in (trades.folder / agent_id).rglob("*.pem"):
            try:
                cert = load_certificate(pem.read_bytes())
            except Exception:  # a key, the root
                continue
            held.setdefault(fingerprint(cert), cert.public_bytes(serialization.Encoding.DER))
    hostile = EvidenceBundle(transaction=bundle.transaction, records=records,
                             certificates=[held[f] for f in certificates if f in held],
                             crl=bundle.crl, root_fingerprint=bundle.root_fingerprint)
    path.write_bytes(hostile.to_bytes())
    verdicts = trades.check(path)
    assert verdicts[PAID] == ("buyer", True) and verdicts[DELIVERED] == ("seller", True)
    assert verdicts[RELEASED] == ("seller", False)


def test_junk_of_fair_types_leaves_a_purchase_a_purchase(trades: Trades, tmp_path: Path
                                                         ) -> None:
    """A buyer's own fair.delivery and decision, fitting no schema, beside a plain
    purchase's evidence: still judged as a commerce purchase, the same verdicts."""
    path = trades.export("buyer", "plain-1", tmp_path / "plain.semper")
    bundle = EvidenceBundle.from_bytes(path.read_bytes())
    records, last = list(bundle.records), bundle.records[-1]
    for statement in trades.junk:
        last = next_record(last, direction="sent", peer="seller",
                           transaction=bundle.transaction, statement=statement,
                           recorded_at=last.recorded_at)
        records.append(last)
    path.write_bytes(EvidenceBundle(
        transaction=bundle.transaction, records=records, certificates=bundle.certificates,
        crl=bundle.crl, root_fingerprint=bundle.root_fingerprint).to_bytes())
    status, out, err = semper("dispute", "check", path, "--root",
                              trades.folder / "ca" / "root.pem", "--crl", trades.crl)
    assert status == 0, err
    assert "(commerce.purchase)" in out
    assert trades.check(path) == {PAID: ("buyer", True), DELIVERED: ("seller", True),
                                  RECEIPTED: ("seller", True)}


def test_the_arbiter_signs_the_withheld_keys_verdicts(trades: Trades) -> None:
    """Filed with the arbiter (dispute.file, no respondent named: the seller, the one
    other party), the verdict it signs says what dispute check says."""
    certificate = load_certificate(trades.filed.certificate)
    root = load_certificate((trades.folder / "ca" / "root.pem").read_bytes())
    crl = load_crl(trades.crl.read_bytes())
    body, identity = verify_verdict(trades.filed.verdict, certificate=certificate, root=root,
                                    crl=crl, now=utcnow())
    assert identity.role == "arbiter" and body.protocol == "fairexchange.fair"
    assert body.case_statement.body["respondent"] == "seller"
    met = {v.obligation: (v.party, v.met) for v in body.verdicts}
    assert met[PAID] == ("buyer", True) and met[DELIVERED] == ("seller", True)
    assert met[RELEASED] == ("seller", False)


def test_a_bad_escrow_beside_goods_delivered_outright(trades: Trades, tmp_path: Path) -> None:
    """Another member of the kind: the seller's escrow was bad, but the commerce part
    then gave the buyer the goods of the offer's digest (the seller's signed delivery,
    checked by the buyer): the refund finding does not make the goods undelivered."""
    verdicts = trades.check(trades.export("buyer", "fair-4", tmp_path / "outright.semper"))
    assert verdicts[DELIVERED] == ("seller", True) and verdicts[RELEASED] == ("seller", False)
    assert verdicts[PAID] == ("buyer", True) and verdicts[RECEIPTED] == ("seller", True)
    assert "escrow was bad" in trades.reasons[DELIVERED]
