"""Text from a peer or a file is printed as it is (S9): rich read ``[green]``,
``[link=...]`` or ``[black on black]`` in an offer title, terms or sku as console
markup and ``:100:`` as an emoji, so a seller could restyle, hide or fake what a
buyer sees, and an escape sequence went to the terminal as it is (rich passes ESC
on). Every command prints through ``_text.console()``, which reads no string as
markup, emoji or highlighting and escapes what is not printable.

One market for the module: its ca, bank and seller run as processes (the seller's
catalogue carries an offer whose sku, title and terms are markup); the buyer's
commands run in-process through click's runner, on a wide console so that no cell
wraps.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
import tomli_w
from click.testing import CliRunner
from test_cli import AgentProcess, Market, start_agents

from semper.agents.cli import cli, cmd_dispute, cmd_ping
from semper.agents.operator._market import init_market
from semper.agents.runtime._agent import Agent
from semper.services.disputes import Report, Verdict
from semper.transport import RemoteError

SKU = "odd-005"  # a sku is checked on the wire: A-Z a-z 0-9 . _ -
TITLE = "[/][green]✓ verified[/] :100: [link=https://evil.example]click[/link]"
#: Terms may hold newlines and tabs (the wire refuses other unprintable characters):
#: a newline would fake a line of its own, so it is shown escaped.
TERMS = "[black on black]no refunds, ever[/]\n:100: refundable\tfor [link=https://x.example]ever"
TERMS_SHOWN = "[black on black]no refunds, ever[/]\\n:100: refundable\\tfor [link=https://x.example]ever"
CLI = Path(__file__).resolve().parent.parent / "agents" / "cli"


@pytest.fixture(scope="module")
def market(tmp_path_factory: pytest.TempPathFactory) -> Market:
    market = Market(tmp_path_factory.mktemp("markup") / "market", None)
    init_market(market.root)
    seller = market.root / "seller"
    path = seller / "catalogue.toml"
    offers = tomllib.loads(path.read_text(encoding="utf-8"))
    (seller / "goods" / "odd.txt").write_bytes(b"odd goods\n")
    offers["offer"].append({"sku": SKU, "title": TITLE, "price": "EUR:10", "terms": TERMS,
                            "valid_days": 30, "refund_days": 0, "goods": "goods/odd.txt"})
    path.write_text(tomli_w.dumps(offers), encoding="utf-8")
    return market


@pytest.fixture(scope="module")
def agents(market: Market, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[dict[str, AgentProcess]]:
    logs = tmp_path_factory.mktemp("logs")
    running = start_agents(market, ["ca"], logs)
    running.update(start_agents(market, ["bank", "seller"], logs))
    try:
        yield running
    finally:
        for agent in running.values():
            agent.kill()
        for agent in running.values():
            assert "Traceback" not in agent.stderr(), agent.stderr()


def run(*args: str | Path) -> str:
    """stdout of one command that succeeds (stderr must hold no escape either)."""
    done = CliRunner(env={"SEMPER_DEBUG": "", "COLUMNS": "1000"}).invoke(
        cli, [str(a) for a in args], prog_name="semper")
    assert done.exit_code == 0, (done.output, done.exception)
    assert "\x1b" not in done.stdout and "\x1b" not in done.stderr, done.output
    return done.stdout


def test_catalogue_prints_a_sellers_markup_as_it_is(market: Market,
                                                    agents: dict[str, AgentProcess]) -> None:
    """The instance: the catalogue table shows title and terms literally."""
    out = run("catalogue", "--config", market.config("buyer"), "--seller", "seller")
    assert f"│ {TITLE} │" in out, out
    assert TERMS_SHOWN in out, out
    assert "💯" not in out


def test_ping_prints_a_peers_service_names_as_they_are(
        market: Market, monkeypatch: pytest.MonkeyPatch) -> None:
    """``ping`` shows the services a peer's hello names: names that are markup and
    escape sequences are shown as they are."""
    async def hello(agent: Agent, peer: str) -> dict[str, object]:
        return {"peer": peer, "address": "127.0.0.1:1", "role": "[red]bank[/red]",
                "services": {"[link=https://evil.example]bank": {"version": 1, "modules": [
                    ":100:\x1b[8m"]}}, "connect_ms": 1.0, "rtt_ms": 1.0}

    monkeypatch.setattr(cmd_ping, "ping", hello)
    out = run("ping", "--config", market.config("buyer"), "seller")
    assert "[red]bank[/red]" in out, out
    assert "[link=https://evil.example]bank v1 (:100:\\x1b[8m)" in out, out


def test_a_verdicts_reason_is_printed_as_it_is(monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """``dispute file`` prints the verdicts the arbiter signed (``dispute check`` those
    of a bundle file): a reason that is markup is shown as it is."""
    monkeypatch.setenv("COLUMNS", "1000")
    reason = "[/][green]met[/green] :100: [black on black]not really[/]"
    cmd_dispute.print_report(Report(valid=True, verdicts=(
        Verdict("seller.deliver", "seller", False, reason),), transaction="t",
        protocol="commerce"), False)
    assert reason in capsys.readouterr().out


def test_a_peers_error_message_is_printed_as_it_is(
        market: Market, monkeypatch: pytest.MonkeyPatch) -> None:
    """The wallet prints the bank's refusal in a line of its own: a message that
    is markup, an emoji code, an escape sequence and a newline (which would fake a
    line) is shown as it is, on one line."""
    said = "[green]all fine[/green] :100:\x1b[2J\nbalance: EUR 1000000.00"

    async def refuse(self: Agent, peer: str, service: str, op: str, body: object = None
                     ) -> object:
        raise RemoteError("bank.unavailable", said)

    monkeypatch.setattr(Agent, "request", refuse)
    out = run("wallet", "--config", market.config("buyer"))
    line = ("buyer at bank: balance unavailable (bank.unavailable: [green]all fine[/green] "
            ":100:\\x1b[2J\\nbalance: EUR 1000000.00)")
    assert out.splitlines()[0] == line, out


def test_no_command_makes_a_console_of_its_own() -> None:
    """The kind, everywhere: every command prints through ``_text.console()``; no
    module of agents/cli/ but _text.py constructs a rich Console, parses markup
    (``Text.from_markup``, ``rich.markup``), or prints with rich's ``print``."""
    found = []
    for path in sorted(CLI.glob("*.py")):
        if path.name == "_text.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name | ast.Attribute):
                name = node.func.id if isinstance(node.func, ast.Name) else node.func.attr
                if name in ("Console", "from_markup", "render_markup"):
                    found.append(f"{path.name}:{node.lineno} {name}()")
            if isinstance(node, ast.ImportFrom) and node.module in ("rich", "rich.markup"):
                found.append(f"{path.name}:{node.lineno} from {node.module} import ...")
    assert not found, found


