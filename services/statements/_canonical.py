"""Canonical msgpack: one value, exactly one byte string.

Theory of operation. A signature covers bytes, but statements travel as values:
inside messages, in SQLite, in evidence bundles, decoded and re-encoded on the way.
So the signed bytes must be a function of the value alone. The canonical encoding:

- the wire's value model (docs/protocol.md section 3.3): maps with str keys, lists,
  str, bytes, int in msgpack's range (-2**63 .. 2**64-1), bool and nil. No floats, no
  ext types, no tuples and no subclasses (an IntEnum or StrEnum is converted by the
  caller): a value that could be written two ways is refused rather than guessed;
- map keys sorted by their UTF-8 bytes. This is code point order, which is what
  Python's sort gives, but not what a UTF-16 language's default sort gives, so the
  rule names bytes;
- every integer, length and header in its shortest msgpack form, text in the str
  family and byte strings in the bin family: what msgpack-python's ``Packer`` writes
  with ``use_bin_type=True, strict_types=True``;
- the bounds of the transport: nesting at most 32 deep (the top container is at
  depth 0), containers at most 65536 elements, str and bin at most 1 MiB.

Decoding is strict and then re-encodes: bytes that differ from the canonical
encoding of the value they decode to are refused as ``NotCanonical``. That one
comparison catches unsorted and duplicate keys, long-form ints and lengths and
trailing bytes, with no parser of our own to get wrong.
"""

from __future__ import annotations

from typing import Any, Final

import msgpack

from ._errors import MalformedStatement, NotCanonical

__all__ = ["MAX_CONTAINER", "MAX_DEPTH", "MAX_STRING", "canonical_decode", "canonical_encode",
           "canonical_join"]

#: Containers nested deeper than this are refused (the top container is at depth 0).
MAX_DEPTH: Final = 32
#: Elements in one list, or pairs in one map.
MAX_CONTAINER: Final = 1 << 16
#: Encoded bytes of one str (UTF-8) or one bytes value.
MAX_STRING: Final = 1 << 20

_INT_MIN: Final = -(1 << 63)
_INT_MAX: Final = (1 << 64) - 1


def canonical_encode(value: Any) -> bytes:
    """Encode ``value`` canonically.

    Raises:
        ValueError: ``value`` is outside the value model (a float, a tuple, a subclass
            of a model type, a non-str key, an int out of range, text that is not
            valid UTF-8) or beyond the bounds.
    """
    return encode_at(value, 0)


def encode_at(value: Any, depth: int) -> bytes:
    """``canonical_encode`` of ``value`` as it sits at ``depth`` inside another value
    (the bounds count from the top): the bytes it takes there, checked as there."""
    try:
        normal = _plain(value, depth)
    except _Unusual:
        normal = _normalize(value, depth)
    try:
        packed: bytes = msgpack.packb(normal, use_bin_type=True, strict_types=True)
        return packed
    except (TypeError, OverflowError, ValueError) as exc:  # unreachable after _normalize
        raise ValueError(f"cannot encode canonically: {exc}") from None


def canonical_join(plain: dict[str, Any], encoded: dict[str, bytes]) -> bytes:
    """``canonical_encode`` of the map ``plain`` plus ``encoded``'s keys, where each of
    ``encoded``'s values is already the canonical encoding of the value it stands for
    (a statement's ``to_bytes()``): the same bytes, without walking those values again
    (a map's encoding is its header, then each key and value in key order).

    The encoded values were checked as top-level values, and are taken as they are:
    the caller vouches that they nest well within the bounds one level down (a
    machine's statements: typed bodies a few levels deep).

    Raises:
        ValueError: as ``canonical_encode``, for ``plain``'s keys and values; a key
            in both maps.
    """
    if not plain.keys().isdisjoint(encoded):
        raise ValueError("a key is both plain and encoded")
    count = len(plain) + len(encoded)
    if count > MAX_CONTAINER:
        raise ValueError(f"map of {count} elements is longer than {MAX_CONTAINER}")
    try:
        normal = _plain(plain, 0)  # checks plain's keys, and its values one level down
    except _Unusual:
        normal = _normalize(plain, 0)
    for key in encoded:
        if type(key) is not str:
            raise ValueError(f"map keys must be str, not {type(key).__name__}")
        _check_text(key)
    pack = msgpack.Packer(use_bin_type=True, strict_types=True).pack
    parts = [_map_header(count)]
    for key in sorted([*plain, *encoded]):
        packed = _KEYS.get(key)
        if packed is None:
            packed = pack(key)
            if len(_KEYS) < _MAX_KEYS:
                _KEYS[key] = packed
        parts.append(packed)
        if key in encoded:
            parts.append(encoded[key])
        else:
            value = normal[key]
            parts.append(b"\xc0" if value is None else pack(value))
    return b"".join(parts)


#: Map keys ``canonical_join`` has packed (a machine's field names), up to a bound.
_KEYS: dict[str, bytes] = {}
_MAX_KEYS: Final = 256


def _map_header(count: int) -> bytes:
    """A msgpack map header for ``count`` pairs, in its shortest form."""
    if count < 16:
        return bytes([0x80 | count])
    if count < 1 << 16:
        return b"\xde" + count.to_bytes(2, "big")
    return b"\xdf" + count.to_bytes(4, "big")


