"""Disputes: the arbiter's ``dispute.case`` statement and the offline bundle check."""

from __future__ import annotations

import datetime as dt
import hashlib
import os

import pytest
import trio
from market_helpers import make_market, newer_crl, running
from pki import NOW, Market

from semper.agents import Agent, AgentConfig
from semper.agents.components._purchase import Shopper
from semper.services.archive import EvidenceBundle, collect_bundle, next_record
from semper.services.certificates import fingerprint, identity_of, load_certificate, load_crl
from semper.services.commerce import CommerceError
from semper.services.disputes import (
    CASE_TYPE,
    BadCase,
    Case,
    NotArbiter,
    Verdict,
    check_bundle,
    make_case,
    make_verdict,
    register,
    registered,
    verify_case,
    verify_verdict,
)
from semper.services.statements import BadSignature, Statement, WrongType, sign_statement

NOW_MS = int(NOW.timestamp() * 1000)


def _case(signer, **changes):
    fields = {"case": os.urandom(32), "claimant": "buyer1", "respondent": "seller1",
              "bundle": hashlib.sha256(b"bundle").digest(), "filed_ms": NOW_MS}
    fields.update(changes)
    return make_case(**fields, key=signer.key, certificate=signer.cert, nonce=os.urandom(16))


def test_case_made_by_arbiter_verifies_offline(tmp_path):
    market = Market(tmp_path)
    arbiter = market.agent("arbiter", "arbiter")
    statement = _case(arbiter)
    assert statement.type == CASE_TYPE
    again = Statement.from_bytes(statement.to_bytes())
    case, identity = verify_case(again, certificate=arbiter.cert, root=market.ca.certificate,
                                 crl=market.crl, now=NOW + dt.timedelta(seconds=1))
    assert identity.agent_id == "arbiter"
    assert case.claimant == "buyer1" and case.respondent == "seller1"
    assert case.bundle == hashlib.sha256(b"bundle").digest()
    assert Case.from_wire(case.to_wire()) == case


def test_case_signed_by_another_role_is_refused(tmp_path):
    market = Market(tmp_path)
    seller = market.agent("seller1", "seller")
    with pytest.raises(NotArbiter) as info:
        verify_case(_case(seller), certificate=seller.cert, root=market.ca.certificate,
                    crl=market.crl, now=NOW)
    assert info.value.code == "dispute.not_arbiter"


def test_case_body_checked(tmp_path):
    market = Market(tmp_path)
    arbiter = market.agent("arbiter", "arbiter")
    with pytest.raises(BadCase) as info:
        _case(arbiter, bundle=b"short")
    assert info.value.detail["field"] == "bundle"
    with pytest.raises(BadCase):
        _case(arbiter, claimant="Not An Id")
    with pytest.raises(BadCase):
        Case.from_wire({"case": os.urandom(32)})


def test_case_altered_or_of_another_type_is_refused(tmp_path):
    market = Market(tmp_path)
    arbiter = market.agent("arbiter", "arbiter")
    statement = _case(arbiter)
    wire = statement.to_wire()
    wire["body"] = {**wire["body"], "respondent": "someone"}
    with pytest.raises(BadSignature):
        verify_case(Statement.from_wire(wire), certificate=arbiter.cert,
                    root=market.ca.certificate, crl=market.crl, now=NOW)
    other = sign_statement(
        "dispute.other", statement.body, key=arbiter.key, certificate=arbiter.cert,
        now_ms=NOW_MS, nonce=os.urandom(16))
    with pytest.raises(WrongType):
        verify_case(other, certificate=arbiter.cert, root=market.ca.certificate,
                    crl=market.crl, now=NOW)


# -- a real purchase's bundle --------------------------------------------------------

PAID = "buyer paid"
DELIVERED = "seller delivered goods matching the signed offer's digest"
RECEIPTED = "seller issued a receipt"
REFUNDED = "seller refunded the payment"


