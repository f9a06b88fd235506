"""An agent's TOML configuration: one file, paths relative to the file itself.

Relative paths keep a market folder movable: ``semper market init`` writes
``ca_root = "../ca/root.pem"`` and the agent resolves it against its own folder.
"""

from __future__ import annotations

import math
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import tomli_w

from semper.services.certificates import check_agent_id, check_name
from semper.services.money import MAX_MINOR_UNITS
from semper.services.payment._policy import PayeePolicy
from semper.transport import ChannelConfig

__all__ = ["AgentConfig", "CaSettings", "ConfigError", "FairExchangeSettings",
           "PaymentSettings", "Timeouts", "parse_address"]


class ConfigError(Exception):
    """The configuration file is missing, not TOML, or says something impossible."""

    code: ClassVar[str] = "agent.bad_config"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def parse_address(text: str, *, what: str = "address") -> tuple[str, int]:
    """``"127.0.0.1:4000"`` -> ``("127.0.0.1", 4000)``; ``"[::1]:4000"`` for IPv6."""
    host, sep, port = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{what} must be HOST:PORT, got {text!r}")
    return host, int(port)


@dataclass(frozen=True, slots=True, kw_only=True)
class Timeouts:
    """Seconds. ``crl_refresh`` is how often a running agent rereads the CRL."""

    handshake: float = 10.0
    request: float = 30.0
    idle: float = 300.0
    crl_refresh: float = 2.0
    #: a write to a peer that makes no progress for this long closes the channel
    write: float = 30.0
    #: connections accepted and not yet past hello; not seconds, but a bound of the
    #: same kind (what an unauthenticated peer may hold), so it lives here
    max_unauthenticated: float = 256
    #: channels one peer may hold to us at once (its agent, its commands); one more
    #: is refused (protocol.too_many_channels)
    max_channels_per_peer: float = 64

    def channel_config(self) -> ChannelConfig:
        return ChannelConfig(handshake_timeout=self.handshake, request_timeout=self.request,
                             idle_timeout=self.idle, write_timeout=self.write,
                             max_unauthenticated=max(1, int(self.max_unauthenticated)))


@dataclass(frozen=True, slots=True, kw_only=True)
class CaSettings:
    """The ``[ca]`` table, only in the CA agent's file.

    ``enroll_listen`` is the second, server-authenticated-only address where
    newcomers redeem enrollment tokens; ``enroll_advertise`` is the address put in
    tokens when newcomers must dial another one (say ``enroll_listen`` is
    ``0.0.0.0:4100``); ``root_key`` is the market root's private key (encrypted
    under the agent's passphrase when there is one).
    """

    enroll_listen: str
    root_key: Path
    enroll_advertise: str | None = None

    def __post_init__(self) -> None:
        parse_address(self.enroll_listen, what="ca.enroll_listen")
        if self.enroll_advertise is not None:
            parse_address(self.enroll_advertise, what="ca.enroll_advertise")

    @property
    def enroll_address(self) -> tuple[str, int]:
        return parse_address(self.enroll_listen, what="ca.enroll_listen")


@dataclass(frozen=True, slots=True, kw_only=True)
class PaymentSettings:
    """``[payment]``: ``bank`` is the agent id of the bank that holds our accounts;
    ``modules`` the payment modules we accept, most preferred first (None: every
    instrument installed, as a plugin anywhere is picked up on restart); ``limit`` the
    largest single payment we take or make, per currency, in minor units; ``policy``
    the ``[payment.policy]`` table as written (``services.payment.PayeePolicy``;
    None: its defaults)."""

    bank: str | None = None
    modules: tuple[str, ...] | None = None
    limit: dict[str, int] = field(default_factory=lambda: {"EUR": 100_000_000})
    policy: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        try:
            if self.bank is not None:
                check_agent_id(self.bank, "payment.bank")
            for name in self.modules or ():
                check_name("payment module", name)
            PayeePolicy.from_table(self.policy)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        for currency, units in self.limit.items():
            if not (isinstance(units, int) and not isinstance(units, bool)
                    and 0 < units <= MAX_MINOR_UNITS
                    and len(currency) == 3 and currency.isascii() and currency.isupper()):
                raise ConfigError("payment.limit maps currency codes to positive minor units "
                                  f"(at most {MAX_MINOR_UNITS})")


