"""Export a :class:`~corpus.specs.ModelSpec`, normalise the file, validate it.

Two exporters:

- ``ts``: the TorchScript exporter (``torch.onnx.export(..., dynamo=False)``),
  opset 17, dynamic axes from ``dynamic_axes``.
- ``dynamo``: the ``torch.export``-based exporter (``dynamo=True``), opset 18,
  dynamic axes from ``dynamic_shapes`` with named ``torch.export.Dim`` objects
  (so the ONNX symbolic dims are called ``batch`` / ``sequence`` too).

Every written model is then normalised: ``ir_version`` is set to
:data:`IR_VERSION` (onnxruntime refuses the IR versions that onnx 1.23 writes by
default) and the weights are either inlined (a single self-contained ``.onnx``)
or, above :data:`EXTERNAL_THRESHOLD`, put in ONE external-data file next to the
model (``<file>.onnx.data``, relative location).

Validation: ``onnx.checker.check_model(full_check=True)`` and an onnxruntime
run on random inputs whose batch / sequence differ from the ones used for
tracing (so a baked-in shape shows up), compared with the torch outputs.
"""

from __future__ import annotations

import gc
import os
import shutil
import time
import traceback
from collections import Counter
from pathlib import Path

import numpy as np

from .specs import ModelSpec, make_inputs

IR_VERSION = 10
TS_OPSET = 17
DYNAMO_OPSET = 18
EXTERNAL_THRESHOLD = 2_000_000_000  # bytes of weights; the protobuf limit is 2 GiB
TRACE_SHAPE = (2, 16)  # (batch, sequence) used for export
CHECK_SHAPE = (3, 11)  # (batch, sequence) used for validation


def _torch_inputs(spec: ModelSpec, batch: int, seq: int):
    import torch

    return tuple(torch.from_numpy(v) for v in make_inputs(spec, batch, seq, seed=1).values())


def export_ts(spec: ModelSpec, model, path: Path) -> None:
    """TorchScript exporter (``dynamo=False``), opset :data:`TS_OPSET` (or the spec's ``ts_opset``)."""
    import torch

    axes = {**spec.input_dims, **spec.outputs}
    torch.onnx.export(
        model, _torch_inputs(spec, *TRACE_SHAPE), str(path),
        input_names=list(spec.inputs), output_names=list(spec.outputs),
        dynamic_axes=axes, opset_version=spec.ts_opset or TS_OPSET, do_constant_folding=True, dynamo=False,
    )


def export_dynamo(spec: ModelSpec, model, path: Path) -> None:
    """``torch.export``-based exporter (``dynamo=True``), opset :data:`DYNAMO_OPSET`."""
    import torch
    from torch.export import Dim

    dims = {"batch": Dim("batch"), "sequence": Dim("sequence")}
    shapes = {name: {ax: dims[d] for ax, d in ax_map.items()} for name, ax_map in spec.input_dims.items()}
    program = torch.onnx.export(
        model, _torch_inputs(spec, *TRACE_SHAPE), None,
        input_names=list(spec.inputs), output_names=list(spec.outputs),
        dynamic_shapes=shapes, opset_version=DYNAMO_OPSET, dynamo=True, verbose=False,
    )
    program.save(str(path))


EXPORTERS = {"ts": export_ts, "dynamo": export_dynamo}


def finalize(src: Path, dest: Path) -> None:
    """Write ``src`` to ``dest`` with ``ir_version`` :data:`IR_VERSION`.

    Small models become one self-contained file; models whose weights exceed
    :data:`EXTERNAL_THRESHOLD` get a single external-data file ``<dest>.data``
    (relative location, next to the model). Uses onnx-ir, which memory-maps
    external tensors instead of reading them into memory.
    """
    import onnx_ir as ir

    model = ir.load(str(src))
    model.ir_version = IR_VERSION
    weight_bytes = sum(v.const_value.nbytes for v in model.graph.initializers.values()
                       if v.const_value is not None)
    data = dest.with_name(dest.name + ".data")
    for stale in (dest, data):
        if stale.exists():
            stale.unlink()
    if weight_bytes > EXTERNAL_THRESHOLD:
        ir.save(model, str(dest), external_data=data.name)
    else:
        # Pull every external tensor into memory so the file is self-contained.
        ir.external_data.load_to_model(model)
        ir.save(model, str(dest))


