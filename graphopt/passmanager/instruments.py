"""Instruments: code the pass manager calls around every pass (TVM's pass
instruments, MLIR's IR printing and crash reproducers).

* :class:`VerifyEach` - structural check and onnxruntime comparison after
  each modifying pass; a pass that breaks numerics is rolled back with a
  warning naming it.
* :class:`DumpIR` - the model after each pass as ``NNN_<pass>.onnx`` plus its
  canonical text ``NNN_<pass>.txt``.
* :class:`Reproducer` - on a crash, the model as the failing pass received it
  and the pass's spec, with the command that reproduces the failure.
* :class:`Bisect` - compares after each pass and stops at the first divergence.
"""

from __future__ import annotations

import logging
import shlex
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from graphopt import ir
from graphopt.errors import GraphoptError
from graphopt.ir.check import check_model_proto
from graphopt.ir.load import structure_problem

__all__ = ["Instrument", "VerifyEach", "DumpIR", "Reproducer", "Bisect", "ModelRunner"]

_LOG = logging.getLogger(__name__)


class Instrument:
    """Base class: every hook is a no-op. ``needs_snapshot`` asks the manager to
    keep a structural copy of the model before each pass (for rollback or a
    reproducer)."""

    needs_snapshot = False

    def before_pipeline(self, model: ir.Model, ctx: Any, pipeline: Any) -> None:
        """Called once before the first pass."""

    def before_pass(self, pass_: Any, model: ir.Model, ctx: Any) -> None:
        """Called before each pass."""

    def after_pass(self, pass_: Any, model: ir.Model, result: Any, ctx: Any, record: Any) -> bool | None:
        """Called after each pass; return False to have the pass rolled back."""
        return None

    def committed(self, pass_: Any, model: ir.Model, record: Any, ctx: Any) -> None:
        """Called after each pass once any rollback is done: ``model`` is what
        the next pass receives."""

    def on_crash(self, pass_: Any, spec: str, snapshot: ir.Model | None, exc: BaseException, ctx: Any) -> str | None:
        """Called when a pass raises; may return the path of a reproducer."""
        return None

    def after_pipeline(self, model: ir.Model, ctx: Any, report: Any) -> None:
        """Called once after the last pass."""


