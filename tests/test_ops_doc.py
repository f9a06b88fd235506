"""Every wire op is declared once in code (``services._ops.Op``) and has its entry in
docs/protocol.md, and the other way round; every error code has its row. The checkers
take the doc's text, so the tests below also show them failing on a doc with an op's
entry (or a code's row) cut out. Last, the one schema mechanism (``services._schema``):
one ``MAX_TIME_MS``, and bodies of every package refused the same way."""

from __future__ import annotations

import importlib
import pkgutil
import re
from pathlib import Path
from typing import Any

import pytest
from test_protocol_doc import _error_classes, _error_table

import semper.services
from semper.services._ops import Op, declared_ops

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "protocol.md"
#: An op's entry: a level-4 heading naming it, then what kind of message it is.
_ENTRY = re.compile(r"^#### `([a-z][a-z0-9_]*\.[a-z][a-z0-9_]*)` \((request|note)\)[ \t]*$",
                    re.M)
_INDEX_ROW = re.compile(r"^\| `([a-z][a-z0-9_]*\.[a-z][a-z0-9_]*)` \|", re.M)


@pytest.fixture(scope="module")
def doc() -> str:
    return DOC.read_text(encoding="utf-8")


def services_ops() -> dict[str, Op]:
    """Every ``Op`` a module of ``semper.services`` declares, by ``service.op``.

    Read from the modules (not only ``declared_ops()``, which also holds ops that
    other imported code, such as an installed example instrument, declared)."""
    found: dict[str, Op] = {}
    for info in pkgutil.walk_packages(semper.services.__path__, "semper.services."):
        module = importlib.import_module(info.name)
        for value in vars(module).values():
            if isinstance(value, Op):
                found[value.qualified] = value
    return found


# -- the checkers, over the doc's text ---------------------------------------------------

def documented_ops(text: str) -> dict[str, str]:
    """``service.op`` -> ``"request"`` or ``"note"``, from the entries' headings."""
    entries: dict[str, str] = {}
    for name, kind in _ENTRY.findall(text):
        assert name not in entries, f"{name} has two entries"
        entries[name] = kind
    return entries


def op_index(text: str) -> set[str]:
    """The ops listed in section 7's op index table."""
    match = re.search(r"^\*\*Op index\.\*\*(.*?)^### ", text, re.M | re.S)
    assert match, "section 7 has no op index"
    return set(_INDEX_ROW.findall(match.group(1)))


def op_problems(text: str, ops: dict[str, Op]) -> list[str]:
    """What keeps the doc and the declarations from naming the same ops; [] if none."""
    entries, index = documented_ops(text), op_index(text)
    problems = [f"{name}: declared, no entry in the doc" for name in sorted(ops.keys() - entries)]
    problems += [f"{name}: documented, not declared" for name in sorted(entries.keys() - ops)]
    problems += [f"{name}: entry says {entries[name]}, declared as a "
                 f"{'note' if ops[name].note else 'request'}"
                 for name in sorted(entries.keys() & ops.keys())
                 if (entries[name] == "note") != ops[name].note]
    problems += [f"{name}: missing from the op index" for name in sorted(ops.keys() - index)]
    problems += [f"{name}: in the op index, not declared" for name in sorted(index - ops.keys())]
    return problems


def code_problems(text: str) -> list[str]:
    """Codes of the error classes missing from section 6's table, and rows of codes no
    class has (test_protocol_doc's table parser and class list)."""
    codes = {cls.code for cls in _error_classes()}
    table = set(_error_table(text))
    return ([f"{code}: no row in section 6" for code in sorted(codes - table)]
            + [f"{code}: in section 6, no class" for code in sorted(table - codes)])


def _without_entry(text: str, name: str) -> str:
    """``text`` with the entry of ``name`` (its heading up to the next heading) and its
    op index row cut out."""
    start = re.search(rf"^#### `{re.escape(name)}` \(", text, re.M)
    assert start, name
    end = re.compile(r"^#{1,4} ", re.M).search(text, start.end())
    cut = text[:start.start()] + (text[end.start():] if end else "")
    return re.sub(rf"^\| `{re.escape(name)}` \|.*\n", "", cut, flags=re.M)


# -- the tests ------------------------------------------------------------------------

def test_every_op_is_declared_and_documented_once(doc: str) -> None:
    ops = services_ops()
    assert len(ops) >= 18  # the walk sees the declarations at all
    assert op_problems(doc, ops) == []


def test_declared_ops_holds_every_services_op() -> None:
    ops = services_ops()
    declared = {op.qualified: op for op in declared_ops()}
    for name, op in ops.items():
        assert declared.get(name) == op, name


