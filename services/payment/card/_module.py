"""The ``card`` module: cardholder and merchant halves (the gateway is the bank's
component in agents/, built on this package's checks).

    cardholder: bank.card_gateway_key at our bank -> check it; OI from the request,
                PI from our card (``ctx.holder("card")``) -> PIMD, OIMD, the dual
                signature, the PI sealed to the gateway -> payment.accept at the
                merchant; verify the payment.card_captured it answers with
    merchant:   check the OI and the dual signature (``check_card_proof``) ->
                bank.card_authorize at our bank (the sealed PI, the OIMD, the dual
                signature) -> bank.card_capture of the whole amount -> verify both

The merchant's keys are derived from the OIMD, so a cardholder that retries (a fresh
PI nonce, a fresh dual signature, the same OI) meets the authorisation and capture
of its first attempt, which the gateway gives once per order.
"""

from __future__ import annotations

import os
from typing import Any, ClassVar, Final

from cryptography.hazmat.primitives.asymmetric import x25519

from ...certificates import identity_of
from ...money import Amount
from .._modules import (
    Invoice,
    PayeeContext,
    PayerContext,
    PaymentRequest,
    PaymentResult,
    RefundResult,
    hand_over,
    now_of,
    refund_payment,
)
from .._wire import BANK_SERVICE
from ._checks import (
    check_card_proof,
    check_gateway_key,
    verify_authorization,
    verify_captured,
)
from ._schema import DUAL_SIGNATURE, NONCE_SIZE, OrderInformation, PaymentInstructions
from ._set import dual_signature, oimd_of, pimd_of, seal_instructions
from ._wire import (
    BANK_CARD_AUTHORIZE,
    BANK_CARD_CAPTURE,
    BANK_CARD_GATEWAY_KEY,
    AuthorizeAnswer,
    AuthorizeRequest,
    CaptureAnswer,
    CaptureRequest,
    CardProof,
    GatewayKeyAnswer,
    GatewayKeyRequest,
)

__all__ = ["CardModule", "authorize_key", "capture_key"]

_AUTHORIZE_PREFIX: Final = "card-authorize-"
_CAPTURE_PREFIX: Final = "card-capture-"


def authorize_key(oimd: bytes) -> str:
    """The merchant's idempotency key for authorising order ``oimd``."""
    return _AUTHORIZE_PREFIX + oimd.hex()


def capture_key(oimd: bytes) -> str:
    """The merchant's idempotency key for capturing the whole of order ``oimd``."""
    return _CAPTURE_PREFIX + oimd.hex()


