"""Only errors meant for the wire reach a peer (issue 8, item 5).

An error declares that it is meant for the peer with ``wire = True`` (every
``ServiceError``, the transport's protocol errors, the agents' refusals); any other
exception a handler raises, coded or not, reaches the peer as ``internal.error`` with
a fixed message and is logged here in full. The instance: ``agent.bad_config``, whose
message names files of the agent, went to the peer as it was.
"""

from __future__ import annotations

import functools
import hashlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio
from channel_helpers import channel_pair, echo_registry
from cryptography.hazmat.primitives import serialization
from pki import Market

from semper.agents.cli._common import CliError
from semper.agents.components._archive import UnknownTransaction
from semper.agents.components._evidence import ForeignTransaction, QuotaExceeded, ReceiptMismatch
from semper.agents.components._ledger import BooksUnbalanced
from semper.agents.components._purchase import PurchaseBusy, PurchaseFailed
from semper.agents.operator._market import MarketError
from semper.agents.runtime._config import ConfigError
from semper.agents.runtime._identity import KeyError_
from semper.agents.runtime._roles import RoleNotFound
from semper.agents.runtime._storage import StorageError
from semper.services.payment import InsufficientFunds
from semper.transport import (
    ChannelClosed,
    ConnectFailed,
    RemoteError,
    Request,
    RequestContext,
    RequestTimeout,
    ServiceRegistry,
    TlsConfig,
    TooManyChannels,
    is_wire_error,
    request_pinned,
    serve_anonymous,
    transport_error_classes,
)

DOC = Path(__file__).resolve().parent.parent / "docs" / "protocol.md"

SECRET = "/home/operator/market/bank/agent.toml"


def raising_registry(errors: dict[str, Callable[[], BaseException]]) -> ServiceRegistry:
    """``echo`` plus a service ``fail`` whose op ``name`` raises ``errors[name]()``."""
    registry = echo_registry()
    registry.add_service("fail")
    for name, make in errors.items():
        async def handler(_ctx: RequestContext, _body: Any,
                          make: Callable[[], BaseException] = make) -> Any:
            raise make()
        registry.add_op("fail", name, handler)
    return registry


async def test_a_config_error_in_a_handler_reaches_the_peer_as_internal_error(
        market: Market, caplog: pytest.LogCaptureFixture) -> None:
    # The instance: agent.bad_config carried the agent's file paths to the peer.
    registry = raising_registry({"config": lambda: ConfigError(f"cannot read {SECRET}")})
    caplog.set_level(logging.ERROR, logger="semper")
    async with channel_pair(market, server_registry=registry) as pair:
        with pytest.raises(RemoteError) as info:
            await pair.client.request("fail", "config")
        assert info.value.code == "internal.error"
        assert "/home" not in info.value.message and "agent.bad_config" not in str(info.value)
        assert info.value.detail == {}
        assert await pair.client.request("echo", "echo", 1) == 1  # the channel stays open
    logged = [r for r in caplog.records if r.exc_info and SECRET in str(r.exc_info[1])]
    assert logged, "the local error is logged here in full"


# Every local error with a code that agents/ defines (grep `code` under agents/).
LOCAL: dict[str, Callable[[], BaseException]] = {
    "books": lambda: BooksUnbalanced(f"account bank.one/EUR says 100, its postings {SECRET}"),
    "role": lambda: RoleNotFound(f"no role 'x' in {SECRET}"),
    "storage": lambda: StorageError(f"cannot open database {SECRET}"),
    "market": lambda: MarketError(f"{SECRET} is not a market folder"),
    "key": lambda: KeyError_(f"cannot read key {SECRET}"),
    "cli": lambda: CliError("agent.unknown_agent", f"no agent in {SECRET}"),
    "archive": lambda: UnknownTransaction(f"no transaction in {SECRET}"),
    "busy": lambda: PurchaseBusy(SECRET),
    "failed": lambda: PurchaseFailed("payment.insufficient_funds", SECRET),
    "receipt": lambda: ReceiptMismatch(f"receipt for {SECRET}"),
}


async def test_no_local_error_of_the_agents_reaches_a_peer(market: Market) -> None:
    # Other members of the kind: the ledger's internal.books_unbalanced (balances and
    # account names), agent.storage, agent.market, ...
    async with channel_pair(market, server_registry=raising_registry(LOCAL)) as pair:
        for name in LOCAL:
            with pytest.raises(RemoteError) as info:
                await pair.client.request("fail", name)
            assert info.value.code == "internal.error", name
            assert "/home" not in info.value.message, name
            assert info.value.message == "the handler failed"


# The transport's local outcomes of a call the handler made to a third agent.
UNREACHABLE: dict[str, Callable[[], BaseException]] = {
    "closed": lambda: ChannelClosed(f"channel to bank is closed ({SECRET})"),
    "timeout": lambda: RequestTimeout(f"bank.transfer: no answer from {SECRET}"),
    "connect": lambda: ConnectFailed(f"cannot connect to bank at {SECRET}"),
}


async def test_a_third_agent_out_of_reach_is_peer_unavailable(
        market: Market, caplog: pytest.LogCaptureFixture) -> None:
    # Found with the fuzzing peer playing the bank: the seller's commerce.refund
    # handler failed with transport.closed, which went to the buyer naming the bank's
    # channel and why it closed. Not a bug either (no internal.error, no ERROR log):
    # the requester learns peer.unavailable and may retry.
    async with channel_pair(market, server_registry=raising_registry(UNREACHABLE)) as pair:
        for name in UNREACHABLE:
            with pytest.raises(RemoteError) as info:
                await pair.client.request("fail", name)
            assert info.value.code == "peer.unavailable", name
            assert "/home" not in info.value.message and "bank" not in info.value.message
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


