"""The evidence archive: hash chains that name what was edited, deleted or reordered,
and evidence bundles that verify offline, in a fresh process, with only the CA root."""

from __future__ import annotations

import datetime as dt
import itertools
import subprocess
import sys
import textwrap
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from hypothesis import given, settings
from hypothesis import strategies as st
from pki import NOW, Market, pem
from pki import TestAgent as Agent  # not collected as a test class

from semper.services.archive import (
    ZERO_HASH,
    ArchiveError,
    ArchiveRecord,
    ChainBroken,
    Direction,
    EvidenceBundle,
    InvalidEvidence,
    MalformedEvidence,
    MissingCertificate,
    RecordTampered,
    WrongRoot,
    collect_bundle,
    next_record,
    verify_bundle,
    verify_chain,
)
from semper.services.certificates import issue_crl
from semper.services.statements import (
    MalformedStatement,
    Statement,
    canonical_decode,
    canonical_encode,
    sign_statement,
)

EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
DER = Encoding.DER
NOW_MS = (NOW - EPOCH) // dt.timedelta(milliseconds=1)


@dataclass
class Trade:
    """A seller's archive of two transactions with a buyer."""

    market: Market
    seller: Agent
    buyer: Agent
    chain: list[ArchiveRecord]

    def bundle(self, transaction: str = "tx-1") -> EvidenceBundle:
        return collect_bundle(self.chain, transaction=transaction,
                              certificates=[self.buyer.cert, self.seller.cert],
                              crl=self.market.crl, root=self.market.ca.certificate)


def _statement(agent: Agent, type: str, body: dict[str, Any], n: int) -> Statement:
    return sign_statement(type, body, key=agent.key, certificate=agent.cert,
                          now_ms=NOW_MS + n, nonce=n.to_bytes(16, "big"))


def _chain(seller: Agent, buyer: Agent) -> list[ArchiveRecord]:
    steps = [
        ("sent", seller, "commerce.offer", "tx-1", {"item": "book-1", "price": 1250}),
        ("received", buyer, "commerce.order", "tx-1", {"item": "book-1"}),
        ("sent", seller, "commerce.offer", "tx-2", {"item": "book-2", "price": 900}),
        ("received", buyer, "payment.confirmation", "tx-1", {"amount": 1250}),
        ("sent", seller, "commerce.receipt", "tx-1", {"item": "book-1"}),
        ("received", buyer, "commerce.order", "tx-2", {"item": "book-2"}),
    ]
    chain: list[ArchiveRecord] = []
    for n, (direction, signer, type, transaction, body) in enumerate(steps):
        chain.append(next_record(chain[-1] if chain else None, direction=direction,
                                 peer="buyer-1", transaction=transaction,
                                 statement=_statement(signer, type, body, n),
                                 recorded_at=NOW_MS + 10 + n))
    return chain


def _crl_after_the_trade(market: Market) -> None:
    """A CRL whose thisUpdate (whole seconds) follows every statement of ``_chain``: a
    CRL speaks for no time after its thisUpdate (docs/protocol.md 6A.8). issue_crl may
    backdate thisUpdate by the clock skew it allows, so measure that first."""
    wanted = NOW + dt.timedelta(seconds=2)
    probe = issue_crl(market.ca, [], now=wanted, number=1)
    market.crl_number += 1
    market.crl = issue_crl(market.ca, market.revoked,
                           now=wanted + (wanted.replace(microsecond=0) - probe.last_update_utc),
                           number=market.crl_number)


@pytest.fixture
def trade(market: Market) -> Trade:
    seller, buyer = market.agent("seller.books", "seller"), market.agent("buyer-1")
    chain = _chain(seller, buyer)
    _crl_after_the_trade(market)
    return Trade(market, seller, buyer, chain)


def _broken(records: list[ArchiveRecord], **kw: Any) -> ChainBroken:
    with pytest.raises(ChainBroken) as info:
        verify_chain(records, **kw)
    assert info.value.code == "archive.chain_broken"
    return info.value


# --- records and chains -------------------------------------------------------------