class Trade:
    """One market, one purchase (and one refunded purchase), their bundles exported
    by the buyer and the seller, and statements the seller signed for forgeries."""

    def __init__(self, folder):
        self.folder = make_market(folder)
        self.root = load_certificate((folder / "ca" / "root.pem").read_bytes())
        trio.run(self._trade)
        self.crl = newer_crl(folder)

    async def _trade(self):
        agents = {name: Agent(AgentConfig.load(self.folder / name / "agent.toml"))
                  for name in ("bank", "seller", "buyer")}
        async with running(agents["bank"]), running(agents["seller"]), \
                running(agents["buyer"]):
            buyer, seller = agents["buyer"], agents["seller"]
            shopper = Shopper(buyer)
            bought = await shopper.buy("seller", "guide-001", "transfer", "k-1")
            self.order = bought.order
            await shopper.buy("seller", "guide-001", "transfer", "k-2")
            refunded = await shopper.refund("k-2")
            self.refunded_order = refunded.order
            by_cheque = await shopper.buy("seller", "guide-001", "cheque", "k-3")
            self.bundles = {}
            for who, agent in (("buyer", buyer), ("seller", seller)):
                for name, order in (("done", bought.order), ("refunded", refunded.order),
                                    ("cheque", by_cheque.order)):
                    bundle = await agent.archive.export_bundle(
                        order.hex(), crl=agent.crl, root=agent.credentials.root)
                    self.bundles[who, name] = bundle
            bank = agents["bank"]
            self.hostile = [  # signed by the market's own agents, with bodies of any shape
                bank.evidence.sign("payment.refund_confirmation", {
                    "original": [1, 2], "payer": "seller", "payee": "buyer",
                    "amount": {"currency": "EUR"}}),
                bank.evidence.sign("payment.transfer_confirmation", {
                    "payer": "x" * 5000, "payee": 5, "amount": [], "reference": bought.order}),
                bank.evidence.sign("payment.transfer_confirmation", {
                    "payer": "buyer", "payee": "seller", "reference": bought.order,
                    "amount": {"currency": "EUR", "minor_units": 1}}),
                seller.evidence.sign("commerce.delivery", {"order": 5}),
                seller.evidence.sign("commerce.receipt", {"weird": [1]}),
                seller.evidence.sign("commerce.refund_note", {"order": bought.order}),
            ]
            self.forged_delivery = seller.evidence.sign("commerce.delivery", {
                "order": bought.order, "content_digest": hashlib.sha256(b"other").digest(),
                "size": 5})

    def check(self, bundle, **kw):
        data = bundle if type(bundle) is bytes else bundle.to_bytes()
        return check_bundle(data, self.root, self.crl, **kw)


@pytest.fixture(scope="module")
def trade(tmp_path_factory):
    return Trade(tmp_path_factory.mktemp("disputes") / "m")


def _met(report):
    return {v.obligation: (v.party, v.met) for v in report.verdicts}


def test_purchase_bundle_verdicts_from_either_party(trade):
    assert "commerce.purchase" in registered()
    for who in ("buyer", "seller"):
        report = trade.check(trade.bundles[who, "done"])
        assert report.valid, report.error
        assert report.protocol == "commerce.purchase"
        assert _met(report) == {PAID: ("buyer", True), DELIVERED: ("seller", True),
                                RECEIPTED: ("seller", True)}, who
        assert all(v.reason for v in report.verdicts)
        assert report.to_json()["valid"] is True
        assert [Verdict.from_wire(v) for v in report.to_json()["verdicts"]] == list(
            report.verdicts)


