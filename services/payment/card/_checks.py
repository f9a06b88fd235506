"""Pure checks and decisions of the card instrument (the order of
``services.payment._checks``: ``verify_statement`` first, its ``statement.*`` and
``auth.*`` errors unchanged; then the body; then the signer; then each field).

    cardholder  check_gateway_key before sealing to it; verify_captured
    merchant    check_card_proof (the OI is its order, the dual signature binds it),
                verify_authorization, verify_captured
    gateway     check_authorize (opens the PI, recomputes PIMD, checks the dual
                signature with the merchant's OIMD, and the PI against the request),
                decide_authorization (with its card record and balance passed in),
                authorize (the body it signs); decide_capture, capture
"""

from __future__ import annotations

import calendar
import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import x25519

from ...certificates import AgentIdentity, identity_of
from ...money import Amount
from ...statements import Statement
from .._checks import BANK_ROLE, _cover, _from_bank, _ms, _verified
from .._errors import BadConfirmation, BadRequest, InsufficientFunds, WrongCurrency
from .._modules import Invoice
from ._errors import (
    BadDualSignature,
    BadGatewayKey,
    BadInstructions,
    Declined,
    ExpiredCard,
    OverAuthorized,
    UnknownAuthorization,
    UnknownCard,
)
from ._schema import (
    Authorization,
    CardCaptured,
    DualSignature,
    GatewayKey,
    OrderInformation,
    PaymentInstructions,
)
from ._set import authorization_id_of, oimd_of, open_instructions, pimd_of, pomd_of
from ._wire import AuthorizeRequest, CardProof

__all__ = [
    "Authorizing",
    "CardOrder",
    "authorize",
    "capture",
    "card_expired",
    "check_authorize",
    "check_card_proof",
    "check_gateway_key",
    "decide_authorization",
    "decide_capture",
    "verify_authorization",
    "verify_captured",
    "verify_dual_signature",
]


def _fail(error: type[Any], body_type: str, field: str, why: str, **detail: Any) -> Any:
    return error(f"{body_type}: {why}", detail={"type": body_type, "field": field, **detail})


# -- the gateway key ------------------------------------------------------------------

def check_gateway_key(statement: Statement, *, bank_certificate: x509.Certificate,
                      root: x509.Certificate, crl: x509.CertificateRevocationList,
                      now: dt.datetime, expected_bank: str) -> GatewayKey:
    """The cardholder's check before sealing: ``expected_bank`` (its card's bank)
    signed it as a bank, for itself, and it has not expired.

    Raises:
        StatementError, CertificateError: from ``verify_statement``.
        BadGatewayKey: a malformed body, a signer not a bank or not ``expected_bank``
            (``field`` ``signer``), another bank named (``bank``), expired
            (``expires_ms``).
    """
    # _verified's bound is PaymentBody (payer, payee); a card body is a plain Body.
    key, signer = _verified(statement, GatewayKey, bank_certificate,  # type: ignore[type-var]
                            (root, crl, now), BadGatewayKey)
    if signer.role != BANK_ROLE or signer.agent_id != expected_bank:
        raise _fail(BadGatewayKey, key.TYPE, "signer",
                    f"signed by {signer.agent_id} (role {signer.role}), not by {expected_bank}")
    if key.bank != signer.agent_id:
        raise _fail(BadGatewayKey, key.TYPE, "bank", "names another bank than its signer")
    if _ms(now) > key.expires_ms:
        raise _fail(BadGatewayKey, key.TYPE, "expires_ms", "the gateway key has expired")
    return key


# -- the dual signature ---------------------------------------------------------------

