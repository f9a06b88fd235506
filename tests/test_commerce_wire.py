"""Every refusal of the seller's and the bank's ops, over real channels (issue 4).

Running agents of one market (bank, seller, buyer, a second buyer ``mallory`` and
the notary, which has no account) talk over loopback mutual TLS, each with its own
SQLite. Each refusal is driven through the real op with statements signed by the
agent that would sign them, and the test checks the exact code the requester got
(``RemoteError.code``) and that nothing changed: the bank's books (balances,
journal, idempotency records, cheques, payments; ``check_books`` passes), the
seller's sales, and every archive's hash chain.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from cryptography.hazmat.primitives.serialization import Encoding

from semper.agents import Agent, AgentConfig
from semper.agents.components import _ledger
from semper.agents.components._purchase import Shopper
from semper.agents.operator._market import DEFAULT_AGENTS, init_market
from semper.services import Amount
from semper.services.certificates import Level
from semper.services.commerce import Offer, Order, sign_body
from semper.services.payment import REFUND_ORDER, RefundOrder
from semper.services.payment.cheque import CHEQUE, Cheque
from semper.services.payment.transfer import TRANSFER_ORDER, TransferOrder
from semper.services.statements import Statement, sign_statement
from semper.transport import RemoteError

DEADLINE = 60.0
AGENTS = (*DEFAULT_AGENTS, ("mallory", "buyer", Level.VERIFIED_CONTACT))
RUN = ("bank", "seller", "buyer", "mallory", "notary")
EUR = "EUR"
GUIDE = "guide-001"  # EUR 12.50 in the demo catalogue
DAY_MS = 86_400_000


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def eur(units: int) -> Amount:
    return Amount(EUR, units)


class Market:
    """The running agents, by id, and what the test signs as each of them."""

    def __init__(self, agents: dict[str, Agent]) -> None:
        self.agents = agents

    def __getitem__(self, agent_id: str) -> Agent:
        return self.agents[agent_id]

    def sign(self, agent_id: str, type_: str, body: dict[str, Any], *,
             issued_at: int | None = None) -> Statement:
        credentials = self[agent_id].credentials
        return sign_statement(type_, body, key=credentials.key,
                              certificate=credentials.identity.certificate,
                              now_ms=now_ms() if issued_at is None else issued_at,
                              nonce=os.urandom(16))

    def der(self, agent_id: str) -> bytes:
        return self[agent_id].credentials.identity.certificate.public_bytes(Encoding.DER)

    async def refused(self, agent_id: str, peer: str, service: str, op: str,
                      body: Any) -> RemoteError:
        """Send the request as ``agent_id``; it must be refused. Returns the error."""
        with pytest.raises(RemoteError) as info:
            await self[agent_id].request(peer, service, op, body)
        return info.value

    # -- what the requests carry ----------------------------------------------------

    def transfer_order(self, payer: str, payee: str, units: int, *, key: str,
                       reference: bytes = b"ref") -> dict[str, Any]:
        order = TransferOrder(payer=payer, payee=payee, bank="bank", amount=eur(units),
                              reference=reference, idempotency_key=key)
        return {"order": self.sign(payer, TRANSFER_ORDER, order.to_body()).to_wire()}

    def cheque(self, payer: str, payee: str, units: int, *, serial: str,
               reference: bytes = b"ref", expires_at: int | None = None) -> dict[str, Any]:
        """A ``bank.deposit_cheque`` body, which is also the cheque module's proof."""
        body = Cheque(payer=payer, payee=payee, bank="bank", amount=eur(units), serial=serial,
                      expires_at=now_ms() + DAY_MS if expires_at is None else expires_at,
                      reference=reference)
        return {"cheque": self.sign(payer, CHEQUE, body.to_body()).to_wire(),
                "drawer_certificate": self.der(payer)}

    async def offer(self, sku: str = GUIDE) -> Statement:
        answer = await self["buyer"].request("seller", "commerce", "catalogue", {})
        return next(o for o in map(Statement.from_wire, answer["offers"])
                    if o.body["sku"] == sku)

    def order(self, offer: Statement, /, *, buyer: str = "buyer", key: str = "order-1",
              module: str = "transfer", signer: str | None = None,
              **changes: Any) -> Statement:
        """``buyer``'s order for ``offer`` (``changes`` replace body fields), signed
        by ``signer`` (default: the buyer)."""
        body = Order.for_offer(offer, buyer=buyer, payment_module=module,
                               idempotency_key=key).to_body()
        body.update(changes)
        return self.sign(signer or buyer, "commerce.order", body)

    async def place(self, offer: Statement, **kwargs: Any) -> Statement:
        """Place an order the seller accepts; returns it."""
        order = self.order(offer, **kwargs)
        answer = await self[order_buyer(order)].request(
            "seller", "commerce", "order", {"order": order.to_wire()})
        assert answer["order"] == order.digest
        return order

    # -- the state that refusals must not change ------------------------------------

    async def state(self) -> dict[str, Any]:
        """The bank's books and records, the seller's sales, and every archive's
        length (each chain verified)."""
        def books(c: Any) -> dict[str, Any]:
            _ledger.check_books(c)
            return {
                "balances": sorted(c.execute(
                    "SELECT holder, currency, balance FROM ledger_accounts")),
                "entries": c.execute("SELECT count(*) FROM ledger_entries").fetchone()[0],
                "requests": sorted(c.execute("SELECT holder, key, digest FROM bank_requests")),
                "cheques": sorted(c.execute("SELECT payer, serial, status FROM bank_cheques")),
                "payments": sorted(c.execute(
                    "SELECT confirmation, amount, refunded FROM bank_payments")),
            }

        def sales(c: Any) -> list[Any]:
            return sorted(c.execute(
                "SELECT order_digest, buyer, state, machine, payment IS NOT NULL,"
                " refund IS NOT NULL FROM commerce_sales"))

        return {"books": await self["bank"].database.read(books),
                "sales": await self["seller"].database.read(sales),
                "archives": {name: await agent.archive.verify()
                             for name, agent in self.agents.items()}}

    async def balances(self) -> dict[str, int]:
        def read(c: Any) -> dict[str, int]:
            return {h: b for h, cur, b in c.execute(
                "SELECT holder, currency, balance FROM ledger_accounts") if cur == EUR}
        return await self["bank"].database.read(read)

    async def unchanged(self, before: dict[str, Any], *, archived: tuple[str, ...] = ()
                        ) -> None:
        """Nothing changed since ``before``, but for what the agents in ``archived``
        kept as evidence of what they received (their chains still verify)."""
        after = await self.state()
        assert after["books"] == before["books"]
        assert after["sales"] == before["sales"]
        for name, length in before["archives"].items():
            if name in archived:
                assert after["archives"][name] >= length
            else:
                assert after["archives"][name] == length, name


