"""The bodies of the five commerce statements, as typed values.

Theory of operation. A commerce statement is an ordinary signed statement
(``services.statements``) whose ``type`` is one of the five below and whose ``body``
is the map a body class writes with ``to_body``. Reading goes the other way:
``Offer.from_statement(s)`` checks the type (``statement.wrong_type``) and then
``from_body`` checks the body: exactly the keys listed, each of its type, size and
form, or ``BadBody`` (``commerce.bad_body``) naming the field. Construction runs the
same checks, so a body value that exists is a valid body.

The bodies are ``services._schema`` bodies: ``SCHEMA`` gives every commerce key its
one kind. Money is ``{"currency": str, "minor_units": int}`` (``Amount.to_wire``) and
positive; digests are 32-byte SHA-256 values; times are Unix milliseconds (UTC, at
most ``MAX_TIME_MS`` as for every body). The order
quotes the offer statement whole, so the order alone proves what the seller offered.

These classes say nothing about whether a body fits its transaction (the right
order, the right amount): that is ``_checks``. Nor do they check signatures: that is
``verify_statement`` with the signer's certificate.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Final, NoReturn

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ed25519

from .._schema import (
    AGENT,
    DIGEST,
    DIGEST_SIZE,
    IDEMPOTENCY_KEY,
    STATEMENT,
    TIME,
    Body,
    Kind,
    Schema,
    amount,
    form,
    integer,
    text,
    wire,
)
from ..delivery import StreamInfo
from ..money import Amount
from ..statements import Statement, StatementError, WrongType, sign_statement
from ._errors import BadBody, BadQuantity, UnknownOffer

__all__ = [
    "CATALOGUE",
    "DELIVERY_TYPE",
    "DIGEST_SIZE",
    "MAX_MINOR_UNITS",
    "MAX_QUANTITY",
    "MAX_REFUND_DAYS",
    "OFFER_TYPE",
    "ORDER_TYPE",
    "RECEIPT_TYPE",
    "REFUND_NOTE_TYPE",
    "SCHEMA",
    "Catalogue",
    "Delivery",
    "Offer",
    "Order",
    "Receipt",
    "RefundNote",
    "sign_body",
]

OFFER_TYPE: Final = "commerce.offer"
ORDER_TYPE: Final = "commerce.order"
DELIVERY_TYPE: Final = "commerce.delivery"
RECEIPT_TYPE: Final = "commerce.receipt"
REFUND_NOTE_TYPE: Final = "commerce.refund_note"
#: The name ``BadBody`` gives a catalogue (a list of offers, not a statement).
CATALOGUE: Final = "commerce.catalogue"

#: Prices and amounts: 1 to 10**15 minor units, so price * quantity fits in 64 bits.
MAX_MINOR_UNITS: Final = 10**15
#: A body may say up to this quantity; ``check_order`` accepts only 1 for now.
MAX_QUANTITY: Final = 1000
MAX_TITLE: Final = 256
MAX_TERMS: Final = 4096
MAX_OFFERS: Final = 1024
#: An offer's refund window: 0 (no refunds) to ten years, in days.
MAX_REFUND_DAYS: Final = 3650
MAX_SIZE: Final = 1 << 53

_MONEY: Final = amount(MAX_MINOR_UNITS)
_STATEMENT_TYPE: Final = form(r"[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+",
                              "a statement type such as 'payment.transfer_confirmation'")


def _shown(value: object) -> object:
    return value if type(value) is int else repr(value)[:40]


#: The one field with a code of its own (protocol.md 9.3: ``commerce.bad_quantity``).
_QUANTITY: Final = Kind(
    f"an int from 1 to {MAX_QUANTITY}",
    lambda v: type(v) is int and 1 <= v <= MAX_QUANTITY,
    refuse=lambda v: BadQuantity(f"quantity must be an int from 1 to {MAX_QUANTITY}",
                                 detail={"quantity": _shown(v), "max": MAX_QUANTITY}))


def _wrong_type(expected: str, statement: Statement) -> WrongType:
    return WrongType(f"expected a {expected!r} statement, got {statement.type!r}",
                     detail={"expected": expected, "type": statement.type})


#: The kind of every commerce key: a key means the same in every commerce body. Only
#: ``offer`` differs (the quoted statement in an order, its digest in a receipt), so
#: each of those two fields names its kind.
SCHEMA: Final = Schema(BadBody, {
    "seller": AGENT, "buyer": AGENT,
    "sku": form(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}",
                "1-64 of A-Z a-z 0-9 . _ - (not first: . _ -)"),
    "title": text(MAX_TITLE),
    "terms": text(MAX_TERMS, empty=True, lines=True),
    "price": _MONEY, "amount": _MONEY,
    "content_digest": DIGEST, "offer_digest": DIGEST, "order": DIGEST, "payment": DIGEST,
    "refund": DIGEST,
    "valid_until": TIME,
    "refund_days": integer(0, MAX_REFUND_DAYS),
    "quantity": _QUANTITY,
    "payment_module": form(r"[a-z][a-z0-9_]{0,31}",
                           "a module name (a-z 0-9 _, 1-32, starting with a letter)"),
    # As the payment layer's idempotency keys (the order's key becomes the payment's).
    "idempotency_key": IDEMPOTENCY_KEY,
    "size": integer(0, MAX_SIZE),
    "payment_type": _STATEMENT_TYPE, "refund_type": _STATEMENT_TYPE,
    # A streamed item's chunks (protocol.md 13.1): a bad map is commerce.bad_body,
    # detail cause delivery.bad_stream.
    "stream": Kind("a stream map {chunks, chunk_size, length, root, price_per_chunk}",
                   lambda v: type(v) is StreamInfo, decode=StreamInfo.from_wire,
                   encode=StreamInfo.to_wire),
}, wrong_type=_wrong_type)


def _fail(kind: str, name: str, why: str) -> NoReturn:
    SCHEMA.fail(kind, name, why)


# -- the five bodies ----------------------------------------------------------------
# Each is read with ``from_statement`` (statement.wrong_type for another type) or
# ``from_body``, and written with ``to_body`` (``services._schema.Body``).

@dataclass(frozen=True, slots=True, kw_only=True)
class Offer(Body):
    """``commerce.offer``, signed by the seller: one item of its catalogue.

    ``refund_days`` is the refund policy the seller signs: refunds are granted for
    that many days after the payment, none when 0. None (the key absent) is an
    offer signed before the policy was part of the body: no machine-readable term.

    ``stream`` (None: the key absent) makes the item a streamed one, delivered chunk
    by chunk on a delivery channel (protocol.md 13): its ``price`` must then be
    ``chunks`` x ``price_per_chunk``, and ``content_digest`` stays the SHA-256 of the
    whole content.
    """

    TYPE: ClassVar[str] = OFFER_TYPE
    SCHEMA: ClassVar[Schema] = SCHEMA

    seller: str
    sku: str
    title: str
    price: Amount
    terms: str
    content_digest: bytes
    valid_until: int
    refund_days: int | None = None
    stream: StreamInfo | None = None

    def _check(self) -> None:
        stream = self.stream
        if stream is not None and (
                stream.price_per_chunk.currency != self.price.currency
                or stream.price_per_chunk.minor_units * stream.chunks != self.price.minor_units):
            self.SCHEMA.fail(self.TYPE, "price", f"must be chunks x price_per_chunk "
                             f"({stream.chunks} x {stream.price_per_chunk}) for a streamed item")


@dataclass(frozen=True, slots=True, kw_only=True)
class Order(Body):
    """``commerce.order``, signed by the buyer: it quotes the offer statement whole.

    Construction checks the fields' forms only (a bad quantity is
    ``commerce.bad_quantity``, a quoted offer that is not a statement
    ``commerce.bad_body`` with detail ``cause``); whether the quoted offer is genuine,
    current and this seller's is ``check_order``'s job.
    """

    TYPE: ClassVar[str] = ORDER_TYPE
    SCHEMA: ClassVar[Schema] = SCHEMA

    buyer: str
    seller: str
    offer: Statement = field(metadata=wire(STATEMENT))
    offer_digest: bytes
    quantity: int
    payment_module: str
    idempotency_key: str

    @classmethod
    def for_offer(cls, offer: Statement, *, buyer: str, payment_module: str,
                  idempotency_key: str, quantity: int = 1) -> Order:
        """The order of ``quantity`` of ``offer``. Raises BadBody, BadQuantity,
        WrongType (``offer`` is not an offer)."""
        return cls(buyer=buyer, seller=Offer.from_statement(offer).seller, offer=offer,
                   offer_digest=offer.digest, quantity=quantity, payment_module=payment_module,
                   idempotency_key=idempotency_key)

    def offer_terms(self) -> Offer:
        """The quoted offer's body. Raises WrongType, BadBody."""
        return Offer.from_statement(self.offer)

    @property
    def amount(self) -> Amount:
        """What the order costs: the quoted price times the quantity.

        Raises:
            WrongType, BadBody: the quoted offer is not an offer.
        """
        price = self.offer_terms().price
        return Amount(price.currency, price.minor_units * self.quantity)


