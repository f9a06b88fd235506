"""One SQLite database per agent: WAL, fsync'd commits, versioned schemas.

Theory of operation. Writes run in a worker thread: a commit waits for an fsync.
Each database has one writer thread of its own, started at the first commit and
stopped at ``aclose``; it alone uses the writing connection (hence
``check_same_thread=False``). ``synchronous=FULL`` with WAL makes a commit durable
once it returns: anything acknowledged to a peer after ``transaction`` returned
survives SIGKILL and power loss. Writers that queue up while a commit runs share the
next one (group commit, one fsync for all), each in its own SAVEPOINT so that one
failing writer rolls back only its own work. The thread takes the next group as soon
as it has committed one and hands the callers their results through trio's token,
so commits never wait for the event loop (a ``trio.to_thread.run_sync`` per group,
led by a task the loop had to run first, cost ~60 us of CPU and, under load, most of
a commit's latency).

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

import sqlite3
import threading
import weakref
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
        self._writer: _Writer | None = None
        self._closed = False
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
            # A commit group's SAVEPOINTs journal the pages they change; past 64 KiB
            # that journal spills to a temporary file, a pwrite per page (~13 a
            # purchase in the bank). It only ever serves a rollback inside the
            # transaction, so memory is enough: durability is the WAL's.
            connection.execute("PRAGMA temp_store=MEMORY")
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

    async def transaction(self, fn: Callable[[sqlite3.Connection], T], *,
                          inline: bool = False, durable: bool = True) -> T:
        """Run ``fn(connection)`` in a write transaction; durable when this returns.

        Group commit: calls that arrive while a commit is in progress are run
        together in the next transaction, each inside its own SAVEPOINT, and share
        one fsync. If ``fn`` raises, what it wrote is rolled back and the exception
        is raised here; the others in its group are not affected. Cancellation cannot
        interrupt a transaction half way: the caller waits for its commit, then the
        cancel takes effect.

        ``inline``: if the writer thread is idle with nothing queued, commit on this
        thread now, holding the event loop for the fsync (no hand-over to the thread
        and back, no GIL passed to and fro: for a caller whose loop has nothing else
        to do meanwhile, such as the notary's timestamp batches); otherwise queue as
        usual. Cancellation works as above.

        ``durable=False``: committed when this returns, so it survives the process
        being killed, but written to the WAL without an fsync (``synchronous=NORMAL``)
        when the writer is idle: it becomes durable against power loss with the next
        durable commit. For progress records that are cheap to lose on power loss
        and too frequent to fsync one by one (a stream's per-chunk ticks, whose
        callers make every Nth one durable). Implies ``inline``; when the writer is
        busy it is queued as a durable commit.
        """
        if self._closed:
            raise sqlite3.ProgrammingError("Cannot operate on a closed database.")
        if self._writer is None:
            self._writer = _Writer(self)
        if inline or not durable:
            if self._writer.claim():
                try:
                    ((ok, value),) = self._run_group([fn], durable=durable)
                finally:
                    self._writer.release()
                await trio.lowlevel.cancel_shielded_checkpoint()
                if not ok:
                    raise value
                return value  # type: ignore[no-any-return]
        return await self._writer.run(fn)

    def _run_group(self, fns: list[Callable[[sqlite3.Connection], Any]], *,
                   durable: bool = True) -> list[tuple[bool, Any]]:
        connection = self._connection
        if not durable:
            connection.execute("PRAGMA synchronous=NORMAL")
            try:
                return self._run_group(fns)
            finally:
                connection.execute("PRAGMA synchronous=FULL")
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
        """Close, after every transaction already asked for has committed."""
        self._closed = True
        self._reader.close()
        writer, self._writer = self._writer, None
        if writer is None:
            await trio.to_thread.run_sync(self._connection.close)
        else:  # the last job of its thread (closing may checkpoint the WAL)
            await writer.finish(self._connection.close)

    def close(self) -> None:
        self._closed = True
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.stop()
        self._reader.close()
        self._connection.close()


class _Writer:
    """The thread a database's commits run in. Transactions queue here; the thread
    takes all that wait as one group, commits it, hands each caller its result
    through the trio token of its run (one wake-up for the group), and takes the next
    group at once: the next commit never waits for the event loop to get round to
    the last one's callers (under load that wait was most of a commit's latency).
    An idle thread is woken by the event loop after the tasks already runnable have
    had their turn (by a task of the run, rescheduled): the requests of one channel
    read reach their transactions and share the commit, instead of the first
    committing alone."""

    def __init__(self, database: Database) -> None:
        # Weakly: a database dropped without aclose is closed by the garbage
        # collector as before, and its thread ends.
        self._database = weakref.ref(database)
        self._ready = threading.Condition()
        self._jobs: list[tuple[Any, Any, Any]] = []  # (fn, trio token, task)
        self._last: Callable[[], Any] | None = None
        self._stopping = False
        self._busy = False  # taking or committing a group: it looks at the queue next
        self._inline = False  # a commit runs on the event loop's thread (``claim``)
        #: (trio token, [the waker task while it waits]) of the run that queued last
        self._waker: tuple[Any, list[Any]] | None = None
        self._thread = threading.Thread(target=self._work, daemon=True,
                                        name=f"semper-db-writer {database.path.name}")
        self._thread.start()

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """``fn`` in the next group; its result or exception. The caller cannot be
        cancelled while it waits: a commit is never left half way (a cancel takes
        effect at its next checkpoint)."""
        self._queue(fn)
        return await trio.lowlevel.wait_task_rescheduled(  # type: ignore[no-any-return]
            lambda _: trio.lowlevel.Abort.FAILED)

    async def finish(self, last: Callable[[], Any]) -> None:
        """Run ``last`` after every job queued, then end the thread."""
        self._queue(None, last)
        await trio.lowlevel.wait_task_rescheduled(lambda _: trio.lowlevel.Abort.FAILED)

    def stop(self) -> None:
        """End the thread after the jobs queued, from outside trio."""
        with self._ready:
            self._stopping = True
            self._ready.notify()
        if self._thread is not threading.current_thread():
            self._thread.join()

    def claim(self) -> bool:
        """Take the connection for a commit on the calling thread, if the thread is
        idle with nothing queued; ``release`` gives it back."""
        with self._ready:
            if self._busy or self._jobs or self._stopping:
                return False
            self._busy = self._inline = True
            return True

    def release(self) -> None:
        with self._ready:
            self._busy = self._inline = False
            if self._jobs or self._stopping:
                self._ready.notify()

    def _queue(self, fn: Any, last: Callable[[], Any] | None = None) -> None:
        token = trio.lowlevel.current_trio_token()
        job = (fn, token, trio.lowlevel.current_task())
        with self._ready:
            if self._stopping:
                raise sqlite3.ProgrammingError("Cannot operate on a closed database.")
            if last is not None:
                self._stopping, self._last = True, last
                self._jobs.append(job)
                self._ready.notify()
                return
            self._jobs.append(job)
            if self._busy or len(self._jobs) > 1:
                return  # the thread looks at the queue next, or a wake-up is on its way
        self._wake_soon(token)

    def _wake_soon(self, token: Any) -> None:
        """Wake the thread once the tasks already runnable have had their turn: a task
        of this run, rescheduled now, runs in the scheduler's next batch. (Through
        ``run_sync_soon`` the wake-up cost a write to trio's wake-up socket, an epoll
        round and a re-registration in the event loop, ~3% of its CPU under load.)"""
        waker = self._waker
        if waker is None or waker[0] is not token:
            task: list[Any] = []
            try:
                trio.lowlevel.spawn_system_task(self._waking, task, name="semper-db-waker")
            except RuntimeError:  # the run is ending: its system tasks are done
                token.run_sync_soon(self._wake)
                return
            self._waker = (token, task)
            return  # it wakes the thread as it starts
        if waker[1]:
            trio.lowlevel.reschedule(waker[1].pop())

    async def _waking(self, task: list[Any]) -> None:
        """The waker of this trio run: wakes the thread, then waits for the next job
        to find it idle (``task`` holds it while it waits)."""
        me = trio.lowlevel.current_task()
        while True:
            self._wake()
            task.append(me)
            await trio.lowlevel.wait_task_rescheduled(
                lambda _: trio.lowlevel.Abort.SUCCEEDED)

    def _wake(self) -> None:
        with self._ready:
            self._ready.notify()

    def _work(self) -> None:
        while True:
            with self._ready:
                if self._inline or (not self._jobs and not self._stopping):
                    if not self._inline:
                        self._busy = False
                    while self._inline or (not self._jobs and not self._stopping):
                        if not self._ready.wait(5.0) and self._database() is None:
                            return
                self._busy = True
                jobs, self._jobs = self._jobs, []
                stopping, last = self._stopping, self._last
            group = [job for job in jobs if job[0] is not None]
            if group:
                database = self._database()
                try:
                    assert database is not None  # its callers hold it
                    results = database._run_group([fn for fn, _, _ in group])
                except BaseException as exc:  # pragma: no cover - the thread itself failed
                    results = [(False, exc)] * len(group)
                del database
                _deliver([(token, task, outcome.Value(value) if ok else outcome.Error(value))
                          for (_, token, task), (ok, value) in zip(group, results,
                                                                   strict=True)])
            if stopping and not self._jobs:
                closing = [job for job in jobs if job[0] is None]
                if last is not None and closing:
                    _, token, task = closing[0]
                    _deliver([(token, task, outcome.capture(last))])
                return


def _deliver(answers: list[tuple[Any, Any, Any]]) -> None:
    """Reschedule each waiting task with its outcome: one callback per trio run."""
    by_run: dict[Any, list[tuple[Any, Any]]] = {}
    for token, task, result in answers:
        by_run.setdefault(token, []).append((task, result))
    for token, tasks in by_run.items():
        try:
            token.run_sync_soon(_reschedule_all, tasks)
        except trio.RunFinishedError:  # pragma: no cover - the run ended under it
            pass


def _reschedule_all(tasks: list[tuple[Any, Any]]) -> None:
    for task, result in tasks:
        trio.lowlevel.reschedule(task, result)


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
