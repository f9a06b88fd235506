"""The buyer's ecash wallet (``Wallet``, a component on every buyer): its coins, and
their withdrawal, spending, exchange and refund, each safe against a crash at any
point. docs/protocol.md 8.7 says what goes over the wire.

Theory of operation. Every step that asks the bank for blind signatures (a
withdrawal, an exchange of coins for others, a refund voucher's redemption) is a
*batch*: the wallet draws the new coins (an Ed25519 coin key, a random prefix, the
blinded message and its blinding inverse) and stores them, with the exact request it
will send and the coins it gives up, in one transaction BEFORE it asks the bank. The
bank answers a repeat under the same idempotency key with the same blind
signatures, so after a crash anywhere the same request is sent again and the coins
come out exactly once. Every use of the wallet first finishes the batches still
pending (``finish_pending``).

A coin is ``withdrawing`` (its batch pending), ``fresh`` (ours to spend),
``spending`` (bound to one payment or exchange, its signed spend stored with it, so
that the same key gives the same spends and the wallet never spends a coin under two
contracts), ``shown`` (a payee saw it and did not deposit it: exchanged before any
use), or ``spent``. Coins shown to a seller who refused them before depositing
are never offered again as they are: ``refused`` exchanges them for new ones, and
``reclaim`` those of a payment that never settled.

Crash points (agents/runtime/_faults.py): ``wallet.withdraw.stored``,
``wallet.exchange.stored``, ``wallet.refund.stored`` (the batch committed, the bank
not asked), ``wallet.<kind>.answered`` (the bank's answer received, nothing of it
stored), ``wallet.spend.bound`` (the spends bound to the payment, not returned).
"""

from __future__ import annotations

import contextlib
import secrets
import sqlite3
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import trio
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from semper.agents.components._payments import AgentPaymentContext
from semper.agents.runtime._component import Component
from semper.agents.runtime._config import ConfigError
from semper.agents.runtime._faults import crash_point
from semper.services import Amount, ServiceError
from semper.services.certificates import CertificateError, certificate_der
from semper.services.commerce import PurchaseState
from semper.services.payment import (
    BANK_SERVICE,
    BadConfirmation,
    BadRequest,
    IdempotencyConflict,
    PaymentRequest,
    PaymentResult,
    RefundResult,
    check_idempotency_key,
)
from semper.services.payment.ecash import (
    BANK_ECASH_EXCHANGE,
    BANK_ECASH_KEYS,
    BANK_ECASH_WITHDRAW,
    DENOMINATION,
    MAX_COINS,
    PREFIX_LEN,
    REFUND_VOUCHER,
    WITHDRAWN,
    BadBlindSignature,
    BadWithdrawal,
    BlindedCoin,
    Coin,
    Denomination,
    ExchangeAnswer,
    ExchangeRequest,
    InsufficientCoins,
    KeysAnswer,
    KeysRequest,
    RefundVoucher,
    WithdrawAnswer,
    Withdrawn,
    WithdrawRequest,
    blind,
    blinded_order,
    coin_message,
    denominations_for,
    finalize,
    load_denomination_key,
    pick_coins,
    prepare,
    sign_spend,
    spend_message,
)
from semper.services.statements import (
    Statement,
    StatementError,
    canonical_decode,
    canonical_encode,
)
from semper.transport import RemoteError, TransportError

if TYPE_CHECKING:
    from semper.agents.runtime._component import Context

__all__ = ["MIGRATIONS", "Wallet", "read_coins"]

#: The bank's refusals that say it applied nothing (an internal.error or a transport
#: code may follow a commit: the batch is kept and asked again).
_REFUSALS: Final = ("payment.", "ecash.", "money.", "bank.", "ledger.")
#: Binding coins to a payment may lose a race with another process; it retries this often.
_BIND_TRIES: Final = 3
#: ``[components.wallet]`` defaults (ms): a payment's coins bound this long and not
#: settled are reclaimed; coins whose key's deposit window ends within the margin are
#: refreshed; the running wallet does both this often.
RECLAIM_AFTER_MS: Final = 3_600_000
REFRESH_MARGIN_MS: Final = 30 * 86_400_000
HOUSEKEEPING_MS: Final = 600_000
_MAX_SETTING_MS: Final = 10 * 365 * 86_400_000

MIGRATIONS: Final = {
    "ecash_wallet": [
        "CREATE TABLE ecash_denominations ("
        " key_id BLOB PRIMARY KEY, bank TEXT NOT NULL, currency TEXT NOT NULL,"
        " value INTEGER NOT NULL, public_key BLOB NOT NULL,"
        " withdraw_from_ms INTEGER NOT NULL, withdraw_until_ms INTEGER NOT NULL,"
        " deposit_until_ms INTEGER NOT NULL, statement BLOB NOT NULL,"
        " bank_certificate BLOB NOT NULL) STRICT",
        "CREATE TABLE ecash_batches ("
        " batch TEXT PRIMARY KEY, kind TEXT NOT NULL, bank TEXT NOT NULL,"
        " currency TEXT NOT NULL, amount INTEGER NOT NULL, request BLOB NOT NULL,"
        " state TEXT NOT NULL, created_ms INTEGER NOT NULL, updated_ms INTEGER NOT NULL"
        ") STRICT",
        "CREATE TABLE ecash_coins ("
        " coin_key BLOB PRIMARY KEY, secret BLOB NOT NULL, key_id BLOB NOT NULL,"
        " currency TEXT NOT NULL, value INTEGER NOT NULL, prefix BLOB NOT NULL,"
        " blinded BLOB NOT NULL, inv BLOB NOT NULL, position INTEGER NOT NULL,"
        " signature BLOB, state TEXT NOT NULL, batch TEXT NOT NULL, spend TEXT,"
        " spend_wire BLOB, created_ms INTEGER NOT NULL, updated_ms INTEGER NOT NULL"
        ") STRICT",
        "CREATE INDEX ecash_coins_state ON ecash_coins (state, currency, value)",
        "CREATE INDEX ecash_coins_spend ON ecash_coins (spend)",
        "CREATE INDEX ecash_coins_batch ON ecash_coins (batch, position)",
        # A payment's coins given back by an exchange (``reclaim``): the spends it had
        # bound (restored if the seller deposited them) and the bank's evidence.
        "CREATE TABLE ecash_reclaims ("
        " payment TEXT PRIMARY KEY, batch TEXT NOT NULL, state TEXT NOT NULL,"
        " spends BLOB NOT NULL, evidence BLOB, created_ms INTEGER NOT NULL,"
        " updated_ms INTEGER NOT NULL) STRICT",
        "CREATE INDEX ecash_reclaims_batch ON ecash_reclaims (batch)",
    ],
}


