"""The bodies of the purse's ``bank`` ops, typed (docs/protocol.md section 8.4)::

    bank.purse_reserve  {"commitment": statement,              # purse.commitment
                         "idempotency_key": str}
                     -> {"reservation": statement,             # purse.reservation
                         "bank_certificate": bin}
    bank.purse_redeem   {"commitment": statement, "reservation": statement,
                         "payword": bin(32), "index": int}
                     -> {"redeemed": statement,                # purse.redeemed
                         "bank_certificate": bin}
    bank.purse_status   {"chain": bin(32)}
                     -> {"chain": bin, "state": "reserved" | "redeemed" | "released",
                         "reservation": statement, "bank_certificate": bin,
                         "redeemed"?: statement}               # once redeemed
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Final

from cryptography import x509

from ..._schema import IDEMPOTENCY_KEY, STATEMENT_AS_IS, Body, Kind, Schema, binary, form, wire
from ..._schema import MAX_INT64 as _MAX_INT64
from ...statements import Statement
from .._wire import CERTIFICATE
from ._chain import PAYWORD_SIZE
from ._schema import SCHEMA

__all__ = ["BANK_PURSE_REDEEM", "BANK_PURSE_RESERVE", "BANK_PURSE_STATUS", "PURSE_STATES",
           "RedeemAnswer", "RedeemRequest", "ReserveAnswer", "ReserveRequest", "StatusAnswer",
           "StatusRequest"]

BANK_PURSE_RESERVE: Final = "purse_reserve"
BANK_PURSE_REDEEM: Final = "purse_redeem"
BANK_PURSE_STATUS: Final = "purse_status"

#: What ``bank.purse_status`` says of a chain.
PURSE_STATES: Final = ("reserved", "redeemed", "released")


_OPS_SCHEMA: Final = Schema(SCHEMA.error, {
    **SCHEMA.kinds,
    "commitment": STATEMENT_AS_IS, "reservation": STATEMENT_AS_IS, "redeemed": STATEMENT_AS_IS,
    "idempotency_key": IDEMPOTENCY_KEY,
    "bank_certificate": CERTIFICATE,
    "payword": binary(PAYWORD_SIZE, PAYWORD_SIZE, f"{PAYWORD_SIZE} bytes"),
    # Any index the wire can carry: its range is the chain's (purse.beyond_chain).
    "index": Kind(f"an int from 0 to {_MAX_INT64}",
                  lambda v: type(v) is int and 0 <= v <= _MAX_INT64),
    "state": form("reserved|redeemed|released", "reserved, redeemed or released", 16),
})


class _OpBody(Body):
    __slots__ = ()
    SCHEMA: ClassVar[Schema] = _OPS_SCHEMA


@dataclass(frozen=True, slots=True, kw_only=True)
class ReserveRequest(_OpBody):
    """``bank.purse_reserve``: the buyer's signed commitment; one reservation per
    (buyer, ``idempotency_key``)."""

    TYPE: ClassVar[str] = "bank.purse_reserve"
    commitment: Statement
    idempotency_key: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ReserveAnswer(_OpBody):
    """``bank.purse_reserve`` answer: the bank's ``purse.reservation``."""

    TYPE: ClassVar[str] = "bank.purse_reserve answer"
    reservation: Statement
    bank_certificate: x509.Certificate


@dataclass(frozen=True, slots=True, kw_only=True)
class RedeemRequest(_OpBody):
    """``bank.purse_redeem``, from the seller: the chain's commitment and
    reservation, and the highest payword it accepted with its ``index``."""

    TYPE: ClassVar[str] = "bank.purse_redeem"
    commitment: Statement
    reservation: Statement
    payword: bytes
    index: int


@dataclass(frozen=True, slots=True, kw_only=True)
class RedeemAnswer(_OpBody):
    """``bank.purse_redeem`` answer: the bank's ``purse.redeemed``."""

    TYPE: ClassVar[str] = "bank.purse_redeem answer"
    redeemed: Statement
    bank_certificate: x509.Certificate


@dataclass(frozen=True, slots=True, kw_only=True)
class StatusRequest(_OpBody):
    """``bank.purse_status``: a chain the requester is the buyer or the seller of."""

    TYPE: ClassVar[str] = "bank.purse_status"
    chain: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class StatusAnswer(_OpBody):
    """``bank.purse_status`` answer: the chain's state, its reservation, and once
    ``redeemed`` the ``purse.redeemed`` (the same bytes the seller was answered)."""

    TYPE: ClassVar[str] = "bank.purse_status answer"
    chain: bytes
    state: str
    reservation: Statement
    bank_certificate: x509.Certificate
    redeemed: Statement | None = field(default=None, metadata=wire())

    def _check(self) -> None:
        if (self.redeemed is not None) != (self.state == "redeemed"):
            self.SCHEMA.fail(self.TYPE, "redeemed", "comes with the state redeemed, only")