# Errors that are refusals meant for the peer: still sent with code, message, detail.
WIRE: dict[str, Callable[[], BaseException]] = {
    "quota": lambda: QuotaExceeded("quota used", detail={"used": 1, "quota": 1, "cost": 1}),
    "foreign": lambda: ForeignTransaction("not yours", detail={"transaction": "t"}),
    "funds": lambda: InsufficientFunds("not enough", detail={"amount": "EUR:1"}),
    "channels": lambda: TooManyChannels("too many"),
    "relayed": lambda: RemoteError("payment.wrong_bank", "the bank's refusal"),
}


async def test_errors_meant_for_the_wire_still_reach_the_peer(market: Market) -> None:
    async with channel_pair(market, server_registry=raising_registry(WIRE)) as pair:
        for name, make in WIRE.items():
            sent = make()
            assert is_wire_error(sent), name
            with pytest.raises(RemoteError) as info:
                await pair.client.request("fail", name)
            assert info.value.code == sent.code, name  # type: ignore[attr-defined]
            assert info.value.message == sent.message, name  # type: ignore[attr-defined]
            assert info.value.detail == sent.detail, name  # type: ignore[attr-defined]


def test_the_marker_is_declared_not_guessed() -> None:
    class Coded(Exception):
        code = "shop.refused"

    class Declared(Coded):
        wire = True

    class Truthy(Coded):
        wire = "yes"  # not a declaration

    assert not is_wire_error(Coded()) and not is_wire_error(Truthy())
    assert is_wire_error(Declared())
    assert not is_wire_error(ConfigError("x")) and not is_wire_error(ValueError("x"))


def _where(doc: str) -> dict[str, str]:
    """Code -> the Where cell of docs/protocol.md section 6."""
    section = doc.split("\n## 6. Error codes", 1)[1].split("\n## ", 1)[0]
    rows = [[c.strip() for c in line.strip().strip("|").split("|")]
            for line in section.splitlines() if line.startswith("| `")]
    return {cells[0].strip("`"): cells[2] for cells in rows}


def test_the_transport_declares_what_the_protocol_says() -> None:
    # Section 6's "Where": a wire code is sent in `err`, a local one never; the class
    # says the same (a local code such as timeout.request no longer travels).
    where = _where(DOC.read_text(encoding="utf-8"))
    for cls in [*transport_error_classes(), ConnectFailed]:
        assert cls.code in where, cls
        assert cls.wire is where[cls.code].startswith("wire"), (cls, where[cls.code])
    assert RemoteError.wire  # a peer's refusal passed on is the peer's, not ours


class _LosesItsFiles:
    """A peer check that works until ``epoch`` moves on, then fails locally."""

    def __init__(self, verify: Callable[[bytes, str | None], Any]) -> None:
        self.verify, self.epoch = verify, 0

    def __call__(self, der: bytes, expected: str | None) -> Any:
        if self.epoch:
            raise StorageError(f"cannot open database {SECRET}")
        return self.verify(der, expected)


async def test_a_local_error_in_the_peer_check_is_not_sent(market: Market) -> None:
    # A member found in transport/: the re-check of a peer (on a new CRL) wrapped any
    # coded exception of the verifier in PeerNotValid and sent its code and message.
    verifier = _LosesItsFiles(market.verifier())
    market.verifier = lambda: verifier  # type: ignore[method-assign]
    async with channel_pair(market) as pair:
        verifier.epoch = 1
        with pytest.raises(Exception):  # noqa: B017  (our side refuses the peer)
            await pair.client.request("echo", "echo", 1)
        with trio.fail_after(5):
            reason = await pair.server.wait_closed()
        assert reason.code == "auth.peer_invalid", reason
        assert "/home" not in str(reason)


async def test_the_anonymous_listener_sends_no_local_error(market: Market) -> None:
    # The CA's enrollment listener answers newcomers nobody has authenticated: a
    # storage failure naming the CA's files reaches them as internal.error.
    ca = market.agent("ca", "ca")
    tls = TlsConfig(cert_path=ca.cert_path, key_path=ca.key_path,
                    root_pem=market.root_pem, crl_pem=market.crl_pem)
    pin = hashlib.sha256(ca.cert.public_bytes(serialization.Encoding.DER)).digest()

    async def handler(request: Request) -> Any:
        if request.op == "local":
            raise StorageError(f"cannot open database {SECRET}")
        raise QuotaExceeded("refused", detail={"used": 1})

    def check(der: bytes) -> None:
        assert hashlib.sha256(der).digest() == pin

    async with trio.open_nursery() as nursery:
        _, port = await nursery.start(functools.partial(
            serve_anonymous, "127.0.0.1", 0, context=tls.server_only_context(),
            handler=handler, timeout=10))
        with trio.fail_after(10):
            with pytest.raises(RemoteError) as local:
                await request_pinned("127.0.0.1", port, check_server=check,
                                     service="enroll", op="local", body=None)
            with pytest.raises(RemoteError) as refused:
                await request_pinned("127.0.0.1", port, check_server=check,
                                     service="enroll", op="wire", body=None)
        nursery.cancel_scope.cancel()
    assert local.value.code == "internal.error" and "/home" not in local.value.message
    assert (refused.value.code, refused.value.detail) == ("evidence.quota_exceeded", {"used": 1})
