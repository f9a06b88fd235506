"""The bodies of the ecash statements, all signed by the bank (``services._schema``
bodies; docs/protocol.md 8.7)::

    ecash.denomination        one denomination key and its windows
        bank; currency; value: Amount; key_id: bin32 (SHA-256 of public_key);
        public_key: DER SubjectPublicKeyInfo (RSA-2048, e 65537);
        withdraw_from_ms <= withdraw_until_ms <= deposit_until_ms
    ecash.withdrawn           bank -> holder: "amount left your account as coins"
        bank; holder; amount; coins: int; order: bin32 (blinded_order of the request);
        idempotency_key; entry
    payment.ecash_deposited   bank -> payee: the settlement (names no payer)
        bank; payee; amount; reference; coins: [coin_key, ...]; entry
    ecash.refund_voucher      bank -> payee -> payer: "amount of that deposit comes
        back as coins to whoever signs with refund_key"
        bank; original: digest of the ecash_deposited; amount; refund_key: bin32;
        expires_ms

A bad body is ``payment.bad_request`` (``payment.bad_confirmation`` once checked as a
bank's statement: ``_checks``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Final

from cryptography.hazmat.primitives.asymmetric import rsa

from ..._schema import AGENT, DIGEST, TIME, Body, Kind, Schema, binary, form, integer, wire
from ...money import Amount
from .._schema import SCHEMA as PAYMENT_SCHEMA
from ._coins import COIN_KEY_SIZE, KEY_ID_SIZE, MAX_COINS, key_id_of, load_denomination_key

__all__ = ["DENOMINATION", "DEPOSITED", "REFUND_VOUCHER", "SCHEMA", "WITHDRAWN",
           "Denomination", "EcashDeposited", "RefundVoucher", "Withdrawn"]

DENOMINATION: Final = "ecash.denomination"
WITHDRAWN: Final = "ecash.withdrawn"
DEPOSITED: Final = "payment.ecash_deposited"
REFUND_VOUCHER: Final = "ecash.refund_voucher"

#: A DER SubjectPublicKeyInfo of an RSA-2048 key is 294 bytes; room for any encoding.
MAX_PUBLIC_KEY: Final = 1024

_KEY_ID: Final = binary(KEY_ID_SIZE, KEY_ID_SIZE, f"{KEY_ID_SIZE} bytes (a key id)")
_COIN_KEY: Final = binary(COIN_KEY_SIZE, COIN_KEY_SIZE, f"{COIN_KEY_SIZE} bytes (a coin key)")


def _coin_keys(value: object) -> bool:
    return (type(value) is tuple and 1 <= len(value) <= MAX_COINS
            and all(_COIN_KEY.check(k) for k in value) and len(set(value)) == len(value))


def _tuple(value: object) -> tuple[object, ...]:
    if type(value) is not list:
        raise ValueError("not a list")
    return tuple(value)


#: ``payment.ecash_deposited``'s ``coins``: the coin keys deposited, 1 to 64, distinct.
COIN_KEYS: Final = Kind(f"a list of 1 to {MAX_COINS} distinct {COIN_KEY_SIZE}-byte coin keys",
                        _coin_keys, decode=_tuple, encode=list)

SCHEMA: Final = Schema(PAYMENT_SCHEMA.error, {
    **PAYMENT_SCHEMA.kinds,
    "holder": AGENT,
    "currency": form(r"[A-Z]{3}", "an ISO 4217 code (3 of A-Z)", 3),
    "value": PAYMENT_SCHEMA.kinds["amount"],
    "key_id": _KEY_ID,
    "public_key": binary(1, MAX_PUBLIC_KEY, f"1 to {MAX_PUBLIC_KEY} bytes (DER)"),
    "withdraw_from_ms": TIME, "withdraw_until_ms": TIME, "deposit_until_ms": TIME,
    "coins": integer(1, MAX_COINS, f"an int from 1 to {MAX_COINS} (coins)"),
    "order": DIGEST,
    "refund_key": _COIN_KEY,
    "expires_ms": TIME,
})


class _EcashBody(Body):
    __slots__ = ()
    SCHEMA: ClassVar[Schema] = SCHEMA


@dataclass(frozen=True, slots=True, kw_only=True)
class Denomination(_EcashBody):
    """``ecash.denomination``: the bank signs coins worth ``value`` with the RSA key
    ``public_key`` (id ``key_id``) from ``withdraw_from_ms`` to ``withdraw_until_ms``
    and takes them in deposit or exchange until ``deposit_until_ms`` (inclusive)."""

    TYPE: ClassVar[str] = DENOMINATION

    bank: str
    currency: str
    value: Amount
    key_id: bytes
    public_key: bytes
    withdraw_from_ms: int
    withdraw_until_ms: int
    deposit_until_ms: int

    def _check(self) -> None:
        if self.value.currency != self.currency:
            self.SCHEMA.fail(self.TYPE, "value", "must be in the statement's currency")
        if not self.withdraw_from_ms <= self.withdraw_until_ms <= self.deposit_until_ms:
            self.SCHEMA.fail(self.TYPE, "withdraw_until_ms",
                             "must be from withdraw_from_ms to deposit_until_ms")
        try:
            load_denomination_key(self.public_key)
        except ValueError as exc:
            self.SCHEMA.fail(self.TYPE, "public_key", f"is {exc}")
        if key_id_of(self.public_key) != self.key_id:
            self.SCHEMA.fail(self.TYPE, "key_id", "must be SHA-256 of public_key")

    def rsa_key(self) -> rsa.RSAPublicKey:
        """The denomination's RSA public key (checked at construction)."""
        return load_denomination_key(self.public_key)

    def withdraws_at(self, now_ms: int) -> bool:
        return self.withdraw_from_ms <= now_ms <= self.withdraw_until_ms

    def deposits_at(self, now_ms: int) -> bool:
        return self.withdraw_from_ms <= now_ms <= self.deposit_until_ms


@dataclass(frozen=True, slots=True, kw_only=True)
class Withdrawn(_EcashBody):
    """``ecash.withdrawn``: ``amount`` left ``holder``'s account as journal ``entry``
    for ``coins`` blind signatures on the request whose blinded list hashes to
    ``order``."""

    TYPE: ClassVar[str] = WITHDRAWN

    bank: str
    holder: str
    amount: Amount
    coins: int
    order: bytes
    idempotency_key: str
    entry: int


@dataclass(frozen=True, slots=True, kw_only=True)
class EcashDeposited(_EcashBody):
    """``payment.ecash_deposited``, the ecash settlement: the coins ``coins`` (their
    keys), spent for ``reference`` to ``payee``, were credited to it, ``amount`` in
    all, as journal ``entry``. No payer: the bank does not know one."""

    TYPE: ClassVar[str] = DEPOSITED

    bank: str
    payee: str
    amount: Amount
    reference: bytes
    coins: tuple[bytes, ...] = field(metadata=wire(COIN_KEYS))
    entry: int


@dataclass(frozen=True, slots=True, kw_only=True)
class RefundVoucher(_EcashBody):
    """``ecash.refund_voucher``: ``amount`` of the deposit whose
    ``payment.ecash_deposited`` has digest ``original`` comes back as new coins to
    whoever signs a redemption with ``refund_key`` (the key of the deposit's first
    coin: its spender) by ``expires_ms``."""

    TYPE: ClassVar[str] = REFUND_VOUCHER

    bank: str
    original: bytes
    amount: Amount
    refund_key: bytes
    expires_ms: int
