"""Dispute checkers of contract signing, certified mail and fair purchase
(services/disputes/_contract.py, _mail.py, _fair.py; protocol.md 12.2).

Bundles built in-process from statements the services make (the test PKI, the
notary's book, the escrow), so that every verdict, a bad escrow and a notary that
decided twice among them, is one fast case; the agents' own bundles, exported and
checked through the command line, are in tests/test_cli_dispute_fairexchange.py.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import semper
from cryptography.hazmat.primitives.asymmetric import x25519
from cryptography.hazmat.primitives.serialization import Encoding
from pki import NOW, Market

from semper.services.archive import collect_bundle, next_record
from semper.services.certificates import issue_crl
from semper.services.disputes import CONTRACT, MAIL, check_bundle, make_case, make_verdict
from semper.services.fairexchange import (
    ABORT_REQUEST_TYPE,
    M1,
    M1_TYPE,
    M2,
    M2_TYPE,
    MAIL_OFFER_TYPE,
    MAIL_RECEIPT_TYPE,
    RESOLVE_REQUEST_TYPE,
    SECRETS_TYPE,
    AbortRequest,
    MailReceipt,
    NotaryBook,
    ResolveRequest,
    Secrets,
    close_mail,
    prepare,
    recover_mail,
    secret_commit,
)
from semper.services.fairexchange._mail import CloseMailWire, RecoverMailWire
from semper.services.statements import Statement, sign_statement, verify_statement

T0 = int(NOW.timestamp() * 1000) + 1000  # statements' time; the CRL is issued after

ORIGINATOR_SIGNED = "originator signed the contract"
RESPONDER_SIGNED = "responder signed the contract"
RECEIVED = "receiver received the mail"
ESCROW_GOOD = "sender's escrow was good"


class Parties:
    """A market with alice (buyer), bob (seller) and the notary; a notary book."""

    def __init__(self, folder: Any) -> None:
        self.market = Market(folder)
        self.agents = {name: self.market.agent(name, role) for name, role in
                       (("alice", "buyer"), ("bob", "seller"), ("notary", "notary"),
                        ("carol", "buyer"))}
        self.market.crl = issue_crl(self.market.ca, [], now=NOW + dt.timedelta(seconds=120),
                                    number=2)
        self.book = NotaryBook(sign=self.signer("notary"), notary="notary")
        self.escrow = x25519.X25519PrivateKey.generate()

    def signer(self, name: str) -> Any:
        agent = self.agents[name]
        return lambda type, body, now_ms: sign_statement(
            type, body, key=agent.key, certificate=agent.cert, now_ms=now_ms,
            nonce=os.urandom(16))

    def sign(self, name: str, type: str, body: Any) -> Statement:
        return self.signer(name)(type, body.to_body(), T0)

    def verify(self, statement: Statement, *, expected_type: str, expected_signer: str) -> None:
        verify_statement(statement, certificate=self.agents[expected_signer].cert,
                         root=self.market.ca.certificate, crl=self.market.crl,
                         now=NOW + dt.timedelta(seconds=130), expected_type=expected_type,
                         expected_signer=expected_signer)

    def bundle(self, transaction: str, statements: list[Statement],
               without: tuple[str, ...] = ()) -> bytes:
        """The bundle an archive holding ``statements`` and every agent's certificate
        but ``without``'s exports."""
        records, last = [], None
        for statement in statements:
            last = next_record(last, direction="received", peer="bob", transaction=transaction,
                               statement=statement, recorded_at=T0 + 1)
            records.append(last)
        return collect_bundle(records, transaction=transaction,
                              certificates=[a.cert for name, a in self.agents.items()
                                            if name not in without],
                              crl=self.market.crl, root=self.market.ca.certificate).to_bytes()

    def check(self, transaction: str, statements: list[Statement],
              without: tuple[str, ...] = ()) -> Any:
        report = check_bundle(self.bundle(transaction, statements, without),
                              self.market.ca.certificate,
                              now=NOW + dt.timedelta(seconds=130))
        assert report.valid, report.error
        return report


def met(report: Any) -> dict[str, tuple[str, bool | None]]:
    return {v.obligation: (v.party, v.met) for v in report.verdicts}