@dataclass(frozen=True, slots=True, kw_only=True)
class FairExchangeSettings:
    """``[fairexchange]``: ``notary``, the agent id of the notary our exchanges name
    (``market init`` sets it); ``deadline``, the seconds a party waits for its peer's
    next message before it goes to the notary (agents/components/_contracts.py)."""

    notary: str | None = None
    deadline: float = 30.0

    def __post_init__(self) -> None:
        try:
            if self.notary is not None:
                check_agent_id(self.notary, "fairexchange.notary")
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        if isinstance(self.deadline, bool) or not isinstance(self.deadline, int | float) \
                or not 0 < self.deadline <= 86_400:
            raise ConfigError("fairexchange.deadline must be a number of seconds, 0 to 86400")


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentConfig:
    """One agent's configuration. ``ca_agent`` names the market's CA agent (a peer):
    where a running agent fetches the CRL, publishes its contact card and looks up
    peers its ``[peers]`` table does not list. ``advertise`` is the address put on
    the card when ``listen`` is not one peers can dial (say ``0.0.0.0:4000``)."""

    id: str
    role: str
    listen: str
    data_dir: Path
    ca_root: Path
    crl: Path
    cert: Path
    key: Path
    passphrase_file: Path | None = None
    ca_agent: str | None = None
    advertise: str | None = None
    peers: dict[str, str] = field(default_factory=dict)
    timeouts: Timeouts = field(default_factory=Timeouts)
    ca: CaSettings | None = None
    payment: PaymentSettings = field(default_factory=PaymentSettings)
    catalogue: Path | None = None  # a seller's offers (TOML), relative to this file
    #: ``[evidence] peer_quota_bytes``: how much each peer may grow our archive (its
    #: statements' bytes plus a fixed cost per record) before evidence.deliver refuses.
    evidence_peer_quota: int = 64 * 1024 * 1024  # DEFAULT_EVIDENCE_QUOTA
    #: ``[components.<name>]``: each component's own settings, as the TOML gives them
    #: (the component checks them: ``Component.configure``).
    components: dict[str, dict[str, Any]] = field(default_factory=dict)
    fairexchange: FairExchangeSettings = field(default_factory=FairExchangeSettings)
    path: Path | None = None  # the file it was read from

    def __post_init__(self) -> None:
        try:
            check_agent_id(self.id, "id")
            check_name("role", self.role)
            if self.ca_agent is not None:
                check_agent_id(self.ca_agent, "ca_agent")
            for peer in self.peers:  # a look-alike key would shadow a real peer's address
                check_agent_id(peer, "a [peers] key")
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        parse_address(self.listen, what="listen")
        if self.advertise is not None:
            parse_address(self.advertise, what="advertise")
        for peer, address in self.peers.items():
            parse_address(address, what=f"peers.{peer}")
        if self.ca_agent not in (None, self.id) and self.ca_agent not in self.peers:
            raise ConfigError(f"ca_agent {self.ca_agent!r} needs its address in [peers]")

    @property
    def listen_address(self) -> tuple[str, int]:
        return parse_address(self.listen, what="listen")

    def peer_address(self, peer_id: str) -> tuple[str, int]:
        try:
            return parse_address(self.peers[peer_id], what=f"peers.{peer_id}")
        except KeyError:
            known = ", ".join(sorted(self.peers)) or "none"
            raise ConfigError(f"unknown peer {peer_id!r} (known peers: {known})") from None

    @classmethod
    def load(cls, path: Path) -> AgentConfig:
        """Read and check a config file.

        Raises:
            ConfigError: with a one-line reason for every problem found.
        """
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"no config file at {path}") from None
        except OSError as exc:
            raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path} is not valid TOML: {exc}") from None
        return cls.from_dict(raw, base=path.parent.resolve(), path=path)

    @classmethod
    def from_dict(cls, raw: dict[str, Any], *, base: Path, path: Path | None = None) -> AgentConfig:
        def text(key: str, default: str | None = None) -> str:
            value = raw.get(key, default)
            if not isinstance(value, str):
                raise ConfigError(f"{path or 'config'}: {key!r} must be a string")
            return value

        def file(key: str, default: str | None = None) -> Path:
            return base / _path_text(text(key, default), key, path)

        peers = raw.get("peers", {})
        if not isinstance(peers, dict) or not all(isinstance(v, str) for v in peers.values()):
            raise ConfigError(f"{path or 'config'}: [peers] maps agent ids to 'HOST:PORT'")
        times = raw.get("timeouts", {})
        if not isinstance(times, dict):
            raise ConfigError(f"{path or 'config'}: [timeouts] must be a table")
        try:
            timeouts = Timeouts(**{k: _seconds(k, v) for k, v in times.items()})
        except TypeError as exc:
            raise ConfigError(f"{path or 'config'}: unknown timeout in [timeouts]: {exc}") from None
        passphrase = raw.get("passphrase_file")
        components = raw.get("components", {})
        if not isinstance(components, dict) or not all(
                isinstance(v, dict) for v in components.values()):
            raise ConfigError(f"{path or 'config'}: [components] holds one table per "
                              "component: [components.NAME]")

        def optional(key: str) -> str | None:
            return None if raw.get(key) is None else text(key)

        return cls(
            id=text("id"),
            role=text("role"),
            listen=text("listen"),
            data_dir=file("data_dir", "data"),
            ca_root=file("ca_root"),
            crl=file("crl"),
            cert=file("cert", "cert.pem"),
            key=file("key", "key.pem"),
            passphrase_file=(base / _path_text(passphrase, "passphrase_file", path)
                             if isinstance(passphrase, str) else None),
            ca_agent=optional("ca_agent"),
            advertise=optional("advertise"),
            peers=dict(peers),
            timeouts=timeouts,
            ca=_ca_settings(raw.get("ca"), base=base, where=str(path or "config")),
            payment=_payment_settings(raw.get("payment"), where=str(path or "config")),
            catalogue=file("catalogue") if raw.get("catalogue") is not None else None,
            **_evidence_settings(raw.get("evidence"), where=str(path or "config")),
            components={name: dict(table) for name, table in components.items()},
            fairexchange=_fairexchange_settings(raw.get("fairexchange"),
                                                where=str(path or "config")),
            path=path,
        )

    def to_toml(self, *, base: Path) -> str:
        """Render with paths relative to ``base`` (the folder the file goes in)."""

        def rel(p: Path) -> str:
            return os.path.relpath(p.resolve(), base.resolve())

        data: dict[str, Any] = {
            "id": self.id,
            "role": self.role,
            "listen": self.listen,
            "data_dir": rel(self.data_dir),
            "ca_root": rel(self.ca_root),
            "crl": rel(self.crl),
            "cert": rel(self.cert),
            "key": rel(self.key),
        }
        if self.passphrase_file is not None:
            data["passphrase_file"] = rel(self.passphrase_file)
        for key in ("ca_agent", "advertise"):
            if getattr(self, key) is not None:
                data[key] = getattr(self, key)
        data["peers"] = dict(sorted(self.peers.items()))
        t = self.timeouts
        data["timeouts"] = {"handshake": t.handshake, "request": t.request, "idle": t.idle,
                            "crl_refresh": t.crl_refresh}
        default = Timeouts()
        for key in ("write", "max_unauthenticated", "max_channels_per_peer"):
            if getattr(t, key) != getattr(default, key):
                data["timeouts"][key] = getattr(t, key)
        if self.catalogue is not None:
            data["catalogue"] = rel(self.catalogue)
        pay = self.payment
        data["payment"] = {"limit": dict(pay.limit)}
        if pay.modules is not None:
            data["payment"]["modules"] = list(pay.modules)
        if pay.bank is not None:
            data["payment"]["bank"] = pay.bank
        if pay.policy is not None:
            data["payment"]["policy"] = pay.policy
        if self.evidence_peer_quota != DEFAULT_EVIDENCE_QUOTA:
            data["evidence"] = {"peer_quota_bytes": self.evidence_peer_quota}
        if self.ca is not None:
            data["ca"] = {"enroll_listen": self.ca.enroll_listen,
                          "root_key": rel(self.ca.root_key)}
            if self.ca.enroll_advertise is not None:
                data["ca"]["enroll_advertise"] = self.ca.enroll_advertise
        if self.components:
            data["components"] = {name: dict(table) for name, table in self.components.items()}
        if self.fairexchange != FairExchangeSettings():
            fair = self.fairexchange
            data["fairexchange"] = {"deadline": fair.deadline} | (
                {} if fair.notary is None else {"notary": fair.notary})
        return tomli_w.dumps(data)


