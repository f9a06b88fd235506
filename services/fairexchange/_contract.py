"""Contract signing, sans-IO: the ``Originator`` and ``Responder`` machines and the
rule of what each piece of evidence proves (``outcome``).

Theory of operation (h11 pattern). Each machine has ONE transition table,
``(state, event class) -> the states it may go to``; ``receive(event, now_ms=)``
looks the pair up (no entry: ``fairexchange.unexpected``, the machine unchanged),
runs the event's handler, which checks the event and returns the new state, the
fields to set and the messages to send, and only then applies them. A refused event
(any coded error) changes nothing. No I/O, no clock: time comes in as ``now_ms``;
signing and verifying are ports passed in (``Signer``, ``Verifier``), as are the
secrets (32 fresh random bytes each) and the exchange id.

Persist before you send: after ``receive`` the driver stores ``to_record()`` (a map
in the statements' value model) and only then sends what it returned. After a
crash, ``from_record`` and ``pending()`` say what to send again; every message is
safe to send twice (a responder answers a repeated m1 with the same m2 while the
exchange is open, a repeated N_O with the same N_R).

The rule (protocol.md 10.1), applied by ``outcome``: a standard contract
(m1, N_O, m2, N_R) or a replacement contract (the notary's ``resolve`` decision)
proves the contract binds both parties, whatever else exists; an abort token proves
only that the notary will issue no replacement for that exchange id, never that no
contract exists. So evidence holding a contract is ``signed``; else holding an
abort token is ``aborted``; else ``none``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Container, Iterable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, ClassVar, Final, Protocol

from ..statements import Statement, StatementError
from ._bodies import (
    ABORT_REQUEST_TYPE,
    DECISION_TYPE,
    M1,
    M1_TYPE,
    M2,
    M2_TYPE,
    RESOLVE_REQUEST_TYPE,
    SECRET_SIZE,
    AbortRequest,
    DecisionBody,
    ResolveRequest,
)
from ._errors import (
    BadSecret,
    MixedEvidence,
    NotApproved,
    Replayed,
    UnexpectedMessage,
    WrongExchange,
)

__all__ = [
    "CONTRACT_KIND",
    "ORIGINATOR_TRANSITIONS",
    "RESPONDER_TRANSITIONS",
    "AskNotary",
    "Commit",
    "Committed",
    "NotaryAnswered",
    "Originator",
    "OState",
    "Outcome",
    "Propose",
    "Proposed",
    "RState",
    "Responder",
    "Reveal",
    "Revealed",
    "Signer",
    "StandardContract",
    "Start",
    "TimedOut",
    "Verifier",
    "check_decision",
    "outcome",
    "secret_commit",
]

#: The ``kind`` of a contract's notary decisions.
CONTRACT_KIND: Final = "contract"
RECORD_VERSION: Final = 1


class Signer(Protocol):
    """Signs ``body`` as a statement of ``type`` by this party, issued at ``now_ms``."""

    def __call__(self, type: str, body: dict[str, Any], now_ms: int) -> Statement: ...


class Verifier(Protocol):
    """Checks ``statement``'s signature and signer (the signer's certificate, the
    market root, the CRL); raises the statement/certificate layers' coded errors."""

    def __call__(self, statement: Statement, *, expected_type: str,
                 expected_signer: str) -> None: ...


def secret_commit(secret: bytes) -> bytes:
    """h(N): the SHA-256 a party signs before it reveals N."""
    return hashlib.sha256(secret).digest()


# -- events in --------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Start:
    """The originator begins: sign m1, send it with the text."""


@dataclass(frozen=True, slots=True)
class Proposed:
    """The responder got ``contract.propose``: the text and m1."""

    text: bytes
    m1: Statement


@dataclass(frozen=True, slots=True)
class Committed:
    """The originator got m2."""

    m2: Statement


@dataclass(frozen=True, slots=True)
class Revealed:
    """The peer revealed its secret (N_O to the responder, N_R to the originator)."""

    secret: bytes


@dataclass(frozen=True, slots=True)
class TimedOut:
    """The party gave up waiting for its peer (or for the notary, to ask again)."""


