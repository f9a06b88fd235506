"""Certified mail and fair purchase between agents (agents/components/_mail.py,
_notary_escrow.py, _fair_seller.py, _fair_buyer.py; protocol.md 10.3 to 10.6):
in-process agents over real loopback TLS and real SQLite.

The buyer sends (as a command does: a session, never a running agent, so the
directory holds no card of it), the seller receives, the market's notary decides.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from market_helpers import config_of, make_market, running

from semper.agents import Agent
from semper.agents.components import _notary_escrow
from semper.agents.components._archive import RECORD_OVERHEAD, peer_usage
from semper.agents.components._escrow_keys import notary_escrow_key
from semper.agents.components._fair_buyer import FairShopper
from semper.agents.components._fair_seller import FairSales
from semper.agents.components._mail import CertifiedMail, Unreadable
from semper.services.fairexchange import (
    MAIL_DELIVER,
    MAIL_OFFER_TYPE,
    NOTARY_CLOSE_MAIL,
    NOTARY_ESCROW_KEY,
    NOTARY_RECOVER_MAIL,
    DecisionBody,
    check_escrow_key,
    prepare,
)
from semper.services.fairexchange._errors import BadPayment
from semper.services.fairexchange._escrow import EscrowKeyRequest
from semper.services.fairexchange._mail import CiphertextWire, CloseMailWire, RecoverMailWire
from semper.services.statements import Statement
from semper.transport import RemoteError


@pytest.fixture(scope="module")
def prebuilt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_market(tmp_path_factory.mktemp("mail") / "market")


@pytest.fixture
def market(prebuilt: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(prebuilt, tmp_path / "market"))


class AheadClock:
    """The machine's clock, ``ahead_ms`` ahead: a receiver whose deadline has come."""

    def __init__(self) -> None:
        self.ahead_ms = 0

    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000 + self.ahead_ms


@asynccontextmanager
async def agents(market: Path, *ids: str, clocks: dict[str, Any] | None = None,
                 changes: dict[str, dict[str, Any]] | None = None
                 ) -> AsyncIterator[dict[str, Agent]]:
    """``ids`` running (with ``clocks[id]`` and config ``changes[id]`` if given)."""
    started: dict[str, Agent] = {}
    async with trio.open_nursery() as nursery:
        for agent_id in ids:
            one = Agent(config_of(market, agent_id, **(changes or {}).get(agent_id, {})),
                        clock=(clocks or {}).get(agent_id))

            async def serve(one: Agent = one, *,
                            task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                            ) -> None:
                async with running(one):
                    task_status.started()
                    await trio.sleep_forever()

            await nursery.start(serve)
            started[agent_id] = one
        try:
            yield started
        finally:
            nursery.cancel_scope.cancel()


@asynccontextmanager
async def session(market: Path, agent_id: str) -> AsyncIterator[Agent]:
    one = Agent(config_of(market, agent_id))
    async with one.session():
        yield one


def no_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    """The notary finds no card in the directory for anyone (a sender that only ever
    acted through commands, a seller whose card is gone): only the channel and the
    request's certificates remain."""
    async def none(*_: Any, **__: Any) -> None:
        return None
    monkeypatch.setattr(_notary_escrow, "certificate_of", none)
    monkeypatch.setattr(_notary_escrow.NotaryEscrow, "_bank_certificate",
                        lambda self, payment: none())


async def test_the_notary_keeps_its_escrow_key_across_restarts(market: Path) -> None:
    async with agents(market, "ca", "notary"), session(market, "buyer") as buyer:
        first = await notary_escrow_key(buyer.context, "notary")
    async with agents(market, "ca", "notary"), session(market, "buyer") as buyer:
        answer = await buyer.context.call("notary", NOTARY_ESCROW_KEY, EscrowKeyRequest())
        with pytest.raises(RemoteError) as bad:  # any other body is refused
            await buyer.request("notary", "notary", "escrow_key", {"key": b"x"})
        assert bad.value.code == "fairexchange.bad_body"
        certificate = (await buyer.channel("notary")).peer.certificate
        again = check_escrow_key(answer.statement, certificate=certificate,
                                 root=buyer.credentials.root, crl=buyer.crl,
                                 now=buyer.context.now(), notary="notary")
    assert again.key == first.key and again.notary == "notary"


