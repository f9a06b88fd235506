"""The market directory: signed contact cards (who, which role, where, what services).

Pure: cards, keys, certificates, the CRL and ``now`` in; statements and decisions out.
"""

from ._card import (
    CARD_TYPE,
    MAX_ADDRESSES,
    ContactCard,
    Lookup,
    PublishAnswer,
    SignedCard,
    sign_card,
    verify_card,
)
from ._errors import (
    BadCard,
    BadLookup,
    CardExpired,
    CardMismatch,
    DirectoryError,
    OutdatedCard,
    UnknownAgent,
)

__all__ = [
    "CARD_TYPE",
    "MAX_ADDRESSES",
    "BadCard",
    "BadLookup",
    "CardExpired",
    "CardMismatch",
    "ContactCard",
    "DirectoryError",
    "Lookup",
    "OutdatedCard",
    "PublishAnswer",
    "SignedCard",
    "UnknownAgent",
    "sign_card",
    "verify_card",
]
