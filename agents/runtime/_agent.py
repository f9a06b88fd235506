"""The agent runtime: identity, listener, channels to peers, CRL refresh.

An ``Agent`` composes the pieces (STYLE.md section 9: no god objects): credentials
from ``_identity``, channels from ``semper.transport``, the service registry that
roles fill in. ``run`` owns one nursery holding the listener, the CRL watcher and
every cached outbound channel. Cancelling it closes everything, but cancels the
channels' writers too, so no ``bye`` goes out: call ``close_channels`` first.
"""

from __future__ import annotations

import functools
import gc
import logging
import ssl
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any, ClassVar, Final

import trio
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from semper.agents.components._archive import Archive
from semper.agents.components._directory import PeerBook
from semper.agents.components._evidence import EvidenceService
from semper.agents.components._payments import MarketPolicyBook
from semper.agents.runtime._component import C, Clock, Component, Context, SystemClock
from semper.agents.runtime._config import AgentConfig, ConfigError, parse_address
from semper.agents.runtime._events import EventLog
from semper.agents.runtime._files import write_file
from semper.agents.runtime._identity import (
    Credentials,
    ca_verifier,
    check_crl,
    crl_is_stale,
    peer_verifier,
)
from semper.agents.runtime._roles import Role, load_role
from semper.agents.runtime._services import RUNTIME_COMPONENTS
from semper.agents.runtime._storage import Database
from semper.services._ops import Op
from semper.services.certificates import AgentIdentity, CertificateError, load_crl
from semper.transport import (
    Channel,
    ConnectFailed,
    RequestContext,
    ServiceRegistry,
    TlsContexts,
    TooManyChannels,
    make_hello,
    open_channel,
    serve,
)

__all__ = ["Agent"]

log = logging.getLogger("semper.agent")


