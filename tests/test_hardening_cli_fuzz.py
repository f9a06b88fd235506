"""Issue 7, kind 10: every command, given arbitrary arguments, either succeeds (exit 0)
or prints exactly one line ``semper: <code>: <reason>`` on stderr and exits non-zero;
never a traceback, never ``internal.error``, and a failed command leaves the market
folder as it was.

Hypothesis builds each command's argument list from the command's own parameters
(click's introspection): for each argument or option, a value that is valid in the
prebuilt market (a config, the market folder, an agent id, an amount), nearly valid
(``BUYER``, ``EUR:99999999999999999999``, a folder given as a file), or arbitrary
text; options are sometimes left out, and stray tokens sometimes added. Commands run
through click's CliRunner, in-process, against a copy of one prebuilt market: no
agent is running, so commands that dial fail fast (connection refused) with their
code.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from semper.agents.cli import cli
from semper.agents.operator._market import init_market

LINE = re.compile(r"semper: [a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+: \S.*\Z")
#: Per command; the whole file stays within seconds. SEMPER_FUZZ_EXAMPLES=500 for a long run.
EXAMPLES = int(os.environ.get("SEMPER_FUZZ_EXAMPLES", "20"))
OUTCOMES: dict[str, int] = {}  # code (or "ok") -> count, for -s runs that want to look


def _leaves(group: click.Group, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    for name, command in sorted(group.commands.items()):
        if isinstance(command, click.Group):
            yield from _leaves(command, (*path, name))
        else:
            yield (*path, name)


#: `demo` starts a market of processes and takes no parameter: only its usage errors
#: are fuzzed (test_stray_tokens_are_usage_errors).
COMMANDS = [path for path in _leaves(cli) if path != ("demo",)]


@pytest.fixture(scope="module")
def market(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One market for the module: failures must leave it as it was (checked), and
    what succeeds only adds to it (a mint, a newly issued agent)."""
    root = tmp_path_factory.mktemp("fuzz")
    folder = root / "market"
    init_market(folder)
    (root / "empty").write_bytes(b"")
    (root / "garbage").write_bytes(b"\x00\xffnot toml = [\n")
    (root / "big-passphrase").write_bytes(b"p" * 5000)
    (root / "passphrase").write_bytes(b"correct horse\n")
    (root / "a-dir").mkdir()
    return folder


def _files(folder: Path) -> set[str]:
    """Every file of the market, SQLite's transient -wal/-shm files and the agents'
    event logs aside (a failed ping logs its attempt: a record, not half-made state)."""
    found = set()
    for base, _, names in os.walk(folder):
        for name in names:
            if not name.endswith(("-wal", "-shm", "-journal", ".jsonl")):
                found.add(os.path.relpath(os.path.join(base, name), folder))
    return found


ARBITRARY = st.text(max_size=40) | st.sampled_from(
    ["", "-", "--", "-x", "\x00", "\udcff", "é", " ", "a" * 300, "\n", "%s", "{}", "[]"])


def _paths(market: Path, *, runnable_config: bool) -> st.SearchStrategy[str]:
    root = market.parent
    known = [root / "empty", root / "garbage", root / "a-dir", root / "missing",
             root / "missing" / "deeper", root / "big-passphrase", root / "passphrase",
             market / "ca" / "root.pem", market / "ca" / "crl.pem", Path("/dev/null"),
             market / "buyer" / "key.pem"]
    if runnable_config:  # never for `agent run`: a valid config would serve forever
        known += [market, market / "bank" / "agent.toml", market / "buyer" / "agent.toml",
                  market / "seller" / "agent.toml", market / "ca" / "agent.toml"]
    return st.sampled_from([str(p) for p in known]) | ARBITRARY


IDS = st.sampled_from(["buyer", "seller", "bank", "ca", "notary", "nobody", "BUYER",
                       "buyer\u200b", "", "../x", "@issuance", "-x", "b" * 64]) | ARBITRARY
AMOUNTS = st.sampled_from([
    "EUR:1", "EUR:250", "EUR:0", "EUR:-1", f"EUR:{(1 << 63) - 1}", f"EUR:{1 << 63}",
    "EUR:99999999999999999999", "eur:1", "EUR:", ":5", "EUR:1.5", "EUR:1²", "EURO:1",
    "EUR:" + "9" * 5000]) | st.builds(lambda n: f"EUR:{n}", st.integers()) | ARBITRARY
