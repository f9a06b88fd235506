"""Evidence bundles: one transaction's records, checkable offline by a third party.

A bundle is what an agent hands an arbiter: the archive records of one transaction
(and of the statements they name, e.g. the offer an order quotes), the certificates
of everyone who signed a statement in them or quoted inside them (where the archive
holds it), and a CRL, as one canonical msgpack file (docs/protocol.md section 6A.8):

    {"v": 2, "transaction": str, "records": [[record.to_wire(), ...], ...],
     "certificates": [[DER, ...], ...], "crl": DER, "root_fingerprint": SHA-256 of root DER}

Records and certificates come in chunks of ``CHUNK`` (the last one shorter), because
one list of the value model holds at most 65,536 elements and a transaction may hold
more records. Version 1 bundles (flat lists) are still read.

The root is deliberately not inside: the verifier brings the market root it trusts,
and ``root_fingerprint`` only lets a bundle from another market fail with a clear
error instead of a pile of untrusted certificates. The records are a subset of a
chain, so each is checked on its own (its hash, its statement), not linked.

Theory of revocation. The verifier, not the exporter, decides whether a signer was
revoked: it takes the newest CRL at hand (the bundle's, or any newer one the
verifier brings), and a CRL speaks only up to its thisUpdate. So a statement of a
signer not on that CRL counts only if it was issued at or before the CRL's
thisUpdate (otherwise ``CrlTooOld``: bring a newer CRL). A statement of a signer on
the CRL counts only if independent evidence dates it before the revocation: a
statement in the bundle by another agent, itself counted, issued before the
revocation date, whose body names the revoked signer's statement by its digest (the
counterparty's receipt, an order quoting an offer). The signer's own ``issued_at``
never decides, since whoever holds a stolen key writes any date.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Final

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from ..certificates import (
    CLOCK_SKEW,
    AgentIdentity,
    BadCrl,
    CertificateError,
    Revoked,
    fingerprint,
    identity_of,
    load_certificate,
    load_crl,
    validate_crl,
)

# The statement layer's verify refuses a revoked signer outright; a bundle may still
# count its statement (module docstring), so it re-runs the checks that follow the
# revocation check with the same private building block the statement layer uses.
from ..certificates._validate import _check_usage
from ..statements import (
    MAX_SKEW_MS,
    BadSignature,
    Statement,
    StatementError,
    canonical_decode,
    canonical_encode,
    verify_ed25519,
    verify_statement,
)
from ._errors import (
    ArchiveError,
    CrlTooOld,
    InvalidEvidence,
    MalformedEvidence,
    MissingCertificate,
    RecordTampered,
    WrongRoot,
)
from ._record import ArchiveRecord

__all__ = [
    "CHUNK",
    "EvidenceBundle",
    "VerifiedStatement",
    "collect_bundle",
    "crl_covers_until",
    "named_digests",
    "newest_crl",
    "quoted_signers",
    "verify_bundle",
]

VERSION: Final = 2
#: Elements per chunk of ``records`` and ``certificates`` (every chunk but the last
#: holds exactly this many).
CHUNK: Final = 4096
_KEYS: Final = frozenset({"v", "transaction", "records", "certificates", "crl",
                          "root_fingerprint"})
_DER: Final = serialization.Encoding.DER
_EPOCH: Final = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_DIGEST: Final = 32


@dataclass(frozen=True, slots=True, kw_only=True)
class EvidenceBundle:
    """The evidence of one transaction. Construction checks shapes (``ValueError``):
    seqs strictly increase; whether a record of another transaction belongs (a
    statement of this one names it) and whether the evidence holds is
    ``verify_bundle``'s job."""

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
            "records": _chunked([record.to_wire() for record in self.records]),
            "certificates": _chunked(list(self.certificates)),
            "crl": self.crl,
            "root_fingerprint": self.root_fingerprint,
        }

    def to_bytes(self) -> bytes:
        """The bundle file: the canonical encoding of ``to_wire()``.

        Raises:
            ValueError: more than ``CHUNK`` * 65,536 records (beyond any archive).
        """
        return canonical_encode(self.to_wire())

    @classmethod
    def from_wire(cls, value: object) -> EvidenceBundle:
        """Read a bundle (version 2, or 1) from a decoded value; record hashes are
        kept, not checked.

        Raises:
            MalformedEvidence: not a bundle of a known version, or a bad field or record.
        """
        if type(value) is not dict or set(value) != _KEYS:
            raise MalformedEvidence("not an evidence bundle: wrong keys")
        version = value["v"]
        if type(version) is not int or version not in (1, VERSION):
            raise MalformedEvidence(f"evidence bundle version {version!r} is not supported")
        if version == 1:
            records, certificates = value["records"], value["certificates"]
        else:
            records = _unchunked(value["records"], "records")
            certificates = _unchunked(value["certificates"], "certificates")
        if type(records) is not list:
            raise MalformedEvidence("records must be a list")
        try:
            bundle = cls(
                transaction=value["transaction"],
                records=[ArchiveRecord.from_wire(record) for record in records],
                certificates=certificates,
                crl=value["crl"],
                root_fingerprint=value["root_fingerprint"],
            )
        except (ValueError, TypeError) as exc:
            raise MalformedEvidence(f"bad evidence bundle: {exc}") from None
        if version == 1 and any(r.transaction != bundle.transaction for r in bundle.records):
            raise MalformedEvidence("bad evidence bundle: a version 1 bundle holds records "
                                    "of its own transaction only")
        return bundle

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


