"""The size rule of issue 20 (item 3) on the committed corpus: under O1/O2 no
model in models/ grows by more than 1%, neither its file nor its stored
tensors (initializers and Constant-node values, subgraphs included), unless
the run says why. Checked on the files the corpus tests already wrote: no
pipeline runs twice."""

from __future__ import annotations

from pathlib import Path

import onnx

TOLERANCE = 0.01


def stored_tensor_bytes(path: Path) -> int:
    """Bytes of the tensors a model stores: initializers and Constant ``value``
    attributes, in every graph and function body (raw or typed fields)."""
    def size(tensor: onnx.TensorProto) -> int:
        return len(tensor.raw_data) if tensor.HasField("raw_data") else tensor.ByteSize()

    def graph_bytes(graph: onnx.GraphProto) -> int:
        total = sum(size(t) for t in graph.initializer)
        for node in graph.node:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.TENSOR and node.op_type == "Constant":
                    total += size(attr.t)
                total += sum(graph_bytes(g) for g in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else []))
                total += sum(graph_bytes(g) for g in attr.graphs)
        return total

    model = onnx.load(str(path), load_external_data=False)
    return graph_bytes(model.graph) + sum(graph_bytes(onnx.helper.make_graph(f.node, f.name, [], []))
                                          for f in model.functions)


def fold_stats(report: dict) -> dict[str, int]:
    """fold-constants' stats summed over a ``--json`` report's pass records."""
    totals: dict[str, int] = {}
    for record in report.get("passes", []):
        if record["name"].split("{")[0] == "fold-constants":
            for key, value in (record.get("stats") or {}).items():
                totals[key] = totals.get(key, 0) + value
    return totals


def check_size_kept(path: Path, out: Path, report: dict) -> tuple[float, float]:
    """Assert that ``out`` (written from ``path``) grew by at most 1%, in file
    bytes and in stored tensor bytes; returns both relative changes (negative:
    smaller). A smaller file is the usual case (fewer nodes, value_info and
    doc strings after fusion), and weights keep their bytes."""
    file_change = out.stat().st_size / path.stat().st_size - 1.0
    tensors_before, tensors_after = stored_tensor_bytes(path), stored_tensor_bytes(out)
    tensor_change = tensors_after / max(tensors_before, 1) - 1.0
    why = f"fold-constants stats {fold_stats(report)}"
    assert file_change <= TOLERANCE, f"{path.name}: file {path.stat().st_size} -> {out.stat().st_size} bytes; {why}"
    assert tensor_change <= TOLERANCE, f"{path.name}: stored tensors {tensors_before} -> {tensors_after} bytes; {why}"
    return file_change, tensor_change
