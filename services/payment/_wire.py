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
from typing import Any, ClassVar, Final, Self

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from .._schema import Body, Kind, Schema
from ..certificates import CertificateError, certificate_der, load_certificate
from ..statements import Statement
from ._errors import BadRequest
from ._schema import SCHEMA

__all__ = [
    "BANK_REFUND",
    "BANK_SERVICE",
    "PAYMENT_ACCEPT",
    "PAYMENT_CAPABILITIES",
    "PAYMENT_SERVICE",
    "AcceptRequest",
    "CapabilitiesRequest",
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
    return certificate_der(certificate)  # encoded once per certificate


def _der_certificate(value: object) -> x509.Certificate:
    if type(value) is not bytes:
        raise ValueError("not DER bytes")
    return load_certificate(value)


#: A certificate in an instrument's typed op bodies (``bank_certificate`` and the
#: like): DER on the wire, an ``x509.Certificate`` in the body.
CERTIFICATE: Final = Kind("a DER certificate", lambda v: isinstance(v, x509.Certificate),
                          decode=_der_certificate, encode=der)


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


#: ``payment.accept``'s keys: ``module`` is any name of 1 to 32 characters here (one
#: not offered is ``payment.unknown_module``, the payee's check), ``proof`` any map
#: (the module's to read).
_ACCEPT: Final = Schema(BadRequest, {
    **SCHEMA.kinds,
    "module": Kind("a module name of 1 to 32 characters",
                   lambda v: type(v) is str and 0 < len(v) <= 32),
    "proof": Kind("a map", lambda v: type(v) is dict),
})


@dataclass(frozen=True, slots=True, kw_only=True)
class AcceptRequest(Body):
    """``payment.accept`` request: the payer hands the payee a module's proof for the
    payment with ``reference``. A ``services._schema`` body: exactly these keys, else
    ``payment.bad_request`` (detail ``type`` ``payment.accept``, ``field``)."""

    TYPE: ClassVar[str] = f"{PAYMENT_SERVICE}.{PAYMENT_ACCEPT}"
    SCHEMA: ClassVar[Schema] = _ACCEPT

    module: str
    reference: bytes
    proof: dict[str, Any]


@dataclass(frozen=True, slots=True, kw_only=True)
class CapabilitiesRequest(Body):
    """``payment.capabilities`` request: any value, ignored (semper sends ``{}``)."""

    TYPE: ClassVar[str] = f"{PAYMENT_SERVICE}.{PAYMENT_CAPABILITIES}"
    SCHEMA: ClassVar[Schema] = _ACCEPT

    @classmethod
    def from_wire(cls, value: object) -> Self:
        return cls()
