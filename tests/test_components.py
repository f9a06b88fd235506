"""Components (agents/runtime/_component.py): a role as a list of components, each op
declared once with typed bodies, tables per component, background work, one clock."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Self

import pytest
import trio
from market_helpers import config_of, make_market, running

from semper.agents import Agent, AgentConfig, Component, ConfigError, Context, Role, handles
from semper.agents.components._bank import BANK_HALVES_GROUP
from semper.agents.components._contracts import Contracts
from semper.agents.components._payments import installed_order
from semper.agents.components.bank import BankService, ledger
from semper.agents.instruments.transfer import TransferBank
from semper.agents.runtime import _agent as agent_module
from semper.agents.runtime._services import (
    RUNTIME_COMPONENTS,
    ArchiveTables,
    Certificates,
    Evidence,
    Peers,
    Sys,
)
from semper.services import Amount, ServiceError
from semper.services._ops import Op, declared_ops
from semper.transport import RemoteError

DEADLINE = 30.0


class EchoError(ServiceError):
    code: ClassVar[str] = "echo.bad_request"


@dataclass(frozen=True)
class Shout:
    text: str

    @classmethod
    def from_wire(cls, value: Any) -> Self:
        if type(value) is not dict or set(value) != {"text"} or type(value["text"]) is not str:
            raise EchoError("echo.shout takes {text: str}", detail={"field": "text"})
        return cls(value["text"])

    def to_wire(self) -> Any:
        return {"text": self.text}


SHOUT = Op("echo", "shout", Shout, Shout)
QUIET = Op("echo", "quiet")


class Counter(Component):
    """Needed by Echo; built once however many name it."""

    name = "counter"
    built: ClassVar[int] = 0

    def __init__(self, context: Context) -> None:
        super().__init__(context)
        type(self).built += 1
        self.count = 0

    def migrations(self) -> Mapping[str, Sequence[str]]:
        return {"counter": ["CREATE TABLE counter_calls (text TEXT NOT NULL) STRICT"]}


class Echo(Component):
    name = "echo"
    requires = (Counter,)
    unlogged = frozenset({"quiet"})

    def __init__(self, context: Context) -> None:
        super().__init__(context)
        self.ran = trio.Event()
        self.requests: list[Any] = []

    @handles(SHOUT)
    async def shout(self, context: Any, request: Shout) -> Shout:
        self.requests.append(request)
        self.context.component(Counter).count += 1
        await self.context.database.transaction(lambda c: c.execute(
            "INSERT INTO counter_calls (text) VALUES (?)", (request.text,)))
        return Shout(request.text.upper())

    @handles(QUIET)
    async def quiet(self, context: Any, body: Any) -> Any:
        return body

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        task_status.started()
        self.ran.set()


class Echoer(Role):
    name = "notary"  # the market's notary certificate runs this role in the test
    components = (Echo, Counter)


@pytest.fixture
def market(tmp_path: Path) -> Path:
    return make_market(tmp_path)


async def test_a_role_is_its_components_with_typed_ops_tables_and_work(
        market: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(agent_module, "load_role", lambda name: Echoer)
    Counter.built = 0
    notary = Agent(config_of(market, "notary"))
    monkeypatch.undo()
    buyer = Agent(config_of(market, "buyer"))
    assert Counter.built == 1  # required and listed: one instance
    echo = notary.component(Echo)
    # What every agent runs, then the role's own.
    # (the exchanges every agent takes part in, contracts, mail, ..., come in between)
    built = list(notary.components)
    assert built[:5] == [Sys, ArchiveTables, Evidence, Peers, Certificates]
    assert set(RUNTIME_COMPONENTS) <= set(built) and Contracts in built
    assert built[-2:] in ([Echo, Counter], [Counter, Echo])
    with trio.fail_after(DEADLINE):
        async with running(notary), running(buyer):
            await echo.ran.wait()
            answer = await buyer.request("notary", "echo", "shout", {"text": "hi"})
            assert answer == {"text": "HI"}
            assert echo.requests == [Shout("hi")]  # the handler got the decoded request
            with pytest.raises(RemoteError) as refused:
                await buyer.request("notary", "echo", "shout", {"text": 1})
            assert refused.value.code == "echo.bad_request"
            assert echo.requests == [Shout("hi")]  # refused before the handler ran
            assert await buyer.request("notary", "echo", "quiet", [1]) == [1]
            rows = await notary.database.read(
                lambda c: c.execute("SELECT text FROM counter_calls").fetchall())
            assert rows == [("hi",)]
            assert notary.component(Counter).count == 1
            hello = (await buyer.channel("notary")).their_hello
            assert "echo" in hello.services
    served = [line for line in (market / "notary" / "data" / "events.jsonl").read_text()
              .splitlines() if '"served"' in line and '"echo"' in line]
    assert any('"shout"' in line for line in served)
    assert not any('"quiet"' in line for line in served)  # unlogged


async def test_the_bank_serves_the_instruments_installed_and_advertises_them(
        market: Path) -> None:
    bank = Agent(config_of(market, "bank"))
    assert TransferBank in bank.components and BankService in bank.components
    installed = tuple(installed_order(BANK_HALVES_GROUP))  # card, ecash: issue 11
    assert {"card", "cheque", "purse", "transfer"} <= set(installed)
    assert bank.registry.services()["bank"].modules == installed
    restricted = Agent(config_of(market, "bank", payment=_modules("transfer")))
    assert restricted.registry.services()["bank"].modules == ("transfer",)
    ops = {(op.service, op.name) for op in declared_ops()}
    assert {("bank", "transfer"), ("bank", "deposit_cheque"), ("bank", "refund")} <= ops


def _modules(*names: str) -> Any:
    from semper.agents.runtime._config import PaymentSettings

    return PaymentSettings(bank="bank", modules=names)


class Fixed:
    """A clock an hour ahead of the machine's, that moves only when told."""

    def __init__(self) -> None:
        self.ms = time.time_ns() // 1_000_000 + 3_600_000

    def now_ms(self) -> int:
        return self.ms


