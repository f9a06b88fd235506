"""The bank half of ``purse``: PayWord chains backed by money the bank holds.

Theory of operation. ``bank.purse_reserve`` moves a chain's whole value (length x
unit) from the buyer's account to the bank's system account ``@purse-reserved``
(``ledger.system_account``) and signs a ``purse.reservation``, once per (buyer,
idempotency key) and once per chain id. ``bank.purse_redeem`` (from the chain's
seller, once per chain) checks the payword against the committed root, pays the
seller index x unit and returns the rest to the buyer, both from
``@purse-reserved``, and signs a ``purse.redeemed``; the same redemption again is
answered with that statement, another one is ``purse.already_redeemed``. After
``expires + REDEEM_GRACE_MS`` (the injected clock) a chain is no longer redeemed
(``purse.expired``) and the sweep (``run``, ``sweep``) returns its whole value to
the buyer (entry kind ``purse.released``). Each of these is one SQLite transaction
through the ledger, so ``@purse-reserved`` always holds the sum of the live
reservations and the books balance to the minted total at every commit.

The payword's hashes (up to a chain's length, 2**20) are computed outside the
transaction, in a worker thread; the state is checked again inside it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import trio
from cryptography import x509

from semper.agents.components import _archive, _ledger
from semper.agents.components._bank import BankBook, BankService, Outcome, typed
from semper.agents.runtime._component import Component, handles
from semper.agents.runtime._faults import crash_point
from semper.services import Amount
from semper.services.archive import Direction
from semper.services.certificates import certificate_der
from semper.services.payment import BadRequest
from semper.services.payment.purse import (
    PURSE_REDEEM,
    PURSE_RESERVE,
    PURSE_STATUS,
    REDEEM_GRACE_MS,
    AlreadyRedeemed,
    BadCommitment,
    BadPayword,
    PurseCommitment,
    PurseExpired,
    RedeemAnswer,
    RedeemRequest,
    ReserveAnswer,
    ReserveRequest,
    StatusAnswer,
    StatusRequest,
    UnknownChain,
    check_commitment,
    check_redemption,
    redeemed_of,
    reservation_of,
)
from semper.services.statements import Statement

__all__ = ["MAX_BAD_PAYWORDS", "MIGRATIONS", "RESERVED", "SWEEP_BATCH", "SWEEP_INTERVAL_S",
           "PurseBank", "release_expired", "reserve_chain"]

#: The bank's own account that holds every live reservation.
RESERVED: Final = _ledger.system_account("purse-reserved")
#: Seconds between two sweeps of the expired reservations (trio's clock); what is
#: expired is decided by the agent's injected clock.
SWEEP_INTERVAL_S: Final = 60.0
#: Reservations one sweep transaction releases at most (the next takes the rest).
SWEEP_BATCH: Final = 200
#: Above this many hashes the payword's check runs in a worker thread.
_THREAD_HASHES: Final = 4096
#: Bad paywords a chain's redemption may present before the bank stops hashing them
#: (a check costs up to 2**20 hashes: the seller could keep the bank's cores busy).
MAX_BAD_PAYWORDS: Final = 3

MIGRATIONS: Final = {
    "bank_purse": [
        "CREATE TABLE bank_purse_chains ("
        " chain BLOB PRIMARY KEY, buyer TEXT NOT NULL, seller TEXT NOT NULL,"
        " currency TEXT NOT NULL, unit INTEGER NOT NULL, length INTEGER NOT NULL,"
        " expires INTEGER NOT NULL, commitment BLOB NOT NULL,"
        " buyer_certificate BLOB NOT NULL, reservation BLOB NOT NULL,"
        " state TEXT NOT NULL, redeemed_index INTEGER, payword BLOB, redeemed BLOB,"
        " updated_ms INTEGER NOT NULL) STRICT;"
        "CREATE INDEX bank_purse_chains_live ON bank_purse_chains (state, expires)",
        # 2: redemptions refused for a bad payword (MAX_BAD_PAYWORDS, then no hashing).
        "ALTER TABLE bank_purse_chains ADD COLUMN bad_tries INTEGER NOT NULL DEFAULT 0",
    ],
}

_COLUMNS: Final = ("buyer, seller, expires, commitment, buyer_certificate, reservation,"
                   " state, redeemed_index, payword, redeemed, bad_tries")


@dataclass(frozen=True, slots=True)
class _Chain:
    """A row of ``bank_purse_chains``."""

    buyer: str
    seller: str
    expires: int
    commitment: bytes  # the statement's bytes
    buyer_certificate: bytes
    reservation: bytes
    state: str
    redeemed_index: int | None
    payword: bytes | None
    redeemed: bytes | None
    bad_tries: int


def _chain(c: sqlite3.Connection, chain: bytes) -> _Chain | None:
    row = c.execute(f"SELECT {_COLUMNS} FROM bank_purse_chains WHERE chain = ?",
                    (chain,)).fetchone()
    return None if row is None else _Chain(*row)


class PurseBank(Component):
    name = "purse"
    modules = ("purse",)
    requires = (BankService,)

    def __init__(self, context: Any) -> None:
        super().__init__(context)
        #: chain -> the lock its payword checks take (one at a time; gone when idle)
        self._checking: dict[bytes, trio.Lock] = {}

    def migrations(self) -> Mapping[str, Sequence[str]]:
        return MIGRATIONS

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        task_status.started()
        while True:
            await self.sweep()
            await trio.sleep(SWEEP_INTERVAL_S)

    async def sweep(self) -> int:
        """Return every reservation unredeemed after ``expires + REDEEM_GRACE_MS`` (now
        by the injected clock) to its buyer; how many were released."""
        book = self.context.component(BankService).book
        released = 0
        for _ in range(10_000):  # bounded: SWEEP_BATCH a transaction
            done = await self.context.database.transaction(
                lambda c: release_expired(book, c, now_ms=book.now_ms()))
            released += done
            if done < SWEEP_BATCH:
                break
        return released

    @handles(PURSE_RESERVE)
    async def reserve(self, context: Any, request: ReserveRequest) -> ReserveAnswer:
        crash_point("purse.received")
        bank = self.context.component(BankService)
        peer = context.peer
        body = check_commitment(request.commitment, buyer_certificate=peer.certificate,
                                bank_id=self.context.id, requester=peer.agent_id,
                                **bank.checks())
        crash_point("purse.checked")
        outcome = await self.context.database.transaction(lambda c: reserve_chain(
            bank.book, c, request.commitment, body, key=request.idempotency_key,
            buyer_certificate=peer.certificate))
        crash_point("purse.committed")
        return ReserveAnswer(reservation=outcome.statement,
                             bank_certificate=self.context.certificate)

    @handles(PURSE_REDEEM)
    async def redeem(self, context: Any, request: RedeemRequest) -> RedeemAnswer:
        """Checked in order: the commitment's body, a chain of this requester (its
        seller), the commitment and reservation it holds, the chain's state (a
        repeat, another redemption, expired), then the payword's hashes."""
        crash_point("purse.redeem_received")
        bank = self.context.component(BankService)
        body = PurseCommitment.from_statement(request.commitment)
        seller = context.peer.agent_id
        row = await self.context.database.read(lambda c: _chain(c, body.chain))
        stored = _standing(row, body, request, seller=seller, now_ms=bank.book.now_ms())
        if stored is not None:
            return RedeemAnswer(redeemed=stored, bank_certificate=self.context.certificate)
        await self._check(body, request)
        crash_point("purse.redeem_checked")
        outcome = await self.context.database.transaction(lambda c: redeem_chain(
            bank.book, c, request, body, seller=seller))
        crash_point("purse.redeem_committed")
        return RedeemAnswer(redeemed=outcome.statement, bank_certificate=self.context.certificate)

    async def _check(self, body: PurseCommitment, request: RedeemRequest) -> None:
        """The payword's hashes, one check of a chain at a time; a bad one counted,
        and past ``MAX_BAD_PAYWORDS`` no more hashing for the chain (BadPayword)."""
        chain = body.chain
        lock = self._checking.setdefault(chain, trio.Lock())
        try:
            async with lock:
                row = await self.context.database.read(lambda c: _chain(c, chain))
                assert row is not None  # _standing found it; chains are never deleted
                if row.bad_tries >= MAX_BAD_PAYWORDS:
                    raise BadPayword(f"this chain's redemption presented {row.bad_tries} bad "
                                     "paywords: no more are checked",
                                     detail={"index": request.index, "tries": row.bad_tries})
                try:
                    if request.index > _THREAD_HASHES and request.index <= body.length:
                        await trio.to_thread.run_sync(lambda: check_redemption(
                            body, index=request.index, payword=request.payword))
                    else:
                        check_redemption(body, index=request.index, payword=request.payword)
                except BadPayword:
                    if request.index < 1:
                        raise  # refused before any hash: not counted
                    await self.context.database.transaction(lambda c: c.execute(
                        "UPDATE bank_purse_chains SET bad_tries = bad_tries + 1"
                        " WHERE chain = ?", (chain,)))
                    raise
        finally:
            if not lock.locked() and self._checking.get(chain) is lock:
                del self._checking[chain]

    @handles(PURSE_STATUS)
    async def status(self, context: Any, request: StatusRequest) -> StatusAnswer:
        """A chain's buyer or seller only: to anyone else it is unknown. Changes
        nothing."""
        requester = context.peer.agent_id
        row = await self.context.database.read(lambda c: _chain(c, request.chain))
        if row is None or requester not in (row.buyer, row.seller):
            raise _unknown(request.chain)
        return StatusAnswer(chain=request.chain, state=row.state,
                            reservation=Statement.from_bytes(row.reservation),
                            bank_certificate=self.context.certificate,
                            redeemed=None if row.redeemed is None
                            else Statement.from_bytes(row.redeemed))


