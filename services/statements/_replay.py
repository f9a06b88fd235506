"""Refusing a statement seen before: a window of time and the nonces inside it.

Theory of operation. A statement carries its issue time and a random nonce. The
guard accepts only statements issued within ``window_ms`` of the receiver's clock,
and remembers the ``(signer, nonce)`` of each one it accepted for as long as that
statement could still pass the time check. After that the entry is dropped: the
time check alone refuses the statement. So memory is bounded by the statements
accepted in one window, and nothing is ever forgotten early.

"As long as it could still pass" is measured against the latest clock reading the
guard has seen (its high-water mark), not the current one: a clock stepped back
must not re-open the part of the past whose entries were already dropped.

Call ``check`` only after ``verify_statement`` passed. A guard fed unverified
statements could be made to remember a victim's nonce before the victim's real
statement arrives, and would then refuse the real one.
"""

from __future__ import annotations

import heapq
from typing import Any

from ._errors import Replayed, Stale
from ._statement import Statement

__all__ = ["ReplayGuard"]

_STATE_VERSION = 1


class ReplayGuard:
    """Remembers accepted statements for ``window_ms`` milliseconds. Pure: the clock
    is an argument, state is exported with ``to_state`` and restored with
    ``from_state``."""

    __slots__ = ("_expiry", "_high_water", "_seen", "_window")

    def __init__(self, window_ms: int) -> None:
        if type(window_ms) is not int or window_ms <= 0:
            raise ValueError("window_ms must be a positive int")
        self._window = window_ms
        self._high_water: int | None = None
        self._seen: dict[tuple[bytes, bytes], int] = {}
        # (issued_at, signer, nonce), smallest issued_at first: what to forget next.
        self._expiry: list[tuple[int, bytes, bytes]] = []

    @property
    def window_ms(self) -> int:
        return self._window

    def __len__(self) -> int:
        """How many ``(signer, nonce)`` pairs the guard remembers now."""
        return len(self._seen)

    def check(self, statement: Statement, now_ms: int) -> None:
        """Accept ``statement`` once, and remember it until it is stale anyway.

        Raises:
            Stale: ``issued_at`` is more than ``window_ms`` before the latest clock
                reading or after ``now_ms``. Nothing is remembered.
            Replayed: the same signer's nonce was accepted inside the window.
        """
        if type(now_ms) is not int:
            raise TypeError("now_ms must be an int of Unix milliseconds")
        earliest = self._forget(now_ms)
        latest = now_ms + self._window
        if not earliest <= statement.issued_at <= latest:
            raise Stale(
                f"issued at {statement.issued_at}, outside {earliest}..{latest}",
                detail={"issued_at": statement.issued_at, "now_ms": now_ms,
                        "window_ms": self._window},
            )
        key = (statement.signer, statement.nonce)
        if key in self._seen:
            raise Replayed(
                "this signer's nonce was already seen inside the window",
                detail={"signer": statement.signer.hex(), "nonce": statement.nonce.hex()},
            )
        self._remember(key, statement.issued_at)

    def to_state(self) -> dict[str, Any]:
        """The guard as one value of the value model, to persist (``canonical_encode`` it)."""
        seen = sorted(self._seen.items(), key=lambda item: (item[1], item[0]))
        return {
            "v": _STATE_VERSION,
            "window_ms": self._window,
            "high_water": self._high_water,
            "seen": [[signer, nonce, issued] for (signer, nonce), issued in seen],
        }

    @classmethod
    def from_state(cls, state: object) -> ReplayGuard:
        """Rebuild a guard from ``to_state()``.

        Raises:
            ValueError: ``state`` is not what ``to_state`` returns.
        """
        if type(state) is not dict or state.get("v") != _STATE_VERSION or state["v"] is True:
            raise ValueError("not a replay guard state of version 1")
        guard = cls(state.get("window_ms"))  # type: ignore[arg-type]
        high_water = state.get("high_water")
        if high_water is not None and type(high_water) is not int:
            raise ValueError("high_water must be an int or None")
        guard._high_water = high_water
        entries = state.get("seen")
        if type(entries) is not list:
            raise ValueError("seen must be a list")
        for entry in entries:
            if not (type(entry) is list and len(entry) == 3 and type(entry[0]) is bytes
                    and type(entry[1]) is bytes and type(entry[2]) is int):
                raise ValueError("each seen entry is [signer, nonce, issued_at]")
            guard._remember((entry[0], entry[1]), entry[2])
        return guard

    def _forget(self, now_ms: int) -> int:
        """Advance the high-water mark, drop what is stale, return the earliest issue
        time still accepted."""
        if self._high_water is None or now_ms > self._high_water:
            self._high_water = now_ms
        earliest = self._high_water - self._window
        while self._expiry and self._expiry[0][0] < earliest:
            _, signer, nonce = heapq.heappop(self._expiry)
            del self._seen[(signer, nonce)]
        return earliest

    def _remember(self, key: tuple[bytes, bytes], issued_at: int) -> None:
        if key in self._seen:
            raise ValueError("duplicate entry")
        self._seen[key] = issued_at
        heapq.heappush(self._expiry, (issued_at, *key))
