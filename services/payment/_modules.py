"""Payment modules: every instrument behind one interface, and what they share.

Theory of operation. A module is the protocol logic of one instrument, written
against two context protocols that the agents layer implements: a module signs
through the context (the agent holds the key and archives what it signs), asks its
peers through the context (``await ctx.request(peer, service, op, body)``: the agent
owns the channels), and reads the clock, the market root and the CRL from it. So a
module holds no I/O and no state, and a test drives it with in-memory contexts.
Each instrument is a package beside this module (``services.payment.<name>``)
with its statements, checks and module class, found through the
``semper.payment_modules`` entry points; what they share is here:

    pay       the payer settles with its bank as the instrument says, then hands
              the proof to the payee (``hand_over``: ``payment.accept``)
    accept    the payee checks the proof against its ``Invoice``
    refunds   (every instrument) the payee signs payment.refund_order ->
              bank.refund at the bank that settled the payment -> verify the
              payment.refund_confirmation (``refund_payment``)

Retries. Every step may be repeated after a crash or a lost answer and pays at most
once: the bank applies each payment and each refund once per the instrument's key
(``(signer, idempotency_key)`` for a refund), and answers a repeat with the
statement it signed the first time. Because a repeat is answered with the *first*
statement, the modules match bank answers by content (payer, payee, amount,
reference), never by the digest of the statement they just re-signed.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final, Protocol, runtime_checkable

from cryptography import x509

from ..certificates import check_name, identity_of
from ..money import Amount
from ..statements import Statement
from ._checks import decide_refund, verify_refund_confirmation
from ._errors import BadConfirmation, BadRequest, WrongBank
from ._schema import (
    MAX_AMOUNT,
    MAX_REFERENCE,
    REFUND_ORDER,
    RefundOrder,
    amount_from_wire,
    check_idempotency_key,
)
from ._wire import (
    BANK_REFUND,
    BANK_SERVICE,
    PAYMENT_ACCEPT,
    PAYMENT_SERVICE,
    AcceptRequest,
    RefundAnswer,
    RefundRequest,
    _certificate,
    der,
)

__all__ = [
    "Invoice",
    "PayeeContext",
    "PayerContext",
    "PaymentContext",
    "PaymentModule",
    "PaymentRequest",
    "PaymentResult",
    "REFUND_CHECKS",
    "RefundResult",
    "hand_over",
    "now_of",
    "our_bank",
    "refund_payment",
]

_EPOCH: Final = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


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

    def holder(self, module: str) -> Any:
        """The component that holds this agent's ``module`` instrument (an ecash
        wallet's coins, cards): the payer-side state a stateless module pays from.
        Raises ``payment.unsupported`` (``Unsupported``) when the agent has none."""


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

    # Optional: ``same_payment(proof, paid) -> bool`` says offline whether a proof hands
    # over again the payment that settled ``paid`` (a payer retrying after a lost
    # answer). A module without it is asked to ``accept`` the proof again, and the
    # payment is the same if it settles to the same statement (a bank answers a
    # repeat with its first statement).
    #
    # Optional, for an instrument whose money moves before the payee accepts (a
    # transfer; not a cheque, which the payee deposits only to settle):
    # ``received(ctx, proof, *, payer, reference) -> PaymentResult | None`` (payee
    # side): the money ``proof`` shows already moved to us from ``payer`` for
    # ``reference``, verified offline, any amount (None: no such money), so that a
    # payee that refuses the proof gives it back (``refund_payment``); and
    # ``prepaid(statements) -> (settlement, amount) | None`` (payer side): among our
    # archived statements of the payment's transaction, the settlement of a payment
    # we made before the hand-over, and its amount, so that the payer knows a
    # refusal did not leave the money with it. A module without them moves no money
    # before the payee accepts. Neither signs, archives nor asks anyone. (Money that
    # ``accept`` itself moved, a payee that then refuses the sale gives back by
    # ``refund_payment``, with no hook: it holds the PaymentResult.)
    #
    # Optional, for a third party that must tell offline whether a payment was made
    # (the notary of a fair purchase, protocol.md 10.5): ``settles(settlement, *,
    # bank_certificate, root, crl, now, payer, payee, amount, reference,
    # idempotency_key) -> None`` raises a coded refusal (``payment.*``,
    # ``statement.*``, ``auth.*``) unless ``settlement`` is the bank's statement that
    # this instrument's payment of ``amount`` from ``payer`` to ``payee`` for the
    # order ``reference`` (paid under ``idempotency_key``) settled. A module without
    # it cannot pay a fair purchase.
    #
    # Optional, for a payer whose payee vanished inside ``payment.accept`` after the
    # money moved (a cheque deposited: only the payee was answered the clearing):
    # ``async settlement_of(ctx, request) -> PaymentResult | None`` (payer side) asks
    # our bank for the settlement of our payment ``request``, verified and archived,
    # None if it did not settle; it moves nothing. The fair buyer calls it before
    # going to the notary (protocol.md 10.5).

    async def refund(self, ctx: PayeeContext, original: PaymentResult, amount: Amount,
                     reason: str, key: str) -> RefundResult:
        """Give ``amount`` of ``original`` (a payment to us) back to its payer through
        the bank that settled it; ``key`` is the refund's idempotency key."""


