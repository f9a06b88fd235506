"""``Purchase``: the buyer's side of one purchase, sans-IO.

The driver tells the machine what happened (``receive(event, now_ms=...)``) and does
what the machine decides; see ``_state`` for the transitions and ``_machine`` for the
rules every transition follows. A purchase is one offer, one order, one payment.
"""

from __future__ import annotations

from typing import Any, ClassVar

from ..archive import Direction
from ..certificates import check_name
from ..statements import Statement, StatementError
from ._bodies import Offer, Order
from ._checks import (
    check_delivery,
    check_offer,
    check_receipt,
    check_refund_amount,
    check_refund_note,
)
from ._errors import CommerceError
from ._events import (
    Archive,
    Decision,
    GoodsDelivered,
    OfferChosen,
    OrderAccepted,
    OrderSent,
    Pay,
    PaymentConfirmed,
    ReceiptIssued,
    RefundNoteIssued,
    RefundRequested,
    RequestDelivery,
    RequestRefund,
    SendOrder,
)
from ._machine import _Machine, _Step, same_amount
from ._state import PurchaseState

__all__ = ["Purchase"]

_P = PurchaseState
_CHOSEN = ("offer", "payment_module", "idempotency_key")
_ORDERED = (*_CHOSEN, "order")
_PAID = (*_ORDERED, "payment")


