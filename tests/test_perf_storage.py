"""A database's commits run in one writer thread of its own, not one
``trio.to_thread.run_sync`` each (issue 8, item 6: ~60 us of CPU per commit group in
trio's thread machinery, several groups per purchase on each side). Same guarantees:
durable when ``transaction`` returns, group commit, a failing writer rolls back only
its own work, ``aclose`` waits for the commit in progress.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from semper.agents.runtime import _storage
from semper.agents.runtime._storage import Database

NOTES = {"notes": ["CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT NOT NULL)"]}


def _writers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("semper-db-writer")]


async def test_commits_run_in_the_database_s_own_thread(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The instance: every commit group was a to_thread call."""
    hops: list[Any] = []
    run_sync = trio.to_thread.run_sync

    async def counting(fn: Any, *args: Any, **kwargs: Any) -> Any:
        hops.append(fn)
        return await run_sync(fn, *args, **kwargs)

    db = await Database.open(tmp_path / "a.sqlite", NOTES)
    monkeypatch.setattr(_storage.trio.to_thread, "run_sync", counting)
    threads: list[threading.Thread] = []

    def write(c: sqlite3.Connection) -> None:
        threads.append(threading.current_thread())
        c.execute("INSERT INTO notes (text) VALUES ('x')")

    for _ in range(5):
        await db.transaction(write)
    async with trio.open_nursery() as nursery:  # a group, then another
        for _ in range(20):
            nursery.start_soon(db.transaction, write)
    assert hops == []
    assert len(set(threads)) == 1 and threads[0].name.startswith("semper-db-writer")
    assert await db.read(lambda c: c.execute("SELECT count(*) FROM notes").fetchone()[0]) == 25
    await db.aclose()
    # The thread ends by itself, nothing else asked of it. aclose returns when the
    # thread has run its last job, the close, which is a few bytecodes before the
    # thread's end: a loaded machine (two xdist workers) can run this line between
    # the two, so its end is awaited, bounded, not assumed. That thread, not one of
    # its name: another test's database called a.sqlite may be open in this process.
    threads[0].join(timeout=10)
    assert not threads[0].is_alive() and threads[0] not in _writers()


async def test_a_failing_writer_in_a_group_rolls_back_alone(tmp_path: Path) -> None:
    db = await Database.open(tmp_path / "a.sqlite", NOTES)
    outcomes: list[str] = []

    async def one(text: str) -> None:
        def write(c: sqlite3.Connection) -> None:
            c.execute("INSERT INTO notes (text) VALUES (?)", (text,))
            if text == "bad":
                raise ValueError("refused")
        try:
            await db.transaction(write)
            outcomes.append(text)
        except ValueError:
            outcomes.append("refused")

    async with trio.open_nursery() as nursery:
        for text in ("a", "bad", "b", "c"):
            nursery.start_soon(one, text)
    assert sorted(outcomes) == ["a", "b", "c", "refused"]
    texts = await db.read(lambda c: [r[0] for r in c.execute("SELECT text FROM notes")])
    assert sorted(texts) == ["a", "b", "c"]
    await db.aclose()


def test_a_database_outlives_a_trio_run_and_closes_its_thread(tmp_path: Path) -> None:
    """Each job answers the run that queued it; ``close`` (the blocking form) ends the
    thread too."""
    db = Database.open_sync(tmp_path / "a.sqlite", NOTES)
    threads: list[threading.Thread] = []

    def write(c: sqlite3.Connection) -> None:
        threads.append(threading.current_thread())
        c.execute("INSERT INTO notes (text) VALUES ('x')")

    for _ in range(2):
        trio.run(db.transaction, write)
    # Its own thread, not a count of the process's writers: another test's thread may
    # still be ending (see above) and leave the count while this test runs.
    (thread,) = set(threads)
    assert thread in _writers() and thread.is_alive()
    db.close()
    assert not thread.is_alive()  # close joins it
    again = Database.open_sync(tmp_path / "a.sqlite", NOTES)
    assert again.read_sync(lambda c: c.execute("SELECT count(*) FROM notes").fetchone()[0]) == 2
    again.close()


