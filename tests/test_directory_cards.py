"""Contact cards (services/directory): signed, checked offline, refused with a code."""

from __future__ import annotations

import dataclasses
import datetime as dt
import os

import pytest
from pki import NOW, Market

from semper.services.certificates import Revoked, to_ms
from semper.services.directory import (
    BadCard,
    BadLookup,
    CardExpired,
    CardMismatch,
    ContactCard,
    Lookup,
    SignedCard,
    sign_card,
    verify_card,
)
from semper.services.statements import BadSignature, MalformedStatement, Statement

HOUR_MS = 3_600_000


def _card(**changes: object) -> ContactCard:
    fields: dict[str, object] = {
        "agent_id": "seller.books", "role": "seller", "addresses": ("127.0.0.1:4000",),
        "services": {"sys": (1, ()), "payment": (1, ("ecash", "cheque"))},
        "not_before_ms": to_ms(NOW), "not_after_ms": to_ms(NOW) + HOUR_MS}
    fields.update(changes)
    return ContactCard(**fields)  # type: ignore[arg-type]


def test_a_card_round_trips_and_verifies(market: Market) -> None:
    seller = market.agent("seller.books", "seller")
    signed = sign_card(_card(), key=seller.key, certificate=seller.cert, nonce=os.urandom(16))
    again = SignedCard.from_wire(signed.to_wire())
    assert again == signed
    card = verify_card(again, root=market.ca.certificate, crl=market.crl, now=NOW)
    assert card == _card()
    assert ContactCard.from_body(card.to_body()) == card


@pytest.mark.parametrize("changes", [
    {"agent_id": "Not A Name"},
    {"addresses": ()},                                   # none
    {"addresses": ("no-port",)},
    {"addresses": tuple(f"h:{p}" for p in range(9))},   # more than 8
    {"not_after_ms": to_ms(NOW)},                        # empty validity
    {"not_after_ms": to_ms(NOW) + 32 * 24 * HOUR_MS},    # longer than 31 days
    {"services": {"Bad Name": (1, ())}},
    {"services": {"sys": (True, ())}},                   # a bool is not a version
    {"services": {"sys": (1, ("",))}},                   # an empty module name
])
def test_bad_cards_cannot_be_made(changes: dict[str, object]) -> None:
    with pytest.raises(BadCard):
        _card(**changes)


@pytest.mark.parametrize("body", [
    None, {}, {**_card().to_body(), "extra": 1},
    {**_card().to_body(), "services": {"sys": {"version": 1}}},
    {**_card().to_body(), "addresses": "127.0.0.1:4000"},
])
def test_bad_card_bodies(body: object) -> None:
    with pytest.raises(BadCard):
        ContactCard.from_body(body)


def test_refusals(market: Market) -> None:
    seller = market.agent("seller.books", "seller")
    buyer = market.agent("buyer", "buyer")
    root, crl = market.ca.certificate, market.crl

    def signed_by(agent, card: ContactCard) -> SignedCard:  # type: ignore[no-untyped-def]
        return sign_card(card, key=agent.key, certificate=agent.cert, nonce=os.urandom(16))

    # buyer signs a card that claims to be seller's
    with pytest.raises(CardMismatch):
        verify_card(signed_by(buyer, _card()), root=root, crl=crl, now=NOW)
    # right agent, wrong role
    with pytest.raises(CardMismatch):
        verify_card(signed_by(seller, _card(role="bank")), root=root, crl=crl, now=NOW)
    genuine = signed_by(seller, _card())
    # the body changed after signing
    wire = genuine.statement.to_wire()
    wire["body"] = {**wire["body"], "addresses": ["10.0.0.1:1"]}
    with pytest.raises(BadSignature):
        verify_card(SignedCard(Statement.from_wire(wire), seller.cert), root=root, crl=crl,
                    now=NOW)
    # later than its validity
    with pytest.raises(CardExpired):
        verify_card(genuine, root=root, crl=crl, now=NOW + dt.timedelta(hours=2))
    # a statement that is not a card
    other = dataclasses.replace(genuine.statement, type="commerce.offer")
    with pytest.raises(Exception) as caught:
        verify_card(SignedCard(other, seller.cert), root=root, crl=crl, now=NOW)
    assert caught.value.code.startswith("statement.")  # type: ignore[attr-defined]
    # its signer revoked
    market.revoke(seller)
    with pytest.raises(Revoked):
        verify_card(genuine, root=root, crl=market.crl, now=NOW)


def test_signed_card_wire_refusals(market: Market) -> None:
    seller = market.agent("seller.books", "seller")
    genuine = sign_card(_card(), key=seller.key, certificate=seller.cert, nonce=os.urandom(16))
    wire = genuine.to_wire()
    with pytest.raises(BadCard):
        SignedCard.from_wire({"card": wire["card"]})
    with pytest.raises(BadCard):
        SignedCard.from_wire({**wire, "certificate": b"not DER"})
    with pytest.raises(MalformedStatement):
        SignedCard.from_wire({**wire, "card": {"type": "x"}})


@pytest.mark.parametrize("body", [None, {}, {"agent": "a", "role": "b"}, {"agent": "A B"},
                                  {"name": "x"}])
def test_bad_lookups(body: object) -> None:
    with pytest.raises(BadLookup):
        Lookup.from_wire(body)


def test_lookup_round_trip() -> None:
    for lookup in (Lookup(agent_id="bank"), Lookup(role="seller")):
        assert Lookup.from_wire(lookup.to_wire()) == lookup
