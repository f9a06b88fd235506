"""Issue 8, item 2: every op's handler gets a decoded, validated request.

``evidence.deliver``, ``directory.publish``/``lookup``, ``certificates.crl``/``status``,
``bank.account``, and the seller's ``commerce.*`` and ``payment.capabilities``/``accept``
were declared untyped: each handler read the raw body itself
(or, for ``certificates.crl``, read what it could and ignored the rest). Now each
names its request type, the runtime decodes it before the handler runs, and a bad
body is refused with the op's own code (the one it had before). The handlers here
are wrapped so that a body that was not decoded reaches them only as a test failure.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from market_helpers import config_of, make_market, running
from test_ops_doc import services_ops

from semper.agents import Agent
from semper.agents.components._bank import BankService
from semper.agents.components._directory import DirectoryService
from semper.agents.components._evidence import EvidenceService
from semper.agents.components._purchase import Shopper
from semper.agents.roles.ca import CertificationAuthority
from semper.agents.roles.seller import Sales
from semper.services.archive._bodies import DeliverRequest
from semper.services.certificates._bodies import CrlRequest, StatusRequest
from semper.services.commerce import (
    CatalogueRequest,
    FetchRequest,
    OrderRequest,
    RefundRequest,
)
from semper.services.directory import Lookup, SignedCard
from semper.services.money import Amount
from semper.services.payment import AcceptRequest, CapabilitiesRequest
from semper.services.payment._ops import AccountRequest
from semper.transport import RemoteError

DEADLINE = 30.0

#: handler -> (class, method, the request type it must get)
HANDLERS: dict[str, tuple[type, str, type]] = {
    "evidence.deliver": (EvidenceService, "_deliver", DeliverRequest),
    "directory.publish": (DirectoryService, "_publish", SignedCard),
    "directory.lookup": (DirectoryService, "_lookup", Lookup),
    "certificates.crl": (CertificationAuthority, "_crl", CrlRequest),
    "certificates.status": (CertificationAuthority, "_status", StatusRequest),
    "bank.account": (BankService, "account", AccountRequest),
    "commerce.catalogue": (Sales, "catalogue", CatalogueRequest),
    "commerce.order": (Sales, "order", OrderRequest),
    "commerce.fetch": (Sales, "fetch", FetchRequest),
    "commerce.refund": (Sales, "refund", RefundRequest),
    "payment.capabilities": (Sales, "capabilities", CapabilitiesRequest),
    "payment.accept": (Sales, "accept", AcceptRequest),
}

#: Ops still declared without a request type, on purpose or not yet: any body for
#: ping; enrollment, served off the channel registry.
UNTYPED_ALLOWED = {"sys.ping", "enroll.request"}


@pytest.fixture(scope="module")
def market(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_market(tmp_path_factory.mktemp("typed") / "m")


@asynccontextmanager
async def agents(market: Path, monkeypatch: pytest.MonkeyPatch,
                 seen: dict[str, list[tuple[str, Any]]]) -> AsyncIterator[dict[str, Agent]]:
    """The CA, the bank, the buyer and the seller, with every handler above wrapped: it
    records (requester, request) and fails the request unless it got the typed
    request."""
    for name, (cls, method, typed) in HANDLERS.items():
        original = getattr(cls, method)

        async def handler(self: Any, context: Any, request: Any, *, _name: str = name,
                          _typed: type = typed, _original: Any = original) -> Any:
            if not isinstance(request, _typed):
                raise AssertionError(f"{_name}'s handler ran with an undecoded body")
            seen.setdefault(_name, []).append((context.peer.agent_id, request))
            return await _original(self, context, request)

        if hasattr(original, "__semper_op__"):  # a @handles method
            handler.__semper_op__ = original.__semper_op__  # type: ignore[attr-defined]
        monkeypatch.setattr(cls, method, handler)
    ca, bank = Agent(config_of(market, "ca")), Agent(config_of(market, "bank"))
    buyer, seller = Agent(config_of(market, "buyer")), Agent(config_of(market, "seller"))
    with trio.fail_after(DEADLINE):
        async with running(ca), running(bank), running(buyer), running(seller):
            yield {"ca": ca, "bank": bank, "buyer": buyer, "seller": seller}


async def _refused(agent: Agent, peer: str, service: str, op: str, body: Any) -> RemoteError:
    with pytest.raises(RemoteError) as info:
        await agent.request(peer, service, op, body)
    return info.value


def _from(seen: dict[str, list[tuple[str, Any]]], op: str, peer: str) -> list[Any]:
    return [request for requester, request in seen.get(op, []) if requester == peer]


async def test_each_handler_gets_its_typed_request(market: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The instance: before, each of these handlers got the raw map."""
    seen: dict[str, list[tuple[str, Any]]] = {}
    async with agents(market, monkeypatch, seen) as m:
        buyer = m["buyer"]
        note = buyer.evidence.sign("test.note", {"n": 1})
        receipt = await buyer.evidence.deliver("bank", "buyer/typed", note)
        assert receipt.body["statement"] == note.digest
        assert _from(seen, "evidence.deliver", "buyer") == [
            DeliverRequest(transaction="buyer/typed", statement=note)]

        await buyer.peers.publish()
        published = _from(seen, "directory.publish", "buyer")
        assert published and published[-1].statement.body["agent"] == "buyer"
        await m["bank"].peers.publish()
        card = await buyer.request("ca", "directory", "lookup", {"agent": "bank"})
        assert SignedCard.from_wire(card).statement.body["agent"] == "bank"
        assert Lookup(agent_id="bank") in _from(seen, "directory.lookup", "buyer")

        answer = await buyer.request("ca", "certificates", "crl", {"known": 0})
        assert answer["number"] >= 1 and isinstance(answer["crl"], bytes)
        assert CrlRequest(known=0) in _from(seen, "certificates.crl", "buyer")
        status = await buyer.request("ca", "certificates", "status", {"agent": "buyer"})
        assert (status["status"], status["agent"]) == ("good", "buyer")
        assert _from(seen, "certificates.status", "buyer") == [StatusRequest(agent_id="buyer")]

        wallet = await buyer.request("bank", "bank", "account", None)
        assert set(wallet) == {"balances", "recent"}
        assert _from(seen, "bank.account", "buyer") == [AccountRequest()]


