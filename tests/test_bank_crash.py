"""The bank killed with SIGKILL at each step of a transfer and of a cheque deposit
(agents/runtime/_faults.py crash points in roles/bank.py and _bank.py).

Each case makes a fresh market, starts the bank as its own process with
``SEMPER_CRASH_AT`` naming one point, and sends one payment from an in-process agent
over real TLS: the buyer's signed transfer order, or the seller depositing a cheque
the buyer signed. The bank dies there; the payer sees its channel fail (in the
``answered`` case the payer gets its answer and the test kills the bank). The bank is
restarted without the variable and the payer retries (the same cheque; for the
transfer an order with the same body signed again, as a payer that restarted itself
would). After that, and after a second retry:

* the answer is the bank's valid confirmation of this payment, the second retry's
  the very same statement (for the cheque the second retry deposits the cheque the
  buyer rewrote after its own restart: same serial, new expiry and signature);
* it confirms the first request if the crash came after the commit, the retry
  otherwise: the first request was applied exactly once or not at all;
* the books balance, the buyer holds EUR 1,000.00 less the amount and the seller the
  amount: exactly once; one journal entry; the evidence (request and answer) archived
  once, and the archive chain verifies.

A payer that gives up after a crash before the commit finds that nothing moved.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio
from market_helpers import config_of, make_market, running

from semper.agents import Agent
from semper.agents.components import _archive, _ledger
from semper.agents.operator._market import DEMO_FUNDS
from semper.services import Amount
from semper.services.archive import verify_chain
from semper.services.payment import BANK_SERVICE
from semper.services.payment.cheque import (
    BANK_DEPOSIT_CHEQUE,
    CHEQUE,
    Cheque,
    ChequeProof,
    DepositAnswer,
    cheque_serial,
    verify_cheque_cleared,
)
from semper.services.payment.transfer import (
    BANK_TRANSFER,
    TRANSFER_ORDER,
    TransferOrder,
    TransferProof,
    TransferRequest,
    verify_transfer_confirmation,
)
from semper.services.statements import Statement, sign_statement
from semper.transport import ChannelClosed

DEADLINE = 10.0  # real seconds per case (each takes < 1 s): never reached when it works
AMOUNT = Amount("EUR", 12_345)
REFERENCE = b"order-42"
KEY = "pay-order-42"


# -- the bank as a process --------------------------------------------------------------


async def start_bank(folder: Path, crash_at: str | None) -> trio.Process:
    env = {k: v for k, v in os.environ.items() if k != "SEMPER_CRASH_AT"}
    if crash_at is not None:
        env["SEMPER_CRASH_AT"] = crash_at
    argv = [sys.executable, "-m", "semper.agents.cli", "agent", "run",
            str(folder / "bank" / "agent.toml")]
    process = await trio.lowlevel.open_process(argv, stdout=subprocess.PIPE, env=env)
    try:
        line = b""
        with trio.fail_after(DEADLINE):
            while not line.endswith(b"\n"):
                chunk = await process.stdout.receive_some(1)
                assert chunk, "the bank exited before it was ready"
                line += chunk
        assert line.startswith(b"ready bank ")
    except BaseException:
        await stop(process)
        raise
    return process


async def stop(process: trio.Process, sig: int = signal.SIGTERM) -> int:
    """Signal the bank (unless it is dead) and wait for it; bounded even if cancelled."""
    with trio.CancelScope(shield=True):
        if process.returncode is None:
            process.send_signal(sig)
            with trio.move_on_after(DEADLINE):
                return await process.wait()
            process.kill()
        return await process.wait()


@asynccontextmanager
async def bank_process(folder: Path, crash_at: str | None) -> AsyncIterator[list[trio.Process]]:
    """The running bank as ``[process]``: a restart replaces it; none outlives the body."""
    holder = [await start_bank(folder, crash_at)]
    try:
        yield holder
    finally:
        for process in holder:
            await stop(process, signal.SIGKILL)


# -- the payments ---------------------------------------------------------------------


def signed(agent: Agent, type_: str, body: dict[str, Any]) -> Statement:
    credentials = agent.credentials
    return sign_statement(type_, body, key=credentials.key,
                          certificate=credentials.identity.certificate,
                          now_ms=time.time_ns() // 1_000_000, nonce=os.urandom(16))


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass
class Transfer:
    """The buyer pays the seller by transfer; each attempt signs the same body anew."""

    buyer: Agent
    op = BANK_TRANSFER
    kind = "transfer"

    def __post_init__(self) -> None:
        self.body = TransferOrder(payer="buyer", payee="seller", bank="bank", amount=AMOUNT,
                                  reference=REFERENCE, idempotency_key=KEY)
        self.sent: list[Statement] = []

    @property
    def requester(self) -> Agent:
        return self.buyer

    def request(self) -> dict[str, Any]:
        self.sent.append(signed(self.buyer, TRANSFER_ORDER, self.body.to_body()))
        return TransferRequest(order=self.sent[-1]).to_wire()

    def verify(self, answer: Any) -> Statement:
        proof = TransferProof.from_wire(answer)
        confirmation = verify_transfer_confirmation(
            proof.confirmation, bank_certificate=proof.bank_certificate,
            root=self.buyer.credentials.root, crl=self.buyer.crl, now=now(),
            expected_payee="seller", expected_amount=AMOUNT, expected_reference=REFERENCE,
            expected_payer="buyer", expected_bank="bank")
        self.confirmed = confirmation.order
        return proof.confirmation

    def applied(self, durable: bool) -> Statement:
        """The order the bank must have applied: the first if it was durable when the
        bank died, else the first retry's."""
        return self.sent[0 if durable else 1]


