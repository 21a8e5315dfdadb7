"""Helpers for the coupled-group tests: cached model loading, running and checking pruned models."""

from __future__ import annotations

import functools
import random
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

import graphopt
from graphopt import ir
from graphopt.analysis.groups import GroupAnalysis, find_groups

ROOT = Path(__file__).resolve().parents[2]
MODELS = ROOT / "models"
GOLDEN = ROOT / "tests" / "golden" / "analysis" / "groups"


@functools.lru_cache(maxsize=None)
def _proto_bytes(name: str, pipeline: str) -> bytes:
    path = MODELS / f"{name}.onnx"
    model = graphopt.optimize(str(path), pipeline=pipeline, target="ort") if pipeline else ir.load(str(path))
    return ir.to_proto(model).SerializeToString()


def load(name: str, pipeline: str = "") -> ir.Model:
    """A fresh IR copy of ``models/<name>.onnx``, optimized by ``pipeline`` when given (cached)."""
    return ir.from_proto(onnx.load_from_string(_proto_bytes(name, pipeline)))


def feed_for(proto: onnx.ModelProto, seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs at batch 2, sequence 7 (images 64 x 96 for 4-D float inputs)."""
    from graphopt.verify.inputs import generate_inputs, model_dim_names

    dims = {}
    for name in model_dim_names(proto):
        dims[name] = 2 if "batch" in name.lower() or name.endswith("_0") else 7
    image = {}
    init = {t.name for t in proto.graph.initializer}
    for vi in proto.graph.input:
        t = vi.type.tensor_type
        if vi.name not in init and len(t.shape.dim) == 4 and t.elem_type == 1:
            image[vi.name] = tuple(d.dim_value if d.dim_value > 0 else (2 if i == 0 else 3 if i == 1 else 64 if i == 2
                                                                     else 96)
                                   for i, d in enumerate(t.shape.dim))
    return generate_inputs(proto, dims=dims, seed=seed, shapes=image or None)


def run(model: ir.Model | onnx.ModelProto, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    proto = model if isinstance(model, onnx.ModelProto) else ir.to_proto(model)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {k: v for k, v in feed.items()
                                                 if k in {i.name for i in session.get_inputs()}})))


def signature(proto: onnx.ModelProto) -> list[tuple]:
    """Inputs and outputs: name, dtype, dims (symbolic by name)."""
    def sig(vi):  # noqa: ANN001, ANN202
        t = vi.type.tensor_type
        return (vi.name, t.elem_type, tuple(d.dim_param or d.dim_value for d in t.shape.dim))
    init = {t.name for t in proto.graph.initializer}
    return [sig(v) for v in proto.graph.input if v.name not in init] + [("->",)] + [sig(v) for v in proto.graph.output]


def random_plan(analysis: GroupAnalysis, seed: int, layers: bool = True) -> dict[str, list[int]]:
    """A keep set per group: about two thirds of the units; layers kept or removed at random."""
    rng = random.Random(seed)
    keep = {}
    for g in analysis.groups:
        if set(g.exclusive) & set(keep):
            continue  # another form of the same tensors (GQA kv-heads / query-heads): one per plan
        if g.kind == "layer":
            if layers:
                keep[g.name] = rng.choice([[], [0]])
        else:
            keep[g.name] = sorted(rng.sample(range(g.size), max(1, (2 * g.size) // 3)))
    return keep


def float_params(model: ir.Model) -> int:
    """Elements of the float initializers."""
    total = 0
    for value in model.graph.initializers.values():
        t = value.const_value
        if t is not None and t.dtype in (ir.DataType.FLOAT, ir.DataType.FLOAT16):
            total += int(np.prod(t.shape.numpy())) if len(t.shape) else 1
    return total


def zero_removed_inputs(model: ir.Model, analysis: GroupAnalysis, keep: dict[str, list[int]]) -> None:
    """Zero the consumers' input rows/channels of the units ``keep`` removes
    (``in`` slices): the removed units then contribute nothing, so pruning
    them must keep every output (exactness check)."""
    for name, kept in keep.items():
        g = analysis.group(name)
        if g.kind == "layer":
            continue
        removed = [u for u in range(g.size) if u not in set(kept)]
        for s in g.slices:
            if s.role != "in":
                continue
            value = constant(model, s.tensor)
            array = np.array(ir.const_array(value), copy=True)
            index = [slice(None)] * array.ndim
            for u in removed:
                index[s.axis] = slice(s.start + u * s.unit, s.start + (u + 1) * s.unit)
                array[tuple(index)] = 0
            set_constant(value, array)


def groups_of(model: ir.Model) -> GroupAnalysis:
    return find_groups(model, ("heads", "kv-heads", "query-heads", "ffn", "channels", "layer"))


def constant(model: ir.Model, name: str) -> ir.Value:
    """The constant value called ``name``: an initializer or a Constant node's output."""
    value = model.graph.initializers.get(name)
    if value is not None:
        return value
    for node in model.graph:
        for out in node.outputs:
            if out.name == name:
                return out
    raise KeyError(name)


def set_constant(value: ir.Value, array: np.ndarray) -> None:
    """Replace the data of an initializer or of a Constant node's output."""
    producer = value.producer()
    if producer is not None and producer.op_type == "Constant":
        producer.attributes["value"] = ir.Attr("value", ir.AttributeType.TENSOR, ir.Tensor(array))
    else:
        value.const_value = ir.Tensor(array, name=value.name)


def expected_shapes(model: ir.Model, analysis: GroupAnalysis, keep: dict[str, list[int]]) -> dict:
    """(reader node name, input index) -> the dims its constant input must have after pruning."""
    nodes = {n.name: n for n in model.graph}
    out: dict[tuple[str, int], list[int]] = {}
    for name, kept in keep.items():
        g = analysis.group(name)
        if g.kind == "layer":
            continue
        gone = g.size - len(kept)
        for s in g.slices:
            for reader in s.readers:
                node = nodes[reader]
                for i, v in enumerate(node.inputs):
                    if v is not None and v.name == s.tensor:
                        dims = out.setdefault((reader, i), [int(d) for d in ir.const_tensor(v).shape])
                        dims[s.axis] -= gone * s.unit
    return out
