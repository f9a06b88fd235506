"""Ecash with crashes, as a Hypothesis state machine (issue 11, Done when): the
buyer's real wallet (agents/components/_wallet.py) withdraws, pays the seller (who
deposits), has a payment refused (its coins exchanged for new ones) or "refused" by
a seller that deposited some of the coins shown, gets refunds as vouchers it
redeems, and sees a coin it spent spent again (refused as ecash.double_spent),
against a real bank (agents/instruments/ecash.py) over loopback TLS and real SQLite;
and the bank or the buyer dies at any of the ecash crash points of the operation
under way, is started again from its files, and the operation is run again with the
same idempotency keys.

A crash is simulated in-process (agents/runtime/_faults.py ``on_crash``): the point
raises ``Crash``, a BaseException, in the agent that reaches it. In the bank it
escapes the handler (no answer is sent) and takes the whole agent down (its
channels close; the client sees them close); inside the transaction function
(``.applied``) the writer rolls the transaction back first, as a kill leaves it;
after the commit (``.committed``) the commit stands. In the buyer it escapes the
wallet call. ``test_a_simulated_crash_leaves_what_a_kill_leaves`` runs the scenario
of tests/test_ecash_bank_crash.py, which SIGKILLs a bank process, with the kill
simulated, and checks the same books (``books_after``) right after the crash and
after the retries: at that file's default point, ecash.deposit.applied, and two
more by default, at all 12 with SEMPER_SLOW=1 (as the real kill).

Found by the machine: a crash while the wallet refreshes coins a seller was shown
and partly deposited leaves the others fresh, to be offered again as they are
(``test_shown_coins_...``: refused, bank or buyer killed; and the same in the
wallet's reclaim; fixed by W2: such coins are ``shown`` until exchanged, and the
machine crashes at those points too). No money is at stake: the bank takes one deposit per
reference, so the seller cannot deposit the others.

Every example shares one market (its agents start once): the model counts from the
books at the example's start. A failure leaves the books inconsistent for the
examples after it, so Hypothesis may add a Flaky error: read the first one.

After every step: the bank's books balance; ``@ecash-outstanding`` holds the coins
the bank signed and did not take back plus the vouchers not redeemed, by its tables,
by the model, and by the wallet's fresh coins; the bank took no coin twice and took
exactly the coins the wallet counts spent (so a fresh coin of the wallet's was never
seen spent); the buyer was debited once per withdrawal key.
"""

from __future__ import annotations

import os
import secrets
import shutil
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

import pytest
import trio
from cryptography.hazmat.primitives.asymmetric import ed25519
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from market_helpers import DEADLINE, config_of, running
from test_ecash_bank import (
    Clock,
    World,
    bank_config,
    blind_coins,
    outstanding_by_tables,
    unblind,
)
from test_ecash_bank_crash import STEPS, _books, books_after
from test_ecash_bank_crash import prebuilt as prebuilt  # the fixture, shared

from semper.agents import Agent
from semper.agents.components import _ledger
from semper.agents.components._wallet import Wallet
from semper.agents.instruments.ecash import OUTSTANDING
from semper.agents.runtime import _faults
from semper.services import Amount
from semper.services.payment import (
    BANK_REFUND,
    BANK_SERVICE,
    REFUND_ORDER,
    PaymentRequest,
    PaymentResult,
    RefundAnswer,
    RefundOrder,
    RefundRequest,
    RefundResult,
)
from semper.services.payment.ecash import (
    BANK_ECASH_DEPOSIT,
    Coin,
    DepositAnswer,
    DepositRequest,
    Spend,
    blinded_order,
    sign_spend,
)
from semper.services.statements import Statement
from semper.transport import ChannelClosed, RemoteError, TransportError

WITHDRAW_POINTS = ("wallet.withdraw.stored", "wallet.withdraw.answered",
                   *(f"ecash.withdraw.{s}" for s in ("received", "checked", "applied",
                                                     "committed")))
EXCHANGE_POINTS = tuple(f"ecash.exchange.{s}" for s in ("received", "checked", "applied",
                                                        "committed"))
