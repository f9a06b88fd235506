"""Optimistic fair exchange with a notary: contract signing, certified mail, fair purchase.

Contract signing (``_contract``, ``_notary``; protocol.md 10.2), sans-IO, h11 pattern:

* ``Originator(exchange=32B, originator=, responder=, notary=, text=, secret=32B,
  sign=, verify=)`` and ``Responder(responder=, peer=, secret=32B, approvals={(O_ID,
  sha256(text))}, notaries={N_ID}, sign=, verify=)``: ``receive(event, now_ms=) ->
  [message]`` (persist ``to_record()`` first, then send), ``pending()`` (what to send
  again after ``from_record(record, sign=, verify=)``), ``state`` (``OState``/
  ``RState``; ``finished``), ``evidence()``. Events: ``Start``, ``Proposed(text, m1)``,
  ``Committed(m2)``, ``Revealed(secret)``, ``TimedOut``, ``NotaryAnswered(decision)``;
  messages: ``Propose(text, m1)`` -> ``contract.propose``, ``Commit(m2)`` (its
  answer), ``Reveal(exchange, secret)`` -> ``contract.reveal`` / its answer,
  ``AskNotary(op, request)`` -> ``notary.abort`` / ``notary.resolve``.
  Ports: ``sign(type, body, now_ms) -> Statement``; ``verify(statement, *,
  expected_type, expected_signer)`` raising coded errors.
* ``NotaryBook(sign=, notary=)``: ``decide(exchange, kind, subject=, decision=,
  request=, now_ms=, payload=None) -> Decision(statement, new)`` (first decision per
  exchange id wins; persist when ``new``), ``get``, ``to_record``/``from_record``;
  ``contract_abort``/``contract_resolve(book, request, requester=, verify=, now_ms=)``.
* ``outcome(evidence, verify=) -> Outcome(state "signed"|"aborted"|"none", ...)``:
  the rule of what proves what, over one exchange (its id and its originator, as
  the notary keys it); ``conflict(a, b) -> Conflict | None``: a notary
  that decided twice for one exchange or forked its chain.

Escrow (``_escrow``): content under a fresh key, the key HPKE-sealed to the notary's
``notary.escrow_key``, both labelled with the exchange.
"""

from ._escrow import (
    ESCROW_KEY_TYPE,
    EscrowKey,
    EscrowLabel,
    check_escrow_key,
    open_content,
    open_escrow,
    recover,
    seal,
    seal_content,
    seal_key,
    sign_escrow_key,
)

__all__ = [
    "ESCROW_KEY_TYPE",
    "EscrowKey",
    "EscrowLabel",
    "check_escrow_key",
    "open_content",
    "open_escrow",
    "recover",
    "seal",
    "seal_content",
    "seal_key",
    "sign_escrow_key",
]

# -- contract signing (brief C1) --------------------------------------------------------
from ._bodies import (
    ABORT_REQUEST_TYPE,
    DECISION_TYPE,
    M1,
    M1_TYPE,
    M2,
    M2_TYPE,
    RESOLVE_REQUEST_TYPE,
    SECRETS_TYPE,
    AbortRequest,
    DecisionBody,
    ResolveRequest,
    Secrets,
)
from ._contract import (
    CONTRACT_KIND,
    AskNotary,
    Commit,
    Committed,
    NotaryAnswered,
    Originator,
    OState,
    Outcome,
    Propose,
    Proposed,
    Responder,
    Reveal,
    Revealed,
    RState,
    Signer,
    StandardContract,
    Start,
    TimedOut,
    Verifier,
    check_decision,
    outcome,
    secret_commit,
)
from ._notary import (
    Conflict,
    Decision,
    NotaryBook,
    conflict,
    contract_abort,
    contract_resolve,
)
from ._ops import CONTRACT_PROPOSE, CONTRACT_REVEAL, NOTARY_ABORT, NOTARY_RESOLVE

__all__ += [
    "ABORT_REQUEST_TYPE", "CONTRACT_KIND", "CONTRACT_PROPOSE", "CONTRACT_REVEAL",
    "DECISION_TYPE", "M1_TYPE", "M2_TYPE", "NOTARY_ABORT", "NOTARY_RESOLVE",
    "RESOLVE_REQUEST_TYPE", "AbortRequest", "AskNotary", "Commit", "Committed", "Conflict",
    "Decision", "DecisionBody", "M1", "M2", "NotaryAnswered", "NotaryBook", "OState",
    "Originator", "Outcome", "Propose", "Proposed", "RState", "ResolveRequest", "Responder",
    "Reveal", "Revealed", "Signer", "StandardContract", "Start", "TimedOut", "Verifier",
    "check_decision", "conflict", "contract_abort", "contract_resolve", "outcome",
    "secret_commit", "SECRETS_TYPE", "Secrets",
]

