"""Symbolic shapes of every value, from onnxruntime's symbolic shape inference.

ONNX shape inference names a dim it cannot relate to the inputs ``unk__N``:
behind a position-embedding ``Slice`` or a computed ``Reshape`` target, BERT's
``[batch, sequence, 64]`` becomes ``[unk__2, unk__3, 64]``, and a Reshape to
the shape its input already has cannot be told apart from one that changes
it. onnxruntime's ``SymbolicShapeInference`` (shipped in the onnxruntime
wheel, the one its transformers optimizer uses) propagates dims as sympy
expressions through ``Shape``/``Gather``/``Concat``/``Reshape`` and knows the
``com.microsoft`` operators, so fusion checks can compare shapes exactly
(``['batch', 4, 'sequence', 16]``).

The inference runs on the model with initializers over 1 KiB replaced by
typed graph inputs (weights are not read), first without merging dims; when
it cannot finish that way it retries with ``auto_merge`` (which assumes that
two dims broadcast against each other are equal, as a valid model implies)
and keeps what it inferred even when some values stay unknown; when it
fails, the IR's own shapes are used. (Its ``infer_shapes`` entry point is not
called: on an incomplete inference it writes a debug model into the working
directory.)

Exact rewrites do not use it (it may merge dims; ``fold-shapes`` derives
strict dims itself, ``graphopt.passes.folding.shape_dims``).
"""

from __future__ import annotations

import logging
from typing import Any

import onnx

from graphopt import ir

__all__ = ["SymbolicShapes", "symbolic_shapes", "value_dims", "known_dim", "ANALYSIS"]

_LOG = logging.getLogger(__name__)

ANALYSIS = "symbolic-shapes"
"""Name of this analysis in the pass context's cache."""

Dim = int | str | None


class SymbolicShapes:
    """Value name -> shape (ints for static dims, strings for symbolic dims
    and expressions such as ``'batch*sequence'``, None for unknown), computed
    lazily on the first query.

    Args:
        model: the IR model; it is not changed.
    """

    def __init__(self, model: ir.Model) -> None:
        self._model = model
        self._shapes: dict[str, tuple[str, tuple[Dim, ...]]] | None = None
        self._aliases: dict[int, tuple[ir.Value, ir.Value]] = {}
        self._records: dict[int, tuple[ir.Value, tuple[Dim, ...]]] = {}
        self.method = ""

    def _compute(self) -> dict[str, tuple[str, tuple[Dim, ...]]]:
        SymbolicShapeInference = _engine()  # noqa: N806 - a class

        from graphopt.ir import edit, shape_io

        encoded = shape_io.encode(self._model)
        proto = onnx.ModelProto.FromString(encoded) if encoded is not None else edit._serialize_for_inference(
            self._model)
        inferred = None
        for merge in (False, True):
            try:
                inferred, complete = _run_inference(SymbolicShapeInference, proto, merge)
            except Exception as e:  # noqa: BLE001 - the inference raises bare Exceptions
                _LOG.debug("symbolic shape inference (auto_merge=%s) failed: %s", merge, e)
                continue
            kind = "auto-merge" if merge else "exact"
            self.method = kind + ("" if complete else " (partial)")
            if complete:
                break
        shapes: dict[str, tuple[str, tuple[Dim, ...]]] = {}
        if inferred is None:
            self.method = "onnx"
            return shapes
        producers = {v.name: n.op_type for g in ir.all_graphs(self._model) for n in g for v in n.outputs if v.name}
        for info in list(inferred.graph.value_info) + list(inferred.graph.output):
            if not info.type.HasField("tensor_type") or not info.type.tensor_type.HasField("shape"):
                continue
            dims: list[Dim] = []
            for d in info.type.tensor_type.shape.dim:
                if d.HasField("dim_value"):
                    dims.append(int(d.dim_value))
                elif d.dim_param:
                    dims.append(d.dim_param)
                else:
                    dims.append(None)
            shapes[info.name] = (producers.get(info.name, ""), tuple(dims))
        return shapes

    def shape(self, value: ir.Value | None) -> tuple[Dim, ...] | None:
        """The value's symbolic shape, or None when unknown. The IR's own
        shape is used when it knows every dim (ints, or dim names from the
        graph inputs); otherwise the symbolic inference runs (once). Values
        created after the inference (or whose producer changed) fall back to
        the IR's own shape."""
        if value is None:
            return None
        record = self._records.get(id(value))
        if record is not None and record[0] is value:
            return record[1]
        alias = self._aliases.get(id(value))
        if alias is not None and alias[0] is value:
            return self.shape(alias[1])
        own = _ir_dims(value)
        if own is not None and None not in own:
            return own  # ONNX inference already knows every dim: no need to run the symbolic one
        if self._shapes is None:
            self._shapes = self._compute()
        producer = value.producer()
        entry = self._shapes.get(value.name or "")
        if entry is not None and producer is not None and entry[0] == producer.op_type:
            return entry[1]
        return _ir_dims(value)


    def record(self, value: ir.Value, dims: tuple[Dim, ...] | list[Dim]) -> None:
        """Record the shape of a value a rewrite created (e.g. a fused op's output)."""
        self._records[id(value)] = (value, tuple(dims))

    def alias(self, new: ir.Value, old: ir.Value) -> None:
        """Record that ``new`` (made by a rewrite) has ``old``'s shape (looked
        up when asked: nothing is inferred here)."""
        if new is not old:
            self._aliases[id(new)] = (new, old)