def _unknown(chain: bytes) -> UnknownChain:
    return UnknownChain("no chain with that id at this bank for you",
                        detail={"chain": chain.hex()})


def _standing(row: _Chain | None, body: PurseCommitment, request: RedeemRequest, *,
              seller: str, now_ms: int) -> Statement | None:
    """The checks of a redemption before its payword's: the stored ``purse.redeemed``
    for the same redemption again, None for one to apply.

    Raises: UnknownChain, BadCommitment, BadRequest (field ``reservation``),
    AlreadyRedeemed, PurseExpired."""
    if row is None or row.seller != seller:
        raise _unknown(body.chain)
    if request.commitment.digest != Statement.from_bytes(row.commitment).digest:
        raise BadCommitment("not the commitment this bank reserved for the chain",
                            detail={"type": body.TYPE, "field": "commitment"})
    if request.reservation.digest != Statement.from_bytes(row.reservation).digest:
        raise BadRequest("not the reservation this bank signed for the chain",
                         detail={"type": "bank.purse_redeem", "field": "reservation"})
    if row.state == "redeemed":
        assert row.redeemed is not None
        if (request.index, request.payword) == (row.redeemed_index, row.payword):
            return Statement.from_bytes(row.redeemed)
        raise AlreadyRedeemed(f"the chain was redeemed with payword {row.redeemed_index}",
                              detail={"chain": body.chain.hex(),
                                      "index": row.redeemed_index})
    if row.state == "released" or now_ms > row.expires + REDEEM_GRACE_MS:
        raise PurseExpired(f"the chain expired at {row.expires} (Unix ms) and its grace "
                           "has passed: the reservation goes back to the buyer",
                           detail={"expires": row.expires, "now_ms": now_ms})
    return None


