"""Conversion passes: opset upgrades the user asked for."""

from graphopt.passes.convert import opset  # noqa: F401 - registers the pass

__all__ = ["opset"]
