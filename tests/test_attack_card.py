"""The card instrument attacked from outside (issue 11, brief A2): a hostile merchant,
a hostile cardholder or a third party with a valid market certificate, against real
bank, buyer and seller agents over loopback TLS (the world of
tests/test_card_agents.py), with only what protocol.md 8.8 lets them send.

Faults found (each a failing test first, then the fix of its kind):
* data separation: the gateway's refusal of an expired card, which the merchant
  forwards and reads, named the card's expiry (message and detail); a member of the
  kind: a PI in another currency than the card's account was refused naming that
  account's currency. The gateway's refusals to a merchant now say nothing of the
  card beyond the code (``card.expired_card`` without detail; a currency the card
  does not pay in is ``card.declined``).

Attacks that found nothing are here too (one test each, refusal code and nothing
moved, the books balanced after each).
"""

from __future__ import annotations

import logging
import secrets
from pathlib import Path
from typing import Any

import pytest
import trio
from cryptography.hazmat.primitives.asymmetric import x25519
from test_card_agents import (
    HELD,
    Card,
    _found_in_database,
    _found_in_files,
    eur,
    market,
    world,
)

from semper.agents.components._payments import AgentPaymentContext
from semper.agents.components._purchase import Shopper
from semper.services import Amount
from semper.services.payment import PaymentResult, refund_payment
from semper.services.payment.card import (
    CARD_AUTHORIZE,
    CARD_GATEWAY_KEY,
    DUAL_SIGNATURE,
    AuthorizeRequest,
    GatewayKey,
    GatewayKeyRequest,
    PaymentInstructions,
)
from semper.services.payment.card._set import dual_signature, seal_instructions
from semper.services.statements import canonical_encode
from semper.transport import RemoteError

__all__ = ["market"]  # the module's market fixture, shared with test_card_agents' shape

MAX = 2**63 - 1


def _said(refused: RemoteError) -> bytes:
    """Everything a refusal tells its receiver, as bytes to search."""
    return canonical_encode({"code": refused.code, "message": str(refused),
                             "detail": refused.detail})


# -- data separation --------------------------------------------------------------


async def test_an_expired_cards_refusal_tells_the_merchant_nothing_of_the_card(
        market: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The instance: the merchant forwards instructions it cannot read for a card
    whose month is over; the gateway's refusal, which the merchant reads (and passes
    on), names neither the card's expiry nor its number."""
    caplog.set_level(logging.DEBUG)
    async with world(market) as w:
        old = Card(number="4000000000000036", expiry="2019-03", bank="bank")
        await w.bank.database.transaction(lambda c: c.execute(
            "INSERT OR IGNORE INTO card_cards (number, expiry, holder, currency, issued_ms)"
            " VALUES (?, ?, 'buyer', 'EUR', 0)", (old.number, old.expiry)))
        refused = await w.refused("card.expired_card", w.authorize(
            await w.instructions(eur(10), card=old)))
        said = _said(refused)
        for secret in (old.expiry, old.number, old.expiry.replace("-", "")):
            assert secret.encode() not in said, refused
        # The whole purchase with that card: the seller's database, files and every
        # agent's log hold nothing of it either.
        card = await w.card()

        def holds(number: str, expiry: str) -> Any:
            return lambda c: c.execute("UPDATE cards_cards SET number = ?, expiry = ?"
                                       " WHERE number = ?", (number, expiry, card.number))

        await w.buyer.database.transaction(holds(old.number, old.expiry))
        try:
            with pytest.raises(Exception) as failed:
                await Shopper(w.buyer).buy("seller", "map-002", "card", "expired-1")
            assert getattr(failed.value, "code", None) == "card.expired_card", failed.value
        finally:
            await w.buyer.database.transaction(lambda c: c.execute(
                "UPDATE cards_cards SET number = ?, expiry = ? WHERE number = ?",
                (card.number, card.expiry, old.number)))
        assert await w.moved() == {}
    needles = [old.expiry.encode(), old.number.encode()]
    for database in (market / "seller").rglob("*.sqlite"):
        assert _found_in_database(database, needles) == [], database
    assert _found_in_files(market / "seller", needles) == []
    logged = "\n".join(f"{r.name} {r.getMessage()}" for r in caplog.records)
    assert old.expiry not in logged and old.number not in logged