class Purchase(_Machine):
    """The buyer's machine: choose an offer, order, pay, take delivery and the receipt;
    ask for a refund after paying.

    Args:
        buyer: the buyer's agent id (the ``buyer`` of the order it will sign).

    Raises:
        ValueError: ``buyer`` is not an agent id.
    """

    __slots__ = ("_buyer", "_delivery", "_idempotency_key", "_note", "_offer", "_order",
                 "_payment", "_payment_module", "_receipt", "_refund_amount",
                 "_refund_reason")

    _KIND: ClassVar[str] = "commerce.purchase"
    _STATES: ClassVar[type[PurchaseState]] = PurchaseState
    _FIELDS: ClassVar[dict[str, str]] = {
        "buyer": "str", "offer": "statement", "payment_module": "str",
        "idempotency_key": "str", "order": "statement", "payment": "payment",
        "delivery": "statement", "receipt": "statement", "refund_amount": "amount",
        "refund_reason": "str", "note": "statement", "failure": "failure",
    }
    _NEEDS: ClassVar[dict[Any, tuple[str, ...]]] = {
        _P.IDLE: ("buyer",),
        _P.OFFER_CHOSEN: ("buyer", *_CHOSEN),
        _P.ORDERED: ("buyer", *_ORDERED),
        _P.PAYING: ("buyer", *_ORDERED),
        _P.PAID: ("buyer", *_PAID),
        _P.DELIVERED: ("buyer", *_PAID, "delivery"),
        _P.DONE: ("buyer", *_PAID, "delivery", "receipt"),
        _P.REFUND_REQUESTED: ("buyer", *_PAID, "refund_amount", "refund_reason"),
        _P.REFUNDED: ("buyer", *_PAID, "refund_amount", "refund_reason", "note"),
        _P.FAILED: ("buyer", "failure"),
        _P.ERROR: ("buyer",),
    }

    def __init__(self, *, buyer: str) -> None:
        check_name("buyer", buyer)
        self._state = PurchaseState.IDLE
        self._buyer = buyer
        self._offer: Statement | None = None
        self._payment_module: str | None = None
        self._idempotency_key: str | None = None
        self._order: Statement | None = None
        self._payment: PaymentConfirmed | None = None
        self._delivery: Statement | None = None
        self._receipt: Statement | None = None
        self._refund_amount = None
        self._refund_reason: str | None = None
        self._note: Statement | None = None
        self._failure = None

    # -- what the machine knows -------------------------------------------------------

    @property
    def state(self) -> PurchaseState:
        return self._state  # type: ignore[no-any-return]

    @property
    def buyer(self) -> str:
        return self._buyer

    @property
    def offer(self) -> Statement | None:
        return self._offer

    @property
    def order(self) -> Statement | None:
        """The signed order, from ``ORDERED`` on: what to (re)send to the seller."""
        return self._order

    @property
    def payment(self) -> PaymentConfirmed | None:
        return self._payment

    @property
    def delivery(self) -> Statement | None:
        return self._delivery

    @property
    def receipt(self) -> Statement | None:
        return self._receipt

    @property
    def refund_note(self) -> Statement | None:
        return self._note

    def pending(self) -> list[Decision]:
        if self._state is _P.OFFER_CHOSEN:
            return [SendOrder(order=self._draft())]
        if self._state is _P.PAYING:
            order = self._order_body()
            return [Pay(module=order.payment_module, payee=order.seller, amount=order.amount,
                        reference=self._digest(), idempotency_key=order.idempotency_key)]
        if self._state is _P.PAID:
            assert self._payment is not None
            return [RequestDelivery(order=self._digest(), payment=self._payment.payment,
                                    payment_type=self._payment.payment_type)]
        if self._state is _P.REFUND_REQUESTED:
            assert self._refund_amount is not None and self._refund_reason is not None
            return [RequestRefund(order=self._digest(), amount=self._refund_amount,
                                  reason=self._refund_reason)]
        return []

    # -- handlers: check, never change the machine ------------------------------------

    def _on_offer_chosen(self, event: OfferChosen, now_ms: int) -> _Step:
        check_offer(event.offer, now_ms=now_ms)
        Order.for_offer(event.offer, buyer=self._buyer, payment_module=event.payment_module,
                        idempotency_key=event.idempotency_key)
        return _Step({"_offer": event.offer, "_payment_module": event.payment_module,
                      "_idempotency_key": event.idempotency_key},
                     [Archive(statement=event.offer, direction=Direction.RECEIVED)])

    def _on_order_sent(self, event: OrderSent, now_ms: int) -> _Step:
        try:
            sent: Order | None = Order.from_statement(event.order)
        except (CommerceError, StatementError):
            sent = None
        if sent != self._draft():
            raise ValueError("OrderSent must carry the order that SendOrder asked to sign")
        # Refused here rather than by the seller: nothing was sent yet.
        check_offer(sent.offer, now_ms=now_ms)
        return _Step({"_order": event.order},
                     [Archive(statement=event.order, direction=Direction.SENT)])

    def _on_order_accepted(self, event: OrderAccepted, now_ms: int) -> _Step:
        return _Step()

    def _on_payment_confirmed(self, event: PaymentConfirmed, now_ms: int) -> _Step:
        same_amount(event.amount, self._order_body().amount)
        return _Step({"_payment": event})

    def _on_goods_delivered(self, event: GoodsDelivered, now_ms: int) -> _Step:
        check_delivery(event.goods, event.delivery, self._terms(), order=self._digest())
        return _Step({"_delivery": event.delivery},
                     [Archive(statement=event.delivery, direction=Direction.RECEIVED)])

    def _on_receipt_issued(self, event: ReceiptIssued, now_ms: int) -> _Step:
        assert self._order is not None and self._payment is not None
        check_receipt(event.receipt, order=self._order, payment=self._payment.payment,
                      payment_type=self._payment.payment_type)
        return _Step({"_receipt": event.receipt},
                     [Archive(statement=event.receipt, direction=Direction.RECEIVED)])

    def _on_refund_requested(self, event: RefundRequested, now_ms: int) -> _Step:
        paid = self._order_body().amount
        amount = paid if event.amount is None else event.amount
        check_refund_amount(amount, paid)
        return _Step({"_refund_amount": amount, "_refund_reason": event.reason})

    def _on_refund_note_issued(self, event: RefundNoteIssued, now_ms: int) -> _Step:
        assert self._order is not None
        check_refund_note(event.note, order=self._order, amount=self._refund_amount)
        return _Step({"_note": event.note},
                     [Archive(statement=event.note, direction=Direction.RECEIVED)])

    # -- derived values -----------------------------------------------------------------

    def _draft(self) -> Order:
        """The order SendOrder asks to sign: a function of the recorded choice alone,
        so that it is the same after a restart."""
        assert self._offer is not None and self._payment_module is not None
        assert self._idempotency_key is not None
        return Order.for_offer(self._offer, buyer=self._buyer,
                               payment_module=self._payment_module,
                               idempotency_key=self._idempotency_key)

    def _order_body(self) -> Order:
        assert self._order is not None
        return Order.from_statement(self._order)

    def _terms(self) -> Offer:
        assert self._offer is not None
        return Offer.from_statement(self._offer)

    def _digest(self) -> bytes:
        assert self._order is not None
        return self._order.digest

    def _validate(self) -> None:
        try:
            if self._offer is not None and self._payment_module is not None \
                    and self._idempotency_key is not None:
                draft = self._draft()
                if self._order is not None and Order.from_statement(self._order) != draft:
                    raise ValueError("the order is not the one for the chosen offer")
            check_name("buyer", self._buyer)
        except (CommerceError, StatementError) as exc:
            raise ValueError(f"the recorded statements do not fit: {exc}") from None
