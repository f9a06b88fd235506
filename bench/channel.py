"""Channel benchmark: a semper channel against plain trio TLS 1.3, in one run.

Both sides of each connection run in this process over real loopback TCP, with the
same Ed25519 certificates and TLS 1.3 settings. Measured:

* rr1  - request/response round trips per second, one in flight, ~200-byte bodies;
* rr32 - the same with 32 tasks in flight on one connection;
* bulk - one-way throughput of 64 KiB frames (MB/s).

The baseline is "naive trio TLS": length-prefixed frames, one ``send_all`` per frame
(a lock serialises the 32 senders), a reader that parses every frame it received,
and an echo server that answers each frame with its own ``send_all``.

    python bench/channel.py [--json] [--seconds S]

Prints the ratios semper / baseline; ``--json`` prints one object with
``rr1_ratio``, ``rr32_ratio`` and ``bulk_ratio`` among the raw figures.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from pki import Market

from semper.transport import Channel, ServiceRegistry, open_channel, serve

BODY = b"x" * 200
BULK = b"b" * (64 * 1024)
IN_FLIGHT = 32


# -- semper --------------------------------------------------------------------------


async def _echo(ctx: Any, body: Any) -> Any:
    return body


async def semper_pair(market: Market, nursery: trio.Nursery) -> tuple[Any, Any]:
    server, client = market.agent("bench-server", "seller"), market.agent("bench-client")
    registry = ServiceRegistry()
    registry.add_service("bench")
    registry.add_op("bench", "echo", _echo)
    state = {"bytes": 0, "target": 0, "done": trio.Event()}

    async def sink(ctx: Any, body: Any) -> None:
        state["bytes"] += len(body)
        if state["bytes"] >= state["target"]:
            state["done"].set()

    async def wait_bulk(ctx: Any, body: Any) -> int:
        await state["done"].wait()
        return state["bytes"]

    registry.add_note("bench", "sink", sink)
    registry.add_op("bench", "wait", wait_bulk)
    host, port = await nursery.start(
        lambda task_status: serve(
            "127.0.0.1", 0, tls=market.tls(server), verify_peer=market.verifier(),
            hello=market.hello(server, registry), registry=registry, task_status=task_status,
        )
    )
    return (host, port, client), state


async def bench_semper(market: Market, seconds: float) -> dict[str, float]:
    async with trio.open_nursery() as nursery:
        (host, port, client), state = await semper_pair(market, nursery)
        async with open_channel(
            host, port, tls=market.tls(client), verify_peer=market.verifier(),
            expected_id="bench-server", hello=market.hello(client, ServiceRegistry()),
        ) as channel:
            result = {
                "rr1": await _rr(lambda: channel.request("bench", "echo", BODY), 1, seconds),
                "rr32": await _rr(lambda: channel.request("bench", "echo", BODY),
                                  IN_FLIGHT, seconds),
                "bulk": await _semper_bulk(channel, state, seconds),
            }
        nursery.cancel_scope.cancel()
    return result


async def _semper_bulk(channel: Channel, state: dict[str, Any], seconds: float) -> float:
    count = _bulk_count(seconds)
    state["bytes"], state["target"], state["done"] = 0, count * len(BULK), trio.Event()
    start = time.perf_counter()
    for _ in range(count):
        await channel.notify("bench", "sink", BULK)
    received = await channel.request("bench", "wait")
    assert received == count * len(BULK)
    return received / (time.perf_counter() - start) / 1e6


# -- naive trio TLS ------------------------------------------------------------------


def _frame(payload: bytes) -> bytes:
    return len(payload).to_bytes(4, "big") + payload


class _Frames:
    """Length-prefixed frames from a stream; parses every frame in each receive."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self.stream, self.buf = stream, bytearray()

    async def __aiter__(self):  # type: ignore[no-untyped-def]
        while True:
            while len(self.buf) >= 4:
                size = int.from_bytes(self.buf[:4], "big")
                if len(self.buf) < 4 + size:
                    break
                frame = bytes(self.buf[4 : 4 + size])
                del self.buf[: 4 + size]
                yield frame
            data = await self.stream.receive_some(1 << 18)
            if not data:
                return
            self.buf += data