async def test_a_pi_in_another_currency_tells_the_merchant_nothing_of_the_card(
        market: Path) -> None:
    """A member of the kind: instructions in a currency the card's account is not
    in; the refusal does not name the account's currency (nor anything else of the
    card): ``card.declined``, as for any card that does not pay the amount."""
    async with world(market) as w:
        card = await w.card()
        refused = await w.refused("card.declined", w.authorize(
            await w.instructions(Amount("USD", 10))))
        said = _said(refused)
        for secret in ("EUR", card.expiry, card.number):
            assert secret.encode() not in said, refused


# -- money: what found nothing -------------------------------------------------------


async def test_captures_racing_under_many_keys_take_at_most_the_hold(market: Path) -> None:
    """Five captures of 30 under five keys at once on a hold of 100: three pay, two
    are ``card.over_authorized``; then a capture of 2**63-1 and one after the final
    capture are refused."""
    async with world(market) as w:
        auth = await w.authorize(await w.instructions(eur(100)))
        assert await w.moved() == {"buyer": -100, HELD: 100}
        got: list[str] = []

        async def one(key: str) -> None:
            try:
                await w.capture(auth.authorization_id, eur(30), key)
                got.append("captured")
            except RemoteError as exc:
                got.append(exc.code)

        async with trio.open_nursery() as nursery:
            for i in range(5):
                nursery.start_soon(one, f"many-{i}")
        assert sorted(got) == ["captured"] * 3 + ["card.over_authorized"] * 2
        assert await w.moved() == {"seller": 90, HELD: -90}
        await w.refused("card.over_authorized",
                        w.capture(auth.authorization_id, eur(MAX), "many-max"))
        await w.capture(auth.authorization_id, eur(1), "many-final", final=True)
        assert await w.moved() == {"seller": 1, "buyer": 9, HELD: -10}
        await w.refused("card.unknown_authorization",
                        w.capture(auth.authorization_id, eur(1), "many-after"))


async def test_instructions_for_2_63_minus_1_are_declined(market: Path) -> None:
    async with world(market) as w:
        await w.refused("card.declined", w.authorize(await w.instructions(eur(MAX))))


async def test_refunds_of_a_capture_stay_within_it_under_any_key(market: Path) -> None:
    """Two partial captures (300, 200); refunds of the first: its whole under one
    key, then 1 more under another, and 301 at once under a third, are refused; a
    refund to an accomplice rather than the cardholder, and one by another agent than
    the merchant, are ``payment.wrong_payee``."""
    async with world(market) as w:
        auth = await w.authorize(await w.instructions(eur(500)))
        first = await w.capture(auth.authorization_id, eur(300), "r-cap-1")
        await w.capture(auth.authorization_id, eur(200), "r-cap-2")
        assert await w.moved() == {"buyer": -500, "seller": 500}

        def paid(payer: str = "buyer", payee: str = "seller",
                 amount: int = 300) -> PaymentResult:
            return PaymentResult(module="card", payer=payer, payee=payee, amount=eur(amount),
                                 reference=auth.oimd, settlement=first,
                                 bank_certificate=w.bank.context.certificate)

        seller = AgentPaymentContext(w.seller, "card-attack", "buyer")
        await w.refused("payment.refund_exceeds_payment",
                        refund_payment(seller, paid(amount=500), eur(301), "more", "r-301"))
        await w.refused("payment.wrong_payee",  # to an accomplice, not the cardholder
                        refund_payment(seller, paid(payer="notary"), eur(10), "a", "r-acc"))
        buyer = AgentPaymentContext(w.buyer, "card-attack", "seller")
        await w.refused("payment.wrong_payee",  # the cardholder refunds itself
                        refund_payment(buyer, paid(payer="seller", payee="buyer"), eur(10),
                                       "mine", "r-b"))
        await refund_payment(seller, paid(), eur(300), "returned", "r-all")
        assert await w.moved() == {"buyer": 300, "seller": -300}
        await w.refused("payment.refund_exceeds_payment",
                        refund_payment(seller, paid(), eur(1), "again", "r-again"))


