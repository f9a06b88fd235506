"""Findings about the notary made while extending the hostile peer (bench/fuzz_peer.py)
to the notary's ops (issue 9).

A certified mail's exchange id is scoped by its sender (protocol.md 10.1), and the
notary decides an exchange id once: a second request for it with other content is
refused (``fairexchange.conflicting_exchange``). The sender, who chooses the id, can
therefore take it first at the notary with other content (a decoy offer closed after
its deadline, or a contract it aborts), then send the real mail under the same id:
the receiver signs its receipt, the sender keeps the key, and the receiver's recovery
was refused, so its signed receipt stood as proof of delivery (mail_outcome: "a
receipt of the offer proves delivery") though it never got the key. Fixed: the
notary answers a reused id with its standing decision, whose other subject voids the
receipt (``reused_exchange``, protocol.md 10.4), in the receiver's machine and in
the rule alike.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
from test_fairexchange_mail import LATE, MAIL, NOW_MS, World, receiver_signs

from semper.services.fairexchange import Originator, Start, TimedOut, contract_abort
from semper.services.fairexchange._errors import FairExchangeError
from semper.services.fairexchange._mail import (
    CloseMailWire,
    DeadlinePassed,
    MailReceiver,
    NotaryAnswered,
    RecoverMailWire,
    close_mail,
    mail_outcome,
    recover_mail,
)
from semper.services.fairexchange._notary import NotaryBook


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return World.make(tmp_path_factory.mktemp("fuzz_notary"))


def _take_with_a_closed_offer(world: World, book: NotaryBook, exchange: bytes) -> None:
    decoy, _, _ = world.offer(b"a decoy\n", exchange=exchange)
    close_mail(book, CloseMailWire(offer=decoy), requester="alice", verify=world.verify,
               now_ms=LATE)


def _take_with_an_aborted_contract(world: World, book: NotaryBook, exchange: bytes) -> None:
    # another kind: the sender, as a contract's originator, aborts the same id
    originator = Originator(exchange=exchange, originator="alice", responder="bob",
                            notary="notary", text=b"a decoy\n", secret=os.urandom(32),
                            sign=world.sign("alice"), verify=world.verify)
    originator.receive(Start(), now_ms=NOW_MS)
    [ask] = originator.receive(TimedOut(), now_ms=NOW_MS)
    contract_abort(book, ask.request, requester="alice", verify=world.verify, now_ms=NOW_MS)


@pytest.mark.parametrize("take", [_take_with_a_closed_offer, _take_with_an_aborted_contract],
                         ids=["closed_offer", "aborted_contract"])
def test_a_sender_that_took_the_exchange_id_first_cannot_keep_a_receipt_for_nothing(
        world: World, take: Any) -> None:
    exchange = os.urandom(32)
    book = world.book()
    take(world, book, exchange)
    offer, ciphertext, _ = world.offer(MAIL, exchange=exchange)
    receiver = MailReceiver(receiver="bob")
    receipt = receiver_signs(world, receiver, offer, ciphertext)
    receiver.receive(DeadlinePassed(), now_ms=LATE)  # the sender kept the key
    held = [offer, receipt]
    try:
        decision = recover_mail(book, RecoverMailWire(offer=offer, receipt=receipt,
                                                      ciphertext=ciphertext),
                                requester="bob", private_keys=[world.escrow_key],
                                verify=world.verify, now_ms=LATE)
    except FairExchangeError as exc:
        refused = exc.code
    else:
        refused = None
        held.append(decision.statement)
    # Fair: with all the receiver holds, it read the mail or its receipt is void.
    outcome = mail_outcome(held, verify=world.verify)
    assert outcome.state != "delivered" or (
        outcome.resolved_by == "notary" and outcome.proof is not None), refused
    # Here: the notary answers the standing decision, which voids the receipt.
    assert refused is None and not decision.new
    assert (outcome.state, outcome.reason) == ("void", "reused_exchange")
    receiver.receive(NotaryAnswered(decision.statement), now_ms=LATE)
    assert receiver.voided and receiver.plaintext is None
