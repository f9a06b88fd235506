"""Review of examples/payment_module (issue 8): the voucher plugin's payer half
against the plugin's real bank half (apply_purchase / apply_redemption on a real
SQLite BankBook), so that a retry meets what the bank really stored."""

from __future__ import annotations

import importlib
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from pki import Market
from test_payment_module_plugin import PRICE, REFERENCE, Parties
from test_payment_module_plugin import PayerContext as _Harness

from semper.agents.components import _bank, _ledger
from semper.agents.runtime._storage import Database
from semper.services import Amount
from semper.services.payment import PaymentRequest
from semper.transport import RemoteError

# Loaded by test_payment_module_plugin from the example's folder (not on sys.path).
voucher_bank = importlib.import_module("semper_voucher.bank")
VoucherModule = importlib.import_module("semper_voucher.module").VoucherModule
_protocol = importlib.import_module("semper_voucher.protocol")
BuyAnswer, BuyRequest = _protocol.BuyAnswer, _protocol.BuyRequest
RedeemAnswer, RedeemRequest = _protocol.RedeemAnswer, _protocol.RedeemRequest
VoucherProof = _protocol.VoucherProof
check_own_voucher, check_purchase_order = (_protocol.check_own_voucher,
                                           _protocol.check_purchase_order)


class RealBank(_Harness):
    """The payer's context, its bank ops applied by the plugin's bank half on SQLite."""

    def __init__(self, parties: Parties, payee: Any, folder: Path) -> None:
        super().__init__(parties, payee)
        self.db = Database.open_sync(folder / "bank.sqlite",
                                     {**_bank.MIGRATIONS, **voucher_bank.MIGRATIONS})
        self.book = _bank.BankBook(
            "bank", lambda t, b: parties.sign(parties.bank, t, b), parties.bank.cert,
            lambda: 0)

        def fund(c: sqlite3.Connection) -> None:
            for holder in ("buyer", "seller"):
                _ledger.open_account(c, holder, "EUR")
            _ledger.mint(c, "buyer", Amount("EUR", 10_000), time_ms=0)

        self.db.transaction_sync(fund)

    def balance(self, holder: str) -> int:
        return self.db.read_sync(lambda c: _ledger.balance(c, holder, "EUR").minor_units)

    def buy_voucher(self, body: Any, requester: str) -> Any:
        signed = BuyRequest.from_wire(body).order
        order = check_purchase_order(signed, payer_certificate=self.parties.buyer.cert,
                                     trust=self.parties.trust, bank_id="bank",
                                     requester=requester)
        outcome = self.db.transaction_sync(lambda c: voucher_bank.apply_purchase(
            self.book, c, signed, order, payer_certificate=self.parties.buyer.cert))
        return BuyAnswer(voucher=outcome.statement,
                         bank_certificate=self.parties.bank.cert).to_wire()

    def redeem_voucher(self, body: Any, redeemer: str) -> Any:
        request = RedeemRequest.from_wire(body)
        voucher = check_own_voucher(request.voucher, trust=self.parties.trust,
                                    bank_certificate=self.parties.bank.cert)
        outcome = self.db.transaction_sync(lambda c: voucher_bank.apply_redemption(
            self.book, c, request.voucher, voucher, request.secret, redeemer=redeemer))
        return RedeemAnswer(redemption=outcome.statement,
                            bank_certificate=self.parties.bank.cert).to_wire()


def _request() -> PaymentRequest:
    return PaymentRequest(payee="seller", amount=PRICE, reference=REFERENCE,
                          idempotency_key="pay-1")


@pytest.mark.xfail(strict=True, reason=(
    "module.py pay(): any RemoteError from payment.accept makes the payer redeem the "
    "voucher itself (_take_back), even a transient one (peer.unavailable: the seller's "
    "bank out of reach). The purchase stays PAYING (not a definite refusal), but its "
    "retry under the same key gets the voucher its buyer spent, which the payee's "
    "redemption refuses voucher.spent for ever: the purchase can never complete"))