async def test_a_malformed_body_is_refused_with_the_ops_code_before_the_handler(
        market: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, list[tuple[str, Any]]] = {}
    async with agents(market, monkeypatch, seen) as m:
        buyer = m["buyer"]
        note = buyer.evidence.sign("test.note", {"n": 2}).to_wire()
        cases: list[tuple[str, str, str, Any, str, dict[str, Any] | None]] = [
            ("bank", "evidence", "deliver", {"transaction": "tab\there", "statement": note},
             "statement.malformed", {"type": "evidence.deliver", "field": "transaction"}),
            ("bank", "evidence", "deliver", {"statement": note}, "statement.malformed", None),
            # A malformed quoted statement keeps the statement layer's own code.
            ("bank", "evidence", "deliver", {"transaction": "buyer/x", "statement": {
                **note, "v": 2}}, "statement.unsupported_version", None),
            ("ca", "directory", "publish", {"card": {"type": 1}, "certificate": b"x"},
             "statement.malformed", None),
            ("ca", "directory", "publish", {"card": note, "certificate": b"not DER"},
             "directory.bad_card", {"type": "directory.signed_card", "field": "certificate"}),
            ("ca", "directory", "publish", {"card": note}, "directory.bad_card", None),
            ("ca", "directory", "lookup", {"agent": "bank", "role": "bank"},
             "directory.bad_lookup", None),
            ("ca", "directory", "lookup", {"agent": "Not An Id"}, "directory.bad_lookup",
             {"type": "directory.lookup", "field": "agent", "key": "agent"}),
            ("ca", "certificates", "status", {"serial": "xyz"},
             "certificates.bad_status_query", None),
            ("ca", "certificates", "status", {"serial": 12},  # hex on the wire, not an int
             "certificates.bad_status_query",
             {"type": "certificates.status", "field": "serial", "key": "serial"}),
            ("ca", "certificates", "status", {}, "certificates.bad_status_query", None),
            ("bank", "bank", "account", {"holder": "seller"}, "payment.bad_request",
             {"type": "bank.account", "field": "holder"}),
            ("bank", "bank", "account", [], "payment.bad_request", None),
        ]
        for peer, service, op, body, code, detail in cases:
            error = await _refused(buyer, peer, service, op, body)
            assert error.code == code, (op, body, error)
            if detail is not None:
                assert error.detail == detail, (op, body)
        # No handler ran with an undecoded body (it would have answered internal.error
        # above), and none of the buyer's malformed requests reached one.
        assert _from(seen, "evidence.deliver", "buyer") == []
        assert _from(seen, "directory.lookup", "buyer") == []
        assert _from(seen, "certificates.status", "buyer") == []
        assert _from(seen, "bank.account", "buyer") == []
        # The statement refused for its wrapping is still deliverable.
        await buyer.evidence.deliver("bank", "buyer/after", buyer.evidence.sign(
            "test.note", {"n": 3}))


