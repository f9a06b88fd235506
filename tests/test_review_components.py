"""Review of issue 8's component loading: what one installed plugin that is broken or
clashes does to the agents that pick it up on restart (entry points faked here, so
nothing is installed)."""

from __future__ import annotations

import importlib.metadata as metadata
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from market_helpers import config_of, make_market

from semper.agents import Agent, Component, handles
from semper.agents.components import _bank, _payments
from semper.agents.instruments.transfer import TransferBank
from semper.services.payment import _manager
from semper.services.payment.transfer import TRANSFER


class CollidingHalf(Component):
    """A third-party bank half that (by mistake) also handles ``bank.transfer``."""

    name = "fasttransfer"
    modules = ("fasttransfer",)

    @handles(TRANSFER)
    async def transfer(self, context: Any, request: Any) -> Any:
        raise AssertionError("never served")


class TableClash(Component):
    """A third-party bank half whose migration is named like the bank's own."""

    name = "gift"
    modules = ("gift",)

    def migrations(self) -> Mapping[str, Sequence[str]]:
        return {"bank": ["CREATE TABLE gift_cards (serial TEXT PRIMARY KEY) STRICT"]}


def _with(monkeypatch: pytest.MonkeyPatch, group: str, name: str, value: str) -> None:
    """An entry point ``name = value`` in ``group``, as every loader sees them."""
    real = metadata.entry_points

    def faked(**kw: Any) -> Any:
        found = list(real(**kw))
        if kw.get("group") == group:
            found.append(metadata.EntryPoint(name, value, group))
        return found

    for module in (_bank, _payments, _manager):
        monkeypatch.setattr(module, "entry_points", faked)


@pytest.fixture
def market(tmp_path: Path) -> Path:
    return make_market(tmp_path)


@pytest.mark.xfail(strict=True, raises=ValueError, reason=(
    "components/_bank.py bank_halves skips a half only when its import fails; one that "
    "loads but serves an op another half serves makes Agent._add_component -> "
    "registry.add_op raise ValueError ('bank.transfer is registered already'): the "
    "bank does not start at all (semper: internal.error), for every instrument"))
def test_a_bank_half_that_clashes_is_skipped_and_the_bank_serves_the_others(
        market: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _with(monkeypatch, _bank.BANK_HALVES_GROUP, "fasttransfer", f"{__name__}:CollidingHalf")
    bank = Agent(config_of(market, "bank"))
    assert TransferBank in bank.components
    assert "transfer" in bank.registry.services()["bank"].modules


@pytest.mark.xfail(strict=True, reason=(
    "runtime/_agent.py Agent.migrations merges every component's tables with "
    "dict.update: a half whose migration is named 'bank' silently replaces the bank's "
    "own (a fresh bank never creates bank_requests/bank_payments; an existing one "
    "refuses to open: 'bank schema is at version 2, newer than this build knows (1)')"))
def test_a_component_cannot_replace_another_components_tables(
        market: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _with(monkeypatch, _bank.BANK_HALVES_GROUP, "gift", f"{__name__}:TableClash")
    try:
        bank = Agent(config_of(market, "bank"))
    except Exception:
        return  # refused loudly: also fine
    assert bank.migrations()["bank"] == _bank.MIGRATIONS["bank"]


@pytest.mark.xfail(strict=True, raises=ModuleNotFoundError, reason=(
    "services/payment/_manager.py load_modules lets an import error through: one "
    "installed payment module that fails to import (a missing dependency, a plugin "
    "built for another semper) stops every seller from starting and every "
    "`semper buy` (internal.error), while the bank skips the same plugin's broken half"))
def test_a_payment_module_that_fails_to_import_does_not_stop_the_seller(
        market: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _with(monkeypatch, _manager.MODULES_GROUP, "broken", "semper_review_no_such_module:Module")
    seller = Agent(config_of(market, "seller"))
    assert seller.registry.services()["payment"]
