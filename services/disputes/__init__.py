"""Disputes: the arbiter's case statement and the offline check of evidence bundles.

Pure: bundle bytes, the market root and a CRL in; verdicts per obligation out.
"""

from ._case import ARBITER_ROLE, CASE_TYPE, Case, make_case, verify_case
from ._errors import BadCase, DisputeError, NotArbiter

__all__ = [
    "ARBITER_ROLE",
    "CASE_TYPE",
    "BadCase",
    "Case",
    "DisputeError",
    "NotArbiter",
    "make_case",
    "verify_case",
]
