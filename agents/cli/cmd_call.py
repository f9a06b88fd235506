"""``semper call --config CONFIG PEER SERVICE.OP [JSON]``: one request from the shell.

For trying an op (a custom role's, say) without writing a client: the body is JSON,
the answer is printed as JSON. The wire's value model (docs/protocol.md section 3.3)
has byte strings and no floats, JSON the reverse, so:

* in the body, a JSON number must be an integer; ``{"$hex": "00ff"}`` stands for the
  bytes 00 ff (the only way to send bytes);
* in the answer, bytes are printed the same way, ``{"$hex": "..."}`` (lowercase hex),
  so an answer can be pasted back as a body.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import click
import trio

from semper.agents.cli._common import AGENT_ID, config_option, load_config, passphrase_option
from semper.agents.runtime._agent import Agent
from semper.transport import encode_frame

__all__ = ["command", "from_json", "to_json"]

log = logging.getLogger("semper.cli")

_OP = re.compile(r"([a-z0-9][a-z0-9_-]*)\.([a-z0-9][a-z0-9_-]*)\Z")
_HEX = "$hex"


def from_json(value: Any, where: str = "body") -> Any:
    """A JSON value as a wire value: ``{"$hex": ...}`` becomes bytes.

    Raises:
        ValueError: a float, or a ``$hex`` that is not hex; ``where`` names the spot.
    """
    if isinstance(value, dict):
        if set(value) == {_HEX}:
            if not isinstance(value[_HEX], str):
                raise ValueError(f"{where}: $hex takes a string of hex digits")
            try:
                return bytes.fromhex(value[_HEX])
            except ValueError:
                raise ValueError(f"{where}: {value[_HEX]!r} is not hex") from None
        return {key: from_json(item, f"{where}.{key}") for key, item in value.items()}
    if isinstance(value, list):
        return [from_json(item, f"{where}[{n}]") for n, item in enumerate(value)]
    if isinstance(value, float):
        raise ValueError(f"{where}: {value!r} is not an integer (the wire has no floats)")
    return value


def to_json(value: Any) -> Any:
    """A wire value as JSON: bytes become ``{"$hex": ...}``."""
    if isinstance(value, bytes | bytearray):
        return {_HEX: bytes(value).hex()}
    if isinstance(value, dict):
        return {str(key): to_json(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [to_json(item) for item in value]
    return value


@click.command("call")
@config_option
@click.argument("peer", type=AGENT_ID)
@click.argument("operation", metavar="SERVICE.OP")
@click.argument("body", metavar="[JSON]", required=False)
@passphrase_option
def command(config_path: Path, peer: str, operation: str, body: str | None,
            passphrase_file: Path | None) -> None:
    """Send one request SERVICE.OP with body JSON (default {}) to PEER; print the answer.

    JSON in, JSON out; bytes are written {"$hex": "..."} both ways. A refusal is
    the usual one line `semper: <code>: <message>` and exit 1.
    """
    match = _OP.match(operation)
    if match is None:
        raise click.BadParameter("SERVICE.OP, e.g. sys.ping or audit.report",
                                 param_hint="SERVICE.OP")
    try:
        value = from_json(json.loads(body)) if body is not None else {}
        encode_frame(value)  # in the value model (depth, integer range) and 1 MiB
    except ValueError as exc:  # json.JSONDecodeError is a ValueError too
        raise click.BadParameter(str(exc), param_hint="JSON") from None
    except RecursionError:  # json.loads itself recurses: a few thousand brackets
        raise click.BadParameter("nested too deeply (the wire allows 32 levels)",
                                 param_hint="JSON") from None
    config, passphrase = load_config(config_path, passphrase_file)
    agent = Agent(config, passphrase=passphrase)
    answer = trio.run(call, agent, peer, match.group(1), match.group(2), value)
    click.echo(json.dumps(to_json(answer)))


async def call(agent: Agent, peer: str, service: str, op: str, body: Any) -> Any:
    """Open a channel to ``peer`` as ``agent``, send one request, return the answer."""
    async with agent.connect(peer) as channel:
        log.debug("request %s.%s to %s", service, op, peer)
        answer = await channel.request(service, op, body)
        log.debug("request %s.%s to %s: answered", service, op, peer)
        return answer
