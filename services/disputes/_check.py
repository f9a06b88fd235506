"""Checking an evidence bundle offline, and the registry of obligation checkers.

``check_bundle`` verifies a bundle with nothing but the market root (and CRLs the
caller brings): the records' hashes, every statement's signature, its signer's
certificate and revocation (``services.archive.verify_bundle``). It then offers the
verified statements (an ``Evidence``) to each registered checker in turn, the last
registered first; the first that recognises the bundle's protocol says, per
obligation, who met it.

A verdict is ``met`` True when the bundle holds signed evidence that the party met
the obligation, False when it holds signed evidence that the party did not (goods of
another digest, too little paid), and None when it holds neither: the bundle cannot
tell, and an arbiter decides with whatever else it has (the other party's bundle).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from cryptography import x509

from .._errors import ServiceError
from ..archive import (
    EvidenceBundle,
    VerifiedStatement,
    newest_crl,
    verify_bundle,
)
from ..certificates import AgentIdentity, CertificateError, fingerprint, load_certificate
from ..statements import Statement, StatementError, verify_statement

__all__ = [
    "Checker",
    "Evidence",
    "Report",
    "Verdict",
    "check_bundle",
    "register",
    "registered",
]

_EPOCH: Final = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


@dataclass(frozen=True, slots=True)
class Verdict:
    """Whether ``party`` (an agent id) met ``obligation``: True, False, or None when
    the bundle cannot tell; ``reason`` says why, naming the records it rests on."""

    obligation: str
    party: str
    met: bool | None
    reason: str

    def to_wire(self) -> dict[str, Any]:
        return {"obligation": self.obligation, "party": self.party, "met": self.met,
                "reason": self.reason}

    @classmethod
    def from_wire(cls, value: object) -> Verdict:
        """Raises ValueError: not a verdict map."""
        if type(value) is not dict or set(value) != {"obligation", "party", "met", "reason"}:
            raise ValueError("a verdict is {obligation, party, met, reason}")
        obligation, party, met, reason = (value["obligation"], value["party"], value["met"],
                                          value["reason"])
        if not (type(obligation) is str and type(party) is str and type(reason) is str
                and (met is None or type(met) is bool)):
            raise ValueError("a verdict's obligation, party and reason are str, met a "
                             "bool or nil")
        return cls(obligation, party, met, reason)


@dataclass(frozen=True, slots=True)
class Evidence:
    """What a checker sees: the bundle and its statements, each verified offline."""

    bundle: EvidenceBundle
    statements: tuple[VerifiedStatement, ...]
    root: x509.Certificate
    crl: x509.CertificateRevocationList
    now: dt.datetime
    _certificates: dict[bytes, x509.Certificate] = field(default_factory=dict, repr=False)

    @property
    def transaction(self) -> str:
        return self.bundle.transaction

    def of_type(self, statement_type: str) -> list[VerifiedStatement]:
        """The verified statements of that type, in record order."""
        return [v for v in self.statements if v.statement.type == statement_type]

    def by_digest(self, digest: bytes) -> VerifiedStatement | None:
        return next((v for v in self.statements if v.statement.digest == digest), None)

    def signed_by_role(self, role: str) -> list[VerifiedStatement]:
        """The verified statements whose signer's certificate names ``role``."""
        return [v for v in self.statements if v.signer.role == role]

    def verify_quoted(self, statement: Statement, *, expected_type: str,
                      expected_signer: str) -> AgentIdentity | ServiceError:
        """Verify a statement quoted whole inside another's body (an order's offer),
        which ``verify_bundle`` does not: with the signer's certificate from the bundle,
        the root and the newest CRL. Returns the signer, or the error (not raised: a
        checker turns it into a verdict the bundle cannot decide)."""
        counted = self.by_digest(statement.digest)
        if counted is not None:
            if counted.signer.agent_id != expected_signer or counted.statement.type != \
                    expected_type:
                return StatementError(f"record {counted.record.seq} is not a "
                                      f"{expected_type!r} by {expected_signer!r}")
            return counted.signer
        if not self._certificates:
            for der in self.bundle.certificates:
                try:
                    loaded = load_certificate(der)
                except CertificateError:
                    continue  # verify_bundle refused such a bundle already
                self._certificates[fingerprint(loaded)] = loaded
        certificate = self._certificates.get(statement.signer)
        if certificate is None:
            return StatementError("the bundle holds no certificate of its signer")
        try:
            return verify_statement(statement, certificate=certificate, root=self.root,
                                    crl=self.crl, now=self.now, expected_type=expected_type,
                                    expected_signer=expected_signer)
        except (StatementError, CertificateError) as exc:
            return exc


