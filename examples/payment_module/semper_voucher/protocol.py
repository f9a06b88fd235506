"""The voucher protocol, sans-IO: statement bodies, wire bodies, checks and decisions.

Theory of operation. A voucher is a bearer instrument locked by a secret:

    payer -> its bank   bank.buy_voucher {order: voucher.purchase_order}
                        the order names payee, amount, reference and lock =
                        H(secret); the bank debits the payer into its own account
                        @vouchers and answers {voucher: voucher.issued,
                        bank_certificate}
    payer -> payee      payment.accept, proof {voucher, secret, bank_certificate}
    payee -> its bank   bank.redeem_voucher {voucher, secret}: the bank checks the
                        voucher is its own, current and unspent, and H(secret) is its
                        lock; moves @vouchers -> payee and answers {redemption:
                        voucher.redeemed, bank_certificate}: the settlement

The bank stores the lock, never the secret, until the voucher is redeemed, and
pays each voucher to its payee or (taken back) its payer only (``voucher.not_payee``),
and once: a second redeemer is refused ``voucher.spent``, while the
first one asking again gets the redemption it was given (a retry). A purchase is
applied once per ``(payer, idempotency_key)``; its retry carries a fresh secret (the
payer keeps none), so the bank *relocks* the voucher if it is still unspent: it signs
it again under the new lock, and the earlier voucher is ``voucher.superseded``; at
most ``MAX_RELOCKS`` times (``voucher.too_many_relocks``).

Everything here is a pure function of its arguments (no I/O, no clock of its own):
the bank's component and the payer's and payee's module call it with what they hold.
Errors are ``ServiceError`` subclasses with codes of this plugin (``voucher.*``);
what ``verify_statement`` raises (``statement.*``, ``auth.*``) passes through.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import hmac
from dataclasses import dataclass
from typing import Any, ClassVar, Final

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from semper.services import Amount, ServiceError
from semper.services.certificates import fingerprint, identity_of
from semper.services.payment import BANK_ROLE, BANK_SERVICE
from semper.services.schema import (
    AGENT,
    DIGEST,
    IDEMPOTENCY_KEY,
    MAX_INT64,
    STATEMENT,
    Body,
    Kind,
    Op,
    Schema,
    amount,
    binary,
    form,
    integer,
    wire,
)
from semper.services.statements import Statement, canonical_encode, verify_statement

__all__ = [
    "BUY",
    "MODULE",
    "PURCHASE_ORDER",
    "REDEEM",
    "REDEMPTION",
    "VOUCHER",
    "AlreadyRedeemed",
    "BadVoucher",
    "BadVoucherRequest",
    "NotPayee",
    "BuyAnswer",
    "BuyRequest",
    "PurchaseOrder",
    "Redeem",
    "RedeemAnswer",
    "RedeemRequest",
    "Redemption",
    "Spent",
    "Superseded",
    "TooManyRelocks",
    "UnknownVoucher",
    "Voucher",
    "VoucherError",
    "VoucherProof",
    "VoucherRecord",
    "WrongSecret",
    "WrongVoucherBank",
    "check_own_voucher",
    "check_purchase_order",
    "check_secret",
    "decide_purchase_retry",
    "decide_redemption",
    "issue_voucher",
    "lock_of",
    "purchase_content",
    "redeem",
    "verify_redemption",
    "verify_voucher",
    "voucher_serial",
]

#: The instrument's name: its entry points, ``--pay voucher``, the bank's hello.
MODULE: Final = "voucher"
PURCHASE_ORDER: Final = "voucher.purchase_order"
VOUCHER: Final = "voucher.issued"
REDEMPTION: Final = "voucher.redeemed"
#: Bytes of a secret: 256 bits, so that its lock cannot be searched.
SECRET_SIZE: Final = 32
MAX_REFERENCE: Final = 256
#: Relocks a purchase's retries may ask of one voucher: each costs the bank a
#: signature and an archived voucher, and brings it no money.
MAX_RELOCKS: Final = 16

_LOCK_DOMAIN: Final = b"semper-voucher-lock-v1\x00"
_SERIAL_DOMAIN: Final = b"semper-voucher-serial-v1\x00"


# -- errors -----------------------------------------------------------------------------


class VoucherError(ServiceError):
    """The root of this plugin's refusals (each goes to the peer with its code)."""

    code: ClassVar[str] = "voucher.error"