#: The crash points each operation passes (a payment exchanges for change only when
#: no coins sum to its amount: then its exchange points too).
POINTS = {
    "withdraw": WITHDRAW_POINTS,
    "pay": ("wallet.spend.bound", "wallet.exchange.stored", "wallet.exchange.answered",
            *EXCHANGE_POINTS, *(f"ecash.deposit.{s}" for s in ("received", "checked",
                                                               "applied", "committed"))),
    "refuse": ("wallet.exchange.stored", "wallet.exchange.answered", *EXCHANGE_POINTS),
    "refund": ("wallet.refund.stored", "wallet.refund.answered", *EXCHANGE_POINTS),
    "shown": ("wallet.spend.bound", *(f"ecash.deposit.{s}" for s in ("received", "checked",
                                                                    "applied", "committed")),
              "wallet.exchange.stored", "wallet.exchange.answered", *EXCHANGE_POINTS),
}
#: Where a crash still leaves shown coins fresh (the xfail test at the end); left out
#: of the machine's "shown" until the wallet handles them.
KNOWN_GAP: frozenset[str] = frozenset()  # none since W2's ``shown`` coins
POINTS["shown"] = tuple(p for p in POINTS["shown"] if p not in KNOWN_GAP)


def eur(units: int) -> Amount:
    return Amount("EUR", units)


class Crash(BaseException):
    """The agent that reaches the armed crash point dies there (a simulated SIGKILL)."""


class Armed:
    """``_faults.on_crash``: raise Crash at ``point``, once."""

    def __init__(self) -> None:
        self.point: str | None = None
        self.fired = False

    def arm(self, point: str | None) -> None:
        self.point, self.fired = point, False

    def __call__(self, name: str) -> None:
        if name == self.point and not self.fired:
            self.fired = True
            raise Crash(name)


@pytest.fixture
def market(prebuilt: Path, tmp_path: Path) -> Path:
    """A copy of the market whose bank made its keys (tests/test_ecash_bank_crash.py:
    [components.ecash] SETTINGS, coins of 1, 2 and 5)."""
    return Path(shutil.copytree(prebuilt, tmp_path / "market"))


# -- the agents, each restartable -------------------------------------------------------


class Agents:
    """Bank, buyer and seller running in one trio loop; ``restart(name)`` discards one
    (stopped, or dead of a Crash) and starts another on the same files."""

    def __init__(self, market: Path, clock: Clock) -> None:
        self.market, self.clock = market, clock
        self.agents: dict[str, Agent] = {}
        self.done: dict[str, trio.Event] = {}
        self.stops: dict[str, trio.Event] = {}
        self.crashed: list[str] = []
        self.nursery: trio.Nursery | None = None

    def config(self, name: str) -> Any:
        return bank_config(self.market) if name == "bank" else config_of(self.market, name)

    async def _run(self, name: str, *, task_status: trio.TaskStatus[None]) -> None:
        stop, done = trio.Event(), trio.Event()
        self.stops[name], self.done[name] = stop, done
        try:
            async with running(Agent(self.config(name), clock=self.clock)) as agent:
                self.agents[name] = agent
                task_status.started()
                await stop.wait()
        except* Crash:
            self.crashed.append(name)
        finally:
            done.set()

    async def start(self, name: str) -> None:
        assert self.nursery is not None
        await self.nursery.start(self._run, name)

    async def restart(self, name: str, *, crashed: bool = False) -> None:
        """Start ``name`` again: once it died of its Crash (``crashed``: not stopped,
        so that a stop cannot race the Crash out of its way), or stopped now (the
        buyer, whose crash the test's wallet call raised: discarded as it is)."""
        if not crashed:
            self.stops[name].set()
        await self.done[name].wait()
        await self.start(name)

    @property
    def bank(self) -> Agent:
        return self.agents["bank"]

    @property
    def buyer(self) -> Agent:
        return self.agents["buyer"]

    @property
    def seller(self) -> Agent:
        return self.agents["seller"]

    @property
    def wallet(self) -> Wallet:
        return self.buyer.component(Wallet)