async def test_a_cancelled_caller_still_waits_for_its_commit(tmp_path: Path) -> None:
    db = await Database.open(tmp_path / "a.sqlite", NOTES)
    with trio.CancelScope() as scope:
        scope.cancel()
        await db.transaction(lambda c: c.execute("INSERT INTO notes (text) VALUES ('x')"))
    assert await db.read(lambda c: c.execute("SELECT count(*) FROM notes").fetchone()[0]) == 1
    await db.aclose()


async def test_a_writer_alone_needs_no_savepoint_and_still_rolls_back_alone(
        tmp_path: Path) -> None:
    """Another member of the kind (work per commit that buys nothing): a group of one
    ran SAVEPOINT and RELEASE around its writer, two more statements per commit."""
    db = await Database.open(tmp_path / "a.sqlite", NOTES)
    statements: list[str] = []
    db._connection.set_trace_callback(statements.append)
    await db.transaction(lambda c: c.execute("INSERT INTO notes (text) VALUES ('a')"))
    assert [s.split()[0] for s in statements] == ["BEGIN", "INSERT", "COMMIT"]

    def half(c: sqlite3.Connection) -> None:
        c.execute("INSERT INTO notes (text) VALUES ('half')")
        raise ValueError("refused")

    with pytest.raises(ValueError, match="refused"):
        await db.transaction(half)
    await db.transaction(lambda c: c.execute("INSERT INTO notes (text) VALUES ('b')"))
    texts = await db.read(lambda c: [r[0] for r in c.execute("SELECT text FROM notes")])
    assert texts == ["a", "b"]
    await db.aclose()


