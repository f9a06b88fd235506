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


def test_a_bank_half_that_clashes_is_skipped_and_the_bank_serves_the_others(
        market: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _with(monkeypatch, _bank.BANK_HALVES_GROUP, "fasttransfer", f"{__name__}:CollidingHalf")
    bank = Agent(config_of(market, "bank"))
    assert TransferBank in bank.components
    assert "transfer" in bank.registry.services()["bank"].modules


def test_a_component_cannot_replace_another_components_tables(
        market: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _with(monkeypatch, _bank.BANK_HALVES_GROUP, "gift", f"{__name__}:TableClash")
    try:
        bank = Agent(config_of(market, "bank"))
    except Exception:
        return  # refused loudly: also fine
    assert bank.migrations()["bank"] == _bank.MIGRATIONS["bank"]


def test_a_payment_module_that_fails_to_import_does_not_stop_the_seller(
        market: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _with(monkeypatch, _manager.MODULES_GROUP, "broken", "semper_review_no_such_module:Module")
    seller = Agent(config_of(market, "seller"))
    assert seller.registry.services()["payment"]


def test_settings_of_an_installed_plugin_that_does_not_load_are_not_fatal(
        market: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Its [components.<name>] table is kept for when it loads again; the bank starts
    and serves the other instruments (a typo'd table is still refused: test_components)."""
    _with(monkeypatch, _bank.BANK_HALVES_GROUP, "broken", "semper_review_no_such_module:Half")
    bank = Agent(config_of(market, "bank", components={"broken": {"anything": 1}}))
    assert "broken" in bank.skipped_components
    assert TransferBank in bank.components


def test_a_clashing_half_is_skipped_and_the_bank_advertises_only_the_others(
        market: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _with(monkeypatch, _bank.BANK_HALVES_GROUP, "fasttransfer", f"{__name__}:CollidingHalf")
    bank = Agent(config_of(market, "bank"))
    assert CollidingHalf not in bank.components and "fasttransfer" in bank.skipped_components
    others = tuple(n for n in _payments.installed_order(_bank.BANK_HALVES_GROUP)
                   if n != "fasttransfer")
    assert {"card", "cheque", "purse", "transfer"} <= set(others)
    assert bank.registry.services()["bank"].modules == others