def _chunked(items: list[Any]) -> list[list[Any]]:
    return [items[i:i + CHUNK] for i in range(0, len(items), CHUNK)]


def _unchunked(value: object, name: str) -> list[Any]:
    """The flat list of a chunked field; chunks are as ``_chunked`` makes them, so a
    bundle has one encoding."""
    if type(value) is not list:
        raise MalformedEvidence(f"{name} must be a list of chunks")
    flat: list[Any] = []
    for number, chunk in enumerate(value):
        full = number < len(value) - 1
        if type(chunk) is not list or not chunk or len(chunk) > CHUNK or (
                full and len(chunk) != CHUNK):
            raise MalformedEvidence(f"{name} chunk {number} must hold "
                                    f"{CHUNK if full else f'1 to {CHUNK}'} elements")
        flat.extend(chunk)
    return flat


@dataclass(frozen=True, slots=True, kw_only=True)
class VerifiedStatement:
    """A statement from a bundle that verified, with the record that held it and its
    signer as the CA vouched for it. For a signer revoked since, ``revoked_at`` is the
    revocation date (Unix ms) and ``witness`` the seq of the record whose statement
    dates this one before it."""

    record: ArchiveRecord
    statement: Statement
    signer: AgentIdentity
    revoked_at: int | None = None
    witness: int | None = None


#: Keys whose value links a chain (a notary's decision to its previous decision, a
#: tree head to the head before it), not evidence this statement rests on: following
#: one would put another exchange's statement, with what it releases (a content
#: key), into this transaction's bundle.
CHAIN_LINKS: Final = frozenset({"previous"})


def named_digests(statement: Statement) -> set[bytes]:
    """Every 32-byte value in the statement's body but chain links: the digests of
    the statements it names (a receipt's ``statement``, an order's ``offer_digest``,
    ...)."""
    found: set[bytes] = set()
    stack: list[Any] = [statement.body]
    while stack:  # bounded: the body is a finite canonical value
        value = stack.pop()
        if type(value) is bytes and len(value) == _DIGEST:
            found.add(value)
        elif type(value) is dict:
            stack.extend(v for k, v in value.items() if k not in CHAIN_LINKS)
        elif type(value) is list:
            stack.extend(value)
    return found


#: Keys every statement map has (protocol.md 6A.2), as a statement quotes another.
_STATEMENT_KEYS: Final = frozenset({"body", "issued_at", "nonce", "signature", "signer",
                                    "type"})


