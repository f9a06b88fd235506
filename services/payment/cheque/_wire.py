"""The bodies of the cheque's ``bank`` ops, typed (docs/protocol.md section 8)::

    bank.deposit_cheque  {"cheque": statement,                # payment.cheque
                          "drawer_certificate": bin}
                      -> {"cleared": statement,               # payment.cheque_cleared
                          "bank_certificate": bin}
    bank.stop_cheque     {"serial": str} -> {"serial": str}
    bank.cheque_status   {"serial": str}
                      -> {"serial": str, "state": "cleared",  # with the clearing
                          "cleared": statement, "bank_certificate": bin}
                       | {"serial": str, "state": "stopped" | "open"}

A cheque's proof of payment (``payment.accept``) is the ``bank.deposit_cheque`` request.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from cryptography import x509

from ...statements import Statement
from .._errors import BadRequest
from .._wire import _certificate, _map, _statement, der
from ._schema import SERIAL

__all__ = ["BANK_CHEQUE_STATUS", "BANK_DEPOSIT_CHEQUE", "BANK_STOP_CHEQUE", "ChequeProof",
           "ChequeStatus", "DepositAnswer", "StopCheque"]

#: Ops of the ``bank`` service for cheques.
BANK_DEPOSIT_CHEQUE: Final = "deposit_cheque"
BANK_STOP_CHEQUE: Final = "stop_cheque"
BANK_CHEQUE_STATUS: Final = "cheque_status"

#: What ``bank.cheque_status`` says of a drawer's serial.
CHEQUE_STATES: Final = frozenset({"cleared", "stopped", "open"})


@dataclass(frozen=True, slots=True, kw_only=True)
class ChequeProof:
    """The ``cheque`` module's proof, and the ``bank.deposit_cheque`` request: the
    payer's signed cheque with the certificate that signed it (the bank cannot
    take it from a channel: the payee deposits it)."""

    cheque: Statement
    drawer_certificate: x509.Certificate

    def to_wire(self) -> dict[str, Any]:
        return {"cheque": self.cheque.to_wire(),
                "drawer_certificate": der(self.drawer_certificate)}

    @classmethod
    def from_wire(cls, value: object) -> ChequeProof:
        """Raises BadRequest, or ``statement.*`` for a malformed statement."""
        body = _map(value, {"cheque", "drawer_certificate"}, "bank.deposit_cheque")
        return cls(cheque=_statement(body["cheque"]),
                   drawer_certificate=_certificate(body["drawer_certificate"],
                                                   "drawer_certificate", "bank.deposit_cheque"))


@dataclass(frozen=True, slots=True, kw_only=True)
class DepositAnswer:
    """``bank.deposit_cheque`` response: the bank's ``payment.cheque_cleared``."""

    cleared: Statement
    bank_certificate: x509.Certificate

    def to_wire(self) -> dict[str, Any]:
        return {"cleared": self.cleared.to_wire(), "bank_certificate": der(self.bank_certificate)}

    @classmethod
    def from_wire(cls, value: object) -> DepositAnswer:
        """Raises BadRequest, or ``statement.*`` for a malformed statement."""
        body = _map(value, {"cleared", "bank_certificate"}, "bank.deposit_cheque answer")
        return cls(cleared=_statement(body["cleared"]),
                   bank_certificate=_certificate(body["bank_certificate"], "bank_certificate",
                                                 "bank.deposit_cheque answer"))


@dataclass(frozen=True, slots=True, kw_only=True)
class StopCheque:
    """``bank.stop_cheque`` request and response: ``{"serial": str}``; the requester
    (the channel peer) is the payer whose serial is stopped."""

    serial: str

    def __post_init__(self) -> None:
        if not SERIAL.check(self.serial):
            raise BadRequest("a serial is 1 to 64 characters of A-Z a-z 0-9 . _ -",
                             detail={"type": "bank.stop_cheque", "field": "serial"})

    def to_wire(self) -> dict[str, Any]:
        return {"serial": self.serial}

    @classmethod
    def from_wire(cls, value: object) -> StopCheque:
        """Raises BadRequest."""
        return cls(serial=_map(value, {"serial"}, "bank.stop_cheque")["serial"])


@dataclass(frozen=True, slots=True, kw_only=True)
class ChequeStatus:
    """``bank.cheque_status`` response: what became of the requester's (the drawer's)
    cheque ``serial``: ``cleared`` (with the bank's ``payment.cheque_cleared`` and
    certificate), ``stopped``, or ``open`` (neither). It lets a drawer whose payee
    deposited its cheque and vanished show the clearing to a third party (the
    notary of a fair purchase), since only the depositor was answered it."""

    serial: str
    state: str
    cleared: Statement | None = None
    bank_certificate: x509.Certificate | None = None

    def __post_init__(self) -> None:
        StopCheque(serial=self.serial)  # the serial's check
        with_clearing = self.cleared is not None and self.bank_certificate is not None
        if self.state not in CHEQUE_STATES or with_clearing != (self.state == "cleared") \
                or (self.cleared is None) != (self.bank_certificate is None):
            raise BadRequest("a cheque status is cleared (with the clearing and the bank's "
                             "certificate), stopped or open",
                             detail={"type": "bank.cheque_status answer", "field": "state"})

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {"serial": self.serial, "state": self.state}
        if self.cleared is not None and self.bank_certificate is not None:
            wire["cleared"] = self.cleared.to_wire()
            wire["bank_certificate"] = der(self.bank_certificate)
        return wire

    @classmethod
    def from_wire(cls, value: object) -> ChequeStatus:
        """Raises BadRequest, or ``statement.*`` for a malformed statement."""
        what = "bank.cheque_status answer"
        cleared = type(value) is dict and value.get("state") == "cleared"
        keys = {"serial", "state"} | ({"cleared", "bank_certificate"} if cleared else set())
        body = _map(value, keys, what)
        if type(body["serial"]) is not str or type(body["state"]) is not str:
            raise BadRequest(f"{what}: serial and state are strings",
                             detail={"type": what, "field": "state"})
        if not cleared:
            return cls(serial=body["serial"], state=body["state"])
        return cls(serial=body["serial"], state="cleared",
                   cleared=_statement(body["cleared"]),
                   bank_certificate=_certificate(body["bank_certificate"], "bank_certificate",
                                                 what))
