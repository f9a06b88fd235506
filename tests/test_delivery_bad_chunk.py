"""A seller that sends a chunk whose proof fails (issue 10, "Done when"): altered bytes,
a short chunk, a wrong or padded proof. The buyer stops with ``delivery.bad_chunk``,
writes nothing of that chunk, pays no payword beyond it (its purse and the seller's
chain records agree), and a rerun against an honest seller resumes at that chunk and
pays nothing twice."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio
from test_delivery_agents import (
    CHUNK,
    CONTENT,
    DEADLINE,
    PRICE,
    SKU,
    balances_of,
    market,
    seller_chain,
    streams_ended,
)

from semper.agents.components._catalogue import CatalogueItem
from semper.agents.components._purchase import Shopper
from semper.services.merkle import MerkleTree

BAD = 2  # the chunk the dishonest seller spoils (of 5)


def _altered(data: bytes) -> bytes:
    return bytes([data[0] ^ 1]) + data[1:]


def _short(data: bytes) -> bytes:
    return data[:-1]


def _wrong_proof(proof: list[bytes]) -> list[bytes]:
    return [bytes([proof[0][0] ^ 1]) + proof[0][1:], *proof[1:]]


def _padded_proof(proof: list[bytes]) -> list[bytes]:
    return [*proof, bytes(32)]


def spoil(monkeypatch: pytest.MonkeyPatch, *, data: Any = None, proof: Any = None) -> None:
    """The seller sends chunk ``BAD`` with its bytes or its proof changed (the
    seller's reads: the buyer verifies with ``verify_inclusion``, not these)."""
    if data is not None:
        real_chunk = CatalogueItem.chunk

        def chunk(self: CatalogueItem, index: int) -> bytes:
            got = real_chunk(self, index)
            return data(got) if index == BAD else got

        monkeypatch.setattr(CatalogueItem, "chunk", chunk)
    if proof is not None:
        real_proof = MerkleTree.inclusion_proof

        def inclusion_proof(self: MerkleTree, index: int, *args: Any) -> list[bytes]:
            got = real_proof(self, index, *args)
            return proof(list(got)) if index == BAD else got

        monkeypatch.setattr(MerkleTree, "inclusion_proof", inclusion_proof)


async def spent(m: Any, chain: bytes) -> int:
    return await m.buyer.database.read(lambda c: c.execute(  # type: ignore[no-any-return]
        "SELECT spent FROM purse_chains WHERE chain = ?", (chain,)).fetchone()[0])


@pytest.mark.parametrize(("module", "data", "proof"), [
    ("purse", _altered, None),  # the instance: a chunk's bytes altered
    ("purse", None, _wrong_proof),  # a wrong proof
    ("purse", _short, None),  # more of the kind: a chunk one byte short
    ("purse", None, _padded_proof),  # a proof with a hash too many
    ("transfer", _altered, None),  # paid whole: nothing written, the rerun resumes
], ids=["altered-purse", "wrong-proof-purse", "short-purse", "padded-proof-purse",
        "altered-transfer"])
async def test_a_chunk_whose_proof_fails_stops_the_stream_and_moves_no_money(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, module: str, data: Any,
        proof: Any) -> None:
    with trio.fail_after(DEADLINE):
        async with market(tmp_path) as m:
            before = await balances_of(m, "buyer")
            output = tmp_path / "clip.bin"
            part = output.with_name("clip.bin.part")
            with monkeypatch.context() as patched:
                spoil(patched, data=data, proof=proof)
                with pytest.raises(Exception) as info:
                    await Shopper(m.buyer, output=output).buy("seller", SKU, module, "bad")
                assert getattr(info.value, "code", None) == "delivery.bad_chunk", info.value
                assert info.value.detail == {"index": BAD}
                assert "--idempotency-key bad" in info.value.message  # how to resume
            # Nothing of the chunk written: the file holds chunks 0..BAD-1 only.
            assert not output.exists()
            assert part.read_bytes() == CONTENT[:BAD * CHUNK]
            verified, chain = await m.buyer.database.read(lambda c: c.execute(
                "SELECT verified, chain FROM delivery_downloads WHERE key = 'bad'"
            ).fetchone())
            assert verified == BAD
            if module == "purse":
                # Payword BAD+1 paid chunk BAD-1's successor, the spoiled chunk (the
                # one-chunk window), and no payword beyond it left the buyer, nor
                # reached the seller; the seller sent at most one chunk on credit
                # (chunk BAD+1, asked with payword BAD+1, if it got there in time).
                await streams_ended(m)
                assert await spent(m, chain) == BAD + 1
                _, highest, state, _ = await seller_chain(m)
                assert highest in (BAD, BAD + 1) and state == "open", highest
                sent = await m.seller.database.read(lambda c: c.execute(
                    "SELECT sent FROM delivery_chains").fetchone()[0])
                assert sent == highest + 1
            # Against an honest seller the same purchase resumes at the bad chunk,
            # which it paid already: nothing is paid twice.
            again = Shopper(m.buyer, output=output)
            done = await again.buy("seller", SKU, module, "bad")
            assert again.streamed["bad"].resumed_from == BAD
            assert done.state == "done" and done.receipt is not None
            assert output.read_bytes() == CONTENT
            assert (await balances_of(m, "buyer"))["EUR"] == before["EUR"] - PRICE
            if module == "purse":
                assert await spent(m, chain) == 5
                assert (await seller_chain(m))[1:3] == (5, "redeemed")
