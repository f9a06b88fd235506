"""The states of the two commerce machines and the one table of their transitions.

Theory of operation. A purchase is two machines, one per side, each told what
happened by its own driver: ``Purchase`` (the buyer) and ``Sale`` (the seller).
Every transition either of them can make is one entry of ``TRANSITIONS``, keyed by
``(state, event class)``; the states of the two sides are distinct enums, so one table
holds both without clashes. What a transition checks and decides is the machine's
business (``_purchase.py``, ``_sale.py``); whether it may happen at all is this
table's alone.

The rules, the same for both sides (h11's "Rule 1" and "Rule 2"):

1. An event with no entry for the current state is a protocol error: the machine
   raises ``commerce.unexpected_event`` and enters ``ERROR``. ``ERROR`` has no
   entries, so every later event is refused the same way: it is absorbing.
2. An event with an entry whose content fails a check (an expired offer, goods that
   do not match) raises that check's code and leaves the machine as it was: the
   peer may still send the right thing, or the driver may choose another way out.

``Failed`` is accepted only before money moves. Once paid, the way out is a refund
(``RefundRequested``) or, later, a dispute argued from the archived statements.
``FAILED``, ``DONE``/``RECEIPTED`` (unless a refund follows) and ``REFUNDED`` are
final: nothing is expected after them, and anything fed is unexpected.

Buyer (Purchase)::

    IDLE --OfferChosen--> OFFER_CHOSEN --OrderSent--> ORDERED --OrderAccepted--> PAYING
    PAYING --PaymentConfirmed--> PAID --GoodsDelivered--> DELIVERED --ReceiptIssued--> DONE
    OFFER_CHOSEN | ORDERED | PAYING --Failed--> FAILED
    PAID | DELIVERED | DONE --RefundRequested--> REFUND_REQUESTED
    REFUND_REQUESTED --RefundNoteIssued--> REFUNDED

Seller (Sale)::

    IDLE --OrderReceived--> ORDER_ACCEPTED --PaymentConfirmed--> PAID
    PAID --GoodsDelivered--> DELIVERED --ReceiptIssued--> RECEIPTED
    ORDER_ACCEPTED --Failed--> FAILED
    PAID | DELIVERED | RECEIPTED --RefundRequested--> REFUNDING
    REFUNDING --RefundConfirmed--> REFUND_CONFIRMED --RefundNoteIssued--> REFUNDED
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import Enum
from types import MappingProxyType
from typing import Final

from ._events import (
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

__all__ = ["TRANSITIONS", "PurchaseState", "SaleState", "State"]


class PurchaseState(Enum):
    """The buyer's side. Each state names what has happened; the comment, what the
    machine waits for."""

    IDLE = "idle"                          # an offer to be chosen
    OFFER_CHOSEN = "offer_chosen"          # the order to be signed (SendOrder)
    ORDERED = "ordered"                    # the seller's acceptance
    PAYING = "paying"                      # the payment's confirmation (Pay)
    PAID = "paid"                          # the goods (RequestDelivery)
    DELIVERED = "delivered"                # the receipt
    DONE = "done"                          # nothing (a refund may still be asked)
    REFUND_REQUESTED = "refund_requested"  # the seller's refund note (RequestRefund)
    REFUNDED = "refunded"                  # nothing
    FAILED = "failed"                      # nothing; no money moved
    ERROR = "error"                        # nothing; refuses every event


class SaleState(Enum):
    """The seller's side."""

    IDLE = "idle"                          # an order
    ORDER_ACCEPTED = "order_accepted"      # the payment (AcceptOrder)
    PAID = "paid"                          # the delivery to be signed (Deliver)
    DELIVERED = "delivered"                # the receipt to be signed (IssueReceipt)
    RECEIPTED = "receipted"                # nothing (a refund may still be granted)
    REFUNDING = "refunding"                # the refund's confirmation (Refund)
    REFUND_CONFIRMED = "refund_confirmed"  # the refund note to be signed (IssueRefundNote)
    REFUNDED = "refunded"                  # nothing
    FAILED = "failed"                      # nothing; no money moved
    ERROR = "error"                        # nothing; refuses every event


State = PurchaseState | SaleState

_B, _S = PurchaseState, SaleState

TRANSITIONS: Final[Mapping[tuple[State, type[Event]], State]] = MappingProxyType({
    # buyer
    (_B.IDLE, OfferChosen): _B.OFFER_CHOSEN,
    (_B.OFFER_CHOSEN, OrderSent): _B.ORDERED,
    (_B.OFFER_CHOSEN, Failed): _B.FAILED,
    (_B.ORDERED, OrderAccepted): _B.PAYING,
    (_B.ORDERED, Failed): _B.FAILED,
    (_B.PAYING, PaymentConfirmed): _B.PAID,
    (_B.PAYING, Failed): _B.FAILED,
    (_B.PAID, GoodsDelivered): _B.DELIVERED,
    (_B.PAID, RefundRequested): _B.REFUND_REQUESTED,
    (_B.DELIVERED, ReceiptIssued): _B.DONE,
    (_B.DELIVERED, RefundRequested): _B.REFUND_REQUESTED,
    (_B.DONE, RefundRequested): _B.REFUND_REQUESTED,
    (_B.REFUND_REQUESTED, RefundNoteIssued): _B.REFUNDED,
    # seller
    (_S.IDLE, OrderReceived): _S.ORDER_ACCEPTED,
    (_S.ORDER_ACCEPTED, PaymentConfirmed): _S.PAID,
    (_S.ORDER_ACCEPTED, Failed): _S.FAILED,
    (_S.PAID, GoodsDelivered): _S.DELIVERED,
    (_S.PAID, RefundRequested): _S.REFUNDING,
    (_S.DELIVERED, ReceiptIssued): _S.RECEIPTED,
    (_S.DELIVERED, RefundRequested): _S.REFUNDING,
    (_S.RECEIPTED, RefundRequested): _S.REFUNDING,
    (_S.REFUNDING, RefundConfirmed): _S.REFUND_CONFIRMED,
    (_S.REFUND_CONFIRMED, RefundNoteIssued): _S.REFUNDED,
})
