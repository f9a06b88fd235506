"""Fair purchase: goods against payment, with the key escrowed for the notary, sans-IO.

Theory of operation. It starts where commerce's purchase has an accepted order (the
buyer's signed ``commerce.order``, quoting the seller's offer and its content digest):

1. ``fair.fetch`` (buyer -> seller, before paying): the seller answers a
   ``fair.delivery`` it signed (the order's digest, both parties, the notary, the
   ciphertext's SHA-256, the offer's content digest, the escrow) and the goods
   encrypted under a fresh key (``_escrow``, purpose ``goods``, exchange = the
   order's digest). The buyer checks it names the offer's content digest;
2. the buyer pays as commerce does (``Pay``: the order's module, amount, reference
   and idempotency key), and gets the payment module's confirmation;
3. ``fair.release`` (buyer -> seller): the confirmation; the seller answers the key,
   which the buyer checks opens the goods to the offer's digest.

A seller that takes the payment and goes silent (or answers a bad key) cannot keep
the goods: when ``timer()`` is due the buyer sends ``notary.recover_goods`` (order,
delivery, ciphertext, payment confirmation). The notary checks the payment through
the verifier it is given (bound to the order, the seller and the amount) and opens
the escrow: decision ``release`` (payload: the key) or, if the escrow does not give
goods with the offer's digest, ``refund`` (payload: the reason), a signed finding
that entitles the buyer to a refund through the dispute path. Both are
``fairexchange.decision`` statements of kind ``fair`` whose ``subject`` is the
delivery's digest and whose ``request`` is the payment confirmation, so a decision,
the order and the delivery are the whole evidence. The buyer can recover only with
a payment, so the seller is paid whenever the buyer gets the goods.

The machines follow ``_mail``'s rules (``_Machine``: one table each, records, timers
as data); the driver verifies signatures and payments before it feeds them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from types import MappingProxyType
from typing import Any, ClassVar, Final

from cryptography.hazmat.primitives.asymmetric import x25519

from .._errors import ServiceError
from .._schema import STATEMENT, Body, Schema, wire
from ..commerce import ORDER_TYPE, Order, Pay
from ..commerce._bodies import OFFER_TYPE
from ..statements import Statement
from ._bodies import DECISION_TYPE, DecisionBody
from ._errors import BadEscrow, BadPayment, MixedEvidence, NotParty
from ._escrow import SCHEMA, EscrowLabel, digest, open_content, recover, seal
from ._mail import (
    _CIPHERTEXT,
    DeadlinePassed,
    KeyGiven,
    KeyRevealed,
    NotaryAnswered,
    Verdict,
    Verify,
    _decide,
    _Machine,
    read_decision,
    same,
)
from ._notary import Decision, NotaryBook

__all__ = [
    "DELIVERY_TYPE",
    "KIND",
    "DeliverGoods",
    "GoodsArrived",
    "FairBuyer",
    "FairDelivery",
    "FairSeller",
    "FairState",
    "FetchWire",
    "Paid",
    "PurchaseOutcome",
    "VerifyPayment",
    "RecoverGoodsWire",
    "ReleaseWire",
    "AskGoods",
    "AskKey",
    "ReleaseKey",
    "SealedWire",
    "judge_recover_goods",
    "prepare_goods",
    "purchase_outcome",
    "recover_goods",
]

DELIVERY_TYPE: Final = "fair.delivery"
#: The notary decisions' ``kind`` for fair purchase.
KIND: Final = "fair"
_DECISIONS: Final = frozenset({"release", "refund"})


@dataclass(frozen=True, slots=True, kw_only=True)
class FairDelivery(Body):
    """``fair.delivery``, signed by the seller: these encrypted goods, escrowed for the
    notary, are the goods of this order."""

    TYPE: ClassVar[str] = DELIVERY_TYPE
    SCHEMA: ClassVar[Schema] = SCHEMA

    order: bytes
    seller: str
    buyer: str
    notary: str
    ciphertext: bytes
    content: bytes
    escrow: bytes

    def label(self) -> EscrowLabel:
        return EscrowLabel(purpose="goods", exchange=self.order, sender=self.seller,
                           receiver=self.buyer, notary=self.notary)


# -- op bodies ----------------------------------------------------------------------------

@dataclass(frozen=True, slots=True, kw_only=True)
class FetchWire(Body):
    """``fair.fetch`` request: the order's digest."""

    TYPE: ClassVar[str] = "fair.fetch"
    SCHEMA: ClassVar[Schema] = SCHEMA

    order: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class SealedWire(Body):
    """``fair.fetch`` answer: the signed delivery and the encrypted goods."""

    TYPE: ClassVar[str] = "fair.fetch"
    SCHEMA: ClassVar[Schema] = SCHEMA

    delivery: Statement = field(metadata=wire(STATEMENT))
    ciphertext: bytes = field(metadata=wire(_CIPHERTEXT))


