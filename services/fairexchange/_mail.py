"""Certified mail: a message for a signed receipt, fairly, sans-IO.

Theory of operation. The sender seals the message under a fresh key and escrows the
key for the notary (``_escrow``), then signs a ``mail.offer`` naming the exchange,
both parties, the notary, the ciphertext's and the plaintext's SHA-256, the escrow
and a deadline. The faultless run is three messages:

1. ``mail.deliver`` (sender -> receiver): the offer and the ciphertext; the answer is
   the receiver's ``mail.receipt``, signed over the same fields and the offer's digest;
2. ``mail.reveal`` (sender -> receiver): the key, which the receiver checks opens
   the ciphertext to the signed plaintext digest.

Recovery goes through the notary, whose first decision for an exchange id stands
(``NotaryBook``; the decision is a ``fairexchange.decision`` of kind ``mail``):

* a receiver that signed its receipt and has no good key by the deadline sends
  ``notary.recover_mail`` (offer, receipt, ciphertext). The notary opens the escrow:
  decision ``release`` with the key as payload, quoting the receipt (so the sender
  gets its copy of the receipt from the notary), or, if the escrow does not give the
  signed plaintext, decision ``void`` with the reason as payload: a signed finding
  that voids the receipt;
* a sender with no receipt at the deadline sends ``notary.close_mail`` (the offer):
  the notary answers its decision if it has one (a ``release`` carries the receipt),
  else decides ``abort`` (quoting the offer), which voids any receipt of the exchange.
  The notary refuses ``close_mail`` before the deadline, so a receiver always has
  until then to recover.

The rule (what proves what): a receipt proves the receiver got the message unless the
notary signed a ``void`` or ``abort`` decision for its exchange; a ``release`` decision
proves it whatever else exists.

Each party is a machine with one transition table (h11 pattern). The driver verifies
signatures (``Context.verify``) before it feeds a statement, persists the machine's
record (``to_record``) after every transition and before it acts on ``pending()``,
and feeds ``DeadlinePassed`` when ``timer()`` is due. Time comes in as ``now_ms``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from types import MappingProxyType
from typing import Any, ClassVar, Final, Self

from cryptography.hazmat.primitives.asymmetric import x25519

from .._errors import ServiceError
from .._schema import STATEMENT, Body, Schema, binary, wire
from ..statements import Statement, StatementError
from ._bodies import DECISION_TYPE, DecisionBody
from ._contract import NotaryAnswered
from ._errors import (
    BadEscrow,
    ConflictingExchange,
    MixedEvidence,
    NotParty,
    TooEarly,
    UnexpectedStep,
    WrongExchange,
)
from ._escrow import KEY_SIZE, SCHEMA, EscrowLabel, digest, open_content, recover, seal
from ._notary import Decision, NotaryBook

__all__ = [
    "CLOSE",
    "KIND",
    "MAX_CIPHERTEXT",
    "OFFER_TYPE",
    "RECEIPT_TYPE",
    "CiphertextWire",
    "CloseMailWire",
    "DeadlinePassed",
    "DeliverMail",
    "MailArrived",
    "KeyWire",
    "MailOffer",
    "MailOutcome",
    "MailReceipt",
    "MailReceiver",
    "MailSender",
    "MailState",
    "NotaryAnswered",
    "KeyRevealed",
    "ReceiptReceived",
    "ReceiptSigned",
    "ReceiptWire",
    "SignReceipt",
    "Verdict",
    "Verify",
    "prepare",
    "read_decision",
    "recover_mail",
    "RecoverMailWire",
    "KeyGiven",
    "AskCloseMail",
    "AskRecoverMail",
    "RevealKey",
    "SendReceipt",
    "close_mail",
    "judge_close_mail",
    "judge_recover_mail",
    "mail_outcome",
]

OFFER_TYPE: Final = "mail.offer"
RECEIPT_TYPE: Final = "mail.receipt"
#: The notary decisions' ``kind`` for certified mail.
KIND: Final = "mail"
#: The decision a ``close_mail`` gets when nothing was decided before.
CLOSE: Final = "abort"
#: The reason a receipt is void when the sender took its exchange id before (10.4).
REUSED: Final = "reused_exchange"
#: The largest ciphertext carried (one frame holds it with room to spare).
MAX_CIPHERTEXT: Final = 512 * 1024
_CIPHERTEXT: Final = binary(28, MAX_CIPHERTEXT, f"28 to {MAX_CIPHERTEXT} bytes")


# -- statements ---------------------------------------------------------------------------

@dataclass(frozen=True, slots=True, kw_only=True)
class MailOffer(Body):
    """``mail.offer``, signed by the sender."""

    TYPE: ClassVar[str] = OFFER_TYPE
    SCHEMA: ClassVar[Schema] = SCHEMA

    exchange: bytes
    sender: str
    receiver: str
    notary: str
    ciphertext: bytes
    content: bytes
    escrow: bytes
    deadline: int

    def _check(self) -> None:
        if self.sender == self.receiver:
            self.SCHEMA.fail(self.TYPE, "receiver", "must not be the sender")

    def label(self) -> EscrowLabel:
        return EscrowLabel(purpose="mail", exchange=self.exchange, sender=self.sender,
                           receiver=self.receiver, notary=self.notary)


@dataclass(frozen=True, slots=True, kw_only=True)
class MailReceipt(Body):
    """``mail.receipt``, signed by the receiver over the offer's fields and digest."""

    TYPE: ClassVar[str] = RECEIPT_TYPE
    SCHEMA: ClassVar[Schema] = SCHEMA

    offer: bytes
    exchange: bytes
    sender: str
    receiver: str
    notary: str
    ciphertext: bytes
    content: bytes
    deadline: int

    @classmethod
    def for_offer(cls, offer: Statement) -> MailReceipt:
        body = MailOffer.from_statement(offer)
        return cls(offer=offer.digest, exchange=body.exchange, sender=body.sender,
                   receiver=body.receiver, notary=body.notary, ciphertext=body.ciphertext,
                   content=body.content, deadline=body.deadline)


