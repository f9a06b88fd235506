"""``semper ca invite|issue|status|revoke DIR ...``: the market operator's commands;
``semper ca reveal --config ARBITER.toml PSEUDONYM --case CASEFILE``: an arbiter's."""

from __future__ import annotations

import datetime as dt
import json
import re
import shutil
from pathlib import Path

import click
import trio
from cryptography import x509

from semper.agents.cli._common import (
    AGENT_ID,
    AMOUNT,
    CliError,
    config_option,
    load_config,
    passphrase_option,
    read_passphrase,
)
from semper.agents.cli._text import counted
from semper.agents.components._castore import open_ca_database, publish_crl, record_issued
from semper.agents.components._reveal import add_pseudonym, request_reveal
from semper.agents.operator._market import (
    MarketError,
    MarketPaths,
    _write_agent,
    ca_config,
    free_ports,
    load_authority,
)
from semper.agents.operator._market import revoke as revoke_in
from semper.agents.operator._operator import Invited, certificate_status_in, invite_agent
from semper.agents.runtime._agent import Agent
from semper.agents.runtime._config import AgentConfig, ConfigError, parse_address
from semper.agents.runtime._identity import utcnow
from semper.agents.runtime._roles import RoleNotFound, available_roles
from semper.services import ServiceError
from semper.services.certificates import CertStatus, Level, StatusReport, crl_number, new_pseudonym
from semper.services.certificates._pseudonym import check_pseudonym_profile
from semper.services.certificates._reveal import Revealed
from semper.services.money import Amount
from semper.services.statements import Statement


class UnknownAgent(Exception):
    """``ca status`` of an id the CA never issued a certificate to."""

    code = "agent.unknown_agent"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def check_role_installed(role: str) -> None:
    """A certificate for a role no installed package provides makes an agent that
    cannot start here: refuse it before anything is written.

    Raises:
        RoleNotFound: listing the installed roles (``semper.roles`` entry points).
    """
    installed = available_roles()
    if role not in installed:
        raise RoleNotFound(f"no installed package provides the role {role!r} (installed "
                           f"roles: {', '.join(installed) or 'none'}); pip install the "
                           "package that registers it under semper.roles first")

_DURATION = re.compile(r"([0-9]+)([smhd])\Z")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}

folder_argument = click.argument("folder", metavar="DIR",
                                 type=click.Path(file_okay=False, path_type=Path))


@click.group("ca")
def command() -> None:
    """The market operator's certificate authority."""


def _duration(ctx: click.Context, param: click.Parameter, value: str) -> dt.timedelta:
    match = _DURATION.match(value.strip())
    if not match or int(match.group(1)) == 0:
        raise click.BadParameter("a positive duration such as 90s, 30m, 24h or 7d")
    try:  # a huge count overflows timedelta (OverflowError), not only a year
        duration = dt.timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})
    except OverflowError:
        duration = dt.timedelta.max
    if duration > dt.timedelta(days=366):
        raise click.BadParameter("at most a year (366d)")
    return duration