async def bench_naive(market: Market, seconds: float) -> dict[str, float]:
    server, client = market.agent("naive-server", "seller"), market.agent("naive-client")
    server_ctx, client_ctx = market.tls(server).server, market.tls(client).client
    bulk_total = {"bytes": 0}

    async def handle(tcp: trio.SocketStream) -> None:
        stream = trio.SSLStream(tcp, server_ctx, server_side=True)
        async for frame in _Frames(stream):
            if frame[:1] == b"B":
                bulk_total["bytes"] += len(frame) - 1
            elif frame[:1] == b"W":
                await stream.send_all(_frame(frame[:9] + bulk_total["bytes"].to_bytes(8, "big")))
            else:
                await stream.send_all(_frame(frame))  # echo: one send_all per frame

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            functools.partial(trio.serve_tcp, handle, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        tcp = await trio.open_tcp_stream("127.0.0.1", port)
        stream = trio.SSLStream(tcp, client_ctx, server_side=False)
        await stream.do_handshake()
        lock = trio.Lock()
        waiters: dict[bytes, Any] = {}
        next_id = [0]

        async def call(payload: bytes, tag: bytes = b"R") -> bytes:
            next_id[0] += 1
            key = tag + next_id[0].to_bytes(8, "big")
            slot: list[Any] = [trio.Event(), None]
            waiters[key] = slot
            async with lock:
                await stream.send_all(_frame(key + payload))
            await slot[0].wait()
            return slot[1]

        async def reader_wake() -> None:
            async for frame in _Frames(stream):
                slot = waiters.pop(frame[:9])
                slot[1] = frame
                slot[0].set()

        nursery.start_soon(reader_wake)
        result = {
            "rr1": await _rr(lambda: call(BODY), 1, seconds),
            "rr32": await _rr(lambda: call(BODY), IN_FLIGHT, seconds),
        }
        count = _bulk_count(seconds)
        start = time.perf_counter()
        for _ in range(count):
            async with lock:
                await stream.send_all(_frame(b"B" + BULK))
        answer = await call(b"", tag=b"W")
        assert int.from_bytes(answer[-8:], "big") == count * len(BULK)
        result["bulk"] = count * len(BULK) / (time.perf_counter() - start) / 1e6
        nursery.cancel_scope.cancel()
    return result


# -- shared --------------------------------------------------------------------------


def _bulk_count(seconds: float) -> int:
    return max(64, int(seconds * 8000))  # ~0.5 GB/s at most, so about `seconds` long


async def _rr(call: Any, tasks: int, seconds: float) -> float:
    """Round trips per second with ``tasks`` callers, over about ``seconds``."""
    done = [0]
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        while time.perf_counter() < deadline:
            await call()
            done[0] += 1

    for _ in range(50):  # warm up
        await call()
    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(tasks):
            nursery.start_soon(worker)
    return done[0] / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--seconds", type=float, default=1.0, help="time per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; best kept")
    args = parser.parse_args()
    naive: dict[str, float] = {}
    semper: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as folder:
        market = Market(Path(folder))
        # Alternate the two and keep each one's best round, so drift and noise on a
        # shared machine hit both sides alike.
        for _ in range(args.rounds):
            for result, fn in ((naive, bench_naive), (semper, bench_semper)):
                for key, value in trio.run(fn, market, args.seconds).items():
                    result[key] = max(result.get(key, 0.0), value)
    report: dict[str, float] = {}
    for key in ("rr1", "rr32", "bulk"):
        report[f"semper_{key}"] = round(semper[key], 1)
        report[f"baseline_{key}"] = round(naive[key], 1)
        report[f"{key}_ratio"] = round(semper[key] / naive[key], 2)
    if args.json:
        print(json.dumps(report))
        return
    units = {"rr1": "round trips/s", "rr32": "round trips/s", "bulk": "MB/s"}
    print(f"{'':6} {'semper':>12} {'trio TLS':>12} {'ratio':>7}")
    for key in ("rr1", "rr32", "bulk"):
        print(f"{key:6} {semper[key]:12,.0f} {naive[key]:12,.0f} {report[key + '_ratio']:6.2f}x"
              f"   {units[key]}")


if __name__ == "__main__":
    main()
