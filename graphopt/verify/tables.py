"""Constant tables a model indexes: embedding vocabularies and position tables.

:class:`GraphIndex` walks forward from an integer input to the constant table
its values index (a ``Gather`` on the table, or onnxruntime's
``EmbedLayerNormalization``), so that generated token ids stay inside the
vocabulary. :func:`position_limit` finds a model's learned position table (its
row count is the longest sequence the model runs), which input generation,
``--dim`` validation and TensorRT's default optimization profiles respect.

Only the ``onnx.ModelProto`` structure is read: initializer dims, never data.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import onnx

__all__ = ["GraphIndex", "PositionTable", "position_limit", "SEQUENCE_DIM"]

#: Dim names that count a sequence (tokens, time steps, frames): the dims a
#: position table limits. The same rule as the sequence row of
#: :data:`graphopt.verify.inputs.DIM_DEFAULTS` and TensorRT's default profiles.
SEQUENCE_DIM = re.compile(r"seq|length|len\b|token|time|frames")

#: Initializer names of learned absolute position tables, as Hugging Face
#: exporters write them: BERT-style ``embeddings.position_embeddings.weight``,
#: GPT-2's ``wpe``, and ``pos_embed`` / ``pos_emb`` variants.
_POSITION_TABLE = re.compile(r"position_embeddings?(\.weight)?$|(^|[._])wpe(\.weight)?$|pos_?emb(ed|edding)?s?(\.weight)?$")

#: Ops that move index values around without changing them; ids flowing through
#: these still index the same table (used when looking for a vocabulary).
_INDEX_PASSTHROUGH = frozenset(
    {
        "Cast", "Identity", "Unsqueeze", "Squeeze", "Reshape", "Flatten", "Expand",
        "Transpose", "Tile", "Concat", "Slice", "Split", "Gather", "Pad",
    }
)  # fmt: skip
#: Ops that forward an embedding table's data without changing its row count.
_TABLE_PASSTHROUGH = frozenset({"Cast", "Identity", "DequantizeLinear"})
#: com.microsoft EmbedLayerNormalization: index input -> embedding-table input.
_EMBED_LAYERNORM_TABLES = {0: 2, 1: 4, 8: 3}



# ---------------------------------------------------------------------------
# vocabulary discovery


class GraphIndex:
    """Consumers and initializer/Constant shapes of one graph and its subgraphs,
    for the forward walk from an index input to the table it indexes."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        self.producer: dict[str, onnx.NodeProto] = {}
        self.const_dims: dict[str, tuple[int, ...]] = {}
        self._add(graph)

    def _add(self, graph: onnx.GraphProto) -> None:
        for t in graph.initializer:
            self.const_dims[t.name] = tuple(t.dims)
        for node in graph.node:
            for name in node.input:
                if name:
                    self.consumers.setdefault(name, []).append(node)
            for name in node.output:
                self.producer[name] = node
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
                for attr in node.attribute:
                    if attr.name == "value" and attr.type == onnx.AttributeProto.TENSOR:
                        self.const_dims[node.output[0]] = tuple(attr.t.dims)
            for attr in node.attribute:
                # subgraph nodes that read outer-scope values show up as consumers
                for sub in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)):
                    self._add(sub)

    def table_dims(self, name: str) -> tuple[int, ...] | None:
        """Dims of the constant that ``name`` is (through Cast/Identity/Dequantize)."""
        for _ in range(8):
            if name in self.const_dims:
                return self.const_dims[name]
            node = self.producer.get(name)
            if node is None or node.op_type not in _TABLE_PASSTHROUGH:
                return None
            name = node.input[0]
        return None

    def vocab_size(self, start: str) -> int | None:
        """The smallest row count among the constant tables that values flowing
        from ``start`` index (Gather indices, EmbedLayerNormalization ids), or
        None when no such table is found."""
        sizes: list[int] = []
        seen = {start}
        frontier = [start]
        while frontier:
            name = frontier.pop()
            for node in self.consumers.get(name, []):
                positions = [i for i, n in enumerate(node.input) if n == name]
                if node.op_type == "Gather" and 1 in positions:
                    dims = self.table_dims(node.input[0])
                    axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
                    if dims is not None and -len(dims) <= axis < len(dims):
                        sizes.append(int(dims[axis]))
                        continue
                if node.op_type == "EmbedLayerNormalization":
                    for pos in positions:
                        table = _EMBED_LAYERNORM_TABLES.get(pos)
                        if table is not None and table < len(node.input):
                            dims = self.table_dims(node.input[table])
                            if dims:
                                sizes.append(int(dims[0]))
                    continue
                # ids are the data operand (input 0) of these ops; Concat takes any
                if node.op_type in _INDEX_PASSTHROUGH and (node.op_type == "Concat" or 0 in positions):
                    for out in node.output:
                        if out and out not in seen:
                            seen.add(out)
                            frontier.append(out)
        return min(sizes) if sizes else None




@dataclass(frozen=True)
class PositionTable:
    """A learned position table: ``name`` (initializer or Constant output) and
    ``rows``, the number of positions it holds."""

    name: str
    rows: int


def position_limit(model: onnx.ModelProto) -> PositionTable | None:
    """The model's learned absolute position table, or None when it has none.

    Found by name (:data:`_POSITION_TABLE`: ``position_embeddings``, ``wpe``,
    ``pos_embed``) as a rank-2 ``[positions, hidden]`` constant (ViT's rank-3
    ``[1, patches + 1, hidden]`` tables are left out: their rows count image
    patches, not a free sequence dim), or as the table that an input named
    ``position*`` indexes. When several are found the
    smallest wins: a sequence longer than it cannot run.
    """
    index = GraphIndex(model.graph)
    found: list[PositionTable] = []
    for name, dims in index.const_dims.items():
        if _POSITION_TABLE.search(name.lower()) and len(dims) == 2 and dims[0] > 0:
            found.append(PositionTable(name, int(dims[0])))
    initializers = {t.name for t in model.graph.initializer}
    for vi in model.graph.input:
        if vi.name not in initializers and "position" in vi.name.lower():
            rows = index.vocab_size(vi.name)
            if rows:
                found.append(PositionTable(f"indexed by input '{vi.name}'", rows))
    return min(found, key=lambda t: t.rows, default=None)
