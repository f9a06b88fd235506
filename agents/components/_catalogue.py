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
"""

from __future__ import annotations

import hashlib
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w

from semper.agents.runtime._config import ConfigError
from semper.services import Amount
from semper.services.commerce import MAX_REFUND_DAYS

__all__ = ["CatalogueItem", "load_catalogue", "write_catalogue"]

MAX_GOODS = 512 * 1024  # delivered in one frame for now


@dataclass(frozen=True, slots=True)
class CatalogueItem:
    sku: str
    title: str
    price: Amount
    terms: str
    goods: bytes
    valid_days: int
    refund_days: int = 0

    @property
    def content_digest(self) -> bytes:
        return hashlib.sha256(self.goods).digest()


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
        price = Amount.parse(entry["price"])
        goods_path = path.parent / entry["goods"]
        goods = goods_path.read_bytes()
        item = CatalogueItem(sku=str(entry["sku"]), title=str(entry["title"]), price=price,
                             terms=str(entry.get("terms", "")), goods=goods,
                             valid_days=int(entry.get("valid_days", 30)),
                             refund_days=_whole(entry.get("refund_days", 0), "refund_days"))
    except KeyError as exc:
        raise ConfigError(f"{where} has no {exc.args[0]!r}") from None
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read goods: {exc.strerror}") from None
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{where}: {getattr(exc, 'message', exc)}") from None
    if not 0 <= item.refund_days <= MAX_REFUND_DAYS:
        raise ConfigError(f"{where}: refund_days is 0 to {MAX_REFUND_DAYS}")
    if len(item.goods) > MAX_GOODS or item.price.minor_units <= 0 or item.valid_days <= 0:
        raise ConfigError(f"{where}: goods up to {MAX_GOODS} bytes, a positive price "
                          "and positive valid_days")
    return item


def _whole(value: Any, name: str) -> int:
    if type(value) is not int:
        raise ValueError(f"{name} must be a whole number of days")
    return value


def write_catalogue(folder: Path, offers: list[dict[str, Any]]) -> Path:
    """Write ``catalogue.toml`` and each offer's ``goods`` bytes into ``folder``."""
    (folder / "goods").mkdir(parents=True, exist_ok=True)
    entries = []
    for offer in offers:
        goods_name = f"goods/{offer['sku']}.txt"
        (folder / goods_name).write_bytes(offer["goods"])
        entries.append({**{k: v for k, v in offer.items() if k != "goods"},
                        "goods": goods_name})
    path = folder / "catalogue.toml"
    path.write_text(tomli_w.dumps({"offer": entries}), encoding="utf-8")
    return path