@dataclass(frozen=True, slots=True, kw_only=True)
class ReleaseWire(Body):
    """``fair.release`` request: the order's digest and the payment confirmation."""

    TYPE: ClassVar[str] = "fair.release"
    SCHEMA: ClassVar[Schema] = SCHEMA

    order: bytes
    payment: Statement = field(metadata=wire(STATEMENT))


@dataclass(frozen=True, slots=True, kw_only=True)
class RecoverGoodsWire(Body):
    """``notary.recover_goods`` request."""

    TYPE: ClassVar[str] = "notary.recover_goods"
    SCHEMA: ClassVar[Schema] = SCHEMA

    order: Statement = field(metadata=wire(STATEMENT))
    delivery: Statement = field(metadata=wire(STATEMENT))
    ciphertext: bytes = field(metadata=wire(_CIPHERTEXT))
    payment: Statement = field(metadata=wire(STATEMENT))
    #: the signers' certificates (DER): the seller's, the bank's (protocol.md 10.5)
    certificates: tuple[bytes, ...] | None = None


# -- events and actions (besides ``_mail``'s KeyRevealed, KeyGiven, DeadlinePassed,
# NotaryAnswered) ---------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class GoodsArrived:
    """Buyer: the seller's delivery and encrypted goods arrived."""

    delivery: Statement
    ciphertext: bytes


@dataclass(frozen=True, slots=True)
class Paid:
    """Either side: the payment module confirmed the payment of this order (the
    driver checked the confirmation)."""

    payment: Statement


@dataclass(frozen=True, slots=True)
class DeliverGoods:
    """Seller: what ``fair.fetch`` is answered with."""

    delivery: Statement
    ciphertext: bytes


@dataclass(frozen=True, slots=True)
class ReleaseKey:
    """Seller: answer ``fair.release`` with the key, then feed ``KeyGiven``."""

    order: bytes
    key: bytes


@dataclass(frozen=True, slots=True)
class AskGoods:
    """Buyer: send ``fair.fetch`` for ``order``; feed the answer as ``GoodsArrived``."""

    order: bytes


@dataclass(frozen=True, slots=True)
class AskKey:
    """Buyer: send ``fair.release``; feed the key as ``KeyRevealed``."""

    order: bytes
    payment: Statement


@dataclass(frozen=True, slots=True)
class AskRecoverGoods:
    """Buyer: send ``notary.recover_goods``; feed the answer as ``NotaryAnswered``."""

    order: Statement
    delivery: Statement
    ciphertext: bytes
    payment: Statement


#: The notary's payment check, passed in: ``verify_payment(payment, *, order=digest,
#: seller=id, amount=Amount)`` raises a coded error (``ServiceError``) unless
#: ``payment`` is a genuine confirmation of paying ``amount`` to ``seller`` for ``order``.
VerifyPayment = Callable[..., Any]


