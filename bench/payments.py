"""Payments benchmark: end-to-end paid purchases per second against their floor, in one run.

A market in a temporary folder: a bank, a seller and ``--buyers`` buyers, each one
process (``semper agent run`` for the bank and the seller, this script in ``--worker``
mode for each buyer), talking over real mutually authenticated TLS 1.3 channels on
loopback. Every buyer runs ``--concurrency`` purchases at once, each with its own
idempotency key, for ``--seconds``: ``Shopper.buy`` does the whole thing (the
seller's catalogue, a signed order, the payment through the bank, the goods and the
receipt). Counted: the purchases that completed within the window.

The floor is the same work done back to back in this process, measured in the same
run (before and after the purchases; the faster timing of each kind is kept), with
no concurrency and no batching:

* its Ed25519 operations: every sign and every verify one purchase does (statement
  signatures, and the certificate and CRL signatures checked with each statement),
  counted by running purchases in one process under a profiler hook that sees every
  call into ``cryptography`` (the census, ``--census`` mode), each timed here with
  ``cryptography`` on the market's own keys, certificates and CRL;
* its fsync'd commits: as many as one purchase makes (every ``Database`` transaction
  on the three sides, counted in the census), timed as SQLite commits with WAL and
  ``synchronous=FULL`` in the same folder;
* its round trips: as many requests as one purchase sends (counted in the census),
  timed as loopback request/response round trips over a semper channel between two
  of the market's agents, one in flight.

``floor_ratio`` = purchases_per_s / floor_purchases_per_s: above 1, concurrency and
group commit beat doing the work one purchase at a time.

The crypto floor is what the protocol itself costs: the Ed25519 work a purchase by
transfer needs whatever the implementation (5 signatures: order, transfer order,
confirmation, delivery, receipt; 6 verifications: the seller checks the order and the
confirmation, the bank the transfer order, the buyer the offer, the delivery and the
receipt), timed here in the same run, on every core the machine gives this process:
``crypto_floor_purchases_per_s`` = cores / (5 signs + 6 verifies), and
``crypto_floor_ratio`` = purchases_per_s / crypto_floor_purchases_per_s.

    python bench/payments.py [--json] [--seconds S] [--buyers B] [--concurrency C]
                             [--pay transfer|cheque|ecash|card|both] [--coins N]
                             [--profile DIR]

``--pay ecash``: before the window, each buyer process withdraws its coins one
purchase's worth (the SKU's price) at a time, ``--coins`` times (default: 60 a second
of the window, plus one for each purchase in flight), so that every purchase in the
window pays with exact coins from its wallet (no exchange) and the seller deposits
them. ``--pay card``: the seller's ``payment.accept`` authorises and captures at the
bank's gateway. For both the census also counts, and the floor times, what these
instruments add: RSA-PSS verifications of coins (``verify_rsa``), blind signatures
(``blind_sign``, the bank's exchanges, if any) and HPKE seals and opens of the card's
payment instructions (``hpke_seal``, ``hpke_open``).

Defaults: 2 buyer processes of 32 purchases in flight, 20 s, ``transfer``.
``--json`` prints one object with ``purchases_per_s``, ``floor_purchases_per_s``,
``floor_ratio``, ``crypto_floor_purchases_per_s``, ``crypto_floor_ratio`` (and the
``cores`` it counts), the floor's parts (``floor``: per purchase, the count of each kind
of operation, microseconds each and milliseconds in all), the CPU milliseconds each
process spent per purchase (``cpu_ms_per_purchase``, from /proc), the transactions
each agent committed per purchase (``commits_per_purchase``, from the census) and how many
payments the bank applied meanwhile (``bank_payments``: the purchases counted, plus
each buyer's warm-up and those still in flight when the window closed); with
``--pay both``, the cheque run's figures are under ``cheque``. ``--profile DIR`` runs
the bank, the seller and the buyers under cProfile and leaves ``*.prof`` files.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import trio
from cryptography.hazmat.primitives.asymmetric import rsa, x25519

from semper.agents import Agent, AgentConfig
from semper.agents.components import _bank, _ledger
from semper.agents.components._purchase import Shopper
from semper.agents.components._wallet import Wallet
from semper.agents.operator._market import init_market
from semper.agents.runtime._storage import Database
from semper.services import Amount
from semper.services.certificates import Level, load_certificate, load_crl
from semper.services.payment.card import _set as card_set
from semper.services.payment.ecash import _blind as blind_rsa
from semper.services.payment.ecash._blind import BlindSigner
from semper.transport import Channel, ServiceRegistry, make_hello, open_channel, serve

SKU = "song-003"  # EUR 0.99 in the market's demo catalogue
PRICE = Amount("EUR", 99)  # its price: the coins one purchase by ecash spends
SELLER = "seller"
FUNDS = Amount("EUR", 100_000_000)  # minted for each buyer: a million purchases
CENSUS_PURCHASES = 3
HERE = Path(__file__).resolve()

#: The Ed25519 operations the protocol needs for one purchase by transfer (the crypto
#: floor): signs of order, transfer order, confirmation, delivery, receipt; verifies of
#: the offer, the order, the transfer order, the confirmation, the delivery, the receipt.
PROTOCOL_OPS = {"sign": 5, "verify": 6}

#: The calls into ``cryptography`` that are Ed25519 signatures, by the census's names.
ED25519_OPS = {
    "Ed25519PrivateKey.sign": "sign",
    "Ed25519PublicKey.verify": "verify",
    "Certificate.verify_directly_issued_by": "verify_certificate",
    "CertificateRevocationList.is_signature_valid": "verify_crl",
}
#: The other public-key operations of an instrument, by the census's names: a coin's
#: RSA-PSS signature checked (ecash), the card's payment instructions sealed to the
#: gateway and opened by it (HPKE). A blind signature is counted apart (``blind_sign``:
#: ``BlindSigner.sign``, OpenSSL through ctypes, which the profiler hook does not see).
OTHER_OPS = {
    "RSAPublicKey.verify": "verify_rsa",
    "Suite.encrypt": "hpke_seal",
    "Suite.decrypt": "hpke_open",
}
CRYPTO_OPS = {**ED25519_OPS, **OTHER_OPS}
#: The ledger entry kind of one payment of each instrument at the bank.
PAYMENT_KINDS = {"transfer": "transfer", "cheque": "cheque", "ecash": "ecash.deposited",
                 "card": "card.captured"}
MODULES = tuple(PAYMENT_KINDS)


def agent_config(market: Path, agent_id: str) -> AgentConfig:
    return AgentConfig.load(market / agent_id / "agent.toml")


def buyer_ids(count: int) -> list[str]:
    return [f"buyer-{n}" for n in range(1, count + 1)]


def make_market(folder: Path, buyers: int) -> Path:
    """Bank, seller and buyers (no CA agent: the agents know each other's addresses),
    each buyer funded with ``FUNDS``."""
    market = folder / "market"
    agents = [("bank", "bank", Level.VERIFIED_IDENTITY),
              (SELLER, "seller", Level.VERIFIED_CONTACT)]
    agents += [(b, "buyer", Level.VERIFIED_IDENTITY) for b in buyer_ids(buyers)]
    init_market(market, agents=agents)
    database = Database.open_sync(market / "bank" / "data" / "agent.sqlite", _bank.MIGRATIONS)
    try:
        database.transaction_sync(lambda c: [
            _ledger.mint(c, b, FUNDS, time_ms=time.time_ns() // 1_000_000, memo="bench")
            for b in buyer_ids(buyers)])
    finally:
        database.close()
    return market


# -- the census: what one purchase does, counted in one process ------------------------


def census(market: Path, module: str) -> dict[str, float]:
    """Per purchase: Ed25519 operations, commits and round trips (run in a subprocess,
    so the profiler hook stays out of the measurements)."""
    counts: collections.Counter[str] = collections.Counter()
    active = [False]

    def hook(frame: Any, event: str, arg: Any) -> None:
        if event == "c_call" and active[0]:
            name = CRYPTO_OPS.get(getattr(arg, "__qualname__", ""))
            if name is not None:
                counts[name] += 1

    run_group, transaction_sync = Database._run_group, Database.transaction_sync
    request = Channel.request
    blind_sign = BlindSigner.sign

    def counting_blind_sign(self: BlindSigner, blinded: bytes) -> bytes:
        if active[0]:
            counts["blind_sign"] += 1
        return blind_sign(self, blinded)

    def counting_group(self: Database, fns: list[Any]) -> Any:
        if active[0]:
            counts["commits"] += len(fns)
            counts[f"commits.{self.path.parent.parent.name}"] += len(fns)  # <agent>/data/
        return run_group(self, fns)

    def counting_sync(self: Database, fn: Any) -> Any:
        if active[0]:
            counts["commits"] += 1
            counts[f"commits.{self.path.parent.parent.name}"] += 1
        return transaction_sync(self, fn)

    async def counting_request(self: Channel, *args: Any, **kwargs: Any) -> Any:
        if active[0]:
            counts["round_trips"] += 1
        return await request(self, *args, **kwargs)

    Database._run_group = counting_group  # type: ignore[method-assign]
    Database.transaction_sync = counting_sync  # type: ignore[method-assign]
    Channel.request = counting_request  # type: ignore[method-assign]
    BlindSigner.sign = counting_blind_sign  # type: ignore[method-assign]
    threading.setprofile(hook)  # the worker threads SQLite work runs in (the bank signs there)
    sys.setprofile(hook)

    async def run() -> None:
        bank, seller = Agent(agent_config(market, "bank")), Agent(agent_config(market, SELLER))
        buyer = Agent(agent_config(market, buyer_ids(1)[0]))
        async with trio.open_nursery() as nursery:
            await nursery.start(bank.run)
            await nursery.start(seller.run)
            async with buyer.session():
                shopper = Shopper(buyer)
                await withdraw_coins(buyer, module, CENSUS_PURCHASES + 1, "census")
                await shopper.buy(SELLER, SKU, module, f"census-warm-{module}")  # channels
                active[0] = True
                for n in range(CENSUS_PURCHASES):
                    await shopper.buy(SELLER, SKU, module, f"census-{module}-{n}")
                active[0] = False
            nursery.cancel_scope.cancel()

    trio.run(run)
    sys.setprofile(None)
    threading.setprofile(None)  # type: ignore[arg-type]
    return {key: value / CENSUS_PURCHASES for key, value in counts.items()}


async def withdraw_coins(buyer: Agent, module: str, count: int, tag: str) -> None:
    """For ``--pay ecash``: ``count`` purchases' worth of coins into ``buyer``'s
    wallet, one purchase's (``PRICE``) per withdrawal, so that each purchase finds
    exact coins and exchanges none. Nothing for another instrument."""
    if module != "ecash":
        return
    wallet = buyer.component(Wallet)
    for n in range(count):
        await wallet.withdraw(PRICE, f"{buyer.id}-{tag}-coins-{n}")


def run_census(market: Path, module: str) -> dict[str, float]:
    done = subprocess.run([sys.executable, str(HERE), "--census", str(market), "--pay", module],
                          capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise SystemExit(f"the census failed:\n{done.stderr}")
    return json.loads(done.stdout)  # type: ignore[no-any-return]


# -- the floor: the same work back to back ------------------------------------------


def _best_mean(fn: Any, count: int, rounds: int = 3) -> float:
    """Seconds per call of ``fn``: the best of ``rounds`` means of ``count`` calls."""
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(count):
            fn()
        best = min(best, (time.perf_counter() - start) / count)
    return best


def time_signatures(market: Path) -> dict[str, float]:
    """Seconds per Ed25519 operation of each kind, on the market's keys and CRL."""
    seller = Agent(agent_config(market, SELLER))
    key = seller.credentials.key
    public = key.public_key()
    message = os.urandom(400)  # about a statement's signed bytes
    signature = key.sign(message)
    root = seller.credentials.root
    certificate = load_certificate((market / SELLER / "cert.pem").read_bytes())
    crl = load_crl((market / "ca" / "crl.pem").read_bytes())
    root_key = root.public_key()
    return {
        "sign": _best_mean(lambda: key.sign(message), 500),
        "verify": _best_mean(lambda: public.verify(signature, message), 500),
        "verify_certificate": _best_mean(lambda: certificate.verify_directly_issued_by(root), 500),
        "verify_crl": _best_mean(lambda: crl.is_signature_valid(root_key), 500),
        **time_instrument_ops(),
    }


def time_instrument_ops() -> dict[str, float]:
    """Seconds per operation of ``OTHER_OPS`` and a blind signature, as the
    instruments make them: RSA-2048 PSS/SHA-384 (RFC 9474's coins; the bank's
    ``BlindSigner``) and the card's HPKE suite on a payment-instructions-sized body."""
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    rsa_public = rsa_key.public_key()
    prepared = blind_rsa.prepare(os.urandom(85))  # a coin's message: domain, key id, key
    blinded, inv = blind_rsa.blind(rsa_public, prepared)
    signer = BlindSigner(rsa_key)
    coin = blind_rsa.finalize(rsa_public, prepared, signer.sign(blinded), inv)
    gateway = x25519.X25519PrivateKey.generate()
    plain, info = os.urandom(220), os.urandom(64)
    sealed = card_set.SUITE.encrypt(plain, gateway.public_key(), info=info)
    return {
        "verify_rsa": _best_mean(lambda: blind_rsa.verify(rsa_public, prepared, coin), 300),
        "blind_sign": _best_mean(lambda: signer.sign(blinded), 100),
        "hpke_seal": _best_mean(
            lambda: card_set.SUITE.encrypt(plain, gateway.public_key(), info=info), 300),
        "hpke_open": _best_mean(lambda: card_set.SUITE.decrypt(sealed, gateway, info=info), 300),
    }


def time_commit(folder: Path, count: int = 60) -> float:
    """Seconds per fsync'd SQLite commit (WAL, synchronous=FULL) of a ~1 KB row."""
    path = folder / "floor.sqlite"
    connection = sqlite3.connect(path, isolation_level=None)
    try:
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=FULL")
        connection.execute("CREATE TABLE floor (n INTEGER PRIMARY KEY, body BLOB NOT NULL)")
        row = os.urandom(1024)

        def commit() -> None:
            connection.execute("BEGIN IMMEDIATE")
            connection.execute("INSERT INTO floor (body) VALUES (?)", (row,))
            connection.execute("COMMIT")

        for _ in range(5):  # warm up
            commit()
        return _best_mean(commit, count)
    finally:
        connection.close()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)


