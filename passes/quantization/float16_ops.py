"""Op tables and schema type groups for ``convert-float16`` (``passes/quantization/float16.py``).

The kernel tables were measured on onnxruntime 1.32 (CPU execution provider,
x86-64): a one-node model per op with float16 (bfloat16) inputs, loaded with
``ORT_DISABLE_ALL`` and ``optimized_model_filepath`` set. An op counts as
having a kernel when the saved model holds no Cast onnxruntime added: for
float16 its ``InsertCastTransformer`` wraps every CPU node without a float16
kernel in Casts to float32 (so the model loads, and computes in float32);
for bfloat16 it does not, and loading fails ("Could not find an
implementation"). MatMul, Gemm, Conv, Add, Mul, Softmax, Gelu, Attention and
the other compute ops have neither kernel on CPU.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

import onnx

__all__ = ["CONVERTER_BLOCK_LIST", "SENSITIVE_OPS", "DEFAULT_BLOCK_OPS", "CPU_KERNELS", "FOLLOW_OPS",
           "ELEMENTWISE_OPS", "NEVER_CONVERT", "FREE_INPUTS", "Group", "type_groups"]

CONVERTER_BLOCK_LIST = (
    "ArrayFeatureExtractor", "Binarizer", "CastMap", "CategoryMapper", "DictVectorizer", "FeatureVectorizer",
    "Imputer", "LabelEncoder", "LinearClassifier", "LinearRegressor", "Normalizer", "OneHotEncoder",
    "RandomUniformLike", "SVMClassifier", "SVMRegressor", "Scaler", "TreeEnsembleClassifier",
    "TreeEnsembleRegressor", "TreeEnsemble", "ZipMap", "NonMaxSuppression", "TopK", "RoiAlign", "Range",
    "CumSum", "Min", "Max", "Upsample",
)
"""``DEFAULT_OP_BLOCK_LIST`` of onnxconverter-common's ``float16.convert_float_to_float16``
(the same list in onnxruntime's ``transformers/float16.py``)."""

SENSITIVE_OPS = (
    "Softmax", "LogSoftmax", "Exp", "Log", "Pow", "Softplus", "Sqrt", "Reciprocal",
    "ReduceMean", "ReduceSum", "ReduceSumSquare", "ReduceProd", "ReduceL1", "ReduceL2",
    "ReduceLogSum", "ReduceLogSumExp", "InstanceNormalization", "GroupNormalization",
    "LpNormalization", "MeanVarianceNormalization",
)
"""Ops whose float16 result loses range or accuracy: exponentials, powers and
long sums (the float32 list of NVIDIA's mixed-precision training guide and of
``torch.autocast``). ``LayerNormalization`` is not listed: its statistics are
computed in ``stash_type`` (float32 by default, ONNX spec), as in onnxruntime's
fused ``SkipLayerNormalization`` and ``Attention`` kernels."""

DEFAULT_BLOCK_OPS = tuple(dict.fromkeys(SENSITIVE_OPS + CONVERTER_BLOCK_LIST))

_MOVE = frozenset({
    "Identity", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Concat", "Split", "Slice",
    "Gather", "GatherElements", "Shape", "Size",
})
CPU_KERNELS: dict[str, frozenset[str]] = {
    "float16": _MOVE | {
        "Expand", "Max", "Min", "Clip", "Round", "Sign", "IsNaN", "IsInf", "LayerNormalization",
        "RMSNormalization", "SimplifiedLayerNormalization", "com.microsoft:SkipLayerNormalization",
        "com.microsoft:SkipSimplifiedLayerNormalization", "com.microsoft:QuickGelu",
        "com.microsoft:RotaryEmbedding",
    },
    "bfloat16": _MOVE | {
        "Sign", "IsNaN", "IsInf", "LayerNormalization", "SimplifiedLayerNormalization",
        "com.microsoft:SkipLayerNormalization", "com.microsoft:SkipSimplifiedLayerNormalization",
    },
}
"""``domain:op`` (default domain: ``op``) with a float16 / bfloat16 kernel in
onnxruntime 1.32's CPU execution provider (module docstring)."""

FOLLOW_OPS = frozenset(_MOVE | {
    "Expand", "Tile", "Pad", "GatherND", "ScatterND", "ScatterElements", "DepthToSpace", "SpaceToDepth",
    "Dropout", "Max", "Min", "Clip", "Where",
})
"""Ops that move or select data: they take the precision of their inputs
(converted when a non-constant float input is already converted) rather
than starting a converted region."""

ELEMENTWISE_OPS = frozenset({
    "Add", "Sub", "Mul", "Div", "Neg", "Abs", "Relu", "Sigmoid", "Tanh", "Erf", "Where", "Clip",
    "Max", "Min", "Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual", "Not",
})
"""Cheap ops computed in float32 when all their non-constant inputs and all
their readers are float32 (converting them would only add a Cast pair)."""

NEVER_CONVERT = frozenset({
    "RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "EyeLike", "Bernoulli",
    "Multinomial", "If", "Loop", "Scan", "SequenceMap",
})
"""Ops whose output dtype is set by an attribute, and ops holding subgraphs
(their bodies stay float32; values they read from the outer graph are cast back)."""

FREE_INPUTS = frozenset({("Cast", 0), ("CastLike", 0), ("Shape", 0), ("Size", 0), ("IsNaN", 0), ("IsInf", 0),
                         ("Resize", 1), ("EyeLike", 0)})
"""(op, input index) accepting any float dtype independently of the node's
other inputs and outputs: such an input never gets a Cast."""


@dataclass
class Group:
    """One type variable of a node's schema: the inputs and outputs it types.

    Attributes:
        name: the schema's type string (``T``, or a fixed ``tensor(float)``).
        inputs, outputs: node input / output indices.
        allowed: dtype names the schema allows (``float16``, ``float``, ...).
    """

    name: str
    inputs: list[int]
    outputs: list[int]
    allowed: frozenset[str]


@dataclass(frozen=True)
class _Schema:
    inputs: tuple[tuple[str, bool], ...]  # (type string, variadic)
    outputs: tuple[tuple[str, bool], ...]
    constraints: tuple[tuple[str, frozenset[str]], ...]


_TENSOR = re.compile(r"^tensor\((\w+)\)$")


def _names(type_strs) -> frozenset[str]:  # noqa: ANN001 - iterable of str
    return frozenset(m.group(1) for s in type_strs if (m := _TENSOR.match(s)))


def _from_onnx(s: onnx.defs.OpSchema) -> _Schema:
    variadic = onnx.defs.OpSchema.FormalParameterOption.Variadic
    return _Schema(
        tuple((p.type_str, p.option == variadic) for p in s.inputs),
        tuple((p.type_str, p.option == variadic) for p in s.outputs),
        tuple((c.type_param_str, _names(c.allowed_type_strs)) for c in s.type_constraints))


@functools.lru_cache(maxsize=1)
def _ort_schemas() -> dict[tuple[str, str], list[tuple[int, _Schema]]]:
    """onnxruntime's registered schemas (contrib ops, and the default-domain
    ``LayerNormalization`` v1 / ``SimplifiedLayerNormalization``); empty
    when onnxruntime is not installed."""
    try:
        from onnxruntime.capi import onnxruntime_pybind11_state as ort_c
    except ImportError:
        return {}
    table: dict[tuple[str, str], list[tuple[int, _Schema]]] = {}
    for s in ort_c.get_all_operator_schema():
        variadic = [(p.typeStr, "Variadic" in str(p.option)) for p in s.inputs]
        outs = [(p.typeStr, "Variadic" in str(p.option)) for p in s.outputs]
        cons = tuple((c.type_param_str, _names(c.allowed_type_strs)) for c in s.type_constraints)
        table.setdefault((s.domain, s.name), []).append((s.since_version, _Schema(tuple(variadic), tuple(outs), cons)))
    for versions in table.values():
        versions.sort(key=lambda item: item[0])
    return table


@functools.lru_cache(maxsize=4096)
def _schema(domain: str, op_type: str, version: int) -> _Schema | None:
    if domain in ("", "ai.onnx", "ai.onnx.ml"):
        try:
            return _from_onnx(onnx.defs.get_schema(op_type, version, "" if domain == "ai.onnx" else domain))
        except onnx.defs.SchemaError:
            pass
    found = [s for since, s in _ort_schemas().get(("" if domain == "ai.onnx" else domain, op_type), ())
             if since <= version]
    return found[-1] if found else None


def _formal(params: tuple[tuple[str, bool], ...], index: int) -> str | None:
    if index < len(params):
        return params[index][0]
    if params and params[-1][1]:
        return params[-1][0]
    return None


def type_groups(domain: str, op_type: str, version: int, n_inputs: int, n_outputs: int) -> list[Group] | None:
    """The type groups of a node (``onnx.defs`` for ONNX domains, else
    onnxruntime's schema registry), or None when no schema is known."""
    schema = _schema(domain, op_type, version)
    if schema is None:
        return None
    constraints = dict(schema.constraints)
    groups: dict[str, Group] = {}
    for kind, params, count in (("in", schema.inputs, n_inputs), ("out", schema.outputs, n_outputs)):
        for i in range(count):
            type_str = _formal(params, i)
            if type_str is None:
                continue
            if type_str not in groups:
                allowed = constraints.get(type_str, _names([type_str]))
                groups[type_str] = Group(type_str, [], [], allowed)
            (groups[type_str].inputs if kind == "in" else groups[type_str].outputs).append(i)
    return list(groups.values())
