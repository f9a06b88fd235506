"""The seller (role ``seller``): a catalogue of signed offers, orders, payment,
delivery, receipts and refunds.

Each sale is a ``services.commerce.Sale`` machine persisted in the seller's SQLite
after every step (``commerce_sales``), driven under a per-order lock, so a retried
request finds the sale where the last one left it and the machine never sees an
event twice. Ops (the ``commerce`` and ``payment`` services, docs/protocol.md):

    commerce.catalogue {}                       -> {offers: [offer], certificate: DER}
    commerce.order     {order}                  -> {order: digest, amount, payment_module}
    payment.capabilities {}                     -> Capabilities
    payment.accept     {module, reference, proof} -> PaymentResult   (reference = order)
    commerce.fetch     {order: digest}          -> {delivery, goods, receipt}
    commerce.refund    {order: digest, reason, amount} -> {note, refund: RefundResult}

A payment handed over that does not settle its sale is not kept: money an installed
instrument says already moved to us from the buyer for one of its orders (a bank
transfer: ``PaymentModule.received``), or that the module's accept moved (a cheque
deposited, ecash deposited, a card captured) before the sale refused it, is refunded
at once and recorded in ``commerce_returns`` with the refusal that said why
(docs/protocol.md 8.3); handed over again, it gets that refusal again. Refunds
follow the offer's signed ``refund_days``; a refunded order's goods are not
delivered again.
"""

from __future__ import annotations

import datetime as dt
import logging
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any, Final

import trio
from cryptography.hazmat.primitives.serialization import Encoding

from semper.agents.components._archive import RECORD_OVERHEAD, append, entry, peer_usage
from semper.agents.components._catalogue import CatalogueItem, load_catalogue
from semper.agents.components._evidence import QuotaExceeded
from semper.agents.components._payments import (
    AgentPaymentContext,
    offered_modules,
    payment_manager,
)
from semper.agents.runtime._component import Component, Context
from semper.agents.runtime._config import ConfigError
from semper.agents.runtime._faults import crash_point
from semper.agents.runtime._roles import Role
from semper.services import ServiceError
from semper.services._ops import Op
from semper.services.archive import Direction
from semper.services.commerce import (
    AlreadyPaid,
    Catalogue,
    CatalogueRequest,
    CommerceError,
    Deliver,
    Delivery,
    FetchRequest,
    GoodsDelivered,
    IssueReceipt,
    IssueRefundNote,
    Offer,
    Order,
    OrderReceived,
    OrderRequest,
    PaymentConfirmed,
    ReceiptIssued,
    Refund,
    RefundConfirmed,
    Refunded,
    RefundNoteIssued,
    RefundRequested,
    Sale,
    SaleState,
    UnknownOffer,
    UnknownOrder,
    UnsupportedPayment,
    check_refund_window,
)
from semper.services.commerce import Archive as ArchiveDecision
from semper.services.commerce import RefundRequest as CommerceRefundRequest
from semper.services.commerce import _ops as commerce_ops
from semper.services.delivery import StreamInfo
from semper.services.payment import (
    REFUND_ORDER,
    AcceptRequest,
    BadRequest,
    CapabilitiesRequest,
    Invoice,
    PaymentResult,
    refund_payment,
)
from semper.services.payment import _ops as payment_ops
from semper.services.statements import (
    Statement,
    WrongSigner,
    canonical_decode,
    canonical_encode,
    verify_statement,
)
from semper.transport import RemoteError

__all__ = ["Payee", "Sales", "Seller"]

log = logging.getLogger("semper.seller")

MIGRATIONS = {
    "commerce_sales": [
        "CREATE TABLE commerce_sales ("
        " order_digest BLOB PRIMARY KEY, buyer TEXT NOT NULL, state TEXT NOT NULL,"
        " machine BLOB NOT NULL, payment BLOB, refund BLOB, updated_ms INTEGER NOT NULL)",
        # 2: transfers handed over for an order and given back instead of used: by the
        # digest of the bank's confirmation, with the refusal that said why.
        "CREATE TABLE commerce_returns ("
        " settlement BLOB PRIMARY KEY, order_digest BLOB NOT NULL, buyer TEXT NOT NULL,"
        " currency TEXT NOT NULL, amount INTEGER NOT NULL, code TEXT NOT NULL,"
        " refusal BLOB NOT NULL, state TEXT NOT NULL, refund BLOB, result BLOB,"
        " updated_ms INTEGER NOT NULL) STRICT",
        # 3: the proof handed over (TransferProof wire), so that a return the bank did
        # not apply at once is retried by the seller itself.
        "ALTER TABLE commerce_returns ADD COLUMN proof BLOB",
        # 4: sales as a STRICT table too (payment and refund evidence live in it):
        # a value of another type can never be stored.
        "ALTER TABLE commerce_sales RENAME TO commerce_sales_old;"
        "CREATE TABLE commerce_sales ("
        " order_digest BLOB PRIMARY KEY, buyer TEXT NOT NULL, state TEXT NOT NULL,"
        " machine BLOB NOT NULL, payment BLOB, refund BLOB, updated_ms INTEGER NOT NULL)"
        " STRICT;"
        "INSERT INTO commerce_sales SELECT order_digest, buyer, state, machine, payment,"
        " refund, updated_ms FROM commerce_sales_old;"
        "DROP TABLE commerce_sales_old",
        # 5: the payment given back (PaymentResult wire, as its instrument read it
        # from the proof), so that any instrument's is refunded the same way; rows
        # from before hold only the proof (a transfer's), read back by the modules.
        # By buyer too: each payment handed over asks whether its buyer has one.
        "ALTER TABLE commerce_returns ADD COLUMN paid BLOB;"
        "CREATE INDEX commerce_returns_by_buyer ON commerce_returns (buyer)",
    ],
}

