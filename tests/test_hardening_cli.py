"""Issue 7, kind 10: no input produces an internal error or a half-made state.

Every command either succeeds or prints exactly one line ``semper: <code>: <reason>``
on stderr and exits non-zero (2 for usage errors), and a failed command leaves
nothing half-written. The instances of the issue first, then other members.
(tests/test_hardening_cli_fuzz.py drives every command with arbitrary arguments.)
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest
from cli_helpers import market, prebuilt, refused, semper  # noqa: F401 (fixtures)

from semper.agents.operator import _market


def bank_rows(market: Path) -> list[tuple[object, ...]]:
    with sqlite3.connect(market / "bank" / "data" / "agent.sqlite") as c:
        return c.execute("SELECT holder, currency, balance FROM ledger_accounts"
                         " ORDER BY holder").fetchall()


# -- the instances of the issue --------------------------------------------------------


def test_mint_of_an_amount_beyond_int64_is_one_line(market: Path) -> None:
    """Was an OverflowError from SQLite binding the int."""
    before = bank_rows(market)
    refused(semper("bank", "mint", "--config", market / "bank" / "agent.toml", "buyer",
                   "EUR:99999999999999999999"), "money.out_of_range", 2)
    assert bank_rows(market) == before


def test_invite_with_a_liability_beyond_int64_is_one_line(market: Path) -> None:
    """Was an OverflowError."""
    refused(semper("ca", "invite", market, "newcomer", "--role", "buyer", "--level", "liable",
                   "--liable-amount", "EUR:99999999999999999999"), "money.out_of_range", 2)


def test_mint_to_the_issuance_account_is_one_line(market: Path) -> None:
    """Was an IntegrityError (one entry posting twice to one account)."""
    before = bank_rows(market)
    refused(semper("bank", "mint", "--config", market / "bank" / "agent.toml", "@issuance",
                   "EUR:1"), "agent.bad_id", 2)
    assert bank_rows(market) == before


def test_market_init_with_a_huge_passphrase_leaves_nothing(tmp_path: Path) -> None:
    """Was a ValueError from the key encryption, after a half-written market folder."""
    passphrase = tmp_path / "passphrase"
    passphrase.write_bytes(b"x" * 2_000_000 + b"\n")
    refused(semper("market", "init", tmp_path / "m", "--passphrase-file", passphrase),
            "agent.bad_passphrase", 1)
    assert sorted(os.listdir(tmp_path)) == ["passphrase"]


def test_archive_export_of_an_unknown_transaction_is_one_line(market: Path,
                                                              tmp_path: Path) -> None:
    """Was click's `Error: ...` form."""
    refused(semper("archive", "export", "--config", market / "bank" / "agent.toml", "ab" * 32,
                   "--out", tmp_path / "bundle"), "archive.unknown_transaction", 1)
    assert not (tmp_path / "bundle").exists()


# -- other members found ----------------------------------------------------------------