async def test_a_dual_signature_reused_or_forwarded_elsewhere_authorises_nothing(
        market: Path) -> None:
    """The cardholder's dual signature of one purchase with other instructions
    (a larger amount, the same order): ``card.bad_dual_signature``; the merchant's
    whole request forwarded by another agent: ``card.bad_instructions`` (the PI
    names its merchant); after an authorisation was captured and refunded, its
    request again: the same authorisation, nothing held again, nothing to capture."""
    async with world(market) as w:
        order = secrets.token_bytes(32)
        small = await w.instructions(eur(5), order=order)
        big = await w.instructions(eur(5000), order=order)
        # Sealed for its own order (OIMD): it does not open for another.
        await w.refused("card.bad_instructions", w.authorize(AuthorizeRequest(
            sealed_pi=big.sealed_pi, oimd=small.oimd, dual=small.dual,
            cardholder_certificate=small.cardholder_certificate, amount=eur(5000),
            idempotency_key="reuse-1")))
        # Sealed for the small order's OIMD, for 5000: the PIMD is not the signed one.
        card = await w.card()
        pi = PaymentInstructions(number=card.number, expiry=card.expiry, amount=eur(5000),
                                 merchant="seller", order=small.oimd, idempotency_key="pay-1",
                                 nonce=secrets.token_bytes(16))
        answer = await w.buyer.context.call("bank", CARD_GATEWAY_KEY, GatewayKeyRequest())
        sealed = seal_instructions(pi, gateway_key=x25519.X25519PublicKey.from_public_bytes(
            GatewayKey.from_statement(answer.key).public_key))
        await w.refused("card.bad_dual_signature", w.authorize(AuthorizeRequest(
            sealed_pi=sealed, oimd=small.oimd, dual=small.dual,
            cardholder_certificate=small.cardholder_certificate, amount=eur(5000),
            idempotency_key="reuse-1b")))
        # A dual signature over the same OIMD by the merchant (who knows the PIMD).
        forged = w.seller.context.sign(DUAL_SIGNATURE, dual_signature(
            secrets.token_bytes(32), small.oimd).to_body())
        await w.refused("card.bad_dual_signature", w.authorize(AuthorizeRequest(
            sealed_pi=small.sealed_pi, oimd=small.oimd, dual=forged,
            cardholder_certificate=w.seller.context.certificate, amount=eur(5),
            idempotency_key="reuse-2")))
        await w.refused("card.bad_instructions", w.authorize(small, merchant=w.buyer))
        auth = await w.authorize(small)
        captured = await w.capture(auth.authorization_id, eur(5), "reuse-cap")
        ctx = AgentPaymentContext(w.seller, "card-attack", "buyer")
        await refund_payment(ctx, PaymentResult(
            module="card", payer="buyer", payee="seller", amount=eur(5), reference=order,
            settlement=captured, bank_certificate=w.bank.context.certificate),
            eur(5), "returned", "reuse-refund")
        assert await w.moved() == {}
        assert await w.authorize(small) == auth
        again = await w.seller.context.call("bank", CARD_AUTHORIZE, small)
        assert again.authorization.body["authorization_id"] == auth.authorization_id
        await w.refused("card.unknown_authorization",
                        w.capture(auth.authorization_id, eur(5), "reuse-cap-2"))
