"""Disputes: the arbiter's ``dispute.case`` statement and the offline bundle check."""

from __future__ import annotations

import datetime as dt
import hashlib
import os

import pytest

from semper.services.disputes import (
    CASE_TYPE,
    BadCase,
    Case,
    NotArbiter,
    make_case,
    verify_case,
)
from semper.services.statements import BadSignature, Statement, WrongType, sign_statement
from tests.pki import NOW, Market

NOW_MS = int(NOW.timestamp() * 1000)


def _case(signer, **changes):
    fields = {"case": os.urandom(32), "claimant": "buyer1", "respondent": "seller1",
              "bundle": hashlib.sha256(b"bundle").digest(), "filed_ms": NOW_MS}
    fields.update(changes)
    return make_case(**fields, key=signer.key, certificate=signer.cert, nonce=os.urandom(16))


def test_case_made_by_arbiter_verifies_offline(tmp_path):
    market = Market(tmp_path)
    arbiter = market.agent("arbiter", "arbiter")
    statement = _case(arbiter)
    assert statement.type == CASE_TYPE
    again = Statement.from_bytes(statement.to_bytes())
    case, identity = verify_case(again, certificate=arbiter.cert, root=market.ca.certificate,
                                 crl=market.crl, now=NOW + dt.timedelta(seconds=1))
    assert identity.agent_id == "arbiter"
    assert case.claimant == "buyer1" and case.respondent == "seller1"
    assert case.bundle == hashlib.sha256(b"bundle").digest()
    assert Case.from_wire(case.to_wire()) == case


def test_case_signed_by_another_role_is_refused(tmp_path):
    market = Market(tmp_path)
    seller = market.agent("seller1", "seller")
    with pytest.raises(NotArbiter) as info:
        verify_case(_case(seller), certificate=seller.cert, root=market.ca.certificate,
                    crl=market.crl, now=NOW)
    assert info.value.code == "dispute.not_arbiter"


def test_case_body_checked(tmp_path):
    market = Market(tmp_path)
    arbiter = market.agent("arbiter", "arbiter")
    with pytest.raises(BadCase) as info:
        _case(arbiter, bundle=b"short")
    assert info.value.detail["field"] == "bundle"
    with pytest.raises(BadCase):
        _case(arbiter, claimant="Not An Id")
    with pytest.raises(BadCase):
        Case.from_wire({"case": os.urandom(32)})


def test_case_altered_or_of_another_type_is_refused(tmp_path):
    market = Market(tmp_path)
    arbiter = market.agent("arbiter", "arbiter")
    statement = _case(arbiter)
    wire = statement.to_wire()
    wire["body"] = {**wire["body"], "respondent": "someone"}
    with pytest.raises(BadSignature):
        verify_case(Statement.from_wire(wire), certificate=arbiter.cert,
                    root=market.ca.certificate, crl=market.crl, now=NOW)
    other = sign_statement(
        "dispute.other", statement.body, key=arbiter.key, certificate=arbiter.cert,
        now_ms=NOW_MS, nonce=os.urandom(16))
    with pytest.raises(WrongType):
        verify_case(other, certificate=arbiter.cert, root=market.ca.certificate,
                    crl=market.crl, now=NOW)
