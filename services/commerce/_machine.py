"""What ``Purchase`` and ``Sale`` share: the receive loop and persistence.

Theory of operation. ``receive`` looks the event up in ``_state.TRANSITIONS``; no
entry means ERROR (see ``_state``). With an entry, the machine's handler for the
event class checks the event against what the machine knows and returns a ``_Step``:
the attributes to change and the statements to archive. A handler never changes the
machine itself, so a check that raises leaves the machine exactly as it was; only
``receive`` applies a step, all at once, and then answers the archive decisions
followed by ``pending()``: what the new state still needs the driver to do.

``pending()`` depends on the state and the recorded data alone, so after a crash a
driver restores the machine with ``from_state`` and calls ``pending()`` to learn
what to do again. Every decision it can repeat is safe to repeat: a ``Pay`` carries
the order's idempotency key, and a statement to sign is signed only once because
its "issued" event is persisted before the statement leaves.

Persisted form (``to_state``): a map in the statements' value model, so it can be
stored as canonical msgpack. ``{"machine": KIND, "v": 1, "state": <state value>,
<field>: <value or nil>, ...}``; every field is always present.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, ClassVar, Final, Self

from cryptography import x509

from ..certificates import certificate_der
from ..money import Amount, BadAmount
from ..statements import Statement, StatementError, canonical_join
from ._errors import CommerceError, UnexpectedEvent, WrongAmount
from ._events import (
    Archive,
    Decision,
    Event,
    Failed,
    GoodsDelivered,
    OfferChosen,
    OrderAccepted,
    OrderReceived,
    OrderSent,
    PaymentConfirmed,
    ReceiptIssued,
    RefundConfirmed,
    RefundNoteIssued,
    RefundRequested,
)
from ._state import TRANSITIONS, State

__all__ = ["STATE_VERSION"]

STATE_VERSION: Final = 1

_EVENTS: Final = (OfferChosen, OrderSent, OrderReceived, OrderAccepted, PaymentConfirmed,
                  GoodsDelivered, ReceiptIssued, RefundRequested, RefundConfirmed,
                  RefundNoteIssued, Failed)


@dataclass(frozen=True, slots=True)
class _Step:
    """What a handler found: attribute changes and statements to archive."""

    changes: dict[str, Any] = field(default_factory=dict)
    archive: list[Archive] = field(default_factory=list)


class _Machine:
    """Base of the two machines. Subclasses set the class attributes below, keep
    their data in the slots named by ``_FIELDS`` and define one ``_on_<event>``
    handler per event class their side accepts."""

    __slots__ = ("_failure", "_state")

    _KIND: ClassVar[str]
    _STATES: ClassVar[type[Enum]]
    #: slot name (without "_") -> codec name, in the persisted order
    _FIELDS: ClassVar[dict[str, str]]
    #: state -> the fields that must be set in it
    _NEEDS: ClassVar[dict[Any, tuple[str, ...]]]

    _state: Any
    _failure: Failed | None

    @property
    def state(self) -> State:
        return self._state  # type: ignore[no-any-return]

    @property
    def failure(self) -> Failed | None:
        """The ``Failed`` event that ended the transaction, if one did."""
        return self._failure

    def receive(self, event: Event, *, now_ms: int) -> list[Decision]:
        """Feed one event; return what the driver must do next, in order.

        Returns:
            ``Archive`` decisions for the statements this event brought, then
            ``pending()`` of the new state.

        Raises:
            UnexpectedEvent: the current state has no transition for this event class
                (including every event once in ``ERROR``); the machine is now in ERROR.
            CommerceError, StatementError: a subclass naming what is wrong with the
                event's content (``commerce.offer_expired``, ``commerce.bad_goods``,
                ``statement.wrong_type``, ...); the machine is unchanged.
            TypeError: not an event, or ``now_ms`` not an int.
            ValueError: a "sent" event that does not carry what the machine asked to
                sign (a driver bug); the machine is unchanged.
        """
        if type(event) not in _EVENTS:
            raise TypeError(f"not a commerce event: {type(event).__name__}")
        if type(now_ms) is not int:
            raise TypeError("now_ms must be an int of Unix milliseconds")
        target = TRANSITIONS.get((self._state, type(event)))
        if target is None:
            previous, self._state = self._state, self._STATES["ERROR"]
            name = type(event).__name__
            raise UnexpectedEvent(
                f"{self._KIND} in state {previous.value!r} cannot take {name}",
                detail={"state": previous.value, "event": name})
        step = self._handler(type(event))(event, now_ms)
        for name, value in step.changes.items():
            setattr(self, name, value)
        self._state = target
        return [*step.archive, *self.pending()]

    def pending(self) -> list[Decision]:
        """What the current state still needs the driver to do (empty when it only
        waits for the peer, or is final)."""
        raise NotImplementedError

    def _handler(self, event_class: type) -> Callable[[Any, int], _Step]:
        name = _HANDLERS.get(event_class)
        if name is None:
            name = _HANDLERS[event_class] = "_on_" + _snake(event_class.__name__)
        return getattr(self, name)  # type: ignore[no-any-return]

    def _on_failed(self, event: Failed, now_ms: int) -> _Step:
        return _Step({"_failure": event})

    # -- persistence ----------------------------------------------------------------

    def to_state(self) -> dict[str, Any]:
        """The machine as a map of the value model (canonical msgpack can store it)."""
        state: dict[str, Any] = {"machine": self._KIND, "v": STATE_VERSION,
                                 "state": self._state.value}
        for name, codec in self._FIELDS.items():
            value = getattr(self, "_" + name)
            state[name] = None if value is None else _CODECS[codec][0](value)
        return state

    def state_bytes(self) -> bytes:
        """``canonical_encode(self.to_state())``, the same bytes, made without walking
        each statement again: a statement keeps its canonical bytes (``to_bytes``),
        and the state holds the order with the offer inside it, then the delivery and
        the receipt, so a save encoded most of them twice over, at every step."""
        plain: dict[str, Any] = {"machine": self._KIND, "v": STATE_VERSION,
                                 "state": self._state.value}
        encoded: dict[str, bytes] = {}
        for name, codec in self._FIELDS.items():
            value = getattr(self, "_" + name)
            if value is None:
                plain[name] = None
            elif codec == "statement":
                encoded[name] = value.to_bytes()
            else:
                plain[name] = _CODECS[codec][0](value)
        return canonical_join(plain, encoded)

    @classmethod
    def from_state(cls, state: object) -> Self:
        """Rebuild a machine from ``to_state()``.

        Raises:
            ValueError: not a state of this machine kind and version, a field that does
                not decode, or a field the state needs that is missing.
        """
        if type(state) is not dict or state.get("machine") != cls._KIND \
                or state.get("v") != STATE_VERSION:
            raise ValueError(f"not a {cls._KIND} state of version {STATE_VERSION}")
        expected = {"machine", "v", "state", *cls._FIELDS}
        if set(state) != expected:
            raise ValueError(f"state keys must be {sorted(expected)}")
        try:
            phase = cls._STATES(state["state"])
        except ValueError:
            raise ValueError(f"unknown state {state['state']!r:.40}") from None
        machine = cls.__new__(cls)
        machine._state = phase
        for name, codec in cls._FIELDS.items():
            raw = state[name]
            try:
                value = None if raw is None else _CODECS[codec][1](raw)
            except (StatementError, CommerceError, BadAmount, ValueError, TypeError,
                    KeyError) as exc:
                raise ValueError(f"state field {name!r} does not decode: {exc}") from None
            setattr(machine, "_" + name, value)
        missing = [n for n in cls._NEEDS.get(phase, ()) if getattr(machine, "_" + n) is None]
        if missing:
            raise ValueError(f"state {phase.value!r} needs {missing}")
        machine._validate()
        return machine

    def _validate(self) -> None:
        """Subclasses: raise ValueError if the restored fields do not fit together."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._state.value}>"