class BadVoucherRequest(VoucherError):
    """A body that is not what the op or statement type takes; ``detail`` names the
    ``type`` and ``field``."""

    code: ClassVar[str] = "voucher.bad_request"


class WrongVoucherBank(VoucherError):
    """A voucher (or order) of another bank than the one asked to act on it."""

    code: ClassVar[str] = "voucher.wrong_bank"


class BadVoucher(VoucherError):
    """A voucher or redemption that verifies but is not the one expected (another
    amount, reference, payer, lock; not signed by a bank); ``detail["field"]``."""

    code: ClassVar[str] = "voucher.bad_voucher"


class UnknownVoucher(VoucherError):
    """This bank has no voucher of that serial."""

    code: ClassVar[str] = "voucher.unknown"


class Superseded(VoucherError):
    """Its buyer's retried purchase relocked the voucher: only the newest one counts."""

    code: ClassVar[str] = "voucher.superseded"


class WrongSecret(VoucherError):
    """The secret does not open the voucher's lock."""

    code: ClassVar[str] = "voucher.wrong_secret"


class Spent(VoucherError):
    """The voucher was redeemed already, by another agent."""

    code: ClassVar[str] = "voucher.spent"


class NotPayee(VoucherError):
    """The redeemer is neither the payee the voucher names nor its payer: a secret
    that leaked pays nobody else."""

    code: ClassVar[str] = "voucher.not_payee"


class TooManyRelocks(VoucherError):
    """The purchase's retries relocked its voucher ``MAX_RELOCKS`` times already."""

    code: ClassVar[str] = "voucher.too_many_relocks"


# -- bodies -----------------------------------------------------------------------------


def _load_certificate(value: Any) -> x509.Certificate:
    if type(value) is not bytes:
        raise ValueError("a certificate is DER bytes")
    return x509.load_der_x509_certificate(value)  # ValueError for anything else


def _der(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.DER)


#: A certificate, DER on the wire.
CERTIFICATE: Final = Kind("a DER certificate", lambda v: isinstance(v, x509.Certificate),
                          decode=_load_certificate, encode=_der)

#: The kind of each wire key: a key means the same in every body of this plugin.
SCHEMA: Final = Schema(BadVoucherRequest, {
    "payer": AGENT, "payee": AGENT, "bank": AGENT,
    "amount": amount(MAX_INT64),
    "reference": binary(1, MAX_REFERENCE),
    "lock": DIGEST, "order": DIGEST, "voucher": DIGEST,
    "idempotency_key": IDEMPOTENCY_KEY,
    "serial": form(r"[0-9a-f]{32}", "32 lowercase hex digits", 32),
    "entry": integer(0, MAX_INT64, "a journal entry"),
    "secret": binary(SECRET_SIZE, SECRET_SIZE),
    "bank_certificate": CERTIFICATE,
    "redemption": STATEMENT,
})

#: A statement carried whole under a key that names a digest in the statement bodies.
_QUOTED: Final = wire(STATEMENT)


@dataclass(frozen=True, slots=True, kw_only=True)
class PurchaseOrder(Body):
    """``voucher.purchase_order``, signed by ``payer``: sell me a voucher worth
    ``amount`` for ``reference`` to pay ``payee``, locked by ``lock``
    (``lock_of(secret)``)."""

    TYPE: ClassVar[str] = PURCHASE_ORDER
    SCHEMA: ClassVar[Schema] = SCHEMA

    payer: str
    payee: str
    bank: str
    amount: Amount
    reference: bytes
    lock: bytes
    idempotency_key: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Voucher(Body):
    """``voucher.issued``, signed by ``bank``: ``amount`` is held for ``payee`` (or
    back for ``payer``) holding the secret behind ``lock``; ``order`` is the digest of
    the purchase order it answers (the first one: a retry is answered under the first
    order), ``entry`` the sale."""

    TYPE: ClassVar[str] = VOUCHER
    SCHEMA: ClassVar[Schema] = SCHEMA

    serial: str
    bank: str
    payer: str
    payee: str
    amount: Amount
    reference: bytes
    lock: bytes
    order: bytes
    entry: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Redemption(Body):
    """``voucher.redeemed``, signed by the bank: the voucher of digest ``voucher``
    was paid to ``payee`` as journal entry ``entry``. The settlement of the payment."""

    TYPE: ClassVar[str] = REDEMPTION
    SCHEMA: ClassVar[Schema] = SCHEMA

    voucher: bytes
    serial: str
    payer: str
    payee: str
    amount: Amount
    reference: bytes
    entry: int