def test_a_bundle_without_the_sellers_records_carries_its_certificate_for_the_offer(trade):
    """The buyer's bundle of a purchase whose seller signed nothing in it (it vanished
    inside payment.accept, once our transfer moved): the order quotes the seller's
    offer whole, which is checked with the seller's certificate. The bundle carries
    the certificates of quoted signers too (the archive holds the seller's), so the
    offer verifies and the buyer's payment is judged on its terms."""
    full = trade.bundles["buyer", "done"]
    seller = fingerprint(load_certificate(next(
        der for der in full.certificates
        if identity_of(load_certificate(der)).agent_id == "seller")))
    records = [r for r in full.records
               if Statement.from_bytes(r.statement).signer != seller]
    assert len(records) < len(full.records)
    bundle = collect_bundle(records, transaction=full.transaction,
                            certificates=[load_certificate(d) for d in full.certificates],
                            crl=load_crl(full.crl), root=trade.root)
    assert seller in {fingerprint(load_certificate(d)) for d in bundle.certificates}
    report = trade.check(bundle)
    assert report.valid, report.error
    assert all("quoted offer" not in v.reason for v in report.verdicts), report.verdicts
    assert _met(report)[PAID] == ("buyer", True)


def test_refunded_purchase_has_a_refund_verdict(trade):
    report = trade.check(trade.bundles["seller", "refunded"])
    assert report.valid, report.error
    met = _met(report)
    assert met[REFUNDED] == ("seller", True)
    assert met[PAID] == ("buyer", True)


def test_a_cheque_paid_purchase_is_paid_through_the_cheque_it_names(trade):
    """A cleared cheque names the cheque, not the order: the payment is the buyer's
    cheque for the order, cleared by the bank."""
    for who in ("buyer", "seller"):
        report = trade.check(trade.bundles[who, "cheque"])
        assert report.valid, report.error
        verdict = next(v for v in report.verdicts if v.obligation == PAID)
        assert verdict.met is True and "payment.cheque_cleared" in verdict.reason, who


def _replaced(bundle, index, statement):
    """``bundle`` with record ``index`` holding ``statement`` instead, rehashed (as a
    party would write it into its own archive)."""
    old = bundle.records[index]
    new = next_record(None, direction=old.direction, peer=old.peer,
                      transaction=old.transaction, statement=statement,
                      recorded_at=old.recorded_at)
    new = type(old)(seq=old.seq, prev=old.prev, direction=new.direction, peer=new.peer,
                    transaction=new.transaction, statement=new.statement,
                    recorded_at=new.recorded_at)
    return EvidenceBundle(transaction=bundle.transaction,
                          records=[*bundle.records[:index], new, *bundle.records[index + 1:]],
                          certificates=bundle.certificates, crl=bundle.crl,
                          root_fingerprint=bundle.root_fingerprint)


def _index(bundle, statement_type):
    return next(i for i, r in enumerate(bundle.records)
                if Statement.from_bytes(r.statement).type == statement_type)


def test_goods_not_matching_the_offer_are_not_a_delivery(trade):
    bundle = trade.bundles["buyer", "done"]
    mismatched = _replaced(bundle, _index(bundle, "commerce.delivery"), trade.forged_delivery)
    report = trade.check(mismatched)
    assert report.valid, report.error
    verdict = next(v for v in report.verdicts if v.obligation == DELIVERED)
    assert (verdict.party, verdict.met) == ("seller", False)
    assert hashlib.sha256(b"other").digest().hex()[:16] in verdict.reason
    assert _met(report)[PAID] == ("buyer", True)


