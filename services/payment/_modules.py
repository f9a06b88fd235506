"""Payment modules: the ``transfer`` and ``cheque`` instruments behind one interface.

Theory of operation. A module is the protocol logic of one instrument, written
against two context protocols that the agents layer implements: a module signs
through the context (the agent holds the key and archives what it signs), asks its
peers through the context (``await ctx.request(peer, service, op, body)``: the agent
owns the channels), and reads the clock, the market root and the CRL from it. So a
module holds no I/O and no state, and a test drives it with in-memory contexts.

    transfer  payer: sign payment.transfer_order -> bank.transfer at the payer's bank
              -> verify the payment.transfer_confirmation -> payment.accept at the
              payee, proof = {confirmation, bank_certificate}
              payee: verify the confirmation offline; nothing else to do
    cheque    payer: sign payment.cheque -> payment.accept at the payee,
              proof = {cheque, drawer_certificate}; verify the cleared statement the
              payee answers with
              payee: verify the cheque -> bank.deposit_cheque at the cheque's bank ->
              verify the payment.cheque_cleared
    refunds   (both) the payee signs payment.refund_order -> bank.refund at the bank
              that settled the payment -> verify the payment.refund_confirmation

Retries. Every step may be repeated after a crash or a lost answer and pays at most
once: the bank applies one transfer and one refund per ``(signer, idempotency_key)``
and one cheque per ``(payer, serial)``, and answers a repeat with the statement it
signed the first time. A cheque's serial is derived from the payer and the
idempotency key (``cheque_serial``), so a payer that retries writes the same serial.
Because a repeat is answered with the *first* statement, the modules match bank
answers by content (payer, payee, amount, reference or serial), never by the digest
of the statement they just re-signed.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass
from typing import Any, ClassVar, Final, Protocol, runtime_checkable

from cryptography import x509

from ..certificates import check_name, identity_of
from ..money import Amount
from ..statements import Statement, canonical_encode
from ._checks import (
    decide_refund,
    verify_cheque,
    verify_cheque_cleared,
    verify_refund_confirmation,
    verify_transfer_confirmation,
)
from ._errors import BadConfirmation, BadRequest, WrongBank
from ._schema import (
    CHEQUE,
    MAX_AMOUNT,
    MAX_REFERENCE,
    REFUND_ORDER,
    TRANSFER_ORDER,
    Cheque,
    RefundOrder,
    TransferOrder,
    amount_from_wire,
    check_idempotency_key,
)
from ._wire import (
    BANK_DEPOSIT_CHEQUE,
    BANK_REFUND,
    BANK_SERVICE,
    BANK_TRANSFER,
    PAYMENT_ACCEPT,
    PAYMENT_SERVICE,
    AcceptRequest,
    ChequeProof,
    DepositAnswer,
    RefundAnswer,
    RefundRequest,
    TransferProof,
    TransferRequest,
    _certificate,
    der,
)

__all__ = [
    "ChequeModule",
    "Invoice",
    "PayeeContext",
    "PayerContext",
    "PaymentContext",
    "PaymentModule",
    "PaymentRequest",
    "PaymentResult",
    "RefundResult",
    "TransferModule",
    "cheque_serial",
    "our_bank",
    "refund_payment",
]

_EPOCH: Final = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_SERIAL_DOMAIN: Final = b"semper-cheque-serial-v1\x00"


# -- what the agents layer provides ---------------------------------------------------


class PaymentContext(Protocol):
    """What a module needs of the agent it runs in. Plain attributes satisfy the
    properties."""

    @property
    def our_id(self) -> str:
        """Our agent id."""

    @property
    def bank_id(self) -> str:
        """The agent id of the bank that holds our account."""

    @property
    def certificate(self) -> x509.Certificate:
        """Our certificate: the one ``sign`` signs under."""

    @property
    def root(self) -> x509.Certificate:
        """The market root, to verify what others signed."""

    @property
    def crl(self) -> x509.CertificateRevocationList:
        """The current CRL of the market root."""

    def now_ms(self) -> int:
        """The wall clock, Unix milliseconds (UTC)."""

    async def sign(self, type: str, body: dict[str, Any]) -> Statement:
        """Sign ``body`` as a statement of ``type`` with our key, now, with a fresh
        nonce, and archive it as sent. Raises ValueError for a body outside the
        value model."""

    async def record(self, statement: Statement, certificate: x509.Certificate) -> None:
        """Archive a statement we received and verified, with its signer's certificate."""

    async def request(self, peer: str, service: str, op: str, body: Any) -> Any:
        """Ask ``peer`` and return its response body. Raises whatever the agent's
        channel raises: the peer's refusal with the peer's code unchanged (e.g.
        ``payment.insufficient_funds``), a timeout, a closed channel."""