@contextmanager
def live_agents(market: Path) -> Iterator[tuple[Agents, Callable[..., Any]]]:
    """The agents in a trio loop of their own thread, for the (synchronous) state
    machine: ``call(async_fn, *args)`` runs one step there, bounded by DEADLINE."""
    agents = Agents(market, Clock())
    ready = threading.Event()
    box: dict[str, Any] = {}

    async def serve() -> None:
        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            agents.nursery = nursery
            for name in ("bank", "buyer", "seller"):
                await agents.start(name)
            box.update(token=trio.lowlevel.current_trio_token(), stop=stop)
            ready.set()
            await stop.wait()
            for name in ("seller", "buyer", "bank"):
                agents.stops[name].set()

    def main() -> None:
        try:
            trio.run(serve)
        except BaseException as exc:  # surfaced by the test thread
            box["error"] = exc
        finally:
            ready.set()

    thread = threading.Thread(target=main, name="ecash-machine-agents")
    thread.start()
    try:
        assert ready.wait(DEADLINE * 3) and "error" not in box, box.get("error")

        def call(fn: Callable[..., Any], *args: Any) -> Any:
            async def bounded() -> Any:
                with trio.fail_after(DEADLINE):
                    return await fn(*args)

            return trio.from_thread.run(bounded, trio_token=box["token"])

        yield agents, call
    finally:
        if "stop" in box:
            trio.from_thread.run_sync(box["stop"].set, trio_token=box["token"])
        thread.join(DEADLINE * 3)
        assert not thread.is_alive(), box.get("error")
        assert "error" not in box, box["error"]


# -- the operations: each is run again, with the same keys, after a crash ------------------


@dataclass
class Paid:
    key: str
    units: int
    deposited: Statement | None = None
    refunded: int = 0


async def withdraw(a: Agents, units: int, key: str) -> None:
    await a.wallet.withdraw(eur(units), key)


def payment(units: int, key: str) -> PaymentRequest:
    return PaymentRequest(payee="seller", amount=eur(units), reference=key.encode(),
                          idempotency_key=key)


async def deposit(a: Agents, spends: Any, reference: bytes, amount: Amount, key: str
                  ) -> DepositAnswer:
    """The seller deposits what it was paid (its side of the module, by hand)."""
    return DepositAnswer.from_wire(await a.seller.request(
        "bank", BANK_SERVICE, BANK_ECASH_DEPOSIT, DepositRequest(
            spends=tuple(Spend.from_wire(s) if isinstance(s, dict) else s for s in spends),
            reference=reference, amount=amount, idempotency_key=key).to_wire()))


async def pay(a: Agents, paid: Paid) -> None:
    """Coins bound to the payment (exchanged for change first if need be), deposited
    by the seller, and counted spent by the wallet: each step idempotent by key."""
    request = payment(paid.units, paid.key)
    spends = await a.wallet.spend(request)
    answer = await deposit(a, spends, request.reference, request.amount, paid.key)
    await a.wallet.settled(request, PaymentResult(
        module="ecash", payer="buyer", payee="seller", amount=request.amount,
        reference=request.reference, settlement=answer.deposited,
        bank_certificate=answer.bank_certificate))
    paid.deposited = answer.deposited


async def refuse(a: Agents, paid: Paid, bound: list[bool]) -> None:
    """The seller refused the payment before depositing it: the coins shown are
    exchanged for new ones. ``bound`` is the caller's memory that spend returned (a
    crash after it must not bind other coins to the key)."""
    request = payment(paid.units, paid.key)
    if not bound[0]:
        await a.wallet.spend(request)
        bound[0] = True
    await a.wallet.refused(request)
    await a.wallet.finish_pending()  # the next use of the wallet finishes an exchange


async def shown(a: Agents, units: int, key: str, part: int, progress: dict[str, Any], *,
                refuse: bool = True) -> None:
    """The seller, shown coins for ``units``, deposits some of them (``part``: how
    many, modulo their number) and says it refused the payment: the wallet counts
    those spent and exchanges the others, which the seller also holds spends of.
    ``progress`` is the caller's memory of what returned (the spends, the deposit)."""
    request = payment(units, key)
    if "spends" not in progress:
        progress["spends"] = await a.wallet.spend(request)
    spends = [Spend.from_wire(s) for s in progress["spends"]]
    taken = spends[:1 + (part - 1) % len(spends)]
    if "deposited" not in progress:
        values = await a.buyer.database.read(lambda c: [c.execute(
            "SELECT value FROM ecash_coins WHERE coin_key = ?", (s.coin.coin_key,)
        ).fetchone()[0] for s in taken])
        answer = await deposit(a, taken, request.reference, eur(sum(values)), key)
        progress["deposited"] = Paid(key, sum(values), answer.deposited)
    if not refuse:  # the seller vanished instead
        return
    await a.wallet.refused(request)
    await a.wallet.finish_pending()


