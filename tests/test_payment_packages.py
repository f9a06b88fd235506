"""services/payment/ keeps one package per instrument (STYLE.md 12, issue 8 item 3):
an instrument's package imports nothing of another instrument, and the shared part
(services/payment/*.py) names no instrument in its code, so that adding an instrument
touches no existing file. Docstrings and comments may name them as examples."""

from __future__ import annotations

import ast
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from semper.services._ops import declared_ops
from semper.services.payment import MODULES_GROUP

PAYMENT = Path(__file__).resolve().parent.parent / "services" / "payment"
PACKAGE = "semper.services.payment"
INSTRUMENTS = ("transfer", "cheque")


def imported_modules(path: Path, package: str) -> set[str]:
    """Every module ``path`` (a module of ``package``) imports, absolute."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def code_words(path: Path) -> list[tuple[int, str]]:
    """The identifiers and string literals of ``path``, without docstrings (any bare
    string expression) and comments (not in the tree)."""
    tree = ast.parse(path.read_text(), str(path))
    docstrings = {id(node.value) for node in ast.walk(tree)
                  if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)}
    words: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        line = getattr(node, "lineno", 0)
        if isinstance(node, ast.Name):
            words.append((line, node.id))
        elif isinstance(node, ast.Attribute):
            words.append((line, node.attr))
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            words.append((line, node.name))
        elif isinstance(node, ast.arg | ast.keyword) and node.arg:
            words.append((line, node.arg))
        elif isinstance(node, ast.alias):
            words.extend([(line, node.name), (line, node.asname or "")])
        elif isinstance(node, ast.ImportFrom):
            words.append((line, node.module or ""))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str | bytes) \
                and id(node) not in docstrings:
            value = node.value
            words.append((line, value.decode("latin-1") if isinstance(value, bytes) else value))
    return words


def instrument_words(path: Path, names: tuple[str, ...]) -> list[str]:
    return [f"{path.name}:{line}: {word!r}" for line, word in code_words(path)
            if any(name in word.lower() for name in names)]


@pytest.mark.parametrize("instrument", INSTRUMENTS)
def test_an_instrument_imports_nothing_of_another(instrument: str) -> None:
    others = [name for name in INSTRUMENTS if name != instrument]
    files = sorted((PAYMENT / instrument).glob("*.py"))
    assert files, f"no package services/payment/{instrument}/"
    for path in files:
        for module in imported_modules(path, f"{PACKAGE}.{instrument}"):
            for other in others:
                assert not module.startswith(f"{PACKAGE}.{other}"), \
                    f"{instrument}/{path.name} imports {module}"
            assert not module.startswith(("semper.agents", "semper.transport")), \
                f"{instrument}/{path.name} imports {module} (services do no I/O)"


def test_the_shared_part_names_no_instrument() -> None:
    found = [hit for path in sorted(PAYMENT.glob("*.py"))
             for hit in instrument_words(path, INSTRUMENTS)]
    assert found == []


def test_the_check_sees_an_instrument_named_in_code_not_in_a_docstring(tmp_path: Path) -> None:
    """The checks above would pass on anything if they saw nothing: the code before the
    split (the shared __init__ importing TransferModule from ._modules) is refused."""
    path = tmp_path / "shared.py"
    path.write_text('"""Pays by transfer or cheque."""\n# a cheque clears once\n'
                    'from ._modules import TransferModule\nKINDS = {"cheque": "digest"}\n')
    assert instrument_words(path, INSTRUMENTS) == [
        "shared.py:3: 'TransferModule'", "shared.py:4: 'cheque'"]
    path.write_text("from ..cheque._schema import Cheque\n")
    assert f"{PACKAGE}.cheque._schema" in imported_modules(path, f"{PACKAGE}.transfer")


@pytest.mark.parametrize("instrument", INSTRUMENTS)
def test_an_instrument_is_installed_from_its_own_package(instrument: str) -> None:
    """The entry point of its payer and payee halves, and the ops it adds to the
    ``bank`` service, live in the instrument's package."""
    points = {point.name: point for point in entry_points(group=MODULES_GROUP)}
    module = points[instrument].load()
    assert module.__module__.startswith(f"{PACKAGE}.{instrument}.")
    assert module.name == instrument
    for op in declared_ops():
        for request_or_response in (op.request, op.response):
            if request_or_response is None:
                continue
            where = request_or_response.__module__
            if where.startswith(PACKAGE) and instrument in op.name:
                assert where.startswith(f"{PACKAGE}.{instrument}."), op.qualified
