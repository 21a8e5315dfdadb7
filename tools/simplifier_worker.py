"""The worker of ``tools/compare_simplifiers.py``: one tool, one model, in its
own process (``compare_simplifiers.py --worker TOOL IN OUT``). It loads,
optimizes and saves with the tool (``tools/peer_tools.py``), then runs the
steps that make the timed work the same for every tool (``onnx.checker`` on
the output, fsync of the output), and prints one result line
(``peer_spawn.RESULT_MARK`` + JSON). See ``compare_simplifiers.py`` for what
each tool's phases are."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import peer_tools
from peer_spawn import RESULT_MARK
from peer_tools import MODULE

__all__ = ["MODULE", "RESULT_MARK", "has_external_data", "worker"]


def has_external_data(model: Any) -> bool:
    """Whether any tensor of the (structure-only) ``onnx.ModelProto`` lives in external data."""
    from onnx import external_data_helper

    return any(external_data_helper.uses_external_data(t)
               for t in external_data_helper._get_all_tensors(model))  # noqa: SLF001


def _check_and_sync(tool: str, dst: Path, check: bool, durable: bool) -> dict[str, float]:
    """The steps after a tool's save that make the timed work the same for
    every tool (see the module docs): ``onnx.checker.check_model`` on the
    output (onnxsim already ran it inside its call), then fsync of every
    file in the output's folder and of the folder. Returns their times (s)."""
    import time

    times = {"check_s": 0.0, "sync_s": 0.0}
    t0 = time.perf_counter()
    if check and tool != "onnxsim":
        import onnx

        onnx.checker.check_model(str(dst))
    t1 = time.perf_counter()
    if durable:
        for path in sorted(dst.parent.iterdir()):
            if path.is_file():
                fd = os.open(path, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        fd = os.open(dst.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    t2 = time.perf_counter()
    times.update(check_s=t1 - t0, sync_s=t2 - t1)
    return times


def worker(tool: str, src: str, dst: str, pipeline: str, big: bool, check: bool = True,
           durable: bool = True) -> int:
    """Run one tool on one model in this process (``peer_tools.worker`` with
    graphopt's pipeline ``pipeline``, then :func:`_check_and_sync`) and print
    its result line. Returns the exit status: 0 when it succeeded."""
    if tool == "graphopt" and pipeline != "O1":
        peer_tools.RUNNERS["graphopt"] = peer_tools.graphopt_runner(pipeline, "ort", None)
    return peer_tools.worker(tool, src, dst, big, after=lambda t, out: _check_and_sync(t, out, check, durable))
