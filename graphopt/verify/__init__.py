"""Numerical verification: run models in onnxruntime and compare their outputs.

``compare(model_a, model_b)`` is the entry point (``graphopt verify A B``, the
pass manager's ``--verify-each``, ``graphopt bisect``). It generates inputs
that the model can run on (:mod:`graphopt.verify.inputs`) or reads them from
``.npz`` / ONNX backend-test ``input_N.pb`` files (:mod:`graphopt.verify.readers`),
runs both models (:mod:`graphopt.verify.runtime`) and reports per-output errors
against a ``numpy.allclose``-style tolerance (:mod:`graphopt.verify.compare`).
"""

from graphopt.verify.compare import (
    DEFAULT_TOLERANCES,
    CompareReport,
    OutputComparison,
    compare,
    compare_outputs,
    signature_differences,
    tolerances_for,
)
from graphopt.verify.inputs import DIM_DEFAULTS, InputSpec, check_inputs, generate_inputs, input_specs, model_dim_names
from graphopt.verify.readers import read_inputs
from graphopt.verify.runtime import ModelRunError, ModelSource, make_session, resolve_model, run_model

__all__ = [
    "DEFAULT_TOLERANCES",
    "DIM_DEFAULTS",
    "CompareReport",
    "InputSpec",
    "ModelRunError",
    "ModelSource",
    "OutputComparison",
    "check_inputs",
    "compare",
    "compare_outputs",
    "generate_inputs",
    "input_specs",
    "make_session",
    "model_dim_names",
    "read_inputs",
    "resolve_model",
    "run_model",
    "signature_differences",
    "tolerances_for",
]
