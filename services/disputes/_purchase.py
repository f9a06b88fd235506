"""The obligations of a commerce purchase (protocol.md section 9), judged from a bundle.

A purchase's bundle is the one whose transaction is the hex digest of a
``commerce.order`` signed by its buyer (either party's export). Its obligations:

* the buyer paid: a bank-signed settlement of the order's amount from the buyer to
  the seller for this order (its ``reference`` is the order's digest, or it names a
  statement of the buyer's in the bundle that has it, as a cleared cheque names its
  cheque), else the seller's receipt, which acknowledges the payment;
* the seller delivered goods matching the signed offer's digest: the seller's
  ``commerce.delivery`` for this order names the quoted offer's ``content_digest``
  (False when it names another), else its receipt does;
* the seller issued a receipt: a ``commerce.receipt`` for this order whose fields
  are the order's (offer digest, buyer, amount, content digest);
* the seller refunded, only when the bundle holds a refund: the bank's refund
  confirmation of this order's settlement, from the seller back to the buyer.

The quoted offer is verified with the seller's certificate in the bundle; without
it, the delivery cannot be judged (None). Statements a bundle cannot hold (the goods
themselves) are never asked for: a delivery names the digest of the bytes the
seller sent, so its own signature says which goods they were.
"""

from __future__ import annotations

from typing import Any, Final

from .._errors import ServiceError
from ..archive import VerifiedStatement
from ..commerce import (
    DELIVERY_TYPE,
    OFFER_TYPE,
    ORDER_TYPE,
    RECEIPT_TYPE,
    REFUND_NOTE_TYPE,
    CommerceError,
    Delivery,
    Offer,
    Order,
    Receipt,
    RefundNote,
)
from ..money import Amount, BadAmount
from ..statements import StatementError
from ._check import Evidence, Verdict, register

__all__ = [
    "DELIVERED",
    "PAID",
    "PROTOCOL",
    "RECEIPTED",
    "REFUNDED",
    "check_purchase",
]

PROTOCOL: Final = "commerce.purchase"
PAID: Final = "buyer paid"
DELIVERED: Final = "seller delivered goods matching the signed offer's digest"
RECEIPTED: Final = "seller issued a receipt"
REFUNDED: Final = "seller refunded the payment"
_BANK: Final = "bank"


def check_purchase(evidence: Evidence) -> list[Verdict] | None:
    """The verdicts of a purchase's bundle; None for a bundle of another protocol."""
    found = _order(evidence)
    if found is None:
        return None
    record, order = found
    digest = record.statement.digest
    terms, offer_problem = _offer(evidence, order)
    amount = _amount(order)
    settlements = _settlements(evidence, order, digest)
    receipts = [(v, body) for v, body in _bodies(evidence, RECEIPT_TYPE, Receipt)
                if v.signer.agent_id == order.seller and body.order == digest]
    deliveries = [(v, body) for v, body in _bodies(evidence, DELIVERY_TYPE, Delivery)
                  if v.signer.agent_id == order.seller and body.order == digest]
    verdicts = [
        _paid(order, amount, settlements, receipts),
        _delivered(order, terms, offer_problem, deliveries, receipts),
        _receipted(order, terms, amount, receipts),
    ]
    refund = _refunded(evidence, order, digest, settlements)
    if refund is not None:
        verdicts.append(refund)
    return verdicts


def _bodies(evidence: Evidence, statement_type: str, body_type: Any
            ) -> list[tuple[VerifiedStatement, Any]]:
    found = []
    for verified in evidence.of_type(statement_type):
        try:
            found.append((verified, body_type.from_statement(verified.statement)))
        except (CommerceError, StatementError):
            continue  # a statement of that type with a bad body proves nothing
    return found


def _order(evidence: Evidence) -> tuple[VerifiedStatement, Order] | None:
    for verified, body in _bodies(evidence, ORDER_TYPE, Order):
        if verified.statement.digest.hex() == evidence.transaction \
                and verified.signer.agent_id == body.buyer:
            return verified, body
    return None


