"""Synthetic ``--json`` documents that exercise every report section (shared by
the report tests and by hand checks with tools/screenshot_report.py)."""

from __future__ import annotations

from typing import Any


def full_doc() -> dict[str, Any]:
    """A compress-like document with every key the report reads: summary,
    frontier, latency, verification, op histogram, INT8/pruning/low-rank
    per-layer tables, a generic per-layer table, passes and profiles. Names
    hold ``/``, ``~`` and HTML metacharacters on purpose."""
    return {
        "input": "models/<b>tiny</b>.onnx", "output": "out.onnx", "pipeline": "O3", "target": "ort", "seconds": 12.5,
        "before": {"nodes": 236, "parameters": 143552, "bytes": 574208, "flops": 4194304,
                   "ops": {"MatMul": 16, "Add": 23, "Constant": 77, "Gelu<x>": 2}},
        "after": {"nodes": 59, "parameters": 98000, "bytes": 392000, "flops": 2097152,
                  "ops": {"MatMul": 6, "Add": 2, "com.microsoft::Attention": 2, "Gelu<x>": 1}},
        "file_bytes": {"before": 617700, "after": 412500},
        "latency_ms": {"before": 3.25, "after": 0.8125},
        "quality": {"rank-fidelity": {"before": 1.0, "after": 0.9731}},
        "frontier": {
            "points": [{"label": "fp32", "latency_ms": 3.25, "quality": 1.0, "techniques": "-"},
                       {"label": "int8", "latency_ms": 1.3, "quality": 0.995, "techniques": "int8"},
                       {"label": "prune 0.7 + int8", "latency_ms": 0.8125, "quality": 0.9731,
                        "techniques": "prune,int8"},
                       {"label": "prune 0.5 + int8", "latency_ms": 0.6, "quality": 0.941, "techniques": "prune,int8"},
                       {"label": "lowrank 0.8", "latency_ms": 2.9, "quality": 0.99, "techniques": "lowrank"}],
            "chosen": 2, "budget": 0.97, "ylabel": "rank fidelity",
            "columns": [["techniques", "techniques", ""]],
        },
        "verify": {"ok": True, "inputs": {"input_ids": "int64[1, 16]"}, "generated_inputs": True,
                   "signature_diffs": [],
                   "outputs": [{"name": "last_hidden_state", "max_abs_err": 2.384e-07, "max_rel_err": 1.18e-05,
                                "scale_rel_err": 7.4e-08, "cosine": 0.99999994, "argmax_agreement": 1.0,
                                "rtol": 1e-4, "atol": 3.2e-4, "tol_ratio": 4.5e-4, "ok": True, "reason": ""}]},
        "sqnr_db": {"/encoder/layer.0/MatMul_output_0": 36.82, "a~b": float("inf"), "val_5": 40.22},
        "kept_float": ["/encoder/layer.1/attn<q>"],
        "groups": [{"name": "/encoder/layer.0/attention", "kind": "heads", "size": 2, "kept": 1, "unit_flops": 16384.0},
                   {"name": "/encoder/layer.0/ffn", "kind": "ffn", "size": 512, "kept": 320, "unit_flops": 256.0}],
        "refused": [{"site": "/pooler", "kind": "channels", "reason": "feeds a graph output"}],
        "layers": [{"name": "/encoder/layer.0/ffn/MatMul", "kind": "MatMul", "k": 128, "n": 512, "full_rank": 128,
                    "rank": 48, "error": 0.0123, "params_before": 65536, "params_after": 30720, "flops_before": 1,
                    "flops_after": 1, "speed_ratio": 0.7, "reason": ""},
                   {"name": "/encoder/layer.0/q", "kind": "MatMul", "k": 128, "n": 128, "full_rank": 128, "rank": 0,
                    "error": None, "params_before": 16384, "params_after": 16384, "flops_before": 1, "flops_after": 1,
                    "speed_ratio": None, "reason": "no speed-up at any rank"}],
        "layer_tables": [{"id": "custom-layers", "title": "Custom per layer",
                          "columns": [["layer", "name", ""], ["kept", "kept", ""], ["share", "share", "%"]],
                          "rows": [{"name": "l0", "kept": 3, "share": 0.25}, {"name": "l1", "kept": 4, "share": 0.5}],
                          "highlight": "", "bars": None, "note": "a table prune or factorize could add"}],
        "passes": [{"index": 1, "name": "fold-constants", "spec": "fold-constants", "seconds": 0.0069,
                    "modified": True, "stats": {"folded": 1}, "nodes_before": 236, "nodes_after": 158,
                    "auto": False, "rolled_back": False, "note": ""},
                   {"index": 2, "name": "fuse-gelu", "spec": "fuse-gelu", "seconds": 0.0329, "modified": False,
                    "stats": {}, "nodes_before": 158, "nodes_after": 158, "auto": False, "rolled_back": True,
                    "note": "broke numerics"}],
        "models": [{"path": "a/base.onnx", "runs": 5, "median_ms": 3.25, "p90_ms": 3.5, "mean_ms": 3.3, "min_ms": 3.1,
                    "ratio": 1.0, "max_abs_err": None, "max_rel_err": None, "cosine": None},
                   {"path": "a/out.onnx", "runs": 5, "median_ms": 0.8125, "p90_ms": 0.9, "mean_ms": 0.85,
                    "min_ms": 0.8, "ratio": 0.25, "max_abs_err": 0.0031, "max_rel_err": 0.2, "cosine": 0.9731}],
        "provider": "CPUExecutionProvider", "threads": 2, "opt_level": "all",
        "inputs": {"input_ids": [1, 16]}, "load_before": [1.5, 1.0, 0.5], "load_after": [1.6, 1.0, 0.5],
        "profiles": {"a/base.onnx": [{"op": "MatMul", "ms": 1.088, "share": 0.466, "nodes": 14},
                                     {"op": "Transpose", "ms": 0.304, "share": 0.13, "nodes": 8}],
                     "a/out.onnx": [{"op": "MatMulIntegerToFloat", "ms": 0.119, "share": 0.111, "nodes": 8}]},
    }
