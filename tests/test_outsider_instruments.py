"""Issue 11: docs/protocol.md is enough for an outside wallet and cardholder.

Written from the document alone, as an outsider would: the canonical encoding
(6A.1), statements signed and checked (6A.3, 6A.4), RFC 9474 blinding (from the
RFC's text, section 4), coins and spends (8.7), the OI, PI, their digests, the dual
signature and the HPKE-sealed PI (8.8), handed over with ``payment.accept`` (8.3)
to a real seller paid through a real bank. Nothing instrument-specific comes from
semper: only the TLS channel (an ``Agent`` used as a transport, as
tests/test_hardening_outsider.py does) and, for the card, ``semper wallet --json``.
Where the document was not enough it was fixed there: the payment result's
settlement, a refund order's original, a receipt's payment_type and the refund's
confirmation named only transfer and cheque statements (an ecash refund is an
``ecash.refund_voucher``); ``bank.ecash_exchange`` takes coins and a voucher together;
a card proof handed over again with a new PI is the same payment; the spend checks'
``key_id``/``coin_key`` details are hex and ``ecash.bad_withdrawal``'s are amounts.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import sys
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa, x25519
from cryptography.hazmat.primitives.hpke import AEAD, KDF, KEM, Suite
from market_helpers import DEADLINE, config_of, running

from semper.agents.operator._market import init_market
from semper.agents.runtime._agent import Agent
from semper.transport import RemoteError

# -- section 6A: canonical msgpack, statements -------------------------------------


def _sorted(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _sorted(value[k]) for k in sorted(value, key=lambda k: k.encode())}
    if isinstance(value, (list, tuple)):
        return [_sorted(v) for v in value]
    return value


def canonical(value: Any) -> bytes:
    """6A.1: shortest forms (msgpack-python's, strict), map keys in UTF-8 byte order."""
    return msgpack.packb(_sorted(value), use_bin_type=True, strict_types=True)


def digest(statement: dict[str, Any]) -> bytes:
    """6A.3: SHA-256 of the whole statement map's canonical bytes."""
    return hashlib.sha256(canonical(statement)).digest()


def signed_bytes(statement: dict[str, Any]) -> bytes:
    five = {k: statement[k] for k in ("body", "issued_at", "nonce", "signer", "type")}
    return b"semper-statement-v1\x00" + canonical(five)


@dataclass
class Signer:
    """An agent's key and certificate, read from its folder (cert.pem, key.pem)."""

    key: ed25519.Ed25519PrivateKey
    certificate: bytes  # DER

    @classmethod
    def of(cls, folder: Path) -> Signer:
        key = serialization.load_pem_private_key((folder / "key.pem").read_bytes(), None)
        assert isinstance(key, ed25519.Ed25519PrivateKey)
        cert = x509.load_pem_x509_certificate((folder / "cert.pem").read_bytes())
        return cls(key, cert.public_bytes(serialization.Encoding.DER))

    def sign(self, type: str, body: dict[str, Any]) -> dict[str, Any]:
        """6A.2 and 6A.3: the seven keys, Ed25519 over the signed bytes."""
        statement = {"v": 1, "type": type, "body": body,
                     "signer": hashlib.sha256(self.certificate).digest(),
                     "issued_at": time.time_ns() // 1_000_000, "nonce": os.urandom(16)}
        statement["signature"] = self.key.sign(signed_bytes(statement))
        return statement


def verify(statement: dict[str, Any], certificate: bytes, *, root: x509.Certificate,
           type: str, signer: str) -> dict[str, Any]:
    """6A.4, the checks an outsider can make with the root (the CRL left out): the
    certificate is the signer's and the root's, the signature, the type, the agent."""
    assert set(statement) == {"v", "type", "body", "signer", "issued_at", "nonce", "signature"}
    assert statement["v"] == 1
    assert statement["signer"] == hashlib.sha256(certificate).digest()
    assert statement["issued_at"] <= time.time_ns() // 1_000_000 + 300_000
    cert = x509.load_der_x509_certificate(certificate)
    cert.verify_directly_issued_by(root)
    public = cert.public_key()
    assert isinstance(public, ed25519.Ed25519PublicKey)
    public.verify(statement["signature"], signed_bytes(statement))
    assert statement["type"] == type
    [cn] = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    assert cn.value == signer
    body: dict[str, Any] = statement["body"]
    return body


# -- RFC 9474, RSABSSA-SHA384-PSS-Randomized, client side (sections 4.1, 4.2, 4.4) --

HLEN = SLEN = 48  # SHA-384, salt 48 bytes (8.7)


def _mgf1(seed: bytes, length: int) -> bytes:
    out = b"".join(hashlib.sha384(seed + i.to_bytes(4, "big")).digest()
                   for i in range(-(-length // HLEN)))
    return out[:length]


def _emsa_pss_encode(msg: bytes, em_bits: int, salt: bytes) -> bytes:
    """RFC 8017 section 9.1.1 with SHA-384 and MGF1-SHA-384."""
    em_len = -(-em_bits // 8)
    m_hash = hashlib.sha384(msg).digest()
    h = hashlib.sha384(b"\x00" * 8 + m_hash + salt).digest()
    db = b"\x00" * (em_len - SLEN - HLEN - 2) + b"\x01" + salt
    masked = bytearray(a ^ b for a, b in zip(db, _mgf1(h, em_len - HLEN - 1), strict=True))
    masked[0] &= 0xFF >> (8 * em_len - em_bits)
    return bytes(masked) + h + b"\xbc"


def blind(public: rsa.RSAPublicKey, prepared: bytes) -> tuple[bytes, int]:
    """RFC 9474 4.2 Blind: (blinded_msg, inv)."""
    numbers = public.public_numbers()
    n, e, k = numbers.n, numbers.e, (public.key_size + 7) // 8
    m = int.from_bytes(_emsa_pss_encode(prepared, public.key_size - 1, os.urandom(SLEN)), "big")
    while True:
        r = secrets.randbelow(n - 1) + 1
        try:
            inv = pow(r, -1, n)
        except ValueError:
            continue
        break
    return (m * pow(r, e, n) % n).to_bytes(k, "big"), inv


def finalize(public: rsa.RSAPublicKey, prepared: bytes, blind_sig: bytes, inv: int) -> bytes:
    """RFC 9474 4.4 Finalize: unblind, then RSASSA-PSS-VERIFY (raises when bad)."""
    n, k = public.public_numbers().n, (public.key_size + 7) // 8
    signature = (int.from_bytes(blind_sig, "big") * inv % n).to_bytes(k, "big")
    verify_coin(public, prepared, signature)
    return signature


def verify_coin(public: rsa.RSAPublicKey, prepared: bytes, signature: bytes) -> None:
    public.verify(signature, prepared,
                  padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=SLEN),
                  hashes.SHA384())


# -- the world: a market, its bank and seller running, the outsider's channel -------


@pytest.fixture(scope="module")
def market(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("outsider") / "market"
    init_market(folder)
    return folder


@dataclass
class World:
    folder: Path
    me: Agent  # the buyer's TLS channels only
    signer: Signer
    root: x509.Certificate
    seller_certificate: bytes = b""

    async def call(self, peer: str, service: str, op: str, body: Any) -> Any:
        return await self.me.request(peer, service, op, body)

    async def order(self, sku: str, module: str, key: str) -> tuple[bytes, dict[str, Any]]:
        """commerce.catalogue then commerce.order (9.5): (the order digest, its amount)."""
        catalogue = await self.call("seller", "commerce", "catalogue", {})
        self.seller_certificate = catalogue["certificate"]
        [offer] = [o for o in catalogue["offers"] if o["body"]["sku"] == sku]
        verify(offer, catalogue["certificate"], root=self.root, type="commerce.offer",
               signer="seller")
        order = self.signer.sign("commerce.order", {
            "buyer": "buyer", "seller": "seller", "offer": offer, "offer_digest": digest(offer),
            "quantity": 1, "payment_module": module, "idempotency_key": key})
        answer = await self.call("seller", "commerce", "order", {"order": order})
        assert answer == {"order": digest(order), "amount": offer["body"]["price"],
                          "payment_module": module}
        return answer["order"], answer["amount"]


@asynccontextmanager
async def world(folder: Path, *also: str) -> AsyncIterator[World]:
    root = x509.load_pem_x509_certificate((folder / "ca" / "root.pem").read_bytes())
    with trio.fail_after(DEADLINE):
        async with AsyncExitStack() as stack:
            for agent_id in ("bank", "seller", *also):
                await stack.enter_async_context(running(Agent(config_of(folder, agent_id))))
            me = Agent(config_of(folder, "buyer"))
            async with me.session():
                yield World(folder, me, Signer.of(folder / "buyer"), root)


def eur(units: int) -> dict[str, Any]:
    return {"currency": "EUR", "minor_units": units}


# -- 8.7: ecash ----------------------------------------------------------------------


@dataclass
class Coin:
    value: int
    key_id: bytes
    public: rsa.RSAPublicKey
    coin_key: ed25519.Ed25519PrivateKey
    prefix: bytes
    signature: bytes = b""

    @property
    def coin_pub(self) -> bytes:
        return self.coin_key.public_key().public_bytes(serialization.Encoding.Raw,
                                                       serialization.PublicFormat.Raw)

    @property
    def prepared(self) -> bytes:
        """prefix || m, m = "semper-ecash-coin-v1" 0x00 || key_id || coin_key."""
        return self.prefix + b"semper-ecash-coin-v1\x00" + self.key_id + self.coin_pub

    def wire(self) -> dict[str, Any]:
        return {"key_id": self.key_id, "coin_key": self.coin_pub, "prefix": self.prefix,
                "signature": self.signature}

    def spend(self, *, purpose: str, payee: str, reference: bytes) -> dict[str, Any]:
        contract = {"purpose": purpose, "bank": "bank", "payee": payee,
                    "reference": reference, "amount": eur(self.value)}
        signature = self.coin_key.sign(b"semper-ecash-spend-v1\x00" + canonical(contract))
        return {"coin": self.wire(), "signature": signature}


async def withdraw(w: World, units: int, key: str) -> list[Coin]:
    """The wallet's steps 1 and 2: keys, a greedy split, blind, withdraw, Finalize."""
    answer = await w.call("bank", "bank", "ecash_keys", {"currency": "EUR"})
    now = time.time_ns() // 1_000_000
    keys: dict[int, tuple[bytes, rsa.RSAPublicKey]] = {}
    for statement in answer["denominations"]:  # newest first: keep the first per value
        body = verify(statement, answer["bank_certificate"], root=w.root,
                      type="ecash.denomination", signer="bank")
        assert body["bank"] == "bank" and body["currency"] == "EUR"
        assert body["key_id"] == hashlib.sha256(body["public_key"]).digest()
        public = serialization.load_der_public_key(body["public_key"])
        assert isinstance(public, rsa.RSAPublicKey) and public.key_size == 2048
        if body["withdraw_from_ms"] <= now <= body["withdraw_until_ms"]:
            keys.setdefault(body["value"]["minor_units"], (body["key_id"], public))
    coins, left = [], units
    for value in sorted(keys, reverse=True):
        while left >= value:
            key_id, public = keys[value]
            coins.append(Coin(value, key_id, public, ed25519.Ed25519PrivateKey.generate(),
                              os.urandom(32)))
            left -= value
    assert left == 0
    blinded = [(coin, *blind(coin.public, coin.prepared)) for coin in coins]
    listed = [{"key_id": coin.key_id, "blinded": b} for coin, b, _ in blinded]
    answer = await w.call("bank", "bank", "ecash_withdraw", {
        "amount": eur(units), "blinded": listed, "idempotency_key": key})
    body = verify(answer["withdrawn"], answer["bank_certificate"], root=w.root,
                  type="ecash.withdrawn", signer="bank")
    order = hashlib.sha256(canonical([[c.key_id, b] for c, b, _ in blinded])).digest()
    assert body == {"bank": "bank", "holder": "buyer", "amount": eur(units),
                    "coins": len(coins), "order": order, "idempotency_key": key,
                    "entry": body["entry"]}
    for (coin, _, inv), blind_sig in zip(blinded, answer["blind_signatures"], strict=True):
        coin.signature = finalize(coin.public, coin.prepared, blind_sig, inv)
    return coins


async def test_an_outside_wallet_withdraws_pays_and_is_refused_the_same_coins_again(
        market: Path) -> None:
    async with world(market) as w:
        coins = await withdraw(w, 1250, "outsider-withdraw-1")
        assert sorted(c.value for c in coins) == [50, 200, 1000]
        for coin in coins:  # what a payee checks offline: RSASSA-PSS-VERIFY of prefix || m
            verify_coin(coin.public, coin.prepared, coin.signature)

        reference, amount = await w.order("guide-001", "ecash", "outsider-ecash-1")
        assert amount == eur(1250)
        spends = [c.spend(purpose="payment", payee="seller", reference=reference)
                  for c in coins]
        accept = {"module": "ecash", "reference": reference, "proof": {"spends": spends}}
        result = await w.call("seller", "payment", "accept", accept)
        assert {k: result[k] for k in ("module", "payer", "payee", "amount", "reference")} == {
            "module": "ecash", "payer": "buyer", "payee": "seller", "amount": amount,
            "reference": reference}
        settled = verify(result["settlement"], result["bank_certificate"], root=w.root,
                         type="payment.ecash_deposited", signer="bank")
        assert settled == {"bank": "bank", "payee": "seller", "amount": amount,
                           "reference": reference, "coins": [c.coin_pub for c in coins],
                           "entry": settled["entry"]}
        # The same proof handed over again is the same payment: the first result.
        assert await w.call("seller", "payment", "accept", accept) == result
        fetched = await w.call("seller", "commerce", "fetch", {"order": reference})
        receipt = verify(fetched["receipt"], w.seller_certificate, root=w.root,
                         type="commerce.receipt", signer="seller")
        assert (receipt["payment"], receipt["payment_type"]) == (
            digest(result["settlement"]), "payment.ecash_deposited")

        # The same coins for another order: the seller deposits, the bank refuses.
        other, _ = await w.order("guide-001", "ecash", "outsider-ecash-2")
        again = [c.spend(purpose="payment", payee="seller", reference=other) for c in coins]
        with pytest.raises(RemoteError) as refused:
            await w.call("seller", "payment", "accept",
                         {"module": "ecash", "reference": other, "proof": {"spends": again}})
        assert refused.value.code == "ecash.double_spent"
        detail = refused.value.detail
        assert detail["coin_key"] == coins[0].coin_pub.hex()
        assert detail["first"] == spends[0]  # the evidence: the coin key signed the first


# -- 8.8: card -----------------------------------------------------------------------


_CARDS: dict[Path, dict[str, str]] = {}


async def my_card(folder: Path) -> dict[str, str]:
    """The card `semper market init` issued: `semper wallet --json`'s `cards` (asked
    once per market: a process)."""
    if folder in _CARDS:
        return _CARDS[folder]
    done = await trio.run_process(
        [str(Path(sys.executable).parent / "semper"), "wallet", "--json", "--config",
         str(folder / "buyer" / "agent.toml")], capture_stdout=True, capture_stderr=True)
    [card] = json.loads(done.stdout)["cards"]
    _CARDS[folder] = card
    return card


async def test_an_outside_cardholder_pays_by_dual_signature_and_gets_the_capture(
        market: Path) -> None:
    async with world(market, "ca") as w:
        # 8.9: the market's policy, signed by the root itself, carried by the CRL op.
        crl = await w.call("ca", "certificates", "crl", {"known": 0, "policy": 0})
        policy = crl["policy"]
        assert policy["signer"] == hashlib.sha256(
            w.root.public_bytes(serialization.Encoding.DER)).digest()
        root_key = w.root.public_key()
        assert isinstance(root_key, ed25519.Ed25519PublicKey)
        root_key.verify(policy["signature"], signed_bytes(policy))
        assert policy["type"] == "market.policy"
        assert {k: policy["body"][k] for k in ("allowed", "forbidden", "required", "serial")
                } == {"allowed": None, "forbidden": [], "required": [], "serial": 1}
        # 8.3 and 8.9: the seller takes both instruments from us, through its bank.
        offered = await w.call("seller", "payment", "capabilities", {})
        assert offered["bank"] == "bank"
        assert {"ecash", "card"} <= {m["name"] for m in offered["modules"]}

        card = await my_card(market)
        answer = await w.call("bank", "bank", "card_gateway_key", {})
        key = verify(answer["key"], answer["bank_certificate"], root=w.root,
                     type="card.gateway_key", signer="bank")
        assert key["bank"] == "bank" and key["expires_ms"] >= time.time_ns() // 1_000_000

        reference, amount = await w.order("map-002", "card", "outsider-card-1")
        oi = {"order": reference, "merchant": "seller", "amount": amount,
              "description": "Map of the market"}
        oimd = hashlib.sha256(b"semper-set-oi-v1\x00" + canonical(oi)).digest()
        pi = {"number": card["number"], "expiry": card["expiry"], "amount": amount,
              "merchant": "seller", "order": oimd, "idempotency_key": "outsider-card-1",
              "nonce": os.urandom(16)}
        pimd = hashlib.sha256(b"semper-set-pi-v1\x00" + canonical(pi)).digest()
        dual = w.signer.sign("card.dual_signature", {
            "pimd": pimd, "oimd": oimd, "pomd": hashlib.sha256(pimd + oimd).digest()})
        suite = Suite(KEM.X25519, KDF.HKDF_SHA256, AEAD.CHACHA20_POLY1305)
        sealed = suite.encrypt(canonical(pi),
                               x25519.X25519PublicKey.from_public_bytes(key["public_key"]),
                               info=b"semper-set-pi-v1\x00" + oimd)
        assert len(sealed) == 32 + len(canonical(pi)) + 16
        proof = {"oi": oi, "pimd": pimd, "dual": dual, "sealed_pi": sealed,
                 "cardholder_certificate": w.signer.certificate}
        result = await w.call("seller", "payment", "accept",
                              {"module": "card", "reference": reference, "proof": proof})
        assert {k: result[k] for k in ("module", "payer", "payee", "amount", "reference")} == {
            "module": "card", "payer": "buyer", "payee": "seller", "amount": amount,
            "reference": reference}
        captured = verify(result["settlement"], result["bank_certificate"], root=w.root,
                          type="payment.card_captured", signer="bank")
        authorization_id = hashlib.sha256(
            b"semper-set-authorization-v1\x00" + canonical(["seller", oimd])).hexdigest()[:32]
        assert captured == {"bank": "bank", "merchant": "seller", "amount": amount,
                            "oimd": oimd, "authorization_id": authorization_id,
                            "entry": captured["entry"]}

        # The answer lost, the cardholder retries: a new PI (nonce) and dual signature
        # for the same OI (8.8) is the same payment, answered with the first result.
        retry = dict(pi, nonce=os.urandom(16))
        retry_pimd = hashlib.sha256(b"semper-set-pi-v1\x00" + canonical(retry)).digest()
        proof_again = dict(proof, pimd=retry_pimd, dual=w.signer.sign("card.dual_signature", {
            "pimd": retry_pimd, "oimd": oimd,
            "pomd": hashlib.sha256(retry_pimd + oimd).digest()}),
            sealed_pi=suite.encrypt(canonical(retry), x25519.X25519PublicKey.from_public_bytes(
                key["public_key"]), info=b"semper-set-pi-v1\x00" + oimd))
        assert await w.call("seller", "payment", "accept", {
            "module": "card", "reference": reference, "proof": proof_again}) == result

        # A refund by card is a credit to the card's account (bank.refund, 8.8).
        answer = await w.call("seller", "commerce", "refund", {"order": reference})
        refund = answer["refund"]
        confirmation = verify(refund["confirmation"], refund["bank_certificate"], root=w.root,
                              type="payment.refund_confirmation", signer="bank")
        assert (refund["original"], refund["payee"], refund["amount"]) == (
            digest(result["settlement"]), "buyer", amount)
        assert (confirmation["original"], confirmation["payee"], confirmation["amount"]) == (
            digest(result["settlement"]), "buyer", amount)


def draw(keys: dict[int, tuple[bytes, rsa.RSAPublicKey]], values: list[int]) -> list[Coin]:
    return [Coin(v, keys[v][0], keys[v][1], ed25519.Ed25519PrivateKey.generate(),
                 os.urandom(32)) for v in values]


async def denominations(w: World) -> dict[int, tuple[bytes, rsa.RSAPublicKey]]:
    answer = await w.call("bank", "bank", "ecash_keys", {"currency": "EUR"})
    keys: dict[int, tuple[bytes, rsa.RSAPublicKey]] = {}
    for statement in answer["denominations"]:
        body = verify(statement, answer["bank_certificate"], root=w.root,
                      type="ecash.denomination", signer="bank")
        public = serialization.load_der_public_key(body["public_key"])
        assert isinstance(public, rsa.RSAPublicKey)
        keys.setdefault(body["value"]["minor_units"], (body["key_id"], public))
    return keys


async def exchange(w: World, new: list[Coin], key: str, spends: list[Coin],
                   voucher: dict[str, Any] | None = None,
                   refund_key: ed25519.Ed25519PrivateKey | None = None) -> None:
    """The wallet's steps 4 and 5: ``bank.ecash_exchange`` for the coins ``new``, paid
    with coins (``spends``, purpose exchange) and/or a refund voucher."""
    blinded = [(coin, *blind(coin.public, coin.prepared)) for coin in new]
    order = hashlib.sha256(canonical([[c.key_id, b] for c, b, _ in blinded])).digest()
    body: dict[str, Any] = {
        "spends": [c.spend(purpose="exchange", payee="bank", reference=order) for c in spends],
        "blinded": [{"key_id": c.key_id, "blinded": b} for c, b, _ in blinded],
        "idempotency_key": key}
    if voucher is not None:
        assert refund_key is not None
        contract = {"purpose": "refund", "bank": "bank", "payee": "bank", "reference": order,
                    "amount": voucher["body"]["amount"]}
        body |= {"voucher": voucher, "voucher_signature": refund_key.sign(
            b"semper-ecash-spend-v1\x00" + canonical(contract))}
    answer = await w.call("bank", "bank", "ecash_exchange", body)
    for (coin, _, inv), blind_sig in zip(blinded, answer["blind_signatures"], strict=True):
        coin.signature = finalize(coin.public, coin.prepared, blind_sig, inv)


async def pay(w: World, coins: list[Coin], reference: bytes, amount: dict[str, Any]
              ) -> dict[str, Any]:
    spends = [c.spend(purpose="payment", payee="seller", reference=reference) for c in coins]
    result = await w.call("seller", "payment", "accept",
                          {"module": "ecash", "reference": reference,
                           "proof": {"spends": spends}})
    settled = verify(result["settlement"], result["bank_certificate"], root=w.root,
                     type="payment.ecash_deposited", signer="bank")
    assert (settled["payee"], settled["amount"], settled["reference"], settled["coins"]) == (
        "seller", amount, reference, [c.coin_pub for c in coins])
    return result


async def test_an_outside_wallet_redeems_a_refund_and_makes_change_at_the_bank(
        market: Path) -> None:
    async with world(market) as w:
        coins = await withdraw(w, 1250, "outsider-withdraw-2")
        [spare] = await withdraw(w, 20, "outsider-withdraw-3")
        reference, amount = await w.order("guide-001", "ecash", "outsider-ecash-3")
        result = await pay(w, coins, reference, amount)

        # The buyer asks the seller for its money back: a voucher, redeemed for coins
        # together with the coin left over (value in: the voucher's and the coin's).
        answer = await w.call("seller", "commerce", "refund",
                              {"order": reference, "reason": "changed my mind"})
        refund = answer["refund"]
        voucher = refund["confirmation"]
        assert (refund["original"], refund["payer"], refund["payee"], refund["amount"]) == (
            digest(result["settlement"]), "seller", "buyer", amount)
        body = verify(voucher, refund["bank_certificate"], root=w.root,
                      type="ecash.refund_voucher", signer="bank")
        assert (body["original"], body["amount"], body["refund_key"]) == (
            digest(result["settlement"]), amount, coins[0].coin_pub)  # only we sign for it
        note = verify(answer["note"], w.seller_certificate, root=w.root,
                      type="commerce.refund_note", signer="seller")
        assert (note["refund"], note["refund_type"]) == (digest(voucher), "ecash.refund_voucher")
        keys = await denominations(w)
        back = draw(keys, [1000, 200, 50, 20])
        await exchange(w, back, "outsider-redeem-1", [spare], voucher=voucher,
                       refund_key=coins[0].coin_key)

        # Change: the 1000 coin for smaller ones, then an exact 480 for the map.
        change = draw(keys, [500, 200, 200, 50, 20, 20, 10])
        await exchange(w, change, "outsider-change-1", [back[0]])
        other, price = await w.order("map-002", "ecash", "outsider-ecash-4")
        assert price == eur(480)
        await pay(w, [change[1], change[2], change[3], change[4], change[6]], other, price)


async def test_the_refusals_an_outside_wallet_meets_are_the_documented_ones(
        market: Path) -> None:
    """8.7's codes and details, as the document says them, for what an outside wallet
    gets wrong: a coin bound to another payee, a forged coin, a coin twice in one
    proof, a withdrawal whose coins are not worth its amount or whose blinded
    message is not below n, a withdrawal key reused for other coins."""
    async with world(market) as w:
        keys = await denominations(w)
        [coin] = await withdraw(w, 200, "outsider-withdraw-4")
        reference, _ = await w.order("map-002", "ecash", "outsider-ecash-5")  # EUR 4.80
        [c20] = await withdraw(w, 20, "outsider-withdraw-5")
        [c10] = await withdraw(w, 10, "outsider-withdraw-6")
        [c50] = await withdraw(w, 50, "outsider-withdraw-7")

        async def refused(spends: list[dict[str, Any]]) -> RemoteError:
            with pytest.raises(RemoteError) as caught:
                await w.call("seller", "payment", "accept", {
                    "module": "ecash", "reference": reference, "proof": {"spends": spends}})
            return caught.value

        good = [c.spend(purpose="payment", payee="seller", reference=reference)
                for c in (coin, coin, c50, c20, c10)]
        elsewhere = coin.spend(purpose="payment", payee="notary", reference=reference)
        forged = dict(good[0], coin=dict(good[0]["coin"], signature=bytes(256)))
        for spends, code, detail in (
                ([elsewhere], "ecash.bad_spend", {"coin_key": coin.coin_pub.hex()}),
                ([forged], "ecash.bad_coin", {"coin_key": coin.coin_pub.hex()}),
                (good, "ecash.bad_spend", {"field": "spends"}),
                (good[1:], "payment.bad_request", {"field": "amount"})):
            error = await refused(spends)
            assert error.code == code, error
            assert {k: error.detail.get(k) for k in detail} == detail, error.detail

        async def withdrawal(values: list[int], units: int, key: str,
                             blinded: bytes | None = None) -> RemoteError:
            coins = draw(keys, values)
            listed = [{"key_id": c.key_id,
                       "blinded": blinded or blind(c.public, c.prepared)[0]} for c in coins]
            with pytest.raises(RemoteError) as caught:
                await w.call("bank", "bank", "ecash_withdraw", {
                    "amount": eur(units), "blinded": listed, "idempotency_key": key})
            return caught.value

        error = await withdrawal([200, 50], 200, "outsider-bad-1")
        assert (error.code, error.detail["field"]) == ("ecash.bad_withdrawal", "amount")
        assert error.detail["amount"] == eur(200) and error.detail["coins"] == eur(250)
        error = await withdrawal([20], 20, "outsider-bad-2", blinded=b"\xff" * 256)
        assert (error.code, error.detail["field"], error.detail["index"]) == (
            "ecash.bad_withdrawal", "blinded", 0)
        error = await withdrawal([10], 10, "outsider-withdraw-6")  # that key, other coins
        assert error.code == "payment.idempotency_conflict"
        with pytest.raises(RemoteError) as caught:
            await w.call("bank", "bank", "ecash_keys", {"currency": "USD"})
        assert caught.value.code == "payment.currency_mismatch"


async def test_the_refusals_an_outside_cardholder_meets_are_the_documented_ones(
        market: Path) -> None:
    """8.8's codes and fields for what an outside cardholder gets wrong: an OI of
    another amount, a dual signature whose POMD or PIMD is not the proof's, a PI
    sealed for another order (its OIMD not in the HPKE info); then the right proof
    pays the same order."""
    async with world(market) as w:
        card = await my_card(market)
        with pytest.raises(RemoteError) as caught:
            await w.call("bank", "bank", "card_gateway_key", {"currency": "EUR"})
        assert caught.value.code == "payment.bad_request"
        answer = await w.call("bank", "bank", "card_gateway_key", {})
        gateway = x25519.X25519PublicKey.from_public_bytes(answer["key"]["body"]["public_key"])
        suite = Suite(KEM.X25519, KDF.HKDF_SHA256, AEAD.CHACHA20_POLY1305)
        reference, amount = await w.order("song-003", "card", "outsider-card-2")

        def proof(*, oi_amount: Any = None, pomd: bytes | None = None,
                  pimd: bytes | None = None, info: bytes | None = None) -> dict[str, Any]:
            oi = {"order": reference, "merchant": "seller", "amount": oi_amount or amount,
                  "description": ""}
            oimd = hashlib.sha256(b"semper-set-oi-v1\x00" + canonical(oi)).digest()
            pi = {"number": card["number"], "expiry": card["expiry"], "amount": amount,
                  "merchant": "seller", "order": oimd, "idempotency_key": "outsider-card-2",
                  "nonce": os.urandom(16)}
            real = hashlib.sha256(b"semper-set-pi-v1\x00" + canonical(pi)).digest()
            dual = w.signer.sign("card.dual_signature", {
                "pimd": real, "oimd": oimd,
                "pomd": pomd or hashlib.sha256(real + oimd).digest()})
            sealed = suite.encrypt(canonical(pi), gateway,
                                   info=b"semper-set-pi-v1\x00" + (info or oimd))
            return {"oi": oi, "pimd": pimd or real, "dual": dual, "sealed_pi": sealed,
                    "cardholder_certificate": w.signer.certificate}

        async def accept(proof: dict[str, Any]) -> Any:
            return await w.call("seller", "payment", "accept",
                                {"module": "card", "reference": reference, "proof": proof})

        for wrong, code, detail in (
                (proof(oi_amount=eur(1)), "payment.bad_request",
                 {"type": "card.order_information", "field": "amount"}),
                (proof(pomd=bytes(32)), "card.bad_dual_signature", {"field": "pomd"}),
                (proof(pimd=bytes(32)), "card.bad_dual_signature", {"field": "pimd"}),
                (proof(info=bytes(32)), "card.bad_instructions", {"field": "sealed_pi"})):
            with pytest.raises(RemoteError) as refused:
                await accept(wrong)
            assert refused.value.code == code, refused.value
            assert {k: refused.value.detail.get(k) for k in detail} == detail
        result = await accept(proof())
        assert result["settlement"]["type"] == "payment.card_captured"


async def test_an_outside_payee_deposits_coins_as_the_document_says(market: Path) -> None:
    """The payee's steps of 8.7 by an outsider (the buyer, which has an account, paid
    by its own coins): the spends checked, ``bank.ecash_deposit`` under the
    documented key, the same deposit again answered the same, the coins for another
    reference refused with the first spend as evidence; and a withdrawal sent again
    after a lost answer gets the same blind signatures."""
    async with world(market) as w:
        coins = await withdraw(w, 70, "outsider-withdraw-8")
        reference = os.urandom(32)
        spends = [c.spend(purpose="payment", payee="buyer", reference=reference)
                  for c in coins]
        key = "ecash-" + hashlib.sha256(b"semper-ecash-deposit-v1\x00" + canonical(
            [reference, [c.coin_pub for c in coins]])).hexdigest()[:40]
        request = {"spends": spends, "reference": reference, "amount": eur(70),
                   "idempotency_key": key}
        answer = await w.call("bank", "bank", "ecash_deposit", request)
        body = verify(answer["deposited"], answer["bank_certificate"], root=w.root,
                      type="payment.ecash_deposited", signer="bank")
        assert body == {"bank": "bank", "payee": "buyer", "amount": eur(70),
                        "reference": reference, "coins": [c.coin_pub for c in coins],
                        "entry": body["entry"]}
        assert await w.call("bank", "bank", "ecash_deposit", request) == answer
        other = [c.spend(purpose="payment", payee="buyer", reference=b"other")
                 for c in coins]
        with pytest.raises(RemoteError) as refused:
            await w.call("bank", "bank", "ecash_deposit", {
                "spends": other, "reference": b"other", "amount": eur(70),
                "idempotency_key": "outsider-deposit-2"})
        assert refused.value.code == "ecash.double_spent"
        assert refused.value.detail == {"coin_key": coins[0].coin_pub.hex(), "first": spends[0],
                                        "spent": [c.coin_pub.hex() for c in coins]}

        # Step 2's crash rule: the stored request again, the same signatures.
        keys = await denominations(w)
        [coin] = draw(keys, [5])
        blinded, inv = blind(coin.public, coin.prepared)
        withdrawal = {"amount": eur(5), "blinded": [{"key_id": coin.key_id, "blinded": blinded}],
                      "idempotency_key": "outsider-withdraw-9"}
        first = await w.call("bank", "bank", "ecash_withdraw", withdrawal)
        assert await w.call("bank", "bank", "ecash_withdraw", withdrawal) == first
        finalize(coin.public, coin.prepared, first["blind_signatures"][0], inv)
