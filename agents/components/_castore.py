"""The CA agent's tables: invitations, issued certificates, the directory of cards.

They live in the CA agent's own SQLite file (``DIR/ca/data/agent.sqlite``), which
three kinds of process share through WAL: the running CA agent, and the operator's
``semper ca invite``/``status``/``revoke`` and ``semper market init``. Every
function here takes an open ``sqlite3.Connection`` and runs inside the caller's
transaction (``Database.transaction``/``transaction_sync``) or read.

Serials are stored as lowercase hex text: they run to 159 bits, more than an
SQLite integer holds.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import os
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from semper.agents.components._reveal import PSEUDONYM_MIGRATIONS, find_pseudonym
from semper.agents.runtime._files import write_file
from semper.agents.runtime._storage import Database
from semper.services.certificates import (
    AgentHasCertificate,
    BadCrl,
    CertificateAuthority,
    EnrollRequest,
    Invitation,
    IssuedCertificate,
    Level,
    check_redemption,
    crl_renewal_due,
    identity_of,
    issue_agent_certificate,
    load_certificate,
    load_crl,
    renew_crl,
    to_ms,
)
from semper.services.directory import ContactCard, OutdatedCard, SignedCard
from semper.services.money import Amount
from semper.services.statements import Statement

__all__ = [
    "CA_MIGRATIONS",
    "add_invitation",
    "cards_of_role",
    "find_card",
    "find_invitation",
    "issued_for",
    "issued_by_serial",
    "latest_issued",
    "open_ca_database",
    "publish_crl",
    "record_issued",
    "redeem",
    "store_card",
]

CA_MIGRATIONS: Final[Mapping[str, Sequence[str]]] = {
    "enrollment": ["""
        CREATE TABLE enroll_invitations (
            token_id BLOB PRIMARY KEY,
            secret BLOB NOT NULL,
            agent_id TEXT NOT NULL,
            role TEXT NOT NULL,
            level INTEGER NOT NULL,
            liability_currency TEXT,
            liability_minor_units INTEGER,
            created_ms INTEGER NOT NULL,
            expires_ms INTEGER NOT NULL,
            used_ms INTEGER,
            used_serial TEXT
        )
    """],
    "certificates": ["""
        CREATE TABLE issued_certificates (
            serial TEXT PRIMARY KEY,
            agent_id TEXT NOT NULL,
            role TEXT NOT NULL,
            level INTEGER NOT NULL,
            fingerprint BLOB NOT NULL,
            not_after_ms INTEGER NOT NULL,
            issued_ms INTEGER NOT NULL,
            via TEXT NOT NULL,
            certificate BLOB NOT NULL
        );
        CREATE INDEX issued_by_agent ON issued_certificates (agent_id, issued_ms)
    """],
    "directory": ["""
        CREATE TABLE directory_cards (
            agent_id TEXT PRIMARY KEY,
            role TEXT NOT NULL,
            issued_ms INTEGER NOT NULL,
            not_after_ms INTEGER NOT NULL,
            serial TEXT NOT NULL,
            card BLOB NOT NULL,
            certificate BLOB NOT NULL
        );
        CREATE INDEX cards_by_role ON directory_cards (role)
    """],
    **PSEUDONYM_MIGRATIONS,  # pseudonyms and their reveals (_reveal.py)
}


def open_ca_database(data_dir: Path) -> Database:
    """The CA's database, for command-line tools (blocking)."""
    return Database.open_sync(data_dir / "agent.sqlite", CA_MIGRATIONS)


# -- invitations ----------------------------------------------------------------------


def add_invitation(connection: sqlite3.Connection, invitation: Invitation) -> None:
    liability = invitation.liability
    connection.execute(
        "INSERT INTO enroll_invitations (token_id, secret, agent_id, role, level, "
        "liability_currency, liability_minor_units, created_ms, expires_ms) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (invitation.token_id, invitation.secret, invitation.agent_id, invitation.role,
         int(invitation.level), liability.currency if liability else None,
         liability.minor_units if liability else None, invitation.created_ms,
         invitation.expires_ms))


def find_invitation(connection: sqlite3.Connection, token_id: bytes) -> Invitation | None:
    row = connection.execute(
        "SELECT token_id, secret, agent_id, role, level, liability_currency, "
        "liability_minor_units, created_ms, expires_ms, used_ms FROM enroll_invitations "
        "WHERE token_id = ?", (token_id,)).fetchone()
    if row is None:
        return None
    liability = Amount(row[5], row[6]) if row[5] is not None else None
    return Invitation(token_id=row[0], secret=row[1], agent_id=row[2], role=row[3],
                      level=Level(row[4]), liability=liability, created_ms=row[7],
                      expires_ms=row[8], used_ms=row[9])


