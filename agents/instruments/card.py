"""The bank half of ``card``: the payment gateway (SET-style; docs/protocol.md 8.8).

Theory of operation. The bank issues cards (``card_cards``: a Luhn-valid 16-digit
number, an expiry month, the holder and the currency of the account behind it;
``issue_card``, at market init). It publishes an X25519 HPKE key as a signed
``card.gateway_key`` (``bank.card_gateway_key``); cardholders seal their payment
instructions (PI) to it, so the merchant forwards what it cannot read, and the
gateway is handed only the digest of the order information (OIMD), never the order
itself: no table here has a column for a description.

``bank.card_authorize`` (from the merchant): the PI opened and checked against the
cardholder's dual signature (``check_authorize``), the card's record and balance
judged (``decide_authorization``: the signer must be the card's holder), then the
amount moves from the holder's account to the bank's system account ``@card-held``
and the bank signs a ``card.authorization``; once per (merchant, idempotency key),
and once per order (the authorisation's id is derived from merchant and OIMD): the
same instructions less their nonce (card, amount, order, the cardholder's key) for
the same order, under any key, are answered with the first authorisation (a
cardholder's retry seals a fresh PI); anything else under the key is
``payment.idempotency_conflict``, and other instructions for an order authorised
are ``payment.already_paid``.

``bank.card_capture`` (from the authorisation's merchant): up to what remains of
the hold moves from ``@card-held`` to the merchant and the bank signs a
``payment.card_captured``, the settlement (refundable through the generic
``bank.refund``, which credits the cardholder's account: the settlement's payer is
the holder). A capture with ``final`` true, or one that takes all that remains,
closes the authorisation and returns the rest to the holder; what an open one still
holds at ``expires_ms`` goes back by the sweep (``run``, ``release_expired``), as
the purse's reservations do. Each step is one SQLite transaction through the ledger,
so ``@card-held`` always holds the sum of the open authorisations' remainders and
the books balance at every commit.

Crash points: ``card.authorize.received``, ``.checked``, ``.applied`` (inside the
transaction, all written, not committed), ``.committed``; ``card.capture.received``,
``.applied``, ``.committed``.
"""

from __future__ import annotations

import datetime as dt
import secrets
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import trio
from cryptography.hazmat.primitives.asymmetric import x25519

from semper.agents.components import _archive, _ledger
from semper.agents.components._bank import BankBook, BankService, Outcome, typed
from semper.agents.components._cards import luhn_digit
from semper.agents.runtime._component import Component, handles
from semper.agents.runtime._faults import crash_point
from semper.services import Amount
from semper.services.archive import Direction
from semper.services.payment import AlreadyPaid, IdempotencyConflict, request_digest
from semper.services.payment.card import (
    CARD_AUTHORIZE,
    CARD_CAPTURE,
    CARD_GATEWAY_KEY,
    GATEWAY_KEY,
    Authorization,
    AuthorizeAnswer,
    AuthorizeRequest,
    CaptureAnswer,
    CaptureRequest,
    GatewayKey,
    GatewayKeyAnswer,
    GatewayKeyRequest,
    UnknownAuthorization,
)
from semper.services.payment.card._checks import (
    Authorizing,
    authorize,
    capture,
    check_authorize,
    decide_authorization,
    decide_capture,
)
from semper.services.payment.card._set import instructions_digest
from semper.services.statements import Statement

__all__ = ["AUTH_VALIDITY_MS", "HELD", "KEY_PERIOD_MS", "MIGRATIONS", "SWEEP_BATCH",
           "CardGateway", "authorize_card", "capture_card", "issue_card", "release_expired"]

#: The bank's own account that holds what open authorisations hold.
HELD: Final = _ledger.system_account("card-held")
#: How long an authorisation may be captured: 7 days (SET's authorisations lapse too).
AUTH_VALIDITY_MS: Final = 7 * 86_400_000
#: How long a gateway key is published (its statement's ``expires_ms``); a new one is
#: made when less than a quarter is left. Old keys stay to open what was sealed to them.
KEY_PERIOD_MS: Final = 30 * 86_400_000
#: Seconds between two sweeps of the lapsed authorisations (trio's clock).
SWEEP_INTERVAL_S: Final = 60.0
#: Authorisations one sweep transaction releases at most.
SWEEP_BATCH: Final = 200
#: Years a card issued now is valid (its expiry is that many years on, same month).
CARD_YEARS: Final = 4
#: The first digits of the cards this bank issues (a test range, not a real issuer).
_CARD_PREFIX: Final = "49"