def _engine() -> type:
    """onnxruntime's ``SymbolicShapeInference`` class. Its module
    (``onnxruntime/tools/symbolic_shape_infer.py``) needs only onnx, numpy
    and sympy, so unless onnxruntime is imported already it is loaded from
    its file: importing it as ``onnxruntime.tools...`` would first load
    onnxruntime's native library (about 40 ms), which a pipeline that
    does not run onnxruntime need not pay."""
    import importlib.util
    import sys

    name = "onnxruntime.tools.symbolic_shape_infer"
    module = sys.modules.get(name) or sys.modules.get("_graphopt_symbolic_shape_infer")
    if module is None and "onnxruntime" not in sys.modules:
        package = importlib.util.find_spec("onnxruntime")
        origin = package.origin if package is not None else None
        if origin:
            from pathlib import Path

            path = Path(origin).parent / "tools" / "symbolic_shape_infer.py"
            spec = importlib.util.spec_from_file_location("_graphopt_symbolic_shape_infer", path)
            if spec is not None and spec.loader is not None and path.is_file():
                module = importlib.util.module_from_spec(spec)
                sys.modules[spec.name] = module
                spec.loader.exec_module(module)
    if module is None:
        module = importlib.import_module(name)
    return module.SymbolicShapeInference


def _run_inference(cls: Any, proto: onnx.ModelProto, auto_merge: bool) -> tuple[onnx.ModelProto, bool]:
    """``SymbolicShapeInference.infer_shapes`` without its side effect: on an
    incomplete inference it saves ``sym_shape_infer_temp.onnx`` (and external
    data files) into the working directory and raises. The same steps are run
    here and the partial result is returned with ``complete=False``."""
    engine = cls(2**31 - 1, auto_merge, False, 0)
    engine._preprocess(proto)  # noqa: SLF001 - the steps of infer_shapes, minus its debug save
    complete = False
    while engine.run_:
        complete = engine._infer_impl()  # noqa: SLF001
    engine._update_output_from_vi()  # noqa: SLF001
    return engine.out_mp_, complete


def value_dims(value: ir.Value) -> tuple[Dim, ...] | None:
    """The value's dims as the IR holds them: ints, dim names (``unk__N``
    included), None for a dim without a name; None when the shape is unknown."""
    shape = value.shape
    if shape is None:
        return None
    dims: list[Dim] = []
    for d in shape:
        if isinstance(d, int):
            dims.append(d)
        else:
            name = getattr(d, "value", None)
            dims.append(name if isinstance(name, str) and name else None)
    return tuple(dims)


def known_dim(dim: Dim) -> Dim:
    """A dim as inference knows it: ONNX shape inference names the dims it
    cannot relate to anything ``unk__N``, which says no more than None."""
    return None if isinstance(dim, str) and dim.startswith("unk__") else dim


def _ir_dims(value: ir.Value) -> tuple[Dim, ...] | None:
    """:func:`value_dims` (a constant's shape when the value has none), with
    the ``unk__N`` names of ONNX inference as None."""
    dims = value_dims(value)
    if dims is None:
        tensor = ir.const_tensor(value)
        dims = tuple(int(d) for d in tensor.shape) if tensor is not None else None
    if dims is None:
        return None
    return tuple(map(known_dim, dims))


def symbolic_shapes(model: ir.Model, ctx: Any = None) -> SymbolicShapes:
    """The model's :class:`SymbolicShapes`, cached in ``ctx.analyses`` when a
    pass context is given (passes that keep shapes list :data:`ANALYSIS` in
    ``preserves``)."""
    if ctx is None or not hasattr(ctx, "analyses"):
        return SymbolicShapes(model)
    return ctx.analyses.get(ANALYSIS, model, SymbolicShapes)
