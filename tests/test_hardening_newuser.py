"""What a new user ran into (issue 7), the parts that need no running agent: the
operator's `ca` commands, help texts, `semper goods` on local records, the enroll
stub, the README's custom-role snippet, packaging metadata.

Commands run in-process through click's runner (each costs a few milliseconds);
markets are made by ``init_market`` and copied per test.
"""

from __future__ import annotations

import ast
import re
import sqlite3
import subprocess
import sys
import tomllib
import types
import warnings
from pathlib import Path
from typing import Any

import click
import pytest
from cli_helpers import market, prebuilt, refused, semper  # noqa: F401 (fixtures)

from semper.agents.cli import cli
from semper.agents.cli._text import counted
from semper.agents.components import _purchase
from semper.agents.components._catalogue import load_catalogue
from semper.agents.operator._enroll import CATALOGUE_STUB, PAYMENT_STUB
from semper.agents.runtime._config import AgentConfig
from semper.agents.runtime._roles import available_roles
from semper.agents.runtime._storage import Database
from semper.services.certificates import identity_of, load_certificate

ROOT = Path(__file__).resolve().parent.parent


def tree(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                  if "data" not in p.parts)


# -- ca status / revoke / invite -----------------------------------------------------


def test_ca_status_of_an_id_never_issued_is_an_error(market: Path) -> None:
    """The instance: `semper ca status DIR nobody` printed `unknown` and exited 0."""
    line = refused(semper("ca", "status", market, "nobody"), "agent.unknown_agent")
    assert "nobody" in line
    refused(semper("ca", "status", market, "nobody", "--json"), "agent.unknown_agent")
    status, out, _ = semper("ca", "status", market, "seller")
    assert status == 0 and out.startswith("seller: good until ")


def test_revoke_counts_its_entries_in_good_english(market: Path) -> None:
    """The instance: `CRL number 2 with 1 entries`."""
    status, out, err = semper("ca", "revoke", market, "seller")
    assert status == 0, err
    assert "CRL number 2 with 1 entry published" in out
    status, out, err = semper("ca", "revoke", market, "buyer")
    assert status == 0, err
    assert "CRL number 3 with 2 entries published" in out


@pytest.mark.parametrize("count, text", [(0, "0 bytes"), (1, "1 byte"), (2, "2 bytes")])
def test_counted(count: int, text: str) -> None:
    assert counted(count, "byte") == text
    assert counted(1, "entry", "entries") == "1 entry"


@pytest.mark.parametrize("command", ["invite", "issue"])
def test_a_role_no_installed_package_provides_is_refused(market: Path, command: str) -> None:
    """The instance is `ca invite`; `ca issue` (new) is the other door to the same
    certificate. Refused before anything is written, naming the installed roles."""
    before = tree(market)
    line = refused(semper("ca", command, market, "odd", "--role", "sellr", "--level",
                           "verified-contact"), "agent.unknown_role")
    assert "'sellr'" in line
    for role in available_roles():
        assert role in line
    assert tree(market) == before
    status, _, err = semper("ca", command, market, "shop2", "--role", "seller", "--level",
                              "verified-contact")
    assert status == 0, err


# -- ca issue ------------------------------------------------------------------------


def test_ca_issue_writes_a_ready_agent_folder_offline(market: Path) -> None:
    status, out, err = semper("ca", "issue", market, "aud-1", "--role", "buyer", "--level",
                              "verified-contact")
    assert status == 0, err
    home = market / "aud-1"
    assert f"semper agent run {home / 'agent.toml'}" in out
    config = AgentConfig.load(home / "agent.toml")
    assert (config.id, config.role, config.ca_agent) == ("aud-1", "buyer", "ca")
    assert config.payment.bank == "bank"
    assert {"ca", "bank", "seller"} <= set(config.peers)
    identity = identity_of(load_certificate(config.cert.read_bytes()))
    assert (identity.agent_id, identity.role, identity.level.label) == (
        "aud-1", "buyer", "verified-contact")
    assert (home / "key.pem").stat().st_mode & 0o077 == 0
    # The CA's records know it, as they know `market init`'s agents.
    status, out, _ = semper("ca", "status", market, "aud-1")
    assert status == 0 and out.startswith("aud-1: good until"), out
    # Once is enough: a second issue while the first is good is refused.
    before = tree(market)
    refused(semper("ca", "issue", market, "aud-1", "--role", "buyer", "--level",
                    "verified-contact"), "agent.market")
    assert tree(market) == before