class Agent:
    """One market participant. Build it, then ``await nursery.start(agent.run)``."""

    def __init__(self, config: AgentConfig, *, passphrase: bytes | None = None,
                 clock: Clock | None = None) -> None:
        self.config = config
        self.clock: Clock = SystemClock() if clock is None else clock
        self.credentials = Credentials.load(
            cert=config.cert, key=config.key, root=config.ca_root, crl=config.crl,
            passphrase=passphrase,
        )
        self.identity: AgentIdentity = self.credentials.identity
        if self.identity.agent_id != config.id or self.identity.role != config.role:
            raise CertificateError(
                f"config says {config.id}/{config.role}, the certificate says "
                f"{self.identity.agent_id}/{self.identity.role}"
            )
        self.tls = TlsContexts(self.credentials.tls_config())
        self._crl: x509.CertificateRevocationList = self.credentials.crl
        self._crl_pem = self.credentials.crl_pem
        self._crl_file_pem = self.credentials.crl_pem  # the CRL file as last read
        self._crl_fetch_failures = 0
        self._crl_refresh = trio.Lock()  # one refresh of a stale CRL at a time
        self._crl_asked = False  # a command (no watcher) asked the CA agent once
        self._crl_cache = trio.Lock()  # one write of data_dir/crl.pem at a time
        self.verify_peer = CurrentVerifier(peer_verifier(self.credentials.root,
                                                         lambda: self._crl))
        self._tls_crl_pending: bytes | None = None  # a CRL the TLS contexts still lack
        #: The newest market policy (protocol.md 8.9), which comes with the CRL.
        self.market_policy = MarketPolicyBook(self.credentials.root, config.data_dir)
        self.peers = PeerBook(self)
        self.address: tuple[str, int] | None = None  # bound while run runs
        self.channel_config = config.timeouts.channel_config()
        self.registry = ServiceRegistry()
        self.events = EventLog(config.id, config.data_dir / "events.jsonl")
        self._database: Database | None = None
        self._archive: Archive | None = None
        self.evidence = EvidenceService(self)
        self.context = Context(self, self.clock)
        self.role: Role = load_role(config.role)(self)
        self.components: dict[type[Component], Component] = {}
        self._tables: dict[str, Sequence[str]] = {}  # migration name -> steps, as claimed
        #: Plugins installed but not run (failed to load, or clashing): their
        #: ``[components.<name>]`` tables are not a configuration error.
        self.skipped_components: set[str] = set()
        for cls in (*RUNTIME_COMPONENTS, *self.role.component_classes()):
            self._add_component(cls)
        for cls in self.role.plugin_classes():
            self._add_component(cls, plugin=True)
        names = {component.name for component in self.components.values()}
        unknown = sorted(set(config.components) - names - self.skipped_components)
        if unknown:
            raise ConfigError(f"{config.path or 'config'}: [components.{unknown[0]}] names no "
                              f"component this agent runs ({', '.join(sorted(names))})")
        for name in sorted(set(config.components) & self.skipped_components):
            log.warning("[components.%s] is for a component that is installed but not "
                        "running (see the error above)", name)
        self._inbound: set[Channel] = set()
        self._inbound_per_peer: dict[str, int] = {}
        self._outbound: dict[str, Channel] = {}
        self._connecting: dict[str, trio.Event] = {}
        self._nursery: trio.Nursery | None = None
        self._use_cached_crl()

    @property
    def id(self) -> str:
        return self.config.id

    @property
    def database(self) -> Database:
        """The agent's SQLite database; open while ``run`` runs."""
        if self._database is None:
            raise RuntimeError("the agent's database is open only while Agent.run runs")
        return self._database

    @property
    def archive(self) -> Archive:
        """The evidence archive; open while ``run`` runs."""
        if self._archive is None:
            raise RuntimeError("the agent's archive is open only while Agent.run runs")
        return self._archive

    @property
    def crl(self) -> x509.CertificateRevocationList:
        """The newest CRL this agent has applied."""
        return self._crl

    @property
    def running(self) -> bool:
        return self._nursery is not None and self._database is not None

    def advertised_address(self) -> str:
        """Where peers reach us: ``advertise``, else the bound (or configured) address."""
        if self.config.advertise is not None:
            return self.config.advertise
        if self.address is None:
            return self.config.listen
        host, port = self.address
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def migrations(self) -> dict[str, Any]:
        """Every component's tables: migration name -> steps (each name has one owner)."""
        return dict(self._tables)

    def _add_component(self, cls: type[Component], *, plugin: bool = False
                       ) -> Component | None:
        """Build ``cls`` (after what it requires), once, and register its ops and tables.

        A plugin (an installed package's component, say a payment instrument's bank
        half) that fails to build, or claims an op, a migration or a name another
        component has, is skipped and logged: the agent runs without it rather than
        not at all. Its settings (``ConfigError``) are the operator's to fix, and stop
        the agent. The agent's own components must fit (``ComponentClash``).
        """
        if cls in self.components:
            return self.components[cls]
        for needed in cls.requires:
            if self._add_component(needed, plugin=plugin) is None:
                self.skipped_components.add(cls.name)
                return None
        try:
            component = cls(self.context)
            component.configure(self.context.settings(component))
            handlers = list(component.handlers())
            tables = dict(component.migrations())
            self._check_fits(cls, handlers, tables)
        except ConfigError:
            raise
        except Exception as exc:
            if not plugin:
                raise
            log.error("not running component %r (%s.%s): %s", cls.name, cls.__module__,
                      cls.__qualname__, exc, exc_info=not isinstance(exc, ComponentClash))
            self.skipped_components.add(cls.name)
            return None
        self.components[cls] = component
        self._tables.update(tables)
        for op, handler in handlers:
            if op.service not in self.registry.services():
                self.registry.add_service(op.service, version=cls.version)
            self.serve(op, handler, logged=op.name not in cls.unlogged)
        if component.modules:
            for service in {op.service for op, _ in handlers}:
                self.registry.add_modules(service, component.modules)
        return component

    def _check_fits(self, cls: type[Component], handlers: list[tuple[Op, Any]],
                    tables: dict[str, Sequence[str]]) -> None:
        """Raise ComponentClash if ``cls`` claims what another component has."""
        if any(c.name == cls.name for c in self.components.values()):
            raise ComponentClash(f"another component is named {cls.name!r}")
        served = set(self.registry.ops())
        for op, _ in handlers:
            if (op.service, op.name) in served:
                raise ComponentClash(f"{op.qualified} is served by another component")
        for name, steps in tables.items():
            if name in self._tables and list(self._tables[name]) != list(steps):
                raise ComponentClash(f"its migration {name!r} is another component's")

    def component(self, cls: type[C]) -> C:
        """The instance of ``cls`` this agent runs (KeyError if none)."""
        return self.components[cls]  # type: ignore[return-value]

    def serve(self, op: Op, handler: Any, *, logged: bool = True) -> None:
        """Register ``handler`` for ``op``: it gets the request decoded with
        ``op.request`` and its answer is encoded with ``op.response``."""

        async def typed(context: RequestContext, body: Any) -> Any:
            return op.encode_response(await handler(context, op.decode_request(body)))

        if logged:
            self.add_op(op.service, op.name, typed)
        else:
            self.registry.add_op(op.service, op.name, typed)

    def add_op(self, service: str, op: str, handler: Any) -> None:
        """Register a handler whose every call goes into the event log."""
        events = self.events

        async def logged(context: RequestContext, body: Any) -> Any:
            started = time.perf_counter()
            outcome = "ok"
            try:
                return await handler(context, body)
            except BaseException as exc:
                outcome = getattr(exc, "code", None) or type(exc).__name__
                raise
            finally:
                events.emit("served", peer=context.peer.agent_id, service=service, op=op,
                            request_id=context.request_id, outcome=outcome,
                            ms=round((time.perf_counter() - started) * 1000, 3))
                log.debug("served %s.%s to %s: %s", service, op, context.peer.agent_id, outcome)

        self.registry.add_op(service, op, logged)

    async def request(self, peer_id: str, service: str, op: str, body: Any = None) -> Any:
        """One request to ``peer_id`` over the cached channel, logged like ours."""
        started = time.perf_counter()
        outcome = "ok"
        try:
            channel = await self.channel(peer_id)
            return await channel.request(service, op, body)
        except BaseException as exc:
            outcome = getattr(exc, "code", None) or type(exc).__name__
            raise
        finally:
            self.events.emit("requested", peer=peer_id, service=service, op=op,
                             outcome=outcome,
                             ms=round((time.perf_counter() - started) * 1000, 3))
            log.debug("request %s.%s to %s: %s", service, op, peer_id, outcome)

    def hello(self) -> Any:
        return make_hello(self.config.id, self.config.role, self.registry, self.channel_config)

    # -- serving ---------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Listen and serve until cancelled. Reports the bound ``(host, port)``."""
        host, port = self.config.listen_address
        try:
            async with self._storage(), trio.open_nursery() as nursery:
                self._nursery = nursery
                for component in self.components.values():
                    await nursery.start(component.run)
                address = await nursery.start(functools.partial(
                    serve, host, port, tls=self.tls, verify_peer=self.verify_peer,
                    hello=self.hello(), registry=self.registry, config=self.channel_config,
                    handler=self._on_inbound, admit=self._admit,
                ))
                self.address = address
                self.events.emit("listening", address=f"{address[0]}:{address[1]}")
                await nursery.start(self.peers.run)  # our card, the cards we learned
                task_status.started(address)
        finally:
            self._nursery = None
            self.address = None
            self.events.close()

    @asynccontextmanager
    async def session(self) -> AsyncIterator[Agent]:
        """The agent's storage and outbound channels, without listening: for commands
        that act as the agent (``semper buy``) beside, or instead of, its process."""
        try:
            async with self._storage(), trio.open_nursery() as nursery:
                self._nursery = nursery
                try:
                    yield self
                finally:
                    with trio.CancelScope(shield=True):
                        await self.close_channels("done")
                    nursery.cancel_scope.cancel()
        finally:
            self._nursery = None
            self.events.flush()  # the lines of the requests it made, kept a moment

    @asynccontextmanager
    async def _storage(self) -> AsyncIterator[None]:
        """The database and the archive, open for the body; closed however it ends."""
        _tune_gc()
        self._database = await Database.open(self.config.data_dir / "agent.sqlite",
                                             self.migrations())
        self._archive = Archive(self._database, self.clock.now_ms)
        try:
            yield
        finally:
            database, self._database, self._archive = self._database, None, None
            with trio.CancelScope(shield=True):
                await database.aclose()

    async def close_channels(self, reason: str = "shutting down") -> None:
        """Say ``bye`` on every open channel, in and out, and wait until all are closed.

        Each close is bounded by the channel's close timeout. Channels opened while
        this runs are not closed by it.
        """
        async with trio.open_nursery() as nursery:
            for channel in [*self._inbound, *self._outbound.values()]:
                nursery.start_soon(channel.aclose, reason)

    async def keep_running(self, task: Any) -> None:
        """Run a background task of ours; if it fails, log it and start it again a
        little later. Revocation must not stop because one pass failed (say, out of
        file descriptors while writing the CRL)."""
        while True:
            try:
                await task()
                return
            except Exception as exc:
                log.error("%s failed (restarting): %s", task.__name__, exc, exc_info=exc)
            await trio.sleep(self.config.timeouts.crl_refresh)

    def _admit(self, peer: Any) -> Any:
        """One more inbound channel from ``peer``, within what one peer may hold."""
        agent_id = peer.agent_id
        held = self._inbound_per_peer.get(agent_id, 0)
        if held >= self.config.timeouts.max_channels_per_peer:
            raise TooManyChannels(f"{agent_id} holds {held} channels to {self.id} already, "
                                  "the most one peer may")
        self._inbound_per_peer[agent_id] = held + 1

        def release() -> None:
            left = self._inbound_per_peer.pop(agent_id) - 1
            if left:
                self._inbound_per_peer[agent_id] = left

        return release

    async def _on_inbound(self, channel: Channel) -> None:
        self._inbound.add(channel)
        log.debug("channel from %s (%s) open", channel.peer.agent_id, channel.peer.role)
        channel.recheck()  # a CRL applied since the channel's hello counts too
        try:
            await channel.wait_closed()
        finally:
            self._inbound.discard(channel)

    # -- talking to peers ------------------------------------------------------------

    async def peer_address(self, peer_id: str) -> tuple[str, int]:
        """Where ``peer_id`` listens: from the config, a card learned before, or the
        CA agent's directory (``PeerBook.address``)."""
        return await self.peers.address(peer_id)

    @asynccontextmanager
    async def connect(self, peer_id: str, *, max_frame: int | None = None
                      ) -> AsyncIterator[Channel]:
        """A channel to ``peer_id`` for the ``async with`` body only (one-off use).

        ``max_frame``: the largest frame we accept on it, announced in our hello
        (a delivery channel's chunk answers are larger than the default)."""
        await self.refresh_stale_crl()  # else OpenSSL refuses every peer
        await self._ask_ca_once(peer_id)
        host, port = await self.peer_address(peer_id)
        log.debug("connecting to %s at %s:%d", peer_id, host, port)
        config = self.channel_config if max_frame is None or max_frame <= \
            self.channel_config.max_frame else replace(self.channel_config, max_frame=max_frame)
        try:
            async with open_channel(host, port, tls=self.tls, verify_peer=self.verify_peer,
                                    expected_id=peer_id,
                                    hello=make_hello(self.config.id, self.config.role,
                                                     self.registry, config),
                                    registry=self.registry,
                                    config=config) as channel:
                log.debug("channel to %s open: hello says role %s, services %s", peer_id,
                          channel.their_hello.role, ", ".join(channel.their_hello.services))
                yield channel
        except ConnectFailed:
            self.peers.forget(peer_id)  # a learned address gone stale: ask again next time
            raise

    async def channel(self, peer_id: str) -> Channel:
        """The cached channel to ``peer_id``, opened (or reopened) as needed.

        Only while ``run`` is running: the channel lives in the agent's nursery.
        """
        if self._nursery is None:
            raise RuntimeError("Agent.channel needs the agent running (Agent.run)")
        while True:
            existing = self._outbound.get(peer_id)
            if existing is not None and not existing.closed:
                return existing
            pending = self._connecting.get(peer_id)
            if pending is None:
                break
            await pending.wait()
        done = self._connecting[peer_id] = trio.Event()
        try:
            channel = await self._nursery.start(self._hold_channel, peer_id)
        finally:
            del self._connecting[peer_id]
            done.set()
        return channel

    async def _hold_channel(self, peer_id: str, *, task_status: trio.TaskStatus[Channel]) -> None:
        started = False
        try:
            async with self.connect(peer_id) as channel:
                self._outbound[peer_id] = channel
                channel.recheck()
                task_status.started(channel)
                started = True
                try:
                    await channel.wait_closed()
                finally:
                    if self._outbound.get(peer_id) is channel:
                        del self._outbound[peer_id]
        except Exception as exc:
            if not started:
                raise  # the caller of ``channel`` learns why
            # One channel's failure ends that channel, never the agent.
            log.error("channel to %s failed: %s", peer_id, exc, exc_info=exc)

    # -- revocation ------------------------------------------------------------------

    async def watch_crl(self) -> None:
        """Every ``crl_refresh`` seconds: reread the CRL file, then ask the CA agent
        (``ca_agent``) for a newer CRL; apply what is newer. With a stale CRL (the
        market was left alone past its nextUpdate) it asks at once: until a fresh CRL
        arrives every peer is refused (``auth.crl_stale``)."""
        ca = self.config.ca_agent
        if crl_is_stale(self._crl, self.context.now()):
            log.warning("our CRL (number %d) is past its nextUpdate: peers are refused "
                        "until a fresh one arrives from %s", _crl_number(self._crl),
                        ca or "the CRL file")
        else:
            await trio.sleep(self.config.timeouts.crl_refresh)
        stale = False
        while True:
            self.retry_tls_update()
            await self.reread_crl_file()
            if ca is not None and ca != self.id:
                await self._fetch_crl(ca)
            if crl_is_stale(self._crl, self.context.now()) and not stale:
                # Gone stale while running (the CA agent away past nextUpdate): the
                # channels already open are refused too, not only new handshakes.
                self._recheck_channels()
            stale = crl_is_stale(self._crl, self.context.now())
            await trio.sleep(self.config.timeouts.crl_refresh)

    async def refresh_stale_crl(self) -> None:
        """If our CRL is stale, get a fresh one now (the CRL file, else the CA agent),
        before dialing a peer: commands run no watcher (``semper buy``, ``ping``,
        ``call`` weeks after the agent last ran), and a running agent need not wait
        for its next refresh. A failure is logged; the dial then fails in TLS."""
        if not crl_is_stale(self._crl, self.context.now()):
            return
        async with self._crl_refresh:
            if not crl_is_stale(self._crl, self.context.now()):  # another caller just refreshed it
                return
            await self.reread_crl_file()
            ca = self.config.ca_agent
            if crl_is_stale(self._crl, self.context.now()) and ca is not None and ca != self.id:
                # Never through Agent.channel: its dial would wait for this lock.
                await self._fetch_crl(ca, stale=True)

    async def _ask_ca_once(self, peer_id: str) -> None:
        """Before the first dial of an agent that is not running (``semper buy``,
        ``ping``, ``call``: no watcher), ask the CA agent for a newer CRL, as a running
        agent does every ``crl_refresh`` seconds. Else an enrolled agent, whose CRL
        file is its own copy, would deal with a peer revoked since it last ran until
        that copy went stale. Best effort, bounded: the CA may be down, and trade
        goes on with the CRL we have."""
        ca = self.config.ca_agent
        if self._crl_asked or self.address is not None or ca in (None, self.id, peer_id):
            return
        self._crl_asked = True
        with trio.move_on_after(min(3.0, self.config.timeouts.handshake)):
            try:
                answer = await self._fetch_crl_while_stale(ca, self._crl_query())
                der = answer.get("crl") if isinstance(answer, dict) else None
                pem = load_crl(der).public_bytes(serialization.Encoding.PEM) if der else None
            except Exception as exc:
                if not isinstance(getattr(exc, "code", None), str):
                    raise
                log.info("cannot ask %s for a newer CRL (using ours): %s", ca, exc)
                return
            await self.market_policy.offer(answer)
            if pem is None:
                return
            async with self._crl_cache:  # as _fetch_crl: applied, and kept for next time
                if pem != self._crl_pem and self.apply_crl(pem):
                    await trio.to_thread.run_sync(write_file,
                                                  self.config.data_dir / "crl.pem", pem)

    async def reread_crl_file(self) -> None:
        """Apply the CRL file (``config.crl``) if it changed since it was last read."""
        try:
            pem = await trio.Path(self.config.crl).read_bytes()
        except OSError as exc:
            log.warning("cannot read CRL %s: %s", self.config.crl, exc)
            return
        if pem != self._crl_file_pem:
            self._crl_file_pem = pem
            if pem != self._crl_pem:
                self.apply_crl(pem)

    async def _fetch_crl(self, ca: str, *, stale: bool | None = None) -> None:
        """Ask the CA agent for a CRL newer than ours (``certificates.crl``); apply it
        and cache it as ``data_dir/crl.pem``. An unreachable CA is logged once.

        ``stale`` (default: whether our CRL is) fetches over the one-off channel that
        needs no current CRL, instead of the cached channel.
        """
        try:
            query = self._crl_query()
            if crl_is_stale(self._crl, self.context.now()) if stale is None else stale:
                answer = await self._fetch_crl_while_stale(ca, query)
            else:
                channel = await self.channel(ca)
                answer = await channel.request("certificates", "crl", query)
            der = answer.get("crl") if isinstance(answer, dict) else None
            pem = load_crl(der).public_bytes(serialization.Encoding.PEM) if der else None
        except Exception as exc:
            if not isinstance(getattr(exc, "code", None), str):
                raise
            self._crl_fetch_failures += 1
            (log.warning if self._crl_fetch_failures == 1 else log.debug)(
                "cannot fetch the CRL from %s (will retry): %s", ca, exc)
            return
        if self._crl_fetch_failures:
            log.info("fetching the CRL from %s again", ca)
            self._crl_fetch_failures = 0
        await self.market_policy.offer(answer)
        if pem is None:
            return
        async with self._crl_cache:  # two fetches (watcher, a dial) must not race here
            if pem != self._crl_pem and self.apply_crl(pem):  # not twice the same
                await trio.to_thread.run_sync(write_file, self.config.data_dir / "crl.pem",
                                              pem)

    def _crl_query(self) -> dict[str, int]:
        """``certificates.crl``'s body: the CRL and market policy we hold."""
        return {"known": _crl_number(self._crl), "policy": self.market_policy.policy.serial}

    async def _fetch_crl_while_stale(self, ca: str, query: dict[str, int]) -> Any:
        """``certificates.crl`` from the CA agent while our CRL is stale.

        Our TLS contexts hold the stale CRL, and OpenSSL refuses every certificate
        against it (X509_V_ERR_CRL_HAS_EXPIRED), the CA's included. So this one-off
        channel checks the CA agent's chain without a CRL in OpenSSL, and
        ``ca_verifier`` checks it against the stale CRL (it still names whom the CA
        revoked). It serves nothing and carries one request, whose answer needs no
        trust in the channel: ``apply_crl`` checks the root's signature.
        """
        # Not through the directory: that is the CA agent, which we cannot reach yet.
        if ca in self.config.peers:
            host, port = self.config.peer_address(ca)
        elif (card := self.peers.learned(ca)) is not None:
            host, port = parse_address(card.addresses[0], what=f"the card of {ca}")
        else:
            raise ConfigError(f"our CRL is stale and the CA agent {ca!r} is not in [peers]: "
                              "give its address there to fetch a fresh CRL")
        context = replace(self.tls.config, crl_pem=None).client_context()
        nothing = ServiceRegistry()
        hello = make_hello(self.id, self.config.role, nothing, self.channel_config)
        async with open_channel(host, port, tls=context, expected_id=ca, hello=hello,
                                verify_peer=ca_verifier(self.credentials.root, lambda: self._crl),
                                registry=nothing, config=self.channel_config) as channel:
            return await channel.request("certificates", "crl", query)

    def _use_cached_crl(self) -> None:
        """Start from the CRL fetched in an earlier run when it is newer than the file."""
        try:
            pem = (self.config.data_dir / "crl.pem").read_bytes()
            cached = check_crl(pem, self.credentials.root)
        except (OSError, CertificateError):
            return
        if _crl_number(cached) > _crl_number(self._crl):
            self.apply_crl(pem)

    def apply_crl(self, pem: bytes) -> bool:
        """Use a new CRL for every check from now on, and close the channels it revokes.

        Every channel, whatever its state, verifies its peer against the new CRL
        before it handles another frame (the verifier's epoch grows); the open ones are
        checked here and now. Returns False (and keeps the old CRL) if the new one is
        forged, stale, older than the one in use, another CRL under its number, or
        one that drops a revocation of ours. Never raises: TLS contexts that cannot
        be built now (out of file descriptors) are retried by ``watch_crl``.
        """
        try:
            crl = check_crl(pem, self.credentials.root)
        except CertificateError as exc:
            log.warning("ignoring CRL: %s", exc)
            return False
        if _crl_number(crl) < _crl_number(self._crl):
            log.warning("ignoring CRL number %d, older than %d", _crl_number(crl),
                        _crl_number(self._crl))
            return False
        if _crl_number(crl) == _crl_number(self._crl) and crl != self._crl:
            # A CA never issues two CRLs under one number: this one comes from a CA
            # folder restored from a backup, say, and may lack revocations we hold.
            log.warning("ignoring another CRL numbered %d, the number of ours",
                        _crl_number(crl))
            return False
        revoked_now = {r.serial_number for r in crl}
        dropped = [r.serial_number for r in self._crl if r.serial_number not in revoked_now]
        if dropped:
            # Nor does it take a revocation back (semper's CRLs only grow): a CRL
            # without one is from a CA that lost it, and would make a revoked peer good.
            log.error("ignoring CRL number %d: it drops the revocation of %d certificate(s) "
                      "(serial %x, ...) that CRL number %d revokes; was the CA's folder "
                      "restored from a backup?", _crl_number(crl), len(dropped), dropped[0],
                      _crl_number(self._crl))
            return False
        self._crl, self._crl_pem = crl, pem
        revoked = len(list(crl))
        log.info("applied CRL number %d with %d revoked %s", _crl_number(crl), revoked,
                 "certificate" if revoked == 1 else "certificates")
        if crl.get_revoked_certificate_by_serial_number(self.identity.serial):
            log.warning("our own certificate (%s) is revoked: peers will refuse us", self.id)
        self._recheck_channels()
        self._tls_crl_pending = pem
        self.retry_tls_update()
        return True

    def _recheck_channels(self) -> None:
        """What the peer check answers may have changed: every channel verifies its
        peer again before its next frame, and the open ones do so now (refusing and
        closing those whose peer no longer passes)."""
        self.verify_peer.epoch += 1
        for channel in [*self._inbound, *self._outbound.values()]:
            channel.recheck()

    def retry_tls_update(self) -> None:
        """Give the TLS contexts the CRL in use, if an earlier try failed."""
        pem = self._tls_crl_pending
        if pem is None:
            return
        try:
            self.tls.update_crl(pem)
        except (OSError, ssl.SSLError) as exc:
            log.warning("cannot load CRL number %d into TLS yet (will retry): %s",
                        _crl_number(self._crl), exc)
            return
        self._tls_crl_pending = None


