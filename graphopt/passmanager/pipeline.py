"""Pipelines: sequences of passes and nested groups, in three equal forms.

* Python objects: ``Pipeline([Step("dce"), Fixpoint([Step("eliminate-identity")], max_iters=4)])``
* a one-line text spec: ``topological-sort,fixpoint{max-iters=4}(eliminate-identity,dce)``
* a YAML file (see :meth:`Pipeline.to_yaml`).

The text spec parses and prints back identically (MLIR's textual pass pipelines
are the model). Grammar::

    spec  := item (',' item)*
    item  := NAME ['{' [opt (',' opt)*] '}'] ['(' spec ')']
    opt   := KEY '=' VALUE          VALUE: no ',', '{', '}', '(', ')'; lists as a|b|c

``NAME`` is a registered pass, ``fixpoint`` (a group, option ``max-iters``),
or a named pipeline (``O1``), which stays a reference when printed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

from graphopt.errors import PipelineSpecError
from graphopt.passmanager.base import format_option_value, get_pass, parse_option_value

__all__ = ["Step", "Fixpoint", "Named", "Pipeline", "NAMED_PIPELINES", "register_pipeline", "INT8_FUSION",
           "INT8_FUSION_VARIANTS"]

NAMED_PIPELINES: dict[str, tuple[str, str]] = {}
"""Named pipeline -> (text spec, one-line description)."""


def register_pipeline(name: str, spec: str, doc: str) -> None:
    """Register a named pipeline (e.g. ``O1``) usable inside any spec."""
    NAMED_PIPELINES[name] = (spec, doc)


register_pipeline(
    "O1",
    "topological-sort,fixpoint{max-iters=8}(inline,canonicalize-einsum,fold-constants,fold-shapes,eliminate-noops,"
    "eliminate-reshape-pairs,fold-bias,fold-batchnorm,merge-sibling-matmuls,cse,dce)",
    "simplify: inline functions and constant Ifs, rewrite Einsums that are matrix products as MatMul, fold constants and shape computations, remove no-ops and "
    "reshape pairs around elementwise ops, fold bias Adds and BatchNormalization into Conv/Gemm, "
    "merge sibling MatMuls sharing their input, merge common subexpressions, remove dead code, to a fixpoint",
)

register_pipeline(
    "O2",
    "O1,upgrade-opset,fixpoint{max-iters=4}(canonicalize-fusion,dce),fuse-norm,fuse-attention,fuse-rotary,"
    "fuse-skip-norm,fuse-gelu,fuse-bias-gelu,fuse-activation,O1",
    "O1, then fusion for the target: canonicalize exporter variants, LayerNorm/RMSNorm, attention (MHA, GQA, "
    "rotary), residual+norm, GELU (+bias), Conv/Gemm+activation; ops the target takes (onnx: standard ops at the "
    "model's opset, or the one --opset allows; ort: com.microsoft ops; tensorrt: what its ONNX parser takes), "
    "then O1 again to clean up",
)

_INT8_HEAD = "O1,upgrade-opset,fixpoint{max-iters=4}(canonicalize-fusion,dce),fuse-norm,"

INT8_FUSION = _INT8_HEAD + "fuse-attention{packed=false,masked-multi-head=false},fuse-rotary,fuse-gelu,O1"
"""O2 without what keeps a runtime from quantizing or costs time next to
integer kernels: the Conv/Gemm+activation fusions (onnxruntime's QLinearConv
takes a plain Conv; a Relu before a Q is dropped), Attention's packed weight
and MultiHeadAttention with a mask (onnxruntime quantizes the projections as
MatMuls, and next to them its CPU MultiHeadAttention with a mask took 58.3 ms
per BERT-base INT8 run where the unfused attention took 52.8 ms; unmasked
MultiHeadAttention (ViT) and GroupQueryAttention stay), SkipLayerNormalization (onnxruntime 1.32's CPU kernel took 0.55 ms
per [1, 128, 768] call on BERT-base where Add + LayerNormalization took
0.25 ms) and BiasGelu (the bias goes into MatMulIntegerToFloat instead, and
Gelu alone took 0.2 ms where BiasGelu took 0.5 ms)."""

INT8_FUSION_VARIANTS = {
    "default": INT8_FUSION,
    "skip-norm": _INT8_HEAD + "fuse-attention{packed=false,masked-multi-head=false},fuse-rotary,fuse-skip-norm,"
                              "fuse-gelu,O1",
    "skip-norm+masked-mha": _INT8_HEAD + "fuse-attention{packed=false},fuse-rotary,fuse-skip-norm,fuse-gelu,O1",
}
"""The fusion pipelines that may precede QDQ, by name. ``default`` is :data:`INT8_FUSION`, chosen from
BERT-base's measurements. ``skip-norm`` adds ``fuse-skip-norm`` (on CPU the residual ``Add`` before each
LayerNormalization becomes ``Sum``, which keeps onnxruntime from rebuilding its slower SkipLayerNormalization
kernel); ``skip-norm+masked-mha`` also fuses the masked attention into MultiHeadAttention. On a smaller model
the balance can tip the other way from BERT-base's (all-MiniLM-L6-v2, hidden 384, one interleaved run of
INT8 models: default 0.417, skip-norm 0.397, skip-norm+masked-mha 0.405 of the fp32 latency), so
``graphopt compress`` builds each variant that changes the graph and keeps the fastest on this machine."""

register_pipeline(
    "int8",
    INT8_FUSION + ",qdq",
    "O2 fusions that keep MatMul/Conv quantizable, then calibrated INT8 QDQ placed for the target "
    "(needs calibration data: graphopt quantize --calib)",
)

register_pipeline(
    "O3",
    "O1,compress",
    "O1, then structured pruning, low-rank factorization with reconstruction, O2 fusion for the target and "
    "INT8 QDQ, searched together under the context's one accuracy budget (or compress{speedup=X}), latency "
    "measured on this machine (needs calibration and evaluation data: graphopt compress)",
)

register_pipeline(
    "fp16",
    "O2,convert-float16",
    "O2, then float16 weights and compute with numerically sensitive ops kept in float32",
)

register_pipeline(
    "int4",
    "O2,quantize-weights-int4",
    "O2, then block-wise INT4 weight-only MatMuls (MatMulNBits for ort, DequantizeLinear block_size for onnx)",
)

DEFAULT_FIXPOINT_ITERS = 8


@dataclass
class Step:
    """One pass with the options given explicitly (kebab-case key -> typed value)."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)

    def to_spec(self) -> str:
        if not self.options:
            return self.name
        opts = ",".join(f"{k}={format_option_value(v)}" for k, v in self.options.items())
        return f"{self.name}{{{opts}}}"

    def build(self):  # noqa: ANN201 - returns a Pass
        """Instantiate the pass with its options.

        Raises:
            PipelineSpecError: unknown pass or option.
        """
        cls = get_pass(self.name)
        typed = {k: parse_option_value(cls.Options, k, v, f"pass '{self.name}'") for k, v in self.options.items()}
        return cls(cls.Options(**{k.replace("-", "_"): v for k, v in typed.items()}))