def test_a_chain_links_every_record(trade: Trade) -> None:
    chain = trade.chain
    assert [r.seq for r in chain] == list(range(6)) and chain[0].prev == ZERO_HASH
    assert all(b.prev == a.hash for a, b in itertools.pairwise(chain))
    assert chain[0].direction is Direction.SENT and chain[1].direction == "received"
    verify_chain(chain)
    verify_chain(chain, head=chain[-1].hash)
    verify_chain([])
    verify_chain([], head=ZERO_HASH)


def test_records_round_trip(trade: Trade) -> None:
    for record in trade.chain:
        wire = canonical_decode(canonical_encode(record.to_wire()))
        assert ArchiveRecord.from_wire(wire) == record
    for bad in (None, {}, {**trade.chain[0].to_wire(), "seq": -1},
                {**trade.chain[0].to_wire(), "prev": b"short"},
                {**trade.chain[0].to_wire(), "direction": "sideways"},
                {**trade.chain[0].to_wire(), "extra": 1}):
        with pytest.raises(MalformedEvidence):
            ArchiveRecord.from_wire(bad)


def test_next_record_refuses_what_is_not_a_statement(trade: Trade) -> None:
    with pytest.raises(MalformedStatement):
        next_record(trade.chain[-1], direction="sent", peer="buyer-1", transaction="tx-1",
                    statement=b"\x80", recorded_at=NOW_MS)


@pytest.mark.parametrize("seq", range(6))
@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("peer", "mallory"),
        ("transaction", "tx-9"),
        ("direction", "received"),
        ("recorded_at", 0),
    ],
)
def test_record_edited_in_place_is_named(trade: Trade, seq: int, field: str, value: Any) -> None:
    record = trade.chain[seq]
    if getattr(record, field) == value:
        value = "sent"
    chain = [*trade.chain]
    chain[seq] = replace(record, **{field: value})  # hash kept as stored
    error = _broken(chain)
    assert error.detail == {"kind": "edited", "seq": seq, "position": seq}
    assert f"record {seq} was edited" in error.message


@pytest.mark.parametrize("seq", range(5))
def test_record_edited_and_rehashed_is_named_by_its_successor(trade: Trade, seq: int) -> None:
    chain = [*trade.chain]
    forged = _statement(trade.seller, "commerce.offer", {"item": "book-1", "price": 1}, 99)
    chain[seq] = replace(chain[seq], statement=forged.to_bytes(), hash=b"")  # hash recomputed
    error = _broken(chain)
    assert error.detail == {"kind": "edited", "seq": seq, "position": seq}
    assert f"record {seq} was edited" in error.message


def test_last_record_edited_and_rehashed_needs_the_head(trade: Trade) -> None:
    chain = [*trade.chain]
    head = chain[-1].hash
    chain[-1] = replace(chain[-1], peer="mallory", hash=b"")
    verify_chain(chain)  # a chain's tail has no successor to betray it
    assert _broken(chain, head=head).detail["kind"] == "head_mismatch"


def test_statement_replaced_by_non_canonical_bytes_is_an_edit(trade: Trade) -> None:
    chain = [*trade.chain]
    good = chain[-1].statement
    bad = good.replace(b"\xa1v\x01", b"\xa1v\xcc\x01")  # v as uint 8
    chain[-1] = replace(chain[-1], statement=bad, hash=b"")
    error = _broken(chain)
    assert error.detail["kind"] == "edited" and error.detail["seq"] == 5
    assert "statement.not_canonical" in error.message


@pytest.mark.parametrize("seq", range(6))
def test_deleted_record_is_named(trade: Trade, seq: int) -> None:
    chain = [r for r in trade.chain if r.seq != seq]
    if seq == 5:  # the tail: only the head tells
        verify_chain(chain)
        error = _broken(chain, head=trade.chain[-1].hash)
        assert error.detail["kind"] == "head_mismatch" and error.detail["seq"] == 4
        return
    error = _broken(chain)
    assert error.detail == {"kind": "deleted", "seq": seq, "position": seq, "last_missing": seq}
    assert f"record {seq} deleted" in error.message


def test_several_deleted_records_are_named(trade: Trade) -> None:
    error = _broken([trade.chain[0], trade.chain[4], trade.chain[5]])
    assert error.detail["kind"] == "deleted"
    assert (error.detail["seq"], error.detail["last_missing"]) == (1, 3)
    assert "record 1 to 3 deleted" in error.message


