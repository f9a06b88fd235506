"""``semper mail send|inbox|read`` end to end: real processes (ca, notary and the
receiver, ``seller``, running; the sender, ``buyer``, acts through the command), real
loopback TLS (issue 9 command line, protocol.md 10.4, 10.6).

The ``--json`` keys are used from outside the project: ``send``: ``mail``, ``state``
(``delivered`` | ``recovered`` | ``failed``), ``receipt``; ``inbox``: a list of
``mail``, ``from``, ``state``.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_cli import DEADLINE, Market, _env, assert_one_line_failure, semper, semper_argv
from test_fair_purchase_cli import Running, _market, start

SEND_DEADLINE = 60.0


def set_deadline(market: Market, agent_id: str, seconds: float) -> None:
    """The agent's ``[fairexchange] deadline`` (what a sender gives its receiver)."""
    path = market.config(agent_id)
    text = path.read_text()
    text, n = re.subn(r"(?m)^deadline = .*$", f"deadline = {seconds}", text)
    assert n == 1, text
    path.write_text(text)


def send(market: Market, message: Path, *, crash_at: str | None = None,
         receiver: str = "seller") -> subprocess.CompletedProcess[str]:
    env = _env()
    env.pop("SEMPER_CRASH_AT", None)
    if crash_at is not None:
        env["SEMPER_CRASH_AT"] = crash_at
    return subprocess.run(
        semper_argv("mail", "send", "--config", market.config("buyer"), "--to", receiver,
                    "--file", message, "--json"),
        capture_output=True, text=True, timeout=SEND_DEADLINE, env=env)


def inbox(market: Market) -> dict[str, dict[str, str]]:
    done = semper("mail", "inbox", "--config", market.config("seller"), "--json")
    assert done.returncode == 0, done.stderr
    return {m["mail"]: m for m in json.loads(done.stdout)}


def wait_state(market: Market, mail: str, states: set[str]) -> str:
    """The receiver's state of ``mail`` once it is one of ``states`` (each look is a
    process start, about half a second; bounded)."""
    state = ""
    for _ in range(30):
        state = inbox(market).get(mail, {}).get("state", "")
        if state in states:
            return state
    raise AssertionError(f"mail {mail[:16]} stayed {state!r}, not {states}")


@pytest.fixture(scope="module")
def market(tmp_path_factory: pytest.TempPathFactory) -> Market:
    return _market(tmp_path_factory.mktemp("mail"))


