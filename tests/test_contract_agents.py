"""Contract signing between agents (agents/components/_contracts.py, _notary.py;
protocol.md 10.2, 10.6): in-process agents over real loopback TLS and real SQLite.

The buyer is the originator, the seller the responder, the market's notary decides.
A faultless run ends signed by the exchange with no notary decision; an unapproved
text is refused before the responder signs anything and the originator aborts; a
responder gone before the originator's N_O arrives leaves the originator to resolve,
and, restarted, resolves by itself to the same contract; an originator that dies
holding m2 resolves on restart; the notary's chain continues across its restarts.
"""

from __future__ import annotations

import shutil
import sqlite3
import tomllib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
from market_helpers import DEADLINE, config_of, make_market, running, wait_until

from semper.agents import Agent
from semper.agents.components import _archive
from semper.agents.components._contracts import Contracts, UnknownContract, Unresolved
from semper.agents.components._notary import NotaryDecisions
from semper.agents.runtime._config import AgentConfig, ConfigError, FairExchangeSettings
from semper.services.archive import verify_chain
from semper.services.certificates import certificate_der
from semper.services.fairexchange import (
    ABORT_REQUEST_TYPE,
    CONTRACT_PROPOSE,
    M1,
    M2,
    NOTARY_ABORT,
    AbortRequest,
    DecisionBody,
    Originator,
    Start,
    conflict,
    secret_commit,
)
from semper.services.fairexchange._bodies import AbortWire, ProposeWire, Secrets
from semper.services.fairexchange._errors import WrongExchange
from semper.services.statements import Statement
from semper.transport import RemoteError

TEXT = b"The seller delivers 12 crates of apples to the buyer by 1 March.\n"


@pytest.fixture(scope="module")
def prebuilt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_market(tmp_path_factory.mktemp("contracts") / "market")


@pytest.fixture
def market(prebuilt: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(prebuilt, tmp_path / "market"))


def agent(market: Path, agent_id: str) -> Agent:
    return Agent(config_of(market, agent_id))


@asynccontextmanager
async def agents(market: Path, *ids: str) -> AsyncIterator[dict[str, Agent]]:
    started: dict[str, Agent] = {}
    async with trio.open_nursery() as nursery:
        scopes = []
        for agent_id in ids:
            one = agent(market, agent_id)
            scope = trio.CancelScope()
            scopes.append(scope)

            async def serve(one: Agent = one, scope: trio.CancelScope = scope, *,
                            task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                            ) -> None:
                with scope:
                    async with running(one):
                        task_status.started()
                        await trio.sleep_forever()

            await nursery.start(serve)
            started[agent_id] = one
        try:
            yield started
        finally:
            nursery.cancel_scope.cancel()


def rows(market: Path, agent_id: str, sql: str, *args: object) -> list[tuple[object, ...]]:
    connection = sqlite3.connect(market / agent_id / "data" / "agent.sqlite")
    try:
        return connection.execute(sql, args).fetchall()
    finally:
        connection.close()


def state_of(market: Path, agent_id: str, exchange: bytes) -> str | None:
    found = rows(market, agent_id, "SELECT state FROM contract_exchanges WHERE exchange = ?",
                 exchange)
    return None if not found else str(found[0][0])


def decisions(market: Path) -> list[Statement]:
    return [Statement.from_bytes(s) for (s,) in rows(  # type: ignore[arg-type]
        market, "notary", "SELECT statement FROM notary_decisions ORDER BY seq")]


def archived(market: Path, agent_id: str, exchange: bytes) -> list[str]:
    return [str(t) for (t,) in rows(
        market, agent_id, "SELECT statement FROM archive_records WHERE txn = ? ORDER BY seq",
        exchange.hex())
        for t in [Statement.from_bytes(t).type]]  # type: ignore[arg-type]


def chain_intact(market: Path, agent_id: str) -> None:
    connection = sqlite3.connect(market / agent_id / "data" / "agent.sqlite")
    try:
        verify_chain(_archive.read_records(connection))
    finally:
        connection.close()


