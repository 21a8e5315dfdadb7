"""The worker of ``tools/compare_simplifiers.py``: one tool, one model, in its
own process (``compare_simplifiers.py --worker TOOL IN OUT``). It loads,
optimizes and saves with the tool, then runs the steps that make the timed work
the same for every tool (``onnx.checker`` on the output, fsync of the output),
and prints one result line (``RESULT_MARK`` + JSON). See
``compare_simplifiers.py`` for what each tool's phases are."""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

MODULE = {"graphopt": "graphopt", "graphopt-cli": "graphopt", "onnxslim": "onnxslim", "onnxsim": "onnxsim",
          "onnxscript": "onnxscript"}
RESULT_MARK = "@@compare_simplifiers_result@@ "


def has_external_data(model: Any) -> bool:
    """Whether any tensor of the (structure-only) ``onnx.ModelProto`` lives in external data."""
    from onnx import external_data_helper

    return any(external_data_helper.uses_external_data(t)
               for t in external_data_helper._get_all_tensors(model))  # noqa: SLF001


def _run_tool(tool: str, src: Path, dst: Path, pipeline: str, big: bool) -> dict[str, float]:
    """Load, optimize and save with ``tool``; return the phase times. ``big``:
    the input has external data (or is over 2 GB), so write external data."""
    if tool == "graphopt":
        import gc

        import graphopt
        import graphopt.passes  # noqa: F401 - registered at import, as in the CLI

        gc.freeze()  # as `graphopt optimize` does after its imports
    t0 = time.perf_counter()
    if tool == "graphopt":
        model = graphopt.load(str(src))
        t1 = time.perf_counter()
        model = graphopt.optimize(model, pipeline)
        t2 = time.perf_counter()
        graphopt.save(model, str(dst))
    elif tool == "onnxslim":
        import onnx
        import onnxslim
        from onnxslim.utils import save as slim_save

        model = onnx.load(str(src))
        t1 = time.perf_counter()
        model = onnxslim.slim(model)
        t2 = time.perf_counter()
        if model is None:
            raise RuntimeError("onnxslim.slim returned None")
        slim_save(model, str(dst), save_as_external_data=big)
    elif tool == "onnxsim":
        import onnxsim

        t1 = time.perf_counter()
        _, ok = onnxsim.simplify(str(src), output_path=str(dst), external_data_threshold="2GB")
        t2 = time.perf_counter()
        if not ok:
            raise RuntimeError("onnxsim.simplify reported failure (check did not pass)")
    elif tool == "onnxscript":
        import onnx_ir
        import onnxscript.optimizer

        model = onnx_ir.load(str(src))
        t1 = time.perf_counter()
        model = onnxscript.optimizer.optimize(model)
        t2 = time.perf_counter()
        onnx_ir.save(model, str(dst), external_data=f"{dst.name}.data" if big else None)
    else:
        raise ValueError(f"unknown tool {tool!r}")
    t3 = time.perf_counter()
    return {"load_s": t1 - t0, "opt_s": t2 - t1, "save_s": t3 - t2, "work_s": t3 - t0}


def _check_and_sync(tool: str, dst: Path, check: bool, durable: bool) -> dict[str, float]:
    """The steps after a tool's save that make the timed work the same for
    every tool (see the module docs): ``onnx.checker.check_model`` on the
    output (onnxsim already ran it inside its call), then fsync of every
    file in the output's folder and of the folder. Returns their times (s)."""
    times = {"check_s": 0.0, "sync_s": 0.0}
    t0 = time.perf_counter()
    if check and tool != "onnxsim":
        import onnx

        onnx.checker.check_model(str(dst))
    t1 = time.perf_counter()
    if durable:
        for path in sorted(dst.parent.iterdir()):
            if path.is_file():
                fd = os.open(path, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        fd = os.open(dst.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    t2 = time.perf_counter()
    times.update(check_s=t1 - t0, sync_s=t2 - t1)
    return times


def worker(tool: str, src: str, dst: str, pipeline: str, big: bool, check: bool = True,
           durable: bool = True) -> int:
    """Run one tool on one model in this process (see :func:`_run_tool` and
    :func:`_check_and_sync`) and print its result line (``RESULT_MARK`` +
    JSON: phase times in seconds, ``work_s`` their sum, ``ok``, ``error``).
    Returns the exit status: 0 when it succeeded."""
    import resource

    result: dict[str, Any] = {"tool": tool}
    try:
        __import__(MODULE[tool])
        result["import_rss_kb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        result.update(_run_tool(tool, Path(src), Path(dst), pipeline, big))
        extra = _check_and_sync(tool, Path(dst), check, durable)
        result.update(extra)
        result["work_s"] += extra["check_s"] + extra["sync_s"]
        result["ok"] = True
    except BaseException as e:  # noqa: BLE001 - everything goes into the table
        result["ok"] = False
        result["error"] = f"{type(e).__name__}: {e}".strip()[:2000]
        result["traceback"] = traceback.format_exc()[-4000:]
    sys.stdout.flush()
    print(RESULT_MARK + json.dumps(result), flush=True)
    return 0 if result["ok"] else 1
