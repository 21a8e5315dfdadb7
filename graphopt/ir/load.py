"""Loading ONNX models into graphopt's IR, with load-time validation.

Weights stay lazy: tensors stored as ONNX external data become memory-mapped
``ExternalTensor`` objects and are read only when a pass asks for their values.
Every failure is a :class:`~graphopt.errors.LoadError` that names the problem and
says what to do.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import onnx
import onnx_ir as ir
from graphopt.ir.edit import subgraphs
from google.protobuf.message import DecodeError
from onnx import external_data_helper

from graphopt.errors import LoadError
from graphopt.ir.reader import deserialize_model as fast_deserialize
from graphopt.ir.tensors import cached_tensor

__all__ = ["load", "load_proto", "validate_model", "structure_problem", "deserialize", "drop_initializer_inputs"]

_LOG = logging.getLogger(__name__)


_A = onnx.AttributeProto
_TENSOR_KINDS = frozenset({_A.TENSOR, _A.TENSORS, _A.GRAPH, _A.GRAPHS})
"""Attribute types that hold tensors, directly or in a subgraph."""


def _node_tensors(node: onnx.NodeProto) -> Iterator[onnx.TensorProto]:
    """Yield the tensors held in a node's attributes, recursing into subgraphs
    (by attribute type; a malformed attribute of another type holding one
    too is looked at as well)."""
    for attr in node.attribute:
        if attr.type not in _TENSOR_KINDS and attr.type != _A.UNDEFINED:
            continue
        if attr.HasField("t"):
            yield attr.t
        yield from attr.tensors
        if attr.HasField("g"):
            yield from _graph_tensors(attr.g)
        for sub in attr.graphs:
            yield from _graph_tensors(sub)


def _graph_tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """Yield a graph's initializers and attribute tensors, subgraphs included."""
    yield from graph.initializer
    for node in graph.node:
        yield from _node_tensors(node)


