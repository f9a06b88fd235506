"""A hostile peer for semper agents, driven by Hypothesis (issue 7).

Theory of operation. One local market (``init_market``) runs its CA, bank, seller,
notary and arbiter in one trio loop, in a thread of its own (``Harness``), for the
whole run: starting agents per example would cost seconds each. The peer holds the buyer's real
credentials, so it gets past TLS and the certificate check and reaches the code that
reads frames. Hypothesis draws one ``Case`` per example (in the caller's thread) and
the harness plays it over real TLS on loopback, on either kind of channel:

* **inbound**: the peer dials the target agent, reads its hello, sends ours (or a
  fuzzed one) and then the case's frames: arbitrary bytes and length prefixes,
  truncated frames, msgpack outside the value model, envelopes of every type with
  arbitrary fields, requests for every op declared in services/ (``declared_ops``)
  with arbitrary bodies, and valid request bodies the real agents sent (recorded at
  start while the buyer bought, signed a contract, had one aborted and one resolved,
  sent and received certified mail, bought fairly, took a timestamp and filed a
  dispute, and the arbiter asked the CA for a reveal; plus the notary's recovery
  requests built from those) with one field perturbed and the statement re-signed
  by its real signer, so that the checks behind the signature are reached too;
* **outbound**: the target agent dials the peer (its ``[peers]`` says the buyer
  listens where the peer does) for a request of its own, and the peer answers with
  a fuzzed hello or the case's frames, answers to the agent's request among them.

Each case ends with a well-formed ``sys.ping``; the peer reads until every request
it sent that the agent could parse has its answer (``expected_answers`` runs the
agent's own decoder over our bytes to know which), or until the agent closes.
What counts as a **finding**: an ``err`` with ``internal.error``; a log record at
ERROR or above from a ``semper`` logger; an exception without a stable ``code``
from the agent's own request on an outbound channel; a case that does not end
within ``CASE_DEADLINE`` (a hang); an agent that stopped or does not answer a fresh
channel's ``sys.ping`` within 1 s; the bank's books out of balance, or balances
moved with no money-moving request answered ``res``; a notary that signed two
decisions for one exchange (``fairexchange.conflict``), or whose decisions or
timestamp tree heads stop forming a hash chain.

Run it: ``python bench/fuzz_peer.py --frames 100000`` (``--json`` for programs);
tests/test_hardening_fuzzpeer.py runs a short version in the suite.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import functools
import hashlib
import importlib
import json
import logging
import os
import pkgutil
import resource
import ssl
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import trio
from cryptography.hazmat.primitives.asymmetric import ed25519
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import semper.services as services_package
from semper.agents.components import _archive, _ledger
from semper.agents.components._contracts import Contracts
from semper.agents.components._fair_buyer import FairShopper
from semper.agents.components._mail import CertifiedMail
from semper.agents.components._purchase import Shopper
from semper.agents.components._reveal import request_reveal
from semper.agents.operator._market import init_market
from semper.agents.operator._operator import invite_agent
from semper.agents.roles.ca import CertificationAuthority
from semper.agents.runtime._agent import Agent
from semper.agents.runtime._config import AgentConfig
from semper.agents.runtime._identity import Credentials, utcnow
from semper.services import Amount
from semper.services._ops import Op
from semper.services.archive import collect_bundle
from semper.services.certificates import (
    EnrollRequest,
    Level,
    enrollment_proof,
    fingerprint,
    load_certificate,
    make_csr,
)
from semper.services.disputes import FileAnswer, FileRequest
from semper.services.fairexchange import (
    Commit,
    DecisionBody,
    Proposed,
    Responder,
    conflict,
)
from semper.services.statements import Statement, sign_statement, verify_statement
from semper.services.timestamping import NO_PREVIOUS, TimestampRequest, TreeHead
from semper.services.timestamping import REQUEST as TIMESTAMP_REQUEST
from semper.transport import (
    NEED_DATA,
    ChannelConfig,
    CodecLimits,
    FrameDecoder,
    ServiceRegistry,
    TlsContexts,
    encode_frame,
    make_hello,
)
from semper.transport import _channel as channel_module
from semper.transport._errors import BadMessage, ProtocolError
from semper.transport._messages import Bye, Hello, Request, parse_message

__all__ = ["Case", "Harness", "cases", "main"]

MAX_ID = (1 << 63) - 1
MAX_FRAME = ChannelConfig().max_frame
#: Real seconds one case may take before it counts as a hang.
CASE_DEADLINE = 15.0
PING_DEADLINE = 1.0
TARGETS = ("bank", "seller", "ca", "notary", "arbiter")
#: Who serves what, so that most requests reach a handler; each running agent's own
#: registry replaces its entry once it runs (Harness._main).
SERVES = {
    "bank": ("bank", "sys", "evidence", "contract", "mail"),
    "seller": ("commerce", "payment", "fair", "sys", "evidence", "contract", "mail"),
    "ca": ("certificates", "directory", "ca", "sys", "evidence", "contract", "mail"),
    "notary": ("notary", "timestamp", "sys", "evidence", "contract", "mail"),
    "arbiter": ("dispute", "sys", "evidence", "contract", "mail"),
    "enroll": ("enroll",),  # the CA's enrollment listener: no client certificate, no hello
}


def _declared() -> tuple[tuple[str, str], ...]:
    """Every request op declared in services/: the ``Op``s of each service's ``_ops``
    module (``declared_ops()`` alone would also hold ops a test declared for itself)."""
    found = set()
    for info in pkgutil.walk_packages(services_package.__path__, "semper.services."):
        if info.name.rsplit(".", 1)[-1] == "_ops":
            for value in vars(importlib.import_module(info.name)).values():
                if isinstance(value, Op) and not value.note:
                    found.add((value.service, value.name))
    return tuple(sorted(found))


OPS = _declared()
#: Requests whose success may move money at the bank: the purse's reservation and
#: redemption, and commerce.fetch (of a purse order whose every payword the seller
#: holds, it has the seller redeem the chain first).
MONEY_OPS = {("bank", "transfer"), ("bank", "deposit_cheque"), ("bank", "refund"),
             ("payment", "accept"), ("commerce", "refund"), ("bank", "purse_reserve"),
             ("bank", "purse_redeem"), ("commerce", "fetch")}
#: A small streamed item stocked at start (3 chunks of 4 KiB), bought by purse and by
#: transfer while recording, so the delivery channel's and the purse's ops have
#: valid bodies (a ticket, paywords, a commitment and reservation) to perturb.
STREAM_SKU = "clip-fuzz"
STREAM_CHUNK = 4096
STREAM_CONTENT = bytes((i * 13 + i // STREAM_CHUNK) % 251 for i in range(2 * STREAM_CHUNK + 99))
STATEMENT_KEYS = frozenset({"v", "type", "body", "signer", "issued_at", "nonce", "signature"})
FRESH = "\x00fresh-id\x00"  # stands for "the next request id" until the case is encoded
THEIRS = "\x00their-id\x00"  # stands for the id of the agent's own request (outbound)
#: stands for a valid m2, signed by the peer (the buyer) over the agent's own m1
VALID_M2 = "\x00valid-m2\x00"


# -- strategies ----------------------------------------------------------------------

_SIZES = (0, 1, 31, 32, 33, 64, 127, 128, 129, 255, 256, 257, 4095, 4096, 65535, 65536,
          65537)
_NEAR_LIMIT = tuple(MAX_FRAME + d for d in (-64, -40, -16, -9, -5, 0, 1, 16))


@functools.cache
def ints() -> st.SearchStrategy[int]:
    return st.one_of(
        st.integers(-(1 << 63), (1 << 64) - 1),
        st.integers(-2, 300),
        st.sampled_from([0, 1, -1, 1 << 31, 1 << 32, 1 << 53, MAX_ID, 1 << 63, (1 << 64) - 1,
                         -(1 << 63), 253402300799999, 253402300800000]),
    )


@functools.cache
def texts() -> st.SearchStrategy[str]:
    return st.one_of(
        st.text(max_size=24),
        st.sampled_from(["", "buyer", "seller", "bank", "ca", "BUYER", "buyer\u200b", "../x",
                         "EUR", "eur", "XXX", "transfer", "cheque", "card", "commerce.order",
                         "payment.transfer_order", "a" * 129, "\x00", "guide-001"]),
        st.builds(lambda n, c: c * n, st.sampled_from(_SIZES), st.sampled_from("a\u00e9\u20ac")),
    )


@functools.cache
def model_leaves() -> st.SearchStrategy[Any]:
    """Leaves of the value model (docs/protocol.md 3.3)."""
    return st.one_of(
        st.none(), st.booleans(), ints(), texts(),
        st.binary(max_size=40),
        st.builds(lambda n: bytes(n), st.sampled_from((16, 32, 64, 65, 256))),
    )


@functools.cache
def outside_leaves() -> st.SearchStrategy[Any]:
    """Leaves msgpack can carry that the value model refuses."""
    return st.one_of(
        st.floats(),
        st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=16)),
        st.builds(msgpack.Timestamp, st.integers(0, 1 << 33), st.integers(0, 999_999_999)),
    )


@functools.cache
def values(*, outside: bool = True) -> st.SearchStrategy[Any]:
    leaves = st.one_of(model_leaves(), outside_leaves()) if outside else model_leaves()
    keys: st.SearchStrategy[Any] = texts()
    if outside:
        keys = st.one_of(texts(), texts(), ints(), st.binary(max_size=8), st.none(),
                         st.booleans())
    tree = st.recursive(
        leaves,
        lambda kids: st.one_of(st.lists(kids, max_size=5),
                               st.dictionaries(keys, kids, max_size=5)),
        max_leaves=16,
    )
    return st.one_of(tree, tree, tree, deep(leaves), huge())


@functools.cache
def deep(leaves: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Nesting around the decoder's depth bound (32)."""

    def nest(depth: int, leaf: Any, maps: bool) -> Any:
        value = leaf
        for _ in range(depth):
            value = {"k": value} if maps else [value]
        return value

    return st.builds(nest, st.integers(28, 40), leaves, st.booleans())


