"""Evidence bundles: one transaction's records, checkable offline by a third party.

A bundle is what an agent hands an arbiter: the archive records of one transaction,
the certificates of everyone who signed a statement in them, and a CRL, as one
canonical msgpack file:

    {"v": 1, "transaction": str, "records": [record.to_wire(), ...],
     "certificates": [DER, ...], "crl": DER, "root_fingerprint": SHA-256 of root DER}

The root is deliberately not inside: the verifier brings the market root it trusts,
and ``root_fingerprint`` only lets a bundle from another market fail with a clear
error instead of a pile of untrusted certificates. The records are a subset of a
chain, so each is checked on its own (its hash, its statement), not linked.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ..certificates import (
    AgentIdentity,
    CertificateError,
    fingerprint,
    load_certificate,
    load_crl,
    validate_crl,
)
from ..statements import (
    Statement,
    StatementError,
    canonical_decode,
    canonical_encode,
    verify_statement,
)
from ._errors import (
    InvalidEvidence,
    MalformedEvidence,
    MissingCertificate,
    RecordTampered,
    WrongRoot,
)
from ._record import ArchiveRecord

__all__ = ["EvidenceBundle", "VerifiedStatement", "collect_bundle", "verify_bundle"]

VERSION: Final = 1
_KEYS: Final = frozenset({"v", "transaction", "records", "certificates", "crl",
                          "root_fingerprint"})
_DER: Final = serialization.Encoding.DER


@dataclass(frozen=True, slots=True, kw_only=True)
class EvidenceBundle:
    """The evidence of one transaction. Construction checks shapes (``ValueError``):
    every record belongs to ``transaction`` and seqs strictly increase; whether the
    evidence holds is ``verify_bundle``'s job."""

    transaction: str
    records: list[ArchiveRecord]
    certificates: list[bytes]
    crl: bytes
    root_fingerprint: bytes

    def __post_init__(self) -> None:
        if type(self.transaction) is not str or not self.transaction:
            raise ValueError("transaction must be a non-empty str")
        if type(self.records) is not list:
            raise ValueError("records must be a list")
        last = -1
        for record in self.records:
            if not isinstance(record, ArchiveRecord):
                raise ValueError("records must be ArchiveRecords")
            if record.transaction != self.transaction:
                raise ValueError(f"record {record.seq} belongs to another transaction")
            if record.seq <= last:
                raise ValueError(f"record {record.seq} is out of order or repeated")
            last = record.seq
        if type(self.certificates) is not list or any(type(c) is not bytes
                                                      for c in self.certificates):
            raise ValueError("certificates must be a list of DER bytes")
        if type(self.crl) is not bytes:
            raise ValueError("crl must be DER bytes")
        if type(self.root_fingerprint) is not bytes or len(self.root_fingerprint) != 32:
            raise ValueError("root_fingerprint must be 32 bytes")

    def to_wire(self) -> dict[str, Any]:
        return {
            "v": VERSION,
            "transaction": self.transaction,
            "records": [record.to_wire() for record in self.records],
            "certificates": list(self.certificates),
            "crl": self.crl,
            "root_fingerprint": self.root_fingerprint,
        }

    def to_bytes(self) -> bytes:
        """The bundle file: the canonical encoding of ``to_wire()``."""
        return canonical_encode(self.to_wire())

    @classmethod
    def from_wire(cls, value: object) -> EvidenceBundle:
        """Read a bundle from a decoded value; record hashes are kept, not checked.

        Raises:
            MalformedEvidence: not a bundle of version 1, or a bad field or record.
        """
        if type(value) is not dict or set(value) != _KEYS:
            raise MalformedEvidence("not an evidence bundle: wrong keys")
        if type(value["v"]) is not int or value["v"] != VERSION:
            raise MalformedEvidence(f"evidence bundle version {value['v']!r} is not supported")
        records = value["records"]
        if type(records) is not list:
            raise MalformedEvidence("records must be a list")
        try:
            return cls(
                transaction=value["transaction"],
                records=[ArchiveRecord.from_wire(record) for record in records],
                certificates=value["certificates"],
                crl=value["crl"],
                root_fingerprint=value["root_fingerprint"],
            )
        except (ValueError, TypeError) as exc:
            raise MalformedEvidence(f"bad evidence bundle: {exc}") from None

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview) -> EvidenceBundle:
        """Read a bundle file.

        Raises:
            MalformedEvidence: not the canonical encoding of a bundle, whatever the
                bytes (``detail["cause"]`` names a decoding failure's code).
        """
        try:
            value = canonical_decode(data)
        except StatementError as exc:
            raise MalformedEvidence(f"not an evidence bundle: {exc.message}",
                                    detail={"cause": exc.code}) from None
        return cls.from_wire(value)


