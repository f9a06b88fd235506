"""Roles: what an agent does in the market, found through the ``semper.roles``
entry-point group so that a package of its own can add one.

A role is a name and a short list of components (``runtime/_component.py``): the
agent builds each, collects their tables, registers the ops they handle and runs
their background work, beside the components every agent runs (evidence, archive,
directory, certificates). The built-in roles (``ca``, ``bank``, ``seller``, ``buyer``,
``notary``, ``arbiter``) are registered the same way, in our own pyproject.toml.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from semper.agents.runtime._agent import Agent
    from semper.agents.runtime._component import Component

__all__ = ["ROLE_GROUP", "Role", "RoleNotFound", "available_roles", "load_role"]

ROLE_GROUP = "semper.roles"


class RoleNotFound(Exception):
    """No installed package offers the role the configuration names."""

    code: ClassVar[str] = "agent.unknown_role"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Role:
    """Base class of every role: its name and its components."""

    #: The name the certificate and configuration use.
    name: ClassVar[str] = ""
    #: What an agent of this role runs, beside what every agent runs.
    components: ClassVar[Sequence[type[Component]]] = ()

    def __init__(self, agent: Agent) -> None:
        self.agent = agent

    def component_classes(self) -> list[type[Component]]:
        """The components to run; a role whose list depends on what is installed (the
        bank serves every payment instrument) overrides this."""
        return list(self.components)

    def plugin_classes(self) -> list[type[Component]]:
        """Components of installed packages this role runs if they load and fit (the
        bank's payment instruments): one that does not is skipped and logged."""
        return []


def available_roles() -> list[str]:
    return sorted({ep.name for ep in entry_points(group=ROLE_GROUP)})


def load_role(name: str) -> type[Role]:
    """The role class registered under ``name``.

    Raises:
        RoleNotFound: none is installed, or what is installed is not a Role.
    """
    found = [ep for ep in entry_points(group=ROLE_GROUP) if ep.name == name]
    if not found:
        known = ", ".join(available_roles()) or "none"
        raise RoleNotFound(f"no role {name!r} is installed (installed roles: {known})")
    try:
        cls: Any = found[0].load()
    except Exception as exc:
        raise RoleNotFound(f"role {name!r} ({found[0].value}) failed to load: {exc}") from exc
    if not (isinstance(cls, type) and issubclass(cls, Role)):
        raise RoleNotFound(f"role {name!r} ({found[0].value}) is not a semper Role class")
    return cls
