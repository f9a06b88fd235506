"""``semper live``: receive N chunks of a live seller's feed (examples/live_feed), paid
chunk by chunk by purse, each verified against a head the seller signed.

Runs the buyer's agent for the length of the command, like ``semper buy``. The
``--json`` form is read by scripts: keep its keys.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
import trio

from semper.agents.cli._common import AGENT_ID, config_option, passphrase_option
from semper.agents.cli._text import counted
from semper.agents.cli.cmd_commerce import _check_writable, _shopper_agent
from semper.agents.components._live_buyer import LiveClient, LiveOutcome, LiveProgress
from semper.services.delivery import MAX_CHUNKS
from semper.services.payment import check_idempotency_key

__all__ = ["command"]


@click.command("live")
@config_option
@click.option("--seller", required=True, type=AGENT_ID, help="The live seller's agent id.")
@click.option("--chunks", required=True, type=click.IntRange(1, MAX_CHUNKS),
              help="How many chunks to buy (one payword of a purse chain each).")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Write the chunks received, in order, to this file.")
@click.option("--idempotency-key", "key", required=True,
              help="Names the subscription: the same key again gets the same chain and "
                   "ticket, paying nothing twice.")
@passphrase_option
@click.option("--json", "as_json", is_flag=True,
              help='Print {"state", "chunks", "bytes", "root", "heads", "paid"} as JSON.')
def command(config_path: Path, seller: str, chunks: int, output: Path, key: str,
            passphrase_file: Path | None, as_json: bool) -> None:
    """Subscribe to --seller's live feed for --chunks chunks and write them to
    --output; every signed stream head received is kept in the archive under the key."""
    agent = _shopper_agent(config_path, passphrase_file)
    _check_writable(output)
    check_idempotency_key(key)

    def progress(p: LiveProgress) -> None:
        if not as_json and sys.stdout.isatty():  # a line redrawn in place
            click.echo(f"\r{p.chunks}/{p.of} chunks, {counted(p.bytes, 'byte')}, "
                       f"{p.heads} signed heads, paid {p.paid}", nl=p.chunks == p.of)

    async def run() -> LiveOutcome:
        async with agent.session():
            return await LiveClient(agent, progress).fetch(seller, chunks, key, output)

    outcome = trio.run(run)
    if as_json:
        click.echo(json.dumps(outcome.to_json()))
        return
    click.echo(f"{outcome.chunks} live chunks verified against {outcome.heads} signed "
               f"heads (root {outcome.root.hex()[:16]}...) and written to "
               f"{output}; paid {outcome.paid}; the heads are in the archive under "
               f"{key}")