#: How often a running seller retries the returns its bank did not apply yet.
RETURN_RETRY_S = 60.0

_DAY_MS = 86_400_000
#: Sales whose last saved machine a seller keeps in memory (see ``Seller._load``).
_MAX_SALES = 4096



class Sales(Component):
    """``commerce.*``: the catalogue, orders, delivery and refunds of a seller."""

    name = "commerce"

    def _ms(self) -> int:
        """Now, in Unix ms, by the agent's one clock."""
        return self.agent.clock.now_ms()

    def _now(self) -> dt.datetime:
        return self.agent.context.now()

    def __init__(self, context: Context) -> None:
        super().__init__(context)
        self.agent = agent = context.agent
        path = agent.config.catalogue
        self.items: dict[str, CatalogueItem] = (
            {item.sku: item for item in load_catalogue(path)} if path else {})
        for item in self.items.values():  # each as the wire takes it, or no start
            try:
                self._offer_body(item, 0)
            except CommerceError as exc:
                raise ConfigError(f"{path}: offer {item.sku!r} is not an offer a buyer "
                                  f"accepts: {exc.message}") from None
        self._catalogue: Catalogue | None = None
        #: When the catalogue is re-signed (Unix ms), and its ``commerce.catalogue``
        #: answer: both made once per version, not per request.
        self._renew_at = 0
        self._catalogue_answer: dict[str, Any] = {}
        self._locks: dict[bytes, tuple[trio.Lock, list[int]]] = {}
        #: order digest -> (its row's machine as we last wrote it, the Sale it is): a
        #: sale's next step takes it instead of decoding the row again (see ``_load``).
        self._sales: dict[bytes, tuple[bytes, Sale]] = {}
        self.payments = payment_manager(agent)
        #: Read once (installed entry points, picked up on restart): reading them cost
        #: ~5 ms, and every order asked.
        self.payment_modules = offered_modules(agent)

    def migrations(self) -> dict[str, Any]:
        return dict(MIGRATIONS)

    def handlers(self) -> Iterator[tuple[Op, Callable[..., Awaitable[Any]]]]:
        yield commerce_ops.CATALOGUE, self.catalogue
        yield commerce_ops.ORDER, self.order
        yield commerce_ops.FETCH, self.fetch
        yield commerce_ops.REFUND, self.refund

    # -- the catalogue --------------------------------------------------------------

    def current_catalogue(self) -> Catalogue:
        """Signed offers, re-signed when the oldest has less than a day to run."""
        now = self._ms()
        cat = self._catalogue
        if cat is None or now >= self._renew_at:
            bodies = [self._offer_body(item, now) for item in self.items.values()]
            self._catalogue = cat = Catalogue(offers=tuple(self._sign(b) for b in bodies))
            self._renew_at = min((b.valid_until for b in bodies), default=now) - _DAY_MS
            self._catalogue_answer = {
                "offers": [offer.to_wire() for offer in cat.offers],
                "certificate": self.agent.credentials.identity.certificate.public_bytes(
                    Encoding.DER)}
        return cat

    def _offer_body(self, item: CatalogueItem, now: int) -> Offer:
        return Offer(seller=self.agent.id, sku=item.sku, title=item.title, price=item.price,
                     terms=item.terms, content_digest=item.content_digest,
                     valid_until=now + item.valid_days * _DAY_MS,
                     refund_days=item.refund_days, stream=_stream_info(item))

    async def catalogue(self, context: Any, request: CatalogueRequest) -> dict[str, Any]:
        self.current_catalogue()
        return self._catalogue_answer

    # -- orders ---------------------------------------------------------------------

    async def order(self, context: Any, request: OrderRequest) -> dict[str, Any]:
        order = request.order
        self._verify(order, context.peer)
        named = order.body.get("buyer")
        if isinstance(named, str) and named != context.peer.agent_id:
            # Signed by the peer, but in another buyer's name: the signer expected is
            # the order's buyer (docs/protocol.md 9.3).
            raise WrongSigner(f"the order names {named!r} as its buyer; "
                              f"{context.peer.agent_id!r} signed it",
                              detail={"expected": named, "signer": context.peer.agent_id})
        digest = order.digest  # a canonical encoding and a hash: once
        async with self._lock(digest):
            sale = await self._load(digest)
            if sale is None:
                sale = Sale(seller=self.agent.id,
                            certificate=self.agent.credentials.identity.certificate,
                            payment_modules=self.payment_modules)
                decisions = sale.receive(OrderReceived(order=order,
                                                       catalogue=self.current_catalogue()),
                                         now_ms=self._ms())
                await self._archive_within_quota(decisions, context.peer, digest, save=sale)
        terms = _terms(sale)
        return {"order": digest, "amount": terms.amount.to_wire(),
                "payment_module": terms.payment_module}

    async def _archive_within_quota(self, decisions: list[Any], peer: Any, order: bytes, *,
                                    save: Sale) -> None:
        """Archive a new order as ``_archive`` does, counted against the buyer's
        ``[evidence] peer_quota_bytes`` inside the commit: an order costs the buyer
        one signature, so unbounded orders would grow our archive without bound
        (``evidence.quota_exceeded``, docs/protocol.md 9.3). The sale ``save`` is
        written in the same commit (one commit per order)."""
        entries = self._entries(decisions, peer, order)
        save_sale, machine = self._writer(save, peer.agent_id)
        quota = self.agent.config.evidence_peer_quota
        cost = sum(len(e.statement.to_bytes()) + RECORD_OVERHEAD for e in entries)

        def write(c: sqlite3.Connection) -> None:
            records, size = peer_usage(c, peer.agent_id)
            used = size + records * RECORD_OVERHEAD
            if used + cost > quota:
                raise QuotaExceeded(f"{peer.agent_id!r} has used {used} of its {quota} bytes "
                                    "of our archive: no new orders",
                                    detail={"used": used, "quota": quota, "cost": cost})
            append(c, entries, now_ms=self._ms())
            save_sale(c)

        await self.agent.database.transaction(write)
        self._keep(order, machine, save)

    def _verify(self, statement: Statement, peer: Any) -> None:
        verify_statement(statement, certificate=peer.certificate,
                         root=self.agent.credentials.root, crl=self.agent.crl, now=self._now(),
                         expected_signer=peer.agent_id)

    # -- payment ----------------------------------------------------------------------

    async def capabilities(self, context: Any, request: CapabilitiesRequest
                           ) -> dict[str, Any]:
        # Our bank, so a buyer learns on the wire which bank to pay through; what we
        # take from this buyer, by the market's policy and ours (protocol.md 8.9).
        return {**self.payments.answer_capabilities(payer=context.peer),
                "bank": self.agent.config.payment.bank or "bank"}

    async def accept(self, context: Any, request: AcceptRequest) -> dict[str, Any]:
        buyer = context.peer.agent_id
        async with self._lock(request.reference):
            # One read asks both whether this buyer was ever given money back and for
            # the sale's row: a read costs ~25 us of CPU before it reads anything (its
            # snapshot: WAL locks and pages read again after every commit).
            returned, row = await self.agent.database.read(
                lambda c: _returns_and_row(c, buyer, request.reference))
            if returned:
                await self._returned_before(request, buyer, known=True)
                row = _UNREAD  # a return may have moved on meanwhile: read it again
            settled: list[PaymentResult] = []  # what the module's accept settled
            try:
                # Inside: money citing no order of this buyer's (one we lost, a
                # mistyped reference, another buyer's order) reached us all the same.
                sale, (stored, _) = await self._paid_sale_of(request.reference, buyer,
                                                             row=row)
                answer = await self._settle(sale, request, context.peer, stored, settled,
                                            returns=returned)
            except ServiceError as exc:
                # Shielded once money moved in our accept: nothing else gives it back.
                with trio.CancelScope(shield=bool(settled)):
                    await self._give_back(request, buyer, exc,
                                          settled[0] if settled else None)
                raise
        return answer

    async def _settle(self, sale: Sale, request: AcceptRequest, peer: Any,
                      stored: bytes | None, settled: list[PaymentResult], *,
                      returns: bool = False) -> dict[str, Any]:
        """Check the payment against the sale and settle it, or raise why not;
        ``stored`` is the payment the sale's row holds (read with the sale). What the
        module's accept settled is put in ``settled`` before the sale takes it, so
        that a refusal after gives it back; ``returns``: the buyer was given money
        back before (a settlement of ours given back never settles the sale)."""
        buyer = peer.agent_id
        if stored is not None:
            paid = PaymentResult.from_wire(canonical_decode(stored))
            if await self._same_payment(sale, paid, request, buyer):
                return paid.to_wire()  # a retry: the same answer, nothing settled again
            raise AlreadyPaid(f"order {request.reference.hex()[:16]} was paid already, "
                              "by another payment", detail={"state": sale.state.value})
        terms = _terms(sale)
        if request.module != terms.payment_module:
            raise UnsupportedPayment(
                f"the order is to be paid by {terms.payment_module}, not {request.module}",
                detail={"expected": terms.payment_module, "module": request.module})
        sold = terms.offer_terms()
        item = self.items.get(sold.sku)
        # Withdrawn, or its goods changed, since the order: nothing to deliver, refused
        # before the money moves (after, the delivery check refused the sale, and an
        # ecash deposit or a card capture made in ``accept`` was given back: two bank
        # round trips for nothing).
        if item is None or item.content_digest != sold.content_digest:
            raise UnknownOffer(f"{sold.sku!r} is no longer sold here as ordered",
                               detail={"sku": sold.sku})
        ctx = _SettleContext(self.agent, request.reference.hex(), buyer)
        # Shielded: once the bank may move the money (a cheque's deposit), the step
        # runs to its end (bounded by the request timeout) even if the buyer's channel
        # closes meanwhile (revoked, or a write deadline): cancelled in between, the
        # money stayed with us and the sale unpaid, and a revoked buyer never retries.
        with trio.CancelScope(shield=True):
            try:
                # The proof received and matched to the sale, nothing deposited yet.
                crash_point("payment.seller.received")
                result = await self.payments.accept(
                    ctx, request, invoice=Invoice(amount=terms.amount,
                                                  reference=request.reference, payer=buyer),
                    payer=peer)
                if returns:  # the bank answers a deposit or capture again: given back?
                    await self._refused_again(result.settlement.digest)
                settled.append(result)
                # The money moved (a cheque deposited), the sale not yet stored paid.
                crash_point("fair.seller.accepted")
                decisions = sale.receive(PaymentConfirmed(
                    payment=result.settlement.digest, payment_type=result.settlement.type,
                    amount=result.amount), now_ms=self._ms())
                entries = self._fulfil(sale, decisions, peer, request.reference)
            except BaseException:
                if ctx.received:  # what the module received stays evidence regardless
                    await self.agent.archive.record_all(ctx.received)
                raise
            await self._save(sale, buyer, payment=result, entries=ctx.received + entries)
        return result.to_wire()

    async def _same_payment(self, sale: Sale | None, paid: PaymentResult,
                            request: AcceptRequest, buyer: str, *, offline: bool = False
                            ) -> bool:
        """Whether ``request`` hands over again the payment that settled the sale. The
        instrument says (``same_payment``), or else accepts the proof again: the
        bank answers a repeat with the statement it gave first (and refuses a second
        payment for the same order), so the same settlement means the same payment.
        ``offline``: the instrument's word only (no ``sale``; not accepted again)."""
        if request.module != paid.module:
            return False
        try:
            module = self.payments.module(paid.module)
        except ServiceError:  # no longer installed: not a payment we can recognise
            return False
        same = getattr(module, "same_payment", None)
        if same is not None:
            return bool(same(request.proof, paid))
        if offline or sale is None:
            return False
        ctx = AgentPaymentContext(self.agent, request.reference.hex(), buyer)
        invoice = Invoice(amount=_terms(sale).amount, reference=request.reference, payer=buyer)
        try:
            again = await module.accept(ctx, request.proof, invoice=invoice)
        except (ServiceError, RemoteError):
            return False
        return again.settlement == paid.settlement

    # -- payments not used: given back ----------------------------------------------

    async def _returned_before(self, request: AcceptRequest, buyer: str, *,
                               known: bool = False) -> None:
        """Money refused once is never used (it is given back, or being given back:
        try again now): its first refusal again. Only a buyer we gave money back to
        has its proof checked (``received``: a signature), not every payment
        (``known``: the caller read that it has a return)."""
        if not known and await self.agent.database.read(lambda c: c.execute(
                "SELECT 1 FROM commerce_returns WHERE buyer = ? LIMIT 1",
                (buyer,)).fetchone()) is None:
            return
        ctx = AgentPaymentContext(self.agent, request.reference.hex(), buyer)
        moved = self.payments.received(ctx, request.proof, payer=buyer,
                                       reference=request.reference)
        if moved is not None:
            await self._refused_again(moved.settlement.digest)
        # Settled in our accept and given back (a cheque, ecash, a card): the same
        # payment handed over again, as its instrument tells offline (``same_payment``).
        for digest, paid in await self.agent.database.read(lambda c: c.execute(
                "SELECT settlement, paid FROM commerce_returns WHERE order_digest = ?"
                " AND buyer = ? AND paid IS NOT NULL", (request.reference, buyer)).fetchall()):
            given = PaymentResult.from_wire(canonical_decode(paid))
            if given.module == request.module and await self._same_payment(
                    None, given, request, buyer, offline=True):
                await self._refused_again(digest)

    async def _refused_again(self, digest: bytes) -> None:
        """Raise the first refusal of payment ``digest`` if it was given back (or is
        being: tried again now); return if it never was."""
        def refusal_of(c: sqlite3.Connection) -> Any:
            return c.execute("SELECT refusal, state FROM commerce_returns"
                             " WHERE settlement = ?", (digest,)).fetchone()

        row = await self.agent.database.read(refusal_of)
        if row is None:
            return
        if row[1] != "returned":
            await self._return(digest)
            row = await self.agent.database.read(refusal_of)
        refusal = canonical_decode(row[0])
        raise _refusal(refusal["code"], refusal["message"], refusal["detail"])

    async def _give_back(self, request: AcceptRequest, buyer: str,
                         refusal: ServiceError, settled: PaymentResult | None = None
                         ) -> None:
        """Refund money that ``request``'s proof shows already moved to us from
        ``buyer`` for this order (an installed instrument says: ``received``, under
        whatever module it came), or that the module's accept ``settled`` (a cheque
        deposited, ecash deposited, a card captured) before the sale failed, and that
        ``refusal`` keeps from settling it, and say so in the refusal's ``returned``.
        Anything else handed over is not money for us."""
        ctx = AgentPaymentContext(self.agent, request.reference.hex(), buyer)
        moved = settled or self.payments.received(ctx, request.proof, payer=buyer,
                                                  reference=request.reference)
        if moved is None:
            return
        digest = moved.settlement.digest
        stored = None if settled is not None else await self.agent.database.read(
            lambda c: c.execute("SELECT payment FROM commerce_sales WHERE order_digest = ?",
                                (request.reference,)).fetchone())
        if stored is not None and stored[0] is not None and PaymentResult.from_wire(
                canonical_decode(stored[0])).settlement.digest == digest:
            return  # the payment that settled this sale, handed over again: it is used
        why = canonical_encode({"code": refusal.code, "message": refusal.message[:512],
                                "detail": refusal.detail})

        def note(c: sqlite3.Connection) -> None:
            c.execute("INSERT OR IGNORE INTO commerce_returns (settlement, order_digest, buyer,"
                      " currency, amount, code, refusal, state, updated_ms, proof, paid)"
                      " VALUES (?, ?, ?, ?, ?, ?, ?, 'returning', ?, ?, ?)",
                      (digest, request.reference, buyer, moved.amount.currency,
                       moved.amount.minor_units, refusal.code, why, self._ms(),
                       canonical_encode(request.proof), canonical_encode(moved.to_wire())))

        await self.agent.database.transaction(note)
        returned = await self._return(digest)
        if returned is not None:
            refusal.detail["returned"] = returned

    async def _return(self, digest: bytes) -> dict[str, Any] | None:
        """Refund the recorded payment ``digest`` in full (idempotent at the bank: one
        key per payment, the reason of its first refusal) and mark it returned.
        Returns the ``returned`` detail, or None when the bank did not apply it (kept
        as 'returning': retried by ``retry_returns`` and when handed over again)."""
        row = await self.agent.database.read(lambda c: c.execute(
            "SELECT order_digest, buyer, code, refusal, proof, paid FROM commerce_returns"
            " WHERE settlement = ?", (digest,)).fetchone())
        order, buyer, code, refusal, proof, stored = row
        ctx = AgentPaymentContext(self.agent, order.hex(), buyer)
        if stored is not None:
            paid = PaymentResult.from_wire(canonical_decode(stored))
        else:  # a row written before the payment was kept: rebuilt from its proof
            moved = None if proof is None else self.payments.received(
                ctx, canonical_decode(proof), payer=buyer, reference=order)
            if moved is None or moved.settlement.digest != digest:
                log.warning("cannot read back the payment %s of %s to give it back",
                            digest.hex()[:16], buyer)
                return None
            paid = moved
        try:
            result = await refund_payment(ctx, paid, paid.amount, f"returned: {code}",
                                          "return-" + digest.hex())
        except Exception as exc:  # the bank down or refusing: kept for a retry
            log.warning("could not give back payment %s of %s yet: %s", digest.hex()[:16],
                        buyer, exc)
            return None
        # The bank's own word, so that the buyer need not take ours (it checks it);
        # for ecash a voucher the buyer's wallet redeems (its bank's certificate too).
        returned = {"refund": result.confirmation.digest, "amount": paid.amount.to_wire(),
                    "confirmation": result.confirmation.to_bytes(),
                    "bank_certificate": result.bank_certificate.public_bytes(Encoding.DER)}
        first = canonical_decode(refusal)
        why = canonical_encode({**first, "detail": {**first["detail"], "returned": returned}})
        await self.agent.database.transaction(lambda c: c.execute(
            "UPDATE commerce_returns SET state = 'returned', refund = ?, result = ?,"
            " refusal = ?, updated_ms = ? WHERE settlement = ?",
            (result.confirmation.digest, canonical_encode(result.to_wire()), why, self._ms(),
             digest)))
        return returned

    async def retry_returns(self) -> int:
        """Try again every return the bank has not applied; how many are still due."""
        due = await self.agent.database.read(lambda c: [r[0] for r in c.execute(
            "SELECT settlement FROM commerce_returns WHERE state = 'returning'"
            " AND proof IS NOT NULL ORDER BY updated_ms LIMIT 1000")])
        left = 0
        for digest in due:
            lock_key = await self.agent.database.read(lambda c, d=digest: c.execute(
                "SELECT order_digest FROM commerce_returns WHERE settlement = ?",
                (d,)).fetchone()[0])
            async with self._lock(lock_key):
                if await self._return(digest) is None:
                    left += 1
        return left

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Retry, now and then, the returns the bank did not apply at once."""
        task_status.started()
        while True:
            await trio.sleep(RETURN_RETRY_S)
            try:
                await self.retry_returns()
            except Exception as exc:  # the database busy, a bug: never the agent's end
                log.error("retrying the returns due failed (next try in %g s): %s",
                          RETURN_RETRY_S, exc, exc_info=exc)

    def _fulfil(self, sale: Sale, decisions: list[Any], buyer: Any, order: bytes
                ) -> list[Any]:
        """Sign the delivery and the receipt the machine asks for, in order; returns
        the archive entries to write in the commit that saves the sale."""
        entries: list[Any] = []
        while decisions:
            decision = decisions.pop(0)
            if isinstance(decision, Deliver):
                item = self.items[_terms(sale).offer_terms().sku]
                delivery = self._sign(Delivery(order=decision.order,
                                               content_digest=item.content_digest,
                                               size=len(item.goods)))
                decisions += sale.receive(GoodsDelivered(delivery=delivery, goods=item.goods),
                                          now_ms=self._ms())
            elif isinstance(decision, IssueReceipt):
                receipt = self._sign(decision.receipt)
                decisions += sale.receive(ReceiptIssued(receipt=receipt), now_ms=self._ms())
            else:
                entries += self._entries([decision], buyer, order)
        return entries

    async def fetch(self, context: Any, request: FetchRequest) -> dict[str, Any]:
        sale = await self._sale_of(request.order, context.peer.agent_id)
        if sale.state is SaleState.ORDER_ACCEPTED and _terms(sale).payment_module == "purse":
            # Paid by paywords on the delivery channel: receipted once its chain is
            # redeemed for the whole item (redeemed now if every chunk was paid).
            await self.context.component(DeliverySeller).settle(request.order,
                                                                 context.peer.agent_id)
            sale = await self._sale_of(request.order, context.peer.agent_id)
        if sale.state in (SaleState.REFUNDING, SaleState.REFUND_CONFIRMED, SaleState.REFUNDED):
            raise Refunded("the order was refunded: its goods are not delivered again",
                           detail={"state": sale.state.value})
        if sale.delivery is None or sale.receipt is None:
            by_purse = _terms(sale).payment_module == "purse"
            raise BadRequest("the order is not paid yet" + (
                " (by purse: paid once every chunk's payword is redeemed at the bank)"
                if by_purse else ""), detail={"state": sale.state.value})
        sold = _terms(sale).offer_terms()
        item = self.items.get(sold.sku)
        if item is None or item.content_digest != sold.content_digest:
            # The catalogue changed since the sale: refuse rather than fail, or send
            # other goods than the ones sold (the buyer may ask for a refund).
            raise UnknownOffer(f"the goods sold as {sold.sku!r} are no longer held here",
                               detail={"sku": sold.sku})
        if item.stream is not None:  # streamed: a ticket for the delivery channel
            ticket = await self.context.component(DeliverySeller).ticket_for_paid(
                request.order, context.peer.agent_id, sold.sku, _terms(sale).payment_module,
                sold.stream)  # the map as sold, whatever the item's price is now
            return {"delivery": sale.delivery.to_wire(), "ticket": ticket.to_bytes(),
                    "receipt": sale.receipt.to_wire()}
        return {"delivery": sale.delivery.to_wire(), "goods": item.goods,
                "receipt": sale.receipt.to_wire()}

    # -- refunds ----------------------------------------------------------------------

    async def refund(self, context: Any, request: CommerceRefundRequest) -> dict[str, Any]:
        buyer, order = context.peer.agent_id, request.order
        async with self._lock(order):
            sale, row = await self._paid_sale_of(order, buyer)
            if row[1] is not None:
                return canonical_decode(row[1])  # type: ignore[no-any-return]
            if row[0] is None:
                raise BadRequest("nothing was paid for this order",
                                 detail={"state": sale.state.value})
            paid = PaymentResult.from_wire(canonical_decode(row[0]))
            # The refund policy is the one the seller signed in the offer, judged when the
            # refund was first asked: a retry of one the bank may have applied already
            # (the answer lost) must not be refused for the time the retry took.
            asked_at = await self._refund_asked_at(order)
            check_refund_window(_terms(sale).offer_terms(), paid_at_ms=paid.settlement.issued_at,
                                now_ms=self._ms() if asked_at is None else asked_at)
            decisions = sale.receive(RefundRequested(reason=request.why,
                                                     amount=request.amount), now_ms=self._ms())
            ctx = AgentPaymentContext(self.agent, order.hex(), buyer)
            answer: dict[str, Any] = {}
            # Shielded as in _settle: once the bank may give the money back, the sale
            # records it even if the buyer's channel closes meanwhile.
            with trio.CancelScope(shield=True):
                while decisions:
                    decision = decisions.pop(0)
                    if isinstance(decision, Refund):
                        result = await refund_payment(ctx, paid, decision.amount,
                                                      request.why or "refund",
                                                      "refund-" + order.hex()[:32])
                        answer["refund"] = result.to_wire()
                        decisions += sale.receive(RefundConfirmed(
                            refund=result.confirmation.digest,
                            refund_type=result.confirmation.type, amount=result.amount),
                            now_ms=self._ms())
                    elif isinstance(decision, IssueRefundNote):
                        note = self._sign(decision.note)
                        answer["note"] = note.to_wire()
                        decisions += sale.receive(RefundNoteIssued(note=note), now_ms=self._ms())
                    else:
                        await self._archive([decision], context.peer, order)
                await self._save(sale, buyer, refund=answer)
        if sale.state in (SaleState.REFUNDING, SaleState.REFUND_CONFIRMED, SaleState.REFUNDED):
            self.context.component(DeliverySeller).refunded(order)  # its streams stop
        return answer

    async def _refund_asked_at(self, order: bytes) -> int | None:
        """When we signed our first refund order for ``order`` (Unix ms), if ever: the
        refund was granted then, whatever became of it at the bank."""
        def first(c: sqlite3.Connection) -> int | None:
            times = []
            for (data,) in c.execute("SELECT statement FROM archive_records"
                                     " WHERE txn = ? AND direction = 'sent'", (order.hex(),)):
                statement = Statement.from_bytes(data)
                if statement.type == REFUND_ORDER:
                    times.append(statement.issued_at)
            return min(times, default=None)

        return await self.agent.database.scan(first)  # a buyer may have filed many

    def _sign(self, body: Any) -> Statement:
        return self.agent.evidence.sign(body.TYPE, body.to_body())

    # -- persistence ------------------------------------------------------------------

    @asynccontextmanager
    async def _lock(self, order: bytes) -> AsyncIterator[None]:
        """One step of one sale at a time; the lock lives only while someone holds or
        waits for it, so the table does not grow with the number of orders."""
        lock, users = self._locks.setdefault(order, (trio.Lock(), [0]))
        users[0] += 1
        try:
            async with lock:
                yield
        finally:
            users[0] -= 1
            if not users[0]:
                del self._locks[order]

    async def _sale_of(self, order: bytes, buyer: str) -> Sale:
        return (await self._paid_sale_of(order, buyer))[0]

    async def _paid_sale_of(self, order: bytes, buyer: str, *, row: Any = None
                            ) -> tuple[Sale, tuple[bytes | None, bytes | None]]:
        """The buyer's sale of ``order``, and the payment and refund its row holds:
        one read for the three (a step read the row once more for them), none when
        ``row`` is the row as just read."""
        sale, paid = await self._load_row(order, row=row)
        if sale is None or _terms(sale).buyer != buyer:
            raise UnknownOrder("no such order from you", detail={"order": order})
        return sale, paid

    async def _load(self, order: bytes) -> Sale | None:
        return (await self._load_row(order))[0]

    async def _load_row(self, order: bytes, *, row: Any = None
                        ) -> tuple[Sale | None, tuple[bytes | None, bytes | None]]:
        """The sale of ``order`` as its row holds it, with the row's payment and
        refund (``row``: as just read, ``_UNREAD`` or None: read here). The Sale we
        saved last is taken (out of ``_sales``: the caller may change it) when the
        row is still exactly what we wrote with it; anything else is decoded from the
        row."""
        if row is None or row is _UNREAD:
            row = await self.agent.database.read(lambda c: _sale_row(c, order))
        else:
            row = None if row is _NO_ROW else row
        known = self._sales.pop(order, None)
        if row is None:
            return None, (None, None)
        if known is not None and known[0] == row[0]:
            return known[1], (row[1], row[2])
        return Sale.from_state(canonical_decode(row[0])), (row[1], row[2])

    def _keep(self, order: bytes, machine: bytes, sale: Sale) -> None:
        """Remember ``sale`` as the one whose row is now ``machine`` (bounded)."""
        self._sales.pop(order, None)
        if len(self._sales) >= _MAX_SALES:
            del self._sales[next(iter(self._sales))]
        self._sales[order] = (machine, sale)

    async def _save(self, sale: Sale, buyer: str, *, payment: PaymentResult | None = None,
                    refund: dict[str, Any] | None = None, entries: list[Any] | None = None
                    ) -> None:
        """Write the sale, and ``entries`` into the archive, in one commit."""
        write, machine = self._writer(sale, buyer, payment=payment, refund=refund)

        def both(c: sqlite3.Connection) -> None:
            if entries:
                append(c, entries, now_ms=self._ms())
            write(c)

        await self.agent.database.transaction(both)
        assert sale.order is not None
        self._keep(sale.order.digest, machine, sale)

    def _writer(self, sale: Sale, buyer: str, *, payment: PaymentResult | None = None,
                refund: dict[str, Any] | None = None
                ) -> tuple[Callable[[sqlite3.Connection], None], bytes]:
        """What writes the sale's row, to run inside a transaction, and the machine
        it writes."""
        order = sale.order
        assert order is not None
        machine = sale.state_bytes()
        paid = None if payment is None else canonical_encode(payment.to_wire())
        refunded = None if refund is None else canonical_encode(refund)

        def write(c: sqlite3.Connection) -> None:
            c.execute(
                "INSERT INTO commerce_sales (order_digest, buyer, state, machine, payment,"
                " refund, updated_ms) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (order_digest)"
                " DO UPDATE SET state = excluded.state, machine = excluded.machine,"
                " payment = coalesce(excluded.payment, payment),"
                " refund = coalesce(excluded.refund, refund), updated_ms = excluded.updated_ms",
                (order.digest, buyer, sale.state.value, machine, paid, refunded, self._ms()))

        return write, machine

    def _entries(self, decisions: list[Any], peer: Any, order: bytes) -> list[Any]:
        """The archive entries ``decisions`` ask for; ``peer`` is the buyer's identity."""
        ours = self.agent.credentials.identity
        return [entry(d.statement, direction=d.direction, peer=peer.agent_id,
                      transaction=order.hex(),
                      certificate=ours.certificate if d.statement.signer == ours.fingerprint
                      else peer.certificate)
                for d in decisions if isinstance(d, ArchiveDecision)]

    async def _archive(self, decisions: list[Any], peer: Any, order: bytes) -> None:
        """Archive what the machine asks to; ``peer`` is the buyer's identity."""
        await self.agent.archive.record_exchange(
            [(d.statement, d.direction) for d in decisions if isinstance(d, ArchiveDecision)],
            peer=peer.agent_id, transaction=order.hex(),
            ours=self.agent.credentials.identity, theirs=peer.certificate)


