"""The bodies of the ecash ``bank`` ops and the ``ecash`` proof, typed
(docs/protocol.md 8.7)::

    bank.ecash_keys     {"currency": str}
                     -> {"denominations": [statement, ...],   # ecash.denomination
                         "bank_certificate": bin}
    bank.ecash_withdraw {"amount": Amount, "blinded": [{"key_id", "blinded"}, ...],
                         "idempotency_key": str}
                     -> {"withdrawn": statement,               # ecash.withdrawn
                         "blind_signatures": [bin(256), ...], "bank_certificate": bin}
    bank.ecash_deposit  {"spends": [Spend, ...], "reference": bin, "amount": Amount,
                         "idempotency_key": str}
                     -> {"deposited": statement,               # payment.ecash_deposited
                         "bank_certificate": bin}
    bank.ecash_exchange {"spends": [Spend, ...], "voucher"?: statement,
                         "voucher_signature"?: bin(64), "blinded": [...],
                         "idempotency_key": str}
                     -> {"blind_signatures": [bin(256), ...], "bank_certificate": bin}

    payment.accept proof of module ecash: {"spends": [Spend, ...]}

A body that is not the defined map is ``payment.bad_request`` (detail ``type``,
``field``, and ``cause`` for a bad coin or spend inside a list).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final

from cryptography import x509

from ..._schema import IDEMPOTENCY_KEY, STATEMENT_AS_IS, Body, Kind, Schema, binary, wire
from ...money import Amount
from ...statements import Statement
from .._wire import CERTIFICATE
from ._coins import MAX_COINS, RSA_BYTES, SPEND_SIGNATURE_SIZE, BlindedCoin, Spend
from ._schema import SCHEMA

__all__ = ["BANK_ECASH_DEPOSIT", "BANK_ECASH_EXCHANGE", "BANK_ECASH_KEYS", "BANK_ECASH_WITHDRAW",
           "MAX_DENOMINATIONS", "DepositAnswer", "DepositRequest", "EcashProof",
           "ExchangeAnswer", "ExchangeRequest", "KeysAnswer", "KeysRequest", "WithdrawAnswer",
           "WithdrawRequest"]

BANK_ECASH_KEYS: Final = "ecash_keys"
BANK_ECASH_WITHDRAW: Final = "ecash_withdraw"
BANK_ECASH_DEPOSIT: Final = "ecash_deposit"
BANK_ECASH_EXCHANGE: Final = "ecash_exchange"

#: Denomination statements in one ``bank.ecash_keys`` answer.
MAX_DENOMINATIONS: Final = 256


def _list(what: str, low: int, high: int, check: Callable[[Any], bool],
          decode: Callable[[Any], Any] | None = None,
          encode: Callable[[Any], Any] | None = None) -> Kind:
    """A list of ``low`` to ``high`` items, held as a tuple."""

    def read(value: object) -> tuple[Any, ...]:
        if type(value) is not list:
            raise ValueError("not a list")
        return tuple(value if decode is None else map(decode, value))

    def write(value: tuple[Any, ...]) -> list[Any]:
        return list(value if encode is None else map(encode, value))

    return Kind(f"a list of {low} to {high} {what}",
                lambda v: type(v) is tuple and low <= len(v) <= high and all(map(check, v)),
                decode=read, encode=write)


def _is(cls: type) -> Callable[[Any], bool]:
    return lambda v: type(v) is cls


_RSA: Final = binary(RSA_BYTES, RSA_BYTES)



_OPS_SCHEMA: Final = Schema(SCHEMA.error, {
    **SCHEMA.kinds,
    "idempotency_key": IDEMPOTENCY_KEY,
    "bank_certificate": CERTIFICATE,
    "denominations": _list("ecash.denomination statements", 0, MAX_DENOMINATIONS,
                           _is(Statement), Statement.from_wire, Statement.to_wire),
    "blinded": _list("blinded coins {key_id, blinded}", 1, MAX_COINS, _is(BlindedCoin),
                     BlindedCoin.from_wire, BlindedCoin.to_wire),
    "blind_signatures": _list(f"{RSA_BYTES}-byte blind signatures", 1, MAX_COINS, _RSA.check),
    "spends": _list("spends {coin, signature}", 1, MAX_COINS, _is(Spend), Spend.from_wire,
                    Spend.to_wire),
    "withdrawn": STATEMENT_AS_IS, "deposited": STATEMENT_AS_IS, "voucher": STATEMENT_AS_IS,
    "voucher_signature": binary(SPEND_SIGNATURE_SIZE, SPEND_SIGNATURE_SIZE,
                                f"{SPEND_SIGNATURE_SIZE} bytes (Ed25519)"),
})

#: An exchange may bring no coins (a voucher alone).
_EXCHANGE_SPENDS: Final = _list("spends {coin, signature}", 0, MAX_COINS, _is(Spend),
                                Spend.from_wire, Spend.to_wire)


class _OpBody(Body):
    __slots__ = ()
    SCHEMA: ClassVar[Schema] = _OPS_SCHEMA


@dataclass(frozen=True, slots=True, kw_only=True)
class KeysRequest(_OpBody):
    """``bank.ecash_keys``: the denominations of one currency."""

    TYPE: ClassVar[str] = "bank.ecash_keys"
    currency: str


@dataclass(frozen=True, slots=True, kw_only=True)
class KeysAnswer(_OpBody):
    """``bank.ecash_keys`` answer: the ``ecash.denomination`` statements valid now for
    withdrawal or deposit, newest first, and the certificate that signed them."""

    TYPE: ClassVar[str] = "bank.ecash_keys answer"
    denominations: tuple[Statement, ...]
    bank_certificate: x509.Certificate


@dataclass(frozen=True, slots=True, kw_only=True)
class WithdrawRequest(_OpBody):
    """``bank.ecash_withdraw``: sign ``blinded`` (values summing to ``amount``),
    debiting the requester; once per (requester, ``idempotency_key``)."""

    TYPE: ClassVar[str] = "bank.ecash_withdraw"
    amount: Amount
    blinded: tuple[BlindedCoin, ...]
    idempotency_key: str


@dataclass(frozen=True, slots=True, kw_only=True)
class WithdrawAnswer(_OpBody):
    """``bank.ecash_withdraw`` answer: the ``ecash.withdrawn`` statement and one blind
    signature per blinded coin, in the request's order."""

    TYPE: ClassVar[str] = "bank.ecash_withdraw answer"
    withdrawn: Statement
    blind_signatures: tuple[bytes, ...]
    bank_certificate: x509.Certificate