@functools.cache
def huge() -> st.SearchStrategy[Any]:
    """A str, bin or container near the frame and container limits."""
    return st.one_of(
        st.builds(lambda n, c: c * n, st.sampled_from(_NEAR_LIMIT), st.sampled_from("a\u00e9")),
        st.builds(lambda n: b"\xff" * n, st.sampled_from(_NEAR_LIMIT)),
        st.builds(lambda n: [0] * n, st.sampled_from((65535, 65536, 65537))),
        st.builds(lambda n: {str(i): None for i in range(n)}, st.sampled_from((65536, 65537))),
    )


@functools.cache
def envelopes(target: str) -> st.SearchStrategy[dict[Any, Any]]:
    return _envelopes(target)


@st.composite
def _envelopes(draw: Any, target: str) -> dict[Any, Any]:
    """A map shaped like an envelope, most often a request for a real op."""
    kind = draw(st.sampled_from(["req"] * 24 + ["res", "err", "note"] * 2
                                + ["bye", "hello", "other", "other"]))
    if kind == "other":
        kind = draw(st.one_of(texts(), ints(), st.none()))
    message: dict[Any, Any] = {"type": kind}
    fresh_or_any = st.one_of(st.just(FRESH), st.just(FRESH), st.just(FRESH), ints(),
                             st.none(), st.booleans(), texts())
    if kind in ("req", "res", "err"):
        message["id"] = draw(fresh_or_any if kind == "req" else st.one_of(
            st.just(THEIRS), st.just(THEIRS), ints(), st.none()))
    if kind in ("req", "note"):
        own = [op for op in OPS if op[0] in SERVES.get(target, ("sys", "evidence"))]
        service, op = draw(st.sampled_from(own + own + list(OPS)))
        message["service"] = draw(st.one_of(st.just(service), st.just(service), texts(),
                                            ints()))
        message["op"] = draw(st.one_of(st.just(op), st.just(op), texts(), st.none()))
        message["body"] = draw(st.one_of(values(outside=False), values(outside=False),
                                         values()))
    elif kind == "res":
        message["body"] = draw(values())
    elif kind == "err":
        message["code"] = draw(st.one_of(texts(), ints(), st.just("internal.error")))
        message["message"] = draw(st.one_of(texts(), st.none()))
        message["detail"] = draw(values())
    elif kind == "bye":
        message["reason"] = draw(st.one_of(texts(), ints()))
    elif kind == "hello":
        message.update(draw(hellos()))
    # One key missing, or one more, now and then.
    if draw(st.integers(0, 7)) == 0 and len(message) > 1:
        message.pop(draw(st.sampled_from(sorted(message, key=repr))))
    if draw(st.integers(0, 7)) == 0:
        message[draw(st.one_of(texts(), ints()))] = draw(values())
    return message


@functools.cache
def hellos() -> st.SearchStrategy[dict[Any, Any]]:
    return _hellos()


@st.composite
def _hellos(draw: Any) -> dict[Any, Any]:
    """A hello near the valid one: the buyer's, with fields replaced."""
    hello: dict[Any, Any] = make_hello("buyer", "buyer", ServiceRegistry(),
                                       ChannelConfig()).to_wire()
    for _ in range(draw(st.integers(0, 3))):
        key = draw(st.sampled_from(["type", "agent", "role", "version", "services", "limits",
                                    "extra"]))
        hello[key] = draw(st.one_of(
            values(),
            st.fixed_dictionaries({"max_frame": ints(), "max_in_flight": ints()}),
            st.dictionaries(texts(), st.fixed_dictionaries(
                {"version": ints(), "modules": st.lists(texts(), max_size=3)}), max_size=3),
        ))
    return hello


@functools.cache
def raw_frames() -> st.SearchStrategy[bytes]:
    """Bytes as they go on the wire, not necessarily a frame."""
    prefix = st.one_of(st.integers(0, 0xFFFFFFFF), st.integers(0, 64),
                       st.sampled_from([MAX_FRAME, MAX_FRAME + 1, 0xFFFFFFFF]))
    return st.one_of(
        st.binary(max_size=64),  # no frame at all
        st.builds(lambda n, b: n.to_bytes(4, "big") + b, prefix, st.binary(max_size=64)),
        st.builds(lambda b: len(b).to_bytes(4, "big") + b, st.binary(max_size=64)),
        st.builds(lambda b: len(b).to_bytes(4, "big") + b,
                  st.sampled_from([b"\xc1", b"\xc0\xc0", b"\x81", b"\x91\x91", b"\xd9\x05ab",
                                   b"\xdd\xff\xff\xff\xff", b"\xdf\xff\xff\xff\xff",
                                   b"\xc7\x01\x05a", b"\xca\x00\x00\x00\x00",
                                   b"\xd6\xff\x00\x00\x00\x01", b"\xd4\x80\x00"])),
    )


def frames(target: str, mutants: st.SearchStrategy[Any] | None, *, clean: bool
           ) -> st.SearchStrategy[Any]:
    """One frame: bytes to write as they are, or a value to pack and frame. A clean
    frame is a well-formed envelope (so the frames after it are read too)."""
    options = [envelopes(target)] * 3
    if mutants is not None:
        options += [mutants] * 4
    if not clean:
        options += [raw_frames(), values().map(lambda v: ("value", v))]
    return st.one_of(*options)


@dataclass
class Case:
    """One example: a target agent, a direction, an opening and frames."""

    target: str
    outbound: bool
    hello: Any  # None: the valid hello; else a fuzzed frame in its place
    frames: list[Any]
    truncate: int | None = None  # cut the last frame's bytes here
    #: outbound: what the agent asks of us (FLOWS), and our answer's body if any
    flow: str = "ping"
    answer: Any = None

    def __repr__(self) -> str:
        return (f"Case(target={self.target!r}, outbound={self.outbound}, "
                f"flow={self.flow!r}, hello={_short(self.hello)}, "
                f"answer={_short(self.answer, 1000)}, frames={_short(self.frames, 4000)}, "
                f"truncate={self.truncate})")


def _short(value: Any, limit: int = 400) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + f"...({len(text)} chars)"