def verify_dual_signature(dual: Statement, *, certificate: x509.Certificate,
                          root: x509.Certificate, crl: x509.CertificateRevocationList,
                          now: dt.datetime, pimd: bytes | None, oimd: bytes,
                          expected_signer: str | None = None
                          ) -> tuple[DualSignature, AgentIdentity]:
    """Check the cardholder's ``card.dual_signature`` against the digest of the half
    we hold (``oimd`` always: the merchant computes it from the OI, the gateway is
    handed it) and, when known, ``pimd`` (the merchant is handed it; the gateway
    recomputes it after opening the PI and passes None here, then compares).

    Raises:
        StatementError, CertificateError: from ``verify_statement``.
        BadDualSignature: a malformed body; ``pomd`` not SHA-256(pimd || oimd);
            ``oimd``/``pimd`` not ours; a signer other than ``expected_signer``
            (``field`` ``signer``).
    """
    body, signer = _verified(dual, DualSignature, certificate,  # type: ignore[type-var]
                             (root, crl, now), BadDualSignature)
    if body.pomd != pomd_of(body.pimd, body.oimd):
        raise _fail(BadDualSignature, body.TYPE, "pomd", "pomd is not SHA-256(pimd || oimd)")
    if body.oimd != oimd:
        raise _fail(BadDualSignature, body.TYPE, "oimd", "signs another order information")
    if pimd is not None and body.pimd != pimd:
        raise _fail(BadDualSignature, body.TYPE, "pimd", "signs other payment instructions")
    if expected_signer is not None and signer.agent_id != expected_signer:
        raise _fail(BadDualSignature, body.TYPE, "signer",
                    f"signed by {signer.agent_id}, not by the payer {expected_signer}")
    return body, signer


# -- the merchant ---------------------------------------------------------------------

@dataclass(frozen=True, slots=True, kw_only=True)
class CardOrder:
    """A card proof the merchant accepted: its OI, the OIMD it computed, the PIMD it
    was handed, and the cardholder (the dual signature's signer)."""

    oi: OrderInformation
    oimd: bytes
    pimd: bytes
    cardholder: str


def check_card_proof(proof: CardProof, *, invoice: Invoice, merchant: str,
                     root: x509.Certificate, crl: x509.CertificateRevocationList,
                     now: dt.datetime) -> CardOrder:
    """The merchant's check of a ``card`` proof before it asks for an authorisation:
    the OI is for us, for the invoice's order and amount; the dual signature binds
    this OI (its OIMD, computed here) and the PIMD handed with it, signed by the
    invoice's payer.

    Raises:
        BadRequest: the OI names another ``merchant``, ``order`` or ``amount``.
        StatementError, CertificateError, BadDualSignature: from
            ``verify_dual_signature``.
    """
    oi = proof.oi
    for field, got, wanted in (("merchant", oi.merchant, merchant),
                               ("order", oi.order, invoice.reference),
                               ("amount", oi.amount, invoice.amount)):
        if got != wanted:
            raise _fail(BadRequest, oi.TYPE, field, f"{field} is not the one expected")
    oimd = oimd_of(oi)
    _, signer = verify_dual_signature(proof.dual, certificate=proof.cardholder_certificate,
                                      root=root, crl=crl, now=now, pimd=proof.pimd, oimd=oimd,
                                      expected_signer=invoice.payer)
    return CardOrder(oi=oi, oimd=oimd, pimd=proof.pimd, cardholder=signer.agent_id)


# -- the gateway ----------------------------------------------------------------------

@dataclass(frozen=True, slots=True, kw_only=True)
class Authorizing:
    """A ``bank.card_authorize`` the gateway checked: the opened PI, its PIMD, the
    order's OIMD, the cardholder (the dual signature's signer), the merchant (the
    requester) and the authorisation's id."""

    pi: PaymentInstructions
    pimd: bytes
    oimd: bytes
    cardholder: str
    merchant: str
    authorization_id: str