def quoted_signers(statement: Statement) -> set[bytes]:
    """The signer fingerprints of the statements quoted whole inside ``statement``'s
    body, at any depth (a notary's replacement contract quotes the resolve request,
    which quotes m1 and m2; an order quotes the offer): a verifier checks each with
    its signer's certificate, which the bundle must carry even when no record of
    that signer is in it."""
    found: set[bytes] = set()
    stack: list[Any] = [statement.body]
    while stack:  # bounded: the body is a finite canonical value
        value = stack.pop()
        if type(value) is dict:
            if _STATEMENT_KEYS <= value.keys():
                try:
                    quoted = Statement.from_wire(value)
                except StatementError:
                    quoted = None
                if quoted is not None:
                    found.add(quoted.signer)
                    stack.append(quoted.body)
                    continue
            stack.extend(value.values())
        elif type(value) is list:
            stack.extend(value)
    return found


def collect_bundle(
    records: Iterable[ArchiveRecord],
    *,
    transaction: str,
    certificates: Iterable[x509.Certificate],
    crl: x509.CertificateRevocationList,
    root: x509.Certificate,
) -> EvidenceBundle:
    """Build the bundle of ``transaction`` from an archive's records.

    Picks the records of that transaction and, among the others given, those whose
    statement one of them names by digest (``named_digests``); from ``certificates``
    (any number, in any order), exactly the ones their statements' signers need, and
    those of the signers of statements quoted inside them (``quoted_signers``) that
    are among ``certificates``: a quote is checked with its signer's certificate, and
    its signer may have no record here (a responder's m2 inside the notary's
    replacement contract, in the bundle of an originator that never received m2).
    Never the other way round: a record that names this transaction's statements does
    not enter its bundle, so nobody adds to another party's evidence by quoting it.

    Raises:
        MissingCertificate: a signer's certificate is not among ``certificates``.
        StatementError: an archived statement is not readable.
    """
    given = list(records)
    own = [record for record in given if record.transaction == transaction]
    named: set[bytes] = set()
    for record in own:
        named |= named_digests(Statement.from_bytes(record.statement))
    related = {record.seq: record for record in given if record.transaction != transaction
               and hashlib.sha256(record.statement).digest() in named}
    chosen = sorted([*own, *related.values()], key=lambda record: record.seq)
    by_fingerprint = {fingerprint(cert): cert for cert in certificates}
    needed: dict[bytes, bytes] = {}
    quoted: set[bytes] = set()
    for record in chosen:
        statement = Statement.from_bytes(record.statement)
        signer = statement.signer
        if signer not in by_fingerprint:
            raise MissingCertificate(
                f"no certificate for the signer of record {record.seq}",
                detail={"seq": record.seq, "signer": signer.hex()},
            )
        needed.setdefault(signer, by_fingerprint[signer].public_bytes(_DER))
        quoted |= quoted_signers(statement)
    for signer in sorted(quoted - needed.keys()):  # where the archive has them
        if signer in by_fingerprint:
            needed[signer] = by_fingerprint[signer].public_bytes(_DER)
    return EvidenceBundle(
        transaction=transaction,
        records=chosen,
        certificates=list(needed.values()),
        crl=crl.public_bytes(_DER),
        root_fingerprint=fingerprint(root),
    )


def newest_crl(
    bundle: EvidenceBundle,
    *,
    root: x509.Certificate,
    now: dt.datetime,
    crls: Sequence[x509.CertificateRevocationList] = (),
) -> x509.CertificateRevocationList:
    """The CRL that decides revocation: the newest (highest CRL number, then latest
    thisUpdate) of the bundle's and ``crls``, whoever brought it.

    Raises:
        MalformedEvidence: the bundle's CRL does not parse.
        InvalidEvidence: (``seq`` nil, ``cause`` ``auth.*``) a CRL is not the root's,
            or the newest is stale or dated in the future at ``now``.
    """
    try:
        own = load_crl(bundle.crl)
    except CertificateError as exc:
        raise MalformedEvidence(f"the bundle holds {exc.message}",
                                detail={"cause": exc.code}) from exc
    candidates = [own, *crls]
    root_key = root.public_key()
    try:
        for crl in candidates:  # a forged CRL is an error even if it is not the newest
            # The market root is Ed25519 (protocol.md 2.4): no other key signs a CRL.
            if crl.issuer != root.subject or not isinstance(root_key, ed25519.Ed25519PublicKey) \
                    or not crl.is_signature_valid(root_key):
                raise BadCrl("the CRL is not signed by the market root")
        newest = max(candidates, key=lambda crl: (_crl_number(crl), crl.last_update_utc))
        validate_crl(newest, root=root, now=now)
    except CertificateError as exc:
        raise _invalid(bundle, None, exc) from exc
    return newest