async def test_a_purchase_retried_after_a_transient_refusal_pays(
        market: Market, tmp_path: Path) -> None:
    calls = {"n": 0}

    async def payee(ctx: RealBank, body: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 1:  # the seller could not reach its bank this time
            raise RemoteError("peer.unavailable", "the bank is out of reach")
        proof = VoucherProof.from_wire(body["proof"])
        answer = RedeemAnswer.from_wire(ctx.redeem_voucher(
            RedeemRequest(voucher=proof.voucher, secret=proof.secret).to_wire(), "seller"))
        return {"module": "voucher", "payer": "buyer", "payee": "seller",
                "amount": PRICE.to_wire(), "reference": REFERENCE,
                "settlement": answer.redemption.to_bytes(),
                "bank_certificate": proof.to_wire()["bank_certificate"]}

    ctx = RealBank(Parties(market), payee, tmp_path)
    with pytest.raises(RemoteError):
        await VoucherModule().pay(ctx, _request())  # type: ignore[arg-type]
    assert ctx.balance("buyer") == 10_000  # taken back: no money lost so far
    # The buyer's purchase is not FAILED (peer.unavailable is no refusal): it retries.
    await VoucherModule().pay(ctx, _request())  # type: ignore[arg-type]
    assert ctx.balance("buyer") == 10_000 - PRICE.minor_units
    assert ctx.balance("seller") == PRICE.minor_units


@pytest.mark.xfail(strict=True, reason=(
    "protocol.py: a voucher names no payee (PurchaseOrder/Voucher have no payee field) "
    "and decide_redemption never looks at the redeemer: any customer of the bank "
    "holding the secret is paid (here an accomplice of the seller), one_payment and "
    "settled record it as a payment to that agent, and the buyer holds no statement "
    "naming the payee it paid (a transfer's confirmation names the payee)"))
async def test_only_the_payee_or_the_payer_may_redeem_a_voucher(
        market: Market, tmp_path: Path) -> None:
    secrets: list[Any] = []

    async def payee(ctx: RealBank, body: Any) -> Any:
        secrets.append(VoucherProof.from_wire(body["proof"]))
        raise RemoteError("voucher.spent", "someone was first")  # the seller's claim

    ctx = RealBank(Parties(market), payee, tmp_path)
    ctx.db.transaction_sync(lambda c: _ledger.open_account(c, "mallory", "EUR"))
    # The seller hands the proof to an accomplice, who redeems it first.
    original = ctx.payee

    async def leak_then_refuse(c: RealBank, body: Any) -> Any:
        proof = VoucherProof.from_wire(body["proof"])
        try:
            c.redeem_voucher(RedeemRequest(voucher=proof.voucher, secret=proof.secret)
                             .to_wire(), "mallory")
        except Exception:
            pass  # refused: the protected outcome
        return await original(c, body)

    ctx.payee = leak_then_refuse
    with pytest.raises(RemoteError):
        await VoucherModule().pay(ctx, _request())  # type: ignore[arg-type]
    assert ctx.balance("mallory") == 0, "a voucher bought to pay the seller paid mallory"
    assert ctx.balance("buyer") == 10_000


@pytest.mark.xfail(strict=True, reason=(
    "module.py: a definite refusal (payment.wrong_bank, commerce.unsupported_payment) "
    "whose take-back fails (the bank out of reach a moment) is re-raised as it is, and "
    "VoucherModule has no prepaid(), so the buyer's purchase goes FAILED ('the seller "
    "kept no money') with the price in @vouchers, its secret gone with the call and "
    "no retry left to relock it: the buyer's money is stranded"))
async def test_a_definite_refusal_never_strands_the_price_in_vouchers(
        market: Market, tmp_path: Path) -> None:
    from semper.agents.components._purchase import _PAYMENT_REFUSALS

    async def refuse(ctx: RealBank, body: Any) -> Any:
        raise RemoteError("commerce.unsupported_payment", "not today")

    ctx = RealBank(Parties(market), refuse, tmp_path)
    real_redeem = ctx.redeem_voucher

    def bank_away(body: Any, redeemer: str) -> Any:
        ctx.redeem_voucher = real_redeem  # type: ignore[method-assign]
        raise RemoteError("peer.unavailable", "the bank restarted")

    ctx.redeem_voucher = bank_away  # type: ignore[method-assign]
    with pytest.raises(RemoteError) as info:
        await VoucherModule().pay(ctx, _request())  # type: ignore[arg-type]
    purchase_failed = (info.value.code in _PAYMENT_REFUSALS
                       and getattr(VoucherModule(), "prepaid", None) is None)
    if purchase_failed:
        assert ctx.balance("buyer") == 10_000, "FAILED with the price held in @vouchers"
