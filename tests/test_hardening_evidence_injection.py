"""Issue 7, kind 5: a peer cannot write into another party's evidence.

``evidence.deliver`` used to take any transaction name: a stranger could file
statements under a real purchase of the seller's, which then shipped inside that
purchase's evidence bundle, and enough of them (33,000) made the bundle's list pass
the codec's 65,536 limit so that ``semper archive export`` failed. Here: deliveries
only into transactions the receiver shares with that peer alone or new ones in the
peer's own name space, a per-peer quota, bundles in chunks, and the CLI's export by
idempotency key or prefix with the purchase's offer inside.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import trio
from click.testing import CliRunner
from market_helpers import newer_crl
from test_commerce_wire import GUIDE, running_market

from semper.agents import Agent, AgentConfig
from semper.agents.cli import cli
from semper.agents.components import _archive
from semper.agents.components._purchase import Shopper
from semper.agents.operator._market import init_market
from semper.agents.runtime._identity import utcnow
from semper.agents.runtime._storage import Database
from semper.services.archive import EvidenceBundle, verify_bundle
from semper.services.archive import _bundle as bundle_module
from semper.services.statements import _canonical
from semper.transport import RemoteError

DEADLINE = 60.0


async def _refused(agent: Agent, peer: str, transaction: str, body: dict[str, Any]) -> Any:
    with pytest.raises(RemoteError) as info:
        await agent.evidence.deliver(peer, transaction, agent.evidence.sign("test.note", body))
    return info.value


async def test_a_stranger_cannot_deliver_into_someone_elses_purchase(tmp_path: Path) -> None:
    """The issue's instance, at small scale: mallory (another buyer) delivers into the
    transaction of the buyer's real purchase at the seller."""
    async with running_market(tmp_path / "m") as m:
        seller, mallory = m["seller"], m["mallory"]
        bought = await Shopper(m["buyer"]).buy("seller", GUIDE, "transfer", "k-1")
        purchase = bought.order.hex()
        before = await seller.archive.verify()
        for n in range(20):
            error = await _refused(mallory, "seller", purchase, {"n": n})
            assert error.code == "evidence.foreign_transaction"
            assert error.detail["transaction"] == purchase
        # Nor into another agent's name space, nor a name nobody holds yet.
        for name in ("buyer/notes", "notes", "offers"):
            error = await _refused(mallory, "seller", name, {"n": name})
            assert error.code == "evidence.foreign_transaction", name
        assert await seller.archive.verify() == before
        # Its own name space is open to it; a transaction it shares with the seller
        # alone stays open to it; the buyer, party to the purchase, may add to it.
        await mallory.evidence.deliver("seller", "mallory/notes",
                                       mallory.evidence.sign("test.note", {"n": 1}))
        await mallory.evidence.deliver("seller", "mallory/notes",
                                       mallory.evidence.sign("test.note", {"n": 2}))
        await m["buyer"].evidence.deliver("seller", purchase,
                                          m["buyer"].evidence.sign("test.note", {"ok": 1}))
        # and the seller may answer into the thread mallory opened with it
        await seller.evidence.deliver("mallory", "mallory/notes",
                                      seller.evidence.sign("test.note", {"re": 1}))
        error = await _refused(seller, "mallory", "buyer/other", {"x": 1})
        assert error.code == "evidence.foreign_transaction"  # the buyer's name space
        bundle = await seller.archive.export_bundle(purchase, crl=seller.crl,
                                                    root=seller.credentials.root)
        signers = {record.peer for record in bundle.records}
        assert signers == {"buyer"}
        verified = verify_bundle(bundle, root=seller.credentials.root, now=utcnow(),
                                 crls=[newer_crl(tmp_path / "m")])
        assert {v.signer.agent_id for v in verified} == {"buyer", "seller", "bank"}


async def test_quoting_a_purchase_does_not_put_a_statement_in_its_bundle(
    tmp_path: Path,
) -> None:
    """Another member: bundles now carry records of other transactions that the
    transaction's statements name (the offer an order quotes). The relation is one
    way, so a peer cannot join a bundle by naming its statements in its own."""
    async with running_market(tmp_path / "m") as m:
        seller, mallory = m["seller"], m["mallory"]
        bought = await Shopper(m["buyer"]).buy("seller", GUIDE, "transfer", "k-1")
        records = await seller.archive.records(bought.order.hex())
        digests = [bundle_module.Statement.from_bytes(r.statement).digest for r in records]
        await mallory.evidence.deliver("seller", "mallory/claims", mallory.evidence.sign(
            "test.claim", {"about": digests, "order": bought.order}))
        bundle = await seller.archive.export_bundle(bought.order.hex(), crl=seller.crl,
                                                    root=seller.credentials.root)
        assert [r.seq for r in bundle.records] == [r.seq for r in records]
        assert {r.transaction for r in bundle.records} == {bought.order.hex()}


