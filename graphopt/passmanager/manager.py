"""The pass manager: runs a pipeline over a model under a context.

For each pass it establishes the invariants the pass ``requires`` (running the
providing pass, e.g. ``topological-sort``), calls the instruments around it,
times it, rolls it back when an instrument rejects its result, and on a crash
raises :class:`~graphopt.errors.PassError` with the reproducer an instrument
wrote. Invariants a modifying pass does not ``preserve`` are dropped and cached
analyses invalidated (MLIR's pass manager is the model).

Three rules hold for every pipeline, whatever its passes:

* **Structure.** After each modifying pass the graph is checked (SSA, every
  value read is produced, graph outputs produced, acyclic:
  :func:`graphopt.ir.load.structure_problem`, as MLIR runs its verifier
  after each pass). A pass that breaks it is a graphopt defect: a
  :class:`PassError` with exit code 3 and the reproducer (the model as the
  pass received it), unless an instrument (``VerifyEach``) already rolled
  the pass back.
* **Signature.** The declared types and shapes of the main graph's inputs
  and outputs are captured before the first pass and put back after the
  last: passes may sharpen internal values (shape inference turns a
  declared ``Concat461_dim_1`` into 384), never the model's contract.
* **IR 3.** An IR-3 model's initializers are taken out of its graph inputs
  before the first pass (:func:`graphopt.ir.load.drop_initializer_inputs`),
  unless the ``ir.keep_initializer_inputs`` config key is set.
"""

from __future__ import annotations

import gc
import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from graphopt.errors import GraphoptError, PassError
from graphopt.ir import Model, Shape, Value, all_graphs, clone
from graphopt.ir.load import drop_initializer_inputs, structure_problem
from graphopt.passmanager.base import INVARIANTS, Pass, PassResult, get_pass
from graphopt.passmanager.context import PassContext
from graphopt.passmanager.pipeline import Fixpoint, Item, Named, Pipeline, Step

__all__ = ["PassManager", "PassRecord", "RunReport", "RunResult", "StopPipeline", "count_nodes",
           "declared_signature", "restore_signature"]

_LOG = logging.getLogger(__name__)


class StopPipeline(Exception):
    """Raised by an instrument to end the pipeline early (``bisect`` uses it)."""


def count_nodes(model: Model) -> int:
    """Number of nodes in the main graph and all its subgraphs."""
    return sum(len(g) for g in all_graphs(model))


@dataclass
class PassRecord:
    """One executed pass.

    Attributes:
        index: 1-based position in execution order.
        name: registered pass name.
        spec: the pass as written in the spec (with options).
        seconds: wall time of ``run`` (s).
        modified: whether the model changed (False after a rollback).
        stats: the pass's counters.
        nodes_before / nodes_after: node counts, subgraphs included.
        auto: run by the manager to establish an invariant.
        rolled_back: an instrument rejected the result and it was undone.
        note: why it was rolled back, or other remarks.
    """

    index: int
    name: str
    spec: str
    seconds: float
    modified: bool
    stats: dict[str, Any]
    nodes_before: int
    nodes_after: int
    auto: bool = False
    rolled_back: bool = False
    note: str = ""


@dataclass
class RunReport:
    """The records of a pipeline run, in execution order."""

    spec: str
    records: list[PassRecord] = field(default_factory=list)
    seconds: float = 0.0
    stopped: str = ""

    @property
    def rolled_back(self) -> list[PassRecord]:
        return [r for r in self.records if r.rolled_back]

    def to_dict(self) -> dict[str, Any]:
        return {"spec": self.spec, "seconds": self.seconds, "stopped": self.stopped,
                "passes": [asdict(r) for r in self.records]}


@dataclass
class RunResult:
    """The optimized model and the report. ``model`` may be a different object
    from the input when the last pass was rolled back."""

    model: Model
    report: RunReport