def _ca_settings(raw: object, *, base: Path, where: str) -> CaSettings | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: [ca] must be a table")
    unknown = set(raw) - {"enroll_listen", "enroll_advertise", "root_key"}
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) in [ca]: {', '.join(sorted(unknown))}")
    listen, root_key = raw.get("enroll_listen"), raw.get("root_key", "root-key.pem")
    advertise = raw.get("enroll_advertise")
    if not isinstance(listen, str) or not isinstance(root_key, str) \
            or not isinstance(advertise, str | None):
        raise ConfigError(f"{where}: [ca] needs enroll_listen = 'HOST:PORT' and "
                          "root_key = 'PATH' (and optionally enroll_advertise = 'HOST:PORT')")
    return CaSettings(enroll_listen=listen, root_key=base / _path_text(root_key, "ca.root_key",
                                                                      where),
                      enroll_advertise=advertise)


def _fairexchange_settings(raw: object, *, where: str) -> FairExchangeSettings:
    if raw is None:
        return FairExchangeSettings()
    if not isinstance(raw, dict) or set(raw) - {"notary", "deadline"} or not isinstance(
            raw.get("notary", ""), str):
        raise ConfigError(f"{where}: [fairexchange] takes notary = 'ID' and deadline = seconds")
    return FairExchangeSettings(**raw)


