"""The obligations of certified mail (protocol.md 10.4), judged from a bundle.

A mail's bundle (``semper archive export`` of the mail's id, as ``semper mail send``
prints it) is the one whose transaction is the hex exchange id of a ``mail.offer``
in it signed by its sender. The verdicts come from ``fairexchange.mail_outcome``
(the one rule), applied to the offer, the receiver's receipts and the notary's mail
decisions in the bundle; a piece that does not verify is left out and named.
Obligations:

* the receiver received the mail (party: the receiver): True with its receipt of
  the offer and no void or abort decision (the receiver holds the key, from the
  sender or, until the deadline, from the notary), or with the notary's release;
  False with the notary's void finding or abort (any receipt is void); None with
  the offer alone;
* the sender's escrow was good (party: the sender): True with the notary's release
  (it opened the escrow to the signed message), False with its void finding, None
  otherwise (only the notary opens an escrow).
"""

from __future__ import annotations

from typing import Final

from .._errors import ServiceError
from ..fairexchange import (
    DECISION_TYPE,
    MAIL_OFFER_TYPE,
    MAIL_RECEIPT_TYPE,
    MAIL_REUSED,
    MailOffer,
    MailOutcome,
    mail_outcome,
)
from ..statements import Statement
from ._check import Evidence, Verdict, register
from ._contract import quoted, seq_of, verifier

__all__ = ["ESCROW_GOOD", "PROTOCOL", "RECEIVED", "check_mail"]

PROTOCOL: Final = "fairexchange.mail"
RECEIVED: Final = "receiver received the mail"
ESCROW_GOOD: Final = "sender's escrow was good"


def check_mail(evidence: Evidence) -> list[Verdict] | None:
    """The verdicts of a mail's bundle; None for a bundle of another protocol."""
    verify = verifier(evidence)
    offer: Statement | None = None
    body: MailOffer | None = None
    for verified in evidence.of_type(MAIL_OFFER_TYPE):
        try:
            found = MailOffer.from_statement(verified.statement)
        except ServiceError:
            continue
        if found.exchange.hex() == evidence.transaction \
                and verified.signer.agent_id == found.sender:
            offer, body = verified.statement, found
            break
    if offer is None or body is None:
        return None
    items = [offer]
    left_out = []
    for verified in evidence.statements:
        if verified.statement.type not in (MAIL_RECEIPT_TYPE, DECISION_TYPE):
            continue
        if verified.statement.type == DECISION_TYPE and \
                verified.statement.body.get("exchange") != body.exchange:
            continue  # another exchange's decision (a contract's, a purchase's)
        try:
            mail_outcome([offer, verified.statement], verify=verify)
        except ServiceError as exc:
            left_out.append(f"record {verified.record.seq} ({exc.code})")
            continue
        items.append(verified.statement)
    try:
        outcome = mail_outcome(items, verify=verify)
    except ServiceError as exc:  # not expected once each item checked alone
        outcome = MailOutcome("offered", body.exchange, offer, offer)
        left_out.append(f"the evidence together ({exc.code})")
    received, escrow = _verdicts(evidence, outcome, body)
    if left_out:
        note = f"; left out, not verifying: {', '.join(left_out)}"
        received = Verdict(received.obligation, received.party, received.met,
                           received.reason + note)
        escrow = Verdict(escrow.obligation, escrow.party, escrow.met, escrow.reason + note)
    return [received, escrow]


def _verdicts(evidence: Evidence, outcome: MailOutcome, body: MailOffer
              ) -> tuple[Verdict, Verdict]:
    proof = outcome.proof
    where = seq_of(evidence, proof) if proof is not None else "none"
    unopened = Verdict(ESCROW_GOOD, body.sender, None,
                       "only the notary opens an escrow, and the bundle holds no decision of "
                       "it that did")
    if outcome.state == "delivered" and outcome.resolved_by == "notary":
        return (Verdict(RECEIVED, body.receiver, True,
                        f"the notary released the key to the receiver (decision, {where}), "
                        "quoting its receipt"),
                Verdict(ESCROW_GOOD, body.sender, True,
                        f"the notary opened the escrow to the signed message's digest "
                        f"(release, {where})"))
    if outcome.state == "delivered":
        return (Verdict(RECEIVED, body.receiver, True,
                        f"the receiver's receipt ({where}) of the sender's offer, and no void "
                        "or abort decision of the notary: the receiver got the key from the "
                        "sender or could recover it from the notary until the deadline"),
                unopened)
    if outcome.state == "void" and outcome.reason == MAIL_REUSED:
        reused = (f"the notary's standing decision ({where}) for the exchange id the "
                  "sender chose, about other content: the sender took the id before this "
                  "offer, so the receiver could not recover the key")
        return (Verdict(RECEIVED, body.receiver, False, f"{reused}; the receipt is void"),
                Verdict(ESCROW_GOOD, body.sender, False, reused))
    if outcome.state == "void":
        finding = (f"the notary's void finding ({where}): the escrow does not give the "
                   f"signed message ({quoted(outcome.reason)})")
        return (Verdict(RECEIVED, body.receiver, False, f"{finding}; the receipt is void"),
                Verdict(ESCROW_GOOD, body.sender, False, finding))
    if outcome.state == "aborted":
        return (Verdict(RECEIVED, body.receiver, False,
                        f"the notary closed the exchange at the sender's request after the "
                        f"deadline (abort, {where}): no key was recovered, any receipt is "
                        "void"),
                unopened)
    return (Verdict(RECEIVED, body.receiver, None,
                    "the bundle holds the sender's offer only: no receipt, no decision of the "
                    "notary"),
            unopened)


register(PROTOCOL, check_mail)