@dataclass(frozen=True, slots=True)
class NotaryAnswered:
    """The notary's signed decision for this exchange."""

    decision: Statement


Event = Start | Proposed | Committed | Revealed | TimedOut | NotaryAnswered


# -- messages out -----------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Propose:
    """O -> R, ``contract.propose``."""

    text: bytes
    m1: Statement


@dataclass(frozen=True, slots=True)
class Commit:
    """R -> O, the answer to ``contract.propose``."""

    m2: Statement


@dataclass(frozen=True, slots=True)
class Reveal:
    """``contract.reveal``: N_O (O's request) or N_R (R's answer)."""

    exchange: bytes
    secret: bytes


@dataclass(frozen=True, slots=True)
class AskNotary:
    """To the notary: ``notary.abort`` (``op`` "abort") or ``notary.resolve``."""

    op: str
    request: Statement


Message = Propose | Commit | Reveal | AskNotary


# -- states and transition tables ----------------------------------------------------------

class OState(Enum):
    START = "start"
    AWAIT_M2 = "await_m2"
    AWAIT_SECRET = "await_secret"
    ABORTING = "aborting"
    RESOLVING = "resolving"
    SIGNED = "signed"
    ABORTED = "aborted"


class RState(Enum):
    START = "start"
    AWAIT_SECRET = "await_secret"
    RESOLVING = "resolving"
    SIGNED = "signed"
    ABORTED = "aborted"


#: The originator's one transition table: (state, event) -> the states it may reach.
ORIGINATOR_TRANSITIONS: Final[dict[tuple[OState, type], frozenset[OState]]] = {
    (OState.START, Start): frozenset({OState.AWAIT_M2}),
    (OState.AWAIT_M2, Committed): frozenset({OState.AWAIT_SECRET}),
    (OState.AWAIT_M2, TimedOut): frozenset({OState.ABORTING}),
    (OState.AWAIT_SECRET, Revealed): frozenset({OState.SIGNED}),
    (OState.AWAIT_SECRET, TimedOut): frozenset({OState.RESOLVING}),
    (OState.ABORTING, TimedOut): frozenset({OState.ABORTING}),
    (OState.ABORTING, NotaryAnswered): frozenset({OState.ABORTED, OState.SIGNED}),
    (OState.RESOLVING, TimedOut): frozenset({OState.RESOLVING}),
    (OState.RESOLVING, Revealed): frozenset({OState.SIGNED}),
    (OState.RESOLVING, NotaryAnswered): frozenset({OState.SIGNED, OState.ABORTED}),
}

#: The responder's one transition table.
RESPONDER_TRANSITIONS: Final[dict[tuple[RState, type], frozenset[RState]]] = {
    (RState.START, Proposed): frozenset({RState.AWAIT_SECRET}),
    (RState.AWAIT_SECRET, Proposed): frozenset({RState.AWAIT_SECRET}),  # same m1: same m2
    (RState.AWAIT_SECRET, Revealed): frozenset({RState.SIGNED}),
    (RState.AWAIT_SECRET, TimedOut): frozenset({RState.RESOLVING}),
    (RState.RESOLVING, TimedOut): frozenset({RState.RESOLVING}),
    (RState.RESOLVING, Revealed): frozenset({RState.SIGNED}),
    (RState.RESOLVING, NotaryAnswered): frozenset({RState.SIGNED, RState.ABORTED}),
    (RState.SIGNED, Revealed): frozenset({RState.SIGNED}),  # O asks again: same N_R
    # A known exchange id in any other state: fairexchange.replayed (see _on_proposed).
    (RState.SIGNED, Proposed): frozenset(),
    (RState.RESOLVING, Proposed): frozenset(),
    (RState.ABORTED, Proposed): frozenset(),
}


