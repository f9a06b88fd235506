"""The obligations of contract signing (protocol.md 10.1, 10.2), judged from a bundle.

A contract's bundle (``semper contract export``) is the one whose transaction is the
hex exchange id of a ``fairexchange.m1`` in it signed by its originator, or of a
contract decision of the notary. The verdicts come from ``fairexchange.outcome``
(the one rule of what proves what, not a second copy), applied to the standard
contracts the bundle holds (m1, m2 and a ``fairexchange.secrets`` that opens both
commitments) and the notary's contract decisions; a piece that does not verify is
left out and named in the reasons. Obligations, one per party:

* the originator signed the contract; the responder signed the contract: True when
  the rule says ``signed`` (a standard contract, or the notary's replacement
  contract, which binds both equally); None when it says ``aborted`` (an abort token
  proves only that the notary will issue no replacement, never that no standard
  contract exists) or ``none`` (commitments only). Never False: no statement proves
  that a party did not sign, so an aborted exchange faults nobody.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from .._errors import ServiceError
from ..archive import VerifiedStatement
from ..fairexchange import (
    CONTRACT_KIND,
    DECISION_TYPE,
    M1,
    M1_TYPE,
    M2_TYPE,
    SECRETS_TYPE,
    DecisionBody,
    Outcome,
    Secrets,
    StandardContract,
    conflict,
    outcome,
)
from ..fairexchange._contract import check_decision, check_standard
from ..statements import Statement
from ._check import Evidence, Verdict, register

__all__ = [
    "ORIGINATOR_SIGNED",
    "PROTOCOL",
    "RESPONDER_SIGNED",
    "check_contract",
    "quoted",
    "seq_of",
    "verifier",
]

PROTOCOL: Final = "fairexchange.contract"
ORIGINATOR_SIGNED: Final = "originator signed the contract"
RESPONDER_SIGNED: Final = "responder signed the contract"


def verifier(evidence: Evidence) -> Callable[..., None]:
    """The fair-exchange rules' ``verify`` port over a bundle: a statement in the
    bundle must be its record's (type, signer); one quoted whole is verified with its
    signer's certificate from the bundle, the root and the newest CRL."""

    def verify(statement: Statement, *, expected_type: str, expected_signer: str) -> None:
        found = evidence.verify_quoted(statement, expected_type=expected_type,
                                       expected_signer=expected_signer)
        if isinstance(found, ServiceError):
            raise found

    return verify


def quoted(text: str | None, limit: int = 200) -> str:
    """``text`` from a signed body (a notary's finding) fit for a verdict's reason:
    printable characters only (others become ``?``), at most ``limit`` of them."""
    return "".join(c if c.isprintable() else "?" for c in (text or "")[:limit])


def seq_of(evidence: Evidence, statement: Statement) -> str:
    """``record N`` for a statement of the bundle, else ``quoted``."""
    found = evidence.by_digest(statement.digest)
    return f"record {found.record.seq}" if found is not None else "quoted"


def _m1s(evidence: Evidence) -> list[tuple[VerifiedStatement, M1]]:
    found = []
    for verified in evidence.of_type(M1_TYPE):
        try:
            body = M1.from_statement(verified.statement)
        except ServiceError:
            continue
        if body.exchange.hex() == evidence.transaction \
                and verified.signer.agent_id == body.originator:
            found.append((verified, body))
    return found