def order_buyer(order: Statement) -> str:
    return str(order.body["buyer"])


@asynccontextmanager
async def running_market(folder: Path, extra: tuple[tuple[str, str, Any], ...] = ()
                         ) -> AsyncIterator[Market]:
    """AGENTS, plus ``extra`` (id, role, level), each running in this trio loop."""
    init_market(folder, agents=(*AGENTS, *extra))
    agents = {name: Agent(AgentConfig.load(folder / name / "agent.toml"))
              for name in (*RUN, *(agent_id for agent_id, _, _ in extra))}
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            for agent in agents.values():
                await nursery.start(agent.run)
            try:
                yield Market(agents)
            finally:
                with trio.CancelScope(shield=True), trio.move_on_after(10):
                    for agent in agents.values():
                        await agent.close_channels()
                nursery.cancel_scope.cancel()


@pytest.fixture
async def market(tmp_path: Path) -> AsyncIterator[Market]:
    async with running_market(tmp_path / "m") as m:
        yield m


# -- bank.transfer ----------------------------------------------------------------------


async def test_transfer_refusals(market: Market) -> None:
    m = market
    before = await m.state()
    # A poor payer: the seller has sold nothing yet.
    error = await m.refused("seller", "bank", "bank", "transfer",
                            m.transfer_order("seller", "buyer", 1, key="poor"))
    assert error.code == "payment.insufficient_funds"
    assert error.detail == {"amount": {"currency": EUR, "minor_units": 1}}
    # The buyer has EUR 1,000.00, not a cent more.
    error = await m.refused("buyer", "bank", "bank", "transfer",
                            m.transfer_order("buyer", "seller", 100_001, key="too-much"))
    assert error.code == "payment.insufficient_funds"
    # The notary has no account: neither as payee ...
    error = await m.refused("buyer", "bank", "bank", "transfer",
                            m.transfer_order("buyer", "notary", 100, key="to-notary"))
    assert (error.code, error.detail) == ("payment.unknown_account",
                                          {"holder": "notary", "currency": EUR})
    # ... nor as payer.
    error = await m.refused("notary", "bank", "bank", "transfer",
                            m.transfer_order("notary", "buyer", 100, key="from-notary"))
    assert error.code == "payment.unknown_account"
    # An order relayed by another agent than its payer, and one naming another bank.
    relayed = m.transfer_order("buyer", "seller", 100, key="relayed")
    error = await m.refused("mallory", "bank", "bank", "transfer", relayed)
    assert error.code == "statement.wrong_signer"
    other_bank = TransferOrder(payer="buyer", payee="seller", bank="notary", amount=eur(100),
                               reference=b"ref", idempotency_key="other-bank")
    error = await m.refused("buyer", "bank", "bank", "transfer", {
        "order": m.sign("buyer", TRANSFER_ORDER, other_bank.to_body()).to_wire()})
    assert (error.code, error.detail["field"]) == ("payment.bad_request", "bank")
    # A tampered order: one byte of its body changed after signing.
    tampered = m.transfer_order("buyer", "mallory", 100, key="tampered", reference=b"abc")
    tampered["order"]["body"]["reference"] = b"abd"
    error = await m.refused("buyer", "bank", "bank", "transfer", tampered)
    assert error.code == "statement.bad_signature"
    await m.unchanged(before)
    # What each holder sees of its own account; the notary has none.
    wallet = await m["buyer"].request("bank", "bank", "account", {})
    assert wallet["balances"] == {EUR: 100_000}
    assert [(r["kind"], r["amount"]) for r in wallet["recent"]] == [
        ("mint", {"currency": EUR, "minor_units": 100_000})]
    assert await m["notary"].request("bank", "bank", "account", None) == {
        "balances": {}, "recent": []}
    error = await m.refused("buyer", "bank", "bank", "account", {"holder": "seller"})
    assert error.code == "payment.bad_request"

    # A transfer repeated with the same key moves money once; the key cannot be reused.
    first = await m["buyer"].request("bank", "bank", "transfer",
                                     m.transfer_order("buyer", "mallory", 250, key="k1"))
    paid = await m.state()
    assert (await m.balances())["mallory"] == 100_000 + 250
    again = await m["buyer"].request("bank", "bank", "transfer",
                                     m.transfer_order("buyer", "mallory", 250, key="k1"))
    assert again["confirmation"] == first["confirmation"]  # the first statement, unchanged
    error = await m.refused("buyer", "bank", "bank", "transfer",
                            m.transfer_order("buyer", "mallory", 251, key="k1"))
    assert error.code == "payment.idempotency_conflict"
    await m.unchanged(paid)


