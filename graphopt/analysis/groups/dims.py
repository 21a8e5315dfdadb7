"""Concrete dims of every value at one sample binding of the symbolic input dims.

The coupled-group rules must prove that a tensor broadcasts along a channel
axis (dim 1) or carries it, and must map axes through Reshape. Symbolic
dims (``unk__10``) prove neither, so ONNX shape inference runs once more
with the graph inputs' symbolic dims bound to sample sizes (batch 3, image
dims 224/160, other dims distinct primes) and data propagation on, which
resolves the mask and shape arithmetic of both torch exporters. Initializers
over 1 KiB, and external ones, are handed to inference as typed inputs,
without their bytes (a model over protobuf's 2 GiB works too).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import onnx

from graphopt import ir

__all__ = ["concrete_dims"]

log = logging.getLogger(__name__)

_PRIMES = (17, 19, 23, 29, 31, 37, 41, 43, 47, 53)


def _bind(proto: onnx.ModelProto, images: Mapping[str, tuple[int, int]] | None = None) -> None:
    """Replace the symbolic dims of the graph inputs by sample sizes (in place); ``images``: an image input's
    (height, width) for its free spatial dims instead of 224 x 160 (a model such as PaddleOCR's recognizer runs
    only at its trained height)."""
    names: dict[str, int] = {}
    initializers = {t.name for t in proto.graph.initializer}
    for vi in proto.graph.input:
        if vi.name in initializers or not vi.type.HasField("tensor_type"):
            continue
        dims = vi.type.tensor_type.shape.dim
        image = len(dims) == 4 and vi.type.tensor_type.elem_type in (1, 10, 11, 16)
        for axis, dim in enumerate(dims):
            if dim.HasField("dim_value") and dim.dim_value > 0:
                continue
            key = dim.dim_param or f"{vi.name}:{axis}"
            if key not in names:
                if axis == 0:
                    names[key] = 3
                elif image and axis >= 2:
                    given = (images or {}).get(vi.name)
                    names[key] = int(given[axis - 2]) if given else 224 if axis == 2 else 160
                else:
                    names[key] = _PRIMES[len(names) % len(_PRIMES)]
            dim.Clear()
            dim.dim_value = names[key]


def concrete_dims(model: ir.Model, types: dict[str, int] | None = None,
                  images: Mapping[str, tuple[int, int]] | None = None) -> dict[str, tuple[int | None, ...]]:
    """Value name -> dims (an int, or None where still unknown) at a sample
    binding of the input dims, for the main graph's values (inputs,
    initializers, node outputs). Values inference leaves without a shape are absent.

    Never raises: a failed inference logs a warning and returns the
    initializers' and inputs' dims only. ``types``, when given, receives
    the inferred element type (``onnx.TensorProto`` code) of each value;
    ``images`` as :func:`_bind` takes it.
    """
    proto = ir.to_proto(model, inline_external=False)  # weights stay where they are (a model over 2 GiB too)

    def large(t: onnx.TensorProto) -> bool:
        return t.data_location == onnx.TensorProto.EXTERNAL or len(t.raw_data) > 1024 or t.ByteSize() > 1200

    graph = proto.graph
    big = [t for t in graph.initializer if large(t)]
    keep = [t for t in graph.initializer if not large(t)]
    dims: dict[str, tuple[int | None, ...]] = {}
    for t in graph.initializer:
        dims[t.name] = tuple(int(d) for d in t.dims)
    input_names = {vi.name for vi in graph.input}
    for t in big:
        if t.name not in input_names:
            graph.input.append(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    del graph.initializer[:]
    graph.initializer.extend(keep)
    _bind(proto, images)
    try:
        inferred = onnx.shape_inference.infer_shapes(proto, check_type=False, strict_mode=False, data_prop=True)
    except Exception as e:  # noqa: BLE001 - inference errors come in several types
        log.warning("shape inference at sample dims failed: %s", e)
        inferred = proto
    for infos in (inferred.graph.input, inferred.graph.value_info, inferred.graph.output):
        for vi in infos:
            if not vi.type.HasField("tensor_type"):
                continue
            if types is not None and vi.type.tensor_type.elem_type:
                types.setdefault(vi.name, vi.type.tensor_type.elem_type)
            if not vi.type.tensor_type.HasField("shape"):
                continue
            dims.setdefault(vi.name, tuple(d.dim_value if d.HasField("dim_value") else None
                                           for d in vi.type.tensor_type.shape.dim))
    return dims


class Dims:
    """Concrete dims of values: :func:`concrete_dims` first, then, for values
    inference left unknown and only when asked, one onnxruntime run at the
    same sample sizes (inputs from :func:`graphopt.verify.inputs.generate_inputs`)
    with every float/int intermediate value fetched (its shape recorded,
    its data dropped)."""

    def __init__(self, model: ir.Model, images: Mapping[str, tuple[int, int]] | None = None) -> None:
        self.model = model
        self.images = dict(images or {})
        self.types: dict[str, int] = {}
        self.static = concrete_dims(model, self.types, self.images)
        self.measured: dict[str, tuple[int, ...]] | None = None

    def of(self, value: ir.Value | None) -> tuple[int | None, ...] | None:
        """The dims of ``value`` (None when unknown, e.g. no rank)."""
        if value is None:
            return None
        tensor = ir.const_tensor(value)
        if tensor is not None:
            return tuple(int(d) for d in tensor.shape)
        dims = self.static.get(value.name or "")
        if dims is not None and all(d is not None for d in dims):
            return dims
        measured = self._measure().get(value.name or "")
        return measured if measured is not None else dims

    def rank(self, value: ir.Value) -> int | None:
        """The rank of ``value`` (inference's, or the IR's shape)."""
        dims = self.static.get(value.name or "")
        if dims is not None:
            return len(dims)
        if value.shape is not None:
            return len(value.shape)
        full = self.of(value)
        return None if full is None else len(full)

    def _measure(self) -> dict[str, tuple[int, ...]]:
        if self.measured is not None:
            return self.measured
        self.measured = {}
        try:
            self.measured = _run_shapes(self.model, self.types, self.images)
        except Exception as e:  # noqa: BLE001 - any runtime failure leaves the dims unknown
            sizes = ", ".join(f"{k} {h}x{w}" for k, (h, w) in self.images.items()) or "224x160 for free image dims"
            log.warning("measuring value shapes in onnxruntime at the sample input sizes (%s) failed, so sites "
                        "whose dims inference cannot resolve are refused: %s. Pruning with calibration data "
                        "takes the image sizes from it", sizes, str(e).splitlines()[0][:300])
        return self.measured


def _run_shapes(model: ir.Model, types: dict[str, int], images: Mapping[str, tuple[int, int]] | None = None
                ) -> dict[str, tuple[int, ...]]:
    """Run the main graph once in onnxruntime at this module's sample binding, every used node output fetched;
    name -> the shape it had (:func:`graphopt.analysis.measured.measure_shapes`)."""
    from graphopt.analysis.measured import measure_shapes
    from graphopt.verify.inputs import generate_inputs, model_dim_names

    proto = ir.to_proto(model, inline_external=False)
    bound = onnx.ModelProto()
    bound.CopyFrom(onnx.helper.make_model(onnx.helper.make_graph([], "inputs", list(proto.graph.input), [])))
    _bind(bound, images)
    initializers = {t.name for t in proto.graph.initializer}
    shapes = {vi.name: tuple(d.dim_value for d in vi.type.tensor_type.shape.dim) for vi in bound.graph.input
              if vi.type.HasField("tensor_type") and vi.name not in initializers}
    feed = generate_inputs(proto, dims={name: 3 for name in model_dim_names(proto)}, shapes=shapes)
    return measure_shapes(model, feed, types=types)