def verify_bundle(
    bundle: EvidenceBundle,
    *,
    root: x509.Certificate,
    now: dt.datetime,
    crls: Sequence[x509.CertificateRevocationList] = (),
) -> list[VerifiedStatement]:
    """Verify every statement in ``bundle`` with nothing but ``root``, the bundle and
    the CRLs the verifier brings (``crls``; the newest CRL at hand decides, see the
    module docstring).

    Each record's own hash, then its statement: canonical, signed by a certificate in
    the bundle that the root issued and was valid when the statement was issued; its
    signer not revoked as of the newest CRL, which must have been issued at or after
    the statement; or revoked, but the statement named by another agent's counted
    statement issued before the revocation.

    Returns:
        One ``VerifiedStatement`` per record, in the bundle's order.

    Raises:
        WrongRoot: the bundle names another root than ``root``.
        MalformedEvidence: a certificate or the CRL in the bundle cannot be parsed, or
            a record of another transaction that no statement of this one names.
        The first failure in record order:
        RecordTampered: a record's fields no longer match its hash.
        MissingCertificate: a signer's certificate is not in the bundle.
        CrlTooOld: a statement issued after the newest CRL's thisUpdate.
        InvalidEvidence: a CRL or a statement does not verify; ``detail["cause"]``
            is the code of the underlying error (``auth.revoked``,
            ``statement.bad_signature``, ...), ``detail["seq"]`` the record.
    """
    if fingerprint(root) != bundle.root_fingerprint:
        raise WrongRoot("the bundle was made for another market root",
                        detail={"root_fingerprint": bundle.root_fingerprint.hex()})
    crl = newest_crl(bundle, root=root, now=now, crls=crls)
    certificates = _load_certificates(bundle)
    statements = [_parse(record) for record in bundle.records]
    _check_related(bundle, statements)
    checked: dict[bytes, _Checked] = {}
    outcomes = [_verify_record(bundle, record, statement, certificates, checked, root=root,
                               crl=crl, now=now)
                for record, statement in zip(bundle.records, statements, strict=True)]
    _resolve_witnesses(bundle, outcomes)
    for outcome in outcomes:
        if isinstance(outcome, ArchiveError):
            raise outcome
    return [outcome for outcome in outcomes if isinstance(outcome, VerifiedStatement)]


@dataclass(frozen=True, slots=True)
class _RevokedSigner:
    """A statement that verifies but for its signer's revocation: it needs a witness."""

    verified: VerifiedStatement
    error: InvalidEvidence


_Outcome = VerifiedStatement | _RevokedSigner | ArchiveError


@dataclass(frozen=True, slots=True)
class _Checked:
    """A certificate that signed a statement of the bundle which passed every check
    but the signature's own: what holds for its next statements, whatever their time,
    so that those take only the time checks and an Ed25519 verify (a bundle of
    66,000 records of one signer: 64 s -> a third of it)."""

    signer: AgentIdentity
    revoked: Revoked | None


def _crl_number(crl: x509.CertificateRevocationList) -> int:
    try:
        return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except x509.ExtensionNotFound:
        return -1


def _ms(when: dt.datetime) -> int:
    return (when - _EPOCH) // dt.timedelta(milliseconds=1)


def _load_certificates(bundle: EvidenceBundle) -> dict[bytes, x509.Certificate]:
    try:
        certs = [load_certificate(der) for der in bundle.certificates]
    except CertificateError as exc:
        raise MalformedEvidence(f"the bundle holds {exc.message}",
                                detail={"cause": exc.code}) from exc
    return {fingerprint(cert): cert for cert in certs}


