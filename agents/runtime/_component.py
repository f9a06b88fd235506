"""Components: the unit of extension of an agent.

A component is one service's ops, tables, background work and settings. The agent
builds each with one ``Context``, the only way in to what every agent offers (its
identity and key, the archive, the database, calling a peer by op, verifying a
statement, and one clock), collects its tables (``migrations``), registers the
handlers it declares with ``@handles(op)``, and runs its background work (``run``) in
the agent's nursery. A role is a name and a list of component classes.

A component may need another on the same agent (the bank's instruments need the
ledger): it names the class in ``requires`` and finds the instance with
``context.component(cls)``. The agent adds what is required and not listed, once.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypeVar

import trio
from cryptography import x509

from semper.agents.runtime._config import ConfigError
from semper.services._ops import Op
from semper.services.archive import Direction
from semper.services.certificates import AgentIdentity
from semper.services.statements import Statement, verify_statement

if TYPE_CHECKING:
    import logging

    from semper.agents.runtime._agent import Agent
    from semper.agents.runtime._config import AgentConfig
    from semper.agents.runtime._storage import Database
    from semper.transport import RequestContext

__all__ = ["Clock", "Component", "Context", "SystemClock", "handles"]

C = TypeVar("C", bound="Component")
Handler = Callable[[Any, "RequestContext", Any], Awaitable[Any]]

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


class Clock(Protocol):
    """The agent's one wall clock, in Unix milliseconds (UTC). Injected, so that a
    test (or a notary's deadlines under trio's virtual time) can drive it."""

    def now_ms(self) -> int: ...


class SystemClock:
    """The machine's clock."""

    __slots__ = ()

    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000


def handles(op: Op) -> Callable[[Handler], Handler]:
    """Mark a component method as the handler of ``op``. The method gets the request
    context and the request decoded with ``op.request``; what it returns is encoded
    with ``op.response``."""

    def mark(method: Handler) -> Handler:
        method.__semper_op__ = op  # type: ignore[attr-defined]
        return method

    return mark


class Component:
    """Base class of every component. Override what the component needs."""

    #: The component's name: its settings section, its name in logs.
    name: ClassVar[str] = ""
    #: Its version; a peer sees the versions of the services it serves in our hello.
    version: ClassVar[int] = 1
    #: Payment instruments (or other modules) it adds to its ops' services, as the
    #: hello advertises them (``bank`` lists the instruments it settles).
    modules: ClassVar[tuple[str, ...]] = ()
    #: Components this one needs on the same agent.
    requires: ClassVar[tuple[type[Component], ...]] = ()
    #: Names of its ops kept out of the event log (polled ones, say).
    unlogged: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, context: Context) -> None:
        self.context = context

    def configure(self, settings: Mapping[str, Any]) -> None:
        """Take this component's ``[components.<name>]`` table from the agent's
        configuration (called once, after construction, with ``{}`` if there is none).
        Raise ``ConfigError`` for a setting it does not know or a bad value: by
        default it takes none."""
        if settings:
            raise ConfigError(f"component {self.name!r} takes no settings "
                              f"([components.{self.name}] has {', '.join(sorted(settings))})")

    def migrations(self) -> Mapping[str, Sequence[str]]:
        """Tables this component keeps: migration name -> SQL steps, appended only."""
        return {}

    def handlers(self) -> Iterator[tuple[Op, Callable[..., Awaitable[Any]]]]:
        """The ops it serves: by default its methods marked ``@handles(op)``."""
        for attr in dir(type(self)):
            op = getattr(getattr(type(self), attr), "__semper_op__", None)
            if isinstance(op, Op):
                yield op, getattr(self, attr)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Background work for as long as the agent runs; report readiness first."""
        task_status.started()


class Context:
    """What a component reaches the agent through."""

    def __init__(self, agent: Agent, clock: Clock) -> None:
        self._agent = agent
        self.clock = clock

    # -- who we are -----------------------------------------------------------------

    @property
    def id(self) -> str:
        return self._agent.id

    @property
    def role(self) -> str:
        return self._agent.config.role

    @property
    def agent(self) -> Agent:
        """The agent itself: for the runtime's own components, which give the
        agent's objects (its CRL, its peer book) the shape of a component."""
        return self._agent

    @property
    def config(self) -> AgentConfig:
        return self._agent.config

    def settings(self, component: Component) -> Mapping[str, Any]:
        """``component``'s ``[components.<name>]`` table (empty if none)."""
        return self._agent.config.components.get(component.name, {})

    @property
    def certificate(self) -> x509.Certificate:
        """Ours: the one ``sign`` signs under."""
        return self._agent.credentials.identity.certificate

    @property
    def root(self) -> x509.Certificate:
        return self._agent.credentials.root

    @property
    def crl(self) -> x509.CertificateRevocationList:
        """The newest CRL the agent applied."""
        return self._agent.crl

    @property
    def log(self) -> logging.Logger:
        import logging

        return logging.getLogger(f"semper.{self.role}")

    # -- time -----------------------------------------------------------------------

    def now_ms(self) -> int:
        return self.clock.now_ms()

    def now(self) -> dt.datetime:
        return _EPOCH + dt.timedelta(milliseconds=self.clock.now_ms())

    # -- storage --------------------------------------------------------------------

    @property
    def database(self) -> Database:
        return self._agent.database

    @property
    def archive(self) -> Any:
        return self._agent.archive

    def component(self, cls: type[C]) -> C:
        """The instance of ``cls`` on this agent (KeyError if it runs none)."""
        return self._agent.component(cls)

    # -- statements -----------------------------------------------------------------

    def sign(self, type: str, body: dict[str, Any]) -> Statement:
        """A statement of ``type`` signed with our key, now, with a fresh nonce."""
        return self._agent.evidence.sign(type, body)

    def verify(self, statement: Statement, certificate: x509.Certificate, *,
               expected_type: str | None = None,
               expected_signer: str | None = None) -> AgentIdentity:
        """Check a statement a peer signed, now, against the market root and the CRL
        we hold (``services.statements.verify_statement``); the signer's identity.

        Raises the statement and certificate layers' coded errors (``statement.*``,
        ``auth.*``), which are meant for the peer."""
        return verify_statement(statement, certificate=certificate, root=self.root,
                                crl=self.crl, now=self.now(), expected_type=expected_type,
                                expected_signer=expected_signer)

    async def record(self, statement: Statement, *, sent: bool, peer: str, transaction: str,
                     certificate: x509.Certificate | None = None) -> None:
        """Archive a statement we sent or received (and verified) in ``transaction``."""
        await self._agent.archive.record(
            statement, direction=Direction.SENT if sent else Direction.RECEIVED, peer=peer,
            transaction=transaction,
            certificate=self.certificate if certificate is None and sent else certificate)

    # -- peers ----------------------------------------------------------------------

    async def call(self, peer: str, op: Op, request: Any = None) -> Any:
        """Ask ``peer`` for ``op`` over the agent's cached channel; the answer decoded
        with ``op.response``. Raises the peer's refusal with its code unchanged."""
        answer = await self._agent.request(peer, op.service, op.name,
                                           op.encode_request(request))
        return op.decode_response(answer)

    async def request(self, peer: str, service: str, op: str, body: Any = None) -> Any:
        """An op by name, its bodies as they travel (for ops declared elsewhere)."""
        return await self._agent.request(peer, service, op, body)
