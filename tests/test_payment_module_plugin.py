"""examples/payment_module (prepaid vouchers) is a payment instrument from outside
semper: its sans-IO protocol here, and the Done-when of issue 8 item 4: pip-installed
into a market that was made and running before, found through entry points alone
after a restart, a purchase paid with it between separate agent processes."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from cli_helpers import refused
from cli_helpers import semper as semper_in_process
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from pki import NOW, Market
from pki import TestAgent as PkiAgent
from test_cli import AgentProcess, assert_one_line_failure, semper, start_agents
from test_cli import Market as CliMarket

from semper.agents.cli.cmd_call import from_json, to_json
from semper.agents.operator._market import DEMO_CATALOGUE, init_market
from semper.services import Amount
from semper.services.payment import Invoice, PaymentRequest, PaymentResult
from semper.services.statements import BadSignature, Statement, sign_statement
from semper.transport import RemoteError

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "payment_module"


def _load_package() -> None:
    """Import semper_voucher from the example's folder for the unit tests, without
    putting the folder on sys.path: a build leaves its egg-info there, and its entry
    points would then install the instrument into every test of this session."""
    folder = EXAMPLE / "semper_voucher"
    spec = importlib.util.spec_from_file_location(
        "semper_voucher", folder / "__init__.py", submodule_search_locations=[str(folder)])
    assert spec is not None and spec.loader is not None
    package = importlib.util.module_from_spec(spec)
    sys.modules["semper_voucher"] = package
    spec.loader.exec_module(package)


_load_package()

from semper_voucher.module import DEFINITE_REFUSALS, VoucherModule  # noqa: E402
from semper_voucher.protocol import (  # noqa: E402
    MAX_RELOCKS,
    PURCHASE_ORDER,
    REDEMPTION,
    VOUCHER,
    AlreadyRedeemed,
    BadVoucher,
    BadVoucherRequest,
    BuyAnswer,
    BuyRequest,
    NotPayee,
    PurchaseOrder,
    Redeem,
    RedeemAnswer,
    RedeemRequest,
    Spent,
    Superseded,
    TooManyRelocks,
    VoucherProof,
    VoucherRecord,
    WrongSecret,
    WrongVoucherBank,
    check_own_voucher,
    check_purchase_order,
    check_secret,
    decide_purchase_retry,
    decide_redemption,
    issue_voucher,
    lock_of,
    redeem,
    verify_voucher,
    voucher_serial,
)

NOW_MS = int(NOW.timestamp() * 1000)
SECRET = b"\x5a" * 32
PRICE = Amount("EUR", 1250)
REFERENCE = b"order-digest-0123456789abcdef012"


# -- the protocol, sans-IO -----------------------------------------------------------


class Parties:
    """A market root with two banks, a buyer and a seller; signs as any of them."""

    def __init__(self, market: Market) -> None:
        self.market = market
        self.bank = market.agent("bank", "bank")
        self.other_bank = market.agent("bank-2", "bank")
        self.buyer = market.agent("buyer", "buyer")
        self.seller = market.agent("seller", "seller")

    @property
    def trust(self) -> Any:
        return self.market.ca.certificate, self.market.crl, NOW

    def sign(self, who: PkiAgent, type: str, body: dict[str, Any]) -> Statement:
        return sign_statement(type, body, key=who.key, certificate=who.cert, now_ms=NOW_MS,
                              nonce=os.urandom(16))

    def order(self, *, bank: str = "bank", secret: bytes = SECRET) -> tuple[Statement,
                                                                             PurchaseOrder]:
        body = PurchaseOrder(payer="buyer", payee="seller", bank=bank, amount=PRICE,
                             reference=REFERENCE, lock=lock_of(secret),
                             idempotency_key="pay-1")
        return self.sign(self.buyer, PURCHASE_ORDER, body.to_wire()), body

    def voucher(self, *, by: PkiAgent | None = None, secret: bytes = SECRET) -> Statement:
        """A voucher as the bank sells it (``by``: signed by another agent)."""
        signed, body = self.order(secret=secret)
        voucher = issue_voucher(signed, body, serial=voucher_serial("buyer", "pay-1"), entry=7)
        return self.sign(by or self.bank, VOUCHER, voucher.to_wire())

    def record(self, voucher: Statement, **extra: Any) -> VoucherRecord:
        return VoucherRecord(serial=voucher.body["serial"], digest=voucher.digest,
                             lock=voucher.body["lock"], **extra)


@pytest.fixture
def parties(market: Market) -> Parties:
    return Parties(market)


def test_a_voucher_is_redeemed_once_and_its_redeemer_may_ask_again(parties: Parties) -> None:
    signed, _ = parties.order()
    order = check_purchase_order(signed, payer_certificate=parties.buyer.cert,
                                 trust=parties.trust, bank_id="bank", requester="buyer")
    voucher = parties.voucher()
    body = check_own_voucher(voucher, trust=parties.trust, bank_certificate=parties.bank.cert)
    assert (body.amount, body.lock, body.payer) == (order.amount, order.lock, "buyer")
    record = parties.record(voucher)
    assert decide_redemption(voucher.digest, body, record=record, redeemer="seller",
                             secret=SECRET) == Redeem()
    spent = parties.record(voucher, redeemer="seller", answer=b"the redemption")
    with pytest.raises(Spent) as info:  # the secret right, the voucher spent
        decide_redemption(voucher.digest, body, record=spent, redeemer="buyer", secret=SECRET)
    assert info.value.code == "voucher.spent"
    # Its redeemer asking again (a lost answer) gets the redemption it was given.
    assert decide_redemption(voucher.digest, body, record=spent, redeemer="seller",
                             secret=b"\x00" * 32) == AlreadyRedeemed(b"the redemption")


def test_a_wrong_secret_opens_nothing(parties: Parties) -> None:
    voucher = parties.voucher()
    body = check_own_voucher(voucher, trust=parties.trust, bank_certificate=parties.bank.cert)
    for secret in (b"\x00" * 32, SECRET[:-1] + b"\x5b"):
        with pytest.raises(WrongSecret) as info:
            decide_redemption(voucher.digest, body, record=parties.record(voucher),
                              redeemer="seller", secret=secret)
        assert info.value.code == "voucher.wrong_secret"
        with pytest.raises(WrongSecret):  # the payee's own check, before the bank
            check_secret(body, secret)


def test_a_voucher_of_another_bank_is_refused(parties: Parties) -> None:
    foreign = parties.voucher(by=parties.other_bank)
    with pytest.raises(WrongVoucherBank) as info:  # presented at our bank
        check_own_voucher(foreign, trust=parties.trust, bank_certificate=parties.bank.cert)
    assert info.value.code == "voucher.wrong_bank"
    with pytest.raises(WrongVoucherBank):  # the payer expected its own bank's
        verify_voucher(foreign, bank_certificate=parties.other_bank.cert, trust=parties.trust,
                       expected_bank="bank")
    # bank-2 signed a voucher that names "bank": signed by another than the bank it names.
    with pytest.raises(BadVoucher) as bad:
        verify_voucher(foreign, bank_certificate=parties.other_bank.cert, trust=parties.trust)
    assert bad.value.detail["field"] == "bank"
    signed, _ = parties.order(bank="bank-2")  # an order for another bank
    with pytest.raises(WrongVoucherBank):
        check_purchase_order(signed, payer_certificate=parties.buyer.cert, trust=parties.trust,
                             bank_id="bank", requester="buyer")


def test_a_tampered_voucher_is_refused(parties: Parties) -> None:
    voucher = parties.voucher()
    worth_more = {**voucher.body, "amount": {"currency": "EUR", "minor_units": 999_999}}
    tampered = Statement(type=voucher.type, body=worth_more, signer=voucher.signer,
                         issued_at=voucher.issued_at, nonce=voucher.nonce,
                         signature=voucher.signature)
    with pytest.raises(BadSignature):
        check_own_voucher(tampered, trust=parties.trust, bank_certificate=parties.bank.cert)
    with pytest.raises(BadSignature):
        verify_voucher(tampered, bank_certificate=parties.bank.cert, trust=parties.trust)
    # A voucher the buyer wrote itself, naming the bank: not the bank's signature.
    forged = parties.voucher(by=parties.buyer)
    with pytest.raises(WrongVoucherBank):
        check_own_voucher(forged, trust=parties.trust, bank_certificate=parties.bank.cert)
    with pytest.raises(BadVoucher) as info:  # the payee: not signed by a bank
        verify_voucher(forged, bank_certificate=parties.buyer.cert, trust=parties.trust)
    assert info.value.detail["field"] == "signer"


def test_a_retried_purchase_relocks_an_unspent_voucher(parties: Parties) -> None:
    first = parties.voucher()
    record = parties.record(first)
    new_secret = b"\x11" * 32
    assert decide_purchase_retry(record, lock_of(SECRET)) is False  # the same lock: keep
    assert decide_purchase_retry(record, lock_of(new_secret)) is True
    spent = parties.record(first, redeemer="seller", answer=b"r")
    assert decide_purchase_retry(spent, lock_of(new_secret)) is False  # spent: as it is
    relocked = parties.voucher(secret=new_secret)
    now = parties.record(relocked)
    body = check_own_voucher(first, trust=parties.trust, bank_certificate=parties.bank.cert)
    with pytest.raises(Superseded) as info:  # the first voucher, with its own secret
        decide_redemption(first.digest, body, record=now, redeemer="seller", secret=SECRET)
    assert info.value.code == "voucher.superseded"


def test_a_voucher_pays_only_its_payee_or_goes_back_to_its_payer(parties: Parties) -> None:
    """A secret that leaks (the seller hands the proof on) pays nobody else."""
    voucher = parties.voucher()
    body = check_own_voucher(voucher, trust=parties.trust, bank_certificate=parties.bank.cert)
    assert body.payee == "seller"
    with pytest.raises(NotPayee) as info:
        decide_redemption(voucher.digest, body, record=parties.record(voucher),
                          redeemer="mallory", secret=SECRET)
    assert info.value.code == "voucher.not_payee"
    for redeemer in ("seller", "buyer"):  # the payee, or its payer taking it back
        assert decide_redemption(voucher.digest, body, record=parties.record(voucher),
                                 redeemer=redeemer, secret=SECRET) == Redeem()


async def test_a_payee_refuses_a_voucher_that_names_another_payee(parties: Parties) -> None:
    """The same kind, at the payee: a voucher bought to pay the seller is no payment
    to anyone else, refused offline before anything is sent."""
    voucher = parties.voucher()
    proof = VoucherProof(voucher=voucher, secret=SECRET, bank_certificate=parties.bank.cert)
    ctx = SimpleNamespace(our_id="seller-2", bank_id="bank", root=parties.trust[0],
                          crl=parties.trust[1], now_ms=lambda: NOW_MS)
    with pytest.raises(BadVoucher) as info:
        await VoucherModule().accept(ctx, proof.to_wire(),  # type: ignore[arg-type]
                                     invoice=Invoice(amount=PRICE, reference=REFERENCE))
    assert info.value.detail["field"] == "payee"


def test_retries_relock_a_voucher_a_bounded_number_of_times(parties: Parties) -> None:
    """Each relock costs the bank a signature and an archived voucher, for no money."""
    record = parties.record(parties.voucher())
    relocked = dataclasses.replace(record, relocks=MAX_RELOCKS - 1)
    assert decide_purchase_retry(relocked, lock_of(b"\x11" * 32)) is True
    capped = dataclasses.replace(record, relocks=MAX_RELOCKS)
    with pytest.raises(TooManyRelocks) as info:
        decide_purchase_retry(capped, lock_of(b"\x11" * 32))
    assert info.value.code == "voucher.too_many_relocks"
    assert decide_purchase_retry(capped, lock_of(SECRET)) is False  # no relock asked


def test_a_voucher_signed_before_the_banks_certificate_was_renewed_is_redeemed(
        parties: Parties, market: Market) -> None:
    voucher = parties.voucher()  # signed by the bank's first certificate
    renewed = market.agent("bank", "bank").cert
    with pytest.raises(WrongVoucherBank):  # not verifiable with the new one alone
        check_own_voucher(voucher, trust=parties.trust, bank_certificate=renewed)
    body = check_own_voucher(voucher, trust=parties.trust, bank_certificate=renewed,
                             stored=voucher.digest)  # the very voucher the bank stored
    assert body.serial == voucher.body["serial"]
    # Another voucher of the serial (forged, or relocked since) is not the one stored.
    for other in (parties.voucher(by=parties.buyer), parties.voucher(secret=b"\x22" * 32)):
        with pytest.raises(WrongVoucherBank):
            check_own_voucher(other, trust=parties.trust, bank_certificate=renewed,
                              stored=voucher.digest)


def _redemption(parties: Parties, voucher: Statement, redeemer: str) -> Statement:
    body = check_own_voucher(voucher, trust=parties.trust, bank_certificate=parties.bank.cert)
    return parties.sign(parties.bank, REDEMPTION,
                        redeem(voucher, body, redeemer=redeemer, entry=2).to_wire())


def test_same_payment_recognises_the_voucher_that_settled_it(parties: Parties) -> None:
    """A seller asked again with the spent voucher answers offline, without archiving
    it again or asking the bank."""
    voucher = parties.voucher()
    settled = _redemption(parties, voucher, "seller")
    paid = PaymentResult(module="voucher", payer="buyer", payee="seller", amount=PRICE,
                         reference=REFERENCE, settlement=settled,
                         bank_certificate=parties.bank.cert)
    proof = VoucherProof(voucher=voucher, secret=b"\x33" * 32,  # a retry's new secret
                         bank_certificate=parties.bank.cert).to_wire()
    module = VoucherModule()
    assert module.same_payment(proof, paid) is True
    other = VoucherProof(voucher=parties.voucher(secret=b"\x22" * 32), secret=SECRET,
                         bank_certificate=parties.bank.cert).to_wire()
    assert module.same_payment(other, paid) is False
    assert module.same_payment({"confirmation": b"x"}, paid) is False
    not_ours = dataclasses.replace(paid, settlement=voucher)  # not a redemption
    assert module.same_payment(proof, not_ours) is False


def test_prepaid_is_a_voucher_bought_and_not_taken_back(parties: Parties) -> None:
    voucher = parties.voucher()
    module = VoucherModule()
    assert module.prepaid([]) is None
    assert module.prepaid([voucher]) == (voucher, PRICE)
    # Redeemed by the seller: the money left us all the same.
    assert module.prepaid([voucher, _redemption(parties, voucher, "seller")]) == (voucher,
                                                                                    PRICE)
    assert module.prepaid([voucher, _redemption(parties, voucher, "buyer")]) is None


def test_the_voucher_is_taken_back_on_the_refusals_the_buyer_does_not_retry() -> None:
    from semper.agents.components._purchase import _PAYMENT_REFUSALS

    # Those any instrument's payee may raise; the card's and ecash's own codes come
    # only from their modules.
    shared = {code for code in _PAYMENT_REFUSALS if code.startswith(("payment.", "commerce."))}
    assert DEFINITE_REFUSALS == shared


class PayerContext:
    """The buyer's side of a voucher payment in memory: its bank applies the plugin's
    own checks and decisions to a dict of records; ``payee`` answers payment.accept."""

    def __init__(self, parties: Parties, payee: Any) -> None:
        self.parties, self.payee = parties, payee
        self.our_id, self.bank_id = "buyer", "bank"
        self.certificate = parties.buyer.cert
        self.root, self.crl = parties.market.ca.certificate, parties.market.crl
        self.records: dict[str, VoucherRecord] = {}

    def now_ms(self) -> int:
        return NOW_MS

    async def sign(self, type: str, body: dict[str, Any]) -> Statement:
        return self.parties.sign(self.parties.buyer, type, body)

    async def record(self, statement: Statement, certificate: Any) -> None:
        pass

    async def request(self, peer: str, service: str, op: str, body: Any) -> Any:
        if (service, op) == ("payment", "accept"):
            return await self.payee(self, body)
        return getattr(self, op)(body, "buyer")

    def buy_voucher(self, body: Any, requester: str) -> Any:
        signed = BuyRequest.from_wire(body).order
        order = check_purchase_order(signed, payer_certificate=self.parties.buyer.cert,
                                     trust=self.parties.trust, bank_id="bank",
                                     requester=requester)
        serial = voucher_serial(order.payer, order.idempotency_key)
        voucher = self.parties.sign(self.parties.bank, VOUCHER, issue_voucher(
            signed, order, serial=serial, entry=1).to_wire())
        self.records[serial] = self.parties.record(voucher)
        return BuyAnswer(voucher=voucher, bank_certificate=self.parties.bank.cert).to_wire()

    def redeem_voucher(self, body: Any, redeemer: str) -> Any:
        request = RedeemRequest.from_wire(body)
        voucher = check_own_voucher(request.voucher, trust=self.parties.trust,
                                    bank_certificate=self.parties.bank.cert)
        decide_redemption(request.voucher.digest, voucher, redeemer=redeemer,
                          record=self.records.get(voucher.serial), secret=request.secret)
        redemption = self.parties.sign(self.parties.bank, REDEMPTION, redeem(
            request.voucher, voucher, redeemer=redeemer, entry=2).to_wire())
        self.records[voucher.serial] = dataclasses.replace(
            self.records[voucher.serial], redeemer=redeemer, answer=redemption.to_bytes())
        return RedeemAnswer(redemption=redemption,
                            bank_certificate=self.parties.bank.cert).to_wire()


def _request() -> PaymentRequest:
    return PaymentRequest(payee="seller", amount=PRICE, reference=REFERENCE,
                          idempotency_key="pay-1")


async def test_a_voucher_the_payee_refuses_goes_back_to_its_buyer(parties: Parties) -> None:
    """The instance: the seller refused the voucher after the buyer bought it; the
    secret died with the call, and the money stayed in @vouchers for nobody."""
    async def refuse(ctx: PayerContext, body: Any) -> Any:
        raise RemoteError("commerce.unsupported_payment", "not today")

    ctx = PayerContext(parties, refuse)
    with pytest.raises(RemoteError) as info:
        await VoucherModule().pay(ctx, _request())  # type: ignore[arg-type]
    assert info.value.code == "commerce.unsupported_payment"  # the refusal stands
    (record,) = ctx.records.values()
    assert record.redeemer == "buyer"  # redeemed by its buyer: the money is back


async def test_a_voucher_the_payee_redeemed_before_refusing_stays_with_it(
        parties: Parties) -> None:
    async def redeem_then_refuse(ctx: PayerContext, body: Any) -> Any:
        proof = VoucherProof.from_wire(body["proof"])
        ctx.redeem_voucher(RedeemRequest(voucher=proof.voucher, secret=proof.secret)
                           .to_wire(), "seller")
        raise RemoteError("commerce.unknown_offer", "withdrawn meanwhile")

    ctx = PayerContext(parties, redeem_then_refuse)
    with pytest.raises(RemoteError) as info:
        await VoucherModule().pay(ctx, _request())  # type: ignore[arg-type]
    assert info.value.code == "commerce.unknown_offer"  # not the take-back's voucher.spent
    (record,) = ctx.records.values()
    assert record.redeemer == "seller"


@pytest.mark.parametrize("proof, field", [
    ("not a map", "body"),
    ({"voucher": b"", "secret": SECRET}, "bank_certificate"),  # a key missing
    ({"voucher": b"x", "secret": SECRET, "bank_certificate": b"x", "more": 1}, "more"),
])
def test_a_malformed_proof_is_the_plugins_bad_request(proof: Any, field: str) -> None:
    with pytest.raises(BadVoucherRequest) as info:
        VoucherProof.from_wire(proof)
    assert info.value.code == "voucher.bad_request"
    assert info.value.detail["field"] == field


# -- the Done-when: installed into a running market, then paid with --------------------


def test_buy_refuses_a_module_that_is_not_installed(tmp_path: Path) -> None:
    folder = tmp_path / "market"
    init_market(folder)
    line = refused(semper_in_process("buy", "--config", folder / "buyer" / "agent.toml",
                                     "--seller", "seller", "--item", "x", "--pay", "nosuch"),
                   "payment.unknown_module", 2)
    assert "'nosuch'" in line and "transfer" in line  # it lists what is installed


def _books(market: CliMarket) -> dict[str, Any]:
    done = semper("bank", "accounts", "--config", market.config("bank"), "--json")
    assert done.returncode == 0, done.stderr
    books = json.loads(done.stdout)
    assert books["balanced"] is True
    held = {a["holder"]: a["minor_units"] for a in books["accounts"] if a["currency"] == "EUR"}
    assert sum(held.values()) == books["minted"]["EUR"]  # every cent minted is somewhere
    held.setdefault("@vouchers", 0)  # opened by the first voucher sold
    return held


def _buy(market: CliMarket, sku: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return semper("buy", "--config", market.config("buyer"), "--seller", "seller",
                  "--item", sku, "--pay", "voucher", *extra, timeout=30)


class Installed:
    """A market made and running before the plugin was installed, then restarted with
    it: the ca, bank and seller agents as processes (the buyer acts through commands,
    which see the plugin through PYTHONPATH too)."""

    def __init__(self, root: Path, logs: Path) -> None:
        self.market = CliMarket(root, None)
        self.logs = logs
        self.agents: dict[str, AgentProcess] = {}

    def restart(self, agent_id: str, **env: str) -> None:
        """Stop ``agent_id`` and start it again, with ``env`` set while it starts."""
        assert self.agents[agent_id].stop()[0] == 0, self.agents[agent_id].stderr()
        self.start(agent_id, **env)

    def start(self, agent_id: str, **env: str) -> None:
        with pytest.MonkeyPatch.context() as patch:
            for name, value in env.items():
                patch.setenv(name, value)
            self.agents.update(start_agents(self.market, [agent_id], self.logs))


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    folder = tmp_path_factory.mktemp("voucher")
    state = Installed(folder / "market", folder)
    market = state.market
    done = semper("market", "init", market.root, timeout=30)
    assert done.returncode == 0, done.stderr
    with pytest.MonkeyPatch.context() as patch:
        try:
            state.agents.update(start_agents(market, ["ca", "bank", "seller"], folder))
            refuse = _buy(market, DEMO_CATALOGUE[0]["sku"])
            assert_one_line_failure(refuse, "payment.unknown_module")  # not installed yet

            site = folder / "site"
            subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                            "--no-build-isolation", "--no-index", "--target", str(site),
                            str(EXAMPLE)], check=True, timeout=120, capture_output=True)
            patch.setenv("PYTHONPATH", os.pathsep.join(
                [str(site), *filter(None, [os.environ.get("PYTHONPATH")])]))
            for agent_id in ("bank", "seller"):  # a plugin is picked up on restart
                state.restart(agent_id)
            yield state
        finally:
            for agent in state.agents.values():
                agent.kill()


def test_an_installed_voucher_module_pays_between_agent_processes(
        installed: Installed) -> None:
    market = installed.market
    sku, price = DEMO_CATALOGUE[0]["sku"], int(DEMO_CATALOGUE[0]["price"].split(":")[1])
    before = _books(market)
    done = _buy(market, sku, "--json")
    assert done.returncode == 0, done.stderr
    outcome = json.loads(done.stdout)
    assert outcome["state"] == "done", outcome
    assert outcome["payment"]["module"] == "voucher"
    assert outcome["payment"]["settlement"] == "voucher.redeemed"
    after = _books(market)
    assert after["buyer"] == before["buyer"] - price  # exactly the price
    assert after["seller"] == before["seller"] + price
    assert after["@vouchers"] == 0  # sold, then redeemed

    # The voucher again: refused to anyone else, its redemption again to its payee.
    with sqlite3.connect(market.root / "bank" / "data" / "agent.sqlite") as db:
        (voucher,) = db.execute("SELECT voucher FROM voucher_vouchers").fetchone()
    wire = Statement.from_bytes(voucher).to_wire()

    def redeem(config: str, secret: bytes) -> subprocess.CompletedProcess[str]:
        body = json.dumps(to_json({"voucher": wire, "secret": secret}))
        return semper("call", "--config", market.config(config), "bank",
                      "bank.redeem_voucher", body)

    assert_one_line_failure(redeem("buyer", b"\x00" * 32), "voucher.spent")
    again = redeem("seller", b"\x00" * 32)
    assert again.returncode == 0, again.stderr
    redemption = Statement.from_wire(from_json(json.loads(again.stdout))["redemption"])
    assert redemption.digest.hex() == outcome["payment"]["settlement_digest"]
    assert _books(market) == after
    for agent in installed.agents.values():
        assert "Traceback" not in agent.stderr(), agent.stderr()


def test_a_purchase_whose_redemption_answer_was_lost_resumes_and_pays_once(
        installed: Installed) -> None:
    """The bank dies after it paid the seller and before it answered: the seller's
    accept fails, so does the buy. Resumed with its key, the buyer buys the (spent)
    voucher again under a new secret, the seller redeems it again and its bank
    answers with the first redemption: the purchase completes, paid once."""
    market = installed.market
    sku, price = DEMO_CATALOGUE[1]["sku"], int(DEMO_CATALOGUE[1]["price"].split(":")[1])
    before = _books(market)
    installed.restart("bank", SEMPER_CRASH_AT="voucher.redeem_committed")
    first = _buy(market, sku, "--idempotency-key", "voucher-crash-1")
    assert first.returncode != 0
    assert installed.agents["bank"].process.wait(10) == -9  # it died where it should
    installed.start("bank")
    paid = _books(market)
    assert paid["buyer"] == before["buyer"] - price and paid["@vouchers"] == before["@vouchers"]

    done = _buy(market, sku, "--idempotency-key", "voucher-crash-1", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["state"] == "done"
    assert _books(market) == paid  # nothing moved again
    assert paid["seller"] == before["seller"] + price

    # A redeemed voucher is a settled payment: refunded by semper's bank.refund.
    done = semper("refund", "--config", market.config("buyer"), "--idempotency-key",
                  "voucher-crash-1", "--json", timeout=30)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["state"] == "refunded"
    assert _books(market) == before


def test_a_payment_handed_over_again_is_answered_with_the_stored_result(
        installed: Installed) -> None:
    """The buyer lost the seller's answer to payment.accept and hands the same voucher
    over again (a resumed pay does: the bank answers its purchase with the spent
    voucher; the secret is a new one). The seller settled it: it must answer with the
    result it stored, as it does for a transfer, not refuse the buyer's own payment."""
    market = installed.market
    done = _buy(market, DEMO_CATALOGUE[2]["sku"], "--json")
    assert done.returncode == 0, done.stderr
    outcome = json.loads(done.stdout)
    settlement = bytes.fromhex(outcome["payment"]["settlement_digest"])
    with sqlite3.connect(market.root / "bank" / "data" / "agent.sqlite") as db:
        rows = db.execute("SELECT voucher, answer FROM voucher_vouchers").fetchall()
    (voucher,) = [v for v, answer in rows if answer and Statement.from_bytes(answer).digest
                  == settlement]
    certificate = x509.load_pem_x509_certificate(
        (market.root / "bank" / "cert.pem").read_bytes())
    proof = {"voucher": Statement.from_bytes(voucher).to_wire(), "secret": b"\x01" * 32,
             "bank_certificate": certificate.public_bytes(serialization.Encoding.DER)}
    body = {"module": "voucher", "reference": bytes.fromhex(outcome["receipt"]["order"]),
            "proof": proof}
    again = semper("call", "--config", market.config("buyer"), "seller", "payment.accept",
                   json.dumps(to_json(body)))
    assert again.returncode == 0, again.stderr
    result = from_json(json.loads(again.stdout))
    assert Statement.from_wire(result["settlement"]).digest.hex() == \
        outcome["payment"]["settlement_digest"]