class PayerContext(PaymentContext, Protocol):
    """The context of the side that pays (``PaymentModule.pay``)."""


class PayeeContext(PaymentContext, Protocol):
    """The context of the side that is paid (``accept``, ``refund``); ``bank_id`` is
    not used to deposit a cheque (that goes to the cheque's bank)."""


# -- values ---------------------------------------------------------------------------


def _bad(what: str, field: str, message: str) -> BadRequest:
    return BadRequest(f"{what}: {message}", detail={"type": what, "field": field})


def _check_agent(what: str, field: str, value: object) -> None:
    try:
        check_name("agent id", value)  # type: ignore[arg-type]
    except ValueError:
        raise _bad(what, field, f"{field} must be an agent id") from None


def _check_amount(what: str, value: object) -> None:
    if not isinstance(value, Amount) or not 0 < value.minor_units <= MAX_AMOUNT:
        raise _bad(what, "amount", "amount must be a positive Amount")


def _check_reference(what: str, value: object) -> None:
    if type(value) is not bytes or not 0 < len(value) <= MAX_REFERENCE:
        raise _bad(what, "reference", f"reference must be 1 to {MAX_REFERENCE} bytes")


@dataclass(frozen=True, slots=True, kw_only=True)
class PaymentRequest:
    """What the payer asks for: pay ``amount`` to ``payee`` for ``reference`` (e.g.
    the digest of a commerce order). The same ``idempotency_key`` with the same
    content pays once; ``to_wire()`` is the content to digest.

    Raises (construction):
        BadRequest: a bad field; ``detail["field"]``.
    """

    payee: str
    amount: Amount
    reference: bytes
    idempotency_key: str

    def __post_init__(self) -> None:
        _check_agent("payment request", "payee", self.payee)
        _check_amount("payment request", self.amount)
        _check_reference("payment request", self.reference)
        check_idempotency_key(self.idempotency_key)

    def to_wire(self) -> dict[str, Any]:
        return {"payee": self.payee, "amount": self.amount.to_wire(), "reference": self.reference,
                "idempotency_key": self.idempotency_key}


@dataclass(frozen=True, slots=True, kw_only=True)
class Invoice:
    """What the payee expects to be paid: ``amount`` for ``reference``, by ``payer``
    (None: by anyone). The payee is the context's ``our_id``.

    Raises (construction):
        BadRequest: a bad field.
    """

    amount: Amount
    reference: bytes
    payer: str | None = None

    def __post_init__(self) -> None:
        _check_amount("invoice", self.amount)
        _check_reference("invoice", self.reference)
        if self.payer is not None:
            _check_agent("invoice", "payer", self.payer)