@pytest.mark.parametrize("name", sorted(services_ops()))
def test_the_check_fails_when_an_entry_is_cut_out(doc: str, name: str) -> None:
    """The checker is not vacuous: a doc without one op's entry and index row is
    reported, naming that op and nothing else."""
    problems = op_problems(_without_entry(doc, name), services_ops())
    assert problems == [f"{name}: declared, no entry in the doc",
                        f"{name}: missing from the op index"]


def test_the_check_fails_when_an_op_is_documented_but_not_declared(doc: str) -> None:
    ops = services_ops()
    del ops["commerce.fetch"]
    assert op_problems(doc, ops) == ["commerce.fetch: documented, not declared",
                                     "commerce.fetch: in the op index, not declared"]


def test_every_error_code_has_its_row(doc: str) -> None:
    assert code_problems(doc) == []


def test_the_code_check_fails_when_a_row_is_cut_out(doc: str) -> None:
    row = re.search(r"^\| `commerce\.bad_body` \|.*\n", doc, re.M)
    assert row
    assert code_problems(doc[:row.start()] + doc[row.end():]) == [
        "commerce.bad_body: no row in section 6"]


def test_ops_the_agents_name_by_string_are_declared() -> None:
    """Ops that agents/ still serves or calls by ``"service", "op"`` strings are
    declared ones (not a typo'd name that no doc or peer knows)."""
    ops = services_ops()
    pattern = re.compile(r'(?:add_op|request)\((?:[^()"]*,\s*)?"([a-z_]+)",\s*"([a-z_]+)"')
    named = set()
    for path in (ROOT / "agents").rglob("*.py"):
        named.update(f"{service}.{op}" for service, op in pattern.findall(path.read_text()))
    assert named - ops.keys() == set()


# -- one schema mechanism -------------------------------------------------------------

def test_max_time_ms_is_defined_once() -> None:
    """Three copies of 9999-12-31 in ms were one limit kept three times: the statement
    layer defines it, every other package takes it from services._schema."""
    from semper.services import _schema
    from semper.services.statements import _statement

    literal = re.compile(r"253_?402_?300_?799_?999")
    holders = sorted(str(path.relative_to(ROOT)) for path in (ROOT / "services").rglob("*.py")
                     if literal.search(path.read_text()))
    assert holders == ["services/statements/_statement.py"]
    assert _schema.MAX_TIME_MS is _statement.MAX_TIME_MS


def _card_body() -> dict[str, Any]:
    return {"agent": "seller.books", "role": "seller", "addresses": ["127.0.0.1:4000"],
            "services": {"sys": {"version": 1, "modules": []}},
            "not_before": 1_764_053_911_000, "not_after": 1_764_053_911_000 + 3_600_000}


@pytest.mark.parametrize(("key", "value"), [
    ("agent", "Not A Name"),          # not an agent id
    ("role", 7),                      # not a str
    ("addresses", "127.0.0.1:4000"),  # a str, not a list
    ("addresses", []),                # none
    ("services", {"sys": {"version": 1}}),  # no modules
    ("not_before", -1),               # before the epoch
    ("not_after", 1_764_053_911_000),  # an empty validity
    ("colour", "red"),                # not a field
])
def test_a_bad_card_names_its_field(key: str, value: Any) -> None:
    """Another member of the kind: the directory refused a bad card with
    ``directory.bad_card`` and no ``detail``, where commerce and payment name the
    field; on the one schema, every package's bodies say which field is at fault."""
    from semper.services.directory import BadCard, ContactCard

    assert ContactCard.from_body(_card_body()).to_body() == _card_body()
    body = {**_card_body(), key: value}
    with pytest.raises(BadCard) as info:
        ContactCard.from_body(body)
    assert info.value.detail == {"type": "directory.card", "field": key}


def _record_wire() -> dict[str, Any]:
    from semper.services.archive import ZERO_HASH, ArchiveRecord

    record = ArchiveRecord(seq=0, prev=ZERO_HASH, direction="sent", peer="seller.books",
                           transaction="t-1", statement=b"x", recorded_at=5)
    return record.to_wire()


@pytest.mark.parametrize(("key", "value"), [
    ("seq", -1), ("prev", b"\x00" * 31), ("direction", "sideways"), ("peer", ""),
    ("transaction", "tab\there"), ("statement", b""), ("recorded_at", "now"),
    ("hash", None),
])
def test_a_bad_archive_record_names_its_field(key: str, value: Any) -> None:
    """And the archive: a malformed record said "bad archive record: ..." only."""
    from semper.services.archive import ArchiveRecord, MalformedEvidence

    wire = _record_wire()
    assert ArchiveRecord.from_wire(wire).to_wire() == wire
    with pytest.raises(MalformedEvidence) as info:
        ArchiveRecord.from_wire({**wire, key: value})
    assert info.value.detail == {"type": "archive.record", "field": key}
