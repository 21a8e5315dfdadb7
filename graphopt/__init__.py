"""graphopt: a graph-level compiler and optimizer for ONNX models.

Python API::

    import graphopt
    model = graphopt.load("model.onnx")                 # lazy weights, validated
    model = graphopt.optimize(model, pipeline="O1", target="ort")
    graphopt.save(model, "model.opt.onnx")              # atomic write

See ``graphopt.passmanager`` for pipelines and passes and ``graphopt.verify``
for numerical comparison with onnxruntime.
"""

from __future__ import annotations

from typing import Any

from graphopt import ir
from graphopt.errors import GraphoptError
from graphopt.ir import Model, load, save
from graphopt.passmanager import Pass, PassContext, PassManager, PassResult, Pipeline, register_pass

__version__ = "0.1.0"

__all__ = [
    "GraphoptError", "Model", "Pass", "PassContext", "PassManager", "PassResult", "Pipeline",
    "ir", "load", "optimize", "register_pass", "save", "__version__",
]


def optimize(
    model: Model | str,
    pipeline: str | Pipeline = "O1",
    target: str = "ort",
    *,
    instruments: list[Any] | None = None,
    **config: Any,
) -> Model:
    """Run a pipeline over a model and return the optimized model.

    Args:
        model: an IR model (mutated in place) or the path of an .onnx file.
        pipeline: a text spec (``"O1"``, ``"dce,eliminate-identity"``) or a Pipeline.
        target: ``onnx``, ``ort`` or ``tensorrt``.
        instruments: pass instruments (e.g. ``VerifyEach()``, ``DumpIR(dir)``).
        **config: registered context keys with ``.`` written as ``_`` (e.g.
            ``verify_rtol=1e-4``).

    Returns:
        The optimized model.

    Raises:
        LoadError: ``model`` is a path that does not load.
        PipelineSpecError: bad pipeline spec.
        InputError: unknown target or config key.
        PassError: a pass failed.
    """
    if not isinstance(model, Model):
        model = load(model)
    keys = {k.replace("_", ".", 1): v for k, v in config.items()}
    ctx = PassContext(target=target, config=keys, instruments=list(instruments or []))
    return PassManager(pipeline, ctx).run(model).model