@pytest.mark.parametrize("body", [{"known": "7"}, {"known": -1}, {"known": 0, "extra": 1},
                                  {"known": 0, "fresh_after": "soon"}, None, [0]])
async def test_a_malformed_crl_query_is_refused_not_read_as_it_comes(
        market: Path, monkeypatch: pytest.MonkeyPatch, body: Any) -> None:
    """Another member of the kind: ``certificates.crl`` took any body and read what it
    could (a ``known`` of the wrong type as 0, a bad ``fresh_after`` as none, any other
    body as ``{}``), answering a malformed request as a good one. Now it is refused
    with ``certificates.bad_crl_query`` before the handler runs."""
    seen: dict[str, list[tuple[str, Any]]] = {}
    async with agents(market, monkeypatch, seen) as m:
        error = await _refused(m["buyer"], "ca", "certificates", "crl", body)
        assert error.code == "certificates.bad_crl_query"  # not internal.error: no handler
        assert error.detail["type"] == "certificates.crl"


def test_every_op_but_a_known_few_declares_its_request_type() -> None:
    """The kind, everywhere: an op declared without a request type leaves its handler
    decoding a raw body; only the ones listed (not this change's) still do."""
    untyped = {name for name, op in services_ops().items() if op.request is None}
    assert untyped <= UNTYPED_ALLOWED, untyped - UNTYPED_ALLOWED
    assert not untyped & set(HANDLERS)


GUIDE = "guide-001"  # EUR 12.50 in a new market's catalogue


