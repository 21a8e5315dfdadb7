"""The compatibility check run before an engine is built.

With TensorRT (either flavour) installed, its own ONNX parser decides:
``OnnxParser.supports_model_v2`` splits the graph into subgraphs it can and
cannot import (``num_subgraphs``, ``is_subgraph_supported``,
``get_subgraph_nodes``) and records errors with the node index, name and
operator (``ParserError``). Every main-graph node outside the supported
subgraphs that has a reason (a parser error, or the operator table's
verdict) is reported; the rest of an unsupported subgraph only when no node
has one (the parser leaves a failing node's neighbours out too).

Without TensorRT, the pure-Python check of
:mod:`graphopt.codegen.tensorrt.support` (onnx-tensorrt's operator table)
answers instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from graphopt.codegen.tensorrt.backend import Backend, load_backend, make_logger
from graphopt.codegen.tensorrt.support import Issue, check_model, table
from graphopt.errors import BackendUnavailableError

__all__ = ["CheckReport", "check", "parser_issues", "parse_errors"]


@dataclass
class CheckReport:
    """The result of :func:`check`.

    Attributes:
        issues: what will fail, per node (empty: the model imports).
        checker: ``"tensorrt-rtx 1.7.1.116 parser"`` or
            ``"operators.md (TensorRT 10.15)"``.
        table_issues: the operator table's verdict (always computed; with a
            parser it is informational, the parser being authoritative).
    """

    issues: list[Issue] = field(default_factory=list)
    checker: str = ""
    table_issues: list[Issue] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.issues

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"ok": self.ok, "checker": self.checker, "issues": [i.to_dict() for i in self.issues],
                "table_issues": [i.to_dict() for i in self.table_issues]}


def parse_errors(parser: Any, nodes: list[onnx.NodeProto], known: list[Issue] | None = None) -> list[Issue]:
    """The errors an ``OnnxParser`` recorded, as issues naming their nodes
    (``ParserError.node()`` is the main-graph index; -1 for none)."""
    by_index = {i.index: i for i in known or [] if i.graph == "main" and i.index is not None}
    out = []
    for k in range(parser.num_errors):
        e = parser.get_error(k)
        index = e.node()
        code = getattr(e.code(), "name", str(e.code()))
        text = str(e.desc()).strip()
        desc = code if text.lower() in ("", "false", "true") else f"{code}: {text}"
        if 0 <= index < len(nodes):
            node = nodes[index]
            op = f"{node.domain}::{node.op_type}" if node.domain not in ("", "ai.onnx") else node.op_type
            reason = f"{by_index[index].reason} (parser: {desc})" if index in by_index else f"parser: {desc}"
            out.append(Issue(node.name, op, reason, "parser", index))
        else:
            out.append(Issue(None, str(e.node_operator() or ""), f"parser: {desc}", "parser"))
    return out


def parser_issues(backend: Backend, path: str | Path, model: onnx.ModelProto | None = None) -> list[Issue]:
    """Ask the installed parser which nodes of the model at ``path`` it
    cannot import (``supports_model_v2``, which reads external data
    relative to ``path``).

    Returns:
        One issue per main-graph node outside every supported subgraph, in
        graph order, plus parser errors tied to no node.
    """
    trt = backend.trt
    model = model if model is not None else onnx.load(str(path), load_external_data=False)
    nodes = list(model.graph.node)
    logger = make_logger(backend)
    builder = trt.Builder(logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if parser.supports_model_v2(Path(path).read_bytes(), str(path)):
        return []
    table_issues = check_model(model)
    errors = parse_errors(parser, nodes, table_issues)
    supported: set[int] = set()
    for k in range(parser.num_subgraphs):
        if parser.is_subgraph_supported(k):
            supported |= set(parser.get_subgraph_nodes(k))
    by_index = {i.index: i for i in errors if i.index is not None}
    from_table = {i.index: i for i in table_issues if i.graph == "main" and i.index is not None}
    outside = [k for k in range(len(nodes)) if k not in supported]
    # The nodes with a reason (a parser error, or the table's) are the ones that fail; the parser also leaves
    # their neighbours out of its supported subgraphs, so those are listed only when no node has a reason.
    named = [k for k in outside if k in by_index or k in from_table]
    out = []
    for index in named or outside:
        node = nodes[index]
        if index in by_index:
            out.append(by_index[index])
        elif index in from_table:
            t = from_table[index]
            out.append(Issue(t.node, t.op_type, t.reason, "parser", index))
        else:
            op = f"{node.domain}::{node.op_type}" if node.domain not in ("", "ai.onnx") else node.op_type
            out.append(Issue(node.name, op, "outside every subgraph TensorRT's parser supports (it gave no reason)",
                             "parser", index))
    out.extend(i for i in errors if i.index is None)
    if not out:  # unsupported, yet every node is in a supported subgraph: say what the parser said
        out.append(Issue(None, "", "TensorRT's parser does not support the model as a whole", "parser"))
    return out


def check(path: str | Path, backend: Backend | None | str = "auto") -> CheckReport:
    """Will TensorRT import the model at ``path``?

    Args:
        path: an ``.onnx`` file (external data beside it, as ONNX lays out).
        backend: a :class:`Backend`; ``"auto"`` to use TensorRT if one
            imports and the operator table otherwise; None for the table only.

    Returns:
        A :class:`CheckReport` (``ok`` when nothing is reported).
    """
    model = onnx.load(str(path), load_external_data=False)
    table_issues = check_model(model)
    if backend == "auto":
        try:
            backend = load_backend()
        except BackendUnavailableError:
            backend = None
    if backend is None:
        return CheckReport(table_issues, f"operators.md (TensorRT {table()['tensorrt_version']})", table_issues)
    assert isinstance(backend, Backend)
    issues = parser_issues(backend, path, model)
    return CheckReport(issues, f"{backend.flavour} {backend.version} parser", table_issues)
