"""Framing and the strict msgpack value model (transport/_codec.py).

Round trips for every allowed value, refusal of every disallowed one on both sides,
and the h11 fuzz invariant: hostile bytes, whole or split anywhere, raise BadFrame or
FrameTooLarge and nothing else.
"""

from __future__ import annotations

import datetime as dt
import enum
import itertools
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from semper.transport import (
    DEFAULT_MAX_FRAME,
    NEED_DATA,
    BadFrame,
    CodecLimits,
    FrameDecoder,
    FrameTooLarge,
    ProtocolError,
    decode_body,
    encode_body,
    encode_frame,
)

MAX_DEPTH = CodecLimits().max_depth
MAX_CONTAINER = CodecLimits().max_container
FUZZ = settings(max_examples=300, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# -- strategies ----------------------------------------------------------------------

leaves = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.text()
    | st.binary()
)
values = st.recursive(
    leaves,
    lambda children: st.lists(children, max_size=6)
    | st.dictionaries(st.text(max_size=8), children, max_size=6),
    max_leaves=40,
)


def nesting(obj: Any) -> int:
    """Container levels: a scalar is 0, ``[]`` is 1, ``[[]]`` is 2."""
    if isinstance(obj, list):
        return 1 + max((nesting(v) for v in obj), default=0)
    if isinstance(obj, dict):
        return 1 + max((nesting(v) for v in obj.values()), default=0)
    return 0


def same(a: Any, b: Any) -> bool:
    """Equality that tells True from 1 and bytes from str."""
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return bool(a == b)


def nested_list(levels: int) -> Any:
    obj: Any = []
    for _ in range(levels - 1):
        obj = [obj]
    return obj


def decode_stream(data: bytes, cuts: list[int], limits: CodecLimits | None = None
                  ) -> tuple[list[Any], type[Exception] | None]:
    """Feed ``data`` to a FrameDecoder in pieces split at ``cuts``; collect everything.

    Returns the values decoded and the type of the error that stopped decoding.
    Only our protocol errors may escape; anything else fails the test.
    """
    decoder = FrameDecoder(limits or CodecLimits())
    out: list[Any] = []
    bounds = [0, *sorted(set(cuts)), len(data)]
    try:
        for start, end in itertools.pairwise(bounds):
            decoder.feed(data[start:end])
            while (obj := decoder.next_object()) is not NEED_DATA:
                out.append(obj)
    except (BadFrame, FrameTooLarge) as exc:
        assert isinstance(exc, ProtocolError)
        return out, type(exc)
    return out, None


# -- round trips ---------------------------------------------------------------------


@FUZZ
@given(values)
def test_body_round_trip(value: Any) -> None:
    assume(nesting(value) <= MAX_DEPTH)
    assert same(decode_body(encode_body(value)), value)


@FUZZ
@given(st.lists(values, min_size=1, max_size=5), st.data())
def test_frames_round_trip_split_anywhere(frames: list[Any], data: st.DataObject) -> None:
    stream = b"".join(encode_frame(v) for v in frames)
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=12))
    out, error = decode_stream(stream, cuts)
    assert error is None
    assert len(out) == len(frames)
    assert all(same(a, b) for a, b in zip(out, frames, strict=True))


@settings(max_examples=50, deadline=None)
@given(st.lists(values, min_size=1, max_size=3))
def test_frames_round_trip_byte_by_byte(frames: list[Any]) -> None:
    stream = b"".join(encode_frame(v) for v in frames)
    out, error = decode_stream(stream, list(range(len(stream))))
    assert error is None
    assert all(same(a, b) for a, b in zip(out, frames, strict=True))
    assert len(out) == len(frames)


@pytest.mark.parametrize("value", [
    -(2**63),            # smallest int64
    2**64 - 1,           # largest uint64
    0, -1, 2**63,
    "", b"", [], {},
    "é\u2603\U0001f600",  # multi-byte UTF-8
    {"": {"k": [None, True, False, b"\x00\xff"]}},
])
def test_boundary_values_round_trip(value: Any) -> None:
    assert same(decode_body(encode_body(value)), value)


def test_frame_layout_is_big_endian_length_then_body() -> None:
    body = encode_body({"a": 1})
    assert encode_frame({"a": 1}) == len(body).to_bytes(4, "big") + body
    assert msgpack.unpackb(body) == {"a": 1}


# -- the encoder refuses what the decoder would refuse ------------------------------


class Colour(enum.IntEnum):
    RED = 1