def reserve_chain(book: BankBook, c: sqlite3.Connection, commitment: Statement,
                  body: PurseCommitment, *, key: str,
                  buyer_certificate: x509.Certificate) -> Outcome:
    """Reserve a checked commitment's value, once per (buyer, key) and per chain."""
    replay = book.replay(c, body.buyer, key, "purse_reserve", body.to_body())
    if replay is not None:
        return replay
    if _chain(c, body.chain) is not None:
        raise BadCommitment("a chain with this id was reserved before",
                            detail={"type": body.TYPE, "field": "chain"})
    _ledger.account(c, body.seller, body.unit.currency)  # the seller can be paid
    _ledger.open_account(c, RESERVED, body.unit.currency)
    entry = _ledger.move(c, body.buyer, RESERVED, body.value, kind="purse.reserved",
                         time_ms=book.now_ms(), reference=commitment.digest)
    reservation = book.sign(*typed(reservation_of(commitment, body, entry)))
    c.execute("INSERT INTO bank_purse_chains (chain, buyer, seller, currency, unit, length,"
              " expires, commitment, buyer_certificate, reservation, state, updated_ms)"
              " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'reserved', ?)",
              (body.chain, body.buyer, body.seller, body.unit.currency,
               body.unit.minor_units, body.length, body.expires, commitment.to_bytes(),
               certificate_der(buyer_certificate), reservation.to_bytes(), book.now_ms()))
    book.store(c, body.buyer, key, "purse_reserve", body.to_body(), reservation)
    book.archive(c, body.buyer, commitment, reservation, buyer_certificate)
    crash_point("purse.applied")  # all written, not committed
    return Outcome(reservation, True)


