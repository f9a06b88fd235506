"""Large frames (a chunk of streamed content) through codec, TLS stream and channel.

The bulk paths (issue 10, bench/stream.py) copy less: ``encode_frame`` packs into a
per-thread packer's buffer and copies the body once; ``FrameDecoder`` decodes a large
body from a view of its buffer; ``TlsStream`` encrypts a large send a slice at a time.
Each must give the same bytes as before, leave nothing behind after a failure, and
never let another frame in between two slices of one.
"""

from __future__ import annotations

import random
import threading
import tracemalloc

import msgpack
import pytest
import trio
import trio.testing
from channel_helpers import REAL_WAIT, running_server
from pki import Market
from test_tls_stream import DEADLINE, assert_same, loopback, receive_exactly

from semper.transport import (
    BadFrame,
    ChannelConfig,
    CodecLimits,
    FrameDecoder,
    RemoteError,
    ServiceRegistry,
    encode_frame,
)
from semper.transport._codec import NEED_DATA
from semper.transport._tls_stream import SEND_SLICE

MIB = 1 << 20
BIG = CodecLimits(max_frame=4 * MIB, max_str=4 * MIB, max_bin=4 * MIB)


def chunk_answer(size: int, seed: int = 1) -> dict[str, object]:
    data = random.Random(seed).randbytes(size)
    return {"type": "res", "id": 7, "body": {"index": 3, "data": data,
                                             "proof": [bytes([i]) * 32 for i in range(5)]}}


def reference_frame(obj: object) -> bytes:
    body = msgpack.packb(obj, use_bin_type=True)
    return len(body).to_bytes(4, "big") + body


# -- codec ---------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 200, 70_000, MIB])
def test_encode_frame_gives_the_same_bytes_at_every_size(size: int) -> None:
    answer = chunk_answer(size)
    assert encode_frame(answer, BIG) == reference_frame(answer)