class Name(str):
    pass


disallowed = st.one_of(
    st.floats(),
    st.tuples(st.integers()),
    st.integers(max_value=-(2**63) - 1),
    st.integers(min_value=2**64),
    st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=8)),
    st.dictionaries(st.integers(), st.none(), min_size=1, max_size=3),   # int keys
    st.dictionaries(st.binary(), st.none(), min_size=1, max_size=3),     # bytes keys
    st.sets(st.integers(), max_size=3),
    st.sampled_from([Colour.RED, Name("x"), bytearray(b"x"), memoryview(b"x"),
                     dt.datetime(2024, 1, 1, tzinfo=dt.UTC), object(),
                     msgpack.Timestamp(0, 0)]),
)


@FUZZ
@given(disallowed, st.integers(0, 3), st.booleans())
def test_encoder_refuses_disallowed_values(bad: Any, depth: int, in_map: bool) -> None:
    value = bad
    for _ in range(depth):
        value = {"k": value} if in_map else [1, value]
    with pytest.raises(ValueError):
        encode_body(value)
    with pytest.raises(ValueError):
        encode_frame(value)


def test_depth_limit_exactly_at_and_over_the_bound() -> None:
    at = nested_list(MAX_DEPTH)
    over = nested_list(MAX_DEPTH + 1)
    assert nesting(at) == MAX_DEPTH
    assert same(decode_body(encode_body(at)), at)
    with pytest.raises(ValueError):
        encode_body(over)
    # The decoder applies the same bound to bytes built by hand: 0x91 is a one-element
    # array, 0x90 the empty array.
    assert decode_body(b"\x91" * (MAX_DEPTH - 1) + b"\x90") == at
    with pytest.raises(BadFrame):
        decode_body(b"\x91" * MAX_DEPTH + b"\x90")
    # Maps count as levels too: 0x81 0xa1 'k' is {"k": ...}, 0x80 the empty map.
    with pytest.raises(BadFrame):
        decode_body(b"\x81\xa1k" * MAX_DEPTH + b"\x80")
    assert nesting(decode_body(b"\x81\xa1k" * (MAX_DEPTH - 1) + b"\x80")) == MAX_DEPTH


def test_custom_depth_limit() -> None:
    limits = CodecLimits(max_depth=2)
    assert decode_body(b"\x91\x90", limits) == [[]]
    with pytest.raises(BadFrame):
        decode_body(b"\x91\x91\x90", limits)
    with pytest.raises(ValueError):
        encode_body([[[]]], limits)


def test_container_length_limits() -> None:
    ok = [None] * MAX_CONTAINER
    assert decode_body(encode_body(ok)) == ok
    with pytest.raises(ValueError):
        encode_body([None] * (MAX_CONTAINER + 1))
    with pytest.raises(ValueError):
        encode_body({str(i): None for i in range(MAX_CONTAINER + 1)})
    # array32 / map32 headers announcing one element too many, with the elements
    # present: refused by the length check, not by running out of data.
    n = MAX_CONTAINER + 1
    with pytest.raises(BadFrame):
        decode_body(b"\xdd" + n.to_bytes(4, "big") + b"\xc0" * n)
    with pytest.raises(BadFrame):
        decode_body(b"\xdf" + n.to_bytes(4, "big") + b"".join(
            msgpack.packb(str(i)) + b"\xc0" for i in range(n)))
    # a header claiming 4 billion elements with no elements: refused, never allocated
    with pytest.raises(BadFrame):
        decode_body(b"\xdd\xff\xff\xff\xff")


def test_custom_container_limit_on_both_sides() -> None:
    limits = CodecLimits(max_container=3)
    assert decode_body(b"\x93\x01\x02\x03", limits) == [1, 2, 3]
    with pytest.raises(BadFrame):
        decode_body(b"\x94\x01\x02\x03\x04", limits)
    with pytest.raises(ValueError):
        encode_body([1, 2, 3, 4], limits)
    with pytest.raises(ValueError):
        encode_body({"a": {"b": 1, "c": 2, "d": 3, "e": 4}}, limits)


def test_codec_limits_validate() -> None:
    with pytest.raises(ValueError):
        CodecLimits(max_frame=15)
    with pytest.raises(ValueError):
        CodecLimits(max_frame=2**32)
    with pytest.raises(ValueError):
        CodecLimits(max_depth=0)


