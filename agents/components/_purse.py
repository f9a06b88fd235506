"""The purse's client side: the buyer's chains (``Purse``, a component on every
buyer) and the seller's redemption (``redeem``).

Theory of operation (buyer). ``open_chain`` draws a PayWord chain, signs its
``purse.commitment`` and stores both (the chain's secret w_n and the signed
commitment) before it asks the bank to reserve the chain's value
(``bank.purse_reserve``), so a retry under the same key sends the very same
commitment and the bank answers it with the same reservation. ``pay(chain, k)``
records payword k as spent in its own transaction and only then returns it: after a
crash the purse never holds less than what it revealed, and it reveals payword k
only after k - 1 (``purse.out_of_order``), so a buyer never pays more than one
payword ahead of what it asked for. What became of a chain at the bank (redeemed,
released at expiry) is learnt with ``refresh`` (``bank.purse_status``).

The seller keeps no table here: its stream keeps the highest payword it accepted,
and ``redeem`` takes it to the bank once.
"""

from __future__ import annotations

import dataclasses
import secrets
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from cryptography import x509

from semper.agents.components._payments import AgentPaymentContext
from semper.agents.runtime._component import Component
from semper.services import Amount, ServiceError
from semper.services.certificates import certificate_der, load_certificate
from semper.services.payment import (
    BANK_SERVICE,
    IdempotencyConflict,
    WrongBank,
    check_idempotency_key,
)
from semper.services.payment.purse import (
    BANK_PURSE_REDEEM,
    BANK_PURSE_RESERVE,
    BANK_PURSE_STATUS,
    COMMITMENT,
    REDEEMED,
    AlreadyRedeemed,
    BadPayword,
    BeyondChain,
    OutOfOrder,
    PayWordChain,
    PurseCommitment,
    PurseExpired,
    RedeemAnswer,
    RedeemRequest,
    ReserveAnswer,
    ReserveRequest,
    StatusAnswer,
    StatusRequest,
    UnknownChain,
    verify_redeemed,
    verify_reservation,
)
from semper.services.statements import Statement
from semper.transport import RemoteError, TransportError

if TYPE_CHECKING:
    from semper.agents.runtime._component import Context

__all__ = ["DEFAULT_VALIDITY_MS", "MIGRATIONS", "ChainRecord", "Purse", "redeem"]

#: How long a chain opened now may be paid (``expires``): a day.
DEFAULT_VALIDITY_MS: Final = 86_400_000
#: A stream's per-chunk records are fsync'd every this many chunks (protocol.md 13.3).
DURABLE_EVERY: Final = 16
#: Chains whose checkpoints ``pay`` keeps in memory (each ~sqrt(n) x 32 bytes).
_CACHED_CHAINS: Final = 16

MIGRATIONS: Final = {
    "purse_chains": [
        "CREATE TABLE purse_chains ("
        " chain BLOB PRIMARY KEY, key TEXT NOT NULL UNIQUE, seller TEXT NOT NULL,"
        " bank TEXT NOT NULL, secret BLOB NOT NULL, length INTEGER NOT NULL,"
        " currency TEXT NOT NULL, unit INTEGER NOT NULL, expires INTEGER NOT NULL,"
        " order_digest BLOB, commitment BLOB NOT NULL, reservation BLOB,"
        " bank_certificate BLOB, spent INTEGER NOT NULL DEFAULT 0, redeemed INTEGER,"
        " state TEXT NOT NULL, created_ms INTEGER NOT NULL, updated_ms INTEGER NOT NULL"
        ") STRICT",
    ],
}

_COLUMNS: Final = ("chain, key, seller, bank, length, currency, unit, expires, order_digest,"
                   " commitment, reservation, bank_certificate, spent, redeemed, state")


