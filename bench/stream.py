"""Streamed delivery benchmark: chunks with proofs and purse ticks against plain TLS, in one run.

A market in a temporary folder (``init_market``: a bank, the seller, a buyer); the
seller's catalogue gets ``bench-stream``: course-004's generated content (~32 MiB,
``--bytes``) cut at ``--chunk-size`` (default ``services.delivery.DEFAULT_CHUNK_SIZE``),
EUR 0.01 a chunk. The bank and the seller run as agent processes (``semper agent
run``); this process is the buyer. Both transfers move the same file from the
seller's disk to a file here, over loopback TLS 1.3 with the market's agent
certificates, mutually authenticated:

* baseline - plain ``trio.SSLStream`` from a helper process holding the seller's
  certificate: it reads the file in 1 MiB pieces and ``send_all``s each; we write
  whatever ``receive_some`` returns. Timed from the TCP connect to the file closed.
* stream - the real thing: ``Shopper.buy(seller, "bench-stream", "purse", key)`` (a
  new key a round): order, a PayWord chain reserved at the bank, the seller's ticket,
  then the delivery channel. Timed: ``StreamClient._stream``, from its connect to
  ``delivery.close`` - every chunk paid (the purse records the payword spent), its
  tick checked and committed by the seller, the chunk and its proof verified, written
  and counted. Not timed: the purchase before it and the whole-file SHA-256 check and
  fsync after it (``buy_seconds`` has the whole purchase).

Rounds alternate the two and keep each one's best (``--rounds``), so drift and noise
on a shared machine hit both alike. CPU per MB is each process's CPU time over the
best round (the seller's from /proc/<pid>/task/*/schedstat, ns; ours with every
thread). The bank's books are checked at the end.

    python bench/stream.py [--json] [--bytes N] [--chunk-size B] [--rounds R]

``--json`` prints one object: ``stream_ratio`` (stream MB/s / baseline MB/s),
``ticks_per_s`` (chunks, each one payword, per second), ``mb_per_s``,
``baseline_mb_per_s``, ``chunk_size``, ``chunks``, ``bytes``, ``cpu_ms_per_mb``
(``{"seller", "buyer"}``; ``baseline_cpu_ms_per_mb`` the same for the baseline),
``buy_seconds`` and ``load`` (the 1-minute load average at the end).

Measured (the 2-core machine shared with other sessions, load 1.6-2.2, best of 10):
with the one-chunk credit window (protocol.md 13.3: two chunk requests in flight,
the next chunk's transfer overlapping this one's verify, write and commit, the
seller's tick commit overlapping the previous chunk's send) ``stream_ratio`` 0.68-0.74
at the default 1 MiB chunks (164-257 MB/s, 160-250 ticks/s; CPU ms per MB seller
2.1-2.3, buyer 3.2-3.4 against 1.8-2.0 and 2.4-2.5), 0.34-0.38 at 256 KiB (310-490
ticks/s) and 0.21 at course-004's 128 KiB; one chunk in flight gave 0.51, 0.28 and
0.19. Short of 0.8: the buyer's CPU (the chunk's SHA-256, 0.7 ms per MiB, and the
per-chunk work) and the fsync'd commit each side per chunk, which the window (one
chunk each way) lets overlap only one chunk deep. Later (stop 16) the per-chunk
records commit without their own fsync (every 16th fsync'd): quiet, load ~1, best of
6, ``stream_ratio`` 0.64-0.92, median ~0.72, buyer 3.1-3.3 ms per MB against 2.5-2.7:
its chunk SHA-256 is the limit; a dedicated hashing thread measured worse (0.67).

``--prototype`` runs instead the delivery protocol's prototype, in a process of our
own serving both (random content): one chunk in flight, a payword hash per chunk,
proof and file write; what decides the ratio, measured: ``--sweep`` (64 KiB to 1 MiB
chunks), ``--matrix`` (commits of the ticks in series or overlapped with the chunk,
the seller reading ahead, the buyer writing behind), ``--tick``, ``--buyer-tick``,
``--prefetch``, ``--write-behind``.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Any

import tomli_w
import trio

from semper.agents import Agent, AgentConfig
from semper.agents.components import _bank, _ledger
from semper.agents.components._delivery_buyer import StreamClient
from semper.agents.components._purchase import Shopper
from semper.agents.operator._market import COURSE_LENGTH, course_content, init_market
from semper.agents.runtime._identity import Credentials, peer_verifier
from semper.agents.runtime._storage import Database
from semper.services.certificates import Level
from semper.services.delivery import DEFAULT_CHUNK_SIZE
from semper.services.merkle import MerkleTree, leaf_hash, verify_inclusion
from semper.transport import (
    ChannelConfig,
    RemoteError,
    ServiceRegistry,
    TlsContexts,
    make_hello,
    open_channel,
    serve,
)

HERE = Path(__file__).resolve()
SELLER, BUYER = "seller", "buyer-1"
MIB = 1 << 20
SWEEP = (64 << 10, 128 << 10, 256 << 10, 512 << 10, 1 << 20)
#: what a chunk's answer adds to the chunk: envelope, index, proof (20 hashes at most)
FRAME_OVERHEAD = 4096


# -- the market and its credentials ------------------------------------------------------


def make_market(folder: Path) -> Path:
    market = folder / "market"
    init_market(market, agents=[("bank", "bank", Level.VERIFIED_IDENTITY),
                                (SELLER, "seller", Level.VERIFIED_CONTACT),
                                (BUYER, "buyer", Level.VERIFIED_CONTACT)])
    return market


class Credentialed:
    """One agent's TLS contexts and peer verifier, from its folder in the market."""

    def __init__(self, market: Path, agent_id: str) -> None:
        config = AgentConfig.load(market / agent_id / "agent.toml")
        credentials = Credentials.load(cert=config.cert, key=config.key, root=config.ca_root,
                                       crl=config.crl)
        self.id, self.role = agent_id, config.role
        self.tls = TlsContexts(credentials.tls_config())
        self.verify_peer = peer_verifier(credentials.root, lambda: credentials.crl)


