"""The canonical encoder's plain path gives the bytes and the refusals the checked path
gives (issue 8, item 6: canonical encoding was a third of a purchase's CPU time).

``canonical_encode`` first tries ``_plain`` (checks inlined, leaves handled in their
container's loop); anything unusual (non-ASCII text, a bound reached, a type outside
the model) goes to ``_normalize``, which decides and explains as before.
"""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from semper.services.statements import _canonical
from semper.services.statements._canonical import (
    MAX_CONTAINER,
    MAX_DEPTH,
    MAX_STRING,
    _normalize,
    _plain,
    _Unusual,
    canonical_decode,
    canonical_encode,
)

leaves = (st.none() | st.booleans() | st.integers(-(1 << 64), 1 << 65) | st.binary(max_size=8)
          | st.text(max_size=8) | st.floats(allow_nan=False) | st.tuples(st.integers()))
values = st.recursive(leaves, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
    st.text(max_size=4) | st.integers(0, 3), inner, max_size=4), max_leaves=24)


def checked(value: Any) -> bytes | str:
    """What the checked path alone gives: the bytes, or the refusal's message."""
    try:
        return bytes(msgpack.packb(_normalize(value, 0), use_bin_type=True, strict_types=True))
    except ValueError as exc:
        return f"ValueError: {exc}"


def encoded(value: Any) -> bytes | str:
    try:
        return canonical_encode(value)
    except ValueError as exc:
        return f"ValueError: {exc}"


@settings(max_examples=400, deadline=None, derandomize=True)
@given(values)
def test_the_plain_path_changes_no_byte_and_no_refusal(value: Any) -> None:
    assert encoded(value) == checked(value)


def test_a_purchase_state_takes_the_plain_path() -> None:
    state = {"v": 1, "offer": {"body": {"sku": "song-003", "price": {"currency": "EUR",
             "minor_units": 99}, "digest": b"\x00" * 32}, "type": "commerce.offer"},
             "state": "done", "list": [1, None, True, b"x", ["nested"]]}
    normal = _plain(state, 0)
    assert list(normal) == sorted(state) and normal == _normalize(state, 0)
    assert canonical_decode(canonical_encode(state)) == state


@pytest.mark.parametrize("value", [
    {"tïtle": 1}, {"title": "naïve"}, {"k": "\ud800"}, {"k": 1.5}, {"k": (1,)}, {1: "x"},
    {"k": 1 << 64}, {"k": -(1 << 63) - 1}, "bare", 7,
    {"k": "x" * (MAX_STRING + 1)}, {"k": b"x" * (MAX_STRING + 1)},
    {"k": list(range(MAX_CONTAINER + 1))},
])
def test_unusual_values_go_to_the_checked_path(value: Any) -> None:
    with pytest.raises(_Unusual):
        _plain(value, 0)
    assert encoded(value) == checked(value)


def test_the_depth_bound_is_the_checked_paths() -> None:
    deep: Any = "leaf"
    for _ in range(MAX_DEPTH):
        deep = [deep]
    assert encoded(deep) == checked(deep) and isinstance(encoded(deep), bytes)
    too_deep = [deep]
    assert encoded(too_deep) == checked(too_deep) == (
        f"ValueError: containers nested deeper than {MAX_DEPTH}")
    assert _canonical.MAX_DEPTH == MAX_DEPTH