def test_encode_frame_refuses_body_over_max_frame() -> None:
    limits = CodecLimits(max_frame=16)
    assert len(encode_frame("x" * 10, limits)) == 4 + 11
    with pytest.raises(ValueError):
        encode_frame("x" * 16, limits)   # 17-byte body
    with pytest.raises(ValueError):
        encode_frame(b"\x00" * DEFAULT_MAX_FRAME)  # body = header + 1 MiB


# -- hand-written hostile bodies -----------------------------------------------------


@pytest.mark.parametrize("body", [
    pytest.param(b"\xca\x3f\x80\x00\x00", id="float32"),
    pytest.param(b"\xcb\x3f\xf0\x00\x00\x00\x00\x00\x00", id="float64"),
    pytest.param(b"\x91\xcb\x3f\xf0\x00\x00\x00\x00\x00\x00", id="float64-in-array"),
    pytest.param(b"\x81\xa1a\xca\x3f\x80\x00\x00", id="float32-in-map"),
    pytest.param(b"\xd4\x01\x00", id="fixext1"),
    pytest.param(b"\xc7\x03\x05abc", id="ext8"),
    pytest.param(b"\xd6\xff\x00\x00\x00\x00", id="timestamp32"),
    pytest.param(b"\xd7\xff" + b"\x00" * 8, id="timestamp64"),
    pytest.param(b"\xc7\x0c\xff" + b"\x00" * 12, id="timestamp96"),
    pytest.param(b"\x91\xd6\xff\x00\x00\x00\x00", id="timestamp-in-array"),
    pytest.param(b"\xa2\xff\xfe", id="invalid-utf8-str"),
    pytest.param(b"\xa3\xed\xa0\x80", id="utf8-surrogate"),
    pytest.param(b"\x81\xa2\xc3\x28\x01", id="invalid-utf8-key"),
    pytest.param(b"\x01\x02", id="trailing-bytes"),
    pytest.param(b"\x80\xc0", id="trailing-nil-after-map"),
    pytest.param(b"", id="empty"),
    pytest.param(b"\xc1", id="never-used-byte"),
    pytest.param(b"\x92\x01", id="truncated-array"),
    pytest.param(b"\xa5ab", id="truncated-str"),
    pytest.param(b"\xdb\xff\xff\xff\xff", id="str32-claiming-4GiB"),
    pytest.param(b"\xc6\xff\xff\xff\xff", id="bin32-claiming-4GiB"),
    pytest.param(b"\x81\x01\x02", id="int-key"),
    pytest.param(b"\x81\xc4\x01a\x01", id="bytes-key"),
    pytest.param(b"\x81\xc0\x01", id="nil-key"),
    pytest.param(b"\x81\x90\x01", id="array-key"),
])
def test_hostile_body_is_bad_frame(body: bytes) -> None:
    with pytest.raises(BadFrame):
        decode_body(body)
    # and the same body inside a frame breaks the decoder for good
    decoder = FrameDecoder()
    decoder.feed(len(body).to_bytes(4, "big") + body + encode_frame("next"))
    with pytest.raises(BadFrame):
        decoder.next_object()
    with pytest.raises(BadFrame):
        decoder.next_object()


def test_zero_length_frame_is_bad_frame() -> None:
    decoder = FrameDecoder()
    decoder.feed(b"\x00\x00\x00\x00")
    with pytest.raises(BadFrame):
        decoder.next_object()


def test_duplicate_map_keys_last_value_wins() -> None:
    # What happens today: msgpack keeps the last value for a repeated key and the
    # decoder accepts the map. The transport does not sign frames, so this is not a
    # malleability hole here; canonical statements must check their own encoding.
    assert decode_body(b"\x82\xa1a\x01\xa1a\x02") == {"a": 2}


def test_string_and_bin_limits_on_decode() -> None:
    limits = CodecLimits(max_str=3, max_bin=3)
    assert decode_body(b"\xa3abc", limits) == "abc"
    with pytest.raises(BadFrame):
        decode_body(b"\xa4abcd", limits)
    assert decode_body(b"\xc4\x03abc", limits) == b"abc"
    with pytest.raises(BadFrame):
        decode_body(b"\xc4\x04abcd", limits)


def test_encoder_enforces_string_limits_like_the_decoder() -> None:
    limits = CodecLimits(max_str=3, max_bin=3)
    for value in ({"k": "abcd"}, ["abcd"], b"abcd", [b"abcd"], {"abcd": 1}, {"k": b"abcd"},
                  "\u00e9\u00e9", ["\u00e9\u00e9"]):  # two code points, four UTF-8 bytes
        with pytest.raises(ValueError):
            encode_frame(value, limits)
    for value in ({"k": "abc"}, ["abc"], b"abc", [b"abc"], {"abc": 1}, "\u00e9a"):
        assert decode_body(encode_body(value, limits), limits) == value