async def test_a_faultless_exchange_is_signed_by_both_without_the_notary(market: Path) -> None:
    with trio.fail_after(DEADLINE):
        async with agents(market, "notary", "seller", "buyer") as on:
            await on["seller"].component(Contracts).approve("buyer", TEXT)
            view = await on["buyer"].component(Contracts).sign("seller", TEXT)
            assert (view.state, view.resolved_by, view.role) == ("signed", "exchange",
                                                                 "originator")
            theirs = await on["seller"].component(Contracts).view(view.exchange)
            assert (theirs.state, theirs.resolved_by, theirs.text) == ("signed", "exchange",
                                                                       TEXT)
    assert decisions(market) == []
    for party in ("buyer", "seller"):
        assert archived(market, party, view.exchange) == [
            "fairexchange.m1", "fairexchange.m2", "fairexchange.secrets"]
        chain_intact(market, party)
        # the standard contract travels as statements: the secrets open m1's and m2's
        # commitments
        m1, m2, held = [Statement.from_bytes(t) for (t,) in rows(  # type: ignore[arg-type]
            market, party, "SELECT statement FROM archive_records WHERE txn = ? ORDER BY seq",
            view.exchange.hex())]
        secrets = Secrets.from_statement(held)
        assert (secrets.m1, secrets.m2) == (m1.digest, m2.digest)
        assert secret_commit(secrets.secret_o) == M1.from_statement(m1).commit
        assert secret_commit(secrets.secret_r) == M2.from_statement(m2).commit


async def test_an_unapproved_text_is_refused_before_the_responder_signs(market: Path) -> None:
    with trio.fail_after(DEADLINE):
        async with agents(market, "notary", "seller", "buyer") as on:
            await on["seller"].component(Contracts).approve("buyer", b"another text")
            await on["seller"].component(Contracts).approve("bank", TEXT)  # another party
            with pytest.raises(RemoteError) as refused:
                await on["buyer"].component(Contracts).sign("seller", TEXT)
            assert refused.value.code == "fairexchange.not_approved"
    assert rows(market, "seller", "SELECT * FROM contract_exchanges") == []
    assert rows(market, "seller", "SELECT * FROM archive_records") == []
    (exchange,) = [x for (x,) in rows(market, "buyer", "SELECT exchange FROM contract_exchanges")]
    assert state_of(market, "buyer", exchange) == "aborted"  # type: ignore[arg-type]
    (decision,) = decisions(market)
    assert DecisionBody.from_statement(decision).decision == "abort"


async def test_a_responder_that_cannot_be_reached_leaves_the_originator_aborted(
        market: Path) -> None:
    with trio.fail_after(DEADLINE):
        async with agents(market, "notary", "buyer") as on:  # no seller running
            view = await on["buyer"].component(Contracts).sign("seller", TEXT)
    assert (view.state, view.resolved_by) == ("aborted", "notary")


async def test_a_responder_gone_after_m2_is_resolved_by_both_to_the_same_contract(
        market: Path) -> None:
    """The instance of the issue's Done-when, in process: the responder stops right
    after answering m2; the originator resolves; the responder, restarted, resolves
    by itself (run) and holds the same contract."""
    with trio.fail_after(DEADLINE):
        async with agents(market, "notary", "buyer") as on:
            seller_scope = trio.CancelScope()
            gone = trio.Event()
            async with trio.open_nursery() as nursery:
                seller = agent(market, "seller")

                async def serve_seller(*, task_status: trio.TaskStatus[None]
                                       = trio.TASK_STATUS_IGNORED) -> None:
                    with seller_scope:
                        async with running(seller):
                            task_status.started()
                            await trio.sleep_forever()
                    gone.set()

                await nursery.start(serve_seller)
                await seller.component(Contracts).approve("buyer", TEXT)
                buyer = on["buyer"].component(Contracts)
                original = buyer._reveal

                async def reveal_after_the_seller_died(*args: object) -> object:
                    seller_scope.cancel()
                    await gone.wait()
                    return await original(*args)  # type: ignore[arg-type]

                buyer._reveal = reveal_after_the_seller_died  # type: ignore[method-assign]
                view = await buyer.sign("seller", TEXT)
            assert (view.state, view.resolved_by) == ("signed", "notary")
            assert state_of(market, "seller", view.exchange) == "await_secret"
            restarted = agent(market, "seller")
            async with running(restarted):
                await wait_until(lambda: state_of(market, "seller", view.exchange) == "signed",
                                 "the restarted seller resolved")
                theirs = await restarted.component(Contracts).view(view.exchange)
    assert (theirs.state, theirs.resolved_by) == ("signed", "notary")
    (decision,) = decisions(market)  # one decision, answered to both
    assert DecisionBody.from_statement(decision).decision == "resolve"
    assert "fairexchange.decision" in archived(market, "seller", view.exchange)
    for party in ("buyer", "seller", "notary"):
        chain_intact(market, party)


