"""The ONNX backend test cases of the installed onnx wheel, laid out for
``tools/sweep_backend.py``.

- ``node``: regenerated from ``onnx.backend.test.case.node`` (the wheel ships
  the test-case code, not the data) with numpy seeded 0, written the way
  ``onnx.backend.test.cmd_tools generate-data`` writes its model cases
  (``<case>/model.onnx``, ``test_data_set_N/{input,output}_K.pb``; sequence,
  optional and map values as ``SequenceProto`` / ``OptionalProto`` /
  ``MapProto``);
- ``light``: the wheel's ``light_*.onnx`` models with the inputs onnx's backend
  runner gives them (``Runner.generate_dummy_data``, ``random=False``) and the
  shipped expected outputs;
- ``simple``, ``pytorch-operator``, ``pytorch-converted``: read from the wheel;
- ``real``: download URLs only, listed as skipped.
"""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Case", "collect_cases", "data_dir", "generate_node_cases", "prepare_light"]


@dataclass(frozen=True)
class Case:
    """One backend test case: ``folder`` (node, simple, ...), ``name`` and the
    directory holding ``model.onnx`` and ``test_data_set_0``."""

    folder: str
    name: str
    path: str


def data_dir() -> Path:
    """The installed onnx wheel's ``onnx/backend/test/data`` folder."""
    import onnx.backend.test

    return Path(onnx.backend.test.__file__).parent / "data"


def _write_proto_value(value: Any, vi: Any, path: Path) -> None:
    """Serialize one input/output as ``cmd_tools.generate_data`` does."""
    from onnx import TensorProto, numpy_helper

    t = vi.type
    if t.HasField("map_type"):
        proto = numpy_helper.from_dict(value, vi.name)
    elif t.HasField("sequence_type"):
        proto = numpy_helper.from_list(value, vi.name)
    elif t.HasField("optional_type"):
        proto = numpy_helper.from_optional(value, vi.name)
    elif isinstance(value, TensorProto):
        proto = value
    else:
        proto = numpy_helper.from_array(value, vi.name)
    path.write_bytes(proto.SerializeToString())


def generate_node_cases(out: Path) -> int:
    """Write every ``onnx.backend.test.case.node`` case (numpy seeded 0) under
    ``out/<case>/{model.onnx,test_data_set_N/}``; returns the number written.
    Writes into a temporary sibling and renames, so an interrupted run leaves
    no half-written cache."""
    import numpy as np
    from onnx.backend.test.case import node as node_cases

    np.random.seed(0)
    cases = node_cases.collect_testcases()
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    for case in cases:
        d = tmp / case.name
        d.mkdir(parents=True)
        (d / "model.onnx").write_bytes(case.model.SerializeToString())
        for i, (inputs, outputs) in enumerate(case.data_sets):
            ds = d / f"test_data_set_{i}"
            ds.mkdir()
            for j, value in enumerate(inputs):
                _write_proto_value(value, case.model.graph.input[j], ds / f"input_{j}.pb")
            for j, value in enumerate(outputs):
                _write_proto_value(value, case.model.graph.output[j], ds / f"output_{j}.pb")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return len(cases)


def prepare_light(out: Path) -> None:
    """Lay the wheel's ``light`` models out as backend cases under ``out``,
    with the inputs onnx's backend runner feeds them (arange / n, float32)."""
    import onnx
    from onnx import numpy_helper
    from onnx.backend.test.runner import Runner

    src = data_dir() / "light"
    for model_path in sorted(src.glob("*.onnx")):
        d = out / model_path.stem
        ds = d / "test_data_set_0"
        if (ds / "output_0.pb").exists():
            continue
        ds.mkdir(parents=True, exist_ok=True)
        shutil.copy(model_path, d / "model.onnx")
        model = onnx.load(str(model_path))
        inits = {t.name for t in model.graph.initializer}
        n = 0
        for vi in model.graph.input:
            if vi.name in inits:
                continue
            value = Runner.generate_dummy_data(vi, seed=0, name=model_path.stem, random=False)
            (ds / f"input_{n}.pb").write_bytes(numpy_helper.from_array(value, vi.name).SerializeToString())
            n += 1
        for i in range(len(model.graph.output)):
            expected = src / f"{model_path.stem}_output_{i}.pb"
            if expected.exists():
                shutil.copy(expected, ds / f"output_{i}.pb")


def collect_cases(folders: list[str], cache: Path) -> tuple[list[Case], list[str]]:
    """The cases of ``folders`` (preparing the node and light caches when
    absent) and the names of cases skipped because the wheel has no model."""
    cases, skipped = [], []
    data = data_dir()
    for folder in folders:
        if folder == "node":
            base = cache / "node"
            if not base.is_dir() or not any(base.iterdir()):
                print(f"generating node cases into {base} ...", file=sys.stderr, flush=True)
                base.parent.mkdir(parents=True, exist_ok=True)
                print(f"  {generate_node_cases(base)} cases", file=sys.stderr, flush=True)
        elif folder == "light":
            base = cache / "light"
            prepare_light(base)
        else:
            base = data / folder
        for d in sorted(p for p in base.iterdir() if p.is_dir()):
            if (d / "model.onnx").is_file() and (d / "test_data_set_0").is_dir():
                cases.append(Case(folder, d.name, str(d)))
            else:
                skipped.append(f"{folder}/{d.name}")
    return cases, skipped