def now_of(ctx: PaymentContext) -> dt.datetime:
    """The context's clock as an aware datetime, for the checks' ``now``."""
    return _EPOCH + dt.timedelta(milliseconds=ctx.now_ms())


#: How the bank's answer to a refund is checked, by the type of the settlement refunded,
#: for an instrument whose bank answers a refund with a statement of its own (ecash: a
#: refund voucher): ``check(ctx, original, answer, order)`` raises unless it is right.
#: Registered by the instrument's package at import; any other settlement's refund is
#: answered with a ``payment.refund_confirmation``.
RefundCheck = Callable[["PayeeContext", "PaymentResult", RefundAnswer, RefundOrder], object]
REFUND_CHECKS: Final[dict[str, RefundCheck]] = {}


async def refund_payment(ctx: PayeeContext, original: PaymentResult, amount: Amount,
                         reason: str, key: str) -> RefundResult:
    """The refund of any module: a ``payment.refund_order`` to the settling bank; its
    answer checked by ``REFUND_CHECKS`` for the settlement's type, else as a
    ``payment.refund_confirmation``.

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
    check = REFUND_CHECKS.get(original.settlement.type)
    if check is not None:
        check(ctx, original, answer, body)
    else:
        verify_refund_confirmation(answer.confirmation, bank_certificate=answer.bank_certificate,
                                   root=ctx.root, crl=ctx.crl, now=now_of(ctx),
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


async def hand_over(ctx: PayerContext, request: PaymentRequest, module: str,
                    proof: dict[str, Any], *,
                    failed: Callable[[BaseException], Awaitable[object]] | None = None
                    ) -> PaymentResult:
    """``payment.accept`` at the payee with the proof of ``module``; its answer,
    checked to name this payment. Every module's ``pay`` ends with it. ``failed(exc)``
    is awaited when the request itself fails (the payee's refusal, a timeout), before
    the failure is raised: ecash gives up coins the payee saw but refused."""
    body = AcceptRequest(module=module, reference=request.reference, proof=proof).to_wire()
    try:
        answer = await ctx.request(request.payee, PAYMENT_SERVICE, PAYMENT_ACCEPT, body)
    except Exception as exc:
        if failed is not None:
            await failed(exc)
        raise
    result = PaymentResult.from_wire(answer)
    got = (result.module, result.payer, result.payee, result.amount, result.reference)
    if got != (module, ctx.our_id, request.payee, request.amount, request.reference):
        raise BadConfirmation("the payee acknowledged another payment than ours",
                              detail={"type": "payment result", "field": "payment"})
    return result