@dataclass
class ChequeDeposit:
    """The buyer writes a cheque; the seller deposits it, then deposits it again; the
    second retry deposits the cheque the buyer rewrote after its own restart: the same
    serial and content, a later expiry, a new signature."""

    buyer: Agent
    seller: Agent
    op = BANK_DEPOSIT_CHEQUE
    kind = "cheque"

    def __post_init__(self) -> None:
        self.sent: list[Statement] = []

    @property
    def requester(self) -> Agent:
        return self.seller

    def write(self) -> Statement:
        body = Cheque(payer="buyer", payee="seller", bank="bank", amount=AMOUNT,
                      serial=cheque_serial("buyer", KEY),
                      expires_at=time.time_ns() // 1_000_000 + 86_400_000 + len(self.sent),
                      reference=REFERENCE)
        return signed(self.buyer, CHEQUE, body.to_body())

    def request(self) -> dict[str, Any]:
        self.sent.append(self.sent[0] if len(self.sent) == 1 else self.write())
        return ChequeProof(cheque=self.sent[-1],
                           drawer_certificate=self.buyer.credentials.identity.certificate
                           ).to_wire()

    def verify(self, answer: Any) -> Statement:
        got = DepositAnswer.from_wire(answer)
        cleared = verify_cheque_cleared(
            got.cleared, bank_certificate=got.bank_certificate,
            root=self.seller.credentials.root, crl=self.seller.crl, now=now(),
            expected_payee="seller", expected_amount=AMOUNT,
            expected_serial=cheque_serial("buyer", KEY), expected_payer="buyer",
            expected_bank="bank")
        self.confirmed = cleared.cheque
        return got.cleared

    def applied(self, durable: bool) -> Statement:
        return self.sent[0]  # the first deposit and the first retry are the same cheque


def payment(folder: Path, op: str) -> Transfer | ChequeDeposit:
    buyer = Agent(config_of(folder, "buyer"))
    if op == "transfer":
        return Transfer(buyer)
    return ChequeDeposit(buyer, Agent(config_of(folder, "seller")))


async def send(pay: Transfer | ChequeDeposit) -> Any:
    return await pay.requester.request("bank", BANK_SERVICE, pay.op, pay.request())


