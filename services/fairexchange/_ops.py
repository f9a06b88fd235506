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

# -- escrow, certified mail, fair purchase (protocol.md 10.3 to 10.5) ---------------------

from ._escrow import EscrowKeyRequest, EscrowKeyWire  # noqa: E402
from ._fairpurchase import FetchWire, RecoverGoodsWire, ReleaseWire, SealedWire  # noqa: E402
from ._mail import (  # noqa: E402
    CiphertextWire,
    CloseMailWire,
    KeyWire,
    ReceiptWire,
    RecoverMailWire,
)

MAIL: Final = "mail"
FAIR: Final = "fair"

#: anyone -> notary: ``{}`` -> ``{statement: notary.escrow_key}``.
NOTARY_ESCROW_KEY: Final = Op(NOTARY, "escrow_key", EscrowKeyRequest, EscrowKeyWire)
#: sender -> receiver: ``{offer, ciphertext}`` -> ``{receipt}``.
MAIL_DELIVER: Final = Op(MAIL, "deliver", CiphertextWire, ReceiptWire)
#: sender -> receiver: ``{exchange, key}`` -> ``{}``.
MAIL_REVEAL: Final = Op(MAIL, "reveal", KeyWire)
#: receiver -> notary: ``{offer, receipt, ciphertext}`` -> ``{statement: decision}``.
NOTARY_RECOVER_MAIL: Final = Op(NOTARY, "recover_mail", RecoverMailWire, DecisionWire)
#: sender -> notary: ``{offer}`` -> ``{statement: decision}``.
NOTARY_CLOSE_MAIL: Final = Op(NOTARY, "close_mail", CloseMailWire, DecisionWire)
#: buyer -> seller: ``{order}`` -> ``{delivery, ciphertext}``.
FAIR_FETCH: Final = Op(FAIR, "fetch", FetchWire, SealedWire)
#: buyer -> seller: ``{order, payment}`` -> ``{exchange, key}``.
FAIR_RELEASE: Final = Op(FAIR, "release", ReleaseWire, KeyWire)
#: buyer -> notary: ``{order, delivery, ciphertext, payment}`` -> ``{statement: decision}``.
NOTARY_RECOVER_GOODS: Final = Op(NOTARY, "recover_goods", RecoverGoodsWire, DecisionWire)

__all__ += ["FAIR", "FAIR_FETCH", "FAIR_RELEASE", "MAIL", "MAIL_DELIVER", "MAIL_REVEAL",
            "NOTARY_CLOSE_MAIL", "NOTARY_ESCROW_KEY", "NOTARY_RECOVER_GOODS",
            "NOTARY_RECOVER_MAIL"]