@dataclass
class Fixpoint:
    """Run ``steps`` repeatedly until none modifies the model, at most ``max_iters`` times."""

    steps: list["Item"]
    max_iters: int | None = None

    def to_spec(self) -> str:
        opts = f"{{max-iters={self.max_iters}}}" if self.max_iters is not None else ""
        return f"fixpoint{opts}(" + ",".join(s.to_spec() for s in self.steps) + ")"

    @property
    def iterations(self) -> int:
        return self.max_iters if self.max_iters is not None else DEFAULT_FIXPOINT_ITERS


@dataclass
class Named:
    """A reference to a named pipeline (``O1``), expanded when run."""

    name: str

    def to_spec(self) -> str:
        return self.name

    def expand(self) -> "Pipeline":
        return Pipeline.parse(NAMED_PIPELINES[self.name][0])


Item = Union[Step, Fixpoint, Named]

_TOKEN = re.compile(r"\s*([A-Za-z0-9_.\-]+|[{}(),=]|\"[^\"]*\")")


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def error(self, msg: str) -> PipelineSpecError:
        pointer = " " * self.pos + "^"
        return PipelineSpecError(f"pipeline spec: {msg}\n  {self.text}\n  {pointer}")

    def peek(self) -> str | None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1
        if self.pos >= len(self.text):
            return None
        c = self.text[self.pos]
        return c if c in "{}(),=" else "NAME"

    def take(self, expected: str | None = None) -> str:
        m = _TOKEN.match(self.text, self.pos)
        if not m:
            if self.peek() is None:
                want = f"'{expected}'" if expected is not None else "more"
                raise self.error(f"expected {want}, found the end of the spec")
            raise self.error("unexpected character")
        tok = m.group(1)
        if expected is not None and tok != expected:
            raise self.error(f"expected '{expected}', found '{tok}'")
        self.pos = m.end()
        return tok

    def value(self) -> str:
        start = self.pos
        while self.pos < len(self.text) and self.text[self.pos] not in ",{}()":
            self.pos += 1
        raw = self.text[start:self.pos].strip()
        if not raw:
            raise self.error("missing option value")
        return raw

    def spec(self, closing: str | None) -> list[Item]:
        items = [self.item()]
        while self.peek() == ",":
            self.take(",")
            items.append(self.item())
        nxt = self.peek()
        if nxt != closing and not (closing is None and nxt is None):
            raise self.error("expected ',' or the end of the spec" if closing is None else f"expected ',' or '{closing}'")
        return items

    def item(self) -> Item:
        if self.peek() != "NAME":
            raise self.error("expected a pass name")
        name = self.take()
        options: dict[str, str] = {}
        if self.peek() == "{":
            self.take("{")
            while self.peek() != "}":
                if self.peek() is None:
                    raise self.error("unclosed '{': expected '}', found the end of the spec")
                if options:
                    self.take(",")
                if self.peek() != "NAME":
                    raise self.error("expected an option name")
                key = self.take()
                self.take("=")
                if key in options:
                    raise self.error(f"option '{key}' given twice")
                options[key] = self.value()
            self.take("}")
        children = None
        if self.peek() == "(":
            self.take("(")
            children = self.spec(")")
            self.take(")")
        return _make_item(name, options, children, self.error)


