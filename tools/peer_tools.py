"""The optimizers the comparison tools run, one function each: graphopt's
pipelines and the peers installed from PyPI.

Each runner takes ``(src, dst, big)`` (``big``: write external data, as the
input has it or is over 2 GB) and returns the phase times in seconds
(``load_s``, ``opt_s``, ``save_s``, ``work_s`` = their sum). They run inside
a worker process of ``tools/compare_simplifiers.py`` or
``tools/compare_peers.py``, one tool and one model per process, so that the
peak RSS is the tool's own.

=====================  =======================================================
``graphopt``           ``graphopt.load`` -> ``graphopt.optimize(m, "O1")`` ->
                       ``graphopt.save`` (lazy weights); ``graphopt-O2-<target>``
                       the same with ``O2`` for that target (``onnx`` and
                       ``tensorrt`` with ``opset_upgrade=23``: their standard
                       fused ops need opset 23)
``onnxslim``           ``onnx.load`` -> ``onnxslim.slim`` -> ``onnxslim.utils.save``
``onnxsim``            ``onnxsim.simplify(path, output_path=OUT)``: its C++ core
                       loads, simplifies, checks and saves
``onnxoptimizer``      ``onnx.load`` -> ``onnxoptimizer.optimize`` (its default
                       fuse-and-eliminate passes) -> ``onnx.save``
``onnxscript``         ``onnx_ir.load`` -> ``onnxscript.optimizer.optimize`` -> ``onnx_ir.save``
``onnxscript-ort``     ``onnx_ir.load`` -> ``onnxscript.rewriter.ort_fusions.optimize_for_ort``
                       -> ``onnx_ir.save``
``ort-transformers``   ``onnxruntime.transformers.optimizer.optimize_model`` with
                       the architecture's model type, heads and hidden size
                       (:func:`model_type`, :data:`HEADS`), ``opt_level=0``
                       (its fusions only)
``polygraphy``         ``polygraphy.backend.onnx.fold_constants`` (Polygraphy's
                       ``surgeon sanitize --fold-constants``)
=====================  =======================================================
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

#: The module whose presence makes a tool runnable.
MODULE = {"graphopt": "graphopt", "graphopt-cli": "graphopt", "graphopt-O2-ort": "graphopt",
          "graphopt-O2-onnx": "graphopt", "graphopt-O2-tensorrt": "graphopt", "onnxslim": "onnxslim",
          "onnxsim": "onnxsim", "onnxoptimizer": "onnxoptimizer", "onnxscript": "onnxscript",
          "onnxscript-ort": "onnxscript", "ort-transformers": "onnxruntime", "polygraphy": "polygraphy"}

#: (num_heads, hidden_size) by corpus model prefix, for the onnxruntime
#: transformers optimizer (0, 0 = let it detect).
HEADS = {"bert_base": (12, 768), "gpt2_small": (12, 768), "vit_base": (12, 768), "llama_gqa_600m": (12, 1536),
         "llama_gqa_large": (12, 1536), "bert_tiny": (4, 64), "gpt2_tiny": (4, 64), "vit_tiny": (4, 64),
         "llama_gqa_tiny": (4, 64)}

#: ir_version written by the peers that keep onnx's default (IR 11+ is refused
#: by nothing here, but onnx 1.23's default of 14 is by older onnxruntimes).
IR_VERSION = 10


def heads_of(name: str) -> tuple[int, int]:
    """The attention heads and hidden size of a corpus model (0, 0 when unknown)."""
    return next((v for k, v in HEADS.items() if name.startswith(k)), (0, 0))


def model_type(name: str) -> str:
    """The onnxruntime transformers optimizer's model type for a corpus model
    (``bert``, ``vit``, else ``gpt2``, whose fusions cover decoder blocks)."""
    if name.startswith("bert"):
        return "bert"
    if name.startswith("vit"):
        return "vit"
    return "gpt2"


def graphopt_runner(pipeline: str, target: str, opset: int | None) -> Callable[[Path, Path, bool], dict[str, float]]:
    """The runner of graphopt's ``pipeline`` for ``target`` (``opset``: allow
    ``upgrade-opset`` to it; None keeps the model's)."""

    def run(src: Path, dst: Path, big: bool) -> dict[str, float]:
        import graphopt

        t0 = time.perf_counter()
        model = graphopt.load(str(src))
        t1 = time.perf_counter()
        config = {"opset_upgrade": opset} if opset else {}
        model = graphopt.optimize(model, pipeline, target, **config)
        t2 = time.perf_counter()
        graphopt.save(model, str(dst))
        return _times(t0, t1, t2)

    return run


def _times(t0: float, t1: float, t2: float) -> dict[str, float]:
    t3 = time.perf_counter()
    return {"load_s": t1 - t0, "opt_s": t2 - t1, "save_s": t3 - t2, "work_s": t3 - t0}


def _onnxslim(src: Path, dst: Path, big: bool) -> dict[str, float]:
    import onnx
    import onnxslim
    from onnxslim.utils import save as slim_save

    t0 = time.perf_counter()
    model = onnx.load(str(src))
    t1 = time.perf_counter()
    model = onnxslim.slim(model)
    t2 = time.perf_counter()
    if model is None:
        raise RuntimeError("onnxslim.slim returned None")
    slim_save(model, str(dst), save_as_external_data=big)
    return _times(t0, t1, t2)