def _level(ctx: click.Context, param: click.Parameter, value: str) -> Level:
    try:
        return Level.from_label(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@command.command("invite")
@folder_argument
@click.argument("agent_id", type=AGENT_ID)
@click.option("--role", required=True, help="The role the certificate will carry.")
@click.option("--level", required=True, callback=_level,
              help="self-asserted, verified-contact, verified-identity or liable.")
@click.option("--liable-amount", "liability", metavar="CCY:MINOR_UNITS", type=AMOUNT,
              help="With --level liable: how far the CA vouches, e.g. EUR:5000000 "
                   "(EUR 50,000.00).")
@click.option("--expires-in", default="24h", show_default=True, callback=_duration,
              help="How long the token can be redeemed: 90s, 30m, 24h, 7d.")
@click.option("--pseudonym", is_flag=True,
              help="Enroll AGENT_ID under a fresh pseudonym: the certificate names only "
                   "the pseudonym, and the CA reveals AGENT_ID to an arbiter's case alone.")
def invite(folder: Path, agent_id: str, role: str, level: Level, liability: Amount | None,
           expires_in: dt.timedelta, pseudonym: bool) -> None:
    """Create a one-time enrollment token for AGENT_ID; it is the last line printed.

    Give it to the new agent's operator, who runs
    `semper agent enroll --token TOKEN --data-dir D`.
    """
    check_role_installed(role)
    amount = liability
    try:
        if pseudonym:
            invited = invite_pseudonym(folder, agent_id, role=role, level=level,
                                       expires_in=expires_in)
        else:
            invited = invite_agent(folder, agent_id, role=role, level=level,
                                   liability=amount, expires_in=expires_in)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    token = invited.token
    expires = dt.datetime.fromtimestamp(token.expires_ms / 1000, dt.UTC)
    vouch = f", liable up to {amount}" if amount is not None else ""
    under = f" under the pseudonym {token.agent_id}" if pseudonym else ""
    click.echo(f"invited {agent_id}{under} as {role} at level {level.label}{vouch}")
    click.echo(f"enrollment at {token.ca_address} (CA agent {token.ca_id}); the token is "
               f"single-use and expires {expires:%Y-%m-%d %H:%M:%S}Z")
    click.echo("join with: semper agent enroll --token TOKEN --data-dir DIR")
    click.echo(token.encode())


@command.command("issue")
@folder_argument
@click.argument("agent_id", type=AGENT_ID)
@click.option("--role", required=True, help="The role the certificate will carry (installed).")
@click.option("--level", required=True, callback=_level,
              help="self-asserted, verified-contact or verified-identity.")
@click.option("--listen", metavar="HOST:PORT",
              help="Where the agent will accept channels (default: a free 127.0.0.1 port).")
@passphrase_option
def issue(folder: Path, agent_id: str, role: str, level: Level, listen: str | None,
          passphrase_file: Path | None) -> None:
    """Issue AGENT_ID a certificate offline and write a ready folder DIR/AGENT_ID.

    As `market init` does for its agents: no running CA and no token, so a role
    just written can be tried at once. Needs the root key (--passphrase-file if
    the market's keys are encrypted; the new key is encrypted under it too).
    """
    if listen is not None:
        try:
            parse_address(listen, what="--listen")
        except ConfigError as exc:
            raise click.BadParameter(exc.message, param_hint="--listen") from None
    if level is Level.LIABLE:
        raise click.UsageError("ca issue makes no liable certificates: use "
                               "`semper ca invite --level liable --liable-amount ...`")
    check_role_installed(role)
    config = ca_config(folder)
    home = issue_agent_folder(folder, config, agent_id, role=role, level=level, listen=listen,
                              passphrase=read_passphrase(passphrase_file))
    click.echo(f"issued {agent_id} a certificate as {role} at level {level.label}; its "
               f"folder is {home}")
    click.echo(f"start it:  semper agent run {home / 'agent.toml'}")


def invite_pseudonym(folder: Path, real_id: str, *, role: str, level: Level,
                     expires_in: dt.timedelta) -> Invited:
    """An invitation for a fresh pseudonym of ``real_id`` (protocol.md 2.7): the
    pseudonym, its real id and opening are recorded first, then the token for the
    pseudonym's id (a pseudonym left without a token is never issued anything).

    Raises:
        ValueError: the role or level is not one a pseudonym may hold.
        MarketError: no market (or no CA agent) in ``folder``.
    """
    pseudonym = new_pseudonym(real_id)
    check_pseudonym_profile(pseudonym.pseudonym, role, level)
    config = ca_config(folder)
    database = open_ca_database(config.data_dir)
    try:
        database.transaction_sync(lambda c: add_pseudonym(
            c, pseudonym, created_ms=int(utcnow().timestamp() * 1000)))
    finally:
        database.close()
    return invite_agent(folder, pseudonym.pseudonym, role=role, level=level,
                        expires_in=expires_in)


def issue_agent_folder(folder: Path, config: AgentConfig, agent_id: str, *, role: str,
                       level: Level, listen: str | None, passphrase: bytes | None) -> Path:
    """``market init``'s own steps for one more agent: key, certificate, agent.toml
    (peers: the CA agent and those it knows), recorded in the CA's database.

    Raises:
        MarketError: the id holds a good certificate, or DIR/<id> is not empty.
    Nothing is left behind when it fails.
    """
    assert config.ca is not None  # ca_config checked it
    now = utcnow()
    current = certificate_status_in(folder, agent_id, now=now)
    if current.status is CertStatus.GOOD:
        raise MarketError(f"{agent_id} already holds a good certificate (serial "
                          f"{current.serial:x}); revoke it first (semper ca revoke {folder} "
                          f"{agent_id})")
    paths = MarketPaths(folder)
    home = paths.agent_dir(agent_id)
    if home.exists() and (not home.is_dir() or any(home.iterdir())):
        raise MarketError(f"{home} exists and is not empty")
    ca = load_authority(paths.root_cert, config.ca.root_key, passphrase)
    addresses = {config.id: config.listen, **config.peers,
                 agent_id: listen or f"127.0.0.1:{free_ports(1)[0]}"}
    try:
        _, certificate = _write_agent(paths, ca, agent_id, role, level, addresses, passphrase,
                                      now, ca_agent=config.id, settings=None,
                                      bank=_bank_of(paths, config))
        database = open_ca_database(config.data_dir)
        try:
            database.transaction_sync(lambda c: record_issued(c, certificate, via="ca-issue",
                                                              now=now))
        finally:
            database.close()
    except BaseException:
        shutil.rmtree(home, ignore_errors=True)
        raise
    return home


def _bank_of(paths: MarketPaths, config: AgentConfig) -> str | None:
    """The market's bank, as `market init` wires it: the first peer whose folder
    holds a bank's agent.toml."""
    for peer in sorted(config.peers):
        try:
            if AgentConfig.load(paths.agent_dir(peer) / "agent.toml").role == "bank":
                return peer
        except ConfigError:
            continue
    return None


@command.command("status")
@folder_argument
@click.argument("agent_id", type=AGENT_ID)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def status(folder: Path, agent_id: str, as_json: bool) -> None:
    """Print the status of AGENT_ID's certificate: good, revoked or expired.

    An id the CA never issued a certificate to is an error (agent.unknown_agent,
    exit 1).
    """
    try:
        report = certificate_status_in(folder, agent_id)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    if report.status is CertStatus.UNKNOWN:
        raise UnknownAgent(f"{agent_id}: the CA has issued it no certificate")
    if as_json:
        click.echo(json.dumps(_json(report)))
    else:
        click.echo(_line(report))


def _iso(ms: int | None) -> str | None:
    if ms is None:
        return None
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _json(report: StatusReport) -> dict[str, object]:
    wire = report.to_wire()
    wire["not_after"], wire["revoked_at"] = _iso(report.not_after_ms), _iso(report.revoked_ms)
    return wire


def _line(report: StatusReport) -> str:
    who = report.agent_id
    serial = f"serial {report.serial:x}" if report.serial is not None else ""
    if report.status is CertStatus.UNKNOWN:
        return f"{who}: unknown (the CA has issued it no certificate)"
    if report.status is CertStatus.REVOKED:
        return f"{who}: revoked on {_iso(report.revoked_ms)} ({serial}, CRL number " \
               f"{report.crl_number})"
    if report.status is CertStatus.EXPIRED:
        return f"{who}: expired on {_iso(report.not_after_ms)} ({serial})"
    return f"{who}: good until {_iso(report.not_after_ms)} ({serial}, CRL number " \
           f"{report.crl_number})"


@command.command("revoke")
@folder_argument
@click.argument("agent_id", type=AGENT_ID)
@passphrase_option
def revoke(folder: Path, agent_id: str, passphrase_file: Path | None) -> None:
    """Put AGENT_ID's certificate on the market's CRL; running agents refuse it within
    their CRL refresh interval (2 s by default). Tokens AGENT_ID was invited with and
    has not redeemed are cancelled too: none enrolls it again."""
    crl, cancelled = revoke_in(folder, agent_id, passphrase=read_passphrase(passphrase_file))
    tokens = counted(cancelled, "outstanding invitation")
    if crl is None:
        click.echo(f"revoked {agent_id}: the CA issued it no certificate yet; {tokens} "
                   "cancelled, so its token no longer enrolls it")
        return
    number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    click.echo(f"revoked {agent_id}: CRL number {number} with "
               f"{counted(len(list(crl)), 'entry', 'entries')} published to "
               f"{folder / 'ca' / 'crl.pem'}" + (f"; {tokens} cancelled" if cancelled else ""))


@command.command("crl")
@folder_argument
@passphrase_option
def crl_command(folder: Path, passphrase_file: Path | None) -> None:
    """Re-issue the market's CRL now (same entries, next number, good for 30 days) and
    publish it to DIR/ca/crl.pem. The running CA agent does this by itself 15 days
    before the CRL's next update; this is for a market whose CA agent is not running."""
    paths = MarketPaths(folder)
    if not paths.root_cert.is_file() or not paths.crl.is_file():
        raise MarketError(f"{folder} is not a market folder (no ca/root.pem or ca/crl.pem)")
    authority = load_authority(paths.root_cert, paths.root_key,
                               read_passphrase(passphrase_file))
    crl = publish_crl(paths.crl, authority, now=utcnow())
    assert crl is not None  # not if_due: always issued
    click.echo(f"re-issued the CRL: number {crl_number(crl)}, {len(list(crl))} revoked, "
               f"good until {crl.next_update_utc:%Y-%m-%dT%H:%M:%SZ}; published to "
               f"{paths.crl}")


@command.command("reveal")
@config_option
@click.argument("pseudonym", type=AGENT_ID)
@click.option("--case", "case_arg", required=True, metavar="CASEFILE|CASE",
              help="The dispute.case that names PSEUDONYM: a file of its canonical bytes, "
                   "or its case id (64 hex digits, as `semper dispute file` prints it), "
                   "found in the arbiter's archive.")
@click.option("--ca", "ca_id", type=AGENT_ID, help="The CA agent (default: ca_agent).")
@passphrase_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def reveal(config_path: Path, pseudonym: str, case_arg: str, ca_id: str | None,
           passphrase_file: Path | None, as_json: bool) -> None:
    """Ask the CA, as the arbiter of --config, who PSEUDONYM is, citing a case.

    The CA answers only an arbiter's signed request whose case names PSEUDONYM,
    archives it with the reveal and tells the pseudonym's holder; this command checks
    the signed answer against the pseudonym's certificate and archives it
    (protocol.md 7.6)."""
    case_file, case_id = Path(case_arg), None
    if _CASE_ID.match(case_arg) and not case_file.exists():
        case, case_id = None, case_arg
    else:
        case = _case_from(case_file)
    config, passphrase = load_config(config_path, passphrase_file)
    agent = Agent(config, passphrase=passphrase)

    async def run() -> Revealed:
        async with agent.session():
            cited = case if case_id is None else await _archived_case(agent, case_id)
            return await request_reveal(agent.context, pseudonym, cited, ca=ca_id)

    body = trio.run(run)
    if as_json:
        click.echo(json.dumps({"pseudonym": body.pseudonym, "agent": body.agent,
                               "case": body.case.hex(), "arbiter": body.arbiter}))
        return
    click.echo(f"{body.pseudonym} is {body.agent} (case {body.case.hex()}); the CA "
               "recorded the reveal and tells the holder")


_CASE_ID = re.compile(r"[0-9a-f]{64}\Z")


def _case_from(path: Path) -> Statement:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise click.BadParameter(f"cannot read {path}: {exc.strerror}",
                                 param_hint="--case") from None
    try:
        return Statement.from_bytes(raw)
    except (ServiceError, ValueError) as exc:
        raise CliError("statement.malformed", f"{path} is not a statement: "
                       f"{getattr(exc, 'message', exc)}") from None


async def _archived_case(agent: Agent, case_id: str) -> Statement:
    """The ``dispute.case`` the arbiter archived under its case id (the transaction
    its dispute.file answer is archived under)."""
    for record in await agent.archive.records(case_id):
        statement = Statement.from_bytes(record.statement)
        if statement.type == "dispute.case" and statement.body.get("case") == bytes.fromhex(
                case_id):
            return statement
    raise CliError("ca.unknown_case", f"{agent.id}'s archive holds no case {case_id}")
