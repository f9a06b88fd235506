"""Pseudonymous certificates: an agent id that reveals nothing, whose link to the real
agent id only the CA can open (protocol.md 2.7).

Construction: a commitment. The CA draws a pseudonym id (``p-`` and 24 base32
characters of 15 random bytes) and a 32-byte random opening, keeps the real id and
the opening in its database, and puts only

    commitment = SHA-256("semper-pseudonym-1" 0x00 || opening || real id (ASCII))

in the certificate, in the non-critical extension ``ARC.3`` (an OCTET STRING of 32
bytes). The opening has a fixed length, so the concatenation is unambiguous; without
it the commitment hides the real id (the opening is 256 random bits), and with it
anyone can check a reveal against the certificate (``opens``), so a CA cannot name
the wrong agent without being caught. A commitment keeps the CA's key ring as it is
(no encryption key to keep and rotate).

A pseudonym is an ordinary agent at its level, restricted to what a party that does
not show its name may be: levels ``self-asserted`` to ``verified-identity`` (the CA
verified the real identity, and can reveal it), never ``liable`` (who is liable is
a name), and never a role the market trusts by name (``ca``, ``bank``, ``notary``,
``arbiter``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from typing import Final

from cryptography import x509

from ._errors import BadCertificate
from ._issue import check_agent_id
from ._oids import PSEUDONYM_EXTENSION, Level

__all__ = [
    "COMMITMENT_DOMAIN",
    "OPENING_SIZE",
    "PSEUDONYM_LEVELS",
    "PSEUDONYM_PATTERN",
    "TRUSTED_ROLES",
    "Pseudonym",
    "check_pseudonym_profile",
    "commitment_of",
    "is_pseudonym_id",
    "new_pseudonym",
    "opens",
    "pseudonym_extension",
    "read_commitment",
]

COMMITMENT_DOMAIN: Final = b"semper-pseudonym-1\x00"
OPENING_SIZE: Final = 32
COMMITMENT_SIZE: Final = 32
_ID_BYTES: Final = 15  # 120 bits: 24 base32 characters, no padding
PSEUDONYM_PATTERN: Final = r"p-[a-z2-7]{24}"
_PSEUDONYM = re.compile(PSEUDONYM_PATTERN + r"\Z")
#: The levels a pseudonym may hold.
PSEUDONYM_LEVELS: Final = frozenset({Level.SELF_ASSERTED, Level.VERIFIED_CONTACT,
                                     Level.VERIFIED_IDENTITY})
#: Roles the market relies on by name: never held by a pseudonym.
TRUSTED_ROLES: Final = frozenset({"ca", "bank", "notary", "arbiter"})
#: DER header of an OCTET STRING of 32 bytes.
_OCTETS: Final = b"\x04\x20"


@dataclass(frozen=True, slots=True, kw_only=True)
class Pseudonym:
    """The CA's secret record of one pseudonym: never leaves the CA but in a reveal."""

    pseudonym: str
    real_id: str
    opening: bytes

    @property
    def commitment(self) -> bytes:
        return commitment_of(self.real_id, self.opening)


def is_pseudonym_id(agent_id: object) -> bool:
    return isinstance(agent_id, str) and _PSEUDONYM.match(agent_id) is not None


def commitment_of(real_id: str, opening: bytes) -> bytes:
    """``SHA-256(COMMITMENT_DOMAIN || opening || real_id)``."""
    check_agent_id(real_id, "real agent id")
    if type(opening) is not bytes or len(opening) != OPENING_SIZE:
        raise ValueError(f"an opening is {OPENING_SIZE} bytes")
    return hashlib.sha256(COMMITMENT_DOMAIN + opening + real_id.encode("ascii")).digest()


def opens(commitment: bytes, real_id: str, opening: bytes) -> bool:
    """Whether ``real_id`` with ``opening`` is what ``commitment`` commits to."""
    try:
        return hmac.compare_digest(commitment_of(real_id, opening), commitment)
    except (ValueError, TypeError):
        return False


def new_pseudonym(real_id: str) -> Pseudonym:
    """A fresh pseudonym id and opening for ``real_id`` (random, so two pseudonyms of
    one agent are unlinkable)."""
    check_agent_id(real_id, "real agent id")
    name = base64.b32encode(secrets.token_bytes(_ID_BYTES)).decode("ascii").lower()
    return Pseudonym(pseudonym=f"p-{name}", real_id=real_id,
                     opening=secrets.token_bytes(OPENING_SIZE))


def check_pseudonym_profile(agent_id: str, role: str, level: Level) -> None:
    """Raises ValueError unless a pseudonym may be ``agent_id`` with ``role`` at ``level``."""
    if not is_pseudonym_id(agent_id):
        raise ValueError(f"a pseudonym's id is 'p-' and 24 of a-z, 2-7, not {agent_id!r}")
    if level not in PSEUDONYM_LEVELS:
        raise ValueError(f"a pseudonym may not hold the level {level.label!r} "
                         "(self-asserted, verified-contact or verified-identity)")
    if role in TRUSTED_ROLES:
        raise ValueError(f"a pseudonym may not hold the role {role!r} (the market relies "
                         f"on {', '.join(sorted(TRUSTED_ROLES))} by name)")


def pseudonym_extension(commitment: bytes) -> x509.UnrecognizedExtension:
    """The extension value to add, non-critical, to a pseudonym's certificate."""
    if type(commitment) is not bytes or len(commitment) != COMMITMENT_SIZE:
        raise ValueError(f"a commitment is {COMMITMENT_SIZE} bytes")
    return x509.UnrecognizedExtension(PSEUDONYM_EXTENSION, _OCTETS + commitment)


def read_commitment(cert: x509.Certificate) -> bytes | None:
    """The commitment a pseudonym's certificate carries, None for a named agent.

    Raises:
        BadCertificate: the extension is critical or not an OCTET STRING of 32 bytes.
    """
    try:
        extension = cert.extensions.get_extension_for_oid(PSEUDONYM_EXTENSION)
    except x509.ExtensionNotFound:
        return None
    except (ValueError, x509.DuplicateExtension) as exc:
        raise BadCertificate(f"malformed extensions: {exc}") from exc
    value = extension.value
    raw = value.value if isinstance(value, x509.UnrecognizedExtension) else b""
    if extension.critical:
        raise BadCertificate("the pseudonym extension must not be critical")
    if len(raw) != len(_OCTETS) + COMMITMENT_SIZE or not raw.startswith(_OCTETS):
        raise BadCertificate("the pseudonym extension must be an OCTET STRING of 32 bytes")
    return raw[len(_OCTETS):]
