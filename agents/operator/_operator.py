"""The market operator's work on a market folder: invitations and certificate status.

Both run as short command-line processes next to the running CA agent: they open the
CA agent's database (``DIR/ca/data/agent.sqlite``) directly, which WAL lets them
share with it, and never need the root key.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from semper.agents.components._castore import add_invitation, latest_issued, open_ca_database
from semper.agents.operator._market import MarketError, MarketPaths, ca_config
from semper.agents.runtime._config import AgentConfig
from semper.agents.runtime._identity import utcnow
from semper.services.certificates import (
    CertStatus,
    EnrollmentToken,
    Invitation,
    IssuedCertificate,
    Level,
    StatusQuery,
    StatusReport,
    certificate_status,
    check_name,
    fingerprint,
    identity_of,
    invite,
    load_certificate,
    load_crl,
    to_ms,
)
from semper.services.money import Amount

__all__ = ["Invited", "certificate_status_in", "invite_agent"]


@dataclass(frozen=True, slots=True)
class Invited:
    invitation: Invitation
    token: EnrollmentToken


def invite_agent(
    folder: Path,
    agent_id: str,
    *,
    role: str,
    level: Level,
    liability: Amount | None = None,
    expires_in: dt.timedelta = dt.timedelta(hours=24),
    now: dt.datetime | None = None,
) -> Invited:
    """Record a one-time invitation in the CA agent's database and return its token.

    Raises:
        MarketError: no market (or no CA agent) in ``folder``, or ``agent_id`` holds
            a certificate that is still good (revoke it first).
        ValueError: a bad id or role, or a liability that does not fit the level.
    """
    now = now or utcnow()
    check_name("agent id", agent_id)
    config = ca_config(folder)
    assert config.ca is not None  # ca_config checked it
    current = _current_status(config, agent_id, now)
    if current.status is CertStatus.GOOD:
        raise MarketError(
            f"{agent_id} already holds a good certificate (serial {current.serial:x}); "
            f"revoke it first (semper ca revoke {folder} {agent_id})")
    ca_cert = load_certificate(config.cert.read_bytes())
    invitation, token = invite(
        agent_id=agent_id, role=role, level=level, liability=liability, now_ms=to_ms(now),
        expires_in_ms=int(expires_in.total_seconds() * 1000), ca_id=config.id,
        ca_address=config.ca.enroll_advertise or config.ca.enroll_listen,
        ca_fingerprint=fingerprint(ca_cert))
    database = open_ca_database(config.data_dir)
    try:
        database.transaction_sync(lambda c: add_invitation(c, invitation))
    finally:
        database.close()
    return Invited(invitation, token)


def certificate_status_in(folder: Path, agent_id: str, *, now: dt.datetime | None = None
                          ) -> StatusReport:
    """The status of ``agent_id``'s latest certificate, as the CA agent would answer.

    Raises:
        MarketError: no market (or no CA agent) in ``folder``.
        ValueError: ``agent_id`` is not an agent id.
    """
    check_name("agent id", agent_id)
    return _current_status(ca_config(folder), agent_id, now or utcnow())


def _current_status(config: AgentConfig, agent_id: str, now: dt.datetime) -> StatusReport:
    database = open_ca_database(config.data_dir)
    try:
        issued = database.read_sync(lambda c: latest_issued(c, agent_id))
    finally:
        database.close()
    if issued is None:
        issued = _from_folder(config, agent_id)
    try:
        crl = load_crl(config.crl.read_bytes())
    except OSError as exc:
        raise MarketError(f"cannot read the CRL {config.crl}: {exc.strerror}") from exc
    return certificate_status(issued, StatusQuery(agent_id=agent_id), crl=crl, now=now)


def _from_folder(config: AgentConfig, agent_id: str) -> IssuedCertificate | None:
    """A market made before the CA kept records: ``DIR/<id>/cert.pem``."""
    assert config.path is not None
    paths = MarketPaths(config.path.parent.parent)
    cert_path = paths.agent_dir(agent_id) / "cert.pem"
    if not cert_path.is_file():
        return None
    cert = load_certificate(cert_path.read_bytes())
    identity = identity_of(cert)
    if identity.agent_id != agent_id:
        return None
    return IssuedCertificate(serial=cert.serial_number, agent_id=agent_id, role=identity.role,
                             level=identity.level, fingerprint=identity.fingerprint,
                             not_after_ms=to_ms(identity.not_after),
                             issued_ms=to_ms(cert.not_valid_before_utc))
