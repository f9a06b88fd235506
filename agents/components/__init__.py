"""Components every agent runs and the ones roles are made of.

For the bank half of a payment instrument (a package of its own, like
examples/payment_module): ``BankService`` (``context.component(BankService).book``
is the ``BankBook`` with idempotency, one payment per reference, settlements that can
be refunded, the archive) and ``ledger`` (accounts and journal entries, posted inside
the caller's transaction)."""

from semper.agents.components import _ledger as ledger
from semper.agents.components._bank import BankBook, BankService, Outcome, typed

__all__ = ["BankBook", "BankService", "Outcome", "ledger", "typed"]
