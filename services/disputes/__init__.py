"""Disputes: the arbiter's case statement and the offline check of evidence bundles.

Pure: bundle bytes, the market root and a CRL in; verdicts per obligation out.

Registering a protocol's obligations. ``check_bundle`` verifies a bundle, then asks
each registered checker, the last registered first, for its verdicts:

    from semper.services.disputes import Evidence, Verdict, register

    def check_contract(evidence: Evidence) -> list[Verdict] | None:
        # None: not a contract's bundle (let the next checker look).
        ...
        return [Verdict("originator signed the contract", "alice", True, "record 3 ...")]

    register("fairexchange.contract", check_contract)

A checker sees only verified statements (``evidence.statements``, each with its
record and its signer's certificate identity; ``of_type``, ``by_digest``,
``signed_by_role``; ``verify_quoted`` for a statement quoted whole in a body). It
must not raise for any bundle that verified, and says ``met=None`` when the bundle
cannot tell. Register at import of the module that defines the checker, and import
that module here, after ``_purchase``, so that every ``check_bundle`` knows it. The
commerce purchase's checker is registered first, so asked last: a protocol whose
bundles also hold a purchase's order (a fair purchase) sees them before it.
"""

from . import _purchase  # noqa: F401  registered first, so asked last (before the others)
from ._case import ARBITER_ROLE, CASE_TYPE, Case, make_case, verify_case
from ._check import Checker, Evidence, Report, Verdict, check_bundle, register, registered
from ._contract import PROTOCOL as CONTRACT
from ._contract import check_contract
from ._errors import BadCase, DisputeError, NotArbiter, NotParty, UnknownProtocol
from ._fair import PROTOCOL as FAIR
from ._fair import check_fair
from ._mail import PROTOCOL as MAIL
from ._mail import check_mail
from ._ops import FILE, FileAnswer, FileRequest
from ._purchase import PROTOCOL as PURCHASE
from ._purchase import check_purchase
from ._verdict import VERDICT_TYPE, VerdictBody, make_verdict, verify_verdict

__all__ = [
    "ARBITER_ROLE",
    "CASE_TYPE",
    "CONTRACT",
    "FAIR",
    "FILE",
    "MAIL",
    "PURCHASE",
    "VERDICT_TYPE",
    "Checker",
    "Evidence",
    "FileAnswer",
    "FileRequest",
    "Report",
    "UnknownProtocol",
    "Verdict",
    "VerdictBody",
    "check_bundle",
    "check_contract",
    "check_fair",
    "check_mail",
    "check_purchase",
    "register",
    "registered",
    "BadCase",
    "Case",
    "DisputeError",
    "NotArbiter",
    "NotParty",
    "make_case",
    "make_verdict",
    "verify_case",
    "verify_verdict",
]
