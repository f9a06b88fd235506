"""The notary, sans-IO: ``NotaryBook`` (generic over exchange kinds), the contract
kind's two requests, and ``conflict`` (catching a notary that decided twice).

Theory of operation. The book holds, per exchange, the first decision made for it;
an exchange is its id scoped by its initiator (the signer of its first message, a
contract's originator; ``initiator=``), so that nobody can take another party's
exchange id first at the notary and leave that party without a decision. Its one
transition table is per exchange: ``UNDECIDED --request--> DECIDED``,
``DECIDED --request--> DECIDED`` (the same signed decision, byte for byte). A
request for a known exchange with other content (another ``subject``, another
kind) is ``fairexchange.conflicting_exchange``. Every decision is a
``fairexchange.decision`` statement carrying the exchange id, the decision, a
sequence number and the digest of the notary's previous decision: a hash chain,
so that two decisions for one exchange, or two with one sequence number (a fork),
are evidence against the notary in anyone's hands (``conflict``).

Persist before you answer: when ``decide`` returns ``Decision(new=True)`` the
driver stores the book (``to_record()``, or the decision and the new head) before
it sends the answer; a crash before that loses a decision nobody has seen.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any, Final

from ..statements import Statement
from ._bodies import (
    ABORT_REQUEST_TYPE,
    DECISION_TYPE,
    RESOLVE_REQUEST_TYPE,
    ZERO_DIGEST,
    AbortRequest,
    DecisionBody,
    ResolveRequest,
)
from ._contract import CONTRACT_KIND, Signer, Verifier, _check_m1, _check_m2
from ._errors import ConflictingExchange, MixedEvidence, NotParty, WrongExchange

__all__ = [
    "NOTARY_TRANSITIONS",
    "Conflict",
    "Decision",
    "ExchangeState",
    "NotaryBook",
    "conflict",
    "contract_abort",
    "contract_resolve",
]

RECORD_VERSION: Final = 1


class ExchangeState(Enum):
    UNDECIDED = "undecided"
    DECIDED = "decided"


#: The book's one transition table, per exchange id: any request decides once.
NOTARY_TRANSITIONS: Final = {
    (ExchangeState.UNDECIDED, "request"): ExchangeState.DECIDED,  # sign a new decision
    (ExchangeState.DECIDED, "request"): ExchangeState.DECIDED,  # answer the same one
}


@dataclass(frozen=True, slots=True)
class Decision:
    """The notary's answer. ``new``: made by this request (persist the book before
    answering); False: the exchange's earlier decision, unchanged."""

    statement: Statement
    new: bool

    @property
    def body(self) -> DecisionBody:
        return DecisionBody.from_statement(self.statement)

    @property
    def decision(self) -> str:
        return self.body.decision


class NotaryBook:
    """Every decision a notary made, the head of its chain, and the next number.

    API (small on purpose; other exchange kinds use it as contracts do):
    ``decide(exchange, kind, subject=, decision=, request=, now_ms=, payload=)``,
    ``get(exchange)``, ``seq``, ``head``, ``to_record()``, ``from_record()``.
    """

    def __init__(self, *, sign: Signer, notary: str) -> None:
        self._sign = sign
        self.notary = notary
        self.seq = 0
        self.head = ZERO_DIGEST
        self._decisions: dict[tuple[str | None, bytes], Statement] = {}

    def state(self, exchange: bytes, *, initiator: str | None = None) -> ExchangeState:
        return ExchangeState.DECIDED if (initiator, exchange) in self._decisions \
            else ExchangeState.UNDECIDED

    def get(self, exchange: bytes, *, initiator: str | None = None) -> Statement | None:
        """The decision made for ``exchange`` (of ``initiator``), if any."""
        return self._decisions.get((initiator, exchange))

    def decide(self, exchange: bytes, kind: str, *, subject: bytes, decision: str,
               request: Statement, now_ms: int, payload: bytes | None = None,
               initiator: str | None = None) -> Decision:
        """The decision for ``exchange`` of ``initiator``: the first one ever made for
        it, or, for a new exchange, ``decision`` signed now as the chain's next link.

        ``subject`` is the digest naming the exchange's content (a contract's m1);
        ``initiator`` the agent that signed the exchange's first message (pass it
        whenever the kind has one: it keeps others from taking the id first); the
        caller has checked ``request`` (signatures, who may ask).

        Raises:
            ConflictingExchange: the exchange is known with another kind or subject.
        """
        key = (initiator, exchange)
        state = self.state(exchange, initiator=initiator)
        NOTARY_TRANSITIONS[(state, "request")]  # every state has its entry
        known = self._decisions.get(key)
        if known is not None:
            body = DecisionBody.from_statement(known)
            if body.kind != kind or body.subject != subject:
                raise ConflictingExchange(
                    "this exchange id is known with other content",
                    detail={"exchange": exchange.hex(),
                            "field": "kind" if body.kind != kind else "subject"})
            return Decision(known, False)
        body = DecisionBody(exchange=exchange, kind=kind, decision=decision,
                            seq=self.seq + 1, previous=self.head, subject=subject,
                            request=request, payload=payload, initiator=initiator)
        statement = self._sign(DECISION_TYPE, body.to_body(), now_ms)
        self._decisions[key] = statement
        self.seq, self.head = body.seq, statement.digest
        return Decision(statement, True)

    def to_record(self) -> dict[str, Any]:
        """The book as a plain map: decisions by their canonical bytes, in chain order."""
        ordered = sorted(self._decisions.values(),
                         key=lambda s: DecisionBody.from_statement(s).seq)
        return {"machine": "fairexchange.notary", "v": RECORD_VERSION, "notary": self.notary,
                "seq": self.seq, "head": self.head,
                "decisions": [s.to_bytes() for s in ordered]}

    @classmethod
    def from_record(cls, record: dict[str, Any], *, sign: Signer) -> NotaryBook:
        if record.get("machine") != "fairexchange.notary" or record.get("v") != RECORD_VERSION:
            raise ValueError("not a notary book record of version 1")
        book = cls(sign=sign, notary=record["notary"])
        for raw in record["decisions"]:
            statement = Statement.from_bytes(raw)
            body = DecisionBody.from_statement(statement)
            book._decisions[(body.initiator, body.exchange)] = statement
        book.seq, book.head = record["seq"], record["head"]
        return book


