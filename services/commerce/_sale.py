"""``Sale``: the seller's side of one purchase, sans-IO.

The seller's driver feeds the order it received, the payment its payment layer
confirmed, and the statements it signed when the machine asked; see ``_state`` for
the transitions and ``_machine`` for the rules every transition follows.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any, ClassVar

from cryptography import x509

from ..archive import Direction
from ..certificates import CertificateError, check_name, identity_of
from ..statements import Statement, StatementError
from ._bodies import Order, Receipt, RefundNote
from ._checks import (
    check_delivery,
    check_order,
    check_receipt,
    check_refund_amount,
    check_refund_note,
)
from ._errors import CommerceError
from ._events import (
    AcceptOrder,
    Archive,
    Decision,
    Deliver,
    GoodsDelivered,
    IssueReceipt,
    IssueRefundNote,
    OrderReceived,
    PaymentConfirmed,
    ReceiptIssued,
    Refund,
    RefundConfirmed,
    RefundNoteIssued,
    RefundRequested,
)
from ._machine import _Machine, _Step, same_amount
from ._state import SaleState

__all__ = ["Sale"]

_S = SaleState
_PAID = ("order", "payment")
_REFUNDING = (*_PAID, "refund_amount", "refund_reason")


class Sale(_Machine):
    """The seller's machine: accept an order, take the payment, deliver, issue the
    receipt; refund when the seller agrees to.

    Args:
        seller: the seller's agent id; orders for another seller are refused.
        certificate: the seller's own certificate, to tell its genuine offers quoted
            in an order from altered ones (``check_order``). Without it every
            ``OrderReceived`` must carry the catalogue.
        payment_modules: the payment modules the seller accepts; None accepts any.

    Raises:
        ValueError: ``seller`` is not an agent id, or ``certificate`` is not its.
    """

    __slots__ = ("_certificate", "_delivery", "_note", "_order", "_payment",
                 "_payment_modules", "_receipt", "_refund", "_refund_amount",
                 "_refund_reason", "_seller")

    _KIND: ClassVar[str] = "commerce.sale"
    _STATES: ClassVar[type[SaleState]] = SaleState
    _FIELDS: ClassVar[dict[str, str]] = {
        "seller": "str", "certificate": "certificate", "payment_modules": "modules",
        "order": "statement", "payment": "payment", "delivery": "statement",
        "receipt": "statement", "refund_amount": "amount", "refund_reason": "str",
        "refund": "refund", "note": "statement", "failure": "failure",
    }
    _NEEDS: ClassVar[dict[Any, tuple[str, ...]]] = {
        _S.IDLE: ("seller",),
        _S.ORDER_ACCEPTED: ("seller", "order"),
        _S.PAID: ("seller", *_PAID),
        _S.DELIVERED: ("seller", *_PAID, "delivery"),
        _S.RECEIPTED: ("seller", *_PAID, "delivery", "receipt"),
        _S.REFUNDING: ("seller", *_REFUNDING),
        _S.REFUND_CONFIRMED: ("seller", *_REFUNDING, "refund"),
        _S.REFUNDED: ("seller", *_REFUNDING, "refund", "note"),
        _S.FAILED: ("seller", "order", "failure"),
        _S.ERROR: ("seller",),
    }

    def __init__(self, *, seller: str, certificate: x509.Certificate | None = None,
                 payment_modules: Collection[str] | None = None) -> None:
        check_name("seller", seller)
        if certificate is not None and not isinstance(certificate, x509.Certificate):
            raise TypeError("certificate must be an x509.Certificate")
        if payment_modules is not None and (
                isinstance(payment_modules, str)
                or not all(type(m) is str for m in payment_modules)):
            raise TypeError("payment_modules must be a collection of module names")
        self._state = SaleState.IDLE
        self._seller = seller
        self._certificate = certificate
        self._payment_modules = None if payment_modules is None else tuple(payment_modules)
        self._order: Statement | None = None
        self._payment: PaymentConfirmed | None = None
        self._delivery: Statement | None = None
        self._receipt: Statement | None = None
        self._refund_amount = None
        self._refund_reason: str | None = None
        self._refund: RefundConfirmed | None = None
        self._note: Statement | None = None
        self._failure = None
        self._validate()

    # -- what the machine knows -------------------------------------------------------

    @property
    def state(self) -> SaleState:
        return self._state  # type: ignore[no-any-return]

    @property
    def seller(self) -> str:
        return self._seller

    @property
    def order(self) -> Statement | None:
        return self._order

    @property
    def payment(self) -> PaymentConfirmed | None:
        return self._payment

    @property
    def delivery(self) -> Statement | None:
        """The signed delivery, from ``DELIVERED`` on: what to (re)send with the goods."""
        return self._delivery

    @property
    def receipt(self) -> Statement | None:
        return self._receipt

    @property
    def refund(self) -> RefundConfirmed | None:
        return self._refund

    @property
    def refund_note(self) -> Statement | None:
        return self._note

    def pending(self) -> list[Decision]:
        state = self._state
        if state is _S.ORDER_ACCEPTED:
            order = self._order_body()
            return [AcceptOrder(order=self._digest(), amount=order.amount,
                                payment_module=order.payment_module)]
        if state is _S.PAID:
            return [Deliver(order=self._digest(),
                            content_digest=self._order_body().offer_terms().content_digest)]
        if state is _S.DELIVERED:
            return [IssueReceipt(receipt=self._receipt_body())]
        if state is _S.REFUNDING:
            order, payment = self._order_body(), self._payment
            assert payment is not None and self._refund_amount is not None
            return [Refund(module=order.payment_module, payee=order.buyer,
                           amount=self._refund_amount, payment=payment.payment,
                           payment_type=payment.payment_type, reference=self._digest())]
        if state is _S.REFUND_CONFIRMED:
            assert self._refund is not None and self._refund_amount is not None
            return [IssueRefundNote(note=RefundNote(
                order=self._digest(), buyer=self._order_body().buyer,
                amount=self._refund_amount, refund=self._refund.refund,
                refund_type=self._refund.refund_type))]
        return []

    # -- handlers: check, never change the machine ------------------------------------

    def _on_order_received(self, event: OrderReceived, now_ms: int) -> _Step:
        check_order(event.order, seller_id=self._seller, now_ms=now_ms,
                    seller_certificate=self._certificate, catalogue=event.catalogue,
                    payment_modules=self._payment_modules)
        return _Step({"_order": event.order},
                     [Archive(statement=event.order, direction=Direction.RECEIVED)])

    def _on_payment_confirmed(self, event: PaymentConfirmed, now_ms: int) -> _Step:
        same_amount(event.amount, self._order_body().amount)
        return _Step({"_payment": event})

    def _on_goods_delivered(self, event: GoodsDelivered, now_ms: int) -> _Step:
        check_delivery(event.goods, event.delivery, self._order_body().offer_terms(),
                       order=self._digest())
        return _Step({"_delivery": event.delivery},
                     [Archive(statement=event.delivery, direction=Direction.SENT)])

    def _on_receipt_issued(self, event: ReceiptIssued, now_ms: int) -> _Step:
        assert self._order is not None and self._payment is not None
        check_receipt(event.receipt, order=self._order, payment=self._payment.payment,
                      payment_type=self._payment.payment_type)
        return _Step({"_receipt": event.receipt},
                     [Archive(statement=event.receipt, direction=Direction.SENT)])

    def _on_refund_requested(self, event: RefundRequested, now_ms: int) -> _Step:
        paid = self._order_body().amount
        amount = paid if event.amount is None else event.amount
        check_refund_amount(amount, paid)
        return _Step({"_refund_amount": amount, "_refund_reason": event.reason})

    def _on_refund_confirmed(self, event: RefundConfirmed, now_ms: int) -> _Step:
        assert self._refund_amount is not None
        same_amount(event.amount, self._refund_amount)
        return _Step({"_refund": event})

    def _on_refund_note_issued(self, event: RefundNoteIssued, now_ms: int) -> _Step:
        assert self._order is not None and self._refund is not None
        check_refund_note(event.note, order=self._order, amount=self._refund_amount,
                          refund=self._refund.refund, refund_type=self._refund.refund_type)
        return _Step({"_note": event.note},
                     [Archive(statement=event.note, direction=Direction.SENT)])

    # -- derived values -----------------------------------------------------------------

    def _order_body(self) -> Order:
        assert self._order is not None
        return Order.from_statement(self._order)

    def _digest(self) -> bytes:
        assert self._order is not None
        return self._order.digest

    def _receipt_body(self) -> Receipt:
        order, payment = self._order_body(), self._payment
        assert payment is not None
        return Receipt(order=self._digest(), offer=order.offer_digest, buyer=order.buyer,
                       amount=order.amount, payment=payment.payment,
                       payment_type=payment.payment_type,
                       content_digest=order.offer_terms().content_digest)

    def _validate(self) -> None:
        check_name("seller", self._seller)
        try:
            if self._certificate is not None \
                    and identity_of(self._certificate).agent_id != self._seller:
                raise ValueError("the certificate is not the seller's")
            if self._order is not None:
                order = self._order_body()
                order.offer_terms()
                if order.seller != self._seller:
                    raise ValueError("the recorded order is for another seller")
        except (CommerceError, StatementError, CertificateError) as exc:
            raise ValueError(f"the recorded values do not fit: {exc}") from None