# -- evidence and the rule ----------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class StandardContract:
    """(m1, N_O, m2, N_R): the contract both parties hold in the faultless run."""

    m1: Statement
    m2: Statement
    secret_o: bytes
    secret_r: bytes


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a set of evidence proves about one exchange (the rule, protocol.md 10.1).

    ``state``: ``"signed"`` (a contract binds both parties), ``"aborted"`` (the notary
    will issue no replacement; a standard contract may still exist elsewhere) or
    ``"none"``. ``proof``: the evidence that decided it (a ``StandardContract`` or a
    decision statement), None for ``"none"``."""

    state: str
    exchange: bytes | None
    text: bytes | None = None
    proof: StandardContract | Statement | None = None
    resolved_by: str | None = None  # "exchange" | "notary" for "signed"


def _check_m1(m1: Statement, verify: Verifier) -> M1:
    body = M1.from_statement(m1)
    verify(m1, expected_type=M1_TYPE, expected_signer=body.originator)
    return body


def _check_m2(m2: Statement, m1: Statement, first: M1, verify: Verifier) -> M2:
    body = M2.from_statement(m2)
    if body.exchange != first.exchange:
        raise WrongExchange("m2 names another exchange", detail={"field": "m2.exchange"})
    if body.m1 != m1.digest:
        raise WrongExchange("m2 commits to another m1", detail={"field": "m2.m1"})
    verify(m2, expected_type=M2_TYPE, expected_signer=first.responder)
    return body


def check_standard(contract: StandardContract, verify: Verifier) -> M1:
    """Check (m1, N_O, m2, N_R) whole; m1's body. Raises coded errors."""
    first = _check_m1(contract.m1, verify)
    second = _check_m2(contract.m2, contract.m1, first, verify)
    if secret_commit(contract.secret_o) != first.commit:
        raise BadSecret("N_O does not hash to m1's commitment", detail={"field": "secret_o"})
    if secret_commit(contract.secret_r) != second.commit:
        raise BadSecret("N_R does not hash to m2's commitment", detail={"field": "secret_r"})
    return first


def check_decision(decision: Statement, verify: Verifier,
                   m1: Statement | None = None) -> tuple[str, M1, DecisionBody]:
    """Check a contract decision of the notary: an abort token or a replacement
    contract, against ``m1`` if given (else the m1 it quotes). Returns
    (``"abort"``|``"resolve"``, m1's body, the decision's body).

    Raises:
        WrongExchange: not a contract decision, or one for another m1/exchange/notary;
            NotParty-free: the request inside must be the one its decision needs.
        BadBody, StatementError, CertificateError: as the layers below say.
    """
    body = DecisionBody.from_statement(decision)
    if body.kind != CONTRACT_KIND:
        raise WrongExchange("not a contract decision", detail={"field": "kind"})
    if body.decision == "abort":
        request = AbortRequest.from_statement(body.request)
        quoted = request.m1
    elif body.decision == "resolve":
        resolve = ResolveRequest.from_statement(body.request)
        quoted = resolve.m1
    else:
        raise WrongExchange(f"unknown contract decision {body.decision!r}",
                            detail={"field": "decision"})
    if m1 is not None and quoted != m1:
        raise WrongExchange("the decision is about another m1", detail={"field": "request.m1"})
    first = _check_m1(quoted, verify)
    if body.initiator != first.originator:
        raise WrongExchange("the decision names another initiator than m1's originator",
                            detail={"field": "initiator"})
    if body.exchange != first.exchange or body.subject != quoted.digest:
        raise WrongExchange("the decision names another exchange",
                            detail={"field": "exchange" if body.exchange != first.exchange
                                    else "subject"})
    verify(decision, expected_type=DECISION_TYPE, expected_signer=first.notary)
    if body.decision == "abort":
        if AbortRequest.from_statement(body.request).exchange != first.exchange:
            raise WrongExchange("abort request for another exchange",
                                detail={"field": "request.exchange"})
        verify(body.request, expected_type=ABORT_REQUEST_TYPE, expected_signer=first.originator)
    else:
        resolve = ResolveRequest.from_statement(body.request)
        if resolve.exchange != first.exchange:
            raise WrongExchange("resolve request for another exchange",
                                detail={"field": "request.exchange"})
        _check_m2(resolve.m2, quoted, first, verify)
        _verify_either(body.request, first, verify)
    return body.decision, first, body


def _verify_either(request: Statement, first: M1, verify: Verifier) -> None:
    """A resolve request is signed by the originator or by the responder."""
    try:
        verify(request, expected_type=RESOLVE_REQUEST_TYPE, expected_signer=first.originator)
    except StatementError:
        verify(request, expected_type=RESOLVE_REQUEST_TYPE, expected_signer=first.responder)


