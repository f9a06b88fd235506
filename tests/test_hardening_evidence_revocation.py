"""Issue 7, kind 4: the verifier, not the evidence's author, decides revocation.

A CRL proves that a certificate was not revoked only up to its thisUpdate; a bundle's
own CRL is what its exporter chose to put in. These tests build a market with
explicit times (a root, a seller and a buyer, CRLs before and after the seller's
revocation) and check bundles with ``verify_bundle`` and with ``semper archive check``.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.serialization import Encoding

from semper.agents.cli import cli
from semper.services.archive import (
    ArchiveRecord,
    CrlTooOld,
    InvalidEvidence,
    collect_bundle,
    next_record,
    verify_bundle,
)
from semper.services.certificates import (
    CertificateAuthority,
    Revocation,
    create_ca,
    issue_agent_certificate,
    issue_crl,
)
from semper.services.statements import Statement, sign_statement

EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
HOUR = dt.timedelta(hours=1)


def ms(when: dt.datetime) -> int:
    return (when - EPOCH) // dt.timedelta(milliseconds=1)


@dataclass
class Party:
    agent_id: str
    key: ed25519.Ed25519PrivateKey
    cert: x509.Certificate


@dataclass
class World:
    """Times are relative to ``t0``, which is 10 hours before the real clock, so that
    ``semper archive check`` (which uses the real clock) sees all of it as past."""

    t0: dt.datetime
    ca: CertificateAuthority
    seller: Party
    buyer: Party
    revoked: list[Revocation] = field(default_factory=list)
    number: int = 0
    chain: list[ArchiveRecord] = field(default_factory=list)

    def at(self, hours: float) -> dt.datetime:
        return self.t0 + hours * HOUR

    def crl(self, hours: float) -> x509.CertificateRevocationList:
        self.number += 1
        return issue_crl(self.ca, self.revoked, now=self.at(hours), number=self.number)

    def revoke(self, party: Party, hours: float) -> None:
        self.revoked.append(Revocation(party.cert.serial_number, self.at(hours)))

    def sign(self, party: Party, hours: float, type: str = "test.note",
             body: dict[str, Any] | None = None, *, transaction: str = "tx-1") -> Statement:
        statement = sign_statement(type, body or {"n": len(self.chain)}, key=party.key,
                                   certificate=party.cert, now_ms=ms(self.at(hours)),
                                   nonce=len(self.chain).to_bytes(16, "big"))
        self.chain.append(next_record(
            self.chain[-1] if self.chain else None,
            direction="sent" if party is self.seller else "received", peer="buyer",
            transaction=transaction, statement=statement,
            recorded_at=ms(self.at(hours))))
        return statement

    def bundle(self, crl: x509.CertificateRevocationList, transaction: str = "tx-1") -> Any:
        return collect_bundle(self.chain, transaction=transaction,
                              certificates=[self.seller.cert, self.buyer.cert], crl=crl,
                              root=self.ca.certificate)


def _party(ca: CertificateAuthority, agent_id: str, role: str, now: dt.datetime) -> Party:
    key = ed25519.Ed25519PrivateKey.generate()
    cert = issue_agent_certificate(ca, agent_id=agent_id, role=role,
                                   public_key=key.public_key(), now=now)
    return Party(agent_id, key, cert)


@pytest.fixture
def world() -> World:
    t0 = dt.datetime.now(dt.UTC).replace(microsecond=0) - 10 * HOUR
    ca = create_ca("test root", now=t0 - HOUR)
    return World(t0, ca, _party(ca, "seller", "seller", t0 - HOUR),
                 _party(ca, "buyer", "buyer", t0 - HOUR))


def _refused(bundle: Any, world: World, error: type[Exception], now_h: float = 9,
             crls: tuple[x509.CertificateRevocationList, ...] = ()) -> Any:
    with pytest.raises(error) as info:
        verify_bundle(bundle, root=world.ca.certificate, now=world.at(now_h), crls=crls)
    return info.value


# -- the instance ---------------------------------------------------------------------


def test_a_statement_signed_after_the_bundles_crl_needs_a_newer_one(world: World) -> None:
    """The issue's instance: the CA revoked the seller; a new statement signed with its
    key, bundled with the CRL from before the revocation, used to pass."""
    before = world.crl(0)
    world.sign(world.seller, 1, "commerce.offer", {"sku": "book"})
    world.revoke(world.seller, 2)
    after = world.crl(2)
    world.sign(world.seller, 3, "commerce.receipt", {"forged": True})  # the stolen key
    bundle = world.bundle(before)
    error = _refused(bundle, world, CrlTooOld)
    assert error.code == "archive.crl_too_old"
    assert (error.detail["seq"], error.detail["issued_at"]) == (0, ms(world.at(1)))
    assert error.detail["crl_this_update"] == ms(before.last_update_utc)
    # The verifier's newer CRL decides: the seller is revoked, nothing dates the
    # statements before the revocation, so neither counts.
    error = _refused(bundle, world, InvalidEvidence, crls=(after,))
    assert (error.detail["seq"], error.detail["cause"]) == (0, "auth.revoked")
    assert error.detail["revoked_at"] == ms(world.at(2))


def test_the_cli_says_a_newer_crl_is_needed(world: World, tmp_path: Path) -> None:
    before = world.crl(0)
    world.revoke(world.seller, 2)
    after = world.crl(2)
    world.sign(world.seller, 3, "commerce.receipt", {"forged": True})
    (tmp_path / "root.pem").write_bytes(world.ca.certificate.public_bytes(Encoding.PEM))
    (tmp_path / "after.pem").write_bytes(after.public_bytes(Encoding.PEM))
    (tmp_path / "tx.bundle").write_bytes(world.bundle(before).to_bytes())
    runner = CliRunner()
    args = ["archive", "check", str(tmp_path / "tx.bundle"), "--root",
            str(tmp_path / "root.pem")]
    done = runner.invoke(cli, args)
    assert done.exit_code == 1
    assert done.stderr.startswith("semper: archive.crl_too_old: ")
    assert len(done.stderr.splitlines()) == 1 and "--crl" in done.stderr
    done = runner.invoke(cli, [*args, "--crl", str(tmp_path / "after.pem")])
    assert done.exit_code == 1
    assert done.stderr.startswith("semper: archive.invalid_evidence: ")
    assert "revoked" in done.stderr


# -- the rule, both ways ---------------------------------------------------------------


def test_statements_before_the_crl_of_a_good_signer_verify(world: World) -> None:
    world.sign(world.seller, 1)
    world.sign(world.buyer, 2)
    crl = world.crl(3)
    verified = verify_bundle(world.bundle(crl), root=world.ca.certificate, now=world.at(4))
    assert [(v.record.seq, v.signer.agent_id, v.witness) for v in verified] == [
        (0, "seller", None), (1, "buyer", None)]
    # a statement signed exactly at the CRL's thisUpdate is covered by it
    world.sign(world.buyer, (crl.last_update_utc - world.t0) / HOUR)
    assert len(verify_bundle(world.bundle(crl), root=world.ca.certificate,
                             now=world.at(4))) == 3


def test_a_revoked_signers_statement_counts_when_the_counterparty_dated_it(
    world: World,
) -> None:
    """The seller's offer, then the buyer's order quoting its digest, then the seller's
    revocation: the order is independent evidence that the offer existed before."""
    offer = world.sign(world.seller, 1, "commerce.offer", {"sku": "book"})
    world.sign(world.buyer, 1.5, "commerce.order", {"offer_digest": offer.digest})
    late = world.sign(world.seller, 4, "commerce.delivery", {"n": 1})
    world.revoke(world.seller, 5)
    crl = world.crl(5)
    error = _refused(world.bundle(crl), world, InvalidEvidence)
    assert (error.detail["seq"], error.detail["cause"]) == (2, "auth.revoked")  # `late`
    world.chain.pop()
    verified = verify_bundle(world.bundle(crl), root=world.ca.certificate, now=world.at(6))
    assert [(v.record.seq, v.witness, v.revoked_at) for v in verified] == [
        (0, 1, ms(world.at(5))), (1, None, None)]
    assert late.digest not in {v.statement.digest for v in verified}


def test_a_witness_must_be_independent_and_dated_before_the_revocation(
    world: World,
) -> None:
    """Another member of the kind: the signer's own word (a second statement of its
    own naming the first), or a witness dated after the revocation, dates nothing."""
    offer = world.sign(world.seller, 1, "commerce.offer", {"sku": "book"})
    world.sign(world.seller, 1.5, "test.note", {"about": offer.digest})  # its own
    world.revoke(world.seller, 3)
    world.sign(world.buyer, 4, "commerce.order", {"offer_digest": offer.digest})  # too late
    crl = world.crl(5)
    error = _refused(world.bundle(crl), world, InvalidEvidence)
    assert (error.detail["seq"], error.detail["cause"]) == (0, "auth.revoked")


def test_a_witness_under_another_certificate_of_the_same_agent_is_not_independent(
    world: World,
) -> None:
    offer = world.sign(world.seller, 1, "commerce.offer", {"sku": "book"})
    again = _party(world.ca, "seller", "seller", world.t0 - HOUR)  # re-enrolled seller
    statement = sign_statement("test.note", {"about": offer.digest}, key=again.key,
                               certificate=again.cert, now_ms=ms(world.at(1.5)),
                               nonce=b"\x01" * 16)
    world.chain.append(next_record(world.chain[-1], direction="sent", peer="buyer",
                                   transaction="tx-1", statement=statement,
                                   recorded_at=ms(world.at(1.5))))
    world.revoke(world.seller, 3)
    crl = world.crl(5)
    bundle = collect_bundle(world.chain, transaction="tx-1",
                            certificates=[world.seller.cert, again.cert], crl=crl,
                            root=world.ca.certificate)
    error = _refused(bundle, world, InvalidEvidence)
    assert (error.detail["seq"], error.detail["cause"]) == (0, "auth.revoked")


def test_an_older_crl_from_the_verifier_does_not_hide_the_bundles_revocation(
    world: World, tmp_path: Path,
) -> None:
    """Another member: ``--crl`` used to replace the bundle's CRL whatever its age, so an
    older CRL given by mistake (or on purpose) hid a revocation the bundle showed. The
    newest CRL at hand decides, whoever brought it."""
    before = world.crl(0)
    world.sign(world.seller, 1, "commerce.offer", {"sku": "book"})
    world.revoke(world.seller, 2)
    after = world.crl(2)
    bundle = world.bundle(after)
    error = _refused(bundle, world, InvalidEvidence, crls=(before,))
    assert (error.detail["seq"], error.detail["cause"]) == (0, "auth.revoked")
    (tmp_path / "root.pem").write_bytes(world.ca.certificate.public_bytes(Encoding.PEM))
    (tmp_path / "before.pem").write_bytes(before.public_bytes(Encoding.PEM))
    (tmp_path / "tx.bundle").write_bytes(bundle.to_bytes())
    done = CliRunner().invoke(cli, ["archive", "check", str(tmp_path / "tx.bundle"),
                                    "--root", str(tmp_path / "root.pem"),
                                    "--crl", str(tmp_path / "before.pem")])
    assert done.exit_code == 1 and "revoked" in done.stderr
    assert done.stderr.startswith("semper: archive.invalid_evidence: ")


def test_the_newest_crl_must_be_current_and_every_crl_the_roots(world: World,
                                                                  tmp_path: Path) -> None:
    world.sign(world.buyer, 1)
    stale = issue_crl(world.ca, [], now=world.at(2), number=7,
                      next_update=dt.timedelta(hours=1))
    error = _refused(world.bundle(stale), world, InvalidEvidence, now_h=9)
    assert error.detail["seq"] is None
    assert error.detail["cause"] in ("auth.bad_crl", "auth.crl_stale")  # stale: a bad CRL
    other = create_ca("other root", now=world.t0)
    foreign = issue_crl(other, [], now=world.at(3), number=99)
    error = _refused(world.bundle(world.crl(2)), world, InvalidEvidence, crls=(foreign,))
    assert (error.detail["seq"], error.detail["cause"]) == (None, "auth.bad_crl")


# -- the verifier's own CRL, fetched from the CA agent ---------------------------------


async def test_check_with_config_fetches_the_ca_agents_crl(tmp_path: Path) -> None:
    """``--config``: the agent's CRL files (here a stale copy) and the CA agent's
    current CRL, fetched over a channel; when the CA cannot be reached the check goes
    on with what is at hand and says the fetch failed. The market is made ten minutes
    ago and the statements a minute ago, so that the CA's newer CRL can postdate them
    and still be in the past (OpenSSL takes no CRL from the future)."""
    import shutil

    import trio

    from semper.agents import Agent, AgentConfig
    from semper.agents.components import _archive
    from semper.agents.operator._market import init_market, load_authority
    from semper.agents.runtime._storage import Database
    from semper.services.certificates import load_crl

    market = tmp_path / "m"
    now = dt.datetime.now(dt.UTC)
    init_market(market, now=now - 10 * dt.timedelta(minutes=1))
    shutil.copy(market / "ca" / "crl.pem", market / "seller" / "stale-crl.pem")
    stale = market / "seller" / "stale.toml"
    stale.write_text((market / "seller" / "agent.toml").read_text().replace(
        'crl = "../ca/crl.pem"', 'crl = "stale-crl.pem"'))
    buyer = Agent(AgentConfig.load(market / "buyer" / "agent.toml")).credentials
    notes = [sign_statement("test.note", {"n": n}, key=buyer.key,
                            certificate=buyer.identity.certificate,
                            now_ms=ms(now) - 60_000 + n, nonce=bytes([n]) * 16)
             for n in range(3)]
    database = Database.open_sync(market / "seller" / "data" / "agent.sqlite",
                                  _archive.MIGRATIONS)
    database.transaction_sync(lambda c: _archive.append(c, [
        _archive.entry(note, direction="received", peer="buyer", transaction="buyer/t",
                       certificate=buyer.identity.certificate) for note in notes]))
    database.close()
    out = tmp_path / "tx.bundle"
    runner = CliRunner()
    done = runner.invoke(cli, ["archive", "export", "--config", str(stale), "buyer/t", "-o",
                               str(out)])
    assert done.exit_code == 0, done.stderr
    # The CA publishes CRL 2, thisUpdate 30 s ago (issue_crl may backdate: measured).
    ca_key = load_authority(market / "ca" / "root.pem", market / "ca" / "root-key.pem", None)
    wanted = (now - dt.timedelta(seconds=30)).replace(microsecond=0)
    shift = wanted - issue_crl(ca_key, [], now=wanted, number=2).last_update_utc
    (market / "ca" / "crl.pem").write_bytes(
        issue_crl(ca_key, [], now=wanted + shift, number=2).public_bytes(Encoding.PEM))
    assert load_crl((market / "ca" / "crl.pem").read_bytes()).last_update_utc == wanted
    args = ["archive", "check", str(out), "--root", str(market / "ca" / "root.pem"),
            "--config", str(stale), "--json"]
    done = runner.invoke(cli, args)  # no CA agent running: the stale CRL is all there is
    assert done.exit_code == 1
    assert done.stderr.startswith("semper: archive.crl_too_old: ")
    assert "could not be fetched" in done.stderr
    ca = Agent(AgentConfig.load(market / "ca" / "agent.toml"))
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(ca.run)
            done = await trio.to_thread.run_sync(runner.invoke, cli, args)
            nursery.cancel_scope.cancel()
    assert done.exit_code == 0, done.stderr
    assert __import__("json").loads(done.stdout)["crl"]["number"] == 2


async def test_check_with_config_has_the_ca_agent_issue_a_crl_after_the_statements(
        tmp_path: Path) -> None:
    """A bundle checked right after its statements: ``--config`` asks the CA agent for
    a CRL issued after the last of them (``fresh_after``), which it issues then and
    there, at most once per ``fresh_crl_interval``."""
    import trio

    from semper.agents import Agent, AgentConfig
    from semper.agents.components import _archive
    from semper.agents.operator._market import init_market
    from semper.agents.runtime._storage import Database

    market = tmp_path / "m"
    now = dt.datetime.now(dt.UTC)
    init_market(market, now=now - 10 * dt.timedelta(minutes=1))
    buyer = Agent(AgentConfig.load(market / "buyer" / "agent.toml")).credentials
    note = sign_statement("test.note", {"n": 1}, key=buyer.key,
                          certificate=buyer.identity.certificate, now_ms=ms(now) - 1000,
                          nonce=b"\x01" * 16)
    database = Database.open_sync(market / "seller" / "data" / "agent.sqlite",
                                  _archive.MIGRATIONS)
    database.transaction_sync(lambda c: _archive.append(c, [
        _archive.entry(note, direction="received", peer="buyer", transaction="buyer/t",
                       certificate=buyer.identity.certificate)]))
    database.close()
    out = tmp_path / "tx.bundle"
    config = str(market / "seller" / "agent.toml")
    runner = CliRunner()
    done = runner.invoke(cli, ["archive", "export", "--config", config, "buyer/t", "-o",
                               str(out)])
    assert done.exit_code == 0, done.stderr
    args = ["archive", "check", str(out), "--root", str(market / "ca" / "root.pem"),
            "--json"]
    done = runner.invoke(cli, args)  # the market's own CRL is from before the note
    assert done.stderr.startswith("semper: archive.crl_too_old: ")
    ca = Agent(AgentConfig.load(market / "ca" / "agent.toml"))
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(ca.run)
            done = await trio.to_thread.run_sync(runner.invoke, cli, [*args, "--config",
                                                                      config])
            nursery.cancel_scope.cancel()
    assert done.exit_code == 0, done.stderr
    assert __import__("json").loads(done.stdout)["crl"]["number"] == 2
