"""Delivery tickets (issue 10, item 1; services/delivery/_ticket.py, protocol.md 13.2):
the seller's signed ticket is accepted from its buyer until it expires, and each
refusal has its code: delivery.bad_ticket (not a ticket, not this seller's, another
order), delivery.wrong_holder (another peer), delivery.ticket_expired; the open
request's own refusals (delivery.bad_ticket for bytes that are no statement,
delivery.bad_request for the rest)."""

from __future__ import annotations

import dataclasses
import hashlib
import os
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pki import NOW, Market
from pki import TestAgent as PkiAgent

from semper.services import Amount, ServiceError
from semper.services.delivery import (
    CHUNK,
    CLOSE,
    HEAD,
    OPEN,
    TICKET,
    BadRequest,
    BadTicket,
    ChunkAnswer,
    ChunkedContent,
    ChunkRequest,
    OpenAnswer,
    OpenRequest,
    StreamHead,
    StreamInfo,
    Ticket,
    TicketExpired,
    TicketRequest,
    WrongHolder,
    check_ticket,
    sign_ticket,
)
from semper.services.statements import Statement, sign_statement

T0 = int(NOW.timestamp() * 1000)
ORDER = hashlib.sha256(b"order").digest()
INFO = ChunkedContent.from_bytes(b"x" * 1000, 256).info(Amount("EUR", 2))


@pytest.fixture
def seller(market: Market) -> PkiAgent:
    return market.agent("seller", "seller")


@pytest.fixture
def buyer(market: Market) -> PkiAgent:
    return market.agent("buyer", "buyer")


def body(**change: Any) -> Ticket:
    fields: dict[str, Any] = {"ticket": os.urandom(16), "order": ORDER, "buyer": "buyer",
                              "seller": "seller", "sku": "course-004", "stream": INFO,
                              "payment": "purse", "chain": os.urandom(32),
                              "expires": T0 + 60_000}
    fields.update(change)
    return Ticket(**fields)


def signed(agent: PkiAgent, ticket: Ticket | None = None, *, type_: str = "delivery.ticket",
           wire: dict[str, Any] | None = None) -> Statement:
    return sign_statement(type_, wire if wire is not None else (ticket or body()).to_wire(),
                          key=agent.key, certificate=agent.cert, now_ms=T0,
                          nonce=os.urandom(16))


def check(statement: Statement | bytes, seller: PkiAgent, market: Market | None = None,
          **kw: Any) -> Ticket:
    args: dict[str, Any] = {"seller_id": "seller", "peer_id": "buyer", "now_ms": T0 + 1000,
                            "certificate": seller.cert}
    if market is not None:
        args.update(root=market.ca.certificate, crl=market.crl)
    args.update(kw)
    return check_ticket(statement, **args)


def test_a_good_ticket_is_accepted_as_bytes_or_statement(seller: PkiAgent,
                                                         market: Market) -> None:
    ticket = body()
    statement = sign_ticket(ticket, key=seller.key, certificate=seller.cert, now_ms=T0,
                            nonce=os.urandom(16))
    for presented in (statement, statement.to_bytes()):
        assert check(presented, seller) == ticket
        assert check(presented, seller, market) == ticket
        assert check(presented, seller, order=ORDER) == ticket
    assert check(statement, seller, now_ms=ticket.expires) == ticket  # expires inclusive


def test_a_ticket_paid_whole_has_no_chain_key(seller: PkiAgent) -> None:
    ticket = body(chain=None, payment="transfer")
    assert "chain" not in ticket.to_wire()
    assert Ticket.from_wire(ticket.to_wire()) == ticket
    assert check(signed(seller, ticket), seller).chain is None