class _SettleContext(AgentPaymentContext):
    """The payment context of settling a sale: what the payment module receives (a
    transfer's confirmation, a cheque and the bank's clearing of it) is archived in
    the commit that saves the paid sale, not one commit each (one commit for the
    step; a failure after the module received it archives it on the way out)."""

    def __init__(self, agent: Any, transaction: str, peer: str) -> None:
        super().__init__(agent, transaction, peer)
        self.received: list[Any] = []

    async def record(self, statement: Statement, certificate: Any) -> None:
        self.received.append(entry(statement, direction=Direction.RECEIVED, peer=self.peer,
                                   transaction=self.transaction, certificate=certificate))


def _refusal(code: str, message: str, detail: dict[str, Any]) -> ServiceError:
    """The error of ``code`` (a stored refusal, raised again as it was first)."""
    classes: list[type[ServiceError]] = [ServiceError]
    for cls in classes:
        if cls.code == code:
            return cls(message, detail=detail)
        classes.extend(cls.__subclasses__())
    return CommerceError(message, detail=detail)  # pragma: no cover - codes are API


#: ``_load_row``'s ``row``: not read yet; read, and there is none.
_UNREAD: Final = object()
_NO_ROW: Final = object()


def _sale_row(c: sqlite3.Connection, order: bytes) -> Any:
    return c.execute("SELECT machine, payment, refund FROM commerce_sales"
                     " WHERE order_digest = ?", (order,)).fetchone()