@dataclass(frozen=True, slots=True, kw_only=True)
class Delivery(Body):
    """``commerce.delivery``, signed by the seller; the goods travel beside it."""

    TYPE: ClassVar[str] = DELIVERY_TYPE
    SCHEMA: ClassVar[Schema] = SCHEMA

    order: bytes
    content_digest: bytes
    size: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Receipt(Body):
    """``commerce.receipt``, signed by the seller: this order was paid by that payment
    and these goods were delivered."""

    TYPE: ClassVar[str] = RECEIPT_TYPE
    SCHEMA: ClassVar[Schema] = SCHEMA

    order: bytes
    offer: bytes = field(metadata=wire(DIGEST))
    buyer: str
    amount: Amount
    payment: bytes
    payment_type: str
    content_digest: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class RefundNote(Body):
    """``commerce.refund_note``, signed by the seller: this order's payment was refunded
    by that refund confirmation."""

    TYPE: ClassVar[str] = REFUND_NOTE_TYPE
    SCHEMA: ClassVar[Schema] = SCHEMA

    order: bytes
    buyer: str
    amount: Amount
    refund: bytes
    refund_type: str


def sign_body(body: Offer | Order | Delivery | Receipt | RefundNote, *,
              key: ed25519.Ed25519PrivateKey, certificate: x509.Certificate, now_ms: int,
              nonce: bytes) -> Statement:
    """Sign ``body`` as a statement of its type (``sign_statement``).

    Raises:
        ValueError: ``key`` is not the key of ``certificate``, or a bad time or nonce.
    """
    return sign_statement(body.TYPE, body.to_body(), key=key, certificate=certificate,
                          now_ms=now_ms, nonce=nonce)


