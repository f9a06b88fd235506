"""Finding peers: our contact card, the CA agent's directory, and the peer book.

Theory of operation. Every agent whose configuration names a ``ca_agent`` signs a
contact card (``services.directory``: id, role, address, services, one day of
validity) when it starts and publishes it to the CA agent (``directory.publish``),
retrying with backoff while the CA is unreachable and republishing before the card
runs out. The CA agent checks each card as anyone would (signature, certificate
valid now and naming the card's id and role, publisher = the card's agent) and
keeps the latest per agent (``DirectoryService``).

``PeerBook.address`` answers "where is agent X": the ``[peers]`` table first, then
the cards learned before (kept in memory and in the agent's database, so they
survive a restart and the CA's absence), and only then the CA's directory
(``directory.lookup``). A card from the directory is verified again here: the CA
publishes cards, it cannot forge them. A learned address that refuses connections
is forgotten, so the next attempt asks the directory again.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import os
import sqlite3
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

import trio

from semper.agents.components._castore import cards_of_role, find_card, store_card
from semper.agents.runtime._config import ConfigError, parse_address
from semper.services.certificates import to_ms
from semper.services.directory import (
    BadCard,
    CardMismatch,
    ContactCard,
    Lookup,
    PublishAnswer,
    SignedCard,
    UnknownAgent,
    sign_card,
    verify_card,
)
from semper.services.statements import Statement
from semper.transport import RemoteError, RequestContext, TransportError

if TYPE_CHECKING:
    from semper.agents.runtime._agent import Agent

__all__ = ["CARD_VALIDITY", "PEER_MIGRATIONS", "DirectoryService", "PeerBook"]

log = logging.getLogger("semper.directory")

CARD_VALIDITY: Final = dt.timedelta(days=1)
#: Republish this long before our card runs out.
REPUBLISH_MARGIN: Final = dt.timedelta(hours=12)
#: Backoff (seconds) between attempts to publish while the CA is unreachable.
RETRY_FIRST, RETRY_MAX = 1.0, 30.0

PEER_MIGRATIONS: Final = {"peer_book": ["""
    CREATE TABLE peer_cards (
        agent_id TEXT PRIMARY KEY,
        role TEXT NOT NULL,
        not_after_ms INTEGER NOT NULL,
        card BLOB NOT NULL,
        certificate BLOB NOT NULL
    )
"""]}


def _coded(exc: BaseException) -> bool:
    return isinstance(getattr(exc, "code", None), str)


def _format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class PeerBook:
    """Where peers are: configured, learned from cards, or asked of the directory."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self._learned: dict[str, ContactCard] = {}
        #: Set on the CA agent: answers lookups from its own directory.
        self.local_directory: Callable[[str], Any] | None = None
        #: Set once our card has been published in this run.
        self.published = trio.Event()

    def learned(self, peer_id: str) -> ContactCard | None:
        card = self._learned.get(peer_id)
        if card is not None and card.not_after_ms < to_ms(self.agent.context.now()):
            del self._learned[peer_id]
            return None
        return card

    def forget(self, peer_id: str) -> None:
        self._learned.pop(peer_id, None)

    async def address(self, peer_id: str) -> tuple[str, int]:
        """The address to dial for ``peer_id``.

        Raises:
            ConfigError: unknown, and no directory to ask.
            UnknownAgent (``directory.unknown_agent``): the directory has no card.
            and whatever reaching the CA or checking its card raised.
        """
        config = self.agent.config
        if peer_id in config.peers:
            return config.peer_address(peer_id)
        card = self.learned(peer_id)
        if card is None:
            try:
                card = await self.lookup(peer_id)
            except TransportError as exc:
                if isinstance(exc, RemoteError):  # the directory's own answer
                    raise
                raise ConfigError(f"unknown peer {peer_id!r}: not in [peers], and the "
                                  f"directory at {config.ca_agent} cannot be reached "
                                  f"({exc.message})") from exc
        return parse_address(card.addresses[0], what=f"the card of {peer_id}")

    async def lookup(self, peer_id: str) -> ContactCard:
        """Ask the directory for ``peer_id``'s card, check it, and remember it."""
        if self.local_directory is not None and self.agent.running:
            signed = await self.local_directory(peer_id)
        else:
            signed = SignedCard.from_wire(await self._ask("lookup",
                                                          Lookup(agent_id=peer_id).to_wire()))
        card = self._verify(signed)
        if card.agent_id != peer_id:
            raise CardMismatch(f"asked for {peer_id}'s card, the directory sent "
                               f"{card.agent_id}'s")
        await self._remember(signed, card)
        return card

    async def lookup_role(self, role: str) -> list[ContactCard]:
        """Every current card of ``role`` in the directory that checks out here."""
        body = await self._ask("lookup", Lookup(role=role).to_wire())
        wires = body.get("cards") if isinstance(body, dict) else None
        if not isinstance(wires, list):  # read only once its shape is known
            raise BadCard(f"the directory's answer for role {role!r} is not "
                          '{"cards": [card, ...]}')
        cards = []
        for wire in wires:
            try:
                signed = SignedCard.from_wire(wire)
                card = self._verify(signed)
            except Exception as exc:
                if not _coded(exc):
                    raise
                log.warning("ignoring a card from the directory: %s", exc)
                continue
            if card.role == role:
                await self._remember(signed, card)
                cards.append(card)
        return cards

    def _verify(self, signed: SignedCard) -> ContactCard:
        agent = self.agent
        return verify_card(signed, root=agent.credentials.root, crl=agent.crl,
                           now=agent.context.now())

    async def _ask(self, op: str, body: Any) -> Any:
        agent = self.agent
        ca = agent.config.ca_agent
        if ca is None or ca == agent.id:  # no directory, or we are it (and not running)
            known = ", ".join(sorted(agent.config.peers)) or "none"
            raise ConfigError(f"unknown peer (known peers: {known}; no ca_agent configured "
                              "to look others up)")
        if agent.running:
            return await agent.request(ca, "directory", op, body)
        async with agent.connect(ca) as channel:  # a one-off process such as `semper ping`
            return await channel.request("directory", op, body)

    async def _remember(self, signed: SignedCard, card: ContactCard) -> None:
        self._learned[card.agent_id] = card
        if not self.agent.running:
            return
        row = (card.agent_id, card.role, card.not_after_ms, signed.statement.to_bytes(),
               signed.to_wire()["certificate"])
        await self.agent.database.transaction(lambda c: c.execute(
            "INSERT OR REPLACE INTO peer_cards (agent_id, role, not_after_ms, card, "
            "certificate) VALUES (?, ?, ?, ?, ?)", row))

    # -- while the agent runs ---------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Load the cards learned in earlier runs, then keep our own card published."""
        await self._load()
        task_status.started()
        ca = self.agent.config.ca_agent
        if ca is None or ca == self.agent.id:
            return
        delay, failures = RETRY_FIRST, 0
        while True:
            try:
                not_after = await self.publish()
            except Exception as exc:
                if not _coded(exc):
                    raise
                failures += 1
                (log.warning if failures == 1 else log.debug)(
                    "cannot publish our card to %s (retrying): %s", ca, exc)
                await trio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
                continue
            delay, failures = RETRY_FIRST, 0
            left = not_after - self.agent.context.now() - REPUBLISH_MARGIN
            await trio.sleep(max(1.0, left.total_seconds()))

    def own_card(self) -> SignedCard:
        agent = self.agent
        now = self.agent.context.now()
        address = agent.config.advertise or _format_address(*agent.address)
        services = {name: (info.version, tuple(info.modules))
                    for name, info in agent.registry.services().items()}
        card = ContactCard(agent_id=agent.id, role=agent.config.role, addresses=(address,),
                           services=services, not_before_ms=to_ms(now),
                           not_after_ms=to_ms(now + CARD_VALIDITY))
        return sign_card(card, key=agent.credentials.key,
                         certificate=agent.identity.certificate, nonce=os.urandom(16))

    async def publish(self) -> dt.datetime:
        """Publish a fresh card to the CA agent; returns when it runs out."""
        signed = self.own_card()
        await self._ask("publish", signed.to_wire())
        card = ContactCard.from_body(signed.statement.body)
        self.agent.events.emit("card_published", addresses=list(card.addresses))
        self.published.set()
        return dt.datetime.fromtimestamp(card.not_after_ms / 1000, dt.UTC)

    async def _load(self) -> None:
        rows = await self.agent.database.read(lambda c: c.execute(
            "SELECT card, certificate FROM peer_cards WHERE not_after_ms >= ?",
            (to_ms(self.agent.context.now()),)).fetchall())
        for card_bytes, certificate in rows:
            try:
                signed = SignedCard.from_wire({"card": Statement.from_bytes(card_bytes).to_wire(),
                                               "certificate": certificate})
                card = self._verify(signed)  # revoked or expired since: dropped
            except Exception as exc:
                if not _coded(exc):
                    raise
                continue
            self._learned[card.agent_id] = card


