"""The fair-exchange ops, each declared once (``services._ops.Op``; protocol.md 10).

Append new ops at the end (each exchange kind adds its own)."""

from __future__ import annotations

from typing import Final

from .._ops import Op
from ._bodies import AbortWire, CommitWire, DecisionWire, ProposeWire, ResolveWire, RevealWire

__all__ = ["CONTRACT", "CONTRACT_PROPOSE", "CONTRACT_REVEAL", "NOTARY", "NOTARY_ABORT",
           "NOTARY_RESOLVE"]

CONTRACT: Final = "contract"
NOTARY: Final = "notary"

#: O -> R: ``{text, m1}`` -> ``{m2}``.
CONTRACT_PROPOSE: Final = Op(CONTRACT, "propose", ProposeWire, CommitWire)
#: O -> R: ``{exchange, secret: N_O}`` -> ``{exchange, secret: N_R}``.
CONTRACT_REVEAL: Final = Op(CONTRACT, "reveal", RevealWire, RevealWire)
#: O -> notary: ``{request: abort request}`` -> ``{statement: decision}``.
NOTARY_ABORT: Final = Op(NOTARY, "abort", AbortWire, DecisionWire)
#: O or R -> notary: ``{request: resolve request}`` -> ``{statement: decision}``.
NOTARY_RESOLVE: Final = Op(NOTARY, "resolve", ResolveWire, DecisionWire)
