"""The obligations of a fair purchase (protocol.md 10.5), judged from a bundle.

A fair purchase's bundle is a purchase's (``semper archive export`` of the order, as
for any purchase: the hex digest of the buyer's ``commerce.order``) that also holds
the seller's ``fair.delivery`` for the order, or a notary decision of kind ``fair``
about it, that verifies (junk of those types leaves a purchase's bundle to
``check_purchase``). The commerce purchase's verdicts are the base; the notary's
decision, judged by ``fairexchange.purchase_outcome`` (the one rule), then decides
what it proves:

* the buyer paid: the commerce verdict (the bank's settlement, the seller's
  receipt); when that cannot tell, a notary decision, which quotes the payment
  confirmation the notary checked (only a paid buyer can recover);
* the seller delivered goods matching the signed offer's digest: True with the
  notary's release (the buyer holds the goods through the notary); else True when
  the commerce verdict is (the seller's signed delivery or receipt of the offer's
  goods: they came outright, whatever the escrow); else False with the notary's
  refund finding (the escrow does not give the offer's goods); else the commerce
  verdict; else None (an escrowed delivery does not show that the key was given);
* the seller released the key: False with either decision (a buyer asks the notary
  only when the seller gave no good key), else None (a key given on the channel is
  no statement);
* the seller issued a receipt: the commerce verdict;
* the seller refunded the payment: the commerce verdict when the bundle shows a
  refund, else, with a refund finding, None (the finding entitles the buyer to a
  refund that the bundle does not show).
"""

from __future__ import annotations

from typing import Final

from .._errors import ServiceError
from ..fairexchange import (
    DECISION_TYPE,
    FAIR_DELIVERY_TYPE,
    PurchaseOutcome,
    purchase_outcome,
)
from ..fairexchange._fairpurchase import KIND
from ..statements import Statement
from ._check import Evidence, Verdict, register
from ._contract import quoted, seq_of, verifier
from ._purchase import DELIVERED, PAID, RECEIPTED, REFUNDED, _order, check_purchase

__all__ = ["PROTOCOL", "RELEASED", "check_fair"]

PROTOCOL: Final = "fairexchange.fair"
RELEASED: Final = "seller released the key"


def check_fair(evidence: Evidence) -> list[Verdict] | None:
    """The verdicts of a fair purchase's bundle; None for a bundle of another protocol
    (a plain purchase's is left to ``check_purchase``)."""
    found = _order(evidence)
    if found is None:
        return None
    order_record, order = found
    digest = order_record.statement.digest
    fair = [v for v in evidence.statements
            if (v.statement.type == FAIR_DELIVERY_TYPE
                and v.statement.body.get("order") == digest)
            or (v.statement.type == DECISION_TYPE and v.statement.body.get("kind") == KIND
                and v.statement.body.get("exchange") == digest)]
    if not fair:
        return None
    verify = verifier(evidence)
    items: list[Statement] = [order_record.statement]
    left_out = []
    for verified in sorted(fair, key=lambda v: v.statement.type != FAIR_DELIVERY_TYPE):
        try:
            purchase_outcome([*items, verified.statement], verify=verify)
        except ServiceError as exc:
            left_out.append(f"record {verified.record.seq} ({exc.code})")
            continue
        items.append(verified.statement)
    if len(items) == 1:  # nothing of a fair exchange verifies: a plain purchase's bundle
        return None
    try:
        outcome = purchase_outcome(items, verify=verify)
    except ServiceError as exc:  # not expected once each item checked alone
        outcome = PurchaseOutcome("none")
        left_out.append(f"the evidence together ({exc.code})")
    base = {v.obligation: v for v in check_purchase(evidence) or []}
    verdicts = [
        _paid(evidence, outcome, base[PAID]),
        _delivered(evidence, outcome, base[DELIVERED], order.seller),
        _released(evidence, outcome, order.seller),
        base[RECEIPTED],
    ]
    refund = _refunded(evidence, outcome, base.get(REFUNDED), order.seller)
    if refund is not None:
        verdicts.append(refund)
    if left_out:
        note = f"; left out, not verifying: {', '.join(left_out)}"
        verdicts = [Verdict(v.obligation, v.party, v.met, v.reason + note)
                    if v.obligation in (DELIVERED, RELEASED) else v for v in verdicts]
    return verdicts


def _decided(evidence: Evidence, outcome: PurchaseOutcome) -> str | None:
    """The notary's decision that settled the exchange, as ``decision, record N``."""
    if outcome.state not in ("delivered", "refund_due") or outcome.proof is None:
        return None
    name = "release" if outcome.state == "delivered" else "refund finding"
    return f"{name}, {seq_of(evidence, outcome.proof)}"


def _paid(evidence: Evidence, outcome: PurchaseOutcome, base: Verdict) -> Verdict:
    decided = _decided(evidence, outcome)
    if base.met is not None or decided is None:
        return base
    return Verdict(PAID, base.party, True,
                   f"the notary's decision ({decided}) quotes the bank's payment "
                   "confirmation it checked: only a buyer that paid can recover")


def _delivered(evidence: Evidence, outcome: PurchaseOutcome, base: Verdict,
               seller: str) -> Verdict:
    decided = _decided(evidence, outcome)
    if outcome.state == "delivered":
        return Verdict(DELIVERED, seller, True,
                       f"the notary opened the seller's escrow to goods whose SHA-256 is the "
                       f"offer's content digest ({decided}): the buyer holds them through the "
                       "notary")
    if outcome.state == "refund_due" and base.met is True:  # the goods came another way
        return Verdict(DELIVERED, seller, True,
                       f"{base.reason}; the notary's refund finding ({decided}) shows only "
                       "that the seller's escrow was bad")
    if outcome.state == "refund_due":
        return Verdict(DELIVERED, seller, False,
                       f"the notary's finding ({decided}): the seller's escrow does not give "
                       f"goods with the offer's content digest ({quoted(outcome.reason)})")
    if base.met is not None or outcome.state != "escrowed" or outcome.proof is None:
        return base
    return Verdict(DELIVERED, seller, None,
                   f"the seller's fair.delivery ({seq_of(evidence, outcome.proof)}) escrows "
                   "goods naming the offer's content digest, but no statement shows that the "
                   "key was given, and the bundle holds no receipt or delivery of the seller")


def _released(evidence: Evidence, outcome: PurchaseOutcome, seller: str) -> Verdict:
    decided = _decided(evidence, outcome)
    if decided is not None:
        return Verdict(RELEASED, seller, False,
                       f"the buyer, paid, had to ask the notary for the key ({decided}): it "
                       "does so only when the seller gave no key that opens the goods")
    return Verdict(RELEASED, seller, None,
                   "no decision of the notary: the buyer did not show that it lacked the "
                   "key, and a key given on the channel is no statement")


def _refunded(evidence: Evidence, outcome: PurchaseOutcome, base: Verdict | None,
              seller: str) -> Verdict | None:
    if base is not None or outcome.state != "refund_due":
        return base
    return Verdict(REFUNDED, seller, None,
                   f"the notary's refund finding ({_decided(evidence, outcome)}) entitles the "
                   "buyer to a refund; the bundle holds no bank refund confirmation")


register(PROTOCOL, check_fair)