class FairState(Enum):
    """Both sides' states (the comment: what it waits for)."""

    # seller
    OFFERED = "offered"          # the payment (DeliverGoods answers fair.fetch)
    PAID = "paid"                # the key to be given (ReleaseKey)
    RELEASED = "released"        # nothing: paid, the key given
    # buyer
    ORDERED = "ordered"          # the delivery (AskGoods)
    DELIVERED = "delivered"      # the payment (Pay)
    PAYING = "paying"            # unused by the seller: the key (AskKey); the timer
    RECOVERING = "recovering"    # the notary's decision (AskRecoverGoods)
    DONE = "done"                # nothing: the goods are open
    REFUND_DUE = "refund_due"    # nothing: the notary's refund finding is held
    ERROR = "error"              # nothing; refuses every event


_F = FairState
_BUYER: Final = ("order", "notary", "wait_ms")


class FairSeller(_Machine):
    """The seller's machine, from the signed delivery on (``prepare_goods``)."""

    __slots__ = ("_ciphertext", "_delivery", "_key", "_payment")

    _KIND: ClassVar[str] = "fair.seller"
    _STATES: ClassVar[type[Enum]] = FairState
    _FIELDS: ClassVar[dict[str, str]] = {"delivery": "statement", "ciphertext": "bytes",
                                         "key": "bytes", "payment": "statement"}
    _TABLE: ClassVar[Mapping[tuple[Any, type], tuple[Any, ...]]] = MappingProxyType({
        (_F.OFFERED, Paid): (_F.PAID,),
        (_F.PAID, KeyGiven): (_F.RELEASED,),
        (_F.PAID, Paid): (_F.PAID,),
        (_F.RELEASED, Paid): (_F.RELEASED,),
        (_F.RELEASED, KeyGiven): (_F.RELEASED,),
    })

    _NEEDS: ClassVar[dict[Any, tuple[str, ...]]] = {
        _F.OFFERED: ("delivery", "ciphertext", "key"),
        _F.PAID: ("delivery", "ciphertext", "key", "payment"),
        _F.RELEASED: ("delivery", "ciphertext", "key", "payment"),
        _F.ERROR: ("delivery", "ciphertext", "key"),
    }

    def _validate(self) -> None:
        if self._state not in self._NEEDS:
            raise ValueError(f"{self._state.value!r} is not a seller's state")
        same("ciphertext", digest(self._ciphertext),
             FairDelivery.from_statement(self._delivery).ciphertext)

    def __init__(self, *, delivery: Statement, ciphertext: bytes, key: bytes) -> None:
        body = FairDelivery.from_statement(delivery)
        same("ciphertext", digest(ciphertext), body.ciphertext)
        self._state = _F.OFFERED
        self._delivery, self._ciphertext, self._key = delivery, ciphertext, key
        self._payment: Statement | None = None

    @property
    def order(self) -> bytes:
        return FairDelivery.from_statement(self._delivery).order

    @property
    def payment(self) -> Statement | None:
        return self._payment

    def pending(self) -> list[object]:
        if self._state is _F.OFFERED:
            return [DeliverGoods(delivery=self._delivery, ciphertext=self._ciphertext)]
        if self._state is _F.PAID:
            return [ReleaseKey(order=self.order, key=self._key)]
        return []

    def timer(self) -> int | None:
        return None

    def _on_paid(self, event: Paid, now_ms: int) -> dict[str, Any]:
        return {} if self._payment is not None else {"_payment": event.payment}