class CardModule:
    """``card``: SET-style card payments, authorised and captured by the merchant at
    the bank's gateway; the merchant never sees the card, the gateway never the order."""

    name: ClassVar[str] = "card"
    #: The gateway holds the amount at authorisation and captures it before the goods
    #: go: a card payment the seller accepted cannot bounce (services/payment/_policy).
    guaranteed: ClassVar[bool] = True

    async def pay(self, ctx: PayerContext, request: PaymentRequest) -> PaymentResult:
        cards = ctx.holder("card")
        number, expiry = await cards.card()
        answer = GatewayKeyAnswer.from_wire(await ctx.request(
            ctx.bank_id, BANK_SERVICE, BANK_CARD_GATEWAY_KEY, GatewayKeyRequest().to_wire()))
        key = check_gateway_key(answer.key, bank_certificate=answer.bank_certificate,
                                root=ctx.root, crl=ctx.crl, now=now_of(ctx),
                                expected_bank=ctx.bank_id)
        # No description: a PaymentRequest has none, and ``settles`` (the notary's
        # check) rebuilds this OI from the order alone.
        oi = OrderInformation(order=request.reference, merchant=request.payee,
                              amount=request.amount, description="")
        oimd = oimd_of(oi)
        pi = PaymentInstructions(number=number, expiry=expiry, amount=request.amount,
                                 merchant=request.payee, order=oimd,
                                 idempotency_key=request.idempotency_key,
                                 nonce=os.urandom(NONCE_SIZE))
        pimd = pimd_of(pi)
        dual = await ctx.sign(DUAL_SIGNATURE, dual_signature(pimd, oimd).to_body())
        sealed = seal_instructions(
            pi, gateway_key=x25519.X25519PublicKey.from_public_bytes(key.public_key))
        proof = CardProof(oi=oi, pimd=pimd, dual=dual, sealed_pi=sealed,
                          cardholder_certificate=ctx.certificate)
        result = await hand_over(ctx, request, self.name, proof.to_wire())
        verify_captured(result.settlement, bank_certificate=result.bank_certificate,
                        root=ctx.root, crl=ctx.crl, now=now_of(ctx),
                        expected_merchant=request.payee, expected_amount=request.amount,
                        expected_oimd=oimd, expected_bank=ctx.bank_id)
        await ctx.record(result.settlement, result.bank_certificate)
        return result

    def same_payment(self, proof: Any, paid: PaymentResult) -> bool:
        """Whether ``proof`` hands over again the order that settled ``paid``: the same
        OI (its OIMD is the capture's) from the same cardholder."""
        try:
            got = CardProof.from_wire(proof)
            holder = identity_of(got.cardholder_certificate).agent_id
        except Exception:  # a proof that does not parse is not the payment
            return False
        return bool(holder == paid.payer and oimd_of(got.oi) == paid.settlement.body.get("oimd"))

    def settles(self, settlement: Any, *, bank_certificate: Any, root: Any, crl: Any,
                now: Any, payer: str, payee: str, amount: Amount, reference: bytes,
                idempotency_key: str) -> None:
        """Raises unless ``settlement`` is a bank's capture of ``amount`` to ``payee`` for
        the order ``reference`` (checked offline): the OIMD of the OI our ``pay`` writes
        (its description empty) names the order. A capture names no payer: the order
        digest does (a commerce order names its buyer)."""
        del payer, idempotency_key
        oi = OrderInformation(order=reference, merchant=payee, amount=amount, description="")
        verify_captured(settlement, bank_certificate=bank_certificate, root=root, crl=crl,
                        now=now, expected_merchant=payee, expected_amount=amount,
                        expected_oimd=oimd_of(oi))

    async def accept(self, ctx: PayeeContext, proof: dict[str, Any], *,
                     invoice: Invoice) -> PaymentResult:
        got = CardProof.from_wire(proof)
        order = check_card_proof(got, invoice=invoice, merchant=ctx.our_id, root=ctx.root,
                                 crl=ctx.crl, now=now_of(ctx))
        bank = ctx.bank_id  # the gateway is our bank's; a PI sealed elsewhere does not open
        ask = AuthorizeRequest(sealed_pi=got.sealed_pi, oimd=order.oimd, dual=got.dual,
                               cardholder_certificate=got.cardholder_certificate,
                               amount=invoice.amount, idempotency_key=authorize_key(order.oimd))
        authorized = AuthorizeAnswer.from_wire(await ctx.request(
            bank, BANK_SERVICE, BANK_CARD_AUTHORIZE, ask.to_wire()))
        authorization = verify_authorization(
            authorized.authorization, bank_certificate=authorized.bank_certificate,
            root=ctx.root, crl=ctx.crl, now=now_of(ctx), expected_merchant=ctx.our_id,
            expected_amount=invoice.amount, expected_oimd=order.oimd, expected_bank=bank)
        await ctx.record(authorized.authorization, authorized.bank_certificate)
        take = CaptureRequest(authorization_id=authorization.authorization_id,
                              amount=invoice.amount, idempotency_key=capture_key(order.oimd))
        captured = CaptureAnswer.from_wire(await ctx.request(
            bank, BANK_SERVICE, BANK_CARD_CAPTURE, take.to_wire()))
        verify_captured(captured.captured, bank_certificate=captured.bank_certificate,
                        root=ctx.root, crl=ctx.crl, now=now_of(ctx),
                        expected_merchant=ctx.our_id, expected_amount=invoice.amount,
                        expected_oimd=order.oimd,
                        expected_authorization_id=authorization.authorization_id,
                        expected_bank=bank)
        await ctx.record(got.dual, got.cardholder_certificate)
        await ctx.record(captured.captured, captured.bank_certificate)
        return PaymentResult(module=self.name, payer=order.cardholder, payee=ctx.our_id,
                             amount=invoice.amount, reference=invoice.reference,
                             settlement=captured.captured,
                             bank_certificate=captured.bank_certificate)

    async def refund(self, ctx: PayeeContext, original: PaymentResult, amount: Amount,
                     reason: str, key: str) -> RefundResult:
        """A credit back to the card: the generic ``bank.refund`` naming the capture."""
        return await refund_payment(ctx, original, amount, reason, key)

