"""The delivery ticket: the seller's signed permission for one buyer to stream one
paid order's content, on a channel of its own, until it expires.

A ticket is a statement of type ``delivery.ticket`` signed by the seller (section
13.1). The seller issues it when the order is paid (or, for a purse, as the chain is
reserved) and checks it again when the buyer presents it on the delivery channel:
``check_ticket`` does that check, sans-IO, in the order protocol.md 13.2 gives. The
ticket is bound to the order (its digest), the buyer (its agent id, which the channel
authenticated), the content (``stream``, as the offer said it) and the payment (a
module's name, and the purse chain's id when paid chunk by chunk).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import ClassVar, Final

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ed25519

from .._errors import ServiceError
from .._schema import AGENT, DIGEST, TIME, Body, Kind, Schema, binary, form
from ..certificates import CertificateError, fingerprint, identity_of
from ..statements import (
    BadSignature,
    Statement,
    StatementError,
    sign_statement,
    verify_ed25519,
    verify_statement,
)
from ._content import StreamInfo
from ._errors import BadTicket, TicketExpired, WrongHolder

__all__ = ["CHAIN_SIZE", "TICKET_SCHEMA", "TICKET_SIZE", "TICKET_TYPE", "Ticket",
           "check_ticket", "sign_ticket"]

TICKET_TYPE: Final = "delivery.ticket"
#: Bytes of a ticket's random id.
TICKET_SIZE: Final = 16
#: Bytes of a purse chain's id.
CHAIN_SIZE: Final = 32
_EPOCH: Final = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def _wrong_type(expected: str, statement: Statement) -> BadTicket:
    return BadTicket(f"expected a {expected!r} statement, got {statement.type!r}",
                     detail={"field": "type", "type": statement.type})


#: A stream map inside a ticket: refused as a ticket field (``delivery.bad_ticket``,
#: detail ``cause`` ``delivery.bad_stream``).
STREAM: Final = Kind("a stream map {chunks, chunk_size, length, root, price_per_chunk}",
                     lambda v: type(v) is StreamInfo, decode=StreamInfo.from_wire,
                     encode=StreamInfo.to_wire)

TICKET_SCHEMA: Final = Schema(BadTicket, {
    "ticket": binary(TICKET_SIZE, TICKET_SIZE, f"{TICKET_SIZE} bytes"),
    "order": DIGEST,
    "buyer": AGENT,
    "seller": AGENT,
    # As commerce's (section 9.1): the ticket names the offer's item.
    "sku": form(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}",
                "1-64 of A-Z a-z 0-9 . _ - (not first: . _ -)"),
    "stream": STREAM,
    "payment": form(r"[a-z][a-z0-9_]{0,31}",
                    "a module name (a-z 0-9 _, 1-32, starting with a letter)"),
    "chain": binary(CHAIN_SIZE, CHAIN_SIZE, f"{CHAIN_SIZE} bytes (a purse chain id)"),
    "expires": TIME,
}, wrong_type=_wrong_type)


@dataclass(frozen=True, slots=True, kw_only=True)
class Ticket(Body):
    """The body of a ``delivery.ticket`` statement (protocol.md 13.1).

    ``chain`` is the purse chain that pays the stream chunk by chunk, None (the key
    absent) when the order was paid whole.
    """

    TYPE: ClassVar[str] = TICKET_TYPE
    SCHEMA: ClassVar[Schema] = TICKET_SCHEMA

    ticket: bytes
    order: bytes
    buyer: str
    seller: str
    sku: str
    stream: StreamInfo
    payment: str
    expires: int
    chain: bytes | None = None


def sign_ticket(ticket: Ticket, *, key: ed25519.Ed25519PrivateKey,
                certificate: x509.Certificate, now_ms: int, nonce: bytes) -> Statement:
    """The seller's signed ticket (``sign_statement``; ValueError for a key that is not
    the certificate's, a bad time or nonce)."""
    return sign_statement(TICKET_TYPE, ticket.to_wire(), key=key, certificate=certificate,
                          now_ms=now_ms, nonce=nonce)