class ModelRunner:
    """Runs IR models in onnxruntime on one fixed set of inputs.

    Inputs are given (all of them, or some: the rest are generated), or
    generated from the first model run (the original) by
    :func:`graphopt.verify.feed.runnable_inputs`: dtype- and meaning-aware,
    dims bound by ``dims``, whole shapes by ``shapes``, fill values by
    ``values``, and free dims grown until the original runs. Models under the
    protobuf limit run from memory; larger ones are saved to a temporary
    folder first.

    Attributes:
        inputs: the feed: as given until the first run or :meth:`prepare`,
            then every input of the model.
        dims, shapes, values: the user's bindings (``--dim``, ``--shape``,
            ``--value``).
    """

    def __init__(self, inputs: dict[str, np.ndarray] | None = None, dims: dict[str, int] | None = None,
                 seed: int = 0, *, shapes: dict[str, tuple[int, ...]] | None = None,
                 values: dict[str, float | int | bool] | None = None) -> None:
        self.inputs = inputs
        self.dims = dims
        self.shapes = shapes
        self.values = values
        self.seed = seed
        self._resolved = False

    def request(self) -> Any:
        """The :class:`~graphopt.verify.feed.InputRequest` of this runner's
        dims, shapes, values and given inputs."""
        from graphopt.verify.feed import InputRequest

        return InputRequest(dict(self.dims or {}), dict(self.shapes or {}), dict(self.values or {}),
                            dict(self.inputs or {}))

    def _needs_inputs(self, proto: onnx.ModelProto) -> bool:
        if self._resolved:
            return False
        if self.inputs is None or self.shapes or self.values:
            return True
        initializers = {t.name for t in proto.graph.initializer}
        return any(v.name not in self.inputs for v in proto.graph.input if v.name not in initializers)

    def prepare(self, model: Any) -> Any:
        """Resolve the inputs on ``model`` (the original: a path, a proto or
        an IR model) now, by running it: a model that fails on them fails
        here, before any pass runs.

        Returns:
            The :class:`~graphopt.verify.feed.Feed` (inputs and the model's
            outputs on them).

        Raises:
            InputError: the options do not fit the model, or the model fails
                on every input tried (the message names --shape, --value and
                --inputs).
            LoadError: onnxruntime cannot load the model.
        """
        from graphopt.verify.feed import runnable_inputs

        feed = runnable_inputs(model, self.request(), seed=self.seed)
        self.inputs, self._resolved = feed.inputs, True
        return feed

    def run(self, model: ir.Model) -> dict[str, np.ndarray]:
        """Outputs by name. The first call resolves the inputs on ``model``
        (as :meth:`prepare`) unless they were given complete.

        Raises:
            LoadError: onnxruntime cannot load the model.
            InputError: the given inputs do not fit the model, or (first run)
                the model fails on every generated input.
            ModelRunError: onnxruntime fails while running the model.
        """
        from graphopt.verify import run_model

        with tempfile.TemporaryDirectory(prefix="graphopt-run-") as tmp:
            try:
                target: Any = ir.to_proto(model)
            except GraphoptError:
                path = Path(tmp) / "model.onnx"
                ir.save(model, path, external_data=True)
                target = str(path)
            proto = target if isinstance(target, onnx.ModelProto) else onnx.load(target, load_external_data=False)
            if self._needs_inputs(proto):
                return self.prepare(target).outputs
            return run_model(target, self.inputs)


class VerifyEach(Instrument):
    """After each modifying pass: check the structure (SSA, acyclic, every
    value defined, graph outputs produced, ``onnx.checker``) and compare outputs with the input model's in
    onnxruntime at ``ctx`` tolerance (``verify.rtol``, ``verify.atol``; a
    pass's own ``tolerance`` when larger, as fusions declare, which then also
    sets the absolute floor relative to each output's scale). A pass
    that fails is rolled back and named in a warning. Lossy passes are checked
    for structure only; their accuracy is their budget's business.

    Attributes:
        failures: (pass name, reason) for each rolled-back pass.
    """

    needs_snapshot = True

    def __init__(self, runner: ModelRunner | None = None) -> None:
        self.runner = runner or ModelRunner()
        self.reference: dict[str, np.ndarray] | None = None
        self.failures: list[tuple[str, str]] = []

    def before_pipeline(self, model: ir.Model, ctx: Any, pipeline: Any) -> None:
        self.reference = self.runner.run(model)

    def check(self, pass_: Any, model: ir.Model, ctx: Any) -> str | None:
        """The reason the model is wrong after ``pass_``, or None."""
        from graphopt.verify import compare_outputs

        problem = structure_problem(model)
        if problem is not None:
            return f"structural check failed: pass '{pass_.name}' broke the graph: {problem[1]}"
        try:
            check_model_proto(ir.to_proto(model, inline_external=False))
        except (GraphoptError, onnx.checker.ValidationError) as e:
            return f"structural check failed: {e}"
        if getattr(pass_, "lossy", False):
            return None
        try:
            got = self.runner.run(model)
        except GraphoptError as e:
            return f"onnxruntime cannot run the result: {e}"
        declared = getattr(pass_, "tolerance", None) or 0.0
        report = compare_outputs(self.reference, got, rtol=max(ctx.get("verify.rtol"), declared),
                                 atol=ctx.get("verify.atol"), atol_scale=declared)
        return None if report.ok else report.summary()

    def after_pass(self, pass_: Any, model: ir.Model, result: Any, ctx: Any, record: Any) -> bool | None:
        if not result.modified:
            return None
        reason = self.check(pass_, model, ctx)
        if reason is None:
            return True
        _LOG.warning("pass '%s' rolled back: %s", pass_.name, reason)
        record.note = reason
        self.failures.append((pass_.name, reason))
        return False


