"""A role from another package: examples/custom_role installed through pip, found
through the ``semper.roles`` entry point, served by ``semper agent run`` over a real
channel."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import trio
from pki import Market

from semper.agents import RoleNotFound, load_role
from semper.agents.runtime._config import AgentConfig
from semper.transport import RemoteError, ServiceRegistry, open_channel

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "custom_role"
DEADLINE = 30.0


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """pip builds a local folder in place (build/, *.egg-info): a copy of its own, so that
    two test processes installing the example at once (xdist) do not share one build."""
    source = shutil.copytree(EXAMPLE, tmp_path_factory.mktemp("src") / EXAMPLE.name,
                             ignore=shutil.ignore_patterns("build", "*.egg-info"))
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
         "--no-build-isolation", "--no-index", "--target", str(target), str(source)],
        check=True, timeout=120, capture_output=True,
    )
    return target


def write_config(market: Market, folder: Path, agent_id: str, role: str) -> Path:
    agent = market.agent(agent_id, role)
    (folder / "root.pem").write_bytes(market.root_pem)
    (folder / "crl.pem").write_bytes(market.crl_pem)
    config = AgentConfig(id=agent_id, role=role, listen="127.0.0.1:0",
                         data_dir=folder / agent_id, ca_root=folder / "root.pem",
                         crl=folder / "crl.pem", cert=agent.cert_path, key=agent.key_path)
    path = folder / f"{agent_id}.toml"
    path.write_text(config.to_toml(base=folder))
    return path


def test_an_unknown_role_is_a_clear_error() -> None:
    with pytest.raises(RoleNotFound, match="no role 'nosuch' is installed") as info:
        load_role("nosuch")
    assert info.value.code == "agent.unknown_role"
    assert "seller" in info.value.message  # it lists what is installed


def test_the_cli_refuses_an_unknown_role_in_one_line(market: Market, tmp_path: Path) -> None:
    config = write_config(market, tmp_path, "odd", "nosuch")
    done = subprocess.run([sys.executable, "-m", "semper.agents.cli", "agent", "run",
                           str(config)], capture_output=True, text=True, timeout=DEADLINE)
    assert done.returncode == 1
    assert done.stderr.startswith("semper: agent.unknown_role: no role 'nosuch'")
    assert len(done.stderr.splitlines()) == 1 and "Traceback" not in done.stderr


async def test_installed_role_serves_over_a_real_channel(
    site: Path, market: Market, tmp_path: Path
) -> None:
    config = write_config(market, tmp_path, "auditor-1", "auditor")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(site), *filter(None, [os.environ.get("PYTHONPATH")])])}
    seller, buyer = market.agent("seller-1", "seller"), market.agent("buyer-1", "buyer")
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "semper.agents.cli", "agent", "run", str(config)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        with trio.fail_after(DEADLINE):
            line = b""
            while not line.endswith(b"\n"):
                chunk = await process.stdout.receive_some(1)
                assert chunk, "the agent exited before it was ready"
                line += chunk
        ready, agent_id, address = line.decode().split()
        assert (ready, agent_id) == ("ready", "auditor-1")
        host, port = address.rsplit(":", 1)

        async def call(who, op, body):
            async with open_channel(host, int(port), tls=market.tls(who),
                                    verify_peer=market.verifier(), expected_id="auditor-1",
                                    hello=market.hello(who, ServiceRegistry())) as channel:
                assert channel.their_hello.role == "auditor"
                assert "audit" in channel.their_hello.services
                return await channel.request("audit", op, body)

        with trio.fail_after(DEADLINE):
            first = await call(seller, "report", {"subject": "stock", "body": b"42 books"})
            second = await call(seller, "report", {"subject": "prices", "body": b""})
            assert first == {"number": 1, "filed_by": "seller-1"}
            assert second["number"] == 2
            with pytest.raises(RemoteError) as info:
                await call(buyer, "report", {"subject": "x", "body": b""})
            assert info.value.code == "audit.not_allowed"
            assert await call(buyer, "summary", None) == {"seller-1": 2}
    finally:
        process.terminate()
        with trio.move_on_after(DEADLINE):
            await process.wait()
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0
    events = (tmp_path / "auditor-1" / "events.jsonl").read_text().splitlines()
    assert any('"op":"report"' in e and '"outcome":"audit.not_allowed"' in e for e in events)
