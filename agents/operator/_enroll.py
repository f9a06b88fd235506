"""Joining a market with a token: the newcomer's side of ``enroll.request``.

``enroll`` makes a fresh Ed25519 key, connects to the CA agent's enrollment address
from the token with TLS that authenticates only the server, pins the server by the
token's fingerprint before sending anything, sends the CSR with the proof, checks
the answer against the root it brings (``check_enroll_answer``), and only then writes
a ready agent folder:

    D/agent.toml  cert.pem  key.pem (0600, encrypted under a passphrase if given)
      root.pem  crl.pem  data/

``agent.toml`` names the CA agent (``ca_agent``, with its channel address in
``[peers]``), so ``semper agent run D/agent.toml`` starts the agent, which then
fetches the CRL from the CA, publishes its card and finds its peers there.

A seller also gets ``D/catalogue.toml``, commented and empty (it offers nothing
until its operator stocks it), and every agent that pays or is paid a commented
``bank = ...`` line in ``[payment]``: enrollment cannot know the market's bank,
nor open an account there (the bank's operator does, ``semper bank open``).
"""

from __future__ import annotations

import datetime as dt
import functools
import os
import secrets
import shutil
from pathlib import Path
from typing import ClassVar

import trio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from semper.agents.operator._market import free_ports
from semper.agents.runtime._config import AgentConfig, parse_address
from semper.agents.runtime._files import write_file
from semper.agents.runtime._identity import utcnow
from semper.services.certificates import (
    EnrollAnswer,
    Enrolled,
    EnrollmentToken,
    EnrollRequest,
    check_ca_certificate,
    check_enroll_answer,
    enrollment_proof,
    make_csr,
    private_key_pem,
)
from semper.transport import request_pinned

__all__ = ["EnrollFolderError", "enroll"]

_PEM = serialization.Encoding.PEM


class EnrollFolderError(Exception):
    """The folder to enroll into is not empty: enrolling never overwrites an agent."""

    code: ClassVar[str] = "agent.enroll_folder"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


async def enroll(
    token: EnrollmentToken,
    folder: Path,
    *,
    listen: str | None = None,
    passphrase: bytes | None = None,
    passphrase_file: Path | None = None,
    timeout: float = 10.0,
    now: dt.datetime | None = None,
) -> tuple[AgentConfig, Enrolled]:
    """Redeem ``token`` and write a ready agent folder at ``folder``.

    ``listen`` defaults to a free port on 127.0.0.1. With ``passphrase`` the key is
    encrypted, and ``passphrase_file`` (if given) is named in ``agent.toml``.

    Raises:
        EnrollFolderError: ``folder`` exists and is not empty (nothing is sent).
        WrongCa: the server is not the CA the token pins (nothing is sent).
        RemoteError: the CA refused (``enroll.token_used``, ``enroll.token_expired``...).
        BadEnrollAnswer, CertificateError: the answer does not check out.
        ConnectFailed, HandshakeFailed, HandshakeTimeout: the CA cannot be reached.
    Nothing is written unless enrollment succeeded.
    """
    await trio.to_thread.run_sync(_check_folder, folder)
    if listen is not None:
        parse_address(listen, what="--listen")
    key = ed25519.Ed25519PrivateKey.generate()
    csr = make_csr(key, token.agent_id)
    request = EnrollRequest(token_id=token.token_id, csr_der=csr,
                            proof=enrollment_proof(token.secret, token.token_id, csr))
    seen: list[bytes] = []

    def pin(der: bytes) -> None:
        check_ca_certificate(token, der)
        seen.append(der)

    host, port = parse_address(token.ca_address, what="the token's CA address")
    body = await request_pinned(host, port, check_server=pin, service="enroll", op="request",
                                body=request.to_wire(), timeout=timeout)
    enrolled = check_enroll_answer(EnrollAnswer.from_wire(body), token=token,
                                   ca_certificate=seen[0], public_key=key.public_key(),
                                   now=now or utcnow())
    config = await trio.to_thread.run_sync(functools.partial(
        _write_folder, folder, token, enrolled, key, listen=listen, passphrase=passphrase,
        passphrase_file=passphrase_file))
    return config, enrolled


def _check_folder(folder: Path) -> None:
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise EnrollFolderError(f"{folder} exists and is not empty; choose a new folder")
    # And it can be made, checked before the token is spent: a folder that cannot be
    # written after the CA answered leaves a certificate issued, its key lost, and
    # the id taken until the operator revokes it.
    ancestor = folder.absolute().parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir() or not os.access(ancestor, os.W_OK | os.X_OK):
        raise EnrollFolderError(f"cannot make {folder}: {ancestor} is not a folder this "
                                "user can write in; choose another")