def reason(report: Any, obligation: str) -> str:
    return next(v.reason for v in report.verdicts if v.obligation == obligation)


@pytest.fixture
def parties(tmp_path: Any) -> Parties:
    return Parties(tmp_path)


# -- contracts ----------------------------------------------------------------------------

class Contract:
    """One exchange between alice (originator) and bob (responder): m1, m2, the
    secrets, and the notary's abort and resolve decisions on demand."""

    def __init__(self, parties: Parties, text: bytes = b"we agree\n") -> None:
        self.parties = parties
        self.exchange = os.urandom(32)
        self.n_o, self.n_r = os.urandom(32), os.urandom(32)
        self.m1 = parties.sign("alice", M1_TYPE, M1(
            exchange=self.exchange, originator="alice", responder="bob", notary="notary",
            text=hashlib.sha256(text).digest(), commit=secret_commit(self.n_o)))
        self.m2 = parties.sign("bob", M2_TYPE, M2(exchange=self.exchange, m1=self.m1.digest,
                                                  commit=secret_commit(self.n_r)))

    @property
    def txn(self) -> str:
        return self.exchange.hex()

    def secrets(self, n_r: bytes | None = None) -> Statement:
        return self.parties.sign("alice", SECRETS_TYPE, Secrets(
            exchange=self.exchange, m1=self.m1.digest, m2=self.m2.digest, secret_o=self.n_o,
            secret_r=n_r or self.n_r))

    def abort(self, book: NotaryBook | None = None) -> Statement:
        request = self.parties.sign("alice", ABORT_REQUEST_TYPE,
                                    AbortRequest(exchange=self.exchange, m1=self.m1))
        return (book or self.parties.book).decide(
            self.exchange, "contract", subject=self.m1.digest, decision="abort",
            request=request, now_ms=T0, initiator="alice").statement

    def resolve(self, book: NotaryBook | None = None) -> Statement:
        request = self.parties.sign("bob", RESOLVE_REQUEST_TYPE, ResolveRequest(
            exchange=self.exchange, m1=self.m1, m2=self.m2))
        return (book or self.parties.book).decide(
            self.exchange, "contract", subject=self.m1.digest, decision="resolve",
            request=request, now_ms=T0, initiator="alice").statement


def test_a_standard_contract_binds_both(parties: Parties) -> None:
    contract = Contract(parties)
    report = parties.check(contract.txn, [contract.m1, contract.m2, contract.secrets()])
    assert report.protocol == CONTRACT
    assert met(report) == {ORIGINATOR_SIGNED: ("alice", True), RESPONDER_SIGNED: ("bob", True)}
    assert "N_O" in reason(report, ORIGINATOR_SIGNED) and "standard" in reason(
        report, RESPONDER_SIGNED)


def test_a_replacement_contract_binds_both(parties: Parties) -> None:
    contract = Contract(parties)
    report = parties.check(contract.txn, [contract.m1, contract.m2, contract.resolve()])
    assert met(report) == {ORIGINATOR_SIGNED: ("alice", True), RESPONDER_SIGNED: ("bob", True)}
    assert "replacement" in reason(report, ORIGINATOR_SIGNED)


def test_a_replacement_whose_m2_is_no_record_binds_both(parties: Parties,
                                                         tmp_path: Path) -> None:
    """The originator never received m2 (the responder resolved meanwhile): its bundle
    holds m1 and the notary's replacement contract, which quotes m2, and no record of
    the responder. The bundle carries the certificates of quoted signers too (the
    archive keeps them), so ``semper dispute check`` verifies the quote: met."""
    contract = Contract(parties)
    bundle = tmp_path / "resolved.semper"
    bundle.write_bytes(parties.bundle(contract.txn, [contract.m1, contract.resolve()]))
    root = tmp_path / "root.pem"
    root.write_bytes(parties.market.ca.certificate.public_bytes(Encoding.PEM))
    status, out, err = semper("dispute", "check", bundle, "--root", root, "--json")
    assert status == 0, err
    report = json.loads(out)
    assert report["valid"] is True
    assert {v["obligation"]: (v["party"], v["met"]) for v in report["verdicts"]} == {
        ORIGINATOR_SIGNED: ("alice", True), RESPONDER_SIGNED: ("bob", True)}
    assert all("replacement" in v["reason"] for v in report["verdicts"])