async def _echo(context: Any, body: Any) -> Any:
    return body


def time_round_trip(market: Path, count: int = 1000) -> float:
    """Seconds per request/response over a semper channel between the seller's and a
    buyer's credentials, loopback, one in flight, ~1 KB bodies."""
    server = Agent(agent_config(market, SELLER))
    client = Agent(agent_config(market, buyer_ids(1)[0]))
    registry = ServiceRegistry()
    registry.add_service("bench", version=1)
    registry.add_op("bench", "echo", _echo)
    body = {"statement": os.urandom(1024)}
    result = [0.0]

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            host, port = await nursery.start(lambda task_status: serve(
                "127.0.0.1", 0, tls=server.tls, verify_peer=server.verify_peer,
                hello=make_hello(server.id, server.config.role, registry,
                                 server.channel_config),
                registry=registry, config=server.channel_config, task_status=task_status))
            async with open_channel(host, port, tls=client.tls, verify_peer=client.verify_peer,
                                    expected_id=server.id, hello=client.hello(),
                                    config=client.channel_config) as channel:
                for _ in range(100):  # warm up
                    await channel.request("bench", "echo", body)
                best = float("inf")
                for _ in range(3):
                    start = time.perf_counter()
                    for _ in range(count):
                        await channel.request("bench", "echo", body)
                    best = min(best, (time.perf_counter() - start) / count)
                result[0] = best
            nursery.cancel_scope.cancel()

    trio.run(run)
    return result[0]


