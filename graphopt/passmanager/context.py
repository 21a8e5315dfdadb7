"""The pass context: target, registered configuration keys, calibration data,
accuracy budget, instruments and cached analyses (TVM's ``PassContext``)."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any, Callable

from graphopt.errors import InputError

__all__ = ["PassContext", "TARGETS", "CONFIG_KEYS", "PROVIDERS", "register_config", "for_provider"]

TARGETS: dict[str, str] = {
    "onnx": "standard-domain ONNX operators only",
    "ort": "onnxruntime: com.microsoft contrib operators allowed",
    "tensorrt": "TensorRT's ONNX parser: its supported operators and QDQ placement",
}

CONFIG_KEYS: dict[str, tuple[type, Any, str]] = {}
"""Registered config key -> (type, default, doc)."""


def register_config(key: str, typ: type, default: Any, doc: str) -> None:
    """Register a configuration key that passes and instruments read from
    ``ctx.config``; unregistered keys are refused with the candidates listed."""
    CONFIG_KEYS[key] = (typ, default, doc)


register_config("verify.rtol", float, 1e-5, "relative tolerance of exact passes (verify-each, optimize --verify)")
register_config("verify.atol", float, 1e-6, "absolute tolerance floor added to rtol*|reference|")
register_config("verify.seed", int, 0, "seed of generated verification inputs")
register_config("fixpoint.warn", bool, True, "warn when a fixpoint group hits max-iters while still changing")
register_config("opset.upgrade", int, 0, "default-domain opset upgrade-opset may raise the model to "
                "(graphopt optimize --opset N; 0: keep the model's opset)")
register_config("ir.keep_initializer_inputs", bool, False, "keep the initializers an IR-3 model lists among its "
                "graph inputs there (overridable, so neither graphopt nor onnxruntime folds them); by default the "
                "pass manager drops them from the inputs and raises the model to IR 4 "
                "(graphopt optimize --keep-initializer-inputs)")
register_config("ort.provider", str, "cpu", "the onnxruntime execution provider the model is for, cpu or cuda "
                "(graphopt optimize --provider): what for-provider=auto means to fuse-skip-norm and "
                "convert-float16 for targets onnx and ort")

PROVIDERS = ("cpu", "cuda")
"""The onnxruntime execution providers passes rewrite for (``for-provider``)."""


def for_provider(ctx: Any, option: str, pass_name: str) -> str:
    """The execution provider a pass with a ``for-provider`` option rewrites
    for: the option when it names one; for ``auto``, ``cuda`` under target
    tensorrt (TensorRT runs on the GPU) and the ``ort.provider`` config key
    (default ``cpu``) otherwise.

    Raises:
        InputError: the option is not auto, cpu or cuda, or ``ort.provider``
            is neither cpu nor cuda.
    """
    if option not in ("auto", *PROVIDERS):
        raise InputError(f"{pass_name}: for-provider must be auto, cpu or cuda, got '{option}'")
    if option != "auto":
        return option
    if getattr(ctx, "target", "ort") == "tensorrt":
        return "cuda"
    value = ctx.get("ort.provider") if isinstance(ctx, PassContext) else "cpu"
    if value not in PROVIDERS:
        raise InputError(f"config ort.provider must be cpu or cuda, got '{value}'")
    return value


class AnalysisCache:
    """Analyses computed on demand and cached until a pass modifies the model.

    ``get(name, model, compute)`` returns the cached result or computes it. The
    pass manager calls :meth:`invalidate` after every modifying pass, keeping
    only the analyses named in that pass's ``preserves``.
    """

    def __init__(self) -> None:
        self._cache: dict[str, Any] = {}

    def get(self, name: str, model: Any, compute: Callable[[Any], Any]) -> Any:
        key = f"{name}@{id(model)}"
        if key not in self._cache:
            self._cache[key] = compute(model)
        return self._cache[key]

    def invalidate(self, preserved: frozenset[str] = frozenset()) -> None:
        self._cache = {k: v for k, v in self._cache.items() if k.split("@", 1)[0] in preserved}


def _convert(typ: type, value: Any) -> Any:
    """``value`` as ``typ``; a bool accepts true/false, 1/0, yes/no, on/off."""
    if typ is not bool or isinstance(value, bool):
        return typ(value)
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off"):
        return False
    raise ValueError("expected true or false")


@dataclass
class PassContext:
    """Everything a pass may read besides the model.

    Attributes:
        target: ``onnx``, ``ort`` or ``tensorrt`` (see :data:`TARGETS`).
        config: registered key -> value (see :data:`CONFIG_KEYS`); defaults apply
            for keys not given.
        calibration: calibration data for lossy passes (an iterable of input
            dicts), or None.
        accuracy_budget: e.g. ``{"cosine": 0.99}`` for lossy passes, or None.
        evaluation: held-out input dicts the accuracy budget is checked on
            (None: the calibration data). Ranges come from ``calibration``
            only; the budget search and its final check run on these, as
            Intel Neural Compressor's accuracy-aware tuning checks its
            criterion on an evaluation dataloader, not the calibration one.
        instruments: :class:`~graphopt.passmanager.instruments.Instrument`
            objects called around each pass.
        analyses: the :class:`AnalysisCache`.

    Raises:
        InputError: unknown target or config key (with candidates), or a
            config value of the wrong type.
    """

    target: str = "ort"
    config: dict[str, Any] = field(default_factory=dict)
    calibration: Any = None
    accuracy_budget: dict[str, float] | None = None
    evaluation: Any = None
    instruments: list[Any] = field(default_factory=list)
    analyses: AnalysisCache = field(default_factory=AnalysisCache)

    def __post_init__(self) -> None:
        if self.target not in TARGETS:
            raise InputError(f"unknown target '{self.target}'; choose one of: {', '.join(TARGETS)}")
        self.config = dict(self.config)  # converted values go into our copy, not the caller's dict
        for key, value in list(self.config.items()):
            if key not in CONFIG_KEYS:
                close = difflib.get_close_matches(key, CONFIG_KEYS, n=3)
                hint = f" Did you mean {', '.join(close)}?" if close else ""
                raise InputError(f"unknown config key '{key}'.{hint} Registered keys: {', '.join(sorted(CONFIG_KEYS))}")
            typ = CONFIG_KEYS[key][0]
            try:
                self.config[key] = _convert(typ, value)
            except (TypeError, ValueError) as e:
                raise InputError(f"config key '{key}' expects {typ.__name__}, got {value!r}") from e

    def get(self, key: str) -> Any:
        """The value of a registered config key (its default when unset)."""
        if key not in CONFIG_KEYS:
            raise KeyError(key)
        return self.config.get(key, CONFIG_KEYS[key][1])
