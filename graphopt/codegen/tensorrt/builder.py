"""Build a serialized TensorRT engine from an ONNX file.

One builder for TensorRT and TensorRT for RTX (the module is passed in as a
:class:`~graphopt.codegen.tensorrt.backend.Backend`; the flavours differ
only in :func:`~graphopt.codegen.tensorrt.backend.configure`). The steps
follow TensorRT's Python API ("The Python API" chapter of the developer
guide): ``Builder`` -> network -> ``OnnxParser.parse_from_file`` ->
``IBuilderConfig`` (optimization profile, workspace pool limit, timing
cache, precision) -> ``build_serialized_network``. The engine file and its
JSON sidecar ``OUT.engine.json`` are written atomically (a temporary file
beside the target, then ``os.replace``): a failed build leaves no partial
file, and an existing engine stays as it was.

ONNX ``Attention`` (opset 23) imports as TensorRT's ``IAttention``; a build
fails when no fused kernel takes its shapes and types (e.g. FP32 with small
heads) unless the attention is marked decomposable, which
:attr:`BuildOptions.decompose_attention` does (the default; TensorRT then
decomposes into MatMul/Softmax where it has no fused kernel).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from graphopt.codegen.tensorrt.backend import Backend, Precision, configure, load_backend, make_logger
from graphopt.codegen.tensorrt.compat import parse_errors, parser_issues
from graphopt.codegen.tensorrt.profiles import Profile, ShapeRange, make_profile
from graphopt.codegen.tensorrt.support import check_model
from graphopt.errors import CodegenError, InputError, LoadError

__all__ = ["BuildOptions", "EngineBuild", "build_engine", "sidecar_path", "sha256_file"]

log = logging.getLogger(__name__)

_FP8 = {onnx.TensorProto.FLOAT8E4M3FN, onnx.TensorProto.FLOAT8E4M3FNUZ, onnx.TensorProto.FLOAT8E5M2,
        onnx.TensorProto.FLOAT8E5M2FNUZ}
_INT8 = {onnx.TensorProto.INT8, onnx.TensorProto.UINT8}
_UMASK = os.umask(0o022)
os.umask(_UMASK)
_INT4 = {onnx.TensorProto.INT4, onnx.TensorProto.UINT4}


@dataclass
class BuildOptions:
    """How to build (the ``graphopt build-engine`` options).

    Attributes:
        shapes: input name -> min/opt/max (``--shapes``); inputs not named
            get ranges from their dim names (:mod:`.profiles`).
        fp16, bf16: allow FP16/BF16 kernels (TensorRT only; TensorRT for
            RTX is strongly typed and refuses them with an explanation).
        workspace_mib: limit of the builder's workspace memory pool in MiB
            (``MemoryPoolType.WORKSPACE``); None leaves TensorRT's default
            (the device's memory).
        timing_cache: file read before the build (when it exists) and written
            after it; None for no cache.
        compute_capabilities: TensorRT for RTX targets (``SM86``...).
        decompose_attention: mark imported attention decomposable.
        flavour: ``tensorrt-rtx`` / ``tensorrt`` / None (first importable).
    """

    shapes: dict[str, ShapeRange] | None = None
    fp16: bool = False
    bf16: bool = False
    workspace_mib: int | None = None
    timing_cache: Path | None = None
    compute_capabilities: list[str] = field(default_factory=list)
    decompose_attention: bool = True
    flavour: str | None = None


@dataclass
class EngineBuild:
    """A built engine: where it is and its sidecar's content (:attr:`info`)."""

    engine: Path
    sidecar: Path
    info: dict[str, Any]


def sidecar_path(engine: str | Path) -> Path:
    """``OUT.engine`` -> ``OUT.engine.json``."""
    engine = Path(engine)
    return engine.with_name(engine.name + ".json")


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _write_atomic(path: Path, data: Any) -> Path:
    """Write ``data`` (bytes-like) to a temporary file beside ``path``, fsync
    it, and return the temporary path (the caller renames it)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; a plain file's mode instead
        with os.fdopen(fd, "wb") as f:
            f.write(memoryview(data))
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        os.unlink(tmp)
        raise
    return Path(tmp)


def _quantized_types(model: onnx.ModelProto) -> set[str]:
    """Quantized types the model's Q/DQ nodes use: ``int8``, ``fp8``, ``int4``."""
    inits = {t.name: t.data_type for t in model.graph.initializer}
    found: set[str] = set()
    for node in model.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        types = set()
        for a in node.attribute:
            if a.name == "output_dtype" and a.i:
                types.add(a.i)
        if node.op_type == "QuantizeLinear" and len(node.input) > 2 and node.input[2] in inits:
            types.add(inits[node.input[2]])
        if node.op_type == "DequantizeLinear":
            types |= {inits[n] for n in node.input[:1] + node.input[2:3] if n in inits}
        if not types:
            types.add(onnx.TensorProto.UINT8 if node.op_type == "QuantizeLinear" else onnx.TensorProto.INT8)
        found |= {"int8" for t in types if t in _INT8} | {"fp8" for t in types if t in _FP8}
        found |= {"int4" for t in types if t in _INT4}
    return found


def _float_types(model: onnx.ModelProto) -> list[str]:
    """Floating-point element types of the model's initializers and inputs
    (what a strongly typed build computes in)."""
    names = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.FLOAT16: "float16",
             onnx.TensorProto.BFLOAT16: "bfloat16", onnx.TensorProto.DOUBLE: "float64"}
    seen = {t.data_type for t in model.graph.initializer}
    seen |= {v.type.tensor_type.elem_type for v in model.graph.input if v.type.HasField("tensor_type")}
    return sorted(names[t] for t in seen if t in names)


