"""The seller's side of a fair purchase: ``fair.fetch`` and ``fair.release``
(protocol.md 10.5, 10.6).

Theory of operation. A fair purchase is a commerce purchase (``commerce.order`` and
``payment.accept`` as ever, ``Sales``) whose goods the buyer takes, before paying,
encrypted under a fresh key escrowed for the notary: ``fair.fetch`` answers the
order's ``fair.delivery`` (signed) and the ciphertext, made once per order and kept
(``fair_sales``, the ``FairSeller`` machine's record, the delivery archived in the
same commit) before it is answered. Once the sale is paid, ``fair.release`` with the
payment's settlement (the one ``payment.accept`` stored for the sale) answers the
key; the machine is stored PAID, then RELEASED, before the key leaves.

The notary is the seller's ``[fairexchange] notary`` (default ``notary``); the buyer
refuses a delivery through a notary it does not accept.

Crash points (``SEMPER_CRASH_AT``): ``fair.seller.fetched`` (the delivery committed,
before it is answered), ``fair.seller.accepted`` (in ``payment.accept``, roles/seller.py:
the payment module accepted, a cheque deposited and cleared, before the sale is
stored paid: the buyer is answered no settlement), ``fair.seller.paid`` (the
payment checked and the sale stored PAID, before the key is released: the seller
that takes the money and goes silent), ``fair.seller.released`` (RELEASED committed,
before the key is answered).
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Final

import trio

from semper.agents.components._archive import RECORD_OVERHEAD, append, entry, peer_usage
from semper.agents.components._escrow_keys import EscrowKeys, default_notary, notary_escrow_key
from semper.agents.components._evidence import QuotaExceeded
from semper.agents.runtime._component import Component, handles
from semper.agents.runtime._faults import crash_point
from semper.services.commerce import Order, UnknownOffer, UnknownOrder
from semper.services.fairexchange import (
    FAIR_DELIVERY_TYPE,
    FAIR_FETCH,
    FAIR_RELEASE,
    FairSeller,
    FairState,
    KeyGiven,
    Paid,
    prepare_goods,
)
from semper.services.fairexchange._errors import BadPayment
from semper.services.fairexchange._fairpurchase import SealedWire
from semper.services.fairexchange._mail import KeyWire
from semper.services.payment import PaymentResult
from semper.services.statements import Statement, canonical_decode, canonical_encode

__all__ = ["MIGRATIONS", "FairSales"]

MIGRATIONS: Final = {
    "fair_sales": [
        "CREATE TABLE fair_sales ("
        " order_digest BLOB PRIMARY KEY, buyer TEXT NOT NULL, state TEXT NOT NULL,"
        " machine BLOB NOT NULL, updated_ms INTEGER NOT NULL) STRICT"
    ],
}


class FairSales(Component):
    """``fair.fetch`` and ``fair.release`` of a seller (see the module docstring)."""

    name = "fair_sales"
    requires = (EscrowKeys,)

    def __init__(self, context: Any) -> None:
        super().__init__(context)
        self._locks: dict[bytes, tuple[trio.Lock, list[int]]] = {}

    def migrations(self) -> Any:
        return MIGRATIONS

    @property
    def sales(self) -> Any:
        """The seller's ``Sales`` (``commerce``) component, whose sales these are."""
        for component in self.context.agent.components.values():
            if component.name == "commerce":
                return component
        raise UnknownOrder("this agent sells nothing", detail={})

    @handles(FAIR_FETCH)
    async def fetch(self, request: Any, body: Any) -> SealedWire:
        buyer = request.peer.agent_id
        async with self._lock(body.order):
            sale = await self.sales._sale_of(body.order, buyer)
            machine = await self._load(body.order)
            if machine is None:
                assert sale.order is not None
                machine = await self._offer(sale.order, buyer, request.peer.certificate)
                crash_point("fair.seller.fetched")
        record = machine.to_record()
        return SealedWire(delivery=Statement.from_wire(record["delivery"]),
                          ciphertext=record["ciphertext"])

    async def _offer(self, order: Statement, buyer: str, certificate: Any) -> FairSeller:
        """A new delivery for ``order``: the goods sealed, the key escrowed, the
        delivery signed, kept and archived in one commit."""
        terms = Order.from_statement(order)
        sold = terms.offer_terms()
        item = self.sales.items.get(sold.sku)
        if item is None or item.content_digest != sold.content_digest:
            raise UnknownOffer(f"the goods sold as {sold.sku!r} are no longer held here",
                               detail={"sku": sold.sku})
        if item.stream is not None:  # never sealed whole: it goes chunk by chunk
            raise UnknownOffer(f"{sold.sku!r} is streamed on a delivery channel, not sold "
                               "by fair exchange", detail={"sku": sold.sku})
        notary = default_notary(self.context.config)
        escrow_key = await notary_escrow_key(self.context, notary)
        key = os.urandom(32)
        delivery_body, ciphertext = prepare_goods(
            item.goods, order=order, notary=notary, escrow_key=escrow_key.public_key(),
            key=key, nonce=os.urandom(12))
        delivery = self.context.sign(FAIR_DELIVERY_TYPE, delivery_body.to_body())
        machine = FairSeller(delivery=delivery, ciphertext=ciphertext, key=key)
        await self._save(order.digest, buyer, machine, entries=[entry(
            delivery, direction="sent", peer=buyer, transaction=order.digest.hex(),
            certificate=self.context.certificate)], quota=buyer)
        return machine

    @handles(FAIR_RELEASE)
    async def release(self, request: Any, body: Any) -> KeyWire:
        buyer = request.peer.agent_id
        async with self._lock(body.order):
            await self.sales._sale_of(body.order, buyer)
            machine = await self._load(body.order)
            if machine is None:
                raise UnknownOrder("no fair delivery was made for this order",
                                   detail={"order": body.order})
            stored = await self.context.database.read(lambda c: c.execute(
                "SELECT payment FROM commerce_sales WHERE order_digest = ?",
                (body.order,)).fetchone())
            if stored is None or stored[0] is None:
                raise BadPayment("the order is not paid", detail={"reason": "unpaid"})
            paid = PaymentResult.from_wire(canonical_decode(stored[0]))
            if paid.settlement.digest != body.payment.digest:
                raise BadPayment("that is not the payment that settled this order",
                                 detail={"reason": "settlement"})
            if machine.state is FairState.OFFERED:
                machine.receive(Paid(payment=body.payment), now_ms=self.context.now_ms())
                await self._save(body.order, buyer, machine)
                crash_point("fair.seller.paid")
            if machine.state is FairState.PAID:
                machine.receive(KeyGiven(), now_ms=self.context.now_ms())
                await self._save(body.order, buyer, machine)
                crash_point("fair.seller.released")
        return KeyWire(exchange=body.order, key=machine.to_record()["key"])

    # -- persistence ------------------------------------------------------------------

    @asynccontextmanager
    async def _lock(self, order: bytes) -> AsyncIterator[None]:
        lock, users = self._locks.setdefault(order, (trio.Lock(), [0]))
        users[0] += 1
        try:
            async with lock:
                yield
        finally:
            users[0] -= 1
            if not users[0]:
                del self._locks[order]

    async def _load(self, order: bytes) -> FairSeller | None:
        row = await self.context.database.read(lambda c: c.execute(
            "SELECT machine FROM fair_sales WHERE order_digest = ?", (order,)).fetchone())
        return None if row is None else FairSeller.from_record(canonical_decode(row[0]))

    async def _save(self, order: bytes, buyer: str, machine: FairSeller, *,
                    entries: list[Any] = (),  # type: ignore[assignment]
                    quota: str | None = None) -> None:
        """Write the sale's machine and ``entries`` in one commit. With ``quota`` (the
        buyer), a new delivery is refused (``evidence.quota_exceeded``) when what we
        hold for the buyer (its archive usage and its deliveries' ciphertexts) would
        pass ``[evidence] peer_quota_bytes``: each costs it an order, and us the goods."""
        encoded = canonical_encode(machine.to_record())
        row = (order, buyer, machine.state.value, encoded, self.context.now_ms())
        limit = self.context.config.evidence_peer_quota
        cost = len(encoded) + sum(len(e.statement.to_bytes()) + RECORD_OVERHEAD
                                  for e in entries)

        def write(c: sqlite3.Connection) -> None:
            if quota is not None:
                records, size = peer_usage(c, quota)
                held = c.execute("SELECT coalesce(sum(length(machine)), 0) FROM fair_sales"
                                 " WHERE buyer = ?", (quota,)).fetchone()[0]
                used = size + records * RECORD_OVERHEAD + held
                if used + cost > limit:
                    raise QuotaExceeded(f"{quota!r} has used {used} of its {limit} bytes "
                                        "of our storage: no new delivery",
                                        detail={"used": used, "quota": limit, "cost": cost})
            c.execute("INSERT INTO fair_sales (order_digest, buyer, state, machine, updated_ms)"
                      " VALUES (?, ?, ?, ?, ?) ON CONFLICT (order_digest) DO UPDATE SET"
                      " state = excluded.state, machine = excluded.machine,"
                      " updated_ms = excluded.updated_ms", row)
            if entries:
                append(c, entries, now_ms=self.context.now_ms())

        await self.context.database.transaction(write)