async def test_one_injected_clock_reaches_statements_archive_and_books(market: Path) -> None:
    clock = Fixed()
    bank = Agent(config_of(market, "bank"), clock=clock)
    buyer = Agent(config_of(market, "buyer"), clock=clock)
    with trio.fail_after(DEADLINE):
        async with running(bank), running(buyer):
            signed = buyer.evidence.sign("test.note", {"n": 1})
            assert signed.issued_at == clock.ms
            assert bank.context.now_ms() == clock.ms
            receipt = await buyer.evidence.deliver("bank", "buyer/clock", signed)
            assert receipt.issued_at == clock.ms  # the bank's statement, the bank's clock
            for agent in (buyer, bank):
                records = await agent.archive.records("buyer/clock")
                assert records and {r.recorded_at for r in records} == {clock.ms}
            await bank.database.transaction(lambda c: ledger.open_account(c, "seller", "EUR"))
            book = bank.component(BankService).book
            entry = await bank.database.transaction(lambda c: ledger.move(
                c, "buyer", "seller", Amount("EUR", 1), kind="test", time_ms=book.now_ms()))
            time_ms = await bank.database.read(lambda c: c.execute(
                "SELECT time_ms FROM ledger_entries WHERE entry = ?", (entry,)).fetchone()[0])
            assert time_ms == clock.ms


def test_a_system_account_is_the_banks_own() -> None:
    assert ledger.system_account("vouchers") == "@vouchers"
    for bad in ("issuance", "Bad", "", "a" * 40):
        with pytest.raises(ValueError):
            ledger.system_account(bad)


def test_every_code_folder_is_a_package_that_installs() -> None:
    """setup.py installs what it discovers: a folder of code without __init__.py
    would be left out silently, so there is none."""
    root = Path(__file__).resolve().parent.parent
    for top in ("agents", "transport", "services"):
        for folder in [root / top, *(root / top).rglob("*")]:
            if folder.is_dir() and any(folder.glob("*.py")):
                assert (folder / "__init__.py").exists(), folder


