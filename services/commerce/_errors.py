"""Why a commerce statement or event was refused; one class per stable code.

Statement-level faults (a bad signature, a wrong type, a signer certificate that does
not validate) keep the statement and certificate layers' own codes (``statement.*``,
``auth.*``); the codes here are about what a commerce statement says.
"""

from __future__ import annotations

from typing import ClassVar

from .._errors import ServiceError

__all__ = [
    "AlreadyPaid",
    "BadBody",
    "BadDelivery",
    "BadGoods",
    "BadQuantity",
    "BadReceipt",
    "BadRefundNote",
    "CommerceError",
    "OfferAltered",
    "OfferExpired",
    "RefundNotAllowed",
    "Refunded",
    "UnexpectedEvent",
    "UnknownOffer",
    "UnsupportedPayment",
    "WrongAmount",
    "WrongSeller",
]


class CommerceError(ServiceError):
    """A commerce statement or event was refused. Subclasses name the reason."""

    code: ClassVar[str] = "commerce.error"


class BadBody(CommerceError):
    """A statement body that is not the body of its type: a key missing or extra, a
    field of the wrong type, size or form. ``detail``: ``type``, ``field``."""

    code: ClassVar[str] = "commerce.bad_body"


class OfferExpired(CommerceError):
    """The offer's ``valid_until`` is before the checker's clock.
    ``detail``: ``valid_until``, ``now_ms``."""

    code: ClassVar[str] = "commerce.offer_expired"


class OfferAltered(CommerceError):
    """The offer quoted in an order is not, byte for byte, an offer its seller signed:
    the digest, the signer, the signature or the type does not match.
    ``detail``: ``field``."""

    code: ClassVar[str] = "commerce.offer_altered"


class WrongSeller(CommerceError):
    """An order or offer names another seller than the one checking it.
    ``detail``: ``field``, ``expected``, ``got``."""

    code: ClassVar[str] = "commerce.wrong_seller"


class UnknownOrder(CommerceError):
    """The seller holds no such order from the requester (``commerce.fetch``,
    ``commerce.refund``, ``payment.accept``); a buyer learns nothing of others'
    orders. ``detail``: ``order``."""

    code: ClassVar[str] = "commerce.unknown_order"


class UnknownOffer(CommerceError):
    """The catalogue has no offer for that SKU, or the quoted offer was withdrawn or
    replaced. ``detail``: ``sku``."""

    code: ClassVar[str] = "commerce.unknown_offer"


class BadQuantity(CommerceError):
    """A quantity that is not an int in range; an order for more than the seller
    sells at once (1 for now). ``detail``: ``quantity``, ``max``."""

    code: ClassVar[str] = "commerce.bad_quantity"


class UnsupportedPayment(CommerceError):
    """The order names a payment module the seller does not accept.
    ``detail``: ``module``, ``accepted``."""

    code: ClassVar[str] = "commerce.unsupported_payment"


class WrongAmount(CommerceError):
    """A payment or refund of another amount than the order's.
    ``detail``: ``expected``, ``got`` (``{currency, minor_units}``)."""

    code: ClassVar[str] = "commerce.wrong_amount"


class BadGoods(CommerceError):
    """The goods delivered are not the goods offered: their SHA-256 is not the offer's
    ``content_digest``, or their length is not the delivery's ``size``.
    ``detail``: ``field``, ``expected``, ``got``."""

    code: ClassVar[str] = "commerce.bad_goods"


class BadDelivery(CommerceError):
    """A delivery statement that does not fit its order. ``detail``: ``field``."""

    code: ClassVar[str] = "commerce.bad_delivery"


class BadReceipt(CommerceError):
    """A receipt that does not state what happened. ``detail``: ``field``."""

    code: ClassVar[str] = "commerce.bad_receipt"


class BadRefundNote(CommerceError):
    """A refund note that does not fit the order or the refund. ``detail``: ``field``."""

    code: ClassVar[str] = "commerce.bad_refund_note"


class UnexpectedEvent(CommerceError):
    """An event the machine's state has no transition for. The machine is now in
    ``ERROR`` and refuses every later event. ``detail``: ``state``, ``event``."""

    code: ClassVar[str] = "commerce.unexpected_event"


class AlreadyPaid(CommerceError):
    """A payment for an order that was paid (and perhaps refunded) by another
    payment: not used. A bank transfer handed over this way is given back (detail
    ``returned``). ``detail``: ``state``."""

    code: ClassVar[str] = "commerce.already_paid"


class RefundNotAllowed(CommerceError):
    """A refund the offer's signed terms do not grant: ``refund_days`` is 0, or the
    window after the payment has passed. ``detail``: ``refund_days``, ``paid_at``,
    ``now_ms``."""

    code: ClassVar[str] = "commerce.refund_not_allowed"


class Refunded(CommerceError):
    """The order was refunded: its goods are not delivered again.
    ``detail``: ``state``."""

    code: ClassVar[str] = "commerce.refunded"