def cancel_invitations(connection: sqlite3.Connection, agent_id: str, *, now_ms: int) -> int:
    """Mark every token of ``agent_id`` not yet redeemed as used (``used_serial``
    ``revoked``), so that none enrolls the id again: revoking an agent revokes what
    it was invited with too. Returns how many there were."""
    return connection.execute(
        "UPDATE enroll_invitations SET used_ms = ?, used_serial = 'revoked' "
        "WHERE agent_id = ? AND used_ms IS NULL", (now_ms, agent_id)).rowcount


def redeem(connection: sqlite3.Connection, request: EnrollRequest, *,
           ca: CertificateAuthority, now: dt.datetime,
           crl: x509.CertificateRevocationList | None = None) -> x509.Certificate:
    """Check an enrollment request, issue its certificate, record it and mark the
    token used: one transaction, so a token yields at most one certificate even when
    two requests race (``BEGIN IMMEDIATE`` serialises them).

    Raises:
        EnrollmentError: every refusal of ``check_redemption``; nothing is written.
        AgentHasCertificate: the id holds a certificate that is still good (two
            tokens issued for one id cannot both be redeemed).
    """
    now_ms = to_ms(now)
    invitation = find_invitation(connection, request.token_id)
    key = check_redemption(invitation, proof=request.proof, csr_der=request.csr_der,
                           now_ms=now_ms)
    assert invitation is not None  # check_redemption raised otherwise
    current = latest_issued(connection, invitation.agent_id)
    if current is not None and current.not_after_ms > now_ms and (
        crl is None or crl.get_revoked_certificate_by_serial_number(current.serial) is None
    ):
        raise AgentHasCertificate(
            f"{invitation.agent_id} holds a good certificate (serial {current.serial:x}); "
            "it must be revoked before the id is enrolled again",
            detail={"agent_id": invitation.agent_id})
    pseudonym = find_pseudonym(connection, invitation.agent_id)  # protocol.md 2.7
    certificate = issue_agent_certificate(
        ca, agent_id=invitation.agent_id, role=invitation.role, level=invitation.level,
        liability=invitation.liability, public_key=key, now=now,
        commitment=pseudonym.commitment if pseudonym is not None else None)
    record_issued(connection, certificate, via=f"token:{request.token_id.hex()}", now=now)
    marked = connection.execute(
        "UPDATE enroll_invitations SET used_ms = ?, used_serial = ? "
        "WHERE token_id = ? AND used_ms IS NULL",
        (now_ms, f"{certificate.serial_number:x}", request.token_id)).rowcount
    if marked != 1:  # pragma: no cover - the transaction makes this impossible
        raise RuntimeError("the invitation changed under a write transaction")
    return certificate


# -- issued certificates ----------------------------------------------------------------


def record_issued(connection: sqlite3.Connection, certificate: x509.Certificate, *,
                  via: str, now: dt.datetime) -> IssuedCertificate:
    identity = identity_of(certificate)
    record = IssuedCertificate(
        serial=certificate.serial_number, agent_id=identity.agent_id, role=identity.role,
        level=identity.level, fingerprint=identity.fingerprint,
        not_after_ms=to_ms(identity.not_after), issued_ms=to_ms(now))
    connection.execute(
        "INSERT INTO issued_certificates (serial, agent_id, role, level, fingerprint, "
        "not_after_ms, issued_ms, via, certificate) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (f"{record.serial:x}", record.agent_id, record.role, int(record.level),
         record.fingerprint, record.not_after_ms, record.issued_ms, via,
         certificate.public_bytes(serialization.Encoding.DER)))
    return record


_ISSUED = ("SELECT serial, agent_id, role, level, fingerprint, not_after_ms, issued_ms "
           "FROM issued_certificates ")


def _issued(row: Any) -> IssuedCertificate:
    return IssuedCertificate(serial=int(row[0], 16), agent_id=row[1], role=row[2],
                             level=Level(row[3]), fingerprint=row[4], not_after_ms=row[5],
                             issued_ms=row[6])