WORDS = {
    "level": st.sampled_from(["self-asserted", "verified-contact", "verified-identity",
                              "liable", "gold", ""]),
    "role": st.sampled_from(["buyer", "seller", "bank", "notary", "no-such-role", "BAD",
                             ""]),
    "expires_in": st.sampled_from(["24h", "90s", "0s", "7d", "99999999999999999999d",
                                   "1y", "-1h", ""]),
    "listen": st.sampled_from(["127.0.0.1:0", "127.0.0.1:99999", "nohost", ":1", "[::1]:1",
                               "127.0.0.1:-1", ""]),
    "timeout": st.sampled_from(["0.2", "0", "-1", "nan", "inf", "1e309", "x"]),
    "token": st.sampled_from(["semper-enroll:", "semper-enroll:AAAA", "x", ""]),
    "transaction": st.sampled_from(["ab" * 32, "a", "", "%", "_"]),
    "key": st.sampled_from(["k1", "", "x" * 200]),
    "amount_text": AMOUNTS,
    "currency": st.sampled_from(["EUR", "eur", "EURO", "", "USD"]),
    "operation": st.sampled_from(["directory.lookup", "bank.account", "x", "a.b.c", ""]),
    "body": st.sampled_from(["{}", "[", "null", '{"$hex": "zz"}', "1e999", '"x"']),
}


def _value(param: click.Parameter, market: Path, *, runnable: bool) -> st.SearchStrategy[str]:
    name = param.name or ""
    kind = getattr(param.type, "name", "")
    if name in WORDS:
        return WORDS[name] | ARBITRARY
    if kind == "agent id" or name in ("holder", "agent_id", "peer", "seller"):
        return IDS
    if kind == "amount" or name in ("amount", "liability"):
        return AMOUNTS
    if isinstance(param.type, click.Choice):
        return st.sampled_from([str(c) for c in param.type.choices]) | ARBITRARY
    if isinstance(param.type, click.Path) or name.endswith(("path", "paths", "file")) \
            or name in ("folder", "out", "output"):
        return _paths(market, runnable_config=runnable)
    return ARBITRARY


@st.composite
def argv(draw: st.DrawFn, path: tuple[str, ...], market: Path) -> list[str]:
    command = cli
    for name in path:
        command = command.commands[name]  # type: ignore[attr-defined]
    runnable = path != ("agent", "run")
    args: list[str] = list(path)
    for param in command.params:
        if param.name == "help" or (isinstance(param, click.Option) and param.count):
            continue
        if isinstance(param, click.Option):
            if not draw(st.booleans() if not param.required else st.just(True)
                        | st.booleans()):
                continue
            flag = param.opts[0]
            if param.is_flag:
                args.append(flag)
                continue
            args += [flag, draw(_value(param, market, runnable=runnable))]
        else:
            if draw(st.integers(0, 9)) == 0:
                continue  # a missing argument
            args.append(draw(_value(param, market, runnable=runnable)))
    if draw(st.integers(0, 9)) == 0:
        args.insert(draw(st.integers(len(path), len(args))), draw(ARBITRARY))
    return args


def _check(args: list[str], market: Path) -> None:
    before = _files(market)
    result = CliRunner(env={"SEMPER_DEBUG": ""}).invoke(cli, args, prog_name="semper")
    assert not isinstance(result.exception, AssertionError)
    outcome = "ok" if result.exit_code == 0 else result.stderr.split(":")[1].strip()
    OUTCOMES[f"{args[0]} {outcome}"] = OUTCOMES.get(f"{args[0]} {outcome}", 0) + 1
    if result.exit_code == 0:
        return
    # `buy` names the idempotency key it made before its first network step, so that
    # a failed purchase can be resumed: that note may precede the failure's line.
    lines = [line for line in result.stderr.splitlines()
             if not (args[0] == "buy" and line.startswith("idempotency key: "))]
    where = f"semper {args!r} exited {result.exit_code} with stderr {result.stderr!r}"
    assert result.exception is None or isinstance(result.exception, SystemExit), where
    assert "Traceback" not in result.stderr, where
    assert len(lines) == 1 and LINE.match(lines[0]), where
    assert not lines[0].startswith("semper: internal."), where
    # Nothing removed, and nothing new but an agent's own database, which a command
    # acting as that agent opens (created whole, by its migrations) before it fails.
    after = _files(market)
    new = {f for f in after - before if not f.endswith(os.path.join("data", "agent.sqlite"))}
    assert before <= after and not new, f"{where}; files changed: {sorted(after ^ before)}"


