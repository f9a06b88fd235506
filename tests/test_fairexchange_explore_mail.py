"""Fairness of certified mail and fair purchase, proved over the state space (issue 9,
first Done-when line, for mail and purchase): a depth-first search over every
interleaving of the two parties' and the notary's steps on the REAL sans-IO machines
(real Ed25519 signatures, real HPKE escrows, real checks), with

* every crash point: a party (the notary too) may crash while handling a message
  (before it persisted: the message is gone, its state unchanged) or after it
  persisted and before it sent (what it was to send is not sent). Every step loads
  each machine from its persisted record (``from_record``) and persists it again
  (``to_record``), so every state is a restart state: after a crash the party
  resumes from ``pending()`` and ``timer()``, or stays silent;
* message loss (a budget) and delivery in any order, between the parties and
  towards and from the notary; a party whose request was lost asks again;
* the deadline (the buyer's wait after paying) passing at any point;
* one dishonest party per run: a sender that withholds the key or gives a bad
  escrow, a receiver that withholds its receipt (and still goes to the notary,
  early or late); a seller that withholds the key or gives a bad escrow, a buyer
  that withholds the payment.

States are deduplicated by a canonical key (the records, the messages in flight,
the budgets left). At every terminal state (no move changes anything):

* mail: an honest receiver holds the mail (opened to the signed digest) whenever
  the sender holds a receipt the notary did not void, or it holds the notary's
  finding (``void``/``abort``); an honest sender holds a receipt the notary did not
  void whenever the receiver holds the mail;
* purchase: an honest buyer that paid holds the goods matching the offer's digest or
  the notary's refund finding; an honest seller is paid whenever the buyer holds the
  goods;
* the notary answered one decision per exchange: every decision any party holds is
  the book's, byte for byte.

The number of states explored is asserted and printed with ``-s``.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import pytest
from test_fairexchange_mail import LATE, MAIL, NOW_MS, World
from test_fairexchange_purchase import GOODS, PRICE, WAIT, Shop

from semper.services import ServiceError
from semper.services.commerce import Pay
from semper.services.fairexchange import (
    DecisionBody,
    NotaryAnswered,
    NotaryBook,
)
from semper.services.fairexchange._errors import UnexpectedStep
from semper.services.fairexchange._fairpurchase import (
    AskGoods,
    AskKey,
    AskRecoverGoods,
    DeliverGoods,
    FairBuyer,
    FairSeller,
    FairState,
    GoodsArrived,
    Paid,
    RecoverGoodsWire,
    ReleaseKey,
    recover_goods,
)
from semper.services.fairexchange._mail import (
    RECEIPT_TYPE,
    AskCloseMail,
    AskRecoverMail,
    CloseMailWire,
    DeadlinePassed,
    DeliverMail,
    KeyGiven,
    KeyRevealed,
    MailArrived,
    MailReceipt,
    MailReceiver,
    MailSender,
    MailState,
    ReceiptReceived,
    ReceiptSigned,
    RecoverMailWire,
    RevealKey,
    SendReceipt,
    SignReceipt,
    close_mail,
    recover_mail,
)
from semper.services.statements import Statement, canonical_decode, canonical_encode

_REFUSED = (ServiceError,)  # a coded refusal: the message is dropped, nothing changes


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    made = World.make(tmp_path_factory.mktemp("explore"))
    made.agents["bank"] = made.market.agent("bank", "bank")
    return made


# -- the search ---------------------------------------------------------------------------

class State(NamedTuple):
    """One global state. Machines are canonical bytes of their records (what a party
    keeps across a crash); ``net`` the messages in flight as (to, kind, bytes)."""

    a: bytes                     # sender / seller record
    b: bytes                     # receiver / buyer record
    n: bytes                     # the notary's book record
    net: frozenset[tuple[str, str, bytes]]
    late: bool = False           # the deadline (the buyer's wait) has passed
    paid: bool = False           # purchase: the bank moved the money to the seller
    losses: int = 1              # messages the network may still lose
    crashes: frozenset[str] = frozenset("abn")  # parties that may still crash (once)
    keyed: bool = False          # a key was sent to b (a dishonest b has it)
    gone: frozenset[str] = frozenset()  # dishonest parties that went silent for good


def explore(start: State, successors: Callable[[State], Iterator[State]],
            check: Callable[[State], None], limit: int = 200_000) -> tuple[int, int]:
    """Depth-first over every state reachable from ``start``; ``check`` each terminal
    state (one whose every successor is itself). Returns (states, terminals)."""
    seen = {start}
    stack = [start]
    terminals = 0
    while stack:
        state = stack.pop()
        moved = False
        for nxt in successors(state):
            if nxt == state:
                continue
            moved = True
            if nxt not in seen:
                seen.add(nxt)
                stack.append(nxt)
                assert len(seen) <= limit, "the state space is larger than expected"
        if not moved:
            terminals += 1
            check(state)
    return len(seen), terminals


class Records:
    """A machine kind's records: loading (``from_record``) and saving (``to_record``)
    with every distinct machine state decoded and encoded once. A machine state seen
    for the first time is saved, restored from its canonical bytes and compared: the
    restored machine is the same (fields, ``pending()``, ``timer()``) and is the one
    used from then on, so every step of the search starts from a restart."""

    def __init__(self, cls: Any) -> None:
        self.cls = cls
        self.machines: dict[bytes, Any] = {}
        self.saved: dict[tuple[Any, ...], bytes] = {}

    def load(self, data: bytes) -> Any:
        machine = self.machines.get(data)
        if machine is None:
            machine = self.machines[data] = self.cls.from_record(canonical_decode(data))
        return copy.copy(machine)  # fields are immutable: receive() only rebinds them

    def save(self, machine: Any) -> bytes:
        key = _identity(machine)
        data = self.saved.get(key)
        if data is None:
            data = canonical_encode(machine.to_record())
            restored = self.cls.from_record(canonical_decode(data))
            assert _identity(restored) == key, "the record does not restore the machine"
            assert restored.pending() == machine.pending()
            assert restored.timer() == machine.timer()
            self.saved[key], self.machines[data] = data, restored
        return data


def _identity(machine: Any) -> tuple[Any, ...]:
    values = [getattr(machine, "_" + name) for name in machine._FIELDS]
    return (type(machine).__name__, machine.state,
            *(v.digest if isinstance(v, Statement) else v for v in values))


def _enc(record: dict[str, Any]) -> bytes:
    return canonical_encode(record)


Message = tuple[str, str, bytes]


def _with(state: State, *messages: Message, **changes: Any) -> State:
    if any(to == "b" and kind in ("reveal", "key") for to, kind, _ in messages):
        changes["keyed"] = True  # a dishonest b reads it off the wire, lost or not
    return state._replace(net=state.net | frozenset(messages), **changes)


def _network(state: State) -> Iterator[tuple[Message, State]]:
    """Each message in flight, taken off the network, to be handled."""
    for message in sorted(state.net):
        yield message, state._replace(net=state.net - {message})


def _faults(state: State) -> Iterator[State]:
    """A message lost, or its receiver crashing while handling it (before it
    persisted anything): gone, nothing else changed."""
    for message in sorted(state.net):
        rest = state.net - {message}
        if state.losses:
            yield state._replace(net=rest, losses=state.losses - 1)
        if message[0] in state.crashes:
            yield state._replace(net=rest, crashes=state.crashes - {message[0]})


class Run:
    """What a run's machines share: loading and saving records, the notary's book."""

    def __init__(self, world: World, dishonest: str | None) -> None:
        self.world = world
        self.dishonest = dishonest
        self.sign_notary = world.sign("notary")
        self.books: dict[bytes, NotaryBook] = {}
        self.statements: dict[bytes, Statement] = {}
        self.effects: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
        self.verified: dict[tuple[bytes, str, str], tuple[ServiceError | None, bool]] = {}
        self.answers: dict[tuple[bytes, str, bytes, bool], tuple[bytes, bytes, bool] | None] = {}

    def book(self, state: State) -> NotaryBook:
        book = self.books.get(state.n)
        if book is None:
            book = NotaryBook.from_record(canonical_decode(state.n), sign=self.sign_notary)
            self.books[state.n] = book
        clone = copy.copy(book)
        clone._decisions = dict(book._decisions)  # decide() adds to it
        return clone

    def verify(self, statement: Statement, *, expected_type: str, expected_signer: str) -> None:
        """``world.verify``, each answer computed once (it is a pure function)."""
        key = (statement.digest, expected_type, expected_signer)
        known = self.verified.get(key)
        if known is None:
            try:
                self.world.verify(statement, expected_type=expected_type,
                                  expected_signer=expected_signer)
                known = None, True
            except ServiceError as exc:
                known = exc, False
            self.verified[key] = known
        if known[0] is not None:
            raise known[0]

    def notary(self, state: State, kind: str, data: bytes,
               decide: Callable[[NotaryBook], Any]) -> tuple[bytes, bytes, bool] | None:
        """The notary's answer to a request (its new book, the decision, whether it
        is new) or None for a refusal; each (book, request, time) computed once."""
        key = (state.n, kind, data, state.late)
        if key not in self.answers:
            book = self.book(state)
            try:
                decision = decide(book)
            except _REFUSED:
                self.answers[key] = None
            else:
                self.answers[key] = (_enc(book.to_record()), decision.statement.to_bytes(),
                                     decision.new)
        return self.answers[key]

    def now(self, state: State) -> int:
        return LATE if state.late else NOW_MS

    #: the signer of the exchange's first message, by which the notary keys it
    initiator = "alice"

    def decision_of(self, state: State, exchange: bytes) -> str | None:
        held = self.book(state).get(exchange, initiator=self.initiator)
        return None if held is None else DecisionBody.from_statement(held).decision

    def feed(self, machine: Any, event: object, state: State, party: str) -> bool:
        """Feed ``event``; False if it was refused (the message is dropped). An honest
        party never makes an unexpected step."""
        try:
            machine.receive(event, now_ms=self.now(state))
        except UnexpectedStep:
            assert self.dishonest is not None and party in self.dishonest_parties, \
                f"an honest {party} took an unexpected step: {event}"
            return False
        except _REFUSED:
            return False
        return True

    def _common(self, state: State) -> Iterator[State]:
        """Time passing, faults, and a dishonest party going silent for good."""
        if not state.late:
            yield state._replace(late=True)
        yield from _faults(state)
        for party in self.dishonest_parties - state.gone:
            yield state._replace(gone=state.gone | {party})

    def _steps(self, state: State, a_steps: Callable[[State], Iterator[State]],
               b_steps: Callable[[State], Iterator[State]]) -> Iterator[State]:
        """Every move from ``state``: time, faults, each party's own steps, each
        message in flight handled by its receiver."""
        yield from self._common(state)
        if "a" not in state.gone:
            yield from self._memo(("a",), state, a_steps)
        if "b" not in state.gone:
            yield from self._memo(("b",), state, b_steps)
        for message, rest in _network(state):
            if message[0] in state.gone:
                yield rest
            else:
                yield from self._memo(("h", message), rest,
                                      lambda s, m=message: self._handle(m, s))

    def _memo(self, tag: tuple[Any, ...], state: State,
              step: Callable[[State], Iterator[State]]) -> Iterator[State]:
        """``step(state)``, computed once per (machines, book, clock, budgets): a step
        reads those and never the other messages in flight, so its effect (fields
        changed, messages added) is the same over every ``net``; it is found on the
        state without them and applied to each."""
        key = (*tag, state.a, state.b, state.n, state.late, state.paid, state.crashes,
               state.keyed)
        effects = self.effects.get(key)
        if effects is None:
            bare = state._replace(net=frozenset())
            effects = self.effects[key] = [
                {f: v for f, v in zip(State._fields, out, strict=True)
                 if v != getattr(bare, f)} for out in step(bare)]
        for effect in effects:
            added = effect.get("net", frozenset())
            yield state._replace(**{**effect, "net": state.net | added})

    def statement(self, data: bytes) -> Statement:
        """A statement from its bytes, each decoded once."""
        known = self.statements.get(data)
        if known is None:
            known = self.statements[data] = Statement.from_bytes(data)
        return known

    def _answer(self, state: State, kind: str, data: bytes,
                decide: Callable[[NotaryBook], Any], to: str) -> Iterator[State]:
        answer = self.notary(state, kind, data, decide)
        if answer is None:
            yield state
            return
        book, decision, new = answer
        saved = state._replace(n=book)
        yield _with(saved, (to, "decision", decision))
        if "n" in state.crashes and new:  # persisted, crashed before answering
            yield saved._replace(crashes=state.crashes - {"n"})

    dishonest_parties: frozenset[str] = frozenset()


# -- certified mail ---------------------------------------------------------------------------

class MailRun(Run):
    """Sender ``a`` (alice), receiver ``b`` (bob), the notary ``n``."""

    def __init__(self, world: World, dishonest: str | None) -> None:
        super().__init__(world, dishonest)
        self.dishonest_parties = frozenset(
            {"withhold_key": "a", "bad_escrow": "a", "bad_escrow_reveals": "a",
             "withhold_receipt": "b"}.get(dishonest or "", ""))
        bad = dishonest in ("bad_escrow", "bad_escrow_reveals")
        self.exchange = bytes([0x40 + len(dishonest or "")]) * 32
        self.offer, self.ciphertext, self.key = world.offer(exchange=self.exchange,
                                                            bad_escrow=bad)
        sender = MailSender(offer=self.offer, ciphertext=self.ciphertext, key=self.key)
        self.ra, self.rb = Records(MailSender), Records(MailReceiver)
        self.start = State(a=self.ra.save(sender),
                           b=self.rb.save(MailReceiver(receiver="bob")),
                           n=_enc(self.world.book().to_record()), net=frozenset())

    def sender(self, state: State) -> MailSender:
        return self.ra.load(state.a)  # type: ignore[no-any-return]

    def receiver(self, state: State) -> MailReceiver:
        return self.rb.load(state.b)  # type: ignore[no-any-return]

    def successors(self, state: State) -> Iterator[State]:
        yield from self._steps(state, self._sender_steps, self._receiver_steps)

    def _sender_steps(self, state: State) -> Iterator[State]:
        sender = self.sender(state)
        withholds = self.dishonest in ("withhold_key", "bad_escrow")
        for action in sender.pending():
            if isinstance(action, DeliverMail):
                yield _with(state, ("b", "deliver", b""))
            elif isinstance(action, RevealKey) and not withholds:
                sent = ("b", "reveal", action.key)
                yield _with(state, sent)  # sent, then a crash before KeyGiven is saved
                if self.feed(sender, KeyGiven(), state, "a"):
                    yield _with(state, sent, a=self.ra.save(sender))
            elif isinstance(action, AskCloseMail):
                yield _with(state, ("n", "close", b""))
        sender = self.sender(state)
        if state.late and sender.timer() is not None:
            if self.feed(sender, DeadlinePassed(), state, "a"):
                yield state._replace(a=self.ra.save(sender))

    def _receiver_steps(self, state: State) -> Iterator[State]:
        receiver = self.receiver(state)
        withholds = self.dishonest == "withhold_receipt"
        for action in receiver.pending():
            if isinstance(action, SignReceipt):
                receipt = self.world.sign("bob")(RECEIPT_TYPE, action.body.to_body(),
                                                 self.now(state))
                if self.feed(receiver, ReceiptSigned(receipt), state, "b"):
                    yield state._replace(b=self.rb.save(receiver))
            elif isinstance(action, SendReceipt) and not withholds:
                yield _with(state, ("a", "receipt", action.receipt.to_bytes()))
            elif isinstance(action, AskRecoverMail):
                yield _with(state, ("n", "recover", action.receipt.to_bytes()))
        if withholds and receiver.receipt is not None:  # to the notary at any time
            yield _with(state, ("n", "recover", receiver.receipt.to_bytes()))
        receiver = self.receiver(state)
        if state.late and receiver.timer() is not None:
            if self.feed(receiver, DeadlinePassed(), state, "b"):
                yield state._replace(b=self.rb.save(receiver))

    def _handle(self, message: Message, state: State) -> Iterator[State]:
        to, kind, data = message
        if to == "n":
            yield from self._notary(kind, data, state)
            return
        if to == "a":
            machine: Any = self.sender(state)
            event: object = (ReceiptReceived(self._verified(data, RECEIPT_TYPE, "bob"))
                             if kind == "receipt" else NotaryAnswered(self.statement(data)))
        else:
            machine = self.receiver(state)
            event = {"deliver": lambda: MailArrived(self.offer, self.ciphertext),
                     "reveal": lambda: KeyRevealed(data),
                     "decision": lambda: NotaryAnswered(self.statement(data))}[kind]()
        if self.feed(machine, event, state, to):
            yield state._replace(**{to: (self.ra if to == "a" else self.rb).save(machine)})
        else:
            yield state

    def _verified(self, data: bytes, type: str, signer: str) -> Statement:
        statement = self.statement(data)
        self.verify(statement, expected_type=type, expected_signer=signer)
        return statement

    def _notary(self, kind: str, data: bytes, state: State) -> Iterator[State]:
        if kind == "recover":
            to = "b"

            def decide(book: NotaryBook) -> Any:
                wire = RecoverMailWire(offer=self.offer, receipt=self.statement(data),
                                       ciphertext=self.ciphertext)
                return recover_mail(book, wire, requester="bob",
                                    private_keys=[self.world.escrow_key], verify=self.verify,
                                    now_ms=self.now(state))
        else:
            to = "a"

            def decide(book: NotaryBook) -> Any:
                return close_mail(book, CloseMailWire(offer=self.offer), requester="alice",
                                  verify=self.verify, now_ms=self.now(state))
        yield from self._answer(state, kind, data, decide, to)

    def check(self, state: State) -> None:
        sender, receiver = self.sender(state), self.receiver(state)
        decision = self.decision_of(state, self.exchange)
        voided = decision in ("void", "abort")
        mail_held = receiver.plaintext is not None
        assert not mail_held or receiver.plaintext == MAIL
        receiver_can_read = mail_held or decision == "release" \
            or (state.keyed and "b" in self.dishonest_parties)
        signed_receipt = sender._receipt is not None  # what it holds, void or not
        valid_receipt = signed_receipt and not voided
        self._one_decision(state, sender.decision, receiver.decision)
        if "a" not in self.dishonest_parties:
            assert sender.state in (MailState.REVEALED, MailState.RESOLVED), sender
            assert valid_receipt == (sender.receipt is not None), "the sender knows"
            if receiver_can_read:
                assert valid_receipt, "the receiver reads the mail, the sender has no receipt"
        if "b" not in self.dishonest_parties:
            assert receiver.state in (MailState.IDLE, MailState.READ, MailState.RESOLVED,
                                      MailState.DECLINED), receiver
            if valid_receipt:
                assert mail_held, "the sender holds a valid receipt, the receiver no mail"
            if not mail_held and receiver.receipt is not None:
                assert receiver.voided, "the receiver signed, has no mail and no finding"

    def _one_decision(self, state: State, *held: Statement | None) -> None:
        book = self.book(state).get(self.exchange, initiator=self.initiator)
        for decision in held:
            assert decision is None or decision == book, "two decisions for one exchange"


# -- fair purchase ----------------------------------------------------------------------------

class PurchaseRun(Run):
    """Seller ``a`` (shop), buyer ``b`` (bob), the notary ``n``; the bank moves money
    atomically when the buyer pays (``State.paid``)."""

    initiator = "bob"  # the buyer, who signed the order

    def __init__(self, world: World, dishonest: str | None) -> None:
        super().__init__(world, dishonest)
        self.dishonest_parties = frozenset(
            {"withhold_key": "a", "bad_escrow": "a", "bad_escrow_releases": "a",
             "withhold_payment": "b"}.get(dishonest or "", ""))
        self.shop = Shop(world, key_seed=b"explore-" + (dishonest or "none").encode())
        if dishonest in ("bad_escrow", "bad_escrow_releases"):
            self.shop.bad_escrow()
        self.payment = self.shop.pay()
        seller = FairSeller(delivery=self.shop.delivery, ciphertext=self.shop.ciphertext,
                            key=self.shop.key)
        buyer = FairBuyer(order=self.shop.order, notary="notary", wait_ms=WAIT)
        self.ra, self.rb = Records(FairSeller), Records(FairBuyer)
        assert seller.pending() == [DeliverGoods(delivery=self.shop.delivery,
                                                 ciphertext=self.shop.ciphertext)]
        self.shop.verify_payment(self.payment, order=self.shop.order.digest, seller="shop",
                                 amount=PRICE)
        self.start = State(a=self.ra.save(seller), b=self.rb.save(buyer),
                           n=_enc(self.world.book().to_record()), net=frozenset())

    def seller(self, state: State) -> FairSeller:
        return self.ra.load(state.a)  # type: ignore[no-any-return]

    def buyer(self, state: State) -> FairBuyer:
        return self.rb.load(state.b)  # type: ignore[no-any-return]

    def successors(self, state: State) -> Iterator[State]:
        yield from self._steps(state, self._seller_steps, self._buyer_steps)

    def _seller_steps(self, state: State) -> Iterator[State]:
        seller = self.seller(state)
        withholds = self.dishonest in ("withhold_key", "bad_escrow")
        for action in seller.pending():
            if isinstance(action, ReleaseKey) and not withholds:
                sent = ("b", "key", action.key)
                yield _with(state, sent)  # sent, then a crash before KeyGiven is saved
                if self.feed(seller, KeyGiven(), state, "a"):
                    yield _with(state, sent, a=self.ra.save(seller))
            # DeliverGoods is the answer to fair.fetch (_handle)

    def _buyer_steps(self, state: State) -> Iterator[State]:
        buyer = self.buyer(state)
        for action in buyer.pending():
            if isinstance(action, AskGoods):
                yield _with(state, ("a", "fetch", b""))
            elif isinstance(action, Pay) and self.dishonest != "withhold_payment":
                assert action.amount == PRICE and action.payee == "shop"
                # the bank moves the money (idempotent: the order's key) and confirms
                if self.feed(buyer, Paid(self.payment), state, "b"):
                    yield _with(state, ("a", "paid", b""), b=self.rb.save(buyer),
                                paid=True)
                if not state.paid:  # paid, then crashed before saving the confirmation
                    yield _with(state, ("a", "paid", b""), paid=True)
            elif isinstance(action, AskKey):
                yield _with(state, ("a", "release", b""))
            elif isinstance(action, AskRecoverGoods):
                yield _with(state, ("n", "recover", b""))
        buyer = self.buyer(state)
        if state.late and buyer.timer() is not None:
            if self.feed(buyer, DeadlinePassed(), state, "b"):
                yield state._replace(b=self.rb.save(buyer))

    def _handle(self, message: Message, state: State) -> Iterator[State]:
        to, kind, data = message
        if to == "n":
            yield from self._notary(state)
            return
        if to == "a":
            seller = self.seller(state)
            if kind == "fetch":  # answered with the delivery its machine holds
                yield _with(state, ("b", "goods", b""))
                return
            # fair.release and the payment module's notice: the seller checks the
            # payment (__init__ did, once: the same confirmation every time)
            assert state.paid  # nobody shows a payment the bank did not make
            if self.feed(seller, Paid(self.payment), state, "a"):
                yield state._replace(a=self.ra.save(seller))
            else:
                yield state
            return
        buyer = self.buyer(state)
        event = {"goods": lambda: GoodsArrived(self.shop.delivery, self.shop.ciphertext),
                 "key": lambda: KeyRevealed(data),
                 "decision": lambda: NotaryAnswered(self.statement(data))}[kind]()
        if self.feed(buyer, event, state, "b"):
            yield state._replace(b=self.rb.save(buyer))
        else:
            yield state

    def _notary(self, state: State) -> Iterator[State]:
        payment = self.buyer(state).payment
        assert payment is not None

        def decide(book: NotaryBook) -> Any:
            wire = RecoverGoodsWire(order=self.shop.order, delivery=self.shop.delivery,
                                    ciphertext=self.shop.ciphertext, payment=payment)
            return recover_goods(book, wire, requester="bob",
                                 private_keys=[self.world.escrow_key], verify=self.verify,
                                 verify_payment=self.shop.verify_payment,
                                 now_ms=self.now(state))
        yield from self._answer(state, "recover", payment.to_bytes(), decide, "b")

    def check(self, state: State) -> None:
        buyer = self.buyer(state)
        decision = self.decision_of(state, self.shop.order.digest)
        goods_held = buyer.goods is not None
        assert not goods_held or buyer.goods == GOODS
        buyer_can_have = goods_held or decision == "release" \
            or (state.keyed and "b" in self.dishonest_parties)
        held = self.book(state).get(self.shop.order.digest, initiator=self.initiator)
        assert buyer.decision is None or buyer.decision == held
        if "a" not in self.dishonest_parties:
            if buyer_can_have:
                assert state.paid, "the buyer has the goods, the seller no payment"
        if "b" not in self.dishonest_parties:
            if state.paid:
                assert goods_held or buyer.refund_due, \
                    "the buyer paid and holds neither the goods nor a refund finding"
                assert buyer.state in (FairState.DONE, FairState.REFUND_DUE), buyer
            assert not buyer.refund_due or decision == "refund"


# -- the tests ------------------------------------------------------------------------------

_EXPLORED: dict[tuple[int, type, str | None], tuple[Any, tuple[int, int]]] = {}


def explored(world: World, kind: type[MailRun] | type[PurchaseRun],
             dishonest: str | None) -> tuple[Any, tuple[int, int]]:
    """A run searched whole (once per module: a later test reads its machines)."""
    key = (id(world), kind, dishonest)
    if key not in _EXPLORED:
        run = kind(world, dishonest)
        _EXPLORED[key] = run, explore(run.start, run.successors, run.check)
    return _EXPLORED[key]


MAIL_RUNS = [None, "withhold_key", "bad_escrow", "bad_escrow_reveals", "withhold_receipt"]
PURCHASE_RUNS = [None, "withhold_key", "bad_escrow", "bad_escrow_releases", "withhold_payment"]


@pytest.mark.parametrize("dishonest", MAIL_RUNS)
def test_certified_mail_is_fair_in_every_interleaving(world: World, dishonest: str | None,
                                                      capsys: pytest.CaptureFixture[str]
                                                      ) -> None:
    started = time.perf_counter()
    _, (states, terminals) = explored(world, MailRun, dishonest)
    with capsys.disabled():
        print(f"\nmail, dishonest={dishonest}: {states} states, {terminals} terminal, "
              f"{time.perf_counter() - started:.1f} s")
    assert states > 100 and terminals > 0


@pytest.mark.parametrize("dishonest", PURCHASE_RUNS)
def test_fair_purchase_is_fair_in_every_interleaving(world: World, dishonest: str | None,
                                                     capsys: pytest.CaptureFixture[str]
                                                     ) -> None:
    started = time.perf_counter()
    _, (states, terminals) = explored(world, PurchaseRun, dishonest)
    with capsys.disabled():
        print(f"\npurchase, dishonest={dishonest}: {states} states, {terminals} terminal, "
              f"{time.perf_counter() - started:.1f} s")
    assert states > 100 and terminals > 0


# -- the search is not vacuous: unfair variants are caught --------------------------------------

class KeyFirstMail(MailRun):
    """A naive sender that sends the key with the mail, before any receipt."""

    def _sender_steps(self, state: State) -> Iterator[State]:
        yield from super()._sender_steps(state)
        if not state.keyed:  # once, with the mail
            yield _with(state, ("b", "reveal", self.key))


class KeyFirstPurchase(PurchaseRun):
    """A naive seller that releases the key with the goods, before any payment."""

    def _seller_steps(self, state: State) -> Iterator[State]:
        yield from super()._seller_steps(state)
        if not state.keyed:  # once, with the goods
            yield _with(state, ("b", "key", self.shop.key))


@pytest.mark.parametrize(("run", "dishonest", "found"), [
    (KeyFirstMail, "withhold_receipt", "the receiver reads the mail, the sender has no receipt"),
    (KeyFirstPurchase, "withhold_payment", "the buyer has the goods, the seller no payment"),
])
def test_the_search_catches_a_party_that_gives_its_item_first(
        world: World, run: type[Run], dishonest: str, found: str) -> None:
    naive = run(world, dishonest)  # type: ignore[call-arg]
    with pytest.raises(AssertionError, match=found):
        explore(naive.start, naive.successors, naive.check)



# -- every reachable machine state against every event ------------------------------------------

def _events(run: MailRun | PurchaseRun) -> list[object]:
    """Good and bad instances of every event of both sides, and every decision the
    notary made in the run (and in a run of another exchange: foreign ones)."""
    other = MailRun(run.world, "other")  # another exchange: its statements are foreign
    decisions = {d.digest: d for book in run.books.values() for d in book._decisions.values()}
    foreign_decision = close_mail(run.world.book(), CloseMailWire(offer=other.offer),
                                  requester="alice", verify=run.verify, now_ms=LATE)
    decisions[b""] = foreign_decision.statement
    events: list[object] = [DeadlinePassed(), KeyGiven(), KeyRevealed(bytes(32)),
                            *(NotaryAnswered(d) for d in decisions.values())]
    sign = run.world.sign("bob")
    foreign = sign(RECEIPT_TYPE, MailReceipt.for_offer(other.offer).to_body(), NOW_MS)
    events += [MailArrived(other.offer, other.ciphertext), ReceiptSigned(foreign),
               ReceiptReceived(foreign), GoodsArrived(other.offer, other.ciphertext)]
    if isinstance(run, MailRun):
        receipt = sign(RECEIPT_TYPE, MailReceipt.for_offer(run.offer).to_body(), NOW_MS)
        events += [MailArrived(run.offer, run.ciphertext),
                   MailArrived(run.offer, run.ciphertext + b"x"), ReceiptSigned(receipt),
                   ReceiptReceived(receipt), KeyRevealed(run.key)]
    else:
        events += [GoodsArrived(run.shop.delivery, run.shop.ciphertext),
                   GoodsArrived(run.shop.delivery, run.shop.ciphertext + b"x"),
                   Paid(run.payment), KeyRevealed(run.shop.key)]
    return events


@pytest.mark.parametrize("kind", ["mail", "purchase"])
def test_every_reachable_state_takes_every_event_by_its_table_or_refuses_it(
        world: World, kind: str) -> None:
    """h11's rules over every machine state the search reached (both sides): an
    event with a table entry leads to one of its states or is refused with a code and
    changes nothing; an event without one is ``fairexchange.unexpected_step`` and the
    machine is in ERROR, where it stays."""
    run = explored(world, MailRun if kind == "mail" else PurchaseRun, None)[0]
    events = _events(run)
    checked = 0
    for records in (run.ra, run.rb):
        for machine in list(records.machines.values()):
            for event in events:
                before = _identity(machine)
                table = type(machine)._TABLE
                probe = copy.copy(machine)
                try:
                    probe.receive(event, now_ms=NOW_MS)
                except UnexpectedStep:
                    assert (machine.state, type(event)) not in table
                    assert probe.state.value == "error"
                    with pytest.raises(UnexpectedStep):
                        probe.receive(DeadlinePassed(), now_ms=NOW_MS)
                except (ServiceError, ValueError):
                    assert _identity(probe) == before, (machine, event)
                else:
                    assert probe.state in table[(machine.state, type(event))]
                checked += 1
    assert checked > 150