def check_ticket(statement: Statement | bytes, *, seller_id: str, peer_id: str, now_ms: int,
                 certificate: x509.Certificate, root: x509.Certificate | None = None,
                 crl: x509.CertificateRevocationList | None = None,
                 order: bytes | None = None) -> Ticket:
    """Check a ticket presented on a delivery channel, as its seller (protocol.md 13.2).

    In order: it is a statement (its canonical bytes, or one already read); of type
    ``delivery.ticket`` with a ticket body; signed with ``certificate`` (the seller's
    own: with ``root`` and ``crl`` it is also validated as ``verify_statement`` does);
    naming ``seller_id`` as seller; for ``order`` when given; held by ``peer_id``, the
    channel's authenticated peer; not expired at ``now_ms`` (``expires`` inclusive).

    Returns:
        The ticket's body.

    Raises:
        BadTicket: not a valid ticket signed by this seller (for this order); ``detail``
            ``field``, or ``cause`` (the statement or certificate layer's code).
        WrongHolder: ``peer_id`` is not the ticket's buyer.
        TicketExpired: ``now_ms`` is after ``expires``.
        ValueError: ``certificate`` is not ``seller_id``'s, or only one of root and crl.
    """
    if identity_of(certificate).agent_id != seller_id:
        raise ValueError("certificate is not the certificate of seller_id")
    if (root is None) != (crl is None):
        raise ValueError("check_ticket takes the root and the CRL together, or neither")
    if not isinstance(statement, Statement):
        statement = _read(statement)
    body = Ticket.from_statement(statement)
    _check_signature(statement, seller_id=seller_id, certificate=certificate, root=root,
                     crl=crl, now_ms=now_ms)
    if body.seller != seller_id:
        raise BadTicket(f"the ticket is {body.seller!r}'s, not {seller_id!r}'s",
                        detail={"field": "seller"})
    if order is not None and body.order != order:
        raise BadTicket("the ticket is for another order", detail={"field": "order"})
    if body.buyer != peer_id:
        raise WrongHolder(f"the ticket is {body.buyer!r}'s, presented by {peer_id!r}",
                          detail={"buyer": body.buyer, "peer": peer_id})
    if now_ms > body.expires:
        raise TicketExpired(f"the ticket expired {now_ms - body.expires} ms ago",
                            detail={"expires": body.expires, "now_ms": now_ms})
    return body


def _read(data: object) -> Statement:
    if type(data) is not bytes:
        raise BadTicket("a ticket is a statement's canonical bytes", detail={"field": "ticket"})
    try:
        return Statement.from_bytes(data)
    except ServiceError as exc:
        raise BadTicket(f"not a statement: {exc.message}", detail={"cause": exc.code}) from None


def _check_signature(statement: Statement, *, seller_id: str, certificate: x509.Certificate,
                     root: x509.Certificate | None,
                     crl: x509.CertificateRevocationList | None, now_ms: int) -> None:
    try:
        if root is not None and crl is not None:
            verify_statement(statement, certificate=certificate, root=root, crl=crl,
                             now=_EPOCH + dt.timedelta(milliseconds=now_ms),
                             expected_type=TICKET_TYPE, expected_signer=seller_id)
            return
        if fingerprint(certificate) != statement.signer:
            raise BadSignature("the ticket is not signed by this seller")
        public = certificate.public_key()
        if not isinstance(public, ed25519.Ed25519PublicKey):
            raise BadSignature("the signature does not verify")
        verify_ed25519(public.public_bytes_raw(), statement.signed_bytes(), statement.signature)
    except (StatementError, CertificateError) as exc:
        raise BadTicket(f"the ticket does not verify: {exc.message}",
                        detail={"cause": exc.code}) from None