async def refund(a: Agents, paid: Paid, units: int, key: str) -> None:
    """The seller refunds ``units`` of ``paid`` (the bank's voucher), which the wallet
    redeems into new coins."""
    assert paid.deposited is not None
    body = RefundOrder(original=paid.deposited.digest, payer="seller", payee="buyer",
                       amount=eur(units), reason="returned", idempotency_key=key)
    order = a.seller.context.sign(REFUND_ORDER, body.to_body())
    answer = RefundAnswer.from_wire(await a.seller.request(
        "bank", BANK_SERVICE, BANK_REFUND, RefundRequest(refund_order=order).to_wire()))
    await a.wallet.refunded(RefundResult(
        original=paid.deposited.digest, payer="seller", payee="buyer", amount=eur(units),
        reason="returned", confirmation=answer.confirmation,
        bank_certificate=answer.bank_certificate))


async def spend_again(a: Agents, coin_key: bytes, reference: bytes) -> None:
    """A coin the wallet spent, spent again (its key signs another order) and
    deposited by the seller."""
    secret, key_id, prefix, signature, value = await a.buyer.database.read(
        lambda c: c.execute("SELECT secret, key_id, prefix, signature, value FROM ecash_coins"
                            " WHERE coin_key = ?", (coin_key,)).fetchone())
    spend = sign_spend(ed25519.Ed25519PrivateKey.from_private_bytes(secret),
                       Coin(key_id=key_id, coin_key=coin_key, prefix=prefix,
                            signature=signature),
                       purpose="payment", bank="bank", payee="seller", reference=reference,
                       amount=eur(value))
    await deposit(a, [spend], reference, eur(value), f"again-{secrets.token_hex(8)}")


# -- what is checked after every step ----------------------------------------------------


async def bank_state(a: Agents) -> dict[str, Any]:
    def read(c: Any) -> dict[str, Any]:
        _ledger.check_books(c)  # postings, entries, no overdraft, customers == minted
        got: dict[str, Any] = {h: _ledger.balances(c, h).get("EUR", 0)
                               for h in ("buyer", "seller", OUTSTANDING)}
        got["by_tables"] = outstanding_by_tables(c)
        spent = [k for (k,) in c.execute("SELECT coin_key FROM ecash_spent")]
        got["spent"] = set(spent)
        got["spent_rows"] = len(spent)
        got["vouchers"] = c.execute("SELECT coalesce(sum(amount), 0) FROM ecash_vouchers"
                                    " WHERE redeemed IS NULL").fetchone()[0]
        got["withdrawals"] = {k for (k,) in c.execute(
            "SELECT idempotency_key FROM ecash_withdrawals WHERE holder = 'buyer'")}
        got["withdrawn_entries"] = c.execute(
            "SELECT count(*), count(DISTINCT reference) FROM ledger_entries"
            " WHERE kind = 'ecash.withdrawn'").fetchone()
        got["withdrawal_rows"] = c.execute(
            "SELECT count(*) FROM ecash_withdrawals").fetchone()[0]
        return got

    return await a.bank.database.read(read)


async def wallet_state(a: Agents) -> dict[str, Any]:
    def read(c: Any) -> dict[str, Any]:
        by_state: dict[str, set[bytes]] = {}
        value: dict[str, int] = {}
        for key, state, units in c.execute("SELECT coin_key, state, value FROM ecash_coins"):
            by_state.setdefault(state, set()).add(key)
            value[state] = value.get(state, 0) + units
        pending = c.execute("SELECT count(*) FROM ecash_batches WHERE state = 'pending'"
                            ).fetchone()[0]
        return {"coins": by_state, "value": value, "pending": pending}

    return await a.buyer.database.read(read)


# -- the machine -------------------------------------------------------------------------


