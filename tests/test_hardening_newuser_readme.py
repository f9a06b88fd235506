"""The README's custom-role snippet runs: extracted from README.md, served by an
agent (in this process, over real loopback TLS), its op answers a seller and refuses
a buyer with the snippet's own code. (test_hardening_newuser.py checks that it
defines every name it uses.)"""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path
from typing import Any

import pytest
import trio
from pki import Market

from semper.agents.runtime import _agent
from semper.agents.runtime._agent import Agent
from semper.agents.runtime._config import AgentConfig
from semper.transport import RemoteError, ServiceRegistry, open_channel

ROOT = Path(__file__).resolve().parent.parent


def readme_role() -> type:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Writing your own role", 1)[1]
    snippet = re.search(r"```python\n(.*?)```", section, re.S).group(1)  # type: ignore[union-attr]
    module = types.ModuleType("readme_snippet")  # a dataclass looks its module up
    sys.modules["readme_snippet"] = module
    try:
        exec(compile(snippet, "README.md", "exec"), module.__dict__)
    finally:
        del sys.modules["readme_snippet"]
    return module.__dict__["Auditor"]  # type: ignore[no-any-return]


async def test_the_readme_role_serves_its_op(market: Market, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    auditor_role = readme_role()
    monkeypatch.setattr(_agent, "load_role", lambda name: auditor_role)
    me = market.agent("aud-1", "auditor")
    (tmp_path / "root.pem").write_bytes(market.root_pem)
    (tmp_path / "crl.pem").write_bytes(market.crl_pem)
    agent = Agent(AgentConfig(id="aud-1", role="auditor", listen="127.0.0.1:0",
                              data_dir=tmp_path / "data", ca_root=tmp_path / "root.pem",
                              crl=tmp_path / "crl.pem", cert=me.cert_path, key=me.key_path))
    seller, buyer = market.agent("seller-1", "seller"), market.agent("buyer-1", "buyer")
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            host, port = await nursery.start(agent.run)

            async def report(who: Any, body: Any) -> Any:
                async with open_channel(host, port, tls=market.tls(who),
                                        verify_peer=market.verifier(), expected_id="aud-1",
                                        hello=market.hello(who, ServiceRegistry())) as channel:
                    assert "audit" in channel.their_hello.services
                    return await channel.request("audit", "report", body)

            assert await report(seller, {"subject": "stock", "body": b"42"}) == {"number": 1}
            with pytest.raises(RemoteError) as info:
                await report(buyer, {"subject": "x", "body": b""})
            assert info.value.code == "audit.not_allowed"
            assert info.value.message == "buyers do not file reports"
            nursery.cancel_scope.cancel()
