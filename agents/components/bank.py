"""What the bank half of a payment instrument builds on (a package of its own, like
examples/payment_module, or agents/instruments/):

- ``BankService``: the bank's own component; ``context.component(BankService).book``
  is the ``BankBook`` (idempotency, one payment per reference, settlements that
  ``bank.refund`` can refund, the archive, the bank's signature and clock);
- ``ledger``: accounts and journal entries, posted inside the caller's transaction
  (``system_account`` names an account of the bank's own for money in flight);
- ``Outcome`` and ``typed``: a step's signed answer, and a body ready to sign.
"""

from semper.agents.components import _ledger as ledger
from semper.agents.components._bank import BankBook, BankService, Outcome, typed

__all__ = ["BankBook", "BankService", "Outcome", "ledger", "typed"]
