"""Pure checks and decisions over coins, spends and the ecash statements (the rules
of ``services.payment._checks`` apply to the statements: ``verify_statement`` first,
then the body, the signer, and each expected field in body order).

The bank (agents/instruments/ecash.py) calls, inside its transaction and with its
own state passed in: ``check_withdrawal`` (what a list of blinded coins is worth,
and that it is the amount), ``check_spends`` (coins brought to a deposit or an
exchange: known keys in their window, the bank's signature, the spend signature
over this contract, no coin twice), ``check_voucher_redemption`` and
``decide_double_spend``. The payee checks a proof's spends offline with the same
``check_spends`` against the denominations it verified (``verify_denomination``);
the payer and payee verify what the bank signed (``verify_withdrawn``,
``verify_deposited``, ``verify_refund_voucher``). No SQL, no clock, no I/O.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Mapping, Sequence
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from ...certificates import identity_of
from ...money import Amount
from ...statements import BadSignature, Statement, verify_ed25519
from .._checks import _expect, _from_bank, _require
from .._errors import BadConfirmation, BadRequest, WrongCurrency
from ._coins import (
    MAX_COINS,
    BlindedCoin,
    Spend,
    blinded_order,
    check_spend_signature,
    load_denomination_key,
    spend_message,
)
from ._errors import (
    BadSpend,
    BadWithdrawal,
    DoubleSpent,
    ExpiredKey,
    UnknownKey,
    VoucherExpired,
)
from ._schema import Denomination, EcashDeposited, RefundVoucher, Withdrawn

__all__ = [
    "check_exchange",
    "check_spends",
    "check_voucher_redemption",
    "check_withdrawal",
    "decide_double_spend",
    "refund_key_of",
    "verify_denomination",
    "verify_deposited",
    "verify_refund_voucher",
    "verify_withdrawn",
]

Keys = Mapping[bytes, Denomination]


@functools.lru_cache(maxsize=256)
def _rsa(der: bytes) -> rsa.RSAPublicKey:
    """A denomination's RSA key, loaded once (a deposit checks many coins of few keys)."""
    return load_denomination_key(der)


def _key(keys_by_id: Keys, key_id: bytes, currency: str | None) -> Denomination:
    key = keys_by_id.get(key_id)
    if key is None or (currency is not None and key.currency != currency):
        raise UnknownKey("no denomination key of this bank has that id"
                         + ("" if key is None else f" in {currency}"),
                         detail={"key_id": key_id.hex()})
    return key


# -- the bank: withdrawals and exchanges out --------------------------------------------


def check_withdrawal(amount: Amount, blinded: Sequence[BlindedCoin], keys_by_id: Keys,
                     now_ms: int) -> Amount:
    """What ``blinded`` (new coins to sign) is worth, refused unless it is ``amount``.

    For a withdrawal ``amount`` is the request's; for an exchange, the value brought
    in. Checked per coin, in order: the key is known in ``amount``'s currency
    (``UnknownKey``), withdraws at ``now_ms`` (``ExpiredKey``), the blinded message
    is the key's length and below its modulus (``BadWithdrawal``, field
    ``blinded``: what ``BlindSigner.sign`` would refuse, refused before any money
    moves); then the sum.

    Raises:
        BadWithdrawal: no coin or more than ``MAX_COINS`` (field ``blinded``), a
            message the key cannot sign, or a sum other than ``amount`` (field
            ``amount``, detail ``amount``, ``coins``: wire amounts).
        UnknownKey, ExpiredKey: as above; ``detail`` ``key_id`` (hex).
    """
    if not 1 <= len(blinded) <= MAX_COINS:
        raise BadWithdrawal(f"a withdrawal signs 1 to {MAX_COINS} coins",
                            detail={"field": "blinded"})
    total = 0
    for position, coin in enumerate(blinded):
        key = _key(keys_by_id, coin.key_id, amount.currency)
        if not key.withdraws_at(now_ms):
            raise ExpiredKey("the denomination key does not sign coins now",
                             detail={"key_id": coin.key_id.hex(), "now_ms": now_ms,
                                     "withdraw_from_ms": key.withdraw_from_ms,
                                     "withdraw_until_ms": key.withdraw_until_ms})
        modulus = _rsa(key.public_key).public_numbers().n
        if len(coin.blinded) != (modulus.bit_length() + 7) // 8 \
                or int.from_bytes(coin.blinded, "big") >= modulus:
            raise BadWithdrawal("a blinded message is not the key's length or not below its "
                                "modulus", detail={"field": "blinded", "index": position})
        total += key.value.minor_units
    worth = Amount(amount.currency, total)
    if worth != amount:
        raise BadWithdrawal(f"the coins asked are worth {worth}, not {amount}",
                            detail={"field": "amount", "amount": amount.to_wire(),
                                    "coins": worth.to_wire()})
    return worth


