"""Readable, stable group names from the exporters' node and weight names."""

from __future__ import annotations

import re
from collections import Counter
from typing import Iterable

from graphopt import ir

__all__ = ["layer_index", "unique"]

# "inner.encoder.layer.0.attention", "/transformer/h.1/attn", "model.layers.3.mlp", "blocks.2"
_LAYER = re.compile(r"(?:^|[/._])(?:layers?|h|blocks?|block)[._/](\d+)(?=[/._]|$)")


def layer_index(nodes: Iterable[ir.Node]) -> int | None:
    """The layer number the names of ``nodes`` and of the initializers they
    read mention most often (TorchScript keeps module paths in node names,
    dynamo in initializer names); None when none does."""
    found: Counter[int] = Counter()
    for node in nodes:
        names = [node.name or ""]
        names.extend(v.name or "" for v in node.inputs if v is not None and v.is_initializer())
        for name in names:
            for match in _LAYER.finditer(name):
                found[int(match.group(1))] += 1
    if not found:
        return None
    best = max(found.values())
    return min(k for k, c in found.items() if c == best)


def unique(name: str, taken: set[str]) -> str:
    """``name``, or ``name#2``, ``name#3``... when taken; the result is added to ``taken``."""
    return ir.unique_name(name, taken, sep="#", start=2)