def describe(path: Path) -> dict:
    """Facts about a written model for the README: size, opsets, ops, I/O."""
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    data = path.with_name(path.name + ".data")

    def sig(vals):
        out = {}
        for v in vals:
            t = v.type.tensor_type
            dims = [d.dim_param or d.dim_value for d in t.shape.dim]
            out[v.name] = f"{onnx.TensorProto.DataType.Name(t.elem_type).lower()}{dims}"
        return out

    ops = Counter(n.op_type if not n.domain else f"{n.domain}::{n.op_type}" for n in m.graph.node)
    return {
        "file": path.name,
        "bytes": path.stat().st_size,
        "data_bytes": data.stat().st_size if data.exists() else 0,
        "ir_version": m.ir_version,
        "opsets": {(o.domain or "ai.onnx"): o.version for o in m.opset_import},
        "producer": f"{m.producer_name} {m.producer_version}".strip(),
        "nodes": len(m.graph.node),
        "functions": len(m.functions),
        "op_types": dict(sorted(ops.items())),
        "inputs": sig(m.graph.input),
        "outputs": sig(m.graph.output),
    }


def validate(path: Path, spec: ModelSpec | None = None, model=None,
             feeds: dict[str, np.ndarray] | None = None) -> dict:
    """Check ``path`` with the full checker and run it in onnxruntime.

    With ``spec`` the inputs are generated at :data:`CHECK_SHAPE`; with
    ``model`` (the torch module) the outputs are compared with torch's.
    Returns ``{"ort_ok", "max_abs_diff", "check_s", "ort_s"}``.
    """
    import onnx
    import onnxruntime as ort

    t0 = time.perf_counter()
    onnx.checker.check_model(str(path), full_check=True)
    t1 = time.perf_counter()
    if feeds is None:
        feeds = make_inputs(spec, *CHECK_SHAPE, seed=1)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    outs = sess.run(None, feeds)
    t2 = time.perf_counter()
    result = {"ort_ok": all(np.isfinite(o).all() for o in outs if o.dtype.kind == "f"),
              "output_shapes": [list(o.shape) for o in outs],
              "check_s": round(t1 - t0, 2), "ort_s": round(t2 - t1, 2)}
    del sess
    if model is not None:
        import torch

        with torch.no_grad():
            ref = model(*(torch.from_numpy(v) for v in feeds.values()))
        result["max_abs_diff"] = float(max(np.abs(o - r.numpy()).max() for o, r in zip(outs, ref)))
    return result


def export_one(spec: ModelSpec, exporter: str, out_dir: Path, model=None, check: bool = True) -> dict:
    """Export ``spec`` with ``exporter`` into ``out_dir/<name>_<exporter>.onnx``.

    Never raises: a failing exporter is reported as ``{"ok": False, "error": ...}``.
    """
    suffix = {"ts": "ts", "dynamo": "dynamo"}[exporter]
    dest = out_dir / f"{spec.name}_{suffix}.onnx"
    tmp = out_dir / f".tmp_{spec.name}_{suffix}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    rec = {"model": spec.name, "exporter": exporter, "summary": spec.summary, "file": dest.name}
    try:
        if model is None:
            model = spec.build()
        t0 = time.perf_counter()
        EXPORTERS[exporter](spec, model, tmp / "model.onnx")
        t1 = time.perf_counter()
        finalize(tmp / "model.onnx", dest)
        t2 = time.perf_counter()
        rec.update(ok=True, export_s=round(t1 - t0, 1), finalize_s=round(t2 - t1, 1))
        rec.update(describe(dest))
        if check:
            rec.update(validate(dest, spec, model))
    except Exception as exc:  # noqa: BLE001 - recorded and reported, then move on
        lines = traceback.format_exception_only(type(exc), exc)
        rec.update(ok=False, error=" ".join(lines).strip().splitlines()[0][:400])
        rec["traceback"] = traceback.format_exc()[-4000:]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        gc.collect()
    return rec


def export_spec(spec: ModelSpec, out_dir: Path, exporters: tuple[str, ...] | None = None,
                check: bool = True) -> list[dict]:
    """Build ``spec`` once and export it with each of its exporters."""
    out_dir.mkdir(parents=True, exist_ok=True)
    model = spec.build()
    recs = []
    for exporter in exporters or spec.exporters:
        print(f"[corpus] {spec.name}: exporting with {exporter} ...", flush=True)
        rec = export_one(spec, exporter, out_dir, model=model, check=check)
        status = "ok" if rec["ok"] else f"FAILED: {rec['error']}"
        print(f"[corpus] {spec.name} {exporter}: {status}", flush=True)
        recs.append(rec)
    del model
    gc.collect()
    return recs


def total_size(rec: dict) -> int:
    """Bytes on disk of a record's model file plus its external data."""
    return rec.get("bytes", 0) + rec.get("data_bytes", 0)


def cache_dir() -> Path:
    """``$GRAPHOPT_CACHE`` or ``~/.cache/graphopt/corpus``."""
    return Path(os.environ.get("GRAPHOPT_CACHE") or Path.home() / ".cache" / "graphopt" / "corpus")