def make_content(path: Path, size: int) -> None:
    with path.open("wb") as f:
        for _ in range(0, size, MIB):
            f.write(os.urandom(MIB))
        f.truncate(size)


def leaf_hashes(path: Path, chunk_size: int) -> list[bytes]:
    hashes = []
    with path.open("rb") as f:
        while data := f.read(chunk_size):
            hashes.append(leaf_hash(data))
    return hashes


def _thread_cpu_ns(pid: int) -> int:
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            pass  # a thread that just ended
    return total


class Ticks:
    """A seller's durable record of the highest payword, as a component would keep it:
    one fsync'd SQLite commit (WAL, synchronous=FULL) per tick, in a worker thread."""

    def __init__(self, path: Path) -> None:
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("CREATE TABLE IF NOT EXISTS tick (chain BLOB PRIMARY KEY, "
                         "k INTEGER NOT NULL, payword BLOB NOT NULL)")

    def _commit(self, chain: bytes, k: int, payword: bytes) -> None:
        self._db.execute("INSERT OR REPLACE INTO tick VALUES (?, ?, ?)", (chain, k, payword))

    async def commit(self, chain: bytes, k: int, payword: bytes) -> None:
        await trio.to_thread.run_sync(self._commit, chain, k, payword)


# -- the seller (a process of its own) ---------------------------------------------------


