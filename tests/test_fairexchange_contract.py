"""Contract signing over the sans-IO machines (issue 9, item 1): the faultless run,
abort, resolve by either side, the replacement contract, the rule (``outcome``),
the notary's chain and ``conflict``, and every bad message refused with its code and
no state change. ``Parties`` (real keys, real signatures) is shared with the
explorer and the attack tests."""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pki import NOW, Market, TestAgent

from semper.services import ServiceError
from semper.services.certificates import fingerprint
from semper.services.fairexchange import (
    CONTRACT_PROPOSE,
    CONTRACT_REVEAL,
    DECISION_TYPE,
    M1_TYPE,
    NOTARY_ABORT,
    NOTARY_RESOLVE,
    AskNotary,
    Commit,
    Committed,
    DecisionBody,
    NotaryAnswered,
    NotaryBook,
    Originator,
    OState,
    Propose,
    Proposed,
    Responder,
    Reveal,
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
from semper.services.fairexchange._bodies import M1
from semper.services.statements import (
    Statement,
    StatementError,
    WrongSigner,
    canonical_encode,
    sign_statement,
    verify_statement,
)

NOW_MS = int(NOW.timestamp() * 1000)
TEXT = b"The originator sells the responder 10 widgets for 100 EUR.\n"
EXCHANGE = bytes(range(32))


@dataclass
class Parties:
    """A market with o, r, notary (and mallory): signing and verifying ports with
    real Ed25519 keys and certificates; both deterministic and cached (the explorer
    signs the same statement along many paths)."""

    market: Market
    agents: dict[str, TestAgent] = field(default_factory=dict)
    _by_print: dict[bytes, TestAgent] = field(default_factory=dict)
    _signed: dict[tuple[str, str, bytes, int], Statement] = field(default_factory=dict)
    _verified: dict[tuple[bytes, str, str], Exception | None] = field(default_factory=dict)

    @classmethod
    def make(cls, folder: Path) -> Parties:
        parties = cls(Market(folder))
        for agent_id, role in (("o", "buyer"), ("r", "seller"), ("notary", "notary"),
                               ("mallory", "buyer"), ("other-notary", "notary")):
            agent = parties.market.agent(agent_id, role)
            parties.agents[agent_id] = agent
            parties._by_print[fingerprint(agent.cert)] = agent
        return parties

    def signer(self, agent_id: str) -> Any:
        agent = self.agents[agent_id]

        def sign(type: str, body: dict[str, Any], now_ms: int) -> Statement:
            encoded = canonical_encode(body)
            key = (agent_id, type, encoded, now_ms)
            known = self._signed.get(key)
            if known is None:
                nonce = hashlib.sha256(type.encode() + encoded).digest()[:16]
                known = sign_statement(type, body, key=agent.key, certificate=agent.cert,
                                       now_ms=now_ms, nonce=nonce)
                self._signed[key] = known
            return known

        return sign

    def verify(self, statement: Statement, *, expected_type: str,
               expected_signer: str) -> None:
        key = (statement.digest, expected_type, expected_signer)
        if key not in self._verified:
            agent = self._by_print.get(statement.signer)
            try:
                if agent is None:
                    raise WrongSigner("unknown signer", detail={"signer": statement.signer.hex()})
                verify_statement(statement, certificate=agent.cert,
                                 root=self.market.ca.certificate, crl=self.market.crl,
                                 now=NOW, expected_type=expected_type,
                                 expected_signer=expected_signer)
                self._verified[key] = None
            except ServiceError as exc:
                self._verified[key] = exc
        error = self._verified[key]
        if error is not None:
            raise copy.copy(error)

    def originator(self, *, exchange: bytes = EXCHANGE, text: bytes = TEXT,
                   agent_id: str = "o", responder: str = "r",
                   notary: str = "notary", secret: bytes = b"O" * 32) -> Originator:
        return Originator(exchange=exchange, originator=agent_id, responder=responder,
                          notary=notary, text=text, secret=secret,
                          sign=self.signer(agent_id), verify=self.verify)

    def responder(self, *, peer: str = "o", approved: tuple[bytes, ...] = (TEXT,),
                  secret: bytes = b"R" * 32) -> Responder:
        return Responder(responder="r", peer=peer, secret=secret,
                         approvals={("o", hashlib.sha256(t).digest()) for t in approved},
                         notaries={"notary"}, sign=self.signer("r"), verify=self.verify)

    def book(self, notary: str = "notary") -> NotaryBook:
        return NotaryBook(sign=self.signer(notary), notary=notary)


@pytest.fixture(scope="module")
def parties(tmp_path_factory: pytest.TempPathFactory) -> Parties:
    return Parties.make(tmp_path_factory.mktemp("fx"))


def _propose(o: Originator) -> Propose:
    [message] = o.receive(Start(), now_ms=NOW_MS)
    assert isinstance(message, Propose)
    return message


def _to_m2(parties: Parties) -> tuple[Originator, Responder, Statement]:
    o, r = parties.originator(), parties.responder()
    propose = _propose(o)
    [commit] = r.receive(Proposed(propose.text, propose.m1), now_ms=NOW_MS)
    assert isinstance(commit, Commit)
    return o, r, commit.m2


def _record(machine: Any) -> bytes:
    return canonical_encode(machine.to_record())


# -- the faultless run ----------------------------------------------------------------------

def test_faultless_run_gives_both_the_same_standard_contract(parties: Parties) -> None:
    o, r, m2 = _to_m2(parties)
    [reveal_o] = o.receive(Committed(m2), now_ms=NOW_MS)
    assert isinstance(reveal_o, Reveal) and o.state is OState.AWAIT_SECRET
    [reveal_r] = r.receive(Revealed(reveal_o.secret), now_ms=NOW_MS)
    assert isinstance(reveal_r, Reveal) and r.state is RState.SIGNED
    assert o.receive(Revealed(reveal_r.secret), now_ms=NOW_MS) == []
    assert o.state is OState.SIGNED
    mine, theirs = (outcome(p.evidence(), verify=parties.verify) for p in (o, r))
    assert mine.state == theirs.state == "signed"
    assert mine.resolved_by == "exchange" and mine.proof == theirs.proof
    assert mine.text == hashlib.sha256(TEXT).digest() and mine.exchange == EXCHANGE


def test_records_round_trip_at_every_step(parties: Parties) -> None:
    o, r, m2 = _to_m2(parties)
    o2 = Originator.from_record(o.to_record(), sign=parties.signer("o"), verify=parties.verify)
    assert _record(o2) == _record(o) and o2.pending() == o.pending()
    [reveal] = o2.receive(Committed(m2), now_ms=NOW_MS)
    r2 = Responder.from_record(r.to_record(), sign=parties.signer("r"), verify=parties.verify)
    assert r2.receive(Revealed(reveal.secret), now_ms=NOW_MS)[0].secret == b"R" * 32
    # the record is in the statements' value model (it can be stored canonically)
    assert canonical_encode(r2.to_record())


def test_ops_carry_the_messages(parties: Parties) -> None:
    o, _r, m2 = _to_m2(parties)
    propose = o.pending()[0]
    wire = CONTRACT_PROPOSE.encode_request(
        CONTRACT_PROPOSE.request(text=propose.text, m1=propose.m1))  # type: ignore[call-arg]
    decoded = CONTRACT_PROPOSE.decode_request(wire)
    assert decoded.m1 == propose.m1 and decoded.text == TEXT
    answer = CONTRACT_PROPOSE.decode_response({"m2": m2.to_wire()})
    assert answer.m2 == m2
    reveal = CONTRACT_REVEAL.decode_request({"exchange": EXCHANGE, "secret": b"O" * 32})
    assert reveal.secret == b"O" * 32
    with pytest.raises(ServiceError) as info:
        CONTRACT_REVEAL.decode_request({"exchange": EXCHANGE, "secret": b"short"})
    assert info.value.code == "fairexchange.bad_body"
    assert NOTARY_ABORT.qualified == "notary.abort"
    assert NOTARY_RESOLVE.qualified == "notary.resolve"


# -- abort and resolve ----------------------------------------------------------------------

def test_abort_before_m2_leaves_neither_with_a_contract(parties: Parties) -> None:
    o, r, _m2 = _to_m2(parties)  # m2 is "lost"
    book = parties.book()
    [ask] = o.receive(TimedOut(), now_ms=NOW_MS)
    assert isinstance(ask, AskNotary) and ask.op == "abort"
    decision = contract_abort(book, ask.request, requester="o", verify=parties.verify,
                              now_ms=NOW_MS)
    assert decision.new and decision.decision == "abort"
    o.receive(NotaryAnswered(decision.statement), now_ms=NOW_MS)
    assert o.state is OState.ABORTED
    # R resolves afterwards: the notary answers the same abort token
    [ask_r] = r.receive(TimedOut(), now_ms=NOW_MS)
    again = contract_resolve(book, ask_r.request, requester="r", verify=parties.verify,
                             now_ms=NOW_MS)
    assert not again.new and again.statement == decision.statement
    r.receive(NotaryAnswered(again.statement), now_ms=NOW_MS)
    assert r.state is RState.ABORTED
    assert {outcome(p.evidence(), verify=parties.verify).state for p in (o, r)} == {"aborted"}


@pytest.mark.parametrize("who", ["o", "r"])
def test_resolve_by_either_side_gives_both_the_replacement(parties: Parties, who: str) -> None:
    o, r, m2 = _to_m2(parties)
    o.receive(Committed(m2), now_ms=NOW_MS)  # O reveals N_O, which is lost
    book = parties.book()
    first, second = (o, r) if who == "o" else (r, o)
    [ask] = first.receive(TimedOut(), now_ms=NOW_MS)
    decision = contract_resolve(book, ask.request, requester=who, verify=parties.verify,
                                now_ms=NOW_MS)
    assert decision.decision == "resolve"
    first.receive(NotaryAnswered(decision.statement), now_ms=NOW_MS)
    [ask2] = second.receive(TimedOut(), now_ms=NOW_MS)
    answer = contract_resolve(book, ask2.request, requester="r" if who == "o" else "o",
                              verify=parties.verify, now_ms=NOW_MS)
    assert answer.statement == decision.statement
    second.receive(NotaryAnswered(answer.statement), now_ms=NOW_MS)
    results = [outcome(p.evidence(), verify=parties.verify) for p in (o, r)]
    assert [x.state for x in results] == ["signed", "signed"]
    assert results[0].resolved_by == "notary" and results[0].proof == decision.statement


def test_the_replacement_is_as_valid_as_the_standard_contract(parties: Parties) -> None:
    o, r, m2 = _to_m2(parties)
    o.receive(Committed(m2), now_ms=NOW_MS)
    [ask] = r.receive(TimedOut(), now_ms=NOW_MS)
    decision = contract_resolve(parties.book(), ask.request, requester="r",
                                verify=parties.verify, now_ms=NOW_MS)
    replacement = outcome([decision.statement], verify=parties.verify)
    standard = outcome([StandardContract(o.m1, m2, b"O" * 32, b"R" * 32)],  # type: ignore[arg-type]
                       verify=parties.verify)
    assert replacement.state == standard.state == "signed"
    assert (replacement.exchange, replacement.text) == (standard.exchange, standard.text)


def test_abort_after_resolve_gets_the_replacement(parties: Parties) -> None:
    o, r, _m2 = _to_m2(parties)
    book = parties.book()
    [ask_r] = r.receive(TimedOut(), now_ms=NOW_MS)
    resolved = contract_resolve(book, ask_r.request, requester="r", verify=parties.verify,
                                now_ms=NOW_MS)
    [ask_o] = o.receive(TimedOut(), now_ms=NOW_MS)  # O never got m2: it aborts
    answer = contract_abort(book, ask_o.request, requester="o", verify=parties.verify,
                            now_ms=NOW_MS)
    assert answer.statement == resolved.statement and not answer.new
    o.receive(NotaryAnswered(answer.statement), now_ms=NOW_MS)
    assert o.state is OState.SIGNED


# -- the rule ----------------------------------------------------------------------------

def test_contract_beats_abort_token_and_abort_alone_is_aborted(parties: Parties) -> None:
    o, _r, m2 = _to_m2(parties)
    [ask] = o.receive(TimedOut(), now_ms=NOW_MS)
    token = contract_abort(parties.book(), ask.request, requester="o", verify=parties.verify,
                           now_ms=NOW_MS).statement
    standard = StandardContract(o.m1, m2, b"O" * 32, b"R" * 32)  # type: ignore[arg-type]
    for evidence in ([token, standard], [standard, token]):
        assert outcome(evidence, verify=parties.verify).state == "signed"
    assert outcome([token], verify=parties.verify).state == "aborted"
    assert outcome([], verify=parties.verify).state == "none"


def test_outcome_refuses_evidence_of_two_exchanges_and_forgeries(parties: Parties) -> None:
    o, _r, m2 = _to_m2(parties)
    other = parties.originator(exchange=b"\x01" * 32)
    [ask] = other.receive(Start(), now_ms=NOW_MS) and other.receive(TimedOut(), now_ms=NOW_MS)
    token = contract_abort(parties.book(), ask.request, requester="o", verify=parties.verify,
                           now_ms=NOW_MS).statement
    standard = StandardContract(o.m1, m2, b"O" * 32, b"R" * 32)  # type: ignore[arg-type]
    with pytest.raises(ServiceError) as info:
        outcome([standard, token], verify=parties.verify)
    assert info.value.code == "fairexchange.mixed_evidence"
    with pytest.raises(ServiceError) as info:
        outcome([StandardContract(o.m1, m2, b"O" * 32, b"X" * 32)],  # type: ignore[arg-type]
                verify=parties.verify)
    assert info.value.code == "fairexchange.bad_secret"
    forged = Statement(type=token.type, body=token.body, signer=token.signer,
                       issued_at=token.issued_at, nonce=token.nonce, signature=bytes(64))
    with pytest.raises(StatementError) as info2:
        outcome([forged], verify=parties.verify)
    assert info2.value.code == "statement.bad_signature"


def test_outcome_keys_an_exchange_by_its_originator_too(parties: Parties) -> None:
    """Another originator's evidence with the same exchange id (a confederate's m1
    carrying the id read off the wire, aborted at the notary, which keys exchanges by
    (initiator, id)) is another exchange's: never counted for this one (10.1)."""
    o, _r, m2 = _to_m2(parties)
    standard = StandardContract(o.m1, m2, b"O" * 32, b"R" * 32)  # type: ignore[arg-type]
    mallory = parties.originator(agent_id="mallory")  # the same EXCHANGE
    mallory.receive(Start(), now_ms=NOW_MS)
    [ask] = mallory.receive(TimedOut(), now_ms=NOW_MS)
    book = parties.book()
    theirs = contract_abort(book, ask.request, requester="mallory", verify=parties.verify,
                            now_ms=NOW_MS).statement
    mine = contract_abort(book, _abort_request(parties, EXCHANGE), requester="o",
                          verify=parties.verify, now_ms=NOW_MS).statement
    assert DecisionBody.from_statement(theirs).exchange == EXCHANGE
    for evidence in ([standard, theirs], [theirs, standard], [mine, theirs]):
        with pytest.raises(ServiceError) as info:
            outcome(evidence, verify=parties.verify)
        assert info.value.code == "fairexchange.mixed_evidence"
        assert info.value.detail == {"field": "initiator"}
    assert outcome([mine], verify=parties.verify).proof == mine
    assert outcome([theirs], verify=parties.verify).state == "aborted"


# -- the notary's chain and conflict -----------------------------------------------------------

def _abort_request(parties: Parties, exchange: bytes) -> Statement:
    o = parties.originator(exchange=exchange)
    o.receive(Start(), now_ms=NOW_MS)
    return o.receive(TimedOut(), now_ms=NOW_MS)[0].request  # type: ignore[union-attr,no-any-return]


def test_decisions_form_a_hash_chain_and_the_book_persists(parties: Parties) -> None:
    book = parties.book()
    first = contract_abort(book, _abort_request(parties, b"\x0a" * 32), requester="o",
                           verify=parties.verify, now_ms=NOW_MS)
    second = contract_abort(book, _abort_request(parties, b"\x0b" * 32), requester="o",
                            verify=parties.verify, now_ms=NOW_MS)
    a, b = first.body, second.body
    assert (a.seq, b.seq) == (1, 2) and a.previous == bytes(32)
    assert b.previous == first.statement.digest and book.head == second.statement.digest
    again = NotaryBook.from_record(book.to_record(), sign=parties.signer("notary"))
    assert again.to_record() == book.to_record()
    third = contract_abort(again, _abort_request(parties, b"\x0c" * 32), requester="o",
                           verify=parties.verify, now_ms=NOW_MS)
    assert third.body.seq == 3 and third.body.previous == second.statement.digest
    assert conflict(first.statement, second.statement) is None


def test_conflict_catches_two_decisions_for_one_exchange_and_a_fork(parties: Parties) -> None:
    o, r, _m2 = _to_m2(parties)
    [ask_o] = o.receive(TimedOut(), now_ms=NOW_MS)
    [ask_r] = r.receive(TimedOut(), now_ms=NOW_MS)
    # a cheating notary: two books, one key
    aborted = contract_abort(parties.book(), ask_o.request, requester="o",
                             verify=parties.verify, now_ms=NOW_MS).statement
    resolved = contract_resolve(parties.book(), ask_r.request, requester="r",
                                verify=parties.verify, now_ms=NOW_MS).statement
    found = conflict(aborted, resolved, verify=parties.verify, notary="notary")
    assert found is not None and found.reason == "two_decisions"
    assert found.exchange == EXCHANGE
    # a fork: two decisions numbered 1 for different exchanges
    other = contract_abort(parties.book(), _abort_request(parties, b"\x0d" * 32),
                           requester="o", verify=parties.verify, now_ms=NOW_MS).statement
    fork = conflict(aborted, other)
    assert fork is not None and fork.reason == "fork"
    assert conflict(aborted, aborted) is None
    with pytest.raises(ServiceError) as info:
        conflict(aborted, o.m1)  # type: ignore[arg-type]
    assert info.value.code == "fairexchange.mixed_evidence"


# -- bad messages: refused with a code, nothing changes ------------------------------------------

def _refused(machine: Any, event: Any, code: str) -> None:
    before = _record(machine)
    with pytest.raises(ServiceError) as info:
        machine.receive(event, now_ms=NOW_MS)
    assert info.value.code == code, info.value
    assert _record(machine) == before


def test_responder_signs_only_an_approved_text(parties: Parties) -> None:
    o = parties.originator(text=b"another text")
    propose = _propose(o)
    _refused(parties.responder(), Proposed(propose.text, propose.m1),
             "fairexchange.not_approved")


def test_responder_refuses_bad_first_messages(parties: Parties) -> None:
    o = parties.originator()
    propose = _propose(o)
    r = parties.responder()
    _refused(r, Proposed(b"other text", propose.m1), "fairexchange.wrong_exchange")
    _refused(parties.responder(peer="mallory"), Proposed(propose.text, propose.m1),
             "fairexchange.wrong_exchange")
    other_notary = parties.originator(notary="other-notary")
    p2 = _propose(other_notary)
    _refused(r, Proposed(p2.text, p2.m1), "fairexchange.wrong_exchange")
    # m1 signed by mallory, naming o as originator
    body = M1.from_statement(propose.m1).to_body()
    forged = parties.signer("mallory")(M1_TYPE, body, NOW_MS)
    _refused(r, Proposed(propose.text, forged), "statement.wrong_signer")
    _refused(r, Proposed(propose.text, propose.m2 if hasattr(propose, "m2") else
                         parties.signer("o")("fairexchange.m2", {"x": 1}, NOW_MS)),
             "statement.wrong_type")
    assert r.state is RState.START


def test_originator_refuses_bad_m2_and_bad_secrets(parties: Parties) -> None:
    o, r, m2 = _to_m2(parties)
    _o_other, _r_other, m2_other = _to_m2_other(parties)
    _refused(o, Committed(m2_other), "fairexchange.wrong_exchange")
    _refused(o, Revealed(b"R" * 32), "fairexchange.unexpected")
    o.receive(Committed(m2), now_ms=NOW_MS)
    _refused(o, Revealed(b"X" * 32), "fairexchange.bad_secret")
    _refused(r, Revealed(b"X" * 32), "fairexchange.bad_secret")
    _refused(o, Committed(m2), "fairexchange.unexpected")


def _to_m2_other(parties: Parties) -> tuple[Originator, Responder, Statement]:
    o = parties.originator(exchange=b"\x02" * 32)
    r = parties.responder()
    propose = _propose(o)
    [commit] = r.receive(Proposed(propose.text, propose.m1), now_ms=NOW_MS)
    return o, r, commit.m2  # type: ignore[union-attr]


def test_parties_refuse_a_decision_for_another_exchange(parties: Parties) -> None:
    o, r, _m2 = _to_m2(parties)
    o.receive(TimedOut(), now_ms=NOW_MS)
    token = contract_abort(parties.book(), _abort_request(parties, b"\x03" * 32),
                           requester="o", verify=parties.verify, now_ms=NOW_MS).statement
    _refused(o, NotaryAnswered(token), "fairexchange.wrong_exchange")
    r.receive(TimedOut(), now_ms=NOW_MS)
    _refused(r, NotaryAnswered(token), "fairexchange.wrong_exchange")
    # a "decision" signed by someone else than the notary m1 names
    [ask] = o.pending()
    fake = parties.book("other-notary").decide(
        EXCHANGE, "contract", subject=o.m1.digest, decision="abort",  # type: ignore[union-attr]
        request=ask.request, now_ms=NOW_MS, initiator="o").statement  # type: ignore[union-attr]
    _refused(o, NotaryAnswered(fake), "statement.wrong_signer")


def test_notary_refuses_bad_requests_and_its_book_is_unchanged(parties: Parties) -> None:
    o, r, _m2 = _to_m2(parties)
    book = parties.book()
    [ask_o] = o.receive(TimedOut(), now_ms=NOW_MS)
    [ask_r] = r.receive(TimedOut(), now_ms=NOW_MS)

    def refused(call: Any, request: Statement, requester: str, code: str) -> None:
        before = book.to_record()
        with pytest.raises(ServiceError) as info:
            call(book, request, requester=requester, verify=parties.verify, now_ms=NOW_MS)
        assert info.value.code == code, info.value
        assert book.to_record() == before

    refused(contract_abort, ask_o.request, "r", "fairexchange.not_party")  # only O aborts
    refused(contract_resolve, ask_r.request, "mallory", "fairexchange.not_party")
    refused(contract_resolve, ask_r.request, "o", "statement.wrong_signer")  # signed by r
    refused(contract_abort, ask_r.request, "o", "statement.wrong_type")
    other_book = parties.book("other-notary")
    with pytest.raises(ServiceError) as info:
        contract_abort(other_book, ask_o.request, requester="o", verify=parties.verify,
                       now_ms=NOW_MS)
    assert info.value.code == "fairexchange.wrong_exchange"
    # the same exchange id with another m1: conflicting, the first decision stands
    contract_abort(book, ask_o.request, requester="o", verify=parties.verify, now_ms=NOW_MS)
    twin = parties.originator(text=b"another text")  # same exchange id, other m1
    twin.receive(Start(), now_ms=NOW_MS)
    [ask_twin] = twin.receive(TimedOut(), now_ms=NOW_MS)
    refused(contract_abort, ask_twin.request, "o", "fairexchange.conflicting_exchange")


def test_decision_body_is_checked(parties: Parties) -> None:
    with pytest.raises(ServiceError) as info:
        DecisionBody.from_body({"exchange": b"x"})
    assert info.value.code == "fairexchange.bad_body"
    assert DECISION_TYPE == "fairexchange.decision"


def test_retries_are_answered_the_same_and_change_nothing(parties: Parties) -> None:
    """After a lost answer: the same m1 gets the same m2 while the exchange is open,
    the same N_O the same N_R once signed; a restarted originator sends the same."""
    o, r, m2 = _to_m2(parties)
    propose = o.pending()[0]
    before = _record(r)
    [commit] = r.receive(Proposed(propose.text, propose.m1), now_ms=NOW_MS)
    assert commit.m2 == m2 and _record(r) == before
    [reveal] = o.receive(Committed(m2), now_ms=NOW_MS)
    first = r.receive(Revealed(reveal.secret), now_ms=NOW_MS)
    signed = _record(r)
    assert r.receive(Revealed(reveal.secret), now_ms=NOW_MS) == first
    assert _record(r) == signed
    again = Originator.from_record(o.to_record(), sign=parties.signer("o"),
                                   verify=parties.verify)
    assert again.pending() == [reveal]


def test_more_bad_messages_are_refused_without_a_change(parties: Parties) -> None:
    o, r, m2 = _to_m2(parties)
    fresh = parties.responder()
    _refused(fresh, Revealed(b"O" * 32), "fairexchange.unexpected")  # nothing proposed
    _refused(fresh, TimedOut(), "fairexchange.unexpected")
    # an m2 signed by someone else than the responder m1 names
    forged = parties.signer("mallory")("fairexchange.m2", _m2_body(m2), NOW_MS)
    _refused(o, Committed(forged), "statement.wrong_signer")
    # a decision in a state that asked nothing
    [ask] = parties.responder().receive(Proposed(*_twin_propose(parties)), now_ms=NOW_MS)
    _refused(o, NotaryAnswered(m2), "fairexchange.unexpected")
    assert isinstance(ask, Commit)
    # the same exchange id with another text, once R holds the exchange
    twin = parties.originator(text=b"another text")
    p2 = _propose(twin)
    _refused(r, Proposed(p2.text, p2.m1), "fairexchange.replayed")


def _m2_body(m2: Statement) -> dict[str, Any]:
    return dict(m2.body)


def _twin_propose(parties: Parties) -> tuple[bytes, Statement]:
    p = _propose(parties.originator(exchange=b"\x04" * 32))
    return p.text, p.m1