MIGRATIONS: Final = {
    "bank_card": [
        "CREATE TABLE card_cards ("
        " number TEXT PRIMARY KEY, expiry TEXT NOT NULL, holder TEXT NOT NULL,"
        " currency TEXT NOT NULL, issued_ms INTEGER NOT NULL) STRICT;"
        "CREATE INDEX card_cards_holder ON card_cards (holder);"
        "CREATE TABLE card_gateway_keys ("
        " id INTEGER PRIMARY KEY, private BLOB NOT NULL, public BLOB NOT NULL,"
        " created_ms INTEGER NOT NULL) STRICT;"
        # One row per order authorised (authorization_id derives from merchant and
        # OIMD); ``instructions`` is the PI's digest without its nonce (a retry's).
        "CREATE TABLE card_authorizations ("
        " authorization_id TEXT PRIMARY KEY, merchant TEXT NOT NULL,"
        " idempotency_key TEXT NOT NULL, instructions BLOB NOT NULL,"
        " number TEXT NOT NULL, holder TEXT NOT NULL, currency TEXT NOT NULL,"
        " amount INTEGER NOT NULL, captured INTEGER NOT NULL DEFAULT 0,"
        " released INTEGER NOT NULL DEFAULT 0, oimd BLOB NOT NULL, pimd BLOB NOT NULL,"
        " state TEXT NOT NULL, expires_ms INTEGER NOT NULL, authorization BLOB NOT NULL,"
        " entry INTEGER NOT NULL, updated_ms INTEGER NOT NULL,"
        " UNIQUE (merchant, idempotency_key)) STRICT;"
        "CREATE INDEX card_authorizations_open ON card_authorizations (state, expires_ms);"
        "CREATE TABLE card_captures ("
        " merchant TEXT NOT NULL, idempotency_key TEXT NOT NULL,"
        " authorization_id TEXT NOT NULL, digest BLOB NOT NULL,"
        " amount INTEGER NOT NULL, final INTEGER NOT NULL, captured BLOB NOT NULL,"
        " entry INTEGER NOT NULL, created_ms INTEGER NOT NULL,"
        " PRIMARY KEY (merchant, idempotency_key)) STRICT",
    ],
}


# -- issuing cards ----------------------------------------------------------------------

def _expiry_after(now_ms: int, years: int) -> str:
    when = dt.datetime.fromtimestamp(now_ms / 1000, tz=dt.UTC)
    return f"{when.year + years:04d}-{when.month:02d}"


def issue_card(c: sqlite3.Connection, holder: str, currency: str, *, now_ms: int,
               years: int = CARD_YEARS) -> tuple[str, str]:
    """Issue ``holder`` a card backed by its ``currency`` account (which must exist),
    in the caller's transaction: a random Luhn-valid 16-digit number and an expiry
    ``years`` on. Returns ``(number, expiry)``.

    Raises:
        UnknownAccount: the holder has no account in ``currency``.
    """
    _ledger.account(c, holder, currency)
    expiry = _expiry_after(now_ms, years)
    for _ in range(100):  # 10**13 numbers: a clash is as good as impossible
        body = _CARD_PREFIX + "".join(secrets.choice("0123456789") for _ in range(13))
        number = body + luhn_digit(body)
        if c.execute("INSERT OR IGNORE INTO card_cards (number, expiry, holder, currency,"
                     " issued_ms) VALUES (?, ?, ?, ?, ?)",
                     (number, expiry, holder, currency, now_ms)).rowcount == 1:
            return number, expiry
    raise RuntimeError("no free card number found")  # pragma: no cover


# -- authorisations ---------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class _Authorized:
    """A row of ``card_authorizations`` (what a capture needs)."""

    merchant: str
    idempotency_key: str
    instructions: bytes
    holder: str
    currency: str
    amount: int
    captured: int
    released: int
    oimd: bytes
    state: str
    authorization: bytes


_AUTH_COLUMNS: Final = ("merchant, idempotency_key, instructions, holder, currency, amount,"
                        " captured, released, oimd, state, authorization")


