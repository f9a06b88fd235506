"""The notary's escrow services: its X25519 escrow key, certified mail's recovery and
close, and fair purchase's recovery of goods (protocol.md 10.3 to 10.5, 10.6).

Theory of operation. The notary creates one X25519 escrow key the first time it
runs, kept in its database with its identity's other data (``notary_escrow_keys``),
and serves it as a ``notary.escrow_key`` statement it signs (valid for
``KEY_VALIDITY_MS``, signed again when less than a day is left). Parties check the
statement with the market root and seal content keys to it.

Every recovery is decided once per exchange id on the notary's one ``NotaryBook``,
the one contract signing decides on (``NotaryDecisions.decide``, agents/components/
_notary.py): one decision chain per notary, whatever the exchange's kind. The first
decision stands and is answered again to any later request; a new one is stored
with the statement it quotes archived, in one commit, before it is answered.

The parties' statements are checked with their certificates: the requester's from
its channel, any other signer's (a seller dead after being paid, a bank) from the
CA's directory, whose cards carry them (``certificate_of``).

Crash points (``SEMPER_CRASH_AT``): ``notary.escrow.received`` (a recovery or close
request decoded, nothing done); then the book's own (``contract.notary.decided``,
``contract.notary.committed``), whatever the kind.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Mapping, Sequence
from typing import Any, Final

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import x25519
from cryptography.hazmat.primitives.serialization import Encoding

from semper.agents.components._archive import RECORD_OVERHEAD, peer_usage
from semper.agents.components._evidence import QuotaExceeded
from semper.agents.components._notary import NotaryDecisions
from semper.agents.components._payments import installed_modules
from semper.agents.runtime._component import Component, handles
from semper.agents.runtime._faults import crash_point
from semper.services.certificates import load_certificate
from semper.services.commerce import Order
from semper.services.fairexchange import (
    ESCROW_KEY_TYPE,
    NOTARY_CLOSE_MAIL,
    NOTARY_ESCROW_KEY,
    NOTARY_RECOVER_GOODS,
    NOTARY_RECOVER_MAIL,
    EscrowKey,
    EscrowKeyWire,
    MailOffer,
    close_mail,
    recover_goods,
    recover_mail,
)
from semper.services.fairexchange._bodies import DecisionWire
from semper.services.fairexchange._errors import BadPayment
from semper.services.money import Amount
from semper.services.statements import Statement

__all__ = ["DAY_MS", "KEY_VALIDITY_MS", "MIGRATIONS", "NotaryEscrow", "certificate_of",
           "fingerprint"]

DAY_MS: Final = 86_400_000
#: How long a signed ``notary.escrow_key`` statement is valid.
KEY_VALIDITY_MS: Final = 30 * DAY_MS

MIGRATIONS: Final = {
    "notary_escrow": [
        "CREATE TABLE notary_escrow_keys ("
        " id INTEGER PRIMARY KEY, private BLOB NOT NULL, public BLOB NOT NULL,"
        " created_ms INTEGER NOT NULL) STRICT"
    ],
}

_BANK_ROLE: Final = "bank"


def fingerprint(certificate: x509.Certificate) -> bytes:
    """A certificate's SHA-256 fingerprint: what a statement names as its signer."""
    return hashlib.sha256(certificate.public_bytes(Encoding.DER)).digest()


async def certificate_of(agent: Any, agent_id: str, *, signer: bytes | None = None
                         ) -> x509.Certificate | None:
    """``agent_id``'s certificate from the cards we keep, else from the directory
    (whose card we then keep); with ``signer``, only one whose fingerprint it is (a
    card older than a renewal is looked up again). None if none is found."""

    def kept(c: sqlite3.Connection) -> bytes | None:
        row = c.execute("SELECT certificate FROM peer_cards WHERE agent_id = ?",
                        (agent_id,)).fetchone()
        return None if row is None else row[0]

    for ask in (False, True):
        if ask:
            try:
                await agent.peers.lookup(agent_id)
            except Exception as exc:  # the directory's refusal: unknown, unreachable
                if not isinstance(getattr(exc, "code", None), str):
                    raise
                return None
        der = await agent.database.read(kept)
        if der is not None:
            certificate = load_certificate(der)
            if signer is None or fingerprint(certificate) == signer:
                return certificate
    return None