# -- the catalogue ------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Catalogue:
    """A seller's signed offers, at most one per SKU.

    Wire: a list of offer statements (``Statement.to_wire``). Construction reads every
    offer's body; it does not verify signatures (a buyer runs ``verify_statement`` on
    each offer with the seller's certificate).

    Raises (construction):
        BadBody: not a tuple of offer statements of one seller with distinct SKUs
            (``detail["type"]`` is ``commerce.catalogue``), or an offer's body is bad.
    """

    offers: tuple[Statement, ...]
    _by_sku: dict[str, tuple[Statement, Offer]] = field(init=False, repr=False, compare=False)
    _digests: frozenset[bytes] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if type(self.offers) is not tuple or len(self.offers) > MAX_OFFERS \
                or not all(type(s) is Statement for s in self.offers):
            _fail(CATALOGUE, "offers", f"must be a tuple of at most {MAX_OFFERS} statements")
        by_sku: dict[str, tuple[Statement, Offer]] = {}
        for statement in self.offers:
            try:
                offer = Offer.from_statement(statement)
            except WrongType:
                _fail(CATALOGUE, "offers", f"holds a {statement.type!r} statement")
            if offer.sku in by_sku:
                _fail(CATALOGUE, "offers", f"has two offers for SKU {offer.sku!r}")
            if by_sku and next(iter(by_sku.values()))[1].seller != offer.seller:
                _fail(CATALOGUE, "offers", "holds offers of more than one seller")
            by_sku[offer.sku] = (statement, offer)
        object.__setattr__(self, "_by_sku", by_sku)
        object.__setattr__(self, "_digests", frozenset(s.digest for s in self.offers))

    def __len__(self) -> int:
        return len(self.offers)

    @property
    def skus(self) -> tuple[str, ...]:
        return tuple(self._by_sku)

    def find(self, sku: str) -> Statement:
        """The offer statement for ``sku``. Raises UnknownOffer."""
        try:
            return self._by_sku[sku][0]
        except (KeyError, TypeError):
            raise UnknownOffer(f"the catalogue has no offer for SKU {sku!r:.80}",
                               detail={"sku": sku if type(sku) is str else None}) from None

    def terms(self, sku: str) -> Offer:
        """The offer body for ``sku``. Raises UnknownOffer."""
        self.find(sku)
        return self._by_sku[sku][1]

    def holds(self, offer: Statement) -> bool:
        """Whether ``offer`` is, byte for byte, one of this catalogue's offers."""
        return offer.digest in self._digests

    def to_wire(self) -> list[dict[str, Any]]:
        return [s.to_wire() for s in self.offers]

    @classmethod
    def from_wire(cls, value: object) -> Catalogue:
        """Raises BadBody (a statement layer fault: detail ``cause``)."""
        if type(value) is not list or len(value) > MAX_OFFERS:
            _fail(CATALOGUE, "offers", f"must be a list of at most {MAX_OFFERS} statements")
        try:
            offers = tuple(Statement.from_wire(item) for item in value)
        except StatementError as exc:
            raise BadBody(f"{CATALOGUE}: an offer is not a statement: {exc.message}",
                          detail={"type": CATALOGUE, "field": "offers",
                                  "cause": exc.code}) from exc
        return cls(offers)