def test_a_replacement_whose_responder_the_bundle_cannot_vouch_for_cannot_tell(
        parties: Parties) -> None:
    """The quoted m2 is checked with the responder's certificate from the bundle; an
    archive that never held the responder's certificate gives a bundle without it,
    and the checker says so instead of trusting the quote."""
    contract = Contract(parties)
    report = parties.check(contract.txn, [contract.m1, contract.resolve()],
                           without=("bob",))
    assert met(report) == {ORIGINATOR_SIGNED: ("alice", None), RESPONDER_SIGNED: ("bob", None)}
    assert "left out" in reason(report, RESPONDER_SIGNED)


def test_an_abort_token_alone_faults_nobody(parties: Parties) -> None:
    """Neither party is bound through the notary, and an abort token never proves that
    no contract exists: met is None for both, never False."""
    contract = Contract(parties)
    report = parties.check(contract.txn, [contract.m1, contract.abort()])
    assert met(report) == {ORIGINATOR_SIGNED: ("alice", None), RESPONDER_SIGNED: ("bob", None)}
    assert "aborted" in reason(report, RESPONDER_SIGNED)


def test_a_standard_contract_wins_over_an_abort_token(parties: Parties) -> None:
    contract = Contract(parties)
    report = parties.check(contract.txn, [contract.m1, contract.m2, contract.abort(),
                                          contract.secrets()])
    assert met(report) == {ORIGINATOR_SIGNED: ("alice", True), RESPONDER_SIGNED: ("bob", True)}


def test_commitments_alone_cannot_tell(parties: Parties) -> None:
    contract = Contract(parties)
    report = parties.check(contract.txn, [contract.m1, contract.m2])
    assert met(report) == {ORIGINATOR_SIGNED: ("alice", None), RESPONDER_SIGNED: ("bob", None)}


def test_secrets_that_do_not_open_the_commitments_are_left_out(parties: Parties) -> None:
    contract = Contract(parties)
    report = parties.check(contract.txn, [contract.m1, contract.m2,
                                          contract.secrets(n_r=os.urandom(32))])
    assert met(report) == {ORIGINATOR_SIGNED: ("alice", None), RESPONDER_SIGNED: ("bob", None)}
    assert "fairexchange.bad_secret" in reason(report, ORIGINATOR_SIGNED)


def test_a_notary_that_decided_twice_is_named(parties: Parties) -> None:
    """A resolve from one book and an abort from another (the notary's chain forked):
    the contract binds (rule 1), and the reasons say the notary cheated."""
    contract = Contract(parties)
    other = NotaryBook(sign=parties.signer("notary"), notary="notary")
    report = parties.check(contract.txn, [contract.m1, contract.m2, contract.resolve(),
                                          contract.abort(other)])
    assert met(report) == {ORIGINATOR_SIGNED: ("alice", True), RESPONDER_SIGNED: ("bob", True)}
    assert "decided twice" in reason(report, ORIGINATOR_SIGNED)


def test_another_initiators_exchange_with_the_same_id_is_no_evidence(
        parties: Parties) -> None:
    """Carol signs an m1 with alice's exchange id (it was on the wire) and has the
    notary resolve it with bob: an exchange is an id of one initiator (protocol.md
    10.1), so carol's replacement contract says nothing about alice's, even in
    alice's bundle (the rule alone, keyed by exchange id, would say signed)."""
    contract = Contract(parties)
    carol_m1 = parties.sign("carol", M1_TYPE, M1(
        exchange=contract.exchange, originator="carol", responder="bob", notary="notary",
        text=hashlib.sha256(b"other\n").digest(), commit=secret_commit(os.urandom(32))))
    carol_m2 = parties.sign("bob", M2_TYPE, M2(exchange=contract.exchange, m1=carol_m1.digest,
                                               commit=secret_commit(os.urandom(32))))
    request = parties.sign("carol", RESOLVE_REQUEST_TYPE, ResolveRequest(
        exchange=contract.exchange, m1=carol_m1, m2=carol_m2))
    carols = parties.book.decide(contract.exchange, "contract", subject=carol_m1.digest,
                                 decision="resolve", request=request, now_ms=T0,
                                 initiator="carol").statement
    report = parties.check(contract.txn, [contract.m1, contract.m2, carol_m1, carol_m2, carols])
    assert met(report) == {ORIGINATOR_SIGNED: ("alice", None), RESPONDER_SIGNED: ("bob", None)}
    assert "another initiator" in reason(report, ORIGINATOR_SIGNED)