# -- the books --------------------------------------------------------------------------


@dataclass(frozen=True)
class Books:
    buyer: int
    seller: int
    entries: int  # journal entries of the payment's kind
    evidence: list[tuple[str, bytes]]  # (direction, digest) archived by the bank


def read_books(folder: Path, kind: str) -> Books:
    """The stopped bank's database: the books balance and the archive chain holds."""
    connection = sqlite3.connect(folder / "bank" / "data" / "agent.sqlite")
    try:
        _ledger.check_books(connection)
        verify_chain(_archive.read_records(connection))
        (entries,), = connection.execute(
            "SELECT count(*) FROM ledger_entries WHERE kind = ?", (kind,))
        evidence = connection.execute(
            "SELECT direction, digest FROM archive_records ORDER BY seq").fetchall()
        return Books(buyer=_ledger.balances(connection, "buyer")["EUR"],
                     seller=_ledger.balances(connection, "seller")["EUR"],
                     entries=entries, evidence=evidence)
    finally:
        connection.close()


# -- the cases --------------------------------------------------------------------------

# (point, True if the payment is durable when the bank dies there)
POINTS = [
    pytest.param("received", False, id="received"),  # decoded, nothing checked
    pytest.param("checked", False, id="checked"),  # verified, no transaction yet
    pytest.param("applied", False, id="applied"),  # all written, before COMMIT
    pytest.param("committed", True, id="committed"),  # durable, no answer sent
    pytest.param(None, True, id="answered"),  # answer received, then killed from outside
]


@pytest.mark.parametrize("op", ["transfer", "cheque"])
@pytest.mark.parametrize(("point", "durable"), POINTS)
async def test_bank_killed_then_retried_applies_the_payment_exactly_once(
    tmp_path: Path, op: str, point: str | None, durable: bool,
) -> None:
    folder = make_market(tmp_path / "m")
    pay = payment(folder, op)
    with trio.fail_after(DEADLINE):
        async with bank_process(folder, f"{op}.{point}" if point else None) as bank, \
                running(pay.requester):
            if point is None:
                first = pay.verify(await send(pay))
                await stop(bank[0], signal.SIGKILL)
            else:
                with pytest.raises(ChannelClosed):  # no answer, not an error answer
                    await send(pay)
            assert await bank[0].wait() == -signal.SIGKILL
            bank[0] = await start_bank(folder, None)
            answer = pay.verify(await send(pay))
            if point is None:
                assert answer == first
            # Applied once: by the first request if it was durable, else by the retry.
            assert pay.confirmed == pay.applied(durable).digest
            again = pay.verify(await send(pay))
            assert again == answer  # the stored answer, byte for byte
            await stop(bank[0])
    books = read_books(folder, pay.kind)
    assert (books.buyer, books.seller) == (DEMO_FUNDS.minor_units - AMOUNT.minor_units,
                                           AMOUNT.minor_units)
    assert books.entries == 1
    assert books.evidence == [("received", pay.applied(durable).digest),
                              ("sent", answer.digest)]


@pytest.mark.parametrize("op", ["transfer", "cheque"])
async def test_bank_killed_before_commit_and_payer_gives_up_moves_nothing(
    tmp_path: Path, op: str,
) -> None:
    folder = make_market(tmp_path / "m")
    pay = payment(folder, op)
    with trio.fail_after(DEADLINE):
        async with bank_process(folder, f"{op}.applied") as bank, running(pay.requester):
            with pytest.raises(ChannelClosed):
                await send(pay)
            assert await bank[0].wait() == -signal.SIGKILL
            bank[0] = await start_bank(folder, None)  # the restart recovers the WAL
            await stop(bank[0])
    books = read_books(folder, pay.kind)
    assert (books.buyer, books.seller, books.entries, books.evidence) == (
        DEMO_FUNDS.minor_units, 0, 0, [])
