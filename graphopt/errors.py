"""The graphopt error hierarchy.

Every error graphopt raises on purpose derives from :class:`GraphoptError`. The
CLI maps each family to an exit code (see :data:`EXIT_CODES`): bad input or
usage exits 2, failed verification exits 1, anything else 3. Messages say what
went wrong, where, and what to do about it; library code always chains the
cause with ``raise ... from e``.
"""

from __future__ import annotations


class GraphoptError(Exception):
    """Base class of every error graphopt raises deliberately."""

    exit_code = 3


class LoadError(GraphoptError):
    """A model file could not be loaded: not ONNX, truncated, unsafe or missing
    external data, cyclic graph, undefined value, unsupported opset."""

    exit_code = 2


class InputError(GraphoptError):
    """User-provided input data or options are wrong (names, dtypes, ranks, dims,
    files that do not exist)."""

    exit_code = 2


class PipelineSpecError(InputError):
    """A pipeline text spec or YAML file does not parse, or names an unknown pass
    or option. The message lists the candidates."""


class SaveError(GraphoptError):
    """A model could not be written, or writing it would modify the input
    (its external-data file is the input's own)."""

    exit_code = 2


class BrokenOutputError(SaveError):
    """The model to be written fails ``onnx.checker`` while the input it was
    loaded from passes the same check: graphopt made it invalid, a defect of
    graphopt, not of the input. Exits 3 (a :class:`SaveError` otherwise, so
    callers that handle a refused save still catch it); the message says how
    to find the pass (``--verify-each``, ``graphopt bisect``) and to report it."""

    exit_code = 3


class PassError(GraphoptError):
    """A pass raised while running. Carries the pass name, when the pass
    manager wrote one the path of a reproducer directory, and the exit code:
    3 for a crash, the cause's own code when the pass raised an expected
    :class:`GraphoptError` (e.g. 2 for an :class:`InputError`)."""

    exit_code = 3

    def __init__(self, message: str, pass_name: str = "", reproducer: str | None = None, exit_code: int = 3):
        super().__init__(message)
        self.pass_name = pass_name
        self.reproducer = reproducer
        self.exit_code = exit_code


class VerificationError(GraphoptError):
    """Two models' outputs differ beyond the stated tolerance."""

    exit_code = 1


class CodegenError(GraphoptError):
    """A backend could not compile the model: TensorRT's parser rejected
    nodes (named in the message), or its builder failed (with TensorRT's own
    error messages). Exits 2: the model or the build options must change."""

    exit_code = 2


class BackendUnavailableError(GraphoptError):
    """An optional backend (TensorRT, TensorRT for RTX) is not installed. The
    message gives the install line."""

    exit_code = 2
