"""The certification authority's agent (role ``ca``).

Besides its channel listener (mutual TLS, like every agent) the CA agent listens on a
second address, ``[ca] enroll_listen``, where TLS authenticates only the server:
newcomers without a certificate redeem their enrollment tokens there, and nothing
else is offered (``transport.serve_anonymous``). On its channels it offers:

* ``certificates.crl`` and ``certificates.status``: its current CRL (reread from its
  CRL file, which ``semper ca revoke`` rewrites, at every request), with the market
  policy (``market-policy.bin`` beside the root key, which ``semper market policy``
  signs; protocol.md 8.9) to a requester holding an older one, and one certificate's
  status;

It keeps the CRL current: at start (before it listens) and then every
``CRL_CHECK_INTERVAL`` seconds it issues the next CRL when less than half of the
current one's validity is left (``publish_crl``), so a market left alone never finds
its CRL stale, and a CA started after a long pause renews it first.
* ``directory.publish`` and ``directory.lookup``: the market's contact cards
  (``agents/components/_directory.py``).
* ``ca.reveal`` and ``ca.reveals``: a pseudonym's real id, to an arbiter citing a
  case, and the reveals of its id, to its holder (``agents/components/_reveal.py``).

Everything it issues goes into its database (``agents/components/_castore.py``), shared through
WAL with the operator's ``semper ca invite``/``status``/``revoke``.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import trio
from cryptography.hazmat.primitives import serialization

from semper.agents.components._castore import (
    CA_MIGRATIONS,
    issued_by_serial,
    latest_issued,
    publish_crl,
    redeem,
)
from semper.agents.components._directory import DirectoryService
from semper.agents.components._payments import MARKET_POLICY_FILE, read_policy_file
from semper.agents.components._reveal import Reveal
from semper.agents.operator._market import load_authority
from semper.agents.runtime._component import Component, Context
from semper.agents.runtime._config import CaSettings, ConfigError
from semper.agents.runtime._roles import Role
from semper.services._ops import Op
from semper.services.archive import crl_covers_until
from semper.services.certificates import (
    CertificateAuthority,
    CertificateError,
    EnrollAnswer,
    EnrollRequest,
    StatusReport,
    certificate_status,
    crl_number,
    identity_of,
)
from semper.services.certificates._bodies import CrlRequest, StatusRequest
from semper.services.certificates._ops import CRL, STATUS
from semper.services.directory._ops import LOOKUP, PUBLISH
from semper.transport import Request as WireRequest
from semper.transport import RequestContext, UnknownOp, UnknownService, serve_anonymous

__all__ = ["CRL_CHECK_INTERVAL", "CertificationAuthority"]

log = logging.getLogger("semper.ca")

#: Seconds between two looks at whether the CRL is due for renewal. The renewal
#: comes half a validity (15 days) before nextUpdate, so an hour is plenty.
CRL_CHECK_INTERVAL = 3600.0

#: At most one CRL issued on request (``certificates.crl`` ``fresh_after``) per this
#: many seconds.
FRESH_CRL_INTERVAL = 10.0

_DER = serialization.Encoding.DER


class CertificationAuthority(Component):
    name = "ca"
    # Polled by every agent every crl_refresh seconds: kept out of the event log.
    unlogged = frozenset({"crl"})

    def __init__(self, context: Context) -> None:
        super().__init__(context)
        self.agent = agent = context.agent
        settings: CaSettings | None = agent.config.ca
        if settings is None:
            raise ConfigError(f"{agent.config.path or 'config'}: the ca role needs a [ca] "
                              "table (enroll_listen, root_key)")
        self.settings = settings
        # Loaded at start, so a wrong passphrase or a foreign key fails at once.
        self.authority: CertificateAuthority = load_authority(
            agent.config.ca_root, settings.root_key, agent.credentials.passphrase)
        self.enroll_address: tuple[str, int] | None = None
        #: The CA's clock for CRL renewal; tests move it.
        self.clock: Callable[[], dt.datetime] = agent.context.now
        self.crl_check_interval = CRL_CHECK_INTERVAL
        #: Seconds between two CRLs issued on a verifier's request (``fresh_after``).
        self.fresh_crl_interval = FRESH_CRL_INTERVAL
        self._last_fresh_ms = 0
        self._fresh_lock = trio.Lock()

    def migrations(self) -> dict[str, Any]:
        return dict(CA_MIGRATIONS)

    def handlers(self) -> Iterator[tuple[Op, Callable[..., Awaitable[Any]]]]:
        yield CRL, self._crl
        yield STATUS, self._status

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        # Before anything listens: a CA started after a long pause serves a fresh CRL
        # to its first caller (and accepts channels at all: a stale CRL refuses all).
        await self.renew_crl_if_due()
        host, port = self.settings.enroll_address
        context = self.agent.tls.config.server_only_context()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._keep_crl_current)
            self.enroll_address = await nursery.start(functools.partial(
                serve_anonymous, host, port, context=context, handler=self._enroll,
                timeout=self.agent.channel_config.handshake_timeout,
                max_connections=self.agent.channel_config.max_unauthenticated))
            bound = self.enroll_address
            self.agent.events.emit("enroll_listening", address=f"{bound[0]}:{bound[1]}")
            task_status.started()

    # -- the CRL's renewal ----------------------------------------------------------

    async def renew_crl_if_due(self) -> bool:
        """Issue and publish the next CRL if less than half of the current one's
        validity is left at ``clock()``; apply it to ourselves. True if it did.

        A failure (the file unreadable, the disk full) is logged and the next look
        tries again: the current CRL stays good for days yet.
        """
        agent = self.agent
        try:
            crl = await trio.to_thread.run_sync(functools.partial(
                publish_crl, agent.config.crl, self.authority, now=self.clock(), if_due=True))
        except (OSError, CertificateError) as exc:
            log.error("cannot renew the CRL %s (will retry): %s", agent.config.crl, exc)
            return False
        if crl is None:
            return False
        number = crl_number(crl)
        log.info("renewed the CRL: number %d, next update %s", number,
                 f"{crl.next_update_utc:%Y-%m-%dT%H:%M:%SZ}")
        agent.events.emit("crl_renewed", number=number,
                          next_update=f"{crl.next_update_utc:%Y-%m-%dT%H:%M:%SZ}")
        await agent.reread_crl_file()
        return True

    async def _issue_fresh_crl(self, fresh_after: int) -> None:
        """Issue the next CRL now, for a verifier that needs one issued after
        ``fresh_after`` (not in our future); rate-limited, so that peers cannot make
        us sign, and every agent fetch, a CRL per request."""
        now = self.clock()
        now_ms = int(now.timestamp() * 1000)
        if fresh_after > now_ms or now_ms - self._last_fresh_ms < self.fresh_crl_interval * 1000:
            return
        async with self._fresh_lock:
            if crl_covers_until(self.agent.crl) >= fresh_after:
                return  # another request had one issued meanwhile
            self._last_fresh_ms = now_ms
            # A CRL's thisUpdate has whole seconds: issued in the second of
            # fresh_after, it would vouch only up to that second's start, before the
            # statement it was asked for. Wait for the next second (at most 1 s).
            wait_ms = -(-fresh_after // 1000) * 1000 - now_ms
            if wait_ms > 0:
                await trio.sleep(wait_ms / 1000)
                now = max(self.clock(), now + dt.timedelta(milliseconds=wait_ms))
            try:
                await trio.to_thread.run_sync(functools.partial(
                    publish_crl, self.agent.config.crl, self.authority, now=now))
            except (OSError, CertificateError) as exc:
                log.error("cannot issue a fresh CRL %s: %s", self.agent.config.crl, exc)
                return
            await self.agent.reread_crl_file()

    async def _keep_crl_current(self) -> None:
        while True:
            await trio.sleep(self.crl_check_interval)
            await self.renew_crl_if_due()

    # -- enrollment (the anonymous listener) --------------------------------------------

    async def _enroll(self, request: WireRequest) -> dict[str, Any]:
        if request.service != "enroll":
            raise UnknownService(f"only the enroll service is offered here, not "
                                 f"{request.service!r}", detail={"service": request.service})
        if request.op != "request":
            raise UnknownOp(f"service 'enroll' has no op {request.op!r}",
                            detail={"service": "enroll", "op": request.op})
        body = EnrollRequest.from_wire(request.body)
        agent = self.agent
        await agent.reread_crl_file()
        try:
            certificate = await agent.database.transaction(functools.partial(
                redeem, request=body, ca=self.authority, now=agent.context.now(),
                crl=agent.crl))
        except Exception as exc:
            agent.events.emit("enroll_refused", token=body.token_id.hex()[:8],
                              outcome=getattr(exc, "code", type(exc).__name__))
            raise
        agent.events.emit("enrolled", token=body.token_id.hex()[:8],
                          serial=f"{certificate.serial_number:x}",
                          agent_id=identity_of(certificate).agent_id)
        return EnrollAnswer(
            certificate=certificate.public_bytes(_DER),
            root=self.authority.certificate.public_bytes(_DER),
            crl=agent.crl.public_bytes(_DER),
            ca_id=agent.id, ca_address=agent.advertised_address(),
        ).to_wire()

    # -- certificates ---------------------------------------------------------------------

    async def _crl(self, context: RequestContext, request: CrlRequest) -> dict[str, Any]:
        """``{"known": n?, "fresh_after": ms?}`` -> ``{"number": m, "crl": DER or nil}``
        (nil when m <= n; the runtime checked the request).

        ``fresh_after`` asks for a CRL issued after that moment (a verifier checking
        a statement signed then, protocol.md 6A.8): the CA issues one now if its
        current CRL is older, at most once per ``fresh_crl_interval`` seconds.
        """
        known, fresh_after = request.known_number, request.fresh_after
        await self.agent.reread_crl_file()
        if fresh_after is not None and crl_covers_until(self.agent.crl) < fresh_after:
            await self._issue_fresh_crl(fresh_after)
        crl = self.agent.crl
        number = crl_number(crl)
        answer = {"number": number, "crl": crl.public_bytes(_DER) if number > known else None}
        if request.policy is not None:
            book = self.agent.market_policy
            await book.offer({"policy": await trio.to_thread.run_sync(
                read_policy_file, self.settings.root_key.parent / MARKET_POLICY_FILE)})
            if book.statement is not None and book.policy.serial > request.policy:
                answer["policy"] = book.statement.to_wire()
        return answer

    async def _status(self, context: RequestContext, request: StatusRequest) -> StatusReport:
        query = request.query()
        await self.agent.reread_crl_file()

        def find(connection: Any) -> Any:
            if query.agent_id is not None:
                return latest_issued(connection, query.agent_id)
            assert query.serial is not None
            return issued_by_serial(connection, query.serial)

        issued = await self.agent.database.read(find)
        return certificate_status(issued, query, crl=self.agent.crl,
                                  now=self.agent.context.now())


class Directory(Component):
    """``directory.publish`` and ``directory.lookup``: the market's contact cards."""

    name = "directory"

    def __init__(self, context: Context) -> None:
        super().__init__(context)
        self.service = DirectoryService(context.agent)

    def handlers(self) -> Iterator[tuple[Op, Callable[..., Awaitable[Any]]]]:
        yield PUBLISH, self.service.publish_handler
        yield LOOKUP, self.service.lookup_handler


class Ca(Role):
    """The certification authority: certificates, their revocation, enrollment,
    the directory of contact cards, and the reveal of pseudonyms to arbiters."""

    name = "ca"
    components = (CertificationAuthority, Directory, Reveal)