def check_contract(evidence: Evidence) -> list[Verdict] | None:
    """The verdicts of a contract's bundle; None for a bundle of another protocol."""
    verify = verifier(evidence)
    items: list[StandardContract | Statement] = []
    left_out: list[str] = []
    decisions: list[Statement] = []
    m1s = _m1s(evidence)
    # One exchange is an id of one initiator (protocol.md 10.1): the bundle's first m1
    # names it, and another originator's m1 or decision with the same id is no evidence.
    first: M1 | None = m1s[0][1] if m1s else None
    for verified, m1_body in m1s:
        if first is not None and m1_body.originator == first.originator:
            items += _standards(evidence, verified.statement, verify, left_out)
    for verified in evidence.of_type(DECISION_TYPE):
        try:
            body = DecisionBody.from_statement(verified.statement)
        except ServiceError:
            continue
        if body.kind != CONTRACT_KIND or body.exchange.hex() != evidence.transaction:
            continue
        try:
            _, first_of, _ = check_decision(verified.statement, verify)
        except ServiceError as exc:
            left_out.append(f"record {verified.record.seq} ({exc.code})")
            continue
        first = first or first_of
        if first_of.originator != first.originator:
            left_out.append(f"record {verified.record.seq} (another initiator's exchange)")
            continue
        items.append(verified.statement)
        decisions.append(verified.statement)
    if first is None:
        return None
    try:
        found = outcome(items, verify=verify)
    except ServiceError as exc:  # not expected once each item checked alone
        found = Outcome("none", first.exchange)
        left_out.append(f"the evidence together ({exc.code})")
    reasons = _reasons(evidence, found, decisions)
    if left_out:
        reasons = {who: f"{reason}; left out, not verifying: {', '.join(left_out)}"
                   for who, reason in reasons.items()}
    met = True if found.state == "signed" else None
    return [Verdict(ORIGINATOR_SIGNED, first.originator, met, reasons["originator"]),
            Verdict(RESPONDER_SIGNED, first.responder, met, reasons["responder"])]


def _standards(evidence: Evidence, m1: Statement, verify: Callable[..., None],
               left_out: list[str]) -> list[StandardContract]:
    """The standard contracts of ``m1`` the bundle holds: its m2 and secrets that
    open both commitments."""
    found = []
    for verified in evidence.of_type(SECRETS_TYPE):
        try:
            secrets = Secrets.from_statement(verified.statement)
        except ServiceError:
            continue
        if secrets.m1 != m1.digest:
            continue
        m2 = evidence.by_digest(secrets.m2)
        if m2 is None or m2.statement.type != M2_TYPE:
            left_out.append(f"record {verified.record.seq} (its m2 is not in the bundle)")
            continue
        contract = StandardContract(m1, m2.statement, secrets.secret_o, secrets.secret_r)
        try:
            check_standard(contract, verify)
        except ServiceError as exc:
            left_out.append(f"record {verified.record.seq} ({exc.code})")
            continue
        found.append(contract)
    return found


def _reasons(evidence: Evidence, found: Outcome, decisions: list[Statement]
             ) -> dict[str, str]:
    proof = found.proof
    if isinstance(proof, StandardContract):
        secrets = next((v for v in evidence.of_type(SECRETS_TYPE)
                        if v.statement.body.get("m1") == proof.m1.digest
                        and v.statement.body.get("m2") == proof.m2.digest), None)
        opened = f"record {secrets.record.seq}" if secrets is not None else "the bundle"
        standard = "the standard contract binds both parties"
        reasons = {
            "originator": f"{standard}: the originator's m1 ({seq_of(evidence, proof.m1)}) "
                          f"is opened by N_O ({opened})",
            "responder": f"{standard}: the responder's m2 ({seq_of(evidence, proof.m2)}) "
                         f"is opened by N_R ({opened})",
        }
    elif found.state == "signed" and isinstance(proof, Statement):
        text = (f"the notary's replacement contract (resolve decision, "
                f"{seq_of(evidence, proof)}) binds both parties, as the standard one would")
        reasons = {"originator": text, "responder": text}
    elif found.state == "aborted" and isinstance(proof, Statement):
        text = (f"the notary aborted the exchange ({seq_of(evidence, proof)}): it will "
                "issue no replacement contract, but an abort token never proves that no "
                "standard contract exists (protocol.md 10.1); nobody is at fault")
        reasons = {"originator": text, "responder": text}
    else:
        text = ("the bundle holds commitments only (m1, m2): no secrets that open them "
                "and no decision of the notary")
        reasons = {"originator": text, "responder": text}
    twice = _decided_twice(evidence, decisions)
    if twice:
        reasons = {who: f"{reason}; {twice}" for who, reason in reasons.items()}
    return reasons


def _decided_twice(evidence: Evidence, decisions: list[Statement]) -> str:
    """Says so when two of the notary's decisions here (each checked already) prove
    that it cheated."""
    for i, a in enumerate(decisions):
        for b in decisions[i + 1:]:
            try:
                found = conflict(a, b)
            except ServiceError:
                continue
            if found is not None:
                return (f"the notary decided twice for this exchange ({seq_of(evidence, a)}, "
                        f"{seq_of(evidence, b)}): it cheated")
    return ""


register(PROTOCOL, check_contract)
