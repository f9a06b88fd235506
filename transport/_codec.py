"""Frames: a 4-byte big-endian length, then one strict msgpack object.

Theory of operation. ``FrameDecoder`` is sans-IO (h11 style): the channel feeds it
whatever ``receive_some`` returned and pulls out every whole frame, so one TLS record
holding thirty frames costs one receive. The length prefix is checked against the
limit the moment its four bytes are in, so an oversized frame is refused before any
of its body is buffered. After any violation the decoder stays broken: the byte
stream has lost its framing and nothing after it can be trusted.

The value model is the one statements will sign (DESIGN.md section 5): maps with
``str`` keys, lists, ``str``, ``bytes``, ``int`` in msgpack's 64-bit range, ``bool``
and ``None``. No floats, no ext types, bounded nesting and container sizes. Both
directions enforce it: ``encode_frame`` refuses what ``FrameDecoder`` would refuse,
so we never send a frame a strict peer has to reject.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Final

import msgpack

from ._errors import BadFrame, FrameTooLarge

__all__ = [
    "DEFAULT_MAX_FRAME",
    "NEED_DATA",
    "CodecLimits",
    "FrameDecoder",
    "decode_body",
    "encode_body",
    "encode_frame",
]

DEFAULT_MAX_FRAME: Final = 1 << 20
_PREFIX: Final = 4
_INT_MIN: Final = -(1 << 63)
_INT_MAX: Final = (1 << 64) - 1
_LEAVES: Final = frozenset({str, bytes, int, bool, type(None)})
_SIZED: Final = frozenset({str, bytes})
#: Frame bodies from this size on are decoded from a view of the buffer, not a copy.
_VIEW_FROM: Final = 1 << 16


class _NeedData:
    def __repr__(self) -> str:
        return "NEED_DATA"


#: Returned by ``FrameDecoder.next_object`` when no whole frame is buffered.
NEED_DATA: Final = _NeedData()


@dataclass(frozen=True, slots=True, kw_only=True)
class CodecLimits:
    """Bounds on what one frame may hold. Every bound is checked before allocation
    where msgpack allows, otherwise right after decoding."""

    max_frame: int = DEFAULT_MAX_FRAME
    max_depth: int = 32
    max_container: int = 1 << 16
    max_str: int = DEFAULT_MAX_FRAME
    max_bin: int = DEFAULT_MAX_FRAME

    def __post_init__(self) -> None:
        if not 16 <= self.max_frame <= 0xFFFFFFFF:
            raise ValueError("max_frame must be between 16 bytes and 4 GiB")
        if not 1 <= self.max_depth <= 512:
            raise ValueError("max_depth must be between 1 and 512")


_DEFAULT_LIMITS: Final = CodecLimits()


def _check(obj: Any, depth: int, limits: CodecLimits, *, encoding: bool) -> None:
    """Walk a value and refuse anything outside the value model.

    When encoding, str and bin lengths are checked too, since the decoder's msgpack
    refuses them by the same limits: we never send what a strict peer must refuse.
    A container's leaves that pass are checked in its loop (no call for each); any
    other value is checked by a call, which refuses it with its message.
    """
    t = type(obj)
    if t is dict:
        if depth >= limits.max_depth:
            raise BadFrame(f"nesting deeper than {limits.max_depth}")
        if len(obj) > limits.max_container:
            raise BadFrame(f"map longer than {limits.max_container}")
        for key, value in obj.items():
            if type(key) is not str:
                raise BadFrame(f"map keys must be str, not {type(key).__name__}")
            if encoding and len(key) * 4 > limits.max_str and _too_long(key, str, limits):
                raise BadFrame("string too long")
            vt = type(value)
            if vt is str:  # no str of n code points is longer than 4n bytes
                if not (encoding and len(value) * 4 > limits.max_str
                        and _too_long(value, str, limits)):
                    continue
            elif vt is bytes:
                if not (encoding and len(value) > limits.max_bin):
                    continue
            elif vt is int:
                if _INT_MIN <= value <= _INT_MAX:
                    continue
            elif vt is bool or value is None:
                continue
            _check(value, depth + 1, limits, encoding=encoding)
    elif t is list:
        if depth >= limits.max_depth:
            raise BadFrame(f"nesting deeper than {limits.max_depth}")
        if len(obj) > limits.max_container:
            raise BadFrame(f"array longer than {limits.max_container}")
        for value in obj:
            vt = type(value)
            if vt is str:  # no str of n code points is longer than 4n bytes
                if not (encoding and len(value) * 4 > limits.max_str
                        and _too_long(value, str, limits)):
                    continue
            elif vt is bytes:
                if not (encoding and len(value) > limits.max_bin):
                    continue
            elif vt is int:
                if _INT_MIN <= value <= _INT_MAX:
                    continue
            elif vt is bool or value is None:
                continue
            _check(value, depth + 1, limits, encoding=encoding)
    elif t is int:
        if not _INT_MIN <= obj <= _INT_MAX:
            raise BadFrame("integer outside msgpack's 64-bit range")
    elif t not in _LEAVES:
        raise BadFrame(f"{t.__name__} is not allowed in a frame (no floats, no ext types)")
    elif encoding and t in _SIZED and _too_long(obj, t, limits):
        raise BadFrame("string too long" if t is str else "bin too long")


def _too_long(value: str | bytes, t: type, limits: CodecLimits) -> bool:
    """msgpack's limits count bytes: UTF-8 bytes for a str."""
    if t is bytes:
        return len(value) > limits.max_bin
    n = len(value)
    if n * 4 <= limits.max_str:  # no str of n code points is longer than 4n bytes
        return False
    if n > limits.max_str:
        return True
    return len(value.encode("utf-8", "surrogatepass")) > limits.max_str  # type: ignore[union-attr]


