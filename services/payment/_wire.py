"""The bodies of the shared ``bank`` and ``payment`` service ops, typed (each
instrument's own ``bank`` ops are in its package's ``_wire``).

The bank role (agents/) answers the ``bank`` ops; a payee answers the ``payment``
ops. Every request body and every response body below is a map with exactly the
keys shown; statements travel as ``Statement.to_wire()`` maps, certificates as DER.
docs/protocol.md section 8 is the normative text; this module is its code.

``bank`` service (offered by agents whose role is ``bank``)::

    bank.refund          {"refund_order": statement}          # payment.refund_order
                      -> {"confirmation": statement,          # payment.refund_confirmation
                          "bank_certificate": bin}

``payment`` service (offered by payees)::

    payment.capabilities {}  -> Capabilities wire
    payment.accept       {"module": str, "reference": bin, "proof": map}
                      -> PaymentResult wire

A proof is what the module named in ``payment.accept`` defines.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ..certificates import CertificateError, load_certificate
from ..statements import Statement
from ._errors import BadRequest
from ._schema import MAX_REFERENCE

__all__ = [
    "BANK_REFUND",
    "BANK_SERVICE",
    "PAYMENT_ACCEPT",
    "PAYMENT_CAPABILITIES",
    "PAYMENT_SERVICE",
    "AcceptRequest",
    "RefundAnswer",
    "RefundRequest",
]

BANK_SERVICE: Final = "bank"
#: Ops of the ``bank`` service.
BANK_REFUND: Final = "refund"

PAYMENT_SERVICE: Final = "payment"
#: Ops of the ``payment`` service.
PAYMENT_CAPABILITIES: Final = "capabilities"
PAYMENT_ACCEPT: Final = "accept"

_DER: Final = serialization.Encoding.DER


def _map(value: object, keys: frozenset[str] | set[str], what: str) -> dict[str, Any]:
    if type(value) is not dict or set(value) != keys:
        found = set(value) if type(value) is dict else set()
        wrong = sorted(keys ^ found, key=str)
        raise BadRequest(f"a {what} body has exactly the keys {sorted(keys)}",
                         detail={"type": what, "field": str(wrong[0]) if wrong else None})
    return value


def _statement(value: object) -> Statement:
    """Raises MalformedStatement or UnsupportedVersion (``statement.*``)."""
    return Statement.from_wire(value)


def _certificate(value: object, field: str, what: str) -> x509.Certificate:
    if type(value) is not bytes:
        raise BadRequest(f"{what}: {field} must be DER bytes",
                         detail={"type": what, "field": field})
    try:
        return load_certificate(value)
    except CertificateError:
        raise BadRequest(f"{what}: {field} is not a certificate",
                         detail={"type": what, "field": field}) from None


def der(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(_DER)


@dataclass(frozen=True, slots=True, kw_only=True)
class RefundRequest:
    """``bank.refund`` request: the original payee's signed ``payment.refund_order``."""

    refund_order: Statement

    def to_wire(self) -> dict[str, Any]:
        return {"refund_order": self.refund_order.to_wire()}

    @classmethod
    def from_wire(cls, value: object) -> RefundRequest:
        """Raises BadRequest, or ``statement.*`` for a malformed statement."""
        body = _map(value, {"refund_order"}, "bank.refund")
        return cls(refund_order=_statement(body["refund_order"]))


@dataclass(frozen=True, slots=True, kw_only=True)
class RefundAnswer:
    """``bank.refund`` response: the bank's ``payment.refund_confirmation``."""

    confirmation: Statement
    bank_certificate: x509.Certificate

    def to_wire(self) -> dict[str, Any]:
        return {"confirmation": self.confirmation.to_wire(),
                "bank_certificate": der(self.bank_certificate)}

    @classmethod
    def from_wire(cls, value: object) -> RefundAnswer:
        """Raises BadRequest, or ``statement.*`` for a malformed statement."""
        body = _map(value, {"confirmation", "bank_certificate"}, "bank.refund answer")
        return cls(confirmation=_statement(body["confirmation"]),
                   bank_certificate=_certificate(body["bank_certificate"], "bank_certificate",
                                                 "bank.refund answer"))


@dataclass(frozen=True, slots=True, kw_only=True)
class AcceptRequest:
    """``payment.accept`` request: the payer hands the payee a module's proof for the
    payment with ``reference``."""

    module: str
    reference: bytes
    proof: dict[str, Any]

    def __post_init__(self) -> None:
        what = "payment.accept"
        if type(self.module) is not str or not 0 < len(self.module) <= 32:
            raise BadRequest(f"{what}: module must be a module name",
                             detail={"type": what, "field": "module"})
        if type(self.reference) is not bytes or not 0 < len(self.reference) <= MAX_REFERENCE:
            raise BadRequest(f"{what}: reference must be 1 to {MAX_REFERENCE} bytes",
                             detail={"type": what, "field": "reference"})
        if type(self.proof) is not dict:
            raise BadRequest(f"{what}: proof must be a map",
                             detail={"type": what, "field": "proof"})

    def to_wire(self) -> dict[str, Any]:
        return {"module": self.module, "reference": self.reference, "proof": self.proof}

    @classmethod
    def from_wire(cls, value: object) -> AcceptRequest:
        """Raises BadRequest."""
        body = _map(value, {"module", "reference", "proof"}, "payment.accept")
        return cls(module=body["module"], reference=body["reference"], proof=body["proof"])