def test_ca_issue_failures_leave_nothing(market: Path, tmp_path: Path) -> None:
    before = tree(market)
    status, _, err = semper("ca", "issue", market, "x1", "--role", "buyer", "--level",
                            "liable")
    assert status == 2 and "ca invite" in err
    status, _, err = semper("ca", "issue", market, "Bad Id", "--role", "buyer", "--level",
                            "self-asserted")
    assert status == 2 and "Traceback" not in err
    refused(semper("ca", "issue", tmp_path / "nowhere", "x2", "--role", "buyer", "--level",
                    "self-asserted"), "agent.market")
    # A root key that cannot be read: nothing is left of the new folder.
    (market / "ca" / "root-key.pem").write_bytes(b"not a key")
    status, _, err = semper("ca", "issue", market, "x3", "--role", "buyer", "--level",
                            "self-asserted")
    assert status == 1 and len(err.splitlines()) == 1 and "Traceback" not in err
    assert not (market / "x3").exists()
    assert tree(market) == before


# -- help texts ------------------------------------------------------------------------

#: Capitalised words a help text may use that are not argument names.
ACRONYMS = frozenset({"CA", "CRL", "SIGINT", "SIGTERM", "EUR", "JSON", "TLS", "ID", "TOML",
                      "TCP"})


def _commands(command: click.Command, path: tuple[str, ...]) -> Any:
    yield path, command
    if isinstance(command, click.Group):
        for name, sub in command.commands.items():
            yield from _commands(sub, (*path, name))


def _shown_names(command: click.Command, ctx: click.Context) -> set[str]:
    shown: set[str] = set()
    for param in command.params:
        if isinstance(param, click.Argument):
            shown |= set(re.findall(r"[A-Z][A-Z_]*", param.make_metavar(ctx)))
        elif param.metavar:
            shown |= set(re.findall(r"[A-Z][A-Z_]*", param.metavar))
    return shown


def test_help_texts_name_only_arguments_that_exist() -> None:
    """The instances: `buy --help` said "Order SKU from SELLER" and `bank mint --help`
    "Create AMOUNT" where the usage line shows no such arguments. The kind, over
    every command: a capitalised word in a help text is a metavar the usage shows
    (or an acronym); text in backticks is an example command line."""
    wrong = {}
    for path, command in _commands(cli, ("semper",)):
        ctx = click.Context(command, info_name=" ".join(path))
        text = re.sub(r"`[^`]*`", "", command.help or "")
        names = set(re.findall(r"\b[A-Z][A-Z_]+\b", text)) - ACRONYMS - _shown_names(
            command, ctx)
        if names:
            wrong[" ".join(path)] = sorted(names)
    assert wrong == {}


def test_market_help_promises_only_what_it_has() -> None:
    status, out, _ = semper("market", "--help")
    assert status == 0
    assert "inspect" not in out
    assert [name for name in cli.commands["market"].commands] == [  # type: ignore[attr-defined]
        "init", "policy"]


def test_market_init_says_to_start_the_ca_first(tmp_path: Path) -> None:
    """The README starts the CA first (the others publish their cards to it);
    `market init` said to start the bank."""
    status, out, err = semper("market", "init", tmp_path / "m")
    assert status == 0, err
    start = [line for line in out.splitlines() if "semper agent run" in line]
    assert start and start[0].endswith(str(tmp_path / "m" / "ca" / "agent.toml"))
    readme = (ROOT / "README.md").read_text()
    first = re.search(r"semper agent run (\S+)", readme)
    assert first is not None and first.group(1).endswith("/ca/agent.toml")


# -- semper goods, on the buyer's own records -------------------------------------------


def _put_purchase(market: Path, key: str, state: str, goods: bytes | None) -> None:
    database = Database.open_sync(market / "buyer" / "data" / "agent.sqlite",
                                  _purchase.MIGRATIONS)
    database.close()
    with sqlite3.connect(market / "buyer" / "data" / "agent.sqlite") as c:
        columns = [row[1] for row in c.execute("PRAGMA table_info(commerce_purchases)")]
        values: dict[str, Any] = {"key": key, "seller": "seller", "sku": "one", "module":
                                  "transfer", "state": state, "machine": b"",
                                  "goods": goods, "updated_ms": 1}
        c.execute(f"INSERT INTO commerce_purchases ({', '.join(values)}) VALUES "
                  f"({', '.join('?' for _ in values)})", list(values.values()))
        assert set(values) <= set(columns)


