"""Why a purse payment was refused: the codes only this instrument raises (codes are
API). The payword checks' codes are the ones the delivery channel answers with too
(``delivery.chunk``), so a seller and the bank refuse one bad payword alike."""

from __future__ import annotations

from typing import ClassVar

from .._errors import PaymentError, Unsupported

__all__ = ["AlreadyRedeemed", "BadCommitment", "BadPayword", "BeyondChain", "OutOfOrder",
           "PurseError", "PurseExpired", "Replayed", "UnknownChain",
           "Unsupported"]  # Unsupported: services.payment's, re-exported


class PurseError(PaymentError):
    """A purse refusal; subclasses name the reason."""

    code: ClassVar[str] = "purse.error"


class BadPayword(PurseError):
    """A payword that does not hash back to the last one accepted (or to the root),
    or an index below 1; ``detail`` ``index``."""

    code: ClassVar[str] = "purse.bad_payword"


class Replayed(PurseError):
    """A payword for an index at or below the highest accepted: it was paid already;
    ``detail`` ``index``, ``highest``."""

    code: ClassVar[str] = "purse.replayed"


class OutOfOrder(PurseError):
    """A payword that skips ahead where paywords are paid one at a time (a seller's
    stream, the buyer's own purse); ``detail`` ``index``, ``expected``."""

    code: ClassVar[str] = "purse.out_of_order"


class BeyondChain(PurseError):
    """An index past the chain's length: the commitment backs no such payword;
    ``detail`` ``index``, ``length``."""

    code: ClassVar[str] = "purse.beyond_chain"


class AlreadyRedeemed(PurseError):
    """The chain was redeemed with another payword (a chain is redeemed once);
    ``detail`` ``chain`` (hex), ``index`` (the one redeemed)."""

    code: ClassVar[str] = "purse.already_redeemed"


class PurseExpired(PurseError):
    """The chain expired: a payment after ``expires``, a redemption after
    ``expires`` + the bank's grace (or after the reservation went back to the
    buyer), a reservation whose ``expires`` is not in the future; ``detail``
    ``expires``, ``now_ms``."""

    code: ClassVar[str] = "purse.expired"


class BadCommitment(PurseError):
    """A ``purse.commitment`` that is malformed, not signed by its buyer, not for
    the expected seller, bank or order, a chain id used before, or one that is not
    the commitment the bank reserved for; ``detail`` ``type``, ``field``."""

    code: ClassVar[str] = "purse.bad_commitment"


class UnknownChain(PurseError):
    """No reservation of that chain at this bank that the requester is party to;
    ``detail`` ``chain`` (hex)."""

    code: ClassVar[str] = "purse.unknown_chain"