def seller_main(market: Path, content: Path) -> None:
    """Serve both transfers until stdin closes: the baseline on one port, the delivery
    prototype on another. Prints ``ready <baseline port> <stream port>``."""
    seller = Credentialed(market, SELLER)
    ticks = Ticks(market / SELLER / "data" / "bench-ticks.sqlite")
    fd = os.open(content, os.O_RDONLY)
    length = os.fstat(fd).st_size
    trees: dict[int, MerkleTree] = {}
    streams: dict[int, dict[str, Any]] = {}

    async def baseline(tcp: trio.SocketStream) -> None:
        stream = trio.SSLStream(tcp, seller.tls.server, server_side=True)
        try:
            await stream.do_handshake()
            der = stream.getpeercert(binary_form=True)
            seller.verify_peer(der, None)
            with content.open("rb") as f:
                while data := f.read(MIB):
                    await stream.send_all(data)
            await stream.aclose()
        except trio.BrokenResourceError:
            pass

    async def open_(context: Any, body: Any) -> Any:
        chunk_size = body["chunk_size"]
        if chunk_size not in trees:
            trees[chunk_size] = MerkleTree.from_leaf_hashes(leaf_hashes(content, chunk_size))
        tree = trees[chunk_size]
        number = len(streams) + 1
        streams[number] = {"tree": tree, "chunk_size": chunk_size, "next": body["from"],
                           "last": body["payword_root"], "plan": body["plan"],
                           "pending": None, "chain": os.urandom(32), "ahead": None}
        return {"stream": number, "from": body["from"], "chunks": tree.size,
                "chunk_size": chunk_size, "length": length, "root": tree.root}

    async def chunk(context: Any, body: Any) -> Any:
        state = streams[body["stream"]]
        plan, index, payword = state["plan"], body["index"], body["payword"]
        if index != state["next"]:
            raise RemoteError("delivery.out_of_order", f"expected chunk {state['next']}")
        if hashlib.sha256(payword).digest() != state["last"]:
            raise RemoteError("purse.bad_payword", "the payword does not hash to the last")
        pending = state["pending"]
        if pending is not None:  # the previous tick's commit, overlapped with its chunk
            await pending.wait()
            state["pending"] = None
        if plan["tick"] == "serial":
            await ticks.commit(state["chain"], index + 1, payword)
        elif plan["tick"] == "overlap":
            done = state["pending"] = trio.Event()

            async def commit() -> None:
                await ticks.commit(state["chain"], index + 1, payword)
                done.set()

            context.channel._nursery.start_soon(commit)
        state["last"], state["next"] = payword, index + 1
        size, tree = state["chunk_size"], state["tree"]
        ahead = state["ahead"]
        if ahead is not None and ahead[0] == index:
            data = ahead[1]
        else:
            data = os.pread(fd, size, index * size)
        if plan["prefetch"] and index + 1 < tree.size:
            async def prefetch() -> None:
                await trio.lowlevel.checkpoint()  # after this answer is on its way
                state["ahead"] = (index + 1, os.pread(fd, size, (index + 1) * size))

            context.channel._nursery.start_soon(prefetch)
        return {"index": index, "data": data, "proof": tree.inclusion_proof(index)}

    async def close(context: Any, body: Any) -> Any:
        streams.pop(body["stream"], None)
        return {}

    async def cpu(context: Any, body: Any) -> Any:
        return time.process_time_ns()

    registry = ServiceRegistry()
    registry.add_service("delivery", version=1)
    registry.add_op("delivery", "open", open_)
    registry.add_op("delivery", "chunk", chunk)
    registry.add_op("delivery", "close", close)

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(functools.partial(
                trio.serve_tcp, baseline, 0, host="127.0.0.1"))
            base_port = listeners[0].socket.getsockname()[1]
            config = ChannelConfig()
            _, port = await nursery.start(lambda task_status: serve(
                "127.0.0.1", 0, tls=seller.tls, verify_peer=seller.verify_peer,
                hello=make_hello(SELLER, seller.role, registry, config), registry=registry,
                config=config, task_status=task_status))
            print(f"ready {base_port} {port}", flush=True)
            await trio.to_thread.run_sync(sys.stdin.read, abandon_on_cancel=True)
            nursery.cancel_scope.cancel()

    trio.run(run)


# -- the buyer (this process) ------------------------------------------------------------


async def fetch_baseline(buyer: Credentialed, port: int, output: Path, length: int) -> None:
    tcp = await trio.open_tcp_stream("127.0.0.1", port)
    stream = trio.SSLStream(tcp, buyer.tls.client, server_side=False)
    await stream.do_handshake()
    buyer.verify_peer(stream.getpeercert(binary_form=True), SELLER)
    received = 0
    with output.open("wb") as f:
        while data := await stream.receive_some(1 << 18):
            f.write(data)
            received += len(data)
    await trio.aclose_forcefully(stream)
    assert received == length, (received, length)


