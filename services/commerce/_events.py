"""Events in and decisions out of the two commerce machines (``Purchase``, ``Sale``).

An event is something that happened, told to a machine by its driver: a statement
signed or received, a payment confirmed, a failure. The same class serves both sides
when it is the same fact (``GoodsDelivered`` is the seller's "I sent these" and the
buyer's "I received these"). A decision is something the driver must do next: sign
and send a statement, pay, archive.

"Sent" events (``OrderSent`` for the buyer; ``GoodsDelivered``, ``ReceiptIssued``,
``RefundNoteIssued`` for the seller) are fed when the statement is signed and
before it leaves: the driver persists the machine (``to_state``) and then sends the
statement the machine now holds, so a crash never signs the same step twice.

Construction checks types and sizes and raises ``TypeError``/``ValueError``: events
are built by the driver, so a bad one is a local mistake, not a peer's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from .._schema import MAX_REASON
from ..archive import Direction
from ..money import Amount
from ..statements import Statement
from ._bodies import DIGEST_SIZE, Catalogue, Delivery, Order, Receipt, RefundNote

__all__ = [
    "AcceptOrder",
    "Archive",
    "Decision",
    "Deliver",
    "Event",
    "Failed",
    "GoodsDelivered",
    "IssueReceipt",
    "IssueRefundNote",
    "OfferChosen",
    "OrderAccepted",
    "OrderReceived",
    "OrderSent",
    "Pay",
    "PaymentConfirmed",
    "ReceiptIssued",
    "Refund",
    "RefundConfirmed",
    "RefundNoteIssued",
    "RefundRequested",
    "RequestDelivery",
    "RequestRefund",
    "SendOrder",
]

_DOTTED: Final = re.compile(r"[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+\Z")


def _statement(name: str, value: object) -> None:
    if type(value) is not Statement:
        raise TypeError(f"{name} must be a Statement, not {type(value).__name__}")


def _digest(name: str, value: object) -> None:
    if type(value) is not bytes or len(value) != DIGEST_SIZE:
        raise ValueError(f"{name} must be a {DIGEST_SIZE}-byte digest")


def _amount(name: str, value: object) -> None:
    if type(value) is not Amount:
        raise TypeError(f"{name} must be an Amount, not {type(value).__name__}")


def _dotted(name: str, value: object) -> None:
    if type(value) is not str or len(value) > 128 or not _DOTTED.match(value):
        raise ValueError(f"{name} must be a dotted lowercase name, got {value!r:.80}")


def _text(name: str, value: object, limit: int, *, printable: bool = True) -> None:
    if type(value) is not str or len(value) > limit or (printable and not value.isprintable()):
        raise ValueError(f"{name} must be a str of at most {limit} printable characters")


# -- events ---------------------------------------------------------------------------

@dataclass(frozen=True, slots=True, kw_only=True)
class OfferChosen:
    """Buyer: the user chose this offer (its signature already verified) and how to pay."""

    offer: Statement
    payment_module: str
    idempotency_key: str

    def __post_init__(self) -> None:
        _statement("offer", self.offer)
        _text("payment_module", self.payment_module, 128)
        _text("idempotency_key", self.idempotency_key, 512)


@dataclass(frozen=True, slots=True, kw_only=True)
class OrderSent:
    """Buyer: the order asked for by ``SendOrder`` is signed and about to be sent."""

    order: Statement

    def __post_init__(self) -> None:
        _statement("order", self.order)


@dataclass(frozen=True, slots=True, kw_only=True)
class OrderReceived:
    """Seller: an order arrived (its signature already verified as the buyer's).

    ``catalogue`` is the seller's catalogue at that moment; when given, an order for
    an offer no longer in it is refused (``commerce.unknown_offer``).
    """

    order: Statement
    catalogue: Catalogue | None = None

    def __post_init__(self) -> None:
        _statement("order", self.order)
        if self.catalogue is not None and type(self.catalogue) is not Catalogue:
            raise TypeError("catalogue must be a Catalogue or None")


@dataclass(frozen=True, slots=True, kw_only=True)
class OrderAccepted:
    """Buyer: the seller accepted the order and waits for the payment."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PaymentConfirmed:
    """Either side: the payment layer confirmed the payment for this order.

    ``payment`` is the SHA-256 digest of the payment's confirmation statement (a
    transfer confirmation, a cleared cheque, ...), ``payment_type`` that statement's
    type; the commerce layer knows a payment by these and its amount only.
    """

    payment: bytes
    payment_type: str
    amount: Amount

    def __post_init__(self) -> None:
        _digest("payment", self.payment)
        _dotted("payment_type", self.payment_type)
        _amount("amount", self.amount)


@dataclass(frozen=True, slots=True, kw_only=True)
class GoodsDelivered:
    """Seller: the delivery is signed and about to be sent with ``goods``.
    Buyer: the delivery and the goods arrived (the delivery's signature verified)."""

    delivery: Statement
    goods: bytes

    def __post_init__(self) -> None:
        _statement("delivery", self.delivery)
        if type(self.goods) is not bytes:
            raise TypeError("goods must be bytes")


@dataclass(frozen=True, slots=True, kw_only=True)
class ReceiptIssued:
    """Seller: the receipt is signed and about to be sent. Buyer: it arrived (verified)."""

    receipt: Statement

    def __post_init__(self) -> None:
        _statement("receipt", self.receipt)


@dataclass(frozen=True, slots=True, kw_only=True)
class RefundRequested:
    """Buyer: the user wants the money back. Seller: it agreed to refund the buyer.

    ``amount`` None means all that was paid.
    """

    reason: str = ""
    amount: Amount | None = None

    def __post_init__(self) -> None:
        _text("reason", self.reason, MAX_REASON)
        if self.amount is not None:
            _amount("amount", self.amount)


@dataclass(frozen=True, slots=True, kw_only=True)
class RefundConfirmed:
    """Seller: the payment layer confirmed the refund; ``refund`` is the digest of its
    confirmation statement, ``refund_type`` that statement's type."""

    refund: bytes
    refund_type: str
    amount: Amount

    def __post_init__(self) -> None:
        _digest("refund", self.refund)
        _dotted("refund_type", self.refund_type)
        _amount("amount", self.amount)


@dataclass(frozen=True, slots=True, kw_only=True)
class RefundNoteIssued:
    """Seller: the refund note is signed and about to be sent. Buyer: it arrived."""

    note: Statement

    def __post_init__(self) -> None:
        _statement("note", self.note)


@dataclass(frozen=True, slots=True, kw_only=True)
class Failed:
    """Either side, before money moved: the transaction cannot go on (the peer refused
    with ``code``, the payment was refused, the peer vanished)."""

    code: str
    message: str = ""

    def __post_init__(self) -> None:
        _dotted("code", self.code)
        # A peer's err message, passed on: any text, only bounded.
        _text("message", self.message, 4096, printable=False)


Event = (OfferChosen | OrderSent | OrderReceived | OrderAccepted | PaymentConfirmed
         | GoodsDelivered | ReceiptIssued | RefundRequested | RefundConfirmed
         | RefundNoteIssued | Failed)


# -- decisions ------------------------------------------------------------------------

@dataclass(frozen=True, slots=True, kw_only=True)
class SendOrder:
    """Buyer: sign ``order`` (``sign_body``), feed ``OrderSent``, persist, send it."""

    order: Order


@dataclass(frozen=True, slots=True, kw_only=True)
class AcceptOrder:
    """Seller: answer the order: pay ``amount`` with ``payment_module``, citing the
    order digest ``order`` as the payment's reference."""

    order: bytes
    amount: Amount
    payment_module: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Pay:
    """Buyer: pay ``amount`` to ``payee`` with ``module``; ``reference`` is the order's
    digest. Repeating it after a crash is safe: ``idempotency_key`` is the order's."""

    module: str
    payee: str
    amount: Amount
    reference: bytes
    idempotency_key: str


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestDelivery:
    """Buyer: ask the seller for the goods of order ``order``, paid by ``payment``."""

    order: bytes
    payment: bytes
    payment_type: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Deliver:
    """Seller: sign ``body(goods)`` for the goods whose SHA-256 is ``content_digest``,
    feed ``GoodsDelivered``, persist, send both."""

    order: bytes
    content_digest: bytes

    def body(self, goods: bytes) -> Delivery:
        return Delivery(order=self.order, content_digest=self.content_digest, size=len(goods))


@dataclass(frozen=True, slots=True, kw_only=True)
class IssueReceipt:
    """Seller: sign ``receipt``, feed ``ReceiptIssued``, persist, send it."""

    receipt: Receipt


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestRefund:
    """Buyer: ask the seller to refund ``amount`` of order ``order``."""

    order: bytes
    amount: Amount
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Refund:
    """Seller: refund ``amount`` to ``payee`` through ``module``, tied to the payment
    ``payment`` (digest of its confirmation, of type ``payment_type``); ``reference``
    is the order's digest."""

    module: str
    payee: str
    amount: Amount
    payment: bytes
    payment_type: str
    reference: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class IssueRefundNote:
    """Seller: sign ``note``, feed ``RefundNoteIssued``, persist, send it."""

    note: RefundNote


@dataclass(frozen=True, slots=True, kw_only=True)
class Archive:
    """Either side: record ``statement`` in the evidence archive, in the same
    transaction that persists the machine."""

    statement: Statement
    direction: Direction


Decision = (SendOrder | AcceptOrder | Pay | RequestDelivery | Deliver | IssueReceipt
            | RequestRefund | Refund | IssueRefundNote | Archive)