async def test_each_peer_grows_the_archive_only_up_to_its_quota(tmp_path: Path) -> None:
    init_market(tmp_path / "m")
    small = dataclasses.replace(AgentConfig.load(tmp_path / "m" / "seller" / "agent.toml"),
                                evidence_peer_quota=6000)
    seller = Agent(small)
    buyer = Agent(AgentConfig.load(tmp_path / "m" / "buyer" / "agent.toml"))
    notary = Agent(AgentConfig.load(tmp_path / "m" / "notary" / "agent.toml"))
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            for agent in (seller, buyer, notary):
                await nursery.start(agent.run)
            delivered = 0
            for n in range(50):  # bounded: the quota is a few deliveries
                try:
                    await buyer.evidence.deliver("seller", "buyer/flood",
                                                 buyer.evidence.sign("test.note", {"n": n}))
                except RemoteError as exc:
                    assert exc.code == "evidence.quota_exceeded"
                    assert exc.detail["quota"] == 6000
                    assert exc.detail["used"] + exc.detail["cost"] > 6000
                    break
                delivered += 1
            assert 2 <= delivered < 50
            length = await seller.archive.verify()
            assert length == 2 * delivered  # the refused delivery left nothing
            records, size = await seller.archive.usage("buyer")
            assert records == 2 * delivered
            assert size + records * _archive.RECORD_OVERHEAD <= 6000
            # Another peer has a quota of its own.
            await notary.evidence.deliver("seller", "notary/x",
                                          notary.evidence.sign("test.note", {"n": 0}))
            nursery.cancel_scope.cancel()


def test_the_quota_is_configured_per_agent(tmp_path: Path) -> None:
    init_market(tmp_path / "m")
    path = tmp_path / "m" / "seller" / "agent.toml"
    assert AgentConfig.load(path).evidence_peer_quota == 64 * 1024 * 1024
    text = path.read_text()
    path.write_text(text + "\n[evidence]\npeer_quota_bytes = 1048576\n")
    config = AgentConfig.load(path)
    assert config.evidence_peer_quota == 1 << 20
    assert "peer_quota_bytes = 1048576" in config.to_toml(base=path.parent)
    for bad in ("peer_quota_bytes = 0", "peer_quota_bytes = 'many'", "other = 1"):
        path.write_text(text + f"\n[evidence]\n{bad}\n")
        done = CliRunner().invoke(cli, ["archive", "verify", "--config", str(path)])
        assert done.exit_code == 1 and "[evidence]" in done.stderr, bad


# -- bundles of any size ------------------------------------------------------------------


def _fill(market: Path, transaction: str, count: int) -> None:
    """``count`` records of the buyer's statements in the seller's archive, written
    straight to SQLite (the sizes at stake would take minutes over the wire)."""
    async def sign() -> list[Any]:
        buyer = Agent(AgentConfig.load(market / "buyer" / "agent.toml"))
        return [buyer.evidence.sign("test.note", {"n": n}) for n in range(count)], buyer

    statements, buyer = trio.run(sign)
    certificate = buyer.credentials.identity.certificate
    database = Database.open_sync(market / "seller" / "data" / "agent.sqlite",
                                  _archive.MIGRATIONS)
    try:
        database.transaction_sync(lambda c: _archive.append(c, [
            _archive.entry(s, direction="received", peer="buyer", transaction=transaction,
                           certificate=certificate) for s in statements]))
    finally:
        database.close()


