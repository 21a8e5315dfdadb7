"""compress: pruning, low-rank factorization and INT8 searched together under the context's one accuracy budget
(the lossy half of pipeline ``O3``); the model becomes the chosen candidate.

The search is :func:`graphopt.compress.compress` (candidates built in the O3 order, latency measured against the
original on this machine, quality on the context's evaluation data). The context's evaluation batches are split:
the search scores candidates on the first half and the chosen point is checked on the second half, which no
search saw. ``graphopt compress`` is the command-line form with the same search.
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from graphopt import ir
from graphopt.errors import InputError, VerificationError
from graphopt.passmanager import Pass, PassResult, register_pass

__all__ = ["Compress", "CompressPassOptions", "METADATA_KEY"]

log = logging.getLogger(__name__)

METADATA_KEY = "graphopt.compress"
"""Model metadata key holding the JSON record of the search (points, chosen levels, pipeline spec)."""


@dataclass(frozen=True)
class CompressPassOptions:
    """Options of :class:`Compress`."""

    techniques: tuple[str, ...] = field(default=("prune", "lowrank", "int8"), metadata={
        "doc": "techniques searched: prune, lowrank, int8"})
    speedup: float = field(default=0.0, metadata={"doc": "most accurate model at least this many times faster "
                                                         "(0: the context's accuracy budget instead)"})
    time_limit: float = field(default=0.0, metadata={"doc": "seconds for the search (0: no limit)"})
    latency_seconds: float = field(default=2.0, metadata={"doc": "timed seconds per candidate"})
    threads: int = field(default=2, metadata={"doc": "onnxruntime threads of the latency measurements"})


@register_pass("compress")
class Compress(Pass):
    """Search structured pruning, low-rank factorization and INT8 under the context's accuracy budget (or for a
    speedup) and replace the model by the chosen candidate, built in the O3 order (O1, prune, factorize, O2 or
    the INT8 fusions and QDQ for ``ctx.target``).

    Reads ``ctx.calibration`` and ``ctx.evaluation`` (at least 2 batches: half searched, half held out) and
    ``ctx.accuracy_budget`` (``{"cosine" | "argmax" | "rank-fidelity": t}`` or ``{"metric": fn, "threshold":
    t}``). Writes the record to the model's ``graphopt.compress`` metadata.

    Raises:
        InputError: no calibration or evaluation data, no budget and no speedup, a bad budget.
        VerificationError: no candidate meets the goal (the model is unchanged).
    """

    Options = CompressPassOptions
    requires = frozenset({"topo-sorted"})
    lossy = True

    def run(self, model: ir.Model, ctx) -> PassResult:  # noqa: ANN001 - PassContext
        from graphopt.calibrate.evaluate import metric_of
        from graphopt.compress import CompressOptions, compress
        from graphopt.compress.run import asdict_levels

        opts = self.options
        if ctx.calibration is None or ctx.evaluation is None:
            raise InputError("the compress pass (O3) needs calibration data and evaluation data: "
                             "PassContext(calibration=..., evaluation=...), or graphopt compress --calib --eval")
        evaluation = list(ctx.evaluation)
        if len(evaluation) < 2:
            raise InputError("the compress pass (O3) needs at least 2 evaluation batches (half searched, half held "
                             "out)")
        if opts.speedup:
            name, metric, threshold = "cosine", None, None
            from graphopt.calibrate.metrics import output_cosine as metric
        elif ctx.accuracy_budget:
            name, metric, threshold = metric_of(ctx.accuracy_budget)
        else:
            raise InputError("the compress pass (O3) needs an accuracy budget (PassContext(accuracy_budget="
                             "{'rank-fidelity': 0.97})) or compress{speedup=X}")
        half = len(evaluation) // 2
        options = CompressOptions(techniques=tuple(opts.techniques), target=ctx.target, threshold=threshold,
                                  speedup=opts.speedup or None, time_limit=opts.time_limit or None,
                                  latency_seconds=opts.latency_seconds, threads=opts.threads)
        with tempfile.TemporaryDirectory(prefix="graphopt-o3-") as work:
            source = Path(work) / "source.onnx"
            ir.save(model, source)
            result = compress(source, Path(work), list(ctx.calibration), evaluation[:half], metric, options,
                              held_out=evaluation[half:])
            if result.built is None:
                raise VerificationError(f"compress: no candidate meets the goal ({result.search.stopped})")
            chosen = ir.load(result.built.path)
            for value in chosen.graph.initializers.values():  # read the weights before the folder goes
                if value.const_value is not None:
                    value.const_value = ir.Tensor(value.const_value.numpy(), name=value.name)
        model.graph = chosen.graph
        model.ir_version = chosen.ir_version
        model._functions = dict(chosen.functions)  # noqa: SLF001 - onnx-ir has no setter for the function table
        model.metadata_props.update(chosen.metadata_props)
        record = {"metric": name, "threshold": threshold, "speedup": opts.speedup or None,
                  "pipeline": result.built.docs.get("spec"), "held_out": result.held_out,
                  "points": asdict_levels(result), "stopped": result.search.stopped}
        model.metadata_props[METADATA_KEY] = json.dumps(record, default=str)
        log.info("compress: chose %s (%s)", record["pipeline"], result.search.stopped)
        return PassResult(True, {"points": len(result.points), "held out": round(result.held_out or 0.0, 6)})