# -- the bank and the payee: coins brought in ---------------------------------------------


def check_spends(spends: Sequence[Spend], *, bank: str, payee: str, reference: bytes,
                 purpose: str, keys_by_id: Keys, now_ms: int) -> Amount:
    """What ``spends`` are worth, each checked as a valid coin of ``bank`` spent for the
    contract (``purpose``, ``bank``, ``payee``, ``reference``). Whether a coin was
    spent before is the bank's lookup (``decide_double_spend``).

    For a payment, ``payee`` is the seller and ``reference`` the order's; for an
    exchange, ``payee`` is the bank and ``reference`` ``blinded_order`` of the new
    coins. Checked in order: no coin twice in the list; then per coin its key is
    known (``UnknownKey``) and takes deposits at ``now_ms`` (``ExpiredKey``), the
    bank's RSA signature (``BadCoin``), the coin key's spend signature over this
    contract and the coin's value (``BadSpend``).

    Raises:
        BadRequest: no spend, or more than ``MAX_COINS`` (field ``spends``).
        BadSpend: a coin twice (detail ``coin_key``, ``field`` ``spends``), or a
            spend not signed for this contract.
        UnknownKey, ExpiredKey, BadCoin: as above.
        WrongCurrency: coins of several currencies.
    """
    if not 1 <= len(spends) <= MAX_COINS:
        raise BadRequest(f"1 to {MAX_COINS} coins are spent at once",
                         detail={"field": "spends"})
    seen: set[bytes] = set()
    for spend in spends:
        if spend.coin.coin_key in seen:
            raise BadSpend("the same coin is spent twice in one request",
                           detail={"coin_key": spend.coin.coin_key.hex(), "field": "spends"})
        seen.add(spend.coin.coin_key)
    currency: str | None = None
    total = 0
    for spend in spends:
        coin = spend.coin
        key = _key(keys_by_id, coin.key_id, None)
        if currency is not None and key.currency != currency:
            raise WrongCurrency(f"coins of {currency} and {key.currency} in one request",
                                detail={"expected": currency, "currency": key.currency})
        currency = key.currency
        if not key.deposits_at(now_ms):
            raise ExpiredKey("the coin's denomination key no longer takes deposits",
                             detail={"key_id": coin.key_id.hex(), "now_ms": now_ms,
                                     "deposit_until_ms": key.deposit_until_ms,
                                     "coin_key": coin.coin_key.hex()})
        coin.verify(_rsa(key.public_key))
        check_spend_signature(spend, purpose=purpose, bank=bank, payee=payee,
                              reference=reference, amount=key.value)
        total += key.value.minor_units
    assert currency is not None  # at least one spend
    return Amount(currency, total)


def decide_double_spend(spends: Sequence[Spend], spent: Mapping[bytes, Any]) -> None:
    """Refuse the first coin of ``spends`` found in ``spent`` (coin key -> the first
    spend's wire map, as the bank stored it). A deposit that repeats a stored one
    (same payee, reference and spends) is answered with the stored settlement before
    this is called.

    Raises:
        DoubleSpent: ``detail`` ``coin_key`` (hex) and ``first`` (the evidence), and
            ``spent``: every coin of ``spends`` spent before (hex, in order), so that
            a wallet learns them all at once, not one refused request per coin.
    """
    taken = [s.coin.coin_key.hex() for s in spends if s.coin.coin_key in spent]
    for spend in spends:
        first = spent.get(spend.coin.coin_key)
        if first is not None:
            raise DoubleSpent("the coin was spent before",
                              detail={"coin_key": spend.coin.coin_key.hex(), "first": first,
                                      "spent": taken})