class EcashCrashes(RuleBasedStateMachine):
    """Withdrawals, payments, refused payments, refunds and double spends; and any
    of them with the bank or the buyer killed at one of its crash points, restarted,
    and run again under the same keys."""

    agents: ClassVar[Agents]
    call: ClassVar[Callable[..., Any]]
    armed: ClassVar[Armed]

    def __init__(self) -> None:
        super().__init__()
        self.start = self.call(bank_state, self.agents)
        self.start_wallet = self.call(wallet_state, self.agents)
        self.withdrawn: dict[str, int] = {}  # key -> units
        self.paid: list[Paid] = []
        self.refunds = 0
        self.shown_asked = 0  # the amounts of payments shown, then partly deposited
        self.shown_deposited = 0  # what of them was deposited (the wallet's choice)
        self.count = 0

    def fresh(self, what: str) -> str:
        self.count += 1
        return f"{what}-{secrets.token_hex(6)}-{self.count}"

    def held(self) -> int:
        """At most the value of the coins this example gave the wallet, by the model
        alone (what amounts are drawn up to: the wallet's coins from the examples
        before are not counted, and a shown payment counts whole)."""
        return (sum(self.withdrawn.values()) - sum(p.units for p in self.paid if p.deposited)
                - self.shown_asked + self.refunds)

    # -- running an operation, crashed or not

    def run(self, point: str | None, op: Callable[..., Any], *args: Any) -> None:
        """``op(agents, *args)``; with ``point``, the agent reaching it dies there, is
        started again on its files, and ``op`` runs again with the same arguments."""
        self.armed.arm(point)
        crashed = len(self.agents.crashed)
        try:
            self.call(op, self.agents, *args)
        except (Crash, TransportError) as exc:
            assert point is not None and self.armed.fired, exc
            dead = "bank" if point.startswith("ecash.") else "buyer"
            assert isinstance(exc, Crash) == (dead == "buyer"), exc
            self.armed.arm(None)
            self.call(partial(self.agents.restart, dead, crashed=dead == "bank"))
            # The bank died of it (its agent ended with the Crash); the buyer's wallet
            # call raised it, and the agent is discarded by the restart.
            assert self.agents.crashed[crashed:] == (["bank"] if dead == "bank" else []), (
                self.agents.crashed, crashed)
            event(f"crashed at {point}")
            self.call(op, self.agents, *args)
        else:
            if point is not None and self.armed.fired:
                # The agent died all the same, but the operation did not fail: the
                # wallet keeps coins it could not refresh ``shown`` for its next use
                # and says so in its log. Start the bank again and run it once more.
                dead = "bank" if point.startswith("ecash.") else "buyer"
                self.armed.arm(None)
                self.call(partial(self.agents.restart, dead, crashed=dead == "bank"))
                event(f"crashed at {point}, the operation went on")
                self.call(op, self.agents, *args)
            elif point is not None:
                event(f"{point} not reached")
        finally:
            self.armed.arm(None)

    def withdraw_op(self, point: str | None, units: int) -> None:
        key = self.fresh("w")
        self.run(point, withdraw, units, key)
        self.withdrawn[key] = units

    def pay_op(self, point: str | None, units: int) -> None:
        paid = Paid(self.fresh("p"), units)
        self.run(point, pay, paid)
        self.paid.append(paid)

    def refuse_op(self, point: str | None, units: int) -> None:
        self.run(point, refuse, Paid(self.fresh("n"), units), [False])

    def shown_op(self, point: str | None, units: int, part: int) -> None:
        progress: dict[str, Any] = {}
        self.run(point, shown, units, self.fresh("s"), part, progress)
        self.shown_asked += units
        self.shown_deposited += progress["deposited"].units
        # Every coin the seller was shown is spent now: deposited, or exchanged.
        keys = [Spend.from_wire(s).coin.coin_key for s in progress["spends"]]
        states = self.call(self.agents.buyer.database.read, lambda c: {c.execute(
            "SELECT state FROM ecash_coins WHERE coin_key = ?", (k,)).fetchone()[0]
            for k in keys})
        assert states == {"spent"}, states

    def refund_op(self, point: str | None, paid: Paid, units: int) -> None:
        self.run(point, refund, paid, units, self.fresh("r"))
        paid.refunded += units
        self.refunds += units

    def refundable(self) -> list[Paid]:
        return [p for p in self.paid if p.refunded < p.units]

    # -- rules

    @initialize(units=st.integers(1, 20))
    def first_withdrawal(self, units: int) -> None:
        self.withdraw_op(None, units)

    @rule(units=st.integers(1, 20))
    def withdraw_(self, units: int) -> None:
        self.withdraw_op(None, units)

    @precondition(lambda self: self.held() > 0)
    @rule(data=st.data())
    def pay_(self, data: st.DataObject) -> None:
        self.pay_op(None, data.draw(st.integers(1, self.held())))

    @precondition(lambda self: self.held() > 0)
    @rule(data=st.data())
    def refuse_(self, data: st.DataObject) -> None:
        self.refuse_op(None, data.draw(st.integers(1, self.held())))

    @precondition(lambda self: self.held() > 0)
    @rule(data=st.data(), part=st.integers(1, 8))
    def shown_(self, data: st.DataObject, part: int) -> None:
        self.shown_op(None, data.draw(st.integers(1, self.held())), part)

    @precondition(lambda self: self.refundable())
    @rule(data=st.data())
    def refund_(self, data: st.DataObject) -> None:
        paid = data.draw(st.sampled_from(self.refundable()))
        self.refund_op(None, paid, data.draw(st.integers(1, paid.units - paid.refunded)))

    @precondition(lambda self: self.paid)
    @rule(data=st.data())
    def double_spend(self, data: st.DataObject) -> None:
        """A coin the wallet paid with, spent again for another order: refused with
        the first spend as evidence, nothing moved."""
        paid = data.draw(st.sampled_from(self.paid))
        keys = self.call(self.agents.buyer.database.read, lambda c: [k for (k,) in c.execute(
            "SELECT coin_key FROM ecash_coins WHERE spend = ? ORDER BY coin_key",
            (paid.key,))])
        before = self.call(bank_state, self.agents)
        with pytest.raises(RemoteError) as refused:
            self.call(spend_again, self.agents, keys[data.draw(st.integers(0, 63)) % len(keys)],
                      self.fresh("again").encode())
        assert refused.value.code == "ecash.double_spent", refused.value
        assert refused.value.detail["first"]  # the evidence: the first spend
        assert self.call(bank_state, self.agents) == before

    # crash(point, operation): one rule per operation, so that crashes are common.

    def point(self, data: st.DataObject, operation: str) -> str:
        return data.draw(st.sampled_from(POINTS[operation]), label="point")

    @rule(data=st.data(), units=st.integers(1, 20))
    def crash_withdraw(self, data: st.DataObject, units: int) -> None:
        self.withdraw_op(self.point(data, "withdraw"), units)

    @precondition(lambda self: self.held() > 0)
    @rule(data=st.data())
    def crash_pay(self, data: st.DataObject) -> None:
        self.pay_op(self.point(data, "pay"), data.draw(st.integers(1, self.held())))

    @precondition(lambda self: self.held() > 0)
    @rule(data=st.data())
    def crash_refuse(self, data: st.DataObject) -> None:
        self.refuse_op(self.point(data, "refuse"), data.draw(st.integers(1, self.held())))

    @precondition(lambda self: self.held() > 0)
    @rule(data=st.data(), part=st.integers(1, 8))
    def crash_shown(self, data: st.DataObject, part: int) -> None:
        self.shown_op(self.point(data, "shown"), data.draw(st.integers(1, self.held())), part)

    @precondition(lambda self: self.refundable())
    @rule(data=st.data())
    def crash_refund(self, data: st.DataObject) -> None:
        paid = data.draw(st.sampled_from(self.refundable()))
        self.refund_op(self.point(data, "refund"), paid,
                       data.draw(st.integers(1, paid.units - paid.refunded)))

    # -- after every step

    @invariant()
    def books_and_coins(self) -> None:
        bank = self.call(bank_state, self.agents)
        wallet = self.call(wallet_state, self.agents)
        withdrawn = sum(self.withdrawn.values())
        deposited = sum(p.units for p in self.paid if p.deposited) + self.shown_deposited
        # The books by the model: the buyer debited once per withdrawal key.
        assert bank["buyer"] - self.start["buyer"] == -withdrawn
        assert bank["seller"] - self.start["seller"] == deposited - self.refunds
        assert (bank[OUTSTANDING] - self.start[OUTSTANDING]
                == withdrawn - deposited + self.refunds)
        assert set(self.withdrawn) <= bank["withdrawals"]
        assert (len(bank["withdrawals"]) - len(self.start["withdrawals"])
                == len(self.withdrawn))
        count, distinct = bank["withdrawn_entries"]
        assert count == distinct == bank["withdrawal_rows"]  # one debit per withdrawal
        # @ecash-outstanding: by the bank's tables, and by what the wallet holds (every
        # step finishes: nothing pending, no coin half spent, every voucher redeemed).
        assert bank[OUTSTANDING] == bank["by_tables"]
        assert bank["vouchers"] == 0
        assert wallet["pending"] == 0
        assert set(wallet["coins"]) <= {"fresh", "spent"}, wallet["coins"].keys()
        assert wallet["value"].get("fresh", 0) == bank[OUTSTANDING]
        assert (wallet["value"].get("fresh", 0) - self.start_wallet["value"].get("fresh", 0)
                == withdrawn - deposited + self.refunds)
        # No coin taken twice; the bank took exactly the coins the wallet gave up,
        # and never one the wallet holds as fresh.
        assert bank["spent_rows"] == len(bank["spent"])
        assert bank["spent"] == wallet["coins"].get("spent", set())
        assert not bank["spent"] & wallet["coins"].get("fresh", set())


