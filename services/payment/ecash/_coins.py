"""Coins and spends: what a coin is, what its key signs, and how a wallet makes
change (docs/protocol.md 8.7).

A coin binds a fresh Ed25519 key pair (as GNU Taler's coins do) to one
denomination key of the bank: the bank's RSA blind signature (RFC 9474,
RSABSSA-SHA384-PSS-Randomized) is over ``prefix || coin_message(key_id,
coin_key)``. The holder of the coin's private key spends it by signing one
contract (``spend_message``): so a spend handed to a seller cannot be deposited for
another order, payee or bank, and the bank's record of a spend is evidence of it.

Pure: no I/O, no clock; the RSA check is ``_blind.verify``'s.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Final

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from ..._schema import AGENT, Body, Kind, Schema, binary
from ...money import Amount
from ...statements import BadSignature, canonical_encode, verify_ed25519
from .._errors import BadRequest
from .._schema import AMOUNT, MAX_REFERENCE
from ._errors import BadCoin, BadSpend

__all__ = [
    "COIN_DOMAIN",
    "COIN_KEY_SIZE",
    "KEY_ID_SIZE",
    "MAX_COINS",
    "MAX_PICK_STEPS",
    "PREFIX_SIZE",
    "PURPOSES",
    "RSA_BYTES",
    "SPEND_DOMAIN",
    "SPEND_SIGNATURE_SIZE",
    "BlindedCoin",
    "Coin",
    "Spend",
    "blinded_order",
    "check_spend_signature",
    "coin_message",
    "denominations_for",
    "key_id_of",
    "load_denomination_key",
    "new_coin_key",
    "pick_coins",
    "sign_spend",
    "spend_message",
]

COIN_DOMAIN: Final = b"semper-ecash-coin-v1\x00"
SPEND_DOMAIN: Final = b"semper-ecash-spend-v1\x00"
#: SHA-256 of a denomination key's DER SubjectPublicKeyInfo.
KEY_ID_SIZE: Final = 32
#: A coin key: a raw Ed25519 public key.
COIN_KEY_SIZE: Final = 32
#: RFC 9474's random message prefix (the "Randomized" variant).
PREFIX_SIZE: Final = 32
#: Bytes of a 2048-bit RSA value: a blinded message, a blind signature, a coin signature.
RSA_BYTES: Final = 256
RSA_BITS: Final = 2048
SPEND_SIGNATURE_SIZE: Final = 64
#: Coins in one withdrawal, deposit or exchange (either side of an exchange).
MAX_COINS: Final = 64
#: What a coin key may sign a spend for: a seller's order, an exchange at the bank,
#: and (signed by a voucher's refund key) a voucher's redemption.
PURPOSES: Final = ("payment", "exchange", "refund")
#: The most nodes ``pick_coins`` visits before it gives up (None: exchange first).
MAX_PICK_STEPS: Final = 20_000


def key_id_of(public_key: rsa.RSAPublicKey | bytes) -> bytes:
    """A denomination key's id: SHA-256 of its DER SubjectPublicKeyInfo (``bytes``:
    the DER itself)."""
    der = public_key if isinstance(public_key, bytes) else public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).digest()


def load_denomination_key(der: bytes) -> rsa.RSAPublicKey:
    """The RSA public key of a denomination statement's ``public_key``.

    Raises:
        ValueError: not the DER SubjectPublicKeyInfo of a 2048-bit RSA key with
            exponent 65537.
    """
    key = serialization.load_der_public_key(der)
    if not isinstance(key, rsa.RSAPublicKey) or key.key_size != RSA_BITS \
            or key.public_numbers().e != 65537:
        raise ValueError("not a 2048-bit RSA key with e = 65537")
    if key.public_bytes(serialization.Encoding.DER,
                        serialization.PublicFormat.SubjectPublicKeyInfo) != der:
        raise ValueError("not the canonical DER of the key")
    return key


def coin_message(key_id: bytes, coin_key: bytes) -> bytes:
    """The message a coin's bank signature covers (after the random prefix)."""
    return COIN_DOMAIN + key_id + coin_key


def new_coin_key() -> tuple[ed25519.Ed25519PrivateKey, bytes]:
    """A fresh coin key pair: the private key and the raw 32-byte public key."""
    private = ed25519.Ed25519PrivateKey.generate()
    return private, private.public_key().public_bytes(serialization.Encoding.Raw,
                                                      serialization.PublicFormat.Raw)


def blinded_order(blinded: Sequence[BlindedCoin]) -> bytes:
    """SHA-256 of the canonical list ``[[key_id, blinded], ...]``: names a withdrawal's
    or an exchange's new coins (``ecash.withdrawn`` ``order``; an exchange spend's
    and a voucher redemption's ``reference``)."""
    return hashlib.sha256(canonical_encode([[b.key_id, b.blinded] for b in blinded])).digest()