#: What the floor adds up, in the order the report lists it.
FLOOR_PARTS = (*ED25519_OPS.values(), *OTHER_OPS.values(), "blind_sign", "commits",
               "round_trips")


def floor_of(counts: dict[str, float], times: dict[str, float]) -> dict[str, Any]:
    """The floor's parts: per purchase, how many of each, microseconds each, and the
    milliseconds they add up to."""
    parts: dict[str, Any] = {}
    total = 0.0
    for name in FLOOR_PARTS:
        count = counts.get(name, 0.0)
        seconds = count * times[name]
        total += seconds
        parts[name] = {"count": round(count, 2), "us_each": round(times[name] * 1e6, 1),
                       "ms": round(seconds * 1e3, 3)}
    signatures = sum(counts.get(name, 0.0) for name in ED25519_OPS.values())
    return {"parts": parts, "signatures": round(signatures, 2),
            "ms_per_purchase": round(total * 1e3, 3), "purchases_per_s": 1 / total}


# -- the purchases: separate processes ------------------------------------------------


def _spawn(argv: list[str], profile: Path | None, name: str, **kwargs: Any) -> subprocess.Popen:
    if profile is not None:
        argv = [sys.executable, "-m", "cProfile", "-o", str(profile / f"{name}.prof"),
                *argv[1:]]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)