# -- the contract kind --------------------------------------------------------------------

def contract_abort(book: NotaryBook, request: Statement, *, requester: str,
                   verify: Verifier, now_ms: int) -> Decision:
    """``notary.abort``: the originator's signed abort request. The exchange's
    decision: an abort token if it is new, else whatever was decided first (a
    replacement contract if the exchange was resolved).

    Raises:
        NotParty: ``requester`` (the channel's peer) is not m1's originator.
        WrongExchange: the request names another exchange, or m1 another notary.
        ConflictingExchange: the exchange id is known with another m1.
        BadBody, statement.*, auth.*: a malformed or badly signed request or m1.
    """
    body = AbortRequest.from_statement(request)
    first = _check_m1(body.m1, verify)
    _check_request(body.exchange, first.exchange, first.notary, book)
    if requester != first.originator:
        raise NotParty("only the originator may abort", detail={"requester": requester})
    verify(request, expected_type=ABORT_REQUEST_TYPE, expected_signer=requester)
    return book.decide(first.exchange, CONTRACT_KIND, subject=body.m1.digest,
                       decision="abort", request=request, now_ms=now_ms,
                       initiator=first.originator)


def contract_resolve(book: NotaryBook, request: Statement, *, requester: str,
                     verify: Verifier, now_ms: int) -> Decision:
    """``notary.resolve``: either party's signed (m1, m2). The exchange's decision:
    a replacement contract if it is new, else the first decision (an abort token if
    the originator aborted first).

    Raises: as ``contract_abort`` (NotParty: neither party of m1).
    """
    body = ResolveRequest.from_statement(request)
    first = _check_m1(body.m1, verify)
    _check_request(body.exchange, first.exchange, first.notary, book)
    if requester not in (first.originator, first.responder):
        raise NotParty("only a party to the exchange may resolve",
                       detail={"requester": requester})
    _check_m2(body.m2, body.m1, first, verify)
    verify(request, expected_type=RESOLVE_REQUEST_TYPE, expected_signer=requester)
    return book.decide(first.exchange, CONTRACT_KIND, subject=body.m1.digest,
                       decision="resolve", request=request, now_ms=now_ms,
                       initiator=first.originator)


def _check_request(exchange: bytes, named: bytes, notary: str, book: NotaryBook) -> None:
    if exchange != named:
        raise WrongExchange("the request names another exchange than m1",
                            detail={"field": "exchange"})
    if notary != book.notary:
        raise WrongExchange("m1 names another notary", detail={"field": "notary"})


# -- catching a notary that decided twice ---------------------------------------------------

@dataclass(frozen=True, slots=True)
class Conflict:
    """Two decisions by one notary that cannot both be honest: ``reason``
    ``"two_decisions"`` (one exchange, i.e. one id of one initiator, two different
    decisions) or ``"fork"`` (one sequence number or one predecessor, two decisions)."""

    reason: str
    first: Statement
    second: Statement
    exchange: bytes | None = None


def conflict(a: Statement, b: Statement, *, verify: Verifier | None = None,
             notary: str | None = None) -> Conflict | None:
    """The evidence that the notary that signed ``a`` and ``b`` cheated, or None.

    ``verify`` (with ``notary``, the expected signer) checks both signatures first;
    without it the caller must have checked them (a forged pair proves nothing).

    Raises:
        MixedEvidence: either is not a notary decision.
        statement.*, auth.*: a signature that does not verify (with ``verify``).
    """
    for statement in (a, b):
        if not isinstance(statement, Statement) or statement.type != DECISION_TYPE:
            raise MixedEvidence("not a notary decision", detail={"field": "decision"})
        if verify is not None:
            if notary is None:
                raise ValueError("verify needs the notary's agent id")
            verify(statement, expected_type=DECISION_TYPE, expected_signer=notary)
    if a.signer != b.signer or a.digest == b.digest:
        return None
    first, second = DecisionBody.from_statement(a), DecisionBody.from_statement(b)
    if first.exchange == second.exchange and first.initiator == second.initiator:
        return Conflict("two_decisions", a, b, first.exchange)
    if first.seq == second.seq or first.previous == second.previous:
        return Conflict("fork", a, b)
    return None