class FairBuyer(_Machine):
    """The buyer's machine, from its signed order on.

    Args:
        order: the buyer's signed ``commerce.order`` (the seller accepted it).
        notary: the notary the buyer accepts.
        wait_ms: how long after paying the seller has to release the key before the
            buyer goes to the notary (the request timeout).
    """

    __slots__ = ("_ciphertext", "_decision", "_delivery", "_key", "_notary", "_order",
                 "_paid_at", "_payment", "_wait_ms")

    _KIND: ClassVar[str] = "fair.buyer"
    _STATES: ClassVar[type[Enum]] = FairState
    _FIELDS: ClassVar[dict[str, str]] = {
        "order": "statement", "notary": "str", "wait_ms": "int", "delivery": "statement",
        "ciphertext": "bytes", "payment": "statement", "paid_at": "int", "key": "bytes",
        "decision": "statement"}
    _TABLE: ClassVar[Mapping[tuple[Any, type], tuple[Any, ...]]] = MappingProxyType({
        (_F.ORDERED, GoodsArrived): (_F.DELIVERED,),
        (_F.DELIVERED, Paid): (_F.PAYING,),
        (_F.DELIVERED, GoodsArrived): (_F.DELIVERED,),
        # the buyer paid, crashed before it saved the confirmation, and the seller
        # released the key meanwhile: the goods are open, the money moved
        (_F.DELIVERED, KeyRevealed): (_F.DONE,),
        (_F.PAYING, KeyRevealed): (_F.DONE,),
        (_F.PAYING, DeadlinePassed): (_F.RECOVERING,),
        (_F.PAYING, GoodsArrived): (_F.PAYING,),
        (_F.PAYING, Paid): (_F.PAYING,),
        (_F.RECOVERING, KeyRevealed): (_F.DONE,),
        (_F.RECOVERING, NotaryAnswered): (_F.DONE, _F.REFUND_DUE),
        (_F.RECOVERING, DeadlinePassed): (_F.RECOVERING,),
        (_F.RECOVERING, GoodsArrived): (_F.RECOVERING,),
        (_F.RECOVERING, Paid): (_F.RECOVERING,),
        (_F.DONE, KeyRevealed): (_F.DONE,),
        (_F.DONE, NotaryAnswered): (_F.DONE,),
        (_F.DONE, DeadlinePassed): (_F.DONE,),
        (_F.DONE, GoodsArrived): (_F.DONE,),
        (_F.DONE, Paid): (_F.DONE,),
        (_F.REFUND_DUE, KeyRevealed): (_F.REFUND_DUE,),
        (_F.REFUND_DUE, NotaryAnswered): (_F.REFUND_DUE,),
        (_F.REFUND_DUE, DeadlinePassed): (_F.REFUND_DUE,),
        (_F.REFUND_DUE, GoodsArrived): (_F.REFUND_DUE,),
        (_F.REFUND_DUE, Paid): (_F.REFUND_DUE,),
    })

    _NEEDS: ClassVar[dict[Any, tuple[str, ...]]] = {
        _F.ORDERED: _BUYER,
        _F.DELIVERED: (*_BUYER, "delivery", "ciphertext"),
        _F.PAYING: (*_BUYER, "delivery", "ciphertext", "payment", "paid_at"),
        _F.RECOVERING: (*_BUYER, "delivery", "ciphertext", "payment", "paid_at"),
        _F.DONE: (*_BUYER, "delivery", "ciphertext", "key"),
        _F.REFUND_DUE: (*_BUYER, "delivery", "ciphertext", "payment", "decision"),
        _F.ERROR: _BUYER,
    }

    def _validate(self) -> None:
        if self._state not in self._NEEDS:
            raise ValueError(f"{self._state.value!r} is not a buyer's state")
        Order.from_statement(self._order)
        if self._delivery is not None:
            _check_delivery(self._delivery, self._order, self._notary)
            if self._ciphertext is not None:
                same("ciphertext", digest(self._ciphertext),
                     FairDelivery.from_statement(self._delivery).ciphertext)

    def __init__(self, *, order: Statement, notary: str, wait_ms: int) -> None:
        Order.from_statement(order)
        self._state = _F.ORDERED
        self._order, self._notary, self._wait_ms = order, notary, wait_ms
        self._delivery: Statement | None = None
        self._ciphertext: bytes | None = None
        self._payment: Statement | None = None
        self._paid_at: int | None = None
        self._key: bytes | None = None
        self._decision: Statement | None = None

    @property
    def decision(self) -> Statement | None:
        return self._decision

    @property
    def payment(self) -> Statement | None:
        return self._payment

    @property
    def refund_due(self) -> bool:
        """The notary found the escrow bad: its decision entitles the buyer to a refund."""
        return self._state is _F.REFUND_DUE

    @property
    def goods(self) -> bytes | None:
        """The goods, once a key opened them to the offer's digest."""
        if self._key is None:
            return None
        body = self._body()
        return open_content(self._ciphertext, key=self._key,  # type: ignore[arg-type]
                            label=body.label(), content_digest=body.content)

    def pending(self) -> list[object]:
        order = Order.from_statement(self._order)
        if self._state is _F.ORDERED:
            return [AskGoods(order=self._order.digest)]
        if self._state is _F.DELIVERED:
            return [Pay(module=order.payment_module, payee=order.seller, amount=order.amount,
                        reference=self._order.digest, idempotency_key=order.idempotency_key)]
        if self._state is _F.PAYING:
            assert self._payment is not None
            return [AskKey(order=self._order.digest, payment=self._payment)]
        if self._state is _F.RECOVERING:
            assert self._payment is not None and self._delivery is not None
            assert self._ciphertext is not None
            return [AskRecoverGoods(order=self._order, delivery=self._delivery,
                                    ciphertext=self._ciphertext, payment=self._payment)]
        return []

    def timer(self) -> int | None:
        if self._state is _F.PAYING:
            assert self._paid_at is not None
            return self._paid_at + self._wait_ms
        return None

    def _body(self) -> FairDelivery:
        assert self._delivery is not None
        return FairDelivery.from_statement(self._delivery)

    def _on_goods_arrived(self, event: GoodsArrived, now_ms: int) -> dict[str, Any]:
        if self._delivery is not None:
            same("delivery", event.delivery.digest, self._delivery.digest)
            return {}
        _check_delivery(event.delivery, self._order, self._notary)
        same("ciphertext", digest(event.ciphertext),
             FairDelivery.from_statement(event.delivery).ciphertext)
        return {"_delivery": event.delivery, "_ciphertext": event.ciphertext}

    def _on_paid(self, event: Paid, now_ms: int) -> dict[str, Any]:
        if self._payment is not None:
            return {}
        return {"_payment": event.payment, "_paid_at": now_ms}

    def _on_key_revealed(self, event: KeyRevealed, now_ms: int) -> dict[str, Any]:
        if self._key is not None or self._state is _F.REFUND_DUE:
            return {}
        body = self._body()
        open_content(self._ciphertext, key=event.key, label=body.label(),  # type: ignore[arg-type]
                     content_digest=body.content)
        return {"_key": event.key}

    def _on_notary_answered(self, event: NotaryAnswered, now_ms: int) -> dict[str, Any]:
        assert self._delivery is not None
        body = read_decision(event.decision, exchange=self._order.digest, kind=KIND,
                             decisions=_DECISIONS, initiator=self._body().buyer)
        same("subject", body.subject, self._delivery.digest)
        if self._state is not _F.RECOVERING:
            return {}
        if body.decision == "release":
            key = body.payload or b""
            open_content(self._ciphertext, key=key, label=self._body().label(),  # type: ignore[arg-type]
                         content_digest=self._body().content)
            return {"_decision": event.decision, "_key": key, "_state": _F.DONE}
        return {"_decision": event.decision, "_state": _F.REFUND_DUE}