#: What an agent asks of the peer on an outbound channel (Harness._ask): the op, whom
#: the peer poses as, and which agents ask it. "deposit": the seller deposits a real
#: buyer's cheque at its bank (the peer); "refund": the seller refunds a real buyer's
#: purchase (paid by transfer at the real bank) through its bank (the peer);
#: "catalogue": the buyer's Shopper reads a seller's catalogue (the peer); "lookup",
#: "lookup_role": the buyer asks its directory (the peer, posing as the CA agent) for
#: a card, or the cards of a role.
FLOWS: dict[str, tuple[tuple[str, str], str, tuple[str, ...]]] = {
    "ping": (("sys", "ping"), "buyer", TARGETS),
    "crl": (("certificates", "crl"), "buyer", TARGETS),
    "deliver": (("evidence", "deliver"), "buyer", TARGETS),
    "deposit": (("bank", "deposit_cheque"), "bank", ("seller",)),
    "refund": (("bank", "refund"), "bank", ("seller",)),
    "catalogue": (("commerce", "catalogue"), "seller", ("buyer",)),
    "lookup": (("directory", "lookup"), "ca", ("buyer",)),
    "lookup_role": (("directory", "lookup"), "ca", ("buyer",)),
    # The agent signs a contract with the buyer (the peer), whose m2 (or refusal) it
    # reads; an exchange that fails ends with the real notary.
    "contract": (("contract", "propose"), "buyer", ("bank", "seller", "ca", "arbiter")),
    # The buyer asks its CA (the peer) to reveal a pseudonym, citing a real case.
    "reveal": (("ca", "reveal"), "ca", ("buyer",)),
}
ROLES = {"buyer": "buyer", "bank": "bank", "seller": "seller", "ca": "ca"}


def cases(mutants: st.SearchStrategy[Any] | None = None, *, max_frames: int = 12,
          targets: tuple[str, ...] = TARGETS,
          answers: Callable[[str], st.SearchStrategy[Any]] | None = None
          ) -> st.SearchStrategy[Case]:
    """Cases against ``targets``; ``mutants`` perturbs recorded requests, ``answers``
    (by flow) recorded responses."""

    @st.composite
    def build(draw: Any) -> Case:
        target = draw(st.sampled_from(targets))
        # The buyer serves nothing worth fuzzing here: it is fuzzed as a client; the
        # enrollment listener only serves.
        outbound = target == "buyer" or (target != "enroll" and draw(st.integers(0, 3)) == 0)
        flow = draw(st.sampled_from(sorted(f for f, (_, _, who) in FLOWS.items()
                                           if target in who) or ["ping"]))
        answer = None
        if outbound and draw(st.integers(0, 2)) > 0:
            answer = draw(answers(flow) if answers is not None else values(outside=False))
            if flow == "contract" and draw(st.booleans()):
                answer = VALID_M2  # a true commitment: the case's frames come after it
        hello = None
        if draw(st.integers(0, 9)) == 0:
            hello = draw(st.one_of(hellos(), envelopes(target), raw_frames(),
                                   values().map(lambda v: ("value", v))))
        clean = draw(st.integers(0, 4)) > 1
        body = draw(st.lists(frames(target, mutants, clean=clean), min_size=1,
                             max_size=max_frames))
        truncate = draw(st.integers(0, 40)) if draw(st.integers(0, 15)) == 0 else None
        return Case(target=target, outbound=outbound, hello=hello, frames=body,
                    truncate=truncate, flow=flow, answer=answer)

    return build()


# -- valid bodies, perturbed ---------------------------------------------------------


@dataclass(frozen=True)
class Recorded:
    sender: str
    service: str
    op: str
    body: Any
    response: Any = None
    ok: bool = True  # False: refused (still a body that passed the sender's own checks)


def _notary_requests(recorded: list[Recorded]) -> list[Recorded]:
    """The notary's recovery ops, which an honest run never asks, built from what it
    sent: ``recover_mail`` (the buyer received a mail and holds its receipt),
    ``close_mail`` (the buyer's own offer), ``recover_goods`` (the buyer's fair
    purchase: its order, the sealed delivery, its payment)."""
    def last(service: str, op: str, sender: str) -> Recorded | None:
        found = [r for r in recorded if (r.service, r.op, r.sender) == (service, op, sender)
                 and r.ok]
        return found[-1] if found else None

    out = []
    to_buyer, from_buyer = last("mail", "deliver", "seller"), last("mail", "deliver", "buyer")
    if to_buyer is not None:
        out.append(Recorded("buyer", "notary", "recover_mail", {
            "offer": to_buyer.body["offer"], "receipt": to_buyer.response["receipt"],
            "ciphertext": to_buyer.body["ciphertext"]}))
    if from_buyer is not None:
        out.append(Recorded("buyer", "notary", "close_mail", {"offer": from_buyer.body["offer"]}))
    fetch, release = last("fair", "fetch", "buyer"), last("fair", "release", "buyer")
    orders = [r for r in recorded if (r.service, r.op, r.sender) == ("commerce", "order", "buyer")
              and r.ok and type(r.body) is dict]
    order = orders[-1].body.get("order") if orders else None
    if fetch is not None and release is not None and type(order) is dict:
        out.append(Recorded("buyer", "notary", "recover_goods", {
            "order": order, "delivery": fetch.response["delivery"],
            "ciphertext": fetch.response["ciphertext"], "payment": release.body["payment"]}))
    return out


MUTATIONS = ("type", "huge_int", "negative", "zero", "bytes_str", "missing", "extra", "empty",
             "long", "wrap", "any", "odd_text", "replay", "transplant", "transplant")


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if type(value) is dict:
        for key, child in value.items():
            out += _paths(child, (*prefix, key))
    elif type(value) is list:
        for i, child in enumerate(value[:8]):
            out += _paths(child, (*prefix, i))
    return out


def _get(value: Any, path: tuple[Any, ...]) -> Any:
    for step in path:
        value = value[step]
    return value


def _perturb(draw: Any, old: Any, how: str) -> Any:
    """The new value for one field (``missing`` and ``extra`` are handled by the caller)."""
    if how == "type":
        return draw(model_leaves().filter(lambda v: type(v) is not type(old)))
    if how == "huge_int":
        return draw(st.sampled_from([MAX_ID, 1 << 63, (1 << 64) - 1, -(1 << 63),
                                     99999999999999999999 % (1 << 64)]))
    if how == "negative":
        return -old if type(old) is int and old > 0 else -1
    if how == "zero":
        return 0
    if how == "bytes_str":
        if type(old) is bytes:
            return old.decode("latin-1")
        if type(old) is str:
            return old.encode()
        return draw(st.sampled_from([b"", "", b"x", "x"]))
    if how == "empty":
        return draw(st.sampled_from(["", b"", [], {}, None]))
    if how == "long":
        n = draw(st.sampled_from((*_SIZES, 1 << 16, 1 << 19)))
        return (old[:1] or b"x") * n if type(old) is bytes else "x" * n
    if how == "wrap":
        return draw(st.sampled_from([[old], {"value": old}]))
    if how == "odd_text":
        base = old if type(old) is str else "x"
        return draw(st.sampled_from([base.upper(), base + "\u200b", " " + base, base + "\x00",
                                     "../" + base, base * 3, "\u0130" + base]))
    return draw(values(outside=draw(st.booleans())))


class Signers:
    """Every agent key of the market, by certificate fingerprint: a perturbed
    statement is signed again by whoever signed the original."""

    def __init__(self, credentials: list[Credentials]) -> None:
        self._by_fp = {fingerprint(c.identity.certificate): c for c in credentials}
        #: every value in the recorded messages, by kind (``transplant``): an exchange
        #: id, a receipt or a payment of one exchange carried into another's request
        self.values: dict[str, list[Any]] = {}

    def learn(self, recorded: list[Recorded]) -> None:
        seen: set[bytes] = set()
        for record in recorded:
            for message in (record.body, record.response):
                for path in _paths(message):
                    value = _get(message, path)
                    key = msgpack.packb(value, use_bin_type=True)
                    if len(key) <= 1 << 14 and key not in seen:
                        seen.add(key)
                        self.values.setdefault(_kind(value), []).append(value)

    def resign(self, statement: dict[str, Any]) -> dict[str, Any] | None:
        credentials = self._by_fp.get(statement.get("signer"))  # type: ignore[arg-type]
        if credentials is None:
            return None
        try:
            signed = sign_statement(
                statement["type"], statement["body"], key=credentials.key,
                certificate=credentials.identity.certificate, now_ms=time.time_ns() // 10**6,
                nonce=os.urandom(16))
        except Exception:  # a body outside the statement model: leave it unsigned
            return None
        return signed.to_wire()


def _kind(value: Any) -> str:
    """What may stand for ``value`` in a transplant: same type, same size of bytes,
    a statement for a statement."""
    if type(value) is bytes:
        return f"bytes{len(value)}"
    if type(value) is dict and STATEMENT_KEYS <= value.keys():
        return "statement"
    return type(value).__name__


