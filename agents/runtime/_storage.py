"""One SQLite database per agent: WAL, fsync'd commits, versioned schemas.

Theory of operation. Writes run in a worker thread: a commit waits for an fsync.
Each database has one writer thread of its own, started at the first commit and
stopped at ``aclose``, that takes a commit group from a queue and hands the result
back to the trio task waiting for it (a ``trio.to_thread.run_sync`` per commit cost
~60 us of CPU in trio's thread machinery, several times per purchase on each side).
One ``trio.Lock`` serialises the groups, so the writing connection is only ever used
by one thread at a time (hence ``check_same_thread=False``). ``synchronous=FULL``
with WAL makes a commit durable once it returns: anything acknowledged to a peer
after ``transaction`` returned survives SIGKILL and power loss. Writers that queue
up while a commit runs share the next one (group commit, one fsync for all), each in
its own SAVEPOINT so that one failing writer rolls back only its own work.

Reads go through a second, read-only connection. In WAL mode a reader never waits
for the writer and sees every commit that has returned, so ``read`` runs its
function right on the event loop thread: a lookup by key takes microseconds, where
a hop to a worker thread and back costs a hundred (and it would queue behind the
commit in progress). ``scan`` is the same read in a worker thread, for reads that
may touch many rows (a whole archive chain).

Each component (archive, enrollment, directory, bank, ...) owns its tables and
lists its migrations, a sequence of SQL scripts; ``schema_versions`` records how
many of each have been applied, so components evolve independently and a newer
build opens an older file by running the missing steps, each in its own
transaction. A file from a newer build (more steps applied than this build knows)
is refused rather than guessed at.
"""

from __future__ import annotations

import functools
import queue
import sqlite3
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import outcome
import trio

__all__ = ["Database", "StorageError"]

T = TypeVar("T")


