"""Shmatikov and Mitchell's attacks on Asokan-Shoup-Waidner contract signing (TCS
2002) succeed against a naive ASW written here (no exchange id, an abort token read
as "no contract") and fail against semper's machines (issue 9, second Done-when
line). Plus one more member of the replay kind found while building it: an
exchange id squatted at the notary by another signer."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import pytest
from test_fairexchange_contract import NOW_MS, TEXT, Parties

from semper.services import ServiceError
from semper.services.fairexchange import (
    ABORT_REQUEST_TYPE,
    M1,
    M1_TYPE,
    AbortRequest,
    Committed,
    NotaryAnswered,
    OState,
    Proposed,
    Revealed,
    RState,
    StandardContract,
    Start,
    TimedOut,
    conflict,
    contract_abort,
    contract_resolve,
    outcome,
)
from semper.services.fairexchange._contract import secret_commit
from semper.services.statements import Statement

EXCHANGE_1 = b"\x11" * 32


@pytest.fixture(scope="module")
def parties(tmp_path_factory: pytest.TempPathFactory) -> Parties:
    return Parties.make(tmp_path_factory.mktemp("attacks"))


# -- a naive ASW: the paper's messages, no exchange id, no rule -------------------------------

@dataclass
class NaiveResponder:
    """ASW's responder as published: it signs m2 = Sig_R(m1, h(N_R)) for any approved
    m1 and does not remember the m1s it has answered."""

    parties: Parties
    approved: set[bytes]
    contracts: list[tuple[bytes, bytes]] = field(default_factory=list)  # (m1, m2) digests
    open: dict[bytes, tuple[Statement, Statement, bytes]] = field(default_factory=dict)
    runs: int = 0

    def propose(self, text: bytes, m1: Statement) -> Statement:
        body = m1.body
        assert hashlib.sha256(text).digest() == body["text"] and body["text"] in self.approved
        self.runs += 1
        secret = hashlib.sha256(b"N_R %d" % self.runs).digest()  # fresh per run
        m2 = self.parties.signer("r")("naive.m2", {"m1": m1.digest,
                                                   "commit": secret_commit(secret)}, NOW_MS)
        self.open[m2.digest] = (m1, m2, secret)
        return m2

    def reveal(self, m2: Statement, secret_o: bytes) -> bytes:
        m1, _, secret = self.open.pop(m2.digest)
        assert secret_commit(secret_o) == m1.body["commit"]
        self.contracts.append((m1.digest, m2.digest))  # R believes it signed a contract
        return secret


def naive_m1(parties: Parties, secret: bytes) -> Statement:
    return parties.signer("o")("naive.m1", {
        "originator": "o", "responder": "r", "notary": "notary",
        "text": hashlib.sha256(TEXT).digest(), "commit": secret_commit(secret)}, NOW_MS)


def naive_rule(evidence: list[Any]) -> str:
    """What a naive reading of ASW concludes: an abort token means no contract."""
    if any(isinstance(e, str) and e == "abort token" for e in evidence):
        return "aborted"
    return "signed" if evidence else "none"


# -- the replay attack ------------------------------------------------------------------------

def test_replay_attack_succeeds_against_naive_asw(parties: Parties) -> None:
    """One faultless run, then the same m1 replayed (by O, or by anyone who saw it):
    the naive responder commits again and ends up with two contracts for one m1."""
    r = NaiveResponder(parties, {hashlib.sha256(TEXT).digest()})
    secret_o = b"O" * 32
    m1 = naive_m1(parties, secret_o)
    m2 = r.propose(TEXT, m1)
    r.reveal(m2, secret_o)
    # the replay: the old m1, the old N_O (revealed in the first run)
    m2_again = r.propose(TEXT, m1)
    r.reveal(m2_again, secret_o)
    assert len(r.contracts) == 2 and m2_again != m2  # the attack worked


def test_replay_attack_fails_against_semper(parties: Parties) -> None:
    o = parties.originator(exchange=EXCHANGE_1)
    r = parties.responder()
    [propose] = o.receive(Start(), now_ms=NOW_MS)
    [commit] = r.receive(Proposed(propose.text, propose.m1), now_ms=NOW_MS)
    [reveal] = o.receive(Committed(commit.m2), now_ms=NOW_MS)
    r.receive(Revealed(reveal.secret), now_ms=NOW_MS)
    assert r.state is RState.SIGNED
    before = r.to_record()
    with pytest.raises(ServiceError) as info:  # the replayed m1 gets nothing
        r.receive(Proposed(propose.text, propose.m1), now_ms=NOW_MS)
    assert info.value.code == "fairexchange.replayed"
    assert r.to_record() == before
    # nor does a new responder machine help: the m1 names an exchange id R holds,
    # and an m1 with a fresh id needs O's signature
    forged = Statement(type=M1_TYPE, body={**propose.m1.body, "exchange": b"\x12" * 32},
                       signer=propose.m1.signer, issued_at=propose.m1.issued_at,
                       nonce=propose.m1.nonce, signature=propose.m1.signature)
    with pytest.raises(ServiceError) as info:
        parties.responder().receive(Proposed(propose.text, forged), now_ms=NOW_MS)
    assert info.value.code == "statement.bad_signature"


def test_replayed_m1_at_the_notary_gets_the_old_decision_only(parties: Parties) -> None:
    """The notary side of the replay: an old exchange's request gets its first
    decision again, never a new one (and the chain does not grow)."""
    o = parties.originator(exchange=b"\x13" * 32)
    o.receive(Start(), now_ms=NOW_MS)
    [ask] = o.receive(TimedOut(), now_ms=NOW_MS)
    book = parties.book()
    first = contract_abort(book, ask.request, requester="o", verify=parties.verify,
                           now_ms=NOW_MS)
    again = contract_abort(book, ask.request, requester="o", verify=parties.verify,
                           now_ms=NOW_MS)
    assert again.statement == first.statement and not again.new and book.seq == 1


# -- inconsistent versions -------------------------------------------------------------------

def test_inconsistent_versions_succeed_against_naive_asw(parties: Parties) -> None:
    """O gets m2, aborts with the notary anyway, then reveals N_O: R answers N_R. O
    holds an abort token and a contract; a naive judge of O's evidence says aborted,
    of R's says signed: two versions of one contract."""
    r = NaiveResponder(parties, {hashlib.sha256(TEXT).digest()})
    secret_o = b"O" * 32
    m1 = naive_m1(parties, secret_o)
    m2 = r.propose(TEXT, m1)
    o_evidence: list[Any] = ["abort token"]  # the notary aborts: R has not resolved
    secret_r = r.reveal(m2, secret_o)
    o_evidence.append(("contract", m1, m2, secret_o, secret_r))
    r_evidence = [("contract", m1, m2, secret_o, secret_r)]
    assert naive_rule(o_evidence) == "aborted" and naive_rule(r_evidence) == "signed"


