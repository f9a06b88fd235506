"""PayWord chains and the payee's payword check (services/payment/purse, issue 10
item 4), with no network: w_{i-1} = SHA-256(w_i), the root w_0 signed, paywords
revealed in order, any payword checked from the last accepted by hashing.

Refusals keep their codes and change nothing: a skipped payword where paywords
come one at a time (``purse.out_of_order``), a replayed one (``purse.replayed``),
one past the chain (``purse.beyond_chain``), a forged one (``purse.bad_payword``).
Hypothesis: any k revealed paywords verify from the root, in any increasing order,
and nothing else does (an altered payword, another index).
"""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from semper.services import Amount
from semper.services.payment import BadRequest
from semper.services.payment.purse import (
    MAX_LENGTH,
    BadCommitment,
    BadPayword,
    BeyondChain,
    OutOfOrder,
    PayWordChain,
    PaywordChecker,
    PurseCommitment,
    Replayed,
    check_redemption,
    hash_to_root,
)


def sha(word: bytes) -> bytes:
    return hashlib.sha256(word).digest()


def test_each_payword_hashes_to_the_one_below_and_the_root_is_w0() -> None:
    chain = PayWordChain.new(50)
    assert chain.payword(50) == chain.seed and chain.payword(0) == chain.root
    for k in range(1, 51):
        assert sha(chain.payword(k)) == chain.payword(k - 1)  # w_{k-1} = h(w_k)
        assert hash_to_root(chain.payword(k), k) == chain.root


@pytest.mark.parametrize("length", [1, 2, 3, 4, 15, 16, 17, 1000])
def test_checkpoints_give_every_payword_of_any_length(length: int) -> None:
    seed = bytes(range(32))
    chain = PayWordChain(seed, length)
    word, expected = seed, {length: seed}
    for k in range(length - 1, -1, -1):
        word = sha(word)
        expected[k] = word
    assert [chain.payword(k) for k in range(length + 1)] == \
        [expected[k] for k in range(length + 1)]


def test_the_secret_bytes_give_the_same_chain_back() -> None:
    chain = PayWordChain.new(77)
    again = PayWordChain.from_secret_bytes(chain.to_secret_bytes())
    assert (again.length, again.root, again.payword(40)) == (77, chain.root, chain.payword(40))
    with pytest.raises(ValueError):
        PayWordChain.from_secret_bytes(chain.to_secret_bytes()[1:])
    with pytest.raises(ValueError):
        PayWordChain.new(MAX_LENGTH + 1)
    with pytest.raises(ValueError):
        PayWordChain.new(0)


def test_in_order_each_payword_costs_one_hash_and_moves_highest() -> None:
    chain = PayWordChain.new(10)
    checker = PaywordChecker(chain.root, 10, in_order=True)
    for k in range(1, 11):
        checker.accept(k, chain.payword(k))
        assert (checker.highest, checker.payword) == (k, chain.payword(k))


def test_a_skipped_payword_is_out_of_order_for_a_stream_and_verifies_otherwise() -> None:
    chain = PayWordChain.new(10)
    stream = PaywordChecker(chain.root, 10, in_order=True)
    stream.accept(1, chain.payword(1))
    with pytest.raises(OutOfOrder) as refused:
        stream.accept(3, chain.payword(3))
    assert refused.value.code == "purse.out_of_order"
    assert refused.value.detail == {"index": 3, "expected": 2}
    assert (stream.highest, stream.payword) == (1, chain.payword(1))  # unchanged
    loose = PaywordChecker(chain.root, 10)
    loose.accept(1, chain.payword(1))
    loose.accept(7, chain.payword(7))  # 6 hashes from w_1
    assert loose.highest == 7


def test_a_replayed_payword_is_refused_and_changes_nothing() -> None:
    chain = PayWordChain.new(5)
    checker = PaywordChecker(chain.root, 5, in_order=True)
    checker.accept(1, chain.payword(1))
    checker.accept(2, chain.payword(2))
    for k in (2, 1):  # the same one again; an older one
        with pytest.raises(Replayed) as refused:
            checker.accept(k, chain.payword(k))
        assert refused.value.code == "purse.replayed"
    assert (checker.highest, checker.payword) == (2, chain.payword(2))


def test_a_payword_beyond_the_chain_is_refused() -> None:
    chain = PayWordChain.new(3)
    checker = PaywordChecker(chain.root, 3)
    longer = PayWordChain(chain.seed, 4)  # the same seed, one more payword
    with pytest.raises(BeyondChain) as refused:
        checker.accept(4, longer.payword(4))
    assert refused.value.code == "purse.beyond_chain"
    assert refused.value.detail == {"index": 4, "length": 3}
    with pytest.raises(BeyondChain):
        chain.payword(4)
    assert checker.highest == 0


@pytest.mark.parametrize("bad", [
    b"\x00" * 32,  # a payword nobody derived
    b"\x01" * 31,  # not 32 bytes
    "w" * 32,  # not bytes
])
def test_a_forged_payword_is_bad_and_changes_nothing(bad: object) -> None:
    chain = PayWordChain.new(4)
    checker = PaywordChecker(chain.root, 4, in_order=True)
    with pytest.raises(BadPayword) as refused:
        checker.accept(1, bad)  # type: ignore[arg-type]
    assert refused.value.code == "purse.bad_payword"
    assert (checker.highest, checker.payword) == (0, chain.root)
    with pytest.raises(BadPayword):
        checker.accept(0, chain.root)  # the root pays nothing


