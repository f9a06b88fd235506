"""One schema mechanism for every typed body of ``services/``, and the shared limits.

Theory of operation. A *body* is a frozen dataclass that subclasses ``Body``; it is
what travels as a statement's ``body`` or as an op's request or response. Each of
its fields has a *kind* (``Kind``): a check on the value, a sentence for the error
("must be ..."), and the value's wire form (``decode``/``encode``, when it is not
the value itself, as for an ``Amount`` or a ``Statement``).

Kinds are found by the field's wire key in the package's ``Schema``, so that a key
means the same in every body of that package (STYLE.md section 11); a field whose
key must mean something else there names its own kind (``wire(kind)``). The
``Schema`` also names the package's coded error (``commerce.bad_body``,
``directory.bad_card``, ...), so every package refuses bad bodies the same way:

* construction checks every field, then ``_check`` (rules across fields); a body
  value that exists is a valid body;
* a field's kind and wire key come from ``dataclasses.field(metadata=wire(...))``
  when the package's key does not fit;
* ``from_wire`` takes a map with exactly the body's keys (a field whose default is
  ``None`` may be absent, and is then left out by ``to_wire`` too), decodes each
  field and constructs;
* every refusal is the schema's error with ``detail`` ``{"type": <body type>,
  "field": <wire key>}`` (``"body"`` when the value is not a map at all), plus
  ``"cause"`` when a decoder below (e.g. the statement layer) refused with a code.

Bodies are built from hostile bytes: nothing here raises anything but the schema's
error (or a kind's own, ``Kind.refuse``).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Final, NoReturn, Self

from ._errors import ServiceError
from .certificates import check_name
from .money import Amount, BadAmount
from .statements import MAX_TIME_MS, MalformedStatement, Statement

__all__ = [
    "AGENT",
    "DIGEST",
    "DIGEST_SIZE",
    "IDEMPOTENCY_KEY",
    "MAX_IDEMPOTENCY_KEY",
    "MAX_INT64",
    "MAX_REASON",
    "MAX_TIME_MS",
    "STATEMENT",
    "STATEMENT_AS_IS",
    "TIME",
    "Body",
    "Kind",
    "Schema",
    "amount",
    "binary",
    "form",
    "integer",
    "text",
    "wire",
]

# MAX_TIME_MS (Unix ms of 9999-12-31T23:59:59.999Z, the latest time any body may name)
# is defined once by the statement layer, which every other package builds on, and
# re-exported here beside the other shared limits.
#: The largest signed 64-bit value: what fits a journal column.
MAX_INT64: Final = (1 << 63) - 1
#: Bytes of a SHA-256 digest.
DIGEST_SIZE: Final = 32
#: Characters of an idempotency key (printable ASCII): an order's key becomes its
#: payment's key, so commerce and payment share it.
MAX_IDEMPOTENCY_KEY: Final = 128
#: Characters of a refund's reason: the buyer's (commerce) becomes the refund order's
#: (payment).
MAX_REASON: Final = 512


@dataclasses.dataclass(frozen=True, slots=True)
class Kind:
    """What a field's value must be, and how it travels.

    Attributes:
        wanted: completes "<field> must be ..." in the error message.
        check: True for a good value (after decoding).
        decode: wire value -> value; raises ValueError (or a coded ServiceError, whose
            code becomes ``detail["cause"]``) for a wire value it refuses. None: as is.
        encode: value -> wire value. None: as is.
        refuse: builds the error for a bad value when the protocol gives this field a
            code of its own (``commerce.bad_quantity``); None: the schema's error.
    """

    wanted: str
    check: Callable[[Any], bool]
    decode: Callable[[Any], Any] | None = None
    encode: Callable[[Any], Any] | None = None
    refuse: Callable[[Any], ServiceError] | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Schema:
    """A package's error for bad bodies and the kind of each wire key it uses.

    ``wrong_type`` builds the error for a statement of another type than the body's
    (``from_statement``); None: the schema's error with ``field`` ``"type"``.
    """

    error: type[ServiceError]
    kinds: Mapping[str, Kind]
    wrong_type: Callable[[str, Statement], ServiceError] | None = None

    def fail(self, body_type: str, key: str, why: str, **detail: Any) -> NoReturn:
        raise self.error(f"{body_type}: {key} {why}",
                         detail={"type": body_type, "field": key, **detail})


def wire(kind: Kind | None = None, *, key: str | None = None) -> dict[str, Any]:
    """A field's metadata: its own ``kind`` (else the schema's for its key) and its
    wire ``key`` (else its name). Use as ``x: T = dataclasses.field(metadata=wire(K))``;
    a field whose default is ``None`` is optional."""
    return {"kind": kind, "wire": key}


# (attribute, wire key, kind, optional) per body class, computed once: from_wire runs
# on every request and statement, and dataclasses.fields() is not free.
_SPECS: Final[dict[type, tuple[tuple[str, str, Kind, bool], ...]]] = {}
#: ``from_statement``'s answers, by body class and statement object (held, so that its
#: id is not reused): a purchase read the same few statements' bodies ~50 times (an
#: order's quoted offer at each look at its terms). Statements and bodies are immutable.
_PARSED: Final[dict[tuple[type, int], tuple[Statement, Any]]] = {}
_MAX_PARSED: Final = 1024


def _specs(cls: type[Body]) -> tuple[tuple[str, str, Kind, bool], ...]:
    try:
        return _SPECS[cls]
    except KeyError:
        pass
    specs = []
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        wire = f.metadata.get("wire") or f.name
        kind = f.metadata.get("kind") or cls.SCHEMA.kinds.get(wire)
        if kind is None:
            raise TypeError(f"{cls.__name__}.{f.name}: no kind for the key {wire!r}")
        specs.append((f.name, wire, kind, f.default is None))
    _SPECS[cls] = result = tuple(specs)
    return result


_KEYS: Final[dict[type, tuple[frozenset[str], frozenset[str]]]] = {}


def _keys(cls: type[Body]) -> tuple[frozenset[str], frozenset[str]]:
    """The wire keys a body of ``cls`` must have, and those it may have (once per
    class: ``from_wire`` built both sets at every call)."""
    try:
        return _KEYS[cls]
    except KeyError:
        pass
    specs = _specs(cls)
    _KEYS[cls] = keys = (frozenset(wire for _, wire, _, optional in specs if not optional),
                         frozenset(wire for _, wire, _, _ in specs))
    return keys


class Body:
    """The shared behaviour of typed bodies: check on construction, ``to_wire``,
    ``from_wire`` and, for statement bodies, ``from_statement``.

    A subclass is a ``@dataclass(frozen=True, slots=True, kw_only=True)`` that sets
    ``TYPE`` (its statement type, or a name for errors) and ``SCHEMA``.
    """

    __slots__ = ()
    TYPE: ClassVar[str]
    SCHEMA: ClassVar[Schema]

    def __post_init__(self) -> None:
        for name, wire, kind, optional in _specs(type(self)):
            value = getattr(self, name)
            if optional and value is None:
                continue
            if not kind.check(value):
                if kind.refuse is not None:
                    raise kind.refuse(value)
                self.SCHEMA.fail(self.TYPE, wire, f"must be {kind.wanted}")
        self._check()

    def _check(self) -> None:
        """Rules across fields; raise ``self.SCHEMA.fail(...)``. None by default."""

    def to_wire(self) -> dict[str, Any]:
        """The wire map: every field under its key, optional ones only when set."""
        out: dict[str, Any] = {}
        for name, wire, kind, optional in _specs(type(self)):
            value = getattr(self, name)
            if optional and value is None:
                continue
            out[wire] = value if kind.encode is None else kind.encode(value)
        return out

    @classmethod
    def from_wire(cls, value: object) -> Self:
        """Read a wire map of exactly this body's keys.

        Raises:
            the schema's error: not such a map, or a bad field (``detail`` names the
                ``type`` and the ``field``); or a kind's own error (``Kind.refuse``).
        """
        specs = _specs(cls)
        if type(value) is not dict:
            cls.SCHEMA.fail(cls.TYPE, "body", "must be a map")
        required, allowed = _keys(cls)
        if not (required <= value.keys() <= allowed):  # the usual case: one test
            missing = required - value.keys()
            extra = value.keys() - allowed
            if missing:
                cls.SCHEMA.fail(cls.TYPE, min(missing), "is missing")
            if extra:
                cls.SCHEMA.fail(cls.TYPE, str(min(extra, key=str)),
                                "is not a field of this body")
        values: dict[str, Any] = {}
        for name, wire, kind, optional in specs:
            if wire not in value:
                continue
            raw = value[wire]
            if kind.decode is None or (optional and raw is None):
                values[name] = raw
                continue
            try:
                values[name] = kind.decode(raw)
            except ServiceError as exc:
                cls.SCHEMA.fail(cls.TYPE, wire, f"is not {kind.wanted}: {exc.message}",
                                cause=exc.code)
            except (ValueError, TypeError) as exc:
                cls.SCHEMA.fail(cls.TYPE, wire, f"is not {kind.wanted}: {exc}")
        return cls(**values)

    # A statement's body is a body: the names the statement-reading code uses.
    def to_body(self) -> dict[str, Any]:
        return self.to_wire()

    @classmethod
    def from_body(cls, body: object) -> Self:
        return cls.from_wire(body)

    @classmethod
    def from_statement(cls, statement: Statement) -> Self:
        """The typed body of ``statement`` (its signature is not checked here).

        Raises:
            the schema's ``wrong_type`` error (else its error, ``field`` ``"type"``):
                the statement is of another type; the schema's error: a bad body.
        """
        if statement.type != cls.TYPE:
            if cls.SCHEMA.wrong_type is not None:
                raise cls.SCHEMA.wrong_type(cls.TYPE, statement)
            cls.SCHEMA.fail(cls.TYPE, "type", f"must be {cls.TYPE!r}, not {statement.type!r}")
        key = (cls, id(statement))
        known = _PARSED.get(key)
        if known is not None and known[0] is statement:
            return known[1]  # type: ignore[no-any-return]
        body = cls.from_body(statement.body)
        try:
            while len(_PARSED) >= _MAX_PARSED:
                del _PARSED[next(iter(_PARSED))]
        except (KeyError, RuntimeError, StopIteration):  # another thread evicted meanwhile
            pass
        _PARSED[key] = (statement, body)
        return body


# -- kinds every package uses -----------------------------------------------------------

def integer(low: int, high: int, wanted: str | None = None) -> Kind:
    """An int (not a bool) from ``low`` to ``high``, inclusive."""
    return Kind(wanted or f"an int from {low} to {high}",
                lambda v: type(v) is int and low <= v <= high)


def binary(low: int, high: int, wanted: str | None = None) -> Kind:
    """Bytes (bin on the wire), ``low`` to ``high`` of them."""
    return Kind(wanted or f"{low} to {high} bytes",
                lambda v: type(v) is bytes and low <= len(v) <= high)


def text(max_chars: int, *, empty: bool = False, lines: bool = False) -> Kind:
    """A str of 1 (0 if ``empty``) to ``max_chars`` printable code points (tabs and
    newlines too when ``lines``), encodable as UTF-8 (no lone surrogates)."""
    low = 0 if empty else 1

    def check(v: Any) -> bool:
        if type(v) is not str or not low <= len(v) <= max_chars:
            return False
        return _utf8(v.replace("\n", "").replace("\t", "") if lines else v)

    what = "printable characters" + (", tabs and newlines" if lines else "")
    return Kind(f"a str of {low} to {max_chars} {what}", check)


def _utf8(value: str) -> bool:
    if not value.isprintable():
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def form(pattern: str, what: str, max_chars: int = 128) -> Kind:
    """A str of at most ``max_chars`` that matches ``pattern`` whole."""
    compiled = re.compile(pattern + r"\Z")
    return Kind(what, lambda v: type(v) is str and len(v) <= max_chars
                and compiled.match(v) is not None)


def amount(max_minor_units: int) -> Kind:
    """A positive ``Amount`` of at most ``max_minor_units``; on the wire
    ``{"currency": str, "minor_units": int}``."""
    return Kind(f"a positive Amount of at most {max_minor_units} minor units",
                lambda v: type(v) is Amount and 1 <= v.minor_units <= max_minor_units,
                decode=_amount_from_wire, encode=Amount.to_wire)


def _amount_from_wire(value: object) -> Amount:
    if type(value) is not dict or value.keys() != {"currency", "minor_units"}:
        raise ValueError("an amount is a map {currency, minor_units}")
    try:
        return Amount(value["currency"], value["minor_units"])
    except BadAmount as exc:  # the amount's own reason, not a cause: it is this field
        raise ValueError(exc.message) from None


def _is_agent(value: object) -> bool:
    try:
        check_name("agent id", value)  # type: ignore[arg-type]  # section 2.1's grammar
    except ValueError:
        return False
    return True


#: An agent id (or a role: the same grammar, protocol.md section 2.1).
AGENT: Final = Kind("an agent id (1-63 of a-z 0-9 . _ -)", _is_agent)
#: A SHA-256 digest (of a statement's canonical bytes, of content).
DIGEST: Final = binary(DIGEST_SIZE, DIGEST_SIZE, f"{DIGEST_SIZE} bytes (SHA-256)")
#: Unix milliseconds (UTC).
TIME: Final = integer(0, MAX_TIME_MS, "Unix milliseconds")
#: An idempotency key: 1 to 128 printable ASCII characters.
IDEMPOTENCY_KEY: Final = form(rf"[\x20-\x7e]{{1,{MAX_IDEMPOTENCY_KEY}}}",
                              f"1 to {MAX_IDEMPOTENCY_KEY} characters of U+0020 to U+007E",
                              MAX_IDEMPOTENCY_KEY)
#: A whole signed statement, quoted (``Statement.to_wire`` on the wire); its
#: signature is not checked here.
STATEMENT: Final = Kind("a statement", lambda v: type(v) is Statement,
                        decode=Statement.from_wire, encode=Statement.to_wire)


def _statement_or_as_is(value: object) -> object:
    try:
        return Statement.from_wire(value)
    except ServiceError:
        return value  # not a Statement: refused by the check, with its own error


def _statement_refusal(value: object) -> ServiceError:
    try:
        Statement.from_wire(value)
    except ServiceError as exc:
        return exc
    return MalformedStatement("a statement object was expected, not its wire map")


#: ``STATEMENT`` for an op whose protocol refuses a malformed statement with the
#: statement layer's own code (``statement.malformed``, ``statement.unsupported_version``,
#: as ``evidence.deliver`` and a signed card do) rather than the schema's with a cause.
STATEMENT_AS_IS: Final = Kind("a statement", lambda v: type(v) is Statement,
                              decode=_statement_or_as_is, encode=Statement.to_wire,
                              refuse=_statement_refusal)