@dataclass(frozen=True, slots=True)
class _Denomination:
    """A denomination key the bank published, its statement checked."""

    key_id: bytes
    currency: str
    value: int
    public_key: rsa.RSAPublicKey
    withdraw_from_ms: int
    withdraw_until_ms: int
    deposit_until_ms: int


@dataclass(frozen=True, slots=True)
class _NewCoin:
    """A coin drawn and blinded, not yet signed."""

    coin_key: bytes
    secret: bytes
    key_id: bytes
    value: int
    prefix: bytes
    blinded: bytes
    inv: bytes


def _blinded(coins: Sequence[_NewCoin]) -> tuple[BlindedCoin, ...]:
    return tuple(BlindedCoin(key_id=n.key_id, blinded=n.blinded) for n in coins)


def _coin(row: Sequence[Any]) -> Coin:
    key_id, coin_key, prefix, signature = row
    return Coin(key_id=key_id, coin_key=coin_key, prefix=prefix, signature=signature)


def _split(units: int, values: Iterable[int]) -> list[int]:
    """``units`` as the bank's coin values (E2's greedy split).

    Raises:
        BadWithdrawal: no split, or one of more than MAX_COINS coins.
    """
    try:
        out = denominations_for(units, list(values))
    except ValueError as exc:
        raise BadWithdrawal(f"{units} minor units is no sum of the bank's denominations: "
                            f"{exc}", detail={"field": "amount"}) from None
    if len(out) > MAX_COINS:
        raise BadWithdrawal(f"{units} minor units needs {len(out)} coins, more than the "
                            f"{MAX_COINS} one request may ask", detail={"field": "amount"})
    return out


def _secret(raw: bytes) -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.from_private_bytes(raw)


def _pick(held: Sequence[tuple[bytes, int]], units: int) -> list[bytes] | None:
    """Keys of coins in ``held`` (key, value) worth exactly ``units``, or None."""
    positions = pick_coins([value for _, value in held], units)
    return None if positions is None else [held[i][0] for i in positions]


def read_coins(c: Any) -> dict[str, dict[str, int]]:
    """The fresh coins by currency and denomination: ``{"EUR": {"500": 2}}`` (for
    ``semper wallet``, on the database alone)."""
    out: dict[str, dict[str, int]] = {}
    for currency, value, count in c.execute(
            "SELECT currency, value, count(*) FROM ecash_coins WHERE state = 'fresh'"
            " GROUP BY currency, value ORDER BY currency, value"):
        out.setdefault(currency, {})[str(value)] = count
    return out