def test_market_init_that_fails_half_way_leaves_nothing(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A failure after the CA and some agents are written (here: the bank's books)
    removes everything; the folder can be used again at once."""
    def broken(*args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(_market, "_open_for_business", broken)
    refused(semper("market", "init", tmp_path / "m"), "os.error", 1)
    assert os.listdir(tmp_path) == []
    monkeypatch.undo()
    status, _, err = semper("market", "init", tmp_path / "m")
    assert status == 0, err
    assert sorted(os.listdir(tmp_path)) == ["m"]
    assert (tmp_path / "m" / "bank" / "agent.toml").is_file()


def test_market_init_into_an_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    status, out, err = semper("market", "init", tmp_path / "m")
    assert status == 0, err
    assert sorted(os.listdir(tmp_path)) == ["m"]
    assert str(tmp_path / "m" / "bank" / "agent.toml") in out.replace("\n", "")


@pytest.mark.parametrize("args, code", [
    (["bank", "mint"], "cli.usage"),  # a missing option
    (["bank", "mint", "--nope"], "cli.usage"),  # an unknown option
    (["no-such-command"], "cli.usage"),
    (["ca", "invite", "DIR", "x", "--role", "buyer", "--level", "gold"], "cli.usage"),
    (["ca", "status", "DIR", "Nobody"], "agent.bad_id"),
    (["ca", "revoke", "DIR", "../bank"], "agent.bad_id"),  # was a path into the market
    (["ping", "--config", "CFG", "BUYER"], "agent.bad_id"),
    (["buy", "--config", "CFG", "--seller", "seller\u200b", "--item", "x", "--pay",
      "transfer"], "agent.bad_id"),
    (["bank", "mint", "--config", "BANK", "buyer", "EUR:-5"], "money.bad_amount"),
    (["bank", "mint", "--config", "BANK", "buyer", "EUR:0"], "money.bad_amount"),
    (["bank", "mint", "--config", "BANK", "buyer", "EUR:1²"], "money.bad_amount"),
    (["bank", "mint", "--config", "BANK", "buyer", "EUR:" + "9" * 5000], "money.out_of_range"),
])
def test_usage_errors_are_one_line_with_exit_2(args: list[str], code: str,
                                               market: Path) -> None:
    where = {"DIR": str(market), "CFG": str(market / "buyer" / "agent.toml"),
             "BANK": str(market / "bank" / "agent.toml")}
    before = bank_rows(market)
    refused(semper(*[where.get(a, a) for a in args]), code, 2)
    assert bank_rows(market) == before


@pytest.mark.parametrize("content, code", [
    (b"", "agent.bad_passphrase"),  # empty
    (b"\n\n", "agent.bad_passphrase"),  # an empty first line
    (b"x" * 1024, "agent.bad_passphrase"),  # one byte over the key encryption's limit
])
def test_passphrase_files_refused_before_anything_is_written(content: bytes, code: str,
                                                             tmp_path: Path) -> None:
    passphrase = tmp_path / "passphrase"
    passphrase.write_bytes(content)
    refused(semper("market", "init", tmp_path / "m", "--passphrase-file", passphrase), code, 1)
    assert sorted(os.listdir(tmp_path)) == ["passphrase"]


def test_a_passphrase_of_the_longest_length_works(tmp_path: Path) -> None:
    passphrase = tmp_path / "passphrase"
    passphrase.write_bytes(b"x" * 1023 + b"\n")
    status, _, err = semper("market", "init", tmp_path / "m", "--passphrase-file", passphrase)
    assert status == 0, err


def test_a_multi_line_reason_is_printed_on_one_line(tmp_path: Path) -> None:
    """A config that is not TOML: the parser's message is folded onto one line."""
    config = tmp_path / "agent.toml"
    config.write_text("id = \n[[\n")
    refused(semper("bank", "accounts", "--config", config), "agent.bad_config", 1)


def test_help_and_no_arguments_exit_0() -> None:
    for args in ([], ["bank"], ["--help"], ["bank", "mint", "--help"]):
        status, out, err = semper(*args)
        assert status == 0 and "Usage:" in out and err == "", (args, status, err)


# -- members the fuzzer found (tests/test_hardening_cli_fuzz.py) -------------------------


def test_a_nul_in_an_argument_is_a_usage_error(market: Path) -> None:
    """Was `internal.error: ValueError: embedded null byte` from the first open()."""
    refused(semper("archive", "check", "bundle", "--root", market / "ca" / "root.pem",
                   "--passphrase-file", "\x00"), "cli.usage", 2)


def test_a_nul_in_a_config_path_is_a_config_error(market: Path) -> None:
    """TOML can spell a NUL (\\u0000); no file name holds one."""
    config = market / "bank" / "agent.toml"
    config.write_text(config.read_text().replace('cert = "cert.pem"', 'cert = "cert\\u0000.pem"'))
    refused(semper("bank", "accounts", "--config", config), "agent.bad_config", 1)


def test_control_characters_in_a_reason_stay_on_one_line(tmp_path: Path) -> None:
    """A form feed or an escape sequence in a file name: str.splitlines() broke the line
    at the form feed; the terminal would have obeyed the escape."""
    line = refused(semper("archive", "check", "\x0cbundle\x1b[2J", "--root",
                          tmp_path / "root.pem"), "os.error", 1)
    assert "\x1b" not in line and "\\x1b" in line


def test_a_duration_beyond_timedelta_is_a_usage_error(market: Path) -> None:
    """Was `internal.error: OverflowError`."""
    refused(semper("ca", "invite", market, "newcomer", "--role", "buyer", "--level",
                   "self-asserted", "--expires-in", "99999999999999999999d"), "cli.usage", 2)


def test_market_init_into_an_undecodable_folder_name(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A folder name with a byte that is not UTF-8 (a lone surrogate in Python): the
    market was made, then printing its path failed the command (UnicodeEncodeError)."""
    monkeypatch.chdir(tmp_path)
    status, out, err = semper("market", "init", "m\udcff")
    assert status == 0, err
    assert "\\udcff" in out
    assert os.listdir(tmp_path) == ["m\udcff"]


def test_enrollment_that_fails_while_writing_leaves_no_folder(
        prebuilt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another member: `agent enroll` wrote the agent folder file by file after the CA
    answered; a failure half way (here the fourth file) left a folder with a key and
    no config. It is now built aside and renamed into place."""
    from types import SimpleNamespace

    from cryptography.hazmat.primitives.asymmetric import ed25519

    from semper.agents.operator import _enroll
    from semper.services.certificates import load_certificate, load_crl

    token = SimpleNamespace(agent_id="newcomer", role="buyer")
    enrolled = SimpleNamespace(
        certificate=load_certificate((prebuilt / "buyer" / "cert.pem").read_bytes()),
        root=load_certificate((prebuilt / "ca" / "root.pem").read_bytes()),
        crl=load_crl((prebuilt / "ca" / "crl.pem").read_bytes()),
        ca_id="ca", ca_address="127.0.0.1:1")
    key = ed25519.Ed25519PrivateKey.generate()
    calls = []
    real = _enroll.write_file

    def failing(path: Path, data: bytes, **kw: object) -> None:
        calls.append(path.name)
        if len(calls) == 4:
            raise OSError(28, "No space left on device")
        real(path, data, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(_enroll, "write_file", failing)
    with pytest.raises(OSError):
        _enroll._write_folder(tmp_path / "agent", token, enrolled, key,  # type: ignore[arg-type]
                              listen=None, passphrase=None, passphrase_file=None)
    assert os.listdir(tmp_path) == []
    monkeypatch.setattr(_enroll, "write_file", real)
    config = _enroll._write_folder(tmp_path / "agent", token, enrolled,  # type: ignore[arg-type]
                                   key, listen=None, passphrase=None, passphrase_file=None)
    assert config.id == "newcomer" and (tmp_path / "agent" / "agent.toml").is_file()
    assert os.listdir(tmp_path) == ["agent"]


@pytest.mark.parametrize("args", [
    ["archive", "export", "--config", "BANK", "\udcff", "--out", "OUT"],  # was found
    ["buy", "--config", "CFG", "--seller", "seller", "--item", "x\udcff", "--pay", "transfer"],
    ["refund", "--config", "CFG", "--idempotency-key", "\udcff"],
    ["bank", "open", "--config", "BANK", "buyer", "\udcff"],
])
def test_text_that_is_not_utf8_is_a_usage_error(args: list[str], market: Path,
                                                tmp_path: Path) -> None:
    """A byte that is not UTF-8 on the command line (a lone surrogate in Python) in a
    text argument: was `internal.error: UnicodeEncodeError` from SQLite. File names keep
    such bytes (test_market_init_into_an_undecodable_folder_name)."""
    where = {"CFG": str(market / "buyer" / "agent.toml"),
             "BANK": str(market / "bank" / "agent.toml"), "OUT": str(tmp_path / "out")}
    refused(semper(*[where.get(a, a) for a in args]), "cli.usage", 2)
