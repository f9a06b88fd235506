"""The purse's bank half attacked as an outside peer that read protocol.md 8.6 would
(issue 10 review): redemptions by the wrong party, with indexes off the chain, twice
at once; reservations whose value leaves the books' range or names a seller with no
account. Each refusal has its code and moves no money (the books balance after
each). In-process agents over loopback TLS, as tests/test_delivery_agents.py."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import trio
from test_delivery_agents import DEADLINE, half_bought, market

from semper.agents import Agent, AgentConfig
from semper.agents.components import _ledger
from semper.agents.components._purse import Purse
from semper.services import Amount
from semper.services.payment.purse import (
    PayWordChain,
    PurseCommitment,
    RedeemRequest,
)
from semper.services.statements import Statement
from semper.transport import RemoteError

RESERVED = _ledger.system_account("purse-reserved")


async def books(m: Any) -> dict[str, int]:
    """Everyone's EUR as the bank's books say (they must balance)."""

    def read(c: Any) -> dict[str, int]:
        _ledger.check_books(c)
        return {who: _ledger.balances(c, who).get("EUR", 0)
                for who in ("buyer", "seller", RESERVED)}

    return await m.bank.database.read(read)


async def refused(call: Any, code: str) -> RemoteError:
    with pytest.raises(RemoteError) as info:
        await call
    assert info.value.code == code, info.value
    return info.value


async def chain_of_two(m: Any, tmp_path: Path, key: str) -> tuple[Any, bytes, bytes]:
    """A purse stream of 5 chunks stopped after 2: the buyer's chain record, and
    paywords 2 (what the seller holds) and 3."""
    _, chain = await half_bought(m, tmp_path, key, "purse", chunks=2)
    assert chain is not None
    purse = m.buyer.component(Purse)
    second = await purse.pay(chain, 1)  # payword 2, revealed before
    record = await purse.get(chain)
    secret = await m.buyer.database.read(lambda c: c.execute(
        "SELECT secret FROM purse_chains WHERE chain = ?", (chain,)).fetchone()[0])
    return record, second, PayWordChain.from_secret_bytes(secret).payword(3)


def redeem(record: Any, payword: bytes, index: int, **swap: Any) -> dict[str, Any]:
    fields = {"commitment": record.commitment, "reservation": record.reservation,
              "payword": payword, "index": index, **swap}
    return RedeemRequest(**fields).to_wire()  # type: ignore[no-any-return]


async def test_only_the_chains_seller_redeems_and_only_a_payword_of_the_chain(
        tmp_path: Path) -> None:
    """The buyer (who holds every payword) and a third agent get purse.unknown_chain;
    the seller with index 0, n+1, 2^62, a payword that is not w_k, or another
    statement as the reservation is refused with its code; nothing moves."""
    with trio.fail_after(DEADLINE):
        async with market(tmp_path) as m:
            record, second, third = await chain_of_two(m, tmp_path, "a1")
            held = await books(m)
            for agent in (m.buyer, Agent(AgentConfig.load(m.folder / "arbiter" / "agent.toml"))):
                if agent is m.buyer:
                    await refused(agent.request("bank", "bank", "purse_redeem",
                                                redeem(record, second, 2)),
                                  "purse.unknown_chain")
                else:
                    async with agent.session():
                        await refused(agent.request("bank", "bank", "purse_redeem",
                                                    redeem(record, second, 2)),
                                      "purse.unknown_chain")
            for payword, index, code in ((second, 0, "purse.bad_payword"),
                                         (second, 6, "purse.beyond_chain"),
                                         (second, 2 ** 62, "purse.beyond_chain"),
                                         (third, 2, "purse.bad_payword"),
                                         (bytes(32), 1, "purse.bad_payword")):
                with trio.fail_after(5):  # no 2^62 hashes
                    await refused(m.seller.request("bank", "bank", "purse_redeem",
                                                   redeem(record, payword, index)), code)
            await refused(m.seller.request("bank", "bank", "purse_redeem", redeem(
                record, second, 2, reservation=record.commitment)), "payment.bad_request")
            assert await books(m) == held


async def test_two_redemptions_at_once_pay_once(tmp_path: Path) -> None:
    """The seller asks twice at once, with payword 2 and with payword 3 (the buyer
    revealed it): one is paid, the other is purse.already_redeemed, and the books
    show exactly one redemption: paid + returned = the reservation."""
    with trio.fail_after(DEADLINE):
        async with market(tmp_path) as m:
            record, second, third = await chain_of_two(m, tmp_path, "a2")
            held = await books(m)
            outcomes: list[Any] = []

            async def ask(payword: bytes, index: int) -> None:
                try:
                    answer = await m.seller.request("bank", "bank", "purse_redeem",
                                                    redeem(record, payword, index))
                    outcomes.append(Statement.from_wire(answer["redeemed"]).body["index"])
                except RemoteError as exc:
                    outcomes.append(exc.code)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(ask, second, 2)
                nursery.start_soon(ask, third, 3)
            paid = [o for o in outcomes if isinstance(o, int)]
            assert len(paid) == 1 and "purse.already_redeemed" in outcomes, outcomes
            after = await books(m)
            assert after["seller"] == held["seller"] + 3 * paid[0]
            assert after["buyer"] == held["buyer"] + 3 * (5 - paid[0])
            assert after[RESERVED] == held[RESERVED] - 15


async def test_reservations_out_of_range_or_for_no_account_move_nothing(
        tmp_path: Path) -> None:
    """A commitment whose length x unit passes 2^63-1 is purse.bad_commitment before
    any hash or book is touched; one in a currency the seller holds no account in is
    payment.unknown_account; one for more than the buyer holds is
    payment.insufficient_funds. None moves money."""
    with trio.fail_after(DEADLINE):
        async with market(tmp_path) as m:
            held = await books(m)
            purse = m.buyer.component(Purse)
            now = m.buyer.clock.now_ms()
            base = PurseCommitment(chain=bytes(range(32)), buyer="buyer", seller="seller",
                                   bank="bank", root=bytes(32), length=2,
                                   unit=Amount("EUR", 1), expires=now + 60_000)
            body = base.to_body()
            body["length"], body["unit"] = 2 ** 20, {"currency": "EUR",
                                                     "minor_units": 2 ** 62}
            cases = [(body, "purse.bad_commitment"),
                     (dataclasses.replace(base, unit=Amount("JPY", 1)).to_body(),
                      "payment.unknown_account"),
                     (dataclasses.replace(base, unit=Amount("EUR", 10 ** 12)).to_body(),
                      "payment.insufficient_funds")]
            for i, (terms, code) in enumerate(cases):
                statement = m.buyer.evidence.sign("purse.commitment", terms)
                request = {"commitment": statement.to_wire(), "idempotency_key": f"r{i}"}
                await refused(m.buyer.request("bank", "bank", "purse_reserve", request), code)
            assert await books(m) == held
            assert await purse.list() == []


async def test_a_purse_ticket_takes_only_a_chain_for_this_order_item_and_seller(
        tmp_path: Path) -> None:
    """Held: the seller's delivery.ticket checks the chain it is handed against the
    order before it issues or stores anything: a chain reserved for another seller,
    of another length, unit or order (or none), a reservation of another chain, are
    refused with the purse's codes; a good second chain for an order ticketed
    already is delivery.busy. The seller keeps one ticket and one chain for it."""
    from test_attack_delivery import ticketed
    from test_delivery_agents import shopper_order

    with trio.fail_after(DEADLINE):
        async with market(tmp_path) as m:
            monkeypatch = pytest.MonkeyPatch()
            try:
                await ticketed(m, tmp_path, "t1", monkeypatch)
            finally:
                monkeypatch.undo()
            order = shopper_order(m, "t1")
            purse = m.buyer.component(Purse)
            eur3 = Amount("EUR", 3)
            await m.bank.database.transaction(  # another seller the bank pays
                lambda c: _ledger.open_account(c, "arbiter", "EUR"))
            chains = {name: await purse.open_chain(payee, length, unit, digest, name)
                      for name, payee, length, unit, digest in (
                          ("length", "seller", 4, eur3, order),
                          ("unit", "seller", 5, Amount("EUR", 2), order),
                          ("order", "seller", 5, eur3, None),
                          ("payee", "arbiter", 5, eur3, order),
                          ("other", "seller", 5, eur3, order))}
            cases = [(chains["payee"], "purse.bad_commitment", "seller"),
                     (chains["length"], "purse.bad_commitment", "length"),
                     (chains["unit"], "purse.bad_commitment", "unit"),
                     (chains["order"], "purse.bad_commitment", "order"),
                     ((chains["other"][0], chains["unit"][1]), "payment.bad_confirmation",
                      None),
                     (chains["other"], "delivery.busy", None)]
            for (commitment, reservation), code, field in cases:
                error = await refused(m.buyer.request("seller", "delivery", "ticket", {
                    "order": order, "commitment": commitment.to_bytes(),
                    "reservation": reservation.to_bytes()}), code)
                if field is not None:
                    assert error.detail["field"] == field, error.detail
            assert await m.seller.database.read(lambda c: c.execute(
                "SELECT (SELECT count(*) FROM delivery_tickets),"
                " (SELECT count(*) FROM delivery_chains)").fetchone()) == (1, 1)


async def test_a_sweep_and_a_redemption_take_a_chain_once(tmp_path: Path) -> None:
    """Held (b): the sweep (its clock past expires + grace) released one chain: its
    seller's redemption after it is purse.expired and nothing moves; a chain
    redeemed first is not released by a sweep after (the seller keeps its pay). The
    books balance, and @purse-reserved ends at zero."""
    from semper.agents.components._bank import BankService
    from semper.agents.instruments.purse import release_expired
    from semper.services.payment.purse import REDEEM_GRACE_MS

    with trio.fail_after(DEADLINE):
        async with market(tmp_path) as m:
            start = await books(m)
            swept, second_a, _ = await chain_of_two(m, tmp_path, "s1")
            kept, second_b, _ = await chain_of_two(m, tmp_path, "s2")
            answer = await m.seller.request("bank", "bank", "purse_redeem",
                                            redeem(kept, second_b, 2))
            assert Statement.from_wire(answer["redeemed"]).body["index"] == 2
            book = m.bank.component(BankService).book
            later = max(swept.expires, kept.expires) + REDEEM_GRACE_MS + 1
            released = await m.bank.database.transaction(
                lambda c: release_expired(book, c, now_ms=later))
            assert released == 1
            await refused(m.seller.request("bank", "bank", "purse_redeem",
                                           redeem(swept, second_a, 2)), "purse.expired")
            after = await books(m)
            assert after["seller"] == start["seller"] + 2 * 3
            assert after["buyer"] == start["buyer"] - 2 * 3
            assert after[RESERVED] == 0


# -- (c) the bank's CPU: a payword is hashed up to 2^20 times ---------------------------


async def test_a_sellers_bad_paywords_cost_the_bank_a_bounded_number_of_hash_checks(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A redemption's check hashes the payword `index` times (2^20 for the longest
    chain: ~0.35 s of CPU here). The chain's seller could send bad paywords without
    end, many at once, and the bank hashed every one, in parallel: one seller (with
    one chain a colluding buyer reserved, its money back later) kept the bank's cores
    busy. Now a chain's checks run one at a time, and after MAX_BAD_PAYWORDS refused
    ones its redemptions are refused without hashing (purse.bad_payword, detail
    `tries`); nothing moves."""
    import semper.agents.instruments.purse as bank_purse

    hashed: list[int] = []
    real = bank_purse.check_redemption

    def counting(*args: Any, **kwargs: Any) -> Any:
        hashed.append(kwargs["index"])
        return real(*args, **kwargs)

    monkeypatch.setattr(bank_purse, "check_redemption", counting)
    with trio.fail_after(DEADLINE):
        async with market(tmp_path) as m:
            record, second, _ = await chain_of_two(m, tmp_path, "cpu")
            held = await books(m)
            codes: list[Any] = []

            async def bad(n: int) -> None:
                try:
                    await m.seller.request("bank", "bank", "purse_redeem",
                                           redeem(record, bytes([n]) * 32, 5))
                except RemoteError as exc:
                    codes.append((exc.code, exc.detail.get("tries")))

            async with trio.open_nursery() as nursery:
                for n in range(8):
                    nursery.start_soon(bad, n)
            assert {code for code, _ in codes} == {"purse.bad_payword"}
            assert len(hashed) == bank_purse.MAX_BAD_PAYWORDS, hashed
            assert sum(1 for _, tries in codes if tries is not None) == 8 - len(hashed)
            # The good one, after: refused as well, without a hash (the seller's doing).
            await refused(m.seller.request("bank", "bank", "purse_redeem",
                                           redeem(record, second, 2)), "purse.bad_payword")
            assert len(hashed) == bank_purse.MAX_BAD_PAYWORDS
            assert await books(m) == held