def check_voucher_redemption(voucher: RefundVoucher, signature: bytes, *, voucher_digest: bytes,
                             bank: str, blinded: Sequence[BlindedCoin], now_ms: int) -> Amount:
    """What a refund voucher (already verified as this bank's) brings into an
    exchange: its ``amount``, if its ``refund_key`` signed the redemption of it for
    these new coins (purpose ``refund``, payee ``bank``, reference
    ``blinded_order(blinded)``) before it expired. Whether it was redeemed before
    is the bank's lookup (``VoucherUsed``).

    Raises:
        BadRequest: a voucher of another bank (field ``voucher``).
        VoucherExpired: ``now_ms`` after ``expires_ms``.
        BadSpend: the signature is not the refund key's over this redemption.
    """
    if voucher.bank != bank:
        raise BadRequest(f"a voucher of {voucher.bank} is redeemed there",
                         detail={"field": "voucher"})
    if now_ms > voucher.expires_ms:
        raise VoucherExpired("the refund voucher expired",
                             detail={"voucher": voucher_digest.hex(),
                                     "expires_ms": voucher.expires_ms, "now_ms": now_ms})
    message = spend_message(purpose="refund", bank=bank, payee=bank,
                            reference=blinded_order(blinded), amount=voucher.amount)
    try:
        verify_ed25519(voucher.refund_key, message, signature)
    except BadSignature:
        raise BadSpend("the voucher's refund key did not sign this redemption",
                       detail={"coin_key": voucher.refund_key.hex()}) from None
    return voucher.amount


def check_exchange(spends: Sequence[Spend], blinded: Sequence[BlindedCoin], *, bank: str,
                   keys_by_id: Keys, now_ms: int, voucher: RefundVoucher | None = None,
                   voucher_signature: bytes | None = None,
                   voucher_digest: bytes | None = None) -> Amount:
    """A whole ``bank.ecash_exchange``: the coins in (purpose ``exchange``, payee the
    bank, reference ``blinded_order(blinded)``) and the voucher, if any, are worth
    what ``blinded`` is worth out. Returns that value. Raises what
    ``check_spends``, ``check_voucher_redemption`` and ``check_withdrawal`` raise
    (a sum out of another value: ``BadWithdrawal``, field ``amount``)."""
    value: Amount | None = None
    if spends:
        value = check_spends(spends, bank=bank, payee=bank, reference=blinded_order(blinded),
                             purpose="exchange", keys_by_id=keys_by_id, now_ms=now_ms)
    if voucher is not None:
        if voucher_signature is None or voucher_digest is None:
            raise BadRequest("a voucher comes with its redemption signature",
                             detail={"field": "voucher_signature"})
        brought = check_voucher_redemption(voucher, voucher_signature,
                                           voucher_digest=voucher_digest, bank=bank,
                                           blinded=blinded, now_ms=now_ms)
        if value is not None and brought.currency != value.currency:
            raise WrongCurrency("a voucher and coins of other currencies",
                                detail={"expected": value.currency,
                                        "currency": brought.currency})
        value = brought if value is None else value + brought
    if value is None:
        raise BadRequest("an exchange brings coins or a voucher", detail={"field": "spends"})
    return check_withdrawal(value, blinded, keys_by_id, now_ms)


def refund_key_of(deposited: EcashDeposited) -> bytes:
    """The key a refund voucher of this deposit names: its first coin's, whose
    private key only the payer holds."""
    return deposited.coins[0]


# -- verifying what the bank signed, offline ---------------------------------------------


