"""The notary's timestamps: ``timestamp.request``, batched, one signature per batch,
each batch durable before any of its tokens leaves.

Theory of operation. A request puts its digest in the open batch
(``services.timestamping.Batcher``) and waits. One task (``run``) seals the batch
when it is due (``[components.timestamps] batch_ms`` after its first request, or
``batch_max`` requests; with ``batch_ms = 0``, as soon as it is free, after letting
the requests already woken join), signs its tree head, and stores the batch (one row:
the head and the digests) in ONE transaction (``Database.transaction``: fsync'd when
it returns).
Only then does each waiting request get its token. A crash anywhere before the
commit leaves no trace and no token was given; after it, the batch is on disk.

The commit runs on the event loop's thread (``transaction(inline=True)``) when the
database's writer thread is idle: the hand-over to that thread and back, and the GIL
passed to and fro while SQLite works, cost the notary more CPU than the commit itself
(311 us a batch in the thread against 140 on its own), while the loop, holding
nothing else, only waits for the fsync. Requests that arrive meanwhile wait in the
socket and form the next batch, as in a group commit. Because the loop waits, a
batch that holds at least ``2 * split_min`` requests (``[components.timestamps]
split_min``, default 16; 0 never splits) is cut in two, and the answers of the first
half are sent (``FLUSH_PASSES``) before the second half commits: a requester that
keeps many requests in flight works on the first half's answers while the notary
commits the second, instead of both sides taking turns with the disk (with 32 in
flight, ~12,000 tokens/s against ~9,900 in one batch; bench/notary.py).

The chain continues across restarts: ``run`` reads the last stored head and goes on
from its sequence, serials and id. The store refuses a batch whose ``previous`` is not
the last stored head's id (the batch sealed after one that failed to commit), so the
stored heads are always one chain. A batch is one row (``MIGRATIONS``). Time comes
from the agent's clock (the context's).

Crash points (``SEMPER_CRASH_AT``): ``timestamp.received`` (a request decoded,
nothing done), ``timestamp.sealed`` (a batch sealed and its head signed, before the
transaction), ``timestamp.batch_committed`` (the batch committed, before any of its
tokens is returned).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Mapping, Sequence
from typing import Any, Final

import outcome
import trio
from cryptography.hazmat.primitives.serialization import Encoding

from semper.agents.runtime._component import Component, handles
from semper.agents.runtime._config import ConfigError
from semper.agents.runtime._faults import crash_point
from semper.services.merkle import HASH_SIZE
from semper.services.statements import Statement
from semper.services.timestamping import (
    HEAD_TYPE,
    MAX_TREE,
    REQUEST,
    Batch,
    Batcher,
    ChainState,
    TimestampRequest,
    Token,
    TreeHead,
    Unavailable,
    build_batch,
)

__all__ = ["MIGRATIONS", "Timestamps", "stored_token"]

#: A batch is one row: its signed head, the certificate, its first serial and its
#: leaves' digests end to end (32 bytes each, in serial order), from which every token
#: of the batch is rebuilt (``stored_token``). Step 2 folded the first layout's row per
#: token into its batch's row: one insert a commit instead of one per token.
MIGRATIONS: Final = {
    "timestamps": [
        "CREATE TABLE timestamp_heads ("
        " sequence INTEGER PRIMARY KEY, head_id BLOB NOT NULL UNIQUE,"
        " statement BLOB NOT NULL, certificate BLOB NOT NULL) STRICT;"
        "CREATE TABLE timestamp_tokens ("
        " serial INTEGER PRIMARY KEY, sequence INTEGER NOT NULL"
        " REFERENCES timestamp_heads (sequence), digest BLOB NOT NULL) STRICT",
        "ALTER TABLE timestamp_heads ADD COLUMN first_serial INTEGER NOT NULL DEFAULT 0;"
        "ALTER TABLE timestamp_heads ADD COLUMN digests BLOB NOT NULL DEFAULT x'';"
        "UPDATE timestamp_heads SET"
        " first_serial = coalesce((SELECT min(t.serial) FROM timestamp_tokens t"
        "  WHERE t.sequence = timestamp_heads.sequence), 0),"
        " digests = coalesce((SELECT CAST(group_concat(digest, x'') AS BLOB) FROM"
        "  (SELECT t.digest FROM timestamp_tokens t"
        "   WHERE t.sequence = timestamp_heads.sequence ORDER BY t.serial)), x'');"
        "DROP TABLE timestamp_tokens",
    ],
}

DEFAULT_BATCH_MS: Final = 0
DEFAULT_BATCH_MAX: Final = 256
DEFAULT_SPLIT_MIN: Final = 16
#: Scheduler passes between answering a batch and committing the next, which holds
#: the event loop: the waiters return their answers (1), the channels' writers send
#: them (2), and a send that needed one more checkpoint finishes (3).
FLUSH_PASSES: Final = 3


class Timestamps(Component):
    """``timestamp.request`` for the notary role (see the module docstring)."""

    name = "timestamps"
    #: A token is logged with its batch: one ``timestamps_issued`` line per batch
    #: (sequence, size, first serial, the peers, the outcome, the ms it took), not a
    #: ``served`` line per request (~8 us of the notary's CPU a token: a third of what
    #: a token costs beyond a ping). The tokens themselves are in the database.
    unlogged = frozenset({REQUEST.name})

    def __init__(self, context: Any) -> None:
        super().__init__(context)
        self.batch_ms = DEFAULT_BATCH_MS
        self.batch_max = DEFAULT_BATCH_MAX
        self.split_min = DEFAULT_SPLIT_MIN
        self._batcher: Batcher | None = None
        #: The tasks (and peers) of the requests not yet answered, in the batcher's order.
        self._waiters: list[tuple[trio.lowlevel.Task, str]] = []
        #: Those of the batch being signed and stored.
        self._sealed: list[tuple[trio.lowlevel.Task, str]] = []
        self._arrived = trio.Event()
        self._full = trio.Event()
        #: Batches committed and tree heads signed, for tests and the bench.
        self.batches = 0

    def configure(self, settings: Mapping[str, Any]) -> None:
        unknown = set(settings) - {"batch_ms", "batch_max", "split_min"}
        if unknown:
            raise ConfigError(f"[components.timestamps] takes batch_ms, batch_max and "
                              f"split_min, not {', '.join(sorted(unknown))}")
        split_min = settings.get("split_min", self.split_min)
        if type(split_min) is not int or not 0 <= split_min <= MAX_TREE:
            raise ConfigError(f"[components.timestamps] split_min is 0 (never split) to "
                              f"{MAX_TREE}")
        self.split_min = split_min
        batch_ms, batch_max = settings.get("batch_ms", self.batch_ms), \
            settings.get("batch_max", self.batch_max)
        if type(batch_ms) is not int or not 0 <= batch_ms <= 60_000:
            raise ConfigError("[components.timestamps] batch_ms is 0 to 60000 (milliseconds)")
        if type(batch_max) is not int or not 1 <= batch_max <= MAX_TREE:
            raise ConfigError(f"[components.timestamps] batch_max is 1 to {MAX_TREE}")
        self.batch_ms, self.batch_max = batch_ms, batch_max

    def migrations(self) -> Mapping[str, Sequence[str]]:
        return MIGRATIONS

    @handles(REQUEST)
    async def request(self, context: Any, request: TimestampRequest) -> dict[str, Any]:
        """The answer is ``TimestampAnswer``'s wire map, built as such: the token's
        bytes written out from its batch (no ``Token`` is built only to be encoded)."""
        crash_point("timestamp.received")
        batcher = self._batcher
        if batcher is None:  # run() has not started (a session, not a served agent)
            raise Unavailable("the notary's timestamp service is not running")
        batcher.add(request.digest, self.context.now_ms())
        self._waiters.append((trio.lowlevel.current_task(), context.peer.agent_id))
        self._arrived.set()
        if batcher.pending >= batcher.max_size:
            self._full.set()
        # Woken by the batch task with the token's bytes or the refusal (no Event per
        # request); not cancellable meanwhile: its batch is being stored, which takes
        # one commit, and run() answers every waiter whatever happens.
        token = await trio.lowlevel.wait_task_rescheduled(
            lambda _: trio.lowlevel.Abort.FAILED)
        return {"token": token}

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        state = await self.context.database.read(_last_state)
        self._batcher = Batcher(notary=self.context.id, max_delay_ms=self.batch_ms,
                                max_size=self.batch_max, state=state)
        certificate = self.context.certificate.public_bytes(Encoding.DER)
        task_status.started()
        try:
            while True:
                await self._next_batch(self._batcher, certificate)
        finally:  # the agent stops (or a bug): no token for these
            waiters, self._sealed, self._waiters = self._sealed + self._waiters, [], []
            for task, _ in waiters:
                trio.lowlevel.reschedule(task, outcome.Error(
                    Unavailable("the notary is stopping")))

    async def _next_batch(self, batcher: Batcher, certificate: bytes) -> None:
        """Wait until a batch is due, seal, sign, commit it, then answer its requests."""
        # Each signal is made afresh right before it is waited for and the condition
        # is looked at again after: a request that arrived while the last batch was
        # sealed (and went into it) must not leave a stale wake-up behind, which would
        # seal an empty batch.
        while not batcher.pending:
            self._arrived = trio.Event()
            await self._arrived.wait()
        if self.batch_ms:
            if batcher.pending < batcher.max_size:
                self._full = trio.Event()
                with trio.move_on_after(self.batch_ms / 1000):
                    await self._full.wait()
        else:  # the requests woken with the first (one channel read's) join it
            await trio.lowlevel.cancel_shielded_checkpoint()
        pending = batcher.pending
        split = self.split_min and pending >= 2 * self.split_min
        batch = batcher.seal(self.context.now_ms(), (pending + 1) // 2 if split else None)
        waiters, self._waiters = self._waiters[:batch.head.size], self._waiters[batch.head.size:]
        self._sealed = waiters
        started = time.perf_counter()
        try:  # whatever fails, this batch's requests get an answer and the notary goes on
            head = self.context.sign(HEAD_TYPE, batch.head.to_wire())
            crash_point("timestamp.sealed")
            await self.context.database.transaction(
                lambda c: _store(c, batch, head, certificate), inline=True)
        except Exception as exc:
            batcher.failed(batch)
            self.context.log.error("timestamp batch %d not issued: %s", batch.head.sequence, exc,
                                   exc_info=not isinstance(exc, Unavailable))
            reason = exc.message if isinstance(exc, Unavailable) else \
                "the notary could not sign or store the batch; send the request again"
            for task, _ in waiters:  # one exception each: each is raised in its own task
                trio.lowlevel.reschedule(task, outcome.Error(Unavailable(reason)))
            self._sealed = []
            self._log_batch(batch, waiters, Unavailable.code, started)
            return
        crash_point("timestamp.batch_committed")
        batcher.committed(batch)
        self.batches += 1
        tokens = batch.tokens_bytes(head.to_bytes(), certificate)
        self._sealed = []
        for (task, _), token in zip(waiters, tokens, strict=True):
            trio.lowlevel.reschedule(task, outcome.Value(token))
        self._log_batch(batch, waiters, "ok", started)
        if batcher.pending:  # the next commit holds the loop: let these answers go first
            for _ in range(FLUSH_PASSES):
                await trio.lowlevel.cancel_shielded_checkpoint()

    def _log_batch(self, batch: Batch, waiters: list[tuple[trio.lowlevel.Task, str]],
                   result: str, started: float) -> None:
        self.context.agent.events.emit(
            "timestamps_issued", sequence=batch.head.sequence, size=batch.head.size,
            first_serial=batch.head.first_serial, peers=sorted({p for _, p in waiters}),
            outcome=result, ms=round((time.perf_counter() - started) * 1000, 3))


def _last_state(c: sqlite3.Connection) -> ChainState:
    row = c.execute("SELECT statement FROM timestamp_heads ORDER BY sequence DESC LIMIT 1"
                    ).fetchone()
    if row is None:
        return ChainState()
    return ChainState.after(TreeHead.from_statement(Statement.from_bytes(row[0])))


def _store(c: sqlite3.Connection, batch: Batch, head: Statement, certificate: bytes) -> None:
    """Inside the transaction: the batch's row, if its head continues the stored
    chain (else ``Unavailable``, and nothing is written)."""
    row = c.execute("SELECT sequence, head_id FROM timestamp_heads"
                    " ORDER BY sequence DESC LIMIT 1").fetchone()
    expected = (-1, bytes(32)) if row is None else (row[0], row[1])
    if (batch.head.sequence - 1, batch.head.previous) != expected:
        raise Unavailable("the batch does not continue the stored chain; send the request again")
    c.execute("INSERT INTO timestamp_heads (sequence, head_id, statement, certificate,"
              " first_serial, digests) VALUES (?, ?, ?, ?, ?, ?)",
              (batch.head.sequence, batch.id, head.to_bytes(), certificate,
               batch.head.first_serial, b"".join(batch.digests)))


def stored_token(c: sqlite3.Connection, serial: int) -> Token | None:
    """The token of ``serial`` rebuilt from the notary's database (None if unknown).
    The batches' first serials grow with their sequence: the last batch that starts
    at or before ``serial`` is the only one that may hold it."""
    row = c.execute("SELECT statement, certificate, first_serial, digests FROM"
                    " timestamp_heads WHERE first_serial <= ? ORDER BY sequence DESC LIMIT 1",
                    (serial,)).fetchone()
    if row is None or not serial - row[2] < len(row[3]) // HASH_SIZE:
        return None
    head = Statement.from_bytes(row[0])
    body = TreeHead.from_statement(head)
    digests = tuple(row[3][i:i + HASH_SIZE] for i in range(0, len(row[3]), HASH_SIZE))
    state = ChainState(sequence=body.sequence, serial=body.first_serial,
                       previous=body.previous, time=body.time)
    batch = build_batch(state, notary=body.notary, time=body.time, digests=digests)
    return batch.token(serial - body.first_serial, head, row[1])