def _parse(record: ArchiveRecord) -> Statement | StatementError:
    try:
        return Statement.from_bytes(record.statement)
    except StatementError as exc:
        return exc


def _check_related(bundle: EvidenceBundle, statements: list[Statement | StatementError]
                   ) -> None:
    """A record of another transaction must be named by one of this transaction's."""
    named: set[bytes] = set()
    for record, statement in zip(bundle.records, statements, strict=True):
        if record.transaction == bundle.transaction and isinstance(statement, Statement):
            named |= named_digests(statement)
    for record in bundle.records:
        if record.transaction != bundle.transaction and (
                hashlib.sha256(record.statement).digest() not in named):
            raise MalformedEvidence(
                f"record {record.seq} is of transaction {record.transaction!r}, and no "
                f"statement of {bundle.transaction!r} names it",
                detail={"seq": record.seq, "transaction": bundle.transaction})


def _verify_record(
    bundle: EvidenceBundle,
    record: ArchiveRecord,
    statement: Statement | StatementError,
    certificates: dict[bytes, x509.Certificate],
    checked: dict[bytes, _Checked],
    *,
    root: x509.Certificate,
    crl: x509.CertificateRevocationList,
    now: dt.datetime,
) -> _Outcome:
    if record.content_hash() != record.hash:
        return RecordTampered(f"record {record.seq} no longer matches its hash",
                              detail={"seq": record.seq, "transaction": bundle.transaction})
    if isinstance(statement, StatementError):
        return _invalid(bundle, record.seq, statement)
    certificate = certificates.get(statement.signer)
    if certificate is None:
        return MissingCertificate(
            f"the bundle lacks the certificate that signed record {record.seq}",
            detail={"seq": record.seq, "signer": statement.signer.hex()},
        )
    known = checked.get(statement.signer)
    if known is not None and _in_time(statement, certificate, root, now):
        try:
            verify_ed25519(_raw_key(certificate), statement.signed_bytes(),
                           statement.signature)
        except StatementError as exc:
            return _invalid(bundle, record.seq, exc)
        if known.revoked is not None:
            return _revoked(bundle, record, statement, certificate, crl, known.revoked)
        signer = known.signer
    else:
        try:
            signer = verify_statement(statement, certificate=certificate, root=root, crl=crl,
                                      now=now)
        except Revoked as exc:
            outcome = _revoked(bundle, record, statement, certificate, crl, exc)
            if isinstance(outcome, _RevokedSigner):
                checked[statement.signer] = _Checked(outcome.verified.signer, exc)
            return outcome
        except (StatementError, CertificateError) as exc:
            return _invalid(bundle, record.seq, exc)
        checked[statement.signer] = _Checked(signer, None)
    this_update = _ms(crl.last_update_utc)
    if statement.issued_at > crl_covers_until(crl):
        return CrlTooOld(
            f"record {record.seq} was signed at {_when(statement.issued_at)}, after the "
            f"newest CRL at hand (number {_crl_number(crl)}, issued "
            f"{_when(crl_covers_until(crl))}): nothing shows its signer was not revoked "
            f"by then; check again with a CRL issued after it (--crl FILE, or --config "
            f"to have the CA agent issue one)",
            detail={"seq": record.seq, "transaction": bundle.transaction,
                    "issued_at": statement.issued_at, "crl_this_update": this_update,
                    "crl_number": _crl_number(crl)})
    return VerifiedStatement(record=record, statement=statement, signer=signer)


def _in_time(statement: Statement, certificate: x509.Certificate, root: x509.Certificate,
             now: dt.datetime) -> bool:
    """The checks of section 6A.4 that depend on the statement's time (steps 3, 4):
    when they hold, a certificate that passed the rest once passes it again."""
    issued = statement.issued_at_datetime
    return (statement.issued_at <= _ms(now) + MAX_SKEW_MS
            and root.not_valid_before_utc <= issued <= root.not_valid_after_utc
            and certificate.not_valid_before_utc <= issued <= certificate.not_valid_after_utc)


