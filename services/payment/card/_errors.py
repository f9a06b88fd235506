"""Why a card payment was refused: the codes only this instrument raises (codes are
API; docs/protocol.md 6 and 8.8). A malformed body is the shared
``payment.bad_request``; a statement or certificate fault keeps its own
``statement.*``/``auth.*`` code."""

from __future__ import annotations

from typing import ClassVar

from .._errors import PaymentError

__all__ = ["BadDualSignature", "BadGatewayKey", "BadInstructions", "CardError", "Declined",
           "ExpiredCard", "OverAuthorized", "UnknownAuthorization", "UnknownCard"]


class CardError(PaymentError):
    """A card refusal; subclasses name the reason."""

    code: ClassVar[str] = "card.error"


class BadDualSignature(CardError):
    """A ``card.dual_signature`` that does not bind these payment instructions and
    this order: its ``oimd`` is not the order information's digest, its ``pimd`` not
    the instructions', its ``pomd`` not SHA-256(pimd || oimd), or it is signed by
    another agent than the payer expected; ``detail`` ``field``."""

    code: ClassVar[str] = "card.bad_dual_signature"


class UnknownCard(CardError):
    """The gateway issued no such card to the signer of the dual signature (an unknown
    number, another holder, another expiry: one code, so that a guess learns nothing)."""

    code: ClassVar[str] = "card.unknown_card"


class ExpiredCard(CardError):
    """The card's expiry month is over; no detail (the merchant reads it: the
    expiry is the PI's, which only the gateway sees)."""

    code: ClassVar[str] = "card.expired_card"


class BadInstructions(CardError):
    """Sealed payment instructions that do not open for this order (sealed to another
    gateway key, or for another OIMD), are malformed (a card number failing the Luhn
    check), or name another merchant, order or amount than the authorisation asked;
    ``detail`` ``field``."""

    code: ClassVar[str] = "card.bad_instructions"


class OverAuthorized(CardError):
    """A capture of more than what remains of its authorisation; ``detail``
    ``authorized``, ``captured``, ``requested`` (amounts, wire form)."""

    code: ClassVar[str] = "card.over_authorized"


class UnknownAuthorization(CardError):
    """A capture of an authorisation that the gateway did not give the requester, or
    that expired or was closed; ``detail`` ``authorization_id``."""

    code: ClassVar[str] = "card.unknown_authorization"


class Declined(CardError):
    """The card's account does not cover the amount, or is of another currency
    (neither its balance nor its currency is disclosed); ``detail`` ``amount``."""

    code: ClassVar[str] = "card.declined"


class BadGatewayKey(CardError):
    """A ``card.gateway_key`` not signed by a bank, for another bank than the
    cardholder's, or expired; ``detail`` ``field``."""

    code: ClassVar[str] = "card.bad_gateway_key"
