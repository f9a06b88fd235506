"""A seller's catalogue on disk: the offers it signs and the goods it delivers.

``catalogue.toml`` (next to the seller's ``agent.toml``)::

    [[offer]]
    sku = "guide-001"
    title = "Field guide to secure commerce"
    price = "EUR:1250"          # CURRENCY:MINOR_UNITS
    terms = "digital copy; refundable within 14 days"
    goods = "goods/guide-001.txt"   # the bytes delivered, relative to this file
    valid_days = 30             # how long each signed offer stays valid
    refund_days = 14            # refunds granted this long after payment; 0: none

The seller signs the offers when it starts; the content digest in each offer is the
SHA-256 of the goods file, so the buyer can check what it receives. ``refund_days``
(default 0: no refunds) goes into the signed offer: the seller grants only the
refunds it signed for.

A streamed item (delivered chunk by chunk on a delivery channel, issue 10) has a
``stream`` table; its ``price`` is then ``chunks x price_per_chunk`` (it may be left
out)::

    [[offer]]
    sku = "course-004"
    goods = "goods/course-004.bin"
    stream = { chunk_size = 131072, price_per_chunk = "EUR:2" }

Its chunks' Merkle tree (RFC 6962 leaves over the raw chunks) is built when the
catalogue is loaded: the root goes into the signed offer.
"""

from __future__ import annotations

import hashlib
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from semper.agents.runtime._config import ConfigError
from semper.services import Amount
from semper.services.commerce import MAX_REFUND_DAYS
from semper.services.delivery import chunk_leaf
from semper.services.merkle import MerkleTree

__all__ = ["CatalogueItem", "load_catalogue", "write_catalogue"]

MAX_GOODS = 512 * 1024  # delivered in one frame
#: A streamed item's content is held in memory by the seller: a bound on it.
MAX_STREAM_GOODS = 256 * 1024 * 1024
#: Chunk sizes a catalogue may give (a chunk travels in one frame with its proof).
MAX_CHUNK_SIZE = 1024 * 1024


@dataclass(frozen=True, slots=True)
class StreamSpec:
    """How a streamed item is cut and priced, and its chunks' Merkle tree."""

    chunk_size: int
    price_per_chunk: Amount
    length: int
    tree: MerkleTree = field(compare=False, repr=False)

    @property
    def chunks(self) -> int:
        return self.tree.size

    @property
    def root(self) -> bytes:
        return self.tree.root

    @classmethod
    def of(cls, goods: bytes, chunk_size: int, price_per_chunk: Amount) -> StreamSpec:
        view = memoryview(goods)
        leaves = [chunk_leaf(view[i:i + chunk_size]) for i in range(0, len(goods), chunk_size)]
        return cls(chunk_size=chunk_size, price_per_chunk=price_per_chunk,
                   length=len(goods), tree=MerkleTree.from_leaf_hashes(leaves))

    def to_wire(self) -> dict[str, Any]:
        """The offer's ``stream`` map (docs/protocol.md, streamed delivery)."""
        return {"chunks": self.chunks, "chunk_size": self.chunk_size, "length": self.length,
                "root": self.root, "price_per_chunk": self.price_per_chunk.to_wire()}


@dataclass(frozen=True, slots=True)
class CatalogueItem:
    sku: str
    title: str
    price: Amount
    terms: str
    goods: bytes
    valid_days: int
    refund_days: int = 0
    stream: StreamSpec | None = None
    digest: bytes = field(default=b"", compare=False, repr=False)

    @property
    def content_digest(self) -> bytes:
        return self.digest or hashlib.sha256(self.goods).digest()

    def chunk(self, index: int) -> bytes:
        """Chunk ``index`` of a streamed item (a copy: its frame outlives nothing)."""
        assert self.stream is not None
        size = self.stream.chunk_size
        return self.goods[index * size:(index + 1) * size]


