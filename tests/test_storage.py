"""The agent's SQLite file: pragmas, migrations, transactions (agents/runtime/_storage.py)."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest
import trio

from semper.agents.runtime._storage import Database, StorageError, schema_version

NOTES = {"notes": ["CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT NOT NULL)"]}


async def test_pragmas_make_commits_durable(tmp_path: Path) -> None:
    db = await Database.open(tmp_path / "a.sqlite", NOTES)
    mode = await db.read(lambda c: c.execute("PRAGMA journal_mode").fetchone()[0])
    sync = await db.read(lambda c: c.execute("PRAGMA synchronous").fetchone()[0])
    assert (mode, sync) == ("wal", 2)  # 2 is FULL
    await db.aclose()


async def test_migrations_run_once_and_in_order(tmp_path: Path) -> None:
    path = tmp_path / "a.sqlite"
    db = await Database.open(path, NOTES)
    await db.transaction(lambda c: c.execute("INSERT INTO notes (text) VALUES ('kept')"))
    await db.aclose()
    grown = {"notes": [*NOTES["notes"], "ALTER TABLE notes ADD COLUMN stars INTEGER DEFAULT 0; "
                                        "CREATE INDEX notes_stars ON notes (stars)"],
             "other": ["CREATE TABLE other (x INTEGER)"]}
    db = await Database.open(path, grown)
    assert await db.read(lambda c: schema_version(c, "notes")) == 2
    assert await db.read(lambda c: schema_version(c, "other")) == 1
    assert await db.read(lambda c: c.execute("SELECT text, stars FROM notes").fetchall()) == [
        ("kept", 0)]
    await db.aclose()


async def test_a_file_from_a_newer_build_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "a.sqlite"
    two = {"notes": [*NOTES["notes"], "ALTER TABLE notes ADD COLUMN stars INTEGER"]}
    await (await Database.open(path, two)).aclose()
    with pytest.raises(StorageError, match="newer than this build"):
        await Database.open(path, NOTES)


async def test_a_failed_migration_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "a.sqlite"
    bad = {"notes": [*NOTES["notes"], "ALTER TABLE notes ADD COLUMN a INTEGER; NOT SQL"]}
    with pytest.raises(StorageError, match="syntax error"):
        await Database.open(path, bad)
    db = await Database.open(path, NOTES)  # still at step 1, column a not added
    columns = await db.read(lambda c: [r[1] for r in c.execute("PRAGMA table_info(notes)")])
    assert columns == ["id", "text"]
    await db.aclose()


async def test_not_a_database(tmp_path: Path) -> None:
    path = tmp_path / "a.sqlite"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StorageError, match="cannot open database"):
        await Database.open(path, NOTES)


async def test_a_failing_transaction_leaves_no_trace(tmp_path: Path) -> None:
    db = await Database.open(tmp_path / "a.sqlite", NOTES)

    def half(c: sqlite3.Connection) -> None:
        c.execute("INSERT INTO notes (text) VALUES ('first')")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        await db.transaction(half)
    assert await db.read(lambda c: c.execute("SELECT count(*) FROM notes").fetchone()[0]) == 0
    # and the connection is usable afterwards
    await db.transaction(lambda c: c.execute("INSERT INTO notes (text) VALUES ('second')"))
    assert await db.read(lambda c: c.execute("SELECT text FROM notes").fetchall()) == [
        ("second",)]
    await db.aclose()


async def test_group_commit_isolates_a_failing_writer(tmp_path: Path) -> None:
    db = await Database.open(tmp_path / "a.sqlite", NOTES)
    results: dict[int, object] = {}

    async def write(n: int) -> None:
        def fn(c: sqlite3.Connection) -> int:
            c.execute("INSERT INTO notes (text) VALUES (?)", (f"note {n}",))
            if n % 3 == 0:
                raise ValueError(n)
            return n

        try:
            results[n] = await db.transaction(fn)
        except ValueError as exc:
            results[n] = exc

    async with trio.open_nursery() as nursery:
        for n in range(30):
            nursery.start_soon(write, n)
    texts = await db.read(lambda c: {t for (t,) in c.execute("SELECT text FROM notes")})
    assert texts == {f"note {n}" for n in range(30) if n % 3}
    assert all(isinstance(results[n], ValueError) == (n % 3 == 0) for n in range(30))
    await db.aclose()


async def test_a_cancelled_caller_still_gets_its_write_committed(tmp_path: Path) -> None:
    db = await Database.open(tmp_path / "a.sqlite", NOTES)
    with trio.CancelScope() as scope:
        scope.cancel()
        await db.transaction(lambda c: c.execute("INSERT INTO notes (text) VALUES ('x')"))
    assert await db.read(lambda c: c.execute("SELECT count(*) FROM notes").fetchone()[0]) == 1
    await db.aclose()


async def test_a_read_sees_every_returned_commit_and_waits_for_none(tmp_path: Path) -> None:
    db = await Database.open(tmp_path / "a.sqlite", NOTES)
    count = "SELECT count(*) FROM notes"
    for n in range(1, 4):
        await db.transaction(lambda c: c.execute("INSERT INTO notes (text) VALUES ('x')"))
        assert await db.read(lambda c: c.execute(count).fetchone()[0]) == n
    seen: list[int] = []
    started = trio.Event()
    token = trio.lowlevel.current_trio_token()  # commits run in the database's own thread

    def slow(c: sqlite3.Connection) -> None:
        c.execute("INSERT INTO notes (text) VALUES ('slow')")
        trio.from_thread.run_sync(started.set, trio_token=token)
        time.sleep(0.3)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(db.transaction, slow)
        await started.wait()  # a commit is in progress and holds the write lock
        begun = time.perf_counter()
        seen.append(await db.read(lambda c: c.execute(count).fetchone()[0]))
        assert time.perf_counter() - begun < 0.2  # did not wait for it
    assert seen == [3]  # and did not see it before it committed
    assert await db.read(lambda c: c.execute(count).fetchone()[0]) == 4
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        await db.read(lambda c: c.execute("INSERT INTO notes (text) VALUES ('no')"))
    assert await db.scan(lambda c: c.execute(count).fetchone()[0]) == 4
    await db.aclose()


async def test_an_inline_commit_runs_on_the_loop_thread_and_is_durable(tmp_path: Path) -> None:
    import threading

    path = tmp_path / "a.sqlite"
    db = await Database.open(path, NOTES)
    threads: list[int] = []

    def write(c: sqlite3.Connection) -> int:
        threads.append(threading.get_ident())
        return c.execute("INSERT INTO notes (text) VALUES ('inline')").lastrowid or 0

    assert await db.transaction(write, inline=True) == 1
    assert threads == [threading.get_ident()]  # no hand-over to the writer thread
    with trio.CancelScope() as scope:  # as a queued one: a cancel does not undo it
        scope.cancel()
        await db.transaction(write, inline=True)

    def fail(c: sqlite3.Connection) -> None:
        c.execute("INSERT INTO notes (text) VALUES ('rolled back')")
        raise ValueError("no")

    with pytest.raises(ValueError, match="no"):
        await db.transaction(fail, inline=True)
    await db.transaction(lambda c: c.execute("INSERT INTO notes (text) VALUES ('queued')"))
    await db.aclose()
    with sqlite3.connect(path) as c:  # another connection: it is in the file
        assert [t for (t,) in c.execute("SELECT text FROM notes ORDER BY id")] == [
            "inline", "inline", "queued"]


async def test_a_commit_without_fsync_is_committed_and_the_next_is_durable(tmp_path: Path
                                                                            ) -> None:
    """``durable=False``: written to the WAL under synchronous=NORMAL (no fsync of its
    own), visible to every connection once it returns; FULL again for the next."""
    path = tmp_path / "a.sqlite"
    db = await Database.open(path, NOTES)
    modes: list[int] = []

    def write(c: sqlite3.Connection) -> None:
        modes.append(c.execute("PRAGMA synchronous").fetchone()[0])
        c.execute("INSERT INTO notes (text) VALUES ('tick')")

    def fail(c: sqlite3.Connection) -> None:
        modes.append(c.execute("PRAGMA synchronous").fetchone()[0])
        c.execute("INSERT INTO notes (text) VALUES ('rolled back')")
        raise ValueError("no")

    await db.transaction(write, durable=False)
    with pytest.raises(ValueError, match="no"):
        await db.transaction(fail, durable=False)
    await db.transaction(write)
    assert modes == [1, 1, 2]  # NORMAL, NORMAL, then FULL again
    with sqlite3.connect(path) as c:  # another connection sees it before any close
        assert [t for (t,) in c.execute("SELECT text FROM notes ORDER BY id")] == [
            "tick", "tick"]
    await db.aclose()


async def test_an_inline_commit_queues_while_the_writer_thread_commits(tmp_path: Path) -> None:
    import threading

    db = await Database.open(tmp_path / "a.sqlite", NOTES)
    started, release = trio.Event(), threading.Event()
    token = trio.lowlevel.current_trio_token()
    order: list[str] = []

    def slow(c: sqlite3.Connection) -> None:
        c.execute("INSERT INTO notes (text) VALUES ('slow')")
        trio.from_thread.run_sync(started.set, trio_token=token)
        assert release.wait(10)
        order.append("slow")

    def quick(c: sqlite3.Connection) -> None:
        c.execute("INSERT INTO notes (text) VALUES ('quick')")
        order.append("quick" if threading.get_ident() != main else "quick on the loop")

    main = threading.get_ident()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(db.transaction, slow)
        await started.wait()  # the thread holds the connection
        nursery.start_soon(lambda: db.transaction(quick, inline=True))
        await trio.testing.wait_all_tasks_blocked()
        release.set()
    assert order == ["slow", "quick"]  # after it, in the thread: never both at once
    await db.aclose()