def redeem_chain(book: BankBook, c: sqlite3.Connection, request: RedeemRequest,
                 body: PurseCommitment, *, seller: str) -> Outcome:
    """Pay a redemption whose payword was checked: the state checked again (another
    redemption may have committed meanwhile), the seller paid, the rest returned."""
    stored = _standing(_chain(c, body.chain), body, request, seller=seller, now_ms=book.now_ms())
    if stored is not None:
        return Outcome(stored, False)
    paid = body.worth(request.index)
    returned = body.worth(body.length - request.index)
    reference = request.commitment.digest
    entry = _ledger.move(c, RESERVED, body.seller, paid, kind="purse.redeemed",
                         time_ms=book.now_ms(), reference=reference)
    if returned.minor_units:
        _ledger.move(c, RESERVED, body.buyer, returned, kind="purse.returned",
                     time_ms=book.now_ms(), reference=reference)
    redeemed = book.sign(*typed(redeemed_of(request.commitment, body, request.index, entry)))
    c.execute("UPDATE bank_purse_chains SET state = 'redeemed', redeemed_index = ?,"
              " payword = ?, redeemed = ?, updated_ms = ? WHERE chain = ?",
              (request.index, request.payword, redeemed.to_bytes(), book.now_ms(), body.chain))
    book.settled(c, redeemed, payer=body.buyer, payee=body.seller, amount=paid, entry=entry,
                 reference=body.chain, request="purse:" + body.chain.hex())
    # The commitment was archived (received) with the reservation; the redemption
    # is archived in the same transaction (the commitment's digest).
    _archive.append(c, [_archive.entry(redeemed, direction=Direction.SENT, peer=seller,
                                       transaction=reference.hex(),
                                       certificate=book.certificate)],
                    now_ms=book.now_ms())
    crash_point("purse.redeem_applied")
    return Outcome(redeemed, True)


def release_expired(book: BankBook, c: sqlite3.Connection, *, now_ms: int) -> int:
    """Return to their buyers up to ``SWEEP_BATCH`` reservations whose redemption
    grace ended before ``now_ms``; how many."""
    rows = c.execute("SELECT chain, buyer, currency, unit, length, commitment"
                     " FROM bank_purse_chains WHERE state = 'reserved' AND expires < ?"
                     " ORDER BY expires LIMIT ?",
                     (now_ms - REDEEM_GRACE_MS, SWEEP_BATCH)).fetchall()
    for chain, buyer, currency, unit, length, commitment in rows:
        _ledger.move(c, RESERVED, buyer, Amount(currency, unit * length),
                     kind="purse.released", time_ms=now_ms,
                     reference=Statement.from_bytes(commitment).digest)
        c.execute("UPDATE bank_purse_chains SET state = 'released', updated_ms = ?"
                  " WHERE chain = ?", (now_ms, chain))
    return len(rows)