def check_authorize(request: AuthorizeRequest, *, merchant: str,
                    private_keys: Sequence[x25519.X25519PrivateKey],
                    root: x509.Certificate, crl: x509.CertificateRevocationList,
                    now: dt.datetime) -> Authorizing:
    """The gateway's check of ``bank.card_authorize`` from channel peer ``merchant``:
    the dual signature verifies for the request's OIMD; the sealed PI opens under one
    of our keys for that OIMD; its recomputed PIMD is the signed one; it names this
    merchant, this order and the amount asked. Whether the card pays is
    ``decide_authorization``'s question.

    Raises:
        StatementError, CertificateError: from ``verify_statement``.
        BadDualSignature: from ``verify_dual_signature``; ``pimd`` when the PI opened
            is not the one signed.
        BadInstructions: the PI does not open for this OIMD (``sealed_pi``), is
            malformed (a field; ``number`` fails Luhn), or names another ``order``,
            ``merchant`` or ``amount`` than the request (a merchant that altered the
            amount is refused here).
    """
    dual, signer = verify_dual_signature(request.dual,
                                         certificate=request.cardholder_certificate,
                                         root=root, crl=crl, now=now, pimd=None,
                                         oimd=request.oimd)
    pi = open_instructions(request.sealed_pi, private_keys=private_keys, oimd=request.oimd)
    pimd = pimd_of(pi)
    if pimd != dual.pimd:
        raise _fail(BadDualSignature, dual.TYPE, "pimd", "signs other payment instructions")
    for field, got, wanted in (("order", pi.order, request.oimd),
                               ("merchant", pi.merchant, merchant),
                               ("amount", pi.amount, request.amount)):
        if got != wanted:
            raise _fail(BadInstructions, pi.TYPE, field,
                        f"the instructions name another {field} than the request")
    return Authorizing(pi=pi, pimd=pimd, oimd=request.oimd, cardholder=signer.agent_id,
                       merchant=merchant,
                       authorization_id=authorization_id_of(merchant, request.oimd))


def card_expired(expiry: str, now_ms: int) -> bool:
    """Whether a card valid through month ``expiry`` ("YYYY-MM", UTC) has expired at
    ``now_ms``: from the first millisecond of the next month on."""
    year, month = int(expiry[:4]), int(expiry[5:7])
    year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    if year > 9999:
        return False
    return now_ms >= calendar.timegm((year, month, 1, 0, 0, 0)) * 1000


def decide_authorization(checked: Authorizing, *, holder: str | None, expiry: str | None,
                         now_ms: int, balance: Amount | None) -> None:
    """Whether the gateway holds ``checked.pi.amount`` on the card, given its record
    (``holder`` and ``expiry`` of the card with the PI's number; None: no such card)
    and the holder's ``balance`` in the amount's currency (None: no account).

    The merchant reads (and passes on) every refusal: none names anything of the
    card (its expiry, its account's currency or balance) that the PI alone held.

    Raises (in this order):
        UnknownCard: no such card, or another holder than the dual signature's
            signer, or another expiry than the PI's (one code: a guess learns nothing).
        ExpiredCard: the card's month is over (no detail).
        Declined: the balance does not cover the amount, or the account is of
            another currency (not named).
    """
    pi = checked.pi
    if holder is None or expiry is None or holder != checked.cardholder or expiry != pi.expiry:
        raise UnknownCard("no such card for this cardholder",
                          detail={"type": pi.TYPE, "field": "number"})
    if card_expired(expiry, now_ms):
        raise ExpiredCard("the card has expired")
    if balance is None:
        raise Declined("the card's account does not cover the amount",
                       detail={"amount": pi.amount.to_wire()})
    try:
        _cover(pi.amount, balance)
    except (InsufficientFunds, WrongCurrency):
        raise Declined("the card's account does not cover the amount",
                       detail={"amount": pi.amount.to_wire()}) from None


def authorize(checked: Authorizing, *, bank: str, expires_ms: int) -> Authorization:
    """The body the gateway signs once it held the amount."""
    return Authorization(bank=bank, merchant=checked.merchant, amount=checked.pi.amount,
                         oimd=checked.oimd, authorization_id=checked.authorization_id,
                         expires_ms=expires_ms)