def _returns_and_row(c: sqlite3.Connection, buyer: str, order: bytes) -> tuple[bool, Any]:
    """Whether ``buyer`` has a return, and ``order``'s sale row (``_NO_ROW``): one
    statement, so one read transaction (each index looked up once)."""
    returned, machine, payment, refund = c.execute(
        "SELECT (SELECT 1 FROM commerce_returns WHERE buyer = ? LIMIT 1),"
        " s.machine, s.payment, s.refund FROM (SELECT 1)"
        " LEFT JOIN commerce_sales AS s ON s.order_digest = ?", (buyer, order)).fetchone()
    return returned is not None, _NO_ROW if machine is None else (machine, payment, refund)


def _stream_info(item: CatalogueItem) -> StreamInfo | None:
    """The offer's ``stream`` of a streamed item (None for a one-frame one)."""
    spec = item.stream
    return None if spec is None else StreamInfo(
        chunks=spec.chunks, chunk_size=spec.chunk_size, length=spec.length, root=spec.root,
        price_per_chunk=spec.price_per_chunk)


def _terms(sale: Sale) -> Order:
    assert sale.order is not None
    return Order.from_statement(sale.order)


class Payee(Component):
    """``payment.capabilities`` and ``payment.accept``: a seller is paid for its sales,
    with the instruments it offers (advertised in its hello)."""

    name = "payment"
    requires = (Sales,)

    def __init__(self, context: Context) -> None:
        super().__init__(context)
        self.modules = context.component(Sales).payment_modules

    def handlers(self) -> Iterator[tuple[Op, Callable[..., Awaitable[Any]]]]:
        sales = self.context.component(Sales)
        yield payment_ops.CAPABILITIES, sales.capabilities
        yield payment_ops.ACCEPT, sales.accept


from semper.agents.components._delivery_seller import DeliverySeller  # noqa: E402
from semper.agents.components._fair_seller import FairSales  # noqa: E402 (fair purchase)


class Seller(Role):
    name = "seller"
    components = (Sales, Payee, FairSales, DeliverySeller)