@dataclass(frozen=True, slots=True, kw_only=True)
class BuyRequest(Body):
    """``bank.buy_voucher`` request."""

    TYPE: ClassVar[str] = "bank.buy_voucher"
    SCHEMA: ClassVar[Schema] = SCHEMA

    order: Statement = dataclasses.field(metadata=_QUOTED)


@dataclass(frozen=True, slots=True, kw_only=True)
class BuyAnswer(Body):
    """``bank.buy_voucher`` response: the voucher and the certificate that signed it."""

    TYPE: ClassVar[str] = "bank.buy_voucher answer"
    SCHEMA: ClassVar[Schema] = SCHEMA

    voucher: Statement = dataclasses.field(metadata=_QUOTED)
    bank_certificate: x509.Certificate


@dataclass(frozen=True, slots=True, kw_only=True)
class VoucherProof(Body):
    """The proof a payer hands over in ``payment.accept``: the voucher and its secret."""

    TYPE: ClassVar[str] = "voucher proof"
    SCHEMA: ClassVar[Schema] = SCHEMA

    voucher: Statement = dataclasses.field(metadata=_QUOTED)
    secret: bytes
    bank_certificate: x509.Certificate


@dataclass(frozen=True, slots=True, kw_only=True)
class RedeemRequest(Body):
    """``bank.redeem_voucher`` request."""

    TYPE: ClassVar[str] = "bank.redeem_voucher"
    SCHEMA: ClassVar[Schema] = SCHEMA

    voucher: Statement = dataclasses.field(metadata=_QUOTED)
    secret: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class RedeemAnswer(Body):
    """``bank.redeem_voucher`` response: the redemption, signed by the bank."""

    TYPE: ClassVar[str] = "bank.redeem_voucher answer"
    SCHEMA: ClassVar[Schema] = SCHEMA

    redemption: Statement
    bank_certificate: x509.Certificate


#: The two ops this instrument adds to the ``bank`` service.
BUY: Final = Op(BANK_SERVICE, "buy_voucher", BuyRequest, BuyAnswer)
REDEEM: Final = Op(BANK_SERVICE, "redeem_voucher", RedeemRequest, RedeemAnswer)


# -- derived values ---------------------------------------------------------------------


def lock_of(secret: bytes) -> bytes:
    """The lock a secret opens: SHA-256 over a domain prefix and the secret."""
    return hashlib.sha256(_LOCK_DOMAIN + secret).digest()


def voucher_serial(payer: str, idempotency_key: str) -> str:
    """The serial of the voucher ``payer`` buys under ``idempotency_key``: 32 hex
    digits, the same for a retry, unique per payer and key."""
    data = _SERIAL_DOMAIN + canonical_encode([payer, idempotency_key])
    return hashlib.sha256(data).hexdigest()[:32]


def purchase_content(order: PurchaseOrder) -> dict[str, Any]:
    """What a purchase's idempotency covers: the order without its lock, which a retry
    renews (the payer keeps no secret between calls)."""
    content = order.to_wire()
    del content["lock"]
    return content


# -- the bank ---------------------------------------------------------------------------

Trust = tuple[x509.Certificate, x509.CertificateRevocationList, dt.datetime]


def _fail(error: type[VoucherError], body: Body, field: str, why: str) -> VoucherError:
    return error(f"{body.TYPE}: {why}", detail={"type": body.TYPE, "field": field})


def check_purchase_order(order: Statement, *, payer_certificate: x509.Certificate,
                         trust: Trust, bank_id: str, requester: str) -> PurchaseOrder:
    """The bank's check of a ``bank.buy_voucher`` order from channel peer ``requester``.

    Raises:
        StatementError, CertificateError: from ``verify_statement``.
        BadVoucherRequest: a malformed body, or signed by (or naming as payer) another
            agent than ``requester``.
        WrongVoucherBank: the order is for another bank.
    """
    root, crl, now = trust
    signer = verify_statement(order, certificate=payer_certificate, root=root, crl=crl,
                              now=now, expected_type=PURCHASE_ORDER)
    body = PurchaseOrder.from_statement(order)
    if signer.agent_id != requester or body.payer != requester:
        raise _fail(BadVoucherRequest, body, "payer", f"not signed by its payer {requester}")
    if body.bank != bank_id:
        raise _fail(WrongVoucherBank, body, "bank", f"an order for {body.bank}, not {bank_id}")
    return body