@dataclass(frozen=True, slots=True, kw_only=True)
class PaymentResult:
    """A settled payment: ``settlement`` is the bank's statement that the money moved
    (a ``payment.transfer_confirmation`` or a ``payment.cheque_cleared``), signed under
    ``bank_certificate``. Both sides end with the same one; refunds name its digest.

    Wire: ``{"module", "payer", "payee", "amount", "reference", "settlement":
    statement, "bank_certificate": DER}``.
    """

    module: str
    payer: str
    payee: str
    amount: Amount
    reference: bytes
    settlement: Statement
    bank_certificate: x509.Certificate

    def __post_init__(self) -> None:
        what = "payment result"
        if type(self.module) is not str or not 0 < len(self.module) <= 32:
            raise _bad(what, "module", "module must be a module name")
        _check_agent(what, "payer", self.payer)
        _check_agent(what, "payee", self.payee)
        _check_amount(what, self.amount)
        _check_reference(what, self.reference)
        if not isinstance(self.settlement, Statement):
            raise _bad(what, "settlement", "settlement must be a Statement")
        if not isinstance(self.bank_certificate, x509.Certificate):
            raise _bad(what, "bank_certificate", "bank_certificate must be a certificate")

    @property
    def bank(self) -> str:
        """The agent id of the bank that settled the payment (not validated here)."""
        return identity_of(self.bank_certificate).agent_id

    def to_wire(self) -> dict[str, Any]:
        return {"module": self.module, "payer": self.payer, "payee": self.payee,
                "amount": self.amount.to_wire(), "reference": self.reference,
                "settlement": self.settlement.to_wire(),
                "bank_certificate": der(self.bank_certificate)}

    @classmethod
    def from_wire(cls, value: object) -> PaymentResult:
        """Raises BadRequest, or ``statement.*`` for a malformed settlement."""
        keys = {"module", "payer", "payee", "amount", "reference", "settlement",
                "bank_certificate"}
        if type(value) is not dict or set(value) != keys:
            raise _bad("payment result", "keys", f"a payment result has the keys {sorted(keys)}")
        return cls(module=value["module"], payer=value["payer"], payee=value["payee"],
                   amount=_amount(value["amount"], "payment result"),
                   reference=value["reference"],
                   settlement=Statement.from_wire(value["settlement"]),
                   bank_certificate=_certificate(value["bank_certificate"], "bank_certificate",
                                                 "payment result"))


@dataclass(frozen=True, slots=True, kw_only=True)
class RefundResult:
    """A refund applied: ``confirmation`` is the bank's ``payment.refund_confirmation``
    returning ``amount`` of the payment whose settlement digest is ``original`` from
    ``payer`` (who was paid) to ``payee`` (who paid).

    Wire: ``{"original", "payer", "payee", "amount", "reason", "confirmation":
    statement, "bank_certificate": DER}``.
    """

    original: bytes
    payer: str
    payee: str
    amount: Amount
    reason: str
    confirmation: Statement
    bank_certificate: x509.Certificate

    def __post_init__(self) -> None:
        # The fields a refund order has are checked as a refund order checks them.
        RefundOrder(original=self.original, payer=self.payer, payee=self.payee,
                    amount=self.amount, reason=self.reason, idempotency_key="-")
        if not isinstance(self.confirmation, Statement):
            raise _bad("refund result", "confirmation", "confirmation must be a Statement")
        if not isinstance(self.bank_certificate, x509.Certificate):
            raise _bad("refund result", "bank_certificate", "must be a certificate")

    def to_wire(self) -> dict[str, Any]:
        return {"original": self.original, "payer": self.payer, "payee": self.payee,
                "amount": self.amount.to_wire(), "reason": self.reason,
                "confirmation": self.confirmation.to_wire(),
                "bank_certificate": der(self.bank_certificate)}

    @classmethod
    def from_wire(cls, value: object) -> RefundResult:
        """Raises BadRequest, or ``statement.*`` for a malformed confirmation."""
        keys = {"original", "payer", "payee", "amount", "reason", "confirmation",
                "bank_certificate"}
        if type(value) is not dict or set(value) != keys:
            raise _bad("refund result", "keys", f"a refund result has the keys {sorted(keys)}")
        return cls(original=value["original"], payer=value["payer"], payee=value["payee"],
                   amount=_amount(value["amount"], "refund result"), reason=value["reason"],
                   confirmation=Statement.from_wire(value["confirmation"]),
                   bank_certificate=_certificate(value["bank_certificate"], "bank_certificate",
                                                 "refund result"))


def _amount(value: object, what: str) -> Amount:
    try:
        return amount_from_wire(value)
    except Exception:  # BadAmount: any shape problem is this field's
        raise _bad(what, "amount", "amount is not {currency, minor_units}") from None


def cheque_serial(payer: str, idempotency_key: str) -> str:
    """The serial of the cheque ``payer`` writes for ``idempotency_key``: 32 hex digits
    of SHA-256 over a domain prefix and the canonical ``[payer, key]``. A retry writes
    the same serial, which the bank clears at most once."""
    data = _SERIAL_DOMAIN + canonical_encode([payer, idempotency_key])
    return hashlib.sha256(data).hexdigest()[:32]