def mutants(recorded: list[Recorded], signers: Signers, target: str | None = None
            ) -> st.SearchStrategy[Any]:
    """A request for a real op whose body is a recorded valid one with one field
    perturbed; each statement around the change signed again (or not)."""
    pool = [r for r in recorded if target is None or r.service in SERVES[target]] or recorded

    @st.composite
    def build(draw: Any) -> dict[str, Any]:
        record = draw(st.sampled_from(pool))
        body = perturbed(draw, record.body, signers)
        return {"type": "req", "id": FRESH, "service": record.service, "op": record.op,
                "body": body}

    return build()


def answer_mutants(recorded: list[Recorded], signers: Signers, service: str, op: str
                   ) -> st.SearchStrategy[Any]:
    """A response body for ``service.op``: a recorded valid one, one field perturbed
    (or, with no recording, any value)."""
    pool = [r.response for r in recorded if (r.service, r.op) == (service, op) and r.ok]
    if not pool:
        return values(outside=False)

    @st.composite
    def build(draw: Any) -> Any:
        return perturbed(draw, draw(st.sampled_from(pool)), signers)

    return build()


def perturbed(draw: Any, original: Any, signers: Signers) -> Any:
    """A copy of ``original`` with one field changed (or removed, or one added), and
    (mostly) each statement around the change signed again by its real signer."""
    body = copy.deepcopy(original)
    path = draw(st.sampled_from(_paths(body)))
    how = draw(st.sampled_from(MUTATIONS))
    if how == "replay":  # as it was: the same exchange asked again, after other cases
        return body
    if not path:
        return _perturb(draw, body, how)
    parent = _get(body, path[:-1])
    last = path[-1]
    if how == "transplant":  # a value of the same type from another recorded message
        old = parent[last]
        pool = [v for v in signers.values.get(_kind(old), ()) if v != old]
        parent[last] = copy.deepcopy(draw(st.sampled_from(pool))) if pool else old
    elif how == "missing":
        del parent[last]
    elif how == "extra" and type(parent) is dict:
        parent[draw(texts())] = draw(model_leaves())
    else:
        parent[last] = _perturb(draw, parent[last], how)
    if draw(st.integers(0, 3)) > 0:
        _resign_around(body, path, signers)
    return body


def _resign_around(body: Any, path: tuple[Any, ...], signers: Signers) -> None:
    """Sign again every statement map on ``path`` whose ``body`` holds the change,
    innermost first."""
    for depth in range(len(path) - 1, -1, -1):
        node = _get(body, path[:depth])
        if (type(node) is dict and STATEMENT_KEYS <= node.keys() and depth < len(path)
                and path[depth] == "body"):
            fresh = signers.resign(node)
            if fresh is None:
                return
            node.clear()
            node.update(fresh)


# -- encoding a case, and what the agent must answer ---------------------------------


def pack(frame: Any) -> bytes:
    """The wire bytes of one frame of a case (never raises)."""
    if type(frame) is bytes:
        return frame
    value = frame[1] if type(frame) is tuple else frame
    try:
        body = msgpack.packb(value, use_bin_type=True)
    except Exception:
        return b""
    return len(body).to_bytes(4, "big") + body


def resolve_ids(frames: list[Any], start: int, theirs: Any = 1) -> tuple[list[Any], int]:
    """Replace FRESH request ids by increasing ones from ``start``, and THEIRS by
    ``theirs``."""
    out = []
    next_id = start
    for frame in frames:
        if type(frame) is dict and frame.get("id") == FRESH:
            frame = {**frame, "id": next_id}
            next_id += 1
        elif type(frame) is dict and frame.get("id") == THEIRS:
            frame = {**frame, "id": theirs}
        elif type(frame) is dict and type(frame.get("id")) is int and frame["id"] >= next_id:
            next_id = min(frame["id"] + 1, MAX_ID)
        out.append(frame)
    return out, next_id


def ping_frame(rid: int) -> bytes:
    return encode_frame({"type": "req", "id": rid, "service": "sys", "op": "ping",
                         "body": b"fuzz"})


@dataclass
class Expectation:
    """What the agent will answer to the bytes we send, by its own decoder."""

    answers: Counter[Any]  # request id (or None) -> how many answers
    requests: dict[int, Any]  # request id -> the request, for the report
    ends: str  # "open": everything read; "closes": it will close; "waits": mid-frame


def expected_answers(data: bytes, limits: CodecLimits) -> Expectation:
    decoder = FrameDecoder(limits)
    decoder.feed(data)
    answers: Counter[Any] = Counter()
    requests: dict[int, Any] = {}
    while True:
        try:
            obj = decoder.next_object()
        except ProtocolError:
            return Expectation(answers, requests, "closes")
        if obj is NEED_DATA:
            return Expectation(answers, requests, "waits" if decoder.buffered else "open")
        try:
            message = parse_message(obj)
        except BadMessage as exc:
            answers[exc.detail.get("id")] += 1
            continue
        kind = type(message)
        if kind is Request:
            answers[message.id] += 1
            requests.setdefault(message.id, obj)
        elif kind is Bye or kind is Hello:
            return Expectation(answers, requests, "closes")


# -- the harness -----------------------------------------------------------------------


class NotaryWatch:
    """Findings in the notary's own tables: two decisions for one exchange (by
    ``fairexchange.conflict``), and its decisions or its timestamp tree heads no
    longer a hash chain (each names the one before it, numbers one apart). Fed the
    rows added since the last look (``read`` in the notary's database)."""

    def __init__(self) -> None:
        self.decisions: dict[tuple[bytes, str], Statement] = {}
        self.seq, self.head = 0, bytes(32)
        self.tree: tuple[int, bytes] | None = None  # the last head's sequence and id

    def read(self, c: Any) -> tuple[list[Any], list[Any]]:
        sequence = -1 if self.tree is None else self.tree[0]
        return (c.execute("SELECT seq, statement FROM notary_decisions WHERE seq > ? "
                          "ORDER BY seq", (self.seq,)).fetchall(),
                c.execute("SELECT sequence, statement FROM timestamp_heads "
                          "WHERE sequence > ? ORDER BY sequence", (sequence,)).fetchall())

    def feed(self, decisions: list[tuple[int, bytes]], heads: list[tuple[int, bytes]]
             ) -> list[str]:
        findings = []
        for row_seq, data in decisions:
            statement = Statement.from_bytes(data)
            body = DecisionBody.from_statement(statement)
            if (row_seq, body.seq, body.previous) != (self.seq + 1, self.seq + 1, self.head):
                findings.append(f"notary decision chain does not link at seq {row_seq}: "
                                f"seq {body.seq}, previous {body.previous.hex()[:16]} after "
                                f"seq {self.seq}, head {self.head.hex()[:16]}")
            other = self.decisions.setdefault((body.exchange, body.initiator), statement)
            found = conflict(other, statement) if other is not statement else None
            if found is not None:
                first = DecisionBody.from_statement(other).decision
                findings.append(f"notary signed two decisions ({found.reason}) for exchange "
                                f"{body.exchange.hex()[:16]}: {first} and {body.decision}")
            self.seq, self.head = row_seq, statement.digest
        for row_sequence, data in heads:
            tree = TreeHead.from_statement(Statement.from_bytes(data))
            previous = NO_PREVIOUS if self.tree is None else self.tree[1]
            expected = 0 if self.tree is None else self.tree[0] + 1
            if (row_sequence, tree.sequence, tree.previous) != (expected, expected, previous):
                findings.append(f"timestamp chain does not link at head {row_sequence}: "
                                f"sequence {tree.sequence}, previous {tree.previous.hex()[:16]}"
                                f", expected {expected} after {previous.hex()[:16]}")
            self.tree = (row_sequence, tree.id)
        return findings


@dataclass
class Report:
    cases: int = 0
    frames: int = 0
    inbound_frames: int = 0
    outbound_frames: int = 0
    answers: int = 0
    codes: Counter[str] = field(default_factory=Counter)
    findings: list[str] = field(default_factory=list)
    #: (frames sent so far, resident set size in MiB) after each round of the long run
    rss: list[tuple[int, float]] = field(default_factory=list)


