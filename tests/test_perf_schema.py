"""``Body.from_wire`` knows each body class's required and allowed wire keys once
(issue 8, item 6): it built both sets at every call (~14 bodies a purchase), and the
usual body, with exactly its keys, now costs one test. Refusals are as before: the
first missing key, else the first unknown one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import pytest

from semper.services import _schema
from semper.services._schema import Body, Schema, integer, text
from semper.services.commerce import BadBody


@dataclass(frozen=True, slots=True, kw_only=True)
class Note(Body):
    TYPE: ClassVar[str] = "test.note"
    SCHEMA: ClassVar[Schema] = Schema(BadBody, {"text": text(20), "n": integer(0, 9)})

    text: str
    n: int | None = None


def test_the_keys_of_a_body_class_are_known_once() -> None:
    assert Note.from_wire({"text": "a"}) == Note(text="a")
    keys = _schema._KEYS[Note]
    assert keys == (frozenset({"text"}), frozenset({"text", "n"}))
    assert Note.from_wire({"text": "b", "n": 3}) == Note(text="b", n=3)
    assert _schema._KEYS[Note] is keys


@pytest.mark.parametrize(("wire", "field", "why"), [
    ({}, "text", "is missing"),
    ({"n": 1}, "text", "is missing"),
    ({"text": "a", "extra": 1}, "extra", "is not a field of this body"),
    ({"text": "a", "n": 1, 2: 0, "b": 0}, "2", "is not a field of this body"),
    ({"extra": 1}, "text", "is missing"),  # missing before unknown, as before
])
def test_refusals_name_the_same_field(wire: dict[object, object], field: str,
                                      why: str) -> None:
    with pytest.raises(BadBody, match=why) as refused:
        Note.from_wire(wire)
    assert refused.value.detail == {"type": "test.note", "field": field}