# -- escrow, certified mail, fair purchase (brief M1; protocol.md 10.3 to 10.5) -----------
# Mail: ``prepare(...) -> (MailOffer, ciphertext)``; sign the offer; ``MailSender(offer=,
# ciphertext=, key=)``, ``MailReceiver(receiver=)``; ``receive(event, now_ms=) ->
# pending()``, ``timer()``, ``to_record()``/``from_record()``; the notary's
# ``recover_mail``/``close_mail(book, wire, requester=, ..., now_ms=) -> Decision``.
# Fair purchase: ``prepare_goods(...) -> (FairDelivery, ciphertext)``; ``FairSeller``,
# ``FairBuyer(order=, notary=, wait_ms=)``; the notary's ``recover_goods(book, wire,
# requester=, private_keys=, verify=, verify_payment=, now_ms=)``.
from ._escrow import EscrowKeyWire  # noqa: E402
from ._fairpurchase import (  # noqa: E402
    DELIVERY_TYPE as FAIR_DELIVERY_TYPE,
)
from ._fairpurchase import (  # noqa: E402
    AskGoods,
    AskKey,
    AskRecoverGoods,
    DeliverGoods,
    FairBuyer,
    FairDelivery,
    FairSeller,
    FairState,
    GoodsArrived,
    Paid,
    PurchaseOutcome,
    ReleaseKey,
    prepare_goods,
    purchase_outcome,
    recover_goods,
)
from ._mail import (  # noqa: E402
    OFFER_TYPE as MAIL_OFFER_TYPE,
)
from ._mail import (  # noqa: E402
    RECEIPT_TYPE as MAIL_RECEIPT_TYPE,
)
from ._mail import (  # noqa: E402
    REUSED as MAIL_REUSED,
)
from ._mail import (  # noqa: E402
    AskCloseMail,
    AskRecoverMail,
    DeadlinePassed,
    DeliverMail,
    KeyGiven,
    KeyRevealed,
    MailArrived,
    MailOffer,
    MailOutcome,
    MailReceipt,
    MailReceiver,
    MailSender,
    MailState,
    ReceiptReceived,
    ReceiptSigned,
    RevealKey,
    SendReceipt,
    SignReceipt,
    close_mail,
    mail_outcome,
    prepare,
    recover_mail,
)
from ._ops import (  # noqa: E402
    FAIR_FETCH,
    FAIR_RELEASE,
    MAIL_DELIVER,
    MAIL_REVEAL,
    NOTARY_CLOSE_MAIL,
    NOTARY_ESCROW_KEY,
    NOTARY_RECOVER_GOODS,
    NOTARY_RECOVER_MAIL,
)

__all__ += [
    "FAIR_DELIVERY_TYPE", "FAIR_FETCH", "FAIR_RELEASE", "MAIL_DELIVER", "MAIL_OFFER_TYPE",
    "MAIL_REUSED",
    "MAIL_RECEIPT_TYPE", "MAIL_REVEAL", "NOTARY_CLOSE_MAIL", "NOTARY_ESCROW_KEY",
    "NOTARY_RECOVER_GOODS", "NOTARY_RECOVER_MAIL", "AskCloseMail", "AskGoods", "AskKey",
    "AskRecoverGoods", "AskRecoverMail", "DeadlinePassed", "DeliverGoods", "DeliverMail",
    "EscrowKeyWire", "FairBuyer", "FairDelivery", "FairSeller", "FairState", "GoodsArrived",
    "KeyGiven", "KeyRevealed", "MailArrived", "MailOffer", "MailReceipt", "MailReceiver",
    "MailSender", "MailState", "Paid", "ReceiptReceived", "ReceiptSigned", "ReleaseKey",
    "RevealKey", "SendReceipt", "SignReceipt", "close_mail", "prepare", "prepare_goods",
    "recover_goods", "recover_mail", "MailOutcome", "PurchaseOutcome", "mail_outcome",
    "purchase_outcome",
]