class Wallet(Component):
    """The buyer's coins (tables ``ecash_coins``, ``ecash_batches``,
    ``ecash_denominations``); the ecash module reaches it as ``ctx.holder("ecash")``."""

    name = "wallet"
    holds = ("ecash",)

    def __init__(self, context: Context) -> None:
        super().__init__(context)
        self._lock = trio.Lock()
        self.reclaim_after_ms: int = RECLAIM_AFTER_MS
        self.refresh_margin_ms: int = REFRESH_MARGIN_MS
        self.housekeeping_ms: int = HOUSEKEEPING_MS

    def configure(self, settings: Mapping[str, Any]) -> None:
        """``[components.wallet]``: reclaim_after_ms, refresh_margin_ms and
        housekeeping_ms (ms; see ``reclaim``)."""
        names = ("reclaim_after_ms", "refresh_margin_ms", "housekeeping_ms")
        unknown = set(settings) - set(names)
        if unknown:
            raise ConfigError(f"[components.wallet] takes {', '.join(names)}, not "
                              f"{', '.join(sorted(unknown))}")
        values = {name: settings.get(name, getattr(self, name)) for name in names}
        for name, value in values.items():  # all checked before any is taken
            if type(value) is not int or not 0 <= value <= _MAX_SETTING_MS:
                raise ConfigError(f"[components.wallet] {name} is 0 to {_MAX_SETTING_MS} "
                                  "(milliseconds)")
        for name, value in values.items():
            setattr(self, name, value)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Housekeeping while the agent runs: ``reclaim`` every ``housekeeping_ms``
        (0: never), first after one period (a short-lived command does its own work)."""
        task_status.started()
        if not self.housekeeping_ms:
            return
        while True:
            await trio.sleep(self.housekeeping_ms / 1000)
            try:
                await self.reclaim()
            except (ServiceError, TransportError, StatementError, CertificateError) as exc:
                self.context.log.warning("wallet: housekeeping: %s", exc)

    def migrations(self) -> Mapping[str, Sequence[str]]:
        return MIGRATIONS

    @property
    def bank_id(self) -> str:
        return self.context.config.payment.bank or "bank"

    def _payments(self, transaction: str) -> AgentPaymentContext:
        return AgentPaymentContext(self.context.agent, transaction, self.bank_id)

    # -- reading ------------------------------------------------------------------------

    async def coins(self) -> dict[str, dict[str, int]]:
        """Fresh coins: ``{currency: {"<value in minor units>": count}}``."""
        return await self.context.database.read(read_coins)

    async def balance(self, currency: str) -> int:
        return sum(int(v) * n for v, n in (await self.coins()).get(currency, {}).items())

    async def can_pay(self, amount: Amount) -> str | None:
        """Why these coins cannot pay ``amount`` now (too few of its currency: an
        exchange makes any change), or None: for choosing an instrument."""
        held = await self.balance(amount.currency)
        if held >= amount.minor_units:
            return None
        return (f"the wallet holds {Amount(amount.currency, held)} in coins "
                "(semper wallet withdraw)")

    # -- the bank's keys ----------------------------------------------------------------

    async def _keys(self, currency: str) -> dict[int, _Denomination]:
        """The bank's denominations of ``currency`` withdrawable now (the newest key
        per value), each statement checked and kept (``bank.ecash_keys``)."""
        ctx = self._payments(f"ecash-keys:{currency}")
        answer = await ctx.request(self.bank_id, BANK_SERVICE, BANK_ECASH_KEYS,
                                   KeysRequest(currency=currency).to_wire())
        now = self.context.now_ms()
        try:
            keys = KeysAnswer.from_wire(answer)
        except BadRequest as exc:
            raise BadConfirmation(f"the bank's ecash keys do not parse: {exc.message}",
                                  detail=exc.detail) from None
        rows, found = [], {}
        for statement in keys.denominations:
            self.context.verify(statement, keys.bank_certificate, expected_type=DENOMINATION,
                                expected_signer=self.bank_id)
            try:
                body = Denomination.from_statement(statement)
            except BadRequest as exc:
                raise BadConfirmation(f"a denomination that does not parse: {exc.message}",
                                      detail=exc.detail) from None
            if body.bank != self.bank_id or body.currency != currency:
                raise BadConfirmation("a denomination of another bank or currency",
                                      detail={"field": "currency"})
            rows.append((body.key_id, self.bank_id, currency, body.value.minor_units,
                         body.public_key, body.withdraw_from_ms, body.withdraw_until_ms,
                         body.deposit_until_ms, statement.to_bytes(),
                         certificate_der(keys.bank_certificate)))
            value = body.value.minor_units
            if body.withdraws_at(now) and (
                    value not in found or found[value].withdraw_from_ms < body.withdraw_from_ms):
                found[value] = _Denomination(body.key_id, currency, value, body.rsa_key(),
                                             body.withdraw_from_ms, body.withdraw_until_ms,
                                             body.deposit_until_ms)
        await self.context.database.transaction(lambda c: c.executemany(
            "INSERT OR IGNORE INTO ecash_denominations VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows))
        return found

    async def _public_keys(self, key_ids: Iterable[bytes]) -> dict[bytes, rsa.RSAPublicKey]:
        """The kept denomination keys of ``key_ids`` (to unblind a batch's coins)."""
        wanted = set(key_ids)

        def read(c: Any) -> list[tuple[bytes, bytes]]:
            return [c.execute("SELECT key_id, public_key FROM ecash_denominations"
                              " WHERE key_id = ?", (key_id,)).fetchone() for key_id in wanted]

        return {key_id: load_denomination_key(der)
                for key_id, der in await self.context.database.read(read)}

    async def _draw(self, currency: str, units: Sequence[int]) -> list[_NewCoin]:
        """New coins worth each of ``units`` (split into the bank's denominations),
        blinded for the bank's current keys (in a worker thread: RSA blinding).

        Raises:
            BadWithdrawal: an amount no split reaches, or more than MAX_COINS coins.
        """
        keys = await self._keys(currency)
        values = [v for u in units for v in _split(u, keys)]
        if len(values) > MAX_COINS:
            raise BadWithdrawal(f"more than {MAX_COINS} coins in one request",
                                detail={"field": "amount"})

        def draw() -> list[_NewCoin]:
            out = []
            for value in values:
                d = keys[value]
                secret = ed25519.Ed25519PrivateKey.generate()
                coin_key = secret.public_key().public_bytes_raw()
                prepared = prepare(coin_message(d.key_id, coin_key))
                blinded, inv = blind(d.public_key, prepared)
                out.append(_NewCoin(coin_key, secret.private_bytes_raw(), d.key_id, value,
                                    prepared[:PREFIX_LEN], blinded, inv))
            return out

        return await trio.to_thread.run_sync(draw)

    # -- batches ------------------------------------------------------------------------

    def _store_batch(self, c: Any, batch: str, kind: str, currency: str, amount: int,
                     request: dict[str, Any], coins: Sequence[_NewCoin]) -> bool:
        """Store a batch and its new coins, unless a batch of that key is stored (by
        another process meanwhile): then nothing, and False."""
        now = self.context.now_ms()
        if not c.execute("INSERT OR IGNORE INTO ecash_batches VALUES"
                         " (?, ?, ?, ?, ?, ?, 'pending', ?, ?)",
                         (batch, kind, self.bank_id, currency, amount,
                          canonical_encode(request), now, now)).rowcount:
            return False
        c.executemany(
            "INSERT INTO ecash_coins (coin_key, secret, key_id, currency, value, prefix,"
            " blinded, inv, position, state, batch, created_ms, updated_ms)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'withdrawing', ?, ?, ?)",
            [(n.coin_key, n.secret, n.key_id, currency, n.value, n.prefix, n.blinded, n.inv,
              i, batch, now, now) for i, n in enumerate(coins)])
        return True

    async def _batch(self, batch: str) -> tuple[str, str, int, dict[str, Any], str] | None:
        row = await self.context.database.read(lambda c: c.execute(
            "SELECT kind, currency, amount, request, state FROM ecash_batches WHERE batch = ?",
            (batch,)).fetchone())
        if row is None:
            return None
        kind, currency, amount, request, state = row
        return kind, currency, amount, canonical_decode(request), state

    async def _finish(self, batch: str) -> None:
        """Send batch ``batch``'s stored request (again) and turn its answer into coins.

        Raises: the bank's refusal (the batch is dropped and the coins it gave up are
        fresh again, but for one the bank says was spent), a transport error (kept
        for a retry), BadBlindSignature or BadConfirmation (kept: the bank answers a
        repeat with the same signatures, and may answer right next time)."""
        found = await self._batch(batch)
        if found is None or found[4] != "pending":
            return
        kind, _, _, request, _ = found
        op = BANK_ECASH_WITHDRAW if kind == "withdraw" else BANK_ECASH_EXCHANGE
        ctx = self._payments(f"ecash:{batch}")
        try:
            answer = await ctx.request(self.bank_id, BANK_SERVICE, op, request)
        except RemoteError as exc:
            if exc.code.startswith(_REFUSALS):  # else it may have applied it: kept
                await self._drop(batch, exc)
            raise
        crash_point(f"wallet.{kind}.answered")
        rows = await self.context.database.read(lambda c: c.execute(
            "SELECT coin_key, key_id, prefix, inv FROM ecash_coins WHERE batch = ?"
            " AND state = 'withdrawing' ORDER BY position", (batch,)).fetchall())
        try:
            parsed = (WithdrawAnswer if kind == "withdraw" else ExchangeAnswer).from_wire(answer)
        except BadRequest as exc:
            raise BadConfirmation(f"the bank's answer to {op} does not parse: {exc.message}",
                                  detail=exc.detail) from None
        signatures, certificate = parsed.blind_signatures, parsed.bank_certificate
        withdrawn = parsed.withdrawn if isinstance(parsed, WithdrawAnswer) else None
        if len(signatures) != len(rows):
            raise BadConfirmation(f"{len(signatures)} blind signatures for {len(rows)} coins",
                                  detail={"field": "blind_signatures"})
        if withdrawn is not None:
            self._check_withdrawn(withdrawn, certificate, request)
            await ctx.record(withdrawn, certificate)
        keys = await self._public_keys(row[1] for row in rows)

        def unblind() -> list[tuple[bytes, bytes]]:
            out = []
            for (coin_key, key_id, prefix, inv), blind_sig in zip(rows, signatures,
                                                                  strict=True):
                prepared = prefix + coin_message(key_id, coin_key)
                out.append((finalize(keys[key_id], prepared, blind_sig, inv), coin_key))
            return out

        try:
            signed = await trio.to_thread.run_sync(unblind)
        except (TypeError, ValueError) as exc:
            raise BadBlindSignature(f"a blind signature does not finalize: {exc!r:.200}"
                                    ) from None
        now = self.context.now_ms()

        def done(c: Any) -> None:
            # The blinded messages and their inverses (and the request listing them)
            # are forgotten once the coins are signed: kept, they join each coin to
            # the withdrawal the bank signed, for whoever reads this database.
            c.executemany("UPDATE ecash_coins SET signature = ?, state = 'fresh',"
                          " blinded = x'', inv = x'', updated_ms = ?"
                          " WHERE coin_key = ? AND state = 'withdrawing'",
                          [(s, now, k) for s, k in signed])
            c.execute("UPDATE ecash_coins SET state = 'spent', updated_ms = ?"
                      " WHERE spend = ? AND state = 'spending'", (now, batch))
            c.execute("UPDATE ecash_batches SET state = 'done', request = ?, updated_ms = ?"
                      " WHERE batch = ?", (canonical_encode(None), now, batch))
            c.execute("UPDATE ecash_reclaims SET state = 'refreshed', updated_ms = ?"
                      " WHERE batch = ? AND state = 'pending'", (now, batch))

        await self.context.database.transaction(done)

    def _check_withdrawn(self, withdrawn: Statement, certificate: Any,
                         request: dict[str, Any]) -> None:
        """Our bank's word that it debited us for exactly this request."""
        self.context.verify(withdrawn, certificate, expected_type=WITHDRAWN,
                            expected_signer=self.bank_id)
        asked = WithdrawRequest.from_wire(request)
        try:
            body = Withdrawn.from_statement(withdrawn)
        except BadRequest as exc:
            raise BadConfirmation(f"an ecash.withdrawn that does not parse: {exc.message}",
                                  detail=exc.detail) from None
        want = {"bank": self.bank_id, "holder": self.context.id, "amount": asked.amount,
                "coins": len(asked.blinded), "idempotency_key": asked.idempotency_key,
                "order": blinded_order(asked.blinded)}
        for field, value in want.items():
            if getattr(body, field) != value:
                raise BadConfirmation(f"the bank's ecash.withdrawn names another {field}",
                                      detail={"field": field})

    async def _drop(self, batch: str, refusal: RemoteError) -> None:
        """The bank refused batch ``batch``: it signed nothing and took nothing, so its
        new coins and the batch are forgotten (its key may be used again); the coins it
        gave up are fresh again, except those the bank says were spent before (all
        of them: a seller shown coins may have deposited any)."""
        spent: set[str] = set()
        back = "shown" if batch.startswith("shown-") else "fresh"  # _refresh_shown's
        if refusal.code == "ecash.double_spent":
            named = refusal.detail.get("spent")
            named = named if isinstance(named, list) else [refusal.detail.get("coin_key")]
            spent = {k.upper() for k in named if isinstance(k, str)}
        now = self.context.now_ms()

        def drop(c: Any) -> None:
            c.execute("DELETE FROM ecash_coins WHERE batch = ? AND state = 'withdrawing'",
                      (batch,))
            if self._drop_reclaim(c, batch, refusal, spent, now):
                c.execute("DELETE FROM ecash_batches WHERE batch = ?", (batch,))
                return
            for coin_key, in c.execute("SELECT coin_key FROM ecash_coins WHERE spend = ?"
                                       " AND state = 'spending'", (batch,)).fetchall():
                c.execute("UPDATE ecash_coins SET state = ?, spend = NULL, spend_wire = NULL,"
                          " updated_ms = ? WHERE coin_key = ?",
                          ("spent" if coin_key.hex().upper() in spent else back, now,
                           coin_key))
            c.execute("DELETE FROM ecash_batches WHERE batch = ?", (batch,))

        await self.context.database.transaction(drop)

    async def finish_pending(self) -> list[str]:
        """Finish every batch still pending (a crash or a lost answer left it); one
        that cannot be finished now stays pending. The reasons, one line each."""
        batches = await self.context.database.read(lambda c: [row[0] for row in c.execute(
            "SELECT batch FROM ecash_batches WHERE state = 'pending' ORDER BY created_ms")])
        failed = []
        for batch in batches:
            try:
                await self._finish(batch)
            except (ServiceError, TransportError, StatementError, CertificateError) as exc:
                failed.append(f"{batch}: {exc.code}")
                self.context.log.warning("wallet: batch %s not finished: %s", batch, exc)
        return failed + await self._refresh_shown()

    async def _refresh_shown(self) -> list[str]:
        """Exchange the coins a payee saw and did not deposit (state ``shown``, left
        by ``_drop_reclaim``) for new ones: never offered again as they are, lest
        two payments be linked. A coin the bank says was spent again is counted spent
        (``_drop``); the rest again, at most _BIND_TRIES times. The reasons it could
        not, one line each (the coins stay shown for the next use)."""
        failed: list[str] = []
        for _ in range(_BIND_TRIES):
            rows = await self.context.database.read(lambda c: c.execute(
                "SELECT coin_key, value, currency FROM ecash_coins WHERE state = 'shown'"
                " ORDER BY currency LIMIT ?", (MAX_COINS,)).fetchall())
            if not rows:
                return failed
            currency = rows[0][2]
            given = [(k, v) for k, v, cur in rows if cur == currency]
            try:
                await self._exchange(given, currency, [sum(v for _, v in given)], shown=True)
            except _Taken:  # another process exchanged them meanwhile
                continue
            except (ServiceError, TransportError, StatementError, CertificateError) as exc:
                if getattr(exc, "code", None) == "ecash.double_spent":
                    continue  # _drop counted the spent ones; the rest again
                failed.append(f"shown coins: {exc.code}")
                return failed
        return failed

    # -- withdrawing --------------------------------------------------------------------

    async def withdraw(self, amount: Amount, key: str) -> dict[str, dict[str, int]]:
        """Withdraw coins worth exactly ``amount`` from our account at our bank (no
        fee); the same ``key`` again withdraws nothing more (it finishes a withdrawal
        a crash or a lost answer interrupted). Returns the fresh coins held.

        Raises:
            BadRequest: a bad key or an amount not above zero (nothing stored).
            IdempotencyConflict: ``key`` withdrew another amount.
            BadWithdrawal: the amount is not 64 coins or fewer of the bank's series.
            The bank's refusal (``payment.insufficient_funds``...): nothing withdrawn.
            A transport error, BadBlindSignature: the withdrawal is kept; call again.
        """
        check_idempotency_key(key)
        if not isinstance(amount, Amount) or amount.minor_units <= 0:
            raise BadRequest(f"a withdrawal is of more than nothing, got {amount}",
                             detail={"field": "amount"})
        async with self._lock:
            found = await self._batch(key)
            if found is None:
                coins = await self._draw(amount.currency, [amount.minor_units])
                request = WithdrawRequest(amount=amount, blinded=_blinded(coins),
                                          idempotency_key=key).to_wire()
                await self.context.database.transaction(lambda c: self._store_batch(
                    c, key, "withdraw", amount.currency, amount.minor_units, request, coins))
                crash_point("wallet.withdraw.stored")
                found = await self._batch(key)  # ours, or another process's stored first
            if found is None:  # another process's run of it was refused meanwhile
                raise IdempotencyConflict(f"the bank refused withdrawal {key!r} meanwhile: "
                                          "run it again", detail={"key": key})
            if found[:3] != ("withdraw", amount.currency, amount.minor_units):
                raise IdempotencyConflict(f"wallet key {key!r} withdrew something else",
                                          detail={"key": key})
            await self._finish(key)
            await self._finish_others(key)
        return await self.coins()

    async def _finish_others(self, but: str) -> None:
        pending = await self.context.database.read(lambda c: c.execute(
            "SELECT count(*) FROM ecash_batches WHERE state = 'pending' AND batch != ?",
            (but,)).fetchone()[0])
        if pending:
            await self.finish_pending()

    # -- spending -----------------------------------------------------------------------

    async def spend(self, request: PaymentRequest) -> list[dict[str, Any]]:
        """Signed spends of coins worth exactly ``request.amount`` for this payment
        (purpose payment, to ``request.payee``, bound to ``request.reference``),
        recorded as bound to ``request.idempotency_key`` before they are returned;
        the same key gives the same spends. Coins are exchanged at the bank first when
        no exact subset is held.

        Raises:
            IdempotencyConflict: the key paid another payee, reference or amount.
            InsufficientCoins: fewer fresh coins of the currency than the amount.
            What an exchange raises (the bank's refusal, a transport error).
        """
        key = request.idempotency_key
        async with self._lock:
            for _ in range(_BIND_TRIES):
                bound = await self._bound(request)
                if bound is not None:
                    return bound
                await self.finish_pending()  # another process's exchange, say
                try:
                    chosen = await self._choose(request.amount)
                except _Taken:  # another process took a coin to exchange first
                    continue
                spends = await self._bind(chosen, request)
                if spends is not None:
                    crash_point("wallet.spend.bound")
                    return spends
            raise InsufficientCoins(f"coins for {request.amount} were taken meanwhile",
                                    detail={"amount": request.amount.to_wire(), "key": key})

    async def _bound(self, request: PaymentRequest) -> list[dict[str, Any]] | None:
        rows = await self.context.database.read(lambda c: c.execute(
            "SELECT spend_wire FROM ecash_coins WHERE spend = ? AND state IN"
            " ('spending', 'spent') ORDER BY coin_key", (request.idempotency_key,)).fetchall())
        if not rows:
            return None
        spends = [canonical_decode(row[0]) for row in rows]
        total = sum(s["amount"]["minor_units"] for s in spends)
        first = spends[0]
        if (first["payee"], first["reference"], first["amount"]["currency"], total) != (
                request.payee, request.reference, request.amount.currency,
                request.amount.minor_units):
            raise IdempotencyConflict(f"payment key {request.idempotency_key!r} paid "
                                      "another payee, reference or amount",
                                      detail={"key": request.idempotency_key})
        return [s["spend"] for s in spends]

    async def _fresh(self, currency: str) -> tuple[list[tuple[bytes, int]], int]:
        """The fresh coins a payment may take, largest value first, and what all the
        fresh coins of ``currency`` are worth. At most MAX_COINS of each value: no
        payment or exchange takes more, so no exact split is missed, and a wallet
        holding thousands of coins reads a few hundred rows a payment, not all
        (bench/payments.py --pay ecash: reading every coin was its limit)."""
        def read(c: Any) -> tuple[list[tuple[bytes, int]], int]:
            held: list[tuple[bytes, int]] = []
            total = 0
            for value, count in c.execute(
                    "SELECT value, count(*) FROM ecash_coins WHERE state = 'fresh' AND"
                    " currency = ? GROUP BY value ORDER BY value DESC", (currency,)).fetchall():
                total += value * count
                held += c.execute(
                    "SELECT coin_key, value FROM ecash_coins WHERE state = 'fresh' AND"
                    " currency = ? AND value = ? LIMIT ?",  # any of them: in index order
                    (currency, value, MAX_COINS)).fetchall()
            return held, total

        return await self.context.database.read(read)

    async def _choose(self, amount: Amount) -> list[bytes]:
        """Fresh coins summing to ``amount`` exactly, at most MAX_COINS of them (what
        one deposit takes), exchanging first if needed."""
        held, total = await self._fresh(amount.currency)
        chosen = _pick(held, amount.minor_units)
        if chosen is not None and len(chosen) <= MAX_COINS:
            return chosen
        if total < amount.minor_units:
            raise InsufficientCoins(
                f"the wallet holds {Amount(amount.currency, total)} in coins, not {amount}",
                detail={"amount": amount.to_wire(),
                        "held": Amount(amount.currency, total).to_wire()})
        # The fewest large coins that cover the amount, exchanged into the amount and
        # the change.
        cover, covered = [], 0
        for coin_key, value in sorted(held, key=lambda h: h[1]):
            if value >= amount.minor_units:
                cover, covered = [(coin_key, value)], value
                break
        if not cover:
            for coin_key, value in held:  # largest first
                cover.append((coin_key, value))
                covered += value
                if covered >= amount.minor_units:
                    break
        if len(cover) > MAX_COINS:
            raise InsufficientCoins(f"{amount} takes more than {MAX_COINS} of the wallet's "
                                    "coins, more than one payment or exchange may hold",
                                    detail={"amount": amount.to_wire(),
                                            "held": Amount(amount.currency, total).to_wire()})
        await self._exchange(cover, amount.currency,
                             [amount.minor_units, covered - amount.minor_units])
        chosen = _pick((await self._fresh(amount.currency))[0], amount.minor_units)
        if chosen is None or len(chosen) > MAX_COINS:  # pragma: no cover - it made them
            raise InsufficientCoins(f"no exact coins for {amount} after an exchange",
                                    detail={"amount": amount.to_wire()})
        return chosen

    async def _bind(self, chosen: Sequence[bytes], request: PaymentRequest
                    ) -> list[dict[str, Any]] | None:
        """Bind ``chosen`` to the payment in one transaction, or None if another
        process took one of them first."""
        now = self.context.now_ms()
        bank = self.bank_id

        def bind(c: Any) -> list[dict[str, Any]] | None:
            if c.execute("SELECT 1 FROM ecash_coins WHERE spend = ? LIMIT 1",
                         (request.idempotency_key,)).fetchone():
                raise _Taken  # another process bound coins to this payment meanwhile
            if c.execute("SELECT 1 FROM ecash_reclaims WHERE payment = ? AND state ="
                         " 'pending'", (request.idempotency_key,)).fetchone():
                raise _Taken  # its coins are being reclaimed: finish_pending decides
            out = []
            for coin_key in sorted(chosen):
                row = c.execute("SELECT secret, currency, value, key_id, coin_key, prefix,"
                                " signature FROM ecash_coins WHERE coin_key = ?"
                                " AND state = 'fresh'", (coin_key,)).fetchone()
                if row is None:
                    raise _Taken
                amount = Amount(row[1], row[2])
                spend = sign_spend(_secret(row[0]), _coin(row[3:]), purpose="payment",
                                   bank=bank, payee=request.payee,
                                   reference=request.reference, amount=amount).to_wire()
                kept = {"spend": spend, "payee": request.payee,
                        "reference": request.reference, "amount": amount.to_wire()}
                c.execute("UPDATE ecash_coins SET state = 'spending', spend = ?,"
                          " spend_wire = ?, updated_ms = ? WHERE coin_key = ?",
                          (request.idempotency_key, canonical_encode(kept), now, coin_key))
                out.append(spend)
            return out

        try:
            return await self.context.database.transaction(bind)
        except _Taken:
            return None

    async def settled(self, request: PaymentRequest, result: PaymentResult) -> None:
        """The payment under ``request.idempotency_key`` was deposited: its coins are
        spent."""
        now = self.context.now_ms()
        await self.context.database.transaction(lambda c: c.execute(
            "UPDATE ecash_coins SET state = 'spent', updated_ms = ? WHERE spend = ?"
            " AND state = 'spending'", (now, request.idempotency_key)))

    async def refused(self, request: PaymentRequest) -> None:
        """The payee refused the payment under ``request.idempotency_key`` before it
        deposited it: the coins were shown, so they are exchanged for new ones, as
        ``reclaim`` does (a coin the payee did deposit after all is refused by the
        bank as double spent: it stays spent and bound to the payment, with the
        evidence, so that a retry under the key hands over the same spends and pays
        nothing more; the others are exchanged again: the payee holds their spends).

        Raises: the bank's refusal of the exchange (but ecash.double_spent), a
        transport error (the exchange is kept, for the next use to finish)."""
        async with self._lock:
            await self._reclaim(request.idempotency_key)

    # -- exchanging ---------------------------------------------------------------------

    async def _exchange(self, given: Sequence[tuple[bytes, int]], currency: str,
                        units: Sequence[int], *, bound_to: str | None = None,
                        on_store: Callable[[Any, str], None] | None = None,
                        shown: bool = False) -> None:
        """Give up ``given`` coins for new ones of ``units`` (each split into the
        bank's denominations), by ``bank.ecash_exchange``: the new coins and the spends
        stored in one transaction before the bank is asked. Each coin must still be
        fresh, or bound to payment ``bound_to`` (one refused): ``given`` was read
        before the bank was awaited, and a coin another process bound to a payment
        meanwhile would be spent under two contracts (_Taken). ``on_store(c, batch)``
        writes more in the same transaction (a reclaim's note). ``shown``: the coins
        given are ``shown`` ones (a refusal of the bank leaves them shown, not fresh)."""
        batch = f"{'shown' if shown else 'exchange'}-{secrets.token_hex(16)}"
        coins = await self._draw(currency, [u for u in units if u])
        reference = blinded_order(_blinded(coins))
        now = self.context.now_ms()
        bank = self.bank_id

        def store(c: Any) -> None:
            spends = []
            for coin_key, _ in given:
                row = c.execute("SELECT secret, value, key_id, coin_key, prefix, signature"
                                " FROM ecash_coins WHERE coin_key = ? AND (state IN"
                                " ('fresh', 'shown') OR (state = 'spending' AND spend = ?))",
                                (coin_key, bound_to)).fetchone()
                if row is None:
                    raise _Taken
                spends.append(sign_spend(_secret(row[0]), _coin(row[2:]), purpose="exchange",
                                         bank=bank, payee=bank, reference=reference,
                                         amount=Amount(currency, row[1])))
                c.execute("UPDATE ecash_coins SET state = 'spending', spend = ?,"
                          " spend_wire = NULL, updated_ms = ? WHERE coin_key = ?",
                          (batch, now, coin_key))
            request = ExchangeRequest(spends=tuple(spends), blinded=_blinded(coins),
                                      idempotency_key=batch).to_wire()
            self._store_batch(c, batch, "exchange", currency, sum(units), request, coins)
            if on_store is not None:
                on_store(c, batch)

        await self.context.database.transaction(store)  # _Taken: a coin was taken meanwhile
        crash_point("wallet.exchange.stored")
        await self._finish(batch)

    # -- reclaiming ---------------------------------------------------------------------

    async def reclaim(self) -> dict[str, Any]:
        """Give back what a vanished payee or time would take (housekeeping; ``semper
        wallet reclaim``):

        * each payment whose coins are bound and not settled ``reclaim_after_ms``
          after the binding, or at once when its purchase ended FAILED, is exchanged
          at the bank: either the coins come back as new ones (the payee never
          deposited them, and now never can: a retry under the payment's key binds
          new coins and pays once), or the bank refuses ``ecash.double_spent`` (the
          payee deposited them): the coins are spent and stay bound to the payment,
          so a retry hands over the same spends (the payee answers its first
          deposit, never a second), and the bank's evidence is kept (``reclaims``);
        * fresh coins whose key's deposit window ends within ``refresh_margin_ms``
          are exchanged for coins of the bank's current keys.

        Returns ``{"payments": [{"key", "state", "amount", "evidence"}], "refreshed":
        n, "failed": ["<what>: <code>"], "coins": coins()}``."""
        async with self._lock:
            failed = await self.finish_pending()
            due = await self.context.database.read(
                lambda c: self._due(c, self.context.now_ms()))
            for key in due:
                try:
                    await self._reclaim(key)
                except (ServiceError, TransportError, StatementError,
                        CertificateError) as exc:
                    failed.append(f"{key}: {exc.code}")
            refreshed = await self._refresh_expiring(failed)
        payments = []
        for key in due:
            row = await self.context.database.read(lambda c, k=key: c.execute(
                "SELECT state, spends, evidence FROM ecash_reclaims WHERE payment = ?",
                (k,)).fetchone())
            if row is None:
                continue
            spends = canonical_decode(row[1])
            total = sum(canonical_decode(w)["amount"]["minor_units"] for _, w in spends)
            currency = canonical_decode(spends[0][1])["amount"]["currency"]
            payments.append({"key": key, "state": row[0],
                             "amount": Amount(currency, total).to_wire(),
                             "evidence": None if row[2] is None else canonical_decode(row[2])})
        return {"payments": payments, "refreshed": refreshed, "failed": failed,
                "coins": await self.coins()}

    async def reclaims(self) -> list[dict[str, Any]]:
        """Every payment reclaimed: ``[{"key", "state", "evidence"}]`` (state pending,
        refreshed or paid; evidence the bank's ``ecash.double_spent`` refusal, whose
        ``first`` is the payee's deposited spend)."""
        rows = await self.context.database.read(lambda c: c.execute(
            "SELECT payment, state, evidence FROM ecash_reclaims ORDER BY created_ms"
        ).fetchall())
        return [{"key": k, "state": s, "evidence": None if e is None else canonical_decode(e)}
                for k, s, e in rows]

    def _due(self, c: Any, now: int) -> list[str]:
        """Keys of the payments to reclaim now (coins bound by ``_bind``, not settled)."""
        keys = {row[0] for row in c.execute(
            "SELECT spend FROM ecash_coins WHERE state = 'spending' AND spend_wire IS NOT NULL"
            " GROUP BY spend HAVING max(updated_ms) <= ?", (now - self.reclaim_after_ms,))}
        with contextlib.suppress(sqlite3.OperationalError):  # an agent without purchases
            keys |= {row[0] for row in c.execute(
                "SELECT DISTINCT e.spend FROM ecash_coins e JOIN commerce_purchases p"
                " ON p.key = e.spend WHERE e.state = 'spending' AND e.spend_wire IS NOT NULL"
                " AND p.state = ?", (PurchaseState.FAILED.value,))}
        return sorted(keys)

    async def _reclaim(self, key: str) -> None:
        """Exchange the coins bound to payment ``key`` (see ``reclaim``); the spends
        they had are noted with the exchange's batch, in its transaction, so that
        ``_drop`` can bind them to the payment again if the payee deposited them."""
        rows = await self.context.database.read(lambda c: c.execute(
            "SELECT coin_key, value, currency, spend_wire FROM ecash_coins WHERE spend = ?"
            " AND state = 'spending' AND spend_wire IS NOT NULL ORDER BY coin_key",
            (key,)).fetchall())
        if not rows:
            return
        kept = canonical_encode([[k, w] for k, _, _, w in rows])
        now = self.context.now_ms()

        def note(c: Any, batch: str) -> None:
            c.execute("INSERT OR REPLACE INTO ecash_reclaims VALUES"
                      " (?, ?, 'pending', ?, NULL, ?, ?)", (key, batch, kept, now, now))

        currency = rows[0][2]
        try:
            await self._exchange([(k, v) for k, v, _, _ in rows], currency,
                                 [sum(v for _, v, _, _ in rows)], bound_to=key,
                                 on_store=note)
        except _Taken:  # another process reclaims or spends them
            return
        except RemoteError as exc:
            if exc.code != "ecash.double_spent":
                raise
            # Coins shown but not deposited (a payee that deposited only some) are
            # ``shown``: the payee saw them, so they are exchanged once more.
            failed = await self._refresh_shown()
            if failed:
                self.context.log.warning("wallet: shown coins not exchanged: %s", failed)

    def _drop_reclaim(self, c: Any, batch: str, refusal: RemoteError, spent: set[str],
                      now: int) -> bool:
        """``_drop`` of a reclaim's exchange (True; False: not a reclaim's): on
        ``ecash.double_spent`` the coins the bank names are spent and bound to the
        payment again with their spends, the others ``shown`` (to be exchanged, in
        this run or, after a crash, the next use's ``finish_pending``), and the
        evidence kept;
        on another refusal every coin is bound to the payment again as it was (the
        next housekeeping tries again)."""
        row = c.execute("SELECT payment, spends FROM ecash_reclaims WHERE batch = ? AND"
                        " state = 'pending'", (batch,)).fetchone()
        if row is None:
            return False
        payment, kept = row
        paid = refusal.code == "ecash.double_spent" and any(
            k.hex().upper() in spent for k, _ in canonical_decode(kept))
        for coin_key, wire in canonical_decode(kept):
            if not paid:
                change: tuple[Any, ...] = ("spending", payment, wire)
            elif coin_key.hex().upper() in spent:
                change = ("spent", payment, wire)
            else:  # the payee saw it: exchanged before any use (_refresh_shown)
                change = ("shown", None, None)
            c.execute("UPDATE ecash_coins SET state = ?, spend = ?, spend_wire = ?,"
                      " updated_ms = ? WHERE coin_key = ? AND spend = ? AND state = 'spending'",
                      (*change, now, coin_key, batch))
        if paid:
            evidence = {"code": refusal.code, "message": str(getattr(refusal, "message", "")),
                        "detail": refusal.detail}
            c.execute("UPDATE ecash_reclaims SET state = 'paid', evidence = ?, updated_ms = ?"
                      " WHERE payment = ?", (canonical_encode(evidence), now, payment))
        else:
            c.execute("DELETE FROM ecash_reclaims WHERE payment = ?", (payment,))
        return True

    async def _refresh_expiring(self, failed: list[str]) -> int:
        """Exchange fresh coins whose key's deposit window ends within
        ``refresh_margin_ms`` (at most MAX_COINS an exchange, 16 exchanges a call), unless
        the bank's current keys end within it too (a refresh would gain nothing).
        Returns how many coins were given up."""
        now = self.context.now_ms()
        limit = now + self.refresh_margin_ms
        rows = await self.context.database.read(lambda c: c.execute(
            "SELECT e.coin_key, e.value, e.currency FROM ecash_coins e JOIN"
            " ecash_denominations d ON d.key_id = e.key_id WHERE e.state = 'fresh' AND"
            " d.deposit_until_ms <= ? ORDER BY e.currency, e.value DESC LIMIT ?",
            (limit, 16 * MAX_COINS)).fetchall())
        by_currency: dict[str, list[tuple[bytes, int]]] = {}
        for coin_key, value, currency in rows:
            by_currency.setdefault(currency, []).append((coin_key, value))
        done = 0
        for currency, coins in by_currency.items():
            try:
                keys = await self._keys(currency)
                if not keys or any(d.deposit_until_ms <= limit for d in keys.values()):
                    failed.append(f"refresh {currency}: the bank's current keys end within "
                                  "the margin too")
                    continue
                for start in range(0, len(coins), MAX_COINS):
                    chunk = coins[start:start + MAX_COINS]
                    with contextlib.suppress(_Taken):  # spent meanwhile: not ours to refresh
                        await self._exchange(chunk, currency, [sum(v for _, v in chunk)])
                        done += len(chunk)
            except (ServiceError, TransportError, StatementError, CertificateError) as exc:
                failed.append(f"refresh {currency}: {exc.code}")
        return done

    # -- refunds ------------------------------------------------------------------------

    async def refunded(self, result: RefundResult) -> None:
        """Redeem the bank's ``ecash.refund_voucher`` of ``result`` into new coins
        (``bank.ecash_exchange``), once: a voucher already redeemed or being redeemed
        is only finished.

        Raises:
            BadConfirmation, StatementError, CertificateError: a voucher not our
                bank's, not of ``result``, or naming no coin of ours.
            What the exchange raises (kept for a retry but for the bank's refusal).
        """
        voucher = result.confirmation
        self.context.verify(voucher, result.bank_certificate, expected_type=REFUND_VOUCHER,
                            expected_signer=self.bank_id)
        try:
            body = RefundVoucher.from_statement(voucher)
        except BadRequest as exc:
            raise BadConfirmation(f"a refund voucher that does not parse: {exc.message}",
                                  detail=exc.detail) from None
        amount, refund_key = body.amount, body.refund_key
        for field, got, want in (("original", body.original, result.original),
                                 ("amount", amount, result.amount),
                                 ("bank", body.bank, self.bank_id)):
            if got != want:
                raise BadConfirmation(f"the refund voucher names another {field}",
                                      detail={"field": field})
        batch = f"refund-{voucher.digest.hex()[:48]}"
        async with self._lock:
            if await self._batch(batch) is None:
                secret = await self.context.database.read(lambda c: c.execute(
                    "SELECT secret FROM ecash_coins WHERE coin_key = ? AND state IN"
                    " ('spending', 'spent')", (refund_key,)).fetchone())
                if secret is None:
                    raise BadConfirmation("the refund voucher's key is no coin we spent",
                                          detail={"field": "refund_key"})
                coins = await self._draw(amount.currency, [amount.minor_units])
                signature = _secret(secret[0]).sign(spend_message(
                    purpose="refund", bank=self.bank_id, payee=self.bank_id,
                    reference=blinded_order(_blinded(coins)), amount=amount))
                request = ExchangeRequest(spends=(), blinded=_blinded(coins),
                                          idempotency_key=batch, voucher=voucher,
                                          voucher_signature=signature).to_wire()

                await self.context.database.transaction(lambda c: self._store_batch(
                    c, batch, "refund", amount.currency, amount.minor_units, request, coins))
                crash_point("wallet.refund.stored")
            await self._finish(batch)


class _Taken(Exception):
    """A coin chosen was bound by another process meanwhile (rolls the binding back)."""