def _offer(evidence: Evidence, order: Order) -> tuple[Offer | None, str]:
    """The quoted offer's terms if its seller signed it, else why not."""
    if order.offer.digest != order.offer_digest:
        return None, "the order's offer_digest is not its quoted offer's digest"
    signer = evidence.verify_quoted(order.offer, expected_type=OFFER_TYPE,
                                    expected_signer=order.seller)
    if isinstance(signer, ServiceError):
        return None, f"the quoted offer does not verify ({signer})"
    try:
        terms = Offer.from_statement(order.offer)
    except (CommerceError, StatementError) as exc:
        return None, f"the quoted offer is not an offer ({exc})"
    if terms.seller != order.seller:
        return None, "the quoted offer names another seller than the order"
    return terms, ""


def _amount(order: Order) -> Amount | None:
    try:
        return order.amount
    except (CommerceError, StatementError, BadAmount):
        return None


def _digest(value: object) -> bytes | None:
    """``value`` if it is bytes (a digest to look up), else None: a signed body may
    hold anything where a digest belongs."""
    return value if type(value) is bytes else None


def _wire_amount(value: object) -> Amount | None:
    if type(value) is not dict or set(value) != {"currency", "minor_units"}:
        return None
    try:
        return Amount(value["currency"], value["minor_units"])
    except BadAmount:
        return None


def _settlements(evidence: Evidence, order: Order, digest: bytes) -> list[VerifiedStatement]:
    """Bank statements settling a payment for this order: a bank-signed body with
    payer, payee and amount (not a refund's ``original``) whose reference is the
    order's digest, directly or through a statement of the buyer it names."""
    referring = {v.statement.digest for v in evidence.statements
                 if v.signer.agent_id == order.buyer
                 and v.statement.body.get("reference") == digest}
    found = []
    for verified in evidence.signed_by_role(_BANK):
        body = verified.statement.body
        if not {"payer", "payee", "amount"} <= body.keys() or "original" in body:
            continue
        if body.get("reference") == digest or any(
                value in referring for value in body.values() if type(value) is bytes):
            found.append(verified)
    return found


def _paid(order: Order, amount: Amount | None, settlements: list[VerifiedStatement],
          receipts: list[tuple[VerifiedStatement, Receipt]]) -> Verdict:
    wrong = []
    for verified in settlements:
        body = verified.statement.body
        paid = _wire_amount(body["amount"])
        if body["payer"] == order.buyer and body["payee"] == order.seller \
                and amount is not None and paid == amount:
            return Verdict(PAID, order.buyer, True,
                           f"bank {verified.signer.agent_id!r} settled {amount} from "
                           f"{order.buyer!r} to {order.seller!r} for this order "
                           f"({verified.statement.type}, record {verified.record.seq})")
        wrong.append(f"record {verified.record.seq} settles {paid} from {body['payer']!r:.70} "
                     f"to {body['payee']!r:.70}")
    for verified, receipt in receipts:
        if amount is not None and receipt.amount == amount:
            return Verdict(PAID, order.buyer, True,
                           f"the seller's receipt (record {verified.record.seq}) acknowledges "
                           f"payment of {amount} ({receipt.payment_type})")
    if wrong:
        return Verdict(PAID, order.buyer, False,
                       f"the order costs {amount}, but the only settlements for it do not "
                       f"pay that from the buyer to the seller: {'; '.join(wrong)}")
    return Verdict(PAID, order.buyer, None,
                   "the bundle holds no bank settlement for this order and no receipt")


