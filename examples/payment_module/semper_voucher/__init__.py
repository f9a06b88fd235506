"""semper-voucher: prepaid vouchers, a payment instrument written outside semper.

Three files, one per audience: ``protocol`` (sans-IO: statement and wire bodies,
checks, decisions, error codes ``voucher.*``), ``module`` (the payer and payee halves,
a ``PaymentModule``) and ``bank`` (the bank half, a ``Component``). semper finds the
two halves through the entry points in pyproject.toml; see README.md.
"""

__all__: list[str] = []
