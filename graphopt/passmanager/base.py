"""Passes: the unit of rewriting, registered by a kebab-case name.

A pass has an options dataclass (which drives CLI flags, YAML keys, text-spec
options and docs), ``requires`` / ``preserves`` / ``establishes`` invariants,
and ``run(model, ctx) -> PassResult``. Passes keep no state between runs: the
pass manager builds a fresh instance for every run. Modelled on MLIR's pass
registry and onnx-ir's ``PassResult``.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar

from graphopt.errors import PipelineSpecError

__all__ = [
    "Pass", "PassResult", "NoOptions", "register_pass", "get_pass", "registered_passes",
    "INVARIANTS", "option_fields", "option_fields_of", "parse_option_value", "format_option_value",
]

INVARIANTS: dict[str, str] = {
    "topo-sorted": "topological-sort",
    "no-dead-nodes": "dce",
    "shapes-inferred": "infer-shapes",
}
"""Known invariants and the pass that establishes each; the pass manager runs
that pass when a pass ``requires`` an invariant that does not hold."""

_NAME = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")


@dataclass(frozen=True)
class NoOptions:
    """Options of a pass that takes none."""


@dataclass
class PassResult:
    """What a pass did.

    Attributes:
        modified: True when the model changed. A pass that reports False must
            have left the model exactly as it found it.
        stats: named counters (e.g. ``{"removed": 3}``), shown by ``--json``
            and the timing report.
    """

    modified: bool
    stats: dict[str, int | float] = field(default_factory=dict)


class Pass:
    """Base class of every rewrite pass.

    Subclasses set ``Options`` (a dataclass; field ``metadata={"doc": ...}``
    documents each option), ``requires`` (invariants that must hold before
    ``run``), ``preserves`` (invariants still true after a modifying run),
    ``establishes`` (invariants true after any run), ``lossy`` (True when
    outputs may change beyond 1e-5 relative, as in quantization),
    ``tolerance`` (the relative error an exact pass that still changes float
    rounding promises, e.g. 1e-4 for fusions whose kernels sum in another
    order; None = the context's ``verify.rtol``), and implement :meth:`run`.
    Register with :func:`register_pass`.
    """

    name: ClassVar[str] = ""
    Options: ClassVar[type] = NoOptions
    requires: ClassVar[frozenset[str]] = frozenset()
    preserves: ClassVar[frozenset[str]] = frozenset()
    establishes: ClassVar[frozenset[str]] = frozenset()
    lossy: ClassVar[bool] = False
    tolerance: ClassVar[float | None] = None

    def __init__(self, options: Any = None) -> None:
        self.options = options if options is not None else self.Options()

    def run(self, model: Any, ctx: Any) -> PassResult:  # pragma: no cover - abstract
        """Rewrite ``model`` (a ``graphopt.ir.Model``) in place under ``ctx``
        (a :class:`~graphopt.passmanager.context.PassContext`)."""
        raise NotImplementedError

    @classmethod
    def summary(cls) -> str:
        """First line of the pass's docstring."""
        doc = (cls.__doc__ or "").strip()
        return doc.splitlines()[0] if doc else ""


_REGISTRY: dict[str, type[Pass]] = {}


def register_pass(name: str):  # noqa: ANN201 - decorator
    """Class decorator registering a :class:`Pass` under a kebab-case ``name``.

    Raises:
        ValueError: the name is not kebab-case, is already taken by another
            class, or the options class is not a dataclass.
    """

    def decorate(cls: type[Pass]) -> type[Pass]:
        if not _NAME.match(name):
            raise ValueError(f"pass name '{name}' is not kebab-case (e.g. 'fold-constants')")
        if name in _REGISTRY and _REGISTRY[name].__qualname__ != cls.__qualname__:
            raise ValueError(f"pass name '{name}' is already registered by {_REGISTRY[name].__qualname__}")
        if not dataclasses.is_dataclass(cls.Options):
            raise ValueError(f"{cls.__qualname__}.Options must be a dataclass")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorate


def _load_builtin() -> None:
    import graphopt.passes  # noqa: F401 - registers the built-in passes


def registered_passes() -> dict[str, type[Pass]]:
    """All registered passes by name (built-in passes are imported first)."""
    _load_builtin()
    return dict(sorted(_REGISTRY.items()))


def get_pass(name: str) -> type[Pass]:
    """The pass class registered as ``name``.

    Raises:
        PipelineSpecError: unknown name; the message suggests the closest names
            and lists every registered pass.
    """
    _load_builtin()
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, _REGISTRY, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise PipelineSpecError(
            f"unknown pass '{name}'.{hint} Registered passes: {', '.join(sorted(_REGISTRY))} "
            "(see `graphopt passes`)"
        )
    return _REGISTRY[name]


def option_fields(options_cls: type) -> dict[str, dataclasses.Field]:
    """Kebab-case option name -> dataclass field, in declaration order."""
    return {f.name.replace("_", "-"): f for f in dataclasses.fields(options_cls)}


def option_fields_of(pass_cls: type[Pass]) -> dict[str, dataclasses.Field]:
    """Kebab-case option name -> dataclass field of a pass class's options."""
    return option_fields(pass_cls.Options)


def _field_type(options_cls: type, f: dataclasses.Field) -> Any:
    hints = typing.get_type_hints(options_cls)
    return hints.get(f.name, str)


def parse_option_value(options_cls: type, key: str, raw: Any, where: str) -> Any:
    """Convert a raw option value (text from a spec, or a YAML scalar) to the
    field's type: ``int``, ``float``, ``bool`` (true/false), ``str``, or a tuple
    of str written ``a|b|c``.

    Raises:
        PipelineSpecError: unknown option (listing the valid ones) or a value
            that does not convert.
    """
    fields = option_fields(options_cls)
    if key not in fields:
        valid = ", ".join(fields) or "none"
        close = difflib.get_close_matches(key, fields, n=2)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise PipelineSpecError(f"{where} has no option '{key}'.{hint} Valid options: {valid}")
    ftype = _field_type(options_cls, fields[key])
    origin = typing.get_origin(ftype)
    try:
        if ftype is bool:
            if isinstance(raw, bool):
                return raw
            if str(raw).lower() in ("true", "1", "yes", "on"):
                return True
            if str(raw).lower() in ("false", "0", "no", "off"):
                return False
            raise ValueError("expected true or false")
        if ftype is int:
            if isinstance(raw, bool):
                raise ValueError("expected an integer")
            return int(raw)
        if ftype is float:
            return float(raw)
        if origin in (tuple, list):
            items = raw if isinstance(raw, (list, tuple)) else [s for s in str(raw).split("|") if s]
            return tuple(str(s) for s in items)
        return str(raw)
    except ValueError as e:
        raise PipelineSpecError(f"{where}: option '{key}' got {raw!r}: {e}") from e


def format_option_value(value: Any) -> str:
    """Text-spec form of an option value (inverse of :func:`parse_option_value`)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (tuple, list)):
        return "|".join(str(v) for v in value)
    return str(value)