def _make_item(name: str, options: dict[str, Any], children: list[Item] | None, error) -> Item:  # noqa: ANN001
    if name == "fixpoint":
        if children is None:
            raise error("'fixpoint' needs a group: fixpoint{max-iters=N}(pass,...)")
        unknown = set(options) - {"max-iters"}
        if unknown:
            raise error(f"'fixpoint' has no option '{sorted(unknown)[0]}'. Valid options: max-iters")
        iters = None
        if "max-iters" in options:
            try:
                iters = int(options["max-iters"])
            except ValueError as e:
                raise error(f"max-iters must be an integer, got {options['max-iters']!r}") from e
            if iters < 1:
                raise error("max-iters must be at least 1")
        return Fixpoint(children, iters)
    if children is not None:
        raise error(f"'{name}' is not a group; only fixpoint takes '(...)'")
    if name in NAMED_PIPELINES:
        if options:
            raise error(f"named pipeline '{name}' takes no options")
        return Named(name)
    try:
        cls = get_pass(name)
    except PipelineSpecError as e:
        raise PipelineSpecError(f"{e}; named pipelines: {', '.join(sorted(NAMED_PIPELINES))}") from e
    typed = {k: parse_option_value(cls.Options, k, v, f"pass '{name}'") for k, v in options.items()}
    return Step(name, typed)


