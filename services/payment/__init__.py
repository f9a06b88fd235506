"""The payment manager and what every instrument shares: negotiation, idempotency,
the module interface and its contexts, payment requests and results, refunds, the
common errors and field kinds.

Each instrument is a package of its own beside this one (``services.payment.transfer``,
``services.payment.cheque``, or any installed elsewhere) with its statements, checks,
decisions and module class, registered in the ``semper.payment_modules`` entry-point
group; the code here names none of them.

Pure: statements, certificates, the CRL and the time come in; decisions and bodies
go out. The modules reach the network only by awaiting their context, which the
agents layer implements. docs/protocol.md section 8 is the wire contract.
"""

from ._checks import (
    BANK_ROLE,
    check_refund_order,
    confirm_refund,
    decide_refund,
    verify_refund_confirmation,
)
from ._errors import (
    AlreadyPaid,
    BadConfirmation,
    BadRequest,
    IdempotencyConflict,
    InsufficientFunds,
    NoCommonInstrument,
    PaymentError,
    RefundExceedsPayment,
    UnknownAccount,
    UnknownModule,
    UnknownPayment,
    Unsupported,
    WrongBank,
    WrongCurrency,
    WrongPayee,
)
from ._idempotency import (
    Fresh,
    IdempotencyDecision,
    IdempotencyRecord,
    Replay,
    decide_idempotency,
    request_digest,
)
from ._manager import MODULES_GROUP, PaymentManager, load_modules
from ._modules import (
    Invoice,
    PayeeContext,
    PayerContext,
    PaymentContext,
    PaymentModule,
    PaymentRequest,
    PaymentResult,
    RefundResult,
    hand_over,
    now_of,
    our_bank,
    refund_payment,
)
from ._negotiation import Capabilities, Limits, ModuleOffer, negotiate
from ._schema import (
    REFUND_CONFIRMATION,
    REFUND_ORDER,
    RefundConfirmation,
    RefundOrder,
    amount_from_wire,
    check_idempotency_key,
)
from ._wire import (
    BANK_REFUND,
    BANK_SERVICE,
    PAYMENT_ACCEPT,
    PAYMENT_CAPABILITIES,
    PAYMENT_SERVICE,
    AcceptRequest,
    CapabilitiesRequest,
    RefundAnswer,
    RefundRequest,
)

__all__ = [
    "BANK_REFUND",
    "BANK_ROLE",
    "BANK_SERVICE",
    "MODULES_GROUP",
    "PAYMENT_ACCEPT",
    "PAYMENT_CAPABILITIES",
    "PAYMENT_SERVICE",
    "REFUND_CONFIRMATION",
    "REFUND_ORDER",
    "AcceptRequest",
    "AlreadyPaid",
    "BadConfirmation",
    "BadRequest",
    "Capabilities",
    "CapabilitiesRequest",
    "Fresh",
    "IdempotencyConflict",
    "IdempotencyDecision",
    "IdempotencyRecord",
    "InsufficientFunds",
    "Invoice",
    "Limits",
    "ModuleOffer",
    "NoCommonInstrument",
    "PayeeContext",
    "PayerContext",
    "PaymentContext",
    "PaymentError",
    "PaymentManager",
    "PaymentModule",
    "PaymentRequest",
    "PaymentResult",
    "RefundAnswer",
    "RefundConfirmation",
    "RefundExceedsPayment",
    "RefundOrder",
    "RefundRequest",
    "RefundResult",
    "Replay",
    "UnknownAccount",
    "UnknownModule",
    "UnknownPayment",
    "Unsupported",
    "WrongBank",
    "WrongCurrency",
    "WrongPayee",
    "amount_from_wire",
    "check_idempotency_key",
    "check_refund_order",
    "confirm_refund",
    "decide_idempotency",
    "decide_refund",
    "hand_over",
    "load_modules",
    "negotiate",
    "now_of",
    "our_bank",
    "refund_payment",
    "request_digest",
    "verify_refund_confirmation",
]