def payword_chain(length: int) -> list[bytes]:
    """``words[0]`` is the root, ``words[k]`` pays chunk k-1 (PayWord, api.md)."""
    words = [os.urandom(32)]
    for _ in range(length):
        words.append(hashlib.sha256(words[-1]).digest())
    words.reverse()
    return words


async def fetch_stream(buyer: Credentialed, port: int, output: Path, chunk_size: int,
                       plan: dict[str, Any], words: list[bytes], ticks: Ticks) -> int:
    """The buyer's loop: pay chunk i, verify it, write it, pay the next. Returns the
    number of chunks."""
    config = ChannelConfig(max_frame=max(1 << 20, chunk_size + FRAME_OVERHEAD))
    chain = os.urandom(32)
    to_write, written = trio.open_memory_channel[bytes](1)
    with output.open("wb") as f:

        async def writer() -> None:
            async for data in written:
                f.write(data)

        async with open_channel(
            "127.0.0.1", port, tls=buyer.tls, verify_peer=buyer.verify_peer,
            expected_id=SELLER, hello=make_hello(buyer.id, buyer.role, ServiceRegistry(), config),
            config=config,
        ) as channel:
            opened = await channel.request("delivery", "open", {
                "chunk_size": chunk_size, "from": 0, "payword_root": words[0], "plan": plan})
            stream, chunks, root = opened["stream"], opened["chunks"], opened["root"]
            assert chunks < len(words)
            async with trio.open_nursery() as nursery:
                if plan["write_behind"]:
                    nursery.start_soon(writer)
                spent: Any = None
                for index in range(chunks):
                    if plan["buyer_tick"] == "serial":
                        await ticks.commit(chain, index + 1, words[index + 1])
                    elif plan["buyer_tick"] == "overlap" and spent is not None:
                        await spent.wait()
                    answer_of = channel.request("delivery", "chunk", {
                        "stream": stream, "index": index, "payword": words[index + 1]})
                    if plan["buyer_tick"] == "overlap" and index + 1 < chunks:
                        # the next payword's record (an upper bound) while this chunk comes
                        spent = trio.Event()

                        async def commit(k: int, done: trio.Event) -> None:
                            await ticks.commit(chain, k, words[k])
                            done.set()

                        nursery.start_soon(commit, index + 2, spent)
                    answer = await answer_of
                    data = answer["data"]
                    verify_inclusion(leaf_hash(data), index, chunks, answer["proof"], root)
                    if plan["write_behind"]:
                        await to_write.send(data)  # written while the next chunk comes
                    else:
                        f.write(data)
                to_write.close()
            await channel.request("delivery", "close", {"stream": stream})
    return chunks


# -- the run ---------------------------------------------------------------------------


class Seller:
    def __init__(self, market: Path, content: Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(HERE), "--seller", str(market), str(content)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        line = self.process.stdout.readline().split()  # type: ignore[union-attr]
        if not line or line[0] != b"ready":
            self.process.kill()
            raise SystemExit("the seller did not start:\n"
                             + self.process.stderr.read().decode(errors="replace"))  # type: ignore[union-attr]
        self.baseline_port, self.stream_port = int(line[1]), int(line[2])

    def cpu_ns(self) -> int:
        return _thread_cpu_ns(self.process.pid)

    def stop(self) -> None:
        self.process.stdin.close()  # type: ignore[union-attr]
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def timed(seller: Seller, output: Path, fn: Any, *args: Any) -> dict[str, Any]:
    output.unlink(missing_ok=True)  # truncating 32 MiB of page cache is not the transfer
    seller_cpu, buyer_cpu = seller.cpu_ns(), time.process_time_ns()
    start = time.perf_counter()
    extra = trio.run(fn, *args)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "seller_cpu_ns": seller.cpu_ns() - seller_cpu,
            "buyer_cpu_ns": time.process_time_ns() - buyer_cpu, "extra": extra}


