"""Why an ecash payment, withdrawal or exchange was refused: the codes only this
instrument raises (codes are API). ``BadCoinSignature`` and ``BadBlindMessage`` are
the names the blind-signature layer (``_blind``) raises under: a coin whose RSA
signature fails is a bad coin, a blinded message the bank cannot sign is a bad
withdrawal, so each code stays one class."""

from __future__ import annotations

from typing import ClassVar

from .._errors import PaymentError

__all__ = ["BadBlindMessage", "BadBlindSignature", "BadCoin", "BadCoinSignature", "BadSpend",
           "BadWithdrawal", "DoubleSpent", "EcashError", "ExpiredKey", "InsufficientCoins",
           "UnknownKey", "VoucherExpired", "VoucherUsed"]


class EcashError(PaymentError):
    """An ecash refusal; subclasses name the reason."""

    code: ClassVar[str] = "ecash.error"


class BadCoin(EcashError):
    """A coin that is malformed or whose bank signature (RSA-PSS over its prefix and
    message, under its denomination key) does not verify; ``detail`` ``coin_key``
    (hex) when the coin parsed, ``field`` when it did not."""

    code: ClassVar[str] = "ecash.bad_coin"


#: What ``_blind.verify`` raises: a coin signature that does not verify is a bad coin.
BadCoinSignature = BadCoin


class BadSpend(EcashError):
    """A spend whose coin-key signature does not verify over the contract it is
    checked against (purpose, bank, payee, reference, the coin's value): a spend
    made for another payment, payee or bank; or a coin twice in one request;
    ``detail`` ``coin_key`` (hex)."""

    code: ClassVar[str] = "ecash.bad_spend"


class DoubleSpent(EcashError):
    """A coin the bank saw spent before under another contract; ``detail``
    ``coin_key`` (hex), ``first`` (the first spend's wire map): the evidence."""

    code: ClassVar[str] = "ecash.double_spent"


class ExpiredKey(EcashError):
    """A denomination key outside the window asked of it: a withdrawal or exchange
    to a key not withdrawing now, a coin deposited after its key's
    ``deposit_until_ms``; ``detail`` ``key_id`` (hex), ``now_ms``."""

    code: ClassVar[str] = "ecash.expired_key"


class UnknownKey(EcashError):
    """A denomination key id this bank never published (or not in the currency
    asked); ``detail`` ``key_id`` (hex)."""

    code: ClassVar[str] = "ecash.unknown_key"


class BadWithdrawal(EcashError):
    """A withdrawal or exchange that does not add up or cannot be signed: values of
    the keys named other than the amount (or the value brought in), no or more than
    64 coins, keys of several currencies, a blinded message of the wrong length or
    not below the key's modulus; ``detail`` ``field``."""

    code: ClassVar[str] = "ecash.bad_withdrawal"


#: What ``BlindSigner.sign`` raises for a blinded message it cannot sign.
BadBlindMessage = BadWithdrawal


class BadBlindSignature(EcashError):
    """A blind signature that does not unblind to a valid signature on the coin
    (the bank signed under another key, or answered garbage): the wallet's check
    (RFC 9474 Finalize)."""

    code: ClassVar[str] = "ecash.bad_blind_signature"


class VoucherUsed(EcashError):
    """A refund voucher redeemed before (a voucher becomes coins once); ``detail``
    ``voucher`` (hex digest)."""

    code: ClassVar[str] = "ecash.voucher_used"


class VoucherExpired(EcashError):
    """A refund voucher redeemed after its ``expires_ms``; ``detail`` ``voucher``
    (hex digest), ``expires_ms``, ``now_ms``."""

    code: ClassVar[str] = "ecash.voucher_expired"


class InsufficientCoins(EcashError):
    """The wallet holds too few coins of the currency for the amount (local, the
    payer's); ``detail`` ``amount``, ``held`` (wire amounts)."""

    code: ClassVar[str] = "ecash.insufficient_coins"