def test_inconsistent_versions_fail_against_semper(parties: Parties) -> None:
    o = parties.originator(exchange=b"\x14" * 32)
    r = parties.responder()
    [propose] = o.receive(Start(), now_ms=NOW_MS)
    [commit] = r.receive(Proposed(propose.text, propose.m1), now_ms=NOW_MS)
    o.receive(Committed(commit.m2), now_ms=NOW_MS)
    # a dishonest O signs an abort request although it holds m2 ...
    first = M1.from_statement(o.m1)  # type: ignore[arg-type]
    abort = parties.signer("o")(ABORT_REQUEST_TYPE,
                                AbortRequest(exchange=first.exchange, m1=o.m1).to_body(),  # type: ignore[arg-type]
                                NOW_MS)
    token = contract_abort(parties.book(), abort, requester="o", verify=parties.verify,
                           now_ms=NOW_MS).statement
    # ... and reveals N_O anyway: the honest R completes the standard contract
    [reveal] = r.receive(Revealed(o.secret), now_ms=NOW_MS)
    o_evidence = [token, StandardContract(o.m1, commit.m2, o.secret, reveal.secret)]  # type: ignore[arg-type]
    mine = outcome(o_evidence, verify=parties.verify)
    theirs = outcome(r.evidence(), verify=parties.verify)
    assert mine.state == theirs.state == "signed"  # one version, whoever judges
    assert outcome(list(reversed(o_evidence)), verify=parties.verify).state == "signed"
    # and the notary will not resolve this exchange later: it answers the token
    [ask] = r.receive(TimedOut(), now_ms=NOW_MS) if r.state is RState.AWAIT_SECRET else [None]
    assert ask is None and r.state is RState.SIGNED