# -- bank.deposit_cheque and bank.stop_cheque --------------------------------------------


async def test_cheque_refusals_at_the_bank(market: Market) -> None:
    m = market
    before = await m.state()
    # Expired: the buyer wrote it to expire a second ago; its payee deposits it.
    expired = m.cheque("buyer", "seller", 500, serial="expired-1",
                       expires_at=now_ms() - 1000)
    error = await m.refused("seller", "bank", "bank", "deposit_cheque", expired)
    assert error.code == "payment.cheque_expired"
    assert error.detail["serial"] == "expired-1"
    # Deposited by someone other than its payee.
    cheque = m.cheque("buyer", "seller", 500, serial="s-1")
    error = await m.refused("mallory", "bank", "bank", "deposit_cheque", cheque)
    assert error.code == "payment.wrong_payee"
    assert error.detail == {"payee": "seller", "depositor": "mallory"}
    # Bounced: the seller writes a cheque it cannot cover.
    error = await m.refused("buyer", "bank", "bank", "deposit_cheque",
                            m.cheque("seller", "buyer", 1, serial="bounce"))
    assert error.code == "payment.insufficient_funds"
    # Drawn by the notary, who has no account: it covers nothing.
    error = await m.refused("buyer", "bank", "bank", "deposit_cheque",
                            m.cheque("notary", "buyer", 1, serial="no-account"))
    assert error.code == "payment.insufficient_funds"
    # Payable to the notary, who has no account.
    error = await m.refused("notary", "bank", "bank", "deposit_cheque",
                            m.cheque("buyer", "notary", 500, serial="to-notary"))
    assert error.code == "payment.unknown_account"
    # A cheque one byte of whose body was changed after signing.
    tampered = m.cheque("buyer", "seller", 500, serial="tamper")
    tampered["cheque"]["body"]["amount"]["minor_units"] = 50_000
    error = await m.refused("seller", "bank", "bank", "deposit_cheque", tampered)
    assert error.code == "statement.bad_signature"
    # A drawer certificate that is not the signer's.
    wrong_cert = dict(cheque, drawer_certificate=m.der("mallory"))
    error = await m.refused("seller", "bank", "bank", "deposit_cheque", wrong_cert)
    assert error.code == "statement.wrong_signer"
    await m.unchanged(before)

    # Stopped by its payer, then deposited by its payee.
    stopped = m.cheque("buyer", "seller", 500, serial="stop-me")
    assert await m["buyer"].request("bank", "bank", "stop_cheque",
                                    {"serial": "stop-me"}) == {"serial": "stop-me"}
    assert await m["buyer"].request("bank", "bank", "stop_cheque",
                                    {"serial": "stop-me"}) == {"serial": "stop-me"}
    after_stop = await m.state()
    assert ("buyer", "stop-me", "stopped") in after_stop["books"]["cheques"]
    error = await m.refused("seller", "bank", "bank", "deposit_cheque", stopped)
    assert error.code == "payment.cheque_stopped"
    assert error.detail == {"serial": "stop-me"}
    await m.unchanged(after_stop)

    # The cheque clears once; the same cheque again is answered with the same
    # statement and moves nothing (a replay) ...
    first = await m["seller"].request("bank", "bank", "deposit_cheque", cheque)
    cleared = await m.state()
    assert (await m.balances())["seller"] == 500
    again = await m["seller"].request("bank", "bank", "deposit_cheque", cheque)
    assert again == first
    # ... and so is the same cheque re-signed after a crash (new nonce, later expiry).
    resigned = m.cheque("buyer", "seller", 500, serial="s-1", expires_at=now_ms() + 2 * DAY_MS)
    assert (await m["seller"].request("bank", "bank", "deposit_cheque", resigned)) == first
    await m.unchanged(cleared)
    # Another cheque with the cleared serial is refused: a serial clears once.
    reused = m.cheque("buyer", "seller", 700, serial="s-1")
    error = await m.refused("seller", "bank", "bank", "deposit_cheque", reused)
    assert error.code == "payment.cheque_reused"
    reused = m.cheque("buyer", "seller", 500, serial="s-1", reference=b"another")
    error = await m.refused("seller", "bank", "bank", "deposit_cheque", reused)
    assert error.code == "payment.cheque_reused"
    # The replay is its payee's alone; anyone else learns only that it is not theirs.
    error = await m.refused("mallory", "bank", "bank", "deposit_cheque", cheque)
    assert error.code == "payment.wrong_payee"
    # A cleared serial cannot be stopped.
    error = await m.refused("buyer", "bank", "bank", "stop_cheque", {"serial": "s-1"})
    assert error.code == "payment.cheque_reused"
    error = await m.refused("buyer", "bank", "bank", "stop_cheque", {"serial": "no spaces"})
    assert (error.code, error.detail["field"]) == ("payment.bad_request", "serial")
    await m.unchanged(cleared)

    # bank.cheque_status: the drawer is answered the clearing its payee was (a payee
    # that deposited and vanished never passed it on); anyone else asking the same
    # serial asks about its own cheques; nothing changes.
    status = await m["buyer"].request("bank", "bank", "cheque_status", {"serial": "s-1"})
    assert status["state"] == "cleared" and status["cleared"] == first["cleared"]
    assert status["bank_certificate"] == first["bank_certificate"]
    assert await m["buyer"].request("bank", "bank", "cheque_status",
                                    {"serial": "stop-me"}) == {"serial": "stop-me",
                                                               "state": "stopped"}
    for asker, serial in (("seller", "s-1"), ("mallory", "s-1"), ("buyer", "never")):
        assert await m[asker].request("bank", "bank", "cheque_status",
                                      {"serial": serial}) == {"serial": serial,
                                                              "state": "open"}
    error = await m.refused("buyer", "bank", "bank", "cheque_status", {"serial": "a b"})
    assert (error.code, error.detail["field"]) == ("payment.bad_request", "serial")
    await m.unchanged(cleared)


