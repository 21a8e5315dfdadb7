#!/usr/bin/env python
"""Real-looking inputs for the PaddleOCR models: text rendered with Pillow.

Writes ``OUT_DIR/<model>/{calib,tune,eval}/sample_NNNN.npz`` (input ``x``, float32
NCHW), preprocessed as rapidocr-onnxruntime feeds the models:

* ``paddleocr_det``: a white page of several text lines, ``H x W`` (multiples
  of 32), scaled to [0, 1] and normalized with ImageNet mean/std
  (``DetResizeForTest`` + ``NormalizeImage``);
* ``paddleocr_rec``: one text line resized to height 48, padded to width 320,
  ``(x / 255 - 0.5) / 0.5`` (``CRNN`` preprocessing);
* ``paddleocr_cls``: the same line at 48 x 192, half of them rotated by 180
  degrees (the classifier's two classes).

The text is random words over letters and digits, from a seeded generator, so
every run writes the same files. Calibration, tuning (what an accuracy
budget is searched on: ``graphopt quantize --eval``) and evaluation use
different seeds.

Usage::

    python tools/ocr_inputs.py OUT_DIR [--calib 16] [--tune 8] [--eval 8]
"""

from __future__ import annotations

import argparse
import string
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

ALPHABET = string.ascii_letters + string.digits
MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


def _words(rng: np.random.Generator, count: int) -> str:
    return " ".join("".join(rng.choice(list(ALPHABET), size=int(rng.integers(2, 9)))) for _ in range(count))


def _line(rng: np.random.Generator, height: int = 48) -> Image.Image:
    """One dark text line on a light background, cropped to the text."""
    font = ImageFont.load_default(size=int(rng.integers(26, 36)))
    text = _words(rng, int(rng.integers(1, 4)))
    left, top, right, bottom = font.getbbox(text)
    image = Image.new("RGB", (right + 16, bottom + 12), tuple(int(v) for v in rng.integers(200, 256, 3)))
    ImageDraw.Draw(image).text((8 - left, 6 - top // 2), text, font=font, fill=tuple(int(v) for v in rng.integers(0, 80, 3)))
    width = max(8, round(image.width * height / image.height))
    return image.resize((width, height), Image.BILINEAR)


def rec_input(rng: np.random.Generator, width: int = 320, rotate: bool = False) -> np.ndarray:
    """``[1, 3, 48, width]`` float32: a line scaled to height 48, right-padded with 0."""
    line = _line(rng)
    if rotate:
        line = line.rotate(180)
    w = min(width, line.width)
    pixels = np.asarray(line.resize((w, 48), Image.BILINEAR), np.float32) / 255.0
    x = np.zeros((48, width, 3), np.float32)
    x[:, :w] = (pixels - 0.5) / 0.5
    return x.transpose(2, 0, 1)[None]


def det_input(rng: np.random.Generator, height: int = 320, width: int = 480) -> np.ndarray:
    """``[1, 3, height, width]`` float32: a page of 3-6 lines, ImageNet-normalized."""
    page = Image.new("RGB", (width, height), (255, 255, 255))
    y = 10
    for _ in range(int(rng.integers(3, 7))):
        line = _line(rng, int(rng.integers(24, 44)))
        if y + line.height > height or line.width > width - 10:
            continue
        page.paste(line, (int(rng.integers(0, max(1, width - line.width))), y))
        y += line.height + int(rng.integers(4, 20))
    pixels = np.asarray(page, np.float32) / 255.0
    return ((pixels - MEAN) / STD).transpose(2, 0, 1)[None].astype(np.float32)


def write(out: Path, model: str, split: str, seed: int, count: int) -> None:
    """``count`` samples for ``model`` into ``out/model/split``."""
    rng = np.random.default_rng(seed)
    folder = out / model / split
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        if model == "paddleocr_det":
            x = det_input(rng)
        elif model == "paddleocr_rec":
            x = rec_input(rng)
        else:
            x = rec_input(rng, width=192, rotate=bool(i % 2))
        np.savez(folder / f"sample_{i:04d}.npz", x=x)


def main(argv: list[str] | None = None) -> int:
    """Entry point (see the module doc)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--calib", type=int, default=16, help="calibration samples per model")
    parser.add_argument("--tune", type=int, default=8, help="tuning samples per model (accuracy budget search)")
    parser.add_argument("--eval", type=int, default=8, help="evaluation samples per model")
    args = parser.parse_args(argv)
    for model in ("paddleocr_det", "paddleocr_rec", "paddleocr_cls"):
        write(args.out_dir, model, "calib", 0, args.calib)
        write(args.out_dir, model, "eval", 1, args.eval)
        write(args.out_dir, model, "tune", 2, args.tune)
    return 0


if __name__ == "__main__":
    sys.exit(main())
