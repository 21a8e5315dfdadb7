"""The accuracy report of a lossy conversion (quantization, pruning, low-rank):
per-output max error, cosine and argmax agreement against the original model
on given batches (``--eval`` data, else calibration data), and model size
before and after. ``graphopt quantize``, ``prune`` and ``factorize`` all build
their accuracy figures here.

Both models run under onnxruntime's ``ORT_ENABLE_ALL``: the kernels users get
(for a quantized model, the integer kernels).

:class:`QuantReport` also carries a per-layer SQNR (signal-to-quantization-noise
ratio, dB) of a tensor ``x`` and its quantized-model counterpart ``x'``:
``10 log10(sum x^2 / sum (x - x')^2)``, accumulated over all batches (the
per-layer figure of NVIDIA's ModelOpt and AIMET's layer-output analysis). It
is measured by the quantization family's ``qdq`` pass and filled in by the
caller; it stays empty for pruning and low-rank.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["OutputAccuracy", "QuantReport", "accuracy_report", "model_bytes"]


@dataclass(frozen=True)
class OutputAccuracy:
    """One output: ``max_abs`` error, ``cosine`` (all batches flattened), and
    ``argmax_agreement`` along the last axis for float outputs of rank >= 2."""

    name: str
    max_abs: float
    cosine: float
    argmax_agreement: float | None


@dataclass
class QuantReport:
    """Accuracy and size of a lossy model (quantized, pruned, factorized)
    against its original.

    Attributes:
        outputs: one :class:`OutputAccuracy` per model output.
        sqnr_db: tensor name -> SQNR in dB (``inf`` when identical);
            quantization only, filled by the caller from the ``qdq`` pass's
            metadata record (measured there on the model the sites were
            placed in, where names still mean the same tensor).
        bytes_before, bytes_after: model files with external data, in bytes.
        batches: how many input batches were compared.
    """

    outputs: list[OutputAccuracy] = field(default_factory=list)
    sqnr_db: dict[str, float] = field(default_factory=dict)
    bytes_before: int = 0
    bytes_after: int = 0
    batches: int = 0

    @property
    def cosine(self) -> float:
        """The worst output cosine."""
        return min((o.cosine for o in self.outputs), default=1.0)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (infinite SQNR as the string ``inf``)."""
        doc = asdict(self)
        doc["sqnr_db"] = {k: (v if np.isfinite(v) else "inf") for k, v in self.sqnr_db.items()}
        doc["cosine"] = self.cosine
        doc["size_ratio"] = self.bytes_after / self.bytes_before if self.bytes_before else None
        return doc


def model_bytes(path: str | os.PathLike) -> int:
    """Size of an .onnx file plus the external-data files it names, in bytes."""
    import onnx

    p = Path(path)
    total = p.stat().st_size
    proto = onnx.load(str(p), load_external_data=False)
    seen = set()
    for tensor in proto.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location" and entry.value not in seen:
                seen.add(entry.value)
                f = p.parent / entry.value
                if f.is_file():
                    total += f.stat().st_size
    return total


def _session(path: str | os.PathLike, level: str):  # noqa: ANN202
    from graphopt.verify.runtime import make_session, resolve_model

    return make_session(resolve_model(str(path)), optimization_level=level)


def _run(session: Any, batches: Sequence[Mapping[str, np.ndarray]], names: list[str]) -> list[dict[str, np.ndarray]]:
    feeds = {i.name for i in session.get_inputs()}
    return [dict(zip(names, session.run(names, {k: v for k, v in b.items() if k in feeds}))) for b in batches]


def _accuracy(name: str, ref: list[np.ndarray], out: list[np.ndarray]) -> OutputAccuracy:
    x = np.concatenate([r.astype(np.float64).ravel() for r in ref])
    y = np.concatenate([o.astype(np.float64).ravel() for o in out])
    from graphopt.verify.compare import cosine as _cos

    cosine = _cos(x, y) if x.size else 1.0
    agree = None
    if ref[0].ndim >= 2 and ref[0].shape[-1] > 1:
        hits = sum(int((r.argmax(-1) == o.argmax(-1)).sum()) for r, o in zip(ref, out))
        agree = hits / sum(int(np.prod(r.shape[:-1])) for r in ref)
    return OutputAccuracy(name, float(np.max(np.abs(x - y))) if x.size else 0.0, cosine, agree)


def accuracy_report(reference: str | os.PathLike, quantized: str | os.PathLike,
                    batches: Iterable[Mapping[str, np.ndarray]]) -> QuantReport:
    """Compare ``quantized`` (any lossy result: quantized, pruned, factorized)
    with its ``reference`` on ``batches``.

    Args:
        reference, quantized: .onnx paths (external data beside them).
        batches: input dicts (e.g. held-out or calibration data).

    Raises:
        LoadError: onnxruntime cannot load a model.
        InputError: no batches.
    """
    from graphopt.errors import InputError

    data = list(batches)
    if not data:
        raise InputError("the accuracy report needs at least one input batch")
    report = QuantReport(bytes_before=model_bytes(reference), bytes_after=model_bytes(quantized), batches=len(data))
    ref_session, q_session = _session(reference, "all"), _session(quantized, "all")
    names = [o.name for o in ref_session.get_outputs()]
    ref, out = _run(ref_session, data, names), _run(q_session, data, names)
    del ref_session, q_session
    for name in names:
        if np.issubdtype(np.asarray(ref[0][name]).dtype, np.floating):
            report.outputs.append(_accuracy(name, [r[name] for r in ref], [o[name] for o in out]))
    return report