def _authorized(c: sqlite3.Connection, where: str, *args: Any) -> _Authorized | None:
    row = c.execute(f"SELECT {_AUTH_COLUMNS} FROM card_authorizations WHERE {where}",
                    args).fetchone()
    return None if row is None else _Authorized(*row)


def authorize_card(book: BankBook, c: sqlite3.Connection, request: AuthorizeRequest,
                   checked: Authorizing, *, expires_ms: int) -> Outcome:
    """Hold a checked authorisation's amount on the card, once per (merchant, key)
    and per order.

    Raises:
        IdempotencyConflict: the key was used for another authorisation.
        AlreadyPaid: the order was authorised with other instructions.
        UnknownCard, ExpiredCard, WrongCurrency, Declined: ``decide_authorization``.
        UnknownAccount: the merchant has no account in the amount's currency.
    """
    instructions = instructions_digest(checked.pi)
    merchant, key = checked.merchant, request.idempotency_key
    by_key = _authorized(c, "merchant = ? AND idempotency_key = ?", merchant, key)
    if by_key is not None:
        if by_key.instructions != instructions or by_key.oimd != checked.oimd:
            raise IdempotencyConflict(f"idempotency key {key!r} was used for another "
                                      "authorisation", detail={"key": key})
        return Outcome(Statement.from_bytes(by_key.authorization), False)
    by_order = _authorized(c, "authorization_id = ?", checked.authorization_id)
    if by_order is not None:
        if by_order.instructions != instructions:
            raise AlreadyPaid(f"{merchant}'s order was authorised with other instructions",
                              detail={"authorization_id": checked.authorization_id})
        return Outcome(Statement.from_bytes(by_order.authorization), False)
    pi = checked.pi
    card = c.execute("SELECT holder, expiry, currency FROM card_cards WHERE number = ?",
                     (pi.number,)).fetchone()
    holder, expiry, currency = card if card is not None else (None, None, None)
    balance = None  # no card; an account of another currency: WrongCurrency
    if holder is not None:
        balance = (_ledger.balance(c, holder, currency) if currency == pi.amount.currency
                   else Amount(currency, 0))
    decide_authorization(checked, holder=holder, expiry=expiry, now_ms=book.now_ms(),
                         balance=balance)
    assert holder is not None
    _ledger.account(c, merchant, pi.amount.currency)  # the hold could be captured
    _ledger.open_account(c, HELD, pi.amount.currency)
    entry = _ledger.move(c, holder, HELD, pi.amount, kind="card.authorized",
                         time_ms=book.now_ms(), reference=checked.oimd)
    authorization = book.sign(*typed(authorize(checked, bank=book.bank_id,
                                               expires_ms=expires_ms)))
    c.execute("INSERT INTO card_authorizations (authorization_id, merchant, idempotency_key,"
              " instructions, number, holder, currency, amount, oimd, pimd, state, expires_ms,"
              " authorization, entry, updated_ms)"
              " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'open', ?, ?, ?, ?)",
              (checked.authorization_id, merchant, key, instructions, pi.number, holder,
               currency, pi.amount.minor_units, checked.oimd, checked.pimd, expires_ms,
               authorization.to_bytes(), entry, book.now_ms()))
    # The order's statements at the bank go under one transaction, its OIMD (hex): the
    # dual signature received, the authorisation sent, then each capture sent.
    _archive.append(c, [
        _archive.entry(request.dual, direction=Direction.RECEIVED, peer=merchant,
                       transaction=checked.oimd.hex(),
                       certificate=request.cardholder_certificate),
        _archive.entry(authorization, direction=Direction.SENT, peer=merchant,
                       transaction=checked.oimd.hex(), certificate=book.certificate),
    ], now_ms=book.now_ms())
    crash_point("card.authorize.applied")  # all written, not committed
    return Outcome(authorization, True)


# -- captures ---------------------------------------------------------------------------

def _capture_digest(request: CaptureRequest, final: bool) -> bytes:
    return request_digest({"authorization_id": request.authorization_id,
                           "amount": request.amount.to_wire(), "final": final})


