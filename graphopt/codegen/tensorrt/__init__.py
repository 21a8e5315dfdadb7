"""TensorRT engines from ONNX models, with TensorRT or TensorRT for RTX.

- :mod:`.backend`: lazy import of either flavour and the one function where
  they differ (precision, compute capability);
- :mod:`.profiles`: optimization profiles from ``--shapes`` and the model's
  dynamic axes;
- :mod:`.support`: the pure-Python check against onnx-tensorrt's operator
  table (``operators.json``), for machines without TensorRT;
- :mod:`.compat`: the check before a build (the installed parser, or the table);
- :mod:`.builder`: parse, configure, build, write the engine and its sidecar;
- :mod:`.runner`: run an engine with ``cuda-bindings`` and compare it with
  onnxruntime (needs a GPU).

Nothing here imports TensorRT until an engine is built or checked.
"""

from graphopt.codegen.tensorrt.backend import INSTALL_HINT, Backend, load_backend
from graphopt.codegen.tensorrt.builder import BuildOptions, EngineBuild, build_engine, sidecar_path
from graphopt.codegen.tensorrt.compat import CheckReport, check
from graphopt.codegen.tensorrt.profiles import DEFAULT_RANGES, Profile, ShapeRange, make_profile, parse_shapes
from graphopt.codegen.tensorrt.support import Issue, check_model

__all__ = [
    "INSTALL_HINT", "Backend", "load_backend", "BuildOptions", "EngineBuild", "build_engine", "sidecar_path",
    "CheckReport", "check", "DEFAULT_RANGES", "Profile", "ShapeRange", "make_profile", "parse_shapes",
    "Issue", "check_model",
]