def test_a_peers_text_in_a_log_line_is_escaped() -> None:
    """Another member of the kind: ``semper -v`` (and ``agent run``) log lines carry a
    peer's text (its error message, e.g. "cannot ask ca for a newer CRL: ..."); an
    escape sequence in it reached the terminal as it is, and a newline faked a log
    line. The message is shown escaped; a traceback stays as it is."""
    script = ("import logging\n"
              "from semper.agents.cli._logging import configure_logging\n"
              "configure_logging(1)\n"
              "log = logging.getLogger('semper.agent')\n"
              "log.info('cannot ask ca: %s', 'bad.code: \\x1b[2J\\x1b]0;pwned\\x07\\nFAKE line')\n"
              "try:\n"
              "    raise ValueError('boom')\n"
              "except ValueError as exc:\n"
              "    log.error('failed: %s', exc, exc_info=exc)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=30, check=True)
    assert "\x1b" not in done.stderr and "\x07" not in done.stderr, done.stderr
    lines = done.stderr.splitlines()
    assert lines[0].endswith(
        "semper.agent INFO cannot ask ca: bad.code: \\x1b[2J\\x1b]0;pwned\\x07\\nFAKE line"), lines
    assert lines[1].endswith("semper.agent ERROR failed: boom"), lines
    assert lines[2] == "Traceback (most recent call last):", lines
