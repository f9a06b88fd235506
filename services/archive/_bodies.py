"""The bodies of ``evidence.deliver`` (protocol.md 7.5), on the one schema
(``services._schema``), so that the runtime hands the handler a checked request.

A bad request is ``statement.malformed`` (the protocol's code for it since before
the schema), with ``detail`` ``{"type": "evidence.deliver", "field"}``; a malformed
quoted statement keeps the statement layer's own error (``statement.malformed``,
``statement.unsupported_version``) and detail.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Final, Self

from .._schema import STATEMENT, STATEMENT_AS_IS, Body, Schema
from ..statements import MalformedStatement, Statement
from ._record import SCHEMA as RECORD_SCHEMA

__all__ = ["DELIVER_TYPE", "DeliverAnswer", "DeliverRequest"]

DELIVER_TYPE: Final = "evidence.deliver"

#: ``transaction`` means what it means in an archive record (1 to 256 printable
#: characters); a bad body is the statement layer's ``statement.malformed``.
SCHEMA: Final = Schema(MalformedStatement, {
    "transaction": RECORD_SCHEMA.kinds["transaction"],
    "statement": STATEMENT_AS_IS,
    "receipt": STATEMENT,
})


@dataclass(frozen=True, slots=True, kw_only=True)
class DeliverRequest(Body):
    """``{"transaction": str, "statement": statement map}``: file ``statement`` (the
    requester's, checked by the receiver) under ``transaction``."""

    TYPE: ClassVar[str] = DELIVER_TYPE
    SCHEMA: ClassVar[Schema] = SCHEMA

    transaction: str
    statement: Statement

    @classmethod
    def from_wire(cls, value: object) -> Self:
        """Other keys are ignored (protocol.md 7.5 says so, for later versions)."""
        if type(value) is dict:
            value = {key: value[key] for key in ("transaction", "statement") if key in value}
        return super(DeliverRequest, cls).from_wire(value)  # slots: no bare super()


@dataclass(frozen=True, slots=True, kw_only=True)
class DeliverAnswer(Body):
    """``{"receipt": statement map}``: the receiver's signed ``evidence.receipt``."""

    TYPE: ClassVar[str] = DELIVER_TYPE
    SCHEMA: ClassVar[Schema] = SCHEMA

    receipt: Statement