def test_signed_statements_of_any_shape_never_break_the_checker(trade, tmp_path):
    """The parties' own keys can sign any body: the checker reads what fits and judges
    the rest as no evidence, and the verdicts always fit a dispute.verdict."""
    bundle = trade.bundles["buyer", "done"]
    last = bundle.records[-1]
    extra = []
    for statement in trade.hostile:
        record = next_record(last, direction="received", peer="seller",
                             transaction=bundle.transaction, statement=statement,
                             recorded_at=last.recorded_at)
        extra.append(record)
        last = record
    hostile = EvidenceBundle(transaction=bundle.transaction, records=[*bundle.records, *extra],
                             certificates=bundle.certificates, crl=bundle.crl,
                             root_fingerprint=bundle.root_fingerprint)
    report = trade.check(hostile)
    assert report.valid, report.error
    met = _met(report)
    assert met[PAID] == ("buyer", True) and met[DELIVERED] == ("seller", True)
    assert REFUNDED not in met  # no refund note nor bank confirmation that fits
    market = Market(tmp_path)
    arbiter = market.agent("arbiter", "arbiter")
    case = _case(arbiter)
    verdict = make_verdict(case_statement=case, transaction=report.transaction,
                           protocol=report.protocol, verdicts=report.verdicts, key=arbiter.key,
                           certificate=arbiter.cert, now_ms=NOW_MS, nonce=os.urandom(16))
    long = [Verdict("o" * 300, "buyer", None, "r" * 5000)]
    clipped = make_verdict(case_statement=case, transaction="t", protocol="a.b",
                           verdicts=long, key=arbiter.key, certificate=arbiter.cert,
                           now_ms=NOW_MS, nonce=os.urandom(16))
    assert len(clipped.body["verdicts"][0]["reason"]) == 2048
    body, _ = verify_verdict(verdict, certificate=arbiter.cert, root=market.ca.certificate,
                             crl=market.crl, now=NOW + dt.timedelta(seconds=1))
    assert body.verdicts == report.verdicts


def test_tampered_bundle_is_refused(trade):
    bundle = trade.bundles["buyer", "done"]
    data = bytearray(bundle.to_bytes())
    record = bundle.records[_index(bundle, "commerce.receipt")]
    at = bytes(data).index(record.statement) + len(record.statement) - 70
    data[at] ^= 1  # a byte of the receipt's signature
    report = trade.check(bytes(data))
    assert not report.valid and report.verdicts == ()
    assert report.error.code in ("archive.record_tampered", "archive.malformed")
    # a record's statement swapped and rehashed in place: its signature fails
    wire = Statement.from_bytes(record.statement).to_wire()
    wire["body"] = {**wire["body"], "buyer": "mallory"}
    forged = Statement.from_wire(wire)
    report = trade.check(_replaced(bundle, _index(bundle, "commerce.receipt"), forged))
    assert not report.valid
    assert report.error.code == "archive.invalid_evidence"
    assert report.error.detail["cause"] == "statement.bad_signature"


def test_bundle_checked_against_another_root_is_refused(trade, tmp_path):
    other = Market(tmp_path)
    report = check_bundle(trade.bundles["buyer", "done"].to_bytes(), other.ca.certificate,
                          other.crl)
    assert not report.valid and report.error.code == "archive.wrong_root"


def test_not_a_bundle_is_refused(trade):
    for data in (b"", b"not a bundle", b"\x80", bytes(1000)):
        report = trade.check(data)
        assert not report.valid and report.error.code == "archive.malformed"


def test_bundle_with_a_stale_crl_is_refused_until_a_newer_one_is_given(trade):
    report = check_bundle(trade.bundles["buyer", "done"].to_bytes(), trade.root)
    assert not report.valid and report.error.code == "archive.crl_too_old"


