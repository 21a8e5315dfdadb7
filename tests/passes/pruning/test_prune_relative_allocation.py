"""The ``relative`` allocation: each group's consumer error curve divided by the consumers' output energy. Two MLP
branches computing the same function, one with its down projection scaled by 10 and its output by 0.1 (a feature
map of another scale, as batch normalization or a CNN's stages make them): ``error`` sees 100 times the absolute
error on the scaled consumer and cuts the other branch to one step first; ``relative`` sees equal curves and cuts
them alike, as ``output`` (which measures each consumer's gain to the model output) does."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np

from graphopt import ir
from graphopt.analysis.groups import KINDS, find_groups
from graphopt.calibrate.data import CalibrationData
from graphopt.calibrate.stats import StatsCache
from graphopt.passes.pruning import PruneOptions, prune
from tests.passes.pruning.branches import H, T, branch_data, mlp_branches

def scaled_branches() -> ir.Model:
    """y = relu(x W1) W2 + 0.1 * (relu(x W1) (10 W2)) (x [batch, T, D]): two equal functions, one at 10x scale."""
    return mlp_branches(10.0, 0.1)


def data(count: int = 16) -> CalibrationData:
    return branch_data(count)


def kept(allocation: str) -> tuple[int, int]:
    model = scaled_branches()
    report = prune(model, PruneOptions(ratio=0.5, align=2, method="wanda", allocation=allocation), data(),
                   cache=StatsCache())
    by_name = {g.name: g.kept for g in report.groups}
    a, b = (g.name for g in find_groups(scaled_branches(), KINDS).groups)  # a: plain, b: scaled (graph order)
    return by_name[a], by_name[b]


def test_relative_cuts_equal_functions_alike_where_error_follows_the_scale():
    error, relative, output = kept("error"), kept("relative"), kept("output")
    assert error == (2, 14)  # the plain branch goes down to one step before the scaled one moves
    # equal curves (the next test): the walk alternates until a tie at 10 kept, then the non-convex step 8 -> 6
    # costs less than the other's 10 -> 8
    assert sorted(relative) == [6, 10] and sorted(output) == [6, 10]


def test_relative_curves_are_equal_where_absolute_ones_differ_by_the_scale_squared():
    from graphopt.calibrate.stats import StatRequest, collect_stats
    from graphopt.passes.pruning.allocation import ladder
    from graphopt.passes.pruning.plan import build_plan
    from graphopt.passes.pruning.refit import error_curve
    from graphopt.passes.pruning.scoring import score_groups

    model = scaled_branches()
    plans, sites = build_plan(model, find_groups(model, KINDS), ("ffn",), align=2, tokens=T)
    calib = data()
    stats = collect_stats(model, [StatRequest(sites[n].data, sites[n].data_axis, gram=True)
                                  for p in plans for n in p.rows], calib)
    score_groups(plans, sites, stats, "wanda", model, calibration=calib)
    counts = ladder(H, 2, 24)
    assert counts == [16, 14, 12, 10, 8, 6, 4, 2]
    a, b = ([error_curve(p, sites, stats, counts, "least-squares", 1e-4, relative=r) for p in plans]
            for r in (False, True))
    np.testing.assert_allclose(a[1], np.multiply(a[0], 100.0), rtol=1e-6)
    np.testing.assert_allclose(b[1], b[0], rtol=1e-6)
    np.testing.assert_allclose(b[0], [0.0, 0.00809, 0.03587, 0.07329, 0.15759, 0.21437, 0.4394, 0.74944], atol=5e-6)


def test_cli_takes_relative(tmp_path):
    src, out = tmp_path / "m.onnx", tmp_path / "p.onnx"
    ir.save(scaled_branches(), src)
    calib = tmp_path / "calib"
    calib.mkdir()
    for i, batch in enumerate(data()):
        np.savez(calib / f"s{i:02d}.npz", **batch)
    proc = subprocess.run([sys.executable, "-m", "graphopt.cli.main", "-q", "prune", str(src), "-o", str(out),
                           "--calib", str(calib), "--ratio", "0.5", "--align", "2", "--allocation", "relative",
                           "--json"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["options"]["allocation"] == "relative"
    assert sorted(g["kept"] for g in doc["groups"]) == [6, 10]
    bad = subprocess.run([sys.executable, "-m", "graphopt.cli.main", "prune", str(src), "-o", str(tmp_path / "x.onnx"),
                          "--calib", str(calib), "--ratio", "0.5", "--allocation", "relatives"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "invalid choice: 'relatives'" in bad.stderr
    assert not (tmp_path / "x.onnx").exists()