def _delivered(order: Order, terms: Offer | None, problem: str,
               deliveries: list[tuple[VerifiedStatement, Delivery]],
               receipts: list[tuple[VerifiedStatement, Receipt]]) -> Verdict:
    if terms is None:
        return Verdict(DELIVERED, order.seller, None,
                       f"the offer's content digest cannot be established: {problem}")
    wanted = terms.content_digest
    for verified, body in deliveries:
        if body.content_digest == wanted:
            return Verdict(DELIVERED, order.seller, True,
                           f"the seller signed the delivery of {body.size} bytes whose "
                           f"SHA-256 is the offer's content digest {wanted.hex()[:16]}... "
                           f"(record {verified.record.seq})")
    if deliveries:
        verified, body = deliveries[0]
        return Verdict(DELIVERED, order.seller, False,
                       f"the seller's delivery (record {verified.record.seq}) names goods "
                       f"whose SHA-256 is {body.content_digest.hex()[:16]}..., not the "
                       f"offer's {wanted.hex()[:16]}...")
    for verified, receipt in receipts:
        if receipt.content_digest == wanted:
            return Verdict(DELIVERED, order.seller, True,
                           f"the seller's receipt (record {verified.record.seq}) says the "
                           f"goods of the offer's content digest were delivered")
    if receipts:
        verified, receipt = receipts[0]
        return Verdict(DELIVERED, order.seller, False,
                       f"the seller's receipt (record {verified.record.seq}) names goods "
                       f"whose SHA-256 is {receipt.content_digest.hex()[:16]}..., not the "
                       f"offer's {wanted.hex()[:16]}...")
    return Verdict(DELIVERED, order.seller, None,
                   "the bundle holds no delivery or receipt of the seller for this order")


def _receipted(order: Order, terms: Offer | None, amount: Amount | None,
               receipts: list[tuple[VerifiedStatement, Receipt]]) -> Verdict:
    wrong = ""
    for verified, body in receipts:
        expected = (("offer", body.offer, order.offer_digest),
                    ("buyer", body.buyer, order.buyer),
                    ("amount", body.amount, amount),
                    ("content_digest", body.content_digest,
                     terms.content_digest if terms is not None else body.content_digest))
        fault = next((name for name, got, want in expected if got != want), None)
        if fault is None:
            return Verdict(RECEIPTED, order.seller, True,
                           f"the seller's receipt for this order (record "
                           f"{verified.record.seq}) names its offer, buyer, amount and goods")
        wrong = wrong or f"record {verified.record.seq} names another {fault} than the order"
    if wrong:
        return Verdict(RECEIPTED, order.seller, False, f"the seller's receipt is wrong: {wrong}")
    return Verdict(RECEIPTED, order.seller, None,
                   "the bundle holds no receipt of the seller for this order")


def _refunded(evidence: Evidence, order: Order, digest: bytes,
              settlements: list[VerifiedStatement]) -> Verdict | None:
    """The refund verdict, or None when the bundle shows no refund at all."""
    paid = {v.statement.digest for v in settlements}
    confirmations = [v for v in evidence.signed_by_role(_BANK)
                     if _digest(v.statement.body.get("original")) in paid
                     and v.statement.body.get("payer") == order.seller
                     and v.statement.body.get("payee") == order.buyer]
    notes = [(v, body) for v, body in _bodies(evidence, REFUND_NOTE_TYPE, RefundNote)
             if v.signer.agent_id == order.seller and body.order == digest]
    if not confirmations and not notes:
        return None
    if confirmations:
        amounts = [_wire_amount(v.statement.body.get("amount")) for v in confirmations]
        total = None
        try:
            for amount in amounts:
                if amount is not None:
                    total = amount if total is None else total + amount
        except ServiceError:  # amounts of two currencies: no one total
            total = None
        records = ", ".join(str(v.record.seq) for v in confirmations)
        return Verdict(REFUNDED, order.seller, True,
                       f"bank {confirmations[0].signer.agent_id!r} refunded {total} of this "
                       f"order's payment to the buyer (records {records})")
    verified, _note = notes[0]
    return Verdict(REFUNDED, order.seller, None,
                   f"the seller's refund note (record {verified.record.seq}) names a refund "
                   f"confirmation that is not in the bundle")


register(PROTOCOL, check_purchase)