# -- the length prefix ---------------------------------------------------------------


def test_oversized_prefix_refused_before_the_body() -> None:
    decoder = FrameDecoder()
    decoder.feed((2 * 1024 * 1024).to_bytes(4, "big"))  # 2 MiB announced, nothing sent
    with pytest.raises(FrameTooLarge) as info:
        decoder.next_object()
    assert info.value.code == "protocol.frame_too_large"
    assert info.value.detail == {"limit": DEFAULT_MAX_FRAME, "size": 2 * 1024 * 1024}
    assert decoder.buffered == 4
    # the decoder stays broken, even when good frames follow
    decoder.feed(encode_frame("fine"))
    with pytest.raises(FrameTooLarge):
        decoder.next_object()


def test_prefix_at_the_limit_waits_for_the_body() -> None:
    limits = CodecLimits(max_frame=64)
    decoder = FrameDecoder(limits)
    decoder.feed((64).to_bytes(4, "big"))
    assert decoder.next_object() is NEED_DATA
    decoder.feed(b"\xd9\x3e" + b"a" * 62)  # str8 of 62 bytes: a 64-byte body
    assert decoder.next_object() == "a" * 62
    decoder.feed((65).to_bytes(4, "big"))
    with pytest.raises(FrameTooLarge):
        decoder.next_object()


def test_prefix_split_across_feeds() -> None:
    decoder = FrameDecoder()
    for byte in b"\x7f\xff\xff":
        decoder.feed(bytes([byte]))
        assert decoder.next_object() is NEED_DATA
    decoder.feed(b"\xff")
    with pytest.raises(FrameTooLarge):
        decoder.next_object()


def test_many_frames_in_one_feed_and_buffered_count() -> None:
    decoder = FrameDecoder()
    frames = [encode_frame({"n": i}) for i in range(30)]
    decoder.feed(b"".join(frames) + frames[0][:3])
    got = []
    while (obj := decoder.next_object()) is not NEED_DATA:
        got.append(obj)
    assert got == [{"n": i} for i in range(30)]
    assert decoder.buffered == 3


# -- fuzz: hostile bytes raise our error and nothing else ----------------------------


@FUZZ
@given(st.binary(max_size=200))
def test_decode_body_garbage(body: bytes) -> None:
    try:
        value = decode_body(body)
    except BadFrame:
        return
    # whatever decodes is inside the value model, so it re-encodes to the same value
    assert same(decode_body(encode_body(value)), value)


@FUZZ
@given(st.lists(st.binary(max_size=40), max_size=6), st.binary(max_size=8), st.data())
def test_frame_decoder_garbage_split_anywhere(bodies: list[bytes], tail: bytes,
                                              data: st.DataObject) -> None:
    # well-formed prefixes around garbage bodies, so the bodies reach msgpack, plus
    # a garbage tail that is often a huge prefix
    stream = b"".join(raw(b) for b in bodies) + tail
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=10))
    whole = decode_stream(stream, [])
    pieces = decode_stream(stream, cuts)
    one_by_one = decode_stream(stream, list(range(len(stream))))
    # how the bytes are split never changes what comes out
    for other in (pieces, one_by_one):
        assert other[1] == whole[1]
        assert len(other[0]) == len(whole[0])
        assert all(same(a, b) for a, b in zip(other[0], whole[0], strict=True))


@FUZZ
@given(st.binary(max_size=300), st.data())
def test_frame_decoder_pure_garbage(stream: bytes, data: st.DataObject) -> None:
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=10))
    decode_stream(stream, cuts, CodecLimits(max_frame=64))
    decode_stream(stream, list(range(len(stream))))


@FUZZ
@given(st.lists(values, min_size=1, max_size=3), st.data())
def test_frame_decoder_mutated_frames(frames: list[Any], data: st.DataObject) -> None:
    # valid frames with a few bytes flipped: close to valid, so msgpack goes deep
    stream = bytearray(b"".join(encode_frame(v) for v in frames))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(stream) - 1))
        stream[i] = data.draw(st.integers(0, 255))
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=6))
    decode_stream(bytes(stream), cuts)


def raw(body: bytes) -> bytes:
    return len(body).to_bytes(4, "big") + body
