"""Issue 8, item 3: the seller and the buyer name no payment instrument.

The instance: the seller read every proof handed over as a ``transfer`` proof to give
back money it refused (``_transfer_proof``, ``verify_transfer_confirmation``), and
the buyer looked for a ``payment.transfer_confirmation`` in its archive to know that
money moved before the hand-over and to check the seller's "returned" proof. An
instrument says both now (optional ``PaymentModule.received``/``prepaid``, asked
through the ``PaymentManager``), so a plugin whose money moves before the payee
accepts gets the same treatment. The behaviour is pinned by
tests/test_hardening_payments.py and test_commerce_wire.py; here: the code, the
manager's rules, and rows the seller wrote before the change.
"""

from __future__ import annotations

import ast
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from test_commerce_wire import GUIDE, Market, running_market
from test_hardening_payments import money_reaching_the_seller_is_used_or_returned, returned_to

from semper.agents.roles.seller import Sales
from semper.services.payment import BadRequest, Capabilities, PaymentManager
from semper.services.statements import Statement, canonical_encode

AGENTS = Path(__file__).resolve().parent.parent / "agents"
INSTRUMENTS = ("transfer", "cheque")


def _named(path: Path, *, strings: bool) -> list[tuple[int, str]]:
    """The identifiers, imports (and, with ``strings``, the string constants other
    than docstrings) of ``path`` that name an instrument."""
    tree = ast.parse(path.read_text())
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef,
                                       ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr)
                  and isinstance(node.body[0].value, ast.Constant)}
    # a third-party library's own names (rich's TransferSpeedColumn) are not ours
    foreign = {alias.asname or alias.name for node in ast.walk(tree)
               if isinstance(node, ast.ImportFrom) and not node.level
               and not (node.module or "").startswith("semper") for alias in node.names}
    found = []
    for node in ast.walk(tree):
        words: list[str] = []
        if isinstance(node, ast.Name):
            words = [node.id]
        elif isinstance(node, ast.Attribute):
            words = [node.attr]
        elif isinstance(node, ast.alias):
            words = [node.name, node.asname or ""]
        elif isinstance(node, ast.ImportFrom):
            words = [node.module or ""]
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            words = [node.name]
        elif isinstance(node, ast.arg):
            words = [node.arg]
        elif strings and isinstance(node, ast.Constant) and isinstance(node.value, str) \
                and id(node) not in docstrings:
            words = [node.value]
        found += [(getattr(node, "lineno", 0), word) for word in words
                  if word not in foreign and any(name in word.lower() for name in INSTRUMENTS)]
    return found


def test_the_seller_and_the_buyer_name_no_instrument() -> None:
    """The instance (the seller's give-back) and the buyer's side of it: neither
    file's code names an instrument, not even in a string (comments may)."""
    for path in ("roles/seller.py", "components/_purchase.py", "roles/buyer.py",
                 "components/_payments.py"):
        assert _named(AGENTS / path, strings=True) == [], path


def test_no_code_under_agents_but_the_instruments_own_names_one() -> None:
    """The kind, everywhere under agents/: no module, class, function or variable
    outside each instrument's own bank half (agents/instruments/) names one (the
    demo and help texts may, in strings)."""
    for path in sorted(AGENTS.rglob("*.py")):
        if "instruments" in path.relative_to(AGENTS).parts:
            continue
        assert _named(path, strings=False) == [], path


# -- the manager asks the instruments ---------------------------------------------------

class _Module:
    """A module with only the optional methods under test (and a name)."""

    def __init__(self, name: str, *, received: Any = None, prepaid: Any = None,
                 refuses: bool = False) -> None:
        self.name = name
        self._received, self._prepaid, self._refuses = received, prepaid, refuses

    def received(self, ctx: Any, proof: Any, *, payer: str, reference: bytes) -> Any:
        if self._refuses:
            raise BadRequest("not mine", detail={"field": "proof"})
        return self._received

    def prepaid(self, statements: Any) -> Any:
        return self._prepaid


