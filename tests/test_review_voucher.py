"""Review of examples/payment_module (issue 8): the voucher plugin's payer half
against the plugin's real bank half (apply_purchase / apply_redemption on a real
SQLite BankBook), so that a retry meets what the bank really stored."""

from __future__ import annotations

import importlib
import sqlite3
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from pki import NOW, Market
from test_payment_module_plugin import PRICE, REFERENCE, SECRET, Parties
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
VoucherProof, NotPayee = _protocol.VoucherProof, _protocol.NotPayee
MAX_RELOCKS, TooManyRelocks = _protocol.MAX_RELOCKS, _protocol.TooManyRelocks
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
        self.archived: list[Any] = []

    async def record(self, statement: Any, certificate: Any) -> None:
        self.archived.append(statement)

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
                "settlement": answer.redemption.to_wire(),
                "bank_certificate": proof.to_wire()["bank_certificate"]}

    ctx = RealBank(Parties(market), payee, tmp_path)
    with pytest.raises(RemoteError):
        await VoucherModule().pay(ctx, _request())  # type: ignore[arg-type]
    # Not taken back: unspent in @vouchers, for the retry to relock and hand over.
    assert ctx.balance("buyer") == 10_000 - PRICE.minor_units
    # The buyer's purchase is not FAILED (peer.unavailable is no refusal): it retries.
    await VoucherModule().pay(ctx, _request())  # type: ignore[arg-type]
    assert ctx.balance("buyer") == 10_000 - PRICE.minor_units
    assert ctx.balance("seller") == PRICE.minor_units


async def test_only_the_payee_or_the_payer_may_redeem_a_voucher(
        market: Market, tmp_path: Path) -> None:
    secrets: list[Any] = []

    async def payee(ctx: RealBank, body: Any) -> Any:
        secrets.append(VoucherProof.from_wire(body["proof"]))
        # The seller's claim, after mallory was refused: a definite refusal, so that
        # the buyer takes its voucher back.
        raise RemoteError("commerce.unsupported_payment", "not today")

    ctx = RealBank(Parties(market), payee, tmp_path)
    ctx.db.transaction_sync(lambda c: _ledger.open_account(c, "mallory", "EUR"))
    # The seller hands the proof to an accomplice, who redeems it first.
    original = ctx.payee

    async def leak_then_refuse(c: RealBank, body: Any) -> Any:
        proof = VoucherProof.from_wire(body["proof"])
        with pytest.raises(NotPayee) as refused:  # the protected outcome
            c.redeem_voucher(RedeemRequest(voucher=proof.voucher, secret=proof.secret)
                             .to_wire(), "mallory")
        assert refused.value.code == "voucher.not_payee"
        return await original(c, body)

    ctx.payee = leak_then_refuse
    with pytest.raises(RemoteError):
        await VoucherModule().pay(ctx, _request())  # type: ignore[arg-type]
    assert ctx.balance("mallory") == 0, "a voucher bought to pay the seller paid mallory"
    assert ctx.balance("buyer") == 10_000


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
    # Neither a definite refusal (the take-back's failure is raised), nor money that
    # never left: the buyer keeps the purchase for a retry.
    assert info.value.code == "peer.unavailable"
    voucher, amount = VoucherModule().prepaid(ctx.archived)
    assert (voucher.type, amount) == ("voucher.issued", PRICE)
    # The retry relocks the voucher, is refused again, and takes it back this time.
    with pytest.raises(RemoteError) as again:
        await VoucherModule().pay(ctx, _request())  # type: ignore[arg-type]
    assert again.value.code == "commerce.unsupported_payment"
    assert ctx.balance("buyer") == 10_000
    assert VoucherModule().prepaid(ctx.archived) is None  # so the buyer may fail it


async def test_the_bank_relocks_one_purchase_a_bounded_number_of_times(
        market: Market, tmp_path: Path) -> None:
    """bank.py: each retried buy_voucher with a new lock signed and archived a new
    voucher, for one sale and no money: the relocks of a serial are counted, capped."""
    parties = Parties(market)
    ctx = RealBank(parties, None, tmp_path)

    def buy(secret: bytes) -> Any:
        signed, _ = parties.order(secret=secret)
        return ctx.buy_voucher(BuyRequest(order=signed).to_wire(), "buyer")

    first = BuyAnswer.from_wire(buy(bytes([0]) * 32)).voucher
    for n in range(1, MAX_RELOCKS + 1):
        assert BuyAnswer.from_wire(buy(bytes([n]) * 32)).voucher.digest != first.digest
    with pytest.raises(TooManyRelocks) as info:
        buy(b"\xff" * 32)
    assert info.value.code == "voucher.too_many_relocks"
    # Refused without a change: the last voucher still counts, sold once.
    last = BuyAnswer.from_wire(buy(bytes([MAX_RELOCKS]) * 32)).voucher
    assert last.body["lock"] == _protocol.lock_of(bytes([MAX_RELOCKS]) * 32)
    assert ctx.balance("buyer") == 10_000 - PRICE.minor_units


async def test_the_bank_redeems_a_voucher_signed_before_its_certificate_was_renewed(
        market: Market, tmp_path: Path) -> None:
    """protocol.py: check_own_voucher took only the bank's current certificate, so
    after a renewal no unspent voucher could be redeemed. The bank's handlers, with
    the certificate renewed between the sale and the redemption."""
    parties = Parties(market)
    ctx = RealBank(parties, None, tmp_path)

    def bank(certificate: Any, book: Any) -> Any:
        return voucher_bank.VoucherBank(SimpleNamespace(  # type: ignore[arg-type]
            id="bank", root=parties.trust[0], crl=parties.trust[1], now=lambda: NOW,
            certificate=certificate, database=ctx.db,
            component=lambda _: SimpleNamespace(book=book)))

    def peer(who: Any) -> Any:
        return SimpleNamespace(peer=SimpleNamespace(certificate=who.cert,
                                                    agent_id=who.agent_id))

    signed, _ = parties.order()
    sold = await bank(parties.bank.cert, ctx.book).buy(peer(parties.buyer),
                                                       BuyRequest(order=signed))
    renewed = market.agent("bank", "bank")
    book = _bank.BankBook("bank", lambda t, b: parties.sign(renewed, t, b), renewed.cert,
                          lambda: 0)
    later = bank(renewed.cert, book)
    forged = parties.voucher(by=parties.buyer)  # not the voucher the bank stored
    with pytest.raises(_protocol.WrongVoucherBank):
        await later.redeem(peer(parties.seller), RedeemRequest(voucher=forged, secret=SECRET))
    answer = await later.redeem(peer(parties.seller),
                                RedeemRequest(voucher=sold.voucher, secret=SECRET))
    _protocol.verify_redemption(answer.redemption, bank_certificate=renewed.cert,
                                trust=parties.trust, expected_voucher=sold.voucher.digest,
                                expected_payee="seller", expected_amount=PRICE,
                                expected_bank="bank")
    assert ctx.balance("seller") == PRICE.minor_units