def _ready(process: subprocess.Popen, prefix: bytes) -> None:
    line = process.stdout.readline()
    if not line.startswith(prefix):
        process.kill()
        raise SystemExit(f"{process.args[-1]} did not start: {line!r}\n"
                         f"{process.stderr.read().decode(errors='replace')}")


def purchases(market: Path, *, module: str, seconds: float, buyers: int, concurrency: int,
              coins: int, profile: Path | None) -> dict[str, Any]:
    """Purchases per second with the bank and the seller each one process, and
    ``buyers`` buyer processes of ``concurrency`` purchases in flight each."""
    paid_before = _check_bank(market, module)
    agents = []
    workers: list[subprocess.Popen] = []
    try:
        for agent_id in ("bank", SELLER):
            process = _spawn([sys.executable, "-m", "semper.agents.cli", "agent", "run",
                              str(market / agent_id / "agent.toml")], profile, agent_id)
            agents.append(process)
        for process in agents:
            _ready(process, b"ready ")
        for buyer in buyer_ids(buyers):
            workers.append(_spawn(
                [sys.executable, str(HERE), "--worker", str(market), "--buyer", buyer,
                 "--pay", module, "--seconds", str(seconds), "--concurrency", str(concurrency),
                 "--coins", str(coins)],
                profile, buyer, stdin=subprocess.PIPE))
        for worker in workers:
            _ready(worker, b"ready")
        processes = {"bank": agents[0], "seller": agents[1],
                     "buyers": workers}
        cpu_before = {name: _cpu_seconds(p) for name, p in processes.items()}
        for worker in workers:  # all at once
            worker.stdin.write(b"go\n")
            worker.stdin.flush()
        time.sleep(seconds)
        cpu = {name: _cpu_seconds(p) - cpu_before[name] for name, p in processes.items()}
        results = []
        for worker in workers:
            out, err = worker.communicate(timeout=120)
            if worker.returncode != 0:
                raise SystemExit(f"a buyer failed:\n{err.decode(errors='replace')}")
            results.append(json.loads(out))
    finally:
        for process in [*workers, *agents]:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in [*workers, *agents]:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
    done = sum(r["purchases"] for r in results)
    cpu_ms = {name: round(value * 1000 / max(done, 1), 2) for name, value in cpu.items()}
    latencies = sorted(ms for r in results for ms in r["latencies_ms"])
    paid = _check_bank(market, module) - paid_before
    return {"purchases": done, "seconds": seconds, "purchases_per_s": done / seconds,
            "failed": sum(r["failed"] for r in results),
            "latency_ms_p50": _percentile(latencies, 0.5),
            "latency_ms_p99": _percentile(latencies, 0.99), "cpu_ms_per_purchase": cpu_ms,
            "bank_payments": paid}


