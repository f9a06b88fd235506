"""Pure checks and decisions over the purse statements (the order of every payment
check, ``services.payment._checks``: ``verify_statement`` first, whose
``statement.*`` and ``auth.*`` errors pass through, then the body, the signer, and
each expected field in body order).

    bank    check_commitment (bank.purse_reserve), reservation_of (what it signs),
            check_redemption (bank.purse_redeem: the payword hashes to the root),
            redeemed_of (what it signs)
    seller  verify_purse (commitment and reservation, before it streams a chunk)
    anyone  verify_reservation, verify_redeemed (offline, a bank's statements)
"""

from __future__ import annotations

import datetime as dt
from typing import Final, TypeVar

from cryptography import x509

from ..._schema import Body
from ...money import Amount
from ...statements import Statement, verify_statement
from .._checks import BANK_ROLE
from .._errors import BadConfirmation, PaymentError
from ._chain import hash_to_root
from ._errors import BadCommitment, BadPayword, BeyondChain, PurseExpired
from ._schema import PurseCommitment, PurseRedeemed, PurseReservation

__all__ = ["MAX_VALIDITY_MS", "REDEEM_GRACE_MS", "check_commitment", "check_redemption",
           "redeemed_of", "reservation_of", "verify_commitment", "verify_purse",
           "verify_redeemed", "verify_reservation"]

#: How long after a chain's ``expires`` its seller may still redeem it; after that
#: the bank's sweep returns the reservation to the buyer (semper: one hour).
REDEEM_GRACE_MS: Final = 3_600_000
#: The latest ``expires`` a bank reserves for, from now (semper: 30 days): the
#: buyer's money is held until then.
MAX_VALIDITY_MS: Final = 30 * 86_400_000

_EPOCH: Final = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
B = TypeVar("B", bound=Body)
Trust = tuple[x509.Certificate, x509.CertificateRevocationList, dt.datetime]


def _ms(when: dt.datetime) -> int:
    return (when - _EPOCH) // dt.timedelta(milliseconds=1)


def _fail(error: type[PaymentError], body_type: str, field: str, why: str) -> PaymentError:
    return error(f"{body_type}: {why}", detail={"type": body_type, "field": field})


def _body(statement: Statement, schema: type[B], certificate: x509.Certificate, trust: Trust,
          error: type[PaymentError]) -> tuple[B, str, str]:
    """The statement verified, its typed body, the signer's agent id and role."""
    root, crl, now = trust
    signer = verify_statement(statement, certificate=certificate, root=root, crl=crl, now=now,
                              expected_type=schema.TYPE)
    try:
        body = schema.from_body(statement.body)
    except PaymentError as exc:
        if isinstance(exc, error):
            raise
        raise error(exc.message, detail=exc.detail) from None
    return body, signer.agent_id, signer.role


def _expect(body: Body, error: type[PaymentError], **expected: object) -> None:
    for name, wanted in expected.items():
        if wanted is not None and getattr(body, name) != wanted:
            raise _fail(error, body.TYPE, name, f"{name} is not the one expected")


def _not_expired(commitment: PurseCommitment, now_ms: int, grace_ms: int = 0) -> None:
    if now_ms > commitment.expires + grace_ms:
        raise PurseExpired(f"the chain expired at {commitment.expires} (Unix ms)",
                           detail={"expires": commitment.expires, "now_ms": now_ms})


# -- the bank ---------------------------------------------------------------------------