# -- commerce.order ----------------------------------------------------------------------


async def test_order_refusals(market: Market) -> None:
    m = market
    offer = await m.offer()
    seller_credentials = m["seller"].credentials
    before = await m.state()

    async def order_refused(order: Statement, sender: str = "buyer") -> RemoteError:
        return await m.refused(sender, "seller", "commerce", "order", {"order": order.to_wire()})

    # An offer the seller signed (its own key, from its market folder) that expired.
    terms = Offer.from_statement(offer)
    stale = sign_body(dataclasses.replace(terms, valid_until=now_ms() - 1000),
                      key=seller_credentials.key,
                      certificate=seller_credentials.identity.certificate,
                      now_ms=now_ms() - 2000, nonce=os.urandom(16))
    error = await order_refused(m.order(stale))
    assert error.code == "commerce.offer_expired"
    assert error.detail["sku"] == GUIDE
    # The seller's offer with its price lowered and its signature kept: quoted with
    # the altered offer's digest, the signature no longer verifies ...
    cheap = dataclasses.replace(offer, body={**offer.body,
                                             "price": {"currency": EUR, "minor_units": 1}})
    error = await order_refused(m.order(cheap))
    assert (error.code, error.detail["field"]) == ("commerce.offer_altered", "offer.signature")
    # ... and quoted with the genuine offer's digest, the digest does not match.
    error = await order_refused(m.order(cheap, offer_digest=offer.digest))
    assert (error.code, error.detail["field"]) == ("commerce.offer_altered", "offer_digest")
    # An "offer" mallory signed in the seller's name.
    forged = m.sign("mallory", "commerce.offer", offer.body)
    error = await order_refused(m.order(forged))
    assert (error.code, error.detail["field"]) == ("commerce.offer_altered", "offer.signer")
    # Another statement of the seller's quoted as an offer.
    note = m.sign("seller", "test.note", {"sku": GUIDE})
    error = await order_refused(m.order(offer, offer=note.to_wire(), offer_digest=note.digest))
    assert (error.code, error.detail["field"]) == ("commerce.offer_altered", "offer.type")
    # An offer no longer in the catalogue (the seller's key, a SKU it does not sell).
    gone = sign_body(dataclasses.replace(terms, sku="withdrawn-9"), key=seller_credentials.key,
                     certificate=seller_credentials.identity.certificate, now_ms=now_ms(),
                     nonce=os.urandom(16))
    error = await order_refused(m.order(gone))
    assert (error.code, error.detail["sku"]) == ("commerce.unknown_offer", "withdrawn-9")
    # For another seller, in a quantity or a payment module the seller does not take.
    error = await order_refused(m.order(offer, seller="notary"))
    assert (error.code, error.detail["field"]) == ("commerce.wrong_seller", "seller")
    error = await order_refused(m.order(offer, quantity=2))
    assert error.code == "commerce.bad_quantity"
    error = await order_refused(m.order(offer, quantity=0))
    assert error.code == "commerce.bad_quantity"
    error = await order_refused(m.order(offer, module="barter"))  # no such module
    assert (error.code, error.detail["module"]) == ("commerce.unsupported_payment", "barter")
    error = await order_refused(m.order(offer, quantity="1"))
    assert error.code == "commerce.bad_quantity"
    error = await order_refused(m.order(offer, extra=1))
    assert (error.code, error.detail["field"]) == ("commerce.bad_body", "extra")
    # The buyer's order relayed by mallory; an order mallory signed in the buyer's name.
    error = await order_refused(m.order(offer), sender="mallory")
    assert error.code == "statement.wrong_signer"
    error = await order_refused(m.order(offer, signer="mallory"), sender="mallory")
    assert error.code == "statement.wrong_signer"
    # A statement that is not an order, and a body that is not {order}.
    error = await order_refused(m.sign("buyer", "test.note", {"n": 1}))
    assert error.code == "statement.wrong_type"
    error = await m.refused("buyer", "seller", "commerce", "order", {"orders": []})
    assert error.code == "payment.bad_request"
    # A tampered order.
    tampered = m.order(offer).to_wire()
    tampered["body"]["idempotency_key"] = "order-2"
    error = await m.refused("buyer", "seller", "commerce", "order", {"order": tampered})
    assert error.code == "statement.bad_signature"
    await m.unchanged(before)  # no sale row, nothing archived

    # The same order twice: one sale, the same answer.
    order = m.order(offer)
    first = await m["buyer"].request("seller", "commerce", "order", {"order": order.to_wire()})
    assert first == {"order": order.digest, "amount": {"currency": EUR, "minor_units": 1250},
                     "payment_module": "transfer"}
    placed = await m.state()
    assert len(placed["sales"]) == 1
    assert await m["buyer"].request("seller", "commerce", "order",
                                    {"order": order.to_wire()}) == first
    await m.unchanged(placed)