def _mark_attention_decomposable(backend: Backend, network: Any) -> int:
    """Set ``IAttention.decomposable`` on every attention the parser made;
    returns how many (0 when the flavour has no IAttention)."""
    trt = backend.trt
    kind = getattr(trt.LayerType, "ATTENTION_INPUT", None)
    boundary = getattr(trt, "IAttentionBoundaryLayer", None)
    if kind is None or boundary is None:
        return 0
    count = 0
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if layer.type == kind:
            layer.__class__ = boundary  # the Python API's documented downcast of an ILayer
            layer.attention.decomposable = True
            count += 1
    return count


def _timing_cache(backend: Backend, config: Any, path: Path | None) -> tuple[Any, dict[str, Any] | None]:
    """Load (or create) the timing cache and attach it to ``config``."""
    if path is None:
        return None, None
    path = Path(path)
    data = path.read_bytes() if path.is_file() else b""
    with warnings.catch_warnings():  # TensorRT for RTX: deprecated no-ops (it compiles kernels when run)
        warnings.simplefilter("ignore", DeprecationWarning)
        cache = config.create_timing_cache(data)
        if cache is None or not config.set_timing_cache(cache, False):
            raise InputError(f"timing cache {path} does not match TensorRT {backend.version}; delete it or give "
                             "another --timing-cache file")
    info = {"path": str(path), "loaded_bytes": len(data), "reused": bool(data),
            "effective": backend.timing_cache_effective}
    if not backend.timing_cache_effective:
        info["note"] = ("TensorRT for RTX reads and writes the cache, but its timing-cache operations are no-ops "
                        "(deprecated since TensorRT-RTX 1.2): kernels are compiled when the engine first runs")
    return cache, info


