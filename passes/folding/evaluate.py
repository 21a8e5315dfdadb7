"""Batched evaluation of constant nodes that have no numpy kernel.

All such nodes of a graph go into ONE standalone ONNX model - their constant
inputs become initializers, every output they produce becomes a graph output -
which runs in one onnxruntime session (graph optimizations off, so each node is
computed by its own kernel). A model with thousands of foldable nodes therefore
starts one session, not thousands. When onnxruntime refuses the model (an op or
dtype it does not implement), the same model runs in ``onnx.reference``'s
``ReferenceEvaluator``; when that fails too, nothing is folded. This is the
technique of Polygraphy's and onnxsim's fold-constants (which run the whole
constant subgraph in onnxruntime), batched per graph.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import onnx

from graphopt import ir
from graphopt.ir.versions import target_ir_version

__all__ = ["evaluate_batch"]

log = logging.getLogger(__name__)


def _build(nodes: Sequence[ir.Node], wanted: Sequence[ir.Value], opset_imports: dict[str, int],
           ir_version: int) -> tuple[onnx.ModelProto, list[str]]:
    """The standalone model: constant inputs as initializers, ``wanted`` as outputs.

    Values get fresh names (``v0, v1, ...``) so outer-scope values of subgraphs
    and unnamed values cannot collide.
    """
    names: dict[ir.Value, str] = {}
    initializers: list[onnx.TensorProto] = []

    def name_of(value: ir.Value) -> str:
        if value not in names:
            names[value] = f"v{len(names)}"
        return names[value]

    produced = {out for node in nodes for out in node.outputs}
    protos = []
    for node in nodes:
        for value in node.inputs:
            if value is not None and value not in produced and value not in names:
                tensor = ir.const_tensor(value)
                proto = ir.serde.serialize_tensor(tensor)
                proto.name = name_of(value)
                initializers.append(proto)
        proto = ir.serde.serialize_node(node)
        proto.name = ""
        del proto.input[:]
        proto.input.extend("" if v is None else name_of(v) for v in node.inputs)
        del proto.output[:]
        proto.output.extend(name_of(v) for v in node.outputs)
        protos.append(proto)
    outputs = []
    for value in wanted:
        info = onnx.ValueInfoProto(name=names[value])
        if value.dtype is not None:
            info.type.tensor_type.elem_type = value.dtype.value
        outputs.append(info)
    graph = onnx.helper.make_graph(protos, "fold", [], outputs, initializers)
    opsets = [onnx.helper.make_opsetid(d, v) for d, v in opset_imports.items() if d in ("", "ai.onnx")]
    model = onnx.helper.make_model(graph, opset_imports=opsets)
    model.ir_version = target_ir_version(ir_version, opset_imports)
    return model, [names[v] for v in wanted]


def _run_ort(model: onnx.ModelProto) -> list:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 4
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, {})


def _run_reference(model: onnx.ModelProto) -> list:
    from onnx.reference import ReferenceEvaluator

    return ReferenceEvaluator(model).run(None, {})


def evaluate_batch(nodes: Sequence[ir.Node], wanted: Sequence[ir.Value], opset_imports: dict[str, int],
                   ir_version: int) -> dict[ir.Value, np.ndarray]:
    """Evaluate ``nodes`` (in topological order; every input is a constant or
    an output of an earlier node in the list) and return the values of ``wanted``.

    Args:
        nodes: default-domain nodes without subgraph attributes.
        wanted: outputs of ``nodes`` whose values are needed.
        opset_imports: the model's opset imports (default domain used).
        ir_version: the model's IR version (lowered to what onnxruntime loads).

    Returns:
        value -> numpy array, for each wanted value that evaluated to a tensor;
        empty when neither onnxruntime nor ``onnx.reference`` can run the batch.
    """
    if not nodes or not wanted:
        return {}
    model, _ = _build(nodes, wanted, opset_imports, ir_version)
    for runner in (_run_ort, _run_reference):
        try:
            results = runner(model)
        except Exception as e:  # noqa: BLE001 - any refusal: try the next evaluator
            log.debug("fold-constants: %s could not evaluate %d nodes: %s", runner.__name__, len(nodes), e)
            continue
        return {v: r for v, r in zip(wanted, results) if isinstance(r, np.ndarray)}
    return {}