# -- wire values --------------------------------------------------------------------------

_KINDS: Final = {
    "key_id": binary(KEY_ID_SIZE, KEY_ID_SIZE, f"{KEY_ID_SIZE} bytes (a key id)"),
    "coin_key": binary(COIN_KEY_SIZE, COIN_KEY_SIZE, f"{COIN_KEY_SIZE} bytes (an Ed25519 key)"),
    "prefix": binary(PREFIX_SIZE, PREFIX_SIZE, f"{PREFIX_SIZE} bytes"),
    "signature": binary(RSA_BYTES, RSA_BYTES, f"{RSA_BYTES} bytes (RSA-2048)"),
    "blinded": binary(RSA_BYTES, RSA_BYTES, f"{RSA_BYTES} bytes (RSA-2048)"),
}
#: A coin, a spend, a blinded coin that is not the defined map: ``payment.bad_request``
#: like every other bad op body (what is well formed and wrong is ``ecash.*``).
_SCHEMA: Final = Schema(BadRequest, _KINDS)


@dataclass(frozen=True, slots=True, kw_only=True)
class BlindedCoin(Body):
    """One new coin in a withdrawal or exchange: the denomination key it is to be
    signed under and the blinded message (RFC 9474 Blind's ``blinded_msg``)."""

    TYPE: ClassVar[str] = "ecash.blinded"
    SCHEMA: ClassVar[Schema] = _SCHEMA

    key_id: bytes
    blinded: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class Coin(Body):
    """A coin: the bank's RSA-PSS ``signature`` over ``prefix || coin_message(key_id,
    coin_key)`` under the denomination key ``key_id``. Its id is ``coin_key``."""

    TYPE: ClassVar[str] = "ecash.coin"
    SCHEMA: ClassVar[Schema] = _SCHEMA

    key_id: bytes
    coin_key: bytes
    prefix: bytes
    signature: bytes

    @property
    def prepared(self) -> bytes:
        """RFC 9474's ``input_msg`` (PrepareRandomize's output): prefix || message."""
        return self.prefix + coin_message(self.key_id, self.coin_key)

    def verify(self, public_key: rsa.RSAPublicKey) -> None:
        """Check the bank's signature under ``public_key`` (the key ``key_id`` names:
        the caller looks it up).

        Raises:
            BadCoin: the key is not the coin's, or the signature does not verify.
        """
        from ._blind import verify  # E1's RFC 9474 code; imported late: one module each

        if key_id_of(public_key) != self.key_id:
            raise BadCoin("the coin names another denomination key",
                          detail={"coin_key": self.coin_key.hex(), "field": "key_id"})
        try:
            verify(public_key, self.prepared, self.signature)
        except BadCoin as exc:
            raise BadCoin("the bank's signature on the coin does not verify",
                          detail={"coin_key": self.coin_key.hex(), **exc.detail}) from None


def _spend_coin(value: object) -> Coin:
    return Coin.from_wire(value)


_SPEND_SCHEMA: Final = Schema(BadRequest, {
    "coin": Kind("a coin", lambda v: type(v) is Coin, decode=_spend_coin, encode=Coin.to_wire),
    "signature": binary(SPEND_SIGNATURE_SIZE, SPEND_SIGNATURE_SIZE,
                        f"{SPEND_SIGNATURE_SIZE} bytes (Ed25519)"),
})


@dataclass(frozen=True, slots=True, kw_only=True)
class Spend(Body):
    """A coin and its key's Ed25519 ``signature`` over one contract
    (``spend_message``)."""

    TYPE: ClassVar[str] = "ecash.spend"
    SCHEMA: ClassVar[Schema] = _SPEND_SCHEMA

    coin: Coin
    signature: bytes


# -- the spend contract --------------------------------------------------------------------

_CONTRACT: Final = {"bank": AGENT, "payee": AGENT, "amount": AMOUNT,
                    "reference": binary(1, MAX_REFERENCE)}


def spend_message(*, purpose: str, bank: str, payee: str, reference: bytes,
                  amount: Amount) -> bytes:
    """What a coin key signs to spend its coin: ``SPEND_DOMAIN`` and the canonical map
    ``{"purpose", "bank", "payee", "reference", "amount"}``, ``amount`` the coin's value.

    Raises:
        BadRequest: a purpose not in ``PURPOSES`` or a field out of its kind.
    """
    fields: dict[str, Any] = {"bank": bank, "payee": payee, "reference": reference,
                              "amount": amount}
    if purpose not in PURPOSES:
        raise BadRequest(f"a spend's purpose is one of {PURPOSES}",
                         detail={"type": "ecash.spend", "field": "purpose"})
    for key, kind in _CONTRACT.items():
        if not kind.check(fields[key]):
            raise BadRequest(f"ecash.spend: {key} must be {kind.wanted}",
                             detail={"type": "ecash.spend", "field": key})
    return SPEND_DOMAIN + canonical_encode({"purpose": purpose, "bank": bank, "payee": payee,
                                            "reference": reference,
                                            "amount": amount.to_wire()})


