"""The instrument policy attacked from outside (issue 11, brief A2): a seller that
lies in its ``payment.capabilities``, against a real buyer over loopback TLS (the
world of tests/test_card_agents.py).

Fault found: the reasons a seller gives in ``declined`` are the buyer's words to
its user (``semper buy`` without ``--pay`` prints the pick's ``why``, and the
streamed path echoed it raw to the terminal). Any string of up to 200 characters
was taken, so a seller could send an escape sequence (clear the screen, retitle the
terminal) or a right-to-left override that reorders the line to fake which
instrument was picked. Capabilities now carry only printable reasons
(``payment.bad_request``, field ``declined``), and the CLI prints ``why`` escaped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from test_card_agents import market, world

from semper.agents.components._purchase import Shopper
from semper.agents.roles.seller import Sales
from semper.services.payment import Capabilities
from semper.services.payment._errors import BadRequest

__all__ = ["market"]


def _lying(reason: str, seller: Any) -> Any:
    """The seller's capabilities answer, its first module declined with ``reason``."""
    honest = seller.component(Sales).payments.answer_capabilities

    def answer(body: Any = None, *, payer: Any = None) -> dict[str, Any]:
        wire = honest(body, payer=payer)
        first = wire["modules"][0]["name"]
        wire["modules"] = wire["modules"][1:]
        return {**wire, "declined": [{"name": first, "reason": reason}]}

    return answer


@pytest.mark.parametrize("reason", [
    "needs verified-identity\x1b]0;pwned\x07\x1b[2J",  # the instance: escape sequences
    "is forbidden\u202e; card: the seller accepts it",  # a member: a bidi override
    "needs\nverified-identity",  # and a line of its own
])
def test_capabilities_carry_only_printable_reasons(reason: str) -> None:
    wire = {"modules": [], "declined": [{"name": "transfer", "reason": reason}]}
    with pytest.raises(BadRequest) as refused:
        Capabilities.from_wire(wire)
    assert refused.value.code == "payment.bad_request"
    assert refused.value.detail["field"] == "declined"


async def test_a_seller_declining_with_an_escape_sequence_is_not_believed(
        market: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The instance over the wire: the buyer's pick (``semper buy`` without
    ``--pay``) refuses the seller's capabilities rather than print its words;
    nothing was signed or paid."""
    async with world(market) as w:
        payments = w.seller.component(Sales).payments
        monkeypatch.setattr(payments, "answer_capabilities",
                            _lying("needs \x1b[2Jverified-identity", w.seller))
        before = await w.moved()
        with pytest.raises(BadRequest) as refused:
            await Shopper(w.buyer).choose("seller", "map-002", "lying-1")
        assert refused.value.detail["field"] == "declined"
        assert await w.moved() == before == {}
        # The same seller with printable words: believed, and said.
        monkeypatch.undo()
        monkeypatch.setattr(payments, "answer_capabilities",
                            _lying("needs verified-identity", w.seller))
        _, why = await Shopper(w.buyer).choose("seller", "map-002", "lying-2")
        assert "needs verified-identity" in why and why.isprintable(), why