def _iter_tensors(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """Yield every TensorProto in the model: initializers, Constant/attribute
    tensors, in the main graph, all subgraphs and all model-local functions."""
    yield from _graph_tensors(model.graph)
    for func in model.functions:
        for node in func.node:
            yield from _node_tensors(node)


def _tensor_nbytes(tensor: onnx.TensorProto) -> int | None:
    """Bytes a tensor's shape and dtype call for, or None when unknown (strings)."""
    try:
        bits = ir.DataType(tensor.data_type).bitwidth
    except (TypeError, ValueError):
        return None
    count = 1
    for dim in tensor.dims:
        count *= int(dim)
    return (count * bits + 7) // 8


def _check_external_data(model: onnx.ModelProto, base_dir: Path) -> bool:
    """Check that every external-data reference stays inside ``base_dir`` and
    points at bytes that exist; return whether the model has any.

    Raises:
        LoadError: absolute location, a location with ``..`` or one resolving
            outside the model's folder, a missing data file, or an
            offset/length past the end of the file.
    """
    base = base_dir.resolve()
    sizes: dict[Path, int] = {}
    external = onnx.TensorProto.EXTERNAL
    for tensor in _iter_tensors(model):
        if tensor.data_location != external:  # external_data_helper.uses_external_data, without HasField
            continue
        info = external_data_helper.ExternalDataInfo(tensor)
        location = info.location
        if not location:
            raise LoadError(
                f"initializer '{tensor.name}' is stored as external data but has no location; "
                "re-export the model or re-save it with onnx.save(..., save_as_external_data=True)"
            )
        loc = Path(location)
        if loc.is_absolute() or location.startswith(("/", "\\")) or (len(location) > 1 and location[1] == ":"):
            raise LoadError(
                f"initializer '{tensor.name}' points at external data by an absolute path "
                f"('{location}'); external data must lie beside the model: move the file into "
                f"'{base}' and store a relative location"
            )
        if ".." in loc.parts or ".." in location.replace("\\", "/").split("/"):
            raise LoadError(
                f"initializer '{tensor.name}' has external-data location '{location}', which "
                f"escapes the model's folder '{base}' ('..' is not allowed); move the data file "
                "beside the model"
            )
        path = (base / loc).resolve()
        if not path.is_relative_to(base):
            raise LoadError(
                f"initializer '{tensor.name}' has external-data location '{location}', which "
                f"resolves outside the model's folder '{base}' (through a link?); copy the data "
                "file beside the model"
            )
        if path not in sizes:
            if not path.is_file():
                raise LoadError(
                    f"external-data file '{location}' of initializer '{tensor.name}' is missing "
                    f"(looked in '{base}'); copy the model's .data file beside the .onnx file"
                )
            sizes[path] = path.stat().st_size
        offset = int(info.offset or 0)
        needed = _tensor_nbytes(tensor)
        length = info.length
        if length is None:
            # No length: the tensor's shape and dtype say how many bytes it reads.
            length = needed if needed is not None else max(sizes[path] - offset, 0)
        elif needed is not None and int(length) < needed:
            raise LoadError(
                f"initializer '{tensor.name}' declares {int(length)} bytes of external data in "
                f"'{location}', but its shape and dtype need {needed} bytes: the model is "
                "malformed: re-export it"
            )
        if offset + int(length) > sizes[path]:
            raise LoadError(
                f"initializer '{tensor.name}' reads bytes {offset}..{offset + int(length)} of "
                f"'{location}', but that file holds only {sizes[path]} bytes: the data file is "
                "truncated or belongs to another model"
            )
    return bool(sizes)


def _check_versions(model: onnx.ModelProto, where: str) -> None:
    """Check ir_version and the default-domain opset against what the installed
    onnx package supports (``onnx.IR_VERSION``, ``onnx.defs.onnx_opset_version()``).

    Raises:
        LoadError: missing or unsupported versions.
    """
    if model.ir_version > onnx.IR_VERSION:
        raise LoadError(
            f"{where}: model has ir_version {model.ir_version}, newer than the {onnx.IR_VERSION} this "
            f"onnx {onnx.__version__} supports; upgrade onnx or re-export with an older IR"
        )
    if not model.opset_import:
        raise LoadError(
            f"{where}: model declares no opset_import; the file is truncated or was not written by an "
            "ONNX exporter: re-export it"
        )
    latest = onnx.defs.onnx_opset_version()
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx") and not 1 <= opset.version <= latest:
            raise LoadError(
                f"{where}: model imports opset {opset.version} of the default ONNX domain; onnx "
                f"{onnx.__version__} supports opsets 1..{latest}: convert it with "
                "onnx.version_converter or upgrade onnx"
            )


_PROTOBUF_LIMIT = 2**31 - 1
"""Largest serialized protobuf message (bytes) that protobuf decodes."""


def _check_names(graph: onnx.GraphProto, where: str, top: bool = True) -> None:
    """Check a graph (and its subgraphs) for outputs and single definitions:
    the main graph declares at least one output and lists each once, and no
    value is defined twice (two producing nodes, or a node writing a graph
    input or an initializer; an initializer listed among the inputs, as IR 3
    required, is fine).

    Raises:
        LoadError: naming the value and its definitions.
    """
    if top and not graph.output:
        raise LoadError(f"{where}: the graph declares no outputs, so there is nothing to compute or optimize; "
                        "re-export the model with its outputs")
    seen_out: set[str] = set()
    for out in graph.output if top else ():
        if out.name in seen_out:
            raise LoadError(f"{where}: graph output '{out.name}' is listed more than once; list each output once "
                            "(remove the repeated entry from graph.output) or re-export the model")
        seen_out.add(out.name)
    defined: dict[str, str] = {}
    for vi in graph.input:
        defined[vi.name] = f"graph input '{vi.name}'"
    for init in graph.initializer:
        if init.name in defined and defined[init.name].startswith("initializer"):
            raise LoadError(f"{where}: initializer '{init.name}' is defined twice; the model is malformed: "
                            "re-export it")
        defined[init.name] = f"initializer '{init.name}'"
    for node in graph.node:
        for name in node.output:
            if not name:
                continue
            if name in defined:
                raise LoadError(
                    f"{where}: value '{name}' is defined twice (by {defined[name]} and by node "
                    f"{node.op_type}[{node.name or '-'}]); an ONNX graph gives each value one producer: the model "
                    "is malformed: re-export it"
                )
            defined[name] = f"node {node.op_type}[{node.name or '-'}]"
        for attr in node.attribute:
            if attr.type == _A.GRAPH:
                _check_names(attr.g, where, top=False)
            elif attr.type == _A.GRAPHS:
                for sub in attr.graphs:
                    _check_names(sub, where, top=False)


def load_proto(path: str | os.PathLike, *, external_data: bool = False) -> onnx.ModelProto:
    """Read an ONNX ModelProto from ``path`` and check that it is a whole ONNX model.

    Args:
        path: file of a serialized ``onnx.ModelProto`` (protobuf binary).
        external_data: also read external tensors into the proto (only for
            small models; graphopt's IR keeps them memory-mapped instead).

    Raises:
        LoadError: missing file, a directory, an unreadable file, a file over
            protobuf's 2 GiB, a file that does not decode as a ModelProto (not
            ONNX, or truncated), a model without a graph or outputs, an output
            listed twice, a value defined twice.
    """
    return _load_proto(path, external_data)[0]


def _load_proto(path: str | os.PathLike, external_data: bool) -> tuple[onnx.ModelProto, bool]:
    """:func:`load_proto`, and whether the model stores tensors as external data."""
    p = Path(path)
    if not p.exists():
        raise LoadError(f"model file '{p}' does not exist; check the path")
    if not p.is_file():
        raise LoadError(f"'{p}' is not a file; pass the path of an .onnx file")
    size = p.stat().st_size
    if size > _PROTOBUF_LIMIT:  # protobuf cannot decode it; reading it would only cost the memory
        raise LoadError(
            f"'{p}' is {size} bytes, over the 2 GiB that one protobuf message (an .onnx file without external "
            "data) can hold, so it cannot be decoded; models this large keep their weights in external data: "
            "re-export or re-save it with onnx.save(model, path, save_as_external_data=True)"
        )
    try:
        proto = onnx.load(str(p), load_external_data=False)
    except OSError as e:  # unreadable (permissions, a failing disk): not a defect of graphopt
        raise LoadError(f"'{p}' cannot be read ({e.strerror or e}); check the file's permissions (e.g. chmod "
                        "u+r) and that the disk is readable") from e
    except (DecodeError, ValueError, RuntimeError) as e:
        raise LoadError(
            f"'{p}' is not an ONNX model or is truncated ({p.stat().st_size} bytes could not be "
            f"decoded as a ModelProto: {e}); check that the file was copied completely"
        ) from e
    if not proto.HasField("graph") or proto.ir_version <= 0:
        raise LoadError(
            f"'{p}' is not an ONNX model or is truncated: it decodes, but has "
            f"{'no graph' if not proto.HasField('graph') else 'no ir_version'}; check that the "
            "file is a complete .onnx model"
        )
    _check_versions(proto, f"'{p}'")
    _check_names(proto.graph, f"'{p}'")
    has_external = _check_external_data(proto, p.parent)
    if external_data and has_external:
        external_data_helper.load_external_data_for_model(proto, str(p.parent))
    return proto, has_external


def structure_problem(model: ir.Model) -> tuple[str, str] | None:
    """The first structural defect of ``model``, or None when it has none.

    Checked in every graph (main graph, subgraphs, functions), in one walk over
    the nodes and their inputs (O(nodes + edges)):

    * SSA: no two values of a graph share a name (graph inputs, initializers
      and node outputs; ONNX IR spec, "Names within a graph");
    * every value a node reads is produced by a node that is still in a graph,
      or is a graph input or initializer in scope;
    * every graph output is produced (by a node of that graph or as a value in
      scope);
    * acyclic: nodes listed producers-first need no more work; otherwise
      Kahn's algorithm (Kahn 1962) over the graph's own edges, and a cycle is
      named from the nodes left over.

    Returns:
        ``(kind, message)``: kind is ``"ssa"``, ``"undefined"``, ``"output"``
        or ``"cycle"``; the message names the graph, the node (as
        ``Op[name] -> outputs``) and the value.
    """
    graphs: list[tuple[str, object]] = [("main graph", model.graph)]
    graphs += [(f"subgraph '{g.name}'", g) for g in subgraphs(model.graph)]
    graphs += [(f"function '{f.name}'", f) for f in model.functions.values()]
    for where, graph in graphs:
        problem = _graph_problem(where, graph)
        if problem is not None:
            return problem
    return None


def _graph_problem(where: str, graph) -> tuple[str, str] | None:  # noqa: ANN001 - ir.Graph or ir.Function
    # One walk, written for speed: the pass manager runs it after every
    # modifying pass. Edges are only collected (in _cycle) when some node is
    # listed before a producer of its inputs.
    is_function = isinstance(graph, ir.Function)
    inner = graph.graph if is_function else graph
    defined: dict[str, ir.Value] = {}
    owned = list(graph.inputs) if is_function else [*graph.inputs, *graph.initializers.values()]
    for value in owned:
        name = value.name
        if name and defined.setdefault(name, value) is not value:
            what = "as a graph input and as an initializer" if value.is_initializer() else "as two graph inputs"
            return ("ssa", f"the {where} defines value '{name}' twice ({what}); a graph must be in SSA form, "
                           "each value produced once")
    function_inputs = set(map(id, graph.inputs)) if is_function else ()
    seen: set[int] = set()
    in_order = True  # producers listed before consumers: acyclic without more work
    for node in graph:
        node_graph = node.graph
        for value in node.inputs:
            if value is None:
                continue
            producer = value.producer()
            if producer is not None:
                producer_graph = producer.graph
                if producer_graph is node_graph:
                    if in_order and id(producer) not in seen:
                        in_order = False
                    continue
                if producer_graph is not None:
                    continue  # produced in an enclosing graph
            elif value.is_graph_input() or value.is_initializer() or value.graph is not None \
                    or id(value) in function_inputs:
                continue
            return ("undefined", f"node {_describe(node)} in the {where} reads value '{value.name}', which no node, "
                                 "graph input or initializer produces")
        seen.add(id(node))  # after its inputs: a node reading its own output is a cycle
        for value in node.outputs:
            name = value.name
            if name and defined.setdefault(name, value) is not value:
                return ("ssa", f"the {where} defines value '{name}' twice (also as an output of node "
                               f"{_describe(node)}); a graph must be in SSA form, each value produced once")
    for value in graph.outputs:
        producer = value.producer()
        if producer is not None:
            if producer.graph is inner:
                continue
        elif value.is_graph_input() or value.is_initializer() or value.graph is not None:
            continue
        return ("output", f"the {where}'s output '{value.name}' is not produced by any node, graph input or "
                          "initializer of it")
    if in_order:
        return None
    cycle = _cycle(graph)
    if cycle:
        return ("cycle", f"the {where} has a cycle ({' -> '.join(_describe(n) for n in cycle)})")
    return None


def _cycle(graph) -> list[ir.Node]:  # noqa: ANN001 - ir.Graph or ir.Function
    """Nodes on one cycle of ``graph`` (empty when acyclic): Kahn's algorithm
    removes every node not on or behind a cycle; from a node left over, walking
    predecessors that are also left over must revisit a node."""
    by_id = {id(n): n for n in graph}
    indegree = dict.fromkeys(by_id, 0)
    successors: dict[int, list[int]] = {}
    predecessors: dict[int, list[int]] = {}
    for node in graph:
        b = id(node)
        for value in node.inputs:
            producer = None if value is None else value.producer()
            if producer is None or producer.graph is not node.graph:
                continue
            a = id(producer)
            indegree[b] += 1
            successors.setdefault(a, []).append(b)
            predecessors.setdefault(b, []).append(a)
    ready = [n for n, d in indegree.items() if d == 0]
    while ready:
        n = ready.pop()
        for m in successors.get(n, ()):
            indegree[m] -= 1
            if indegree[m] == 0:
                ready.append(m)
    left = {n for n, d in indegree.items() if d > 0}
    if not left:
        return []
    path: list[int] = []
    position: dict[int, int] = {}
    n = next(iter(left))
    while n not in position:
        position[n] = len(path)
        path.append(n)
        n = next(p for p in predecessors[n] if p in left)
    loop = path[position[n]:]
    loop.reverse()  # producers first
    return [by_id[i] for i in loop]


def validate_model(model: ir.Model, source: str = "model") -> None:
    """Check that every graph (main graph, subgraphs, functions) of ``model`` is
    in SSA form, acyclic, that every value a node reads is produced somewhere
    in scope and every graph output is produced (:func:`structure_problem`).

    Raises:
        LoadError: the first problem found, naming the node and value (or the
            nodes on a cycle) and saying to re-export the model.
    """
    problem = structure_problem(model)
    if problem is None:
        return
    kind, message = problem
    advice = "ONNX graphs must be acyclic: re-export the model" if kind == "cycle" else \
        "the model is malformed: re-export it"
    raise LoadError(f"{source}: {message}; {advice}")


def _describe(node: ir.Node) -> str:
    """A short, stable description of a node for error messages."""
    outs = ",".join(v.name or "?" for v in node.outputs)
    return f"{node.op_type}[{node.name or '-'}] -> {outs}"


def load(path: str | os.PathLike) -> ir.Model:
    """Load an ONNX model as a graphopt IR model, weights memory-mapped and lazy.

    Validation (each a ``LoadError`` naming the problem): the file exists and is
    a complete ONNX ModelProto; ``ir_version`` and opsets are within what the
    installed onnx supports; external data lies inside the model's folder (no
    absolute paths, no ``..``) and is long enough; every graph is acyclic and
    every value read is produced.

    Args:
        path: an ``.onnx`` file (protobuf binary), optionally with external data
            files beside it (the ONNX external-data spec).

    Returns:
        The model (``graphopt.ir.Model``); ``model.graph`` is the main graph.
        The source path is recorded in ``model.meta["graphopt.source"]``.

    Raises:
        LoadError: see above.
    """
    p = Path(path)
    proto, has_external = _load_proto(p, False)
    model = deserialize(proto, source=f"'{p}'", validate=False)
    del proto
    if has_external:  # only external tensors read the base folder
        ir.external_data.set_base_dir(model.graph, str(p.parent.resolve()))
    validate_model(model, source=str(p))
    model.meta["graphopt.source"] = str(p.resolve())
    return model


def deserialize(proto: onnx.ModelProto, source: str = "model proto", validate: bool = True) -> ir.Model:
    """Convert an ``onnx.ModelProto`` into an IR model, onnx-ir's warnings
    silenced, then (by default) :func:`validate_model` it. Initializers read
    from the proto become :class:`graphopt.ir.tensors.ProtoTensor` (shape,
    dtype and size computed once).

    Raises:
        LoadError: the proto cannot be represented (malformed), a cycle, or a
            value read but never produced.
    """
    quiet = logging.getLogger("onnx_ir")
    old = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        model = fast_deserialize(proto) or ir.serde.deserialize_model(proto)
    except Exception as e:  # onnx_ir raises plain exceptions on malformed protos
        raise LoadError(f"{source} could not be read into the IR: {e}; the model is malformed") from e
    finally:
        quiet.setLevel(old)
    for graph in [model.graph, *subgraphs(model.graph)]:
        for value in graph.initializers.values():
            if value.const_value is not None:
                value.const_value = cached_tensor(value.const_value)
    if validate:
        validate_model(model, source=source)
    return model


def drop_initializer_inputs(model: ir.Model) -> list[str]:
    """Take the initializers of an IR-version-3 model out of its graph inputs
    and raise its ``ir_version`` to 4.

    IR 3 required every initializer to be listed among the graph inputs; from
    IR 4 on, an initializer that is also a graph input is a default that a
    caller may override, so onnxruntime neither folds it nor fuses through it
    ("Initializer ... appears in graph inputs and will not be treated as
    constant value/weight"), and graphopt's passes treat it as not constant
    (:func:`graphopt.ir.const_tensor`). graphopt writes IR >= 4, so the
    inputs go, as onnxruntime's ``remove_initializer_from_input`` tool does.
    The main graph only (subgraph inputs are formal parameters). Models at
    IR 4 or newer are left alone: there, an initializer input was made
    overridable on purpose.

    Args:
        model: changed in place.

    Returns:
        The names of the inputs dropped (empty when none, or IR >= 4).
    """
    if model.ir_version >= 4:
        return []
    graph = model.graph
    dropped = [v for v in graph.inputs if v.is_initializer()]
    if not dropped:
        return []
    keep = [v for v in graph.inputs if not v.is_initializer()]
    graph.inputs.clear()
    graph.inputs.extend(keep)
    model.ir_version = 4
    return [v.name for v in dropped]