def capture_card(book: BankBook, c: sqlite3.Connection, request: CaptureRequest, *,
                 merchant: str, final: bool) -> Outcome:
    """Move ``request.amount`` of an open authorisation to its merchant, once per
    (merchant, key); with ``final`` (or nothing left) the rest goes back to the holder.

    Raises:
        IdempotencyConflict: the key was used for another capture.
        UnknownAuthorization, WrongCurrency, OverAuthorized: ``decide_capture``.
    """
    key = request.idempotency_key
    digest = _capture_digest(request, final)
    row = c.execute("SELECT digest, captured FROM card_captures"
                    " WHERE merchant = ? AND idempotency_key = ?", (merchant, key)).fetchone()
    if row is not None:
        if row[0] != digest:
            raise IdempotencyConflict(f"idempotency key {key!r} was used for another capture",
                                      detail={"key": key})
        return Outcome(Statement.from_bytes(row[1]), False)
    auth_id = request.authorization_id
    held = _authorized(c, "authorization_id = ?", auth_id)
    if held is None:
        raise UnknownAuthorization("no open authorisation of this id for the requester",
                                   detail={"authorization_id": auth_id})
    authorization = Authorization.from_statement(Statement.from_bytes(held.authorization))
    total = decide_capture(authorization, requester=merchant, amount=request.amount,
                           captured=Amount(held.currency, held.captured),
                           now_ms=book.now_ms(), closed=held.state != "open")
    request_name = "card:" + auth_id
    book.one_payment(c, held.holder, merchant, held.oimd, request_name)
    now_ms = book.now_ms()
    entry = _ledger.move(c, HELD, merchant, request.amount, kind="card.captured",
                         time_ms=now_ms, reference=held.oimd)
    captured = book.sign(*typed(capture(authorization, amount=request.amount, entry=entry)))
    rest = held.amount - total.minor_units
    closing = final or rest == 0
    if closing and rest:
        _ledger.move(c, HELD, held.holder, Amount(held.currency, rest), kind="card.released",
                     time_ms=now_ms, reference=held.oimd)
    c.execute("UPDATE card_authorizations SET captured = ?, released = ?, state = ?,"
              " updated_ms = ? WHERE authorization_id = ?",
              (total.minor_units, rest if closing else 0, "closed" if closing else "open",
               now_ms, auth_id))
    c.execute("INSERT INTO card_captures (merchant, idempotency_key, authorization_id, digest,"
              " amount, final, captured, entry, created_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
              (merchant, key, auth_id, digest, request.amount.minor_units, int(final),
               captured.to_bytes(), entry, now_ms))
    book.settled(c, captured, payer=held.holder, payee=merchant, amount=request.amount,
                 entry=entry, reference=held.oimd, request=request_name)
    _archive.append(c, [_archive.entry(captured, direction=Direction.SENT, peer=merchant,
                                       transaction=held.oimd.hex(),
                                       certificate=book.certificate)], now_ms=now_ms)
    crash_point("card.capture.applied")  # all written, not committed
    return Outcome(captured, True)


def release_expired(c: sqlite3.Connection, *, now_ms: int) -> int:
    """Return to their holders what up to ``SWEEP_BATCH`` open authorisations that
    lapsed before ``now_ms`` still hold; how many were closed."""
    rows = c.execute("SELECT authorization_id, holder, currency, amount - captured, oimd"
                     " FROM card_authorizations WHERE state = 'open' AND expires_ms < ?"
                     " ORDER BY expires_ms LIMIT ?", (now_ms, SWEEP_BATCH)).fetchall()
    for auth_id, holder, currency, rest, oimd in rows:
        if rest:
            _ledger.move(c, HELD, holder, Amount(currency, rest), kind="card.released",
                         time_ms=now_ms, reference=oimd)
        c.execute("UPDATE card_authorizations SET state = 'expired', released = ?,"
                  " updated_ms = ? WHERE authorization_id = ?", (rest, now_ms, auth_id))
    return len(rows)


# -- the component ------------------------------------------------------------------------