def canonical_decode(data: bytes | bytearray | memoryview) -> Any:
    """Decode bytes that must be the canonical encoding of one value.

    Raises:
        MalformedStatement: not exactly one msgpack value of the value model.
        NotCanonical: a valid value, encoded other than canonically;
            ``detail["offset"]`` is the first byte that differs.
        Never any other exception, whatever the bytes.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError(f"canonical_decode needs bytes, not {type(data).__name__}")
    data = bytes(data)
    try:
        value = msgpack.unpackb(
            data,
            raw=False,
            use_list=True,
            strict_map_key=True,
            unicode_errors="strict",
            max_str_len=MAX_STRING,
            max_bin_len=MAX_STRING,
            max_array_len=MAX_CONTAINER,
            max_map_len=MAX_CONTAINER,
            max_ext_len=0,
            timestamp=0,
        )
    except Exception as exc:  # msgpack raises a zoo of types; all mean "bad bytes"
        raise MalformedStatement(f"not one msgpack value: {type(exc).__name__}") from None
    try:
        again = canonical_encode(value)
    except ValueError as exc:
        raise MalformedStatement(str(exc)) from None
    if again != data:
        offset = next((i for i, (a, b) in enumerate(zip(again, data, strict=False)) if a != b),
                      min(len(again), len(data)))
        raise NotCanonical(
            f"not the canonical encoding of its value (first difference at byte {offset})",
            detail={"offset": offset},
        )
    return value


class _Unusual(Exception):
    """Not the plain case: the checked path (``_normalize``) decides, and explains."""


def _plain(value: Any, depth: int) -> Any:
    """``_normalize`` for the common case, with the checks inlined and leaves handled
    in their container's loop (one call per container, not one per value): raises
    ``_Unusual`` for anything else (a non-str key, text that is not ASCII, a value at
    or past a bound, a type outside the model)."""
    t = type(value)
    if t is dict:
        if depth >= MAX_DEPTH or len(value) > MAX_CONTAINER:
            raise _Unusual
        for key in value:
            if type(key) is not str or not key.isascii() or len(key) > MAX_STRING:
                raise _Unusual
        depth += 1
        out = {}
        for key in sorted(value):
            item = value[key]
            kind = type(item)
            if kind is str:
                if not item.isascii() or len(item) > MAX_STRING:
                    raise _Unusual
            elif kind is bytes:
                if len(item) > MAX_STRING:
                    raise _Unusual
            elif kind is int:
                if not _INT_MIN <= item <= _INT_MAX:
                    raise _Unusual
            elif kind is dict or kind is list:
                item = _plain(item, depth)
            elif item is not None and kind is not bool:
                raise _Unusual
            out[key] = item
        return out
    if t is list:
        if depth >= MAX_DEPTH or len(value) > MAX_CONTAINER:
            raise _Unusual
        depth += 1
        items = []
        for item in value:
            kind = type(item)
            if kind is str:
                if not item.isascii() or len(item) > MAX_STRING:
                    raise _Unusual
            elif kind is bytes:
                if len(item) > MAX_STRING:
                    raise _Unusual
            elif kind is int:
                if not _INT_MIN <= item <= _INT_MAX:
                    raise _Unusual
            elif kind is dict or kind is list:
                item = _plain(item, depth)
            elif item is not None and kind is not bool:
                raise _Unusual
            items.append(item)
        return items
    raise _Unusual  # a bare leaf: rare enough for the checked path


def _normalize(value: Any, depth: int) -> Any:
    """Check ``value`` against the model and return it with every map's keys sorted.

    Exact type checks on purpose: ``bool`` is tested before ``int`` would match it,
    and subclasses (enums, OrderedDict) are refused instead of silently flattened.
    Keys are sorted as str: for valid text (``_check_text`` refuses the rest first)
    code point order is UTF-8 byte order.
    """
    t = type(value)
    if t is str:
        _check_text(value)
        return value
    if t is bytes:
        _check_length(value, "bytes")
        return value
    if t is int:
        if not _INT_MIN <= value <= _INT_MAX:
            raise ValueError(f"integer {value} outside msgpack's 64-bit range")
        return value
    if t is dict:
        _check_container(value, depth, "map")
        for key in value:
            if type(key) is not str:
                raise ValueError(f"map keys must be str, not {type(key).__name__}")
            _check_text(key)
        depth += 1
        return {key: _normalize(value[key], depth) for key in sorted(value)}
    if t is list:
        _check_container(value, depth, "list")
        depth += 1
        return [_normalize(item, depth) for item in value]
    if value is None or t is bool:
        return value
    raise ValueError(
        f"{t.__name__} is outside the value model (int, bytes, str, bool, None, list, dict)"
    )


def _check_text(text: str) -> None:
    """Valid Unicode (no lone surrogate) of at most ``MAX_STRING`` UTF-8 bytes. ASCII
    text, the common case, is checked without encoding it: one byte a character."""
    if text.isascii():
        _check_length(text, "str")
    elif len(text) > MAX_STRING // 4:  # might be too long: count the bytes
        _check_length(_utf8(text), "str")
    else:
        _utf8(text)


def _utf8(text: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("str is not valid Unicode text (lone surrogate)") from None


def _check_length(data: bytes | str, kind: str) -> None:
    if len(data) > MAX_STRING:
        raise ValueError(f"{kind} of {len(data)} bytes is longer than {MAX_STRING}")


def _check_container(value: list[Any] | dict[str, Any], depth: int, kind: str) -> None:
    if depth >= MAX_DEPTH:
        raise ValueError(f"containers nested deeper than {MAX_DEPTH}")
    if len(value) > MAX_CONTAINER:
        raise ValueError(f"{kind} of {len(value)} elements is longer than {MAX_CONTAINER}")
