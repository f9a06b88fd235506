"""``semper demo`` (what ``make demo`` runs) as a user runs it: one process, bounded in
time, exit 0, and the lines that say what it showed. Plus the demo's own checkers, fed
outcomes that must fail them."""

from __future__ import annotations

import re
import subprocess
import time
from typing import Any

from test_cli import _env, semper_argv

from semper.agents.operator._demo import PURCHASES, _implied, _purchase_problems
from semper.services import Amount

DEMO_BOUND = 60.0  # seconds; the demo takes well under 20 s on 2 cores


def test_semper_demo_buys_refunds_and_balances_the_books() -> None:
    started = time.monotonic()
    done = subprocess.run(semper_argv("demo"), capture_output=True, text=True, env=_env(),
                          stdin=subprocess.DEVNULL, timeout=DEMO_BOUND, check=False)
    took = time.monotonic() - started
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    lines = out.splitlines()

    def line(start: str) -> str:
        found = [x for x in lines if x.startswith(start)]
        assert len(found) == 1, (start, out)
        return found[0]

    assert "✗" not in out, out
    line("✓ 5 of 5 agents running, one process each")
    assert "who reached whom" in out
    line("✓ 20 of 20 channels opened over mutually authenticated TLS 1.3")
    assert "buyer EUR 1,000.00, seller EUR 0.00" in line("✓ balances before")
    for _, sku, pay in PURCHASES:
        assert " from buyer to seller (payment." in line(f"✓ semper buy --item {sku} --pay {pay}")
    assert "EUR 12.50 back to buyer" in line("✓ semper refund --idempotency-key demo-guide")
    replay = line("✓ semper buy again with --idempotency-key demo-map: paid nothing more")
    assert re.search(r"the buyer's balance EUR [\d,.]+ before and after", replay), replay
    # 12.50 + 4.80 + 0.99 paid, 12.50 refunded
    assert "the bank says buyer EUR -5.79, seller EUR +5.79" in line(
        "✓ each account changed by what the payments and the refund imply")
    assert "EUR 1,000.00 before, EUR 1,000.00 after" in line(
        "✓ the total over all customer accounts is unchanged")
    assert "balanced: true" in line("✓ semper bank accounts: the books balance")
    assert line("✓ every agent stopped by SIGTERM exited 0").endswith(
        "ca 0, bank 0, seller 0, buyer 0, notary 0")
    assert re.search(r"│ buyer\s+│ EUR 1,000.00 │\s+EUR 994.21 │ EUR -5.79 │ EUR -5.79 │ ✓", out)
    assert re.search(r"│ seller\s+│\s+EUR 0.00 │\s+EUR 5.79 │ EUR \+5.79 │ EUR \+5.79 │ ✓", out)
    assert lines[-1].startswith("ok: 14 checks held in "), lines[-1]
    assert took < DEMO_BOUND


def _outcome(**changes: Any) -> dict[str, Any]:
    price = {"currency": "EUR", "minor_units": 480}
    outcome: dict[str, Any] = {
        "state": "done", "replayed": False, "goods_size": 40,
        "receipt": {"sku": "map-002", "seller": "seller", "buyer": "buyer", "amount": price,
                    "payment": "ab" * 32},
        "payment": {"module": "cheque", "payer": "buyer", "payee": "seller", "amount": price,
                    "settlement_digest": "ab" * 32}}
    for path, value in changes.items():
        *parents, leaf = path.split("__")
        target = outcome
        for parent in parents:
            target = target[parent]
        target[leaf] = value
    return outcome


def _problems(outcome: dict[str, Any]) -> list[str]:
    return _purchase_problems(outcome, sku="map-002", module="cheque",
                              price=Amount("EUR", 480), buyer="buyer", seller="seller")


def test_the_purchase_check_accepts_a_right_outcome_only() -> None:
    assert _problems(_outcome()) == []
    for wrong in ({"state": "paying"}, {"replayed": True}, {"goods_size": 0},
                  {"payment__amount": {"currency": "EUR", "minor_units": 481}},
                  {"payment__module": "transfer"}, {"payment__payee": "buyer"},
                  {"receipt__sku": "guide-001"}, {"receipt__payment": "cd" * 32},
                  {"receipt": None}):
        assert _problems(_outcome(**wrong)), wrong


def test_implied_changes_follow_payments_and_refunds() -> None:
    def pay(units: int) -> dict[str, Any]:
        return {"payer": "buyer", "payee": "seller",
                "amount": {"currency": "EUR", "minor_units": units}}

    assert _implied([pay(1250), pay(480)], [pay(1250)]) == {
        ("buyer", "EUR"): -480, ("seller", "EUR"): 480}
    assert _implied([], []) == {}