def _bad_ticket_cases(seller: PkiAgent, buyer: PkiAgent, market: Market
                      ) -> list[tuple[str, Any, dict[str, Any], str]]:
    good = signed(seller)
    tampered = dataclasses.replace(good, signature=bytes(64))
    wire = body().to_wire()
    del wire["expires"]
    other_seller = market.agent("other", "seller")
    return [
        # (what, presented, extra check arguments, detail key: field or cause value)
        ("not bytes", 42, {}, "field"),
        ("not msgpack", b"\xc1garbage", {}, "cause"),
        ("not a statement map", b"\x80", {}, "cause"),
        ("another type", signed(seller, type_="delivery.stream_head"), {}, "field"),
        ("a body without expires", signed(seller, wire=wire), {}, "field"),
        ("a bad stream map", signed(seller, wire={**body().to_wire(), "stream": {"x": 1}}),
         {}, "field"),
        ("signed by the buyer", signed(buyer), {}, "cause"),
        ("signed by another seller", signed(other_seller), {}, "cause"),
        ("a broken signature", tampered, {}, "cause"),
        ("a broken signature, checked with the CRL", tampered, {"market": True}, "cause"),
        ("naming another seller", signed(seller, body(seller="other")), {}, "field"),
        ("for another order", good, {"order": bytes(32)}, "field"),
    ]


def test_each_bad_ticket_is_delivery_bad_ticket(seller: PkiAgent, buyer: PkiAgent,
                                                 market: Market) -> None:
    for what, presented, extra, key in _bad_ticket_cases(seller, buyer, market):
        use_market = extra.pop("market", False)
        with pytest.raises(BadTicket) as refused:
            check(presented, seller, market if use_market else None, **extra)
        assert refused.value.code == "delivery.bad_ticket", what
        assert key in refused.value.detail, (what, refused.value.detail)


def test_a_revoked_seller_ticket_is_refused_with_the_crl(seller: PkiAgent,
                                                         market: Market) -> None:
    statement = signed(seller)
    market.revoke(seller)
    with pytest.raises(BadTicket) as refused:
        check(statement, seller, market)
    assert refused.value.detail["cause"] == "auth.revoked"


def test_another_holder_is_delivery_wrong_holder(seller: PkiAgent) -> None:
    with pytest.raises(WrongHolder) as refused:
        check(signed(seller), seller, peer_id="mallory")
    assert refused.value.code == "delivery.wrong_holder"
    assert refused.value.detail == {"buyer": "buyer", "peer": "mallory"}


def test_an_expired_ticket_is_delivery_ticket_expired(seller: PkiAgent) -> None:
    ticket = body()
    with pytest.raises(TicketExpired) as refused:
        check(signed(seller, ticket), seller, now_ms=ticket.expires + 1)
    assert refused.value.code == "delivery.ticket_expired"
    assert refused.value.detail == {"expires": ticket.expires, "now_ms": ticket.expires + 1}


def test_checks_come_in_the_documented_order(seller: PkiAgent) -> None:
    """Not this seller's beats another holder, which beats expiry."""
    late = T0 + 10**9
    with pytest.raises(BadTicket):
        check(signed(seller, body(seller="other", buyer="x")), seller, now_ms=late)
    with pytest.raises(WrongHolder):
        check(signed(seller, body(buyer="x")), seller, now_ms=late)


def test_misuse_is_a_value_error(seller: PkiAgent, buyer: PkiAgent, market: Market) -> None:
    with pytest.raises(ValueError):
        check(signed(seller), seller, certificate=buyer.cert)  # not seller_id's
    with pytest.raises(ValueError):
        check(signed(seller), seller, root=market.ca.certificate)  # a root without a CRL


# -- the ops' bodies -----------------------------------------------------------------------

def test_open_request_carries_the_ticket_bytes(seller: PkiAgent) -> None:
    statement = signed(seller)
    request = OpenRequest(ticket=statement, start=3)
    wire = OPEN.encode_request(request)
    assert wire == {"ticket": statement.to_bytes(), "from": 3}
    assert OPEN.decode_request(wire) == request
    answer = OpenAnswer(stream=1, start=3, chunks=INFO.chunks, chunk_size=INFO.chunk_size,
                        length=INFO.length, root=INFO.root)
    assert OPEN.decode_response(OPEN.encode_response(answer)) == answer


@pytest.mark.parametrize(("wire", "code"), [
    ({"ticket": b"\xc1", "from": 0}, "delivery.bad_ticket"),   # not a statement's bytes
    ({"ticket": "text", "from": 0}, "delivery.bad_ticket"),    # not bytes at all
    ({"ticket": None, "from": 0}, "delivery.bad_ticket"),
    ({"from": 0}, "delivery.bad_request"),                    # no ticket
    ({"ticket": b"", "from": -1}, "delivery.bad_ticket"),       # the ticket is read first
    ("open", "delivery.bad_request"),                         # not a map
])
def test_open_request_refusals(wire: object, code: str) -> None:
    with pytest.raises(ServiceError) as refused:
        OPEN.decode_request(wire)
    assert refused.value.code == code


