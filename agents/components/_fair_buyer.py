"""The buyer's side of a fair purchase: ``semper buy --fair`` (protocol.md 10.5, 10.6).

Theory of operation. A fair purchase is a commerce purchase (``Shopper``: order,
payment, the goods and receipt) with one step before paying and one after, driven by
the ``FairBuyer`` machine, whose record is kept in ``fair_purchases`` (one commit per
step, before the next message leaves):

1. before paying, ``fair.fetch``: the seller's signed ``fair.delivery`` and the goods
   encrypted, the key escrowed for the notary; the machine checks the delivery names
   the order, our notary and the offer's content digest;
2. the payment, as ``semper buy`` pays (any instrument); the bank's settlement is fed
   to the machine (``Paid``) and kept. A hand-over that fails without the seller's
   answer (it died inside ``payment.accept`` once the money moved) is not the end:
   the settlement is looked for in our archive or asked of our bank
   (``_settled_anyway``), and the purchase goes on as paid;
3. ``fair.release`` with the settlement: the key, which must open the goods to the
   offer's digest. If the seller refuses, answers a bad key, fails, or is silent for
   the wait (the request timeout), the buyer goes to the notary by itself:
   ``notary.recover_goods`` with the order, the delivery, the ciphertext and the
   settlement. The notary's signed decision either releases the key (the goods are
   ours: ``resolved_by`` ``notary``) or finds the escrow bad (``refund`` decision:
   ``FairRefundDue``, the finding kept as evidence for the dispute path).

Then the commerce purchase takes the goods and the receipt from the seller as ever;
a seller gone by then leaves the purchase paid with the goods we opened, which are
also written where ``semper goods`` finds them. Running the same ``semper buy --fair``
again (the same idempotency key) resumes from the stored machine.

Crash points (``SEMPER_CRASH_AT``): ``fair.buyer.delivered`` (the delivery committed,
before paying), ``fair.buyer.paid`` (the settlement committed, before asking for the
key), ``fair.buyer.recovering`` (RECOVERING committed, before asking the notary).
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Final

import trio
from cryptography.hazmat.primitives.serialization import Encoding

from semper.agents.components._archive import append, entry
from semper.agents.components._payments import AgentPaymentContext
from semper.agents.components._purchase import PurchaseOutcome, Shopper
from semper.agents.runtime._component import Component
from semper.agents.runtime._faults import crash_point
from semper.services.commerce import Pay, Purchase
from semper.services.fairexchange import (
    FAIR_DELIVERY_TYPE,
    FAIR_FETCH,
    FAIR_RELEASE,
    NOTARY_RECOVER_GOODS,
    DeadlinePassed,
    FairBuyer,
    FairState,
    GoodsArrived,
    KeyRevealed,
    NotaryAnswered,
    Paid,
)
from semper.services.fairexchange._bodies import DECISION_TYPE, DecisionBody
from semper.services.fairexchange._fairpurchase import (
    FetchWire,
    RecoverGoodsWire,
    ReleaseWire,
)
from semper.services.payment import PaymentRequest, PaymentResult
from semper.services.statements import (
    Statement,
    canonical_decode,
    canonical_encode,
    verify_statement,
)
from semper.transport import RemoteError

__all__ = ["MIGRATIONS", "FairOutcome", "FairPurchases", "FairRefundDue", "FairShopper"]

log = logging.getLogger("semper.buyer")

MIGRATIONS: Final = {
    "fair_purchases": [
        "CREATE TABLE fair_purchases ("
        " order_digest BLOB PRIMARY KEY, key TEXT NOT NULL, seller TEXT NOT NULL,"
        " state TEXT NOT NULL, machine BLOB NOT NULL, updated_ms INTEGER NOT NULL) STRICT;"
        "CREATE INDEX fair_purchases_key ON fair_purchases (key)"
    ],
}

#: Steps one call of ``_finish`` may take (a bound on its loop).
_MAX_STEPS: Final = 8


class FairPurchases(Component):
    """The buyer's fair purchases (the driver, ``FairShopper``, runs in the command)."""

    name = "fair_purchases"

    def migrations(self) -> Any:
        return MIGRATIONS