class DirectoryService:
    """The CA agent's side: ``directory.publish`` and ``directory.lookup``."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        agent.peers.local_directory = self.find

    async def publish_handler(self, context: RequestContext,
                              signed: SignedCard) -> PublishAnswer:
        return await self._publish(context, signed)

    async def lookup_handler(self, context: RequestContext, lookup: Lookup) -> dict[str, Any]:
        return await self._lookup(context, lookup)

    def _check(self, signed: SignedCard) -> ContactCard:
        agent = self.agent
        return verify_card(signed, root=agent.credentials.root, crl=agent.crl,
                           now=agent.context.now())

    async def _publish(self, context: RequestContext, signed: SignedCard) -> PublishAnswer:
        card = self._check(signed)
        if context.peer.agent_id != card.agent_id:
            raise CardMismatch(f"{context.peer.agent_id} may publish only its own card, "
                               f"not {card.agent_id}'s",
                               detail={"card": card.agent_id, "publisher": context.peer.agent_id})
        await self.agent.database.transaction(functools.partial(store_card, signed=signed,
                                                                card=card))
        return PublishAnswer(agent_id=card.agent_id, not_after_ms=card.not_after_ms)

    async def find(self, agent_id: str) -> SignedCard:
        """The current card of ``agent_id``, checked again (its signer may be revoked
        since it was published).

        Raises:
            UnknownAgent: none, or none that still checks out.
        """
        now_ms = to_ms(self.agent.context.now())
        signed = await self.agent.database.read(lambda c: find_card(c, agent_id, now_ms))
        if signed is not None:
            try:
                self._check(signed)
                return signed
            except Exception as exc:
                if not _coded(exc):
                    raise
        raise UnknownAgent(f"the directory has no current card for {agent_id!r}",
                           detail={"agent": agent_id})

    async def _lookup(self, context: RequestContext, lookup: Lookup) -> dict[str, Any]:
        if lookup.agent_id is not None:
            return (await self.find(lookup.agent_id)).to_wire()
        assert lookup.role is not None
        role, now_ms = lookup.role, to_ms(self.agent.context.now())

        def read(connection: sqlite3.Connection) -> list[SignedCard]:
            return cards_of_role(connection, role, now_ms)

        cards = []
        for signed in await self.agent.database.read(read):
            try:
                self._check(signed)
            except Exception as exc:
                if not _coded(exc):
                    raise
                continue
            cards.append(signed.to_wire())
        return {"cards": cards}