@dataclass(frozen=True, slots=True, kw_only=True)
class DepositRequest(_OpBody):
    """``bank.ecash_deposit``, from the payee: coins spent to it for ``reference``,
    worth ``amount`` in all."""

    TYPE: ClassVar[str] = "bank.ecash_deposit"
    spends: tuple[Spend, ...]
    reference: bytes
    amount: Amount
    idempotency_key: str


@dataclass(frozen=True, slots=True, kw_only=True)
class DepositAnswer(_OpBody):
    """``bank.ecash_deposit`` answer: the ``payment.ecash_deposited`` settlement."""

    TYPE: ClassVar[str] = "bank.ecash_deposit answer"
    deposited: Statement
    bank_certificate: x509.Certificate


@dataclass(frozen=True, slots=True, kw_only=True)
class ExchangeRequest(_OpBody):
    """``bank.ecash_exchange``: coins spent for purpose ``exchange`` (and/or a refund
    voucher with its redemption signature) in, new blinded coins of the same value
    out. ``voucher`` and ``voucher_signature`` come together or not at all."""

    TYPE: ClassVar[str] = "bank.ecash_exchange"
    spends: tuple[Spend, ...] = field(metadata=wire(_EXCHANGE_SPENDS))
    blinded: tuple[BlindedCoin, ...]
    idempotency_key: str
    voucher: Statement | None = None
    voucher_signature: bytes | None = None

    def _check(self) -> None:
        if (self.voucher is None) != (self.voucher_signature is None):
            self.SCHEMA.fail(self.TYPE, "voucher_signature", "comes with a voucher, only")
        if not self.spends and self.voucher is None:
            self.SCHEMA.fail(self.TYPE, "spends", "or a voucher must bring value in")


@dataclass(frozen=True, slots=True, kw_only=True)
class ExchangeAnswer(_OpBody):
    """``bank.ecash_exchange`` answer: one blind signature per blinded coin."""

    TYPE: ClassVar[str] = "bank.ecash_exchange answer"
    blind_signatures: tuple[bytes, ...]
    bank_certificate: x509.Certificate


@dataclass(frozen=True, slots=True, kw_only=True)
class EcashProof(_OpBody):
    """The ``ecash`` module's proof (``payment.accept``): the coins spent to the payee
    for the payment's reference."""

    TYPE: ClassVar[str] = "payment.accept ecash proof"
    spends: tuple[Spend, ...]
