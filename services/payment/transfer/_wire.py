"""The body of the ``bank.transfer`` op, typed (docs/protocol.md section 8)::

    bank.transfer        {"order": statement}                 # payment.transfer_order
                      -> {"confirmation": statement,          # payment.transfer_confirmation
                          "bank_certificate": bin}

A transfer's proof of payment (``payment.accept``) is the ``bank.transfer`` response.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from cryptography import x509

from ...statements import Statement
from .._wire import _certificate, _map, _statement, der

__all__ = ["BANK_TRANSFER", "TransferProof", "TransferRequest"]

#: The ``bank`` service's op that applies a transfer order.
BANK_TRANSFER: Final = "transfer"


@dataclass(frozen=True, slots=True, kw_only=True)
class TransferRequest:
    """``bank.transfer`` request: the payer's signed ``payment.transfer_order``."""

    order: Statement

    def to_wire(self) -> dict[str, Any]:
        return {"order": self.order.to_wire()}

    @classmethod
    def from_wire(cls, value: object) -> TransferRequest:
        """Raises BadRequest, or ``statement.*`` for a malformed statement."""
        body = _map(value, {"order"}, "bank.transfer")
        return cls(order=_statement(body["order"]))


@dataclass(frozen=True, slots=True, kw_only=True)
class TransferProof:
    """``bank.transfer`` response, and the ``transfer`` module's proof of payment:
    the bank's confirmation with the certificate that signed it."""

    confirmation: Statement
    bank_certificate: x509.Certificate

    def to_wire(self) -> dict[str, Any]:
        return {"confirmation": self.confirmation.to_wire(),
                "bank_certificate": der(self.bank_certificate)}

    @classmethod
    def from_wire(cls, value: object) -> TransferProof:
        """Raises BadRequest, or ``statement.*`` for a malformed statement."""
        body = _map(value, {"confirmation", "bank_certificate"}, "transfer proof")
        return cls(confirmation=_statement(body["confirmation"]),
                   bank_certificate=_certificate(body["bank_certificate"], "bank_certificate",
                                                 "transfer proof"))