def test_export_and_check_handle_more_records_than_one_list_holds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The issue's 65,536-element list, at a scale a test can afford: the codec's list
    limit lowered to 8 (bundles in chunks of 4), and 30 records in one transaction.
    Before, export failed with an internal error; now the bundle exports and checks."""
    market = tmp_path / "m"
    init_market(market)
    _fill(market, "buyer/flood", 30)
    monkeypatch.setattr(_canonical, "MAX_CONTAINER", 8)
    monkeypatch.setattr(bundle_module, "CHUNK", 4)
    runner = CliRunner()
    out = tmp_path / "flood.bundle"
    done = runner.invoke(cli, ["archive", "export", "--config",
                               str(market / "seller" / "agent.toml"), "buyer/flood", "-o",
                               str(out)])
    assert done.exit_code == 0, done.stderr
    assert "wrote 30 statements" in done.stdout
    wire = _canonical.canonical_decode(out.read_bytes())
    assert [len(chunk) for chunk in wire["records"]] == [4] * 7 + [2]
    newer_crl(market)
    done = runner.invoke(cli, ["archive", "check", str(out), "--root",
                               str(market / "ca" / "root.pem"), "--crl",
                               str(market / "ca" / "crl.pem"), "--json"])
    assert done.exit_code == 0, done.stderr
    assert len(__import__("json").loads(done.stdout)["verified"]) == 30
    assert len(EvidenceBundle.from_bytes(out.read_bytes()).records) == 30


# -- the new user's export ------------------------------------------------------------------


async def test_export_by_idempotency_key_or_prefix_includes_the_offer(tmp_path: Path) -> None:
    async with running_market(tmp_path / "m") as m:
        await Shopper(m["buyer"]).buy("seller", GUIDE, "transfer", "my-first-book")
        await Shopper(m["buyer"]).buy("seller", "song-003", "transfer", "my-second")
        await Shopper(m["buyer"]).buy("seller", GUIDE, "transfer", "my-third")  # again
    market = tmp_path / "m"
    buyer_cfg = str(market / "buyer" / "agent.toml")
    runner = CliRunner()
    out = tmp_path / "first.bundle"
    done = runner.invoke(cli, ["archive", "export", "--config", buyer_cfg, "my-first-book",
                               "-o", str(out)])
    assert done.exit_code == 0, done.stderr
    bundle = EvidenceBundle.from_bytes(out.read_bytes())
    newer_crl(market)
    done = runner.invoke(cli, ["archive", "check", str(out), "--root",
                               str(market / "ca" / "root.pem"), "--crl",
                               str(market / "ca" / "crl.pem"), "--json"])
    assert done.exit_code == 0, done.stderr
    rows = __import__("json").loads(done.stdout)["verified"]
    types = [row["type"] for row in rows]
    assert types[0] == "commerce.offer" and "commerce.order" in types
    assert rows[0]["transaction"] == "offers" and rows[0]["signer"] == "seller"
    order = next(r for r in bundle.records if r.transaction == bundle.transaction)
    # A unique prefix of the transaction works too; the seller's side has the offer
    # inside the order only, and its bundle is the purchase's records.
    prefix = bundle.transaction[:10]
    for config in (buyer_cfg, str(market / "seller" / "agent.toml")):
        done = runner.invoke(cli, ["archive", "export", "--config", config, prefix, "-o",
                                   str(tmp_path / "p.bundle")])
        assert done.exit_code == 0, done.stderr
        assert EvidenceBundle.from_bytes((tmp_path / "p.bundle").read_bytes()).transaction \
            == bundle.transaction
    assert order.seq > rows[0]["seq"]
    # The guide bought again: its bundle holds the offer once, not each time it was kept.
    done = runner.invoke(cli, ["archive", "export", "--config", buyer_cfg, "my-third", "-o",
                               str(tmp_path / "third.bundle")])
    assert done.exit_code == 0, done.stderr
    third = EvidenceBundle.from_bytes((tmp_path / "third.bundle").read_bytes())
    offers = [r for r in third.records if r.transaction == "offers"]
    assert len(offers) == 1 and offers[0].statement == bundle.records[0].statement
    # Nothing of that name, or a name that fits several: one line with a code.
    for name, code in (("nothing-like-it", "archive.unknown_transaction"),
                       ("", "archive.ambiguous_transaction")):  # "" starts every name
        done = runner.invoke(cli, ["archive", "export", "--config", buyer_cfg, name, "-o",
                                   str(tmp_path / "x.bundle")])
        assert done.exit_code == 1 and done.stderr.startswith(f"semper: {code}: "), name
        assert len(done.stderr.splitlines()) == 1
        assert not (tmp_path / "x.bundle").exists()


def _records(folder: Path) -> list[Any]:
    database = Database.open_sync(folder / "data" / "agent.sqlite", _archive.MIGRATIONS)
    try:
        return database.read_sync(_archive.read_records)
    finally:
        database.close()


async def test_concurrent_deliveries_do_not_pass_the_quota_together(tmp_path: Path) -> None:
    """Both pass the check before the commit; the check inside the commit lets one in."""
    init_market(tmp_path / "m")
    seller = Agent(AgentConfig.load(tmp_path / "m" / "seller" / "agent.toml"))
    buyer = Agent(AgentConfig.load(tmp_path / "m" / "buyer" / "agent.toml"))
    outcomes: list[str] = []

    async def deliver(n: int) -> None:
        try:
            await buyer.evidence.deliver("seller", "buyer/race",
                                         buyer.evidence.sign("test.note", {"n": n}))
            outcomes.append("ok")
        except RemoteError as exc:
            outcomes.append(exc.code)

    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            for agent in (seller, buyer):
                await nursery.start(agent.run)
            await deliver(0)
            records, size = await seller.archive.usage("buyer")
            used = size + records * _archive.RECORD_OVERHEAD
            seller.config = dataclasses.replace(seller.config,
                                                evidence_peer_quota=used * 5 // 2)
            async with trio.open_nursery() as racers:
                for n in (1, 2):
                    racers.start_soon(deliver, n)
            nursery.cancel_scope.cancel()
    assert sorted(outcomes) == ["evidence.quota_exceeded", "ok", "ok"]
    database = Database.open_sync(tmp_path / "m" / "seller" / "data" / "agent.sqlite",
                                  _archive.MIGRATIONS)
    try:
        assert len(database.read_sync(_archive.read_records)) == 4
    finally:
        database.close()
