"""The bank half of ``ecash``: denomination keys, blind withdrawals, deposits,
exchanges, and refunds paid as vouchers (docs/protocol.md 8.7).

Theory of operation. Coins in circulation are money the bank owes: the system
account ``@ecash-outstanding`` (``ledger.system_account``) holds, per currency, the
value of every coin signed and not yet deposited or exchanged, plus every refund
voucher issued and not yet redeemed. ``bank.ecash_withdraw`` moves the amount from
the requester's account there and blind-signs the coins (RFC 9474: the bank never
sees them); ``bank.ecash_deposit`` moves the coins' value from there to the payee
(the channel's peer) and records each coin as spent; ``bank.ecash_exchange`` takes
coins (or a voucher) in and signs new coins of the same value out, moving no money;
a refund of a deposit (``bank.refund``, through ``BankBook.refunders``) moves the
seller's money back there and answers an ``ecash.refund_voucher`` that the payer
redeems by an exchange. Each of these commits in one SQLite transaction with its
idempotency record and its evidence, as every bank half does (``_bank.py``).

Unlinkability: what a withdrawal stores (``ecash_withdrawals``: the holder, its
key, the blinded list's digest and the answer) and what a deposit stores
(``ecash_spent``: the coin key, the spend, the settlement) share no value and no
column: the coin key and its signature exist only after the wallet unblinds.

Keys: one RSA-2048 key per (currency, value), made in a worker thread when one is
first needed (``bank.ecash_keys``), signing for ``key_period_ms`` and taking
deposits for ``DEPOSIT_PERIOD_MS`` after that; a new one is made when the newest
has less than a quarter of its signing window left. Blind signatures are made
before the transaction (they move nothing, and RSA without padding is
deterministic: a repeat gets the same signatures), in the loop's thread for a few
coins and in a worker thread for many (``_THREAD_SIGNS``).
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from typing import Any, Final

import trio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from semper.agents.components import _archive, _ledger
from semper.agents.components._bank import BankBook, BankService, Outcome, typed
from semper.agents.runtime._component import Component, handles
from semper.agents.runtime._config import ConfigError
from semper.agents.runtime._faults import crash_point
from semper.services import Amount
from semper.services.archive import Direction
from semper.services.payment import (
    BadRequest,
    InsufficientFunds,
    RefundOrder,
    WrongCurrency,
    request_digest,
)
from semper.services.payment.ecash._blind import BlindSigner
from semper.services.payment.ecash._checks import (
    check_exchange,
    check_spends,
    check_withdrawal,
    decide_double_spend,
    refund_key_of,
)
from semper.services.payment.ecash._coins import BlindedCoin, Spend, blinded_order, key_id_of
from semper.services.payment.ecash._errors import BadWithdrawal, VoucherUsed
from semper.services.payment.ecash._ops import (
    ECASH_DEPOSIT,
    ECASH_EXCHANGE,
    ECASH_KEYS,
    ECASH_WITHDRAW,
)
from semper.services.payment.ecash._schema import (
    Denomination,
    EcashDeposited,
    RefundVoucher,
    Withdrawn,
)
from semper.services.payment.ecash._wire import (
    MAX_DENOMINATIONS,
    DepositAnswer,
    DepositRequest,
    ExchangeAnswer,
    ExchangeRequest,
    KeysAnswer,
    KeysRequest,
    WithdrawAnswer,
    WithdrawRequest,
)
from semper.services.statements import Statement, canonical_decode, canonical_encode

__all__ = ["DEFAULT_DENOMINATIONS", "DEFAULT_KEY_PERIOD_MS", "DEPOSIT_PERIOD_MS", "MIGRATIONS",
           "OUTSTANDING", "VOUCHER_PERIOD_MS", "EcashBank", "apply_deposit", "apply_exchange",
           "apply_withdrawal", "refund_to_voucher"]

#: The bank's own account holding the value of the coins and vouchers outstanding.
OUTSTANDING: Final = _ledger.system_account("ecash-outstanding")
_DAY_MS: Final = 86_400_000
#: ``_one_at_a_time``'s name for a holder's account (coin keys and digests are 32 bytes).
_HOLDER: Final = b"holder\x00"
#: The denominations a currency gets unless ``[components.ecash] denominations``
#: says (minor units: EUR 0.01 to 100.00, a 1-2-5 series).
DEFAULT_DENOMINATIONS: Final = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)
#: How long a denomination key signs coins (``[components.ecash] key_period_ms``).
DEFAULT_KEY_PERIOD_MS: Final = 30 * _DAY_MS
#: How long after it stops signing a key's coins are still taken
#: (``[components.ecash] deposit_period_ms``).
DEPOSIT_PERIOD_MS: Final = 365 * _DAY_MS
#: How long a refund voucher can be redeemed.
VOUCHER_PERIOD_MS: Final = 365 * _DAY_MS
#: The shortest and longest periods a configuration may set (tests use short ones).
MIN_KEY_PERIOD_MS: Final = 1_000
MAX_PERIOD_MS: Final = 10 * 365 * _DAY_MS

MIGRATIONS: Final = {
    "ecash": [
        # The denomination keys (private key PEM, PKCS8, unencrypted like the rest of
        # the bank's database) and the statement published for each.
        "CREATE TABLE ecash_keys ("
        " key_id BLOB PRIMARY KEY, currency TEXT NOT NULL, value INTEGER NOT NULL,"
        " private_key BLOB NOT NULL, public_key BLOB NOT NULL,"
        " withdraw_from_ms INTEGER NOT NULL, withdraw_until_ms INTEGER NOT NULL,"
        " deposit_until_ms INTEGER NOT NULL, statement BLOB NOT NULL) STRICT;"
        # Withdrawals: once per (holder, key); the answer as sent.
        "CREATE TABLE ecash_withdrawals ("
        " holder TEXT NOT NULL, idempotency_key TEXT NOT NULL, order_digest BLOB NOT NULL,"
        " answer BLOB NOT NULL, PRIMARY KEY (holder, idempotency_key)) STRICT;"
        # Every coin deposited or exchanged, with its first spend (the evidence
        # against a second) and what it settled (a deposit's settlement digest, an
        # exchange's blinded order).
        "CREATE TABLE ecash_spent ("
        " coin_key BLOB PRIMARY KEY, spend BLOB NOT NULL, settlement BLOB NOT NULL,"
        " currency TEXT NOT NULL, value INTEGER NOT NULL) STRICT;"
        "CREATE TABLE ecash_deposits ("
        " settlement BLOB PRIMARY KEY, payee TEXT NOT NULL, reference BLOB NOT NULL,"
        " deposited BLOB NOT NULL) STRICT;"
        # Exchanges by the blinded order of their new coins: the same request again
        # gets the same signatures.
        "CREATE TABLE ecash_exchanges ("
        " blinded_order BLOB PRIMARY KEY, request BLOB NOT NULL, currency TEXT NOT NULL,"
        " value INTEGER NOT NULL, answer BLOB NOT NULL) STRICT;"
        # Refund vouchers issued, by the voucher statement's digest; redeemed: the
        # blinded order of the exchange that took it.
        "CREATE TABLE ecash_vouchers ("
        " voucher BLOB PRIMARY KEY, original BLOB NOT NULL, currency TEXT NOT NULL,"
        " amount INTEGER NOT NULL, statement BLOB NOT NULL, redeemed BLOB) STRICT",
    ],
}


class EcashBank(Component):
    name = "ecash"
    modules = ("ecash",)
    requires = (BankService,)

    def __init__(self, context: Any) -> None:
        super().__init__(context)
        self.denominations: tuple[int, ...] = DEFAULT_DENOMINATIONS
        self.key_period_ms: int = DEFAULT_KEY_PERIOD_MS
        self.deposit_period_ms: int = DEPOSIT_PERIOD_MS
        self.currencies: tuple[str, ...] = ("EUR",)
        #: key id -> (denomination, its statement), every key ever made (few: 13 a
        #: month a currency), loaded on first use; only this component adds keys.
        self._keys: dict[bytes, tuple[Denomination, Statement]] | None = None
        self._signers: dict[bytes, BlindSigner] = {}
        self._making = trio.Lock()
        #: name -> [its lock, how many requests hold or wait for it] (``_one_at_a_time``).
        self._busy: dict[bytes, list[Any]] = {}
        book = context.component(BankService).book
        book.refunders[OUTSTANDING] = lambda c, order, body: refund_to_voucher(
            book, c, order, body)

    def configure(self, settings: Mapping[str, Any]) -> None:
        unknown = set(settings) - {"denominations", "key_period_ms", "deposit_period_ms",
                                   "currencies"}
        if unknown:
            raise ConfigError("[components.ecash] takes denominations, key_period_ms, "
                              f"deposit_period_ms and currencies, not "
                              f"{', '.join(sorted(unknown))}")
        values = settings.get("denominations", list(self.denominations))
        if (type(values) is not list or not 1 <= len(values) <= 32
                or not all(type(v) is int and 1 <= v <= 10**15 for v in values)
                or len(set(values)) != len(values)):
            raise ConfigError("[components.ecash] denominations is a list of 1 to 32 distinct "
                              "positive ints (minor units)")
        periods = {}
        for name in ("key_period_ms", "deposit_period_ms"):
            period = settings.get(name, getattr(self, name))
            if type(period) is not int or not MIN_KEY_PERIOD_MS <= period <= MAX_PERIOD_MS:
                raise ConfigError(f"[components.ecash] {name} is {MIN_KEY_PERIOD_MS} to "
                                  f"{MAX_PERIOD_MS} (milliseconds)")
            periods[name] = period
        currencies = settings.get("currencies", list(self.currencies))
        try:
            if type(currencies) is not list or not currencies:
                raise ValueError
            for currency in currencies:
                Amount(currency, 0)
        except Exception:
            raise ConfigError("[components.ecash] currencies is a list of ISO 4217 codes"
                              ) from None
        # Keys of a value live key_period + deposit_period, and a new one comes every
        # 3/4 key_period: all of them must fit one bank.ecash_keys answer.
        live = -(-4 * (periods["key_period_ms"] + periods["deposit_period_ms"])
                 // (3 * periods["key_period_ms"])) + 1
        if live * len(values) > MAX_DENOMINATIONS:
            raise ConfigError(f"[components.ecash] {len(values)} denominations with these "
                              f"periods keep up to {live * len(values)} keys taking deposits, "
                              f"more than one bank.ecash_keys answer holds "
                              f"({MAX_DENOMINATIONS}): fewer values or a longer key_period_ms")
        self.denominations = tuple(sorted(values))
        self.key_period_ms = periods["key_period_ms"]
        self.deposit_period_ms = periods["deposit_period_ms"]
        self.currencies = tuple(currencies)

    def migrations(self) -> Mapping[str, Sequence[str]]:
        return MIGRATIONS

    # -- keys ---------------------------------------------------------------------------

    async def _known(self) -> dict[bytes, tuple[Denomination, Statement]]:
        if self._keys is None:
            rows = await self.context.database.read(lambda c: c.execute(
                "SELECT statement FROM ecash_keys").fetchall())
            keys = {}
            for (blob,) in rows:
                statement = Statement.from_bytes(blob)
                body = Denomination.from_statement(statement)
                keys[body.key_id] = (body, statement)
            if self._keys is None:
                self._keys = keys
        return self._keys

    def _stale(self, keys: Mapping[bytes, tuple[Denomination, Statement]], currency: str,
               now_ms: int) -> list[int]:
        """The values of ``currency`` whose newest key has less than a quarter of its
        signing window left (or that have none)."""
        newest: dict[int, Denomination] = {}
        for body, _ in keys.values():
            if body.currency != currency:
                continue
            held = newest.get(body.value.minor_units)
            if held is None or body.withdraw_until_ms > held.withdraw_until_ms:
                newest[body.value.minor_units] = body
        stale = []
        for value in self.denominations:
            key = newest.get(value)
            if key is None or (key.withdraw_until_ms - now_ms) * 4 < (
                    key.withdraw_until_ms - key.withdraw_from_ms):
                stale.append(value)
        return stale

    async def keys_of(self, currency: str) -> dict[bytes, tuple[Denomination, Statement]]:
        """Every key (made now if the currency's are missing or old)."""
        if currency not in self.currencies:
            raise WrongCurrency(f"this bank issues no {currency} coins",
                                detail={"expected": self.currencies[0], "currency": currency})
        keys = await self._known()
        if not self._stale(keys, currency, self.context.now_ms()):
            return keys
        async with self._making:
            now = self.context.now_ms()
            values = self._stale(keys, currency, now)
            if values:
                made = await trio.to_thread.run_sync(_make_keys, len(values))
                book = self.context.component(BankService).book
                added = await self.context.database.transaction(lambda c: _store_keys(
                    book, c, currency, list(zip(values, made, strict=True)), now_ms=now,
                    period_ms=self.key_period_ms, deposit_ms=self.deposit_period_ms))
                keys.update(added)
        return keys

    @contextlib.asynccontextmanager
    async def _one_at_a_time(self, names: Iterable[bytes]) -> AsyncIterator[None]:
        """Hold ``names`` (coin keys, a voucher's digest, a blinded order, a holder)
        until the request commits. Requests that take the same coin or voucher, or
        draw on the same account, are then checked, signed and committed one after
        another, so the second sees the first's commit and is refused or replayed
        before any blind signature (all at once, each passed the checks and was
        signed, up to 1024 a channel x 64 RSA private operations, to be refused at
        commit). Locks are taken in sorted order (no deadlock) and forgotten when
        unused."""
        async with contextlib.AsyncExitStack() as stack:
            for name in sorted(set(names)):
                held = self._busy.setdefault(name, [trio.Lock(), 0])
                held[1] += 1
                stack.callback(self._release, name)
                await stack.enter_async_context(held[0])
            yield

    def _release(self, name: bytes) -> None:
        held = self._busy[name]
        held[1] -= 1
        if not held[1]:
            del self._busy[name]

    def _keys_by_id(self) -> dict[bytes, Denomination]:
        return {key_id: body for key_id, (body, _) in (self._keys or {}).items()}

    async def _sign(self, blinded: Sequence[BlindedCoin]) -> list[bytes]:
        """Blind signatures on ``blinded`` (checked: known keys, lengths, ranges)."""
        missing = {b.key_id for b in blinded} - set(self._signers)
        if missing:
            rows = await self.context.database.read(lambda c: [c.execute(
                "SELECT key_id, private_key FROM ecash_keys WHERE key_id = ?",
                (key_id,)).fetchone() for key_id in missing])
            # ~50 ms a key (OpenSSL checks the RSA key as it loads): off the loop.
            loaded = await trio.to_thread.run_sync(
                lambda: [(key_id, BlindSigner(_private_key(pem))) for key_id, pem in rows])
            self._signers.update(loaded)
        signers = [(self._signers[b.key_id], b.blinded) for b in blinded]
        if len(signers) > _THREAD_SIGNS:
            return await trio.to_thread.run_sync(_sign_all, signers)
        return _sign_all(signers)

    # -- ops ----------------------------------------------------------------------------

    @handles(ECASH_KEYS)
    async def keys(self, context: Any, request: KeysRequest) -> KeysAnswer:
        """The currency's keys that sign or take deposits now, newest first."""
        keys = await self.keys_of(request.currency)
        now = self.context.now_ms()
        live = sorted((body for body, _ in keys.values()
                       if body.currency == request.currency and body.deposits_at(now)),
                      key=lambda b: (-b.withdraw_from_ms, b.value.minor_units))
        return KeysAnswer(denominations=tuple(keys[b.key_id][1]
                                              for b in live[:MAX_DENOMINATIONS]),
                          bank_certificate=self.context.certificate)

    @handles(ECASH_WITHDRAW)
    async def withdraw(self, context: Any, request: WithdrawRequest) -> WithdrawAnswer:
        crash_point("ecash.withdraw.received")
        book = self.context.component(BankService).book
        holder = context.peer.agent_id
        async with self._one_at_a_time([_HOLDER + holder.encode()]):
            stored = await self.context.database.read(
                lambda c: _stored_withdrawal(book, c, holder, request))
            if stored is None:
                await self._known()
                check_withdrawal(request.amount, request.blinded, self._keys_by_id(),
                                 self.context.now_ms())
                await self.context.database.read(lambda c: _covers(c, holder, request.amount))
                crash_point("ecash.withdraw.checked")
                signatures = await self._sign(request.blinded)
                stored = await self.context.database.transaction(lambda c: apply_withdrawal(
                    book, c, request, holder=holder, signatures=signatures))
                crash_point("ecash.withdraw.committed")
        withdrawn, signatures = stored
        return WithdrawAnswer(withdrawn=withdrawn, blind_signatures=tuple(signatures),
                              bank_certificate=self.context.certificate)

    @handles(ECASH_DEPOSIT)
    async def deposit(self, context: Any, request: DepositRequest) -> DepositAnswer:
        crash_point("ecash.deposit.received")
        book = self.context.component(BankService).book
        payee = context.peer.agent_id
        # A deposit applied before gets its settlement even after its keys' window.
        outcome = await self.context.database.read(
            lambda c: _stored_deposit(book, c, request, payee=payee))
        if outcome is None:
            await self._known()
            keys = self._keys_by_id()
            now = self.context.now_ms()
            total = await _maybe_thread(len(request.spends), lambda: check_spends(
                request.spends, bank=self.context.id, payee=payee,
                reference=request.reference, purpose="payment", keys_by_id=keys, now_ms=now))
            if total != request.amount:
                raise BadRequest(f"the coins are worth {total}, not {request.amount}",
                                 detail={"field": "amount", "coins": total.to_wire()})
            crash_point("ecash.deposit.checked")
            values = {s.coin.coin_key: keys[s.coin.key_id].value for s in request.spends}
            outcome = await self.context.database.transaction(lambda c: apply_deposit(
                book, c, request, payee=payee, values=values))
            crash_point("ecash.deposit.committed")
        return DepositAnswer(deposited=outcome.statement,
                             bank_certificate=self.context.certificate)

    @handles(ECASH_EXCHANGE)
    async def exchange(self, context: Any, request: ExchangeRequest) -> ExchangeAnswer:
        crash_point("ecash.exchange.received")
        book = self.context.component(BankService).book
        order = blinded_order(request.blinded)
        digest = request_digest(request.to_wire())
        stored = await self.context.database.read(lambda c: _stored_exchange(c, order, digest))
        if stored is None:
            voucher = voucher_digest = None
            if request.voucher is not None:
                voucher_digest = request.voucher.digest
                if await self.context.database.read(lambda c: c.execute(
                        "SELECT 1 FROM ecash_vouchers WHERE voucher = ?",
                        (voucher_digest,)).fetchone()) is None:
                    raise BadRequest("no refund voucher of this bank has that digest",
                                     detail={"field": "voucher"})
                voucher = RefundVoucher.from_statement(request.voucher)
            await self._known()
            keys = self._keys_by_id()
            now = self.context.now_ms()
            value = await _maybe_thread(len(request.spends), lambda: check_exchange(
                request.spends, request.blinded, bank=self.context.id, keys_by_id=keys,
                now_ms=now, voucher=voucher, voucher_signature=request.voucher_signature,
                voucher_digest=voucher_digest))
            # Requests taking the same coins, voucher or new coins, one after another
            # (only once they proved they hold them: no one else can make a holder wait).
            names = [s.coin.coin_key for s in request.spends] + [order] + (
                [voucher_digest] if voucher_digest is not None else [])
            async with self._one_at_a_time(names):
                stored = await self.context.database.read(
                    lambda c: _stored_exchange(c, order, digest))  # the same, just committed
                if stored is None:
                    # A coin or the voucher taken before: refused before any blind
                    # signature (and only to whoever holds the coin's key: the evidence
                    # is the first spend).
                    await self.context.database.read(lambda c: _takes(c, request))
                    crash_point("ecash.exchange.checked")
                    signatures = await self._sign(request.blinded)
                    values = {s.coin.coin_key: keys[s.coin.key_id].value
                              for s in request.spends}
                    stored = await self.context.database.transaction(lambda c: apply_exchange(
                        book, c, request, order=order, digest=digest, value=value,
                        values=values, signatures=signatures))
                    crash_point("ecash.exchange.committed")
        return ExchangeAnswer(blind_signatures=tuple(stored),
                              bank_certificate=self.context.certificate)


# -- worker-thread work -----------------------------------------------------------------


def _make_keys(count: int) -> list[rsa.RSAPrivateKey]:
    return [rsa.generate_private_key(public_exponent=65537, key_size=2048)
            for _ in range(count)]


def _private_key(pem: bytes) -> rsa.RSAPrivateKey:
    key = serialization.load_pem_private_key(pem, password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    return key


def _sign_all(signers: Sequence[tuple[BlindSigner, bytes]]) -> list[bytes]:
    return [signer.sign(blinded) for signer, blinded in signers]


#: Above this many blind signatures they are made in a worker thread (OpenSSL's RSA
#: runs there without the GIL), at or below in the loop's: measured for a 4-coin
#: withdrawal (a 2-core machine under load), 4 signatures take a median 1.3 ms in the
#: loop and 3.2-4.7 ms through trio.to_thread (the hop and waking the loop cost more
#: than the signatures); 16 block the loop ~5 ms at most.
_THREAD_SIGNS: Final = 16
#: Above this many coins their checks (an RSA and an Ed25519 verification each) run
#: in a worker thread.
_THREAD_CHECKS: Final = 8


async def _maybe_thread(count: int, check: Any) -> Any:
    if count > _THREAD_CHECKS:
        return await trio.to_thread.run_sync(check)
    return check()


# -- the transactions -------------------------------------------------------------------


def _store_keys(book: BankBook, c: sqlite3.Connection, currency: str,
                made: Sequence[tuple[int, rsa.RSAPrivateKey]], *, now_ms: int,
                period_ms: int, deposit_ms: int) -> dict[bytes, tuple[Denomination, Statement]]:
    added = {}
    for value, private in made:
        public = private.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        pem = private.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        body = Denomination(bank=book.bank_id, currency=currency, value=Amount(currency, value),
                            key_id=key_id_of(public), public_key=public,
                            withdraw_from_ms=now_ms, withdraw_until_ms=now_ms + period_ms,
                            deposit_until_ms=now_ms + period_ms + deposit_ms)
        statement = book.sign(*typed(body))
        c.execute("INSERT INTO ecash_keys (key_id, currency, value, private_key, public_key,"
                  " withdraw_from_ms, withdraw_until_ms, deposit_until_ms, statement)"
                  " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                  (body.key_id, currency, value, pem, public, body.withdraw_from_ms,
                   body.withdraw_until_ms, body.deposit_until_ms, statement.to_bytes()))
        added[body.key_id] = (body, statement)
    return added


def _withdrawal_answer(blob: bytes) -> tuple[Statement, list[bytes]]:
    withdrawn, signatures = canonical_decode(blob)
    return Statement.from_bytes(withdrawn), list(signatures)


def _stored_withdrawal(book: BankBook, c: sqlite3.Connection, holder: str,
                       request: WithdrawRequest) -> tuple[Statement, list[bytes]] | None:
    """The answer to this request if it was applied (IdempotencyConflict: the key
    was used for another)."""
    if book.replay(c, holder, request.idempotency_key, "ecash_withdraw",
                   request.to_wire()) is None:
        return None
    row = c.execute("SELECT answer FROM ecash_withdrawals WHERE holder = ? AND"
                    " idempotency_key = ?", (holder, request.idempotency_key)).fetchone()
    return _withdrawal_answer(row[0])


def apply_withdrawal(book: BankBook, c: sqlite3.Connection, request: WithdrawRequest, *,
                     holder: str, signatures: Sequence[bytes]
                     ) -> tuple[Statement, list[bytes]]:
    """Debit ``holder`` the amount into ``@ecash-outstanding`` and keep the answer,
    once per (holder, idempotency key)."""
    stored = _stored_withdrawal(book, c, holder, request)
    if stored is not None:
        return stored
    order = blinded_order(request.blinded)
    _ledger.open_account(c, OUTSTANDING, request.amount.currency)
    entry = _ledger.move(c, holder, OUTSTANDING, request.amount, kind="ecash.withdrawn",
                         time_ms=book.now_ms(), reference=order)
    withdrawn = book.sign(*typed(Withdrawn(
        bank=book.bank_id, holder=holder, amount=request.amount, coins=len(request.blinded),
        order=order, idempotency_key=request.idempotency_key, entry=entry)))
    answer = canonical_encode([withdrawn.to_bytes(), list(signatures)])
    c.execute("INSERT INTO ecash_withdrawals (holder, idempotency_key, order_digest, answer)"
              " VALUES (?, ?, ?, ?)", (holder, request.idempotency_key, order, answer))
    book.store(c, holder, request.idempotency_key, "ecash_withdraw", request.to_wire(),
               withdrawn)
    _archive.append(c, [_archive.entry(withdrawn, direction=Direction.SENT, peer=holder,
                                       transaction=order.hex(), certificate=book.certificate)],
                    now_ms=book.now_ms())
    crash_point("ecash.withdraw.applied")  # all written, not committed
    return withdrawn, list(signatures)


def _spend_bytes(spend: Spend) -> bytes:
    return canonical_encode(spend.to_wire())


def _spent(c: sqlite3.Connection, spends: Sequence[Spend]) -> dict[bytes, tuple[bytes, bytes]]:
    """coin key -> (first spend, settlement) of the coins of ``spends`` spent before."""
    found = {}
    for spend in spends:
        row = c.execute("SELECT spend, settlement FROM ecash_spent WHERE coin_key = ?",
                        (spend.coin.coin_key,)).fetchone()
        if row is not None:
            found[spend.coin.coin_key] = (row[0], row[1])
    return found


def _record_spent(c: sqlite3.Connection, spends: Sequence[Spend], settlement: bytes,
                  values: Mapping[bytes, Amount]) -> None:
    c.executemany("INSERT INTO ecash_spent (coin_key, spend, settlement, currency, value)"
                  " VALUES (?, ?, ?, ?, ?)",
                  [(s.coin.coin_key, _spend_bytes(s), settlement,
                    values[s.coin.coin_key].currency, values[s.coin.coin_key].minor_units)
                   for s in spends])


def _stored_deposit(book: BankBook, c: sqlite3.Connection, request: DepositRequest, *,
                    payee: str) -> Outcome | None:
    """The settlement answered to this deposit before: under the same key
    (IdempotencyConflict: the key was used for another), or for the very same
    spends (their payee and reference are in what the coin keys signed)."""
    replay = book.replay(c, payee, request.idempotency_key, "ecash_deposit", request.to_wire())
    if replay is not None:
        return replay
    spent = _spent(c, request.spends)
    settlements = {settlement for _, settlement in spent.values()}
    if len(spent) != len(request.spends) or len(settlements) != 1 or not all(
            spent[s.coin.coin_key][0] == _spend_bytes(s) for s in request.spends):
        return None
    row = c.execute("SELECT deposited FROM ecash_deposits WHERE settlement = ? AND payee = ?"
                    " AND reference = ?", (settlements.pop(), payee, request.reference)
                    ).fetchone()
    return None if row is None else Outcome(Statement.from_bytes(row[0]), False)


def apply_deposit(book: BankBook, c: sqlite3.Connection, request: DepositRequest, *,
                  payee: str, values: Mapping[bytes, Amount]) -> Outcome:
    """Credit ``payee`` the checked coins from ``@ecash-outstanding``, once per coin:
    the same deposit again (same key, or the same spends) gets the first answer."""
    stored = _stored_deposit(book, c, request, payee=payee)
    if stored is not None:
        return stored
    spent = _spent(c, request.spends)
    decide_double_spend(request.spends, {
        key: canonical_decode(first) for key, (first, _) in spent.items()})
    coins = tuple(s.coin.coin_key for s in request.spends)
    payment = "ecash:" + request_digest(sorted(coins)).hex()
    book.one_payment(c, OUTSTANDING, payee, request.reference, payment)
    _ledger.account(c, payee, request.amount.currency)  # UnknownAccount before moving
    entry = _ledger.move(c, OUTSTANDING, payee, request.amount, kind="ecash.deposited",
                         time_ms=book.now_ms(), reference=request.reference)
    deposited = book.sign(*typed(EcashDeposited(
        bank=book.bank_id, payee=payee, amount=request.amount, reference=request.reference,
        coins=coins, entry=entry)))
    _record_spent(c, request.spends, deposited.digest, values)
    c.execute("INSERT INTO ecash_deposits (settlement, payee, reference, deposited)"
              " VALUES (?, ?, ?, ?)",
              (deposited.digest, payee, request.reference, deposited.to_bytes()))
    book.store(c, payee, request.idempotency_key, "ecash_deposit", request.to_wire(), deposited)
    book.settled(c, deposited, payer=OUTSTANDING, payee=payee, amount=request.amount,
                 entry=entry, reference=request.reference, request=payment)
    _archive.append(c, [_archive.entry(deposited, direction=Direction.SENT, peer=payee,
                                       transaction=deposited.digest.hex(),
                                       certificate=book.certificate)],
                    now_ms=book.now_ms())
    crash_point("ecash.deposit.applied")  # all written, not committed
    return Outcome(deposited, True)


def _covers(c: sqlite3.Connection, holder: str, amount: Amount) -> None:
    """Refuse, before any coin is signed, a withdrawal the holder's account cannot
    pay (the transaction's move decides again).

    Raises: UnknownAccount, InsufficientFunds (as ``ledger.move`` words them)."""
    if _ledger.balance(c, holder, amount.currency) < amount:
        raise InsufficientFunds(f"{holder}'s account does not cover {amount}",
                                detail={"amount": amount.to_wire()})


def _takes(c: sqlite3.Connection, request: ExchangeRequest) -> None:
    """Refuse an exchange that brings a coin spent before or a voucher redeemed
    before (or not issued here).

    Raises: DoubleSpent, VoucherUsed, BadRequest (field ``voucher``)."""
    if request.spends:
        spent = _spent(c, request.spends)
        decide_double_spend(request.spends, {
            key: canonical_decode(first) for key, (first, _) in spent.items()})
    if request.voucher is not None:
        digest = request.voucher.digest
        row = c.execute("SELECT redeemed FROM ecash_vouchers WHERE voucher = ?",
                        (digest,)).fetchone()
        if row is None:
            raise BadRequest("no refund voucher of this bank has that digest",
                             detail={"field": "voucher"})
        if row[0] is not None:
            raise VoucherUsed("the refund voucher was redeemed before",
                              detail={"voucher": digest.hex()})


def _stored_exchange(c: sqlite3.Connection, order: bytes, digest: bytes) -> list[bytes] | None:
    """The signatures answered to this very exchange before, if any.

    Raises:
        BadWithdrawal: these new coins were signed before for another request (field
            ``blinded``): a coin is signed once."""
    row = c.execute("SELECT request, answer FROM ecash_exchanges WHERE blinded_order = ?",
                    (order,)).fetchone()
    if row is None:
        return None
    if row[0] != digest:
        raise BadWithdrawal("these blinded coins were signed before, for another exchange",
                            detail={"field": "blinded"})
    return list(canonical_decode(row[1]))


def apply_exchange(book: BankBook, c: sqlite3.Connection, request: ExchangeRequest, *,
                   order: bytes, digest: bytes, value: Amount, values: Mapping[bytes, Amount],
                   signatures: Sequence[bytes]) -> list[bytes]:
    """Take the checked coins (and voucher) in, once each, and keep the answer. No
    account moves: value in and out are equal and both are ``@ecash-outstanding``'s."""
    stored = _stored_exchange(c, order, digest)
    if stored is not None:
        return stored
    _takes(c, request)
    if request.spends:
        _record_spent(c, request.spends, order, values)
    if request.voucher is not None:
        c.execute("UPDATE ecash_vouchers SET redeemed = ? WHERE voucher = ?",
                  (order, request.voucher.digest))
    c.execute("INSERT INTO ecash_exchanges (blinded_order, request, currency, value, answer)"
              " VALUES (?, ?, ?, ?, ?)", (order, digest, value.currency, value.minor_units,
                                          canonical_encode(list(signatures))))
    crash_point("ecash.exchange.applied")  # all written, not committed
    return list(signatures)


def refund_to_voucher(book: BankBook, c: sqlite3.Connection, refund_order: Statement,
                      body: RefundOrder) -> Statement:
    """A refund of an ecash deposit (``BankBook.refunders``): the seller's money back
    to ``@ecash-outstanding``, and a voucher that the deposit's first coin's key (its
    payer, whoever that is) redeems for new coins."""
    row = c.execute("SELECT deposited FROM ecash_deposits WHERE settlement = ?",
                    (body.original,)).fetchone()
    assert row is not None  # bank_payments names it, written in the same transaction
    deposited = EcashDeposited.from_statement(Statement.from_bytes(row[0]))
    _ledger.move(c, body.payer, OUTSTANDING, body.amount, kind="ecash.refunded",
                 time_ms=book.now_ms(), reference=refund_order.digest)
    voucher = book.sign(*typed(RefundVoucher(
        bank=book.bank_id, original=body.original, amount=body.amount,
        refund_key=refund_key_of(deposited), expires_ms=book.now_ms() + VOUCHER_PERIOD_MS)))
    c.execute("INSERT INTO ecash_vouchers (voucher, original, currency, amount, statement)"
              " VALUES (?, ?, ?, ?, ?)", (voucher.digest, body.original, body.amount.currency,
                                          body.amount.minor_units, voucher.to_bytes()))
    return voucher

