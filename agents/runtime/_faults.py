"""Crash points: kill this process at a named step, like a power cut, for tests.

``crash_point(name)`` does nothing unless the environment variable
``SEMPER_CRASH_AT`` (read once, at import) equals ``name``; then it sends SIGKILL to
the current process: no ``finally``, no ``atexit``, no SQLite rollback or close, no
flush of any buffer. It may be called from the trio thread or a worker thread.
``tests/test_bank_crash.py`` runs the bank as a subprocess with the variable set, once
per point, restarts it without, retries, and checks that each payment was applied
exactly once or not at all.

Each payment instrument's bank half (``agents/instruments/``, or a plugin's) names
its points after itself, in the order a request reaches them:

``<instrument>.received``
    the request decoded from the wire, nothing checked or written yet.
``<instrument>.checked``
    the statement and its certificate verified, before the transaction starts.
``<instrument>.applied``
    inside the transaction function (worker thread), after the journal entry, the
    signed answer, the idempotency record and the evidence were written, before
    COMMIT.
``<instrument>.committed``
    the transaction committed (durable), before the handler returns its answer.

A point may carry a number: ``crash_point("stream.seller.chunk", k)`` fires for
``SEMPER_CRASH_AT=stream.seller.chunk:K`` only when ``k == K`` (the seller sending
chunk K), so that a test can kill a stream at a chosen chunk. A bare name matches a
point called without a number. The streams' points: ``stream.seller.chunk:K`` (the
seller, chunk K's tick committed and chunk K-1 sent, chunk K not sent) and
``stream.buyer.chunk:K`` (the buyer, payword K+1 drawn: chunk K paid, asked on credit
and not yet verified; chunk K+1 not asked for).

In-process tests simulate a kill without a process of their own: they set
``on_crash`` to a callable, which every crash point calls with its name
(``name:number`` when numbered) before it looks at ``SEMPER_CRASH_AT``, and which
raises a BaseException of the test's at the point it picks. Raised inside a
transaction function (``.applied``) it rolls the transaction back, as a kill leaves
it; raised after a commit the commit stands and no answer is sent; the test then
discards the agent and starts another on its files (tests/test_ecash_statemachine.py,
which checks that this leaves the bank's files as a real SIGKILL in
tests/test_ecash_bank_crash.py does).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from typing import Final

__all__ = ["CRASH_AT", "crash_point", "on_crash"]

#: The point this process dies at, or None (the usual case).
CRASH_AT: Final = os.environ.get("SEMPER_CRASH_AT") or None
#: A test's simulated kill, called at every crash point (see above); None in use.
on_crash: Callable[[str], None] | None = None


def crash_point(name: str, number: int | None = None) -> None:
    """SIGKILL this process if ``SEMPER_CRASH_AT`` names ``name`` (``name:number``
    when a number is given); first call ``on_crash`` if a test set it."""
    if on_crash is not None:
        on_crash(name if number is None else f"{name}:{number}")
    if CRASH_AT is None:
        return
    if (name if number is None else f"{name}:{number}") == CRASH_AT:
        os.kill(os.getpid(), signal.SIGKILL)