def decide_capture(authorization: Authorization, *, requester: str, amount: Amount,
                   captured: Amount, now_ms: int, closed: bool = False) -> Amount:
    """Whether ``requester`` may capture ``amount`` of ``authorization`` of which
    ``captured`` was captured already; ``closed``: the rest of the hold went back.

    Returns:
        The total captured once this capture is applied.

    Raises (in this order):
        UnknownAuthorization: the requester is not its merchant, or it expired or
            was closed (a stranger learns nothing of it); ``detail``
            ``authorization_id``.
        WrongCurrency: ``amount`` in another currency.
        OverAuthorized: more than what remains.
    """
    ident = {"authorization_id": authorization.authorization_id}
    if requester != authorization.merchant or closed or now_ms > authorization.expires_ms:
        raise UnknownAuthorization("no open authorisation of this id for the requester",
                                   detail=ident)
    if amount.currency != authorization.amount.currency or \
            captured.currency != authorization.amount.currency:
        raise WrongCurrency(f"a capture in {amount.currency} of an authorisation in "
                            f"{authorization.amount.currency}",
                            detail={"expected": authorization.amount.currency,
                                    "currency": amount.currency})
    remaining = authorization.amount - captured
    if amount > remaining:
        raise OverAuthorized(f"{amount} asked, {remaining} of {authorization.amount} remains",
                             detail={**ident, "authorized": authorization.amount.to_wire(),
                                     "captured": captured.to_wire(),
                                     "requested": amount.to_wire()})
    return captured + amount


def capture(authorization: Authorization, *, amount: Amount, entry: int) -> CardCaptured:
    """The body the bank signs after moving ``amount`` of the hold to the merchant."""
    return CardCaptured(bank=authorization.bank, merchant=authorization.merchant, amount=amount,
                        oimd=authorization.oimd,
                        authorization_id=authorization.authorization_id, entry=entry)


# -- verifying the gateway's statements offline -----------------------------------------

def _expect(body: Any, **expected: object) -> None:
    for name, wanted in expected.items():
        if wanted is not None and getattr(body, name) != wanted:
            raise _fail(BadConfirmation, body.TYPE, name, f"{name} is not the one expected")


def verify_authorization(statement: Statement, *, bank_certificate: x509.Certificate,
                         root: x509.Certificate, crl: x509.CertificateRevocationList,
                         now: dt.datetime, expected_merchant: str, expected_amount: Amount,
                         expected_oimd: bytes, expected_bank: str | None = None
                         ) -> Authorization:
    """The merchant's check of the gateway's ``card.authorization``.

    Raises:
        StatementError, CertificateError: from ``verify_statement``.
        BadConfirmation: a malformed body, a signer not a bank (or not
            ``expected_bank``), or a field other than expected; ``detail["field"]``.
    """
    body = _from_bank(statement, Authorization, bank_certificate, (root, crl, now),  # type: ignore[type-var]
                      expected_bank)
    _expect(body, merchant=expected_merchant, amount=expected_amount, oimd=expected_oimd)
    if body.bank != identity_of(bank_certificate).agent_id:
        raise _fail(BadConfirmation, body.TYPE, "bank", "names another bank than its signer")
    return body


def verify_captured(statement: Statement, *, bank_certificate: x509.Certificate,
                    root: x509.Certificate, crl: x509.CertificateRevocationList,
                    now: dt.datetime, expected_merchant: str, expected_amount: Amount,
                    expected_oimd: bytes | None = None,
                    expected_authorization_id: str | None = None,
                    expected_bank: str | None = None) -> CardCaptured:
    """Check, offline, the bank's ``payment.card_captured`` (the settlement): both the
    merchant and the cardholder (who knows its OIMD) do.

    Raises:
        StatementError, CertificateError: from ``verify_statement``.
        BadConfirmation: as ``verify_authorization``.
    """
    body = _from_bank(statement, CardCaptured, bank_certificate, (root, crl, now),  # type: ignore[type-var]
                      expected_bank)
    _expect(body, merchant=expected_merchant, amount=expected_amount, oimd=expected_oimd,
            authorization_id=expected_authorization_id)
    if body.bank != identity_of(bank_certificate).agent_id:
        raise _fail(BadConfirmation, body.TYPE, "bank", "names another bank than its signer")
    return body

