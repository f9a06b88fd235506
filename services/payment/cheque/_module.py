"""The ``cheque`` module: payer and payee halves (the bank half is an agents/
component that serves ``bank.deposit_cheque`` and ``bank.stop_cheque`` with this
package's checks).

    payer: sign payment.cheque -> payment.accept at the payee,
           proof = {cheque, drawer_certificate}; verify the cleared statement the
           payee answers with
    payee: verify the cheque -> bank.deposit_cheque at the cheque's bank ->
           verify the payment.cheque_cleared

A cheque's serial is derived from the payer and the idempotency key
(``cheque_serial``), so a payer that retries writes the same serial, which the bank
clears once and answers again with the first cleared statement.
"""

from __future__ import annotations

import hashlib
from typing import Any, ClassVar, Final

from ...money import Amount
from ...statements import Statement, canonical_encode
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
from ._checks import verify_cheque, verify_cheque_cleared
from ._schema import CHEQUE, Cheque
from ._wire import (
    BANK_CHEQUE_STATUS,
    BANK_DEPOSIT_CHEQUE,
    ChequeProof,
    ChequeStatus,
    DepositAnswer,
    StopCheque,
)

__all__ = ["ChequeModule", "cheque_serial"]

_SERIAL_DOMAIN: Final = b"semper-cheque-serial-v1\x00"


def cheque_serial(payer: str, idempotency_key: str) -> str:
    """The serial of the cheque ``payer`` writes for ``idempotency_key``: 32 hex digits
    of SHA-256 over a domain prefix and the canonical ``[payer, key]``. A retry writes
    the same serial, which the bank clears at most once."""
    data = _SERIAL_DOMAIN + canonical_encode([payer, idempotency_key])
    return hashlib.sha256(data).hexdigest()[:32]


