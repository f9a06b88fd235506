"""``semper buy --pay purse --output`` of streamed items between real processes (issue
10): the file's SHA-256 is the offer's, the seller is paid chunks x price once it
redeems, the reservation is used up and the books balance; the seller killed at
chunk K (``SEMPER_CRASH_AT=stream.seller.chunk:K``) and the buyer killed mid-stream
each resume at K, and both sides' records show that the buyer never paid for more
than one chunk it had not received, nor the seller sent more than one chunk unpaid
(the credit window: chunk j is asked with payword j, paying chunks 0..j-1).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_cli import DEADLINE, Market, _env, assert_one_line_failure, semper, semper_argv
from test_fair_purchase_cli import Running

from semper.agents.components import _ledger

BUY_DEADLINE = 60.0
CHUNK = 4096
#: 40 chunks of 4 KiB, the last shorter; EUR 0.01 a chunk.
CONTENT = bytes((i * 31 + i // 977) % 256 for i in range(39 * CHUNK + 123))
SKU = "clip-040"
CHUNKS = 40
UNIT = 1


@pytest.fixture(scope="module")
def market(tmp_path_factory: pytest.TempPathFactory) -> Market:
    market = Market(tmp_path_factory.mktemp("stream") / "market", None)
    done = semper("market", "init", market.root, timeout=30)
    assert done.returncode == 0, done.stderr
    seller = market.root / "seller"
    (seller / "goods" / f"{SKU}.bin").write_bytes(CONTENT)
    with (seller / "catalogue.toml").open("a", encoding="utf-8") as f:
        f.write(f'\n[[offer]]\nsku = "{SKU}"\ntitle = "A clip"\nterms = "streamed"\n'
                f'goods = "goods/{SKU}.bin"\nvalid_days = 30\n'
                f'stream = {{ chunk_size = {CHUNK}, price_per_chunk = "EUR:{UNIT}" }}\n')
    return market


@pytest.fixture(scope="module")
def running(market: Market, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    agents = Running(market, tmp_path_factory.mktemp("logs"))
    try:
        yield agents
    finally:
        agents.close()


def buy(market: Market, sku: str, output: Path, *extra: str, pay: str = "purse",
        crash_at: str | None = None) -> subprocess.CompletedProcess[str]:
    env = _env()
    env.pop("SEMPER_CRASH_AT", None)
    if crash_at is not None:
        env["SEMPER_CRASH_AT"] = crash_at
    return subprocess.run(
        semper_argv("buy", "--config", market.config("buyer"), "--seller", "seller",
                    "--item", sku, "--pay", pay, "--output", output, "--json", *extra),
        capture_output=True, text=True, timeout=BUY_DEADLINE, env=env)


def db(market: Market, agent_id: str) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{market.root / agent_id / 'data' / 'agent.sqlite'}?mode=ro",
                           uri=True)


def query(market: Market, agent_id: str, sql: str, *args: Any) -> Any:
    connection = db(market, agent_id)
    try:
        return connection.execute(sql, args).fetchone()
    finally:
        connection.close()


def balance(market: Market, holder: str) -> int:
    connection = db(market, "bank")
    try:
        _ledger.check_books(connection)
        return _ledger.balances(connection, holder).get("EUR", 0)
    finally:
        connection.close()


def wait_redeemed(market: Market, chain: bytes) -> None:
    """The seller redeems within 10 s of the stream's end (the issue's bound)."""
    deadline = time.monotonic() + 10.0
    while query(market, "seller", "SELECT state FROM delivery_chains WHERE chain = ?",
                chain)[0] != "redeemed":
        assert time.monotonic() < deadline, "the seller did not redeem within 10 s"
        time.sleep(0.05)


def records(market: Market, key: str) -> tuple[int, int, int, int]:
    """(buyer: chunks verified, paywords spent; seller: ticks, chunks sent)."""
    verified, chain = query(market, "buyer", "SELECT verified, chain FROM delivery_downloads"
                            " WHERE key = ?", key)
    spent = query(market, "buyer", "SELECT spent FROM purse_chains WHERE chain = ?", chain)[0]
    highest, sent = query(market, "seller", "SELECT highest, sent FROM delivery_chains"
                          " WHERE chain = ?", chain)
    return verified, spent, highest, sent


def assert_window(market: Market, key: str) -> None:
    verified, spent, highest, sent = records(market, key)
    assert spent - verified <= 1, (verified, spent)  # the buyer risks one chunk
    assert sent - highest <= 1, (highest, sent)  # the seller one chunk (on credit)
    assert highest <= spent  # and took no payword the buyer did not give


def key_of(done: subprocess.CompletedProcess[str]) -> str:
    line = next(x for x in done.stderr.splitlines() if x.startswith("idempotency key: "))
    return line.split(": ", 1)[1]


def chain_of(market: Market, key: str) -> bytes:
    return query(market, "buyer", "SELECT chain FROM delivery_downloads WHERE key = ?",  # type: ignore[no-any-return]
                 key)[0]


def test_buy_by_purse_pays_chunks_times_price(market: Market, running: Running,
                                               tmp_path: Path) -> None:
    running.ensure()
    buyer_before, seller_before = balance(market, "buyer"), balance(market, "seller")
    output = tmp_path / "clip.bin"
    done = buy(market, SKU, output)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    receipt = result.pop("receipt")
    assert result == {"state": "done", "chunks": CHUNKS, "bytes": len(CONTENT),
                      "root": result["root"], "paid": {"currency": "EUR",
                                                       "minor_units": CHUNKS * UNIT},
                      "resumed_from": 0}
    assert output.read_bytes() == CONTENT
    key = key_of(done)
    # It ends in the seller's receipt naming the chain's redemption, and the
    # purchase is done (semper wallet), as one paid by transfer or cheque.
    assert receipt["sku"] == SKU and receipt["payment_type"] == "purse.redeemed"
    assert receipt["amount"] == {"currency": "EUR", "minor_units": CHUNKS * UNIT}
    wallet = json.loads(semper("wallet", "--config", market.config("buyer"), "--json").stdout)
    assert next(p for p in wallet["purchases"] if p["key"] == key)["state"] == "done"
    wait_redeemed(market, chain_of(market, key))
    assert balance(market, "seller") == seller_before + CHUNKS * UNIT
    assert balance(market, "buyer") == buyer_before - CHUNKS * UNIT
    assert balance(market, _ledger.system_account("purse-reserved")) == 0
    assert records(market, key) == (CHUNKS, CHUNKS, CHUNKS, CHUNKS)


def test_seller_killed_at_chunk_k_resumes_at_k(market: Market, running: Running,
                                               tmp_path: Path) -> None:
    running.ensure()
    k = 17
    seller = running.restart("seller", crash_at=f"stream.seller.chunk:{k}")
    output = tmp_path / "clip.bin"
    started = time.monotonic()
    key = "seller-killed"
    first = buy(market, SKU, output, "--idempotency-key", key)
    assert first.returncode != 0 and first.stdout == "", (first.stdout, first.stderr,
                                                          seller.stderr())
    assert seller.process.wait(DEADLINE) == -9, first.stderr  # SIGKILL at the crash point
    line = assert_one_line_failure(first, "delivery.interrupted")
    assert key in line and f"chunk {k}" in line, line
    assert time.monotonic() - started < 30  # within the request timeout
    assert not output.exists() and output.with_name("clip.bin.part").exists()
    # Chunk k-1 verified, payword k+1 (paying chunk k, in flight) spent; the seller
    # took payword k with chunk k's request and died sending chunk k on credit --
    # or, its ticks being committed without a wait (DURABLE_EVERY), it took payword
    # k+1 with chunk k+1's request first: one chunk unpaid either way.
    assert records(market, key) in ((k, k + 1, k, k + 1), (k, k + 1, k + 1, k + 2))
    assert_window(market, key)
    running.restart("seller")
    again = buy(market, SKU, output, "--idempotency-key", key)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["resumed_from"] == k
    assert hashlib.sha256(output.read_bytes()).digest() == hashlib.sha256(CONTENT).digest()
    wait_redeemed(market, chain_of(market, key))
    assert records(market, key) == (CHUNKS, CHUNKS, CHUNKS, CHUNKS)


def test_buyer_killed_mid_stream_resumes(market: Market, running: Running,
                                         tmp_path: Path) -> None:
    running.ensure()
    k = 9
    output = tmp_path / "clip.bin"
    first = buy(market, SKU, output, crash_at=f"stream.buyer.chunk:{k}")
    assert first.returncode == -9, first.stderr
    key = key_of(first)
    # Chunk k-1 verified, it drew payword k+1 (paying chunk k, asked with payword k
    # on credit) and died before asking for chunk k+1: the seller took payword k
    # and sent chunk k, or had not yet when the buyer died.
    assert records(market, key) in ((k, k + 1, k, k + 1), (k, k + 1, k - 1, k))
    assert_window(market, key)
    again = buy(market, SKU, output, "--idempotency-key", key)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["resumed_from"] == k
    assert output.read_bytes() == CONTENT
    wait_redeemed(market, chain_of(market, key))


def test_course_004_by_purse(market: Market, running: Running, tmp_path: Path) -> None:
    """The issue's item: ~32 MiB in 257 chunks, generated at init."""
    running.ensure()
    seller_before = balance(market, "seller")
    output = tmp_path / "course.bin"
    started = time.monotonic()
    done = buy(market, "course-004", output)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert (result["chunks"], result["paid"]) == (257, {"currency": "EUR",
                                                        "minor_units": 514})
    offer = json.loads(semper("catalogue", "--config", market.config("buyer"), "--seller",
                              "seller", "--json").stdout)
    course = next(o for o in offer if o["sku"] == "course-004")
    assert course["stream"]["root"] == result["root"]
    assert hashlib.sha256(output.read_bytes()).hexdigest() == course["content_digest"]
    wait_redeemed(market, chain_of(market, key_of(done)))
    assert balance(market, "seller") == seller_before + 514
    assert time.monotonic() - started < 20
