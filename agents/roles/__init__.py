"""The built-in roles, registered under ``semper.roles`` in pyproject.toml."""