def _check_delivery(delivery: Statement, order: Statement, notary: str) -> FairDelivery:
    """Raises WrongExchange unless ``delivery`` is a fair delivery of ``order`` through
    ``notary`` naming the offer's content digest."""
    body = FairDelivery.from_statement(delivery)
    terms = Order.from_statement(order)
    same("order", body.order, order.digest)
    same("seller", body.seller, terms.seller)
    same("buyer", body.buyer, terms.buyer)
    same("notary", body.notary, notary)
    same("content", body.content, terms.offer_terms().content_digest)
    return body


# -- the seller's preparation and the notary's side -------------------------------------------

def prepare_goods(goods: bytes, *, order: Statement, notary: str,
                  escrow_key: x25519.X25519PublicKey, key: bytes,
                  nonce: bytes) -> tuple[FairDelivery, bytes]:
    """The delivery body to sign (``DELIVERY_TYPE``) and the encrypted goods; then
    ``FairSeller(delivery=..., ciphertext=..., key=key)``. ``key`` and ``nonce`` are
    fresh random bytes (32, 12)."""
    terms = Order.from_statement(order)
    body_label = EscrowLabel(purpose="goods", exchange=order.digest, sender=terms.seller,
                             receiver=terms.buyer, notary=notary)
    ciphertext, escrow = seal(goods, key=key, nonce=nonce, label=body_label,
                              escrow_key=escrow_key)
    return FairDelivery(order=order.digest, seller=terms.seller, buyer=terms.buyer,
                        notary=notary, ciphertext=digest(ciphertext), content=digest(goods),
                        escrow=escrow), ciphertext