@pytest.mark.parametrize("seq", range(5))
def test_swapped_records_are_named(trade: Trade, seq: int) -> None:
    chain = [*trade.chain]
    chain[seq], chain[seq + 1] = chain[seq + 1], chain[seq]
    error = _broken(chain)
    assert error.detail == {"kind": "reordered", "seq": seq + 1, "position": seq}
    assert f"record {seq + 1} is at position {seq}" in error.message
    assert "reordered" in error.message


def test_record_moved_far_and_duplicated_are_named(trade: Trade) -> None:
    chain = [*trade.chain]
    moved = [chain[0], chain[4], chain[1], chain[2], chain[3], chain[5]]
    assert _broken(moved).detail == {"kind": "reordered", "seq": 4, "position": 1}
    twice = [*chain[:3], chain[2], *chain[3:]]
    assert _broken(twice).detail == {"kind": "duplicated", "seq": 2, "position": 3}


def test_first_record_with_a_forged_prev_is_an_edit(trade: Trade) -> None:
    chain = [replace(trade.chain[0], prev=b"\x01" * 32, hash=b""), *trade.chain[1:]]
    assert _broken(chain).detail == {"kind": "edited", "seq": 0, "position": 0}


# --- evidence bundles ---------------------------------------------------------------


def test_bundle_holds_one_transaction_and_the_certificates_it_needs(trade: Trade) -> None:
    bundle = trade.bundle("tx-2")
    assert [r.seq for r in bundle.records] == [2, 5]
    assert len(bundle.certificates) == 2
    only_seller = collect_bundle(trade.chain[:3], transaction="tx-2",
                                 certificates=[trade.buyer.cert, trade.seller.cert],
                                 crl=trade.market.crl, root=trade.market.ca.certificate)
    assert only_seller.certificates == [trade.seller.cert.public_bytes(DER)]
    with pytest.raises(MissingCertificate):
        collect_bundle(trade.chain, transaction="tx-1", certificates=[trade.seller.cert],
                       crl=trade.market.crl, root=trade.market.ca.certificate)


def test_bundle_round_trips_and_verifies(trade: Trade) -> None:
    bundle = trade.bundle()
    data = bundle.to_bytes()
    again = EvidenceBundle.from_bytes(data)
    assert again == bundle and again.to_bytes() == data
    verified = verify_bundle(again, root=trade.market.ca.certificate, now=NOW)
    assert [(v.record.seq, v.statement.type, v.signer.agent_id) for v in verified] == [
        (0, "commerce.offer", "seller.books"),
        (1, "commerce.order", "buyer-1"),
        (3, "payment.confirmation", "buyer-1"),
        (4, "commerce.receipt", "seller.books"),
    ]
    assert verified[0].statement.body == {"item": "book-1", "price": 1250}


def _refused(bundle: EvidenceBundle, trade: Trade, error: type[ArchiveError],
             root: Any = None) -> ArchiveError:
    with pytest.raises(error) as info:
        verify_bundle(bundle, root=root or trade.market.ca.certificate, now=NOW)
    assert info.value.code == error.code
    return info.value


def test_bundle_with_a_tampered_statement_is_refused(trade: Trade) -> None:
    bundle = trade.bundle()
    record = bundle.records[1]
    statement = Statement.from_bytes(record.statement)
    forged = replace(statement, body={"item": "book-1", "quantity": 100}).to_bytes()
    in_place = replace(record, statement=forged)
    error = _refused(replace(bundle, records=[bundle.records[0], in_place, *bundle.records[2:]]),
                     trade, RecordTampered)
    assert error.detail["seq"] == 1
    rehashed = replace(record, statement=forged, hash=b"")
    error = _refused(replace(bundle, records=[bundle.records[0], rehashed, *bundle.records[2:]]),
                     trade, InvalidEvidence)
    assert (error.detail["seq"], error.detail["cause"]) == (1, "statement.bad_signature")