class FairRefundDue(Exception):
    """The notary found the seller's escrow bad: no goods, but its signed finding
    entitles the buyer to a refund through the dispute path."""

    code: ClassVar[str] = "fairexchange.bad_escrow"

    def __init__(self, message: str, detail: dict[str, Any]) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail


class FairUnfinished(Exception):
    """The fair purchase did not reach the goods (nor a finding) in this run."""

    code: ClassVar[str] = "fairexchange.unfinished"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True, slots=True)
class FairOutcome:
    """What ``semper buy --fair`` prints: the purchase, the goods opened, and who
    resolved the exchange (``exchange``: the seller's key; ``notary``)."""

    purchase: PurchaseOutcome
    goods: bytes
    resolved_by: str

    def to_json(self) -> dict[str, Any]:
        return {**self.purchase.to_json(), "goods_size": len(self.goods),
                "resolved_by": self.resolved_by}


class FairShopper(Shopper):
    """A ``Shopper`` whose purchases are fair (see the module docstring)."""

    def __init__(self, agent: Any, progress: Callable[[str], None] | None = None, *,
                 notary: str, wait_ms: int) -> None:
        super().__init__(agent, progress)
        self.notary = notary
        self.wait_ms = wait_ms
        self._key = ""

    async def buy_fair(self, seller: str, sku: str, module: str, key: str) -> FairOutcome:
        """Buy as ``buy`` does, fairly; returns once the goods opened to the offer's
        digest.

        Raises:
            FairRefundDue: the notary found the escrow bad.
            the purchase's refusals, as ``buy`` (when no goods were opened).
        """
        self._key = key
        error: Exception | None = None
        try:
            await self.buy(seller, sku, module, key)
        except Exception as exc:  # the commerce part failed: were the goods ours by then?
            error = exc
        row = await self.agent.database.read(lambda c: c.execute(
            "SELECT machine, seller FROM fair_purchases WHERE key = ?", (key,)).fetchone())
        if row is None:
            if error is not None:
                raise error
            raise FairUnfinished(f"purchase {key!r} was not made fairly (it was made by "
                                 "semper buy without --fair)")
        fair = FairBuyer.from_record(canonical_decode(row[0]))
        if fair.state in (FairState.PAYING, FairState.RECOVERING):
            await self._finish(fair, row[1])
        if fair.state is FairState.DONE:
            goods = fair.goods
            assert goods is not None
            await self.agent.database.transaction(lambda c: c.execute(
                "UPDATE commerce_purchases SET goods = ? WHERE key = ? AND goods IS NULL",
                (goods, key)))
            return FairOutcome(purchase=await self.outcome(key), goods=goods,
                               resolved_by="exchange" if fair.decision is None else "notary")
        if fair.state is FairState.REFUND_DUE:
            assert fair.decision is not None
            body = DecisionBody.from_statement(fair.decision)
            reason = (body.payload or b"").decode(errors="replace")
            raise FairRefundDue(
                f"the notary found the seller's escrow bad ({reason}): its signed decision "
                f"{fair.decision.digest.hex()[:16]} entitles you to a refund (semper dispute)",
                {"reason": reason, "decision": fair.decision.digest.hex()})
        if error is not None:
            raise error
        raise FairUnfinished(f"purchase {key!r} stopped {fair.state.value}: run the same "
                             "semper buy --fair again to carry it on")

    # -- the steps around the payment -------------------------------------------------

    async def _pay(self, decision: Pay, purchase: Purchase) -> PaymentResult:
        """Take the sealed goods, pay, then take the key (or the notary's decision)."""
        order = purchase.order
        assert order is not None
        seller = decision.payee
        fair = await self._load(order.digest)
        if fair is None:
            fair = FairBuyer(order=order, notary=self.notary, wait_ms=self.wait_ms)
        if fair.state is FairState.ORDERED:
            self._progress(f"taking the sealed goods from {seller} (escrowed for "
                           f"{self.notary})")
            answer = await self.agent.context.call(seller, FAIR_FETCH,
                                                   FetchWire(order=order.digest))
            certificate = await self._seller_certificate(seller, None)
            verify_statement(answer.delivery, certificate=certificate,
                             root=self.agent.credentials.root, crl=self.agent.crl,
                             now=self._now(), expected_type=FAIR_DELIVERY_TYPE,
                             expected_signer=seller)
            fair.receive(GoodsArrived(delivery=answer.delivery, ciphertext=answer.ciphertext),
                         now_ms=self._ms())
            await self._save_fair(fair, order.digest, seller, entries=[entry(
                answer.delivery, direction="received", peer=seller,
                transaction=order.digest.hex(), certificate=certificate)])
            crash_point("fair.buyer.delivered")
        result = await self._paid_before(fair, decision, purchase)
        if result is None:
            try:
                result = await super()._pay(decision, purchase)
            except RemoteError:
                raise  # the seller's own answer: it is there, the commerce part judges it
            except Exception as exc:
                result = await self._settled_anyway(decision, purchase, exc)
        if fair.state is FairState.DELIVERED:
            fair.receive(Paid(payment=result.settlement), now_ms=self._ms())
            await self._save_fair(fair, order.digest, seller)
            crash_point("fair.buyer.paid")
        try:
            await self._finish(fair, seller)
        except Exception as exc:  # the notary unreachable, say: buy_fair tries again
            log.info("fair purchase %s not finished yet: %s", order.digest.hex()[:16], exc)
        return result

    async def _settled_anyway(self, decision: Pay, purchase: Purchase, exc: Exception
                              ) -> PaymentResult:
        """The settlement of a payment whose hand-over failed without the seller's
        answer (the seller died inside ``payment.accept``, say, after depositing what
        we paid with): the money may have moved all the same, and only a settlement
        lets the notary release the key. From our archive if the instrument moved the
        money before the hand-over (``prepaid``: a transfer's confirmation), else from
        our bank through the module (``settlement_of``, optional: a deposit's clearing).

        Raises: ``exc`` again when no settlement is found (nothing moved, or we
        cannot tell yet: a later run asks again)."""
        order = purchase.order
        assert order is not None
        try:
            prepaid = await self._prepaid(purchase, decision.module)
            if prepaid is not None:
                settlement, amount = prepaid
                bank = await self.agent.archive.certificate(settlement.signer)
                if bank is not None and amount == decision.amount:
                    return PaymentResult(module=decision.module, payer=self.agent.id,
                                         payee=decision.payee, amount=decision.amount,
                                         reference=decision.reference, settlement=settlement,
                                         bank_certificate=bank)
            settlement_of = getattr(self.payments.module(decision.module), "settlement_of",
                                    None)
            if settlement_of is not None:
                self._progress(f"{decision.payee} did not answer the payment: asking "
                               "our bank whether it settled")
                ctx = AgentPaymentContext(self.agent, order.digest.hex(), decision.payee)
                request = PaymentRequest(payee=decision.payee, amount=decision.amount,
                                         reference=decision.reference,
                                         idempotency_key=decision.idempotency_key)
                found = await settlement_of(ctx, request)
                if found is not None:
                    return found  # type: ignore[no-any-return]
        except Exception as asked:  # the bank away, say: the hand-over's failure stands
            log.info("no settlement of %s found after the hand-over failed: %s",
                     order.digest.hex()[:16], asked)
        raise exc

    async def _paid_before(self, fair: FairBuyer, decision: Pay, purchase: Purchase
                           ) -> PaymentResult | None:
        """The payment an earlier run made and stored (the machine is fed ``Paid``
        only once the seller accepted it), rebuilt for the commerce part: a resumed
        run does not hand it over again to a seller that may be gone."""
        if fair.state is FairState.DELIVERED or fair.payment is None:
            return None
        bank = await self.agent.archive.certificate(fair.payment.signer)
        if bank is None:
            return None
        assert purchase.order is not None
        return PaymentResult(module=decision.module, payer=self.agent.id,
                             payee=decision.payee, amount=decision.amount,
                             reference=decision.reference, settlement=fair.payment,
                             bank_certificate=bank)

    async def _finish(self, fair: FairBuyer, seller: str) -> None:
        """From PAYING: the key from the seller within the wait, else the notary's
        decision. Returns at DONE or REFUND_DUE.

        Raises: the notary's refusal, or a failure to reach it (the machine stays
        RECOVERING: a later run asks again)."""
        order = Statement.from_wire(fair.to_record()["order"])
        for _ in range(_MAX_STEPS):
            if fair.state is FairState.PAYING:
                await self._ask_key(fair, order, seller)
            elif fair.state is FairState.RECOVERING:
                self._progress(f"asking the notary {self.notary} for the key")
                record = fair.to_record()
                delivery = Statement.from_wire(record["delivery"])
                assert fair.payment is not None
                signers = [await self.agent.archive.certificate(s.signer)
                           for s in (delivery, fair.payment)]
                answer = await self.agent.context.call(self.notary, NOTARY_RECOVER_GOODS,
                                                       RecoverGoodsWire(
                    order=order, delivery=delivery, ciphertext=record["ciphertext"],
                    payment=fair.payment, certificates=tuple(
                        c.public_bytes(Encoding.DER) for c in signers if c is not None)))
                certificate = (await self.agent.channel(self.notary)).peer.certificate
                verify_statement(answer.statement, certificate=certificate,
                                 root=self.agent.credentials.root, crl=self.agent.crl,
                                 now=self._now(), expected_type=DECISION_TYPE,
                                 expected_signer=self.notary)
                fair.receive(NotaryAnswered(decision=answer.statement), now_ms=self._ms())
                await self._save_fair(fair, order.digest, seller, entries=[entry(
                    answer.statement, direction="received", peer=self.notary,
                    transaction=order.digest.hex(), certificate=certificate)])
            else:
                return

    async def _ask_key(self, fair: FairBuyer, order: Any, seller: str) -> None:
        """``fair.release`` until the machine's timer; any failure ends the wait early
        (nothing but the notary will give the key then)."""
        timer = fair.timer()
        assert timer is not None and fair.payment is not None
        self._progress(f"asking {seller} for the key")
        key = None
        with trio.move_on_after(max(0, timer - self._ms()) / 1000):
            try:
                answer = await self.agent.context.call(
                    seller, FAIR_RELEASE, ReleaseWire(order=order.digest, payment=fair.payment))
                key = answer.key
            except Exception as exc:
                if not isinstance(getattr(exc, "code", None), str) and \
                        not isinstance(exc, OSError):
                    raise
                log.info("%s did not release the key of %s: %s", seller,
                            order.digest.hex()[:16], exc)
        if key is not None:
            try:
                fair.receive(KeyRevealed(key=key), now_ms=self._ms())
            except Exception as exc:  # a key that does not open the goods to the digest
                if not isinstance(getattr(exc, "code", None), str):
                    raise
                log.info("%s released a bad key for %s: %s", seller,
                            order.digest.hex()[:16], exc)
            else:
                await self._save_fair(fair, order.digest, seller)
                return
        fair.receive(DeadlinePassed(), now_ms=self._ms())
        await self._save_fair(fair, order.digest, seller)
        crash_point("fair.buyer.recovering")

    # -- persistence ------------------------------------------------------------------

    async def _load(self, order: bytes) -> FairBuyer | None:
        row = await self.agent.database.read(lambda c: c.execute(
            "SELECT machine FROM fair_purchases WHERE order_digest = ?", (order,)).fetchone())
        return None if row is None else FairBuyer.from_record(canonical_decode(row[0]))

    async def _save_fair(self, fair: FairBuyer, order: bytes, seller: str, *,
                         entries: list[Any] | None = None) -> None:
        row = (order, self._key, seller, fair.state.value, canonical_encode(fair.to_record()),
               self._ms())

        def write(c: sqlite3.Connection) -> None:
            c.execute("INSERT INTO fair_purchases (order_digest, key, seller, state, machine,"
                      " updated_ms) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (order_digest)"
                      " DO UPDATE SET state = excluded.state, machine = excluded.machine,"
                      " updated_ms = excluded.updated_ms", row)
            if entries:
                append(c, entries, now_ms=self._ms())

        await self.agent.database.transaction(write)
