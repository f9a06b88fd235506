"""A party's copy of a notary's escrow key (``notary.escrow_key``, protocol.md 10.3).

A party seals content keys to the notary's X25519 key only after checking the
notary's signed statement with the market root (``check_escrow_key``). It keeps the
statement and the notary's certificate (``fairexchange_escrow_keys``) and asks the
notary again only when the kept one no longer checks (expired, revoked).
"""

from __future__ import annotations

import sqlite3
from typing import Any, Final

from cryptography.hazmat.primitives.serialization import Encoding

from semper.agents.runtime._component import Component
from semper.services.certificates import load_certificate
from semper.services.fairexchange import NOTARY_ESCROW_KEY, EscrowKey, check_escrow_key
from semper.services.fairexchange._escrow import EscrowKeyRequest
from semper.services.statements import Statement

__all__ = ["DEFAULT_NOTARY", "MIGRATIONS", "EscrowKeys", "default_notary", "notary_escrow_key"]

#: The notary a party uses unless told otherwise (``[fairexchange] notary``).
DEFAULT_NOTARY: Final = "notary"

MIGRATIONS: Final = {
    "fairexchange_escrow_keys": [
        "CREATE TABLE fairexchange_escrow_keys ("
        " notary TEXT PRIMARY KEY, statement BLOB NOT NULL, certificate BLOB NOT NULL,"
        " updated_ms INTEGER NOT NULL) STRICT"
    ],
}


class EscrowKeys(Component):
    """The table of notaries' escrow keys a party keeps (required by the components
    that seal to a notary: certified mail, the fair seller)."""

    name = "escrow_keys"

    def migrations(self) -> Any:
        return MIGRATIONS


def default_notary(config: Any) -> str:
    """``[fairexchange] notary`` if the configuration has it, else ``notary``."""
    section = getattr(config, "fairexchange", None)
    notary = getattr(section, "notary", None) if section is not None else None
    if notary is None and isinstance(section, dict):
        notary = section.get("notary")
    return notary if isinstance(notary, str) and notary else DEFAULT_NOTARY


async def notary_escrow_key(context: Any, notary: str) -> EscrowKey:
    """``notary``'s escrow key, checked now: the kept one, else asked of the notary.

    Raises:
        the notary's refusal, ``statement.*``/``auth.*``, ``fairexchange.bad_escrow_key``.
    """
    row = await context.database.read(lambda c: c.execute(
        "SELECT statement, certificate FROM fairexchange_escrow_keys WHERE notary = ?",
        (notary,)).fetchone())
    if row is not None:
        try:
            return check_escrow_key(Statement.from_bytes(row[0]),
                                    certificate=load_certificate(row[1]), root=context.root,
                                    crl=context.crl, now=context.now(), notary=notary)
        except Exception as exc:  # expired, revoked, renewed: ask again
            if not isinstance(getattr(exc, "code", None), str):
                raise
    answer = await context.call(notary, NOTARY_ESCROW_KEY, EscrowKeyRequest())
    certificate = (await context.agent.channel(notary)).peer.certificate
    body = check_escrow_key(answer.statement, certificate=certificate, root=context.root,
                            crl=context.crl, now=context.now(), notary=notary)
    kept = (notary, answer.statement.to_bytes(), certificate.public_bytes(Encoding.DER),
            context.now_ms())

    def keep(c: sqlite3.Connection) -> None:
        c.execute("INSERT OR REPLACE INTO fairexchange_escrow_keys (notary, statement,"
                  " certificate, updated_ms) VALUES (?, ?, ?, ?)", kept)

    await context.database.transaction(keep)
    return body