async def test_writers_woken_together_share_one_commit(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Another member (a commit's fixed cost paid more often than needed): the first
    of the requests read from one channel batch committed alone and the others
    waited for a second commit; one turn of the scheduler lets them all join."""
    db = await Database.open(tmp_path / "a.sqlite", NOTES)
    groups: list[int] = []
    run_group = Database._run_group

    def counting(self: Database, fns: list[Any]) -> Any:
        groups.append(len(fns))
        return run_group(self, fns)

    monkeypatch.setattr(Database, "_run_group", counting)
    async with trio.open_nursery() as nursery:
        for n in range(8):
            nursery.start_soon(db.transaction, lambda c, n=n: c.execute(
                "INSERT INTO notes (text) VALUES (?)", (str(n),)))
    assert groups == [8]
    assert await db.read(lambda c: c.execute("SELECT count(*) FROM notes").fetchone()[0]) == 8
    await db.aclose()


async def test_close_waits_for_the_commit_in_progress(tmp_path: Path) -> None:
    db = await Database.open(tmp_path / "a.sqlite", NOTES)
    token = trio.lowlevel.current_trio_token()
    started = trio.Event()
    release = threading.Event()

    def slow(c: sqlite3.Connection) -> None:
        c.execute("INSERT INTO notes (text) VALUES ('slow')")
        trio.from_thread.run_sync(started.set, trio_token=token)
        release.wait(10)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(db.transaction, slow)
        await started.wait()
        nursery.start_soon(db.aclose)
        await trio.testing.wait_all_tasks_blocked()
        release.set()
    again = Database.open_sync(tmp_path / "a.sqlite", NOTES)
    assert again.read_sync(lambda c: c.execute("SELECT count(*) FROM notes").fetchone()[0]) == 1
    again.close()


async def test_the_next_group_commits_without_the_event_loop(tmp_path: Path) -> None:
    """The instance behind most of a commit's latency under load: the writers queued
    during a commit waited for the event loop to run the last group's leader before
    their own group started. Now the thread takes them as soon as it has committed,
    even while the loop is busy (here: blocked outright)."""
    db = await Database.open(tmp_path / "a.sqlite", NOTES)
    token = trio.lowlevel.current_trio_token()
    started, go, second = trio.Event(), threading.Event(), threading.Event()

    def slow(c: sqlite3.Connection) -> None:
        c.execute("INSERT INTO notes (text) VALUES ('first')")
        trio.from_thread.run_sync(started.set, trio_token=token)
        go.wait(10)

    def fast(c: sqlite3.Connection) -> None:
        c.execute("INSERT INTO notes (text) VALUES ('second')")
        second.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(db.transaction, slow)
        await started.wait()
        nursery.start_soon(db.transaction, fast)
        await trio.testing.wait_all_tasks_blocked()
        go.set()
        assert second.wait(10)  # the loop is blocked here: the thread went on alone
    texts = await db.read(lambda c: [r[0] for r in c.execute("SELECT text FROM notes")])
    assert texts == ["first", "second"]
    await db.aclose()


def _temporary_files() -> list[str]:
    """The unlinked files this process holds open (SQLite's temporary files)."""
    found = []
    for fd in Path("/proc/self/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.endswith(" (deleted)"):
            found.append(target)
    return found


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc")
async def test_a_group_s_savepoints_journal_in_memory(tmp_path: Path) -> None:
    """The instance: past 64 KiB a SAVEPOINT's journal (the pages it changes, kept to
    roll it back alone) spilled to a temporary file, a pwrite per page: ~13 a purchase
    in the bank. It only serves a rollback inside the transaction, so memory does;
    the one failing writer of a group still rolls back alone."""
    db = await Database.open(tmp_path / "a.sqlite", NOTES)
    await db.transaction(lambda c: c.executemany(
        "INSERT INTO notes (text) VALUES (?)", [("x" * 2000,)] * 200))
    spilled: list[list[str]] = []

    def rewrite(c: sqlite3.Connection) -> None:
        c.execute("UPDATE notes SET text = ?", ("y" * 2000,))  # ~100 pages journaled
        spilled.append(_temporary_files())

    def fails(c: sqlite3.Connection) -> None:
        c.execute("UPDATE notes SET text = 'lost'")
        raise ValueError("refused")

    before = _temporary_files()
    results = db._run_group([rewrite, fails])  # one group: each in its SAVEPOINT
    assert [ok for ok, _ in results] == [True, False]
    assert spilled == [before]
    texts = await db.read(lambda c: {r[0] for r in c.execute("SELECT text FROM notes")})
    assert texts == {"y" * 2000}
    await db.aclose()


async def test_an_idle_writer_is_woken_without_trio_s_wake_up_socket(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The instance: a commit that found the thread idle went through ``run_sync_soon``
    twice, to wake the thread and to hand back the result: each a write to trio's
    wake-up socket, an epoll round and a re-registration. The wake is a task of the
    run now; only the thread's answer needs the socket. Writers queued together
    still share one commit."""
    db = await Database.open(tmp_path / "a.sqlite", NOTES)
    await db.transaction(lambda c: c.execute("INSERT INTO notes (text) VALUES ('warm')"))
    calls = [0]
    soon = trio.lowlevel.TrioToken.run_sync_soon

    def counting(self: Any, *args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        return soon(self, *args, **kwargs)

    monkeypatch.setattr(trio.lowlevel.TrioToken, "run_sync_soon", counting)
    groups = [0]
    run_group = Database._run_group

    def counting_groups(self: Database, fns: list[Any]) -> Any:
        groups[0] += 1
        return run_group(self, fns)

    monkeypatch.setattr(Database, "_run_group", counting_groups)
    for n in range(3):  # one at a time: the thread is idle at each
        await db.transaction(lambda c, n=n: c.execute("INSERT INTO notes (text) VALUES (?)",
                                                      (f"lone-{n}",)))
    assert calls[0] == 3 and groups[0] == 3
    async with trio.open_nursery() as nursery:  # another member: woken together
        for n in range(5):
            nursery.start_soon(db.transaction, lambda c, n=n: c.execute(
                "INSERT INTO notes (text) VALUES (?)", (f"together-{n}",)))
    assert groups[0] == 4
    assert await db.read(lambda c: c.execute("SELECT count(*) FROM notes").fetchone()[0]) == 9
    await db.aclose()


def test_a_database_used_in_two_trio_runs_wakes_its_thread_in_each(tmp_path: Path) -> None:
    """Another member: the waker is a task of the run that queued, so a database
    outliving a run (``open_sync`` in a command, then ``trio.run``) still commits."""
    db = Database.open_sync(tmp_path / "a.sqlite", NOTES)
    for n in range(2):
        async def one(n: int = n) -> None:
            await db.transaction(lambda c: c.execute("INSERT INTO notes (text) VALUES (?)",
                                                     (f"run-{n}",)))
        trio.run(one)
    assert db.read_sync(lambda c: c.execute("SELECT count(*) FROM notes").fetchone()[0]) == 2
    db.close()