def test_ecash_with_crashes_keeps_the_books(market: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    armed = Armed()
    monkeypatch.setattr(_faults, "on_crash", armed)
    with live_agents(market) as (agents, call):
        EcashCrashes.agents, EcashCrashes.call, EcashCrashes.armed = (
            agents, staticmethod(call), armed)
        run_state_machine_as_test(EcashCrashes, settings=settings(
            max_examples=10, stateful_step_count=12, deadline=None,
            suppress_health_check=[HealthCheck.too_slow]))


# -- the simulation against a real kill --------------------------------------------------


#: The points simulated by default (the real kill's own, a commit whose answer is lost,
#: a crash before the transaction);
#: all 12 with SEMPER_SLOW=1 or ``-m slow`` (~0.8 s each).
SIMULATED = ("ecash.deposit.applied", "ecash.deposit.committed", "ecash.exchange.checked")


@pytest.mark.parametrize("point", [
    pytest.param(f"ecash.{op}.{step}",
                 marks=() if f"ecash.{op}.{step}" in SIMULATED else pytest.mark.slow)
    for op in ("withdraw", "deposit", "exchange") for step in STEPS])
async def test_a_simulated_crash_leaves_what_a_kill_leaves(
        market: Path, point: str, monkeypatch: pytest.MonkeyPatch,
        request: pytest.FixtureRequest) -> None:
    """The scenario of tests/test_ecash_bank_crash.py (which SIGKILLs a bank process
    at the point) with the kill simulated: the client sees its channel close, the
    bank dies of it, and its files then hold what the kill leaves (``books_after``:
    the request applied exactly at ``.committed``); a bank started on them answers
    the retries alike, and the money moved once."""
    if "slow" in request.node.keywords and not (
            os.environ.get("SEMPER_SLOW") or "slow" in (request.config.option.markexpr or "")):
        pytest.skip("another crash point: SEMPER_SLOW=1 or -m slow")
    armed = Armed()
    monkeypatch.setattr(_faults, "on_crash", armed)
    op = point.split(".")[1]
    clock = Clock()
    agents = Agents(market, clock)

    async def killed(request: Callable[[], Any]) -> None:
        armed.arm(point)
        with pytest.raises(ChannelClosed):
            await request()
        await agents.done["bank"].wait()  # it died of the Crash, unstopped
        assert agents.crashed == ["bank"] and armed.fired
        armed.arm(None)
        assert _books(market) == books_after(op, done=point.endswith(".committed"))
        await agents.start("bank")
        w.bank = agents.bank

    with trio.fail_after(DEADLINE * 3):
        async with trio.open_nursery() as nursery:
            agents.nursery = nursery
            for name in ("bank", "buyer", "seller"):
                await agents.start(name)
            w = World(agents.bank, agents.buyer, agents.seller, clock)
            keys = await w.keys()
            pending = blind_coins([keys[5], keys[2], keys[1]])
            if op == "withdraw":
                await killed(lambda: w.ask_withdraw(pending, "w1"))
            answer = await w.ask_withdraw(pending, "w1")
            assert await w.ask_withdraw(pending, "w1") == answer
            coins = unblind(pending, answer.blind_signatures)
            if op == "deposit":
                await killed(lambda: w.pay(coins))
                deposited = await w.pay(coins)
                assert await w.pay(coins) == deposited
            if op == "exchange":
                new = blind_coins([keys[2], keys[2], keys[2], keys[1], keys[1]])
                order = blinded_order([p.asked for p in new])
                spends = [h.spend(purpose="exchange", payee="bank", reference=order)
                          for h in coins]
                await killed(lambda: w.exchange(spends, new))
                exchanged = await w.exchange(spends, new)
                assert await w.exchange(spends, new) == exchanged
                assert len(unblind(new, exchanged.blind_signatures)) == 5
            await w.books()  # balanced, outstanding as the tables say
            for name in ("seller", "buyer", "bank"):
                agents.stops[name].set()
    assert _books(market) == books_after(op, done=True)
    assert agents.crashed == ["bank"]


# -- found by the machine ----------------------------------------------------------------


@pytest.mark.parametrize(("how", "point"), [
    ("refused", "ecash.exchange.received"), ("refused", "wallet.exchange.stored"),
    ("reclaim", "wallet.exchange.stored")])
async def test_shown_coins_refreshed_through_a_crash_are_not_fresh_again(
        market: Path, how: str, point: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A seller shown three coins deposits one and says it refused the payment (or
    vanishes: the wallet's housekeeping reclaims the payment an hour later); the
    wallet's exchange of the coins (the bank refuses it: one is spent) is cut by a
    crash of the bank (instance) or of the buyer (members), and the refusal (or
    reclaim) and the next use of the wallet run again: every coin shown ends spent
    (deposited, or exchanged for new ones). None may be fresh: the seller cannot
    deposit them (one payment per reference), but it saw them, and a coin shown is
    never offered again as it is (Wallet.refused) lest two payments be linked."""
    armed = Armed()
    monkeypatch.setattr(_faults, "on_crash", armed)
    clock = Clock()
    agents = Agents(market, clock)
    bank_dies = point.startswith("ecash.")

    async def again(progress: dict[str, Any]) -> None:
        if how == "refused":
            await shown(agents, 8, "s-shown", 1, progress)  # the seller takes one
        else:
            await agents.wallet.reclaim()

    with trio.fail_after(DEADLINE * 3):
        async with trio.open_nursery() as nursery:
            agents.nursery = nursery
            for name in ("bank", "buyer", "seller"):
                await agents.start(name)
            await withdraw(agents, 8, "w-shown")  # coins of 5, 2 and 1
            progress: dict[str, Any] = {}
            if how == "reclaim":  # shown, one deposited, then nothing for an hour
                await shown(agents, 8, "s-shown", 1, progress, refuse=False)
                clock.ms += agents.wallet.reclaim_after_ms + 1
            armed.arm(point)
            with pytest.raises((Crash, TransportError)):
                await again(progress)
            assert armed.fired
            armed.arm(None)
            await agents.restart("bank" if bank_dies else "buyer", crashed=bank_dies)
            await again(progress)
            keys = [Spend.from_wire(s).coin.coin_key for s in progress["spends"]]
            assert len(keys) == 3
            states = await agents.buyer.database.read(lambda c: [c.execute(
                "SELECT state FROM ecash_coins WHERE coin_key = ?", (k,)).fetchone()[0]
                for k in keys])
            bank, wallet = await bank_state(agents), await wallet_state(agents)
            for name in ("seller", "buyer", "bank"):
                agents.stops[name].set()
    assert states == ["spent"] * 3
    assert bank["spent"] == wallet["coins"]["spent"] and len(bank["spent"]) == 3
    assert wallet["value"]["fresh"] == 8 - progress["deposited"].units == bank[OUTSTANDING]