def sign_spend(private_key: ed25519.Ed25519PrivateKey, coin: Coin, *, purpose: str, bank: str,
               payee: str, reference: bytes, amount: Amount) -> Spend:
    """Spend ``coin`` (worth ``amount``) for one contract; ``private_key`` is the coin's."""
    message = spend_message(purpose=purpose, bank=bank, payee=payee, reference=reference,
                            amount=amount)
    return Spend(coin=coin, signature=private_key.sign(message))


def check_spend_signature(spend: Spend, *, purpose: str, bank: str, payee: str,
                          reference: bytes, amount: Amount, key: bytes | None = None) -> None:
    """Check that the coin's key (``key``: another Ed25519 key, a voucher's refund key)
    signed ``spend`` for exactly this contract; ``amount`` is the coin's value.

    Raises:
        BadSpend: it did not (a spend for another order, payee, bank or purpose, or
            a forged one); ``detail`` ``coin_key`` (hex).
    """
    message = spend_message(purpose=purpose, bank=bank, payee=payee, reference=reference,
                            amount=amount)
    try:
        verify_ed25519(spend.coin.coin_key if key is None else key, message, spend.signature)
    except BadSignature:
        raise BadSpend(f"the coin's key did not sign this {purpose} (another contract, or "
                       "forged)", detail={"coin_key": spend.coin.coin_key.hex()}) from None


# -- making change ------------------------------------------------------------------------

def denominations_for(amount: int, values: Sequence[int]) -> list[int]:
    """Greedy exact decomposition of ``amount`` (minor units) into ``values`` (the
    bank's denominations, any order), largest first: for a 1-2-5 series the greedy
    split is the one with fewest coins. A wallet withdraws these.

    Raises:
        ValueError: ``amount`` < 1, a value < 1, or no exact split (no value 1 and
            an amount the greedy split cannot reach).
    """
    if type(amount) is not int or amount < 1:
        raise ValueError("amount must be a positive int of minor units")
    ordered = sorted(set(values), reverse=True)
    if not ordered or ordered[-1] < 1:
        raise ValueError("values must be positive ints")
    out: list[int] = []
    rest = amount
    for value in ordered:
        count, rest = divmod(rest, value)
        out.extend([value] * count)
    if rest:
        raise ValueError(f"{amount} is no sum of {ordered} by the greedy split")
    return out


def pick_coins(have: Sequence[int], amount: int) -> list[int] | None:
    """Positions in ``have`` (coin values, minor units) of coins summing exactly to
    ``amount``, or None if there is none or none was found within the bound.

    The search is depth first over the distinct values, largest first, taking as many
    of each as fit and backing off one at a time, pruning a branch whose remaining
    coins cannot reach the rest. Bounded: at most ``MAX_PICK_STEPS`` nodes (a node is
    one count tried for one value), so it is O(MAX_PICK_STEPS) whatever the wallet
    holds; over a 1-2-5 series it finds a split at the first leaf almost always.
    None tells the wallet to exchange coins for smaller ones first.
    """
    if type(amount) is not int or amount < 1:
        return None
    counts: dict[int, list[int]] = {}
    for position, value in enumerate(have):
        if type(value) is int and value > 0:
            counts.setdefault(value, []).append(position)
    values = sorted(counts, reverse=True)
    if len(values) > MAX_PICK_STEPS // 100:  # the recursion is one level per value
        return None
    # below[i]: the value of every coin of values[i:], for the pruning.
    below = [0] * (len(values) + 1)
    for i in range(len(values) - 1, -1, -1):
        below[i] = below[i + 1] + values[i] * len(counts[values[i]])
    if below[0] < amount:
        return None
    taken = [0] * len(values)
    steps = 0

    def search(i: int, rest: int) -> bool:
        nonlocal steps
        if rest == 0:
            return True
        if i == len(values) or below[i] < rest:
            return False
        value = values[i]
        for count in range(min(len(counts[value]), rest // value), -1, -1):
            steps += 1
            if steps > MAX_PICK_STEPS:
                return False
            taken[i] = count
            if search(i + 1, rest - count * value):
                return True
        taken[i] = 0
        return False

    if not search(0, amount):
        return None
    return sorted(p for i, value in enumerate(values) for p in counts[value][:taken[i]])