def _onnxsim(src: Path, dst: Path, big: bool) -> dict[str, float]:
    import onnxsim

    t0 = time.perf_counter()
    _, ok = onnxsim.simplify(str(src), output_path=str(dst), external_data_threshold="2GB")
    t2 = time.perf_counter()
    if not ok:
        raise RuntimeError("onnxsim.simplify reported failure (check did not pass)")
    return _times(t0, t0, t2)


def _onnxoptimizer(src: Path, dst: Path, big: bool) -> dict[str, float]:
    import onnx
    import onnxoptimizer

    t0 = time.perf_counter()
    model = onnx.load(str(src))
    t1 = time.perf_counter()
    model = onnxoptimizer.optimize(model)
    t2 = time.perf_counter()
    onnx.save(model, str(dst), save_as_external_data=big, location=dst.name + ".data" if big else None)
    return _times(t0, t1, t2)


def _onnxscript(fusions: bool) -> Callable[[Path, Path, bool], dict[str, float]]:
    def run(src: Path, dst: Path, big: bool) -> dict[str, float]:
        import onnx_ir

        t0 = time.perf_counter()
        model = onnx_ir.load(str(src))
        t1 = time.perf_counter()
        if fusions:
            from onnxscript.rewriter.ort_fusions import optimize_for_ort

            result = optimize_for_ort(model)
            model = result[0] if isinstance(result, tuple) else result
            model.ir_version = IR_VERSION
        else:
            import onnxscript.optimizer

            model = onnxscript.optimizer.optimize(model)
        t2 = time.perf_counter()
        onnx_ir.save(model, str(dst), external_data=f"{dst.name}.data" if big else None)
        return _times(t0, t1, t2)

    return run


def _ort_transformers(src: Path, dst: Path, big: bool) -> dict[str, float]:
    from onnxruntime.transformers import optimizer

    t0 = time.perf_counter()
    heads, hidden = heads_of(src.stem)
    optimized = optimizer.optimize_model(str(src), model_type=model_type(src.stem), num_heads=heads,
                                         hidden_size=hidden, opt_level=0, use_gpu=False)
    t2 = time.perf_counter()
    optimized.model.ir_version = IR_VERSION
    optimized.save_model_to_file(str(dst), use_external_data_format=big)
    return _times(t0, t0, t2)


def _polygraphy(src: Path, dst: Path, big: bool) -> dict[str, float]:
    import onnx
    from polygraphy.backend.onnx import fold_constants

    t0 = time.perf_counter()
    model = onnx.load(str(src))
    t1 = time.perf_counter()
    model = fold_constants(model)
    t2 = time.perf_counter()
    onnx.save(model, str(dst), save_as_external_data=big, location=dst.name + ".data" if big else None)
    return _times(t0, t1, t2)


#: Tool name -> runner (see the module docs).
RUNNERS: dict[str, Callable[[Path, Path, bool], dict[str, float]]] = {
    "graphopt": graphopt_runner("O1", "ort", None),
    "graphopt-O2-ort": graphopt_runner("O2", "ort", None),
    "graphopt-O2-onnx": graphopt_runner("O2", "onnx", 23),
    "graphopt-O2-tensorrt": graphopt_runner("O2", "tensorrt", 23),
    "onnxslim": _onnxslim,
    "onnxsim": _onnxsim,
    "onnxoptimizer": _onnxoptimizer,
    "onnxscript": _onnxscript(False),
    "onnxscript-ort": _onnxscript(True),
    "ort-transformers": _ort_transformers,
    "polygraphy": _polygraphy,
}


def run_tool(tool: str, src: Path, dst: Path, big: bool) -> dict[str, float]:
    """Optimize ``src`` into ``dst`` with ``tool``; the phase times (s).

    Raises:
        ValueError: an unknown tool; whatever the tool raises on the model.
    """
    if tool not in RUNNERS:
        raise ValueError(f"unknown tool {tool!r}; choose from {', '.join(RUNNERS)}")
    if MODULE[tool] == "graphopt":
        import gc

        import graphopt.passes  # noqa: F401 - registered at import, as in the CLI

        gc.freeze()  # as `graphopt optimize` does after its imports
    return RUNNERS[tool](src, dst, big)


def worker(tool: str, src: str, dst: str, big: bool,
           after: Callable[[str, Path], dict[str, float]] | None = None) -> int:
    """Run one tool on one model in this process (:func:`run_tool`, then
    ``after(tool, dst)``, whose times are added to ``work_s``) and print its
    result line (``peer_spawn.RESULT_MARK`` + JSON: phase times in seconds,
    ``ok``, ``error`` and ``traceback`` when it failed, ``import_rss_kb``).
    Returns the exit status: 0 when it succeeded."""
    import json
    import resource
    import sys
    import traceback

    from peer_spawn import RESULT_MARK

    result: dict = {"tool": tool}
    try:
        if tool not in MODULE:
            raise ValueError(f"unknown tool {tool!r}; choose from {', '.join(RUNNERS)}")
        __import__(MODULE[tool])
        result["import_rss_kb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        result.update(run_tool(tool, Path(src), Path(dst), big))
        if after is not None:
            extra = after(tool, Path(dst))
            result.update(extra)
            result["work_s"] += sum(extra.values())
        result["ok"] = True
    except BaseException as e:  # noqa: BLE001 - everything goes into the table
        result["ok"] = False
        result["error"] = f"{type(e).__name__}: {e}".strip()[:2000]
        # Paths under this interpreter's prefix (site-packages) are written as <prefix>: the report is published.
        result["traceback"] = traceback.format_exc()[-4000:].replace(sys.prefix, "<prefix>")
    sys.stdout.flush()
    print(RESULT_MARK + json.dumps(result), flush=True)
    return 0 if result["ok"] else 1