def test_inconsistent_versions_a_notary_cannot_give_both(parties: Parties) -> None:
    """The other way to two versions: the notary aborts for O and resolves for R.
    The book answers the first decision to both; a notary that did sign both is
    caught by conflict()."""
    o = parties.originator(exchange=b"\x15" * 32)
    r = parties.responder()
    [propose] = o.receive(Start(), now_ms=NOW_MS)
    r.receive(Proposed(propose.text, propose.m1), now_ms=NOW_MS)
    [ask_o] = o.receive(TimedOut(), now_ms=NOW_MS)
    [ask_r] = r.receive(TimedOut(), now_ms=NOW_MS)
    book = parties.book()
    a = contract_abort(book, ask_o.request, requester="o", verify=parties.verify,
                       now_ms=NOW_MS)
    b = contract_resolve(book, ask_r.request, requester="r", verify=parties.verify,
                         now_ms=NOW_MS)
    assert a.statement == b.statement
    o.receive(NotaryAnswered(a.statement), now_ms=NOW_MS)
    r.receive(NotaryAnswered(b.statement), now_ms=NOW_MS)
    assert (o.state, r.state) == (OState.ABORTED, RState.ABORTED)
    cheat = contract_resolve(parties.book(), ask_r.request, requester="r",
                             verify=parties.verify, now_ms=NOW_MS).statement
    found = conflict(a.statement, cheat, verify=parties.verify, notary="notary")
    assert found is not None and found.reason == "two_decisions"


# -- another member of the replay kind: an exchange id squatted at the notary ----------------

def test_exchange_id_squatted_by_another_signer_does_not_block_the_notary(
        parties: Parties) -> None:
    """A dishonest R learns O's exchange id from m1 and has a confederate (mallory)
    sign an m1 of her own with that id and abort it at the notary first. If the
    notary keyed exchanges by the id alone, O, who revealed N_O to R (which withheld
    N_R), would be refused its resolve (conflicting_exchange) while R holds the
    standard contract: unfair. The notary keys an exchange by its initiator (m1's
    signer) and the id, so O gets the replacement contract."""
    exchange = b"\x16" * 32
    o = parties.originator(exchange=exchange)
    r = parties.responder()
    [propose] = o.receive(Start(), now_ms=NOW_MS)
    [commit] = r.receive(Proposed(propose.text, propose.m1), now_ms=NOW_MS)
    o.receive(Committed(commit.m2), now_ms=NOW_MS)
    r.receive(Revealed(o.secret), now_ms=NOW_MS)  # R holds the contract, withholds N_R
    book = parties.book()
    squat = parties.originator(exchange=exchange, agent_id="mallory")
    squat.receive(Start(), now_ms=NOW_MS)
    [ask_m] = squat.receive(TimedOut(), now_ms=NOW_MS)
    contract_abort(book, ask_m.request, requester="mallory", verify=parties.verify,
                   now_ms=NOW_MS)
    [ask_o] = o.receive(TimedOut(), now_ms=NOW_MS)
    decision = contract_resolve(book, ask_o.request, requester="o", verify=parties.verify,
                                now_ms=NOW_MS)
    o.receive(NotaryAnswered(decision.statement), now_ms=NOW_MS)
    assert o.state is OState.SIGNED
    assert outcome(o.evidence(), verify=parties.verify).state == "signed"
    # the two decisions for one id but two initiators are not a notary's cheat
    assert conflict(book.get(exchange, initiator="mallory"), decision.statement) is None  # type: ignore[arg-type]