def judge_recover_goods(request: RecoverGoodsWire, *, requester: str, notary: str,
                        private_keys: list[x25519.X25519PrivateKey], verify: Verify,
                        verify_payment: VerifyPayment) -> Verdict:
    """What the notary decides on a paid buyer's recovery, when it has not decided yet:
    ``release`` (the key) or ``refund`` (the ``BadEscrow`` reason), quoting the payment.

    Raises:
        NotParty: the requester is not the order's buyer.
        WrongExchange: the delivery is not the order's (or names another notary, or
            other goods than the offer's digest); the ciphertext is not the delivery's.
        BadPayment: ``verify_payment`` refused the confirmation (its code in ``reason``).
        StatementError, CertificateError: ``verify`` refused a signature.
    """
    terms = Order.from_statement(request.order)
    if requester != terms.buyer:
        raise NotParty("only the buyer recovers its goods", detail={"requester": requester})
    verify(request.order, expected_type=ORDER_TYPE, expected_signer=terms.buyer)
    verify(terms.offer, expected_type=OFFER_TYPE, expected_signer=terms.seller)
    verify(request.delivery, expected_type=DELIVERY_TYPE, expected_signer=terms.seller)
    body = _check_delivery(request.delivery, request.order, notary)
    same("ciphertext", digest(request.ciphertext), body.ciphertext)
    try:
        verify_payment(request.payment, order=request.order.digest, seller=terms.seller,
                       amount=terms.amount)
    except BadPayment:
        raise
    except ServiceError as exc:  # the module's own coded refusal
        raise BadPayment(f"the payment is not this order's: {exc.message}",
                         detail={"reason": exc.code}) from exc
    verdict: dict[str, Any] = {"exchange": request.order.digest, "kind": KIND,
                               "subject": request.delivery.digest, "request": request.payment,
                               "initiator": terms.buyer}
    try:
        key = recover(request.ciphertext, body.escrow, private_keys=private_keys,
                      label=body.label(), content_digest=body.content)
    except BadEscrow as exc:
        return Verdict(decision="refund", payload=exc.detail["reason"].encode(), **verdict)
    return Verdict(decision="release", payload=key, **verdict)