#: event class -> the name of its handler (``_on_`` and the class name in snake case).
_HANDLERS: dict[type, str] = {}


def _snake(name: str) -> str:
    return "".join("_" + c.lower() if c.isupper() else c for c in name).lstrip("_")


def same_amount(got: Amount, expected: Amount) -> None:
    """Raises WrongAmount unless ``got`` is ``expected``."""
    if got != expected:
        raise WrongAmount(f"expected {expected}, got {got}",
                          detail={"expected": expected.to_wire(), "got": got.to_wire()})


# -- codecs: (encode, decode) per field kind ----------------------------------------

def _amount_from(value: Any) -> Amount:
    if type(value) is not dict or set(value) != {"currency", "minor_units"}:
        raise ValueError("an amount is {currency, minor_units}")
    return Amount(value["currency"], value["minor_units"])


def _str_from(value: Any) -> str:
    if type(value) is not str:
        raise ValueError("expected a str")
    return value


def _proof_to(value: PaymentConfirmed | RefundConfirmed) -> dict[str, Any]:
    if isinstance(value, PaymentConfirmed):
        return {"digest": value.payment, "type": value.payment_type,
                "amount": value.amount.to_wire()}
    return {"digest": value.refund, "type": value.refund_type, "amount": value.amount.to_wire()}


def _proof_parts(value: Any) -> tuple[Any, Any, Amount]:
    if type(value) is not dict or set(value) != {"digest", "type", "amount"}:
        raise ValueError("a payment proof is {digest, type, amount}")
    return value["digest"], value["type"], _amount_from(value["amount"])


def _payment_from(value: Any) -> PaymentConfirmed:
    digest, kind, amount = _proof_parts(value)
    return PaymentConfirmed(payment=digest, payment_type=kind, amount=amount)


def _refund_from(value: Any) -> RefundConfirmed:
    digest, kind, amount = _proof_parts(value)
    return RefundConfirmed(refund=digest, refund_type=kind, amount=amount)


def _failure_from(value: Any) -> Failed:
    if type(value) is not dict or set(value) != {"code", "message"}:
        raise ValueError("a failure is {code, message}")
    return Failed(code=value["code"], message=value["message"])


def _modules_from(value: Any) -> tuple[str, ...]:
    if type(value) is not list or not all(type(m) is str for m in value):
        raise ValueError("payment modules are a list of str")
    return tuple(value)


_CODECS: Final[dict[str, tuple[Callable[[Any], Any], Callable[[Any], Any]]]] = {
    "statement": (Statement.to_wire, Statement.from_wire),
    "str": (lambda v: v, _str_from),
    "amount": (Amount.to_wire, _amount_from),
    "payment": (_proof_to, _payment_from),
    "refund": (_proof_to, _refund_from),
    "failure": (lambda f: {"code": f.code, "message": f.message}, _failure_from),
    "certificate": (certificate_der,
                    x509.load_der_x509_certificate),
    "modules": (list, _modules_from),
}
