"""In-process markets for agent tests: ``semper market init`` on disk, agents run in
the test's own trio loop over real loopback TLS, real SQLite."""

from __future__ import annotations

import dataclasses
import datetime as dt
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio
import trio.testing
from cryptography import x509

from semper.agents.components._castore import publish_crl
from semper.agents.operator._market import init_market, load_authority
from semper.agents.runtime._agent import Agent
from semper.agents.runtime._config import AgentConfig
from semper.agents.runtime._identity import utcnow

DEADLINE = 10.0  # real seconds: a bound on every wait, never reached when things work


def make_market(folder: Path) -> Path:
    init_market(folder)
    return folder


def newer_crl(folder: Path) -> x509.CertificateRevocationList:
    """Publish the CA's next CRL (same entries), issued a second from now: it vouches
    for everything signed so far (docs/protocol.md 6A.8), as the CA agent's would."""
    ca = load_authority(folder / "ca" / "root.pem", folder / "ca" / "root-key.pem", None)
    crl = publish_crl(folder / "ca" / "crl.pem", ca, now=utcnow() + dt.timedelta(seconds=1))
    assert crl is not None
    return crl


def config_of(folder: Path, agent_id: str, **changes: Any) -> AgentConfig:
    config = AgentConfig.load(folder / agent_id / "agent.toml")
    return dataclasses.replace(config, **changes) if changes else config


@asynccontextmanager
async def running(agent: Agent) -> AsyncIterator[Agent]:
    """Run ``agent`` for the body; then say bye on its channels and stop it."""
    async with trio.open_nursery() as nursery:
        await nursery.start(agent.run)
        try:
            yield agent
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(DEADLINE):
                await agent.close_channels()
            nursery.cancel_scope.cancel()


async def wait_until(predicate: Callable[[], bool], what: str,
                     timeout: float = DEADLINE) -> None:
    """Wait until ``predicate()`` holds, bounded in real time (so it works under a
    MockClock that never advances by itself): every task idle for 5 ms, then look."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        await trio.testing.wait_all_tasks_blocked(cushion=0.005)


class SharedClock:
    """One clock for the agents of a test, moved by the test (``ms += ...``)."""

    def __init__(self) -> None:
        self.ms = time.time_ns() // 1_000_000

    def now_ms(self) -> int:
        return self.ms


class BankBooks:
    """What a bank test watches: ``books()`` (the subclass's: balances by holder, the
    books checked), what moved since last asked, and refusals that move nothing."""

    before: dict[str, int]

    async def books(self) -> dict[str, int]:
        raise NotImplementedError

    async def moved(self) -> dict[str, int]:
        """What moved since the last call, per holder (zeros left out)."""
        now = await self.books()
        delta = {h: now[h] - self.before.get(h, now[h]) for h in now}
        self.before = now
        return {h: d for h, d in delta.items() if d}

    async def refused(self, code: str, call: Any) -> Any:
        """``call`` is refused with ``code`` and moves nothing; the refusal."""
        import pytest

        from semper.transport import RemoteError

        with pytest.raises(RemoteError) as refused:
            await call
        assert refused.value.code == code, refused.value
        assert await self.moved() == {}
        return refused.value
