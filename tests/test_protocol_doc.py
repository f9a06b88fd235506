"""docs/protocol.md agrees with the code: error codes, the OID arc, the example frame."""

from __future__ import annotations

import importlib
import json
import math
import pkgutil
import re
from pathlib import Path

import pytest

import semper.services
import semper.services.certificates
import semper.transport
from semper.services import ServiceError
from semper.services.certificates import ARC, ROLE_POLICY, Level, level_oid
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