async def test_the_sellers_handlers_get_typed_requests(market: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The instance (issue 8, item 2): the seller's ``commerce.*`` and
    ``payment.capabilities``/``accept`` handlers decoded their raw bodies themselves."""
    seen: dict[str, list[tuple[str, Any]]] = {}
    async with agents(market, monkeypatch, seen) as m:
        shopper, buyer = Shopper(m["buyer"]), m["buyer"]
        bought = await shopper.buy("seller", GUIDE, "transfer", "typed-1")
        assert bought.state == "done"
        assert _from(seen, "commerce.catalogue", "buyer") == [CatalogueRequest()]
        [order] = _from(seen, "commerce.order", "buyer")
        assert order.order.digest == bought.order
        assert _from(seen, "payment.capabilities", "buyer") == [CapabilitiesRequest()]
        [accept] = _from(seen, "payment.accept", "buyer")
        assert (accept.module, accept.reference) == ("transfer", bought.order)
        assert _from(seen, "commerce.fetch", "buyer") == [FetchRequest(order=bought.order)]
        # The rules of section 9.5 kept: fetch and refund ignore unknown keys, the
        # catalogue and the capabilities take any body.
        await buyer.request("seller", "commerce", "fetch", {"order": bought.order, "newer": 1})
        assert _from(seen, "commerce.fetch", "buyer")[-1] == FetchRequest(order=bought.order)
        refunded = await shopper.refund("typed-1", "typed", Amount("EUR", 100))
        assert refunded.refund is not None
        await buyer.request("seller", "commerce", "refund",
                            {"order": bought.order, "reason": "again", "newer": [1]})
        assert _from(seen, "commerce.refund", "buyer") == [
            RefundRequest(order=bought.order, reason="typed", amount=Amount("EUR", 100)),
            RefundRequest(order=bought.order, reason="again")]
        for body in (None, [], {"x": 1}):
            assert "offers" in await buyer.request("seller", "commerce", "catalogue", body)
            assert "modules" in await buyer.request("seller", "payment", "capabilities", body)


async def test_a_bad_commerce_or_payment_body_is_refused_before_the_sellers_handler(
        market: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each is ``payment.bad_request`` (detail ``type`` and ``field``) as before, or
    the statement layer's code for a malformed order; no handler runs. Another member
    of the kind: a refund's reason that is not printable was let through to the sale
    machine, which refused it with a ValueError (``internal.error``), and one that was
    too long was cut to 512 characters for the sale and refused only when the refund
    order was signed, after the sale had moved in memory."""
    seen: dict[str, list[tuple[str, Any]]] = {}
    async with agents(market, monkeypatch, seen) as m:
        buyer = m["buyer"]
        bought = await Shopper(buyer).buy("seller", GUIDE, "transfer", "typed-2")
        order = bought.order
        cases: list[tuple[str, str, Any, str, dict[str, Any] | None]] = [
            ("commerce", "order", {"orders": []}, "payment.bad_request",
             {"type": "commerce.order", "field": "order"}),
            ("commerce", "order", {"order": {"v": 1}, "x": 1}, "payment.bad_request",
             {"type": "commerce.order", "field": "x"}),
            ("commerce", "order", [], "payment.bad_request", None),
            ("commerce", "order", {"order": {"v": 1}}, "statement.malformed", None),
            ("commerce", "fetch", {"order": "not bytes"}, "payment.bad_request",
             {"type": "commerce.fetch", "field": "order"}),
            ("commerce", "fetch", {}, "payment.bad_request", None),
            ("commerce", "fetch", None, "payment.bad_request", None),
            ("commerce", "refund", {"order": order, "reason": "x" * 513},
             "payment.bad_request", {"type": "commerce.refund", "field": "reason"}),
            ("commerce", "refund", {"order": order, "reason": "tab\there"},
             "payment.bad_request", {"type": "commerce.refund", "field": "reason"}),
            ("commerce", "refund", {"order": order, "reason": None},
             "payment.bad_request", {"type": "commerce.refund", "field": "reason"}),
            ("commerce", "refund", {"order": order, "amount": 5},
             "payment.bad_request", {"type": "commerce.refund", "field": "amount"}),
            ("commerce", "refund", {"order": order, "amount": {"currency": "EUR"}},
             "payment.bad_request", {"type": "commerce.refund", "field": "amount"}),
            ("payment", "accept", {"module": "transfer", "reference": order},
             "payment.bad_request", {"type": "payment.accept", "field": "proof"}),
            ("payment", "accept", {"module": "", "reference": order, "proof": {}},
             "payment.bad_request", {"type": "payment.accept", "field": "module"}),
            ("payment", "accept", {"module": "transfer", "reference": b"", "proof": {}},
             "payment.bad_request", {"type": "payment.accept", "field": "reference"}),
            ("payment", "accept", {"module": "transfer", "reference": order, "proof": []},
             "payment.bad_request", {"type": "payment.accept", "field": "proof"}),
        ]
        for service, op, body, code, detail in cases:
            error = await _refused(buyer, "seller", service, op, body)
            assert error.code == code, (op, body, error)
            if detail is not None:
                assert {k: error.detail.get(k) for k in detail} == detail, (op, body, error)
        assert len(_from(seen, "commerce.order", "buyer")) == 1  # the purchase's only
        assert len(_from(seen, "commerce.fetch", "buyer")) == 1
        assert len(_from(seen, "payment.accept", "buyer")) == 1
        assert _from(seen, "commerce.refund", "buyer") == []
        # Nothing moved: the sale is still paid and refundable in full.
        refunded = await Shopper(buyer).refund("typed-2", "after")
        assert refunded.refund is not None