def _payment_settings(raw: object, *, where: str) -> PaymentSettings:
    if raw is None:
        return PaymentSettings()
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: [payment] must be a table")
    unknown = set(raw) - {"bank", "modules", "limit", "policy"}
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) in [payment]: {', '.join(sorted(unknown))}")
    bank, modules, limit = raw.get("bank"), raw.get("modules"), raw.get("limit")
    if not isinstance(bank, str | None) or not (
        modules is None or (isinstance(modules, list) and all(isinstance(m, str) for m in modules))
    ) or not isinstance(limit, dict | None):
        raise ConfigError(f"{where}: [payment] has bank = 'ID', modules = ['transfer', ...] "
                          "and a [payment.limit] table of currency = minor units")
    defaults = PaymentSettings()
    policy = raw.get("policy")
    return PaymentSettings(bank=bank, modules=tuple(modules) if modules else defaults.modules,
                           limit=dict(limit) if limit else defaults.limit,
                           policy=dict(policy) if isinstance(policy, dict) else policy)


DEFAULT_EVIDENCE_QUOTA = 64 * 1024 * 1024


def _evidence_settings(raw: object, *, where: str) -> dict[str, int]:
    """``[evidence]``: ``peer_quota_bytes``, a positive int (agents/components/_evidence.py)."""
    if raw is None:
        return {}
    quota = raw.get("peer_quota_bytes") if isinstance(raw, dict) else None
    if not isinstance(raw, dict) or set(raw) - {"peer_quota_bytes"} or (
            quota is not None and (type(quota) is not int or quota <= 0)):
        raise ConfigError(f"{where}: [evidence] takes only peer_quota_bytes, a positive int")
    return {} if quota is None else {"evidence_peer_quota": quota}


def _path_text(value: str, key: str, where: object) -> str:
    """A path from the file: TOML can spell a NUL (\\u0000), which no file name holds
    (the OS call would raise ValueError, not say which key is wrong)."""
    if "\0" in value or not value:
        raise ConfigError(f"{where or 'config'}: {key!r} must be a non-empty path without NUL")
    return value


def _seconds(key: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ConfigError(f"timeouts.{key} must be a positive number of seconds")
    if math.isinf(value):
        raise ConfigError(f"timeouts.{key} must be finite")
    return float(value)