class StorageError(Exception):
    """The database cannot be opened or migrated."""

    code: ClassVar[str] = "agent.storage"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Database:
    """An agent's SQLite file. Open with ``await Database.open(path, migrations)``."""

    def __init__(self, connection: sqlite3.Connection, reader: sqlite3.Connection,
                 path: Path) -> None:
        self._connection = connection
        self._reader = reader
        self._lock = trio.Lock()
        self._pending: list[tuple[Callable[[sqlite3.Connection], Any], list[Any]]] = []
        self._committing = False
        self._committed = trio.lowlevel.ParkingLot()
        self._writer: _Writer | None = None
        self.path = path

    @classmethod
    async def open(cls, path: Path, migrations: Mapping[str, Sequence[str]]) -> Database:
        """Open (creating) the file and bring every component's schema up to date.

        Raises:
            StorageError: the file is not a database, or is from a newer build.
        """
        return await trio.to_thread.run_sync(cls._open_sync, path, migrations)

    @classmethod
    def open_sync(cls, path: Path, migrations: Mapping[str, Sequence[str]]) -> Database:
        """For command-line tools that run outside trio."""
        return cls._open_sync(path, migrations)

    @classmethod
    def _open_sync(cls, path: Path, migrations: Mapping[str, Sequence[str]]) -> Database:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False,
                                         timeout=10.0)
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=FULL")
            connection.execute("PRAGMA foreign_keys=ON")
            _migrate(connection, migrations)
            reader = _open_reader(path)
        except sqlite3.DatabaseError as exc:
            raise StorageError(f"cannot open database {path}: {exc}") from exc
        return cls(connection, reader, path)

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(connection)`` over the read-only connection, on the event loop
        thread: for short reads (rows by key). It sees every ``transaction`` that has
        returned, never waits for one in progress, and must not keep a cursor past
        its return (an unfinished statement would hold its snapshot)."""
        await trio.lowlevel.checkpoint_if_cancelled()  # no reschedule: it never waits
        return fn(self._reader)

    async def scan(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """``read`` in a worker thread (over a connection of its own), for reads that
        may touch many rows."""
        def run() -> T:
            reader = _open_reader(self.path)
            try:
                return fn(reader)
            finally:
                reader.close()

        return await trio.to_thread.run_sync(run)

    async def transaction(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(connection)`` in a write transaction; durable when this returns.

        Group commit: calls that arrive while a commit is in progress are run
        together in the next transaction, each inside its own SAVEPOINT, and share
        one fsync. If ``fn`` raises, what it wrote is rolled back and the exception
        is raised here; the others in its group are not affected. Cancellation cannot
        interrupt a transaction half way: the caller waits for its commit, then the
        cancel takes effect.
        """
        slot: list[tuple[bool, Any]] = []
        self._pending.append((fn, slot))
        with trio.CancelScope(shield=True):
            while not slot:
                if self._committing:
                    await self._committed.park()
                else:
                    await self._commit_group()
        ok, value = slot[0]
        if ok:
            return value  # type: ignore[no-any-return]
        raise value

    async def _commit_group(self) -> None:
        self._committing = True
        group: list[tuple[Callable[[sqlite3.Connection], Any], list[Any]]] = []
        try:
            # One turn of the scheduler first: the tasks already woken with this one
            # (the requests of one read from a channel) reach their transaction and
            # join this group, instead of waiting for the next commit.
            await trio.lowlevel.cancel_shielded_checkpoint()
            group, self._pending = self._pending, []
            try:
                self._lock.acquire_nowait()  # held only by aclose, which waits for us
            except trio.WouldBlock:
                await self._lock.acquire()
            try:
                if self._writer is None:
                    self._writer = _Writer(self.path.name)
                results = await self._writer.run(
                    functools.partial(self._run_group, [fn for fn, _ in group]))
            finally:
                self._lock.release()
        except BaseException as exc:  # pragma: no cover - the thread itself failed
            results = [(False, exc)] * len(group)
            raise
        finally:
            for (_, slot), result in zip(group, results, strict=False):
                slot.append(result)
            self._committing = False
            self._committed.unpark_all()

    def _run_group(self, fns: list[Callable[[sqlite3.Connection], Any]]
                   ) -> list[tuple[bool, Any]]:
        connection = self._connection
        connection.execute("BEGIN IMMEDIATE")
        results: list[tuple[bool, Any]] = []
        try:
            if len(fns) == 1:  # alone: its own transaction is its savepoint
                try:
                    results.append((True, fns[0](connection)))
                except Exception as exc:
                    connection.execute("ROLLBACK")
                    return [(False, exc)]
            else:
                for fn in fns:
                    connection.execute("SAVEPOINT op")
                    try:
                        results.append((True, fn(connection)))
                    except Exception as exc:
                        connection.execute("ROLLBACK TO op")
                        results.append((False, exc))
                    connection.execute("RELEASE op")
            connection.execute("COMMIT")
        except BaseException as exc:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            if not isinstance(exc, Exception):
                raise
            return [(False, exc)] * len(fns)  # the commit failed: nothing is durable
        return results

    def transaction_sync(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """The blocking form, for command-line tools and the worker thread."""
        connection = self._connection
        connection.execute("BEGIN IMMEDIATE")
        try:
            result = fn(connection)
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        connection.execute("COMMIT")
        return result

    def read_sync(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return fn(self._connection)

    async def aclose(self) -> None:
        async with self._lock:
            self._reader.close()
            writer, self._writer = self._writer, None
            if writer is None:
                await trio.to_thread.run_sync(self._connection.close)
            else:  # the last job of its thread (closing may checkpoint the WAL)
                try:
                    await writer.run(self._connection.close)
                finally:
                    writer.stop()

    def close(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.stop()
        self._reader.close()
        self._connection.close()


class _Writer:
    """The thread a database's commits run in: jobs in by a queue, each result back
    to the waiting task through the trio token of its run (one wake-up each way)."""

    def __init__(self, name: str) -> None:
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._work, name=f"semper-db-writer {name}",
                                        daemon=True)
        self._thread.start()

    async def run(self, fn: Callable[[], T]) -> T:
        """``fn()`` in the thread; the caller cannot be cancelled while it runs (the
        callers here are shielded: a commit is never left half way)."""
        task = trio.lowlevel.current_task()
        self._jobs.put((fn, trio.lowlevel.current_trio_token(), task))
        return await trio.lowlevel.wait_task_rescheduled(  # type: ignore[no-any-return]
            lambda _: trio.lowlevel.Abort.FAILED)

    def stop(self) -> None:
        """End the thread after the jobs queued (none: the callers hold the lock)."""
        self._jobs.put(None)
        if self._thread is not threading.current_thread():
            self._thread.join()

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            fn, token, task = job
            result = outcome.capture(fn)
            try:
                token.run_sync_soon(trio.lowlevel.reschedule, task, result)
            except trio.RunFinishedError:  # pragma: no cover - the run ended under it
                pass


def _open_reader(path: Path) -> sqlite3.Connection:
    # A WAL reader waits only in rare cases (another connection recovering the WAL);
    # it runs on the event loop thread, so it gives up sooner than the writer.
    reader = sqlite3.connect(path, isolation_level=None, check_same_thread=False,
                             timeout=1.0)
    reader.execute("PRAGMA synchronous=FULL")  # as the writer (it never writes)
    reader.execute("PRAGMA query_only=ON")
    return reader


def _migrate(connection: sqlite3.Connection, migrations: Mapping[str, Sequence[str]]) -> None:
    connection.execute("CREATE TABLE IF NOT EXISTS schema_versions ("
                       "component TEXT PRIMARY KEY, version INTEGER NOT NULL)")
    for component, steps in migrations.items():
        row = connection.execute("SELECT version FROM schema_versions WHERE component = ?",
                                 (component,)).fetchone()
        applied = row[0] if row else 0
        if applied > len(steps):
            raise StorageError(
                f"the {component} schema is at version {applied}, newer than this build "
                f"knows ({len(steps)}): upgrade semper")
        for version in range(applied + 1, len(steps) + 1):
            connection.execute("BEGIN IMMEDIATE")
            try:
                for statement in _statements(steps[version - 1]):
                    connection.execute(statement)
                connection.execute(
                    "INSERT INTO schema_versions (component, version) VALUES (?, ?) "
                    "ON CONFLICT (component) DO UPDATE SET version = excluded.version",
                    (component, version))
            except BaseException:
                connection.execute("ROLLBACK")
                raise
            connection.execute("COMMIT")


def _statements(script: str) -> list[str]:
    """Split a migration script on ';' (our scripts hold no ';' inside literals)."""
    return [part.strip() for part in script.split(";") if part.strip()]


def schema_version(connection: sqlite3.Connection, component: str) -> int:
    row = connection.execute("SELECT version FROM schema_versions WHERE component = ?",
                             (component,)).fetchone()
    return row[0] if row else 0


def rows(connection: sqlite3.Connection, sql: str, params: Sequence[Any] = ()) -> list[Any]:
    return connection.execute(sql, params).fetchall()