def rss_mib() -> float:
    """This process's resident set size now (Linux), in MiB."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return 0.0
    return round(pages * os.sysconf("SC_PAGE_SIZE") / (1 << 20), 1)


class Findings(logging.Handler):
    """Log records at ERROR or above from semper's loggers."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith("semper"):
            self.records.append(record)


def _stock_stream(seller: Path) -> None:
    """Add ``STREAM_SKU`` to the seller's catalogue on disk, before it starts."""
    (seller / "goods" / f"{STREAM_SKU}.bin").write_bytes(STREAM_CONTENT)
    with (seller / "catalogue.toml").open("a", encoding="utf-8") as f:
        f.write(f'\n[[offer]]\nsku = "{STREAM_SKU}"\ntitle = "A clip"\nterms = "streamed"\n'
                f'goods = "goods/{STREAM_SKU}.bin"\nvalid_days = 30\nstream = {{ chunk_size'
                f' = {STREAM_CHUNK}, price_per_chunk = "EUR:1" }}\n')


class Harness:
    """The market and its agents, in a trio loop in a thread of its own.

    ``start()`` returns once the agents run; ``play(case)`` plays one case there and
    returns the findings of that case (``[]`` when none); ``stop()`` ends it all.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.report = Report()
        self.recorded: list[Recorded] = []
        self.agents: dict[str, Agent] = {}
        self.dead: dict[str, BaseException] = {}
        self._token: trio.lowlevel.TrioToken | None = None
        self._ready = threading.Event()
        self._failed: BaseException | None = None
        self._stop: trio.Event | None = None
        self._thread: threading.Thread | None = None
        self._server_tls: dict[str, Any] = {}
        self._waiting: dict[str, trio.MemorySendChannel[Any]] = {}
        self.buyer: Agent | None = None
        self.payer: Agent | None = None
        self._sku = ""
        self._case: Statement | None = None  # the arbiter's case, recorded at start
        self.log = Findings()
        self.signers: Signers | None = None
        self._delivered = 0
        self.notary_watch = NotaryWatch()  # the notary's books as read so far
        self._limits = CodecLimits(max_frame=MAX_FRAME, max_str=MAX_FRAME, max_bin=MAX_FRAME)

    # -- lifecycle, from the caller's thread

    def start(self) -> None:
        logging.getLogger("semper").addHandler(self.log)
        self._thread = threading.Thread(target=self._thread_main, name="fuzz-market",
                                        daemon=True)
        self._thread.start()
        self._ready.wait(120)
        if self._failed is not None:
            raise RuntimeError("the market did not start") from self._failed
        if self._token is None:
            raise RuntimeError("the market did not start within 120 s")

    def stop(self) -> None:
        if self._token is not None and self._stop is not None:
            trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
        if self._thread is not None:
            self._thread.join(60)
        logging.getLogger("semper").removeHandler(self.log)

    def play(self, case: Case) -> list[str]:
        assert self._token is not None
        return trio.from_thread.run(self._play, case, trio_token=self._token)

    def run(self, function: Callable[..., Any], *args: Any) -> Any:
        """``await function(*args)`` in the market's trio loop (for tests)."""
        assert self._token is not None
        return trio.from_thread.run(function, *args, trio_token=self._token)

    def mutants(self, target: str | None = None) -> st.SearchStrategy[Any]:
        assert self.signers is not None
        return mutants(self.recorded, self.signers, target)

    def answers(self, flow: str) -> st.SearchStrategy[Any]:
        assert self.signers is not None
        return answer_mutants(self.recorded, self.signers, *FLOWS[flow][0])

    def cases(self, target: str) -> st.SearchStrategy[Case]:
        mutants = self.mutants(target) if target in SERVES else None
        if target == "enroll":  # one request per connection
            return cases(mutants, targets=(target,), max_frames=1, answers=self.answers)
        return cases(mutants, targets=(target,), answers=self.answers)

    def _thread_main(self) -> None:
        try:
            trio.run(self._main)
        except BaseException as exc:
            self._failed = exc
            self._ready.set()

    # -- in the trio thread

    def config(self, agent_id: str, **changes: Any) -> AgentConfig:
        config = AgentConfig.load(self.folder / agent_id / "agent.toml")
        return dataclasses.replace(config, **changes) if changes else config

    def credentials(self, agent_id: str) -> Credentials:
        c = self.config(agent_id)
        return Credentials.load(cert=c.cert, key=c.key, root=c.ca_root, crl=c.crl)

    async def _main(self) -> None:
        self._stop = trio.Event()
        init_market(self.folder)
        _stock_stream(self.folder / "seller")
        everyone = ("ca", "bank", "seller", "buyer", "notary", "arbiter")
        self.signers = Signers([self.credentials(a) for a in everyone])
        buyer = self.credentials("buyer")
        self._client_tls = TlsContexts(buyer.tls_config()).client
        self._anonymous_tls = ssl.create_default_context()
        self._anonymous_tls.check_hostname = False
        self._anonymous_tls.verify_mode = ssl.CERT_NONE
        self._anonymous_tls.minimum_version = ssl.TLSVersion.TLSv1_3
        async with trio.open_nursery() as nursery:
            # One listener for each identity the peer poses as on outbound channels.
            addresses = {}
            for identity in ROLES:
                tls = TlsContexts(self.credentials(identity).tls_config()).server
                listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
                port = listeners[0].socket.getsockname()[1]
                addresses[identity] = f"127.0.0.1:{port}"
                self._server_tls[identity] = tls
                nursery.start_soon(trio.serve_listeners,
                                   functools.partial(self._on_accept, identity), listeners)
            await self._record_valid_bodies(nursery)
            # The CA first: the others publish there.
            for name in ("ca", "bank", "seller", "notary", "arbiter"):
                config = self.config(name)
                # The agents reach "buyer" at the peer, and the seller its bank.
                peers = {**config.peers, "buyer": addresses["buyer"]}
                if name == "seller":
                    peers["bank"] = addresses["bank"]
                agent = Agent(dataclasses.replace(config, peers=peers))
                self.agents[name] = agent
                await nursery.start(self._keep, agent)
                SERVES[name] = tuple(sorted({s for s, _ in agent.registry.ops()}))
            # The buyer, as a client only, whose seller is the peer; and a second
            # buyer (same identity, real seller) that pays the seller by cheque.
            config = self.config("buyer")
            self.buyer = Agent(dataclasses.replace(config, peers={
                **config.peers, "seller": addresses["seller"], "ca": addresses["ca"]}))
            await nursery.start(self._session, self.buyer)
            self.payer = Agent(self.config("buyer"))
            await nursery.start(self._session, self.payer)
            self._token = trio.lowlevel.current_trio_token()
            self._ready.set()
            await self._stop.wait()
            with trio.CancelScope(shield=True), trio.move_on_after(10):
                for agent in self.agents.values():
                    if agent.running:
                        await agent.close_channels()
            nursery.cancel_scope.cancel()

    async def _session(self, agent: Agent, *,
                       task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with agent.session():
            task_status.started()
            await trio.sleep_forever()

    async def _keep(self, agent: Agent, *,
                    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run one agent; if it ever stops, that is a finding (the others go on)."""
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(agent.run)
                task_status.started()
        except BaseException as exc:
            self.dead[agent.id] = exc
            if isinstance(exc, trio.Cancelled):
                raise
        else:
            self.dead[agent.id] = RuntimeError("the agent returned")

    async def _record_valid_bodies(self, nursery: trio.Nursery) -> None:
        """Run the market once with the honest buyer, recording every request body
        any agent sends: the bodies the mutants start from."""
        original = channel_module.Channel.request
        recorded = self.recorded = []

        async def recording(channel: Any, service: str, op: str, body: Any = None,
                            **kwargs: Any) -> Any:
            sent = copy.deepcopy(body)
            try:
                response = await original(channel, service, op, body, **kwargs)
            except Exception:  # a refusal the recording provokes on purpose (an abort)
                recorded.append(Recorded(channel.our_hello.agent, service, op, sent, ok=False))
                raise
            recorded.append(Recorded(channel.our_hello.agent, service, op, sent,
                                     copy.deepcopy(response)))
            return response

        channel_module.Channel.request = recording  # type: ignore[method-assign]
        try:
            async with AsyncExitStack() as stack:
                names = ("ca", "bank", "seller", "notary", "arbiter", "buyer")
                agents = {name: Agent(self.config(name)) for name in names}
                for agent in agents.values():
                    await stack.enter_async_context(_running(agent))
                buyer = agents["buyer"]
                shopper = Shopper(buyer)
                catalogue, _ = await shopper.catalogue("seller")
                sku = self._sku = catalogue.offers[0].body["sku"]
                await shopper.buy("seller", sku, "transfer", "fuzz-transfer")
                await shopper.buy("seller", sku, "cheque", "fuzz-cheque")
                await shopper.refund("fuzz-transfer")
                for module in ("purse", "transfer"):  # the delivery channel, the purse
                    await Shopper(buyer, output=self.folder / f"fuzz-{module}.bin").buy(
                        "seller", STREAM_SKU, module, f"fuzz-stream-{module}")
                await buyer.request("bank", "bank", "account", {})
                await buyer.request("bank", "bank", "stop_cheque", {"serial": "never-drawn"})
                note = buyer.evidence.sign("test.note", {"text": "recorded"})
                await buyer.evidence.deliver("seller", "buyer/fuzz", note)
                await buyer.request("ca", "certificates", "status", {"agent": "seller"})
                await buyer.request("ca", "certificates", "crl", {"known": 0})
                await buyer.request("ca", "directory", "lookup", {"agent": "seller"})
                await buyer.request("ca", "directory", "lookup", {"role": "bank"})
                await buyer.request("seller", "payment", "capabilities", {})
                await self._record_notary_bodies(agents, sku)
                for n in range(3):  # enrollment requests, with tokens good for one use
                    self.recorded.append(Recorded("newbie", "enroll", "request",
                                                  self._enroll_request(f"newbie{n}")))
        finally:
            channel_module.Channel.request = original  # type: ignore[method-assign]
        # Keep the buyer's own bodies, and the others' ones for their services.
        self.recorded = [r for r in self.recorded if r.service != "sys"]
        assert self.signers is not None
        self.signers.learn(self.recorded)

    async def _record_notary_bodies(self, agents: dict[str, Agent], sku: str) -> None:
        """The notary's, the arbiter's and the CA's new ops, each reached once by an
        honest run: a contract signed, one aborted (the text not approved) and one
        resolved (the originator stops before revealing and resumes), a certified
        mail, a fair purchase, a timestamp, the contract's bundle filed with the
        arbiter, and the arbiter's reveal request citing that case."""
        buyer, seller, arbiter = agents["buyer"], agents["seller"], agents["arbiter"]
        contracts = buyer.component(Contracts)
        signed_text, resolved_text = b"fuzz: signed\n", b"fuzz: resolved\n"
        for text in (signed_text, resolved_text):
            await seller.component(Contracts).approve("buyer", text)
        view = await contracts.sign("seller", signed_text)
        with contextlib.suppress(Exception):  # not approved: aborted with the notary
            await contracts.sign("seller", b"fuzz: never approved\n")

        class _Stop(Exception):
            pass

        async def stop(*args: Any) -> Any:
            raise _Stop()

        contracts._reveal = stop  # type: ignore[method-assign]
        try:
            with contextlib.suppress(_Stop):
                await contracts.sign("seller", resolved_text)
        finally:
            del contracts._reveal  # type: ignore[attr-defined]
        for exchange in await contracts.in_flight():
            await contracts.resume(exchange)
        await buyer.component(CertifiedMail).send("seller", b"fuzz: certified mail")
        await seller.component(CertifiedMail).send("buyer", b"fuzz: mail to the buyer")
        await FairShopper(buyer, notary="notary", wait_ms=10_000).buy_fair(
            "seller", sku, "transfer", "fuzz-fair")
        await buyer.context.call("notary", TIMESTAMP_REQUEST,
                                 TimestampRequest(digest=hashlib.sha256(b"fuzz").digest()))
        await buyer.request("ca", "ca", "reveals", {})
        name = view.exchange.hex()
        records = await buyer.database.read(lambda c: _archive.bundle_records(c, name))
        certificates = await buyer.database.read(_archive.read_certificates)
        bundle = collect_bundle(records, transaction=name, certificates=certificates,
                                crl=buyer.crl, root=buyer.credentials.root)
        answer = FileAnswer.from_wire(await buyer.request("arbiter", "dispute", "file", FileRequest(
            bundle=bundle.to_bytes()).to_wire()))
        self._case = Statement.from_wire(answer.verdict.body["case_statement"])
        with contextlib.suppress(Exception):  # "buyer" is no pseudonym: refused, recorded
            await request_reveal(arbiter.context, "buyer", self._case)
        self.recorded += _notary_requests(self.recorded)

    def _enroll_request(self, agent_id: str) -> dict[str, Any]:
        token = invite_agent(self.folder, agent_id, role="buyer",
                             level=Level.VERIFIED_CONTACT).token
        csr = make_csr(ed25519.Ed25519PrivateKey.generate(), token.agent_id)
        return EnrollRequest(token_id=token.token_id, csr_der=csr, proof=enrollment_proof(
            token.secret, token.token_id, csr)).to_wire()

    async def _on_accept(self, identity: str, tcp: trio.SocketStream) -> None:
        done = trio.Event()
        waiting = self._waiting.get(identity)
        if waiting is None:  # no case asked for it (say, a cheque of an inbound case)
            await trio.aclose_forcefully(tcp)
            return
        try:
            waiting.send_nowait((tcp, done))
        except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
            await trio.aclose_forcefully(tcp)
            return
        await done.wait()  # the case owns the connection until it is done with it

    async def _play(self, case: Case) -> list[str]:
        findings: list[str] = []
        self.log.records.clear()
        before = await self._books()
        with trio.move_on_after(CASE_DEADLINE) as scope:
            try:
                if case.target == "enroll":
                    money = await self._enroll(case, findings)
                elif case.outbound:
                    money = await self._outbound(case, findings)
                else:
                    money = await self._inbound(case, findings)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                money = True  # the agent hung up: we cannot know what it did
        if scope.cancelled_caught:
            findings.append(f"hang: the case did not end within {CASE_DEADLINE:g}s")
            money = True
        await self._check_alive("ca" if case.target == "enroll" else case.target, findings)
        after = await self._books()
        if not after["balanced"]:
            findings.append(f"books out of balance: {after['balanced']}")
        if not money and after["balances"] != before["balances"]:
            findings.append("balances changed though no money-moving request succeeded")
        findings += await self._notary_findings()
        for record in self.log.records:
            findings.append(f"log {record.levelname} {record.name}: {record.getMessage()}"
                            + (" (with traceback)" if record.exc_info else ""))
        self.report.cases += 1
        self.report.findings.extend(findings)
        return findings

    async def _books(self) -> dict[str, Any]:
        def read(c: Any) -> dict[str, Any]:
            try:
                _ledger.check_books(c)
                balanced: Any = True
            except Exception as exc:
                balanced = repr(exc)
            return {"balanced": balanced, "balances": sorted(c.execute(
                "SELECT holder, currency, balance FROM ledger_accounts"))}

        bank = self.agents["bank"]
        if not bank.running:
            return {"balanced": True, "balances": None}
        return await bank.database.read(read)

    async def _notary_findings(self) -> list[str]:
        """The notary's books after a case (``NotaryWatch``), rows added since the
        last look only."""
        notary = self.agents.get("notary")
        if notary is None or not notary.running:
            return []
        watch = self.notary_watch
        return watch.feed(*await notary.database.read(watch.read))

    async def _check_alive(self, target: str, findings: list[str]) -> None:
        for name, exc in self.dead.items():
            findings.append(f"agent {name} stopped: {exc!r}")
        if self.dead or target not in self.agents:
            return
        agent = self.agents[target]
        assert agent.address is not None
        try:
            with trio.fail_after(PING_DEADLINE):
                stream = await self._dial(agent.address)
                try:
                    decoder = FrameDecoder(self._limits)
                    await _next(stream, decoder)  # their hello
                    await stream.send_all(encode_frame(self._hello()) + ping_frame(1))
                    answer = await _next(stream, decoder)
                finally:
                    await trio.aclose_forcefully(stream)
            if not (type(answer) is dict and answer.get("type") == "res"):
                findings.append(f"{target} answered a fresh ping with {_short(answer)}")
        except (trio.TooSlowError, trio.BrokenResourceError, OSError) as exc:
            findings.append(f"{target} did not answer a fresh channel's ping within "
                            f"{PING_DEADLINE:g}s: {exc!r}")

    def _hello(self, identity: str = "buyer") -> dict[str, Any]:
        return make_hello(identity, ROLES[identity], ServiceRegistry(),
                          ChannelConfig()).to_wire()

    async def _dial(self, address: tuple[str, int]) -> trio.SSLStream[Any]:
        tcp = await trio.open_tcp_stream(*address)
        stream = trio.SSLStream(tcp, self._client_tls, server_side=False)
        await stream.do_handshake()
        return stream

    def _opening(self, case: Case, identity: str = "buyer") -> bytes:
        if case.hello is None:
            return encode_frame(self._hello(identity))
        frame, _ = resolve_ids([case.hello], 1)
        return pack(frame[0])

    def _body(self, case: Case, first_id: int, theirs: Any = 1) -> tuple[bytes, int, int]:
        """The case's frames as bytes, the sentinel ping's id, and the frame count."""
        frames, next_id = resolve_ids(case.frames, first_id, theirs)
        parts = [pack(f) for f in frames]
        if case.truncate is not None and parts:
            parts[-1] = parts[-1][:case.truncate]
        sentinel = max(next_id, 1)
        parts.append(ping_frame(sentinel))
        return b"".join(parts), sentinel, len(parts)

    async def _enroll(self, case: Case, findings: list[str]) -> bool:
        """The CA's enrollment listener: TLS without a client certificate, then one
        request, one answer, and the CA closes."""
        address = self.agents["ca"].component(CertificationAuthority).enroll_address
        tcp = await trio.open_tcp_stream(*address)
        stream = trio.SSLStream(tcp, self._anonymous_tls, server_side=False)
        try:
            await stream.do_handshake()
            opening = b"" if case.hello is None else self._opening(case)
            data, _sentinel, count = self._body(case, 1)
            self.report.inbound_frames += count
            self.report.frames += count
            first = FrameDecoder(CodecLimits(max_frame=1 << 16, max_str=1 << 16,
                                             max_bin=1 << 16))
            first.feed(opening + data)
            try:
                whole = first.next_object() is not NEED_DATA
            except ProtocolError:
                whole = True  # refused at once
            await _send(stream, opening + data)
            if not whole:
                return False  # it waits for the rest of a frame we never send
            decoder = FrameDecoder(self._limits)
            answer = await _next(stream, decoder)
            if type(answer) is dict and answer.get("type") == "err":
                self.report.codes[str(answer.get("code"))] += 1
                if answer.get("code") == "internal.error":
                    findings.append(f"internal.error from the enrollment listener: "
                                    f"{answer.get('message')!r}")
            elif type(answer) is dict and answer.get("type") == "res":
                self.report.codes["ok"] += 1
            if await _next(stream, decoder) is not None:
                findings.append("the enrollment listener sent more than one frame")
            return False
        finally:
            await trio.aclose_forcefully(stream)

    async def _inbound(self, case: Case, findings: list[str]) -> bool:
        agent = self.agents[case.target]
        assert agent.address is not None
        stream = await self._dial(agent.address)
        try:
            decoder = FrameDecoder(self._limits)
            their = await _next(stream, decoder)
            if not (type(their) is dict and their.get("type") == "hello"):
                findings.append(f"{case.target} opened with {_short(their)}")
                return False
            opening = self._opening(case)
            data, _sentinel, count = self._body(case, 1)
            self.report.inbound_frames += count + 1
            self.report.frames += count + 1
            expect = expected_answers(data, self._limits)
            if case.hello is not None:
                # Its hello exchange refuses what is not a valid hello, as fatal.
                expect = self._after_fuzzed_hello(opening, data)
            await _send(stream, opening + data)
            return await self._collect(stream, decoder, expect, findings, case.target)
        finally:
            await trio.aclose_forcefully(stream)

    def _after_fuzzed_hello(self, opening: bytes, data: bytes, identity: str = "buyer"
                            ) -> Expectation:
        decoder = FrameDecoder(self._limits)
        decoder.feed(opening)
        obj: Any = None
        try:
            obj = decoder.next_object()
            hello = parse_message(obj) if obj is not NEED_DATA else None
        except ProtocolError:
            hello = None
        if obj is NEED_DATA:
            return Expectation(Counter(), {}, "waits")
        valid = (type(hello) is Hello and hello.agent == identity
                 and hello.role == ROLES[identity]
                 and hello.version == 1 and 4096 <= hello.limits.max_frame <= 0xFFFFFFFF
                 and hello.limits.max_in_flight >= 1 and decoder.buffered == 0)
        if not valid:
            return Expectation(Counter(), {}, "closes")
        return expected_answers(data, self._limits)

    async def _collect(self, stream: Any, decoder: FrameDecoder, expect: Expectation,
                       findings: list[str], target: str, *,
                       on_request: Callable[[Any], Any] | None = None) -> bool:
        """Read the agent's answers until every expected one came (or it closed).
        Returns whether a money-moving request may have succeeded."""
        waiting = Counter(expect.answers)
        money = False
        while expect.ends == "closes" or +waiting:
            obj = await _next(stream, decoder)
            if obj is None:
                break
            if type(obj) is not dict:
                findings.append(f"{target} sent a frame that is not a map: {_short(obj)}")
                continue
            kind = obj.get("type")
            if kind == "req" and on_request is not None:
                await on_request(obj)
                continue
            if kind not in ("res", "err"):
                continue
            self.report.answers += 1
            rid = obj.get("id")
            if waiting[rid] > 0:
                waiting[rid] -= 1
            request = expect.requests.get(rid) if type(rid) is int else None
            if kind == "err":
                code = obj.get("code")
                self.report.codes[str(code)] += 1
                if code == "internal.error":
                    findings.append(
                        f"internal.error from {target} for "
                        f"{_short(request, 1500)}: {obj.get('message')!r}")
            elif request is not None and (request.get("service"), request.get("op")) in MONEY_OPS:
                money = True
                self.report.codes["ok"] += 1
            else:
                self.report.codes["ok"] += 1
        if expect.ends == "waits":
            pass  # it waits for the rest of a frame we never send: we hang up
        return money

    async def _outbound(self, case: Case, findings: list[str]) -> bool:
        """The target dials us (it thinks we are the buyer) for a request of its own."""
        agent = self.buyer if case.target == "buyer" else self.agents[case.target]
        assert agent is not None
        _op, identity, _ = FLOWS[case.flow]
        old = agent._outbound.get(identity)
        if old is not None:
            await old.aclose("fuzz: next case")
        outcome: list[Any] = []

        async def ask() -> None:
            try:
                outcome.append(await self._ask(agent, case.flow))
            except Exception as exc:
                outcome.append(exc)
            finally:
                send.close()  # no connection will come now

        money = False
        send, receive = trio.open_memory_channel[Any](1)
        self._waiting[identity] = send
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(ask)
                try:
                    tcp, done = await receive.receive()
                except trio.EndOfChannel:
                    tcp = None  # it gave up before dialing (refused the cheque, say)
                # One connection a case: the agent dialing again (a contract's reveal
                # after we hung up) is refused at once, not left unanswered.
                self._waiting.pop(identity, None)
                if tcp is not None:
                    try:
                        stream = trio.SSLStream(tcp, self._server_tls[identity],
                                                server_side=True)
                        try:
                            money = await self._serve_case(stream, case, findings, identity)
                        except (trio.BrokenResourceError, trio.ClosedResourceError):
                            money = False  # it hung up in the handshake: nothing served
                        finally:
                            await trio.aclose_forcefully(stream)
                    finally:
                        done.set()
        finally:
            self._waiting.pop(identity, None)
        money = money or case.flow == "refund"  # it bought at the real bank first
        result = outcome[0] if outcome else None
        if isinstance(result, BaseException) and not isinstance(
                getattr(result, "code", None), str):
            findings.append(f"{case.target}'s request to the fuzzer raised {result!r} "
                            "(no stable code)")
        return money

    async def _ask(self, agent: Agent, flow: str) -> Any:
        """The agent's own request to the peer, through the code that reads the answer."""
        if flow == "catalogue":
            return await Shopper(agent).catalogue("seller")
        if flow == "lookup":
            return await agent.peers.lookup("notary")
        if flow == "lookup_role":
            return await agent.peers.lookup_role("bank")
        if flow == "contract":
            self._delivered += 1
            return await agent.component(Contracts).sign(
                "buyer", f"fuzz contract {self._delivered}\n".encode(), notary="notary")
        if flow == "reveal":
            assert self._case is not None
            return await request_reveal(agent.context, "buyer", self._case)
        if flow == "deposit":
            # The real buyer pays the seller by cheque; the seller deposits it at us.
            self._delivered += 1
            assert self.payer is not None
            return await Shopper(self.payer).buy("seller", self._sku, "cheque",
                                                 f"fuzz-deposit-{self._delivered}")
        if flow == "refund":
            self._delivered += 1
            assert self.payer is not None
            key = f"fuzz-refund-{self._delivered}"
            bank = self.agents["bank"]
            await bank.database.transaction(lambda c: _ledger.mint(
                c, "buyer", Amount("EUR", 100_000), time_ms=time.time_ns() // 10**6))
            shopper = Shopper(self.payer)
            await shopper.buy("seller", self._sku, "transfer", key)
            return await shopper.refund(key)
        if flow == "crl":
            return await agent._fetch_crl("buyer")  # as if the buyer were its CA agent
        if flow == "deliver":
            self._delivered += 1
            note = agent.evidence.sign("fuzz.note", {"n": self._delivered})
            return await agent.evidence.deliver("buyer", f"{agent.id}/fuzz-{self._delivered}",
                                                note)
        return await agent.request("buyer", "sys", "ping", b"out")

    def _commit(self, request: Any, stream: trio.SSLStream[Any]) -> Any:
        """A real responder's answer to the agent's ``contract.propose`` (the buyer
        commits to any text): the originator then reveals, and the case's frames
        follow; it ends with the notary (resolve) when they are no N_R."""
        try:
            body = request["body"]
            m1 = Statement.from_wire(body["m1"])
            originator = load_certificate(stream.getpeercert(binary_form=True))
        except Exception:
            return None
        buyer = self.credentials("buyer")

        def sign(type_: str, value: dict[str, Any], now_ms: int) -> Statement:
            return sign_statement(type_, value, key=buyer.key,
                                  certificate=buyer.identity.certificate, now_ms=now_ms,
                                  nonce=os.urandom(16))

        def verify(statement: Statement, *, expected_type: str | None = None,
                   expected_signer: str | None = None) -> Any:
            return verify_statement(statement, certificate=originator, root=buyer.root,
                                    crl=buyer.crl, now=utcnow(), expected_type=expected_type,
                                    expected_signer=expected_signer)

        class Anything:
            def __contains__(self, item: object) -> bool:
                return True

        responder = Responder(responder="buyer", peer=m1.body.get("originator", ""),
                              secret=os.urandom(32), approvals=Anything(),
                              notaries={"notary"}, sign=sign, verify=verify)
        try:
            out = responder.receive(Proposed(body["text"], m1), now_ms=time.time_ns() // 10**6)
        except Exception:
            return None
        commits = [o for o in out if isinstance(o, Commit)]
        return {"m2": commits[0].m2.to_wire()} if commits else None

    async def _serve_case(self, stream: trio.SSLStream[Any], case: Case,
                          findings: list[str], identity: str) -> bool:
        await stream.do_handshake()
        decoder = FrameDecoder(self._limits)
        opening = self._opening(case, identity)
        await _send(stream, opening)
        their = await _next(stream, decoder)
        if case.hello is not None and self._after_fuzzed_hello(
                opening, b"", identity).ends != "open":
            return False  # it refused our hello (or waits for the rest of it)
        if not (type(their) is dict and their.get("type") == "hello"):
            return False
        request = await _next(stream, decoder)  # its ping
        rid = request.get("id") if type(request) is dict else None
        frames = case.frames
        answer = case.answer
        if answer == VALID_M2:
            answer = self._commit(request, stream)
        if answer is not None:
            frames = [{"type": "res", "id": THEIRS, "body": answer}, *frames]
        data, _sentinel, count = self._body(dataclasses.replace(case, frames=frames), 1,
                                            theirs=rid)
        self.report.outbound_frames += count + 1
        self.report.frames += count + 1
        expect = expected_answers(data, self._limits)
        await _send(stream, data)
        return await self._collect(stream, decoder, expect, findings, case.target)


@dataclasses.dataclass
class _running:
    agent: Agent

    async def __aenter__(self) -> Agent:
        self._nursery_manager = trio.open_nursery()
        self._nursery = await self._nursery_manager.__aenter__()
        await self._nursery.start(self.agent.run)
        return self.agent

    async def __aexit__(self, *exc: Any) -> bool | None:
        with trio.CancelScope(shield=True), trio.move_on_after(10):
            await self.agent.close_channels()
        self._nursery.cancel_scope.cancel()
        return await self._nursery_manager.__aexit__(*exc)


async def _send(stream: Any, data: bytes) -> None:
    """Send what we can: an agent that closes on us mid-way is no error of ours (what
    it sent before closing is still read)."""
    try:
        await stream.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


async def _next(stream: Any, decoder: FrameDecoder) -> Any:
    """The next frame, or None at EOF (or when the peer's bytes are not frames)."""
    while True:
        try:
            obj = decoder.next_object()
        except ProtocolError:
            return None
        if obj is not NEED_DATA:
            return obj
        try:
            data = await stream.receive_some(1 << 16)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return None
        if not data:
            return None
        decoder.feed(data)


# -- the long run ------------------------------------------------------------------------


def fuzz(harness: Harness, frames: int, *, batch: int = 200,
         on_progress: Callable[[Report], None] | None = None) -> Report:
    """Play Hypothesis-drawn cases until ``frames`` frames went out; findings are
    collected, not raised (a long run reports them all)."""
    report = harness.report
    strategies = {t: harness.cases(t) for t in (*TARGETS, "buyer", "enroll")}

    def one(data: Any) -> None:
        target = data.draw(st.sampled_from([*TARGETS, *TARGETS, "buyer", "enroll"]))
        harness.play(data.draw(strategies[target]))

    while report.frames < frames:
        per_case = report.frames / report.cases if report.cases else 8
        examples = max(1, min(batch, int((frames - report.frames) / per_case) + 1))
        # A fresh test function per round: settings apply to one function once.
        settings(max_examples=examples, deadline=None, database=None,
                 phases=[Phase.generate], suppress_health_check=list(HealthCheck))(
            given(data=st.data())(lambda data: one(data)))()
        report.rss.append((report.frames, rss_mib()))
        if on_progress is not None:
            on_progress(report)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=100_000,
                        help="stop after this many frames sent (inbound + outbound)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.CRITICAL)
    started = time.monotonic()
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with tempfile.TemporaryDirectory() as tmp:
        harness = Harness(Path(tmp) / "market")
        harness.start()
        try:
            shown: set[str] = set()

            def progress(r: Report) -> None:
                for text in r.findings:  # each new one at once: a long run is long
                    if text[:200] not in shown:
                        shown.add(text[:200])
                        print(f"  FINDING: {text[:3000]}", file=sys.stderr)
                if not args.json:
                    print(f"  {r.frames} frames, {r.cases} cases, {len(r.findings)} findings, "
                          f"{time.monotonic() - started:.0f}s, RSS {r.rss[-1][1]} MiB",
                          file=sys.stderr)

            report = fuzz(harness, args.frames, on_progress=progress)
        finally:
            harness.stop()
    took = time.monotonic() - started
    summary = {
        "frames": report.frames, "inbound_frames": report.inbound_frames,
        "outbound_frames": report.outbound_frames, "cases": report.cases,
        "answers": report.answers, "seconds": round(took, 1),
        "max_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "rss_before_mib": round(rss_before / 1024, 1),
        "rss_by_frames": report.rss[:: max(1, len(report.rss) // 10)] + report.rss[-1:],
        "codes": dict(report.codes.most_common()),
        "findings": sorted(Counter(report.findings).items(), key=lambda kv: -kv[1]),
    }
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"{summary['frames']} frames ({summary['inbound_frames']} inbound, "
              f"{summary['outbound_frames']} outbound) in {summary['cases']} cases, "
              f"{took:.0f}s; max RSS {summary['max_rss_mib']} MiB")
        print(f"RSS (frames, MiB): {summary['rss_by_frames']}")
        print(f"answers by code: {summary['codes']}")
        print(f"findings: {len(report.findings)}")
        for text, n in summary["findings"]:
            print(f"  {n} x {text}")
    return 1 if report.findings else 0


if __name__ == "__main__":
    raise SystemExit(main())
