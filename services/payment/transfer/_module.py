"""The ``transfer`` module: payer and payee halves (the bank half is an agents/
component that serves ``bank.transfer`` with this package's checks).

    payer: sign payment.transfer_order -> bank.transfer at the payer's bank
           -> verify the payment.transfer_confirmation -> payment.accept at the
           payee, proof = {confirmation, bank_certificate}
    payee: verify the confirmation offline; nothing else to do

The bank moves the money before the payee sees the proof, so both sides can tell
that money moved whatever the payee decides: the payee (``received``) from a proof
it refuses, to give it back; the payer (``prepaid``) from the confirmation it
archived, to know that a refusal does not leave the money with it.

A retried order (same idempotency key) is confirmed with the first order's
confirmation, so the payer matches the answer by content, not by its new digest.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from ..._errors import ServiceError
from ...certificates import identity_of
from ...money import Amount
from ...statements import Statement
from .._errors import BadConfirmation
from .._modules import (
    Invoice,
    PayeeContext,
    PayerContext,
    PaymentRequest,
    PaymentResult,
    RefundResult,
    hand_over,
    now_of,
    our_bank,
    refund_payment,
)
from .._wire import BANK_SERVICE
from ._checks import verify_transfer_confirmation
from ._schema import TRANSFER_CONFIRMATION, TRANSFER_ORDER, TransferConfirmation, TransferOrder
from ._wire import BANK_TRANSFER, TransferProof, TransferRequest

__all__ = ["TransferModule"]


class TransferModule:
    """``transfer``: an account-to-account transfer confirmed by the bank."""

    name: ClassVar[str] = "transfer"
    #: Guaranteed: the bank moved the money before the payee is told (protocol.md 8.9).
    guaranteed: ClassVar[bool] = True

    async def pay(self, ctx: PayerContext, request: PaymentRequest) -> PaymentResult:
        order = TransferOrder(payer=ctx.our_id, payee=request.payee, bank=ctx.bank_id,
                              amount=request.amount, reference=request.reference,
                              idempotency_key=request.idempotency_key)
        signed = await ctx.sign(TRANSFER_ORDER, order.to_body())
        proof = TransferProof.from_wire(await ctx.request(
            ctx.bank_id, BANK_SERVICE, BANK_TRANSFER, TransferRequest(order=signed).to_wire()))
        # Not expected_order=signed.digest: a retry is confirmed with the first order's.
        verify_transfer_confirmation(
            proof.confirmation, bank_certificate=proof.bank_certificate, root=ctx.root,
            crl=ctx.crl, now=now_of(ctx), expected_payee=request.payee,
            expected_amount=request.amount, expected_reference=request.reference,
            expected_payer=ctx.our_id, expected_bank=ctx.bank_id)
        await ctx.record(proof.confirmation, proof.bank_certificate)
        result = await hand_over(ctx, request, self.name, proof.to_wire())
        if result.settlement != proof.confirmation:
            raise BadConfirmation("the payee acknowledged another confirmation",
                                  detail={"type": "payment result", "field": "settlement"})
        return result

    def same_payment(self, proof: Any, paid: PaymentResult) -> bool:
        """Whether ``proof`` hands over again the transfer that settled ``paid``: the
        same confirmation (a payer retrying gets the bank's first one)."""
        try:
            return TransferProof.from_wire(proof).confirmation == paid.settlement
        except Exception:  # a proof that does not parse is not the payment
            return False

    async def accept(self, ctx: PayeeContext, proof: dict[str, Any], *,
                     invoice: Invoice) -> PaymentResult:
        got = TransferProof.from_wire(proof)
        body = verify_transfer_confirmation(
            got.confirmation, bank_certificate=got.bank_certificate, root=ctx.root, crl=ctx.crl,
            now=now_of(ctx), expected_payee=ctx.our_id, expected_amount=invoice.amount,
            expected_reference=invoice.reference, expected_payer=invoice.payer)
        # Signed by a bank (checked above), but money only at our own bank is ours.
        our_bank(ctx, identity_of(got.bank_certificate).agent_id)
        await ctx.record(got.confirmation, got.bank_certificate)
        return PaymentResult(module=self.name, payer=body.payer, payee=body.payee,
                             amount=body.amount, reference=body.reference,
                             settlement=got.confirmation, bank_certificate=got.bank_certificate)

    def received(self, ctx: PayeeContext, proof: Any, *, payer: str,
                 reference: bytes) -> PaymentResult | None:
        """The transfer ``proof`` shows our bank already applied, from ``payer`` to us
        for ``reference``, of any amount (checked offline, nothing archived); None
        for a proof that is not such a transfer. The money is ours whether or not the
        payment is accepted, so a payee that refuses it gives it back."""
        try:
            got = TransferProof.from_wire(proof)
        except Exception:  # not a transfer proof: nothing the bank moved for it
            return None
        try:
            our_bank(ctx, identity_of(got.bank_certificate).agent_id)
            body = verify_transfer_confirmation(
                got.confirmation, bank_certificate=got.bank_certificate, root=ctx.root,
                crl=ctx.crl, now=now_of(ctx), expected_payee=ctx.our_id, expected_amount=None,
                expected_reference=reference, expected_payer=payer, expected_bank=ctx.bank_id)
        except ServiceError:
            return None
        return PaymentResult(module=self.name, payer=body.payer, payee=body.payee,
                             amount=body.amount, reference=body.reference,
                             settlement=got.confirmation, bank_certificate=got.bank_certificate)

    def settles(self, settlement: Statement, *, bank_certificate: Any, root: Any, crl: Any,
                now: Any, payer: str, payee: str, amount: Amount, reference: bytes,
                idempotency_key: str) -> None:
        """Raises unless ``settlement`` is a bank's confirmation of a transfer of
        ``amount`` from ``payer`` to ``payee`` for ``reference`` (checked offline)."""
        del idempotency_key  # the reference names the payment
        verify_transfer_confirmation(
            settlement, bank_certificate=bank_certificate, root=root, crl=crl, now=now,
            expected_payee=payee, expected_amount=amount, expected_reference=reference,
            expected_payer=payer)

    def prepaid(self, statements: Sequence[Statement]) -> tuple[Statement, Amount] | None:
        """Among our archived statements of a payment's transaction, our bank's
        confirmation of a transfer we made (archived before the proof left us), and
        its amount: the money moved before the payee saw it."""
        for statement in statements:
            if statement.type != TRANSFER_CONFIRMATION:
                continue
            try:
                return statement, TransferConfirmation.from_statement(statement).amount
            except ServiceError:  # not a confirmation body: not one our bank signed
                continue
        return None

    async def refund(self, ctx: PayeeContext, original: PaymentResult, amount: Amount,
                     reason: str, key: str) -> RefundResult:
        return await refund_payment(ctx, original, amount, reason, key)
