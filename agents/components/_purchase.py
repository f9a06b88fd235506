"""The buyer's side of a purchase: the ``Purchase`` machine driven over channels.

Theory of operation. ``Shopper.buy`` persists the machine (``commerce_purchases``,
keyed by the purchase's idempotency key) after every step and before any statement
it holds leaves, then does what ``pending()`` asks: send the order, pay, fetch the
goods. Called again with the same key it resumes where the last call stopped, or,
when that purchase is done, returns its outcome without paying again: the order is
the stored one, the bank applies one transfer per (payer, key) and one cheque per
serial derived from the key, and the seller answers a repeated payment with the
first result. The same key with another seller, item or instrument is refused.

A new key is taken (its row inserted only if absent) in the one commit that keeps
the signed order, with the offer and the order archived, before the order leaves; a
key in use is checked against its row first. Every later write is conditional on
the row being as this run last left it: two runs with one key (two ``semper buy`` at
once) cannot both take it, nor overwrite each other (``PurchaseBusy``), so the
record of a key always describes the purchase that was paid under it. One commit a
step: each step's archive entries go in the commit that saves the machine.
"""

from __future__ import annotations

import copy
import datetime as dt
import logging
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Final

import trio

from semper.agents.components._archive import append, entry
from semper.agents.components._delivery_buyer import StreamClient, StreamOutcome, StreamProgress
from semper.agents.components._payments import AgentPaymentContext, payment_manager
from semper.services import Amount
from semper.services.archive import Direction
from semper.services.certificates import (
    CertificateError,
    identity_of,
    load_certificate,
    validate_certificate,
)
from semper.services.commerce import (
    Archive,
    BadBody,
    BadDelivery,
    BadReceipt,
    Catalogue,
    Failed,
    GoodsDelivered,
    Offer,
    OfferChosen,
    Order,
    OrderAccepted,
    OrderSent,
    Pay,
    PaymentConfirmed,
    Purchase,
    PurchaseState,
    ReceiptIssued,
    RefundNoteIssued,
    RefundRequested,
    RequestDelivery,
    RequestRefund,
    SendOrder,
    UnknownOffer,
)
from semper.services.delivery import BadTicket, StreamInfo, Ticket
from semper.services.delivery._ticket import TICKET_TYPE
from semper.services.payment import (
    PAYMENT_CAPABILITIES,
    PAYMENT_SERVICE,
    BadConfirmation,
    Capabilities,
    IdempotencyConflict,
    PaymentRequest,
    PaymentResult,
    RefundConfirmation,
    RefundResult,
    UnknownModule,
    choose_instrument,
    our_bank,
    verify_refund_confirmation,
)
from semper.services.statements import (
    Statement,
    StatementError,
    canonical_decode,
    canonical_encode,
    verify_statement,
)
from semper.transport import RemoteError

if TYPE_CHECKING:
    from semper.agents.runtime._agent import Agent

log = logging.getLogger("semper.buyer")

__all__ = ["MIGRATIONS", "PurchaseBusy", "PurchaseOutcome", "Shopper"]

MIGRATIONS: Final = {
    "commerce_purchases": [
        "CREATE TABLE commerce_purchases ("
        " key TEXT PRIMARY KEY, seller TEXT NOT NULL, sku TEXT NOT NULL, module TEXT NOT NULL,"
        " state TEXT NOT NULL, machine BLOB NOT NULL, payment BLOB, refund BLOB,"
        " goods BLOB, updated_ms INTEGER NOT NULL)",
        # 2: a STRICT table (it holds what was paid and the evidence of it).
        "ALTER TABLE commerce_purchases RENAME TO commerce_purchases_old;"
        "CREATE TABLE commerce_purchases ("
        " key TEXT PRIMARY KEY, seller TEXT NOT NULL, sku TEXT NOT NULL, module TEXT NOT NULL,"
        " state TEXT NOT NULL, machine BLOB NOT NULL, payment BLOB, refund BLOB,"
        " goods BLOB, updated_ms INTEGER NOT NULL) STRICT;"
        "INSERT INTO commerce_purchases SELECT key, seller, sku, module, state, machine,"
        " payment, refund, goods, updated_ms FROM commerce_purchases_old;"
        "DROP TABLE commerce_purchases_old",
    ],
}

#: The payment module that pays a streamed item chunk by chunk.
PURSE: Final = "purse"
#: How many machine steps one call may take: a bound on the driving loop.
_MAX_STEPS: Final = 32
#: Sellers whose last verified catalogue a shopper keeps (see ``Shopper.catalogue``).
_MAX_CATALOGUES: Final = 64


class PurchaseStuck(Exception):
    code: ClassVar[str] = "commerce.purchase_stuck"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


#: Refusals that mean "this will not happen, and no money moved": any refusal of the
#: order, and of a payment only those raised before anything is applied (the bank
#: applies nothing it refuses; negotiation happens before paying). Once our bank has
#: confirmed a transfer, no refusal is definite unless it carries the bank's proof
#: that the money came back (detail ``returned``): the purchase stays PAYING for a
#: retry or a dispute. Timeouts and closed channels retry.
_ORDER_REFUSALS: Final = ("commerce.", "payment.", "statement.")
_PAYMENT_REFUSALS: Final = frozenset({
    "payment.insufficient_funds", "payment.unknown_account", "payment.no_common_instrument",
    "payment.unknown_module", "payment.currency_mismatch", "commerce.unsupported_payment",
    "payment.already_paid", "payment.wrong_bank", "payment.policy_refused",
    "payment.forbidden_instrument", "payment.unsupported",
    # card: refused at the gateway's authorisation, before anything is held
    "card.declined", "card.unknown_card", "card.expired_card", "card.bad_instructions",
    "card.bad_dual_signature", "card.bad_gateway_key",
    # ecash: coins the wallet lacks, or the seller's deposit refused (nothing moved;
    # the wallet refreshes the coins it showed)
    "ecash.insufficient_coins", "ecash.bad_coin", "ecash.bad_spend", "ecash.expired_key",
    "ecash.unknown_key", "ecash.double_spent",
})


