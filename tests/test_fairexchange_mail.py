"""Certified mail, sans-IO: the faultless run, recovery through the notary (a withheld
key, a bad escrow), the sender's close after the deadline, refusals that leave the
machines unchanged, and records that restart a machine where it stopped."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import x25519
from pki import NOW, Market

from semper.services.fairexchange._errors import (
    BadKey,
    MixedEvidence,
    NotParty,
    TooEarly,
    UnexpectedStep,
    WrongExchange,
)
from semper.services.fairexchange._escrow import digest, seal_key
from semper.services.fairexchange._mail import (
    OFFER_TYPE,
    RECEIPT_TYPE,
    AskCloseMail,
    AskRecoverMail,
    CloseMailWire,
    DeadlinePassed,
    DeliverMail,
    KeyGiven,
    KeyRevealed,
    MailArrived,
    MailOffer,
    MailReceiver,
    MailSender,
    MailState,
    NotaryAnswered,
    ReceiptReceived,
    ReceiptSigned,
    RecoverMailWire,
    RevealKey,
    SendReceipt,
    SignReceipt,
    close_mail,
    mail_outcome,
    prepare,
    recover_mail,
)
from semper.services.fairexchange._notary import NotaryBook
from semper.services.statements import BadSignature, Statement, sign_statement, verify_statement

NOW_MS = int(NOW.timestamp() * 1000)
DEADLINE = NOW_MS + 60_000
LATE = DEADLINE + 1
MAIL = b"Dear Bob, this letter is certified.\n"


@dataclass
class World:
    """A market with a sender, a receiver and a notary, and their ports."""

    market: Market
    agents: dict[str, Any] = field(default_factory=dict)
    escrow_key: x25519.X25519PrivateKey = field(default_factory=x25519.X25519PrivateKey.generate)

    @classmethod
    def make(cls, folder: Path) -> World:
        world = cls(Market(folder))
        for name, role in (("alice", "buyer"), ("bob", "buyer"), ("notary", "notary"),
                           ("shop", "seller")):
            world.agents[name] = world.market.agent(name, role)
        return world

    def sign(self, name: str):
        agent = self.agents[name]

        def sign(type: str, body: dict[str, Any], now_ms: int) -> Statement:
            # deterministic nonces: the explorer's states repeat across paths
            nonce = hashlib.sha256(repr((type, sorted(body.items()), now_ms)).encode()).digest()
            return sign_statement(type, body, key=agent.key, certificate=agent.cert,
                                  now_ms=now_ms, nonce=nonce[:16])
        return sign

    def verify(self, statement: Statement, *, expected_type: str, expected_signer: str) -> None:
        by_fingerprint = {a.cert.fingerprint(_SHA256): a for a in self.agents.values()}
        agent = by_fingerprint.get(statement.signer)
        if agent is None:
            raise BadSignature("unknown signer")
        verify_statement(statement, certificate=agent.cert, root=self.market.ca.certificate,
                         crl=self.market.crl, now=NOW, expected_type=expected_type,
                         expected_signer=expected_signer)

    def book(self) -> NotaryBook:
        return NotaryBook(sign=self.sign("notary"), notary="notary")

    def offer(self, plaintext: bytes = MAIL, *, exchange: bytes = b"\x07" * 32,
              bad_escrow: bool = False) -> tuple[Statement, bytes, bytes]:
        """A signed offer, its ciphertext and its key (a bad escrow seals another key)."""
        key = hashlib.sha256(b"key" + exchange).digest()
        body, ciphertext = prepare(plaintext, exchange=exchange, sender="alice", receiver="bob",
                                   notary="notary", escrow_key=self.escrow_key.public_key(),
                                   deadline=DEADLINE, key=key, nonce=bytes(12))
        if bad_escrow:
            # a well-formed escrow of this exchange and ciphertext, holding another key
            escrow = seal_key(os.urandom(32), escrow_key=self.escrow_key.public_key(),
                              label=body.label(), ciphertext_digest=digest(ciphertext))
            body = MailOffer(**{**body.to_wire(), "escrow": escrow})
        offer = self.sign("alice")(OFFER_TYPE, body.to_body(), NOW_MS)
        return offer, ciphertext, key


_SHA256 = hashes.SHA256()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return World.make(tmp_path_factory.mktemp("mail"))


def receiver_signs(world: World, receiver: MailReceiver, offer: Statement,
                   ciphertext: bytes) -> Statement:
    [ask] = receiver.receive(MailArrived(offer, ciphertext), now_ms=NOW_MS)
    assert isinstance(ask, SignReceipt)
    receipt = world.sign("bob")(RECEIPT_TYPE, ask.body.to_body(), NOW_MS)
    [send] = receiver.receive(ReceiptSigned(receipt), now_ms=NOW_MS)
    assert send == SendReceipt(receipt=receipt)
    return receipt


def test_faultless_run(world: World) -> None:
    offer, ciphertext, key = world.offer()
    sender = MailSender(offer=offer, ciphertext=ciphertext, key=key)
    receiver = MailReceiver(receiver="bob")
    assert sender.pending() == [DeliverMail(offer=offer, ciphertext=ciphertext)]
    assert sender.timer() == DEADLINE
    receipt = receiver_signs(world, receiver, offer, ciphertext)
    world.verify(receipt, expected_type=RECEIPT_TYPE, expected_signer="bob")
    [reveal] = sender.receive(ReceiptReceived(receipt), now_ms=NOW_MS)
    assert isinstance(reveal, RevealKey) and reveal.key == key
    assert receiver.receive(KeyRevealed(reveal.key), now_ms=NOW_MS) == []
    assert sender.receive(KeyGiven(), now_ms=NOW_MS) == []
    assert receiver.state is MailState.READ and receiver.plaintext == MAIL
    assert sender.state is MailState.REVEALED and sender.receipt == receipt
    assert sender.timer() is None and receiver.timer() is None


def test_a_withheld_key_is_recovered_from_the_notary(world: World) -> None:
    offer, ciphertext, _ = world.offer()
    sender = MailSender(offer=offer, ciphertext=ciphertext, key=world.offer()[2])
    receiver = MailReceiver(receiver="bob")
    receipt = receiver_signs(world, receiver, offer, ciphertext)
    sender.receive(ReceiptReceived(receipt), now_ms=NOW_MS)  # ... and keeps the key
    [ask] = receiver.receive(DeadlinePassed(), now_ms=LATE)
    assert isinstance(ask, AskRecoverMail)
    book = world.book()
    decision = recover_mail(book, RecoverMailWire(offer=ask.offer, receipt=ask.receipt,
                                                  ciphertext=ask.ciphertext),
                            requester="bob", private_keys=[world.escrow_key],
                            verify=world.verify, now_ms=LATE)
    assert decision.new and decision.decision == "release"
    receiver.receive(NotaryAnswered(decision.statement), now_ms=LATE)
    assert receiver.state is MailState.READ and receiver.plaintext == MAIL
    # the sender asking later gets the same decision, quoting the receipt
    again = close_mail(book, CloseMailWire(offer=offer), requester="alice",
                       verify=world.verify, now_ms=LATE)
    assert not again.new and again.statement == decision.statement
    assert again.body.request == receipt


def test_a_bad_escrow_gives_the_receiver_a_finding_that_voids_the_receipt(world: World) -> None:
    offer, ciphertext, _ = world.offer(exchange=b"\x08" * 32, bad_escrow=True)
    receiver = MailReceiver(receiver="bob")
    receipt = receiver_signs(world, receiver, offer, ciphertext)
    [_ask] = receiver.receive(DeadlinePassed(), now_ms=LATE)
    book = world.book()
    decision = recover_mail(book, RecoverMailWire(offer=offer, receipt=receipt,
                                                  ciphertext=ciphertext),
                            requester="bob", private_keys=[world.escrow_key],
                            verify=world.verify, now_ms=LATE)
    assert decision.decision == "void" and decision.body.payload == b"ciphertext"
    receiver.receive(NotaryAnswered(decision.statement), now_ms=LATE)
    assert receiver.state is MailState.RESOLVED and receiver.voided
    assert receiver.plaintext is None
    # and the sender, holding the receipt, learns it is void
    sender = MailSender(offer=offer, ciphertext=ciphertext, key=world.offer(
        exchange=b"\x08" * 32)[2])
    sender.receive(DeadlinePassed(), now_ms=LATE)
    closed = close_mail(book, CloseMailWire(offer=offer), requester="alice",
                        verify=world.verify, now_ms=LATE)
    sender.receive(NotaryAnswered(closed.statement), now_ms=LATE)
    assert sender.voided and sender.receipt is None


def test_the_sender_closes_after_the_deadline_and_a_late_recovery_gets_the_abort(
        world: World) -> None:
    offer, ciphertext, key = world.offer(exchange=b"\x09" * 32)
    sender = MailSender(offer=offer, ciphertext=ciphertext, key=key)
    book = world.book()
    with pytest.raises(TooEarly):  # the receiver may recover until the deadline
        close_mail(book, CloseMailWire(offer=offer), requester="alice", verify=world.verify,
                   now_ms=NOW_MS)
    assert sender.receive(DeadlinePassed(), now_ms=LATE) == [AskCloseMail(offer=offer)]
    aborted = close_mail(book, CloseMailWire(offer=offer), requester="alice",
                         verify=world.verify, now_ms=LATE)
    assert aborted.decision == "abort"
    sender.receive(NotaryAnswered(aborted.statement), now_ms=LATE)
    assert sender.state is MailState.RESOLVED and sender.voided
    # a receipt arriving late changes nothing: the notary decided
    receiver = MailReceiver(receiver="bob")
    receipt = receiver_signs(world, receiver, offer, ciphertext)
    sender.receive(ReceiptReceived(receipt), now_ms=LATE)
    assert sender.receipt is None
    receiver.receive(DeadlinePassed(), now_ms=LATE)
    late = recover_mail(book, RecoverMailWire(offer=offer, receipt=receipt,
                                              ciphertext=ciphertext),
                        requester="bob", private_keys=[world.escrow_key],
                        verify=world.verify, now_ms=LATE)
    assert late.statement == aborted.statement
    receiver.receive(NotaryAnswered(late.statement), now_ms=LATE)
    assert receiver.voided and receiver.plaintext is None


def test_refusals_leave_the_machines_unchanged(world: World) -> None:
    offer, ciphertext, key = world.offer(exchange=b"\x0a" * 32)
    receiver = MailReceiver(receiver="bob")
    with pytest.raises(WrongExchange):  # not the offer's ciphertext
        receiver.receive(MailArrived(offer, ciphertext + b"x"), now_ms=NOW_MS)
    with pytest.raises(WrongExchange):  # for someone else
        MailReceiver(receiver="carol").receive(MailArrived(offer, ciphertext), now_ms=NOW_MS)
    with pytest.raises(WrongExchange):  # past its deadline
        receiver.receive(MailArrived(offer, ciphertext), now_ms=LATE)
    assert receiver.state is MailState.IDLE
    receipt = receiver_signs(world, receiver, offer, ciphertext)
    with pytest.raises(BadKey):  # a wrong key
        receiver.receive(KeyRevealed(os.urandom(32)), now_ms=NOW_MS)
    assert receiver.state is MailState.SIGNED and receiver.plaintext is None
    book = world.book()
    wire = RecoverMailWire(offer=offer, receipt=receipt, ciphertext=ciphertext)
    with pytest.raises(NotParty):  # only the receiver recovers
        recover_mail(book, wire, requester="alice", private_keys=[world.escrow_key],
                     verify=world.verify, now_ms=LATE)
    forged = Statement(**{**_fields(receipt), "signature": bytes(64)})
    with pytest.raises(BadSignature):
        recover_mail(book, RecoverMailWire(offer=offer, receipt=forged, ciphertext=ciphertext),
                     requester="bob", private_keys=[world.escrow_key], verify=world.verify,
                     now_ms=LATE)
    assert book.get(b"\x0a" * 32, initiator="alice") is None
    # a receipt of another offer (another exchange) is not this offer's
    other, other_ct, _ = world.offer(exchange=b"\x0b" * 32)
    other_receipt = receiver_signs(world, MailReceiver(receiver="bob"), other, other_ct)
    with pytest.raises(WrongExchange):
        recover_mail(book, RecoverMailWire(offer=offer, receipt=other_receipt,
                                           ciphertext=ciphertext),
                     requester="bob", private_keys=[world.escrow_key], verify=world.verify,
                     now_ms=LATE)
    # an event with no transition puts the machine in ERROR for good
    with pytest.raises(UnexpectedStep):
        receiver.receive(ReceiptSigned(receipt), now_ms=NOW_MS)
    with pytest.raises(UnexpectedStep):
        receiver.receive(KeyRevealed(key), now_ms=NOW_MS)


def _fields(statement: Statement) -> dict[str, Any]:
    return {"type": statement.type, "body": statement.body, "signer": statement.signer,
            "issued_at": statement.issued_at, "nonce": statement.nonce,
            "signature": statement.signature}


def test_records_restart_the_machines(world: World) -> None:
    offer, ciphertext, key = world.offer(exchange=b"\x0c" * 32)
    sender = MailSender(offer=offer, ciphertext=ciphertext, key=key)
    receiver = MailReceiver(receiver="bob")
    receipt = receiver_signs(world, receiver, offer, ciphertext)
    sender.receive(ReceiptReceived(receipt), now_ms=NOW_MS)
    sender2 = MailSender.from_record(sender.to_record())
    receiver2 = MailReceiver.from_record(receiver.to_record())
    assert sender2.pending() == sender.pending() and receiver2.pending() == receiver.pending()
    assert receiver2.timer() == DEADLINE
    with pytest.raises(ValueError):
        MailSender.from_record(receiver.to_record())
    with pytest.raises(ValueError):
        MailReceiver.from_record({**receiver.to_record(), "state": "nonsense"})


def test_what_proves_what(world: World) -> None:
    """mail_outcome applies protocol.md 10.4's rule to each exchange's evidence."""
    def outcome(*evidence: Statement) -> Any:
        return mail_outcome(evidence, verify=world.verify)

    assert outcome().state == "none"
    offer, ciphertext, _ = world.offer(exchange=b"\x21" * 32)
    assert outcome(offer).state == "offered"
    receipt = receiver_signs(world, MailReceiver(receiver="bob"), offer, ciphertext)
    found = outcome(offer, receipt)
    assert (found.state, found.resolved_by, found.proof) == ("delivered", "exchange", receipt)
    # released by the notary: delivered whatever else is shown
    book = world.book()
    released = recover_mail(book, RecoverMailWire(offer=offer, receipt=receipt,
                                                  ciphertext=ciphertext),
                            requester="bob", private_keys=[world.escrow_key],
                            verify=world.verify, now_ms=LATE).statement
    assert outcome(offer, released).resolved_by == "notary"
    # a bad escrow's finding voids the receipt, with its reason
    bad, bad_ct, _ = world.offer(exchange=b"\x22" * 32, bad_escrow=True)
    bad_receipt = receiver_signs(world, MailReceiver(receiver="bob"), bad, bad_ct)
    void = recover_mail(book, RecoverMailWire(offer=bad, receipt=bad_receipt,
                                              ciphertext=bad_ct),
                        requester="bob", private_keys=[world.escrow_key],
                        verify=world.verify, now_ms=LATE).statement
    found = outcome(bad, bad_receipt, void)
    assert (found.state, found.reason) == ("void", "ciphertext")
    # the sender's close voids a receipt that reached it late
    late, late_ct, _ = world.offer(exchange=b"\x23" * 32)
    late_receipt = receiver_signs(world, MailReceiver(receiver="bob"), late, late_ct)
    abort = close_mail(book, CloseMailWire(offer=late), requester="alice",
                       verify=world.verify, now_ms=LATE).statement
    assert outcome(late_receipt, late, abort).state == "aborted"
    # refused: two mails together, a receipt of another mail, a receipt without its offer
    with pytest.raises(MixedEvidence):
        outcome(offer, late)
    with pytest.raises(WrongExchange):
        outcome(offer, late_receipt)
    with pytest.raises(MixedEvidence):
        outcome(receipt)
    with pytest.raises(BadSignature):
        outcome(offer, Statement(**{**_fields(receipt), "signature": bytes(64)}))


def test_a_decision_for_another_initiators_exchange_is_not_this_mails(world: World) -> None:
    """An exchange is its id and its initiator (protocol.md 10.1), for the rule as at
    the notary and in ``conflict``: a decision naming another initiator (here the
    notary's release re-signed as shop's, same id and subject) is not evidence about
    alice's mail. Counted, a notary could abort alice's mail and release "shop's"
    with the same id, and ``conflict`` (which keys by initiator) would not see two
    decisions for one exchange. The receiver's machine refuses it too."""
    offer, ciphertext, _ = world.offer(exchange=b"\x24" * 32)
    receiver = MailReceiver(receiver="bob")
    receipt = receiver_signs(world, receiver, offer, ciphertext)
    released = recover_mail(world.book(), RecoverMailWire(offer=offer, receipt=receipt,
                                                          ciphertext=ciphertext),
                            requester="bob", private_keys=[world.escrow_key],
                            verify=world.verify, now_ms=LATE).statement
    assert released.body["initiator"] == "alice"
    theirs = world.sign("notary")(released.type, {**released.body, "initiator": "shop"}, LATE)
    with pytest.raises(WrongExchange) as info:
        mail_outcome([offer, theirs], verify=world.verify)
    assert info.value.detail == {"field": "initiator"}
    assert mail_outcome([offer, released], verify=world.verify).resolved_by == "notary"
    receiver.receive(DeadlinePassed(), now_ms=LATE)
    with pytest.raises(WrongExchange):
        receiver.receive(NotaryAnswered(theirs), now_ms=LATE)
    assert receiver.state is MailState.RECOVERING


