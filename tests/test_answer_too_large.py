"""An answer larger than a frame holds is the requester's doing, not a bug of ours:
refused with protocol.answer_too_large, the channel kept (found by bench/fuzz_peer.py:
a sys.ping echoing a body near the limit answered internal.error and logged an error)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio
from market_helpers import config_of, make_market, running

from semper.agents import Agent, Component, Role, handles
from semper.agents.runtime import _agent as agent_module
from semper.services.schema import Op
from semper.transport import RemoteError

DEADLINE = 30.0
LIMIT = 1 << 20  # the default max_frame


@pytest.fixture
def market(tmp_path: Path) -> Path:
    return make_market(tmp_path)


async def test_a_ping_whose_echo_does_not_fit_is_refused_and_the_channel_stays(
        market: Path, caplog: pytest.LogCaptureFixture) -> None:
    seller, buyer = Agent(config_of(market, "seller")), Agent(config_of(market, "buyer"))
    with trio.fail_after(DEADLINE):
        async with running(seller), running(buyer):
            big = "a" * (LIMIT - 64)  # fits a request; the answer adds id, role, clock
            with pytest.raises(RemoteError) as refused:
                await buyer.request("seller", "sys", "ping", big)
            assert refused.value.code == "protocol.answer_too_large"
            assert refused.value.detail["limit"] == LIMIT
            assert refused.value.detail["size"] > LIMIT
            answer = await buyer.request("seller", "sys", "ping", "small")
            assert answer["echo"] == "small"  # the same channel answers on
    assert not [r for r in caplog.records if r.levelname == "ERROR"]


DOUBLE = Op("test_big", "double")


class Doubler(Component):
    """Answers twice what it is sent: a second member of the kind."""

    name = "doubler"

    @handles(DOUBLE)
    async def double(self, context: Any, body: Any) -> Any:
        return [body, body]


class DoublerRole(Role):
    name = "notary"
    components = (Doubler,)


async def test_any_answer_that_outgrows_the_frame_is_refused_with_its_sizes(
        market: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(agent_module, "load_role", lambda name: DoublerRole)
    notary = Agent(config_of(market, "notary"))
    monkeypatch.undo()
    buyer = Agent(config_of(market, "buyer"))
    with trio.fail_after(DEADLINE):
        async with running(notary), running(buyer):
            assert await buyer.request("notary", "test_big", "double", b"x") == [b"x", b"x"]
            with pytest.raises(RemoteError) as refused:
                await buyer.request("notary", "test_big", "double", b"x" * (LIMIT // 2 + 10))
            assert refused.value.code == "protocol.answer_too_large"
            assert await buyer.request("notary", "test_big", "double", b"y") == [b"y", b"y"]