class CardGateway(Component):
    """The bank's card gateway: its key, authorisations, captures and their sweep."""

    name = "card"
    modules = ("card",)
    requires = (BankService,)

    def __init__(self, context: Any) -> None:
        super().__init__(context)
        #: (key id, private key, created_ms), newest first; loaded on first need.
        self._keys: list[tuple[int, x25519.X25519PrivateKey, int]] = []
        self._statement: tuple[int, Statement] | None = None

    def migrations(self) -> Mapping[str, Sequence[str]]:
        return MIGRATIONS

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        task_status.started()
        while True:
            await self.sweep()
            await trio.sleep(SWEEP_INTERVAL_S)

    async def sweep(self) -> int:
        """Close every open authorisation past its ``expires_ms`` (the injected clock),
        returning what it holds to the cardholder; how many."""
        closed = 0
        for _ in range(10_000):  # bounded: SWEEP_BATCH a transaction
            done = await self.context.database.transaction(
                lambda c: release_expired(c, now_ms=self.context.now_ms()))
            closed += done
            if done < SWEEP_BATCH:
                break
        return closed

    # -- the gateway key ---------------------------------------------------------------

    async def private_keys(self) -> list[x25519.X25519PrivateKey]:
        """Every gateway key made, newest first; a new one when the newest has less
        than a quarter of ``KEY_PERIOD_MS`` left (or there is none)."""
        now = self.context.now_ms()
        if not self._keys or now >= self._keys[0][2] + KEY_PERIOD_MS * 3 // 4:
            fresh = x25519.X25519PrivateKey.generate()

            def load_or_create(c: sqlite3.Connection) -> list[tuple[int, bytes, int]]:
                rows = c.execute("SELECT id, private, created_ms FROM card_gateway_keys"
                                 " ORDER BY id DESC").fetchall()
                if not rows or now >= rows[0][2] + KEY_PERIOD_MS * 3 // 4:
                    c.execute("INSERT INTO card_gateway_keys (private, public, created_ms)"
                              " VALUES (?, ?, ?)", (fresh.private_bytes_raw(),
                                                    fresh.public_key().public_bytes_raw(),
                                                    now))
                    rows = c.execute("SELECT id, private, created_ms FROM card_gateway_keys"
                                     " ORDER BY id DESC").fetchall()
                return rows

            rows = await self.context.database.transaction(load_or_create)
            self._keys = [(i, x25519.X25519PrivateKey.from_private_bytes(k), created)
                          for i, k, created in rows]
        return [key for _, key, _ in self._keys]

    async def key_statement(self) -> Statement:
        """Our current ``card.gateway_key``: the newest key, valid until its period
        ends."""
        keys = await self.private_keys()
        key_id, _, created_ms = self._keys[0]
        if self._statement is None or self._statement[0] != key_id:
            body = GatewayKey(bank=self.context.id,
                              public_key=keys[0].public_key().public_bytes_raw(),
                              expires_ms=created_ms + KEY_PERIOD_MS)
            self._statement = (key_id, self.context.sign(GATEWAY_KEY, body.to_body()))
        return self._statement[1]

    @handles(CARD_GATEWAY_KEY)
    async def gateway_key(self, context: Any, request: GatewayKeyRequest) -> GatewayKeyAnswer:
        return GatewayKeyAnswer(key=await self.key_statement(),
                                bank_certificate=self.context.certificate)

    # -- authorise and capture ---------------------------------------------------------

    @handles(CARD_AUTHORIZE)
    async def authorize(self, context: Any, request: AuthorizeRequest) -> AuthorizeAnswer:
        crash_point("card.authorize.received")
        bank = self.context.component(BankService)
        checks = bank.checks()
        private_keys = await self.private_keys()
        checked = check_authorize(request, merchant=context.peer.agent_id,
                                  private_keys=private_keys, **checks)
        crash_point("card.authorize.checked")
        expires_ms = self.context.now_ms() + AUTH_VALIDITY_MS
        outcome = await self.context.database.transaction(lambda c: authorize_card(
            bank.book, c, request, checked, expires_ms=expires_ms))
        crash_point("card.authorize.committed")
        return AuthorizeAnswer(authorization=outcome.statement,
                               bank_certificate=self.context.certificate)

    @handles(CARD_CAPTURE)
    async def capture(self, context: Any, request: CaptureRequest) -> CaptureAnswer:
        crash_point("card.capture.received")
        bank = self.context.component(BankService)
        final = bool(request.final)
        merchant = context.peer.agent_id
        outcome = await self.context.database.transaction(lambda c: capture_card(
            bank.book, c, request, merchant=merchant, final=final))
        crash_point("card.capture.committed")
        return CaptureAnswer(captured=outcome.statement,
                             bank_certificate=self.context.certificate)