class Pipeline:
    """An ordered list of :class:`Step`, :class:`Fixpoint` and :class:`Named` items."""

    def __init__(self, items: list[Item] | None = None) -> None:
        self.items: list[Item] = list(items or [])

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Pipeline) and self.to_spec() == other.to_spec()

    def __repr__(self) -> str:
        return f"Pipeline({self.to_spec()!r})"

    @classmethod
    def parse(cls, text: str) -> "Pipeline":
        """Parse a one-line text spec.

        Raises:
            PipelineSpecError: syntax error (with a caret under the position),
                unknown pass, unknown option, bad option value.
        """
        if not text or not text.strip():
            raise PipelineSpecError("pipeline spec is empty; give at least one pass, e.g. -p O1")
        return cls(_Parser(text).spec(None))

    @classmethod
    def named(cls, name: str) -> "Pipeline":
        """The expansion of a named pipeline.

        Raises:
            PipelineSpecError: unknown name, listing the named pipelines.
        """
        if name not in NAMED_PIPELINES:
            raise PipelineSpecError(
                f"unknown named pipeline '{name}'; named pipelines: {', '.join(sorted(NAMED_PIPELINES))}"
            )
        return Named(name).expand()

    def to_spec(self) -> str:
        """The one-line text spec; ``Pipeline.parse(p.to_spec()).to_spec() == p.to_spec()``."""
        return ",".join(item.to_spec() for item in self.items)

    def expanded(self) -> "Pipeline":
        """A copy with every named-pipeline reference replaced by its items."""
        out: list[Item] = []
        for item in self.items:
            if isinstance(item, Named):
                out.extend(item.expand().expanded().items)
            elif isinstance(item, Fixpoint):
                out.append(Fixpoint(Pipeline(item.steps).expanded().items, item.max_iters))
            else:
                out.append(item)
        return Pipeline(out)

    # YAML -------------------------------------------------------------
    def to_data(self) -> list[Any]:
        """Plain data for YAML: a list of names, ``{name: {options}}`` and
        ``{fixpoint: {max-iters: N, steps: [...]}}``."""
        return [_item_data(i) for i in self.items]

    def to_yaml(self) -> str:
        """YAML text: ``pipeline: [...]`` (see :meth:`to_data`)."""
        return yaml.safe_dump({"pipeline": self.to_data()}, sort_keys=False)

    @classmethod
    def from_data(cls, data: Any, where: str = "pipeline") -> "Pipeline":
        """Inverse of :meth:`to_data`.

        Raises:
            PipelineSpecError: wrong structure, unknown pass or option.
        """
        if not isinstance(data, list):
            raise PipelineSpecError(f"{where} must be a list of passes, got {type(data).__name__}")
        return cls([_data_item(entry, f"{where}[{i}]") for i, entry in enumerate(data)])

    @classmethod
    def from_yaml(cls, path_or_text: str | Path) -> "Pipeline":
        """Read a YAML pipeline file (or YAML text) with a top-level ``pipeline:`` list.

        Raises:
            PipelineSpecError: missing file, invalid YAML, wrong structure.
        """
        text = str(path_or_text)
        p = Path(text)
        if "\n" not in text and (p.suffix in (".yaml", ".yml") or p.exists()):
            if not p.is_file():
                raise PipelineSpecError(f"pipeline file '{p}' does not exist")
            text = p.read_text()
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise PipelineSpecError(f"pipeline YAML does not parse: {e}") from e
        if not isinstance(data, dict) or "pipeline" not in data:
            raise PipelineSpecError("pipeline YAML needs a top-level 'pipeline:' list")
        return cls.from_data(data["pipeline"])


def _item_data(item: Item) -> Any:
    if isinstance(item, Step):
        return {item.name: dict(item.options)} if item.options else item.name
    if isinstance(item, Named):
        return item.name
    body: dict[str, Any] = {}
    if item.max_iters is not None:
        body["max-iters"] = item.max_iters
    body["steps"] = [_item_data(s) for s in item.steps]
    return {"fixpoint": body}


def _data_item(entry: Any, where: str) -> Item:
    def error(msg: str) -> PipelineSpecError:
        return PipelineSpecError(f"{where}: {msg}")

    if isinstance(entry, str):
        return _make_item(entry, {}, None, error)
    if isinstance(entry, dict) and len(entry) == 1:
        name, body = next(iter(entry.items()))
        body = body or {}
        if not isinstance(body, dict):
            raise error(f"options of '{name}' must be a mapping")
        if name == "fixpoint":
            steps = body.get("steps")
            children = [_data_item(s, f"{where}.steps[{i}]") for i, s in enumerate(steps or [])]
            opts = {k: v for k, v in body.items() if k != "steps"}
            if not children:
                raise error("fixpoint needs a non-empty 'steps' list")
            return _make_item(name, opts, children, error)
        return _make_item(str(name), body, None, error)
    raise error(f"expected a pass name or {{name: options}}, got {entry!r}")
