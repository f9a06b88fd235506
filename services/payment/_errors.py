"""Why a payment was refused; one class per stable code.

Signature and certificate problems are not repeated here: the checks raise the
statement layer's (``statement.*``) and the certificate layer's (``auth.*``) own
errors, so one code means one thing across the protocol. Codes are API. The codes
only one instrument raises are in its package's ``_errors`` (``payment.*`` too).
"""

from __future__ import annotations

from typing import ClassVar

from .._errors import ServiceError

__all__ = [
    "AlreadyPaid",
    "BadConfirmation",
    "BadRequest",
    "IdempotencyConflict",
    "InsufficientFunds",
    "NoCommonInstrument",
    "PaymentError",
    "RefundExceedsPayment",
    "UnknownAccount",
    "UnknownModule",
    "UnknownPayment",
    "Unsupported",
    "WrongCurrency",
    "WrongBank",
    "WrongPayee",
]


class PaymentError(ServiceError):
    """A payment was refused. Subclasses name the reason."""

    code: ClassVar[str] = "payment.error"


class BadRequest(PaymentError):
    """A payment statement body or bank op body that is not the defined map, or an
    order the bank cannot act on (another bank, signed by someone other than the
    requester). ``detail["field"]`` names the field at fault when there is one."""

    code: ClassVar[str] = "payment.bad_request"


class NoCommonInstrument(PaymentError):
    """No module both sides accept for this currency and amount; ``detail`` lists
    what each side offered (``payer``, ``payee``: capabilities wire) and the ``amount``."""

    code: ClassVar[str] = "payment.no_common_instrument"


class UnknownModule(PaymentError):
    """A proof for a payment module this side does not offer; ``detail["module"]``."""

    code: ClassVar[str] = "payment.unknown_module"


class IdempotencyConflict(PaymentError):
    """An idempotency key already used for a request with other content."""

    code: ClassVar[str] = "payment.idempotency_conflict"


class BadConfirmation(PaymentError):
    """A bank statement (transfer confirmation, cleared cheque, refund confirmation)
    that is malformed, not signed by a bank, or not the one expected;
    ``detail["field"]`` names the first field that differs."""

    code: ClassVar[str] = "payment.bad_confirmation"



class InsufficientFunds(PaymentError):
    """The payer's balance does not cover the amount. The balance is not disclosed."""

    code: ClassVar[str] = "payment.insufficient_funds"


class WrongCurrency(PaymentError):
    """Amounts of different currencies met in a payment (a cheque in USD on a EUR
    balance, a refund in another currency than the payment). The payment's own code,
    not a subclass of ``money.CurrencyMismatch``: each error class has one place in
    the tree."""

    code: ClassVar[str] = "payment.currency_mismatch"



class WrongPayee(PaymentError):
    """The cheque is payable to another agent than the one depositing it."""

    code: ClassVar[str] = "payment.wrong_payee"





class RefundExceedsPayment(PaymentError):
    """The refund asked for is more than what remains refundable of the payment."""

    code: ClassVar[str] = "payment.refund_exceeds_payment"


class UnknownAccount(PaymentError):
    """The bank holds no account for this agent (and currency); ``detail["account"]``."""

    code: ClassVar[str] = "payment.unknown_account"


class UnknownPayment(PaymentError):
    """A refund of a payment this bank did not settle; ``detail["original"]`` (hex)."""

    code: ClassVar[str] = "payment.unknown_payment"


class WrongBank(PaymentError):
    """A statement names, or was signed by, a bank this agent does not deal with (its
    configured ``[payment] bank``), or an agent that is not a bank: refused before
    any connection to it is opened. ``detail``: ``bank``, ``expected``."""

    code: ClassVar[str] = "payment.wrong_bank"


class AlreadyPaid(PaymentError):
    """A second payment from one payer to one payee for one reference, under another
    idempotency key or cheque serial, while the first stands (is not refunded in
    full). ``detail``: ``reference``."""

    code: ClassVar[str] = "payment.already_paid"


class Unsupported(PaymentError):
    """The instrument cannot make this payment here: a purse pays a stream chunk by
    chunk (paywords on the delivery channel), not one whole amount through
    ``payment.accept``; an agent holds no ecash wallet or card for the module asked
    (``PayerContext.holder``). ``detail`` ``module``."""

    code: ClassVar[str] = "payment.unsupported"
