"""The payer and payee halves of ``voucher`` (a ``PaymentModule``, registered in the
``semper.payment_modules`` entry-point group).

    payer: choose a secret -> bank.buy_voucher at its bank with lock = H(secret) ->
           verify the voucher -> payment.accept at the payee, proof = {voucher,
           secret, bank_certificate} -> verify the redemption the payee answers with
    payee: verify the voucher -> bank.redeem_voucher at its bank with the secret ->
           verify the redemption: the settlement

A payee that definitely refuses the voucher (a refusal its buyer does not retry:
``DEFINITE_REFUSALS``) leaves it unspent, and the secret with nobody else: the payer
redeems it itself, which takes the money back (``_take_back``). Any other refusal
(the payee's bank out of reach, a timeout) leaves it unspent for the buyer's retry,
which relocks it; until it is taken back, ``prepaid`` tells the buyer the money
left its account, so no refusal ends the purchase with the price in ``@vouchers``.

Like every module it holds no state: the secret lives for one ``pay`` call, and a
retried ``pay`` (same idempotency key) buys nothing twice: the bank relocks the
unspent voucher under the retry's secret, or answers with the voucher spent, whose
redeemer's bank answers the payee's retry with the first redemption.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from typing import Any, ClassVar, Final

from semper.services import Amount
from semper.services.payment import (
    Invoice,
    PayeeContext,
    PayerContext,
    PaymentContext,
    PaymentRequest,
    PaymentResult,
    RefundResult,
    hand_over,
    now_of,
    our_bank,
    refund_payment,
)
from semper.services.statements import Statement
from semper.transport import RemoteError

from .protocol import (
    BUY,
    MODULE,
    PURCHASE_ORDER,
    REDEEM,
    REDEMPTION,
    SECRET_SIZE,
    VOUCHER,
    BuyAnswer,
    BuyRequest,
    PurchaseOrder,
    RedeemAnswer,
    RedeemRequest,
    Redemption,
    Spent,
    Trust,
    Voucher,
    VoucherProof,
    lock_of,
    verify_redemption,
    verify_voucher,
)

__all__ = ["DEFINITE_REFUSALS", "VoucherModule"]

#: The payee's refusals after which a buyer does not retry the payment (semper's
#: buyer ends the purchase FAILED on them): only then is the voucher taken back.
#: On any other (peer.unavailable, internal.error, a timeout) the buyer retries, and
#: a voucher its buyer redeemed could never pay that retry.
DEFINITE_REFUSALS: Final = frozenset({
    "payment.insufficient_funds", "payment.unknown_account", "payment.no_common_instrument",
    "payment.unknown_module", "payment.currency_mismatch", "commerce.unsupported_payment",
    "payment.already_paid", "payment.wrong_bank", "payment.policy_refused",
    "payment.forbidden_instrument", "payment.unsupported",
})


def _trust(ctx: PaymentContext) -> Trust:
    return ctx.root, ctx.crl, now_of(ctx)


class VoucherModule:
    """``voucher``: a prepaid voucher bought at the payer's bank, redeemed by the payee."""

    name: ClassVar[str] = MODULE

    async def pay(self, ctx: PayerContext, request: PaymentRequest) -> PaymentResult:
        secret = secrets.token_bytes(SECRET_SIZE)
        order = PurchaseOrder(payer=ctx.our_id, payee=request.payee, bank=ctx.bank_id,
                              amount=request.amount, reference=request.reference,
                              lock=lock_of(secret), idempotency_key=request.idempotency_key)
        signed = await ctx.sign(PURCHASE_ORDER, order.to_wire())
        answer = BuyAnswer.from_wire(await ctx.request(
            ctx.bank_id, BUY.service, BUY.name, BuyRequest(order=signed).to_wire()))
        # Not expected_lock: a retry whose voucher was spent meanwhile gets it under the
        # first lock; the payee's bank answers its redeemer's retry without the secret.
        verify_voucher(answer.voucher, bank_certificate=answer.bank_certificate,
                       trust=_trust(ctx), expected_bank=ctx.bank_id, expected_payer=ctx.our_id,
                       expected_payee=request.payee, expected_amount=request.amount,
                       expected_reference=request.reference)
        await ctx.record(answer.voucher, answer.bank_certificate)
        proof = VoucherProof(voucher=answer.voucher, secret=secret,
                             bank_certificate=answer.bank_certificate)
        try:
            result = await hand_over(ctx, request, self.name, proof.to_wire())
        except RemoteError as refusal:
            if refusal.code in DEFINITE_REFUSALS or isinstance(
                    refusal.detail.get("returned"), dict):
                await self._take_back(ctx, answer, secret)
            raise
        verify_redemption(result.settlement, bank_certificate=result.bank_certificate,
                          trust=_trust(ctx), expected_voucher=answer.voucher.digest,
                          expected_payee=request.payee, expected_amount=request.amount,
                          expected_bank=ctx.bank_id)
        await ctx.record(result.settlement, result.bank_certificate)
        return result

    async def _take_back(self, ctx: PayerContext, bought: BuyAnswer, secret: bytes) -> None:
        """The payee refused the voucher for good, and only we hold its secret now:
        redeem it ourselves, so the money is back in our account rather than held for
        nobody in ``@vouchers``. If the payee redeemed it before refusing, the bank
        refuses us (``voucher.spent``) and the payee has the money: the refusal stands,
        and the bank alone decides who was first. Any other failure (the bank out of
        reach) is raised instead of the refusal: the money is still in ``@vouchers``,
        and the buyer's retry relocks the voucher and takes it back then."""
        try:
            back = RedeemAnswer.from_wire(await ctx.request(
                ctx.bank_id, REDEEM.service, REDEEM.name,
                RedeemRequest(voucher=bought.voucher, secret=secret).to_wire()))
            verify_redemption(back.redemption, bank_certificate=back.bank_certificate,
                              trust=_trust(ctx), expected_voucher=bought.voucher.digest,
                              expected_payee=ctx.our_id,
                              expected_amount=Voucher.from_statement(bought.voucher).amount,
                              expected_bank=ctx.bank_id)
        except RemoteError as failed:
            if failed.code == Spent.code:  # the payee's: its refusal stands
                return
            raise
        await ctx.record(back.redemption, back.bank_certificate)

    def prepaid(self, statements: Sequence[Statement]) -> tuple[Statement, Amount] | None:
        """Among our archived statements of a payment's transaction, a voucher we
        bought and did not take back (no redemption of its serial to its payer), and
        its amount: the money left our account before the payee saw the voucher."""
        back: set[str] = set()
        bought: list[tuple[Statement, Any]] = []
        for statement in statements:
            try:
                if statement.type == REDEMPTION:
                    redeemed = Redemption.from_statement(statement)
                    if redeemed.payee == redeemed.payer:
                        back.add(redeemed.serial)
                elif statement.type == VOUCHER:
                    bought.append((statement, Voucher.from_statement(statement)))
            except Exception:  # not a body our bank signed: nothing of ours
                continue
        for statement, body in bought:
            if body.serial not in back:
                return statement, body.amount
        return None

    def same_payment(self, proof: Any, paid: PaymentResult) -> bool:
        """Whether ``proof`` hands over again the voucher whose redemption settled
        ``paid`` (a payer retrying gets the spent voucher as it is), offline: no
        records archived, no bank asked again."""
        try:
            got = VoucherProof.from_wire(proof)
            if paid.settlement.type != REDEMPTION:
                return False
            return Redemption.from_statement(paid.settlement).voucher == got.voucher.digest
        except Exception:  # a proof that does not parse is not the payment
            return False

    async def accept(self, ctx: PayeeContext, proof: dict[str, Any], *,
                     invoice: Invoice) -> PaymentResult:
        got = VoucherProof.from_wire(proof)
        voucher = verify_voucher(got.voucher, bank_certificate=got.bank_certificate,
                                 trust=_trust(ctx), expected_payer=invoice.payer,
                                 expected_payee=ctx.our_id, expected_amount=invoice.amount,
                                 expected_reference=invoice.reference)
        # Before dialing the agent the voucher names. The secret is the bank's to check:
        # a payer retrying after we redeemed the voucher no longer holds it.
        our_bank(ctx, voucher.bank)
        answer = RedeemAnswer.from_wire(await ctx.request(
            voucher.bank, REDEEM.service, REDEEM.name,
            RedeemRequest(voucher=got.voucher, secret=got.secret).to_wire()))
        verify_redemption(answer.redemption, bank_certificate=answer.bank_certificate,
                          trust=_trust(ctx), expected_voucher=got.voucher.digest,
                          expected_payee=ctx.our_id, expected_amount=voucher.amount,
                          expected_bank=voucher.bank)
        # Archived once redeemed: vouchers that never pay cost us nothing to keep.
        await ctx.record(got.voucher, got.bank_certificate)
        await ctx.record(answer.redemption, answer.bank_certificate)
        return PaymentResult(module=self.name, payer=voucher.payer, payee=ctx.our_id,
                             amount=voucher.amount, reference=voucher.reference,
                             settlement=answer.redemption,
                             bank_certificate=answer.bank_certificate)

    async def refund(self, ctx: PayeeContext, original: PaymentResult, amount: Amount,
                     reason: str, key: str) -> RefundResult:
        """A redeemed voucher is a settled payment like any other: ``bank.refund``."""
        return await refund_payment(ctx, original, amount, reason, key)