def _raw_key(certificate: x509.Certificate) -> bytes:
    public = certificate.public_key()
    if not isinstance(public, ed25519.Ed25519PublicKey):
        raise BadSignature("the signature does not verify")
    return public.public_bytes_raw()


def _revoked(
    bundle: EvidenceBundle,
    record: ArchiveRecord,
    statement: Statement,
    certificate: x509.Certificate,
    crl: x509.CertificateRevocationList,
    revoked: Revoked,
) -> _Outcome:
    """``verify_statement`` stops at the revocation (its step 5); run steps 6 and 7 so
    that a witness can only save a statement that is otherwise sound."""
    try:
        _check_usage(certificate)
        signer = identity_of(certificate)
        verify_ed25519(_raw_key(certificate), statement.signed_bytes(), statement.signature)
    except (StatementError, CertificateError) as exc:
        return _invalid(bundle, record.seq, exc)
    entry = crl.get_revoked_certificate_by_serial_number(certificate.serial_number)
    assert entry is not None  # verify_statement found it there
    revoked_at = _ms(entry.revocation_date_utc)
    error = _invalid(bundle, record.seq, revoked)
    error.detail["revoked_at"] = revoked_at
    error.message += (f" (revoked {_when(revoked_at)}, and no statement of another agent "
                      f"issued before that names it)")
    return _RevokedSigner(VerifiedStatement(record=record, statement=statement, signer=signer,
                                            revoked_at=revoked_at), error)


def _resolve_witnesses(bundle: EvidenceBundle, outcomes: list[_Outcome]) -> None:
    """Replace each ``_RevokedSigner`` in place: counted if a witness dates it, else its
    error. Witnesses are statements counted on their own (no chains through revoked
    signers), by another agent, issued before the revocation, naming it by digest."""
    witnesses: dict[bytes, list[VerifiedStatement]] = {}
    for outcome in outcomes:
        if isinstance(outcome, VerifiedStatement):
            for digest in named_digests(outcome.statement):
                witnesses.setdefault(digest, []).append(outcome)
    for index, outcome in enumerate(outcomes):
        if not isinstance(outcome, _RevokedSigner):
            continue
        pending = outcome.verified
        assert pending.revoked_at is not None
        found = next(_witnesses(witnesses.get(pending.statement.digest, ()), pending), None)
        outcomes[index] = outcome.error if found is None else VerifiedStatement(
            record=pending.record, statement=pending.statement, signer=pending.signer,
            revoked_at=pending.revoked_at, witness=found.record.seq)


def _witnesses(candidates: Iterable[VerifiedStatement], pending: VerifiedStatement
               ) -> Iterator[VerifiedStatement]:
    assert pending.revoked_at is not None
    for candidate in candidates:
        if (candidate.signer.agent_id != pending.signer.agent_id
                and candidate.statement.issued_at < pending.revoked_at):
            yield candidate


def _when(ms: int) -> str:
    return f"{_EPOCH + dt.timedelta(milliseconds=ms):%Y-%m-%dT%H:%M:%SZ}"


def _invalid(
    bundle: EvidenceBundle, seq: int | None, exc: StatementError | CertificateError
) -> InvalidEvidence:
    where = "a CRL" if seq is None else f"record {seq}"
    return InvalidEvidence(
        f"{where} does not verify: {exc.message}",
        detail={"seq": seq, "transaction": bundle.transaction, "cause": exc.code,
                "cause_detail": exc.detail},
    )


def crl_covers_until(crl: x509.CertificateRevocationList) -> int:
    """Up to when (Unix ms) a CRL vouches for the certificates it does not name: the
    moment its CA issued it, which is its thisUpdate plus CLOCK_SKEW (a semper CA
    backdates thisUpdate by exactly that, for verifiers whose clocks are behind)."""
    return _ms(crl.last_update_utc) + int(CLOCK_SKEW.total_seconds() * 1000)