# -- payment.accept at the seller ----------------------------------------------------------


async def test_payment_refusals_at_the_seller(market: Market) -> None:
    m = market
    offer = await m.offer()
    order = await m.place(offer, key="pay-1")
    reference = order.digest
    price = 1250

    # The cheque cases below pay a second order, one to be paid by cheque: a seller
    # takes payment only by the module the order names.
    by_cheque = (await m.place(offer, key="pay-2", module="cheque")).digest

    async def accept_refused(proof: dict[str, Any], module: str = "transfer",
                             sender: str = "buyer", ref: bytes | None = None) -> RemoteError:
        if ref is None:
            ref = by_cheque if module == "cheque" else reference
        return await m.refused(sender, "seller", "payment", "accept",
                               {"module": module, "reference": ref, "proof": proof})

    # A transfer for another amount, citing the order: the bank moves what it was
    # told, the seller refuses it as payment and gives it back (issue 7, kind 8), so
    # that the order can still be paid.
    short = await m["buyer"].request("bank", "bank", "transfer", m.transfer_order(
        "buyer", "seller", price - 1, key="short", reference=reference))
    error = await accept_refused(short)
    assert (error.code, error.detail["field"]) == ("payment.bad_confirmation", "amount")
    assert error.detail["returned"]["amount"] == eur(price - 1).to_wire()
    # A transfer of the right amount for another reference.
    elsewhere = await m["buyer"].request("bank", "bank", "transfer", m.transfer_order(
        "buyer", "seller", price, key="elsewhere", reference=b"something else"))
    # The honest transfer, then one byte of its confirmation's body changed.
    honest = await m["buyer"].request("bank", "bank", "transfer", m.transfer_order(
        "buyer", "seller", price, key="honest", reference=reference))
    tampered = {**honest, "confirmation": dict(honest["confirmation"])}
    body = dict(tampered["confirmation"]["body"])
    body["order"] = body["order"][:-1] + bytes([body["order"][-1] ^ 1])
    tampered["confirmation"]["body"] = body
    before = await m.state()

    error = await accept_refused(tampered)
    assert error.code == "statement.bad_signature"
    error = await accept_refused(elsewhere)
    assert (error.code, error.detail["field"]) == ("payment.bad_confirmation", "reference")
    # The bank's confirmation handed over by someone who is not the order's buyer.
    error = await accept_refused(honest, sender="mallory")
    assert error.code == "commerce.unknown_order"
    # For an order the seller never accepted, or by another module than the order's.
    error = await accept_refused(honest, ref=b"\x00" * 32)
    assert error.code == "commerce.unknown_order"
    # (A transfer for another reference: a genuine one for this order, handed over
    # as another module, would be given back.)
    error = await accept_refused(elsewhere, module="card", ref=reference)
    assert (error.code, error.detail) == ("commerce.unsupported_payment",
                                          {"expected": "transfer", "module": "card"})
    error = await accept_refused({"confirmation": honest["confirmation"]})
    assert error.code == "payment.bad_request"
    # A confirmation signed by someone who is not a bank.
    fake = m.sign("buyer", "payment.transfer_confirmation",
                  Statement.from_wire(honest["confirmation"]).body)
    error = await accept_refused({"confirmation": fake.to_wire(),
                                  "bank_certificate": m.der("buyer")})
    assert (error.code, error.detail["field"]) == ("payment.bad_confirmation", "signer")

    # Cheques the seller refuses before depositing: expired, payable to another,
    # for another amount or reference, not signed by the order's buyer.
    expired = m.cheque("buyer", "seller", price, serial="c-expired", reference=by_cheque,
                       expires_at=now_ms() - 1000)
    error = await accept_refused(expired, module="cheque")
    assert error.code == "payment.cheque_expired"
    to_notary = m.cheque("buyer", "notary", price, serial="c-notary", reference=by_cheque)
    error = await accept_refused(to_notary, module="cheque")
    assert error.code == "payment.wrong_payee"
    low = m.cheque("buyer", "seller", price - 1, serial="c-low", reference=by_cheque)
    error = await accept_refused(low, module="cheque")
    assert (error.code, error.detail["field"]) == ("payment.bad_cheque", "amount")
    elsewhere_cheque = m.cheque("buyer", "seller", price, serial="c-else", reference=b"else")
    error = await accept_refused(elsewhere_cheque, module="cheque")
    assert (error.code, error.detail["field"]) == ("payment.bad_cheque", "reference")
    mallorys = m.cheque("mallory", "seller", price, serial="c-mallory", reference=by_cheque)
    error = await accept_refused(mallorys, module="cheque")
    assert (error.code, error.detail["field"]) == ("payment.bad_cheque", "payer")
    await m.unchanged(before)

    # A stopped cheque: the seller deposits it and passes the bank's refusal on. It
    # keeps the cheque it received as evidence; nothing else changes.
    stopped = m.cheque("buyer", "seller", price, serial="c-stopped", reference=by_cheque)
    await m["buyer"].request("bank", "bank", "stop_cheque", {"serial": "c-stopped"})
    before = await m.state()
    error = await accept_refused(stopped, module="cheque")
    assert (error.code, error.detail) == ("payment.cheque_stopped", {"serial": "c-stopped"})
    await m.unchanged(before, archived=("seller",))
    # A serial that cleared before, for another payment.
    first = m.cheque("buyer", "seller", 99, serial="c-used", reference=b"earlier")
    await m["seller"].request("bank", "bank", "deposit_cheque", first)
    before = await m.state()
    reused = m.cheque("buyer", "seller", price, serial="c-used", reference=by_cheque)
    error = await accept_refused(reused, module="cheque")
    assert error.code == "payment.cheque_reused"
    await m.unchanged(before, archived=("seller",))
    assert {(state, paid) for (_, _, state, _, paid, _) in before["sales"]} == {
        ("order_accepted", 0)}

    # Through all that the order stayed unpaid; the honest confirmation pays it, once.
    result = await m["buyer"].request("seller", "payment", "accept", {
        "module": "transfer", "reference": reference, "proof": honest})
    assert result["settlement"] == honest["confirmation"]
    paid = await m.state()
    assert sorted((state, settled) for (_, _, state, _, settled, _) in paid["sales"]) == [
        ("order_accepted", 0), ("receipted", 1)]
    assert await m["buyer"].request("seller", "payment", "accept", {
        "module": "transfer", "reference": reference, "proof": honest}) == result
    # Once paid, another payment is refused (issue 7): the cheque is not deposited.
    cheque = m.cheque("buyer", "seller", price, serial="c-late", reference=reference)
    error = await m.refused("buyer", "seller", "payment", "accept", {
        "module": "cheque", "reference": reference, "proof": cheque})
    assert (error.code, error.detail) == ("commerce.already_paid", {"state": "receipted"})
    await m.unchanged(paid)


