"""The bodies of the five commerce statements, as typed values.

Theory of operation. A commerce statement is an ordinary signed statement
(``services.statements``) whose ``type`` is one of the five below and whose ``body``
is the map a body class writes with ``to_body``. Reading goes the other way:
``Offer.from_statement(s)`` checks the type (``statement.wrong_type``) and then
``from_body`` checks the body: exactly the keys listed, each of its type, size and
form, or ``BadBody`` (``commerce.bad_body``) naming the field. Construction runs the
same checks, so a body value that exists is a valid body.

Money is ``{"currency": str, "minor_units": int}`` (``Amount.to_wire``) and positive;
digests are 32-byte SHA-256 values; times are Unix milliseconds (UTC). The order
quotes the offer statement whole, so the order alone proves what the seller offered.

These classes say nothing about whether a body fits its transaction (the right
order, the right amount): that is ``_checks``. Nor do they check signatures: that is
``verify_statement`` with the signer's certificate.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final, NoReturn, Self

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ed25519

from ..certificates import check_name
from ..money import Amount, BadAmount
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

DIGEST_SIZE: Final = 32
#: Prices and amounts: 1 to 10**15 minor units, so price * quantity fits in 64 bits.
MAX_MINOR_UNITS: Final = 10**15
#: A body may say up to this quantity; ``check_order`` accepts only 1 for now.
MAX_QUANTITY: Final = 1000
MAX_TITLE: Final = 256
MAX_TERMS: Final = 4096
MAX_KEY: Final = 128
MAX_OFFERS: Final = 1024
#: An offer's refund window: 0 (no refunds) to ten years, in days.
MAX_REFUND_DAYS: Final = 3650
MAX_SIZE: Final = 1 << 53
#: Unix milliseconds of 9999-12-31T23:59:59.999Z, as for statements.
MAX_TIME_MS: Final = 253_402_300_799_999

_SKU: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")
_MODULE: Final = re.compile(r"[a-z][a-z0-9_]{0,31}\Z")
_STATEMENT_TYPE: Final = re.compile(r"[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+\Z")
#: As the payment layer's idempotency keys (the order's key becomes the payment's).
_KEY: Final = re.compile(r"[\x20-\x7e]{1,128}\Z")


# -- field checks: each raises BadBody naming the statement type and the field --------

def _fail(kind: str, name: str, why: str) -> NoReturn:
    raise BadBody(f"{kind}: {name} {why}", detail={"type": kind, "field": name})


def _text(kind: str, name: str, value: object, *, max_chars: int, empty: bool = False,
          lines: bool = False) -> None:
    """A str of 1 (0 if ``empty``) to ``max_chars`` code points, valid UTF-8, printable
    (tabs and newlines too when ``lines``)."""
    if type(value) is not str:
        _fail(kind, name, "must be a str")
    if not (0 if empty else 1) <= len(value) <= max_chars:
        _fail(kind, name, f"must be {0 if empty else 1} to {max_chars} characters")
    shown = value.replace("\n", "").replace("\t", "") if lines else value
    if not shown.isprintable():
        _fail(kind, name, "must not contain control characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        _fail(kind, name, "is not valid Unicode text")


def _form(kind: str, name: str, value: object, pattern: re.Pattern[str], what: str) -> None:
    if type(value) is not str or len(value) > MAX_KEY or not pattern.match(value):
        _fail(kind, name, f"must be {what}")


def _agent(kind: str, name: str, value: object) -> None:
    try:
        check_name(name, value)  # type: ignore[arg-type]
    except ValueError:
        _fail(kind, name, "must be an agent id (1-63 of a-z 0-9 . _ -)")


def _digest(kind: str, name: str, value: object) -> None:
    if type(value) is not bytes or len(value) != DIGEST_SIZE:
        _fail(kind, name, f"must be {DIGEST_SIZE} bytes (SHA-256)")


def _int(kind: str, name: str, value: object, low: int, high: int) -> None:
    if type(value) is not int or not low <= value <= high:
        _fail(kind, name, f"must be an int from {low} to {high}")


def _money(kind: str, name: str, value: object) -> None:
    if type(value) is not Amount or not 1 <= value.minor_units <= MAX_MINOR_UNITS:
        _fail(kind, name, f"must be a positive Amount of at most {MAX_MINOR_UNITS} minor units")


def _money_from_wire(kind: str, name: str, value: object) -> Amount:
    if type(value) is not dict or set(value) != {"currency", "minor_units"}:
        _fail(kind, name, "must be a map {currency, minor_units}")
    try:
        return Amount(value["currency"], value["minor_units"])
    except BadAmount as exc:
        _fail(kind, name, exc.message)


def _keys(kind: str, body: object, keys: frozenset[str]) -> dict[str, Any]:
    if type(body) is not dict:
        _fail(kind, "body", "must be a map")
    missing, extra = sorted(keys - set(body)), sorted(set(body) - keys)
    if missing:
        _fail(kind, missing[0], "is missing")
    if extra:
        _fail(kind, extra[0], "is not a field of this body")
    return body


class _Body:
    """What every body class has: its statement type and reading from a statement."""

    __slots__ = ()
    TYPE: ClassVar[str]

    @classmethod
    def from_body(cls, body: object) -> Self:
        raise NotImplementedError

    @classmethod
    def from_statement(cls, statement: Statement) -> Self:
        """Read the body of ``statement``. Does not check the signature.

        Raises:
            WrongType: the statement is of another type.
            BadBody: the body is not a body of this type.
        """
        if statement.type != cls.TYPE:
            raise WrongType(f"expected a {cls.TYPE!r} statement, got {statement.type!r}",
                            detail={"expected": cls.TYPE, "type": statement.type})
        return cls.from_body(statement.body)

    def to_body(self) -> dict[str, Any]:
        raise NotImplementedError


# -- the five bodies ----------------------------------------------------------------

@dataclass(frozen=True, slots=True, kw_only=True)
class Offer(_Body):
    """``commerce.offer``, signed by the seller: one item of its catalogue.

    ``refund_days`` is the refund policy the seller signs: refunds are granted for
    that many days after the payment, none when 0. None (the key absent) is an
    offer signed before the policy was part of the body: no machine-readable term.
    """

    TYPE: ClassVar[str] = OFFER_TYPE
    _KEYS: ClassVar[frozenset[str]] = frozenset(
        {"seller", "sku", "title", "price", "terms", "content_digest", "valid_until"})

    seller: str
    sku: str
    title: str
    price: Amount
    terms: str
    content_digest: bytes
    valid_until: int
    refund_days: int | None = None

    def __post_init__(self) -> None:
        _agent(OFFER_TYPE, "seller", self.seller)
        _form(OFFER_TYPE, "sku", self.sku, _SKU, "1-64 of A-Z a-z 0-9 . _ - (not first: . _ -)")
        _text(OFFER_TYPE, "title", self.title, max_chars=MAX_TITLE)
        _money(OFFER_TYPE, "price", self.price)
        _text(OFFER_TYPE, "terms", self.terms, max_chars=MAX_TERMS, empty=True, lines=True)
        _digest(OFFER_TYPE, "content_digest", self.content_digest)
        _int(OFFER_TYPE, "valid_until", self.valid_until, 0, MAX_TIME_MS)
        if self.refund_days is not None:
            _int(OFFER_TYPE, "refund_days", self.refund_days, 0, MAX_REFUND_DAYS)

    def to_body(self) -> dict[str, Any]:
        body = {"seller": self.seller, "sku": self.sku, "title": self.title,
                "price": self.price.to_wire(), "terms": self.terms,
                "content_digest": self.content_digest, "valid_until": self.valid_until}
        if self.refund_days is not None:
            body["refund_days"] = self.refund_days
        return body

    @classmethod
    def from_body(cls, body: object) -> Offer:
        """Raises BadBody."""
        policy = type(body) is dict and "refund_days" in body
        b = _keys(OFFER_TYPE, body, cls._KEYS | {"refund_days"} if policy else cls._KEYS)
        return cls(seller=b["seller"], sku=b["sku"], title=b["title"],
                   price=_money_from_wire(OFFER_TYPE, "price", b["price"]), terms=b["terms"],
                   content_digest=b["content_digest"], valid_until=b["valid_until"],
                   refund_days=b.get("refund_days"))


@dataclass(frozen=True, slots=True, kw_only=True)
class Order(_Body):
    """``commerce.order``, signed by the buyer: it quotes the offer statement whole.

    Construction checks the fields' forms only; whether the quoted offer is genuine,
    current and this seller's is ``check_order``'s job.
    """

    TYPE: ClassVar[str] = ORDER_TYPE
    _KEYS: ClassVar[frozenset[str]] = frozenset(
        {"buyer", "seller", "offer", "offer_digest", "quantity", "payment_module",
         "idempotency_key"})

    buyer: str
    seller: str
    offer: Statement
    offer_digest: bytes
    quantity: int
    payment_module: str
    idempotency_key: str

    def __post_init__(self) -> None:
        _agent(ORDER_TYPE, "buyer", self.buyer)
        _agent(ORDER_TYPE, "seller", self.seller)
        if type(self.offer) is not Statement:
            _fail(ORDER_TYPE, "offer", "must be a statement")
        _digest(ORDER_TYPE, "offer_digest", self.offer_digest)
        if type(self.quantity) is not int or not 1 <= self.quantity <= MAX_QUANTITY:
            raise BadQuantity(f"quantity must be an int from 1 to {MAX_QUANTITY}",
                              detail={"quantity": _shown(self.quantity), "max": MAX_QUANTITY})
        _form(ORDER_TYPE, "payment_module", self.payment_module, _MODULE,
              "a module name (a-z 0-9 _, 1-32, starting with a letter)")
        _form(ORDER_TYPE, "idempotency_key", self.idempotency_key, _KEY,
              f"1 to {MAX_KEY} characters of U+0020 to U+007E")

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

    def to_body(self) -> dict[str, Any]:
        return {"buyer": self.buyer, "seller": self.seller, "offer": self.offer.to_wire(),
                "offer_digest": self.offer_digest, "quantity": self.quantity,
                "payment_module": self.payment_module, "idempotency_key": self.idempotency_key}

    @classmethod
    def from_body(cls, body: object) -> Order:
        """Raises BadBody (also for a quoted offer that is not a statement: detail
        ``cause`` is the statement layer's code), BadQuantity."""
        b = _keys(ORDER_TYPE, body, cls._KEYS)
        try:
            offer = Statement.from_wire(b["offer"])
        except StatementError as exc:
            raise BadBody(f"{ORDER_TYPE}: offer is not a statement: {exc.message}",
                          detail={"type": ORDER_TYPE, "field": "offer",
                                  "cause": exc.code}) from exc
        return cls(buyer=b["buyer"], seller=b["seller"], offer=offer,
                   offer_digest=b["offer_digest"], quantity=b["quantity"],
                   payment_module=b["payment_module"], idempotency_key=b["idempotency_key"])


@dataclass(frozen=True, slots=True, kw_only=True)
class Delivery(_Body):
    """``commerce.delivery``, signed by the seller; the goods travel beside it."""

    TYPE: ClassVar[str] = DELIVERY_TYPE
    _KEYS: ClassVar[frozenset[str]] = frozenset({"order", "content_digest", "size"})

    order: bytes
    content_digest: bytes
    size: int

    def __post_init__(self) -> None:
        _digest(DELIVERY_TYPE, "order", self.order)
        _digest(DELIVERY_TYPE, "content_digest", self.content_digest)
        _int(DELIVERY_TYPE, "size", self.size, 0, MAX_SIZE)

    def to_body(self) -> dict[str, Any]:
        return {"order": self.order, "content_digest": self.content_digest, "size": self.size}

    @classmethod
    def from_body(cls, body: object) -> Delivery:
        """Raises BadBody."""
        b = _keys(DELIVERY_TYPE, body, cls._KEYS)
        return cls(order=b["order"], content_digest=b["content_digest"], size=b["size"])


@dataclass(frozen=True, slots=True, kw_only=True)
class Receipt(_Body):
    """``commerce.receipt``, signed by the seller: this order was paid by that payment
    and these goods were delivered."""

    TYPE: ClassVar[str] = RECEIPT_TYPE
    _KEYS: ClassVar[frozenset[str]] = frozenset(
        {"order", "offer", "buyer", "amount", "payment", "payment_type", "content_digest"})

    order: bytes
    offer: bytes
    buyer: str
    amount: Amount
    payment: bytes
    payment_type: str
    content_digest: bytes

    def __post_init__(self) -> None:
        _digest(RECEIPT_TYPE, "order", self.order)
        _digest(RECEIPT_TYPE, "offer", self.offer)
        _agent(RECEIPT_TYPE, "buyer", self.buyer)
        _money(RECEIPT_TYPE, "amount", self.amount)
        _digest(RECEIPT_TYPE, "payment", self.payment)
        _form(RECEIPT_TYPE, "payment_type", self.payment_type, _STATEMENT_TYPE,
              "a statement type such as 'payment.transfer_confirmation'")
        _digest(RECEIPT_TYPE, "content_digest", self.content_digest)

    def to_body(self) -> dict[str, Any]:
        return {"order": self.order, "offer": self.offer, "buyer": self.buyer,
                "amount": self.amount.to_wire(), "payment": self.payment,
                "payment_type": self.payment_type, "content_digest": self.content_digest}

    @classmethod
    def from_body(cls, body: object) -> Receipt:
        """Raises BadBody."""
        b = _keys(RECEIPT_TYPE, body, cls._KEYS)
        return cls(order=b["order"], offer=b["offer"], buyer=b["buyer"],
                   amount=_money_from_wire(RECEIPT_TYPE, "amount", b["amount"]),
                   payment=b["payment"], payment_type=b["payment_type"],
                   content_digest=b["content_digest"])


@dataclass(frozen=True, slots=True, kw_only=True)
class RefundNote(_Body):
    """``commerce.refund_note``, signed by the seller: this order's payment was refunded
    by that refund confirmation."""

    TYPE: ClassVar[str] = REFUND_NOTE_TYPE
    _KEYS: ClassVar[frozenset[str]] = frozenset(
        {"order", "buyer", "amount", "refund", "refund_type"})

    order: bytes
    buyer: str
    amount: Amount
    refund: bytes
    refund_type: str

    def __post_init__(self) -> None:
        _digest(REFUND_NOTE_TYPE, "order", self.order)
        _agent(REFUND_NOTE_TYPE, "buyer", self.buyer)
        _money(REFUND_NOTE_TYPE, "amount", self.amount)
        _digest(REFUND_NOTE_TYPE, "refund", self.refund)
        _form(REFUND_NOTE_TYPE, "refund_type", self.refund_type, _STATEMENT_TYPE,
              "a statement type such as 'payment.refund_confirmation'")

    def to_body(self) -> dict[str, Any]:
        return {"order": self.order, "buyer": self.buyer, "amount": self.amount.to_wire(),
                "refund": self.refund, "refund_type": self.refund_type}

    @classmethod
    def from_body(cls, body: object) -> RefundNote:
        """Raises BadBody."""
        b = _keys(REFUND_NOTE_TYPE, body, cls._KEYS)
        return cls(order=b["order"], buyer=b["buyer"],
                   amount=_money_from_wire(REFUND_NOTE_TYPE, "amount", b["amount"]),
                   refund=b["refund"], refund_type=b["refund_type"])


def _shown(value: object) -> object:
    return value if type(value) is int else repr(value)[:40]


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