@pytest.mark.parametrize("path", COMMANDS, ids=" ".join)
def test_every_command_succeeds_or_fails_in_one_line(path: tuple[str, ...], market: Path,
                                                     tmp_path_factory: pytest.TempPathFactory,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))  # relative paths land there
    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture,
                                     HealthCheck.too_slow])
    @given(args=argv(path, market))
    def run(args: list[str]) -> None:
        if path == ("market", "init"):  # each init into a new folder beside the market
            cwd = tmp_path_factory.mktemp("init")
            args = [a if a != str(market) else str(cwd / "m") for a in args]
        _check(args, market)

    run()


@pytest.mark.parametrize("args", [
    ["demo", "--nope"], ["demo", "extra"], ["--nope"], ["bank", "nope"], ["-vvvv", "nope"],
    ["market", "init"], ["agent"], ["archive", "export"],
])
def test_stray_tokens_are_usage_errors(args: list[str], market: Path) -> None:
    result = CliRunner().invoke(cli, args, prog_name="semper")
    if result.exit_code == 0:  # a group without a command prints its help
        assert "Usage:" in result.stdout
        return
    assert result.exit_code == 2, result.stderr
    assert LINE.match(result.stderr.strip()) and result.stderr.startswith("semper: cli.usage: ")


def test_the_fuzzed_market_still_balances(market: Path) -> None:
    print(sorted(OUTCOMES.items()))
    result = CliRunner().invoke(cli, ["bank", "accounts", "--config",
                                      str(market / "bank" / "agent.toml"), "--json"])
    assert result.exit_code == 0, result.stderr



# -- configs: what `--config` reads is input too ---------------------------------------

TOML_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(1 << 63), (1 << 63) - 1)
    | st.floats(allow_nan=True) | st.text(max_size=20)
    | st.sampled_from(["", "\x00", "127.0.0.1:99999", "../../etc", "BUYER", "x:1", "[::1]:1"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                              max_size=3),
    max_leaves=6)


@settings(max_examples=10 * EXAMPLES, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(changes=st.lists(st.tuples(st.sampled_from(
    ["id", "role", "listen", "data_dir", "ca_root", "crl", "cert", "key", "passphrase_file",
     "ca_agent", "advertise", "peers", "timeouts", "ca", "payment", "catalogue", "extra",
     "peers.bank", "timeouts.idle", "payment.bank", "payment.limit", "payment.modules",
     "payment.limit.EUR", "timeouts.handshake"]), TOML_VALUES | st.just(None)),
    min_size=1, max_size=4))
def test_a_config_loads_or_is_refused_with_agent_bad_config(
        changes: list[tuple[str, object]], market: Path,
        tmp_path_factory: pytest.TempPathFactory) -> None:
    import tomllib

    import tomli_w

    from semper.agents.runtime._config import AgentConfig, ConfigError

    raw = tomllib.loads((market / "buyer" / "agent.toml").read_text())
    for dotted, value in changes:
        *parents, key = dotted.split(".")
        table = raw
        for parent in parents:
            if not isinstance(table.get(parent), dict):
                table[parent] = {}
            table = table[parent]
        if value is None:
            table.pop(key, None)
        else:
            table[key] = value
    folder = tmp_path_factory.mktemp("config")
    path = folder / "agent.toml"
    try:
        path.write_text(tomli_w.dumps(_no_nones(raw)))
    except (TypeError, ValueError):
        return  # not representable in TOML
    try:
        config = AgentConfig.load(path)
    except ConfigError as exc:
        assert exc.code == "agent.bad_config" and exc.message
        return
    config.to_toml(base=folder)  # a config that loads can be written back
    config.listen_address  # noqa: B018 - checked once more, as the agent does


def _no_nones(value: object) -> object:
    if isinstance(value, dict):
        return {k: _no_nones(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_no_nones(v) for v in value if v is not None]
    return value
