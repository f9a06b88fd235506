"""The bodies of the purse statements (``services._schema`` bodies)::

    purse.commitment   buyer -> seller and bank: "my chain, for you, at this bank"
        chain: 32 random bytes (its id); buyer; seller; bank; root: w_0 (32 bytes);
        length: n; unit: amount per payword; expires: Unix ms; order: digest or nil
    purse.reservation  bank -> buyer and seller: "n x unit of the buyer's is held"
        chain; commitment: digest; buyer; seller; bank; amount: n x unit;
        expires; entry
    purse.redeemed     bank -> seller (and buyer): "the chain was redeemed"
        chain; commitment; buyer; seller; index: the payword redeemed;
        paid: index x unit (to the seller); returned: (n - index) x unit (to the
        buyer, may be 0); entry

A commitment's refusals are ``purse.bad_commitment``; the bank's statements' are
``payment.bad_request`` (``payment.bad_confirmation`` once checked as a bank's).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Final

from ..._schema import AGENT, DIGEST, TIME, Body, Kind, Schema, binary, integer
from ...money import Amount
from .._schema import AMOUNT, MAX_AMOUNT, amount_from_wire
from .._schema import SCHEMA as PAYMENT_SCHEMA
from ._chain import MAX_LENGTH, PAYWORD_SIZE
from ._errors import BadCommitment

__all__ = ["COMMITMENT", "REDEEMED", "RESERVATION", "SCHEMA", "PurseCommitment",
           "PurseRedeemed", "PurseReservation"]

COMMITMENT: Final = "purse.commitment"
RESERVATION: Final = "purse.reservation"
REDEEMED: Final = "purse.redeemed"

#: An amount that may be zero (what returns to the buyer of a chain spent whole).
AMOUNT_OR_ZERO: Final = Kind(
    f"an Amount of 0 to {MAX_AMOUNT} minor units",
    lambda v: type(v) is Amount and 0 <= v.minor_units <= MAX_AMOUNT,
    decode=amount_from_wire, encode=Amount.to_wire)

_KINDS: Final = {
    **PAYMENT_SCHEMA.kinds,
    "chain": binary(32, 32, "32 bytes (a chain id)"),
    "buyer": AGENT, "seller": AGENT,
    "root": binary(PAYWORD_SIZE, PAYWORD_SIZE, f"{PAYWORD_SIZE} bytes (w_0)"),
    "length": integer(1, MAX_LENGTH, f"an int from 1 to {MAX_LENGTH} (paywords)"),
    "unit": AMOUNT,
    "expires": TIME,
    "order": DIGEST,
    "commitment": DIGEST,
    "index": integer(1, MAX_LENGTH, f"an int from 1 to {MAX_LENGTH} (a payword)"),
    "paid": AMOUNT,
    "returned": AMOUNT_OR_ZERO,
}
#: The bank's statements and the ops' bodies: ``payment.bad_request``.
SCHEMA: Final = Schema(PAYMENT_SCHEMA.error, _KINDS)
#: The buyer's commitment: ``purse.bad_commitment``.
COMMITMENT_SCHEMA: Final = Schema(BadCommitment, _KINDS)


@dataclass(frozen=True, slots=True, kw_only=True)
class PurseCommitment(Body):
    """``purse.commitment``, signed by ``buyer``: paywords of the chain with root
    ``root`` are worth ``unit`` each to ``seller``, up to ``length`` of them, paid
    from what ``bank`` reserves for it, until ``expires`` (Unix ms, inclusive);
    ``order`` the digest of the order it pays for, if any."""

    TYPE: ClassVar[str] = COMMITMENT
    SCHEMA: ClassVar[Schema] = COMMITMENT_SCHEMA

    chain: bytes
    buyer: str
    seller: str
    bank: str
    root: bytes
    length: int
    unit: Amount
    expires: int
    order: bytes | None = None

    def _check(self) -> None:
        if self.buyer == self.seller:
            self.SCHEMA.fail(self.TYPE, "seller", "and buyer must be different agents")
        if self.length * self.unit.minor_units > MAX_AMOUNT:
            self.SCHEMA.fail(self.TYPE, "length", f"times unit must be at most {MAX_AMOUNT}")

    @property
    def value(self) -> Amount:
        """What the whole chain is worth: length x unit."""
        return Amount(self.unit.currency, self.length * self.unit.minor_units)

    def worth(self, index: int) -> Amount:
        """What ``index`` paywords are worth (0 and length included)."""
        return Amount(self.unit.currency, index * self.unit.minor_units)


@dataclass(frozen=True, slots=True, kw_only=True)
class PurseReservation(Body):
    """``purse.reservation``, signed by the bank: ``amount`` (the chain's whole
    value) left ``buyer``'s account as journal ``entry`` and is held for the
    commitment with digest ``commitment`` until ``expires`` (plus the bank's grace
    for the redemption)."""

    TYPE: ClassVar[str] = RESERVATION
    SCHEMA: ClassVar[Schema] = SCHEMA

    chain: bytes
    commitment: bytes
    buyer: str
    seller: str
    bank: str
    amount: Amount
    expires: int
    entry: int


@dataclass(frozen=True, slots=True, kw_only=True)
class PurseRedeemed(Body):
    """``purse.redeemed``, signed by the bank: the chain was redeemed with payword
    ``index``: ``paid`` went to ``seller``, ``returned`` back to ``buyer`` (journal
    ``entry``, the seller's). A chain is redeemed once."""

    TYPE: ClassVar[str] = REDEEMED
    SCHEMA: ClassVar[Schema] = SCHEMA

    chain: bytes
    commitment: bytes
    buyer: str
    seller: str
    index: int
    paid: Amount
    returned: Amount
    entry: int

    def _check(self) -> None:
        if self.paid.currency != self.returned.currency:
            self.SCHEMA.fail(self.TYPE, "returned", "must be in the currency paid")
