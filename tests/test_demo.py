"""``semper demo`` (what ``make demo`` runs) as a user runs it: one process, bounded in
time, exit 0, and the lines that say what it showed (commerce, then the notary's
services and the arbiter: issue 9's Done-when line on ``make demo``). Plus the demo's
own checkers, fed outcomes that must fail them."""

from __future__ import annotations

import hashlib
import re
import subprocess
import time
from pathlib import Path
from typing import Any

from test_cli import _env, semper_argv

from semper.agents.operator._demo import (
    FAIR,
    PURCHASES,
    _contract_problems,
    _fair_problems,
    _implied,
    _purchase_problems,
    _verdicts,
)
from semper.services import Amount

#: Seconds. The demo takes about 20 s on 2 quiet cores; the bound leaves room for a
#: machine busy with other tests (each of its ~30 processes then starts slower).
DEMO_BOUND = 150.0


def test_semper_demo_buys_uses_the_notary_and_balances_the_books() -> None:
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
    line("✓ 6 of 6 agents running, one process each")
    assert "who reached whom" in out
    line("✓ 30 of 30 channels opened over mutually authenticated TLS 1.3")
    assert "buyer EUR 1,000.00, seller EUR 0.00" in line("✓ balances before")
    for _, sku, pay in PURCHASES:
        assert " from buyer to seller (payment." in line(f"✓ semper buy --item {sku} --pay {pay}")
    assert "EUR 12.50 back to buyer" in line("✓ semper refund --idempotency-key demo-guide")
    replay = line("✓ semper buy again with --idempotency-key demo-map: paid nothing more")
    assert re.search(r"the buyer's balance EUR [\d,.]+ before and after", replay), replay
    # the notary's services and the arbiter
    assert "signed by notary; valid under root.pem" in line(
        "✓ semper timestamp: the notary's token verified offline with the market root")
    assert "semper: timestamp.wrong_digest: " in line(
        "✓ semper timestamp verify: the token refused for a changed file")
    line("✓ semper archive export demo-song: the buyer's evidence bundle")
    assert "buyer paid: buyer yes" in line(
        "✓ semper dispute check: every obligation met, judged offline")
    assert "(commerce.purchase), verdicts checked and archived by buyer" in line(
        "✓ semper dispute file: arbiter's signed verdicts agree")
    assert "signed by seller" in line(
        "✓ semper mail send --to seller: delivered for a signed receipt")
    assert "listed from buyer (read), 102 bytes read back" in line(
        "✓ semper mail inbox and read (as seller): the same bytes")
    line("✓ semper contract approve (as seller) and sign (as buyer): signed by the exchange")
    assert "seller exited -9 after its commitment" in line(
        "✓ semper contract sign with seller dying at contract.responder.sent_m2: signed, "
        "resolved by the notary")
    assert line("✓ seller started again shows the same contract").endswith(
        "signed, resolved by the notary")
    fair = line(f"✓ semper buy --fair --item {FAIR[1]} from seller dying at "
                "fair.seller.paid: the goods through the notary")
    assert "seller exited -9 once paid; the notary released the key" in fair, fair
    line("✓ seller started again, normally")
    # 12.50 + 4.80 + 0.99 paid, 12.50 refunded, 4.80 paid in the fair purchase
    assert "the bank says buyer EUR -10.59, seller EUR +10.59" in line(
        "✓ each account changed by what the payments and the refund imply")
    assert "EUR 1,000.00 before, EUR 1,000.00 after" in line(
        "✓ the total over all customer accounts is unchanged")
    assert "balanced: true" in line("✓ semper bank accounts: the books balance")
    assert line("✓ every agent stopped by SIGTERM exited 0").endswith(
        "ca 0, bank 0, seller 0, buyer 0, notary 0, arbiter 0")
    assert re.search(r"│ buyer\s+│ EUR 1,000.00 │\s+EUR 989.41 │ EUR -10.59 │ EUR -10.59 │ ✓",
                     out), out
    assert re.search(r"│ seller\s+│\s+EUR 0.00 │\s+EUR 10.59 │ EUR \+10.59 │ EUR \+10.59 │ ✓",
                     out), out
    assert lines[-1].startswith("ok: 26 checks held in "), lines[-1]
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


def test_the_contract_check_wants_signed_by_the_named_resolver() -> None:
    right = {"contract": "ab" * 32, "state": "signed", "resolved_by": "notary"}
    assert _contract_problems(right, "notary") == []
    assert _contract_problems(right, "exchange")
    for wrong in ({"state": "aborted"}, {"resolved_by": "exchange"}, {"contract": "ab"},
                  {"contract": None}):
        assert _contract_problems({**right, **wrong}, "notary"), wrong


def test_the_fair_check_wants_the_offers_goods_through_the_notary(tmp_path: Path) -> None:
    goods = b"ca -- bank -- seller -- buyer -- notary\n"
    price = {"currency": "EUR", "minor_units": 480}
    offer = {"sku": "map-002", "price": price,
             "content_digest": hashlib.sha256(goods).hexdigest()}
    written = tmp_path / "goods"
    written.write_bytes(goods)
    right = {"resolved_by": "notary", "goods_size": len(goods),
             "payment": {"module": "transfer", "payer": "buyer", "payee": "seller",
                         "amount": price}}

    def problems(outcome: dict[str, Any], path: Path = written,
                 offered: dict[str, Any] | None = offer) -> list[str]:
        return _fair_problems(outcome, offered, path, buyer="buyer", seller="seller",
                              module="transfer")

    assert problems(right) == []
    for wrong in ({"resolved_by": "exchange"}, {"resolved_by": None}, {"goods_size": 1},
                  {"payment": {**right["payment"], "payee": "buyer"}},
                  {"payment": {**right["payment"], "amount": {**price, "minor_units": 1}}},
                  {"payment": None}):
        assert problems({**right, **wrong}), wrong
    assert problems(right, path=tmp_path / "missing")
    assert problems(right, offered=None)
    other = tmp_path / "other"
    other.write_bytes(goods.upper())
    assert problems(right, path=other)


def test_verdicts_are_read_defensively() -> None:
    said = {"verdicts": [{"obligation": "buyer paid", "party": "buyer", "met": True},
                         "junk"]}
    assert _verdicts(said) == {("buyer paid", "buyer", True)}
    assert _verdicts(None) == _verdicts({"verdicts": None}) == set()
