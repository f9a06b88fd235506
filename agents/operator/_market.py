"""A local market on disk: the root CA, its CRL, and one folder per agent.

Layout written by ``init_market(DIR)`` (used from outside; keep it exactly):

    DIR/ca/root.pem  root-key.pem (0600)  crl.pem  market-policy.bin
    DIR/<id>/agent.toml  cert.pem  key.pem (0600)   for ca, bank, seller, buyer, notary, arbiter

The CA agent's own folder is ``DIR/ca`` too; its ``agent.toml`` has a ``[ca]`` table
(the enrollment address and the root key), and its database
(``DIR/ca/data/agent.sqlite``) records every certificate issued, here and later
through enrollment tokens, so ``ca status`` and ``ca revoke`` find them all. Every
other agent names the CA agent in ``ca_agent``.

Every write goes to a temporary file first and is renamed into place, so a reader
(an agent polling the CRL) never sees half a file. ``init_market`` builds the whole
market in a temporary sibling folder and renames it into place at the end, so a
failed init leaves no half-made market behind.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import secrets
import shutil
import socket
import sqlite3
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Final

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from semper.agents.components import _bank, _cards, _ledger
from semper.agents.components._castore import (
    cancel_invitations,
    issued_for,
    open_ca_database,
    publish_crl,
    record_issued,
)
from semper.agents.components._catalogue import write_catalogue
from semper.agents.components._payments import MARKET_POLICY_FILE
from semper.agents.components._reveal import add_pseudonym, pseudonyms_of
from semper.agents.instruments import card as card_gateway
from semper.agents.runtime._config import (
    AgentConfig,
    CaSettings,
    ConfigError,
    FairExchangeSettings,
    PaymentSettings,
)
from semper.agents.runtime._files import write_file
from semper.agents.runtime._identity import load_private_key, utcnow
from semper.agents.runtime._storage import Database
from semper.services import Amount
from semper.services.certificates import (
    CertificateAuthority,
    Level,
    create_ca,
    issue_agent_certificate,
    issue_crl,
    load_certificate,
    new_pseudonym,
    private_key_pem,
)
from semper.services.certificates._pseudonym import check_pseudonym_profile
from semper.services.payment import (
    ALL_ALLOWED,
    MarketPolicy,
    sign_market_policy,
    verify_market_policy,
)
from semper.services.statements import Statement

__all__ = ["DEFAULT_AGENTS", "MarketError", "MarketPaths", "ca_config", "free_ports",
           "init_market", "load_authority", "market_policy", "revoke", "revoke_agent",
           "set_market_policy"]

#: (agent id, role, level) of the agents a new local market has.
DEFAULT_AGENTS: tuple[tuple[str, str, Level], ...] = (
    ("ca", "ca", Level.VERIFIED_IDENTITY),
    ("bank", "bank", Level.VERIFIED_IDENTITY),
    ("seller", "seller", Level.VERIFIED_CONTACT),
    # verified-identity: a seller's default policy takes cheques only from such a
    # buyer (protocol.md 8.9), and the demo pays by cheque
    ("buyer", "buyer", Level.VERIFIED_IDENTITY),
    ("notary", "notary", Level.VERIFIED_IDENTITY),
    # judges filed evidence bundles (dispute.file) and may ask the CA to reveal a pseudonym
    ("arbiter", "arbiter", Level.VERIFIED_IDENTITY),
)


class MarketError(Exception):
    """A market folder operation that cannot be done as asked."""

    code: ClassVar[str] = "agent.market"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True, slots=True)
class MarketPaths:
    root: Path

    @property
    def ca_dir(self) -> Path:
        return self.root / "ca"

    @property
    def root_cert(self) -> Path:
        return self.ca_dir / "root.pem"

    @property
    def root_key(self) -> Path:
        return self.ca_dir / "root-key.pem"

    @property
    def crl(self) -> Path:
        return self.ca_dir / "crl.pem"

    def agent_dir(self, agent_id: str) -> Path:
        return self.root / agent_id


#: Where ``free_ports`` looks first: below the kernel's ephemeral range (read from
#: /proc where it can be), so that no outgoing connection's source port, nor another
#: program's bind to port 0, takes a port between ``market init`` writing it into a
#: config and the agent listening on it (two test processes at once did).
_PORT_FLOOR: Final = 10_000
_EPHEMERAL_RANGE: Final = Path("/proc/sys/net/ipv4/ip_local_port_range")


def _below_ephemeral() -> range:
    try:
        low = int(_EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return range(0)
    return range(_PORT_FLOOR, low) if low - _PORT_FLOOR >= 1024 else range(0)


def free_ports(count: int) -> list[int]:
    """Ports free now, all different: random ones below the ephemeral range that bind
    (each held open until all are found), else ones the kernel picks."""
    sockets: list[socket.socket] = []
    candidates = _below_ephemeral()
    try:
        for _ in range(count):
            for _attempt in range(64 if candidates else 0):
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                try:
                    s.bind(("127.0.0.1", secrets.choice(candidates)))
                except OSError:  # in use (or held by us already): another
                    s.close()
                    continue
                sockets.append(s)
                break
            else:
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                s.bind(("127.0.0.1", 0))
                sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def init_market(
    folder: Path,
    *,
    passphrase: bytes | None = None,
    agents: Iterable[tuple[str, str, Level]] = DEFAULT_AGENTS,
    now: dt.datetime | None = None,
    pseudonyms: Mapping[str, str] | None = None,
) -> list[AgentConfig]:
    """Create a complete local market in ``folder`` (which must be empty or absent).

    ``pseudonyms`` maps an id of ``agents`` to a real agent id: that agent gets a fresh
    pseudonym instead (protocol.md 2.7): its id, folder and bank account are the
    pseudonym's, and only the CA's database links it to the real id (the returned
    configs, in the order of ``agents``, say which id it got).

    All of it or nothing: the market is built in a temporary folder beside ``folder``
    and renamed into place once complete; on any failure the temporary folder is
    removed and ``folder`` is as it was.

    Returns:
        The configs written, in the order of ``agents`` (read back from ``folder``).

    Raises:
        MarketError: ``folder`` exists and is not empty.
    """
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise MarketError(f"{folder} exists and is not empty; choose a new folder")
    agents = list(agents)
    folder.parent.mkdir(parents=True, exist_ok=True)
    building = folder.parent / f".{folder.name}.init-{secrets.token_hex(4)}"
    try:
        configs = _build_market(building, passphrase=passphrase, agents=agents, now=now,
                                pseudonyms=pseudonyms or {})
        if folder.exists():
            folder.rmdir()  # empty (checked above); rename will not replace a folder
        os.rename(building, folder)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    return [AgentConfig.load(folder / c.id / "agent.toml") for c in configs]


def _build_market(folder: Path, *, passphrase: bytes | None,
                  agents: list[tuple[str, str, Level]], now: dt.datetime | None,
                  pseudonyms: Mapping[str, str]) -> list[AgentConfig]:
    now = now or utcnow()
    unknown = set(pseudonyms) - {agent_id for agent_id, _, _ in agents}
    if unknown:
        raise MarketError(f"no agent {min(unknown)!r} to give a pseudonym")
    drawn = {agent_id: new_pseudonym(real_id) for agent_id, real_id in pseudonyms.items()}
    for agent_id, role, level in agents:
        if agent_id in drawn:
            check_pseudonym_profile(drawn[agent_id].pseudonym, role, level)
    commitments = {p.pseudonym: p.commitment for p in drawn.values()}
    agents = [(drawn[a].pseudonym if a in drawn else a, role, level) for a, role, level in agents]
    paths = MarketPaths(folder)
    paths.ca_dir.mkdir(parents=True, exist_ok=True)
    ca = create_ca("semper market root", now=now)
    write_file(paths.root_cert, _pem(ca.certificate))
    write_file(paths.root_key, private_key_pem(ca.key, passphrase), private=True)
    crl = issue_crl(ca, [], now=now, number=1)
    write_file(paths.crl, crl.public_bytes(serialization.Encoding.PEM))
    _write_market_policy(paths, ca, MarketPolicy(issued_ms=int(now.timestamp() * 1000),
                                                 serial=1))

    *ports, enroll_port = free_ports(len(agents) + 1)
    addresses = {agent_id: f"127.0.0.1:{port}" for (agent_id, _, _), port in zip(agents, ports,
                                                                                strict=True)}
    ca_agent = next((agent_id for agent_id, role, _ in agents if role == "ca"), None)
    bank = next((agent_id for agent_id, role, _ in agents if role == "bank"), None)
    configs, issued = [], []
    for agent_id, role, level in agents:
        settings = None
        if agent_id == ca_agent:
            settings = CaSettings(enroll_listen=f"127.0.0.1:{enroll_port}",
                                  root_key=paths.root_key)
        config, cert = _write_agent(paths, ca, agent_id, role, level, addresses, passphrase,
                                    now, ca_agent=ca_agent, settings=settings, bank=bank,
                                    commitment=commitments.get(agent_id))
        configs.append(config)
        issued.append(cert)
    _open_for_business(paths, configs, now)
    if ca_agent is not None:
        database = open_ca_database(paths.agent_dir(ca_agent) / "data")
        try:
            created_ms = int(now.timestamp() * 1000)
            database.transaction_sync(lambda c: (
                [record_issued(c, cert, via="market-init", now=now) for cert in issued],
                [add_pseudonym(c, p, created_ms=created_ms) for p in drawn.values()]))
        finally:
            database.close()
    return configs


def _write_agent(
    paths: MarketPaths,
    ca: CertificateAuthority,
    agent_id: str,
    role: str,
    level: Level,
    addresses: dict[str, str],
    passphrase: bytes | None,
    now: dt.datetime,
    *,
    ca_agent: str | None,
    settings: CaSettings | None,
    bank: str | None = None,
    commitment: bytes | None = None,
) -> tuple[AgentConfig, x509.Certificate]:
    home = paths.agent_dir(agent_id)
    home.mkdir(parents=True, exist_ok=True)
    (home / "data").mkdir(exist_ok=True)
    key = ed25519.Ed25519PrivateKey.generate()
    cert = issue_agent_certificate(ca, agent_id=agent_id, role=role, level=level,
                                   public_key=key.public_key(), now=now,
                                   commitment=commitment)
    write_file(home / "cert.pem", _pem(cert))
    write_file(home / "key.pem", private_key_pem(key, passphrase), private=True)
    config = AgentConfig(
        id=agent_id,
        role=role,
        listen=addresses[agent_id],
        data_dir=home / "data",
        ca_root=paths.root_cert,
        crl=paths.crl,
        cert=home / "cert.pem",
        key=home / "key.pem",
        ca_agent=ca_agent if ca_agent != agent_id else None,
        peers={peer: address for peer, address in addresses.items() if peer != agent_id},
        ca=settings,
        payment=PaymentSettings(bank=bank if role != "bank" else None),
        catalogue=write_catalogue(home, DEMO_CATALOGUE) if role == "seller" else None,
        # every party's exchanges name the market's notary (protocol.md 10.6)
        fairexchange=FairExchangeSettings(notary=None if role == "notary" else "notary"),
        path=home / "agent.toml",
    )
    write_file(home / "agent.toml", config.to_toml(base=home).encode())
    return config, cert


#: What a new local market's seller offers (prices in minor units).
DEMO_CATALOGUE: Final = [
    {"sku": "guide-001", "title": "Field guide to secure commerce", "price": "EUR:1250",
     "terms": "digital copy; refundable within 14 days", "valid_days": 30,
     "refund_days": 14,
     "goods": b"Field guide to secure commerce\n\n1. Sign what you mean.\n"},
    {"sku": "map-002", "title": "Map of the market", "price": "EUR:480",
     "terms": "digital copy; refundable within 14 days", "valid_days": 30,
     "refund_days": 14,
     "goods": b"ca -- bank -- seller -- buyer -- notary\n"},
    {"sku": "song-003", "title": "A song about receipts", "price": "EUR:99",
     "terms": "digital copy; no refunds", "valid_days": 30, "refund_days": 0,
     "goods": b"la la la, every step leaves a signature\n"},
    # Streamed (issue 10): 257 chunks of 128 KiB (the last shorter), EUR 0.02 each.
    {"sku": "course-004", "title": "A course in streamed delivery", "price": "EUR:514",
     "terms": "streamed, paid per chunk; no refunds", "valid_days": 30, "refund_days": 0,
     "stream": {"chunk_size": 128 * 1024, "price_per_chunk": "EUR:2"},
     "goods": lambda path: write_course(path)},
]

#: The length of course-004's content: about 32 MiB, its last chunk shorter.
COURSE_LENGTH: Final = 32 * 1024 * 1024 + 12_345
#: course-004 is 64 KiB blocks, each its number and 56 fixed bytes, then zeros.
_COURSE_BLOCK: Final = 64 * 1024
_COURSE_HEAD: Final = hashlib.shake_256(b"semper course-004").digest(56)


def course_content(length: int = COURSE_LENGTH) -> bytes:
    """course-004's content (the bytes ``write_course`` writes): no two chunks share
    a leaf, each block starting with its number."""
    count = -(-length // _COURSE_BLOCK)
    pad = bytes(_COURSE_BLOCK - 8 - len(_COURSE_HEAD))
    return b"".join(n.to_bytes(8, "big") + _COURSE_HEAD + pad for n in range(count))[:length]


def write_course(path: Path, length: int = COURSE_LENGTH) -> None:
    """Write course-004's content at market init (never kept in git), as a sparse
    file: only each block's 64-byte head is written, so a market costs ~2 MiB of disk
    and a few ms, not 32 MiB (the test suite inits hundreds)."""
    with path.open("wb") as f:
        for n in range(-(-length // _COURSE_BLOCK)):
            f.seek(n * _COURSE_BLOCK)
            f.write((n.to_bytes(8, "big") + _COURSE_HEAD)[:length - n * _COURSE_BLOCK])
        f.truncate(length)

#: What the buyer of a new local market starts with at the bank.
DEMO_FUNDS: Final = Amount("EUR", 100_000)


def _open_for_business(paths: MarketPaths, configs: list[AgentConfig],
                       now: dt.datetime) -> None:
    """Open EUR accounts at the bank for the buyers and sellers, fund the buyers, and
    issue each buyer a card on its account (kept by the bank and by the buyer)."""
    bank = next((c for c in configs if c.role == "bank"), None)
    if bank is None:
        return
    database = Database.open_sync(bank.data_dir / "agent.sqlite",
                                  {**_bank.MIGRATIONS, **card_gateway.MIGRATIONS})
    time_ms = int(now.timestamp() * 1000)
    cards: dict[str, tuple[str, str]] = {}

    def open_accounts(c: sqlite3.Connection) -> None:
        for config in configs:
            if config.role in ("buyer", "seller"):
                _ledger.open_account(c, config.id, DEMO_FUNDS.currency)
            if config.role == "buyer":
                _ledger.mint(c, config.id, DEMO_FUNDS, time_ms=time_ms, memo="market init")
                cards[config.id] = card_gateway.issue_card(c, config.id, DEMO_FUNDS.currency,
                                                           now_ms=time_ms)

    try:
        database.transaction_sync(open_accounts)
    finally:
        database.close()
    for config in configs:
        if config.id in cards:
            number, expiry = cards[config.id]
            held = Database.open_sync(config.data_dir / "agent.sqlite", _cards.MIGRATIONS)
            try:
                held.transaction_sync(lambda c, n=number, e=expiry: _cards.add_card(
                    c, n, e, bank.id, now_ms=time_ms))
            finally:
                held.close()


def ca_config(folder: Path) -> AgentConfig:
    """The CA agent's configuration, ``DIR/ca/agent.toml``.

    Raises:
        MarketError: no market there, or a CA agent without a ``[ca]`` table.
    """
    path = MarketPaths(folder).ca_dir / "agent.toml"
    if not path.is_file():
        raise MarketError(f"{folder} is not a market folder (no {path})")
    try:
        config = AgentConfig.load(path)
    except ConfigError as exc:
        raise MarketError(exc.message) from exc
    if config.ca is None:
        raise MarketError(f"{path} has no [ca] table (made by an older semper?)")
    return config


def _write_market_policy(paths: MarketPaths, ca: CertificateAuthority,
                         policy: MarketPolicy) -> Statement:
    statement = sign_market_policy(policy, key=ca.key, root=ca.certificate,
                                   nonce=secrets.token_bytes(16))
    write_file(paths.ca_dir / MARKET_POLICY_FILE, statement.to_bytes())
    return statement


def market_policy(folder: Path) -> MarketPolicy:
    """The market policy the CA of the market in ``folder`` serves (checked against
    its root); all allowed if it has none."""
    paths = MarketPaths(folder)
    try:
        data = (paths.ca_dir / MARKET_POLICY_FILE).read_bytes()
    except FileNotFoundError:
        return ALL_ALLOWED
    root = load_certificate(paths.root_cert.read_bytes())
    return verify_market_policy(Statement.from_bytes(data), root=root)


def set_market_policy(folder: Path, *, allowed: Iterable[str] | None = None,
                      forbidden: Iterable[str] = (), required: Iterable[str] = (),
                      passphrase: bytes | None = None, now: dt.datetime | None = None
                      ) -> MarketPolicy:
    """Sign the market's next instrument policy (the serial after the current one)
    with the root key and put it where the CA agent serves it with the CRL
    (protocol.md 8.9); agents apply it at their next CRL fetch.

    Raises:
        BadMarketPolicy: a bad module name, or one both required and forbidden.
    """
    paths = MarketPaths(folder)
    ca = load_authority(paths.root_cert, paths.root_key, passphrase)
    current = market_policy(folder)
    policy = MarketPolicy(allowed=None if allowed is None else frozenset(allowed),
                          forbidden=frozenset(forbidden), required=frozenset(required),
                          issued_ms=int((now or utcnow()).timestamp() * 1000),
                          serial=current.serial + 1)
    _write_market_policy(paths, ca, policy)
    return policy


def load_authority(root_cert: Path, root_key: Path, passphrase: bytes | None
                   ) -> CertificateAuthority:
    """The root certificate and its key, checked to belong together.

    Raises:
        MarketError: they do not. KeyError_: the key cannot be read.
    """
    root = load_certificate(root_cert.read_bytes())
    key = load_private_key(root_key, passphrase)
    if key.public_key() != root.public_key():
        raise MarketError(f"{root_key} does not belong to {root_cert}")
    return CertificateAuthority(key=key, certificate=root)


def revoke_agent(
    folder: Path, agent_id: str, *, passphrase: bytes | None = None,
    now: dt.datetime | None = None,
) -> x509.CertificateRevocationList:
    """Put every certificate issued to ``agent_id`` on the market's CRL and publish it,
    and cancel the tokens it was invited with and has not redeemed (``revoke``).

    Raises:
        MarketError: no such market, or no certificate issued to the agent.
        KeyError_: the root key cannot be read (e.g. wrong passphrase).
    """
    crl, _cancelled = revoke(folder, agent_id, passphrase=passphrase, now=now)
    if crl is None:
        raise MarketError(f"no agent {agent_id!r} in {folder}: the CA issued it no "
                          "certificate (its outstanding invitations are cancelled)")
    return crl


def _ca_agent_id(paths: MarketPaths) -> str | None:
    """The id in the CA agent's own agent.toml, if the market has one."""
    try:
        return AgentConfig.load(paths.ca_dir / "agent.toml").id
    except (OSError, ConfigError):
        return None