def check_commitment(commitment: Statement, *, buyer_certificate: x509.Certificate,
                     root: x509.Certificate, crl: x509.CertificateRevocationList,
                     now: dt.datetime, bank_id: str, requester: str) -> PurseCommitment:
    """The bank's check of a commitment ``requester`` (the channel's peer) asks it to
    reserve for.

    Raises:
        StatementError, CertificateError: from ``verify_statement``.
        BadCommitment: a malformed body; signed by, or naming as buyer, another agent
            than the requester; another bank; ``expires`` more than
            ``MAX_VALIDITY_MS`` ahead; ``detail["field"]``.
        PurseExpired: ``expires`` is not after now.
    """
    body, signer, _ = _body(commitment, PurseCommitment, buyer_certificate,
                            (root, crl, now), BadCommitment)
    if signer != requester:
        raise _fail(BadCommitment, body.TYPE, "signer",
                    f"signed by {signer}, not by the requester {requester}")
    _expect(body, BadCommitment, buyer=requester, bank=bank_id)
    now_ms = _ms(now)
    if body.expires <= now_ms:
        raise PurseExpired(f"the chain's expires {body.expires} is not in the future",
                           detail={"expires": body.expires, "now_ms": now_ms})
    if body.expires > now_ms + MAX_VALIDITY_MS:
        raise _fail(BadCommitment, body.TYPE, "expires",
                    f"expires is more than {MAX_VALIDITY_MS} ms ahead")
    return body


def reservation_of(commitment: Statement, body: PurseCommitment, entry: int) -> PurseReservation:
    """The body the bank signs once ``body``'s value left the buyer as ``entry``."""
    return PurseReservation(chain=body.chain, commitment=commitment.digest, buyer=body.buyer,
                            seller=body.seller, bank=body.bank, amount=body.value,
                            expires=body.expires, entry=entry)


def check_redemption(commitment: PurseCommitment, *, index: int, payword: bytes
                     ) -> tuple[Amount, Amount]:
    """Whether ``payword`` is ``w_index`` of the committed chain: SHA-256 applied
    ``index`` times gives the root (``index`` hashes). Returns what goes to the
    seller (index x unit) and back to the buyer ((n - index) x unit).

    Raises:
        BadPayword: index < 1, or the payword does not hash to the root.
        BeyondChain: index > the chain's length.
    """
    if index < 1:
        raise BadPayword(f"payword index {index} is not 1 or more", detail={"index": index})
    if index > commitment.length:
        raise BeyondChain(f"payword {index} is beyond a chain of {commitment.length}",
                          detail={"index": index, "length": commitment.length})
    if hash_to_root(payword, index) != commitment.root:
        raise BadPayword(f"payword {index} does not hash to the chain's root",
                         detail={"index": index})
    return commitment.worth(index), commitment.worth(commitment.length - index)


def redeemed_of(commitment: Statement, body: PurseCommitment, index: int,
                entry: int) -> PurseRedeemed:
    """The body the bank signs once ``index`` paywords were paid as ``entry``."""
    return PurseRedeemed(chain=body.chain, commitment=commitment.digest, buyer=body.buyer,
                         seller=body.seller, index=index, paid=body.worth(index),
                         returned=body.worth(body.length - index), entry=entry)


# -- the seller -------------------------------------------------------------------------


def verify_commitment(commitment: Statement, *, buyer_certificate: x509.Certificate,
                      root: x509.Certificate, crl: x509.CertificateRevocationList,
                      now: dt.datetime, expected_seller: str,
                      expected_buyer: str | None = None, expected_bank: str | None = None,
                      expected_unit: Amount | None = None,
                      expected_order: bytes | None = None) -> PurseCommitment:
    """A commitment handed to its seller: signed by its buyer, for us, not expired.

    Raises:
        StatementError, CertificateError: from ``verify_statement``.
        BadCommitment: a malformed body, another signer than its buyer, or a field
            other than expected; ``detail["field"]``.
        PurseExpired: now is after ``expires``.
    """
    body, signer, _ = _body(commitment, PurseCommitment, buyer_certificate,
                            (root, crl, now), BadCommitment)
    if signer != body.buyer:
        raise _fail(BadCommitment, body.TYPE, "signer",
                    f"signed by {signer}, not by its buyer {body.buyer}")
    _expect(body, BadCommitment, buyer=expected_buyer, seller=expected_seller,
            bank=expected_bank, unit=expected_unit, order=expected_order)
    _not_expired(body, _ms(now))
    return body