# -- op bodies --------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True, kw_only=True)
class CiphertextWire(Body):
    """``mail.deliver`` request: the signed offer and the ciphertext."""

    TYPE: ClassVar[str] = "mail.deliver"
    SCHEMA: ClassVar[Schema] = SCHEMA

    offer: Statement = field(metadata=wire(STATEMENT))
    ciphertext: bytes = field(metadata=wire(_CIPHERTEXT))


@dataclass(frozen=True, slots=True, kw_only=True)
class ReceiptWire(Body):
    """``mail.deliver`` answer: the receiver's signed receipt."""

    TYPE: ClassVar[str] = "mail.deliver"
    SCHEMA: ClassVar[Schema] = SCHEMA

    receipt: Statement = field(metadata=wire(STATEMENT))


@dataclass(frozen=True, slots=True, kw_only=True)
class KeyWire(Body):
    """``mail.reveal`` and ``fair.release``: the content key of an exchange."""

    TYPE: ClassVar[str] = "mail.reveal"
    SCHEMA: ClassVar[Schema] = SCHEMA

    exchange: bytes
    key: bytes = field(metadata=wire(binary(KEY_SIZE, KEY_SIZE, f"{KEY_SIZE} bytes")))


@dataclass(frozen=True, slots=True, kw_only=True)
class RecoverMailWire(Body):
    """``notary.recover_mail`` request: the offer, the receipt, the ciphertext."""

    TYPE: ClassVar[str] = "notary.recover_mail"
    SCHEMA: ClassVar[Schema] = SCHEMA

    offer: Statement = field(metadata=wire(STATEMENT))
    receipt: Statement = field(metadata=wire(STATEMENT))
    ciphertext: bytes = field(metadata=wire(_CIPHERTEXT))
    #: the signers' certificates (DER) of the statements quoted (protocol.md 10.4)
    certificates: tuple[bytes, ...] | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class CloseMailWire(Body):
    """``notary.close_mail`` request: the sender's offer."""

    TYPE: ClassVar[str] = "notary.close_mail"
    SCHEMA: ClassVar[Schema] = SCHEMA

    offer: Statement = field(metadata=wire(STATEMENT))
    certificates: tuple[bytes, ...] | None = None


# -- events in, actions out -------------------------------------------------------------------
# Built by the driver, which has verified every statement's signature first.

@dataclass(frozen=True, slots=True)
class MailArrived:
    """Receiver: the offer and ciphertext arrived."""

    offer: Statement
    ciphertext: bytes


@dataclass(frozen=True, slots=True)
class ReceiptSigned:
    """Receiver: the driver signed the receipt ``SignReceipt`` asked for."""

    receipt: Statement


@dataclass(frozen=True, slots=True)
class ReceiptReceived:
    """Sender: the receiver's receipt arrived."""

    receipt: Statement


@dataclass(frozen=True, slots=True)
class KeyGiven:
    """Sender: the key was given to the receiver (its ``RevealKey`` was answered)."""


@dataclass(frozen=True, slots=True)
class KeyRevealed:
    """Receiver (and the fair buyer): a key arrived from the other party."""

    key: bytes


@dataclass(frozen=True, slots=True)
class DeadlinePassed:
    """The machine's ``timer()`` is due."""


@dataclass(frozen=True, slots=True)
class DeliverMail:
    """Sender: send ``mail.deliver`` (the offer and the ciphertext)."""

    offer: Statement
    ciphertext: bytes


@dataclass(frozen=True, slots=True)
class SignReceipt:
    """Receiver: sign this receipt body, then feed ``ReceiptSigned``."""

    body: MailReceipt


@dataclass(frozen=True, slots=True)
class SendReceipt:
    """Receiver: the receipt to answer ``mail.deliver`` with (again, after a restart)."""

    receipt: Statement


@dataclass(frozen=True, slots=True)
class RevealKey:
    """Sender: send the key (``mail.reveal``), then feed ``KeyGiven``."""

    exchange: bytes
    key: bytes


@dataclass(frozen=True, slots=True)
class AskRecoverMail:
    """Receiver: send ``notary.recover_mail``; feed the answer as ``NotaryAnswered``."""

    offer: Statement
    receipt: Statement
    ciphertext: bytes


@dataclass(frozen=True, slots=True)
class AskCloseMail:
    """Sender: send ``notary.close_mail``; feed the answer as ``NotaryAnswered``."""

    offer: Statement


@dataclass(frozen=True, slots=True, kw_only=True)
class Verdict:
    """What the notary decides when it has no decision yet for ``exchange``: the fields
    of its ``fairexchange.decision`` (the book adds ``seq`` and ``previous``)."""

    exchange: bytes
    kind: str
    decision: str
    subject: bytes
    request: Statement
    payload: bytes | None = None
    #: The signer of the exchange's first message (a mail's sender, a fair purchase's
    #: buyer): the notary keys an exchange by it and the id, so nobody else can take
    #: the id first (protocol.md 10.1).
    initiator: str | None = None


