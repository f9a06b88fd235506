"""The certification authority's agent (role ``ca``)."""

from __future__ import annotations

from .._roles import Role

__all__ = ["CertificationAuthority"]


class CertificationAuthority(Role):
    name = "ca"
