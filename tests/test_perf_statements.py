"""A statement's body is walked once, and a machine's save walks no statement again
(issue 8, item 6: canonical encoding was the largest Python cost of a purchase on both
sides: each statement was encoded three times, checked, signed or verified, then
hashed, and each save encoded the whole machine, the offer twice in it).

The bytes are the ones ``canonical_encode`` gives: ``signed_bytes``, ``to_bytes`` and
``state_bytes`` are built around encodings already made, never a format of their own.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_commerce_machines import Script, reach, states_of
from test_commerce_machines import script as script
from test_commerce_machines import world as world

from semper.services.commerce import Purchase, Sale
from semper.services.statements import (
    Statement,
    _canonical,
    canonical_decode,
    canonical_encode,
    canonical_join,
)
from semper.services.statements._statement import DOMAIN

bodies = st.dictionaries(
    st.text(max_size=6), st.recursive(
        st.none() | st.booleans() | st.integers(-(1 << 63), (1 << 64) - 1)
        | st.binary(max_size=40) | st.text(max_size=12),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4),
                                                                    inner, max_size=3),
        max_leaves=12), max_size=5)


def statement(body: dict[str, Any], *, issued_at: int = 1_700_000_000_000,
              type: str = "commerce.offer") -> Statement:
    return Statement(type=type, body=body, signer=os.urandom(32), issued_at=issued_at,
                     nonce=os.urandom(16), signature=os.urandom(64))


@settings(max_examples=200, deadline=None, derandomize=True)
@given(bodies, st.integers(0, 253_402_300_799_999), st.sampled_from(
    ["commerce.offer", "a.b", "payment.transfer_order", "x" * 60 + ".y" * 30]))
def test_signed_and_stored_bytes_are_the_canonical_encodings(
        body: dict[str, Any], issued_at: int, type: str) -> None:
    one = statement(body, issued_at=issued_at, type=type)
    assert one.signed_bytes() == DOMAIN + canonical_encode(one._unsigned())
    assert one.to_bytes() == canonical_encode(one.to_wire())
    again = Statement.from_bytes(one.to_bytes())
    assert again == one and again.to_bytes() == one.to_bytes()
    assert again.signed_bytes() == one.signed_bytes() and again.digest == one.digest


def test_a_body_outside_the_model_is_refused_as_before() -> None:
    for bad in ({"x": 1.5}, {"x": (1,)}, {1: "x"}, {"x": 1 << 64}, {"x": "\ud800"}):
        with pytest.raises(ValueError) as new:
            statement(bad)  # type: ignore[arg-type]
        with pytest.raises(ValueError) as old:
            canonical_encode({"body": bad})
        assert str(new.value) == str(old.value)
    deep: dict[str, Any] = {}
    inner = deep
    for _ in range(_canonical.MAX_DEPTH - 1):  # the body is one level down
        inner["d"] = {}
        inner = inner["d"]
    with pytest.raises(ValueError, match="deeper"):
        statement(deep)


def _walks(monkeypatch: pytest.MonkeyPatch, watched: dict[str, Any]) -> list[str]:
    """Records each time the canonical encoder walks one of ``watched``'s values."""
    walked: list[str] = []
    plain = _canonical._plain

    def counting(value: Any, depth: int) -> Any:
        walked.extend(name for name, body in watched.items() if value is body)
        return plain(value, depth)

    monkeypatch.setattr(_canonical, "_plain", counting)
    return walked


def test_a_statement_body_is_walked_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The instance: built, signed bytes, stored bytes, digest, three times each; was
    three walks of the body (check, signed_bytes, to_bytes)."""
    body = {"sku": "song-003", "price": {"currency": "EUR", "minor_units": 99}}
    walked = _walks(monkeypatch, {"body": body})
    one = statement(body)
    for _ in range(3):
        one.signed_bytes(), one.to_bytes(), one.digest
    assert walked == ["body"]


def test_a_machine_save_walks_no_statement_again(script: Script,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The other member: a machine's stored form held the order (with the offer inside
    it), the delivery and the receipt as maps, walked again at every save."""
    machine = reach(script, Purchase, states_of(Purchase).DONE)
    statements = {name: getattr(machine, name) for name in ("offer", "order", "receipt")}
    for one in statements.values():
        one.to_bytes()
    walked = _walks(monkeypatch, {name: s.body for name, s in statements.items()})
    machine.state_bytes()
    assert walked == []


@pytest.mark.parametrize("side", [Purchase, Sale])
def test_state_bytes_are_the_canonical_encoding_of_the_state(script: Script,
                                                             side: type) -> None:
    for state in states_of(side):
        machine = reach(script, side, state)
        stored = machine.state_bytes()
        assert stored == canonical_encode(machine.to_state())
        assert type(machine).from_state(canonical_decode(stored)).to_state() \
            == machine.to_state()


def test_join_refuses_what_encode_refuses() -> None:
    part = statement({"a": 1})
    assert canonical_join({"z": [1, {"b": None}], "a": "x"}, {"m": part.to_bytes()}) \
        == canonical_encode({"z": [1, {"b": None}], "a": "x", "m": part.to_wire()})
    for bad in ({"x": 1.5}, {1: "x"}, {"x": (1,)}):
        with pytest.raises(ValueError):
            canonical_join(bad, {})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="both"):
        canonical_join({"m": 1}, {"m": part.to_bytes()})
    many = {f"k{n}": n for n in range(20)}  # a map16 header
    assert canonical_join(many, {"m": part.to_bytes()}) \
        == canonical_encode({**many, "m": part.to_wire()})