# -- the module interface -------------------------------------------------------------


@runtime_checkable
class PaymentModule(Protocol):
    """One payment instrument. Implementations hold no state between calls."""

    @property
    def name(self) -> str:
        """The module's name in capabilities and ``payment.accept`` (e.g. ``"transfer"``)."""

    async def pay(self, ctx: PayerContext, request: PaymentRequest) -> PaymentResult:
        """Pay ``request`` and hand the proof to the payee (``payment.accept``).

        Returns the settled payment, as the payee acknowledged it. Raises the bank's
        or the payee's refusal (``payment.*``, with their code), a verification error
        for a bank statement that does not check out, or what ``ctx.request`` raises.
        Cancellation or a failure after the bank answered leaves the payment applied:
        retry with the same request (same idempotency key) to finish it."""

    async def accept(self, ctx: PayeeContext, proof: dict[str, Any], *,
                     invoice: Invoice) -> PaymentResult:
        """Check ``proof`` (the ``proof`` of a ``payment.accept``) against ``invoice``
        and settle it if this instrument needs the payee to (a cheque is deposited).
        Returns the settled payment; raises ``payment.*``, ``statement.*``, ``auth.*``
        refusals."""

    async def refund(self, ctx: PayeeContext, original: PaymentResult, amount: Amount,
                     reason: str, key: str) -> RefundResult:
        """Give ``amount`` of ``original`` (a payment to us) back to its payer through
        the bank that settled it; ``key`` is the refund's idempotency key."""


def _now(ctx: PaymentContext) -> dt.datetime:
    return _EPOCH + dt.timedelta(milliseconds=ctx.now_ms())


async def refund_payment(ctx: PayeeContext, original: PaymentResult, amount: Amount,
                         reason: str, key: str) -> RefundResult:
    """The refund of any module: a ``payment.refund_order`` to the settling bank.

    Raises:
        BadRequest: ``original`` is not a payment to us, or a bad reason or key.
        RefundExceedsPayment, WrongCurrency: more than ``original`` or another currency
            (checked before asking; the bank checks against earlier refunds too).
        BadConfirmation, StatementError, CertificateError: the bank's answer does not
            verify; the refund may be applied, so retry with the same ``key``.
    """
    if original.payee != ctx.our_id:
        raise _bad(REFUND_ORDER, "payer", "only the payee of a payment refunds it")
    decide_refund(original.amount, Amount(original.amount.currency, 0), amount)
    bank = original.bank
    our_bank(ctx, bank)
    body = RefundOrder(original=original.settlement.digest, payer=ctx.our_id,
                       payee=original.payer, amount=amount, reason=reason, idempotency_key=key)
    order = await ctx.sign(REFUND_ORDER, body.to_body())
    ask = RefundRequest(refund_order=order).to_wire()
    answer = RefundAnswer.from_wire(await ctx.request(bank, BANK_SERVICE, BANK_REFUND, ask))
    verify_refund_confirmation(answer.confirmation, bank_certificate=answer.bank_certificate,
                               root=ctx.root, crl=ctx.crl, now=_now(ctx),
                               expected_original=body.original, expected_payee=body.payee,
                               expected_amount=amount, expected_bank=bank)
    await ctx.record(answer.confirmation, answer.bank_certificate)
    return RefundResult(original=body.original, payer=body.payer, payee=body.payee, amount=amount,
                        reason=reason, confirmation=answer.confirmation,
                        bank_certificate=answer.bank_certificate)


def our_bank(ctx: PaymentContext, bank: str) -> None:
    """Raise WrongBank unless ``bank`` (named in, or signing, a statement we were
    handed) is the bank we deal with: checked before anything is sent to it, so a
    payer cannot make us dial an agent of its choosing, and before we count on a
    settlement, which is worth something only at our own bank."""
    if bank != ctx.bank_id:
        raise WrongBank(f"{bank!r} is not the bank this agent deals with ({ctx.bank_id!r})",
                        detail={"bank": bank, "expected": ctx.bank_id})