class PassManager:
    """Runs a :class:`Pipeline` under a :class:`PassContext`.

    Args:
        pipeline: a Pipeline or its text spec.
        ctx: the context (a default ``PassContext()`` when None).

    Raises:
        PipelineSpecError: the spec does not parse (at construction).
    """

    def __init__(self, pipeline: Pipeline | str, ctx: PassContext | None = None) -> None:
        self.pipeline = Pipeline.parse(pipeline) if isinstance(pipeline, str) else pipeline
        self.ctx = ctx or PassContext()
        self._valid: set[str] = set()
        self._nodes: int | None = None
        self._report = RunReport(self.pipeline.to_spec())
        # Build every pass once up front so option errors surface before any work.
        self._check(self.pipeline.expanded().items)

    def _check(self, items: list[Item]) -> None:
        for item in items:
            if isinstance(item, Step):
                item.build()
            elif isinstance(item, Fixpoint):
                self._check(item.steps)

    def run(self, model: Model) -> RunResult:
        """Run the pipeline on ``model`` (mutated in place unless rolled back).

        Raises:
            PassError: a pass raised; ``.reproducer`` names the reproducer
                directory when the reproducer instrument is active.
        """
        self._valid = set()
        self._nodes = None
        self._changes = 0  # modifying passes so far
        self._clean: dict[int, tuple[Step, int]] = {}  # step id -> (step, self._changes when it last found nothing)
        self._report = RunReport(self.pipeline.to_spec())
        start = time.perf_counter()
        if not self.ctx.get("ir.keep_initializer_inputs"):
            dropped = drop_initializer_inputs(model)
            if dropped:
                _LOG.info("IR-3 model: %d initializers taken out of the graph inputs (now IR 4): %s",
                          len(dropped), ", ".join(dropped[:8]) + (", ..." if len(dropped) > 8 else ""))
        declared = declared_signature(model)
        for inst in self.ctx.instruments:
            inst.before_pipeline(model, self.ctx, self.pipeline)
        # The IR is a web of small objects with reference cycles; the cyclic
        # collector's full sweeps cost more than the passes on small models.
        # It is off while the passes run and restored (as it was) after.
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            model, _ = self._run_items(self.pipeline.items, model)
        except StopPipeline as stop:
            self._report.stopped = str(stop)
        finally:
            if gc_was_enabled:
                gc.enable()
        restore_signature(model, declared)
        self._report.seconds = time.perf_counter() - start
        for inst in self.ctx.instruments:
            inst.after_pipeline(model, self.ctx, self._report)
        return RunResult(model, self._report)

    def _run_items(self, items: list[Item], model: Model) -> tuple[Model, bool]:
        changed = False
        for item in items:
            if isinstance(item, Named):
                model, mod = self._run_items(item.expand().items, model)
            elif isinstance(item, Fixpoint):
                mod = False
                for iteration in range(item.iterations):
                    model, again = self._run_items(item.steps, model)
                    mod = mod or again
                    if not again:
                        break
                else:
                    if self.ctx.get("fixpoint.warn"):
                        _LOG.warning("%s did not converge in %d iterations", item.to_spec(), item.iterations)
            else:
                # A pass that found nothing to do and has not seen the model
                # change since would find nothing again (passes are
                # deterministic and keep no state): skip it. This trims the
                # confirming last round of a fixpoint.
                clean = self._clean.get(id(item))
                if clean is not None and clean[0] is item and clean[1] == self._changes:
                    continue
                model, mod = self._run_pass(item.build(), item.to_spec(), model)
                if not mod:
                    self._clean[id(item)] = (item, self._changes)  # the item is kept so its id is not reused
            changed = changed or mod
        return model, changed

    def _establish(self, pass_: Pass, model: Model) -> Model:
        for invariant in sorted(pass_.requires):
            if invariant in self._valid:
                continue
            provider = INVARIANTS.get(invariant)
            if provider is None:
                raise PassError(f"pass '{pass_.name}' requires unknown invariant '{invariant}'", pass_.name)
            if provider == pass_.name:
                continue
            model, _ = self._run_pass(get_pass(provider)(), provider, model, auto=True)
        return model

    def _run_pass(self, pass_: Pass, spec: str, model: Model, auto: bool = False) -> tuple[Model, bool]:
        model = self._establish(pass_, model)
        instruments = self.ctx.instruments
        snapshot = clone(model) if any(i.needs_snapshot for i in instruments) else None
        for inst in instruments:
            inst.before_pass(pass_, model, self.ctx)
        before = self._nodes if self._nodes is not None else count_nodes(model)
        start = time.perf_counter()
        try:
            result = pass_.run(model, self.ctx)
        except Exception as exc:  # noqa: BLE001 - every pass failure becomes a PassError
            if isinstance(exc, GraphoptError) and not isinstance(exc, PassError):
                # An expected error (bad input, options, calibration data): the user's to fix, not a crash,
                # so no reproducer; the CLI exits with the cause's code (2 for bad input).
                raise PassError(f"pass '{pass_.name}' rejected the model: {exc}", pass_.name,
                                exit_code=exc.exit_code) from exc
            path = None
            for inst in instruments:
                path = inst.on_crash(pass_, spec, snapshot, exc, self.ctx) or path
            where = f"; reproducer written to {path}" if path else ""
            raise PassError(f"pass '{pass_.name}' crashed: {exc}{where}", pass_.name, path) from exc
        seconds = time.perf_counter() - start
        if not isinstance(result, PassResult):
            raise PassError(f"pass '{pass_.name}' returned {type(result).__name__}, not PassResult", pass_.name)
        after = count_nodes(model) if result.modified else before
        record = PassRecord(len(self._report.records) + 1, pass_.name, spec, seconds, result.modified,
                            dict(result.stats), before, after, auto=auto)
        self._report.records.append(record)
        for inst in instruments:
            verdict = inst.after_pass(pass_, model, result, self.ctx, record)
            if verdict is False and snapshot is not None and not record.rolled_back:
                model = snapshot
                record.rolled_back = True
                record.modified = False
                record.nodes_after = count_nodes(model)
        if record.modified:
            self._check_structure(pass_, spec, model, snapshot)
        self._nodes = record.nodes_after
        for inst in instruments:
            inst.committed(pass_, model, record, self.ctx)
        if record.modified:
            self._changes += 1
            self._valid = (self._valid & set(pass_.preserves)) | set(pass_.establishes)
            self.ctx.analyses.invalidate(pass_.preserves)
        elif not record.rolled_back:
            self._valid |= set(pass_.establishes)
        return model, record.modified

    def _check_structure(self, pass_: Pass, spec: str, model: Model, snapshot: Model | None) -> None:
        """Raise :class:`PassError` (exit 3, with the instruments' reproducer)
        when ``pass_`` left ``model`` structurally broken."""
        problem = structure_problem(model)
        if problem is None:
            return
        error = PassError(f"pass '{pass_.name}' broke the graph: {problem[1]}", pass_.name)
        path = None
        for inst in self.ctx.instruments:
            path = inst.on_crash(pass_, spec, snapshot, error, self.ctx) or path
        where = (f"; reproducer (the model as the pass received it, and the pass) written to {path}" if path
                 else "; no reproducer was written (none of the instruments writes one)")
        raise PassError(f"pass '{pass_.name}' broke the graph: {problem[1]}. This is a graphopt defect, not a "
                        f"problem of the input model{where}; please report it. --verify-each rolls such a pass "
                        "back and continues", pass_.name, path)