def _write_folder(folder: Path, token: EnrollmentToken, enrolled: Enrolled,
                  key: ed25519.Ed25519PrivateKey, *, listen: str | None,
                  passphrase: bytes | None, passphrase_file: Path | None) -> AgentConfig:
    """Write the agent folder whole or not at all: it is built in a temporary sibling
    and renamed into place, so a failure half way (a full disk) leaves no half-made
    agent behind (the token is spent by then: the operator asks for a new one)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    building = folder.parent / f".{folder.name}.enroll-{secrets.token_hex(4)}"
    try:
        _fill_folder(building, token, enrolled, key, listen=listen, passphrase=passphrase,
                     passphrase_file=passphrase_file)
        if folder.exists():
            folder.rmdir()  # empty (checked before enrolling); rename replaces no folder
        os.rename(building, folder)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    return AgentConfig.load(folder / "agent.toml")


def _fill_folder(folder: Path, token: EnrollmentToken, enrolled: Enrolled,
                 key: ed25519.Ed25519PrivateKey, *, listen: str | None,
                 passphrase: bytes | None, passphrase_file: Path | None) -> AgentConfig:
    (folder / "data").mkdir(parents=True, exist_ok=True)
    write_file(folder / "key.pem", private_key_pem(key, passphrase), private=True)
    write_file(folder / "cert.pem", enrolled.certificate.public_bytes(_PEM))
    write_file(folder / "root.pem", enrolled.root.public_bytes(_PEM))
    write_file(folder / "crl.pem", enrolled.crl.public_bytes(_PEM))
    catalogue = None
    if token.role == "seller":
        catalogue = folder / "catalogue.toml"
        write_file(catalogue, CATALOGUE_STUB.encode())
    config = AgentConfig(
        id=token.agent_id,
        role=token.role,
        listen=listen or f"127.0.0.1:{free_ports(1)[0]}",
        data_dir=folder / "data",
        ca_root=folder / "root.pem",
        crl=folder / "crl.pem",
        cert=folder / "cert.pem",
        key=folder / "key.pem",
        passphrase_file=passphrase_file.resolve() if passphrase_file else None,
        ca_agent=enrolled.ca_id,
        peers={enrolled.ca_id: enrolled.ca_address},
        catalogue=catalogue,
        path=folder / "agent.toml",
    )
    text = config.to_toml(base=folder)
    if token.role not in _UNPAID_ROLES:
        if "\n[payment]\n" not in text:  # no key of its own is set: only the limit table
            text = text.replace("\n[payment.limit]\n", "\n[payment]\n\n[payment.limit]\n", 1)
        text = text.replace("\n[payment]\n", "\n[payment]\n" + PAYMENT_STUB, 1)
    write_file(folder / "agent.toml", text.encode())
    return config


#: Roles that neither pay nor are paid: no [payment] stub for them.
_UNPAID_ROLES = frozenset({"ca", "bank"})

#: Written into [payment] of a new agent's agent.toml (comment lines only).
PAYMENT_STUB = """\
# bank = "bank"        # the agent id of the bank that holds your account: uncomment
#                      # and set it, and ask that bank's operator to open the account
#                      # (semper bank open --config BANK/agent.toml YOUR_ID EUR)
# modules = ["transfer", "cheque"]  # the instruments you offer, most preferred first:
#                      # every one installed (a plugin too) if you leave this out
"""

#: A new seller's catalogue.toml: no offers until its operator adds some.
CATALOGUE_STUB = """\
# This seller's catalogue: the offers it signs when `semper agent run` starts it
# (restart the agent after an edit). One [[offer]] table per item; uncomment the
# example below and change it. Buyers see the offers with `semper catalogue`.
#
# [[offer]]
# sku = "guide-001"                  # what buyers name in `semper buy --item`
# title = "Field guide to secure commerce"
# price = "EUR:1250"                 # CURRENCY:MINOR_UNITS, here EUR 12.50
# terms = "digital copy; refundable within 14 days"
# goods = "goods/guide-001.txt"      # the file delivered, relative to this file
# valid_days = 30                    # how long each signed offer stays valid
# refund_days = 14                   # refunds granted this long after payment; 0: none
"""