def outcome(evidence: Iterable[StandardContract | Statement], *,
            verify: Verifier) -> Outcome:
    """Apply the rule to ``evidence`` about one exchange (protocol.md 10.1).

    Every item is checked (signatures included); any valid contract (standard or
    replacement) gives ``signed``, even beside an abort token; else an abort token
    gives ``aborted``; else (no evidence) ``none``. Deterministic: a standard
    contract is the proof before a replacement.

    Raises:
        MixedEvidence: items about different exchanges (an exchange is its id and
            its originator, the initiator: another originator's evidence with the
            same id is another exchange's), or an item that is neither a
            ``StandardContract`` nor a notary decision statement.
        the coded errors of a bad item (``fairexchange.*``, ``statement.*``, ``auth.*``).
    """
    exchange: tuple[bytes, str] | None = None  # (id, originator)
    text: bytes | None = None
    standard: StandardContract | None = None
    replacement: Statement | None = None
    abort: Statement | None = None
    for item in evidence:
        if isinstance(item, StandardContract):
            first = check_standard(item, verify)
            if standard is None:
                standard = item
        elif isinstance(item, Statement) and item.type == DECISION_TYPE:
            verdict, first, _ = check_decision(item, verify)
            if verdict == "resolve":
                if replacement is None or item.digest < replacement.digest:
                    replacement = item
            elif abort is None or item.digest < abort.digest:
                abort = item
        else:
            raise MixedEvidence("not contract evidence", detail={"field": "evidence"})
        # An exchange is its id scoped by its initiator (10.1), as at the notary:
        # another originator's m1 or decision with the same id is another exchange.
        if exchange is not None and (first.exchange, first.originator) != exchange:
            raise MixedEvidence("evidence about two exchanges", detail={
                "field": "exchange" if first.exchange != exchange[0] else "initiator"})
        exchange, text = (first.exchange, first.originator), first.text
    if exchange is None:
        return Outcome("none", None)
    if standard is not None:
        return Outcome("signed", exchange[0], text, standard, "exchange")
    if replacement is not None:
        return Outcome("signed", exchange[0], text, replacement, "notary")
    assert abort is not None
    return Outcome("aborted", exchange[0], text, abort)


# -- the machines -------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class _Step:
    target: Any
    changes: dict[str, Any] = field(default_factory=dict)
    out: list[Message] = field(default_factory=list)


def _event_name(event: object) -> str:
    return type(event).__name__


class _Machine:
    """The receive loop both parties share: look up, check, then apply at once."""

    _KIND: ClassVar[str]
    _TABLE: ClassVar[dict[tuple[Any, type], frozenset[Any]]]
    _STATES: ClassVar[type[Enum]]
    #: persisted fields: name -> "bytes" | "str" | "statement"
    _FIELDS: ClassVar[dict[str, str]]

    state: Any

    def __init__(self, *, sign: Signer, verify: Verifier) -> None:
        self._sign = sign
        self._verify = verify

    def receive(self, event: Event, *, now_ms: int) -> list[Message]:
        """Feed one event; the messages to send (after persisting ``to_record()``).

        Raises:
            UnexpectedMessage: no transition for (state, event); nothing changed.
            FairExchangeError, StatementError, CertificateError: the event's content
                is refused with its code; nothing changed.
        """
        if type(now_ms) is not int:
            raise TypeError("now_ms must be an int of Unix milliseconds")
        targets = self._TABLE.get((self.state, type(event)))
        if targets is None:
            raise UnexpectedMessage(
                f"{_event_name(event)} in state {self.state.value}",
                detail={"state": self.state.value, "event": _event_name(event)})
        handler = getattr(self, "_on_" + _event_name(event).lower())
        step: _Step = handler(event, now_ms)
        if step.target not in targets:  # a handler bug, never input
            raise AssertionError(f"{self.state} -> {step.target} is not in the table")
        for name, value in step.changes.items():
            setattr(self, name, value)
        self.state = step.target
        return step.out

    @property
    def finished(self) -> bool:
        return self.state.value in ("signed", "aborted")

    # -- persistence ----------------------------------------------------------------------

    def to_record(self) -> dict[str, Any]:
        """The machine as a plain map (statements by their canonical bytes)."""
        record: dict[str, Any] = {"machine": self._KIND, "v": RECORD_VERSION,
                                  "state": self.state.value}
        for name, codec in self._FIELDS.items():
            value = getattr(self, name)
            record[name] = value.to_bytes() if codec == "statement" and value is not None \
                else value
        return record

    def _load(self, record: dict[str, Any]) -> None:
        if record.get("machine") != self._KIND or record.get("v") != RECORD_VERSION:
            raise ValueError(f"not a {self._KIND} record of version {RECORD_VERSION}")
        self.state = self._STATES(record["state"])
        for name, codec in self._FIELDS.items():
            value = record[name]
            if codec == "statement" and value is not None:
                value = Statement.from_bytes(value)
            setattr(self, name, value)

    def _decision(self, event: NotaryAnswered, m1: Statement) -> tuple[str, Any]:
        verdict, _, _ = check_decision(event.decision, self._verify, m1)
        return verdict, event.decision


