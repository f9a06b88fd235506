"""``free_ports``: the ports ``market init`` writes into the agents' configs."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from semper.agents.operator import _market
from semper.agents.operator._market import free_ports


def test_ports_are_distinct_free_and_below_the_ephemeral_range() -> None:
    """Below the kernel's ephemeral range no connection's source port (nor a bind to
    port 0 elsewhere) takes one before its agent listens: two test processes at
    once did, and the agent refused to start (agent.address_in_use)."""
    if not _market._EPHEMERAL_RANGE.exists():
        pytest.skip("no /proc ephemeral port range here")
    low = int(_market._EPHEMERAL_RANGE.read_text().split()[0])
    ports = free_ports(12)
    assert len(set(ports)) == 12
    assert all(10_000 <= port < low for port in ports), ports
    for port in ports:  # free: each binds now
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", port))


def test_without_the_range_the_kernel_picks(monkeypatch: pytest.MonkeyPatch,
                                            tmp_path: Path) -> None:
    monkeypatch.setattr(_market, "_EPHEMERAL_RANGE", tmp_path / "absent")
    ports = free_ports(3)
    assert len(set(ports)) == 3 and all(0 < port < 65536 for port in ports)