async def test_an_originator_holding_m2_resolves_on_resume(market: Path) -> None:
    """Another member of the kind: the originator stops after storing m2 (before it
    reveals N_O); resumed, it resolves, and the responder's own deadline (here
    short) resolves it too, to the same decision."""
    with trio.fail_after(DEADLINE):
        async with agents(market, "notary", "seller") as on:
            await on["seller"].component(Contracts).approve("buyer", TEXT)
            buyer = agent(market, "buyer")
            async with buyer.session():
                contracts = buyer.component(Contracts)

                class Stop(Exception):
                    pass

                async def stop(*args: object) -> object:
                    raise Stop()

                contracts._reveal = stop  # type: ignore[method-assign]
                with pytest.raises(Stop):
                    await contracts.sign("seller", TEXT)
                (exchange,) = await contracts.in_flight()
                assert state_of(market, "buyer", exchange) == "await_secret"
            buyer = agent(market, "buyer")
            async with buyer.session():
                view = await buyer.component(Contracts).resume(exchange)
            assert (view.state, view.resolved_by) == ("signed", "notary")
            seller = on["seller"].component(Contracts)
            assert (await seller.resume(exchange)).state == "signed"
    (decision,) = decisions(market)
    assert DecisionBody.from_statement(decision).decision == "resolve"


async def test_the_notary_answers_one_decision_per_exchange_and_its_chain_continues(
        market: Path) -> None:
    """Two exchanges aborted across a notary restart: the same decision answered
    twice for one, and the second decision links to the first (seq, previous)."""
    with trio.fail_after(DEADLINE):
        async with agents(market, "notary", "buyer") as on:
            buyer = on["buyer"].component(Contracts)
            first = await buyer.sign("seller", TEXT)  # no seller: aborted
            again = await buyer.resume(first.exchange)
            assert again.state == "aborted"
        async with agents(market, "notary", "buyer") as on:
            second = await on["buyer"].component(Contracts).sign("seller", TEXT)
            notary = on["notary"].component(NotaryDecisions)
            book = await notary.book()
            assert book.seq == 2
    one, two = decisions(market)
    assert DecisionBody.from_statement(one).exchange == first.exchange
    assert DecisionBody.from_statement(two).exchange == second.exchange
    assert DecisionBody.from_statement(two).previous == one.digest
    assert conflict(one, two) is None


async def test_the_notary_refuses_an_abort_from_someone_not_the_originator(
        market: Path) -> None:
    """The buyer asks the notary to abort an exchange the seller originated (the
    seller's m1, its certificate attached): fairexchange.not_party, nothing decided."""
    with trio.fail_after(DEADLINE):
        async with agents(market, "notary", "seller") as on:
            seller = on["seller"]
            machine = Originator(exchange=bytes(range(32)), originator="seller",
                                 responder="buyer", notary="notary", text=TEXT,
                                 secret=bytes(32),
                                 sign=lambda t, b, n: seller.context.sign(t, b),
                                 verify=lambda *a, **k: None)
            machine.receive(Start(), now_ms=seller.context.now_ms())
            assert machine.m1 is not None
            buyer = agent(market, "buyer")
            async with buyer.session():
                request = buyer.context.sign(ABORT_REQUEST_TYPE, AbortRequest(
                    exchange=bytes(range(32)), m1=machine.m1).to_body())
                with pytest.raises(RemoteError) as refused:
                    await buyer.context.call("notary", NOTARY_ABORT, AbortWire(
                        request=request,
                        certificates=(certificate_der(seller.context.certificate),)))
            assert refused.value.code == "fairexchange.not_party"
    assert decisions(market) == []


async def test_show_of_an_unknown_contract_is_refused(market: Path) -> None:
    buyer = agent(market, "buyer")
    async with buyer.session():
        with pytest.raises(UnknownContract):
            await buyer.component(Contracts).view(bytes(32))



async def test_a_responder_left_without_n_o_resolves_by_itself_at_its_deadline(
        market: Path) -> None:
    """The originator never reveals N_O (it stops holding m2); the responder's own
    deadline ([fairexchange] deadline, short here) sends it to the notary."""
    short = FairExchangeSettings(notary="notary", deadline=0.2)
    with trio.fail_after(DEADLINE):
        async with agents(market, "notary") as _:
            seller = Agent(config_of(market, "seller", fairexchange=short))
            async with running(seller):
                await seller.component(Contracts).approve("buyer", TEXT)
                buyer = agent(market, "buyer")
                async with buyer.session():
                    contracts = buyer.component(Contracts)

                    class Stop(Exception):
                        pass

                    async def stop(*args: object) -> object:
                        raise Stop()

                    contracts._reveal = stop  # type: ignore[method-assign]
                    with pytest.raises(Stop):
                        await contracts.sign("seller", TEXT)
                    (exchange,) = await contracts.in_flight()
                await wait_until(lambda: state_of(market, "seller", exchange) == "signed",
                                 "the seller resolved at its deadline")
                view = await seller.component(Contracts).view(exchange)
    assert (view.state, view.resolved_by) == ("signed", "notary")
    (decision,) = decisions(market)
    assert DecisionBody.from_statement(decision).decision == "resolve"