class Originator(_Machine):
    """O: signs m1, reveals N_O once it holds m2, may abort before that and resolve
    after. ``exchange`` and ``secret`` are 32 fresh random bytes each."""

    _KIND: ClassVar[str] = "fairexchange.originator"
    _TABLE: ClassVar[dict[tuple[Any, type], frozenset[Any]]] = ORIGINATOR_TRANSITIONS
    _STATES: ClassVar[type[Enum]] = OState
    _FIELDS: ClassVar[dict[str, str]] = {
        "exchange": "bytes", "originator": "str", "responder": "str", "notary": "str",
        "text": "bytes", "secret": "bytes", "m1": "statement", "m2": "statement",
        "peer_secret": "bytes", "request": "statement", "decision": "statement"}

    state: OState
    m1: Statement | None
    m2: Statement | None
    peer_secret: bytes | None
    request: Statement | None
    decision: Statement | None

    def __init__(self, *, exchange: bytes, originator: str, responder: str, notary: str,
                 text: bytes, secret: bytes, sign: Signer, verify: Verifier) -> None:
        super().__init__(sign=sign, verify=verify)
        if type(exchange) is not bytes or len(exchange) != 32:
            raise ValueError("exchange must be 32 bytes")
        if type(secret) is not bytes or len(secret) != SECRET_SIZE:
            raise ValueError(f"secret must be {SECRET_SIZE} bytes")
        self.state = OState.START
        self.exchange, self.originator, self.responder = exchange, originator, responder
        self.notary, self.text, self.secret = notary, bytes(text), secret
        self.m1 = self.m2 = self.request = self.decision = None
        self.peer_secret = None

    @classmethod
    def from_record(cls, record: dict[str, Any], *, sign: Signer,
                    verify: Verifier) -> Originator:
        machine = cls.__new__(cls)
        _Machine.__init__(machine, sign=sign, verify=verify)
        machine._load(record)
        return machine

    def pending(self) -> list[Message]:
        """What to send (again) in this state, e.g. after a restart."""
        if self.state is OState.AWAIT_M2:
            assert self.m1 is not None
            return [Propose(self.text, self.m1)]
        if self.state is OState.AWAIT_SECRET:
            return [Reveal(self.exchange, self.secret)]
        if self.state in (OState.ABORTING, OState.RESOLVING):
            assert self.request is not None
            return [AskNotary("abort" if self.state is OState.ABORTING else "resolve",
                              self.request)]
        return []

    def evidence(self) -> list[StandardContract | Statement]:
        """What this party holds, for ``outcome``."""
        held: list[StandardContract | Statement] = []
        if self.m1 is not None and self.m2 is not None and self.peer_secret is not None:
            held.append(StandardContract(self.m1, self.m2, self.secret, self.peer_secret))
        if self.decision is not None:
            held.append(self.decision)
        return held

    # -- handlers -------------------------------------------------------------------------

    def _on_start(self, event: Start, now_ms: int) -> _Step:
        body = M1(exchange=self.exchange, originator=self.originator, responder=self.responder,
                  notary=self.notary, text=hashlib.sha256(self.text).digest(),
                  commit=secret_commit(self.secret))
        m1 = self._sign(M1_TYPE, body.to_body(), now_ms)
        return _Step(OState.AWAIT_M2, {"m1": m1}, [Propose(self.text, m1)])

    def _on_committed(self, event: Committed, now_ms: int) -> _Step:
        assert self.m1 is not None
        _check_m2(event.m2, self.m1, M1.from_statement(self.m1), self._verify)
        return _Step(OState.AWAIT_SECRET, {"m2": event.m2},
                     [Reveal(self.exchange, self.secret)])

    def _on_revealed(self, event: Revealed, now_ms: int) -> _Step:
        assert self.m2 is not None
        if type(event.secret) is not bytes or secret_commit(event.secret) != \
                M2.from_statement(self.m2).commit:
            raise BadSecret("N_R does not hash to m2's commitment", detail={"field": "secret"})
        return _Step(OState.SIGNED, {"peer_secret": event.secret})

    def _on_timedout(self, event: TimedOut, now_ms: int) -> _Step:
        assert self.m1 is not None
        if self.state in (OState.ABORTING, OState.RESOLVING):
            return _Step(self.state, {}, self.pending())
        if self.state is OState.AWAIT_M2:
            body = AbortRequest(exchange=self.exchange, m1=self.m1)
            request = self._sign(ABORT_REQUEST_TYPE, body.to_body(), now_ms)
            return _Step(OState.ABORTING, {"request": request}, [AskNotary("abort", request)])
        assert self.m2 is not None
        resolve = ResolveRequest(exchange=self.exchange, m1=self.m1, m2=self.m2)
        request = self._sign(RESOLVE_REQUEST_TYPE, resolve.to_body(), now_ms)
        return _Step(OState.RESOLVING, {"request": request}, [AskNotary("resolve", request)])

    def _on_notaryanswered(self, event: NotaryAnswered, now_ms: int) -> _Step:
        assert self.m1 is not None
        verdict, decision = self._decision(event, self.m1)
        return _Step(OState.SIGNED if verdict == "resolve" else OState.ABORTED,
                     {"decision": decision})


