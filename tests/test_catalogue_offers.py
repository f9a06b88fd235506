"""A seller's catalogue file is checked at start as buyers check its offers.

The instance (found by the CLI markup review): ``load_catalogue`` took a sku such as
``odd[b]-005``, which the offer body refuses; the seller started, and every
``commerce.catalogue`` answer failed (``commerce.bad_body``), so one bad line hid the
whole catalogue from every buyer. Another member of the kind: terms holding a control
character (an escape sequence), which the wire's text kind refuses too.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from market_helpers import config_of, make_market

from semper.agents.runtime._agent import Agent
from semper.agents.runtime._config import ConfigError

EXTRA = {
    "sku": '[[offer]]\nsku = "odd[b]-005"\ntitle = "Odd"\nprice = "EUR:100"\n'
           'goods = "{goods}"\n',
    "terms": '[[offer]]\nsku = "odd-006"\ntitle = "Odd"\nprice = "EUR:100"\n'
             'terms = "see \\u001b[2J here"\ngoods = "{goods}"\n',
}


@pytest.mark.parametrize("field", sorted(EXTRA))
def test_an_offer_buyers_would_refuse_stops_the_seller_at_start(tmp_path: Path,
                                                                field: str) -> None:
    world = make_market(tmp_path)
    catalogue = world / "seller" / "catalogue.toml"
    catalogue.write_text(catalogue.read_text() + "\n" + EXTRA[field].format(
        goods="goods/guide-001.txt"))
    with pytest.raises(ConfigError, match="is not an offer a buyer accepts"):
        Agent(config_of(world, "seller"))
