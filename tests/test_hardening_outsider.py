"""Issue 7 checked again from outside, kind by kind, by a new user and a hostile
peer with valid market credentials: each test is a hole found that way (the member
of a kind the first round had not covered) or a probe worth keeping.

Real loopback TLS, real SQLite, agents in the test's trio loop (market_helpers).
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import stat
import time
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from channel_helpers import channel_pair, echo_registry
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from market_helpers import DEADLINE, config_of, make_market, running
from pki import Market as PkiMarket
from test_commerce_wire import Market
from test_hardening_payments import m, returned_to  # noqa: F401 (m: the fixture)

from semper.agents.cli import cli
from semper.agents.components._purchase import Shopper
from semper.agents.instruments import cheque as cheque_bank
from semper.agents.operator._enroll import EnrollFolderError, enroll
from semper.agents.operator._market import revoke_agent
from semper.agents.operator._operator import invite_agent
from semper.agents.roles.seller import Sales
from semper.agents.runtime import _events
from semper.agents.runtime._agent import Agent
from semper.services.archive import EvidenceBundle
from semper.services.certificates import EnrollmentToken, Level
from semper.services.commerce import Order
from semper.services.payment import amount_from_wire
from semper.services.payment.cheque import CHEQUE, Cheque, ChequeProof
from semper.services.statements import Statement
from semper.transport import (
    ChannelClosed,
    ChannelConfig,
    HandshakeFailed,
    RemoteError,
    Request,
    RequestContext,
    TlsConfig,
    request_pinned,
    serve_anonymous,
)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return make_market(tmp_path / "market")


def _private_crl(folder: Path, agent_id: str) -> Path:
    """A copy of the CRL as it is now, as an enrolled agent keeps (``agent enroll``
    writes crl.pem in the agent's own folder): only the CA agent can tell it of a
    revocation published later."""
    copy = folder / agent_id / "own-crl.pem"
    shutil.copy(folder / "ca" / "crl.pem", copy)
    return copy


# -- kind 1: a revocation reaches a command acting as an agent ------------------------


async def test_a_command_asks_the_ca_agent_for_revocations_before_its_first_dial(
        folder: Path) -> None:
    # The hole: an enrolled buyer (its own CRL copy, no agent running: `semper buy`)
    # bought from a seller the CA had revoked since, and paid it (only a CRL past its
    # nextUpdate made a command ask the CA agent).
    own = _private_crl(folder, "buyer")
    ca = Agent(config_of(folder, "ca"))
    seller = Agent(config_of(folder, "seller"))
    async with running(ca), running(seller):
        revoke_agent(folder, "seller")  # published to the CA's file, not to the copy
        buyer = Agent(config_of(folder, "buyer", crl=own))
        async with buyer.session():
            with trio.fail_after(DEADLINE), pytest.raises(Exception) as refused:
                await Shopper(buyer).catalogue("seller")
        assert "revoked" in str(refused.value)
        assert getattr(refused.value, "code", "").startswith("auth.")


async def test_revoking_an_agent_cancels_the_tokens_it_has_not_redeemed(
        folder: Path, tmp_path: Path) -> None:
    # The hole: `semper ca revoke DIR X` of an agent invited but not enrolled yet said
    # "the CA issued it no certificate" (exit 1) and X enrolled afterwards with a good
    # certificate; and an agent holding a second token enrolled again, fresh, right
    # after it was revoked.
    def invite(agent_id: str) -> EnrollmentToken:
        return invite_agent(folder, agent_id, role="buyer", level=Level.VERIFIED_CONTACT).token

    first, second = invite("shop"), invite("shop")
    later = invite("late")
    async with running(Agent(config_of(folder, "ca"))):
        with trio.fail_after(DEADLINE):
            await enroll(first, tmp_path / "shop")
        revoke_agent(folder, "shop")
        result = CliRunner().invoke(cli, ["ca", "revoke", str(folder), "late"],
                                    prog_name="semper")
        assert result.exit_code == 0, result.output
        assert "1 outstanding invitation cancelled" in result.output
        for token, home in ((second, "shop-again"), (later, "late")):
            with trio.fail_after(DEADLINE), pytest.raises(Exception) as refused:
                await enroll(token, tmp_path / home)
            assert getattr(refused.value, "code", None) == "enroll.token_used"
            assert not (tmp_path / home).exists()
    status = CliRunner().invoke(cli, ["ca", "status", str(folder), "shop"], prog_name="semper")
    assert "revoked" in status.output


# -- kind 3 and 5: what a peer can make us archive is bounded ------------------------


async def test_orders_count_against_the_buyers_archive_quota(folder: Path) -> None:
    # The hole: evidence.deliver kept within [evidence] peer_quota_bytes, but every
    # commerce.order (free to send, one signature each) archived its order and a sale
    # without any bound: 300 orders grew the seller's archive by 224 KB past a 20 KB
    # quota, at ~300 orders/s.
    quota = 20_000
    seller = Agent(config_of(folder, "seller", evidence_peer_quota=quota))
    async with running(seller):
        buyer = Agent(config_of(folder, "buyer"))
        async with buyer.session():
            catalogue, _ = await Shopper(buyer).catalogue("seller")

            async def order(key: str) -> tuple[object, dict]:
                body = Order.for_offer(catalogue.offers[0], buyer="buyer",
                                       payment_module="transfer", idempotency_key=key)
                signed = buyer.evidence.sign(body.TYPE, body.to_body())
                return signed, await buyer.request("seller", "commerce", "order",
                                                   {"order": signed.to_wire()})

            first, _ = await order("spam-0")
            codes = []
            for i in range(1, 60):
                try:
                    await order(f"spam-{i}")
                except Exception as exc:
                    codes.append(getattr(exc, "code", None))
            # An order accepted before is still answered: nothing new is kept for it.
            again = await buyer.request("seller", "commerce", "order", {"order": first.to_wire()})
            assert again["order"] == first.digest
        records, size = await seller.archive.usage("buyer")
    assert codes and set(codes) == {"evidence.quota_exceeded"}
    assert size + records * 256 <= quota


async def test_stopping_cheques_is_for_customers_and_bounded(
        folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The hole: bank.stop_cheque kept a row for every serial any market agent named,
    # an account or not, without bound (500 rows in 1.5 s from the notary, which has
    # no account): free, unbounded growth of the bank's books.
    monkeypatch.setattr(cheque_bank, "MAX_STOPPED", 3)
    bank = Agent(config_of(folder, "bank"))
    async with running(bank):
        notary = Agent(config_of(folder, "notary"))
        async with notary.session():
            with pytest.raises(RemoteError) as refused:
                await notary.request("bank", "bank", "stop_cheque", {"serial": "s0"})
            assert refused.value.code == "payment.unknown_account"
        buyer = Agent(config_of(folder, "buyer"))
        async with buyer.session():
            for i in range(3):
                await buyer.request("bank", "bank", "stop_cheque", {"serial": f"s{i}"})
            await buyer.request("bank", "bank", "stop_cheque", {"serial": "s1"})  # again: ok
            with pytest.raises(RemoteError) as refused:
                await buyer.request("bank", "bank", "stop_cheque", {"serial": "s3"})
            assert refused.value.code == "payment.too_many_stopped"
            assert refused.value.detail == {"stopped": 3, "max": 3}
        rows = await bank.database.read(lambda c: c.execute(
            "SELECT payer, count(*) FROM bank_cheques GROUP BY payer").fetchall())
    assert rows == [("buyer", 3)]


async def test_a_cheque_that_bounces_is_not_archived_by_the_payee(folder: Path) -> None:
    # The hole: the seller archived each cheque handed over before depositing it, so
    # a buyer handing over cheque after cheque on stopped serials (free) grew the
    # seller's archive without bound, past its quota.
    seller = Agent(config_of(folder, "seller"))
    async with running(Agent(config_of(folder, "bank"))), running(seller):
        buyer = Agent(config_of(folder, "buyer"))
        async with buyer.session():
            catalogue, _ = await Shopper(buyer).catalogue("seller")
            body = Order.for_offer(catalogue.offers[0], buyer="buyer", payment_module="cheque",
                                   idempotency_key="o-1")
            order = buyer.evidence.sign(body.TYPE, body.to_body())
            answer = await buyer.request("seller", "commerce", "order",
                                         {"order": order.to_wire()})
            before = await seller.archive.usage("buyer")
            for i in range(5):
                serial = f"bounce-{i}"
                await buyer.request("bank", "bank", "stop_cheque", {"serial": serial})
                cheque = Cheque(payer="buyer", payee="seller", bank="bank",
                                amount=amount_from_wire(answer["amount"]), serial=serial,
                                expires_at=time.time_ns() // 1_000_000 + 86_400_000,
                                reference=order.digest)
                proof = ChequeProof(cheque=buyer.evidence.sign(CHEQUE, cheque.to_body()),
                                    drawer_certificate=buyer.identity.certificate)
                with pytest.raises(RemoteError) as refused:
                    await buyer.request("seller", "payment", "accept", {
                        "module": "cheque", "reference": order.digest,
                        "proof": proof.to_wire()})
                assert refused.value.code == "payment.cheque_stopped"
            assert await seller.archive.usage("buyer") == before
            # A cheque that clears is archived, with the bank's word that it cleared.
            outcome = await Shopper(buyer).buy("seller", catalogue.offers[0].body["sku"],
                                               "cheque", "o-2")
            assert outcome.state == "done"
        kept = {Statement.from_bytes(r.statement).type
                for r in await seller.archive.records(outcome.order.hex())}
    assert {"payment.cheque", "payment.cheque_cleared"} <= kept


# -- kind 10: a failed or odd command leaves nothing half-written ---------------------


def test_goods_and_bundles_written_to_a_pipe_leave_the_pipe_in_place(folder: Path) -> None:
    # The hole: `-o` wrote a temporary file and renamed it over the path, so
    # `semper goods ... -o PIPE` (or `archive export -o PIPE`, or `-o /dev/stdout`)
    # replaced the pipe with a regular file and the reader got nothing; run as root,
    # `-o /dev/null` replaced the device node itself.
    async def buy() -> bytes:
        async with running(Agent(config_of(folder, "bank"))), \
                running(Agent(config_of(folder, "seller"))):
            buyer = Agent(config_of(folder, "buyer"))
            async with buyer.session():
                outcome = await Shopper(buyer).buy("seller", "song-003", "transfer", "k-1")
                assert outcome.goods
                return outcome.goods

    goods = trio.run(buy)
    config = str(folder / "buyer" / "agent.toml")
    for args in (["goods", "--config", config, "k-1"],
                 ["archive", "export", "--config", config, "k-1"]):
        pipe = folder / "pipe"
        os.mkfifo(pipe)
        reader = os.open(pipe, os.O_RDONLY | os.O_NONBLOCK)  # so the writer's open returns
        try:
            result = CliRunner().invoke(cli, [*args, "-o", str(pipe)], prog_name="semper")
            assert result.exit_code == 0, result.output
            assert stat.S_ISFIFO(os.lstat(pipe).st_mode)
            got = os.read(reader, 1 << 16)
        finally:
            os.close(reader)
            pipe.unlink()
        if args[0] == "goods":
            assert got == goods
        else:
            assert EvidenceBundle.from_bytes(got).records
        assert not list(folder.glob(".pipe*"))


# -- kind 8: a payment that reaches the seller is used or returned --------------------


@pytest.mark.parametrize("cited", ["no order", "another buyer's order"])
async def test_a_transfer_citing_no_order_of_the_payer_is_returned(
        m: Market, cited: str) -> None:  # noqa: F811 (the fixture imported above)
    # The hole: the seller gave back a transfer it would not use only when it cited one
    # of the payer's orders; one citing a reference that is no order of the payer's
    # (mistyped, an order the seller lost, another buyer's order) was refused with
    # commerce.unknown_order and the money stayed with the seller.
    reference = b"\x07" * 32
    if cited != "no order":
        reference = (await m.place(await m.offer(), key="theirs")).digest
    before = await m.balances()
    proof = await m["mallory"].request("bank", "bank", "transfer", m.transfer_order(
        "mallory", "seller", 700, key="lost-1", reference=reference))
    assert (await m.balances())["seller"] == before["seller"] + 700
    refusal = await m.refused("mallory", "seller", "payment", "accept", {
        "module": "transfer", "reference": reference, "proof": proof})
    assert refusal.code == "commerce.unknown_order"
    await returned_to(m, refusal, 700)
    assert await m.balances() == before
    # Handed over again: the first refusal, nothing more moves.
    again = await m.refused("mallory", "seller", "payment", "accept", {
        "module": "transfer", "reference": reference, "proof": proof})
    assert again.code == "commerce.unknown_order"
    assert await m.balances() == before


async def test_the_event_log_one_peer_can_fill_is_bounded(
        folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The hole: every request served is a line in data/events.jsonl, with no bound:
    # one peer pinging from one channel grew it by 7.4 MB in 5 s (~130 GB a day).
    monkeypatch.setattr(_events, "MAX_BYTES", 20_000)
    seller = Agent(config_of(folder, "seller"))
    log = folder / "seller" / "data" / "events.jsonl"
    async with running(seller):
        buyer = Agent(config_of(folder, "buyer"))
        async with buyer.session(), buyer.connect("seller") as channel:
            for i in range(400):
                await channel.request("sys", "ping", i)
    old = log.with_name("events.jsonl.1")
    assert old.stat().st_size <= 20_000 and log.stat().st_size <= 20_000
    last = log.read_text().splitlines()[-1]
    assert '"event"' in last  # whole lines, the newest kept


# -- kind 3: what one peer's requests make us hold ------------------------------------


async def test_the_requests_a_peer_makes_us_hold_are_bounded(market: PkiMarket) -> None:
    # The hole: a peer with 1,024 requests of 1 MB in flight per channel, each waiting
    # on a lock in its handler (payment.accept naming one reference), made the seller
    # hold them all: 4 channels for 10 s took a real seller from 55 MiB to 1.6 GiB.
    # The reader now stops while the requests held pass write_high_water.
    started = 0
    release = trio.Event()

    async def slow(_ctx: RequestContext, body: Any) -> Any:
        nonlocal started
        started += 1
        await release.wait()
        return len(body)

    registry = echo_registry()
    registry.add_service("slow")
    registry.add_op("slow", "hold", slow)
    config = ChannelConfig(write_high_water=100_000)
    async with channel_pair(market, server_registry=registry, server_config=config) as pair:
        answers: list[int] = []

        async def ask() -> None:
            answers.append(await pair.client.request("slow", "hold", b"x" * 30_000))

        async with trio.open_nursery() as nursery:
            for _ in range(40):
                nursery.start_soon(ask)
            await trio.testing.wait_all_tasks_blocked()
            assert started <= 100_000 // 30_000 + 1  # not 40
            assert pair.server._held <= 100_000 + 30_100
            release.set()
        assert answers == [30_000] * 40
        assert pair.server._held == 0


# -- kinds 1 and 8: a revocation in the middle of a payment -----------------------------


async def test_a_buyer_revoked_while_its_cheque_clears_still_gets_its_sale(
        folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The hole: a CRL naming the buyer cancels the handlers of its channels, and so
    # cancelled payment.accept after the bank had cleared the cheque and before the
    # sale was settled: the money stayed with the seller, the sale unpaid, and the
    # revoked buyer could not come back to settle it. A step that moves money now
    # finishes what it started (settles the sale) before the channel's handlers stop.
    bank, seller = Agent(config_of(folder, "bank")), Agent(config_of(folder, "seller"))
    cleared, go_on = trio.Event(), trio.Event()
    role = seller.component(Sales)
    accept = role.payments.accept

    async def slow_accept(*args: Any, **kwargs: Any) -> Any:
        result = await accept(*args, **kwargs)
        cleared.set()  # the bank has moved the money; the sale is not settled yet
        await go_on.wait()
        return result

    save, settled = role._save, trio.Event()

    async def watched_save(*args: Any, **kwargs: Any) -> None:
        await save(*args, **kwargs)
        if kwargs.get("payment") is not None:
            settled.set()

    monkeypatch.setattr(role.payments, "accept", slow_accept)
    monkeypatch.setattr(role, "_save", watched_save)
    async with running(bank), running(seller):
        buyer = Agent(config_of(folder, "buyer"))
        async with buyer.session():
            async def buy() -> None:
                with pytest.raises((ChannelClosed, RemoteError)):  # revoked: closed
                    await Shopper(buyer).buy("seller", "map-002", "cheque", "k-rev")

            async with trio.open_nursery() as nursery:
                nursery.start_soon(buy)
                with trio.fail_after(DEADLINE):
                    await cleared.wait()
                revoke_agent(folder, "buyer")
                assert seller.apply_crl((folder / "ca" / "crl.pem").read_bytes())
                await trio.testing.wait_all_tasks_blocked(cushion=0.05)
                go_on.set()
        with trio.fail_after(DEADLINE):
            await settled.wait()  # the settling step ran to its end
        states = await seller.database.read(lambda c: c.execute(
            "SELECT state, payment IS NOT NULL FROM commerce_sales").fetchall())
    assert states == [("receipted", 1)]


async def test_a_second_crl_with_the_number_of_ours_does_not_undo_a_revocation(
        folder: Path) -> None:
    # The hole: the operator restores ca/crl.pem from a backup taken before a
    # revocation and re-issues it (`semper ca crl`): the new CRL has the number of the
    # one that revoked the seller, without the seller, and running agents applied it
    # (only a lower number was refused): the seller was good again.
    backup = (folder / "ca" / "crl.pem").read_bytes()
    bank = Agent(config_of(folder, "bank"))
    seller_der = x509.load_pem_x509_certificate(
        (folder / "seller" / "cert.pem").read_bytes()).public_bytes(serialization.Encoding.DER)
    async with running(bank):
        revoke_agent(folder, "seller")
        assert bank.apply_crl((folder / "ca" / "crl.pem").read_bytes())
        (folder / "ca" / "crl.pem").write_bytes(backup)
        result = CliRunner().invoke(cli, ["ca", "crl", str(folder)], prog_name="semper")
        assert result.exit_code == 0, result.output
        await bank.reread_crl_file()
        with pytest.raises(Exception) as refused:
            bank.verify_peer(seller_der, "seller")
        assert getattr(refused.value, "code", None) == "auth.revoked"
        # Nor does the next one, issued from the restored file: it lacks the revocation.
        result = CliRunner().invoke(cli, ["ca", "crl", str(folder)], prog_name="semper")
        assert result.exit_code == 0, result.output
        await bank.reread_crl_file()
        with pytest.raises(Exception) as refused:
            bank.verify_peer(seller_der, "seller")
        assert getattr(refused.value, "code", None) == "auth.revoked"


async def test_the_enrollment_listener_caps_its_connections(market: PkiMarket) -> None:
    # The hole: the CA agent's enrollment listener (anyone may connect: no client
    # certificate) had no cap: 3,000 idle connections held 145 MiB and 3,000 file
    # descriptors of the CA agent. Now the oldest is dropped past max_connections,
    # and a newcomer that sends its request promptly is still answered.
    server = market.agent("ca", "ca")
    config = TlsConfig(cert_path=server.cert_path, key_path=server.key_path,
                       root_pem=market.root_pem, crl_pem=market.crl_pem)
    pin = hashlib.sha256(server.cert.public_bytes(serialization.Encoding.DER)).digest()

    async def handler(request: Request) -> Any:
        return {"echo": request.body}

    def check(der: bytes) -> None:
        assert hashlib.sha256(der).digest() == pin

    async with trio.open_nursery() as nursery:
        _, port = await nursery.start(functools.partial(
            serve_anonymous, "127.0.0.1", 0, context=config.server_only_context(),
            handler=handler, timeout=DEADLINE, max_connections=8))
        idle = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(20)]
        try:
            with trio.fail_after(DEADLINE):
                answer = await request_pinned("127.0.0.1", port, check_server=check,
                                              service="enroll", op="request", body=b"hi")
                assert answer == {"echo": b"hi"}
                assert await idle[0].receive_some(1) == b""  # the oldest was dropped
        finally:
            for stream in idle:
                await trio.aclose_forcefully(stream)
        nursery.cancel_scope.cancel()


async def test_a_bug_on_one_enrollment_connection_never_reaches_the_ca_agent(
        folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The kind-2 rule on the enrollment listener: serve caught any failure of one
    # connection, serve_anonymous only the transport's own errors, so anything else
    # (a CA agent started at 16:26 with the code of then died during these probes)
    # went up into the CA agent's nursery and ended the agent.
    from semper.transport import _anonymous

    real, calls = _anonymous._answer, 0

    async def buggy(*args: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("a bug met by one connection")
        return await real(*args)

    monkeypatch.setattr(_anonymous, "_answer", buggy)
    token = invite_agent(folder, "shop", role="buyer", level=Level.VERIFIED_CONTACT).token
    ca = Agent(config_of(folder, "ca"))
    async with running(ca):
        with trio.fail_after(DEADLINE):
            with pytest.raises((HandshakeFailed, ChannelClosed)):  # closed, no answer
                await enroll(token, tmp_path / "first")
            await enroll(token, tmp_path / "shop")  # the agent and its listener live
        async with Agent(config_of(folder, "bank")).session() as bank:
            assert (await bank.request("ca", "sys", "ping", b"x"))["echo"] == b"x"


async def test_an_enrollment_folder_that_cannot_be_made_is_refused_before_the_token_is_spent(
        folder: Path, tmp_path: Path) -> None:
    # The hole: `agent enroll --data-dir FILE/x` redeemed the token, then failed to
    # make the folder (os.error): the certificate issued, its key lost, the token
    # spent and the id taken ("revoke it first") -- a half-made state at the CA.
    token = invite_agent(folder, "shop", role="buyer", level=Level.VERIFIED_CONTACT).token
    a_file = tmp_path / "a-file"
    a_file.write_bytes(b"")
    async with running(Agent(config_of(folder, "ca"))):
        with trio.fail_after(DEADLINE):
            with pytest.raises(EnrollFolderError):
                await enroll(token, a_file / "shop")
            await enroll(token, tmp_path / "shop")  # the token still works
