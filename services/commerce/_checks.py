"""Pure checks: does a commerce statement fit the transaction it claims to belong to?

Each check reads the body (``BadBody``, or ``statement.wrong_type`` for a statement
of another type), compares it with what the checker knows, and returns the typed
body or raises one error whose code says what is wrong and whose ``detail["field"]``
names the field at fault. None of them verifies the statement's own signature:
that is ``verify_statement`` with the signer's certificate, which a driver runs on
every statement it receives, before these.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ed25519

from ..certificates import fingerprint, identity_of
from ..money import Amount
from ..statements import BadSignature, Statement, WrongType, verify_ed25519
from ._bodies import Catalogue, Delivery, Offer, Order, Receipt, RefundNote
from ._errors import (
    BadBody,
    BadDelivery,
    BadGoods,
    BadQuantity,
    BadReceipt,
    BadRefundNote,
    OfferAltered,
    OfferExpired,
    RefundNotAllowed,
    UnknownOffer,
    UnsupportedPayment,
    WrongAmount,
    WrongSeller,
)

__all__ = [
    "MAX_ORDER_QUANTITY",
    "check_delivery",
    "check_offer",
    "check_order",
    "check_receipt",
    "check_refund_note",
    "check_refund_amount",
    "check_refund_window",
]

#: The quantity a seller accepts in one order, for now.
MAX_ORDER_QUANTITY = 1


def check_offer(offer: Statement, *, now_ms: int, seller_id: str | None = None) -> Offer:
    """Check an offer a buyer is about to order.

    Returns:
        The offer's body.

    Raises:
        WrongType, BadBody: not an offer statement.
        WrongSeller: the offer names another seller than ``seller_id``.
        OfferExpired: ``now_ms`` is after its ``valid_until``.
    """
    terms = Offer.from_statement(offer)
    if seller_id is not None and terms.seller != seller_id:
        raise _wrong_seller("seller", seller_id, terms.seller)
    _not_expired(terms, now_ms)
    return terms


def check_order(
    order: Statement,
    *,
    seller_id: str,
    now_ms: int,
    seller_certificate: x509.Certificate | None = None,
    catalogue: Catalogue | None = None,
    payment_modules: Collection[str] | None = None,
) -> Order:
    """Check an order as its seller: is it for me, for one of my offers, unaltered,
    current, in a quantity and a payment module I accept?

    The quoted offer is genuine when it is byte for byte in ``catalogue``, or else
    when its signature verifies under ``seller_certificate`` (the seller's own, so no
    chain or CRL is involved). At least one of the two must be given.

    Checks, in order (the first failure raises):

    1. the body is an order (``BadBody``, ``BadQuantity`` for a quantity out of range);
    2. ``seller`` is ``seller_id`` (``WrongSeller``, field ``seller``);
    3. ``quantity`` is at most ``MAX_ORDER_QUANTITY`` (``BadQuantity``);
    4. ``offer_digest`` is the quoted offer's digest (``OfferAltered``);
    5. the quoted statement is an offer (``OfferAltered``, field ``offer.type`` or
       ``offer.body``) naming ``seller_id`` (``WrongSeller``, field ``offer.seller``);
    6. the quoted offer is genuine: in the catalogue, or signed by the certificate
       (``OfferAltered``, field ``offer.signer`` or ``offer.signature``); when only a
       catalogue is given, an offer not in it is ``UnknownOffer``;
    7. ``now_ms`` is not after its ``valid_until`` (``OfferExpired``);
    8. when a catalogue is given, the offer is still in it (``UnknownOffer``: an
       unknown SKU, or an offer withdrawn or replaced);
    9. when ``payment_modules`` is given, the order's module is one of them
       (``UnsupportedPayment``).

    The order's own signature (and that its signer is its ``buyer``) is checked by
    ``verify_statement(order, ..., expected_type=ORDER_TYPE, expected_signer=buyer)``.

    Returns:
        The order's body.

    Raises:
        WrongType: not an order statement.
        ValueError: neither a catalogue nor a certificate, or a certificate that does
            not name ``seller_id``.
    """
    if catalogue is None and seller_certificate is None:
        raise ValueError("check_order needs the catalogue or the seller's certificate")
    if seller_certificate is not None and identity_of(seller_certificate).agent_id != seller_id:
        raise ValueError("seller_certificate is not the certificate of seller_id")
    body = Order.from_statement(order)
    if body.seller != seller_id:
        raise _wrong_seller("seller", seller_id, body.seller)
    if body.quantity > MAX_ORDER_QUANTITY:
        raise BadQuantity(f"this seller sells at most {MAX_ORDER_QUANTITY} per order",
                          detail={"quantity": body.quantity, "max": MAX_ORDER_QUANTITY})
    quoted = body.offer
    if body.offer_digest != quoted.digest:
        raise _altered("offer_digest", "the order's offer_digest is not the quoted offer's")
    try:
        terms = Offer.from_statement(quoted)
    except BadBody as exc:
        raise _altered("offer.body", f"the quoted offer's body is bad: {exc.message}") from exc
    except WrongType as exc:  # e.g. a genuine receipt of the seller's, quoted as an offer
        raise _altered("offer.type", f"the quoted statement is a {quoted.type!r}") from exc
    if terms.seller != seller_id:
        raise _wrong_seller("offer.seller", seller_id, terms.seller)
    listed = catalogue is not None and catalogue.holds(quoted)
    if not listed:
        if seller_certificate is None:
            raise _unknown(terms.sku)
        _genuine(quoted, seller_certificate)
    _not_expired(terms, now_ms)
    if catalogue is not None and not listed:
        raise _unknown(terms.sku)
    if payment_modules is not None and body.payment_module not in payment_modules:
        accepted = sorted(payment_modules)
        raise UnsupportedPayment(
            f"payment module {body.payment_module!r} is not accepted (accepted: {accepted})",
            detail={"module": body.payment_module, "accepted": accepted})
    return body


def check_delivery(goods: bytes, delivery: Statement, offer: Offer | Statement, *,
                   order: bytes) -> Delivery:
    """Check goods and their delivery statement as the buyer of order digest ``order``.

    Checks, in order: the delivery names ``order`` (``BadDelivery``, field ``order``);
    it names the offer's content digest (``BadDelivery``, field ``content_digest``);
    SHA-256 of ``goods`` is that digest (``BadGoods``, field ``content_digest``); its
    ``size`` is ``len(goods)`` (``BadDelivery``, field ``size``).

    Returns:
        The delivery's body.

    Raises:
        WrongType, BadBody: not a delivery statement (or ``offer`` not an offer).
    """
    if not isinstance(goods, bytes | bytearray | memoryview):
        raise TypeError(f"goods must be bytes, not {type(goods).__name__}")
    body = Delivery.from_statement(delivery)
    terms = offer if type(offer) is Offer else Offer.from_statement(offer)  # type: ignore[arg-type]
    if body.order != order:
        raise BadDelivery("the delivery is for another order", detail={"field": "order"})
    if body.content_digest != terms.content_digest:
        raise BadDelivery("the delivery names other goods than the offer",
                          detail={"field": "content_digest"})
    got = hashlib.sha256(goods).digest()
    if got != terms.content_digest:
        raise BadGoods("the goods are not the goods offered: their SHA-256 differs",
                       detail={"field": "content_digest", "expected": terms.content_digest.hex(),
                               "got": got.hex()})
    if body.size != len(goods):
        raise BadDelivery(f"the delivery says {body.size} bytes, the goods are {len(goods)}",
                          detail={"field": "size"})
    return body


def check_receipt(receipt: Statement, *, order: Statement, payment: bytes,
                  payment_type: str) -> Receipt:
    """Check a receipt against the order it is for and the payment that paid it.

    Every field must be what the order and the payment say: ``order`` (the order's
    digest), ``offer`` (the quoted offer's digest), ``buyer``, ``amount`` (price times
    quantity), ``payment``, ``payment_type`` and ``content_digest`` (the offer's).

    Returns:
        The receipt's body.

    Raises:
        WrongType, BadBody: not a receipt statement (or ``order`` not an order).
        BadReceipt: a field differs; ``detail["field"]`` names the first, in the
            order above.
    """
    body = Receipt.from_statement(receipt)
    placed = Order.from_statement(order)
    expected = {
        "order": order.digest,
        "offer": placed.offer_digest,
        "buyer": placed.buyer,
        "amount": placed.amount,
        "payment": payment,
        "payment_type": payment_type,
        "content_digest": placed.offer_terms().content_digest,
    }
    for name, value in expected.items():
        if getattr(body, name) != value:
            raise BadReceipt(f"the receipt's {name} is not the transaction's",
                             detail={"field": name})
    return body


def check_refund_amount(amount: Amount, paid: Amount) -> None:
    """A refund is of the payment's currency and at most what was paid.

    Raises:
        WrongAmount: another currency, not positive, or more than ``paid``.
    """
    if type(amount) is not Amount or amount.currency != paid.currency \
            or not 0 < amount.minor_units <= paid.minor_units:
        raise WrongAmount(f"a refund is 1 to {paid.minor_units} minor units of {paid.currency}",
                          detail={"expected": paid.to_wire(), "got": _wire(amount)})


#: A day in Unix milliseconds: the unit of an offer's refund window.
DAY_MS = 86_400_000


def check_refund_window(offer: Offer, *, paid_at_ms: int, now_ms: int) -> None:
    """Whether the offer's signed refund policy grants a refund asked at ``now_ms`` of
    a payment settled at ``paid_at_ms``: within ``refund_days`` days of it, never
    when 0. An offer without the term (signed before it existed) grants any.

    Raises:
        RefundNotAllowed: outside the window; ``detail``: ``refund_days``,
            ``paid_at``, ``now_ms``.
    """
    days = offer.refund_days
    if days is None:
        return
    if days == 0 or now_ms > paid_at_ms + days * DAY_MS:
        raise RefundNotAllowed(
            "the offer grants no refunds" if days == 0 else
            f"the offer grants refunds for {days} days after payment; that time has passed",
            detail={"refund_days": days, "paid_at": paid_at_ms, "now_ms": now_ms})


def check_refund_note(note: Statement, *, order: Statement, amount: Amount | None = None,
                      refund: bytes | None = None, refund_type: str | None = None) -> RefundNote:
    """Check a refund note against the order it is for.

    Checks, in order: ``order`` is the order's digest; ``buyer`` its buyer; ``amount``
    is ``amount`` when given, else of the order's currency and at most its amount;
    ``refund`` and ``refund_type`` are the ones given (when given).

    Returns:
        The note's body.

    Raises:
        WrongType, BadBody: not a refund note (or ``order`` not an order).
        BadRefundNote: a field differs; ``detail["field"]`` names it.
    """
    body = RefundNote.from_statement(note)
    placed = Order.from_statement(order)
    if body.order != order.digest:
        raise _bad_note("order")
    if body.buyer != placed.buyer:
        raise _bad_note("buyer")
    if amount is not None and body.amount != amount:
        raise _bad_note("amount")
    try:
        check_refund_amount(body.amount, placed.amount)
    except WrongAmount:
        raise _bad_note("amount") from None
    if refund is not None and body.refund != refund:
        raise _bad_note("refund")
    if refund_type is not None and body.refund_type != refund_type:
        raise _bad_note("refund_type")
    return body


# -- helpers ------------------------------------------------------------------------

def _not_expired(terms: Offer, now_ms: int) -> None:
    if type(now_ms) is not int:
        raise TypeError("now_ms must be an int of Unix milliseconds")
    if now_ms > terms.valid_until:
        raise OfferExpired(
            f"the offer for {terms.sku!r} expired {now_ms - terms.valid_until} ms ago",
            detail={"valid_until": terms.valid_until, "now_ms": now_ms, "sku": terms.sku})


def _genuine(quoted: Statement, certificate: x509.Certificate) -> None:
    if quoted.signer != fingerprint(certificate):
        raise _altered("offer.signer", "the quoted offer was not signed by this seller")
    public = certificate.public_key()
    if not isinstance(public, ed25519.Ed25519PublicKey):
        raise _altered("offer.signature", "the quoted offer's signature does not verify")
    try:
        verify_ed25519(public.public_bytes_raw(), quoted.signed_bytes(), quoted.signature)
    except BadSignature:
        raise _altered("offer.signature",
                       "the quoted offer's signature does not verify") from None


def _altered(name: str, message: str) -> OfferAltered:
    return OfferAltered(message, detail={"field": name})


def _unknown(sku: str) -> UnknownOffer:
    return UnknownOffer(f"no current offer matches the one quoted (SKU {sku!r}): unknown, "
                        "withdrawn or replaced", detail={"sku": sku})


def _wrong_seller(name: str, expected: str, got: str) -> WrongSeller:
    return WrongSeller(f"{name} is {got!r}, expected {expected!r}",
                       detail={"field": name, "expected": expected, "got": got})


def _bad_note(name: str) -> BadRefundNote:
    return BadRefundNote(f"the refund note's {name} is not the transaction's",
                         detail={"field": name})


def _wire(amount: object) -> object:
    return amount.to_wire() if type(amount) is Amount else None