def _peak_over(fn: object) -> int:
    """Bytes allocated at the peak of ``fn()`` beyond what it returns and what was
    held before (Python's allocators, traced)."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        before, _ = tracemalloc.get_traced_memory()
        result = fn()  # type: ignore[operator]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    del result  # counted in the peak: the one copy allowed
    return peak - before


def test_encoding_a_chunk_copies_it_once() -> None:
    """A 1 MiB chunk's answer was packed into bytes and then copied again behind its
    length prefix: two fresh megabytes per frame. Now the frame is the one copy."""
    answer = chunk_answer(MIB)
    encode_frame(answer, BIG)  # the packer's buffer grows once
    assert _peak_over(lambda: encode_frame(answer, BIG)) < MIB * 1.25


def test_decoding_a_chunk_copies_it_once() -> None:
    """The same kind on the way in: the body was sliced out of the buffer (a copy)
    before msgpack copied the data out of it. Now only the decoded bytes are new."""
    frame = encode_frame(chunk_answer(MIB), BIG)
    decoder = FrameDecoder(BIG)
    decoder.feed(frame)
    assert _peak_over(decoder.next_object) < MIB * 1.25


def test_a_failed_encode_leaves_nothing_in_the_packer() -> None:
    """The per-thread packer is reset after a refusal half way through a value (a
    float after a megabyte) and after a frame over the limit: the next frame is
    exactly its own bytes."""
    answer = chunk_answer(MIB)
    with pytest.raises(ValueError, match="cannot encode"):
        encode_frame({"data": answer["body"]["data"], "x": 1.5}, BIG)  # type: ignore[index]
    with pytest.raises(ValueError, match="exceeds the limit"):
        encode_frame(answer, CodecLimits(max_frame=MIB, max_str=2 * MIB, max_bin=2 * MIB))
    small = {"type": "req", "id": 1, "service": "s", "op": "o", "body": b"x"}
    assert encode_frame(small) == reference_frame(small)


def test_threads_encode_their_own_frames() -> None:
    """One packer per thread: frames encoded at once in threads are each whole."""
    answers = [chunk_answer(256 * 1024 + n, seed=n) for n in range(4)]
    results: dict[int, list[bytes]] = {}

    def work(n: int) -> None:
        results[n] = [encode_frame(answers[n], BIG) for _ in range(20)]

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for n, frames in results.items():
        assert set(frames) == {reference_frame(answers[n])}


def test_a_large_frame_decodes_from_pieces_and_the_buffer_moves_on() -> None:
    """A 1 MiB body fed in 64 KiB pieces decodes; what follows it in the same feed
    decodes too (the view on the buffer is gone before it is cut)."""
    answer, small = chunk_answer(MIB), {"type": "bye", "reason": "done"}
    wire = encode_frame(answer, BIG) + encode_frame(small)
    decoder = FrameDecoder(BIG)
    got = []
    for start in range(0, len(wire), 1 << 16):
        decoder.feed(wire[start:start + (1 << 16)])
        while (obj := decoder.next_object()) is not NEED_DATA:
            got.append(obj)
    assert got == [answer, small]
    decoder.feed(encode_frame(small))  # the buffer is resizable again
    assert decoder.next_object() == small
    assert decoder.buffered == 0


def test_a_bad_large_body_breaks_the_decoder_and_frees_its_buffer() -> None:
    body = b"\xc1" * (128 * 1024)  # 0xc1 is never valid msgpack
    decoder = FrameDecoder(BIG)
    decoder.feed(len(body).to_bytes(4, "big") + body)
    with pytest.raises(BadFrame):
        decoder.next_object()
    decoder.feed(b"more")  # no BufferError: the failed decode left no view behind
    with pytest.raises(BadFrame):
        decoder.next_object()


# -- TLS stream: sends in slices -------------------------------------------------------


async def test_nothing_slips_between_the_slices_of_one_send_all(market: Market) -> None:
    """send_all of 3 MiB to a peer that does not read stops between two slices; a
    send_nowait then refuses (else its frame would land inside ours), and the peer
    reads ours whole, then what came after."""
    data = random.Random(2).randbytes(3 * MIB + 5)
    async with loopback(market) as lb:
        lb.shrink_buffers()
        ours = lb.ours
        with trio.fail_after(DEADLINE):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(ours.send_all, data)
                await trio.testing.wait_all_tasks_blocked()  # stuck on flow control
                assert not ours.send_nowait(b"between slices")
                got = await receive_exactly(lb.peer, len(data))
            assert_same(got, data)
            await ours.send_all(b"after")
            assert await receive_exactly(lb.peer, 5) == b"after"


async def test_two_large_send_alls_at_once_arrive_one_after_the_other(
        market: Market) -> None:
    """Slices of two concurrent send_alls never interleave: the second waits for the
    first's last slice (a small one too)."""
    first, second = (random.Random(n).randbytes(MIB + n) for n in (5, 6))
    async with loopback(market) as lb:
        lb.shrink_buffers()
        ours = lb.ours
        with trio.fail_after(DEADLINE):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(ours.send_all, first)
                await trio.testing.wait_all_tasks_blocked()  # the first is mid-slices
                nursery.start_soon(ours.send_all, second)
                nursery.start_soon(ours.send_all, b"third")
                await trio.testing.wait_all_tasks_blocked()
                got = await receive_exactly(lb.peer, len(first) + len(second) + 5)
        assert bytes(got[:len(first)]) == first
        assert bytes(got[len(first):]) in (second + b"third", b"third" + second)


async def test_send_nowait_of_a_large_frame_queues_its_rest_in_order(market: Market) -> None:
    data = random.Random(3).randbytes(2 * MIB + 11)
    assert len(data) > SEND_SLICE * 8
    async with loopback(market) as lb:
        lb.shrink_buffers()
        ours = lb.ours
        assert ours.send_nowait(data)
        assert ours.needs_flush  # the socket took part; the rest waits, encrypted
        with trio.fail_after(DEADLINE):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(ours.flush)
                got = await receive_exactly(lb.peer, len(data))
        assert_same(got, data)


# -- channel: a chunk-sized answer -------------------------------------------------------


async def test_a_chunk_larger_than_the_default_frame_needs_the_readers_limit(
        market: Market) -> None:
    """A 1 MiB chunk's answer is more than the default 1 MiB frame: the requester
    (the buyer) announces a larger max_frame on its own channel and gets it; with
    the default it is refused with protocol.answer_too_large and the channel stays."""
    data = random.Random(4).randbytes(MIB)
    registry = ServiceRegistry()
    registry.add_service("delivery")

    async def chunk(_ctx: object, body: object) -> object:
        return {"index": 0, "data": data, "proof": [b"\x01" * 32] * 5}

    registry.add_op("delivery", "chunk", chunk)
    with trio.fail_after(REAL_WAIT):
        async with running_server(market, registry) as server:
            async with server.connect(ChannelConfig(max_frame=MIB + 65536)) as channel:
                for _ in range(3):
                    answer = await channel.request("delivery", "chunk", {})
                    assert answer["data"] == data
            async with server.connect() as channel:
                with pytest.raises(RemoteError) as refused:
                    await channel.request("delivery", "chunk", {})
                assert refused.value.code == "protocol.answer_too_large"
                assert not channel.closed