Signature = list[tuple[str, str, object, Shape | None]]
"""(``input``/``output``, name, type, shape copy) of each declared graph input and output."""


def declared_signature(model: Model) -> Signature:
    """The declared types and shapes of ``model``'s main-graph inputs and
    outputs, shapes copied (a pass may edit a shape in place)."""

    def copy(shape: Shape | None) -> Shape | None:
        if shape is None:
            return None
        return Shape(list(shape.dims), denotations=[shape.get_denotation(i) for i in range(len(shape.dims))])

    graph = model.graph
    return ([("input", v.name, v.type, copy(v.shape)) for v in graph.inputs]
            + [("output", v.name, v.type, copy(v.shape)) for v in graph.outputs])


def _compatible(declared: Shape | None, current: Shape | None) -> bool:
    """Whether ``declared`` may replace ``current``: same rank, and no axis
    where both give a number and the numbers differ (that would be a pass
    changing the model, which verification must see, not a sharpening)."""
    if declared is None or current is None:
        return True
    if len(declared) != len(current):
        return False
    return all(not (isinstance(a, int) and isinstance(b, int)) or a == b for a, b in zip(declared.dims, current.dims))


def restore_signature(model: Model, declared: Signature) -> list[str]:
    """Put the declared types and shapes back on ``model``'s main-graph inputs
    and outputs (matched by name and kind).

    Per axis, a declared number or a declared symbolic name is put back; an
    axis declared without a name keeps a number the passes found for it (it
    promised nothing; a made-up name such as ``unk__3`` is not kept), and a
    value declared without a shape keeps the shape found. This is done only when
    the shapes are compatible (same rank; static dims equal): a symbolic dim
    that a pass sharpened to a number, or renamed, is declared again, while a
    dtype, rank or static-dim change is left as it is, for verification to
    report (a lossy pass may change an output's dtype on purpose). The type
    is put back only where the value lost it.

    Returns:
        ``"<kind> '<name>'"`` for each input or output whose shape was put back.
    """
    by_key: dict[tuple[str, str], tuple[object, Shape | None]] = {
        (kind, name): (vtype, shape) for kind, name, vtype, shape in declared}
    restored: list[str] = []
    graph = model.graph
    values: list[tuple[str, Value]] = ([("input", v) for v in graph.inputs]
                                       + [("output", v) for v in graph.outputs])
    for kind, value in values:
        entry = by_key.get((kind, value.name or ""))
        if entry is None:
            continue
        vtype, shape = entry
        if value.type is None and vtype is not None:
            value.type = vtype
        if vtype is not None and value.type is not None and value.type != vtype:
            continue
        if shape is None or not _compatible(shape, value.shape):
            continue
        current = value.shape
        dims = list(shape.dims) if current is None else [
            c if not isinstance(d, int) and d.value is None and isinstance(c, int) else d
            for d, c in zip(shape.dims, current.dims)]
        if current is not None and _same_shape(Shape(dims), current):
            continue
        value.shape = Shape(dims, denotations=[shape.get_denotation(i) for i in range(len(dims))])
        restored.append(f"{kind} '{value.name}'")
    if restored:
        _LOG.debug("declared shapes put back on %s", ", ".join(restored))
    return restored


def _same_shape(a: Shape | None, b: Shape | None) -> bool:
    if a is None or b is None:
        return a is b
    return [d if isinstance(d, int) else d.value for d in a.dims] == [d if isinstance(d, int) else d.value for d in b.dims]
