"""The ``ecash`` module: payer and payee halves (the bank half is
agents/instruments/ecash.py, the payer's coins the Wallet component, reached by
``ctx.holder("ecash")``).

    payer: the wallet binds coins worth exactly the amount to the payment (contract:
           payment, our bank, the payee, the order's reference) -> payment.accept at
           the payee, proof = {spends} -> verify the payment.ecash_deposited the
           payee answers with -> the wallet marks the coins spent
    payee: check every spend offline (the bank's denomination keys, the coin's RSA
           signature, the spend signature over our contract, the sum) ->
           bank.ecash_deposit -> verify the payment.ecash_deposited
    refund (payee): bank.refund as for every instrument; the bank's answer is an
           ecash.refund_voucher that the payer's wallet redeems for new coins
           (``refunded``), unlinkable to the coins it paid with

A payee refusal of the proof gives the coins back to the wallet (``refused``): it
exchanges them for new ones, since the payee saw them. A payee that deposited them
before refusing gives the money back as the bank's refund voucher (the refusal's
``returned``, docs/protocol.md 8.3): the wallet redeems it (``refunded``) instead.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any, ClassVar, Final

from cryptography import x509

from ...money import Amount
from ...statements import Statement, StatementError, canonical_encode
from .._errors import BadConfirmation, BadRequest
from .._modules import (
    REFUND_CHECKS,
    Invoice,
    PayeeContext,
    PayerContext,
    PaymentContext,
    PaymentRequest,
    PaymentResult,
    RefundResult,
    hand_over,
    now_of,
    refund_payment,
)
from .._schema import RefundOrder
from .._wire import BANK_SERVICE, RefundAnswer
from ._checks import (
    check_spends,
    refund_key_of,
    verify_denomination,
    verify_deposited,
    verify_refund_voucher,
)
from ._coins import Spend
from ._schema import DEPOSITED, REFUND_VOUCHER, Denomination, EcashDeposited, RefundVoucher
from ._wire import (
    BANK_ECASH_DEPOSIT,
    BANK_ECASH_KEYS,
    DepositAnswer,
    DepositRequest,
    EcashProof,
    KeysAnswer,
    KeysRequest,
)

__all__ = ["EcashModule", "deposit_key"]

_DEPOSIT_DOMAIN: Final = b"semper-ecash-deposit-v1\x00"
#: Codes of a payee's own refusal of a proof (not a channel's failure: the payee may
#: have deposited the coins before the answer was lost).
_REFUSALS: Final = ("ecash.", "payment.", "commerce.")


def deposit_key(reference: bytes, spends: Iterable[Spend]) -> str:
    """The idempotency key a payee deposits ``spends`` for ``reference`` under: 40 hex
    digits of SHA-256 over a domain prefix and the canonical ``[reference, [coin_key,
    ...]]``, so that the same proof handed over again is deposited once."""
    data = _DEPOSIT_DOMAIN + canonical_encode([reference, [s.coin.coin_key for s in spends]])
    return "ecash-" + hashlib.sha256(data).hexdigest()[:40]


class EcashModule:
    """``ecash``: coins blindly signed by the bank, spent to the payee, deposited by it.

    Holds one piece of state, a cache of the bank's verified denomination statements
    (by bank and key id, at most ``MAX_KEYS``): public, signed and immutable.
    """

    name: ClassVar[str] = "ecash"
    #: After asking a bank for its keys, a key id still unknown is refused without
    #: asking again for this long (ms): else each proof naming a made-up key id made
    #: us ask the bank and verify its whole answer (up to 256 statements).
    REFETCH_MS: ClassVar[int] = 1_000
    #: The bank backs every coin it signed (the money left the payer's account at
    #: withdrawal): a payee's policy treats ecash like a transfer, not a cheque.
    guaranteed: ClassVar[bool] = True
    MAX_KEYS: ClassVar[int] = 512

    def __init__(self) -> None:
        self._keys: dict[tuple[str, bytes], Denomination] = {}
        #: (bank, currency) -> when we last asked it for its keys (ms).
        self._asked: dict[tuple[str, str], int] = {}

    # -- payer ------------------------------------------------------------------------

    async def pay(self, ctx: PayerContext, request: PaymentRequest) -> PaymentResult:
        wallet = ctx.holder(self.name)
        spends = await wallet.spend(request)
        coins = [Spend.from_wire(s).coin.coin_key for s in spends]

        async def failed(exc: BaseException) -> None:
            code = getattr(exc, "code", None)
            refused = getattr(wallet, "refused", None)
            if refused is None or not isinstance(code, str) or not code.startswith(_REFUSALS):
                return
            try:
                if not await self._take_back(ctx, request, coins, getattr(exc, "detail", None)):
                    await refused(request)
            except Exception:  # the payee's refusal is the failure to report; the coins
                pass  # stay bound to the payment, for the wallet to retry

        result = await hand_over(ctx, request, self.name, {"spends": list(spends)},
                                 failed=failed)
        verify_deposited(result.settlement, bank_certificate=result.bank_certificate,
                         root=ctx.root, crl=ctx.crl, now=now_of(ctx),
                         expected_payee=request.payee, expected_amount=request.amount,
                         expected_reference=request.reference, expected_bank=ctx.bank_id,
                         expected_coins=coins)
        await ctx.record(result.settlement, result.bank_certificate)
        await wallet.settled(request, result)
        return result

    async def _take_back(self, ctx: PayerContext, request: PaymentRequest,
                         coins: list[bytes], detail: Any) -> bool:
        """Redeem the refund voucher a payee's refusal carries (``returned``: it
        deposited our coins, then refused the sale): the bank's, of the whole payment,
        redeemable by a coin of this payment; archived in the payment's transaction
        once redeemed (what tells the purchase the money is back). False: the
        refusal gives no voucher back (the coins are then refreshed).

        Raises: BadConfirmation, ``statement.*``, ``auth.*`` for a voucher not ours;
        what the redemption raises."""
        returned = detail.get("returned") if isinstance(detail, dict) else None
        if not isinstance(returned, dict):
            return False
        try:
            voucher = Statement.from_bytes(returned["confirmation"])
            certificate = x509.load_der_x509_certificate(returned["bank_certificate"])
        except (KeyError, TypeError, ValueError, StatementError):
            return False
        if voucher.type != REFUND_VOUCHER:
            return False
        body = RefundVoucher.from_statement(voucher)
        if body.refund_key not in coins or body.amount != request.amount:
            raise BadConfirmation("the voucher returned is not of this payment",
                                  detail={"type": REFUND_VOUCHER, "field": "refund_key"})
        await self.refunded(ctx, RefundResult(
            original=body.original, payer=request.payee, payee=ctx.our_id,
            amount=body.amount, reason="returned", confirmation=voucher,
            bank_certificate=certificate))
        await ctx.record(voucher, certificate)
        return True

    async def refunded(self, ctx: PayerContext, result: RefundResult) -> None:
        """A refund of our payment came back as ``result`` (its confirmation a refund
        voucher): verified, and the wallet redeems it for new coins."""
        self.verify_refund(result, root=ctx.root, crl=ctx.crl, now=now_of(ctx),
                           expected_original=result.original, expected_payee=ctx.our_id,
                           expected_amount=result.amount, expected_bank=ctx.bank_id)
        await ctx.holder(self.name).refunded(result)

    @staticmethod
    def verify_refund(result: RefundResult, *, root: Any, crl: Any, now: Any,
                      expected_original: bytes, expected_payee: str, expected_amount: Amount,
                      expected_bank: str | None = None) -> None:
        """The ecash form of ``verify_refund_confirmation`` for a payer: ``result``'s
        confirmation is a bank's ``ecash.refund_voucher`` for ``expected_amount`` of
        the deposit ``expected_original``, and the refund is to ``expected_payee``.

        Raises: ``BadConfirmation`` (field ``payee`` for a refund to another agent),
        ``statement.*``, ``auth.*``."""
        if result.payee != expected_payee:
            raise BadConfirmation("the refund is to another agent",
                                  detail={"type": "refund result", "field": "payee"})
        verify_refund_voucher(result.confirmation, bank_certificate=result.bank_certificate,
                              root=root, crl=crl, now=now, expected_original=expected_original,
                              expected_amount=expected_amount, expected_bank=expected_bank)

    # -- payee ------------------------------------------------------------------------

    async def _denominations(self, ctx: PaymentContext, bank: str, currency: str,
                             wanted: Iterable[bytes]) -> dict[bytes, Denomination]:
        """The denominations ``wanted`` (key ids) of ``bank``, from the cache, else
        from ``bank.ecash_keys`` (each new one verified), asked at most once a
        ``REFETCH_MS`` while we hold some of the bank's keys; unknown ids are left
        out."""
        wanted = set(wanted)
        asked = self._asked.get((bank, currency))
        if any((bank, key_id) not in self._keys for key_id in wanted) and (
                asked is None or not 0 <= ctx.now_ms() - asked < self.REFETCH_MS):
            if asked is not None:  # others arriving meanwhile wait for no second answer
                self._asked[(bank, currency)] = ctx.now_ms()
            answer = KeysAnswer.from_wire(await ctx.request(
                bank, BANK_SERVICE, BANK_ECASH_KEYS, KeysRequest(currency=currency).to_wire()))
            self._asked[(bank, currency)] = ctx.now_ms()
            now = now_of(ctx)
            for statement in answer.denominations:
                if (bank, statement.body.get("key_id")) in self._keys:
                    continue  # verified when it came first: a statement is immutable
                body = verify_denomination(statement, bank_certificate=answer.bank_certificate,
                                           root=ctx.root, crl=ctx.crl, now=now,
                                           expected_bank=bank, expected_currency=currency)
                if len(self._keys) >= self.MAX_KEYS:
                    self._keys.clear()
                    self._asked.clear()
                self._keys[(bank, body.key_id)] = body
        return {k: self._keys[(bank, k)] for k in wanted if (bank, k) in self._keys}

    async def accept(self, ctx: PayeeContext, proof: dict[str, Any], *,
                     invoice: Invoice) -> PaymentResult:
        got = EcashProof.from_wire(proof)
        if invoice.payer is None:
            raise BadRequest("an ecash payee names the payer it invoiced",
                             detail={"type": "invoice", "field": "payer"})
        bank = ctx.bank_id  # coins of our bank only: the spends name it
        keys = await self._denominations(ctx, bank, invoice.amount.currency,
                                         (s.coin.key_id for s in got.spends))
        total = check_spends(got.spends, bank=bank, payee=ctx.our_id,
                             reference=invoice.reference, purpose="payment", keys_by_id=keys,
                             now_ms=ctx.now_ms())
        if total != invoice.amount:
            raise BadRequest(f"the coins are worth {total}, the invoice {invoice.amount}",
                             detail={"type": "payment.accept ecash proof", "field": "amount",
                                     "expected": invoice.amount.to_wire(),
                                     "got": total.to_wire()})
        ask = DepositRequest(spends=got.spends, reference=invoice.reference,
                             amount=invoice.amount,
                             idempotency_key=deposit_key(invoice.reference, got.spends))
        answer = DepositAnswer.from_wire(await ctx.request(
            bank, BANK_SERVICE, BANK_ECASH_DEPOSIT, ask.to_wire()))
        verify_deposited(answer.deposited, bank_certificate=answer.bank_certificate,
                         root=ctx.root, crl=ctx.crl, now=now_of(ctx), expected_payee=ctx.our_id,
                         expected_amount=invoice.amount, expected_reference=invoice.reference,
                         expected_bank=bank,
                         expected_coins=[s.coin.coin_key for s in got.spends])
        await ctx.record(answer.deposited, answer.bank_certificate)
        return PaymentResult(module=self.name, payer=invoice.payer, payee=ctx.our_id,
                             amount=invoice.amount, reference=invoice.reference,
                             settlement=answer.deposited,
                             bank_certificate=answer.bank_certificate)

    def same_payment(self, proof: Any, paid: PaymentResult) -> bool:
        """Whether ``proof`` hands over again the coins that settled ``paid`` (the same
        coin keys, in order: a payer retrying sends the same spends)."""
        try:
            spends = EcashProof.from_wire(proof).spends
            coins = EcashDeposited.from_statement(paid.settlement).coins
        except Exception:  # a proof that does not parse is not the payment
            return False
        return tuple(s.coin.coin_key for s in spends) == coins

    def settles(self, settlement: Statement, *, bank_certificate: Any, root: Any, crl: Any,
                now: Any, payer: str, payee: str, amount: Amount, reference: bytes,
                idempotency_key: str, bank: str | None = None) -> None:
        """Raises unless ``settlement`` is a bank's deposit of coins worth ``amount``
        spent to ``payee`` for the order ``reference`` (checked offline), signed by
        ``bank`` (the payee's bank, whose coins the payer spent) when given: a deposit
        of coins of another bank of the market, where the payee may keep an account,
        did not pay this payee at the bank the order's coins name. The deposit names no
        payer (the bank knows none): coins spent for that order by anyone paid it."""
        del payer, idempotency_key
        verify_deposited(settlement, bank_certificate=bank_certificate, root=root, crl=crl,
                         now=now, expected_payee=payee, expected_amount=amount,
                         expected_reference=reference, expected_bank=bank)

    async def refund(self, ctx: PayeeContext, original: PaymentResult, amount: Amount,
                     reason: str, key: str) -> RefundResult:
        """``bank.refund``, answered with an ``ecash.refund_voucher`` (checked by
        ``check_refund_voucher``, registered for every caller of ``refund_payment``)."""
        return await refund_payment(ctx, original, amount, reason, key)


def check_refund_voucher(ctx: PayeeContext, original: PaymentResult, answer: RefundAnswer,
                         order: RefundOrder) -> None:
    """The payee's check of the bank's answer to the refund ``order`` of the ecash
    payment ``original``: an ``ecash.refund_voucher`` of that deposit and amount,
    redeemable by the key of its first coin, signed by the bank that settled it."""
    deposited = EcashDeposited.from_statement(original.settlement)
    verify_refund_voucher(answer.confirmation, bank_certificate=answer.bank_certificate,
                          root=ctx.root, crl=ctx.crl, now=now_of(ctx),
                          expected_original=order.original, expected_amount=order.amount,
                          expected_refund_key=refund_key_of(deposited),
                          expected_bank=original.bank)


REFUND_CHECKS[DEPOSITED] = check_refund_voucher