def test_goods_writes_a_past_purchase_and_counts_in_good_english(market: Path,
                                                                  tmp_path: Path) -> None:
    """`semper goods` (new) reads the buyer's records only; a one-byte delivery is
    "1 byte" (the plural kind of `CRL number 2 with 1 entries`)."""
    _put_purchase(market, "k-one", "done", b"x")
    out_file = tmp_path / "goods.bin"
    status, out, err = semper("goods", "--config", market / "buyer" / "agent.toml", "k-one",
                              "-o", out_file)
    assert status == 0, err
    assert out_file.read_bytes() == b"x"
    assert "wrote 1 byte of purchase k-one" in out
    status, out, _ = semper("goods", "--config", market / "buyer" / "agent.toml", "k-one",
                            "-o", "-")
    assert status == 0 and out == "x"


def test_goods_refusals_are_refused(market: Path, tmp_path: Path) -> None:
    config = market / "buyer" / "agent.toml"
    _put_purchase(market, "k-unpaid", "ordered", None)
    refused(semper("goods", "--config", config, "nokey", "-o", tmp_path / "a"),
             "agent.unknown_purchase")
    refused(semper("goods", "--config", config, "k-unpaid", "-o", tmp_path / "b"),
             "agent.no_goods")
    refused(semper("goods", "--config", market / "seller" / "agent.toml", "k", "-o",
                    tmp_path / "c"), "agent.bad_config")
    _put_purchase(market, "k-two", "done", b"yz")
    refused(semper("goods", "--config", config, "k-two", "-o", tmp_path / "no" / "d"),
             "agent.cannot_write")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["market"]


# -- the enroll stub -----------------------------------------------------------------


def test_the_catalogue_stub_is_empty_and_its_example_is_a_valid_offer(tmp_path: Path) -> None:
    """A new seller offers nothing until stocked; uncommenting the stub's example
    (and writing the goods file it names) gives one valid offer."""
    stub = tmp_path / "catalogue.toml"
    stub.write_text(CATALOGUE_STUB)
    assert load_catalogue(stub) == []
    example = "\n".join(line[2:] if line.startswith("# ") and not line.startswith("#  ")
                        else "" for line in CATALOGUE_STUB.splitlines()
                        if line.startswith(("# [", "# sku", "# title", "# price", "# terms",
                                            "# goods", "# valid", "# refund")))
    stub.write_text(example)
    (tmp_path / "goods").mkdir()
    (tmp_path / "goods" / "guide-001.txt").write_bytes(b"the guide")
    [item] = load_catalogue(stub)
    assert (item.sku, str(item.price), item.goods) == ("guide-001", "EUR 12.50", b"the guide")
    assert (item.valid_days, item.refund_days) == (30, 14)


def test_the_payment_stub_names_the_key_the_config_reads(tmp_path: Path) -> None:
    text = "[payment]\n" + "\n".join(line.lstrip("# ").split("#")[0]
                                     for line in PAYMENT_STUB.splitlines()[:1])
    assert tomllib.loads(text)["payment"]["bank"] == "bank"
    assert all(line.startswith("#") for line in PAYMENT_STUB.splitlines())


# -- the README's custom role --------------------------------------------------------


def _readme_role_snippet() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Writing your own role", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)  # type: ignore[union-attr]


def test_the_readme_role_snippet_defines_every_name_it_uses(tmp_path: Path) -> None:
    """The instance: it raised `NotAllowed`, defined nowhere. ruff's undefined-name
    check (F821) over the snippet as a file, then the snippet runs as a module."""
    snippet = _readme_role_snippet()
    path = tmp_path / "snippet.py"
    path.write_text(snippet)
    done = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--isolated",
                           "--select", "F821,F401,F811", str(path)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    module = types.ModuleType("readme_snippet")  # a dataclass looks its module up by name
    sys.modules["readme_snippet"] = module
    try:
        exec(compile(ast.parse(snippet), str(path), "exec"), module.__dict__)
    finally:
        del sys.modules["readme_snippet"]
    namespace: dict[str, Any] = module.__dict__
    auditor = namespace["Auditor"]
    assert auditor.name == "auditor"
    assert isinstance(namespace["NotAllowed"]("x").code, str)


# -- packaging ---------------------------------------------------------------------


