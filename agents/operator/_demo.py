"""The local market demo: real processes, real TLS, money moving through a real bank.

``run_demo`` makes a market in a temporary folder (``market init``: the bank opens EUR
accounts for buyer and seller and funds the buyer) and starts every agent as its own
``semper agent run`` process: ca, bank, seller, buyer, notary, arbiter (the seller with
``SEMPER_CRASH_AT=stream.seller.chunk:100``: it dies when it is to send chunk 100 of
a stream, and nothing streams before step 3). Then, in order:

1. Every agent reaches every other. The demo opens each channel itself, holding the
   dialling agent's own key and certificate (what ``semper ping`` does, without
   starting twenty interpreters), to the target's running process over mutually
   authenticated TLS 1.3, and times one request.
2. Commerce runs through the real command line, each command a process of its own
   acting as the buyer (or the bank's operator) over its own channels:
   ``semper bank accounts --json`` (balances before), ``semper catalogue --json``,
   one ``semper buy ... --json`` per entry of ``PURCHASES`` (by transfer and by
   cheque), ``semper refund`` of one of them, and one bought again with the same
   ``--idempotency-key`` between two ``semper wallet --json``: the same receipt comes
   back and the buyer's balance does not move. Then ecash and card (issue 11):
   ``semper wallet withdraw EUR:20.00`` (one coin, blindly signed; the buyer's account
   debited exactly that, the bank's ``@ecash-outstanding`` credited), ``semper buy
   --pay ecash`` (the wallet exchanges its coin at the bank for change first) and
   ``semper refund`` of it (back as fresh coins), ``semper buy --pay card`` and its
   ``semper refund`` (a credit to the card's account); ``semper bank accounts --json``
   after each step: the books balance and minted = accounts + ecash outstanding, and
   at the end the ecash outstanding is what the buyer's wallet holds.
3. A streamed purchase paid by purse (issue 10): ``semper buy --item course-004 --pay
   purse --output FILE --json`` (257 chunks, 32 MiB): the seller dies at chunk 100 and
   the buyer exits non-zero with one line naming its key; its purse (``semper purse
   list --offline``) shows 101 paywords spent for the 100 chunks it holds; the seller
   is started again normally and the same command resumes at chunk 100
   (``resumed_from``), the file's SHA-256 the offer's ``content_digest``. While the
   rest goes on, ``semper purse list`` is asked until it shows the chain redeemed
   (within 10 s of the stream's end) for exactly what was spent.
   Beside steps 2 and 3 and after them, the notary's services and the arbiter (issue 9), each
   command a process again:
   ``semper timestamp`` of a file, its token verified offline with the market root
   alone (``timestamp verify``) and refused for a changed file; the buyer's evidence
   bundle of a purchase (``archive export``) judged offline (``dispute check``: every
   obligation met) and filed with the arbiter (``dispute file``: its signed verdicts
   the same); certified mail to the seller (``mail send``: delivered; ``mail inbox``
   and ``mail read`` on the seller's side: the same bytes); a contract approved by the
   seller and signed by the exchange (``contract approve``, ``contract sign``); then
   the seller stopped and started with ``SEMPER_CRASH_AT=contract.responder.sent_m2``:
   it dies after its commitment and the contract is signed through the notary; the
   seller started again (armed with ``fair.seller.paid``) shows the same contract
   (``contract show``); ``semper buy --fair`` from it: it dies once paid and the buyer
   gets the goods through the notary, matching the offer's digest; the seller is
   started again normally.
4. ``semper bank accounts --json`` again. Each account must have changed by exactly
   what the payments (the fair purchase's and the purse's too) and the refund the
   commands reported imply; beyond the other payments the seller got exactly chunks x
   price_per_chunk by purse and the buyer paid that, the bank's ``@purse-reserved``
   holding nothing; the total over all customer accounts must not have changed, and
   the bank must report balanced books.
5. Every agent is stopped with SIGTERM and must exit 0.

Each of these is a ``Check``; the demo passes only if every one holds. A
``Reporter`` hears of each step as it happens, so the command line can show them live.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import trio

from semper.agents.instruments.card import HELD as CARD_HELD
from semper.agents.instruments.ecash import OUTSTANDING as ECASH_OUTSTANDING
from semper.agents.instruments.purse import RESERVED as PURSE_RESERVED
from semper.agents.operator._market import init_market
from semper.agents.runtime._agent import Agent
from semper.agents.runtime._config import AgentConfig
from semper.services import Amount
from semper.services.disputes._purchase import DELIVERED, PAID, RECEIPTED

__all__ = ["CONTRACTS", "DISPUTED", "FAIR", "INSTRUMENTS", "PURCHASES", "REFUND", "REPLAY",
           "STREAM", "STREAM_AT", "WITHDRAW", "Check", "DemoResult", "Reporter", "run_demo"]

READY_TIMEOUT = 30.0
PING_TIMEOUT = 10.0
COMMAND_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0

#: What the buyer buys: (idempotency key, SKU, instrument), in this order.
PURCHASES: Final = (
    ("demo-guide", "guide-001", "transfer"),
    ("demo-map", "map-002", "cheque"),
    ("demo-song", "song-003", "transfer"),
)
#: The purchase refunded (its offer's terms allow refunds).
REFUND: Final = "demo-guide"
#: The purchase bought again with the same idempotency key.
REPLAY: Final = "demo-map"
#: The purchase whose evidence bundle the buyer exports, checks and files.
DISPUTED: Final = "demo-song"
#: The fair purchase: (idempotency key, SKU, instrument), from a seller that dies
#: once paid, before it releases the key.
FAIR: Final = ("demo-fair", "map-002", "transfer")
#: The contracts the buyer signs with the seller: by the exchange, then through the
#: notary (the seller dies right after sending its commitment).
CONTRACTS: Final = (
    b"The seller delivers the field guide's second edition to the buyer by 1 March.\n",
    b"The seller keeps the buyer's map up to date for a year, at no charge.\n",
)
#: The certified mail the buyer sends the seller.
MAIL: Final = (b"Dear seller,\nplease take this as notice that the map I bought "
               b"(order demo-map) is a year out of date.\n")
#: The file the buyer timestamps with the notary.
TIMESTAMPED: Final = b"Invoice 2026-001: seller to buyer, EUR 12.50, due in 30 days.\n"
#: Where the seller dies (protocol.md 10.6).
CONTRACT_CRASH: Final = "contract.responder.sent_m2"
FAIR_CRASH: Final = "fair.seller.paid"
#: The streamed purchase paid by purse (idempotency key, SKU): its seller dies at
#: chunk ``STREAM_AT`` first, and the same command resumes it there.
STREAM: Final = ("demo-stream", "course-004")
STREAM_AT: Final = 100
STREAM_CRASH: Final = f"stream.seller.chunk:{STREAM_AT}"
#: Seconds: the seller redeems a chain within this of the stream's last chunk (issue 10).
REDEEM_TIMEOUT = 10.0
#: Seconds between two ``semper purse list`` while waiting for the redemption: nothing
#: tells the buyer's side of it, so the demo asks, within REDEEM_TIMEOUT.
REDEEM_POLL = 0.25

#: Ecash and card (issue 11): the buyer withdraws coins worth WITHDRAW (one coin of
#: EUR 20.00, so paying needs change: an exchange at the bank), then buys and has
#: refunded one item by each instrument: (idempotency key, SKU, instrument).
WITHDRAW: Final = ("demo-withdraw", Amount("EUR", 2000))
INSTRUMENTS: Final = (
    ("demo-ecash", "map-002", "ecash"),
    ("demo-card", "guide-001", "card"),
)

Account = tuple[str, str]  # (holder, currency)


@dataclass(frozen=True, slots=True)
class Check:
    """One thing the demo showed, or failed to."""

    what: str
    ok: bool
    detail: str = ""


@dataclass
class DemoResult:
    agents: list[str]
    folder: Path | None = None
    pings: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    exit_codes: dict[str, int | None] = field(default_factory=dict)
    #: What ``semper bank accounts --json`` said before and after the purchases.
    before: dict[Account, int] = field(default_factory=dict)
    after: dict[Account, int] = field(default_factory=dict)
    #: The change of each account that the payments and refunds reported imply.
    expected: dict[Account, int] = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(check.ok for check in self.checks)

    @property
    def failures(self) -> list[Check]:
        return [check for check in self.checks if not check.ok]


class Reporter:
    """Hears of the demo as it runs; this one ignores it all."""

    def doing(self, text: str) -> None:
        """A step starts."""

    def checked(self, check: Check) -> None:
        """A step ended, well or not."""

    def pinged(self, result: DemoResult) -> None:
        """Every agent has tried to reach every other: ``result.pings`` is complete."""


def _semper(*args: str) -> list[str]:
    return [sys.executable, "-m", "semper.agents.cli", *args]


def _env(crash_at: str | None = None) -> dict[str, str]:
    """The environment of a child process: ours, dying at ``crash_at`` if given (and
    never at a crash point the demo's own environment happens to name)."""
    env = {k: v for k, v in os.environ.items() if k != "SEMPER_CRASH_AT"}
    if crash_at is not None:
        env["SEMPER_CRASH_AT"] = crash_at
    return env


def _describe(exc: BaseException) -> str:
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    code = getattr(exc, "code", None)
    if isinstance(code, str):
        return f"{code}: {getattr(exc, 'message', exc)}"
    if isinstance(exc, trio.TooSlowError):
        return "timed out"
    return f"{type(exc).__name__}: {exc}"


def _money(units: int, currency: str, *, sign: bool = False) -> str:
    text = str(Amount(currency, units))
    return text.replace(f"{currency} ", f"{currency} +", 1) if sign and units > 0 else text


def _changes(changes: dict[Account, int]) -> str:
    return ", ".join(f"{holder} {_money(units, currency, sign=True)}"
                     for (holder, currency), units in sorted(changes.items())) or "none"


@dataclass
class _Command:
    argv: list[str]
    code: int | None
    stdout: str
    stderr: str

    @property
    def error(self) -> str:
        """The command's one-line reason (``semper: <code>: ...``), or its exit code."""
        if self.code is None:
            return f"did not finish in {COMMAND_TIMEOUT:.0f} s"
        lines = [line for line in self.stderr.splitlines() if line.strip()]
        return lines[-1].strip() if lines else f"exit code {self.code}"


class _Demo:
    def __init__(self, market: Path, configs: list[AgentConfig], reporter: Reporter) -> None:
        self.market = market
        self.configs = configs
        self.reporter = reporter
        self.result = DemoResult(agents=[c.id for c in configs], folder=market)
        self.processes: dict[str, trio.Process] = {}
        self.by_role = {c.role: c for c in reversed(configs)}  # the first of each role
        self.by_id = {c.id: c for c in configs}
        self.files = market.parent / "files"  # what the demo timestamps, signs, exports
        self.files.mkdir(exist_ok=True)
        self.nursery: trio.Nursery | None = None
        #: The crash point each agent's current process was started with.
        self.crash_at: dict[str, str | None] = {}
        #: What commerce bought (idempotency key -> ``buy --json``), and whether the
        #: refund went through: the books are checked against these at the end.
        self.bought: dict[str, dict[str, Any]] = {}
        self.refunded = False
        #: The purchases by ecash and card (``INSTRUMENTS``), those refunded, and the
        #: minor units withdrawn as coins (None: the withdrawal failed).
        self.paid: dict[str, dict[str, Any]] = {}
        self.refunded_keys: list[str] = []
        self.withdrawn: int | None = None
        self.minted_before: dict[str, int] | None = None
        #: The seller's offers, from ``semper catalogue --json``.
        self.offers: dict[str, dict[str, Any]] = {}
        #: What the streamed purchase printed once done (``buy --json``), or None, and
        #: when (trio's clock) it was.
        self.streamed: dict[str, Any] | None = None
        self.stream_ended = 0.0

    def check(self, what: str, ok: bool, detail: str = "") -> bool:
        check = Check(what, ok, detail)
        self.result.checks.append(check)
        self.reporter.checked(check)
        return ok

    def config(self, role: str) -> str:
        path = self.by_role[role].path
        assert path is not None
        return str(path)

    def id(self, role: str) -> str:
        return self.by_role[role].id

    # -- processes ------------------------------------------------------------------

    async def start_all(self, nursery: trio.Nursery) -> bool:
        self.nursery = nursery
        names = ", ".join(self.result.agents)
        self.reporter.doing(f"starting {names}: one `semper agent run` process each (the "
                            f"seller with SEMPER_CRASH_AT={STREAM_CRASH})")
        ready: dict[str, str] = {}
        # The seller dies at its first stream's chunk STREAM_AT (``stream``): nothing
        # before streams, and starting it so saves a restart.
        self.crash_at[self.id("seller")] = STREAM_CRASH
        # The CA agent first: the others publish their contact cards to it as they start.
        first = [c for c in self.configs if c.role == "ca"]
        for group in (first, [c for c in self.configs if c not in first]):
            async with trio.open_nursery() as starters:
                for config in group:
                    starters.start_soon(self._start, config, nursery, ready,
                                        self.crash_at.get(config.id))
        return self.check(
            f"{len(ready)} of {len(self.configs)} agents running, one process each",
            len(ready) == len(self.configs),
            ", ".join(f"{agent} at {ready[agent]}" for agent in self.result.agents
                      if agent in ready))

    async def _start(self, config: AgentConfig, nursery: trio.Nursery,
                     ready: dict[str, str], crash_at: str | None = None) -> None:
        """Start one agent process and wait for its ready line."""
        assert config.path is not None
        process: trio.Process = await nursery.start(functools.partial(
            trio.run_process, _semper("agent", "run", str(config.path)),
            stdout=subprocess.PIPE, check=False, env=_env(crash_at)))
        self.processes[config.id] = process
        assert process.stdout is not None
        buffer = b""
        with trio.move_on_after(READY_TIMEOUT):
            while b"\n" not in buffer:
                chunk = await process.stdout.receive_some(4096)
                if not chunk:
                    break
                buffer += chunk
        line = buffer.split(b"\n", 1)[0].decode(errors="replace")
        if line.startswith(f"ready {config.id} "):
            ready[config.id] = line.split(" ", 2)[2]
        else:
            self.check(f"{config.id} did not start", False,
                       f"printed {line!r} instead of its ready line")

    async def start(self, agent_id: str, crash_at: str | None = None) -> bool:
        """(Re)start one agent's process, dying at ``crash_at`` if given (one still
        running is stopped first)."""
        assert self.nursery is not None
        if agent_id in self.processes and self.processes[agent_id].returncode is None:
            await self.stop(agent_id)
        self.crash_at[agent_id] = crash_at
        ready: dict[str, str] = {}
        await self._start(self.by_id[agent_id], self.nursery, ready, crash_at)
        return agent_id in ready

    async def stop(self, agent_id: str) -> int | None:
        """SIGTERM one agent and wait for its exit code (None: it had to be killed)."""
        process = self.processes[agent_id]
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        with trio.move_on_after(STOP_TIMEOUT):
            return await process.wait()
        process.kill()
        return None

    async def died(self, agent_id: str) -> int | None:
        """The exit code of an agent that is to die by itself (None: it did not)."""
        if self.crash_at.get(agent_id) is None:
            return self.processes[agent_id].returncode
        with trio.move_on_after(COMMAND_TIMEOUT):
            return await self.processes[agent_id].wait()
        return None

    async def restart(self, agent_id: str, crash_at: str | None = None) -> str:
        """Stop one agent with SIGTERM and start it again; what went wrong, or ""."""
        code = await self.stop(agent_id)
        if code != 0:
            return f"{agent_id} stopped by SIGTERM exited {code}"
        if not await self.start(agent_id, crash_at):
            return f"{agent_id} did not start again"
        return ""

    async def stop_all(self) -> None:
        for process in self.processes.values():
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
        with trio.move_on_after(STOP_TIMEOUT):
            for agent_id in self.result.agents:
                if agent_id in self.processes:
                    self.result.exit_codes[agent_id] = await self.processes[agent_id].wait()
        for agent_id, process in self.processes.items():
            if process.returncode is None:
                process.kill()
                self.result.exit_codes[agent_id] = None
        codes = self.result.exit_codes
        self.check("every agent stopped by SIGTERM exited 0",
                   bool(codes) and all(code == 0 for code in codes.values()),
                   ", ".join(f"{agent} {'killed' if code is None else code}"
                             for agent, code in codes.items()))

    # -- who reaches whom -----------------------------------------------------------

    async def ping_all(self) -> None:
        self.reporter.doing("every agent opening a TLS 1.3 channel to every other")
        limiter = trio.CapacityLimiter(4)
        async with trio.open_nursery() as nursery:
            for config in self.configs:
                try:
                    agent = Agent(config)
                except Exception as exc:
                    for peer in config.peers:
                        self.result.pings[(config.id, peer)] = {
                            "ok": False, "error": _describe(exc)}
                    continue
                for peer in config.peers:
                    nursery.start_soon(self._ping, agent, peer, limiter)
        pings = self.result.pings
        reached = sum(1 for ping in pings.values() if ping["ok"])
        self.reporter.pinged(self.result)
        self.check(f"{reached} of {len(pings)} channels opened over mutually authenticated "
                   "TLS 1.3", reached == len(pings) > 0,
                   "; ".join(f"{a} -> {b}: {p['error']}" for (a, b), p in sorted(pings.items())
                             if not p["ok"]))

    async def _ping(self, agent: Agent, peer: str, limiter: trio.CapacityLimiter) -> None:
        async with limiter:
            try:
                with trio.fail_after(PING_TIMEOUT):
                    started = time.perf_counter()
                    async with agent.connect(peer) as channel:
                        connected = time.perf_counter()
                        nonce = os.urandom(16)
                        answer = await channel.request("sys", "ping", nonce)
                        rtt = time.perf_counter() - connected
                if not isinstance(answer, dict) or answer.get("echo") != nonce \
                        or answer.get("agent") != peer:
                    raise ValueError(f"{peer} answered the ping with something else")
                self.result.pings[(agent.config.id, peer)] = {
                    "ok": True, "connect_ms": (connected - started) * 1000,
                    "rtt_ms": rtt * 1000}
            except Exception as exc:
                self.result.pings[(agent.config.id, peer)] = {"ok": False,
                                                              "error": _describe(exc)}

    # -- commands -------------------------------------------------------------------

    async def semper(self, *args: str) -> _Command:
        argv = _semper(*args)
        with trio.move_on_after(COMMAND_TIMEOUT):
            done = await trio.run_process(argv, capture_stdout=True, capture_stderr=True,
                                          stdin=b"", check=False, env=_env())
            return _Command(argv, done.returncode, done.stdout.decode(errors="replace"),
                            done.stderr.decode(errors="replace"))
        return _Command(argv, None, "", "")

    async def semper_json(self, *args: str) -> tuple[Any, str]:
        """The JSON a ``semper ... --json`` printed, or None and the reason it did not."""
        done = await self.semper(*args)
        if done.code != 0:
            return None, done.error
        try:
            return json.loads(done.stdout), ""
        except ValueError:
            return None, f"printed no JSON: {done.stdout[:200]!r}"

    async def accounts(self, when: str) -> dict[str, Any] | None:
        self.reporter.doing(f"balances {when}: semper bank accounts --json")
        books, error = await self.semper_json("bank", "accounts", "--config",
                                              self.config("bank"), "--json")
        if books is None:
            self.check(f"semper bank accounts --json ({when})", False, error)
            return None
        return books

    async def wallet(self) -> dict[str, int] | None:
        wallet, error = await self.semper_json("wallet", "--config", self.config("buyer"),
                                               "--json")
        if wallet is None:
            self.check("semper wallet --json (buyer)", False, error)
            return None
        return wallet["balances"]  # type: ignore[no-any-return]

    # -- commerce -------------------------------------------------------------------

    async def commerce(self) -> None:
        buyer, seller = self.id("buyer"), self.id("seller")
        books = await self.accounts("before")
        if books is None:
            return
        self.result.before = _balances(books)
        self.check("balances before (semper bank accounts --json)", True,
                   ", ".join(f"{h} {_money(u, c)}"
                             for (h, c), u in sorted(self.result.before.items())))
        self.minted_before = books["minted"]

        self.reporter.doing(f"semper catalogue --seller {seller} --json")
        offers, error = await self.semper_json("catalogue", "--config", self.config("buyer"),
                                               "--seller", seller, "--json")
        prices: dict[str, Amount] = {}
        if offers is not None:
            self.offers = {o["sku"]: o for o in offers}
            prices = {o["sku"]: Amount(o["price"]["currency"], o["price"]["minor_units"])
                      for o in offers}
            error = ", ".join(f"{sku} {price}" for sku, price in prices.items())
        self.check(f"semper catalogue: {len(prices)} offers signed by {seller}, verified",
                   bool(prices), error)

        bought = self.bought
        for key, sku, module in PURCHASES:
            what = f"semper buy --item {sku} --pay {module}"
            self.reporter.doing(f"{what} --idempotency-key {key} --json")
            outcome, error = await self.semper_json(
                "buy", "--config", self.config("buyer"), "--seller", seller, "--item", sku,
                "--pay", module, "--idempotency-key", key, "--json")
            problems = [error] if outcome is None else _purchase_problems(
                outcome, sku=sku, module=module, price=prices.get(sku), buyer=buyer,
                seller=seller)
            if not problems:
                bought[key] = outcome
                payment = outcome["payment"]
                paid = _money(payment["amount"]["minor_units"], payment["amount"]["currency"])
                error = (f"{paid} from {buyer} to {seller} ({payment['settlement']}), receipt "
                         f"{outcome['receipt']['digest'][:16]}... signed by {seller}")
            self.check(what, not problems, error if not problems else "; ".join(problems))

        self.refunded = await self.refund(bought)
        await self.replay(bought)

    # -- ecash and card ---------------------------------------------------------------

    async def balanced(self, when: str) -> dict[Account, int] | None:
        """``semper bank accounts --json`` after a step: the books balance, and the
        money minted is what the accounts hold with the ecash in circulation in them
        (the bank's ``@ecash-outstanding``)."""
        books = await self.accounts(when)
        if books is None:
            return None
        balances = _balances(books)
        held = _totals(balances)
        ok = books.get("balanced") is True and held == books.get("minted")
        self.check(f"the books balance {when}", ok,
                   "minted " + ", ".join(_money(u, c) for c, u in sorted(
                       books["minted"].items())) + " = accounts + "
                   + ", ".join(_money(balances.get((ECASH_OUTSTANDING, c), 0), c)
                               for c in sorted(books["minted"])) + " of ecash out")
        return balances

    async def coins(self) -> int | None:
        """The value of the buyer's coins (``semper wallet --json`` ``coins``), EUR."""
        wallet, error = await self.semper_json("wallet", "--config", self.config("buyer"),
                                               "--json")
        if wallet is None:
            self.check("semper wallet --json (buyer's coins)", False, error)
            return None
        return sum(int(value) * count
                   for value, count in wallet.get("coins", {}).get("EUR", {}).items())

    async def instruments(self) -> None:
        """Ecash withdrawn, spent (with change made at the bank) and refunded as coins;
        a card authorised, captured and refunded as a credit; the books after each."""
        buyer, seller = self.id("buyer"), self.id("seller")
        key, amount = WITHDRAW
        text = f"{amount.currency}:{amount.minor_units // 100}.{amount.minor_units % 100:02d}"
        what = f"semper wallet withdraw {text}"
        self.reporter.doing(f"{what} --idempotency-key {key} --json")
        before = await self.balanced("before the withdrawal")
        outcome, error = await self.semper_json(
            "wallet", "withdraw", "--config", self.config("buyer"), text,
            "--idempotency-key", key, "--json")
        after = await self.balanced(f"after {what}")
        coins = await self.coins()
        if outcome is None or before is None or after is None or coins is None:
            self.check(what, False, error or "the books or the wallet unavailable")
            return
        debited = before.get((buyer, "EUR"), 0) - after.get((buyer, "EUR"), 0)
        out = after.get((ECASH_OUTSTANDING, "EUR"), 0) - before.get((ECASH_OUTSTANDING, "EUR"), 0)
        self.withdrawn = amount.minor_units if debited == amount.minor_units else None
        self.check(f"{what}: coins worth exactly that, blindly signed",
                   debited == out == amount.minor_units and coins >= amount.minor_units,
                   f"{buyer} debited {_money(debited, 'EUR')} (no fee), "
                   f"{ECASH_OUTSTANDING} {_money(out, 'EUR', sign=True)}, the wallet holds "
                   f"{_money(coins, 'EUR')} of coins")
        for key, sku, module in INSTRUMENTS:
            what = f"semper buy --item {sku} --pay {module}"
            self.reporter.doing(f"{what} --idempotency-key {key} --json")
            outcome, error = await self.semper_json(
                "buy", "--config", self.config("buyer"), "--seller", seller, "--item", sku,
                "--pay", module, "--idempotency-key", key, "--json")
            price = self.offers.get(sku, {}).get("price")
            problems = [error] if outcome is None else _purchase_problems(
                outcome, sku=sku, module=module, buyer=buyer, seller=seller,
                price=None if price is None else Amount(price["currency"],
                                                        price["minor_units"]))
            if not problems:
                self.paid[key] = outcome
                payment = outcome["payment"]
                error = (f"{_money(payment['amount']['minor_units'], 'EUR')} by {module} "
                         f"({payment['settlement']}), receipt "
                         f"{outcome['receipt']['digest'][:16]}... signed by {seller}")
            self.check(what, not problems, error if not problems else "; ".join(problems))
            await self.balanced(f"after {what}")
            if key not in self.paid:
                continue
            coins_before = await self.coins() if module == "ecash" else None
            what = f"semper refund --idempotency-key {key} ({module})"
            self.reporter.doing(what)
            outcome, error = await self.semper_json(
                "refund", "--config", self.config("buyer"), "--idempotency-key", key,
                "--reason", "demo: changed my mind", "--json")
            problems = [error] if outcome is None else (
                [] if outcome.get("refunded") is True else [f"state {outcome.get('state')!r}"])
            units = self.paid[key]["payment"]["amount"]["minor_units"]
            detail = f"{_money(units, 'EUR')} back to {buyer}"
            if module == "ecash" and not problems:
                coins_after = await self.coins()
                if coins_before is None or coins_after is None \
                        or coins_after - coins_before != units:
                    problems.append(f"the wallet's coins went from {coins_before} to "
                                    f"{coins_after}, not up by {units}")
                detail += f" as fresh coins (the wallet holds {_money(coins_after or 0, 'EUR')})"
            elif not problems:
                detail += "'s card account, a credit"
            if not problems:
                self.refunded_keys.append(key)
            self.check(what, not problems, "; ".join(problems) or detail)
            await self.balanced(f"after {what}")
        coins = await self.coins()
        final = await self.balanced("after the ecash and card payments")
        if coins is not None and final is not None:
            out = final.get((ECASH_OUTSTANDING, "EUR"), 0)
            held = final.get((CARD_HELD, "EUR"), 0)
            self.check("ecash in circulation is what the buyer's wallet holds, no card hold "
                       "left", out == coins and held == 0,
                       f"{ECASH_OUTSTANDING} {_money(out, 'EUR')}, the wallet's coins "
                       f"{_money(coins, 'EUR')}; {CARD_HELD} {_money(held, 'EUR')}")

    async def books(self) -> None:
        """The balances after everything: each account moved by exactly what the
        payments reported (the fair purchase's too) and the refund imply."""
        if self.minted_before is None:  # the balances before were never read
            return
        books = await self.accounts("after")
        if books is None:
            return
        bought = self.bought
        self.result.after = after = _balances(books)
        payments = [bought[key]["payment"] for key in bought]
        refunds = [bought[REFUND]["payment"]] if self.refunded else []
        # Ecash moves the buyer's money at the withdrawal, into the bank's ecash in
        # circulation, which pays the seller and takes back a refund (as coins).
        for key, payment in ((k, o["payment"]) for k, o in self.paid.items()):
            if payment["module"] == "ecash":
                payment = {**payment, "payer": ECASH_OUTSTANDING}
            payments.append(payment)
            if key in self.refunded_keys:
                refunds.append(payment)
        if self.withdrawn:
            payments.append({"payer": self.id("buyer"), "payee": ECASH_OUTSTANDING,
                             "amount": {"currency": "EUR", "minor_units": self.withdrawn}})
        others = _implied(payments, refunds)  # all but the purse's
        streamed = None if self.streamed is None else {
            "payer": self.id("buyer"), "payee": self.id("seller"),
            "amount": self.streamed["paid"]}
        self.result.expected = expected = _implied(
            [*payments, *([streamed] if streamed else [])], refunds)
        before = self.result.before
        changes = {account: after.get(account, 0) - before.get(account, 0)
                   for account in {*before, *after}}
        if streamed:
            self.purse_books(streamed["amount"], changes, others, after)
        wrong = {account for account in {*changes, *expected}
                 if changes.get(account, 0) != expected.get(account, 0)}
        self.check("each account changed by what the payments and the refund imply",
                   not wrong,
                   f"expected {_changes(expected)}; the bank says {_changes(changes)}")
        totals = _totals(before), _totals(after)
        self.check("the total over all customer accounts is unchanged",
                   totals[0] == totals[1] and bool(totals[0]),
                   ", ".join(f"{_money(units, currency)} before, "
                             f"{_money(totals[1].get(currency, 0), currency)} after"
                             for currency, units in sorted(totals[0].items())))
        self.check("semper bank accounts: the books balance, nothing minted meanwhile",
                   books.get("balanced") is True and books.get("minted") == self.minted_before,
                   f"balanced: {json.dumps(books.get('balanced'))}, minted "
                   + ", ".join(f"{_money(u, c)}" for c, u in sorted(books["minted"].items())))

    def purse_books(self, paid: dict[str, Any], changes: dict[Account, int],
                    others: dict[Account, int], after: dict[Account, int]) -> None:
        """The streamed purchase at the bank: beyond what the other payments imply, the
        seller got exactly what the stream cost (chunks x price_per_chunk) and the buyer
        paid exactly that, the rest of its reservation back: the bank's account of
        purse reservations holds nothing."""
        buyer, seller = self.id("buyer"), self.id("seller")
        currency, units = paid["currency"], paid["minor_units"]
        purse = {holder: changes.get((holder, currency), 0) - others.get((holder, currency), 0)
                 for holder in (buyer, seller)}
        held = after.get((PURSE_RESERVED, currency), 0)
        self.check(f"the purse at the bank: {seller} paid what the stream cost, the rest of "
                   f"{buyer}'s reservation back", purse == {buyer: -units, seller: units}
                   and held == 0,
                   f"{seller} {_money(purse[seller], currency, sign=True)}, {buyer} "
                   f"{_money(purse[buyer], currency, sign=True)} by purse; "
                   f"{PURSE_RESERVED} {_money(held, currency)}")

    async def refund(self, bought: dict[str, dict[str, Any]]) -> bool:
        self.reporter.doing(f"semper refund --idempotency-key {REFUND}")
        if REFUND not in bought:
            return self.check(f"semper refund --idempotency-key {REFUND}", False,
                              "that purchase failed, nothing to refund")
        outcome, error = await self.semper_json(
            "refund", "--config", self.config("buyer"), "--idempotency-key", REFUND,
            "--reason", "demo: changed my mind", "--json")
        problems = [error] if outcome is None else []
        if outcome is not None:
            if outcome.get("state") != "refunded" or outcome.get("refunded") is not True:
                problems.append(f"state {outcome.get('state')!r}, not refunded")
            if (outcome.get("receipt") or {}).get("digest") != bought[REFUND]["receipt"][
                    "digest"]:
                problems.append("a receipt other than the purchase's")
        amount = bought[REFUND]["payment"]["amount"]
        return self.check(
            f"semper refund --idempotency-key {REFUND}", not problems,
            "; ".join(problems) or f"{_money(amount['minor_units'], amount['currency'])} back "
            f"to {self.id('buyer')}, refund note signed by {self.id('seller')}")

    async def replay(self, bought: dict[str, dict[str, Any]]) -> None:
        key, sku, module = next(p for p in PURCHASES if p[0] == REPLAY)
        what = f"semper buy again with --idempotency-key {key}"
        self.reporter.doing(f"{what}, between two semper wallet --json")
        if key not in bought:
            self.check(what, False, "the first purchase failed")
            return
        before = await self.wallet()
        outcome, error = await self.semper_json(
            "buy", "--config", self.config("buyer"), "--seller", self.id("seller"),
            "--item", sku, "--pay", module, "--idempotency-key", key, "--json")
        after = await self.wallet()
        if before is None or after is None:
            return
        first = bought[key]
        problems = [error] if outcome is None else []
        if outcome is not None:
            if outcome.get("replayed") is not True:
                problems.append("not reported as replayed")
            if outcome.get("receipt") != first["receipt"]:
                problems.append("a receipt other than the first")
            if outcome.get("payment") != first["payment"]:
                problems.append("a payment other than the first")
        if before != after:
            problems.append(f"the buyer's balances moved from {before} to {after}")
        self.check(f"{what}: paid nothing more", not problems, "; ".join(problems) or (
            f"same receipt {first['receipt']['digest'][:16]}..., the buyer's balance "
            + ", ".join(_money(u, c) for c, u in sorted(after.items()))
            + " before and after"))

    # -- the notary's services and the arbiter ----------------------------------------

    def market_file(self, name: str) -> str:
        return str(self.market / "ca" / name)

    async def timestamp(self) -> None:
        """A file timestamped by the notary; the token verified offline with the market
        root alone; the same token refused for a changed file."""
        what = "semper timestamp: the notary's token verified offline with the market root"
        self.reporter.doing("semper timestamp --config buyer FILE -o TOKEN --json, then "
                            "semper timestamp verify FILE TOKEN --root root.pem")
        document, token = self.files / "invoice.txt", self.files / "invoice.tst"
        document.write_bytes(TIMESTAMPED)
        stamped, error = await self.semper_json(
            "timestamp", "--config", self.config("buyer"), str(document), "-o", str(token),
            "--json")
        problems = [error] if stamped is None else []
        if stamped is not None:
            if stamped.get("notary") != self.id("notary"):
                problems.append(f"signed by {stamped.get('notary')!r}")
            if stamped.get("digest") != hashlib.sha256(TIMESTAMPED).hexdigest():
                problems.append("the token names another digest")
        if not problems:
            verified, error = await self.semper_json(
                "timestamp", "verify", str(document), str(token), "--root",
                self.market_file("root.pem"), "--crl", self.market_file("crl.pem"), "--json")
            keys = ("digest", "serial", "time", "notary", "sequence", "head")
            if verified is None:
                problems.append(f"semper timestamp verify: {error}")
            elif any(verified.get(k) != stamped[k] for k in keys):
                problems.append(f"verify read another token: {verified}")
        if not self.check(what, not problems, "; ".join(problems) or (
                f"serial {stamped['serial']} in tree head #{stamped['sequence']} "
                f"{stamped['head'][:16]}..., signed by {stamped['notary']}; "
                "valid under root.pem and the CRL")):
            return
        self.reporter.doing("semper timestamp verify of the token against a changed file")
        (self.files / "invoice-changed.txt").write_bytes(TIMESTAMPED.replace(b"12.50", b"1.25"))
        done = await self.semper("timestamp", "verify", str(self.files / "invoice-changed.txt"),
                                 str(token), "--root", self.market_file("root.pem"))
        lines = done.stderr.splitlines()
        self.check("semper timestamp verify: the token refused for a changed file",
                   done.code not in (0, None) and len(lines) == 1
                   and lines[0].startswith("semper: timestamp."), done.error)

    async def dispute(self) -> None:
        """The buyer's evidence of a purchase, exported, judged offline per obligation,
        then filed with the arbiter, whose signed verdicts must say the same."""
        buyer, seller = self.id("buyer"), self.id("seller")
        bundle = self.files / f"{DISPUTED}.bundle"
        self.reporter.doing(f"semper archive export --config buyer {DISPUTED}, then "
                            "semper dispute check --json")
        if DISPUTED not in self.bought:
            self.check("semper dispute check", False, f"the purchase {DISPUTED} failed")
            return
        done = await self.semper("archive", "export", "--config", self.config("buyer"),
                                 DISPUTED, "-o", str(bundle))
        if not self.check(f"semper archive export {DISPUTED}: the buyer's evidence bundle",
                          done.code == 0, done.error if done.code else
                          f"{bundle.stat().st_size} bytes: statements, certificates, CRL"):
            return
        expected = {(PAID, buyer, True), (DELIVERED, seller, True), (RECEIPTED, seller, True)}
        report, error = await self.semper_json(
            "dispute", "check", str(bundle), "--root", self.market_file("root.pem"),
            "--config", self.config("buyer"), "--json")
        verdicts = _verdicts(report)
        problems = [error] if report is None else []
        if report is not None and report.get("valid") is not True:
            problems.append("the bundle does not verify")
        if report is not None and verdicts != expected:
            problems.append(f"verdicts {sorted(verdicts, key=str)}")
        if not self.check("semper dispute check: every obligation met, judged offline",
                          not problems, "; ".join(problems) or _said(verdicts)):
            return
        arbiter = self.id("arbiter")
        self.reporter.doing(f"semper dispute file --config buyer --arbiter {arbiter} --json")
        answer, error = await self.semper_json(
            "dispute", "file", "--config", self.config("buyer"), str(bundle), "--arbiter",
            arbiter, "--json")
        problems = [error] if answer is None else []
        if answer is not None:
            if answer.get("arbiter") != arbiter or answer.get("valid") is not True:
                problems.append(f"arbiter {answer.get('arbiter')!r}, valid "
                                f"{answer.get('valid')!r}")
            if _verdicts(answer) != verdicts:
                problems.append(f"the arbiter's verdicts differ: {answer.get('verdicts')}")
        self.check(f"semper dispute file: {arbiter}'s signed verdicts agree", not problems,
                   "; ".join(problems) or f"case {str(answer['case'])[:16]}... "
                   f"({answer['protocol']}), verdicts checked and archived by {buyer}")

    async def mail(self) -> None:
        """Certified mail from the buyer to the seller: delivered for the seller's
        signed receipt; the seller's inbox lists it; read, it is the same bytes."""
        buyer, seller = self.id("buyer"), self.id("seller")
        what = f"semper mail send --to {seller}"
        self.reporter.doing(f"{what} --json (as {buyer})")
        letter, copy = self.files / "letter.txt", self.files / "letter-read.txt"
        letter.write_bytes(MAIL)
        sent, error = await self.semper_json("mail", "send", "--config", self.config("buyer"),
                                             "--to", seller, "--file", str(letter), "--json")
        problems = [error] if sent is None else []
        if sent is not None:
            if sent.get("state") != "delivered":
                problems.append(f"state {sent.get('state')!r}")
            if not isinstance(sent.get("receipt"), str) or not isinstance(sent.get("mail"),
                                                                          str):
                problems.append(f"no mail id or receipt: {sent}")
        if not self.check(f"{what}: delivered for a signed receipt", not problems,
                          "; ".join(problems) or (
                              f"mail {sent['mail'][:16]}..., receipt "
                              f"{sent['receipt'][:16]}... signed by {seller}")):
            return
        assert sent is not None
        what = f"semper mail inbox and read (as {seller}): the same bytes"
        self.reporter.doing(f"{what}")
        inbox, error = await self.semper_json("mail", "inbox", "--config",
                                              self.config("seller"), "--json")
        problems = [error] if inbox is None else []
        if inbox is not None:
            listed = [m for m in inbox if isinstance(m, dict) and m.get("mail") == sent["mail"]]
            if [m.get("from") for m in listed] != [buyer]:
                problems.append(f"the inbox lists it as {listed}")
        if not problems:
            done = await self.semper("mail", "read", "--config", self.config("seller"),
                                     sent["mail"], "-o", str(copy))
            if done.code != 0:
                problems.append(f"semper mail read: {done.error}")
            elif copy.read_bytes() != MAIL:
                problems.append("read other bytes than were sent")
        self.check(what, not problems, "; ".join(problems) or (
            f"listed from {buyer} ({listed[0].get('state')}), {len(MAIL)} bytes read back"))

    async def contracts(self) -> None:
        """A contract signed by the exchange alone; then one whose responder (the
        seller) dies right after sending its commitment: signed through the notary,
        and the seller, started again, holds the same contract."""
        buyer, seller = self.id("buyer"), self.id("seller")
        texts = []
        for n, text in enumerate(CONTRACTS, 1):
            texts.append(self.files / f"contract-{n}.txt")
            texts[-1].write_bytes(text)
        what = f"semper contract approve (as {seller}) and sign (as {buyer})"
        self.reporter.doing(f"{what} --json")
        signed, error = await self.sign(texts[0])
        problems = [error] if signed is None else _contract_problems(signed, "exchange")
        self.check(f"{what}: signed by the exchange", not problems, "; ".join(problems) or (
            f"contract {signed['contract'][:16]}... signed by both, "
            "the notary not needed"))

        what = f"semper contract sign with {seller} dying at {CONTRACT_CRASH}"
        self.reporter.doing(f"{what}: restarted with SEMPER_CRASH_AT={CONTRACT_CRASH}")
        signed, error = await self.sign(texts[1], crash_at=CONTRACT_CRASH)
        code = await self.died(seller)
        problems = [error] if signed is None else _contract_problems(signed, "notary")
        if code in (0, None):
            problems.append(f"{seller} did not die at {CONTRACT_CRASH}")
        self.check(f"{what}: signed, resolved by the notary", not problems,
                   "; ".join(problems) or (
                       f"{seller} exited {code} after its commitment; contract "
                       f"{signed['contract'][:16]}... completed through the notary"))
        # Started again, armed for the fair purchase that follows (it must still hold
        # the contract: it resolves an exchange in flight with the notary by itself).
        what = f"{seller} started again shows the same contract"
        if not await self.start(seller, crash_at=FAIR_CRASH):
            self.check(what, False, f"{seller} did not start again")
            return
        if signed is None:
            return
        self.reporter.doing(f"semper contract show --config seller {signed['contract']}")
        shown, error = await self.semper_json("contract", "show", "--config",
                                              self.config("seller"), signed["contract"],
                                              "--json")
        self.check(what, shown == signed, error or (
            f"{json.dumps(shown)}" if shown != signed else
            f"{shown['state']}, resolved by the {shown['resolved_by']}"))

    async def sign(self, text: Path, crash_at: str | None = None) -> tuple[Any, str]:
        """The seller approves ``text`` from the buyer (restarted to die at
        ``crash_at`` if given), then the buyer signs it with the seller."""
        done = await self.semper("contract", "approve", "--config", self.config("seller"),
                                 "--from", self.id("buyer"), "--text", str(text))
        if done.code != 0:
            return None, f"semper contract approve: {done.error}"
        if crash_at is not None:
            problem = await self.restart(self.id("seller"), crash_at)
            if problem:
                return None, problem
        return await self.semper_json("contract", "sign", "--config", self.config("buyer"),
                                      "--with", self.id("seller"), "--text", str(text),
                                      "--json")

    async def fair_purchase(self) -> None:
        """``semper buy --fair`` from a seller that dies once paid (started so by
        ``contracts``): the buyer gets the goods through the notary, matching the
        offer's digest. The seller is started again normally afterwards."""
        buyer, seller = self.id("buyer"), self.id("seller")
        key, sku, module = FAIR
        what = f"semper buy --fair --item {sku} from {seller} dying at {FAIR_CRASH}"
        self.reporter.doing(f"{what} --json")
        goods = self.files / f"{sku}.goods"
        if self.crash_at.get(seller) != FAIR_CRASH or self.processes[seller].returncode \
                is not None:  # contracts did not leave it so
            problem = "" if await self.start(seller, FAIR_CRASH) else "did not start"
            if problem:
                self.check(what, False, f"{seller} {problem}")
                return
        outcome, error = await self.semper_json(
            "buy", "--config", self.config("buyer"), "--seller", seller, "--item", sku,
            "--pay", module, "--fair", "--idempotency-key", key, "-o", str(goods), "--json")
        code = await self.died(seller)
        problems = [error] if outcome is None else []
        if outcome is not None:
            if outcome.get("payment"):
                self.bought[key] = outcome  # money moved: the books must show it
            problems += _fair_problems(outcome, self.offers.get(sku), goods, buyer=buyer,
                                       seller=seller, module=module)
        if code in (0, None):
            problems.append(f"{seller} did not die once paid")
        digest = (self.offers.get(sku) or {}).get("content_digest", "")
        self.check(f"{what}: the goods through the notary", not problems,
                   "; ".join(problems) or (
                       f"{seller} exited {code} once paid; the notary released the key: "
                       f"{goods.stat().st_size} bytes, SHA-256 {digest[:16]}... as the "
                       "offer says"))
        self.reporter.doing(f"starting {seller} again, normally")
        self.check(f"{seller} started again, normally", await self.start(seller),
                   "no crash point: it serves the rest of the demo")

    async def stream(self) -> None:
        """``semper buy --pay purse --output`` of the streamed item from a seller that
        dies at chunk ``STREAM_AT`` (started so by ``start_all``): the buyer stops
        naming its key, having paid one chunk more than it holds at most; the seller
        started again normally, the same command resumes there and the file is the
        offer's. ``redeemed`` then waits for the seller's redemption, and ``books``
        checks the money."""
        buyer, seller = self.id("buyer"), self.id("seller")
        key, sku = STREAM
        offer = self.offers.get(sku) or {}
        output = self.files / f"{sku}.bin"
        argv = ("buy", "--config", self.config("buyer"), "--seller", seller, "--item", sku,
                "--pay", "purse", "--output", str(output), "--idempotency-key", key, "--json")
        what = f"semper buy --item {sku} --pay purse --output FILE from {seller} dying at " \
               f"chunk {STREAM_AT}"
        self.reporter.doing(f"{what} --idempotency-key {key} --json")
        if self.crash_at.get(seller) != STREAM_CRASH or self.processes[seller].returncode \
                is not None:  # start_all did not leave it so
            if not await self.start(seller, STREAM_CRASH):
                self.check(what, False, f"{seller} did not start")
                return
        first = await self.semper(*argv)
        code = await self.died(seller)
        problems = _interrupted_problems(first, key=key, at=STREAM_AT)
        if code in (0, None):
            problems.append(f"{seller} did not die at chunk {STREAM_AT}")
        self.check(f"{what}: interrupted, naming its key", not problems,
                   "; ".join(problems) or f"{seller} (SEMPER_CRASH_AT={STREAM_CRASH}) "
                   f"exited {code}; the buyer exited {first.code}: {first.error}")

        # The buyer's purse as the crash left it, while the seller starts again.
        held: dict[str, Any] = {}

        async def purse_at_crash() -> None:
            held["chains"], held["error"] = await self.semper_json(
                "purse", "list", "--config", self.config("buyer"), "--offline", "--json")

        async def seller_again() -> None:
            held["started"] = await self.start(seller)

        self.reporter.doing(f"semper purse list --offline --json (as {buyer}), and "
                            f"{seller} started again normally")
        await _together([purse_at_crash], [seller_again])
        chains = [c for c in held["chains"] or [] if c.get("seller") == seller]
        unit = (offer.get("stream") or {}).get("price_per_chunk") or {}
        spent = chains[0]["spent"] if len(chains) == 1 else None
        ahead = _worth(unit, STREAM_AT + 1)  # chunks 0..K paid, chunk K never sent
        if held["error"] or spent is None:
            detail = held["error"] or f"{len(chains)} chains with {seller}: {chains}"
        elif spent != ahead:
            detail = f"spent {spent}, not {STREAM_AT + 1} paywords' worth ({ahead})"
        else:
            detail = (f"spent {_money(spent['minor_units'], spent['currency'])} = "
                      f"{STREAM_AT + 1} paywords for chunks 0..{STREAM_AT}, chunk {STREAM_AT} "
                      "never received")
        self.check(f"{buyer}'s purse at the crash: one chunk paid ahead at most",
                   spent == ahead, detail)
        if not self.check(f"{seller} started again after chunk {STREAM_AT}, normally",
                          held["started"], "no crash point"):
            return

        what = f"semper buy --item {sku} --pay purse again with --idempotency-key {key}"
        self.reporter.doing(what)
        outcome, error = await self.semper_json(*argv)
        problems = [error] if outcome is None else await trio.to_thread.run_sync(
            functools.partial(_stream_problems, outcome, offer, output, at=STREAM_AT))
        if outcome is not None and outcome.get("state") == "done":
            self.streamed = outcome  # money moved: the books must show it
        self.stream_ended = trio.current_time()
        self.check(f"{what}: resumed at chunk {STREAM_AT}, the file is the offer's",
                   not problems, "; ".join(problems) or (
                       f"chunks {outcome['resumed_from']}..{outcome['chunks'] - 1} fetched, "
                       f"{outcome['bytes']:,} bytes in all, "
                       f"{_money(outcome['paid']['minor_units'], outcome['paid']['currency'])}"
                       f" paid; SHA-256 {offer['content_digest'][:16]}... as the offer says"))

    async def redeemed(self) -> None:
        """The seller redeems the streamed purchase's chain within REDEEM_TIMEOUT of its
        end, for exactly what the buyer spent (``semper purse list``, asked until it
        says so: nothing else tells the buyer)."""
        outcome, seller = self.streamed, self.id("seller")
        if outcome is None:  # the stream failed, and said so
            return
        unit = (self.offers.get(STREAM[1], {}).get("stream") or {}).get("price_per_chunk")
        if not isinstance(unit, dict):  # the catalogue failed, and said so
            unit = {"currency": outcome["paid"]["currency"], "minor_units": 0}
        what = f"{seller} redeemed the chain within {REDEEM_TIMEOUT:.0f} s (semper purse list)"
        self.reporter.doing(f"{what}: waiting")
        chain: dict[str, Any] | None = None
        error = ""
        with trio.move_on_at(self.stream_ended + REDEEM_TIMEOUT):
            while True:
                chains, error = await self.semper_json("purse", "list", "--config",
                                                       self.config("buyer"), "--json")
                mine = [c for c in chains or [] if c.get("seller") == seller]
                chain = mine[0] if len(mine) == 1 else None
                if chain is not None and chain.get("state") == "redeemed":
                    break
                await trio.sleep(REDEEM_POLL)
        took = trio.current_time() - self.stream_ended
        problems = _redeemed_problems(chain, outcome["paid"]) + ([error] if error else [])
        if problems:
            self.check(what, False, "; ".join(problems))
            return
        assert chain is not None
        currency = unit["currency"]
        reserved, paid = chain["reserved"]["minor_units"], chain["redeemed"]["minor_units"]
        self.check(what, True, (
            f"after {took:.1f} s: {outcome['chunks']} x {_money(unit['minor_units'], currency)}"
            f" = {_money(paid, currency)} to {seller}; of the {_money(reserved, currency)} "
            f"reserved, {_money(reserved - paid, currency)} unspent back to "
            f"{self.id('buyer')}"))


def _verdicts(report: Any) -> set[tuple[Any, Any, Any]]:
    """(obligation, party, met) of each verdict a ``dispute ... --json`` printed."""
    if not isinstance(report, dict) or not isinstance(report.get("verdicts"), list):
        return set()
    return {(v.get("obligation"), v.get("party"), v.get("met")) for v in report["verdicts"]
            if isinstance(v, dict)}


def _said(verdicts: Iterable[tuple[Any, Any, Any]]) -> str:
    return "; ".join(f"{obligation}: {party} {'yes' if met else 'NO' if met is False else '?'}"
                     for obligation, party, met in sorted(verdicts, key=str))


def _contract_problems(outcome: dict[str, Any], resolved_by: str) -> list[str]:
    problems = []
    if outcome.get("state") != "signed":
        problems.append(f"state {outcome.get('state')!r}")
    if outcome.get("resolved_by") != resolved_by:
        problems.append(f"resolved by {outcome.get('resolved_by')!r}")
    if not isinstance(outcome.get("contract"), str) or len(outcome["contract"]) != 64:
        problems.append("no contract id")
    return problems


def _fair_problems(outcome: dict[str, Any], offer: dict[str, Any] | None, goods: Path, *,
                   buyer: str, seller: str, module: str) -> list[str]:
    """What is wrong with a ``semper buy --fair --json`` outcome whose seller died once
    paid: the goods must have come through the notary, matching the offer's digest."""
    problems = []
    if outcome.get("resolved_by") != "notary":
        problems.append(f"resolved by {outcome.get('resolved_by')!r}, not the notary")
    payment = outcome.get("payment") or {}
    if (payment.get("module"), payment.get("payer"), payment.get("payee")) != (
            module, buyer, seller):
        problems.append(f"paid {payment}")
    if offer is None:
        return [*problems, "the item is not in the catalogue"]
    if payment.get("amount") != offer["price"]:
        problems.append(f"paid {payment.get('amount')}, the offer says {offer['price']}")
    try:
        held = goods.read_bytes()
    except OSError:
        return [*problems, "no goods written"]
    if hashlib.sha256(held).hexdigest() != offer["content_digest"]:
        problems.append("the goods do not match the offer's digest")
    if outcome.get("goods_size") != len(held):
        problems.append(f"goods_size {outcome.get('goods_size')}, {len(held)} bytes written")
    return problems


def _worth(unit: dict[str, Any], n: int) -> dict[str, Any]:
    """``n`` times an amount ``{currency, minor_units}``, in the same shape."""
    return {"currency": unit.get("currency"), "minor_units": n * unit.get("minor_units", 0)}


def _interrupted_problems(done: _Command, *, key: str, at: int) -> list[str]:
    """What is wrong with a ``semper buy`` whose seller died at chunk ``at``: it must
    fail with one line, ``semper: delivery.interrupted: ...``, naming its key and the
    chunk, and print nothing on stdout."""
    if done.code is None:
        return [done.error]
    if done.code == 0:
        return ["it exited 0"]
    problems = [f"printed {done.stdout[:200]!r}"] if done.stdout else []
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    if len(lines) != 1:
        return [*problems, f"{len(lines)} lines on stderr, not one: {done.stderr[-400:]!r}"]
    if not lines[0].startswith("semper: delivery.interrupted: "):
        problems.append(f"said {lines[0]!r}")
    if key not in lines[0] or f"chunk {at}" not in lines[0]:
        problems.append(f"does not name key {key} and chunk {at}: {lines[0]!r}")
    return problems


def _stream_problems(outcome: dict[str, Any], offer: dict[str, Any], output: Path, *,
                     at: int) -> list[str]:
    """What is wrong with a resumed ``semper buy --pay purse --output FILE --json`` of
    the streamed ``offer``: done, resumed at chunk ``at``, the whole content paid, and
    ``output``'s SHA-256 the offer's ``content_digest``. Hashes the file: run it in a
    thread."""
    stream = offer.get("stream")
    if not isinstance(stream, dict):
        return ["the item is not a streamed offer in the catalogue"]
    problems = []
    if outcome.get("state") != "done":
        problems.append(f"state {outcome.get('state')!r}")
    if outcome.get("resumed_from") != at:
        problems.append(f"resumed from {outcome.get('resumed_from')!r}, not {at}")
    if (outcome.get("chunks"), outcome.get("root")) != (stream["chunks"], stream["root"]):
        problems.append(f"{outcome.get('chunks')} chunks under root {outcome.get('root')}, "
                        f"the offer says {stream['chunks']} under {stream['root']}")
    if outcome.get("paid") != offer.get("price") or offer.get("price") != _worth(
            stream["price_per_chunk"], stream["chunks"]):
        problems.append(f"paid {outcome.get('paid')}, the offer says {offer.get('price')} "
                        f"= {stream['chunks']} x {stream['price_per_chunk']}")
    digest = hashlib.sha256()
    try:
        with output.open("rb") as f:
            while block := f.read(1 << 20):
                digest.update(block)
    except OSError:
        return [*problems, f"nothing written to {output}"]
    if output.stat().st_size != outcome.get("bytes"):
        problems.append(f"{output.stat().st_size} bytes written, it says {outcome.get('bytes')}")
    if digest.hexdigest() != offer.get("content_digest"):
        problems.append("the file's SHA-256 is not the offer's content_digest")
    return problems


def _redeemed_problems(chain: dict[str, Any] | None, paid: dict[str, Any]) -> list[str]:
    """What is wrong with the buyer's purse chain (``semper purse list --json``) once
    the seller redeemed it for a stream that cost ``paid``: every payword spent is paid
    to the seller, no more."""
    if chain is None:
        return ["no chain of the buyer's with this seller"]
    problems = []
    if chain.get("state") != "redeemed":
        problems.append(f"state {chain.get('state')!r}, not redeemed")
    if chain.get("spent") != paid or chain.get("redeemed") != paid:
        problems.append(f"spent {chain.get('spent')}, redeemed {chain.get('redeemed')}, "
                        f"the stream cost {paid}")
    return problems


def _balances(books: dict[str, Any]) -> dict[Account, int]:
    return {(a["holder"], a["currency"]): a["minor_units"] for a in books["accounts"]}


def _totals(balances: dict[Account, int]) -> dict[str, int]:
    totals: dict[str, int] = {}
    for (_, currency), units in balances.items():
        totals[currency] = totals.get(currency, 0) + units
    return totals


def _implied(payments: Iterable[dict[str, Any]], refunds: Iterable[dict[str, Any]]
             ) -> dict[Account, int]:
    """How much each account should have changed: payments out of the payer into the
    payee, refunds of a payment back the other way."""
    changes: dict[Account, int] = {}
    for sign, group in ((1, payments), (-1, refunds)):
        for payment in group:
            currency, units = payment["amount"]["currency"], payment["amount"]["minor_units"]
            for holder, direction in ((payment["payer"], -sign), (payment["payee"], sign)):
                account = (holder, currency)
                changes[account] = changes.get(account, 0) + direction * units
    return changes


def _purchase_problems(outcome: dict[str, Any], *, sku: str, module: str,
                       price: Amount | None, buyer: str, seller: str) -> list[str]:
    """What is wrong with a ``semper buy --json`` outcome of a first purchase."""
    problems = []
    receipt, payment = outcome.get("receipt"), outcome.get("payment")
    if outcome.get("state") != "done":
        problems.append(f"state {outcome.get('state')!r}")
    if outcome.get("replayed") is not False:
        problems.append("reported as replayed")
    if not receipt or not payment:
        return [*problems, "no receipt or no payment"]
    if price is None:
        problems.append(f"{sku} is not in the catalogue")
    elif receipt["amount"] != price.to_wire() or payment["amount"] != price.to_wire():
        problems.append(f"paid {payment['amount']}, the offer says {price}")
    if (receipt["sku"], receipt["seller"], receipt["buyer"]) != (sku, seller, buyer):
        problems.append("the receipt names another item, seller or buyer")
    if (payment["module"], payment["payer"], payment["payee"]) != (module, buyer, seller):
        problems.append(f"paid by {payment['module']} from {payment['payer']} "
                        f"to {payment['payee']}")
    if receipt["payment"] != payment["settlement_digest"]:
        problems.append("the receipt quotes another payment")
    if not outcome.get("goods_size"):
        problems.append("no goods delivered")
    return problems


async def _together(*chains: Iterable[Callable[[], Awaitable[None]]]) -> None:
    """Run chains of steps side by side, each chain's steps in order."""
    async def run(chain: Iterable[Callable[[], Awaitable[None]]]) -> None:
        for step in chain:
            await step()

    async with trio.open_nursery() as nursery:
        for chain in chains:
            nursery.start_soon(run, chain)


async def run_demo(folder: Path | None = None, reporter: Reporter | None = None
                   ) -> DemoResult:
    """Init a market, run every agent, reach every pair, buy, refund, replay, use the
    notary's services and the arbiter, check the books, and stop them all with
    SIGTERM. Raises nothing that a check can report."""
    reporter = reporter or Reporter()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="semper-demo-") as tmp:
        market = (folder or Path(tmp)) / "market"
        reporter.doing("semper market init: a root CA, six agents, bank accounts")
        configs = init_market(market)
        demo = _Demo(market, configs, reporter)
        demo.check(f"semper market init {market}", True,
                   f"a root CA and its CRL, a certificate and config for each of "
                   f"{', '.join(demo.result.agents)}; the bank opened EUR accounts for buyer "
                   "and seller and funded the buyer")
        async with trio.open_nursery() as nursery:
            try:
                if await demo.start_all(nursery):
                    await demo.ping_all()
                    # Side by side where the steps touch apart: each command is a
                    # process that mostly keeps one core busy starting up.
                    await _together([demo.commerce, demo.instruments], [demo.timestamp])
                    # The stream kills the seller: nothing else uses it meanwhile; the
                    # wait for its redemption goes with what follows.
                    await _together([demo.stream, functools.partial(
                        _together, [demo.redeemed],
                        [demo.mail, demo.contracts, demo.fair_purchase])], [demo.dispute])
                    await demo.books()
            finally:
                with trio.CancelScope(shield=True):
                    reporter.doing("stopping every agent with SIGTERM")
                    await demo.stop_all()
        demo.result.seconds = time.monotonic() - started
        return demo.result