class ComponentClash(Exception):
    """A component claims an op, a migration or a name another one has."""

    code: ClassVar[str] = "agent.component_clash"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class CurrentVerifier:
    """The peer check with the CRL in use. ``epoch`` grows with every CRL applied, and
    each channel verifies its peer again when it sees the epoch change."""

    __slots__ = ("_check", "epoch")

    def __init__(self, check: Any) -> None:
        self._check = check
        self.epoch = 0

    def __call__(self, der: bytes, expected_id: str | None) -> Any:
        return self._check(der, expected_id)


#: The young generation's size before the cyclic collector runs (CPython's is 700).
GC_YOUNG: Final = 10_000
_gc_tuned = False


def _tune_gc() -> None:
    """Once per process, when an agent opens its storage: what was loaded so far
    (modules, configuration, keys) is frozen out of the cyclic collector's scans, and
    it runs after 10,000 new container objects instead of 700. A purchase allocates
    thousands (messages, bodies, trio's tasks), few of them in cycles: the default
    ran a young collection every few requests: ~0.16 ms of CPU a purchase in one
    process holding the three agents, a third of that now."""
    global _gc_tuned
    if _gc_tuned:
        return
    _gc_tuned = True
    gc.freeze()
    young, middle, old = gc.get_threshold()
    gc.set_threshold(max(GC_YOUNG, young), middle, old)


def _crl_number(crl: x509.CertificateRevocationList) -> int:
    try:
        return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except x509.ExtensionNotFound:
        return 0