class PurchaseBusy(Exception):
    """Another run (another ``semper buy`` with the same key) moved the purchase on
    since this one read it: this run stops; running it again resumes from there."""

    code: ClassVar[str] = "commerce.purchase_busy"

    def __init__(self, key: str) -> None:
        super().__init__(f"purchase {key!r} is being carried on by another run")
        self.message = str(self)


class PurchaseFailed(Exception):
    """A purchase that failed before money moved, reported again with its first code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = f"this purchase failed, the seller kept no money: {message}"


def _fields(answer: Any, what: str, **kinds: type) -> dict[str, Any]:
    """``answer`` if it is a map holding each of ``kinds`` with its type: a seller's
    answer is read only after this, so a malformed one is refused with
    ``commerce.bad_body`` instead of failing on a missing key or a wrong type."""
    if not isinstance(answer, dict):
        raise BadBody(f"the answer to {what} is not a map", detail={"type": what, "field": ""})
    for name, kind in kinds.items():
        if not isinstance(answer.get(name), kind):
            raise BadBody(f"the answer to {what} needs {name} of type {kind.__name__}",
                          detail={"type": what, "field": name})
    return answer



@dataclass(frozen=True, slots=True)
class PurchaseOutcome:
    """What ``semper buy --json`` prints: ``receipt`` and ``payment`` are the keys."""

    key: str
    seller: str
    sku: str
    state: str
    order: bytes
    receipt: Statement | None
    payment: PaymentResult | None
    goods: bytes | None
    refund: dict[str, Any] | None
    replayed: bool

    def to_json(self) -> dict[str, Any]:
        receipt = None
        if self.receipt is not None:
            body = self.receipt.body
            receipt = {"order": self.order.hex(), "seller": self.seller, "sku": self.sku,
                       "buyer": body["buyer"], "amount": body["amount"],
                       "payment": body["payment"].hex(), "payment_type": body["payment_type"],
                       "content_digest": body["content_digest"].hex(),
                       "digest": self.receipt.digest.hex(),
                       "issued_at": self.receipt.issued_at}
        payment = None
        if self.payment is not None:
            payment = {"module": self.payment.module, "payer": self.payment.payer,
                       "payee": self.payment.payee, "amount": self.payment.amount.to_wire(),
                       "bank": self.payment.bank, "settlement": self.payment.settlement.type,
                       "settlement_digest": self.payment.settlement.digest.hex()}
        return {"idempotency_key": self.key, "state": self.state, "receipt": receipt,
                "payment": payment, "goods_size": None if self.goods is None else len(self.goods),
                "refunded": self.refund is not None, "replayed": self.replayed,
                "refund_amount": None if self.refund is None
                else self.refund["refund"]["amount"]}


class Shopper:
    """Buys from sellers for ``agent`` (whose database and archive must be open)."""

    def _ms(self) -> int:
        """Now, in Unix ms, by the agent's one clock."""
        return self.agent.clock.now_ms()

    def _now(self) -> dt.datetime:
        return self.agent.context.now()

    def __init__(self, agent: Agent, progress: Callable[[str], None] | None = None, *,
                 output: Path | None = None,
                 on_chunk: Callable[[StreamProgress], None] | None = None) -> None:
        self.agent = agent
        self.payments = payment_manager(agent)
        self._progress = progress or (lambda step: None)
        #: A streamed item goes to this file (its purchase's delivery channel).
        self.output = output
        self._on_chunk = on_chunk
        #: key -> the stream fetched by this shopper, for ``semper buy --json``.
        self.streamed: dict[str, StreamOutcome] = {}
        #: key -> the machine as this shopper last wrote or read it (see ``_save``).
        self._versions: dict[str, bytes] = {}
        #: seller -> (certificate DER, offers as received, the verified catalogue and
        #: certificate): the last catalogue of each seller that verified.
        self._catalogues: dict[str, tuple[bytes, list[Any], Catalogue, Any]] = {}
        #: seller -> (the channel it answered on and the market policy's serial then,
        #: its payment capabilities).
        self._capabilities: dict[str, tuple[Any, Any]] = {}
        #: order (hex) -> what saves its accepted machine, with the first statement its
        #: payment signs, in one commit (see ``_ShopperContext``).
        self._unsaved: dict[str, Callable[[list[Any]], Awaitable[None]]] = {}
        #: key -> why ``choose`` picked its instrument (one line, for ``semper buy``).
        self.choices: dict[str, str] = {}

    async def catalogue(self, seller: str) -> tuple[Catalogue, Any]:
        """The seller's verified offers and its certificate.

        A seller answers with the same signed offers until it re-signs them: a
        catalogue equal to the last one that verified (the same certificate, the same
        offers, byte for byte) is not verified again, offer by offer, every purchase;
        its certificate is still judged at every call (valid now, not on the CRL in
        use, the CRL current).

        Raises a ``statement.*``/``auth.*`` error if an offer does not verify.
        """
        answer = _fields(await self.agent.request(seller, "commerce", "catalogue", {}),
                         "commerce.catalogue", certificate=bytes, offers=list)
        root, crl = self.agent.credentials.root, self.agent.crl
        known = self._catalogues.get(seller)
        if known is not None and known[0] == answer["certificate"] \
                and known[1] == answer["offers"]:
            validate_certificate(known[3], root=root, crl=crl, now=self._now(),
                                 expected_id=seller)
            return known[2], known[3]
        certificate = load_certificate(answer["certificate"])
        offers = tuple(Statement.from_wire(o) for o in answer["offers"])
        for offer in offers:
            verify_statement(offer, certificate=certificate, root=root, crl=crl, now=self._now(),
                             expected_type="commerce.offer", expected_signer=seller)
        catalogue = Catalogue(offers=offers)
        self._catalogues.pop(seller, None)
        if len(self._catalogues) >= _MAX_CATALOGUES:
            del self._catalogues[next(iter(self._catalogues))]
        self._catalogues[seller] = (answer["certificate"], answer["offers"], catalogue,
                                    certificate)
        return catalogue, certificate

    async def choose(self, seller: str, sku: str, key: str, *, fair: bool = False
                     ) -> tuple[str, str]:
        """The instrument to buy ``sku`` from ``seller`` with, and why (protocol.md
        8.9): the one a purchase under ``key`` began with, else the first of ours, in
        our order, that the market permits and the seller takes from us for the
        price, a guaranteed one first (a purse only for a streamed item; for a
        ``fair`` purchase only one a notary can check). Nothing is signed.

        Raises:
            NoCommonInstrument: none fits (the message says why for each).
            UnknownOffer, and the seller's refusals.
        """
        row = await self._row(key)
        if row is not None:
            module: str = row["module"]
            why = f"{module}: the instrument purchase {key} began with"
        else:
            catalogue, _ = await self.catalogue(seller)
            offer = _find(catalogue, sku)
            streamed = offer.body.get("stream") is not None
            price = Offer.from_statement(offer).price
            ctx = _ShopperContext(self, offer.digest.hex(), seller)
            theirs = Capabilities.from_wire(
                await ctx.request(seller, PAYMENT_SERVICE, PAYMENT_CAPABILITIES, {}))
            # What holds an instrument of ours (coins, cards) may say it cannot pay
            # the price now (optional ``can_pay(amount) -> reason or None``).
            short: dict[str, str] = {}
            for ours in self.payments.capabilities.modules:
                holder = next((c for c in self.agent.components.values()
                               if ours.name in getattr(c, "holds", ())), None)
                can_pay = getattr(holder, "can_pay", None)
                if can_pay is not None and (why := await can_pay(price)):
                    short[ours.name] = str(why)

            def unfit(name: str) -> str | None:
                if name == PURSE and not streamed:
                    return "pays streamed items only"
                if fair and not hasattr(self.payments.module(name), "settles"):
                    return "cannot pay a fair purchase"
                return short.get(name)

            module, why = choose_instrument(
                self.payments.capabilities, theirs, price, market=self.payments.market,
                guaranteed=self.payments.guaranteed, unfit=unfit)
        self.choices[key] = why
        return module, why

    async def buy(self, seller: str, sku: str, module: str | None, key: str
                  ) -> PurchaseOutcome:
        """Buy ``sku`` from ``seller``, paying with ``module`` (None: ``choose`` it);
        idempotent per ``key``.

        Raises:
            IdempotencyConflict: ``key`` was used for another purchase.
            UnknownOffer: the seller offers no ``sku``.
            ForbiddenInstrument: the market forbids ``module`` (nothing signed).
            and the seller's, the bank's or a verification's refusal, with its code.
        """
        if module is None:
            module, _ = await self.choose(seller, sku, key)
        if await self._row(key) is None:
            started = await self._start(key, seller, sku, module)
            if started is None:  # another run took the key since we looked
                await self._reserve(key, seller, sku, module)  # for another purchase?
                raise PurchaseBusy(key)
            purchase, certificate = started
            kept = await self._drive(purchase, key, seller, sku, module, certificate)
            if purchase.state is PurchaseState.DONE and kept.keys() == {"payment", "goods"}:
                # What this run saved, as ``outcome`` would read it back.
                assert purchase.order is not None
                return PurchaseOutcome(
                    key=key, seller=seller, sku=sku, state=purchase.state.value,
                    order=purchase.order.digest, receipt=purchase.receipt,
                    payment=kept["payment"], goods=kept["goods"], refund=None, replayed=False)
            return await self.outcome(key)
        row = await self._reserve(key, seller, sku, module)
        replayed = row["state"] in (PurchaseState.DONE.value, PurchaseState.REFUNDED.value)
        purchase = Purchase.from_state(canonical_decode(row["machine"]))
        if purchase.failure is not None:
            raise PurchaseFailed(purchase.failure.code, purchase.failure.message)
        certificate = None
        if purchase.state is PurchaseState.IDLE:
            try:
                catalogue, certificate = await self.catalogue(seller)
                offer = _find(catalogue, sku)
                decisions = purchase.receive(OfferChosen(offer=offer, payment_module=module,
                                                         idempotency_key=key),
                                             now_ms=self._ms())
                await self._record(decisions, seller, purchase, certificate)
                await self._save(key, seller, sku, module, purchase)
            except BaseException:
                await self._release(key, row["machine"])
                raise
        await self._drive(purchase, key, seller, sku, module, certificate)
        return await self.outcome(key, replayed=replayed)

    async def _start(self, key: str, seller: str, sku: str, module: str
                     ) -> tuple[Purchase, Any] | None:
        """A new purchase up to its signed order, taken under ``key`` in one commit
        with the offer and the order archived, before the order leaves. None when
        another run took the key meanwhile (then its row is the purchase's).

        Nothing is written until that commit: a failure before it leaves the key
        free, as it was.
        """
        catalogue, certificate = await self.catalogue(seller)
        offer = _find(catalogue, sku)
        # After the catalogue: asking it fetched the market policy with the CRL.
        self.payments.market.check(module)
        if offer.body.get("stream") is not None:
            self._stream_output(key)  # before anything is signed or paid
        elif module == PURSE:  # a purse pays chunks: this purchase could never end
            from semper.services.payment.purse import Unsupported

            raise Unsupported(f"{sku!r} is not streamed: a purse pays a stream chunk by "
                              "chunk; pay with an instrument that pays a whole item",
                              detail={"module": PURSE, "sku": sku})
        purchase = Purchase(buyer=self.agent.id)
        chosen = purchase.receive(OfferChosen(offer=offer, payment_module=module,
                                              idempotency_key=key), now_ms=self._ms())
        entries = self._entries(chosen, seller, purchase, certificate)
        pending = purchase.pending()
        if pending and isinstance(pending[0], SendOrder):
            self._progress(f"signing the order for {sku}")
            order = await self._sign(pending[0].order)
            sent = purchase.receive(OrderSent(order=order), now_ms=self._ms())
            entries += self._entries(sent, seller, purchase, None)
        machine = purchase.state_bytes()

        def create(c: sqlite3.Connection) -> bool:
            taken = c.execute(
                "INSERT OR IGNORE INTO commerce_purchases (key, seller, sku, module, state,"
                " machine, updated_ms) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (key, seller, sku, module, purchase.state.value, machine, self._ms())).rowcount
            if taken == 1:
                append(c, entries, now_ms=self._ms())
            return taken == 1

        if not await self.agent.database.transaction(create):
            return None
        self._versions[key] = machine
        return purchase, certificate

    async def _reserve(self, key: str, seller: str, sku: str, module: str) -> dict[str, Any]:
        """The purchase's row, inserted (an idle machine) when the key is new: the key
        is checked and taken in one transaction, before any step, so two runs with one
        key cannot both take it for different purchases.

        Raises:
            IdempotencyConflict: the key was taken for another seller, item or module.
        """
        idle = Purchase(buyer=self.agent.id).state_bytes()

        def reserve(c: sqlite3.Connection) -> dict[str, Any]:
            c.execute("INSERT OR IGNORE INTO commerce_purchases (key, seller, sku, module,"
                      " state, machine, updated_ms) VALUES (?, ?, ?, ?, ?, ?, ?)",
                      (key, seller, sku, module, PurchaseState.IDLE.value, idle, self._ms()))
            row = _read_row(c, key)
            assert row is not None
            if (row["seller"], row["sku"], row["module"]) != (seller, sku, module):
                raise IdempotencyConflict(
                    f"idempotency key {key!r} was used for another purchase",
                    detail={"key": key})
            return row

        row = await self.agent.database.transaction(reserve)
        self._versions[key] = row["machine"]
        return row

    async def _release(self, key: str, idle: bytes) -> None:
        """Give the key back when this run fails before its first step was recorded
        (nothing signed, nothing sent): the user may use it for another item."""
        with trio.CancelScope(shield=True):
            await self.agent.database.transaction(lambda c: c.execute(
                "DELETE FROM commerce_purchases WHERE key = ? AND machine = ?", (key, idle)))

    async def refund(self, key: str, reason: str = "returned",
                     amount: Amount | None = None) -> PurchaseOutcome:
        """Ask the seller to refund the purchase ``key``, in full or ``amount`` of it;
        idempotent (once refunded, asking again refunds nothing more)."""
        row = await self._row(key)
        if row is None:
            raise UnknownOffer(f"no purchase with idempotency key {key!r}", detail={"key": key})
        self._versions[key] = row["machine"]
        purchase = Purchase.from_state(canonical_decode(row["machine"]))
        replayed = purchase.state is PurchaseState.REFUNDED
        if purchase.state in (PurchaseState.PAID, PurchaseState.DELIVERED, PurchaseState.DONE):
            purchase.receive(RefundRequested(reason=reason, amount=amount), now_ms=self._ms())
            await self._save(key, row["seller"], row["sku"], row["module"], purchase)
        await self._drive(purchase, key, row["seller"], row["sku"], row["module"], None)
        return await self.outcome(key, replayed=replayed)

    async def _drive(self, purchase: Purchase, key: str, seller: str, sku: str, module: str,
                     certificate: Any) -> dict[str, Any]:
        """Take the steps the machine asks for until none is left; returns the payment
        and goods this run saved (by ``payment`` and ``goods``)."""
        kept: dict[str, Any] = {}
        paid: tuple[Purchase, PaymentResult] | None = None  # not saved yet (see Pay)
        for _ in range(_MAX_STEPS):
            if purchase.state is PurchaseState.ORDERED:  # the seller has to accept it
                assert purchase.order is not None
                self._progress(f"order {purchase.order.digest.hex()[:12]} sent to {seller}")
                async with self._fail_on_refusal(purchase, key, seller, sku, module):
                    await self.agent.request(seller, "commerce", "order",
                                             {"order": purchase.order.to_wire()})
                purchase.receive(OrderAccepted(), now_ms=self._ms())
                if not isinstance(next(iter(purchase.pending()), None), Pay):
                    await self._save(key, seller, sku, module, purchase)
                    continue

                async def save_accepted(entries: list[Any], purchase: Purchase = purchase
                                        ) -> None:
                    await self._save(key, seller, sku, module, purchase, entries=entries)

                # Saved in the commit that keeps what the payment signs first, before
                # anything of the payment leaves (one commit for the step).
                self._unsaved[purchase.order.digest.hex()] = save_accepted
                continue
            pending = purchase.pending()
            if not pending:
                return kept
            decision = pending[0]
            if isinstance(decision, SendOrder):
                self._progress(f"signing the order for {sku}")
                order = await self._sign(decision.order)
                decisions = purchase.receive(OrderSent(order=order), now_ms=self._ms())
                await self._save(key, seller, sku, module, purchase,  # before it leaves
                                 entries=self._entries(decisions, seller, purchase, None))
            elif isinstance(decision, Pay) and _streamed(purchase) is not None \
                    and decision.module == PURSE:
                # Paid chunk by chunk on the delivery channel: the purchase stays
                # PAYING until the stream is whole (its record, delivery_downloads,
                # says how far it is); then the chain's redemption is the payment,
                # and the receipt that names it is fetched as for any payment.
                await self._stream_by_purse(purchase, key, seller, certificate)
                result = await self._purse_paid(purchase, key, seller)
                purchase.receive(PaymentConfirmed(payment=result.settlement.digest,
                                                  payment_type=result.settlement.type,
                                                  amount=result.amount), now_ms=self._ms())
                paid = (copy.copy(purchase), result)
                kept["payment"] = result
            elif isinstance(decision, Pay):
                self._progress(f"paying {decision.amount} by {decision.module} "
                               f"through {self.agent.config.payment.bank or 'bank'}")
                try:
                    async with self._fail_on_refusal(purchase, key, seller, sku, module):
                        result = await self._pay(decision, purchase)
                finally:
                    assert purchase.order is not None
                    self._unsaved.pop(purchase.order.digest.hex(), None)
                purchase.receive(PaymentConfirmed(payment=result.settlement.digest,
                                                  payment_type=result.settlement.type,
                                                  amount=result.amount), now_ms=self._ms())
                # The paid machine is saved in the commit of the goods and the receipt
                # that follow (one commit for the two steps), or alone if fetching them
                # fails. A crash meanwhile leaves the purchase paying, as a crash
                # between the bank's confirmation and this point always could: a retry
                # pays again under the same key and the bank and the seller answer it
                # as they did, moving nothing more.
                paid = (copy.copy(purchase), result)
                kept["payment"] = result
            elif isinstance(decision, RequestDelivery):
                self._progress("payment confirmed by the bank; fetching goods and receipt")
                signed = None
                try:
                    answer = await self.agent.request(seller, "commerce", "fetch",
                                                      {"order": decision.order})
                    streamed = _streamed(purchase) is not None
                    answer = _fields(answer, "commerce.fetch", delivery=dict, receipt=dict,
                                     **({"ticket": bytes} if streamed else {"goods": bytes}))
                    delivery = Statement.from_wire(answer["delivery"])
                    receipt = Statement.from_wire(answer["receipt"])
                    seller_cert = await self._seller_certificate(seller, certificate)
                    for statement in (delivery, receipt):
                        verify_statement(statement, certificate=seller_cert,
                                         root=self.agent.credentials.root, crl=self.agent.crl,
                                         now=self._now(), expected_signer=seller)
                    signed = (delivery, receipt, seller_cert)
                    if streamed:  # the goods come on the delivery channel, into a file
                        if paid is not None:  # kept before the stream, which takes long
                            await self._save(key, seller, sku, module, paid[0],
                                             payment=paid[1])
                            paid = None
                        answer["goods"] = await self._stream(
                            purchase, key, seller, answer["ticket"], seller_cert)
                    decisions = purchase.receive(
                        GoodsDelivered(delivery=delivery, goods=answer["goods"]),
                        now_ms=self._ms())
                    decisions += purchase.receive(ReceiptIssued(receipt=receipt),
                                                  now_ms=self._ms())
                except BaseException as exc:
                    with trio.CancelScope(shield=True):
                        evidence = await self._refused_evidence(exc, signed, seller,
                                                                purchase)
                        if paid is not None:  # the paid machine, as before the fetch
                            await self._save(key, seller, sku, module, paid[0],
                                             payment=paid[1], entries=evidence)
                        elif evidence:
                            await self.agent.archive.record_all(evidence)
                    raise
                kept["goods"] = None if streamed else answer["goods"]
                await self._save(key, seller, sku, module, purchase,
                                 payment=None if paid is None else paid[1],
                                 goods=kept["goods"],
                                 entries=self._entries(decisions, seller, purchase,
                                                       seller_cert))
                paid = None
            elif isinstance(decision, RequestRefund):
                assert purchase.order is not None
                self._progress(f"asking {seller} for a refund of {decision.amount}")
                answer = _fields(await self.agent.request(seller, "commerce", "refund", {
                    "order": decision.order, "reason": decision.reason,
                    "amount": decision.amount.to_wire()}), "commerce.refund", note=dict,
                    refund=dict)
                note = Statement.from_wire(answer["note"])
                seller_cert = await self._seller_certificate(seller, certificate)
                verify_statement(note, certificate=seller_cert, root=self.agent.credentials.root,
                                 crl=self.agent.crl, now=self._now(), expected_signer=seller)
                refund = RefundResult.from_wire(answer["refund"])
                assert purchase.payment is not None
                # The bank's word that the money came back, checked and kept as evidence.
                # An instrument whose refund is a statement of its own checks it and takes
                # the money back (ecash: the bank's voucher becomes coins in the wallet).
                refunded = getattr(self._module(module), "refunded", None)
                if refunded is not None:
                    _check_refund(refund, purchase.payment.payment, decision.amount,
                                  self.agent.id)
                    await refunded(AgentPaymentContext(self.agent, purchase.order.digest.hex(),
                                                       seller), refund)
                else:
                    verify_refund_confirmation(
                        refund.confirmation, bank_certificate=refund.bank_certificate,
                        root=self.agent.credentials.root, crl=self.agent.crl,
                        now=self._now(), expected_original=purchase.payment.payment,
                        expected_payee=self.agent.id, expected_amount=decision.amount)
                # Signed by a bank, and by ours: money back elsewhere is not back.
                ctx = AgentPaymentContext(self.agent, purchase.order.digest.hex(), seller)
                our_bank(ctx, identity_of(refund.bank_certificate).agent_id)
                decisions = purchase.receive(RefundNoteIssued(note=note), now_ms=self._ms())
                entries = self._entries(decisions, seller, purchase, seller_cert)
                entries.append(entry(refund.confirmation, direction="received", peer=seller,
                                     transaction=purchase.order.digest.hex(),
                                     certificate=refund.bank_certificate))
                await self._save(key, seller, sku, module, purchase, refund=answer,
                                 entries=entries)
            else:  # pragma: no cover - a decision this driver does not know
                raise PurchaseStuck(f"no way to act on {type(decision).__name__}")
        if paid is not None:  # pragma: no cover - the machine asks for the goods after
            with trio.CancelScope(shield=True):
                await self._save(key, seller, sku, module, paid[0], payment=paid[1])
        raise PurchaseStuck(f"purchase {key!r} did not settle in {_MAX_STEPS} steps")

    @asynccontextmanager
    async def _fail_on_refusal(self, purchase: Purchase, key: str, seller: str, sku: str,
                               module: str) -> AsyncIterator[None]:
        """A peer's definite refusal before money moved ends the purchase (FAILED, kept
        under its key, so a retry reports the same refusal). A timeout or a broken
        channel is not a refusal: the purchase stays where it is, for a retry."""
        try:
            yield
        except RemoteError as exc:
            if purchase.state is PurchaseState.ORDERED:
                definite = exc.code.startswith(_ORDER_REFUSALS)
            elif await self._prepaid(purchase, module) is not None:
                # Our bank moved the money before the hand-over (its settlement is in
                # our archive, the instrument says): only its word that the money came
                # back ends the purchase, whatever the refusal's code
                # (payment.wrong_bank, commerce.unsupported_payment...).
                definite = _returned(exc)
            else:
                definite = exc.code in _PAYMENT_REFUSALS or _returned(exc)
            if not definite:
                raise
            message = exc.message[:4000]
            if _returned(exc):  # the bank moved it, and the seller says it gave it back
                if not await self._returned_to_us(exc, purchase, module):
                    # Not the bank's word that it is back: the purchase stays where it
                    # is (a retry asks again), never FAILED with the money elsewhere.
                    raise
                message += " (the payment was returned to us)"
            purchase.receive(Failed(code=exc.code, message=message), now_ms=self._ms())
            await self._save(key, seller, sku, module, purchase)
            raise

    async def _prepaid(self, purchase: Purchase, module: str
                       ) -> tuple[Statement, Amount] | None:
        """The settlement (and amount) of a payment by ``module`` that our bank made
        for this order before the proof went to the payee, kept in our archive: the
        instruments say which (``prepaid``, ``module``'s first; a cheque moves nothing
        before)."""
        assert purchase.order is not None
        records = await self.agent.archive.records(purchase.order.digest.hex())
        return self.payments.prepaid([Statement.from_bytes(r.statement) for r in records],
                                     module=module)

    async def _returned_to_us(self, exc: RemoteError, purchase: Purchase, module: str
                              ) -> bool:
        """Whether the refusal carries our bank's refund confirmation, to us, of the
        whole of a payment we made for this order before the hand-over (our archive
        holds its settlement, the instrument says: ``prepaid``): the seller's word
        alone is not it."""
        assert purchase.order is not None
        transaction = purchase.order.digest.hex()
        try:
            refund = Statement.from_bytes(exc.detail["returned"]["confirmation"])
            if refund.type != RefundConfirmation.TYPE:
                # An instrument's own refund (an ecash voucher): back only once our
                # module took it back, which archives it here (EcashModule.pay).
                return any(r.statement == refund.to_bytes()
                           for r in await self.agent.archive.records(transaction))
            body = RefundConfirmation.from_statement(refund)
            ours = [Statement.from_bytes(r.statement)
                    for r in await self.agent.archive.records(transaction)]
            prepaid = self.payments.prepaid([s for s in ours if s.digest == body.original],
                                            module=module)
            if prepaid is None:
                raise LookupError("no payment of ours before the hand-over is the one "
                                  "refunded")
            paid, amount = prepaid
            certificate = await self.agent.archive.certificate(refund.signer)
            if certificate is None:
                return False
            verify_refund_confirmation(
                refund, bank_certificate=certificate, root=self.agent.credentials.root,
                crl=self.agent.crl, now=self._now(), expected_original=paid.digest,
                expected_payee=self.agent.id, expected_amount=amount,
                expected_bank=self.agent.config.payment.bank)
        except (KeyError, TypeError, ValueError, StopIteration, StatementError,
                CertificateError, BadConfirmation, LookupError) as refused:
            log.warning("%s says it returned our payment for %s, without our bank's proof "
                        "(%s): kept for a retry", exc.code, transaction[:16], refused)
            return False
        await self.agent.archive.record(refund, direction="received",
                                        peer=identity_of(certificate).agent_id,
                                        transaction=transaction, certificate=certificate)
        return True

    # -- streamed items (issue 10) ------------------------------------------------------

    def _stream_output(self, key: str) -> Path:
        if self.output is None or str(self.output) == "-":
            raise NeedsOutput(f"purchase {key!r} is of a streamed item: it is written to a "
                              "file (--output FILE)")
        return self.output

    async def _stream(self, purchase: Purchase, key: str, seller: str, ticket: bytes,
                      certificate: Any) -> bytes:
        """Fetch a streamed item paid whole into the output file; its bytes (read back
        once, for the machine's check of the whole against the offer's digest)."""
        output = self._stream_output(key)
        info = _streamed(purchase)
        assert info is not None and purchase.order is not None
        order = Order.from_statement(purchase.order)
        chain = None
        if order.payment_module == PURSE:  # streamed already, as it was paid
            held = await StreamClient(self.agent).row(key)
            chain = None if held is None else held["chain"]
        statement = self._check_ticket(ticket, purchase, seller, certificate, chain=chain)
        await self._keep(statement, purchase, seller, certificate)
        self._progress(f"streaming {info.chunks} chunks on a delivery channel to {output}")
        outcome = await StreamClient(self.agent, self._on_chunk).fetch(
            key, seller, statement, info, content_digest=order.offer_terms().content_digest,
            output=output, paid=order.amount, chain=chain)
        self.streamed.setdefault(key, outcome)  # a purse's: as this run streamed it
        return await trio.Path(outcome.output).read_bytes()

    async def _stream_by_purse(self, purchase: Purchase, key: str, seller: str,
                               certificate: Any) -> None:
        """A streamed item paid by purse: a chain of one payword per chunk, reserved
        at our bank, committed to the seller for this order, spent as chunks verify."""
        output = self._stream_output(key)
        info = _streamed(purchase)
        assert info is not None and purchase.order is not None
        order = Order.from_statement(purchase.order)
        digest = purchase.order.digest
        save = self._unsaved.pop(digest.hex(), None)
        if save is not None:  # the accepted machine, before the commitment leaves
            await save([])
        from semper.agents.components._purse import Purse  # the purse's buyer half

        purse = self.agent.component(Purse)
        self._progress(f"reserving {info.price} at {self.agent.config.payment.bank or 'bank'}"
                       f" for a purse of {info.chunks} paywords")
        commitment, reservation = await purse.open_chain(
            seller, info.chunks, info.price_per_chunk, digest, key)
        seller_cert = await self._seller_certificate(seller, certificate)
        held = await self.agent.database.read(lambda c: c.execute(
            "SELECT ticket FROM delivery_downloads WHERE key = ?", (key,)).fetchone())
        if held is None:
            answer = _fields(await self.agent.request(seller, "delivery", "ticket", {
                "order": digest, "commitment": commitment.to_bytes(),
                "reservation": reservation.to_bytes()}), "delivery.ticket", ticket=bytes)
            ticket = answer["ticket"]
        else:
            ticket = held[0]
        chain = commitment.body["chain"]
        statement = self._check_ticket(ticket, purchase, seller, seller_cert, chain=chain)
        await self._keep(statement, purchase, seller, seller_cert)
        self._progress(f"streaming {info.chunks} chunks on a delivery channel to {output}, "
                       f"{info.price_per_chunk} a chunk")

        async def pay(index: int) -> bytes:
            return await purse.pay(chain, index)

        self.streamed[key] = await StreamClient(self.agent, self._on_chunk).fetch(
            key, seller, statement, info, content_digest=order.offer_terms().content_digest,
            output=output, paid=info.price_per_chunk, pay=pay, chain=chain)

    async def _purse_paid(self, purchase: Purchase, key: str, seller: str) -> PaymentResult:
        """The payment of a purse purchase whose stream is whole: the seller redeems
        the chain (``commerce.fetch`` has it redeem a chain paid whole at once, and
        sign the receipt), and our bank's ``purse.redeemed`` of it, checked and
        archived, is the payment the receipt must name.

        Raises:
            The seller's refusal (the chain not redeemed yet: run again), or
            PurchaseStuck: our bank holds no redemption of the chain for the whole
            item after the seller's answer (run again later).
        """
        from semper.agents.components._purse import Purse
        from semper.services.payment.purse import PurseRedeemed

        assert purchase.order is not None
        order = Order.from_statement(purchase.order)
        held = await StreamClient(self.agent).row(key)
        assert held is not None and held["chain"] is not None
        chain = held["chain"]
        self._progress("the stream is whole; asking the seller to redeem the purse and "
                       "for the receipt")
        await self.agent.request(seller, "commerce", "fetch",
                                 {"order": purchase.order.digest})
        found = await self.agent.component(Purse).redemption(chain)
        if found is None or PurseRedeemed.from_statement(found[0]).paid != order.amount:
            raise PurchaseStuck(f"purchase {key!r}: our bank holds no redemption of its "
                                "purse chain for the whole item yet; run it again")
        statement, certificate = found
        return PaymentResult(module=PURSE, payer=self.agent.id, payee=seller,
                             amount=order.amount, reference=purchase.order.digest,
                             settlement=statement, bank_certificate=certificate)

    async def _keep(self, statement: Statement, purchase: Purchase, seller: str,
                    certificate: Any) -> None:
        """Archive the seller's ticket under the order, once (a rerun gets it again)."""
        assert purchase.order is not None
        transaction = purchase.order.digest.hex()
        raw = statement.to_bytes()
        if not any(r.statement == raw for r in await self.agent.archive.records(transaction)):
            await self.agent.archive.record(statement, direction=Direction.RECEIVED,
                                            peer=seller, transaction=transaction,
                                            certificate=certificate)

    def _check_ticket(self, ticket: bytes, purchase: Purchase, seller: str, certificate: Any,
                      *, chain: bytes | None) -> Statement:
        """The seller's ticket for this order, this buyer and the offer's stream."""
        assert purchase.order is not None
        try:
            statement = Statement.from_bytes(ticket)
            verify_statement(statement, certificate=certificate,
                             root=self.agent.credentials.root, crl=self.agent.crl,
                             now=self._now(), expected_type=TICKET_TYPE,
                             expected_signer=seller)
        except StatementError as exc:
            raise BadTicket(f"the seller's ticket does not verify: {exc.message}",
                            detail={"cause": exc.code}) from None
        body = Ticket.from_statement(statement)
        for name, want in (("order", purchase.order.digest), ("buyer", self.agent.id),
                           ("seller", seller), ("stream", _streamed(purchase)),
                           ("chain", chain)):
            if getattr(body, name) != want:
                raise BadTicket(f"the seller's ticket names another {name}",
                                detail={"field": name})
        return statement

    def _module(self, name: str) -> Any:
        """The payment module ``name`` if this buyer still offers it (None: its
        configuration no longer does; what every instrument shares is used)."""
        try:
            return self.payments.module(name)
        except UnknownModule:
            return None

    async def _pay(self, decision: Pay, purchase: Purchase) -> PaymentResult:
        assert purchase.order is not None
        ctx = _ShopperContext(self, purchase.order.digest.hex(), decision.payee)
        request = PaymentRequest(payee=decision.payee, amount=decision.amount,
                                 reference=decision.reference,
                                 idempotency_key=decision.idempotency_key)
        return await self.payments.pay(ctx, request, only=decision.module)

    async def _sign(self, order: Order) -> Statement:
        return self.agent.evidence.sign(order.TYPE, order.to_body())

    async def _seller_certificate(self, seller: str, known: Any) -> Any:
        if known is not None:
            return known
        channel = await self.agent.channel(seller)
        return channel.peer.certificate

    async def _record(self, decisions: list[Any], seller: str, purchase: Purchase,
                      certificate: Any) -> None:
        entries = self._entries(decisions, seller, purchase, certificate)
        if entries:
            await self.agent.archive.record_all(entries)

    async def _refused_evidence(self, exc: BaseException, signed: Any, seller: str,
                                purchase: Purchase) -> list[Any]:
        """What the seller signed and the buyer refused, as archive entries: evidence
        against the seller for a dispute (protocol.md 12.2), each body kept once. A
        delivery naming other goods than the offer's; a receipt that does not fit
        the order (with the delivery checked before it). Nothing for any other
        failure: a delivery naming the offer's digest over other bytes proves
        nothing the buyer could show, and would vouch for the seller."""
        if signed is None or purchase.order is None:
            return []
        delivery, receipt, certificate = signed
        if isinstance(exc, BadDelivery) and exc.detail.get("field") == "content_digest":
            kept = [delivery]
        elif isinstance(exc, BadReceipt):
            kept = [delivery, receipt]
        else:
            return []
        transaction = purchase.order.digest.hex()
        held = [Statement.from_bytes(record.statement)
                for record in await self.agent.archive.records(transaction)]
        return [entry(statement, direction="received", peer=seller, transaction=transaction,
                      certificate=certificate)
                for statement in kept
                if not any(h.type == statement.type and h.signer == statement.signer
                           and h.body == statement.body for h in held)]

    def _entries(self, decisions: list[Any], seller: str, purchase: Purchase,
                 certificate: Any) -> list[Any]:
        """The archive entries ``decisions`` ask for, to be written in the commit that
        saves the machine (``_save``'s ``entries``): each kept with our certificate
        if we signed it, else with ``certificate`` (the seller's)."""
        ours = self.agent.credentials.identity
        transaction = purchase.order.digest.hex() if purchase.order is not None else "offers"
        return [entry(d.statement, direction=d.direction, peer=seller, transaction=transaction,
                      certificate=ours.certificate if d.statement.signer == ours.fingerprint
                      else certificate)
                for d in decisions if isinstance(d, Archive)]

    # -- persistence ------------------------------------------------------------------

    async def _row(self, key: str) -> dict[str, Any] | None:
        return await self.agent.database.read(lambda c: _read_row(c, key))

    async def _save(self, key: str, seller: str, sku: str, module: str, purchase: Purchase, *,
                    payment: PaymentResult | None = None, goods: bytes | None = None,
                    refund: dict[str, Any] | None = None, entries: Sequence[Any] = ()
                    ) -> None:
        """Write the machine, and ``entries`` into the archive, in one commit."""
        machine = purchase.state_bytes()
        paid = None if payment is None else canonical_encode(payment.to_wire())
        refunded = None if refund is None else canonical_encode(refund)

        # Only over the row as this run last wrote or read it: a row another run
        # changed meanwhile (the same key, twice at once) is never overwritten.
        expected = self._versions.get(key)

        def write(c: sqlite3.Connection) -> None:
            changed = c.execute(
                "UPDATE commerce_purchases SET state = ?, machine = ?,"
                " payment = coalesce(?, payment), refund = coalesce(?, refund),"
                " goods = coalesce(?, goods), updated_ms = ?"
                " WHERE key = ? AND seller = ? AND sku = ? AND module = ? AND machine = ?",
                (purchase.state.value, machine, paid, refunded, goods, self._ms(), key, seller,
                 sku, module, expected)).rowcount
            if changed != 1:
                raise PurchaseBusy(key)
            if entries:
                append(c, entries, now_ms=self._ms())

        await self.agent.database.transaction(write)
        self._versions[key] = machine

    async def outcome(self, key: str, *, replayed: bool = False) -> PurchaseOutcome:
        row = await self._row(key)
        assert row is not None
        purchase = Purchase.from_state(canonical_decode(row["machine"]))
        assert purchase.order is not None
        return PurchaseOutcome(
            key=key, seller=row["seller"], sku=row["sku"], state=row["state"],
            order=purchase.order.digest, receipt=purchase.receipt,
            payment=None if row["payment"] is None else PaymentResult.from_wire(
                canonical_decode(row["payment"])),
            goods=row["goods"],
            refund=None if row["refund"] is None else canonical_decode(row["refund"]),
            replayed=replayed)


class _ShopperContext(AgentPaymentContext):
    """The payment context of a shopper's purchases: a seller's capabilities are
    asked once per channel to it and market policy, not once per purchase. They are
    its configuration (modules, limits, bank, policy), which changes only with a
    restart (a restarted seller is reached over a new channel), and the market
    policy, which both sides take from the CA (protocol.md 8.9)."""

    def __init__(self, shopper: Shopper, transaction: str, peer: str) -> None:
        super().__init__(shopper.agent, transaction, peer)
        self._known = shopper._capabilities
        self._unsaved = shopper._unsaved

    async def _save_accepted(self, entries: list[Any]) -> bool:
        """Save the purchase's accepted machine with ``entries``, if it waits to be:
        before the payment's first statement or request leaves."""
        save = self._unsaved.pop(self.transaction, None)
        if save is None:
            return False
        await save(entries)
        return True

    async def sign(self, type: str, body: dict[str, Any]) -> Statement:
        """Sign and archive, as every payment context does; the purchase's accepted
        machine goes in the same commit."""
        statement = self._agent.evidence.sign(type, body)
        if not await self._save_accepted([entry(
                statement, direction=Direction.SENT, peer=self.peer,
                transaction=self.transaction, certificate=self.certificate)]):
            await self._agent.archive.record(statement, direction=Direction.SENT,
                                             peer=self.peer, transaction=self.transaction,
                                             certificate=self.certificate)
        return statement

    async def request(self, peer: str, service: str, op: str, body: Any) -> Any:
        if (service, op) != (PAYMENT_SERVICE, PAYMENT_CAPABILITIES):
            await self._save_accepted([])
            return await super().request(peer, service, op, body)
        channel = await self._agent.channel(peer)
        asked = (channel, self._agent.market_policy.policy.serial)
        known = self._known.get(peer)
        if known is not None and known[0][0] is channel and known[0][1] == asked[1] \
                and not channel.closed:
            return known[1]
        answer = await super().request(peer, service, op, body)
        if len(self._known) >= _MAX_CATALOGUES:
            del self._known[next(iter(self._known))]
        self._known[peer] = (asked, answer)
        return answer


def _check_refund(refund: RefundResult, original: bytes, amount: Amount, payee: str) -> None:
    """The seller's refund result names our payment, the amount asked and us (what
    ``verify_refund_confirmation`` checks of a ``payment.refund_confirmation``, for an
    instrument whose confirmation is its own statement and checked by it)."""
    for field, got, want in (("original", refund.original, original),
                             ("amount", refund.amount, amount), ("payee", refund.payee, payee)):
        if got != want:
            raise BadConfirmation(f"the seller's refund names another {field}",
                                  detail={"field": field})


def _returned(exc: RemoteError) -> bool:
    """The seller refused a payment the bank had moved, and gave it back."""
    return isinstance(exc.detail.get("returned"), dict)


def _read_row(c: sqlite3.Connection, key: str) -> dict[str, Any] | None:
    cursor = c.execute("SELECT * FROM commerce_purchases WHERE key = ?", (key,))
    row = cursor.fetchone()
    if row is None:
        return None
    return dict(zip([d[0] for d in cursor.description], row, strict=True))


class NeedsOutput(Exception):
    """A streamed item bought without a file to write it to."""

    code: ClassVar[str] = "delivery.needs_output"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _streamed(purchase: Purchase) -> StreamInfo | None:
    """The offer's stream, for a purchase of a streamed item (None otherwise)."""
    if purchase.order is None:
        return None
    return Order.from_statement(purchase.order).offer_terms().stream


def _find(catalogue: Catalogue, sku: str) -> Statement:
    for offer in catalogue.offers:
        if offer.body.get("sku") == sku:
            return offer
    raise UnknownOffer(f"the seller offers no {sku!r}", detail={"sku": sku})