def latest_issued(connection: sqlite3.Connection, agent_id: str) -> IssuedCertificate | None:
    """The certificate most recently issued for ``agent_id``."""
    row = connection.execute(_ISSUED + "WHERE agent_id = ? ORDER BY issued_ms DESC, rowid DESC "
                             "LIMIT 1", (agent_id,)).fetchone()
    return _issued(row) if row else None


def issued_for(connection: sqlite3.Connection, agent_id: str) -> list[IssuedCertificate]:
    rows = connection.execute(_ISSUED + "WHERE agent_id = ? ORDER BY issued_ms, rowid",
                              (agent_id,)).fetchall()
    return [_issued(row) for row in rows]


def issued_by_serial(connection: sqlite3.Connection, serial: int) -> IssuedCertificate | None:
    row = connection.execute(_ISSUED + "WHERE serial = ?", (f"{serial:x}",)).fetchone()
    return _issued(row) if row else None


# -- the CRL ----------------------------------------------------------------------------


def publish_crl(
    path: Path, ca: CertificateAuthority, *, now: dt.datetime, revoke: Iterable[int] = (),
    if_due: bool = False,
) -> x509.CertificateRevocationList | None:
    """Issue the CRL that follows the one at ``path`` (its entries plus ``revoke``'s
    serials) and write it there atomically; with ``if_due``, only when the one there
    is due for renewal (``crl_renewal_due``), else return None.

    Under an exclusive lock on the CRL's folder: the CA agent's renewal timer,
    ``semper ca crl`` and ``semper ca revoke`` are separate processes, and a renewal
    must not publish over a revocation published a moment before.

    Raises:
        OSError: the file cannot be read or written.
        BadCrl: the file holds no CRL signed by ``ca``'s root (nothing is written).
    """

    folder = os.open(path.parent, os.O_RDONLY)
    try:
        fcntl.flock(folder, fcntl.LOCK_EX)
        old = load_crl(path.read_bytes())
        root = ca.certificate
        if old.issuer != root.subject or not old.is_signature_valid(root.public_key()):
            raise BadCrl(f"{path} is not a CRL of this market's root")
        if if_due and not crl_renewal_due(old, now):
            return None
        crl = renew_crl(ca, old, now=now, revoke=revoke)
        write_file(path, crl.public_bytes(serialization.Encoding.PEM))
        return crl
    finally:
        os.close(folder)  # releases the lock


# -- the directory --------------------------------------------------------------------


def store_card(connection: sqlite3.Connection, signed: SignedCard, card: ContactCard) -> None:
    """Keep ``card`` as the agent's latest, unless a later-issued one is stored.

    Raises:
        OutdatedCard: the stored card was issued after this one.
    """
    row = connection.execute("SELECT issued_ms FROM directory_cards WHERE agent_id = ?",
                             (card.agent_id,)).fetchone()
    issued = signed.statement.issued_at
    if row is not None and row[0] > issued:
        raise OutdatedCard(f"the directory holds a later card of {card.agent_id}",
                           detail={"stored_issued_at": row[0]})
    connection.execute(
        "INSERT INTO directory_cards (agent_id, role, issued_ms, not_after_ms, serial, card, "
        "certificate) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (agent_id) DO UPDATE SET "
        "role = excluded.role, issued_ms = excluded.issued_ms, "
        "not_after_ms = excluded.not_after_ms, serial = excluded.serial, "
        "card = excluded.card, certificate = excluded.certificate",
        (card.agent_id, card.role, issued, card.not_after_ms,
         f"{signed.certificate.serial_number:x}", signed.statement.to_bytes(),
         signed.certificate.public_bytes(serialization.Encoding.DER)))


def _signed(row: Any) -> SignedCard:
    return SignedCard(Statement.from_bytes(row[0]), load_certificate(row[1]))


def find_card(connection: sqlite3.Connection, agent_id: str, now_ms: int) -> SignedCard | None:
    row = connection.execute("SELECT card, certificate FROM directory_cards "
                             "WHERE agent_id = ? AND not_after_ms >= ?",
                             (agent_id, now_ms)).fetchone()
    return _signed(row) if row else None


def cards_of_role(connection: sqlite3.Connection, role: str, now_ms: int,
                  limit: int = 256) -> list[SignedCard]:
    rows = connection.execute("SELECT card, certificate FROM directory_cards "
                              "WHERE role = ? AND not_after_ms >= ? ORDER BY agent_id LIMIT ?",
                              (role, now_ms, limit)).fetchall()
    return [_signed(row) for row in rows]
