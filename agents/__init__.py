"""The runtime that composes services over transport: Agent, roles, config, storage.

What a custom role needs is here; see examples/custom_role/.
"""

from semper.agents.runtime._agent import Agent
from semper.agents.runtime._component import Clock, Component, Context, SystemClock, handles
from semper.agents.runtime._config import AgentConfig, ConfigError
from semper.agents.runtime._faults import crash_point
from semper.agents.runtime._roles import ROLE_GROUP, Role, RoleNotFound, available_roles, load_role

__all__ = ["ROLE_GROUP", "Agent", "AgentConfig", "Clock", "Component", "ConfigError", "Context",
           "Role", "RoleNotFound", "SystemClock", "available_roles", "crash_point", "handles",
           "load_role"]
