"""The dispute ops, each declared once (``services._ops.Op``): an arbiter serves them
(protocol.md section 12)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar, Final

from .._ops import Op
from .._schema import AGENT, STATEMENT, Body, Schema, binary, wire
from ..statements import Statement
from ._case import SCHEMA

__all__ = ["FILE", "MAX_BUNDLE", "SERVICE", "FileAnswer", "FileRequest"]

SERVICE: Final = "dispute"
#: The largest bundle a filing carries: what fits a frame of the default limit with
#: room for the envelope (larger bundles are for ``semper dispute check`` offline).
MAX_BUNDLE: Final = 1_000_000
MAX_DER: Final = 65_536

_OPS_SCHEMA: Final = dataclasses.replace(SCHEMA, kinds={
    **SCHEMA.kinds,
    "bundle_bytes": binary(1, MAX_BUNDLE, f"an evidence bundle of 1 to {MAX_BUNDLE} bytes"),
    "respondent": AGENT,
    "crl": binary(1, MAX_DER, "a CRL (DER)"),
    "verdict": STATEMENT,
    "certificate": binary(1, MAX_DER, "a certificate (DER)"),
})


@dataclass(frozen=True, slots=True, kw_only=True)
class FileRequest(Body):
    """``dispute.file``'s request: the bundle (its file's bytes), the party the
    claimant (the requesting peer) disputes with (absent: the one other party of the
    bundle's obligations), and optionally a CRL newer than the bundle's statements
    (the arbiter takes the newest it has at hand)."""

    TYPE: ClassVar[str] = "dispute.file"
    SCHEMA: ClassVar[Schema] = _OPS_SCHEMA

    bundle: bytes = dataclasses.field(metadata=wire(_OPS_SCHEMA.kinds["bundle_bytes"]))
    respondent: str | None = None
    crl: bytes | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class FileAnswer(Body):
    """``dispute.file``'s answer: the signed ``dispute.verdict`` and the arbiter's
    certificate (DER) that signed it and its case."""

    TYPE: ClassVar[str] = "dispute.file_answer"
    SCHEMA: ClassVar[Schema] = _OPS_SCHEMA

    verdict: Statement = dataclasses.field(metadata=wire(STATEMENT))
    certificate: bytes


#: ``{bundle, respondent?, crl?}`` -> ``{verdict, certificate}``.
FILE: Final = Op(SERVICE, "file", FileRequest, FileAnswer)