def test_another_exchanges_statements_are_not_a_contract_bundle(parties: Parties) -> None:
    contract = Contract(parties)
    report = parties.check("f" * 64, [contract.m1, contract.m2, contract.secrets()])
    assert report.protocol is None and report.verdicts == ()


# -- certified mail ---------------------------------------------------------------------

class Mail:
    """A mail from alice to bob through the notary; ``escrow`` another key than the
    notary's makes a bad escrow."""

    def __init__(self, parties: Parties, *, bad_escrow: bool = False) -> None:
        self.parties = parties
        self.exchange = os.urandom(32)
        key = x25519.X25519PrivateKey.generate() if bad_escrow else parties.escrow
        body, self.ciphertext = prepare(
            b"certified\n", exchange=self.exchange, sender="alice", receiver="bob",
            notary="notary", escrow_key=key.public_key(), deadline=T0 + 60_000,
            key=os.urandom(32), nonce=os.urandom(12))
        self.offer = parties.sign("alice", MAIL_OFFER_TYPE, body)
        self.receipt = parties.sign("bob", MAIL_RECEIPT_TYPE, MailReceipt.for_offer(self.offer))

    @property
    def txn(self) -> str:
        return self.exchange.hex()

    def recover(self) -> Statement:
        return recover_mail(self.parties.book, RecoverMailWire(
            offer=self.offer, receipt=self.receipt, ciphertext=self.ciphertext),
            requester="bob", private_keys=[self.parties.escrow], verify=self.parties.verify,
            now_ms=T0 + 61_000).statement

    def close(self) -> Statement:
        return close_mail(self.parties.book, CloseMailWire(offer=self.offer), requester="alice",
                          verify=self.parties.verify, now_ms=T0 + 61_000).statement


def test_a_receipt_proves_the_receiver_received_the_mail(parties: Parties) -> None:
    mail = Mail(parties)
    report = parties.check(mail.txn, [mail.offer, mail.receipt])
    assert report.protocol == MAIL
    assert met(report) == {RECEIVED: ("bob", True), ESCROW_GOOD: ("alice", None)}


def test_the_notarys_release_proves_receipt_and_a_good_escrow(parties: Parties) -> None:
    mail = Mail(parties)
    report = parties.check(mail.txn, [mail.offer, mail.receipt, mail.recover()])
    assert met(report) == {RECEIVED: ("bob", True), ESCROW_GOOD: ("alice", True)}
    assert "released" in reason(report, RECEIVED)


def test_a_bad_escrow_voids_the_receipt(parties: Parties) -> None:
    """The instance of the Done-when line: the sender's escrow was bad, the notary's
    void finding voids the receipt; the sender's obligation is not met."""
    mail = Mail(parties, bad_escrow=True)
    decision = mail.recover()
    assert decision.body["decision"] == "void"
    for held in ([mail.offer, mail.receipt, decision], [mail.offer, decision]):
        report = parties.check(mail.txn, held)
        assert met(report) == {RECEIVED: ("bob", False), ESCROW_GOOD: ("alice", False)}
        assert "void" in reason(report, RECEIVED) and "void" in reason(report, ESCROW_GOOD)


def test_an_abort_voids_the_receipt(parties: Parties) -> None:
    mail = Mail(parties)
    report = parties.check(mail.txn, [mail.offer, mail.receipt, mail.close()])
    assert met(report) == {RECEIVED: ("bob", False), ESCROW_GOOD: ("alice", None)}


def test_an_offer_alone_cannot_tell(parties: Parties) -> None:
    mail = Mail(parties)
    report = parties.check(mail.txn, [mail.offer])
    assert met(report) == {RECEIVED: ("bob", None), ESCROW_GOOD: ("alice", None)}