# -- commerce.fetch and commerce.refund; bank.refund -------------------------------------------


async def test_refund_refusals(market: Market) -> None:
    m = market
    shopper = Shopper(m["buyer"])
    bought = await shopper.buy("seller", GUIDE, "transfer", "refund-me")
    assert bought.state == "done" and bought.payment is not None
    settlement = bought.payment.settlement
    unpaid = await m.place(await m.offer("map-002"), key="unpaid")
    before = await m.state()

    # Fetch and refund of an order that is not paid, or not the requester's.
    error = await m.refused("buyer", "seller", "commerce", "fetch", {"order": unpaid.digest})
    assert (error.code, error.detail) == ("payment.bad_request", {"state": "order_accepted"})
    error = await m.refused("buyer", "seller", "commerce", "refund",
                            {"order": unpaid.digest, "reason": "never paid"})
    assert (error.code, error.detail) == ("payment.bad_request", {"state": "order_accepted"})
    for op in ("fetch", "refund"):
        error = await m.refused("mallory", "seller", "commerce", op, {"order": bought.order})
        assert error.code == "commerce.unknown_order"
        error = await m.refused("buyer", "seller", "commerce", op, {"order": b"\x01" * 32})
        assert error.code == "commerce.unknown_order"
    error = await m.refused("buyer", "seller", "commerce", "refund", {"order": "not bytes"})
    assert error.code == "payment.bad_request"
    error = await m.refused("buyer", "seller", "commerce", "refund",
                            {"order": bought.order, "reason": "x" * 513})
    assert (error.code, error.detail["field"]) == ("payment.bad_request", "reason")

    # The seller's refund orders at the bank: more than was paid ...
    def refund_order(units: int, key: str, *, signer: str = "seller", payer: str = "seller",
                     payee: str = "buyer", original: bytes = settlement.digest
                     ) -> dict[str, Any]:
        body = RefundOrder(original=original, payer=payer, payee=payee, amount=eur(units),
                           reason="test", idempotency_key=key)
        return {"refund_order": m.sign(signer, REFUND_ORDER, body.to_body()).to_wire()}

    error = await m.refused("seller", "bank", "bank", "refund", refund_order(1251, "r-over"))
    assert error.code == "payment.refund_exceeds_payment"
    assert error.detail["refundable"] == {"currency": EUR, "minor_units": 1250}
    # ... to someone who did not pay, of a payment the bank never settled, in
    # another currency, or of a payment the requester did not receive.
    error = await m.refused("seller", "bank", "bank", "refund",
                            refund_order(100, "r-who", payee="mallory"))
    assert (error.code, error.detail) == ("payment.wrong_payee",
                                          {"payee": "seller", "payer": "buyer"})
    error = await m.refused("seller", "bank", "bank", "refund",
                            refund_order(100, "r-unknown", original=b"\x02" * 32))
    assert error.code == "payment.unknown_payment"
    error = await m.refused("mallory", "bank", "bank", "refund",
                            refund_order(100, "r-mallory", signer="mallory", payer="mallory"))
    assert error.code == "payment.wrong_payee"
    yen = RefundOrder(original=settlement.digest, payer="seller", payee="buyer",
                      amount=Amount("JPY", 100), reason="", idempotency_key="r-yen")
    error = await m.refused("seller", "bank", "bank", "refund", {
        "refund_order": m.sign("seller", REFUND_ORDER, yen.to_body()).to_wire()})
    assert error.code == "payment.currency_mismatch"
    # The seller's refund order sent by the buyer.
    error = await m.refused("buyer", "bank", "bank", "refund", refund_order(100, "r-relay"))
    assert error.code == "statement.wrong_signer"
    await m.unchanged(before)

    # The seller spent the money: the bank bounces its refund and the seller passes
    # the refusal on; it keeps the refund order it signed, and nothing else changes.
    await m["seller"].request("bank", "bank", "transfer",
                              m.transfer_order("seller", "mallory", 1250, key="spend"))
    spent = await m.state()
    error = await m.refused("buyer", "seller", "commerce", "refund",
                            {"order": bought.order, "reason": "changed my mind"})
    assert error.code == "payment.insufficient_funds"
    await m.unchanged(spent, archived=("seller",))
    await m["mallory"].request("bank", "bank", "transfer",
                               m.transfer_order("mallory", "seller", 1250, key="back"))

    # The refund through the seller, twice: one refund, the same answer.
    refunded = await shopper.refund("refund-me", "changed my mind")
    assert refunded.state == "refunded" and refunded.refund is not None
    balances = await m.balances()
    assert (balances["buyer"], balances["seller"]) == (100_000, 0)
    done = await m.state()
    again = await m["buyer"].request("seller", "commerce", "refund",
                                     {"order": bought.order, "reason": "again"})
    assert again == refunded.refund
    assert (await shopper.refund("refund-me")).replayed
    # Nothing remains refundable: even a cent is more than the payment's rest.
    error = await m.refused("seller", "bank", "bank", "refund", refund_order(1, "r-more"))
    assert error.code == "payment.refund_exceeds_payment"
    assert error.detail["refundable"] == {"currency": EUR, "minor_units": 0}
    # The seller's own refund key again: the bank's first confirmation, no movement.
    confirmation = Statement.from_wire(again["refund"]["confirmation"])
    key = "refund-" + bought.order.hex()[:32]
    replay = await m["seller"].request("bank", "bank", "refund", {
        "refund_order": m.sign("seller", REFUND_ORDER, RefundOrder(
            original=settlement.digest, payer="seller", payee="buyer", amount=eur(1250),
            reason="changed my mind", idempotency_key=key).to_body()).to_wire()})
    assert Statement.from_wire(replay["confirmation"]) == confirmation
    error = await m.refused("seller", "bank", "bank", "refund", refund_order(1250, key))
    assert error.code == "payment.idempotency_conflict"  # same key, another reason
    await m.unchanged(done)