def issue_voucher(order: Statement, body: PurchaseOrder, *, serial: str, entry: int) -> Voucher:
    """The voucher the bank signs for a checked order, sold as journal ``entry``."""
    return Voucher(serial=serial, bank=body.bank, payer=body.payer, payee=body.payee,
                   amount=body.amount, reference=body.reference, lock=body.lock,
                   order=order.digest, entry=entry)


@dataclass(frozen=True, slots=True, kw_only=True)
class VoucherRecord:
    """The bank's row of one voucher: the current voucher's digest and lock, how many
    times retries relocked it, and once redeemed who redeemed it and the
    redemption's canonical bytes."""

    serial: str
    digest: bytes
    lock: bytes
    redeemer: str | None = None
    answer: bytes | None = None
    relocks: int = 0


def decide_purchase_retry(record: VoucherRecord, lock: bytes) -> bool:
    """Whether a retried purchase relocks its voucher (True) or gets the current
    one (False): relock only one that is unspent and under another lock.

    Raises:
        TooManyRelocks: it was relocked ``MAX_RELOCKS`` times already (each relock
            is a signature and an archived voucher for no money).
    """
    if record.redeemer is not None or hmac.compare_digest(record.lock, lock):
        return False
    if record.relocks >= MAX_RELOCKS:
        raise TooManyRelocks(f"voucher {record.serial} was relocked {record.relocks} "
                             "times already", detail={"serial": record.serial,
                                                      "limit": MAX_RELOCKS})
    return True


def check_own_voucher(voucher: Statement, *, trust: Trust,
                      bank_certificate: x509.Certificate,
                      stored: bytes | None = None) -> Voucher:
    """The bank's check that a voucher presented for redemption is its own.

    ``stored`` is the digest the bank's table holds for the voucher's serial (None:
    none, or not looked up). A voucher signed by an earlier certificate of the bank
    (renewed since) cannot be verified with the current one; it is the bank's own if
    it is, byte for byte (signature included), the voucher the bank stored.

    Raises:
        WrongVoucherBank: another signer, and not the voucher stored (checked first:
            it costs no signature).
        StatementError, CertificateError: from ``verify_statement`` (a tampered voucher
            is ``statement.bad_signature``).
        BadVoucherRequest: a malformed body.
    """
    root, crl, now = trust
    bank_id = identity_of(bank_certificate).agent_id
    if voucher.signer == fingerprint(bank_certificate):
        verify_statement(voucher, certificate=bank_certificate, root=root, crl=crl,
                         now=now, expected_type=VOUCHER)
    elif (stored is None or voucher.type != VOUCHER
          or not hmac.compare_digest(stored, voucher.digest)):
        raise WrongVoucherBank(f"the voucher was not issued by {bank_id}",
                               detail={"type": VOUCHER, "field": "signer"})
    body = Voucher.from_statement(voucher)
    if body.bank != bank_id:
        raise _fail(WrongVoucherBank, body, "bank", f"names {body.bank}, not {bank_id}")
    return body


@dataclass(frozen=True, slots=True)
class Redeem:
    """Decision: pay the voucher to the redeemer now."""


@dataclass(frozen=True, slots=True)
class AlreadyRedeemed:
    """Decision: the redeemer asks again; answer with the redemption it was given."""

    answer: bytes