@dataclass(frozen=True, slots=True, kw_only=True)
class ChainRecord:
    """One of the buyer's chains, as its purse holds it. ``state``: ``reserving``
    (committed, the bank's answer not yet held), ``reserved``, ``redeemed``,
    ``released``. ``spent``: the highest payword revealed; ``redeemed``: the one the
    seller redeemed (None before)."""

    chain: bytes
    key: str
    seller: str
    bank: str
    length: int
    unit: Amount
    expires: int
    order: bytes | None
    commitment: Statement
    reservation: Statement | None
    bank_certificate: x509.Certificate | None
    spent: int
    redeemed: int | None
    state: str

    def to_json(self) -> dict[str, Any]:
        """``semper purse list --json``'s entry."""
        def worth(n: int) -> dict[str, Any]:
            return Amount(self.unit.currency, n * self.unit.minor_units).to_wire()

        return {"chain": self.chain.hex(), "seller": self.seller,
                "reserved": worth(self.length), "spent": worth(self.spent),
                "redeemed": worth(self.redeemed or 0), "state": self.state}


def _record(row: Sequence[Any]) -> ChainRecord:
    (chain, key, seller, bank, length, currency, unit, expires, order, commitment,
     reservation, certificate, spent, redeemed, state) = row
    return ChainRecord(
        chain=chain, key=key, seller=seller, bank=bank, length=length,
        unit=Amount(currency, unit), expires=expires, order=order,
        commitment=Statement.from_bytes(commitment),
        reservation=None if reservation is None else Statement.from_bytes(reservation),
        bank_certificate=None if certificate is None else load_certificate(certificate),
        spent=spent, redeemed=redeemed, state=state)


def read_chains(c: Any, limit: int = 1000) -> list[ChainRecord]:
    """The purse's chains, newest first (for ``semper purse list``, on the database
    alone)."""
    rows = c.execute(f"SELECT {_COLUMNS} FROM purse_chains ORDER BY created_ms DESC,"
                     " chain LIMIT ?", (limit,)).fetchall()
    return [_record(row) for row in rows]