@dataclass(frozen=True, slots=True, kw_only=True)
class VerifiedStatement:
    """A statement from a bundle that verified, with the record that held it and its
    signer as the CA vouched for it."""

    record: ArchiveRecord
    statement: Statement
    signer: AgentIdentity


def collect_bundle(
    records: Iterable[ArchiveRecord],
    *,
    transaction: str,
    certificates: Iterable[x509.Certificate],
    crl: x509.CertificateRevocationList,
    root: x509.Certificate,
) -> EvidenceBundle:
    """Build the bundle of ``transaction`` from an archive's records.

    Picks the records of that transaction and, from ``certificates`` (any number, in
    any order), exactly the ones their statements' signers need.

    Raises:
        MissingCertificate: a signer's certificate is not among ``certificates``.
        StatementError: an archived statement is not readable.
    """
    chosen = [record for record in records if record.transaction == transaction]
    by_fingerprint = {fingerprint(cert): cert for cert in certificates}
    needed: dict[bytes, bytes] = {}
    for record in chosen:
        signer = Statement.from_bytes(record.statement).signer
        if signer not in by_fingerprint:
            raise MissingCertificate(
                f"no certificate for the signer of record {record.seq}",
                detail={"seq": record.seq, "signer": signer.hex()},
            )
        needed.setdefault(signer, by_fingerprint[signer].public_bytes(_DER))
    return EvidenceBundle(
        transaction=transaction,
        records=chosen,
        certificates=list(needed.values()),
        crl=crl.public_bytes(_DER),
        root_fingerprint=fingerprint(root),
    )


def verify_bundle(
    bundle: EvidenceBundle, *, root: x509.Certificate, now: dt.datetime
) -> list[VerifiedStatement]:
    """Verify every statement in ``bundle`` with nothing but ``root`` and the bundle.

    Each record's own hash, then its statement: canonical, signed by a certificate in
    the bundle that the root issued and was valid when the statement was issued, not
    revoked in the bundle's CRL (which must be the root's and current at ``now``).

    Returns:
        One ``VerifiedStatement`` per record, in the bundle's order.

    Raises:
        WrongRoot: the bundle names another root than ``root``.
        MalformedEvidence: a certificate or the CRL in the bundle cannot be parsed.
        RecordTampered: a record's fields no longer match its hash.
        MissingCertificate: a signer's certificate is not in the bundle.
        InvalidEvidence: the CRL or a statement does not verify; ``detail["cause"]``
            is the code of the underlying error (``auth.revoked``,
            ``statement.bad_signature``, ...), ``detail["seq"]`` the record.
    """
    if fingerprint(root) != bundle.root_fingerprint:
        raise WrongRoot("the bundle was made for another market root",
                        detail={"root_fingerprint": bundle.root_fingerprint.hex()})
    crl, certificates = _load(bundle)
    try:
        validate_crl(crl, root=root, now=now)
    except CertificateError as exc:
        raise _invalid(bundle, None, exc) from exc
    return [_verify_record(bundle, record, certificates, root=root, crl=crl, now=now)
            for record in bundle.records]


def _load(bundle: EvidenceBundle) -> tuple[x509.CertificateRevocationList,
                                           dict[bytes, x509.Certificate]]:
    try:
        crl = load_crl(bundle.crl)
        certs = [load_certificate(der) for der in bundle.certificates]
    except CertificateError as exc:
        raise MalformedEvidence(f"the bundle holds {exc.message}",
                                detail={"cause": exc.code}) from exc
    return crl, {fingerprint(cert): cert for cert in certs}


def _verify_record(
    bundle: EvidenceBundle,
    record: ArchiveRecord,
    certificates: dict[bytes, x509.Certificate],
    *,
    root: x509.Certificate,
    crl: x509.CertificateRevocationList,
    now: dt.datetime,
) -> VerifiedStatement:
    if record.content_hash() != record.hash:
        raise RecordTampered(f"record {record.seq} no longer matches its hash",
                             detail={"seq": record.seq, "transaction": bundle.transaction})
    try:
        statement = Statement.from_bytes(record.statement)
        certificate = certificates.get(statement.signer)
        if certificate is None:
            raise MissingCertificate(
                f"the bundle lacks the certificate that signed record {record.seq}",
                detail={"seq": record.seq, "signer": statement.signer.hex()},
            )
        signer = verify_statement(statement, certificate=certificate, root=root, crl=crl,
                                  now=now)
    except (StatementError, CertificateError) as exc:
        raise _invalid(bundle, record.seq, exc) from exc
    return VerifiedStatement(record=record, statement=statement, signer=signer)


def _invalid(
    bundle: EvidenceBundle, seq: int | None, exc: StatementError | CertificateError
) -> InvalidEvidence:
    where = "the bundle's CRL" if seq is None else f"record {seq}"
    return InvalidEvidence(
        f"{where} does not verify: {exc}",
        detail={"seq": seq, "transaction": bundle.transaction, "cause": exc.code,
                "cause_detail": exc.detail},
    )