#: The plan the agents follow (api.md Notes): ticks committed while the chunk goes out.
PLAN = {"tick": "overlap", "buyer_tick": "overlap", "prefetch": False, "write_behind": True}
#: --matrix: each change on its own, at one chunk size
MATRIX = {
    "bare": {"tick": "none", "buyer_tick": "none", "prefetch": False, "write_behind": False},
    "write_behind": {"tick": "none", "buyer_tick": "none", "prefetch": False,
                     "write_behind": True},
    "prefetch": {"tick": "none", "buyer_tick": "none", "prefetch": True, "write_behind": True},
    "ticks_serial": {"tick": "serial", "buyer_tick": "serial", "prefetch": False,
                     "write_behind": True},
    "ticks_overlap": PLAN,
}


def measure(variants: dict[str, tuple[int, dict[str, Any]]], length: int,
            rounds: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        market = make_market(root)
        content, output = root / "content.bin", root / "output.bin"
        make_content(content, length)
        digest = hashlib.sha256(content.read_bytes()).digest()
        buyer = Credentialed(market, BUYER)
        ticks = Ticks(market / BUYER / "data" / "bench-ticks.sqlite")
        seller = Seller(market, content)
        best: dict[str, dict[str, Any]] = {}
        try:
            for _ in range(rounds):
                runs: list[tuple[str, Any, tuple[Any, ...]]] = [
                    ("baseline", fetch_baseline, (buyer, seller.baseline_port, output, length))]
                for key, (size, plan) in variants.items():
                    words = payword_chain(-(-length // size))  # the purse's, drawn before
                    runs.append((key, fetch_stream, (buyer, seller.stream_port, output, size,
                                                     plan, words, ticks)))
                for key, fn, fn_args in runs:
                    result = timed(seller, output, fn, *fn_args)
                    assert hashlib.sha256(output.read_bytes()).digest() == digest
                    if key not in best or result["seconds"] < best[key]["seconds"]:
                        best[key] = result
        finally:
            seller.stop()
    return {"length": length, "best": best}


def _cpu(result: dict[str, Any], length: int) -> dict[str, float]:
    mb = length / 1e6
    return {"seller": round(result["seller_cpu_ns"] / 1e6 / mb, 3),
            "buyer": round(result["buyer_cpu_ns"] / 1e6 / mb, 3)}


def report(measured: dict[str, Any], key: str, chunk_size: int) -> dict[str, Any]:
    length, best = measured["length"], measured["best"]
    base = best["baseline"]
    base_mb_s = length / base["seconds"] / 1e6
    ours = best[key]
    mb_s = length / ours["seconds"] / 1e6
    return {
        "stream_ratio": round(mb_s / base_mb_s, 3),
        "ticks_per_s": round(ours["extra"] / ours["seconds"], 1),
        "mb_per_s": round(mb_s, 1),
        "baseline_mb_per_s": round(base_mb_s, 1),
        "chunk_size": chunk_size,
        "chunks": ours["extra"],
        "cpu_ms_per_mb": _cpu(ours, length),
        "baseline_cpu_ms_per_mb": _cpu(base, length),
    }


# -- the real thing: agents, a purse, semper buy's Shopper ---------------------------------

BENCH_SKU = "bench-stream"


def stock(market: Path, length: int, chunk_size: int) -> Path:
    """The seller's catalogue gets ``bench-stream``: ``length`` bytes of course-004's
    content (all of it by default), cut at ``chunk_size``, EUR 0.01 a chunk."""
    seller = market / SELLER
    path = seller / "catalogue.toml"
    catalogue = tomllib.loads(path.read_text(encoding="utf-8"))
    goods = seller / "goods" / f"{BENCH_SKU}.bin"
    goods.write_bytes((seller / "goods" / "course-004.bin").read_bytes()[:length]
                      if length <= COURSE_LENGTH else course_content(length))
    catalogue["offer"].append({
        "sku": BENCH_SKU, "title": "bench/stream.py", "terms": "streamed", "valid_days": 30,
        "refund_days": 0, "goods": f"goods/{BENCH_SKU}.bin",
        "stream": {"chunk_size": chunk_size, "price_per_chunk": "EUR:1"}})
    path.write_text(tomli_w.dumps(catalogue), encoding="utf-8")
    return goods


def _agent_process(market: Path, agent_id: str) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [sys.executable, "-m", "semper.agents.cli", "agent", "run",
         str(market / agent_id / "agent.toml")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    line = process.stdout.readline()  # type: ignore[union-attr]
    if not line.startswith(b"ready "):
        process.kill()
        raise SystemExit(f"{agent_id} did not start: {line!r}\n"
                         + process.stderr.read().decode(errors="replace"))  # type: ignore[union-attr]
    return process


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class _Windows:
    """Times ``StreamClient._stream`` (the delivery channel's connect, open, every
    chunk paid, verified and written, close) in this process, with both sides' CPU."""

    def __init__(self, seller_pid: int) -> None:
        self.seller_pid = seller_pid
        self.last: dict[str, Any] = {}

    def install(self) -> None:
        original = StreamClient._stream
        windows = self

        async def timed_stream(client: StreamClient, *args: Any, **kwargs: Any) -> None:
            seller_cpu, buyer_cpu = _thread_cpu_ns(windows.seller_pid), time.process_time_ns()
            start = time.perf_counter()
            await original(client, *args, **kwargs)
            windows.last = {"seconds": time.perf_counter() - start,
                            "seller_cpu_ns": _thread_cpu_ns(windows.seller_pid) - seller_cpu,
                            "buyer_cpu_ns": time.process_time_ns() - buyer_cpu}

        StreamClient._stream = timed_stream  # type: ignore[method-assign]


def measure_real(args: argparse.Namespace) -> dict[str, Any]:
    """Alternating rounds: the baseline, then one purchase of ``bench-stream`` paid by
    purse (a new idempotency key each round); the best of each kept."""
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        market = make_market(root)
        content = stock(market, args.bytes, args.chunk_size)
        output = root / "output.bin"
        length = content.stat().st_size
        digest = hashlib.sha256(content.read_bytes()).digest()
        bank, seller_process = _agent_process(market, "bank"), _agent_process(market, SELLER)
        helper = Seller(market, content)  # the baseline's server: plain trio TLS
        buyer_tls = Credentialed(market, BUYER)
        windows = _Windows(seller_process.pid)
        windows.install()
        best: dict[str, dict[str, Any]] = {}
        chunks = -(-length // args.chunk_size)

        def keep(key: str, result: dict[str, Any]) -> None:
            if key not in best or result["seconds"] < best[key]["seconds"]:
                best[key] = result

        async def rounds() -> None:
            agent = Agent(AgentConfig.load(market / BUYER / "agent.toml"))
            async with agent.session():
                for n in range(args.rounds):
                    output.unlink(missing_ok=True)
                    seller_cpu, buyer_cpu = helper.cpu_ns(), time.process_time_ns()
                    start = time.perf_counter()
                    await fetch_baseline(buyer_tls, helper.baseline_port, output, length)
                    keep("baseline", {"seconds": time.perf_counter() - start,
                                      "seller_cpu_ns": helper.cpu_ns() - seller_cpu,
                                      "buyer_cpu_ns": time.process_time_ns() - buyer_cpu})
                    assert hashlib.sha256(output.read_bytes()).digest() == digest
                    output.unlink()
                    shopper = Shopper(agent, output=output)
                    start = time.perf_counter()
                    await shopper.buy(SELLER, BENCH_SKU, "purse", f"bench-stream-{n}")
                    buy_seconds = time.perf_counter() - start
                    outcome = shopper.streamed[f"bench-stream-{n}"]
                    assert outcome.chunks == chunks and outcome.resumed_from == 0
                    assert hashlib.sha256(output.read_bytes()).digest() == digest
                    keep("stream", {**windows.last, "buy_seconds": buy_seconds})

        try:
            trio.run(rounds)
        finally:
            helper.stop()
            _stop(seller_process)
            _stop(bank)
        database = Database.open_sync(market / "bank" / "data" / "agent.sqlite",
                                      _bank.MIGRATIONS)
        try:
            database.read_sync(_ledger.check_books)  # raises if they do not balance
        finally:
            database.close()
    return {"length": length, "chunks": chunks, "best": best}


def report_real(measured: dict[str, Any], chunk_size: int) -> dict[str, Any]:
    length, best = measured["length"], measured["best"]
    base, ours = best["baseline"], best["stream"]
    base_mb_s = length / base["seconds"] / 1e6
    mb_s = length / ours["seconds"] / 1e6
    return {
        "stream_ratio": round(mb_s / base_mb_s, 3),
        "ticks_per_s": round(measured["chunks"] / ours["seconds"], 1),
        "mb_per_s": round(mb_s, 1),
        "baseline_mb_per_s": round(base_mb_s, 1),
        "chunk_size": chunk_size,
        "chunks": measured["chunks"],
        "bytes": length,
        "cpu_ms_per_mb": _cpu(ours, length),
        "baseline_cpu_ms_per_mb": _cpu(base, length),
        "buy_seconds": round(ours["buy_seconds"], 3),
        "load": round(os.getloadavg()[0], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--bytes", type=int, default=COURSE_LENGTH,
                        help="content size (default: course-004's, ~32 MiB)")
    parser.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK_SIZE)
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds; best kept")
    parser.add_argument("--prototype", action="store_true",
                        help="the delivery protocol's prototype in a process of our own, "
                             "not the agents (what decides the ratio: --sweep, --matrix)")
    parser.add_argument("--tick", choices=("none", "serial", "overlap"), default=PLAN["tick"],
                        help="prototype: the seller's commit of each tick: none, before the "
                             "chunk, or while the chunk is sent (awaited before the next)")
    parser.add_argument("--buyer-tick", choices=("none", "serial", "overlap"),
                        default=PLAN["buyer_tick"],
                        help="prototype: the buyer's durable record of each payword spent: "
                             "none, before the request, or while the previous chunk comes")
    parser.add_argument("--prefetch", action=argparse.BooleanOptionalAction,
                        default=PLAN["prefetch"],
                        help="prototype: the seller reads the next chunk ahead")
    parser.add_argument("--write-behind", action=argparse.BooleanOptionalAction,
                        default=PLAN["write_behind"],
                        help="prototype: the buyer writes chunk i while chunk i+1 comes")
    parser.add_argument("--sweep", action="store_true",
                        help="prototype at every chunk size, 64 KiB-1 MiB")
    parser.add_argument("--matrix", action="store_true",
                        help="prototype: each change on its own")
    parser.add_argument("--seller", nargs=2, metavar=("MARKET", "CONTENT"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.seller:
        seller_main(Path(args.seller[0]), Path(args.seller[1]))
        return
    if not (args.prototype or args.sweep or args.matrix):
        result = report_real(measure_real(args), args.chunk_size)
        if args.json:
            print(json.dumps(result))
        else:
            for key, value in result.items():
                print(f"{key:24s} {value}")
        return
    plan = {"tick": args.tick, "buyer_tick": args.buyer_tick, "prefetch": args.prefetch,
            "write_behind": args.write_behind}
    if args.sweep:
        variants = {f"{size >> 10} KiB": (size, plan) for size in SWEEP}
    elif args.matrix:
        variants = {name: (args.chunk_size, p) for name, p in MATRIX.items()}
    else:
        variants = {"stream": (args.chunk_size, plan)}
    measured = measure(variants, args.bytes, args.rounds)
    reports = {key: report(measured, key, size) for key, (size, _) in variants.items()}
    if args.json:
        print(json.dumps(reports["stream"] if "stream" in reports else reports))
        return
    first = next(iter(reports.values()))
    print(f"baseline (trio TLS): {first['baseline_mb_per_s']:8.1f} MB/s  cpu ms/MB "
          f"{first['baseline_cpu_ms_per_mb']}")
    for key, r in reports.items():
        print(f"{key:14s} {r['chunk_size'] >> 10:5d} KiB: {r['mb_per_s']:7.1f} MB/s  ratio "
              f"{r['stream_ratio']:.3f}  ticks/s {r['ticks_per_s']:7.1f}  cpu ms/MB "
              f"{r['cpu_ms_per_mb']}")


if __name__ == "__main__":
    main()