def test_open_request_from_out_of_range(seller: PkiAgent) -> None:
    ticket = signed(seller).to_bytes()
    for start in (-1, 2**20 + 1, "0", True):
        with pytest.raises(BadRequest) as refused:
            OPEN.decode_request({"ticket": ticket, "from": start})
        assert refused.value.detail["field"] == "from"


def test_chunk_bodies() -> None:
    request = ChunkRequest(stream=0, index=4, payword=bytes(32))
    assert CHUNK.decode_request(CHUNK.encode_request(request)) == request
    whole = ChunkRequest(stream=0, index=4)
    assert CHUNK.encode_request(whole) == {"stream": 0, "index": 4}
    assert CHUNK.decode_request({"stream": 0, "index": 4, "payword": None}) == whole
    answer = ChunkAnswer(index=4, data=b"abc", proof=[bytes(32)] * 3)
    assert CHUNK.encode_response(answer) == {"index": 4, "data": b"abc",
                                             "proof": [bytes(32)] * 3}
    assert CHUNK.decode_response(CHUNK.encode_response(answer)).proof == [bytes(32)] * 3
    for bad in ({"stream": 0, "index": 4, "payword": bytes(31)},
                {"stream": 0, "index": -1},
                {"stream": -1, "index": 0},
                {"stream": 0, "index": 0, "more": 1}):
        with pytest.raises(BadRequest):
            CHUNK.decode_request(bad)
    for bad in ({"index": 0, "data": b"", "proof": []},            # no empty chunk
                {"index": 0, "data": b"x", "proof": [bytes(31)]},
                {"index": 0, "data": b"x", "proof": [bytes(32)] * 65}):
        with pytest.raises(BadRequest):
            CHUNK.decode_response(bad)


# -- hostile values: our refusal, nothing else -----------------------------------------------

_leaf = st.one_of(st.none(), st.booleans(), st.integers(-2**64, 2**64), st.binary(max_size=40),
                  st.text(max_size=8), st.sampled_from([bytes(16), bytes(32), 0, 1, 2**20]))
_values = st.recursive(_leaf, lambda inner: st.one_of(
    st.lists(inner, max_size=4),
    st.dictionaries(st.sampled_from(["ticket", "from", "stream", "index", "payword", "data",
                                     "proof", "head", "consistency", "size", "chunks",
                                     "chunk_size", "length", "root", "price_per_chunk",
                                     "order", "buyer", "seller", "sku", "payment", "chain",
                                     "expires", "x"]), inner, max_size=8)), max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(value=_values)
def test_hostile_bodies_raise_only_coded_refusals(value: object) -> None:
    decoders = [OPEN.decode_request, OPEN.decode_response, CHUNK.decode_request,
                CHUNK.decode_response, CLOSE.decode_request, HEAD.decode_request,
                HEAD.decode_response, StreamInfo.from_wire, Ticket.from_wire,
                StreamHead.from_wire]
    for decode in decoders:
        try:
            decode(value)
        except ServiceError as exc:
            assert exc.code.startswith(("delivery.", "statement.")), exc.code


def test_ticket_op_bodies() -> None:
    request = TicketRequest(order=ORDER, commitment=b"c", reservation=b"r")
    wire = TICKET.encode_request(request)
    assert wire == {"order": ORDER, "commitment": b"c", "reservation": b"r"}
    assert TICKET.decode_request(wire) == request
    for bad, field in (({**wire, "order": bytes(31)}, "order"),
                       ({**wire, "commitment": b""}, "commitment"),
                       ({**wire, "reservation": bytes(16 * 1024 + 1)}, "reservation"),
                       ({"order": ORDER, "commitment": b"c"}, "reservation"),
                       ({**wire, "x": 1}, "x")):
        with pytest.raises(BadRequest) as refused:
            TICKET.decode_request(bad)
        assert refused.value.detail == {"type": "delivery.ticket", "field": field}
    for bad_answer in ({"ticket": b"\xc1"}, {"ticket": 5}, {}):
        with pytest.raises(ServiceError):
            TICKET.decode_response(bad_answer)