#: ``verify(statement, *, expected_type=, expected_signer=)``: the driver's signature
#: check (``Context.verify``, the same port as contract signing's); raises a coded error
#: for a statement it refuses.
Verify = Callable[..., Any]


# -- the machines' shared rules ---------------------------------------------------------------

class _Machine:
    """The receive loop and the record, shared by the four machines of this package's
    escrowed exchanges (``MailSender``, ``MailReceiver``, ``FairSeller``, ``FairBuyer``).

    Rules (h11's, for every side):

    1. An event with no entry in the machine's ``_TABLE`` for its state is refused
       with ``fairexchange.unexpected_step`` and the machine enters ``ERROR``, where it
       refuses everything.
    2. An event with an entry whose content fails a check raises that check's code and
       leaves the machine as it was.

    A table value is the tuple of states the event may lead to; the first is the one
    taken unless the handler names another of them (``"_state"`` in its changes).
    Late and repeated messages have entries that lead back to the same state and
    change nothing, so a driver can feed what the network brings.
    """

    __slots__ = ("_state",)

    _KIND: ClassVar[str]
    _STATES: ClassVar[type[Enum]]
    _TABLE: ClassVar[Mapping[tuple[Any, type], tuple[Any, ...]]]
    #: attribute (without "_") -> codec, in the record's order
    _FIELDS: ClassVar[dict[str, str]]
    #: state -> the fields that must be set in it (a record without one is refused)
    _NEEDS: ClassVar[dict[Any, tuple[str, ...]]] = {}
    _state: Any

    @property
    def state(self) -> Any:
        return self._state

    def receive(self, event: object, *, now_ms: int) -> list[object]:
        """Feed one event; return ``pending()`` of the new state.

        Raises:
            UnexpectedStep: no transition for this event here (the machine is in ERROR).
            FairExchangeError, StatementError: the event's content is refused (the
                machine is unchanged).
            TypeError: ``now_ms`` is not an int.
        """
        if type(now_ms) is not int:
            raise TypeError("now_ms must be an int of Unix milliseconds")
        targets = self._TABLE.get((self._state, type(event)))
        if targets is None:
            previous, self._state = self._state, self._STATES["ERROR"]
            name = type(event).__name__
            raise UnexpectedStep(f"{self._KIND} in state {previous.value!r} cannot take {name}",
                                 detail={"machine": self._KIND, "state": previous.value,
                                         "event": name})
        method = _HANDLERS.get(type(event))
        if method is None:
            method = _HANDLERS[type(event)] = "_on_" + _snake(type(event).__name__)
        handler = getattr(self, method, None)
        changes: dict[str, Any] = {} if handler is None else handler(event, now_ms)
        target = changes.pop("_state", targets[0])
        assert target in targets, f"{self._KIND}: {target} is not in the table"
        for attribute, value in changes.items():
            setattr(self, attribute, value)
        self._state = target
        return self.pending()

    def pending(self) -> list[object]:
        """What the current state needs the driver to do (again, after a restart)."""
        raise NotImplementedError

    def timer(self) -> int | None:
        """When to feed ``DeadlinePassed`` (Unix ms), or None."""
        raise NotImplementedError

    def to_record(self) -> dict[str, Any]:
        """The machine as a map of the value model, to persist before acting."""
        record: dict[str, Any] = {"machine": self._KIND, "v": 1, "state": self._state.value}
        for name, codec in self._FIELDS.items():
            value = getattr(self, "_" + name)
            record[name] = None if value is None else _CODECS[codec][0](value)
        return record

    @classmethod
    def from_record(cls, record: object) -> Self:
        """Rebuild a machine from ``to_record()``.

        Raises:
            ValueError: not a record of this machine, or a field that does not decode.
        """
        if type(record) is not dict or record.get("machine") != cls._KIND \
                or record.get("v") != 1 or set(record) != {"machine", "v", "state",
                                                              *cls._FIELDS}:
            raise ValueError(f"not a {cls._KIND} record")
        machine = cls.__new__(cls)
        try:
            machine._state = cls._STATES(record["state"])
            for name, codec in cls._FIELDS.items():
                raw = record[name]
                setattr(machine, "_" + name, None if raw is None else _CODECS[codec][1](raw))
        except (StatementError, ValueError, TypeError) as exc:
            raise ValueError(f"{cls._KIND} record does not decode: {exc}") from None
        missing = [n for n in cls._NEEDS.get(machine._state, ())
                   if getattr(machine, "_" + n) is None]
        if missing:
            raise ValueError(f"{cls._KIND} in state {machine._state.value!r} needs {missing}")
        try:
            machine._validate()
        except (ServiceError, ValueError, TypeError) as exc:
            raise ValueError(f"{cls._KIND} record's fields do not fit: {exc}") from None
        return machine

    def _validate(self) -> None:
        """Subclasses: raise (a coded error, ValueError) if the restored fields do not
        fit together (the statements' bodies, the ciphertext's digest)."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._state.value}>"


#: event class -> the name of its handler, made once per class.
_HANDLERS: dict[type, str] = {}


def _snake(name: str) -> str:
    return "".join("_" + c.lower() if c.isupper() else c for c in name).lstrip("_")


def _typed(kind: type) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        if type(value) is not kind:
            raise ValueError(f"expected {kind.__name__}")
        return value
    return check


_CODECS: Final[dict[str, tuple[Callable[[Any], Any], Callable[[Any], Any]]]] = {
    "statement": (Statement.to_wire, Statement.from_wire),
    "bytes": (lambda v: v, _typed(bytes)),
    "str": (lambda v: v, _typed(str)),
    "int": (lambda v: v, _typed(int)),
}


def read_decision(decision: Statement, *, exchange: bytes, kind: str,
                  decisions: frozenset[str], initiator: str | None = None) -> DecisionBody:
    """The body of a notary decision, checked to be about ``exchange`` and ``kind``,
    and with ``initiator`` (the signer of the exchange's first message) about that
    initiator's exchange: an exchange is its id scoped by its initiator (10.1).

    Raises:
        WrongExchange: another exchange, initiator, kind, or an unknown decision.
        BadBody, StatementError: not a decision statement.
    """
    body = DecisionBody.from_statement(decision)
    checks: list[tuple[str, object, object]] = [("exchange", body.exchange, exchange),
                                                 ("kind", body.kind, kind)]
    if initiator is not None:
        checks.append(("initiator", body.initiator, initiator))
    for name, got, expected in checks:
        if got != expected:
            raise WrongExchange(f"a notary decision for another {name}", detail={"field": name})
    if body.decision not in decisions:
        raise WrongExchange(f"unknown {kind} decision {body.decision!r}",
                            detail={"field": "decision"})
    return body


def same(field_name: str, got: object, expected: object) -> None:
    """Raises WrongExchange (``field``) unless ``got == expected``."""
    if got != expected:
        raise WrongExchange(f"{field_name} is not this exchange's", detail={"field": field_name})


# -- the sender -------------------------------------------------------------------------------

class MailState(Enum):
    """Both sides' states (distinct values per side; the comment: what it waits for)."""

    # sender
    OFFERED = "offered"          # the receipt (DeliverMail); the deadline
    RECEIPTED = "receipted"      # the key to be given (RevealKey)
    REVEALED = "revealed"        # nothing: the receipt is held, the key given
    CLOSING = "closing"          # the notary's decision (AskCloseMail)
    # receiver
    IDLE = "idle"                # the offer
    RECEIVED = "received"        # the receipt to be signed (SignReceipt)
    SIGNED = "signed"            # the key (SendReceipt); the deadline
    RECOVERING = "recovering"    # the notary's decision (AskRecoverMail)
    READ = "read"                # nothing: the key opened the mail
    DECLINED = "declined"        # nothing: no receipt was signed by the deadline
    # both
    RESOLVED = "resolved"        # nothing: the notary's decision is held
    ERROR = "error"              # nothing; refuses every event


_M = MailState
_MAIL_DECISIONS: Final = frozenset({"release", "void", CLOSE})


class MailSender(_Machine):
    """The sender's machine, from the signed offer on (``prepare`` makes it).

    Holds: the offer, the ciphertext, the key; then the receipt or the notary's
    decision. ``receipt`` is the receipt the sender holds (from the receiver or from
    a ``release`` decision); ``voided`` says the notary voided the exchange.
    """

    __slots__ = ("_ciphertext", "_decision", "_key", "_offer", "_receipt")

    _KIND: ClassVar[str] = "mail.sender"
    _STATES: ClassVar[type[Enum]] = MailState
    _FIELDS: ClassVar[dict[str, str]] = {"offer": "statement", "ciphertext": "bytes",
                                         "key": "bytes", "receipt": "statement",
                                         "decision": "statement"}
    _TABLE: ClassVar[Mapping[tuple[Any, type], tuple[Any, ...]]] = MappingProxyType({
        (_M.OFFERED, ReceiptReceived): (_M.RECEIPTED,),
        (_M.OFFERED, DeadlinePassed): (_M.CLOSING,),
        (_M.RECEIPTED, KeyGiven): (_M.REVEALED,),
        # late or repeated: nothing changes
        (_M.RECEIPTED, ReceiptReceived): (_M.RECEIPTED,),
        (_M.RECEIPTED, DeadlinePassed): (_M.RECEIPTED,),
        (_M.REVEALED, ReceiptReceived): (_M.REVEALED,),
        (_M.REVEALED, KeyGiven): (_M.REVEALED,),
        (_M.REVEALED, DeadlinePassed): (_M.REVEALED,),
        # once it asked the notary, the notary decides: a late receipt is not used
        (_M.CLOSING, ReceiptReceived): (_M.CLOSING,),
        (_M.CLOSING, DeadlinePassed): (_M.CLOSING,),
        (_M.CLOSING, NotaryAnswered): (_M.RESOLVED,),
        (_M.RESOLVED, ReceiptReceived): (_M.RESOLVED,),
        (_M.RESOLVED, NotaryAnswered): (_M.RESOLVED,),
        (_M.RESOLVED, DeadlinePassed): (_M.RESOLVED,),
    })

    _NEEDS: ClassVar[dict[Any, tuple[str, ...]]] = {
        _M.OFFERED: ("offer", "ciphertext", "key"),
        _M.RECEIPTED: ("offer", "ciphertext", "key", "receipt"),
        _M.REVEALED: ("offer", "ciphertext", "key", "receipt"),
        _M.CLOSING: ("offer", "ciphertext", "key"),
        _M.RESOLVED: ("offer", "ciphertext", "key", "decision"),
        _M.ERROR: ("offer", "ciphertext", "key"),
    }

    def _validate(self) -> None:
        if self._state not in self._NEEDS:
            raise ValueError(f"{self._state.value!r} is not a sender's state")
        body = MailOffer.from_statement(self._offer)
        same("ciphertext", digest(self._ciphertext), body.ciphertext)
        if self._receipt is not None:
            _check_receipt(self._receipt, self._offer)

    def __init__(self, *, offer: Statement, ciphertext: bytes, key: bytes) -> None:
        body = MailOffer.from_statement(offer)
        same("ciphertext", digest(ciphertext), body.ciphertext)
        open_content(ciphertext, key=key, label=body.label(), content_digest=body.content)
        self._state = _M.OFFERED
        self._offer, self._ciphertext, self._key = offer, ciphertext, key
        self._receipt: Statement | None = None
        self._decision: Statement | None = None

    @property
    def offer(self) -> Statement:
        return self._offer

    @property
    def exchange(self) -> bytes:
        return MailOffer.from_statement(self._offer).exchange

    @property
    def receipt(self) -> Statement | None:
        """The receipt held, unless the notary voided the exchange."""
        return None if self.voided else self._receipt

    @property
    def decision(self) -> Statement | None:
        return self._decision

    @property
    def voided(self) -> bool:
        return self._decision is not None and (
            DecisionBody.from_statement(self._decision).decision != "release"
            or reused(self._decision, self._offer))

    def pending(self) -> list[object]:
        if self._state is _M.OFFERED:
            return [DeliverMail(offer=self._offer, ciphertext=self._ciphertext)]
        if self._state is _M.RECEIPTED:
            return [RevealKey(exchange=self.exchange, key=self._key)]
        if self._state is _M.CLOSING:
            return [AskCloseMail(offer=self._offer)]
        return []

    def timer(self) -> int | None:
        if self._state is _M.OFFERED:
            return MailOffer.from_statement(self._offer).deadline
        return None

    def _on_receipt_received(self, event: ReceiptReceived, now_ms: int) -> dict[str, Any]:
        if self._state is not _M.OFFERED:
            return {}
        _check_receipt(event.receipt, self._offer)
        return {"_receipt": event.receipt}

    def _on_notary_answered(self, event: NotaryAnswered, now_ms: int) -> dict[str, Any]:
        if reused(event.decision, self._offer):  # our id, taken before: no receipt
            if self._state is _M.RESOLVED:
                same("decision", event.decision.digest, self._decision.digest)  # type: ignore[union-attr]
                return {}
            return {"_decision": event.decision, "_receipt": None}
        body = read_decision(event.decision, exchange=self.exchange, kind=KIND,
                             decisions=_MAIL_DECISIONS,
                             initiator=MailOffer.from_statement(self._offer).sender)
        same("subject", body.subject, self._offer.digest)
        if self._state is _M.RESOLVED:
            same("decision", event.decision.digest, self._decision.digest)  # type: ignore[union-attr]
            return {}
        if body.decision == "release":  # the notary's copy of the receipt
            _check_receipt(body.request, self._offer)
            return {"_decision": event.decision, "_receipt": body.request}
        return {"_decision": event.decision}


def _check_receipt(receipt: Statement, offer: Statement) -> None:
    """Raises WrongExchange unless ``receipt`` is the receipt of ``offer`` (its body;
    the driver checked that the offer's receiver signed it)."""
    same("receipt", MailReceipt.from_statement(receipt), MailReceipt.for_offer(offer))


# -- the receiver -----------------------------------------------------------------------------

class MailReceiver(_Machine):
    """The receiver's machine, from the offer on. ``plaintext`` is the mail once read;
    ``decision`` the notary's, if it decided."""

    __slots__ = ("_ciphertext", "_decision", "_key", "_offer", "_receipt", "_receiver")

    _KIND: ClassVar[str] = "mail.receiver"
    _STATES: ClassVar[type[Enum]] = MailState
    _FIELDS: ClassVar[dict[str, str]] = {"receiver": "str", "offer": "statement",
                                         "ciphertext": "bytes", "receipt": "statement",
                                         "key": "bytes", "decision": "statement"}
    _TABLE: ClassVar[Mapping[tuple[Any, type], tuple[Any, ...]]] = MappingProxyType({
        (_M.IDLE, MailArrived): (_M.RECEIVED,),
        (_M.RECEIVED, ReceiptSigned): (_M.SIGNED,),
        (_M.RECEIVED, DeadlinePassed): (_M.DECLINED,),
        (_M.RECEIVED, MailArrived): (_M.RECEIVED,),
        (_M.SIGNED, KeyRevealed): (_M.READ,),
        (_M.SIGNED, DeadlinePassed): (_M.RECOVERING,),
        (_M.SIGNED, MailArrived): (_M.SIGNED,),
        (_M.RECOVERING, KeyRevealed): (_M.READ,),
        (_M.RECOVERING, NotaryAnswered): (_M.READ, _M.RESOLVED),
        (_M.RECOVERING, MailArrived): (_M.RECOVERING,),
        (_M.RECOVERING, DeadlinePassed): (_M.RECOVERING,),
        # late or repeated: nothing changes
        (_M.READ, KeyRevealed): (_M.READ,),
        (_M.READ, NotaryAnswered): (_M.READ,),
        (_M.READ, MailArrived): (_M.READ,),
        (_M.READ, DeadlinePassed): (_M.READ,),
        (_M.RESOLVED, KeyRevealed): (_M.RESOLVED,),
        (_M.RESOLVED, NotaryAnswered): (_M.RESOLVED,),
        (_M.RESOLVED, MailArrived): (_M.RESOLVED,),
        (_M.RESOLVED, DeadlinePassed): (_M.RESOLVED,),
        (_M.DECLINED, MailArrived): (_M.DECLINED,),
        (_M.DECLINED, DeadlinePassed): (_M.DECLINED,),
    })

    _NEEDS: ClassVar[dict[Any, tuple[str, ...]]] = {
        _M.IDLE: ("receiver",),
        _M.RECEIVED: ("receiver", "offer", "ciphertext"),
        _M.SIGNED: ("receiver", "offer", "ciphertext", "receipt"),
        _M.RECOVERING: ("receiver", "offer", "ciphertext", "receipt"),
        _M.READ: ("receiver", "offer", "ciphertext", "receipt", "key"),
        _M.RESOLVED: ("receiver", "offer", "ciphertext", "receipt", "decision"),
        _M.DECLINED: ("receiver", "offer", "ciphertext"),
        _M.ERROR: ("receiver",),
    }

    def _validate(self) -> None:
        if self._state not in self._NEEDS:
            raise ValueError(f"{self._state.value!r} is not a receiver's state")
        if self._offer is None:
            return
        body = MailOffer.from_statement(self._offer)
        same("receiver", body.receiver, self._receiver)
        if self._ciphertext is not None:
            same("ciphertext", digest(self._ciphertext), body.ciphertext)
        if self._receipt is not None:
            _check_receipt(self._receipt, self._offer)

    def __init__(self, *, receiver: str) -> None:
        self._state = _M.IDLE
        self._receiver = receiver
        self._offer: Statement | None = None
        self._ciphertext: bytes | None = None
        self._receipt: Statement | None = None
        self._key: bytes | None = None
        self._decision: Statement | None = None

    @property
    def offer(self) -> Statement | None:
        return self._offer

    @property
    def receipt(self) -> Statement | None:
        return self._receipt

    @property
    def decision(self) -> Statement | None:
        return self._decision

    @property
    def voided(self) -> bool:
        """The notary voided the exchange (a bad escrow, or the sender closed it)."""
        return self._decision is not None and (
            DecisionBody.from_statement(self._decision).decision != "release"
            or reused(self._decision, self._offer))  # type: ignore[arg-type]

    @property
    def plaintext(self) -> bytes | None:
        """The mail, once a key opened it."""
        if self._key is None:
            return None
        body = self._body()
        return open_content(self._ciphertext, key=self._key,  # type: ignore[arg-type]
                            label=body.label(), content_digest=body.content)

    def pending(self) -> list[object]:
        if self._state is _M.RECEIVED:
            return [SignReceipt(body=MailReceipt.for_offer(self._offer))]  # type: ignore[arg-type]
        if self._state is _M.SIGNED:
            return [SendReceipt(receipt=self._receipt)]  # type: ignore[arg-type]
        if self._state is _M.RECOVERING:
            return [AskRecoverMail(offer=self._offer, receipt=self._receipt,  # type: ignore[arg-type]
                                    ciphertext=self._ciphertext)]  # type: ignore[arg-type]
        return []

    def timer(self) -> int | None:
        if self._state in (_M.RECEIVED, _M.SIGNED):
            return self._body().deadline
        return None

    def _body(self) -> MailOffer:
        assert self._offer is not None
        return MailOffer.from_statement(self._offer)

    def _on_mail_arrived(self, event: MailArrived, now_ms: int) -> dict[str, Any]:
        if self._state is not _M.IDLE:
            same("offer", event.offer.digest, self._offer.digest)  # type: ignore[union-attr]
            return {}
        body = MailOffer.from_statement(event.offer)
        same("receiver", body.receiver, self._receiver)
        same("ciphertext", digest(event.ciphertext), body.ciphertext)
        if body.deadline <= now_ms:
            raise WrongExchange("the offer's deadline has passed", detail={"field": "deadline"})
        return {"_offer": event.offer, "_ciphertext": event.ciphertext}

    def _on_receipt_signed(self, event: ReceiptSigned, now_ms: int) -> dict[str, Any]:
        if MailReceipt.from_statement(event.receipt) != MailReceipt.for_offer(self._offer):  # type: ignore[arg-type]
            raise ValueError("ReceiptSigned must carry the receipt SignReceipt asked for")
        return {"_receipt": event.receipt}

    def _on_key_revealed(self, event: KeyRevealed, now_ms: int) -> dict[str, Any]:
        if self._key is not None:
            return {}
        body = self._body()
        open_content(self._ciphertext, key=event.key, label=body.label(),  # type: ignore[arg-type]
                     content_digest=body.content)
        return {"_key": event.key}

    def _on_notary_answered(self, event: NotaryAnswered, now_ms: int) -> dict[str, Any]:
        assert self._offer is not None
        if reused(event.decision, self._offer):  # the sender took the id first: void
            if self._state is not _M.RECOVERING:
                return {}
            return {"_decision": event.decision, "_state": _M.RESOLVED}
        body = read_decision(event.decision, exchange=self._body().exchange, kind=KIND,
                             decisions=_MAIL_DECISIONS, initiator=self._body().sender)
        same("subject", body.subject, self._offer.digest)
        if self._state is not _M.RECOVERING:
            return {}
        if body.decision == "release":
            key = body.payload or b""
            open_content(self._ciphertext, key=key, label=self._body().label(),  # type: ignore[arg-type]
                         content_digest=self._body().content)
            return {"_decision": event.decision, "_key": key, "_state": _M.READ}
        return {"_decision": event.decision, "_state": _M.RESOLVED}


# -- the notary's side ------------------------------------------------------------------------

def judge_recover_mail(request: RecoverMailWire, *, requester: str, notary: str,
                       private_keys: list[x25519.X25519PrivateKey], verify: Verify) -> Verdict:
    """What the notary decides on a receiver's recovery, when it has not decided yet.

    ``release`` (the key as payload) if the escrow gives the signed plaintext, else
    ``void`` (the ``BadEscrow`` reason as payload): a finding that voids the receipt.
    Either quotes the receipt, so the sender gets its copy from the notary.

    Raises:
        NotParty: the requester is not the offer's receiver.
        WrongExchange: the offer names another notary, the receipt is not the offer's,
            the ciphertext is not the offer's.
        StatementError, CertificateError: ``verify`` refused a signature.
    """
    offer = MailOffer.from_statement(request.offer)
    same("notary", offer.notary, notary)
    if requester != offer.receiver:
        raise NotParty("only the receiver recovers a mail", detail={"requester": requester})
    verify(request.offer, expected_type=OFFER_TYPE, expected_signer=offer.sender)
    verify(request.receipt, expected_type=RECEIPT_TYPE, expected_signer=offer.receiver)
    _check_receipt(request.receipt, request.offer)
    same("ciphertext", digest(request.ciphertext), offer.ciphertext)
    verdict: dict[str, Any] = {"exchange": offer.exchange, "kind": KIND,
                               "subject": request.offer.digest, "request": request.receipt,
                               "initiator": offer.sender}
    try:
        key = recover(request.ciphertext, offer.escrow, private_keys=private_keys,
                      label=offer.label(), content_digest=offer.content)
    except BadEscrow as exc:
        return Verdict(decision="void", payload=exc.detail["reason"].encode(), **verdict)
    return Verdict(decision="release", payload=key, **verdict)


def judge_close_mail(request: CloseMailWire, *, requester: str, notary: str, now_ms: int,
                     verify: Verify) -> Verdict:
    """What the notary decides on a sender's close, when it has not decided yet:
    ``abort``, quoting the offer.

    Raises:
        NotParty: the requester is not the offer's sender.
        TooEarly: before the offer's deadline (the receiver may still recover).
        WrongExchange: the offer names another notary.
    """
    offer = MailOffer.from_statement(request.offer)
    same("notary", offer.notary, notary)
    if requester != offer.sender:
        raise NotParty("only the sender closes a mail", detail={"requester": requester})
    verify(request.offer, expected_type=OFFER_TYPE, expected_signer=offer.sender)
    if now_ms < offer.deadline:
        raise TooEarly("the receiver may recover until the deadline",
                       detail={"deadline": offer.deadline, "now_ms": now_ms})
    return Verdict(exchange=offer.exchange, kind=KIND, decision=CLOSE,
                   subject=request.offer.digest, request=request.offer,
                   initiator=offer.sender)


def prepare(plaintext: bytes, *, exchange: bytes, sender: str, receiver: str, notary: str,
            escrow_key: x25519.X25519PublicKey, deadline: int, key: bytes,
            nonce: bytes) -> tuple[MailOffer, bytes]:
    """The offer body to sign and the ciphertext; sign the body (``sign_statement``
    with ``OFFER_TYPE``) and build ``MailSender(offer=..., ciphertext=..., key=key)``.
    ``exchange``, ``key`` and ``nonce`` are fresh random bytes (32, 32, 12)."""
    label = EscrowLabel(purpose="mail", exchange=exchange, sender=sender, receiver=receiver,
                        notary=notary)
    ciphertext, escrow = seal(plaintext, key=key, nonce=nonce, label=label,
                              escrow_key=escrow_key)
    body = MailOffer(exchange=exchange, sender=sender, receiver=receiver, notary=notary,
                     ciphertext=digest(ciphertext), content=digest(plaintext), escrow=escrow,
                     deadline=deadline)
    return body, ciphertext


def recover_mail(book: NotaryBook, request: RecoverMailWire, *, requester: str,
                 private_keys: list[x25519.X25519PrivateKey], verify: Verify,
                 now_ms: int) -> Decision:
    """``notary.recover_mail``: the exchange's decision, made now (``judge_recover_mail``)
    if there is none. Persist the book before answering when ``Decision.new``.

    Raises: as ``judge_recover_mail``; ConflictingExchange (the exchange id is known
    with another offer).
    """
    verdict = judge_recover_mail(request, requester=requester, notary=book.notary,
                                 private_keys=private_keys, verify=verify)
    return _decide(book, verdict, now_ms)


def close_mail(book: NotaryBook, request: CloseMailWire, *, requester: str, verify: Verify,
               now_ms: int) -> Decision:
    """``notary.close_mail``: the exchange's decision if it has one (a ``release``
    quotes the receipt: the sender's copy), else ``abort`` from the deadline on.

    Raises: as ``judge_close_mail`` (TooEarly only while nothing was decided).
    """
    offer = MailOffer.from_statement(request.offer)
    known = book.get(offer.exchange, initiator=offer.sender)
    if known is not None and requester == offer.sender:
        if DecisionBody.from_statement(known).subject != request.offer.digest:
            return Decision(known, new=False)  # the sender reused its id: see _decide
        return book.decide(offer.exchange, KIND, subject=request.offer.digest,
                           decision=CLOSE, request=request.offer, now_ms=now_ms,
                           initiator=offer.sender)
    verdict = judge_close_mail(request, requester=requester, notary=book.notary,
                               now_ms=now_ms, verify=verify)
    return _decide(book, verdict, now_ms)


def _decide(book: NotaryBook, verdict: Verdict, now_ms: int) -> Decision:
    """The book's decision; for an exchange id its sender took before with other
    content (another offer, another kind), the standing decision, unchanged: it names
    another subject, which voids this offer's receipt (``reused``, protocol.md 10.4),
    so a sender cannot keep a receipt by making the receiver's recovery fail."""
    try:
        return book.decide(verdict.exchange, verdict.kind, subject=verdict.subject,
                           decision=verdict.decision, request=verdict.request,
                           now_ms=now_ms, payload=verdict.payload,
                           initiator=verdict.initiator)
    except ConflictingExchange:
        standing = book.get(verdict.exchange, initiator=verdict.initiator)
        if standing is None:
            raise
        return Decision(standing, new=False)


def reused(decision: Statement, offer: Statement) -> bool:
    """Whether ``decision`` is the notary's for the exchange id ``offer``'s sender
    chose (the id, the sender as initiator) but about other content (another kind or
    subject): the sender took the id first, and the offer's receipt is void."""
    body = DecisionBody.from_statement(decision)
    mail = MailOffer.from_statement(offer)
    return (body.exchange == mail.exchange and body.initiator == mail.sender
            and (body.kind != KIND or body.subject != offer.digest))


# -- what proves what ---------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class MailOutcome:
    """What a set of evidence proves about one certified mail (protocol.md 10.4).

    ``state``: ``"delivered"`` (the receiver got the message: ``resolved_by``
    ``"exchange"``, its receipt, or ``"notary"``, a release), ``"void"`` (the notary
    found the sender's escrow bad: ``reason`` says how), ``"aborted"`` (the sender
    closed the exchange without a receipt), ``"offered"`` (an offer, nothing else) or
    ``"none"``. ``proof``: the statement that decided it."""

    state: str
    exchange: bytes | None = None
    offer: Statement | None = None
    proof: Statement | None = None
    resolved_by: str | None = None
    reason: str | None = None


def mail_outcome(evidence: Iterable[Statement], *, verify: Verify) -> MailOutcome:
    """Apply the rule to ``evidence`` (statements) about one mail: its offer, receipts
    and the notary's decisions. A ``release`` decision proves delivery whatever else
    exists; else a ``void`` or ``abort`` decision voids any receipt; else a receipt of
    the offer proves delivery. Every item is checked, signatures included.

    Raises:
        MixedEvidence: items about two exchanges, an item of another kind, or
            receipts or decisions without the offer.
        the coded errors of a bad item (``fairexchange.*``, ``statement.*``, ``auth.*``).
    """
    items = list(evidence)
    offers = [s for s in items if s.type == OFFER_TYPE]
    if len({s.digest for s in offers}) > 1:
        raise MixedEvidence("evidence about two mails", detail={"field": "offer"})
    if not offers:
        if items:
            raise MixedEvidence("mail evidence needs its offer", detail={"field": "offer"})
        return MailOutcome("none")
    offer = offers[0]
    body = MailOffer.from_statement(offer)
    verify(offer, expected_type=OFFER_TYPE, expected_signer=body.sender)
    receipt: Statement | None = None
    decisions: dict[str, Statement] = {}
    for item in items:
        if item.type == RECEIPT_TYPE:
            verify(item, expected_type=RECEIPT_TYPE, expected_signer=body.receiver)
            _check_receipt(item, offer)
            receipt = receipt or item
        elif item.type == DECISION_TYPE:
            verify(item, expected_type=DECISION_TYPE, expected_signer=body.notary)
            if reused(item, offer):
                decisions.setdefault(REUSED, item)
                continue
            decided = read_decision(item, exchange=body.exchange, kind=KIND,
                                    decisions=_MAIL_DECISIONS, initiator=body.sender)
            same("subject", decided.subject, offer.digest)
            decisions.setdefault(decided.decision, item)
        elif item.type != OFFER_TYPE:
            raise MixedEvidence("not certified-mail evidence", detail={"field": "evidence"})
    found = MailOutcome("none", body.exchange, offer)
    if "release" in decisions:
        return _replace(found, "delivered", decisions["release"], "notary")
    if REUSED in decisions:
        return MailOutcome("void", body.exchange, offer, decisions[REUSED],
                           reason=REUSED)
    if "void" in decisions:
        reason = (DecisionBody.from_statement(decisions["void"]).payload or b"").decode(
            "ascii", "replace")
        return MailOutcome("void", body.exchange, offer, decisions["void"], reason=reason)
    if CLOSE in decisions:
        return _replace(found, "aborted", decisions[CLOSE], None)
    if receipt is not None:
        return _replace(found, "delivered", receipt, "exchange")
    return _replace(found, "offered", offer, None)


def _replace(found: MailOutcome, state: str, proof: Statement,
             resolved_by: str | None) -> MailOutcome:
    return MailOutcome(state, found.exchange, found.offer, proof, resolved_by)