class ChequeModule:
    """``cheque``: a signed cheque drawn on the payer's account, deposited by the payee.

    Args:
        validity_ms: how long a cheque written now can be deposited (default 7 days).
    """

    name: ClassVar[str] = "cheque"
    #: Guaranteed: deposited after the hand-over, a cheque may bounce (protocol.md 8.9).
    guaranteed: ClassVar[bool] = False
    DEFAULT_VALIDITY_MS: ClassVar[int] = 7 * 86_400_000

    def __init__(self, *, validity_ms: int = DEFAULT_VALIDITY_MS) -> None:
        if type(validity_ms) is not int or validity_ms <= 0:
            raise ValueError("validity_ms must be a positive int")
        self.validity_ms = validity_ms

    async def pay(self, ctx: PayerContext, request: PaymentRequest) -> PaymentResult:
        serial = cheque_serial(ctx.our_id, request.idempotency_key)
        cheque = Cheque(payer=ctx.our_id, payee=request.payee, bank=ctx.bank_id,
                        amount=request.amount, serial=serial,
                        expires_at=ctx.now_ms() + self.validity_ms, reference=request.reference)
        signed = await ctx.sign(CHEQUE, cheque.to_body())
        proof = ChequeProof(cheque=signed, drawer_certificate=ctx.certificate)
        result = await hand_over(ctx, request, self.name, proof.to_wire())
        verify_cheque_cleared(
            result.settlement, bank_certificate=result.bank_certificate, root=ctx.root,
            crl=ctx.crl, now=now_of(ctx), expected_payee=request.payee,
            expected_amount=request.amount, expected_serial=serial, expected_payer=ctx.our_id,
            expected_bank=ctx.bank_id)
        await ctx.record(result.settlement, result.bank_certificate)
        return result

    def same_payment(self, proof: Any, paid: PaymentResult) -> bool:
        """Whether ``proof`` hands over again the cheque that settled ``paid``: one of
        the same payer and serial (a payer retrying re-signs it; the bank cleared the
        serial once)."""
        try:
            cheque = ChequeProof.from_wire(proof).cheque.body
        except Exception:  # a proof that does not parse is not the payment
            return False
        return bool(cheque.get("payer") == paid.payer
                    and cheque.get("serial") == paid.settlement.body.get("serial"))

    async def settlement_of(self, ctx: PayerContext, request: PaymentRequest
                            ) -> PaymentResult | None:
        """Our bank's clearing of the cheque we write for ``request`` (its serial), if
        it cleared, verified and archived; None if it did not (yet). The payee alone
        is answered the clearing when it deposits: one that vanished after depositing
        leaves us paid with nothing to show (``bank.cheque_status`` asks our bank).
        Moves nothing.

        Raises: what ``ctx.request`` raises (the bank's refusal, a timeout), or a
        verification error for a clearing that does not check out."""
        serial = cheque_serial(ctx.our_id, request.idempotency_key)
        answer = ChequeStatus.from_wire(await ctx.request(
            ctx.bank_id, BANK_SERVICE, BANK_CHEQUE_STATUS, StopCheque(serial=serial).to_wire()))
        if answer.state != "cleared" or answer.cleared is None \
                or answer.bank_certificate is None:
            return None
        verify_cheque_cleared(
            answer.cleared, bank_certificate=answer.bank_certificate, root=ctx.root,
            crl=ctx.crl, now=now_of(ctx), expected_payee=request.payee,
            expected_amount=request.amount, expected_serial=serial, expected_payer=ctx.our_id,
            expected_bank=ctx.bank_id)
        await ctx.record(answer.cleared, answer.bank_certificate)
        return PaymentResult(module=self.name, payer=ctx.our_id, payee=request.payee,
                             amount=request.amount, reference=request.reference,
                             settlement=answer.cleared, bank_certificate=answer.bank_certificate)

    def settles(self, settlement: Statement, *, bank_certificate: Any, root: Any, crl: Any,
                now: Any, payer: str, payee: str, amount: Amount, reference: bytes,
                idempotency_key: str) -> None:
        """Raises unless ``settlement`` is a bank's clearing of the cheque of ``amount``
        that ``payer`` writes to ``payee`` under ``idempotency_key`` (its serial names
        the payment; checked offline)."""
        del reference  # the serial names the payment
        verify_cheque_cleared(
            settlement, bank_certificate=bank_certificate, root=root, crl=crl, now=now,
            expected_payee=payee, expected_amount=amount,
            expected_serial=cheque_serial(payer, idempotency_key), expected_payer=payer)

    async def accept(self, ctx: PayeeContext, proof: dict[str, Any], *,
                     invoice: Invoice) -> PaymentResult:
        got = ChequeProof.from_wire(proof)
        now = now_of(ctx)
        cheque = verify_cheque(
            got.cheque, drawer_certificate=got.drawer_certificate, root=ctx.root, crl=ctx.crl,
            now=now, expected_payee=ctx.our_id, expected_amount=invoice.amount,
            expected_reference=invoice.reference, expected_payer=invoice.payer)
        our_bank(ctx, cheque.bank)  # before dialing the agent the cheque names
        answer = DepositAnswer.from_wire(await ctx.request(
            cheque.bank, BANK_SERVICE, BANK_DEPOSIT_CHEQUE, got.to_wire()))
        verify_cheque_cleared(
            answer.cleared, bank_certificate=answer.bank_certificate, root=ctx.root, crl=ctx.crl,
            now=now_of(ctx), expected_payee=ctx.our_id, expected_amount=cheque.amount,
            expected_serial=cheque.serial, expected_payer=cheque.payer, expected_bank=cheque.bank)
        # Archived once it cleared, not before: a payer handing over cheque after
        # cheque that bounces (a stopped serial costs it nothing) would otherwise grow
        # our archive for free. A retry is cleared again with the stored statement.
        await ctx.record(got.cheque, got.drawer_certificate)
        await ctx.record(answer.cleared, answer.bank_certificate)
        return PaymentResult(module=self.name, payer=cheque.payer, payee=cheque.payee,
                             amount=cheque.amount, reference=cheque.reference,
                             settlement=answer.cleared, bank_certificate=answer.bank_certificate)

    async def refund(self, ctx: PayeeContext, original: PaymentResult, amount: Amount,
                     reason: str, key: str) -> RefundResult:
        return await refund_payment(ctx, original, amount, reason, key)
