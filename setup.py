"""Package layout: ``graphopt/`` installs as ``graphopt`` and the top-level
``passes/`` folder as ``graphopt.passes`` (setuptools package-dir mapping).
Everything else lives in pyproject.toml."""

from setuptools import find_packages, setup

PASSES = ["graphopt.passes"] + [f"graphopt.passes.{p}" for p in find_packages("passes")]

setup(
    packages=find_packages(include=["graphopt", "graphopt.*"]) + PASSES,
    package_dir={"graphopt.passes": "passes"},
)
