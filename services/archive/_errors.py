"""Why an archive chain or an evidence bundle was refused; one class per stable code."""

from __future__ import annotations

from typing import ClassVar

from .._errors import ServiceError

__all__ = [
    "ArchiveError",
    "ChainBroken",
    "CrlTooOld",
    "InvalidEvidence",
    "MalformedEvidence",
    "MissingCertificate",
    "RecordTampered",
    "WrongRoot",
]


class ArchiveError(ServiceError):
    """The archive or an evidence bundle was refused. Subclasses name the reason."""

    code: ClassVar[str] = "archive.error"


class MalformedEvidence(ArchiveError, ValueError):
    """Not an archive record or bundle: undecodable, not canonical, a field missing or
    mistyped, or a bundle at odds with itself (a record of another transaction).
    A ValueError too: an ``ArchiveRecord`` made with a bad field raises it."""

    code: ClassVar[str] = "archive.malformed"


class ChainBroken(ArchiveError):
    """The hash chain does not hold. ``detail["kind"]`` says how (``edited``,
    ``deleted``, ``reordered``, ``duplicated``, ``head_mismatch``) and
    ``detail["seq"]`` where."""

    code: ClassVar[str] = "archive.chain_broken"


class RecordTampered(ArchiveError):
    """A record's stored hash is not the hash of its fields."""

    code: ClassVar[str] = "archive.record_tampered"


class WrongRoot(ArchiveError):
    """The bundle was made for another market root than the verifier's."""

    code: ClassVar[str] = "archive.wrong_root"


class MissingCertificate(ArchiveError):
    """A statement's signer certificate is not in the bundle."""

    code: ClassVar[str] = "archive.missing_certificate"


class InvalidEvidence(ArchiveError):
    """A statement in the bundle does not verify; ``detail["cause"]`` is the code of
    the statement or certificate error, ``detail["seq"]`` the record."""

    code: ClassVar[str] = "archive.invalid_evidence"


class CrlTooOld(ArchiveError):
    """A statement was signed after the newest CRL at hand was issued: nothing shows
    its signer was not revoked by then. ``detail``: ``seq``, ``issued_at``,
    ``crl_this_update`` (Unix ms), ``crl_number``. A newer CRL settles it."""

    code: ClassVar[str] = "archive.crl_too_old"
