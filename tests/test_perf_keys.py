"""Signing and verifying statements reuse the key objects at hand (issue 8, item 6):
each signature checked that the agent's key is its certificate's (two public key
objects made and encoded), and each verification took the certificate's key object,
encoded it, and built another from the bytes (~10 us a statement, 11 a purchase).
The checks and the answers are the same.
"""

from __future__ import annotations

import collections
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from pki import NOW, Market

from semper.services.statements import (
    BadSignature,
    Statement,
    sign_statement,
    verify_statement,
)

NOW_MS = int(NOW.timestamp() * 1000)
MADE = ("Certificate.public_key", "Ed25519PrivateKey.public_key",
        "Ed25519PublicKey.from_public_bytes", "from_public_bytes")


def _counting() -> tuple[collections.Counter[str], Any]:
    calls: collections.Counter[str] = collections.Counter()

    def hook(frame: Any, event: str, arg: Any) -> None:
        if event == "c_call":
            name = getattr(arg, "__qualname__", "")
            if name in MADE:
                calls[name] += 1

    return calls, hook


def _sign(agent: Any, n: int, key: Any = None) -> Statement:
    return sign_statement("commerce.offer", {"item": f"book-{n}"}, key=key or agent.key,
                          certificate=agent.cert, now_ms=NOW_MS + n,
                          nonce=n.to_bytes(16, "big"))


@pytest.fixture
def market(tmp_path: Path) -> Market:
    return Market(tmp_path)


def test_a_second_signature_makes_no_key_object(market: Market) -> None:
    """The instance: the key-matches-certificate check, once per key and certificate."""
    seller = market.agent("seller", role="seller")
    _sign(seller, 0)
    calls, hook = _counting()
    sys.setprofile(hook)
    try:
        _sign(seller, 1)
    finally:
        sys.setprofile(None)
    assert not calls, calls
    with pytest.raises(ValueError, match="does not belong"):  # still checked
        _sign(seller, 2, key=ed25519.Ed25519PrivateKey.generate())


def test_a_second_verification_makes_no_key_object(market: Market) -> None:
    """Another member: verifying uses the certificate's key object as it is."""
    seller = market.agent("seller", role="seller")
    first, second = _sign(seller, 0), _sign(seller, 1)

    def verify(statement: Statement) -> None:
        verify_statement(statement, certificate=seller.cert, root=market.ca.certificate,
                         crl=market.crl, now=NOW, expected_signer="seller")

    verify(first)
    calls, hook = _counting()
    sys.setprofile(hook)
    try:
        verify(second)
    finally:
        sys.setprofile(None)
    assert not calls, calls
    forged = Statement(type=second.type, body=second.body, signer=second.signer,
                       issued_at=second.issued_at, nonce=second.nonce,
                       signature=bytes(64))
    with pytest.raises(BadSignature):
        verify(forged)