@pytest.fixture(scope="module")
def running(market: Market, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    agents = Running(market, tmp_path_factory.mktemp("logs"))
    try:
        yield agents
    finally:
        agents.close()
        for agent in agents.agents.values():
            assert "Traceback" not in agent.stderr(), agent.stderr()


def test_send_inbox_read(market: Market, running: Running, tmp_path: Path) -> None:
    message = tmp_path / "letter.txt"
    message.write_bytes(b"Dear seller,\nthis letter is certified.\n")
    done = send(market, message)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert set(result) == {"mail", "state", "receipt"}
    assert result["state"] == "delivered" and len(result["receipt"]) == 64
    assert inbox(market)[result["mail"]] == {"mail": result["mail"], "from": "buyer",
                                             "state": "read"}
    out = tmp_path / "read.txt"
    read = semper("mail", "read", "--config", market.config("seller"), result["mail"],
                  "-o", out)
    assert read.returncode == 0, read.stderr
    assert out.read_bytes() == message.read_bytes()
    human = semper("mail", "inbox", "--config", market.config("seller"))
    assert f"{result['mail']}  from buyer  read" in human.stdout


def test_refusals_are_one_line(market: Market, running: Running, tmp_path: Path) -> None:
    unknown = semper("mail", "read", "--config", market.config("seller"), "ab" * 32,
                     "-o", tmp_path / "x")
    assert_one_line_failure(unknown, "mail.unknown_mail")
    assert_one_line_failure(semper("mail", "read", "--config", market.config("seller"),
                                   "not-a-mail", "-o", tmp_path / "x"), "cli.usage")
    missing = semper("mail", "send", "--config", market.config("buyer"), "--to", "seller",
                     "--file", tmp_path / "nothing.txt")
    assert_one_line_failure(missing, "agent.bad_file")
    assert not (tmp_path / "x").exists()


def test_a_receiver_left_without_the_key_recovers_through_the_notary(
        market: Market, running: Running, tmp_path: Path) -> None:
    """The sender dies once it holds the receipt, before the key leaves: the receiver's
    agent, at the deadline, gets the key from the notary by itself."""
    running.ensure()
    set_deadline(market, "buyer", 3.0)
    try:
        message = tmp_path / "m.txt"
        message.write_bytes(b"you will read this through the notary\n")
        done = send(market, message, crash_at="mail.sender.receipted")
        assert done.returncode == -9, done.stderr
        (mail,) = [m for m, v in inbox(market).items() if v["state"] == "waiting"]
        assert wait_state(market, mail, {"recovered", "void"}) == "recovered"
        out = tmp_path / "out.txt"
        read = semper("mail", "read", "--config", market.config("seller"), mail, "-o", out)
        assert read.returncode == 0, read.stderr
        assert out.read_bytes() == message.read_bytes()
    finally:
        set_deadline(market, "buyer", 30.0)


def test_a_receiver_killed_after_signing_is_restarted_and_the_mail_delivered(
        market: Market, running: Running, tmp_path: Path) -> None:
    """The receiver dies after storing its receipt, before answering: restarted, it
    answers the sender's retry with the same receipt."""
    running.ensure()
    receiver = running.restart("seller", crash_at="mail.receiver.signed")
    message = tmp_path / "m.txt"
    message.write_bytes(b"signed, crashed, answered\n")
    env = _env()
    env.pop("SEMPER_CRASH_AT", None)
    sender = subprocess.Popen(
        semper_argv("mail", "send", "--config", market.config("buyer"), "--to", "seller",
                    "--file", message, "--json"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert receiver.process.wait(DEADLINE) == -9
        running.restart("seller")
        out, err = sender.communicate(timeout=SEND_DEADLINE)
    finally:
        if sender.poll() is None:
            sender.kill()
    assert sender.returncode == 0, err
    result = json.loads(out)
    assert result["state"] == "delivered"
    assert inbox(market)[result["mail"]]["state"] == "read"


@pytest.mark.parametrize("point", ["mail.sender.offered", "mail.sender.revealed",
                                   "mail.receiver.read", "mail.receiver.recovering"])
def test_each_party_killed_at_a_step_ends_fair(market: Market, running: Running,
                                               tmp_path: Path, point: str) -> None:
    """Killed at ``point`` and restarted (the sender: its agent started, which resumes
    the exchange): the receiver ends reading the mail, from the sender's key or the
    notary's."""
    running.ensure()
    message = tmp_path / "m.txt"
    message.write_bytes(f"killed at {point}\n".encode())
    before = set(inbox(market))
    if point == "mail.receiver.recovering":  # reached when the sender never reveals
        set_deadline(market, "buyer", 3.0)
        receiver = running.restart("seller", crash_at=point)
        done = send(market, message, crash_at="mail.sender.receipted")
        assert done.returncode == -9, done.stderr
        assert receiver.process.wait(DEADLINE * 2) == -9  # at the deadline
        set_deadline(market, "buyer", 30.0)
        running.restart("seller")
        expected = {"recovered"}
    elif point.startswith("mail.receiver."):
        receiver = running.restart("seller", crash_at=point)
        done = send(market, message)  # the key was stored, its answer lost
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["state"] == "delivered"
        assert receiver.process.wait(DEADLINE) == -9
        running.restart("seller")
        expected = {"read"}
    else:
        done = send(market, message, crash_at=point)
        assert done.returncode == -9, done.stderr
        if "buyer" in running.agents:  # its agent, (re)started, resumes the exchange
            running.restart("buyer")
        else:
            running.agents["buyer"] = start(market, "buyer", running.logs)
        expected = {"read"}
    (mail,) = set(inbox(market)) - before
    assert wait_state(market, mail, expected | {"void"}) in expected
    out = tmp_path / "out.txt"
    read = semper("mail", "read", "--config", market.config("seller"), mail, "-o", out)
    assert read.returncode == 0, read.stderr
    assert out.read_bytes() == message.read_bytes()


def test_a_sender_killed_when_closing_finishes_with_mail_show(
        market: Market, running: Running, tmp_path: Path) -> None:
    """``mail.sender.closing``: the sender dies at the deadline, closing stored;
    ``mail show`` carries it on to the notary's abort (``failed``)."""
    running.ensure()
    set_deadline(market, "buyer", 2.0)
    try:
        message = tmp_path / "m.txt"
        message.write_bytes(b"nobody home, and the sender dies\n")
        done = send(market, message, receiver="arbiter", crash_at="mail.sender.closing")
        assert done.returncode == -9, done.stderr
    finally:
        set_deadline(market, "buyer", 30.0)
    database = next(market.root.joinpath("buyer").rglob("agent.sqlite"))
    with sqlite3.connect(database) as c:
        ((exchange,),) = c.execute("SELECT exchange FROM mail_exchanges WHERE role = 'sender'"
                                   " AND state = 'closing'").fetchall()
    shown = semper("mail", "show", "--config", market.config("buyer"), exchange.hex(),
                   "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout) == {"mail": exchange.hex(), "state": "failed",
                                        "receipt": None}


def test_a_sender_whose_receiver_never_answers_closes_failed(
        market: Market, running: Running, tmp_path: Path) -> None:
    """No receipt by the deadline: the notary aborts the exchange (``failed``, no
    receipt), and a receipt can no longer be had for it."""
    running.ensure()
    set_deadline(market, "buyer", 2.0)
    try:
        message = tmp_path / "m.txt"
        message.write_bytes(b"nobody home\n")
        done = send(market, message, receiver="arbiter")  # its agent does not run
        assert done.returncode == 0, done.stderr
        result = json.loads(done.stdout)
        assert result["state"] == "failed" and result["receipt"] is None
    finally:
        set_deadline(market, "buyer", 30.0)


def test_a_bad_escrow_voids_the_mail(tmp_path_factory: pytest.TempPathFactory,
                                     tmp_path: Path) -> None:
    """The escrow does not open (the notary's key replaced after the sender kept it)
    and the sender dies before the key leaves: the notary's signed finding voids the
    receipt; the receiver's inbox says ``void`` and read is one line."""
    folder = tmp_path_factory.mktemp("bad-mail")
    market = _market(folder)
    agents = Running(market, folder)
    try:
        message = tmp_path / "m.txt"
        message.write_bytes(b"first\n")
        assert send(market, message).returncode == 0  # the sender keeps the escrow key
        agents.agents["notary"].stop()
        database = next(market.root.joinpath("notary").rglob("agent.sqlite"))
        with sqlite3.connect(database) as c:
            c.execute("UPDATE notary_escrow_keys SET private = ?", (os.urandom(32),))
        agents.restart("notary")
        set_deadline(market, "buyer", 3.0)
        message.write_bytes(b"second, sealed to a key the notary no longer has\n")
        done = send(market, message, crash_at="mail.sender.receipted")
        assert done.returncode == -9, done.stderr
        (mail,) = [m for m, v in inbox(market).items() if v["state"] == "waiting"]
        assert wait_state(market, mail, {"recovered", "void"}) == "void"
        read = semper("mail", "read", "--config", market.config("seller"), mail, "-o",
                      tmp_path / "out.txt")
        assert_one_line_failure(read, "mail.unreadable")
    finally:
        agents.close()