def test_an_exchange_id_squatted_by_another_sender_does_not_block_the_receiver(
        world: World) -> None:
    """The sender's confederate (shop) signs an offer of its own with the sender's
    exchange id and closes it at the notary first. Keyed by the id alone, the notary
    would refuse the receiver's recovery (conflicting_exchange) while the sender holds
    its receipt: unfair. It keys an exchange by its initiator (the offer's signer) and
    the id (protocol.md 10.1), as for contracts, so the receiver gets the key."""
    exchange = b"\x0b" * 32
    offer, ciphertext, _ = world.offer(exchange=exchange)
    receiver = MailReceiver(receiver="bob")
    receipt = receiver_signs(world, receiver, offer, ciphertext)
    book = world.book()
    squat_body, _ = prepare(b"squat", exchange=exchange, sender="shop", receiver="alice",
                            notary="notary", escrow_key=world.escrow_key.public_key(),
                            deadline=DEADLINE, key=bytes(32), nonce=bytes(12))
    squat = world.sign("shop")(OFFER_TYPE, squat_body.to_body(), NOW_MS)
    closed = close_mail(book, CloseMailWire(offer=squat), requester="shop",
                        verify=world.verify, now_ms=LATE)
    assert closed.new and closed.decision == "abort"
    decision = recover_mail(book, RecoverMailWire(offer=offer, receipt=receipt,
                                                  ciphertext=ciphertext),
                            requester="bob", private_keys=[world.escrow_key],
                            verify=world.verify, now_ms=LATE)
    assert decision.new and decision.decision == "release"
    assert decision.body.initiator == "alice"
