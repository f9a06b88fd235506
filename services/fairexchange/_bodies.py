"""The fair-exchange statements and op bodies, as typed values (protocol.md 10).

Contract signing (Asokan-Shoup-Waidner, with Shmatikov-Mitchell's fixes): every
statement carries the 32-byte exchange id, so no message of one exchange can be
used in another.

* ``fairexchange.m1`` (originator): both parties, the notary, the exchange id, the
  text's SHA-256 and ``commit`` = SHA-256(N_O);
* ``fairexchange.m2`` (responder): the exchange id, m1's digest and SHA-256(N_R);
* ``fairexchange.abort_request`` (originator): the exchange id and m1 quoted whole;
* ``fairexchange.resolve_request`` (either party): the exchange id, m1 and m2 quoted;
* ``fairexchange.decision`` (notary): generic over exchange kinds; for contracts an
  abort token (``decision`` ``"abort"``) or the replacement contract (``"resolve"``,
  quoting the resolve request, hence m1 and m2: Sig_T(m1, m2)). Decisions form a hash
  chain: ``seq`` counts the notary's decisions, ``previous`` is the digest of the
  decision before (32 zero bytes for the first).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Final

from .._schema import (
    AGENT,
    DIGEST,
    MAX_INT64,
    STATEMENT,
    Body,
    Kind,
    Schema,
    binary,
    form,
    integer,
    wire,
)
from ..statements import Statement, WrongType
from ._errors import BadBody

__all__ = [
    "ABORT_REQUEST_TYPE",
    "DECISION_TYPE",
    "EXCHANGE_SIZE",
    "M1_TYPE",
    "M2_TYPE",
    "MAX_PAYLOAD",
    "MAX_TEXT",
    "RESOLVE_REQUEST_TYPE",
    "SCHEMA",
    "SECRETS_TYPE",
    "SECRET_SIZE",
    "ZERO_DIGEST",
    "AbortRequest",
    "AbortWire",
    "DecisionBody",
    "DecisionWire",
    "M1",
    "M2",
    "ProposeWire",
    "CommitWire",
    "ResolveRequest",
    "ResolveWire",
    "RevealWire",
    "Secrets",
]

M1_TYPE: Final = "fairexchange.m1"
M2_TYPE: Final = "fairexchange.m2"
ABORT_REQUEST_TYPE: Final = "fairexchange.abort_request"
RESOLVE_REQUEST_TYPE: Final = "fairexchange.resolve_request"
DECISION_TYPE: Final = "fairexchange.decision"
SECRETS_TYPE: Final = "fairexchange.secrets"

#: Bytes of an exchange id (fresh random) and of a secret N_O / N_R.
EXCHANGE_SIZE: Final = 32
SECRET_SIZE: Final = 32
#: The longest contract text carried in ``contract.propose`` (it travels once).
MAX_TEXT: Final = 256 * 1024
#: The largest payload a notary decision may carry (a released key, a finding).
MAX_PAYLOAD: Final = 64 * 1024
#: ``previous`` of a notary's first decision.
ZERO_DIGEST: Final = bytes(32)


def _wrong_type(expected: str, statement: Statement) -> WrongType:
    return WrongType(f"expected a {expected!r} statement, got {statement.type!r}",
                     detail={"expected": expected, "type": statement.type})


_NAME: Final = form(r"[a-z][a-z0-9_]{0,31}", "a name (a-z 0-9 _, 1-32, starting with a letter)")

#: At most this many certificates ride along with a request or a decision, each at
#: most ``MAX_CERTIFICATE`` bytes of DER.
MAX_CERTIFICATES: Final = 8
MAX_CERTIFICATE: Final = 16 * 1024


def _is_certificates(value: object) -> bool:
    return type(value) is tuple and len(value) <= MAX_CERTIFICATES and all(
        type(c) is bytes and 0 < len(c) <= MAX_CERTIFICATE for c in value)


def _certificates_from_wire(value: object) -> tuple[bytes, ...]:
    if type(value) is not list:
        raise ValueError("not a list")
    return tuple(value)


#: The signers' certificates (DER) of the statements a request or decision quotes,
#: so that the notary (or a party) can check signers it never met on a channel.
CERTIFICATES: Final = Kind(f"a list of at most {MAX_CERTIFICATES} DER certificates",
                           _is_certificates, decode=_certificates_from_wire, encode=list)

#: The kind of every fair-exchange key.
SCHEMA: Final = Schema(BadBody, {
    "exchange": binary(EXCHANGE_SIZE, EXCHANGE_SIZE, f"{EXCHANGE_SIZE} bytes (an exchange id)"),
    "originator": AGENT, "responder": AGENT, "notary": AGENT, "initiator": AGENT,
    "text": DIGEST, "commit": DIGEST, "subject": DIGEST, "previous": DIGEST,
    "secret": binary(SECRET_SIZE, SECRET_SIZE, f"{SECRET_SIZE} bytes (a secret)"),
    "kind": _NAME, "decision": _NAME,
    "seq": integer(1, MAX_INT64, "an int from 1 (a decision's number)"),
    "payload": binary(0, MAX_PAYLOAD),
    "m1": STATEMENT, "m2": STATEMENT, "request": STATEMENT, "statement": STATEMENT,
    "certificates": CERTIFICATES,
}, wrong_type=_wrong_type)


# -- statements -------------------------------------------------------------------------

@dataclass(frozen=True, slots=True, kw_only=True)
class M1(Body):
    """``fairexchange.m1``, signed by the originator: Sig_O(V_O, V_R, T, text, h(N_O))
    plus the exchange id."""

    TYPE: ClassVar[str] = M1_TYPE
    SCHEMA: ClassVar[Schema] = SCHEMA

    exchange: bytes
    originator: str
    responder: str
    notary: str
    text: bytes
    commit: bytes

    def _check(self) -> None:
        if self.originator == self.responder:
            self.SCHEMA.fail(self.TYPE, "responder", "must not be the originator")


@dataclass(frozen=True, slots=True, kw_only=True)
class M2(Body):
    """``fairexchange.m2``, signed by the responder: Sig_R(m1, h(N_R)), m1 by digest."""

    TYPE: ClassVar[str] = M2_TYPE
    SCHEMA: ClassVar[Schema] = SCHEMA

    exchange: bytes
    m1: bytes = field(metadata=wire(DIGEST))
    commit: bytes


_SECRET: Final = binary(SECRET_SIZE, SECRET_SIZE, f"{SECRET_SIZE} bytes (a secret)")


@dataclass(frozen=True, slots=True, kw_only=True)
class Secrets(Body):
    """``fairexchange.secrets``, signed by a party that completed the exchange: N_O and
    N_R beside the digests of the m1 and m2 they open, so that the standard contract
    (m1, N_O, m2, N_R) can travel in an evidence bundle, which holds statements only.
    Its signature says who archived it; the proof is that the secrets hash to the
    commitments m1 and m2 signed."""

    TYPE: ClassVar[str] = SECRETS_TYPE
    SCHEMA: ClassVar[Schema] = SCHEMA

    exchange: bytes
    m1: bytes = field(metadata=wire(DIGEST))
    m2: bytes = field(metadata=wire(DIGEST))
    secret_o: bytes = field(metadata=wire(_SECRET))
    secret_r: bytes = field(metadata=wire(_SECRET))


@dataclass(frozen=True, slots=True, kw_only=True)
class AbortRequest(Body):
    """``fairexchange.abort_request``, signed by the originator: Sig_O(m1, abort)."""

    TYPE: ClassVar[str] = ABORT_REQUEST_TYPE
    SCHEMA: ClassVar[Schema] = SCHEMA

    exchange: bytes
    m1: Statement


@dataclass(frozen=True, slots=True, kw_only=True)
class ResolveRequest(Body):
    """``fairexchange.resolve_request``, signed by either party: (m1, m2)."""

    TYPE: ClassVar[str] = RESOLVE_REQUEST_TYPE
    SCHEMA: ClassVar[Schema] = SCHEMA

    exchange: bytes
    m1: Statement
    m2: Statement


@dataclass(frozen=True, slots=True, kw_only=True)
class DecisionBody(Body):
    """``fairexchange.decision``, signed by the notary: the first (and only) decision
    for ``exchange`` of ``initiator``. ``subject`` names the exchange's content (for a
    contract, m1's digest); ``request`` is the request decided on; ``payload`` what
    the kind needs (none for contracts). ``initiator`` (the signer of the exchange's
    first message, a contract's originator) scopes the exchange id, so that another
    signer cannot take an id first at the notary; None only for kinds that do not
    name one."""

    TYPE: ClassVar[str] = DECISION_TYPE
    SCHEMA: ClassVar[Schema] = SCHEMA

    exchange: bytes
    kind: str
    decision: str
    seq: int
    previous: bytes
    subject: bytes
    request: Statement
    payload: bytes | None = None
    initiator: str | None = None


# -- op bodies ------------------------------------------------------------------------

@dataclass(frozen=True, slots=True, kw_only=True)
class ProposeWire(Body):
    """``contract.propose`` request: the text itself and m1 (which names its digest)."""

    TYPE: ClassVar[str] = "contract.propose"
    SCHEMA: ClassVar[Schema] = SCHEMA

    text: bytes = field(metadata=wire(binary(0, MAX_TEXT)))
    m1: Statement


@dataclass(frozen=True, slots=True, kw_only=True)
class CommitWire(Body):
    """``contract.propose`` answer: the responder's m2."""

    TYPE: ClassVar[str] = "contract.propose"
    SCHEMA: ClassVar[Schema] = SCHEMA

    m2: Statement


@dataclass(frozen=True, slots=True, kw_only=True)
class RevealWire(Body):
    """``contract.reveal`` request (N_O) and answer (N_R)."""

    TYPE: ClassVar[str] = "contract.reveal"
    SCHEMA: ClassVar[Schema] = SCHEMA

    exchange: bytes
    secret: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class AbortWire(Body):
    """``notary.abort`` request: the signed abort request."""

    TYPE: ClassVar[str] = "notary.abort"
    SCHEMA: ClassVar[Schema] = SCHEMA

    request: Statement
    certificates: tuple[bytes, ...] | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ResolveWire(Body):
    """``notary.resolve`` request: the signed resolve request."""

    TYPE: ClassVar[str] = "notary.resolve"
    SCHEMA: ClassVar[Schema] = SCHEMA

    request: Statement
    certificates: tuple[bytes, ...] | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class DecisionWire(Body):
    """The notary's answer to any request: its signed decision for the exchange."""

    TYPE: ClassVar[str] = "notary.decision"
    SCHEMA: ClassVar[Schema] = SCHEMA

    statement: Statement
    certificates: tuple[bytes, ...] | None = None