def verify_reservation(reservation: Statement, *, bank_certificate: x509.Certificate,
                       root: x509.Certificate, crl: x509.CertificateRevocationList,
                       now: dt.datetime, commitment: Statement,
                       expected_bank: str | None = None) -> PurseReservation:
    """Offline: a bank (``expected_bank``, if given) reserved the whole value of
    ``commitment`` (whose body is taken as checked) for its chain.

    Raises:
        StatementError, CertificateError: from ``verify_statement``.
        BadConfirmation: a malformed body, a signer not a bank (or not the
            commitment's), or a field other than the commitment says.
    """
    body, signer, role = _body(reservation, PurseReservation, bank_certificate,
                               (root, crl, now), BadConfirmation)
    committed = PurseCommitment.from_statement(commitment)
    if role != BANK_ROLE or signer != committed.bank or expected_bank not in (None, signer):
        raise BadConfirmation(f"{body.TYPE} signed by {signer} (role {role}), not by the "
                              "chain's bank", detail={"type": body.TYPE, "field": "signer",
                                                      "signer": signer})
    _expect(body, BadConfirmation, chain=committed.chain, commitment=commitment.digest,
            buyer=committed.buyer, seller=committed.seller, bank=committed.bank,
            amount=committed.value, expires=committed.expires)
    return body


def verify_purse(commitment: Statement, reservation: Statement, *,
                 buyer_certificate: x509.Certificate, bank_certificate: x509.Certificate,
                 root: x509.Certificate, crl: x509.CertificateRevocationList,
                 now: dt.datetime, seller_id: str, bank_id: str,
                 expected_buyer: str | None = None, expected_unit: Amount | None = None,
                 expected_order: bytes | None = None
                 ) -> tuple[PurseCommitment, PurseReservation]:
    """The seller's check before it takes paywords of a chain: the commitment is
    the buyer's, for us, at our bank (``bank_id``: a chain at another bank cannot
    be redeemed by us), not expired, and the bank reserved its whole value.

    Raises: as ``verify_commitment`` and ``verify_reservation``; BadCommitment
    (field ``bank``) for another bank."""
    body = verify_commitment(commitment, buyer_certificate=buyer_certificate, root=root,
                             crl=crl, now=now, expected_seller=seller_id,
                             expected_buyer=expected_buyer, expected_bank=bank_id,
                             expected_unit=expected_unit, expected_order=expected_order)
    reserved = verify_reservation(reservation, bank_certificate=bank_certificate, root=root,
                                  crl=crl, now=now, commitment=commitment,
                                  expected_bank=bank_id)
    return body, reserved


def verify_redeemed(redeemed: Statement, *, bank_certificate: x509.Certificate,
                    root: x509.Certificate, crl: x509.CertificateRevocationList,
                    now: dt.datetime, expected_chain: bytes,
                    expected_commitment: bytes | None = None,
                    expected_seller: str | None = None, expected_index: int | None = None,
                    expected_bank: str | None = None) -> PurseRedeemed:
    """Offline: a bank (``expected_bank``) redeemed the chain ``expected_chain``.

    Raises:
        StatementError, CertificateError: from ``verify_statement``.
        BadConfirmation: a malformed body, a signer not a bank (or not the one
            expected), or a field other than expected; ``detail["field"]``.
    """
    body, signer, role = _body(redeemed, PurseRedeemed, bank_certificate, (root, crl, now),
                               BadConfirmation)
    if role != BANK_ROLE or expected_bank not in (None, signer):
        raise BadConfirmation(f"{body.TYPE} signed by {signer} (role {role}), not by "
                              f"{expected_bank or 'a bank'}",
                              detail={"type": body.TYPE, "field": "signer", "signer": signer})
    _expect(body, BadConfirmation, chain=expected_chain, commitment=expected_commitment,
            seller=expected_seller, index=expected_index)
    return body