def test_bundle_missing_a_certificate_is_refused(trade: Trade) -> None:
    bundle = trade.bundle()
    buyer_der = trade.buyer.cert.public_bytes(DER)
    stripped = replace(bundle, certificates=[c for c in bundle.certificates if c != buyer_der])
    error = _refused(stripped, trade, MissingCertificate)
    assert error.detail["seq"] == 1


def test_bundle_from_a_foreign_root_is_refused(trade: Trade, tmp_path: Path) -> None:
    (tmp_path / "foreign").mkdir()
    foreign = Market(tmp_path / "foreign")
    impostor, buyer = foreign.agent("seller.books", "seller"), foreign.agent("buyer-1")
    foreign_bundle = collect_bundle(_chain(impostor, buyer), transaction="tx-1",
                                    certificates=[impostor.cert, buyer.cert],
                                    crl=foreign.crl, root=foreign.ca.certificate)
    error = _refused(foreign_bundle, trade, WrongRoot)
    assert "another market root" in error.message
    # claiming our root and carrying our (public) CRL does not help
    disguised = replace(foreign_bundle, root_fingerprint=trade.bundle().root_fingerprint,
                        crl=trade.bundle().crl)
    error = _refused(disguised, trade, InvalidEvidence)
    assert (error.detail["seq"], error.detail["cause"]) == (0, "auth.untrusted")
    # nor does keeping the foreign CRL: it is not signed by the root
    error = _refused(replace(disguised, crl=foreign_bundle.crl), trade, InvalidEvidence)
    assert (error.detail["seq"], error.detail["cause"]) == (None, "auth.bad_crl")
    # and our own bundle checked against the foreign root
    _refused(trade.bundle(), trade, WrongRoot, root=foreign.ca.certificate)


def test_bundle_with_a_revoked_signer_is_refused(trade: Trade) -> None:
    trade.market.revoke(trade.buyer)
    _crl_after_the_trade(trade.market)
    error = _refused(trade.bundle(), trade, InvalidEvidence)
    assert (error.detail["seq"], error.detail["cause"]) == (1, "auth.revoked")


def test_bundle_bytes_are_checked(trade: Trade) -> None:
    data = trade.bundle().to_bytes()
    wire = canonical_decode(data)
    assert data.endswith(b"\xa1v\x02")
    for bad, cause in [
        (data + b"\x00", "statement.malformed"),
        (data[:-1], "statement.malformed"),
        (data[:-1] + b"\xcc\x02", "statement.not_canonical"),  # "v": 2 (last key) as uint 8
    ]:
        with pytest.raises(MalformedEvidence) as info:
            EvidenceBundle.from_bytes(bad)
        assert info.value.detail["cause"] == cause
    records = wire["records"][0]
    for bad_wire in [
        {**wire, "v": 3},
        {**wire, "records": [records[::-1]]},
        {**wire, "records": records},  # version 2 chunks its lists
        {**wire, "records": [records, []]},  # no empty chunk
        {**wire, "records": [records[:1], records[1:]]},  # only the last chunk is short
        {**wire, "certificates": "nope"},
        # version 1: flat lists, and only records of the bundle's own transaction
        {**wire, "v": 1, "records": [{**records[0], "transaction": "tx-2"}],
         "certificates": wire["certificates"][0]},
    ]:
        with pytest.raises(MalformedEvidence):
            EvidenceBundle.from_bytes(canonical_encode(bad_wire))
    old = {**wire, "v": 1, "records": records, "certificates": wire["certificates"][0]}
    assert EvidenceBundle.from_bytes(canonical_encode(old)) == trade.bundle()  # still read
    # In version 2 a record of another transaction reads, but verifies only when a
    # statement of the bundle's transaction names it (as an order names its offer).
    stray = EvidenceBundle.from_bytes(canonical_encode(
        {**wire, "records": [[*records[:-1], {**records[-1], "transaction": "tx-2"}]]}))
    with pytest.raises(MalformedEvidence) as info:
        verify_bundle(stray, root=trade.market.ca.certificate, now=NOW)
    assert "no statement of 'tx-1' names it" in info.value.message
    with pytest.raises(MalformedEvidence):  # a certificate that is not one
        verify_bundle(replace(trade.bundle(), certificates=[b"junk"]),
                      root=trade.market.ca.certificate, now=NOW)