def revoke(
    folder: Path, agent_id: str, *, passphrase: bytes | None = None,
    now: dt.datetime | None = None,
) -> tuple[x509.CertificateRevocationList | None, int]:
    """Revoke ``agent_id``: every certificate issued to it goes on the market's CRL,
    which is published, and every token it was invited with and has not redeemed is
    cancelled (else an agent revoked before it enrolled, or holding a second token,
    would enroll afterwards with a fresh certificate); the same for each pseudonym
    of ``agent_id``. Idempotent.

    Returns:
        The CRL published (None when the CA issued the agent no certificate, only
        invitations), and how many invitations were cancelled.

    Raises:
        MarketError: no such market, or neither a certificate nor an outstanding
            invitation for the agent.
        KeyError_: the root key cannot be read (e.g. wrong passphrase); nothing changes.
    """
    now = now or utcnow()
    paths = MarketPaths(folder)
    if not paths.root_cert.is_file() or not paths.crl.is_file():
        raise MarketError(f"{folder} is not a market folder (no ca/root.pem or ca/crl.pem)")
    if agent_id == _ca_agent_id(paths):
        # Its own CRL would then refuse it: it could never start again, and with it
        # renewal, enrollment and revocation over the network would stop for good.
        raise MarketError(f"{agent_id!r} is the market's CA agent: revoking it would stop "
                          "the market's CA for good (to replace its key, issue it a new "
                          "certificate first)")
    ca = load_authority(paths.root_cert, paths.root_key, passphrase)
    cancelled, hidden = 0, []
    data = paths.ca_dir / "data"
    if (data / "agent.sqlite").is_file():
        database = open_ca_database(data)
        try:
            # The agent's pseudonyms go with it (protocol.md 2.7): revoking an identity
            # leaves none of its pseudonyms trading. The CRL names serials only.
            def cancel(c: sqlite3.Connection) -> tuple[int, list[int]]:
                ids = [agent_id, *pseudonyms_of(c, agent_id)]
                count = sum(cancel_invitations(c, i, now_ms=int(now.timestamp() * 1000))
                            for i in ids)
                return count, [r.serial for i in ids[1:] for r in issued_for(c, i)]

            cancelled, hidden = database.transaction_sync(cancel)
        finally:
            database.close()
    serials = _serials_of(paths, agent_id, required=not cancelled and not hidden) + hidden
    if not serials:
        return None, cancelled
    # Locked against the CA agent's renewal, which rewrites the same file.
    crl = publish_crl(paths.crl, ca, now=now, revoke=serials)
    assert crl is not None
    return crl, cancelled


def _serials_of(paths: MarketPaths, agent_id: str, *, required: bool = True) -> list[int]:
    data = paths.ca_dir / "data"
    if (data / "agent.sqlite").is_file():
        database = open_ca_database(data)
        try:
            serials = [r.serial for r in database.read_sync(lambda c: issued_for(c, agent_id))]
        finally:
            database.close()
        if serials:
            return serials
    cert_path = paths.agent_dir(agent_id) / "cert.pem"
    if not cert_path.is_file():
        if not required:
            return []
        raise MarketError(f"no agent {agent_id!r} in {paths.root}: the CA issued it "
                          "no certificate")
    return [load_certificate(cert_path.read_bytes()).serial_number]