_packer_local = msgpack.Packer(use_bin_type=True, strict_types=True, autoreset=True)


def encode_body(obj: Any, limits: CodecLimits = _DEFAULT_LIMITS) -> bytes:
    """Encode one value in the value model, without the length prefix.

    Raises:
        ValueError: ``obj`` is outside the value model (float, tuple, ext, too deep).
    """
    try:
        _check(obj, 0, limits, encoding=True)
        packed: bytes = _packer_local.pack(obj)  # msgpack is untyped
        return packed
    except BadFrame as exc:
        raise ValueError(f"cannot encode: {exc.message}") from None
    except (TypeError, OverflowError, ValueError) as exc:
        raise ValueError(f"cannot encode: {exc}") from None


class FrameSizeError(ValueError):
    """A value that encodes to more than the frame limit."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"frame of {size} bytes exceeds the limit of {limit}")
        self.size, self.limit = size, limit


_frame_packers = threading.local()


def encode_frame(obj: Any, limits: CodecLimits = _DEFAULT_LIMITS) -> bytes:
    """Encode one value as a whole frame: length prefix and body.

    The body is packed into a packer's own buffer (one per thread) and copied once,
    behind the prefix: packing to bytes and then prepending the prefix copied a
    chunk of delivered content twice, each copy a fresh allocation that glibc
    trims and faults in again (0.8 ms per 1 MiB frame instead of 0.2).

    Raises:
        ValueError: ``obj`` is outside the value model or larger than ``limits.max_frame``.
    """
    packer = getattr(_frame_packers, "packer", None)
    if packer is None:
        packer = _frame_packers.packer = msgpack.Packer(use_bin_type=True, strict_types=True,
                                                        autoreset=False)
    try:
        _check(obj, 0, limits, encoding=True)
        packer.pack(obj)
        with packer.getbuffer() as body:
            size = len(body)
            if size > limits.max_frame:
                raise FrameSizeError(size, limits.max_frame)
            return b"".join((size.to_bytes(_PREFIX, "big"), body))
    except BadFrame as exc:
        raise ValueError(f"cannot encode: {exc.message}") from None
    except FrameSizeError:
        raise
    except (TypeError, OverflowError, ValueError) as exc:
        raise ValueError(f"cannot encode: {exc}") from None
    finally:
        packer.reset()


def decode_body(body: bytes | bytearray | memoryview, limits: CodecLimits = _DEFAULT_LIMITS) -> Any:
    """Decode one frame body strictly.

    Raises:
        BadFrame: for anything but exactly one value in the value model. Never
            another exception type, whatever the bytes.
    """
    try:
        obj = msgpack.unpackb(
            body,
            raw=False,
            use_list=True,
            strict_map_key=True,
            unicode_errors="strict",
            max_str_len=limits.max_str,
            max_bin_len=limits.max_bin,
            max_array_len=limits.max_container,
            max_map_len=limits.max_container,
            max_ext_len=0,
            timestamp=0,
        )
    except Exception as exc:  # msgpack raises a zoo of types; all mean "bad bytes"
        raise BadFrame(f"not one msgpack value: {type(exc).__name__}") from None
    if type(obj) not in _LEAVES or type(obj) is int:
        _check(obj, 0, limits, encoding=False)
    return obj


class FrameDecoder:
    """Sans-IO frame parser: ``feed(bytes)``, then ``next_object()`` until ``NEED_DATA``."""

    __slots__ = ("_broken", "_buf", "_limits", "_pos", "last_size")

    def __init__(self, limits: CodecLimits = _DEFAULT_LIMITS) -> None:
        self._limits = limits
        self._buf = bytearray()
        self._pos = 0
        self._broken: BadFrame | FrameTooLarge | None = None
        #: the size of the frame ``next_object`` returned last, prefix included
        self.last_size = 0

    @property
    def buffered(self) -> int:
        """Bytes received and not yet returned as a frame."""
        return len(self._buf) - self._pos

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        if self._pos:
            del self._buf[: self._pos]
            self._pos = 0
        self._buf += data

    def next_object(self) -> Any:
        """Return the next whole frame's value, or ``NEED_DATA``.

        Raises:
            FrameTooLarge: the next length prefix exceeds the limit (body unread).
            BadFrame: the next body is not one strict msgpack value.
            Once either is raised, every later call raises it again.
        """
        if self._broken is not None:
            raise self._broken
        buf, pos = self._buf, self._pos
        if len(buf) - pos < _PREFIX:
            return NEED_DATA
        size = int.from_bytes(buf[pos : pos + _PREFIX], "big")
        if size > self._limits.max_frame:
            self._broken = FrameTooLarge(
                f"frame of {size} bytes exceeds the limit of {self._limits.max_frame}",
                detail={"limit": self._limits.max_frame, "size": size},
            )
            raise self._broken
        end = pos + _PREFIX + size
        if len(buf) < end:
            return NEED_DATA
        self._pos = end
        self.last_size = end - pos  # what the object cost on the wire (the channel's bound)
        try:
            if size < _VIEW_FROM:
                return decode_body(buf[pos + _PREFIX : end], self._limits)
            # A large body (a chunk of content) is decoded in place: a slice would copy
            # it once more. The views are released before the buffer is resized.
            with memoryview(buf) as whole, whole[pos + _PREFIX : end] as body:
                return decode_body(body, self._limits)
        except BadFrame as exc:
            self._broken = exc
            raise