class Responder(_Machine):
    """R: signs m2 only over a text approved beforehand with this originator, reveals
    N_R once it holds N_O, may resolve after sending m2.

    ``approvals``: the (originator, SHA-256 of the text) pairs R consented to.
    ``peer``: the originator as the channel authenticated it. ``notaries``: the
    notaries R accepts. ``secret``: N_R, 32 fresh random bytes. Keep the machine of
    every exchange id seen (its record), so that a replayed m1 finds it
    (``fairexchange.replayed``)."""

    _KIND: ClassVar[str] = "fairexchange.responder"
    _TABLE: ClassVar[dict[tuple[Any, type], frozenset[Any]]] = RESPONDER_TRANSITIONS
    _STATES: ClassVar[type[Enum]] = RState
    _FIELDS: ClassVar[dict[str, str]] = {
        "responder": "str", "peer": "str", "secret": "bytes", "text": "bytes",
        "m1": "statement", "m2": "statement", "peer_secret": "bytes",
        "request": "statement", "decision": "statement"}

    state: RState
    text: bytes | None
    m1: Statement | None
    m2: Statement | None
    peer_secret: bytes | None
    request: Statement | None
    decision: Statement | None

    def __init__(self, *, responder: str, peer: str, secret: bytes,
                 approvals: Container[tuple[str, bytes]], notaries: Container[str],
                 sign: Signer, verify: Verifier) -> None:
        super().__init__(sign=sign, verify=verify)
        if type(secret) is not bytes or len(secret) != SECRET_SIZE:
            raise ValueError(f"secret must be {SECRET_SIZE} bytes")
        self.state = RState.START
        self.responder, self.peer, self.secret = responder, peer, secret
        self._approvals, self._notaries = approvals, notaries
        self.text = self.m1 = self.m2 = self.request = self.decision = None
        self.peer_secret = None

    @classmethod
    def from_record(cls, record: dict[str, Any], *, sign: Signer,
                    verify: Verifier) -> Responder:
        machine = cls.__new__(cls)
        _Machine.__init__(machine, sign=sign, verify=verify)
        machine._approvals, machine._notaries = (), ()
        machine._load(record)
        return machine

    @property
    def exchange(self) -> bytes | None:
        return None if self.m1 is None else M1.from_statement(self.m1).exchange

    def pending(self) -> list[Message]:
        """What to send (again) by itself: only a resolve request (R otherwise answers)."""
        if self.state is RState.RESOLVING:
            assert self.request is not None
            return [AskNotary("resolve", self.request)]
        return []

    def evidence(self) -> list[StandardContract | Statement]:
        held: list[StandardContract | Statement] = []
        if self.m1 is not None and self.m2 is not None and self.peer_secret is not None:
            held.append(StandardContract(self.m1, self.m2, self.peer_secret, self.secret))
        if self.decision is not None:
            held.append(self.decision)
        return held

    # -- handlers -------------------------------------------------------------------------

    def _on_proposed(self, event: Proposed, now_ms: int) -> _Step:
        if self.state is not RState.START:
            if (self.state is RState.AWAIT_SECRET and event.m1 == self.m1
                    and event.text == self.text):
                return _Step(self.state, {}, [Commit(self.m2)])  # type: ignore[arg-type]
            first = M1.from_statement(self.m1)  # type: ignore[arg-type]
            raise Replayed("this exchange id was seen before",
                           detail={"exchange": first.exchange.hex()})
        if type(event.text) is not bytes:
            raise WrongExchange("the text must be bytes", detail={"field": "text"})
        first = M1.from_statement(event.m1)
        if first.responder != self.responder:
            raise WrongExchange("m1 names another responder", detail={"field": "responder"})
        if first.originator != self.peer:
            raise WrongExchange("m1 names another originator than the peer",
                                detail={"field": "originator"})
        if first.notary not in self._notaries:
            raise WrongExchange("m1 names a notary this responder does not accept",
                                detail={"field": "notary"})
        digest = hashlib.sha256(event.text).digest()
        if digest != first.text:
            raise WrongExchange("the text is not the one m1 names", detail={"field": "text"})
        self._verify(event.m1, expected_type=M1_TYPE, expected_signer=first.originator)
        if (first.originator, digest) not in self._approvals:
            raise NotApproved(f"{first.originator} asked to sign a text not approved",
                              detail={"originator": first.originator, "text": digest.hex()})
        body = M2(exchange=first.exchange, m1=event.m1.digest, commit=secret_commit(self.secret))
        m2 = self._sign(M2_TYPE, body.to_body(), now_ms)
        return _Step(RState.AWAIT_SECRET, {"text": event.text, "m1": event.m1, "m2": m2},
                     [Commit(m2)])

    def _on_revealed(self, event: Revealed, now_ms: int) -> _Step:
        assert self.m1 is not None
        first = M1.from_statement(self.m1)
        if type(event.secret) is not bytes or secret_commit(event.secret) != first.commit:
            raise BadSecret("N_O does not hash to m1's commitment", detail={"field": "secret"})
        return _Step(RState.SIGNED, {"peer_secret": event.secret},
                     [Reveal(first.exchange, self.secret)])

    def _on_timedout(self, event: TimedOut, now_ms: int) -> _Step:
        if self.state is RState.RESOLVING:
            return _Step(self.state, {}, self.pending())
        assert self.m1 is not None and self.m2 is not None
        first = M1.from_statement(self.m1)
        resolve = ResolveRequest(exchange=first.exchange, m1=self.m1, m2=self.m2)
        request = self._sign(RESOLVE_REQUEST_TYPE, resolve.to_body(), now_ms)
        return _Step(RState.RESOLVING, {"request": request}, [AskNotary("resolve", request)])

    def _on_notaryanswered(self, event: NotaryAnswered, now_ms: int) -> _Step:
        assert self.m1 is not None
        verdict, decision = self._decision(event, self.m1)
        return _Step(RState.SIGNED if verdict == "resolve" else RState.ABORTED,
                     {"decision": decision})