#: A protocol's checker: the verdicts for a bundle of its protocol, None for a bundle
#: of another. It must not raise for any bundle that verified.
Checker = Callable[[Evidence], "list[Verdict] | None"]

_REGISTRY: Final[dict[str, Checker]] = {}


def register(protocol: str, checker: Checker) -> None:
    """Add ``checker`` for bundles of ``protocol`` (e.g. ``"commerce.purchase"``);
    registering a protocol again replaces its checker where it stands. The checker
    registered last is asked first: a protocol built on another (a fair purchase on
    a purchase's order) registers after it and sees its bundles before it does.

    Raises:
        ValueError: ``protocol`` is not a non-empty str or ``checker`` not callable.
    """
    if type(protocol) is not str or not protocol or not callable(checker):
        raise ValueError("register(protocol: str, checker: callable)")
    _REGISTRY[protocol] = checker


def registered() -> dict[str, Checker]:
    """The checkers by protocol, in the order they are asked."""
    return dict(reversed(_REGISTRY.items()))


@dataclass(frozen=True, slots=True)
class Report:
    """What ``check_bundle`` found. ``valid`` False: ``error`` says why (the bundle's
    or the archive's code) and there are no verdicts. ``protocol`` is None when no
    registered checker recognised a valid bundle."""

    valid: bool
    verdicts: tuple[Verdict, ...] = ()
    transaction: str | None = None
    protocol: str | None = None
    error: ServiceError | None = None

    def to_json(self) -> dict[str, Any]:
        """The ``semper dispute check --json`` object."""
        return {"valid": self.valid, "verdicts": [v.to_wire() for v in self.verdicts]}


def check_bundle(
    bundle_bytes: bytes,
    root: x509.Certificate,
    crl: x509.CertificateRevocationList | None = None,
    *,
    now: dt.datetime | None = None,
    crls: Sequence[x509.CertificateRevocationList] = (),
) -> Report:
    """Verify ``bundle_bytes`` offline and judge each obligation of its protocol.

    ``crl`` (and ``crls``) join the bundle's own CRL; the newest decides revocation,
    and must postdate the statements (``archive.crl_too_old`` otherwise). ``now``
    defaults to the system clock.

    Never raises a ``ServiceError`` for bad bytes: an unreadable or unverifiable
    bundle is ``Report(valid=False, error=...)`` with the archive's code
    (``archive.malformed``, ``archive.record_tampered``, ``archive.wrong_root``, ...).
    """
    when = now if now is not None else dt.datetime.now(dt.UTC)
    extra = [*([crl] if crl is not None else []), *crls]
    try:
        bundle = EvidenceBundle.from_bytes(bundle_bytes)
        verified = verify_bundle(bundle, root=root, now=when, crls=extra)
        newest = newest_crl(bundle, root=root, now=when, crls=extra)
    except ServiceError as exc:
        return Report(valid=False, error=exc)
    evidence = Evidence(bundle, tuple(verified), root, newest, when)
    for protocol, checker in registered().items():
        verdicts = checker(evidence)
        if verdicts is not None:
            return Report(valid=True, verdicts=tuple(verdicts), transaction=bundle.transaction,
                          protocol=protocol)
    return Report(valid=True, transaction=bundle.transaction)