class NotaryEscrow(Component):
    """The notary's escrow key and its decisions on certified mail and fair purchase."""

    name = "notary_escrow"

    requires = (NotaryDecisions,)

    def __init__(self, context: Any) -> None:
        super().__init__(context)
        self._keys: list[x25519.X25519PrivateKey] = []
        self._statement: Statement | None = None

    def migrations(self) -> Mapping[str, Sequence[str]]:
        return MIGRATIONS

    # -- the escrow key -------------------------------------------------------------

    async def private_keys(self) -> list[x25519.X25519PrivateKey]:
        """Every escrow key we ever made, newest first (created on first use)."""
        if not self._keys:
            fresh = x25519.X25519PrivateKey.generate()

            def load_or_create(c: sqlite3.Connection) -> list[bytes]:
                rows = [r[0] for r in c.execute(
                    "SELECT private FROM notary_escrow_keys ORDER BY id DESC")]
                if rows:
                    return rows
                c.execute("INSERT INTO notary_escrow_keys (private, public, created_ms)"
                          " VALUES (?, ?, ?)", (fresh.private_bytes_raw(),
                                                fresh.public_key().public_bytes_raw(),
                                                self.context.now_ms()))
                return [fresh.private_bytes_raw()]

            raw = await self.context.database.transaction(load_or_create)
            self._keys = [x25519.X25519PrivateKey.from_private_bytes(k) for k in raw]
        return self._keys

    async def escrow_key_statement(self) -> Statement:
        """Our current ``notary.escrow_key``, signed again when less than a day is left."""
        now = self.context.now_ms()
        statement = self._statement
        if statement is None or EscrowKey.from_statement(statement).valid_until - now < DAY_MS:
            key = (await self.private_keys())[0]
            body = EscrowKey(key=key.public_key().public_bytes_raw(), notary=self.context.id,
                             valid_from=now - 60_000, valid_until=now + KEY_VALIDITY_MS)
            statement = self._statement = self.context.sign(ESCROW_KEY_TYPE, body.to_body())
        return statement

    @handles(NOTARY_ESCROW_KEY)
    async def escrow_key(self, request: Any, _: Any) -> EscrowKeyWire:
        return EscrowKeyWire(statement=await self.escrow_key_statement())

    # -- deciding, on the notary's one book ------------------------------------------------

    async def _decide(self, request: Any, make: Any, quoted: list[Statement],
                      certificates: dict[bytes, x509.Certificate]) -> DecisionWire:
        """``make(book)`` on the notary's one ``NotaryBook`` (``NotaryDecisions``, shared
        with contract signing: one decision chain per notary), a new decision stored
        with ``quoted`` (the request's statements) archived before it is answered."""
        requester = request.peer.agent_id
        limit = self.context.config.evidence_peer_quota
        records, size = await self.context.database.read(
            lambda c: peer_usage(c, requester))
        used = size + records * RECORD_OVERHEAD
        if used >= limit:  # each decision is kept for good, with what it quotes
            raise QuotaExceeded(f"{requester!r} has used {used} of its {limit} bytes of "
                                "our archive: no new decisions",
                                detail={"used": used, "quota": limit})
        return await self.context.component(NotaryDecisions).decide(
            make, requester=requester, quoted=quoted, certificates=certificates)

    # -- verification ports -------------------------------------------------------------

    async def _certificates(self, request: Any, statements: Sequence[Statement],
                            signers: Sequence[str], ders: Sequence[bytes] | None
                            ) -> dict[bytes, x509.Certificate]:
        """Certificates of ``statements``' signers (agent ids ``signers``, in order),
        by fingerprint: the requester's from its channel, then those the request
        carries (``ders``; each is checked against the root and the CRL when a
        statement is verified with it), else from the directory."""
        found: dict[bytes, x509.Certificate] = {}
        for der in ders or ():
            try:
                certificate = load_certificate(der)
            except Exception as exc:  # not a certificate: it proves nothing
                if not isinstance(getattr(exc, "code", None), str):
                    raise
                continue
            found[fingerprint(certificate)] = certificate
        peer = request.peer
        found[fingerprint(peer.certificate)] = peer.certificate
        for statement, agent_id in zip(statements, signers, strict=True):
            if statement.signer in found:
                continue
            certificate = await certificate_of(self.context.agent, agent_id,
                                               signer=statement.signer)
            if certificate is not None:
                found[statement.signer] = certificate
        return found

    def _verifier(self, certificates: dict[bytes, x509.Certificate]) -> Any:
        def verify(statement: Statement, *, expected_type: str | None = None,
                   expected_signer: str | None = None) -> Any:
            certificate = certificates.get(statement.signer)
            if certificate is None:  # let the statement layer say why (wrong signer)
                certificate = self.context.certificate
            return self.context.verify(statement, certificate, expected_type=expected_type,
                                       expected_signer=expected_signer)
        return verify

    async def _bank_certificate(self, payment: Statement) -> x509.Certificate | None:
        known = await self.context.archive.certificate(payment.signer)
        if known is not None:
            return known
        banks = [self.context.config.payment.bank or "bank"]
        for bank in banks:
            certificate = await certificate_of(self.context.agent, bank, signer=payment.signer)
            if certificate is not None:
                return certificate
        try:
            cards = await self.context.agent.peers.lookup_role(_BANK_ROLE)
        except Exception as exc:
            if not isinstance(getattr(exc, "code", None), str):
                raise
            return None
        for card in cards:
            if card.agent_id not in banks:
                certificate = await certificate_of(self.context.agent, card.agent_id,
                                                   signer=payment.signer)
                if certificate is not None:
                    return certificate
        return None

    # -- certified mail -------------------------------------------------------------------

    @handles(NOTARY_RECOVER_MAIL)
    async def recover_mail(self, request: Any, body: Any) -> DecisionWire:
        crash_point("notary.escrow.received")
        offer = MailOffer.from_statement(body.offer)
        certificates = await self._certificates(request, [body.offer, body.receipt],
                                                [offer.sender, offer.receiver],
                                                body.certificates)
        keys = await self.private_keys()
        verify = self._verifier(certificates)
        return await self._decide(request, lambda book: recover_mail(
            book, body, requester=request.peer.agent_id, private_keys=keys, verify=verify,
            now_ms=self.context.now_ms()), [body.offer, body.receipt], certificates)

    @handles(NOTARY_CLOSE_MAIL)
    async def close_mail(self, request: Any, body: Any) -> DecisionWire:
        crash_point("notary.escrow.received")
        offer = MailOffer.from_statement(body.offer)
        certificates = await self._certificates(request, [body.offer], [offer.sender],
                                                body.certificates)
        verify = self._verifier(certificates)
        return await self._decide(request, lambda book: close_mail(
            book, body, requester=request.peer.agent_id, verify=verify,
            now_ms=self.context.now_ms()), [body.offer], certificates)

    # -- fair purchase ----------------------------------------------------------------------

    @handles(NOTARY_RECOVER_GOODS)
    async def recover_goods(self, request: Any, body: Any) -> DecisionWire:
        crash_point("notary.escrow.received")
        terms = Order.from_statement(body.order)
        offer = terms.offer
        certificates = await self._certificates(
            request, [body.order, offer, body.delivery],
            [terms.buyer, terms.seller, terms.seller], body.certificates)
        bank = certificates.get(body.payment.signer) or \
            await self._bank_certificate(body.payment)
        if bank is not None:
            certificates[body.payment.signer] = bank
        keys = await self.private_keys()
        verify = self._verifier(certificates)
        verify_payment = self._payment_check(terms, bank)
        return await self._decide(request, lambda book: recover_goods(
            book, body, requester=request.peer.agent_id, private_keys=keys, verify=verify,
            verify_payment=verify_payment, now_ms=self.context.now_ms()),
            [body.order, body.delivery, body.payment], certificates)

    def _payment_check(self, terms: Order, bank: x509.Certificate | None) -> Any:
        def verify_payment(payment: Statement, *, order: bytes, seller: str,
                           amount: Amount) -> None:
            """A bank's settlement of ``amount`` from the order's buyer to ``seller``
            for this order, as the order's payment module tells it offline (its
            ``settles``): the notary names no instrument."""
            if bank is None:
                raise BadPayment("the payment is not signed by a bank of this market",
                                 detail={"reason": "bank"})
            module = installed_modules().get(terms.payment_module)
            settles = getattr(module, "settles", None)
            if settles is None:
                raise BadPayment(f"the payment module {terms.payment_module!r} cannot show "
                                 "a settlement to the notary", detail={"reason": "module"})
            settles(payment, bank_certificate=bank, root=self.context.root,
                    crl=self.context.crl, now=self.context.now(), payer=terms.buyer,
                    payee=seller, amount=amount, reference=order,
                    idempotency_key=terms.idempotency_key)
        return verify_payment