def _bank_says(statement: Statement, schema: Any, bank_certificate: x509.Certificate,
               trust: tuple[x509.Certificate, x509.CertificateRevocationList, dt.datetime],
               expected_bank: str | None) -> Any:
    body = _from_bank(statement, schema, bank_certificate, trust, expected_bank)
    signer = identity_of(bank_certificate).agent_id
    _require(body.bank == signer, BadConfirmation, body, "bank",
             f"names {body.bank}, signed by {signer}")
    return body


def verify_denomination(statement: Statement, *, bank_certificate: x509.Certificate,
                        root: x509.Certificate, crl: x509.CertificateRevocationList,
                        now: dt.datetime, expected_bank: str | None = None,
                        expected_currency: str | None = None) -> Denomination:
    """Check, offline, a bank's ``ecash.denomination`` (its windows are the caller's
    to compare with the time of use).

    Raises:
        StatementError, CertificateError: from ``verify_statement``.
        BadConfirmation: a malformed body, a signer not a ``bank`` (or not
            ``expected_bank``, or not the bank it names), another currency.
    """
    body: Denomination = _bank_says(statement, Denomination, bank_certificate,
                                    (root, crl, now), expected_bank)
    _expect(body, BadConfirmation, currency=expected_currency)
    return body


def verify_withdrawn(statement: Statement, *, bank_certificate: x509.Certificate,
                     root: x509.Certificate, crl: x509.CertificateRevocationList,
                     now: dt.datetime, expected_holder: str, expected_amount: Amount,
                     expected_order: bytes, expected_bank: str | None = None,
                     expected_idempotency_key: str | None = None) -> Withdrawn:
    """Check, offline, that the bank's ``ecash.withdrawn`` debits ``expected_holder``
    ``expected_amount`` for the blinded list hashing to ``expected_order``.

    Raises:
        StatementError, CertificateError: from ``verify_statement``.
        BadConfirmation: as ``verify_denomination``, or a field other than expected.
    """
    body: Withdrawn = _bank_says(statement, Withdrawn, bank_certificate, (root, crl, now),
                                 expected_bank)
    _expect(body, BadConfirmation, holder=expected_holder, amount=expected_amount,
            order=expected_order, idempotency_key=expected_idempotency_key)
    return body


def verify_deposited(statement: Statement, *, bank_certificate: x509.Certificate,
                     root: x509.Certificate, crl: x509.CertificateRevocationList,
                     now: dt.datetime, expected_payee: str, expected_amount: Amount,
                     expected_reference: bytes, expected_bank: str | None = None,
                     expected_coins: Sequence[bytes] | None = None) -> EcashDeposited:
    """Check, offline, that the bank's ``payment.ecash_deposited`` credits
    ``expected_payee`` ``expected_amount`` for ``expected_reference`` (and, when
    given, for exactly the coins ``expected_coins``, in order).

    Raises:
        StatementError, CertificateError: from ``verify_statement``.
        BadConfirmation: as ``verify_denomination``, or a field other than expected.
    """
    body: EcashDeposited = _bank_says(statement, EcashDeposited, bank_certificate,
                                      (root, crl, now), expected_bank)
    _expect(body, BadConfirmation, payee=expected_payee, amount=expected_amount,
            reference=expected_reference,
            coins=None if expected_coins is None else tuple(expected_coins))
    return body


def verify_refund_voucher(statement: Statement, *, bank_certificate: x509.Certificate,
                          root: x509.Certificate, crl: x509.CertificateRevocationList,
                          now: dt.datetime, expected_original: bytes, expected_amount: Amount,
                          expected_refund_key: bytes | None = None,
                          expected_bank: str | None = None) -> RefundVoucher:
    """Check, offline, a bank's ``ecash.refund_voucher`` for ``expected_amount`` of the
    deposit whose settlement digest is ``expected_original``.

    Raises:
        StatementError, CertificateError: from ``verify_statement``.
        BadConfirmation: as ``verify_denomination``, or a field other than expected.
    """
    body: RefundVoucher = _bank_says(statement, RefundVoucher, bank_certificate,
                                     (root, crl, now), expected_bank)
    _expect(body, BadConfirmation, original=expected_original, amount=expected_amount,
            refund_key=expected_refund_key)
    return body
