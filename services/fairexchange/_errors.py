"""Why a fair-exchange message or request was refused; one class per stable code.

Statement-level faults (a bad signature, a wrong type or signer) keep the statement
and certificate layers' own codes (``statement.*``, ``auth.*``). Append new classes
at the end (other exchanges of this package add theirs).
"""

from __future__ import annotations

from typing import ClassVar

from .._errors import ServiceError

__all__ = [
    "BadBody",
    "BadEscrow",
    "BadEscrowKey",
    "BadKey",
    "BadPayment",
    "BadSecret",
    "ConflictingExchange",
    "FairExchangeError",
    "MixedEvidence",
    "NotApproved",
    "NotParty",
    "Replayed",
    "TooEarly",
    "UnexpectedMessage",
    "UnexpectedStep",
    "WrongExchange",
]


class FairExchangeError(ServiceError):
    """A fair-exchange message, request or piece of evidence was refused."""

    code: ClassVar[str] = "fairexchange.error"


class BadBody(FairExchangeError):
    """A fair-exchange statement or request body that is not the one of its type.
    ``detail``: ``type``, ``field`` (``cause`` for a malformed quoted statement)."""

    code: ClassVar[str] = "fairexchange.bad_body"


class NotApproved(FairExchangeError):
    """The responder did not approve this text with this originator beforehand, so it
    signs nothing. ``detail``: ``originator``, ``text`` (hex digest)."""

    code: ClassVar[str] = "fairexchange.not_approved"


class Replayed(FairExchangeError):
    """An exchange id this party has seen before: a replayed (or reused) first
    message gets nothing. ``detail``: ``exchange`` (hex)."""

    code: ClassVar[str] = "fairexchange.replayed"


class ConflictingExchange(FairExchangeError):
    """The notary knows this exchange id with other content (another first message,
    another kind): refused, the first content's decision stands.
    ``detail``: ``exchange`` (hex), ``field``."""

    code: ClassVar[str] = "fairexchange.conflicting_exchange"


class WrongExchange(FairExchangeError):
    """A message that does not belong to this exchange: another exchange id, a
    commitment over another first message, another party or notary than the first
    message names, a text other than its digest. ``detail``: ``field``."""

    code: ClassVar[str] = "fairexchange.wrong_exchange"


class BadSecret(FairExchangeError):
    """A revealed secret whose SHA-256 is not the commitment signed for it.
    ``detail``: ``field``."""

    code: ClassVar[str] = "fairexchange.bad_secret"


class NotParty(FairExchangeError):
    """The requester may not ask this: not a party to the exchange, or not the
    originator (only the originator may abort). ``detail``: ``requester``."""

    code: ClassVar[str] = "fairexchange.not_party"


class UnexpectedMessage(FairExchangeError):
    """A machine got a message its state has no transition for (a late or repeated
    message); the machine is unchanged. ``detail``: ``state``, ``event``."""

    code: ClassVar[str] = "fairexchange.unexpected"
    wire = False


class MixedEvidence(FairExchangeError):
    """Evidence given to ``outcome`` or ``conflict`` that is not about one exchange,
    or not a piece of evidence at all. ``detail``: ``field``."""

    code: ClassVar[str] = "fairexchange.mixed_evidence"
    wire = False


# -- escrow, certified mail and fair purchase -------------------------------------------

class BadEscrowKey(FairExchangeError):
    """A ``notary.escrow_key`` statement that is not the named notary's, or whose
    validity does not cover the time it is used at. ``detail``: ``field``."""

    code: ClassVar[str] = "fairexchange.bad_escrow_key"


class BadEscrow(FairExchangeError):
    """The escrow does not give the content: it does not open under the notary's key
    with the exchange's labels, or the key it holds does not open the ciphertext, or
    the plaintext is not the digest the sender signed. ``detail``: ``reason``
    (``escrow``, ``ciphertext``, ``content``)."""

    code: ClassVar[str] = "fairexchange.bad_escrow"


class BadKey(FairExchangeError):
    """A revealed key that does not open the ciphertext to the signed content digest.
    ``detail``: ``reason`` (``ciphertext``, ``content``)."""

    code: ClassVar[str] = "fairexchange.bad_key"


class UnexpectedStep(FairExchangeError):
    """A mail or fair-purchase machine got an event its state has no transition for;
    it is now in ``ERROR`` and refuses every later event. ``detail``: ``machine``,
    ``state``, ``event``."""

    code: ClassVar[str] = "fairexchange.unexpected_step"
    wire = False


class TooEarly(FairExchangeError):
    """The notary was asked to close a mail exchange before its deadline.
    ``detail``: ``deadline``, ``now_ms``."""

    code: ClassVar[str] = "fairexchange.too_early"


class BadPayment(FairExchangeError):
    """The payment confirmation shown to the notary is not a payment of this order to
    this seller of this amount (the payment module's verifier refused it).
    ``detail``: ``reason``."""

    code: ClassVar[str] = "fairexchange.bad_payment"
