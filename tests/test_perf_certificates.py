"""A certificate's DER is encoded once per certificate object (issue 8, item 6):
``Certificate.public_bytes`` encodes afresh at each call (~8 us), and a purchase asked
it ~20 times for the same three certificates (each archive row's certificate and its
fingerprint, the sale and purchase machines' saved state, the payment answers).
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import Any

import trio
from cryptography.hazmat.primitives.serialization import Encoding
from test_perf_purchase import DEADLINE, GUIDE, market

from semper.agents.components._purchase import Shopper
from semper.agents.operator._market import init_market
from semper.services.certificates import (
    Level,
    _validate,
    certificate_der,
    fingerprint,
    load_certificate,
)


def _count_public_bytes() -> tuple[list[int], Any]:
    """Calls of ``Certificate.public_bytes`` in this process (every thread) while
    the returned list's flag is set."""
    seen = [0, 0]  # [counting, calls]

    def hook(frame: Any, event: str, arg: Any) -> None:
        if seen[0] and event == "c_call" and \
                getattr(arg, "__qualname__", "") == "Certificate.public_bytes":
            seen[1] += 1

    return seen, hook


async def test_a_purchase_encodes_each_certificate_once(tmp_path: Path) -> None:
    """The instance: the three parties' archive rows, machines and payment answers
    (20 encodings a purchase before; now only certificates first seen, such as the
    bank's as a new payment answer carries it)."""
    seen, hook = _count_public_bytes()
    threading.setprofile(hook)  # the database writer threads archive the rows
    sys.setprofile(hook)
    try:
        with trio.fail_after(DEADLINE):
            async with market(tmp_path) as agents:
                shopper = Shopper(agents["buyer"])
                await shopper.buy("seller", GUIDE, "transfer", "warm")
                seen[0] = 1
                done = await shopper.buy("seller", GUIDE, "transfer", "counted")
                seen[0] = 0
    finally:
        sys.setprofile(None)
        threading.setprofile(None)  # type: ignore[arg-type]
    assert done.state == "done"
    assert seen[1] <= 4, seen[1]


def test_certificate_der_is_the_der_and_kept(tmp_path: Path) -> None:
    """Another member: ``fingerprint`` of a certificate not seen before encodes it
    once, and its DER is then known too."""
    init_market(tmp_path / "m", agents=[("seller", "seller", Level.VERIFIED_CONTACT)])
    pem = (tmp_path / "m" / "seller" / "cert.pem").read_bytes()
    cert = load_certificate(pem)
    seen, hook = _count_public_bytes()
    sys.setprofile(hook)
    try:
        seen[0] = 1
        first = fingerprint(cert)
        der = certificate_der(cert)
        again = certificate_der(cert)
        seen[0] = 0
    finally:
        sys.setprofile(None)
    assert der == cert.public_bytes(Encoding.DER) and again is der
    assert first == fingerprint(load_certificate(der))
    assert seen[1] == 1


def test_a_fingerprint_is_kept_by_the_certificate_object(tmp_path: Path) -> None:
    """A third member: ``fingerprint`` (four calls a statement verified) answered
    through ``lru_cache``, which hashes the certificate's DER at every call (~2 us);
    the object's own entry answers now."""
    init_market(tmp_path / "m", agents=[("seller", "seller", Level.VERIFIED_CONTACT)])
    cert = load_certificate((tmp_path / "m" / "seller" / "cert.pem").read_bytes())
    first = fingerprint(cert)
    assert _validate._DERS[id(cert)] == (cert, certificate_der(cert), first)
    assert fingerprint(cert) is first
