"""docs/protocol.md agrees with the code: error codes, the OID arc, the example frame."""

from __future__ import annotations

import hashlib
import importlib
import json
import math
import pkgutil
import re
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

import semper.agents
import semper.services
import semper.services.certificates
import semper.transport
from semper.agents.components._evidence import REPLAY_WINDOW_MS
from semper.services import ServiceError
from semper.services.archive import _record as record_module
from semper.services.certificates import ARC, ROLE_POLICY, Level, level_oid
from semper.services.statements import (
    MAX_CONTAINER,
    MAX_DEPTH,
    MAX_SKEW_MS,
    MAX_STRING,
    Statement,
    verify_ed25519,
)
from semper.services.statements import _statement as statement_module
from semper.transport import (
    NEED_DATA,
    ChannelConfig,
    CodecLimits,
    ConnectFailed,
    FrameDecoder,
    RemoteError,
    TransportError,
    encode_frame,
    transport_error_classes,
)

DOC = Path(__file__).resolve().parent.parent / "docs" / "protocol.md"
CODE = re.compile(r"[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+\Z")
_OUR_MODULES = ("semper.transport", "semper.services")


@pytest.fixture(scope="module")
def doc() -> str:
    return DOC.read_text(encoding="utf-8")


def _section(text: str, heading: str) -> str:
    """The text of the `## ` section whose heading starts with ``heading``."""
    match = re.search(rf"^## {re.escape(heading)}.*?$(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert match, f"no section {heading!r} in {DOC}"
    return match.group(1)


def _error_table(text: str) -> dict[str, str]:
    """Code -> the Fatal cell, from the table in section 6."""
    rows: dict[str, str] = {}
    for line in _section(text, "6. Error codes").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not line.startswith("| `") or len(cells) < 4:
            continue
        code = cells[0].strip("`")
        assert code not in rows, f"{code} is listed twice"
        rows[code] = cells[1]
    return rows


def _import_all() -> None:
    """Import every module of transport and services, so every error class exists."""
    for package in (semper.transport, semper.services):
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            importlib.import_module(info.name)


def _subclasses(root: type) -> list[type]:
    seen: list[type] = []
    stack = [root]
    while stack:
        cls = stack.pop()
        if cls not in seen:
            seen.append(cls)
            stack.extend(cls.__subclasses__())
    return seen


def _agents_wire_classes() -> list[type]:
    """The agents' own refusals that go to a peer with their code (``wire = True``,
    e.g. ``evidence.quota_exceeded``): a peer sees them as it sees the services'
    codes, so section 6 lists them too."""
    for info in pkgutil.walk_packages(semper.agents.__path__, "semper.agents."):
        if not info.name.endswith("__main__"):  # the CLI's, which runs on import
            importlib.import_module(info.name)
    return [cls for cls in _subclasses(Exception)
            if cls.__module__.startswith("semper.agents.")
            and getattr(cls, "wire", False) is True and isinstance(getattr(cls, "code", None), str)]


def _error_classes() -> list[type]:
    _import_all()
    classes = [*transport_error_classes(), ConnectFailed, *_subclasses(ServiceError)]
    unique: list[type] = []
    for cls in classes:
        # Classes defined elsewhere (tests, agents) are not part of the wire protocol.
        if cls is RemoteError or not cls.__module__.startswith(_OUR_MODULES):
            continue
        if cls not in unique:
            unique.append(cls)
    # ... except the agents' refusals that declare themselves meant for the wire.
    unique.extend(cls for cls in _agents_wire_classes() if cls not in unique)
    return unique


def test_error_table_lists_exactly_the_codes_of_the_classes(doc: str) -> None:
    classes = _error_classes()
    codes = [cls.code for cls in classes]
    assert len(codes) == len(set(codes)), "two classes share a code"
    for code in codes:
        assert isinstance(code, str) and CODE.match(code), f"bad code {code!r}"
    documented = set(_error_table(doc))
    assert documented == set(codes), (
        f"missing from the doc: {sorted(set(codes) - documented)}; "
        f"documented but not defined: {sorted(documented - set(codes))}"
    )


def test_error_table_codes_are_well_formed(doc: str) -> None:
    table = _error_table(doc)
    assert len(table) >= 20
    for code in table:
        assert CODE.match(code), f"{code!r} is not a lowercase dotted code"


def test_error_table_fatal_column_matches_the_classes(doc: str) -> None:
    table = _error_table(doc)
    for cls in _error_classes():
        fatal = issubclass(cls, TransportError) and cls.fatal
        cell = table[cls.code]
        assert cell.startswith("yes" if fatal else "no"), f"{cls.code}: doc says {cell!r}"


def test_documented_arc_is_the_code_arc(doc: str) -> None:
    match = re.search(r"^ARC = `(2\.25\.\d+)`$", doc, re.M)
    assert match, "the doc states no ARC"
    assert match.group(1) == ARC
    for oid in re.findall(r"\b2\.25\.[0-9.]*[0-9]", doc):
        assert oid.startswith(ARC), f"{oid} is not under the arc"
    assert f"`{ROLE_POLICY.dotted_string}`" in doc
    for level in Level:
        row = f"| `{level_oid(level).dotted_string}` | level `{level.label}` |"
        assert row in doc, f"no row for level {level.label}"


def test_hex_dump_decodes_to_the_value_shown(doc: str) -> None:
    match = re.search(r"```json\n(.*?)\n```\n(?:(?!```).)*?```hex\n(.*?)```", doc, re.S)
    assert match, "no ```json value followed by a ```hex dump"
    value = json.loads(match.group(1))
    data = bytes.fromhex(
        " ".join(line.split(None, 1)[1] for line in match.group(2).splitlines() if line.strip())
    )
    decoder = FrameDecoder()
    decoder.feed(data)
    assert decoder.next_object() == value
    assert decoder.next_object() is NEED_DATA
    assert decoder.buffered == 0
    assert encode_frame(value) == data, "the dump is not what semper sends"
    assert f"({len(data)} bytes" in doc


def test_documented_defaults(doc: str) -> None:
    config, limits = ChannelConfig(), CodecLimits()
    timeouts = _section(doc, "5. The session")
    for name in ("handshake_timeout", "request_timeout", "idle_timeout", "close_timeout"):
        seconds = getattr(config, name)
        assert math.isfinite(seconds)
        assert f"| `{name}` | {seconds:g} s" in timeouts, name
    assert config.max_frame == limits.max_frame == 1048576
    assert f"default {config.max_frame}" in doc
    assert f"default {config.max_in_flight}" in doc
    assert f"at most {limits.max_depth} deep" in doc
    assert f"at most {limits.max_container} elements" in doc
    assert f"`version: {semper.transport.PROTOCOL_VERSION}`" in doc


def _subsection(text: str, heading: str) -> str:
    """The text of the `### ` subsection whose heading starts with ``heading``."""
    match = re.search(rf"^### {re.escape(heading)}.*?$(.*?)(?=^###? |\Z)", text, re.M | re.S)
    assert match, f"no subsection {heading!r} in {DOC}"
    return match.group(1)


def _hex_dumps(text: str) -> list[bytes]:
    """Every ```hex block of ``text``, as bytes (each line: an offset, then the bytes)."""
    dumps = []
    for block in re.findall(r"```hex\n(.*?)```", text, re.S):
        lines = [line.split(None, 1) for line in block.splitlines() if line.strip()]
        for index, (offset, _) in enumerate(lines):
            assert int(offset, 16) == 16 * index, f"offset {offset} out of step"
        dumps.append(bytes.fromhex(" ".join(rest for _, rest in lines)))
    return dumps


def test_statement_example_is_what_the_code_computes(doc: str) -> None:
    """Section 6A.6: the signed bytes, the signature, the canonical bytes and the digest
    of the worked example are exactly what semper computes from its inputs."""
    example = _subsection(doc, "6A.6 ")
    seed = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60"  # RFC 8032 TEST 1
    key = ed25519.Ed25519PrivateKey.from_private_bytes(bytes.fromhex(seed))
    public = key.public_key().public_bytes_raw()
    assert public.hex() == "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
    times = "\u00d7"  # the doc's multiplication sign
    for shown in (f"`{seed}`", f"`{public.hex()}`", '`"evidence.receipt"`',
                  f'`{{"transaction": "demo-1", "statement": h\'33\' {times} 32, '
                  f'"from": "buyer-7"}}`',
                  f"`h'11'` {times} 32", "`1764053911000`", f"`h'22'` {times} 16"):
        assert shown in example, f"the example does not show the input {shown}"
    fields = {"type": "evidence.receipt",
              "body": {"transaction": "demo-1", "statement": b"\x33" * 32, "from": "buyer-7"},
              "signer": b"\x11" * 32, "issued_at": 1764053911000, "nonce": b"\x22" * 16}
    draft = Statement(**fields, signature=bytes(64))
    signature = key.sign(draft.signed_bytes())
    statement = Statement(**fields, signature=signature)

    signed, shown_signature, canonical, digest = _hex_dumps(example)
    assert signed == statement.signed_bytes()
    assert signed.startswith(b"semper-statement-v1\x00")
    assert shown_signature == signature
    verify_ed25519(public, signed, shown_signature)
    assert canonical == statement.to_bytes()
    assert Statement.from_bytes(canonical) == statement
    assert digest == statement.digest == hashlib.sha256(canonical).digest()
    assert f"({len(signed)} bytes" in example
    assert f"({len(canonical)} bytes" in example
    assert f"SHA-256 of those {len(canonical)} bytes" in example


def test_statement_constants_are_the_code_constants(doc: str) -> None:
    """Section 6A states the prefixes, sizes, skew, window and bounds the code uses."""
    section = _section(doc, "6A. ")
    signed_prefix = statement_module.DOMAIN.removesuffix(b"\x00").decode("ascii")
    assert f"`{signed_prefix}` ({len(signed_prefix)} bytes), one byte `0x00`" in section
    record_prefix = record_module.DOMAIN.removesuffix(b"\x00").decode("ascii")
    assert f'"{record_prefix}" || 0x00' in section
    assert f"the ASCII prefix ({len(record_prefix)} bytes)" in section
    assert f"now + {MAX_SKEW_MS // 60_000} minutes ({MAX_SKEW_MS} ms)" in section
    assert f"W = {REPLAY_WINDOW_MS // 60_000} minutes, {REPLAY_WINDOW_MS} ms" in section
    latest = statement_module.Statement(
        type="a.b", body={}, signer=bytes(32), issued_at=statement_module.MAX_TIME_MS,
        nonce=bytes(16), signature=bytes(64)).issued_at_datetime
    shown = latest.isoformat(timespec="milliseconds").removesuffix("+00:00") + "Z"
    assert f"0 to {statement_module.MAX_TIME_MS} ({shown})" in section
    sizes = (("signer", Statement.SIGNER_SIZE), ("nonce", Statement.NONCE_SIZE),
             ("signature", Statement.SIGNATURE_SIZE))
    for key, size in sizes:
        assert f"| `{key}` | bin, {size} bytes |" in section, key
    assert f"1 to {statement_module._MAX_TYPE} characters" in section
    assert f"1 MiB ({MAX_STRING} bytes)" in section
    assert f"at most {MAX_CONTAINER} elements" in section
    assert f"nested at most {MAX_DEPTH} deep" in section


def test_every_local_code_of_the_agents_is_documented(doc: str) -> None:
    """Codes that only the command line and the agents raise (not in section 6's
    table, which the test above keeps exact) are listed in docs/protocol.md or the
    README: a user who reads `semper: <code>: ...` can look it up."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    agents = Path(__file__).resolve().parent.parent / "agents"
    found: set[str] = set()
    patterns = (r'code(?:: ClassVar\[str\])? = "([a-z_]+\.[a-z_.]+)"',
                r'CliError\(\s*"([a-z_]+\.[a-z_.]+)"',
                r'code(?:, reason)? = "([a-z_]+\.[a-z_.]+)"')
    for path in agents.rglob("*.py"):
        text = path.read_text()
        for pattern in patterns:
            found.update(re.findall(pattern, text))
    assert len(found) > 15  # the scan sees the codes at all
    missing = sorted(c for c in found if f"`{c}`" not in doc and f"`{c}`" not in readme)
    assert not missing, f"codes raised in agents/ but documented nowhere: {missing}"
