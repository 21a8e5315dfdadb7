"""Checks of one simplifier's output for ``tools/compare_simplifiers.py``:
node counts, onnx.checker, onnxruntime load and run, output error against the
original's outputs (rtol 1e-5, atol 1e-6), output signature."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

RTOL, ATOL = 1e-5, 1e-6


def count_nodes(model: Any) -> tuple[int, int]:
    """(nodes of the main graph and all subgraphs, nodes inside model-local functions)."""
    import onnx

    def graph_nodes(graph: onnx.GraphProto | onnx.FunctionProto) -> int:
        total = 0
        for node in graph.node:
            total += 1
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    total += graph_nodes(attr.g)
                elif attr.type == onnx.AttributeProto.GRAPHS:
                    total += sum(graph_nodes(g) for g in attr.graphs)
        return total

    return graph_nodes(model.graph), sum(graph_nodes(f) for f in model.functions)


def json_safe(value: Any) -> Any:
    """``value`` with non-finite floats (inf, nan) as strings, so that the
    JSON written is standard."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def _short(e: BaseException, n: int = 300) -> str:
    text = " ".join(f"{type(e).__name__}: {e}".split())
    return text if len(text) <= n else text[: n - 3] + "..."


def check_output(src_proto: Any, out: Path, ref: dict | None, feed: dict | None) -> dict[str, Any]:
    """Structural and numerical checks of one tool's output."""
    import onnx

    from graphopt.verify import compare_outputs, make_session, resolve_model, signature_differences
    from graphopt.verify.runtime import run_model

    row: dict[str, Any] = {}
    proto = onnx.load(str(out), load_external_data=False)
    row["nodes"], row["function_nodes"] = count_nodes(proto)
    row["opset"] = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    row["ir_version"] = proto.ir_version
    row["signature_diffs"] = signature_differences(src_proto, proto)
    try:
        onnx.checker.check_model(str(out), full_check=True)
        row["checker"] = "ok"
    except Exception as e:  # noqa: BLE001
        row["checker"] = _short(e)
    try:
        source = resolve_model(out)
        session = make_session(source)
        del session
        row["ort_load"] = "ok"
    except Exception as e:  # noqa: BLE001
        row["ort_load"] = _short(e)
        return row
    if ref is None or feed is None:
        row["ort_run"] = "no reference"
        return row
    try:
        names = [i.name for i in source.proto.graph.input
                 if i.name not in {t.name for t in source.proto.graph.initializer}]
        got = run_model(source, {n: feed[n] for n in names if n in feed})
        row["ort_run"] = "ok"
    except Exception as e:  # noqa: BLE001
        row["ort_run"] = _short(e)
        return row
    report = compare_outputs(ref, got, rtol=RTOL, atol=ATOL, signature=row["signature_diffs"])
    row["max_rel_err"] = report.worst
    row["max_abs_err"] = max((o.max_abs_err for o in report.outputs), default=0.0)
    cosines = [o.cosine for o in report.outputs if o.cosine is not None]
    row["min_cosine"] = min(cosines) if cosines else None
    row["outputs_ok"] = all(o.ok for o in report.outputs) and len(report.outputs) == len(ref)
    if not row["outputs_ok"]:
        worst = report.worst_output
        row["outputs_reason"] = f"{worst.name}: {worst.reason}" if worst else "outputs missing"
    return row
