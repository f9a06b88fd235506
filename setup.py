"""Packages by discovery: every folder with an ``__init__.py`` under the three code
folders installs, under the name pyproject.toml's ``package-dir`` maps it to (a list
kept by hand once dropped a package silently from the install)."""

from setuptools import find_packages, setup

ROOTS = {"agents": "semper.agents", "transport": "semper.transport",
         "services": "semper.services"}

setup(packages=[f"{name}.{sub}" if sub else name
                for folder, name in ROOTS.items()
                for sub in ["", *find_packages(folder)]])
