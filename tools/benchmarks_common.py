"""What the MiniLM compression benchmarks (tools/compare_lowrank.py, tools/compare_pruning.py) share: the cached
models and tokenized sentences (tools/text_inputs.py writes them), reading a split, running a model, the quality
and size figures, the O2 baseline and the latency inputs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["CACHE", "DIMS", "MODELS", "TEXT", "data", "latency_inputs", "split_data", "o2", "outputs", "quality", "stats"]

CACHE = Path.home() / ".cache" / "graphopt"
TEXT = CACHE / "text_minilm"
MODELS = {"ts": CACHE / "corpus" / "minilm_l6_ts.onnx", "dynamo": CACHE / "corpus" / "minilm_l6_dynamo.onnx"}
DIMS = {"batch": 1, "sequence": 128}


def data(split: str, proto, limit: int | None = None):  # noqa: ANN001, ANN201
    """The ``split`` (calib, tune, eval) sentences of :data:`TEXT` for ``proto``, at most ``limit``."""
    from graphopt.calibrate.data import CalibrationData

    return CalibrationData.from_path(TEXT / split, proto, limit=limit)


def outputs(path, batches: list[dict]) -> list[dict]:  # noqa: ANN001
    """The model at ``path`` run on ``batches`` (ORT_ENABLE_ALL), one output dict per batch."""
    from graphopt.calibrate.evaluate import run_outputs

    return run_outputs(path, batches)


def quality(out: list[dict], ref: list[dict], with_min: bool = False) -> dict:
    """Rank fidelity and mean sentence-embedding cosine of ``out`` against ``ref`` (and the worst cosine,
    ``cosine_min``, with ``with_min``)."""
    from graphopt.calibrate.metrics import rank_fidelity, sentence_embeddings

    a, b = sentence_embeddings(ref), sentence_embeddings(out)
    cos = np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    row = {"rank_fidelity": rank_fidelity(out, ref), "cosine": float(cos.mean())}
    if with_min:
        row["cosine_min"] = float(cos.min())
    return row


def o2(src: Path, dst: Path) -> None:
    """``src`` after graphopt's O2 pipeline (target ort), written to ``dst``."""
    from graphopt import ir
    from graphopt.passmanager import PassContext, PassManager

    result = PassManager("O2", PassContext(target="ort")).run(ir.load(src))
    ir.save(result.model, dst)


def stats(model) -> dict:  # noqa: ANN001
    """``{"params", "flops"}`` of a model (IR or path) at :data:`DIMS`."""
    from graphopt import ir
    from graphopt.analysis.stats import model_stats

    st = model_stats(ir.load(model) if isinstance(model, (str, Path)) else model, with_flops=True, dims=DIMS)
    return {"params": st.parameters, "flops": st.flops}


def split_data(export: str):  # noqa: ANN201
    """``(model path, proto, calibration data, evaluation batches, the model's outputs on them)`` of one export
    (a key of :data:`MODELS`)."""
    from graphopt import ir

    src = MODELS[export]
    proto = ir.load_proto(src)
    calib = data("calib", proto)
    evaluation = list(data("eval", proto))
    return src, proto, calib, evaluation, outputs(str(src), evaluation)


def latency_inputs(proto) -> dict:  # noqa: ANN001
    """Sequence 128 of real tokens: evaluation sentences concatenated (CLS/SEP inside), batch 1."""
    ids = []
    for sample in data("eval", proto):
        ids.extend(sample["input_ids"][0].tolist())
        if len(ids) >= 128:
            break
    ids = np.asarray(ids[:128], dtype=np.int64)[None, :]
    return {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}


def interleaved_ratios(base: Path, variants: list[tuple[str, Path]], inputs: dict, seconds: float, tag: str) -> dict:
    """Latency of each variant after O2 as a ratio to ``base`` (already after
    O2), timed with graphopt.bench's interleaved runner (ORT_ENABLE_ALL, 2
    threads) in groups of three variants beside the reference (BENCH.md: few
    live sessions at once). A variant already after O2 (``*_o2.onnx``) or
    quantized (``int8`` in its name) is timed as it is; others are put
    through O2 into ``<stem>_o2.onnx`` first (kept for reruns). Returns
    ``{label: ratio}`` and prints each group's ratios under ``tag``."""
    from graphopt.bench.runner import benchmark

    done = {}
    for i in range(0, len(variants), 3):
        group, after = variants[i:i + 3], []
        for _, p in group:
            dst = p if str(p).endswith("_o2.onnx") or "int8" in str(p) else p.with_name(p.stem + "_o2.onnx")
            if not dst.exists():
                o2(p, dst)
            after.append(dst)
        report = benchmark([base, *after], inputs=inputs, threads=2, opt_level="all", warmup=10, seconds=seconds)
        for (label, _), t in zip(group, report.models[1:]):
            done[label] = t.ratio
        print(tag, [round(t.ratio, 3) for t in report.models], flush=True)
    return done