# -- evidence.deliver --------------------------------------------------------------------------


async def test_evidence_refusals(market: Market) -> None:
    m = market
    note = m["buyer"].evidence.sign("test.note", {"text": "I was here"})
    before = await m.state()
    for body in (None, {"statement": note.to_wire()}, {"transaction": "", "statement": 1},
                 {"transaction": "x" * 257, "statement": note.to_wire()},
                 {"transaction": "tab\there", "statement": note.to_wire()}):
        error = await m.refused("buyer", "seller", "evidence", "deliver", body)
        assert error.code == "statement.malformed", body
    # Someone else's statement, and one changed after signing.
    error = await m.refused("mallory", "seller", "evidence", "deliver",
                            {"transaction": "mallory/tx", "statement": note.to_wire()})
    assert error.code == "statement.wrong_signer"
    tampered = note.to_wire()
    tampered["body"] = {"text": "I was not here"}
    error = await m.refused("buyer", "seller", "evidence", "deliver",
                            {"transaction": "buyer/tx", "statement": tampered})
    assert error.code == "statement.bad_signature"
    await m.unchanged(before)
    # The statement refused above for its transaction name is still deliverable, once.
    receipt = await m["buyer"].evidence.deliver("seller", "buyer/tx", note)
    assert receipt.body == {"transaction": "buyer/tx", "statement": note.digest, "from": "buyer"}
    delivered = await m.state()
    error = await m.refused("buyer", "seller", "evidence", "deliver",
                            {"transaction": "buyer/tx", "statement": note.to_wire()})
    assert (error.code, error.detail["digest"]) == ("statement.replayed", note.digest)
    error = await m.refused("buyer", "seller", "evidence", "deliver",
                            {"transaction": "buyer/tx-2", "statement": note.to_wire()})
    assert error.code == "statement.replayed"
    await m.unchanged(delivered)