def _cpu_seconds(processes: subprocess.Popen | list[subprocess.Popen]) -> float:
    """User and system CPU seconds the processes have used so far (Linux; else 0)."""
    total = 0.0
    for process in processes if isinstance(processes, list) else [processes]:
        try:
            fields = Path(f"/proc/{process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def _percentile(values: list[float], q: float) -> float | None:
    return round(values[min(len(values) - 1, int(q * len(values)))], 1) if values else None


def _check_bank(market: Path, module: str) -> int:
    """Checks that the bank's books balance; returns how many payments of ``module``
    it has applied (its ``PAYMENT_KINDS`` entries)."""
    database = Database.open_sync(market / "bank" / "data" / "agent.sqlite", _bank.MIGRATIONS)
    try:
        database.read_sync(_ledger.check_books)
        paid = database.read_sync(lambda c: c.execute(
            "SELECT count(*) FROM ledger_entries WHERE kind = ?",
            (PAYMENT_KINDS[module],)).fetchone()[0])
    finally:
        database.close()
    return paid  # type: ignore[no-any-return]


def worker(market: Path, buyer: str, module: str, seconds: float, concurrency: int,
           coins: int) -> None:
    """One buyer process: ``concurrency`` purchases at a time for ``seconds`` after
    ``go`` on stdin; prints ``{purchases, failed, latencies_ms}``. For ecash it
    first withdraws ``coins`` purchases' worth of coins (and one for its warm-up)."""

    async def run() -> dict[str, Any]:
        agent = Agent(agent_config(market, buyer))
        async with agent.session():
            shopper = Shopper(agent)
            await withdraw_coins(agent, module, coins + 1, "worker")
            await shopper.buy(SELLER, SKU, module, f"{buyer}-warm-{module}")  # the channels
            print("ready", flush=True)
            await trio.to_thread.run_sync(sys.stdin.readline)
            deadline = time.perf_counter() + seconds
            latencies: list[float] = []
            failed = [0]

            async def purchaser(task: int) -> None:
                n = 0
                while time.perf_counter() < deadline:
                    started = time.perf_counter()
                    try:
                        await shopper.buy(SELLER, SKU, module, f"{buyer}-{module}-{task}-{n}")
                    except Exception as exc:  # counted, and the first one shown
                        failed[0] += 1
                        if failed[0] == 1:
                            print(f"purchase failed: {exc!r}", file=sys.stderr)
                    else:
                        ended = time.perf_counter()
                        if ended <= deadline:
                            latencies.append((ended - started) * 1000)
                    n += 1

            async with trio.open_nursery() as nursery:
                for task in range(concurrency):
                    nursery.start_soon(purchaser, task)
        return {"purchases": len(latencies), "failed": failed[0], "latencies_ms": latencies}

    print(json.dumps(trio.run(run)), flush=True)


# -- the report ---------------------------------------------------------------------


def time_floor(market: Path, folder: Path) -> dict[str, float]:
    """Seconds per operation of each kind the floor adds up."""
    times = time_signatures(market)
    times["commits"] = time_commit(folder)
    times["round_trips"] = time_round_trip(market)
    return times


def cores() -> int:
    """The cores this process may run on (the purchases' processes share them)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def crypto_floor(times: dict[str, float]) -> float:
    """Purchases per second if every core did nothing but the protocol's Ed25519 work."""
    return cores() / sum(count * times[name] for name, count in PROTOCOL_OPS.items())


def report_of(module: str, counts: dict[str, float], run: dict[str, Any],
              times: dict[str, float]) -> dict[str, Any]:
    floor = floor_of(counts, times)
    crypto = crypto_floor(times)
    return {"pay": module, "purchases_per_s": round(run["purchases_per_s"], 2),
            "floor_purchases_per_s": round(floor["purchases_per_s"], 2),
            "floor_ratio": round(run["purchases_per_s"] / floor["purchases_per_s"], 2),
            "crypto_floor_purchases_per_s": round(crypto, 2),
            "crypto_floor_ratio": round(run["purchases_per_s"] / crypto, 3),
            "cores": cores(),
            "purchases": run["purchases"], "failed": run["failed"],
            "bank_payments": run["bank_payments"],
            "cpu_ms_per_purchase": run["cpu_ms_per_purchase"],
            "commits_per_purchase": {
                name.removeprefix("commits."): round(count, 2)
                for name, count in sorted(counts.items()) if name.startswith("commits.")},
            "latency_ms_p50": run["latency_ms_p50"], "latency_ms_p99": run["latency_ms_p99"],
            "floor": {"ms_per_purchase": floor["ms_per_purchase"],
                      "signatures": floor["signatures"], **floor["parts"]}}


def print_report(report: dict[str, Any], args: argparse.Namespace) -> None:
    floor = report["floor"]
    print(f"pay {report['pay']}: {args.buyers} buyer process(es) x {args.concurrency} "
          f"in flight, bank and seller one process each, {args.seconds:g} s")
    print(f"  purchases/s       {report['purchases_per_s']:10.1f}   ({report['purchases']} "
          f"purchases, {report['failed']} failed, {report['bank_payments']} paid at the bank; "
          f"latency p50 {report['latency_ms_p50']} ms, p99 {report['latency_ms_p99']} ms)")
    print(f"  floor purchases/s {report['floor_purchases_per_s']:10.1f}   "
          f"({floor['ms_per_purchase']:.2f} ms of work per purchase, back to back)")
    print(f"  floor_ratio       {report['floor_ratio']:10.2f}x")
    print(f"  crypto floor/s    {report['crypto_floor_purchases_per_s']:10.1f}   "
          f"({PROTOCOL_OPS['sign']} signs and {PROTOCOL_OPS['verify']} verifies per purchase "
          f"on {report['cores']} cores)")
    print(f"  crypto_floor_ratio {report['crypto_floor_ratio']:9.3f}x")
    commits = report["commits_per_purchase"]
    print("  commits per purchase: " + ", ".join(f"{k} {v:g}" for k, v in commits.items()))
    cpu = report["cpu_ms_per_purchase"]
    print("  CPU ms per purchase: " + ", ".join(f"{k} {v:.2f}" for k, v in cpu.items())
          + f" (total {sum(cpu.values()):.2f})")
    print(f"  the floor, per purchase: {'count':>7} {'us each':>9} {'ms':>8}")
    for name in FLOOR_PARTS:
        part = floor[name]
        print(f"    {name:22} {part['count']:7.2f} {part['us_each']:9.1f} {part['ms']:8.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--seconds", type=float, default=20.0,
                        help="how long the buyers buy (per instrument)")
    parser.add_argument("--buyers", type=int, default=2, help="buyer processes")
    parser.add_argument("--concurrency", type=int, default=32,
                        help="purchases in flight per buyer process")
    parser.add_argument("--pay", choices=(*MODULES, "both"), default="transfer",
                        help="the instrument (both: transfer, then cheque)")
    parser.add_argument("--coins", type=int, help="ecash: purchases' worth of coins each "
                        "buyer withdraws before the window (default 60 per second of it "
                        "plus --concurrency)")
    parser.add_argument("--profile", type=Path, help="cProfile the processes into DIR")
    parser.add_argument("--dir", type=Path, help="where the market goes (default: a "
                        "temporary folder); the floor's commits are timed there too")
    parser.add_argument("--census", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--buyer", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.census is not None:
        print(json.dumps(census(args.census, args.pay)))
        return
    if args.worker is not None:
        worker(args.worker, args.buyer, args.pay, args.seconds, args.concurrency, args.coins)
        return
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
    modules = ("transfer", "cheque") if args.pay == "both" else (args.pay,)
    coins = args.coins if args.coins is not None else int(60 * args.seconds) + args.concurrency
    with tempfile.TemporaryDirectory(dir=args.dir) as name:
        folder = Path(name)
        market = make_market(folder, args.buyers)
        before = time_floor(market, folder)
        runs = []
        for module in modules:
            counts = run_census(market, module)
            runs.append((module, counts, purchases(
                market, module=module, seconds=args.seconds, buyers=args.buyers,
                concurrency=args.concurrency, coins=coins, profile=args.profile)))
        # Timed before and after the purchases; the faster of the two is kept, so a
        # slow spell of the disk or the machine cannot lower the floor.
        after = time_floor(market, folder)
        times = {name: min(before[name], after[name]) for name in before}
        reports = [report_of(module, counts, run, times) for module, counts, run in runs]
    report = dict(reports[0])
    for extra in reports[1:]:
        report[extra["pay"]] = extra
    if args.json:
        print(json.dumps(report))
        return
    for one in reports:
        print_report(one, args)


if __name__ == "__main__":
    main()