class Purse(Component):
    """The buyer's PayWord chains (table ``purse_chains``)."""

    name = "purse"

    def __init__(self, context: Context) -> None:
        super().__init__(context)
        self._chains: OrderedDict[bytes, PayWordChain] = OrderedDict()

    def migrations(self) -> Mapping[str, Sequence[str]]:
        return MIGRATIONS

    @property
    def bank_id(self) -> str:
        return self.context.config.payment.bank or "bank"

    # -- reading ------------------------------------------------------------------------

    async def get(self, chain: bytes) -> ChainRecord:
        """Raises UnknownChain."""
        row = await self.context.database.read(lambda c: c.execute(
            f"SELECT {_COLUMNS} FROM purse_chains WHERE chain = ?", (chain,)).fetchone())
        if row is None:
            raise UnknownChain("this purse holds no such chain", detail={"chain": chain.hex()})
        return _record(row)

    async def list(self) -> list[dict[str, Any]]:
        """Every chain, newest first: ``{"chain" (hex), "seller", "reserved", "spent",
        "redeemed", "state"}`` (amounts ``{currency, minor_units}``)."""
        return [r.to_json() for r in await self.context.database.read(read_chains)]

    # -- opening ------------------------------------------------------------------------

    async def open_chain(self, seller: str, length: int, unit: Amount, order: bytes | None,
                         key: str, *, validity_ms: int = DEFAULT_VALIDITY_MS
                         ) -> tuple[Statement, Statement]:
        """A chain of ``length`` paywords worth ``unit`` each for ``seller``, reserved
        at our bank: its ``purse.commitment`` and the bank's ``purse.reservation``.
        The same ``key`` again gives the same chain (and asks the bank again if its
        answer was lost); with other terms it is ``payment.idempotency_conflict``.

        Raises:
            BadRequest, BadCommitment: a bad key, length or unit (nothing stored).
            IdempotencyConflict: ``key`` opened a chain with other terms.
            The bank's refusal (``RemoteError``: ``payment.insufficient_funds``, ...):
                nothing was reserved and the chain is forgotten.
            A transport error: the chain is kept (``reserving``); call again.
            BadConfirmation, StatementError, CertificateError: a reservation that
                does not check out.
        """
        check_idempotency_key(key)
        terms = (seller, length, unit.currency, unit.minor_units, order)
        record = await self._by_key(key)
        if record is None:
            record = await self._commit(seller, length, unit, order, key, validity_ms)
        if (record.seller, record.length, record.unit.currency, record.unit.minor_units,
                record.order) != terms:
            raise IdempotencyConflict(f"purse key {key!r} opened a chain with other terms",
                                      detail={"key": key})
        if record.reservation is not None:
            return record.commitment, record.reservation
        return record.commitment, await self._reserve(record)

    async def _by_key(self, key: str) -> ChainRecord | None:
        row = await self.context.database.read(lambda c: c.execute(
            f"SELECT {_COLUMNS} FROM purse_chains WHERE key = ?", (key,)).fetchone())
        return None if row is None else _record(row)

    async def _commit(self, seller: str, length: int, unit: Amount, order: bytes | None,
                      key: str, validity_ms: int) -> ChainRecord:
        """Draw, sign and store a chain (before the bank hears of it)."""
        now = self.context.now_ms()
        terms = PurseCommitment(chain=secrets.token_bytes(32), buyer=self.context.id,
                                seller=seller, bank=self.bank_id, root=bytes(32),
                                length=length, unit=unit, expires=now + validity_ms,
                                order=order)  # the terms checked before n hashes are spent
        chain = PayWordChain.new(length)
        body = dataclasses.replace(terms, root=chain.root)
        commitment = await self._payments(body.chain).sign(COMMITMENT, body.to_body())

        def insert(c: Any) -> None:
            c.execute("INSERT OR IGNORE INTO purse_chains (chain, key, seller, bank, secret,"
                      " length, currency, unit, expires, order_digest, commitment, state,"
                      " created_ms, updated_ms)"
                      " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'reserving', ?, ?)",
                      (body.chain, key, seller, body.bank, chain.to_secret_bytes(), length,
                       unit.currency, unit.minor_units, body.expires, order,
                       commitment.to_bytes(), now, now))

        await self.context.database.transaction(insert)
        stored = await self._by_key(key)  # ours, or one a concurrent call stored first
        assert stored is not None
        return stored

    def _payments(self, chain: bytes) -> AgentPaymentContext:
        """Signs and archives under the chain's transaction; bank ops go to our bank
        only, once its certificate says it is a bank."""
        return AgentPaymentContext(self.context.agent, chain.hex(), self.bank_id)

    async def _reserve(self, record: ChainRecord) -> Statement:
        ctx = self._payments(record.chain)
        request = ReserveRequest(commitment=record.commitment, idempotency_key=record.key)
        try:
            answer = ReserveAnswer.from_wire(await ctx.request(
                record.bank, BANK_SERVICE, BANK_PURSE_RESERVE, request.to_wire()))
        except RemoteError:
            # The bank refused: it reserved nothing and stored nothing under the key,
            # so the chain is forgotten and the key may open another.
            await self.context.database.transaction(lambda c: c.execute(
                "DELETE FROM purse_chains WHERE chain = ? AND state = 'reserving'",
                (record.chain,)))
            raise
        await self._keep_reservation(ctx, record, answer.reservation, answer.bank_certificate)
        now = self.context.now_ms()
        await self.context.database.transaction(lambda c: c.execute(
            "UPDATE purse_chains SET reservation = ?, bank_certificate = ?,"
            " state = 'reserved', updated_ms = ? WHERE chain = ? AND reservation IS NULL",
            (answer.reservation.to_bytes(), certificate_der(answer.bank_certificate), now,
             record.chain)))
        return answer.reservation

    # -- paying -------------------------------------------------------------------------

    async def _keep_reservation(self, ctx: AgentPaymentContext, record: ChainRecord,
                                reservation: Statement, certificate: x509.Certificate
                                ) -> None:
        """Check our bank's ``purse.reservation`` of ``record`` and archive it."""
        verify_reservation(reservation, bank_certificate=certificate, root=self.context.root,
                           crl=self.context.crl, now=self.context.now(),
                           commitment=record.commitment, expected_bank=record.bank)
        await ctx.record(reservation, certificate)

    async def pay(self, chain: bytes, index: int) -> bytes:
        """The payword for chunk ``index`` (0-based) of a stream: payword
        ``index + 1``, recorded as spent (durably) before it is returned. Payword k
        is revealed only once k - 1 was; one revealed before is given again (a
        resumed stream asks for the chunk it paid and did not get).

        Raises:
            UnknownChain: no such chain, or not reserved yet.
            AlreadyRedeemed, PurseExpired: redeemed, released, or past ``expires``.
            BadPayword: index < 0. BeyondChain: index >= length.
            OutOfOrder: payword index + 1 before payword index.
        """
        if type(index) is not int:
            raise BadPayword(f"chunk index {index!r} is not an int", detail={"index": index})
        k = index + 1
        now = self.context.now_ms()

        def spend(c: Any) -> tuple[bytes, int]:
            row = c.execute("SELECT secret, length, expires, spent, state FROM purse_chains"
                            " WHERE chain = ?", (chain,)).fetchone()
            if row is None or row[4] == "reserving":
                raise UnknownChain("this purse holds no reserved chain with that id",
                                   detail={"chain": chain.hex()})
            secret, length, expires, spent, state = row
            if state == "redeemed":
                raise AlreadyRedeemed("the seller redeemed this chain",
                                      detail={"chain": chain.hex(), "index": spent})
            if state == "released" or now > expires:
                raise PurseExpired(f"the chain expired at {expires} (Unix ms)",
                                   detail={"expires": expires, "now_ms": now})
            if k < 1:
                raise BadPayword(f"chunk index {index} is below 0", detail={"index": k})
            if k > length:
                raise BeyondChain(f"payword {k} is beyond a chain of {length}",
                                  detail={"index": k, "length": length})
            if k > spent + 1:
                raise OutOfOrder(f"payword {k} before payword {spent + 1}",
                                 detail={"index": k, "expected": spent + 1})
            if k == spent + 1:
                c.execute("UPDATE purse_chains SET spent = ?, updated_ms = ? WHERE chain = ?",
                          (k, now, chain))
            return secret, length

        # Every DURABLE_EVERY-th payword (and the last) is fsync'd, the others are
        # committed without (they survive a kill, not a power loss, which would
        # only make us show one spent too few: the seller and the bank hold the
        # payword, and the chain pays nobody else).
        secret, _ = await self.context.database.transaction(
            spend, durable=k % DURABLE_EVERY == 0)
        return self._chain(chain, secret).payword(k)

    def _chain(self, chain: bytes, secret: bytes) -> PayWordChain:
        found = self._chains.get(chain)
        if found is None:
            found = self._chains[chain] = PayWordChain.from_secret_bytes(secret)
            while len(self._chains) > _CACHED_CHAINS:
                self._chains.popitem(last=False)
        self._chains.move_to_end(chain)
        return found

    # -- what the bank says -------------------------------------------------------------

    async def refresh(self, chain: bytes) -> ChainRecord:
        """Ask our bank what became of ``chain`` (``bank.purse_status``) and keep it:
        ``redeemed`` (the ``purse.redeemed`` checked and archived), ``released``.

        Raises: UnknownChain (here or at the bank), what the request raises, or a
        verification error for a ``purse.redeemed`` that does not check out."""
        record = await self.get(chain)
        ctx = self._payments(chain)
        answer = StatusAnswer.from_wire(await ctx.request(
            record.bank, BANK_SERVICE, BANK_PURSE_STATUS, StatusRequest(chain=chain).to_wire()))
        redeemed: int | None = None
        if answer.redeemed is not None:
            body = verify_redeemed(answer.redeemed, bank_certificate=answer.bank_certificate,
                                   root=self.context.root, crl=self.context.crl,
                                   now=self.context.now(), expected_chain=chain,
                                   expected_commitment=record.commitment.digest,
                                   expected_seller=record.seller, expected_bank=record.bank)
            redeemed = body.index
            if record.state != "redeemed":
                await ctx.record(answer.redeemed, answer.bank_certificate)
        state = answer.state
        if record.state == "reserving":  # the bank reserved it: its answer was lost
            await self._keep_reservation(ctx, record, answer.reservation,
                                         answer.bank_certificate)
        now = self.context.now_ms()
        await self.context.database.transaction(lambda c: c.execute(
            "UPDATE purse_chains SET state = ?, redeemed = ?, reservation = ?,"
            " bank_certificate = ?, updated_ms = ? WHERE chain = ?",
            (state, redeemed, answer.reservation.to_bytes(),
             certificate_der(answer.bank_certificate), now, chain)))
        return await self.get(chain)


    async def redemption(self, chain: bytes) -> tuple[Statement, x509.Certificate] | None:
        """Our bank's ``purse.redeemed`` of ``chain`` and the bank's certificate (asked
        of the bank with ``refresh`` unless held; checked and archived under the
        chain), or None while it is not redeemed: the payment a purse purchase's
        receipt names."""
        record = await self.get(chain)
        if record.state != "redeemed":
            record = await self.refresh(chain)
        if record.state != "redeemed":
            return None
        archive = self.context.agent.archive
        for kept in await archive.records(chain.hex()):
            statement = Statement.from_bytes(kept.statement)
            if statement.type == REDEEMED and statement.body.get("chain") == chain:
                certificate = await archive.certificate(statement.signer)
                if certificate is not None:
                    return statement, certificate
        return None

    async def refresh_open(self, limit: int = 50) -> list[str]:
        """``refresh`` the newest ``limit`` chains not yet redeemed or released (what
        ``semper purse list`` shows). One that cannot be asked (the bank down, a
        chain it never reserved) keeps what this purse recorded; the reasons, one
        line each, are returned (and logged)."""
        chains = await self.context.database.read(lambda c: [row[0] for row in c.execute(
            "SELECT chain FROM purse_chains WHERE state IN ('reserving', 'reserved')"
            " ORDER BY created_ms DESC LIMIT ?", (limit,))])
        failed: list[str] = []
        for chain in chains:
            try:
                await self.refresh(chain)
            except (ServiceError, TransportError) as exc:  # the local record stands
                failed.append(f"{chain.hex()[:16]}: {exc.code}")
                self.context.log.warning("purse: could not refresh chain %s: %s",
                                         chain.hex()[:16], exc)
        return failed