@pytest.mark.parametrize("role", ["ca", "bank", "seller", "buyer", "notary"])
def test_every_op_an_agent_serves_is_declared_in_services(market: Path, role: str) -> None:
    """What the built-in roles serve is what services/ declares (and test_ops_doc holds
    the declarations to docs/protocol.md): no op is served that is not declared."""
    import test_ops_doc

    declared = set(test_ops_doc.services_ops())
    agent = Agent(config_of(market, role))
    served = {f"{service}.{op}" for service, op in agent.registry.ops()}
    assert served and served <= declared, served - declared


def test_the_bank_and_the_ledger_name_no_instrument() -> None:
    """Every instrument's bank half is a component of its own (agents/instruments/,
    or a plugin's package): the bank's own files name none of them."""
    root = Path(__file__).resolve().parent.parent / "agents"
    for path in ("components/_bank.py", "components/_ledger.py", "roles/bank.py",
                 "cli/cmd_bank.py"):
        text = (root / path).read_text().lower()
        assert "transfer" not in text and "cheque" not in text, path


def test_an_agent_that_is_no_bank_loads_none_of_the_banks_books() -> None:
    """The runtime and a buyer's role import no bank code (every agent used to import
    the ledger through the market tools)."""
    import subprocess
    import sys

    code = ("import sys; import semper.agents; import semper.agents.roles.buyer; "
            "import semper.agents.roles.seller; "
            "bad = [m for m in sys.modules if m.endswith(('._bank', '._ledger', '._market'))]; "
            "print(bad); assert not bad")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


class Greeter(Component):
    """A component with settings of its own: ``[components.greeter] greeting``."""

    name = "greeter"

    def configure(self, settings: Mapping[str, Any]) -> None:
        unknown = set(settings) - {"greeting"}
        greeting = settings.get("greeting", "hello")
        if unknown or not isinstance(greeting, str):
            raise ConfigError(f"[components.greeter] takes greeting = 'TEXT', not {settings}")
        self.greeting = greeting


class Greeters(Role):
    name = "notary"
    components = (Greeter, Counter)


def _notary(market: Path, monkeypatch: pytest.MonkeyPatch, **tables: Any) -> Agent:
    monkeypatch.setattr(agent_module, "load_role", lambda name: Greeters)
    try:
        return Agent(config_of(market, "notary", components=tables))
    finally:
        monkeypatch.undo()


def test_a_component_takes_its_settings_from_its_own_table(
        market: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert _notary(market, monkeypatch).component(Greeter).greeting == "hello"
    agent = _notary(market, monkeypatch, greeter={"greeting": "bonjour"})
    assert agent.component(Greeter).greeting == "bonjour"
    with pytest.raises(ConfigError, match="greeter"):
        _notary(market, monkeypatch, greeter={"greeting": 3})
    with pytest.raises(ConfigError, match="takes no settings"):
        _notary(market, monkeypatch, counter={"size": 1})
    with pytest.raises(ConfigError, match=r"\[components.greter\] names no component"):
        _notary(market, monkeypatch, greter={"greeting": "typo"})


def test_component_tables_survive_the_config_file(market: Path, tmp_path: Path) -> None:
    config = config_of(market, "notary", components={"greeter": {"greeting": "hi"}})
    path = market / "notary" / "again.toml"
    path.write_text(config.to_toml(base=path.parent))
    assert AgentConfig.load(path).components == {"greeter": {"greeting": "hi"}}


async def test_the_context_verifies_a_peers_statement_with_the_markets_root_and_crl(
        market: Path) -> None:
    from semper.services.statements import StatementError

    buyer, bank = Agent(config_of(market, "buyer")), Agent(config_of(market, "bank"))
    signed = buyer.evidence.sign("test.note", {"n": 1})
    certificate = buyer.credentials.identity.certificate
    identity = bank.context.verify(signed, certificate, expected_type="test.note",
                                   expected_signer="buyer")
    assert (identity.agent_id, identity.role) == ("buyer", "buyer")
    with pytest.raises(StatementError) as refused:
        bank.context.verify(signed, certificate, expected_signer="seller")
    assert refused.value.code.startswith("statement.")
