"""Finding TensorRT, and the one place where TensorRT and TensorRT for RTX differ.

Both packages expose the same Python API for what graphopt uses
(``Builder``, ``OnnxParser``, ``IBuilderConfig``, optimization profiles,
``build_serialized_network``, ``Runtime``); graphopt writes its builder once
against that API and passes the module object in. They differ in
(TensorRT and TensorRT-RTX Python API references):

- precision: TensorRT builds weakly typed networks by default and takes
  ``BuilderFlag.FP16`` / ``BF16`` (and ``INT8`` / ``FP8`` for explicit Q/DQ);
  TensorRT for RTX builds strongly typed networks only
  (``NetworkDefinitionCreationFlag.STRONGLY_TYPED``; it has no precision
  flags): each tensor keeps the type the ONNX model gives it;
- target hardware: TensorRT builds for the GPU it runs on (it needs one);
  TensorRT for RTX compiles ahead of time on a CPU, by default for compute
  capabilities 8.0, 8.6, 8.9 and 12.0, or for those set through
  ``IBuilderConfig.set_compute_capability``;
- the timing cache: TensorRT reuses kernel timings from it; in TensorRT for
  RTX (since 1.2) its operations are documented no-ops.

Both are imported lazily, only when an engine is asked for.
"""

from __future__ import annotations

import importlib
import logging
import warnings
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from graphopt.errors import BackendUnavailableError, InputError

__all__ = ["Backend", "load_backend", "configure", "make_logger", "FLAVOURS", "INSTALL_HINT", "Precision"]

FLAVOURS: dict[str, str] = {"tensorrt-rtx": "tensorrt_rtx", "tensorrt": "tensorrt"}
"""Flavour name -> Python module, in the order :func:`load_backend` tries them."""

INSTALL_HINT = ("pip install 'graphopt[trt-rtx]' (TensorRT for RTX, from PyPI: builds engines on a CPU), or "
                "pip install 'graphopt[tensorrt]' with NVIDIA's package index (TensorRT: needs a GPU to build)")


@dataclass(frozen=True)
class Backend:
    """An imported TensorRT flavour.

    Attributes:
        trt: the module (``tensorrt`` or ``tensorrt_rtx``).
        flavour: ``"tensorrt"`` or ``"tensorrt-rtx"``.
        version: the module's ``__version__``.
    """

    trt: ModuleType
    flavour: str
    version: str

    @property
    def strongly_typed_only(self) -> bool:
        """True for TensorRT for RTX (no precision flags)."""
        return self.flavour == "tensorrt-rtx"

    @property
    def timing_cache_effective(self) -> bool:
        """False for TensorRT for RTX, whose timing-cache calls are no-ops."""
        return self.flavour != "tensorrt-rtx"


def load_backend(flavour: str | None = None) -> Backend:
    """Import TensorRT for RTX or TensorRT.

    Args:
        flavour: ``"tensorrt-rtx"``, ``"tensorrt"``, or None for the first
            one importable (RTX first: it is the one that builds on a CPU).

    Raises:
        BackendUnavailableError: neither (or not the one asked for) imports;
            the message gives the install line.
        InputError: an unknown flavour.
    """
    if flavour is not None and flavour not in FLAVOURS:
        raise InputError(f"unknown TensorRT flavour '{flavour}'; choose one of: {', '.join(FLAVOURS)}")
    names = [flavour] if flavour else list(FLAVOURS)
    reasons = []
    for name in names:
        try:
            module = importlib.import_module(FLAVOURS[name])
        except ImportError as e:  # also OSError-like failures of the native libraries surface as ImportError
            reasons.append(f"{FLAVOURS[name]}: {e}")
            continue
        return Backend(module, name, str(getattr(module, "__version__", "unknown")))
    raise BackendUnavailableError(
        f"building a TensorRT engine needs TensorRT for RTX or TensorRT, and neither imports "
        f"({'; '.join(reasons)}). Install one: {INSTALL_HINT}. Without either, --target tensorrt still writes "
        "the TensorRT-ready ONNX model"
    )