class _Plain:
    """A module without the optional methods (a cheque, a voucher): money moves only
    when the payee accepts."""

    name = "plain"


def _manager(*modules: Any) -> PaymentManager:
    return PaymentManager(modules={m.name: m for m in modules},
                          capabilities=Capabilities(modules=()))


def test_money_is_what_any_installed_instrument_says_moved() -> None:
    """``received``: every installed module is asked (offered or not: here none is),
    whatever module the proof came under; one without the method, one that refuses,
    and one that answers None are passed over."""
    money = object()
    manager = _manager(_Plain(), _Module("a", refuses=True), _Module("b"),
                       _Module("c", received=money), _Module("d", received=object()))
    assert manager.received(None, {}, payer="buyer", reference=b"r") is money
    assert _manager(_Plain(), _Module("a", refuses=True)).received(
        None, {}, payer="buyer", reference=b"r") is None


def test_paid_before_the_hand_over_is_asked_of_the_payments_module_first() -> None:
    ours, other = (object(), object()), (object(), object())
    manager = _manager(_Module("a", prepaid=other), _Module("b", prepaid=ours), _Plain())
    assert manager.prepaid([], module="b") is ours
    assert manager.prepaid([], module="plain") is other  # money out by any instrument
    assert manager.prepaid([], module="gone") is other
    assert _manager(_Plain(), _Module("a")).prepaid([], module="a") is None


def test_a_module_that_raises_other_than_a_refusal_is_not_hidden() -> None:
    class Broken(_Module):
        def received(self, ctx: Any, proof: Any, *, payer: str, reference: bytes) -> Any:
            raise RuntimeError("a bug")

    with pytest.raises(RuntimeError):
        _manager(Broken("a")).received(None, {}, payer="buyer", reference=b"r")


# -- rows written before ------------------------------------------------------------------

@pytest.fixture
async def m(tmp_path: Path) -> AsyncIterator[Market]:
    async with running_market(tmp_path / "m") as market:
        yield market


async def test_a_return_recorded_before_the_payment_was_kept_is_still_given_back(
        m: Market) -> None:
    """A seller upgraded with a return due: its row holds only the proof (a
    transfer's wire), no payment. The seller reads it back through the instruments,
    gives the money back, and answers the proof handed over again with the first
    refusal, as before."""
    order = await m.place(await m.offer(GUIDE), key="legacy", module="cheque")
    before = await m.balances()
    proof = await m["buyer"].request("bank", "bank", "transfer", m.transfer_order(
        "buyer", "seller", 1250, key="legacy", reference=order.digest))
    assert (await m.balances())["seller"] == before["seller"] + 1250
    seller = m["seller"]
    confirmation = proof["confirmation"]
    digest = Statement.from_wire(confirmation).digest
    refusal = {"code": "commerce.unsupported_payment",
               "message": "the order is to be paid by cheque, not transfer",
               "detail": {"expected": "cheque", "module": "transfer"}}
    await seller.database.transaction(lambda c: c.execute(
        "INSERT INTO commerce_returns (settlement, order_digest, buyer, currency, amount,"
        " code, refusal, state, updated_ms, proof) VALUES (?, ?, 'buyer', 'EUR', 1250, ?, ?,"
        " 'returning', 0, ?)",
        (digest, order.digest, refusal["code"], canonical_encode(refusal),
         canonical_encode(proof))))
    assert await seller.component(Sales).retry_returns() == 0
    assert await m.balances() == before
    again = await m.refused("buyer", "seller", "payment", "accept", {
        "module": "cheque", "reference": order.digest, "proof": proof})
    assert again.code == "commerce.unsupported_payment"
    await returned_to(m, again, 1250)
    assert await m.balances() == before
    await money_reaching_the_seller_is_used_or_returned(m)