async def test_mail_faultless(market: Path) -> None:
    async with agents(market, "ca", "notary", "seller") as running_agents, \
            session(market, "buyer") as buyer:
        view = await buyer.component(CertifiedMail).send("seller", b"hello, certified\n")
        assert view.state == "delivered" and view.receipt is not None
        mail = running_agents["seller"].component(CertifiedMail)
        assert (await mail.view(view.exchange)).state == "read"
        assert await mail.read(view.exchange) == b"hello, certified\n"
        assert await mail.inbox() == [{"mail": view.exchange.hex(), "from": "buyer",
                                       "state": "read"}]


async def test_a_receiver_recovers_from_a_sender_the_directory_does_not_know(
        market: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The instance: the sender never ran as an agent, so no card; the receiver's
    recovery carries the sender's certificate and the notary releases the key."""
    no_directory(monkeypatch)
    clock = AheadClock()
    async with agents(market, "ca", "notary", "seller", clocks={"seller": clock}
                      ) as running_agents, session(market, "buyer") as buyer:
        escrow = await notary_escrow_key(buyer.context, "notary")
        now = buyer.context.now_ms()
        body, ciphertext = prepare(b"read me through the notary\n", exchange=b"\x07" * 32,
                                   sender="buyer", receiver="seller", notary="notary",
                                   escrow_key=escrow.public_key(), deadline=now + 60_000,
                                   key=b"\x01" * 32, nonce=b"\x02" * 12)
        offer = buyer.context.sign(MAIL_OFFER_TYPE, body.to_body())
        receipt = (await buyer.context.call("seller", MAIL_DELIVER, CiphertextWire(
            offer=offer, ciphertext=ciphertext))).receipt
        # Too early to close; and only the receiver recovers.
        with pytest.raises(RemoteError) as early:
            await buyer.context.call("notary", NOTARY_CLOSE_MAIL, CloseMailWire(offer=offer))
        assert early.value.code == "fairexchange.too_early"
        with pytest.raises(RemoteError) as stranger:
            await buyer.context.call("notary", NOTARY_RECOVER_MAIL, RecoverMailWire(
                offer=offer, receipt=receipt, ciphertext=ciphertext))
        assert stranger.value.code == "fairexchange.not_party"
        mail = running_agents["seller"].component(CertifiedMail)
        with pytest.raises(Unreadable):  # before the deadline: the sender may reveal it
            await mail.read(body.exchange)
        clock.ahead_ms = 61_000  # the deadline has come for the receiver
        assert await mail.read(body.exchange) == b"read me through the notary\n"
        assert (await mail.view(body.exchange)).state == "recovered"
        # The sender closing now gets the release, with the receipt in it.
        decision = (await buyer.context.call("notary", NOTARY_CLOSE_MAIL,
                                             CloseMailWire(offer=offer))).statement
        assert DecisionBody.from_statement(decision).decision == "release"


async def test_a_buyer_recovers_goods_whose_seller_and_bank_the_directory_does_not_know(
        market: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The second member of the kind: the seller withholds the key and the notary has
    no card of the seller nor of the bank: the buyer's request carries both
    certificates, and the notary releases the key."""
    no_directory(monkeypatch)

    async def withhold(self: FairSales, request: Any, body: Any) -> Any:
        raise BadPayment("not today", detail={"reason": "unpaid"})
    monkeypatch.setattr(FairSales, "release", withhold)
    async with agents(market, "ca", "bank", "notary", "seller"), \
            session(market, "buyer") as buyer:
        shopper = FairShopper(buyer, notary="notary", wait_ms=5000)
        outcome = await shopper.buy_fair("seller", "map-002", "transfer", "fair-agents-1")
    assert outcome.resolved_by == "notary"
    assert outcome.goods == b"ca -- bank -- seller -- buyer -- notary\n"


def offer_of(buyer: Agent, escrow: Any, *, exchange: bytes, deadline: int,
             message: bytes = b"x") -> tuple[Any, bytes]:
    """A mail offer from the buyer to the seller, signed, and its ciphertext."""
    body, ciphertext = prepare(message, exchange=exchange, sender="buyer", receiver="seller",
                               notary="notary", escrow_key=escrow.public_key(),
                               deadline=deadline, key=b"\x01" * 32, nonce=b"\x02" * 12)
    return buyer.context.sign(MAIL_OFFER_TYPE, body.to_body()), ciphertext


async def test_a_receiver_keeps_a_senders_mail_within_its_quota(market: Path) -> None:
    """Each offer costs its sender one signature and us its ciphertext: past ``[evidence]
    peer_quota_bytes`` for that sender, a new mail is refused and nothing is kept."""
    quota = {"seller": {"evidence_peer_quota": 40_000}}
    async with agents(market, "ca", "notary", "seller", changes=quota) as running_agents, \
            session(market, "buyer") as buyer:
        escrow = await notary_escrow_key(buyer.context, "notary")
        deadline = buyer.context.now_ms() + 60_000
        first, ciphertext = offer_of(buyer, escrow, exchange=b"\x01" * 32, deadline=deadline,
                                     message=b"a" * 20_000)
        await buyer.context.call("seller", MAIL_DELIVER,
                                 CiphertextWire(offer=first, ciphertext=ciphertext))
        second, ciphertext = offer_of(buyer, escrow, exchange=b"\x02" * 32,
                                      deadline=deadline, message=b"b" * 20_000)
        with pytest.raises(RemoteError) as refused:
            await buyer.context.call("seller", MAIL_DELIVER,
                                     CiphertextWire(offer=second, ciphertext=ciphertext))
        assert refused.value.code == "evidence.quota_exceeded"
        inbox = await running_agents["seller"].component(CertifiedMail).inbox()
        assert [m["mail"] for m in inbox] == [(b"\x01" * 32).hex()]


async def test_the_notary_decides_for_a_requester_within_its_quota(market: Path) -> None:
    """The same kind at the notary: every decision is kept for good with what it
    quotes, so a sender closing offer after offer stops at its quota."""
    quota = {"notary": {"evidence_peer_quota": 3_000}}
    async with agents(market, "ca", "notary", changes=quota), \
            session(market, "buyer") as buyer:
        escrow = await notary_escrow_key(buyer.context, "notary")
        past = buyer.context.now_ms() - 1
        codes = []
        for n in range(1, 4):
            offer, _ = offer_of(buyer, escrow, exchange=bytes([n]) * 32, deadline=past)
            try:
                decision = (await buyer.context.call("notary", NOTARY_CLOSE_MAIL,
                                                     CloseMailWire(offer=offer))).statement
                codes.append(DecisionBody.from_statement(decision).decision)
            except RemoteError as exc:
                codes.append(exc.code)
        assert codes[0] == "abort" and codes[-1] == "evidence.quota_exceeded"


async def test_a_seller_keeps_a_buyers_deliveries_within_its_quota(market: Path) -> None:
    """The third member: each fair delivery keeps the goods' ciphertext for the buyer
    that fetched it; past the buyer's quota, a new one is refused and nothing kept."""
    async with agents(market, "ca", "bank", "notary", "seller") as running_agents, \
            session(market, "buyer") as buyer:
        seller = running_agents["seller"]
        shopper = FairShopper(buyer, notary="notary", wait_ms=5000)
        await shopper.buy_fair("seller", "song-003", "transfer", "fair-quota-1")

        def usage(c: Any) -> int:
            records, size = peer_usage(c, "buyer")
            held = c.execute("SELECT sum(length(machine)) FROM fair_sales").fetchone()[0]
            return int(size + records * RECORD_OVERHEAD + held)
        used = await seller.database.read(usage)
        order = await seller.database.read(lambda c: max(
            len(row[0]) for row in c.execute("SELECT statement FROM archive_records")
            if Statement.from_bytes(row[0]).type == "commerce.order"))
        # room for the next order (the same size as the first), not for its delivery
        object.__setattr__(seller.config, "evidence_peer_quota",
                           used + order + RECORD_OVERHEAD + 64)
        with pytest.raises(RemoteError) as refused:
            await shopper.buy_fair("seller", "song-003", "transfer", "fair-quota-2")
        assert refused.value.code == "evidence.quota_exceeded"
        kept = await seller.database.read(lambda c: c.execute(
            "SELECT count(*) FROM fair_sales").fetchone()[0])
        assert kept == 1


async def test_hostile_bodies_get_coded_refusals(market: Path) -> None:
    """Every op this brief serves answers a malformed or misdirected body with a
    stable code, never ``internal.error``, and the agents keep nothing of it."""
    async with agents(market, "ca", "notary", "seller") as running_agents, \
            session(market, "buyer") as buyer:
        escrow = await notary_escrow_key(buyer.context, "notary")
        now = buyer.context.now_ms()
        offer, ciphertext = offer_of(buyer, escrow, exchange=b"\x09" * 32,
                                     deadline=now + 60_000)
        order_like = buyer.context.sign("commerce.note", {"x": 1})
        to_other, _ = prepare(b"x", exchange=b"\x0a" * 32, sender="buyer",
                              receiver="notary", notary="notary",
                              escrow_key=escrow.public_key(), deadline=now + 60_000,
                              key=b"\x01" * 32, nonce=b"\x02" * 12)
        elsewhere = buyer.context.sign(MAIL_OFFER_TYPE, to_other.to_body())
        cases = [
            ("seller", "mail", "deliver", None),
            ("seller", "mail", "deliver", {}),
            ("seller", "mail", "deliver", {"offer": 1, "ciphertext": b"x"}),
            ("seller", "mail", "deliver", {"offer": order_like.to_wire(),
                                           "ciphertext": ciphertext}),
            ("seller", "mail", "deliver", {"offer": offer.to_wire(), "ciphertext": b"y" * 64}),
            ("seller", "mail", "deliver", {"offer": elsewhere.to_wire(),
                                           "ciphertext": ciphertext}),
            ("seller", "mail", "reveal", {"exchange": b"\x09" * 32, "key": b"k" * 32}),
            ("seller", "mail", "reveal", {"exchange": b"\x09" * 31, "key": b"k" * 32}),
            ("seller", "fair", "fetch", {"order": b"\x00" * 32}),
            ("seller", "fair", "release", {"order": b"\x00" * 32,
                                           "payment": offer.to_wire()}),
            ("notary", "notary", "recover_mail", {"offer": offer.to_wire(),
                                                  "receipt": offer.to_wire(),
                                                  "ciphertext": ciphertext}),
            ("notary", "notary", "recover_mail", {"offer": offer.to_wire(),
                                                  "receipt": offer.to_wire(),
                                                  "ciphertext": ciphertext,
                                                  "certificates": [b"not a certificate"]}),
            ("notary", "notary", "close_mail", {"offer": order_like.to_wire()}),
            ("notary", "notary", "recover_goods", {"order": offer.to_wire(),
                                                   "delivery": offer.to_wire(),
                                                   "ciphertext": ciphertext,
                                                   "payment": offer.to_wire()}),
        ]
        codes = []
        for peer, service, op, body in cases:
            with pytest.raises(RemoteError) as refused:
                await buyer.request(peer, service, op, body)
            codes.append(refused.value.code)
        assert "internal.error" not in codes, list(zip(cases, codes, strict=True))
        assert await running_agents["seller"].component(CertifiedMail).inbox() == []


async def test_a_seller_silent_once_paid_sends_the_buyer_to_the_notary_in_time(
        market: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The seller takes the payment and never answers ``fair.release``: within the
    buyer's wait (its request timeout) the buyer gets the goods from the notary."""
    async def silent(self: FairSales, request: Any, body: Any) -> Any:
        await trio.sleep_forever()
    monkeypatch.setattr(FairSales, "release", silent)
    async with agents(market, "ca", "bank", "notary", "seller"), \
            session(market, "buyer") as buyer:
        shopper = FairShopper(buyer, notary="notary", wait_ms=300)
        started = trio.current_time()
        with trio.fail_after(10):
            outcome = await shopper.buy_fair("seller", "guide-001", "cheque", "fair-silent-1")
    assert outcome.resolved_by == "notary" and outcome.purchase.state == "done"
    assert outcome.goods.startswith(b"Field guide to secure commerce")
    assert trio.current_time() - started < 10
