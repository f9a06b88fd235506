"""The envelope: every message kind round-trips; malformed maps raise BadMessage."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from semper.transport import (
    PROTOCOL_VERSION,
    BadMessage,
    Bye,
    ErrorMessage,
    Hello,
    Note,
    PeerLimits,
    Request,
    Response,
    ServiceInfo,
    decode_body,
    encode_body,
    parse_message,
)

MAX_ID = 2**63 - 1

HELLO = Hello(
    agent="seller.books", role="seller", version=PROTOCOL_VERSION,
    services={"payment": ServiceInfo(version=2, modules=("ecash", "cheque")),
              "echo": ServiceInfo(version=1)},
    limits=PeerLimits(max_frame=1 << 20, max_in_flight=1024),
)

MESSAGES = [
    pytest.param(HELLO, id="hello"),
    pytest.param(Hello(agent="a", role="buyer", limits=PeerLimits(max_frame=4096,
                                                                  max_in_flight=1)),
                 id="hello-no-services"),
    pytest.param(Request(id=1, service="echo", op="echo", body={"x": [1, b"2", None]}),
                 id="req"),
    pytest.param(Request(id=MAX_ID, service="s", op="o"), id="req-max-id"),
    pytest.param(Response(id=7, body="ok"), id="res"),
    pytest.param(Response(id=7), id="res-none-body"),
    pytest.param(ErrorMessage(id=3, code="payment.insufficient_funds", message="no",
                              detail={"needed": 5}), id="err"),
    pytest.param(ErrorMessage(id=None, code="protocol.bad_frame", message="bad"),
                 id="err-no-id"),
    pytest.param(Note(service="delivery", op="chunk", body=b"\x00" * 10), id="note"),
    pytest.param(Bye(reason="done"), id="bye"),
    pytest.param(Bye(), id="bye-no-reason"),
]


@pytest.mark.parametrize("message", MESSAGES)
def test_round_trip_through_the_wire(message: Any) -> None:
    wire = message.to_wire()
    assert parse_message(wire) == message
    # and through real msgpack bytes
    assert parse_message(decode_body(encode_body(wire))) == message


@settings(max_examples=200, deadline=None)
@given(
    rid=st.integers(1, MAX_ID),
    service=st.text(),
    op=st.text(),
    body=st.recursive(st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1)
                      | st.text() | st.binary(),
                      lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(), c,
                                                                          max_size=4),
                      max_leaves=10),
)
def test_request_and_response_round_trip(rid: int, service: str, op: str, body: Any) -> None:
    request = Request(id=rid, service=service, op=op, body=body)
    assert parse_message(decode_body(encode_body(request.to_wire()))) == request
    response = Response(id=rid, body=body)
    assert parse_message(decode_body(encode_body(response.to_wire()))) == response


def test_unknown_extra_keys_are_ignored() -> None:
    wire = {**Request(id=2, service="s", op="o").to_wire(), "future": [1, 2]}
    assert parse_message(wire) == Request(id=2, service="s", op="o")


def req(**changes: Any) -> dict[str, Any]:
    return {**Request(id=5, service="echo", op="echo", body=None).to_wire(), **changes}


BAD_IDS = [
    pytest.param(True, id="bool-true"),     # bool is an int subclass, not an id
    pytest.param(False, id="bool-false"),
    pytest.param(0, id="zero"),
    pytest.param(-1, id="negative"),
    pytest.param(-(2**63), id="int64-min"),
    pytest.param(MAX_ID + 1, id="over-2**63-1"),
    pytest.param(2**64 - 1, id="uint64-max"),
    pytest.param("5", id="str"),
    pytest.param(5.0, id="float"),
    pytest.param(None, id="none"),
    pytest.param([5], id="list"),
]


@pytest.mark.parametrize("bad", BAD_IDS)
@pytest.mark.parametrize("kind", ["req", "res"])
def test_bad_ids_are_refused(kind: str, bad: Any) -> None:
    wire = req(id=bad) if kind == "req" else Response(id=1).to_wire() | {"id": bad}
    with pytest.raises(BadMessage) as info:
        parse_message(wire)
    assert info.value.code == "protocol.bad_message"
    assert "id" not in info.value.detail  # an unreadable id is never echoed back


@pytest.mark.parametrize("bad", [b for b in BAD_IDS if b.values[0] is not None])
def test_err_with_bad_id_is_refused(bad: Any) -> None:
    wire = ErrorMessage(id=1, code="x", message="y").to_wire() | {"id": bad}
    with pytest.raises(BadMessage):
        parse_message(wire)


@pytest.mark.parametrize("obj", [
    pytest.param(None, id="none"),
    pytest.param(5, id="int"),
    pytest.param("req", id="str"),
    pytest.param([req()], id="list"),
    pytest.param(b"\x80", id="bytes"),
    pytest.param({}, id="empty-map"),                        # no type
    pytest.param({"type": "nope"}, id="unknown-type"),
    pytest.param({"type": 1}, id="int-type"),
    pytest.param(req(service=None), id="req-no-service"),
    pytest.param(req(op=5), id="req-int-op"),
    pytest.param({"type": "req", "id": 5, "service": "echo"}, id="req-missing-op"),
    pytest.param({"type": "note", "service": "s"}, id="note-missing-op"),
    pytest.param({"type": "note", "service": b"s", "op": "o"}, id="note-bytes-service"),
    pytest.param({"type": "err", "id": 1, "code": "c"}, id="err-missing-message"),
    pytest.param({"type": "err", "id": 1, "code": 1, "message": "m"}, id="err-int-code"),
    pytest.param(HELLO.to_wire() | {"agent": None}, id="hello-no-agent"),
    pytest.param(HELLO.to_wire() | {"version": True}, id="hello-bool-version"),
    pytest.param(HELLO.to_wire() | {"version": "1"}, id="hello-str-version"),
    pytest.param(HELLO.to_wire() | {"services": []}, id="hello-services-list"),
    pytest.param(HELLO.to_wire() | {"services": {"x": 1}}, id="hello-service-not-map"),
    pytest.param(HELLO.to_wire() | {"services": {"x": {"version": 1, "modules": [1]}}},
                 id="hello-int-module"),
    pytest.param(HELLO.to_wire() | {"services": {"x": {"version": 1}}},
                 id="hello-service-no-modules"),
    pytest.param(HELLO.to_wire() | {"limits": {"max_frame": 1}}, id="hello-limits-partial"),
    pytest.param(HELLO.to_wire() | {"limits": None}, id="hello-no-limits"),
    pytest.param(HELLO.to_wire() | {"limits": {"max_frame": 4096, "max_in_flight": False}},
                 id="hello-bool-in-flight"),
])
def test_malformed_messages_raise_bad_message(obj: Any) -> None:
    with pytest.raises(BadMessage) as info:
        parse_message(obj)
    assert info.value.code == "protocol.bad_message"


def test_bad_request_carries_its_id_when_readable() -> None:
    with pytest.raises(BadMessage) as info:
        parse_message({"type": "req", "id": 42, "service": "echo"})
    assert info.value.detail["id"] == 42
    with pytest.raises(BadMessage) as info:
        parse_message({"type": "req", "id": True, "service": "echo", "op": "o"})
    assert "id" not in info.value.detail


def test_lenient_optional_fields() -> None:
    # a non-map detail and a non-str reason are dropped rather than refused
    err = parse_message({"type": "err", "id": None, "code": "c", "message": "m",
                         "detail": [1]})
    assert err == ErrorMessage(id=None, code="c", message="m", detail={})
    assert parse_message({"type": "bye", "reason": 5}) == Bye(reason="")
    assert parse_message({"type": "bye"}) == Bye(reason="")
    assert parse_message({"type": "res", "id": 1}) == Response(id=1, body=None)