@dataclass
class Precision:
    """What the builder was told about precision (recorded in the sidecar).

    Attributes:
        mode: ``"strongly-typed"`` (tensor types from the ONNX model) or
            ``"weakly-typed"`` (TensorRT picks kernels among the enabled types).
        flags: builder flags set (``fp16``, ``bf16``, ``int8``, ``fp8``).
        compute_capabilities: RTX target compute capabilities (``SM86``...),
            empty for the builder's default.
    """

    mode: str
    flags: list[str] = field(default_factory=list)
    compute_capabilities: list[str] = field(default_factory=list)


def configure(backend: Backend, builder: Any, *, fp16: bool, bf16: bool, quantized: set[str],
              compute_capabilities: list[str] | None) -> tuple[Any, Any, Precision]:
    """The one function where the flavours differ: create the network and
    the builder config with the flavour's precision and hardware settings.

    Args:
        backend: the flavour.
        builder: its ``Builder``.
        fp16, bf16: ask TensorRT to allow FP16/BF16 kernels (weakly typed).
        quantized: quantized types the model's Q/DQ nodes use (``int8``,
            ``fp8``); TensorRT gets the matching flags, RTX needs none
            (strongly typed Q/DQ).
        compute_capabilities: RTX targets, e.g. ``["SM86", "SM89"]``.

    Returns:
        ``(network, config, precision)``.

    Raises:
        InputError: FP16/BF16 asked of TensorRT for RTX (strongly typed: it
            has no such flags), compute capabilities asked of TensorRT, or
            an unknown compute capability.
    """
    trt = backend.trt
    if backend.strongly_typed_only:
        if fp16 or bf16:
            raise InputError(
                "TensorRT for RTX builds strongly typed networks only: every tensor keeps the type the ONNX model "
                "gives it, and there are no FP16/BF16 builder flags. Give it a model whose weights and activations "
                "are already float16/bfloat16 (make one with `graphopt quantize IN -o OUT --float fp16`, or "
                "--float bf16), or build with TensorRT "
                "(pip install 'graphopt[tensorrt]'), where --fp16/--bf16 set the builder flags")
        network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
        config = builder.create_builder_config()
        members = trt.ComputeCapability.__members__
        chosen = [c.upper() for c in compute_capabilities or []]
        unknown = [c for c in chosen if c not in members or c in ("NONE",)]
        if unknown:
            known = ", ".join(m for m in members if m not in ("NONE",))
            raise InputError(f"unknown compute capability {', '.join(unknown)}; TensorRT for RTX {backend.version} "
                             f"knows: {known}")
        if chosen:
            config.num_compute_capabilities = len(chosen)
            for i, name in enumerate(chosen):
                config.set_compute_capability(members[name], i)
        return network, config, Precision("strongly-typed", [], chosen)
    if compute_capabilities:
        raise InputError("--compute-capability is a TensorRT for RTX option; TensorRT builds for the GPU it runs on")
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    config = builder.create_builder_config()
    flags = [name for name, on in (("fp16", fp16), ("bf16", bf16)) if on] + sorted(quantized & {"int8", "fp8"})
    with warnings.catch_warnings():  # TensorRT 10.12+ deprecates weak typing; the flags still work
        warnings.simplefilter("ignore", DeprecationWarning)
        for name in flags:
            flag = getattr(trt.BuilderFlag, name.upper(), None)
            if flag is None:
                raise InputError(f"TensorRT {backend.version} has no {name.upper()} builder flag")
            config.set_flag(flag)
    return network, config, Precision("weakly-typed", flags, [])


def make_logger(backend: Backend) -> Any:
    """A ``trt.ILogger`` that sends TensorRT's messages to :mod:`logging`
    (logger ``graphopt.codegen.tensorrt.trt``: errors at INFO, the rest at
    DEBUG, shown under ``-v``) and keeps the error messages in ``.errors``:
    graphopt's own error then names the failing nodes, or quotes the last
    builder errors."""
    trt = backend.trt
    log = logging.getLogger("graphopt.codegen.tensorrt.trt")
    severity = trt.ILogger.Severity
    levels = {severity.INTERNAL_ERROR: logging.INFO, severity.ERROR: logging.INFO}

    class _Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, sev: Any, msg: str) -> None:  # called by TensorRT, possibly from its threads
            if sev in (severity.INTERNAL_ERROR, severity.ERROR):
                self.errors.append(msg.strip())
            log.log(levels.get(sev, logging.DEBUG), "%s", msg.strip())

    return _Logger()