def test_another_mails_receipt_and_decision_are_left_out(parties: Parties) -> None:
    """A receipt and a release of another mail (same parties) prove nothing here."""
    mail, other = Mail(parties), Mail(parties)
    report = parties.check(mail.txn, [mail.offer, other.receipt, other.offer])
    assert met(report)[RECEIVED] == ("bob", None)
    assert "left out" in reason(report, RECEIVED)


# -- hostile bundles: signed statements of any shape -------------------------------------

def _fits_a_verdict(parties: Parties, report: Any) -> None:
    """The arbiter can sign these verdicts (reasons printable, parties agent ids)."""
    arbiter = parties.market.agent("arbiter", "arbiter")
    case = make_case(case=os.urandom(32), claimant="alice", respondent="bob",
                     bundle=os.urandom(32), filed_ms=T0, key=arbiter.key,
                     certificate=arbiter.cert, nonce=os.urandom(16))
    make_verdict(case_statement=case, transaction=report.transaction, protocol=report.protocol,
                 verdicts=report.verdicts, key=arbiter.key, certificate=arbiter.cert,
                 now_ms=T0, nonce=os.urandom(16))


def _hostile(parties: Parties, exchange: bytes) -> list[Statement]:
    """Statements of every type the checkers read, by the parties' own keys, with
    bodies that fit no schema (or name this exchange with junk beside it)."""
    bodies: list[dict[str, Any]] = [
        {}, {"exchange": exchange}, {"exchange": [1, 2]}, {"exchange": exchange, "kind": 7},
        {"exchange": exchange, "kind": "contract", "decision": "resolve", "request": "x"},
        {"exchange": exchange, "kind": "mail", "decision": "void", "payload": b"\n"},
        {"exchange": exchange, "kind": "fair", "decision": "release", "subject": exchange},
        {"order": exchange, "m1": b"short", "m2": None, "offer": {"a": 1}},
    ]
    found = []
    for name in ("alice", "bob", "notary"):
        for type in (M1_TYPE, M2_TYPE, SECRETS_TYPE, ABORT_REQUEST_TYPE, RESOLVE_REQUEST_TYPE,
                     "fairexchange.decision", MAIL_OFFER_TYPE, MAIL_RECEIPT_TYPE,
                     "fair.delivery", "commerce.order"):
            found += [parties.signer(name)(type, body, T0) for body in bodies]
    return found


def test_hostile_statements_never_break_the_contract_checker(parties: Parties) -> None:
    contract = Contract(parties)
    held = [contract.m1, contract.m2, contract.secrets()]
    report = parties.check(contract.txn, [*held, *_hostile(parties, contract.exchange)])
    assert met(report) == {ORIGINATOR_SIGNED: ("alice", True), RESPONDER_SIGNED: ("bob", True)}
    _fits_a_verdict(parties, report)


def test_hostile_statements_never_break_the_mail_checker(parties: Parties) -> None:
    mail = Mail(parties)
    report = parties.check(mail.txn, [mail.offer, mail.receipt,
                                      *_hostile(parties, mail.exchange)])
    assert met(report) == {RECEIVED: ("bob", True), ESCROW_GOOD: ("alice", None)}
    _fits_a_verdict(parties, report)


def test_a_findings_text_is_quoted_printable(parties: Parties) -> None:
    """The instance's kind, another member: a reason quoting a signed body (the
    notary's void finding, any bytes) must still fit a dispute.verdict."""
    mail = Mail(parties)
    void = parties.book.decide(mail.exchange, "mail", subject=mail.offer.digest,
                               decision="void", request=mail.receipt, now_ms=T0,
                               payload=b"bad\nescrow\x00\x1b[31m" + b"x" * 5000,
                               initiator="alice").statement
    report = parties.check(mail.txn, [mail.offer, mail.receipt, void])
    assert met(report) == {RECEIVED: ("bob", False), ESCROW_GOOD: ("alice", False)}
    assert all(v.reason.isprintable() and len(v.reason) < 1000 for v in report.verdicts)
    _fits_a_verdict(parties, report)
