"""The bank halves of the built-in payment instruments: one component each, with its
own ops and tables, found through the ``semper.payment_banks`` entry points like any
instrument a package of its own adds."""
