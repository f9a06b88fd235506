"""semper's one private OID arc and everything placed under it.

The arc is a UUID OID (ITU-T X.667, ``2.25.<uuid as integer>``), derived once from
uuid 4eaa9f93-cb80-410d-80f8-0dcfd639e54e, so it needs no registration and cannot
collide. Never change these numbers: certificates already issued carry them.

    ARC.1            role policy; the role name is the CPS qualifier "semper:role/<name>"
    ARC.2.<n>        liability level n (1 self-asserted .. 4 liable)
                     "liable" carries the qualifier "semper:liable/<CCY>/<minor units>"
    ARC.3            pseudonym extension: the commitment to the real agent id
                     (non-critical, an OCTET STRING of 32 bytes; protocol.md 2.7)
"""

from __future__ import annotations

import enum
import uuid

from cryptography.x509 import ObjectIdentifier

__all__ = ["ARC", "PSEUDONYM_EXTENSION", "ROLE_POLICY", "Level", "level_from_oid", "level_oid"]

_ARC_UUID = uuid.UUID("4eaa9f93-cb80-410d-80f8-0dcfd639e54e")
ARC = f"2.25.{_ARC_UUID.int}"
ROLE_POLICY = ObjectIdentifier(f"{ARC}.1")
_LEVEL_ARC = f"{ARC}.2"
PSEUDONYM_EXTENSION = ObjectIdentifier(f"{ARC}.3")

ROLE_QUALIFIER_PREFIX = "semper:role/"
LIABLE_QUALIFIER_PREFIX = "semper:liable/"


class Level(enum.IntEnum):
    """How much the CA vouches for an agent, lowest to highest."""

    SELF_ASSERTED = 1
    VERIFIED_CONTACT = 2
    VERIFIED_IDENTITY = 3
    LIABLE = 4

    @property
    def label(self) -> str:
        return self.name.lower().replace("_", "-")

    @classmethod
    def from_label(cls, label: str) -> Level:
        try:
            return cls[label.upper().replace("-", "_")]
        except KeyError:
            names = ", ".join(level.label for level in cls)
            raise ValueError(f"unknown liability level {label!r} (one of {names})") from None


def level_oid(level: Level) -> ObjectIdentifier:
    return ObjectIdentifier(f"{_LEVEL_ARC}.{int(level)}")


def level_from_oid(oid: ObjectIdentifier) -> Level | None:
    prefix, _, last = oid.dotted_string.rpartition(".")
    if prefix != _LEVEL_ARC or not last.isdigit():
        return None
    try:
        return Level(int(last))
    except ValueError:
        return None