def decide_redemption(digest: bytes, body: Voucher, *, record: VoucherRecord | None,
                      redeemer: str, secret: bytes) -> Redeem | AlreadyRedeemed:
    """Whether the voucher of ``digest`` is paid to ``redeemer`` holding ``secret``.

    A spent voucher is refused before its secret is looked at: once spent, the
    secret opens nothing, and its first redeemer's retry needs no secret to get the
    answer it was given.

    Raises:
        NotPayee: ``redeemer`` is neither the voucher's payee nor its payer.
        UnknownVoucher: no record of it (never sold here).
        Spent: redeemed already, by another agent.
        Superseded: its buyer relocked it since.
        WrongSecret: ``secret`` does not open its lock.
    """
    if redeemer not in (body.payee, body.payer):
        raise NotPayee(f"voucher {body.serial} pays {body.payee}, not {redeemer}",
                       detail={"serial": body.serial})
    if record is None or record.serial != body.serial:
        raise UnknownVoucher(f"no voucher {body.serial} at this bank",
                             detail={"serial": body.serial})
    if record.redeemer is not None:
        if record.redeemer == redeemer and record.answer is not None:
            return AlreadyRedeemed(record.answer)
        raise Spent(f"voucher {body.serial} was redeemed already", detail={"serial": body.serial})
    if not hmac.compare_digest(record.digest, digest):
        raise Superseded(f"voucher {body.serial} was relocked by its buyer since",
                         detail={"serial": body.serial})
    check_secret(body, secret)
    return Redeem()


def check_secret(body: Voucher, secret: bytes) -> None:
    """Raises WrongSecret unless ``secret`` opens the voucher's lock."""
    if not hmac.compare_digest(lock_of(secret), body.lock):
        raise WrongSecret(f"the secret does not open voucher {body.serial}",
                          detail={"serial": body.serial})


def redeem(voucher: Statement, body: Voucher, *, redeemer: str, entry: int) -> Redemption:
    """The redemption the bank signs once it paid ``redeemer``."""
    return Redemption(voucher=voucher.digest, serial=body.serial, payer=body.payer,
                      payee=redeemer, amount=body.amount, reference=body.reference,
                      entry=entry)


# -- payer and payee: verifying what the bank signed -----------------------------------


def _from_bank(statement: Statement, schema: type[Voucher] | type[Redemption],
               bank_certificate: x509.Certificate, trust: Trust,
               expected_bank: str | None) -> Any:
    root, crl, now = trust
    signer = verify_statement(statement, certificate=bank_certificate, root=root, crl=crl,
                              now=now, expected_type=schema.TYPE)
    body = schema.from_statement(statement)
    if expected_bank is not None and signer.agent_id != expected_bank:
        raise WrongVoucherBank(f"{schema.TYPE} signed by {signer.agent_id}, not by "
                               f"{expected_bank}", detail={"type": schema.TYPE,
                                                           "field": "signer"})
    if signer.role != BANK_ROLE:
        raise _fail(BadVoucher, body, "signer", f"signed by {signer.agent_id}, not a bank")
    return body


def _expect(body: Body, **expected: object) -> None:
    for name, wanted in expected.items():
        if wanted is not None and getattr(body, name) != wanted:
            raise _fail(BadVoucher, body, name, f"{name} is not the one expected")


def verify_voucher(voucher: Statement, *, bank_certificate: x509.Certificate, trust: Trust,
                   expected_bank: str | None = None, expected_payer: str | None = None,
                   expected_payee: str | None = None,
                   expected_amount: Amount | None = None,
                   expected_reference: bytes | None = None,
                   expected_lock: bytes | None = None) -> Voucher:
    """Check, offline, a voucher signed by a bank (the payer after buying, the payee
    before redeeming); None: not checked.

    Raises:
        StatementError, CertificateError: from ``verify_statement``.
        BadVoucherRequest: a malformed body.
        WrongVoucherBank: signed by another bank than ``expected_bank``.
        BadVoucher: not signed by a bank, or by another than the bank it names, or a
            field other than expected (``detail["field"]``).
    """
    body: Voucher = _from_bank(voucher, Voucher, bank_certificate, trust, expected_bank)
    _expect(body, bank=identity_of(bank_certificate).agent_id, payer=expected_payer,
            payee=expected_payee, amount=expected_amount, reference=expected_reference,
            lock=expected_lock)
    return body


def verify_redemption(redemption: Statement, *, bank_certificate: x509.Certificate,
                      trust: Trust, expected_voucher: bytes, expected_payee: str,
                      expected_amount: Amount, expected_bank: str) -> Redemption:
    """Check, offline, that ``expected_bank`` paid the voucher of digest
    ``expected_voucher`` to ``expected_payee``: the settlement both sides keep.

    Raises as ``verify_voucher``."""
    body: Redemption = _from_bank(redemption, Redemption, bank_certificate, trust,
                                  expected_bank)
    _expect(body, voucher=expected_voucher, payee=expected_payee, amount=expected_amount)
    return body