def test_a_checker_resumes_from_a_payword_it_accepted_before() -> None:
    chain = PayWordChain.new(8)
    checker = PaywordChecker(chain.root, 8, in_order=True, highest=5, payword=chain.payword(5))
    checker.accept(6, chain.payword(6))
    with pytest.raises(BadPayword):
        PaywordChecker(chain.root, 8, highest=5, payword=chain.payword(4))


@settings(max_examples=60, deadline=None)
@given(length=st.integers(1, 64), data=st.data())
def test_any_k_reveals_verify_from_the_root_and_nothing_else_does(
        length: int, data: st.DataObject) -> None:
    chain = PayWordChain.new(length)
    revealed = sorted(data.draw(st.sets(st.integers(1, length), min_size=1)))
    checker = PaywordChecker(chain.root, length)
    for k in revealed:
        # Another index for the same payword, or the payword with one bit flipped,
        # never passes; then the true one does.
        wrong_k = data.draw(st.integers(checker.highest + 1, length).filter(lambda j, k=k: j != k)
                            ) if length > checker.highest + 1 else None
        if wrong_k is not None:
            with pytest.raises(BadPayword):
                checker.accept(wrong_k, chain.payword(k))
        bit = data.draw(st.integers(0, 255))
        flipped = bytearray(chain.payword(k))
        flipped[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(BadPayword):
            checker.accept(k, bytes(flipped))
        checker.accept(k, chain.payword(k))
        assert checker.highest == k
    assert hash_to_root(checker.payword, checker.highest) == chain.root


# -- the bank's check of a redemption (sans-IO) ------------------------------------------

def commitment(chain: PayWordChain, unit: int = 10) -> PurseCommitment:
    return PurseCommitment(chain=b"c" * 32, buyer="buyer", seller="seller", bank="bank",
                           root=chain.root, length=chain.length, unit=Amount("EUR", unit),
                           expires=10**12)


def test_a_redemption_pays_index_units_and_returns_the_rest() -> None:
    chain = PayWordChain.new(6)
    body = commitment(chain)
    assert check_redemption(body, index=4, payword=chain.payword(4)) == (
        Amount("EUR", 40), Amount("EUR", 20))
    assert check_redemption(body, index=6, payword=chain.payword(6)) == (
        Amount("EUR", 60), Amount("EUR", 0))
    with pytest.raises(BadPayword):
        check_redemption(body, index=3, payword=chain.payword(4))
    with pytest.raises(BadPayword):
        check_redemption(body, index=0, payword=chain.root)
    with pytest.raises(BeyondChain):
        check_redemption(body, index=7, payword=PayWordChain(chain.seed, 7).payword(7))


def test_a_commitment_body_is_checked_on_construction() -> None:
    chain = PayWordChain.new(3)
    good = commitment(chain).to_body()
    assert PurseCommitment.from_body(good) == commitment(chain)
    for key, value in [("seller", "buyer"),  # pays itself
                       ("length", 0), ("length", MAX_LENGTH + 1),
                       ("root", b"r" * 31), ("chain", b""),
                       ("unit", {"currency": "EUR", "minor_units": 0})]:
        with pytest.raises(BadCommitment) as refused:
            PurseCommitment.from_body({**good, key: value})
        assert refused.value.code == "purse.bad_commitment"
        assert refused.value.detail["field"] == key
    with pytest.raises(BadCommitment):  # length x unit past signed 64-bit
        PurseCommitment.from_body({**good, "length": MAX_LENGTH,
                                   "unit": {"currency": "EUR", "minor_units": 2**62}})
    assert not issubclass(BadCommitment, BadRequest)


# -- hostile bodies ----------------------------------------------------------------------

_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(1 << 64), 1 << 64), st.binary(max_size=40),
              st.text(max_size=10), st.just(b"\x00" * 32)),
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.sampled_from(
                                ["chain", "state", "index", "payword", "commitment",
                                 "reservation", "redeemed", "bank_certificate",
                                 "idempotency_key", "root", "length", "unit", "expires",
                                 "buyer", "seller", "bank", "order", "currency",
                                 "minor_units", "x"]), inner, max_size=8)),
    max_leaves=12)


@settings(max_examples=200, deadline=None)
@given(value=_VALUES, which=st.integers(0, 8))
def test_hostile_bodies_raise_only_coded_refusals(value: object, which: int) -> None:
    from semper.services import ServiceError
    from semper.services.payment import purse

    body = (purse.ReserveRequest, purse.ReserveAnswer, purse.RedeemRequest,
            purse.RedeemAnswer, purse.StatusRequest, purse.StatusAnswer,
            purse.PurseCommitment, purse.PurseReservation, purse.PurseRedeemed)[which]
    try:
        body.from_wire(value)
    except ServiceError as exc:
        assert exc.code.startswith(("payment.", "purse.", "statement.", "money.", "auth."))


def test_check_refuses_as_accept_does_and_changes_nothing() -> None:
    chain = PayWordChain.new(4)
    checker = PaywordChecker(chain.root, 4, in_order=True)
    checker.check(1, chain.payword(1))
    assert (checker.highest, checker.payword) == (0, chain.root)
    with pytest.raises(OutOfOrder):
        checker.check(2, chain.payword(2))
    checker.accept(1, chain.payword(1))
    with pytest.raises(Replayed):
        checker.check(1, chain.payword(1))