@settings(max_examples=300)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_are_never_a_bundle(data: bytes) -> None:
    with pytest.raises(MalformedEvidence):
        EvidenceBundle.from_bytes(data)


# --- offline, in a fresh process ----------------------------------------------------

VERIFY = textwrap.dedent(
    """
    import datetime as dt, sys
    from pathlib import Path
    from semper.services.archive import ArchiveError, EvidenceBundle, verify_bundle
    from semper.services.certificates import load_certificate

    root = load_certificate(Path(sys.argv[1]).read_bytes())
    try:
        bundle = EvidenceBundle.from_bytes(Path(sys.argv[2]).read_bytes())
        verified = verify_bundle(bundle, root=root, now=dt.datetime.now(dt.UTC))
    except ArchiveError as exc:
        print(exc.code, exc.detail.get("cause"))
        sys.exit(1)
    for v in verified:
        print(v.record.seq, v.statement.type, v.signer.agent_id)
    """
)


def _verify_offline(folder: Path, bundle: bytes, root_pem: bytes) -> subprocess.CompletedProcess:
    (folder / "root.pem").write_bytes(root_pem)
    (folder / "tx-1.bundle").write_bytes(bundle)
    return subprocess.run([sys.executable, "-c", VERIFY, "root.pem", "tx-1.bundle"],
                          cwd=folder, capture_output=True, text=True, timeout=60)


def test_an_evidence_bundle_verifies_offline_in_a_fresh_process(
    trade: Trade, tmp_path: Path
) -> None:
    folder = tmp_path / "arbiter"
    folder.mkdir()
    bundle = trade.bundle()
    done = _verify_offline(folder, bundle.to_bytes(), pem(trade.market.ca.certificate))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "0 commerce.offer seller.books",
        "1 commerce.order buyer-1",
        "3 payment.confirmation buyer-1",
        "4 commerce.receipt seller.books",
    ]
    assert sorted(p.name for p in folder.iterdir()) == ["root.pem", "tx-1.bundle"]
    # the same process refuses a bundle whose statement was altered
    record = bundle.records[0]
    forged = replace(Statement.from_bytes(record.statement), body={"price": 1}).to_bytes()
    tampered = replace(bundle, records=[replace(record, statement=forged, hash=b""),
                                        *bundle.records[1:]])
    done = _verify_offline(folder, tampered.to_bytes(), pem(trade.market.ca.certificate))
    assert (done.returncode, done.stdout.strip()) == (
        1, "archive.invalid_evidence statement.bad_signature")


def test_a_chain_link_does_not_pull_another_exchange_into_a_bundle(market: Market) -> None:
    """A notary's decisions link to the one before by ``previous``; an archive that
    holds two (a buyer's two fair purchases) must not put the first, whose payload
    is the first purchase's content key, into the second's bundle. A digest under
    any other key still brings its statement (the related record of 6A.8)."""
    notary, buyer = market.agent("notary", "notary"), market.agent("buyer-1")
    first = _statement(notary, "fairexchange.decision",
                       {"exchange": b"\x01" * 32, "payload": b"key one",
                        "previous": bytes(32)}, 1)
    offer = _statement(notary, "commerce.offer", {"item": "x"}, 2)
    second = _statement(notary, "fairexchange.decision",
                        {"exchange": b"\x02" * 32, "payload": b"key two",
                         "previous": first.digest, "request": {"previous": first.digest},
                         "offer": offer.digest}, 3)
    chain: list[ArchiveRecord] = []
    for n, (statement, transaction) in enumerate([(first, "tx-1"), (offer, "tx-0"),
                                                  (second, "tx-2")]):
        chain.append(next_record(chain[-1] if chain else None, direction="received",
                                 peer="notary", transaction=transaction,
                                 statement=statement, recorded_at=NOW_MS + 10 + n))
    bundle = collect_bundle(chain, transaction="tx-2", certificates=[notary.cert, buyer.cert],
                            crl=market.crl, root=market.ca.certificate)
    held = {Statement.from_bytes(r.statement).digest for r in bundle.records}
    assert held == {second.digest, offer.digest}