async def test_bad_paywords_of_a_long_chain_are_hashed_in_threads_a_bounded_number(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same for a chain long enough that its checks run in worker threads
    (index above 4096): six bad paywords at once cost three checks, one at a time."""
    import semper.agents.instruments.purse as bank_purse

    running, most, hashed = [0], [0], [0]
    real = bank_purse.check_redemption

    def counting(*args: Any, **kwargs: Any) -> Any:
        running[0] += 1
        most[0] = max(most[0], running[0])
        hashed[0] += 1
        try:
            return real(*args, **kwargs)
        finally:
            running[0] -= 1

    monkeypatch.setattr(bank_purse, "check_redemption", counting)
    with trio.fail_after(DEADLINE):
        async with market(tmp_path) as m:
            purse = m.buyer.component(Purse)
            commitment, reservation = await purse.open_chain("seller", 5000,
                                                             Amount("EUR", 1), None, "long")
            held = await books(m)
            codes: list[str] = []

            async def bad(n: int) -> None:
                try:
                    await m.seller.request("bank", "bank", "purse_redeem", RedeemRequest(
                        commitment=commitment, reservation=reservation,
                        payword=bytes([n]) * 32, index=5000).to_wire())
                except RemoteError as exc:
                    codes.append(exc.code)

            async with trio.open_nursery() as nursery:
                for n in range(6):
                    nursery.start_soon(bad, n)
            assert codes == ["purse.bad_payword"] * 6
            assert hashed[0] == bank_purse.MAX_BAD_PAYWORDS and most[0] == 1
            assert await books(m) == held