class DumpIR(Instrument):
    """Writes ``000_input`` and, after each pass, ``NNN_<pass>`` as ``.onnx``
    (graphopt's atomic saver) and ``.txt`` (canonical text) into ``directory``."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)

    def _dump(self, model: ir.Model, stem: str) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        ir.save(model, self.directory / f"{stem}.onnx", external_data=None)
        (self.directory / f"{stem}.txt").write_text(ir.to_text(model))

    def before_pipeline(self, model: ir.Model, ctx: Any, pipeline: Any) -> None:
        self._dump(model, "000_input")

    def committed(self, pass_: Any, model: ir.Model, record: Any, ctx: Any) -> None:
        self._dump(model, f"{record.index:03d}_{pass_.name}")


class Reproducer(Instrument):
    """On a crash, writes ``model.onnx`` (the model as the failing pass received
    it), ``pipeline.txt`` (the failing pass's spec) and ``README.txt`` (the
    command that reproduces it) into a fresh folder under ``directory``."""

    needs_snapshot = True

    def __init__(self, directory: str | Path | None = None) -> None:
        self.directory = Path(directory) if directory else Path(tempfile.gettempdir())
        self.path: Path | None = None

    def on_crash(self, pass_: Any, spec: str, snapshot: ir.Model | None, exc: BaseException, ctx: Any) -> str | None:
        if snapshot is None:
            return None
        self.directory.mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(prefix=f"graphopt-crash-{pass_.name}-", dir=self.directory))
        try:
            ir.save(snapshot, folder / "model.onnx")
        except GraphoptError as e:  # the reproducer must never hide the crash
            _LOG.warning("could not write the reproducer model: %s", e)
            return None
        (folder / "pipeline.txt").write_text(spec + "\n")
        command = (f"graphopt optimize {shlex.quote(str(folder / 'model.onnx'))} -o {shlex.quote(str(folder / 'out.onnx'))} "
                   f"-p {shlex.quote(spec)} --target {ctx.target} --no-verify")
        (folder / "README.txt").write_text(
            f"pass '{pass_.name}' failed with {type(exc).__name__}: {exc}\n\nreproduce with:\n  {command}\n"
        )
        self.path = folder
        return str(folder)


class Bisect(Instrument):
    """Compares the model with the input's outputs after every pass and stops
    the pipeline at the first pass whose outputs diverge beyond tolerance.

    Attributes:
        culprit: the first diverging pass's record, or None.
        reason: the comparison summary for it.
        checked: number of passes compared.
    """

    def __init__(self, runner: ModelRunner | None = None) -> None:
        self.runner = runner or ModelRunner()
        self.reference: dict[str, np.ndarray] | None = None
        self.culprit: Any = None
        self.reason = ""
        self.checked = 0

    def before_pipeline(self, model: ir.Model, ctx: Any, pipeline: Any) -> None:
        self.reference = self.runner.run(model)

    def committed(self, pass_: Any, model: ir.Model, record: Any, ctx: Any) -> None:
        from graphopt.passmanager.manager import StopPipeline
        from graphopt.verify import compare_outputs

        if not record.modified:
            return
        self.checked += 1
        try:
            got = self.runner.run(model)
        except GraphoptError as e:
            self.culprit, self.reason = record, f"onnxruntime cannot run the result: {e}"
        else:
            declared = getattr(pass_, "tolerance", None) or 0.0
            report = compare_outputs(self.reference, got, rtol=max(ctx.get("verify.rtol"), declared),
                                     atol=ctx.get("verify.atol"), atol_scale=declared)
            if report.ok:
                return
            self.culprit, self.reason = record, report.summary()
        raise StopPipeline(f"outputs diverge after pass {record.index} '{record.spec}'")
