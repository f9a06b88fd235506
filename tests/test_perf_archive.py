"""Appending to the archive builds only the records it appends (issue 8, item 6): it
read the head's whole row, statement included, and built and checked an
``ArchiveRecord`` from it, ~20 us at each of a purchase's seven appends, for the two
fields the next record needs (its seq and hash). The chain is the same.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pki import NOW, Market
from pki import TestAgent as Agent  # not collected as a test class

from semper.agents.components import _archive
from semper.agents.runtime._storage import Database
from semper.services.archive import ArchiveRecord, verify_chain
from semper.services.statements import Statement, sign_statement

NOW_MS = int(NOW.timestamp() * 1000)


def _statement(agent: Agent, n: int) -> Statement:
    return sign_statement("commerce.offer", {"item": f"book-{n}"}, key=agent.key,
                          certificate=agent.cert, now_ms=NOW_MS + n,
                          nonce=n.to_bytes(16, "big"))


def _count_records(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    built = [0]
    post_init = ArchiveRecord.__post_init__

    def counting(self: ArchiveRecord) -> None:
        built[0] += 1
        post_init(self)

    monkeypatch.setattr(ArchiveRecord, "__post_init__", counting)
    return built


def test_an_append_builds_only_its_own_records(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The instance: one entry appended to a chain that has a head built one record
    (was two: the head, read back whole)."""
    (tmp_path / "pki").mkdir()
    market = Market(tmp_path / "pki")
    seller = market.agent("seller", role="seller")
    database = Database.open_sync(tmp_path / "agent.sqlite", _archive.MIGRATIONS)
    try:
        def add(n: int, *more: int) -> list[ArchiveRecord]:
            entries = [_archive.entry(_statement(seller, k), direction="sent", peer="buyer",
                                      transaction=f"tx-{k % 2}", certificate=seller.cert)
                       for k in (n, *more)]
            return database.transaction_sync(lambda c: _archive.append(c, entries,
                                                                       now_ms=NOW_MS))

        first = add(0)
        built = _count_records(monkeypatch)
        second = add(1)
        assert built[0] == 1
        third = add(2, 3)  # another member: several entries, one record each
        assert built[0] == 3
        monkeypatch.undo()
        chain: list[Any] = database.read_sync(lambda c: [
            _archive._row_to_record(r) for r in c.execute(
                f"SELECT {_archive._COLUMNS} FROM archive_records ORDER BY seq")])
    finally:
        database.close()
    assert chain == first + second + third
    assert [r.seq for r in chain] == [0, 1, 2, 3]
    verify_chain(chain, head=third[-1].hash)