async def redeem(context: Context, commitment: Statement, reservation: Statement,
                 payword: bytes, index: int, *, transaction: str | None = None
                 ) -> Statement:
    """The seller's redemption of a chain at the bank (``bank.purse_redeem``) with
    the highest payword it accepted, ``index``: the bank's ``purse.redeemed``,
    checked and archived with the bank's certificate (under ``transaction``, by
    default the chain's id). Call it once the stream ended (or at the chain's expiry);
    calling again with the same payword gives the same statement.

    Raises:
        WrongBank: the commitment names another bank than ours (nothing is sent).
        The bank's refusal (``RemoteError``: ``purse.already_redeemed``,
            ``purse.expired``, ``purse.bad_payword``, ...), a transport error.
        BadConfirmation, StatementError, CertificateError: an answer that does not
            check out.
    """
    body = PurseCommitment.from_statement(commitment)
    bank = context.config.payment.bank or "bank"
    if body.bank != bank:
        raise WrongBank(f"{body.bank!r} is not the bank this agent deals with ({bank!r})",
                        detail={"bank": body.bank, "expected": bank})
    ctx = AgentPaymentContext(context.agent, transaction or body.chain.hex(), bank)
    request = RedeemRequest(commitment=commitment, reservation=reservation, payword=payword,
                            index=index)
    answer = RedeemAnswer.from_wire(await ctx.request(
        bank, BANK_SERVICE, BANK_PURSE_REDEEM, request.to_wire()))
    verify_redeemed(answer.redeemed, bank_certificate=answer.bank_certificate,
                    root=context.root, crl=context.crl, now=context.now(),
                    expected_chain=body.chain, expected_commitment=commitment.digest,
                    expected_seller=context.id, expected_index=index, expected_bank=bank)
    await ctx.record(answer.redeemed, answer.bank_certificate)
    return answer.redeemed