async def _hand_over(ctx: PayerContext, request: PaymentRequest, module: str,
                     proof: dict[str, Any]) -> PaymentResult:
    """``payment.accept`` at the payee; its answer, checked to name this payment."""
    body = AcceptRequest(module=module, reference=request.reference, proof=proof).to_wire()
    result = PaymentResult.from_wire(
        await ctx.request(request.payee, PAYMENT_SERVICE, PAYMENT_ACCEPT, body))
    got = (result.module, result.payer, result.payee, result.amount, result.reference)
    if got != (module, ctx.our_id, request.payee, request.amount, request.reference):
        raise BadConfirmation("the payee acknowledged another payment than ours",
                              detail={"type": "payment result", "field": "payment"})
    return result


# -- transfer -------------------------------------------------------------------------


class TransferModule:
    """``transfer``: an account-to-account transfer confirmed by the bank."""

    name: ClassVar[str] = "transfer"

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
            crl=ctx.crl, now=_now(ctx), expected_payee=request.payee,
            expected_amount=request.amount, expected_reference=request.reference,
            expected_payer=ctx.our_id, expected_bank=ctx.bank_id)
        await ctx.record(proof.confirmation, proof.bank_certificate)
        result = await _hand_over(ctx, request, self.name, proof.to_wire())
        if result.settlement != proof.confirmation:
            raise BadConfirmation("the payee acknowledged another confirmation",
                                  detail={"type": "payment result", "field": "settlement"})
        return result

    async def accept(self, ctx: PayeeContext, proof: dict[str, Any], *,
                     invoice: Invoice) -> PaymentResult:
        got = TransferProof.from_wire(proof)
        body = verify_transfer_confirmation(
            got.confirmation, bank_certificate=got.bank_certificate, root=ctx.root, crl=ctx.crl,
            now=_now(ctx), expected_payee=ctx.our_id, expected_amount=invoice.amount,
            expected_reference=invoice.reference, expected_payer=invoice.payer)
        # Signed by a bank (checked above), but money only at our own bank is ours.
        our_bank(ctx, identity_of(got.bank_certificate).agent_id)
        await ctx.record(got.confirmation, got.bank_certificate)
        return PaymentResult(module=self.name, payer=body.payer, payee=body.payee,
                             amount=body.amount, reference=body.reference,
                             settlement=got.confirmation, bank_certificate=got.bank_certificate)

    async def refund(self, ctx: PayeeContext, original: PaymentResult, amount: Amount,
                     reason: str, key: str) -> RefundResult:
        return await refund_payment(ctx, original, amount, reason, key)


# -- cheque ---------------------------------------------------------------------------


class ChequeModule:
    """``cheque``: a signed cheque drawn on the payer's account, deposited by the payee.

    Args:
        validity_ms: how long a cheque written now can be deposited (default 7 days).
    """

    name: ClassVar[str] = "cheque"
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
        result = await _hand_over(ctx, request, self.name, proof.to_wire())
        verify_cheque_cleared(
            result.settlement, bank_certificate=result.bank_certificate, root=ctx.root,
            crl=ctx.crl, now=_now(ctx), expected_payee=request.payee,
            expected_amount=request.amount, expected_serial=serial, expected_payer=ctx.our_id,
            expected_bank=ctx.bank_id)
        await ctx.record(result.settlement, result.bank_certificate)
        return result

    async def accept(self, ctx: PayeeContext, proof: dict[str, Any], *,
                     invoice: Invoice) -> PaymentResult:
        got = ChequeProof.from_wire(proof)
        now = _now(ctx)
        cheque = verify_cheque(
            got.cheque, drawer_certificate=got.drawer_certificate, root=ctx.root, crl=ctx.crl,
            now=now, expected_payee=ctx.our_id, expected_amount=invoice.amount,
            expected_reference=invoice.reference, expected_payer=invoice.payer)
        our_bank(ctx, cheque.bank)  # before dialing the agent the cheque names
        answer = DepositAnswer.from_wire(await ctx.request(
            cheque.bank, BANK_SERVICE, BANK_DEPOSIT_CHEQUE, got.to_wire()))
        verify_cheque_cleared(
            answer.cleared, bank_certificate=answer.bank_certificate, root=ctx.root, crl=ctx.crl,
            now=_now(ctx), expected_payee=ctx.our_id, expected_amount=cheque.amount,
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