def load_catalogue(path: Path) -> list[CatalogueItem]:
    """Raises ConfigError naming the first problem."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read catalogue {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"catalogue {path} is not valid TOML: {exc}") from None
    items, seen = [], set()
    for n, entry in enumerate(raw.get("offer", [])):
        items.append(_item(entry, path, n))
        if items[-1].sku in seen:
            raise ConfigError(f"{path}: sku {items[-1].sku!r} is listed twice")
        seen.add(items[-1].sku)
    return items


def _item(entry: Any, path: Path, n: int) -> CatalogueItem:
    where = f"{path}: offer {n + 1}"
    try:
        price = Amount.parse(entry["price"]) if "price" in entry or "stream" not in entry \
            else None
        goods_path = path.parent / entry["goods"]
        goods = goods_path.read_bytes()
        stream = _stream(entry.get("stream"), goods, price)
        if price is None:
            price = Amount(stream.price_per_chunk.currency,
                           stream.price_per_chunk.minor_units * stream.chunks)
        item = CatalogueItem(sku=str(entry["sku"]), title=str(entry["title"]), price=price,
                             terms=str(entry.get("terms", "")), goods=goods,
                             valid_days=int(entry.get("valid_days", 30)),
                             refund_days=_whole(entry.get("refund_days", 0), "refund_days"),
                             stream=stream, digest=hashlib.sha256(goods).digest())
    except KeyError as exc:
        raise ConfigError(f"{where} has no {exc.args[0]!r}") from None
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read goods: {exc.strerror}") from None
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{where}: {getattr(exc, 'message', exc)}") from None
    if not 0 <= item.refund_days <= MAX_REFUND_DAYS:
        raise ConfigError(f"{where}: refund_days is 0 to {MAX_REFUND_DAYS}")
    most = MAX_GOODS if item.stream is None else MAX_STREAM_GOODS
    if len(item.goods) > most or item.price.minor_units <= 0 or item.valid_days <= 0:
        raise ConfigError(f"{where}: goods up to {most} bytes, a positive price "
                          "and positive valid_days")
    return item


def _stream(table: Any, goods: bytes, price: Amount | None) -> Any:
    """A streamed item's ``StreamSpec`` (None without a ``stream`` table); with
    ``price``, the item's price, checked to be chunks x price_per_chunk. A price
    left out is that product (``_item`` reads it back from the spec)."""
    if table is None:
        if price is None:
            raise KeyError("price")
        return None
    if not isinstance(table, dict) or set(table) != {"chunk_size", "price_per_chunk"}:
        raise ValueError("stream is a table of chunk_size and price_per_chunk")
    size = table["chunk_size"]
    if type(size) is not int or not 1 <= size <= MAX_CHUNK_SIZE:
        raise ValueError(f"stream.chunk_size is a whole number from 1 to {MAX_CHUNK_SIZE}")
    if not goods:
        raise ValueError("a streamed item needs content (its goods file is empty)")
    unit = Amount.parse(table["price_per_chunk"])
    if unit.minor_units <= 0:
        raise ValueError("stream.price_per_chunk must be positive")
    spec = StreamSpec.of(goods, size, unit)
    whole = Amount(unit.currency, unit.minor_units * spec.chunks)
    if price is not None and price != whole:
        raise ValueError(f"price must be chunks x price_per_chunk ({spec.chunks} x {unit} = "
                         f"{whole}), not {price}")
    return spec


def _whole(value: Any, name: str) -> int:
    if type(value) is not int:
        raise ValueError(f"{name} must be a whole number of days")
    return value


def write_catalogue(folder: Path, offers: list[dict[str, Any]]) -> Path:
    """Write ``catalogue.toml`` and each offer's ``goods`` into ``folder``: bytes, or
    a function writing them to the path it is given (generated content, made here and
    kept out of git)."""
    (folder / "goods").mkdir(parents=True, exist_ok=True)
    entries = []
    for offer in offers:
        goods_name = f"goods/{offer['sku']}.{'bin' if 'stream' in offer else 'txt'}"
        goods: bytes | Callable[[Path], None] = offer["goods"]
        if isinstance(goods, bytes):
            (folder / goods_name).write_bytes(goods)
        else:
            goods(folder / goods_name)
        entries.append({**{k: v for k, v in offer.items() if k != "goods"},
                        "goods": goods_name})
    path = folder / "catalogue.toml"
    path.write_text(tomli_w.dumps({"offer": entries}), encoding="utf-8")
    return path