def test_pyproject_license_is_an_spdx_string_without_deprecation_warnings() -> None:
    """The instance: `pip install` printed ~30 setuptools deprecation lines about the
    `project.license` table. The license is an SPDX expression, the build requires a
    setuptools that reads it, and applying the configuration warns about nothing."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert pyproject["project"]["license"] == "Apache-2.0"
    floor = [r for r in pyproject["build-system"]["requires"] if r.startswith("setuptools")]
    assert floor and int(re.search(r">=(\d+)", floor[0]).group(1)) >= 77  # type: ignore[union-attr]
    from setuptools.config.pyprojecttoml import apply_configuration
    from setuptools.dist import Distribution

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        apply_configuration(Distribution(), ROOT / "pyproject.toml")
    assert [str(w.message) for w in caught if "license" in str(w.message).lower()] == []


# -- docs/protocol.md ----------------------------------------------------------------


def _protocol() -> str:
    return (ROOT / "docs" / "protocol.md").read_text()


def test_protocol_cross_references_point_at_what_they_name() -> None:
    """The instance: statement checks were cited as "section 7.4" (the directory)
    where 6A.4 is meant. The kind: every section cited exists; 7.4 is cited only
    about cards and the directory; statement verification and format are cited in 6A."""
    doc = _protocol()
    headings = set(re.findall(r"(?m)^#{2,3} ([0-9]+A?(?:\.[0-9]+)?)[. ]", doc))
    cited = re.findall(r"(?<!RFC )(?<!RFC 8032 )(?<!RFC 4648 )section ([0-9]+A?(?:\.[0-9]+)?)",
                       doc)
    assert sorted(set(cited) - headings) == []
    for line in doc.splitlines():
        if "section 7.4" in line:
            assert "card" in line or "directory" in line, line
        if re.search(r"statements? (verifies|of the format|maps)|as any statement|"
                     r"checked as in|as a statement|as statements", line):
            assert re.search(r"section 6A\.[24]", line) or "section" not in line, line


def test_protocol_says_how_a_payer_learns_the_bank_and_what_an_idle_hello_holds() -> None:
    doc = _protocol()
    section_83 = doc.split("### 8.3", 1)[1].split("### 8.4", 1)[0]
    assert '"bank": "bank"' in section_83 and "payment.wrong_bank" in section_83
    hello = doc.split("### 4.2 `hello`", 1)[1].split("### 4.3", 1)[0]
    assert "A side that serves nothing" in hello and "`{}`" in hello
    enrollment = doc.split("### 7.2", 1)[1].split("### 7.3", 1)[0]
    assert "first CRL" in enrollment and "certificates.crl" in enrollment


def test_capabilities_carry_the_payees_bank() -> None:
    from semper.services.payment import BadRequest, Capabilities

    plain = {"modules": [{"name": "transfer", "limits": [
        {"min": {"currency": "EUR", "minor_units": 1},
         "max": {"currency": "EUR", "minor_units": 100}}]}]}
    assert Capabilities.from_wire(plain).bank is None
    assert Capabilities.from_wire(plain).to_wire() == plain
    with_bank = {**plain, "bank": "bank-2"}
    assert Capabilities.from_wire(with_bank).bank == "bank-2"
    assert Capabilities.from_wire(with_bank).to_wire() == with_bank
    for bad in ("Bank", "", 7, "a/b"):
        with pytest.raises(BadRequest):
            Capabilities.from_wire({**plain, "bank": bad})
    with pytest.raises(BadRequest):
        Capabilities.from_wire({**plain, "banks": "x"})


async def test_a_client_that_serves_nothing_announces_empty_services(market: Path) -> None:
    """What section 4.2 says a side that serves nothing sends: an empty `services`
    map; the agent accepts it, answers it, and a request sent to it is refused
    `protocol.unknown_service`."""
    import trio
    from market_helpers import config_of, running

    from semper.agents.runtime._agent import Agent
    from semper.transport import RemoteError, ServiceRegistry, make_hello, open_channel

    seller = Agent(config_of(market, "seller"))
    client = Agent(config_of(market, "buyer"))
    async with running(seller):
        host, port = seller.address  # type: ignore[misc]
        hello = make_hello("buyer", "buyer", ServiceRegistry(), client.channel_config)
        assert hello.to_wire()["services"] == {}
        with trio.fail_after(10):
            async with open_channel(host, port, tls=client.tls,
                                    verify_peer=client.verify_peer, expected_id="seller",
                                    hello=hello) as channel:
                answer = await channel.request("sys", "ping", b"hi")
                assert answer["echo"] == b"hi"
                [inbound] = list(seller._inbound)
                assert inbound.their_hello.services == {}
                with pytest.raises(RemoteError) as info:
                    await inbound.request("sys", "ping", b"back")
                assert info.value.code == "protocol.unknown_service"