def build_engine(model_path: str | Path, engine_path: str | Path, options: BuildOptions | None = None,
                 backend: Backend | None = None) -> EngineBuild:
    """Build ``model_path`` (ONNX) into a serialized engine at ``engine_path``
    plus the sidecar ``engine_path + ".json"``.

    The sidecar records: ``flavour`` and ``tensorrt_version``; ``profiles``
    (a list with one ``{input: {min, opt, max, origin}}``, shapes in
    elements); ``precision`` (``mode``, ``flags``, the model's float
    ``types``, ``quantized`` Q/DQ types, ``compute_capabilities``);
    ``workspace_mib``; ``timing_cache`` (path, bytes loaded and written,
    whether it was reused and whether the flavour uses it);
    ``attention_decomposable``; ``source_model`` (path, bytes, sha256 of the
    ``.onnx`` file); ``build_seconds`` (``build_serialized_network`` only);
    ``engine_bytes``.

    Raises:
        InputError: bad options (shapes, precision for the flavour, the
            engine path is the model's).
        LoadError: the model cannot be read.
        BackendUnavailableError: neither TensorRT flavour is installed.
        CodegenError: the parser rejected nodes (each named, with the
            reason), or the builder failed (TensorRT's messages included).
    """
    options = options or BuildOptions()
    model_path, engine_path = Path(model_path), Path(engine_path)
    if not model_path.is_file():
        raise InputError(f"model {model_path} does not exist")
    if engine_path.resolve() == model_path.resolve() or sidecar_path(engine_path).resolve() == model_path.resolve():
        raise InputError(f"the engine {engine_path} would overwrite the input model; choose another -o path")
    if not engine_path.parent.is_dir():
        raise InputError(f"the engine's folder {engine_path.parent} does not exist")
    if options.workspace_mib is not None and options.workspace_mib <= 0:
        raise InputError(f"--workspace must be a positive number of MiB, got {options.workspace_mib}")
    try:
        model = onnx.load(str(model_path), load_external_data=False)
    except Exception as e:  # noqa: BLE001 - protobuf raises several types
        raise LoadError(f"cannot read {model_path} as ONNX: {e}") from e
    profile = make_profile(model, options.shapes)
    backend = backend or load_backend(options.flavour)
    trt = backend.trt
    logger = make_logger(backend)
    builder = trt.Builder(logger)
    quantized = _quantized_types(model)
    network, config, precision = configure(backend, builder, fp16=options.fp16, bf16=options.bf16,
                                           quantized=quantized, compute_capabilities=options.compute_capabilities)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(model_path)):
        issues = parse_errors(parser, list(model.graph.node), check_model(model))
        listed = parser_issues(backend, model_path, model) or issues  # every failing node, not only the first
        lines = "\n  ".join(i.describe() for i in listed)
        raise CodegenError(f"TensorRT's ONNX parser ({backend.flavour} {backend.version}) rejected {model_path}:\n"
                           f"  {lines}\nrun `graphopt check-trt {model_path}` for the whole report")
    decomposable = _mark_attention_decomposable(backend, network) if options.decompose_attention else 0
    _add_profile(trt, builder, network, config, profile)
    if options.workspace_mib is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_mib << 20)
    cache, cache_info = _timing_cache(backend, config, options.timing_cache)
    start = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - start
    if serialized is None or serialized.nbytes == 0:
        said = "\n  ".join(logger.errors[-5:]) or "(no message)"
        raise CodegenError(f"TensorRT's builder ({backend.flavour} {backend.version}) failed on {model_path}; "
                           f"it said:\n  {said}")
    info = _sidecar(backend, model_path, model, profile, precision, quantized, options, cache_info,
                    decomposable, seconds, serialized.nbytes)
    tmp_files = []
    try:
        tmp_files.append((_write_atomic(engine_path, serialized), engine_path))
        if cache is not None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                cache_bytes = cache.serialize()
            cache_path = Path(options.timing_cache)
            info["timing_cache"]["written_bytes"] = cache_bytes.nbytes
            tmp_files.append((_write_atomic(cache_path, cache_bytes), cache_path))
        side = sidecar_path(engine_path)
        tmp_files.append((_write_atomic(side, json.dumps(info, indent=2).encode() + b"\n"), side))
        for tmp, final in tmp_files:
            os.replace(tmp, final)
    finally:
        for tmp, _ in tmp_files:
            if tmp.exists():
                tmp.unlink()
    log.info("built %s (%d bytes) in %.2f s", engine_path, info["engine_bytes"], seconds)
    return EngineBuild(engine_path, sidecar_path(engine_path), info)


def _add_profile(trt: Any, builder: Any, network: Any, config: Any, profile: Profile) -> None:
    names = [network.get_input(i).name for i in range(network.num_inputs)]
    missing = [n for n in names if n not in profile.shapes]
    if missing:
        raise CodegenError(f"the parsed network has inputs {missing} that the ONNX graph does not declare")
    opt = builder.create_optimization_profile()
    for name in names:
        r = profile.shapes[name]
        opt.set_shape(name, trt.Dims(list(r.min)), trt.Dims(list(r.opt)), trt.Dims(list(r.max)))
    if config.add_optimization_profile(opt) < 0:
        raise CodegenError(f"TensorRT refused the optimization profile {profile.to_dict()}")


def _sidecar(backend: Backend, model_path: Path, model: onnx.ModelProto, profile: Profile, precision: Precision,
             quantized: set[str], options: BuildOptions, cache_info: dict[str, Any] | None, decomposable: int,
             seconds: float, nbytes: int) -> dict[str, Any]:
    from graphopt import __version__

    return {
        "format": "graphopt.tensorrt-engine/1",
        "flavour": backend.flavour,
        "tensorrt_version": backend.version,
        "graphopt_version": __version__,
        "profiles": [profile.to_dict()],
        "precision": {"mode": precision.mode, "flags": precision.flags, "types": _float_types(model),
                      "quantized": sorted(quantized), "compute_capabilities": precision.compute_capabilities},
        "workspace_mib": options.workspace_mib,
        "timing_cache": cache_info,
        "attention_decomposable": decomposable,
        "source_model": {"path": str(model_path), "bytes": model_path.stat().st_size,
                         "sha256": sha256_file(model_path)},
        "build_seconds": round(seconds, 3),
        "engine_bytes": nbytes,
    }