async def test_a_replayed_m1_gets_nothing_and_a_repeated_one_the_same_m2(
        market: Path) -> None:
    """Shmatikov-Mitchell's replay, at the agents: the m1 of a finished exchange sent
    again is refused (fairexchange.replayed), by its originator or anyone else who
    saw it (fairexchange.wrong_exchange); while the exchange is open the same m1
    gets the same m2 (a lost answer asked again)."""
    with trio.fail_after(DEADLINE):
        async with agents(market, "notary", "seller", "buyer", "bank") as on:
            await on["seller"].component(Contracts).approve("buyer", TEXT)
            view = await on["buyer"].component(Contracts).sign("seller", TEXT)
            m1 = next(Statement.from_bytes(s) for (s,) in rows(  # type: ignore[arg-type]
                market, "buyer", "SELECT statement FROM archive_records WHERE txn = ?",
                view.exchange.hex()) if Statement.from_bytes(s).type == "fairexchange.m1")
            propose = ProposeWire(text=TEXT, m1=m1)
            with pytest.raises(RemoteError) as replayed:
                await on["buyer"].context.call("seller", CONTRACT_PROPOSE, propose)
            assert replayed.value.code == "fairexchange.replayed"
            with pytest.raises(RemoteError) as other:
                await on["bank"].context.call("seller", CONTRACT_PROPOSE, propose)
            assert other.value.code == "fairexchange.wrong_exchange"
            # an open exchange: the originator's first message asked again
            buyer = on["buyer"].component(Contracts)

            class Stop(Exception):
                pass

            async def stop(*args: object) -> object:
                raise Stop()

            buyer._reveal = stop  # type: ignore[method-assign]
            with pytest.raises(Stop):
                await buyer.sign("seller", TEXT)
            (exchange,) = await buyer.in_flight()
            (m1,) = [Statement.from_bytes(s) for (s,) in rows(  # type: ignore[arg-type]
                market, "buyer", "SELECT statement FROM archive_records WHERE txn = ?"
                " ORDER BY seq LIMIT 1", exchange.hex())]
            first, second = [(await on["buyer"].context.call(
                "seller", CONTRACT_PROPOSE, ProposeWire(text=TEXT, m1=m1))).m2
                for _ in range(2)]
            assert first == second
    assert len(archived(market, "seller", exchange)) == 2  # m1 and m2, once each


@pytest.mark.parametrize("table", [{"notary": "Not An Id"}, {"notary": 7}, {"deadline": 0},
                                   {"deadline": True}, {"deadline": "30"}, {"other": 1}])
def test_a_bad_fairexchange_table_is_a_config_error(prebuilt: Path, table: dict[str, object]
                                                     ) -> None:
    path = prebuilt / "buyer" / "agent.toml"
    raw = tomllib.loads(path.read_text())
    raw["fairexchange"] = table
    with pytest.raises(ConfigError) as refused:
        AgentConfig.from_dict(raw, base=path.parent)
    assert refused.value.code == "agent.bad_config" and "fairexchange" in refused.value.message


def test_market_init_names_the_notary_in_every_party_s_config(prebuilt: Path) -> None:
    for agent_id in ("buyer", "seller", "bank", "ca", "arbiter"):
        config = config_of(prebuilt, agent_id)
        assert config.fairexchange == FairExchangeSettings(notary="notary")
        assert AgentConfig.from_dict(tomllib.loads(config.to_toml(base=prebuilt / agent_id)),
                                     base=prebuilt / agent_id).fairexchange == config.fairexchange
    assert config_of(prebuilt, "notary").fairexchange.notary is None


async def test_sign_refuses_before_signing_when_the_notary_is_absent_or_no_notary(
        market: Path) -> None:
    """A notary that cannot be reached, or an agent that is not a notary: refused
    before m1 is signed, nothing stored (the exchange could never be settled)."""
    with trio.fail_after(DEADLINE):
        async with agents(market, "seller", "bank") as on:  # no notary running
            await on["seller"].component(Contracts).approve("buyer", TEXT)
            buyer = agent(market, "buyer")
            async with buyer.session():
                contracts = buyer.component(Contracts)
                with pytest.raises(Unresolved):
                    await contracts.sign("seller", TEXT)
                with pytest.raises(WrongExchange) as not_notary:
                    await contracts.sign("seller", TEXT, notary="bank")
                assert not_notary.value.detail == {"field": "notary"}
                assert await contracts.in_flight() == []
    assert rows(market, "buyer", "SELECT * FROM contract_exchanges") == []
    assert rows(market, "seller", "SELECT * FROM contract_exchanges") == []