async def _dishonest_purchase(folder, monkeypatch, alter):
    """A purchase from a seller whose ``commerce.fetch`` answer is ``alter``ed; the
    buyer's refusal, its bundle of the order, and the same after a retry."""
    from semper.agents.roles.seller import Sales

    honest_fetch = Sales.fetch

    async def altered(self, context, request):
        return alter(self, request, await honest_fetch(self, context, request))

    monkeypatch.setattr(Sales, "fetch", altered)
    make_market(folder)
    agents = {name: Agent(AgentConfig.load(folder / name / "agent.toml"))
              for name in ("bank", "seller", "buyer")}
    with trio.fail_after(30):
        async with running(agents["bank"]), running(agents["seller"]), \
                running(agents["buyer"]):
            buyer = agents["buyer"]
            with pytest.raises(CommerceError) as info:
                await Shopper(buyer).buy("seller", "guide-001", "transfer", "k-1")
            orders = [r for r in await buyer.archive.records()
                      if Statement.from_bytes(r.statement).type == "commerce.order"]
            transaction = orders[0].transaction
            bundle = await buyer.archive.export_bundle(transaction, crl=buyer.crl,
                                                       root=buyer.credentials.root)
            with pytest.raises(CommerceError):  # a retry of the same purchase
                await Shopper(buyer).buy("seller", "guide-001", "transfer", "k-1")
            again = await buyer.archive.export_bundle(transaction, crl=buyer.crl,
                                                      root=buyer.credentials.root)
    root = load_certificate((folder / "ca" / "root.pem").read_bytes())
    report = check_bundle(bundle.to_bytes(), root, newer_crl(folder))
    assert report.valid, report.error
    assert len(again.records) == len(bundle.records)  # the evidence is kept once
    return info.value.code, _met(report)


async def test_a_seller_delivering_other_goods_is_judged_from_the_buyers_own_bundle(
        tmp_path, monkeypatch):
    """The instance: a seller whose delivery names other goods than its offer (and
    sends them). The buyer refuses them (commerce.bad_delivery) and now keeps the
    seller's signed delivery as evidence, so its own bundle shows the delivery
    obligation not met; it kept nothing, and the bundle could not tell (met null)."""
    other = b"not the field guide"

    def other_goods(sales, request, answer):
        delivery = sales.context.sign("commerce.delivery", {
            "order": request.order, "content_digest": hashlib.sha256(other).digest(),
            "size": len(other)})
        return {**answer, "delivery": delivery.to_wire(), "goods": other}

    code, met = await _dishonest_purchase(tmp_path / "m", monkeypatch, other_goods)
    assert code == "commerce.bad_delivery"
    assert met[DELIVERED] == ("seller", False)
    assert met[PAID] == ("buyer", True)
    assert met[RECEIPTED] == ("seller", None)


async def test_a_seller_signing_a_wrong_receipt_is_judged_from_the_buyers_own_bundle(
        tmp_path, monkeypatch):
    """Another member of the kind (evidence the buyer refused, so its bundle lacked
    it): a receipt for another amount. The buyer refuses it (commerce.bad_receipt) and
    keeps it, with the delivery it had checked: receipt not met, delivery met."""

    def wrong_receipt(sales, request, answer):
        body = {**answer["receipt"]["body"], "amount": {"currency": "EUR", "minor_units": 1}}
        return {**answer, "receipt": sales.context.sign("commerce.receipt", body).to_wire()}

    code, met = await _dishonest_purchase(tmp_path / "m", monkeypatch, wrong_receipt)
    assert code == "commerce.bad_receipt"
    assert met[RECEIPTED] == ("seller", False)
    assert met[DELIVERED] == ("seller", True)
    assert met[PAID] == ("buyer", True)


def test_the_checker_registered_last_is_asked_first(trade):
    """A protocol built on a purchase's order (a fair purchase) registers after the
    purchase's checker and judges its bundles; a checker that declines (None) lets
    the next one look."""
    from semper.services.disputes import _check

    seen = []

    def declines(evidence):
        seen.append("declines")
        return None

    def claims(evidence):
        seen.append("claims")
        return [Verdict("test obligation", "buyer", None, "a test checker")]

    saved = dict(_check._REGISTRY)
    try:
        register("test.declines", declines)
        report = trade.check(trade.bundles["buyer", "done"])
        assert report.protocol == "commerce.purchase" and seen == ["declines"]
        register("test.claims", claims)
        report = trade.check(trade.bundles["buyer", "done"])
        assert report.protocol == "test.claims" and seen == ["declines", "claims"]
        order = list(registered())
        assert order[:2] == ["test.claims", "test.declines"] and order[-1] == "commerce.purchase"
    finally:
        _check._REGISTRY.clear()
        _check._REGISTRY.update(saved)