def recover_goods(book: NotaryBook, request: RecoverGoodsWire, *, requester: str,
                  private_keys: list[x25519.X25519PrivateKey], verify: Verify,
                  verify_payment: VerifyPayment, now_ms: int) -> Decision:
    """``notary.recover_goods``: the exchange's decision, made now if there is none.
    Persist the book before answering when ``Decision.new``.

    Raises: as ``judge_recover_goods``; ConflictingExchange.
    """
    verdict = judge_recover_goods(request, requester=requester, notary=book.notary,
                                  private_keys=private_keys, verify=verify,
                                  verify_payment=verify_payment)
    return _decide(book, verdict, now_ms)


# -- what proves what ---------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class PurchaseOutcome:
    """What a set of evidence proves about one fair purchase (protocol.md 10.5).

    ``state``: ``"delivered"`` (the notary released the key of goods matching the
    offer's digest; ``resolved_by`` ``"notary"``), ``"refund_due"`` (the notary found
    the seller's escrow bad after the buyer paid: ``reason`` says how; the decision
    quotes the payment), ``"escrowed"`` (the seller's signed delivery, nothing
    decided: statements alone cannot show whether the seller released the key),
    ``"ordered"`` (the order only) or ``"none"``. ``proof``: the statement that
    decided it; ``payment``: the confirmation a decision quotes."""

    state: str
    order: Statement | None = None
    proof: Statement | None = None
    resolved_by: str | None = None
    reason: str | None = None
    payment: Statement | None = None


def purchase_outcome(evidence: Iterable[Statement], *, verify: Verify) -> PurchaseOutcome:
    """Apply the rule to ``evidence`` (statements) about one fair purchase: its order
    (quoting the offer), the seller's delivery and the notary's decisions. Every item
    is checked, signatures included; other statements of the purchase (payment
    confirmations, receipts) are left to their own checks.

    Raises:
        MixedEvidence: items about two orders, or a delivery or decision without the
            order.
        the coded errors of a bad item (``fairexchange.*``, ``statement.*``, ``auth.*``).
    """
    items = list(evidence)
    orders = [s for s in items if s.type == ORDER_TYPE]
    if len({s.digest for s in orders}) > 1:
        raise MixedEvidence("evidence about two orders", detail={"field": "order"})
    if not orders:
        if any(s.type in (DELIVERY_TYPE, DECISION_TYPE) for s in items):
            raise MixedEvidence("fair purchase evidence needs its order",
                                detail={"field": "order"})
        return PurchaseOutcome("none")
    order = orders[0]
    terms = Order.from_statement(order)
    verify(order, expected_type=ORDER_TYPE, expected_signer=terms.buyer)
    verify(terms.offer, expected_type=OFFER_TYPE, expected_signer=terms.seller)
    delivery: Statement | None = None
    decisions: dict[str, Statement] = {}
    for item in (s for s in items if s.type == DELIVERY_TYPE):
        verify(item, expected_type=DELIVERY_TYPE, expected_signer=terms.seller)
        body = FairDelivery.from_statement(item)
        _check_delivery(item, order, body.notary)
        delivery = delivery or item
    for item in (s for s in items if s.type == DECISION_TYPE):
        if delivery is None:
            raise MixedEvidence("a decision without the delivery", detail={"field": "delivery"})
        notary = FairDelivery.from_statement(delivery).notary
        verify(item, expected_type=DECISION_TYPE, expected_signer=notary)
        decided = read_decision(item, exchange=order.digest, kind=KIND, decisions=_DECISIONS,
                                initiator=terms.buyer)
        same("subject", decided.subject, delivery.digest)
        decisions.setdefault(decided.decision, item)
    for decision, state in (("release", "delivered"), ("refund", "refund_due")):
        if decision in decisions:
            decided = DecisionBody.from_statement(decisions[decision])
            reason = None if decision == "release" else (decided.payload or b"").decode(
                "ascii", "replace")
            return PurchaseOutcome(state, order, decisions[decision],
                                   "notary" if decision == "release" else None, reason,
                                   decided.request)
    if delivery is not None:
        return PurchaseOutcome("escrowed", order, delivery)
    return PurchaseOutcome("ordered", order, order)
