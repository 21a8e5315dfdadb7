"""The ``output`` allocation: each group's consumer error curve scaled by its measured gain to the model output.
Two identical MLP branches whose outputs are summed, one of them multiplied by 10 first: their consumer errors are
equal, so ``error`` cuts them alike, while the output moves 100 times more per unit of the scaled branch's error,
which ``output`` measures and spares."""

from __future__ import annotations

import pytest

from graphopt import ir
from graphopt.analysis.groups import KINDS, find_groups
from graphopt.calibrate.data import CalibrationData
from graphopt.calibrate.stats import StatsCache
from graphopt.errors import InputError
from graphopt.passes.pruning import PruneOptions, prune
from graphopt.passes.pruning.allocation import allocate
from graphopt.passes.pruning.gains import output_gains
from tests.passes.pruning.branches import T, branch_data, mlp_branches

def two_branches() -> ir.Model:
    """y = relu(x W1) W2 + 10 * relu(x W1') W2' with W1' = W1, W2' = W2 (x [batch, T, D])."""
    return mlp_branches(1.0, 10.0)


def data(count: int = 16) -> CalibrationData:
    return branch_data(count)


def kept(allocation: str) -> dict[str, int]:
    model = two_branches()
    report = prune(model, PruneOptions(ratio=0.5, align=2, method="sensitivity", allocation=allocation), data(),
                   cache=StatsCache())
    return {g.name: g.kept for g in report.groups}


def test_error_cuts_alike_output_spares_the_amplified_branch():
    names = [g.name for g in find_groups(two_branches(), KINDS).groups]
    assert len(names) == 2
    a, b = names  # a: the plain branch, b: the one multiplied by 10 (graph order)
    error, output = kept("error"), kept("output")
    assert (error[a], error[b]) == (8, 8)  # equal curves: the walk alternates
    assert (output[a], output[b]) == (2, 14)  # the plain branch goes down to one step before the other moves


def test_gains_measure_the_amplification():
    from graphopt.passes.pruning.plan import build_plan
    from graphopt.passes.pruning.scoring import score_groups
    from graphopt.calibrate.stats import StatRequest, collect_stats

    model = two_branches()
    analysis = find_groups(model, KINDS)
    plans, sites = build_plan(model, analysis, ("ffn",), align=2, tokens=T)
    calib = data()
    stats = collect_stats(model, [StatRequest(sites[n].data, sites[n].data_axis, gram=True)
                                  for p in plans for n in p.rows], calib)
    score_groups(plans, sites, stats, "sensitivity", model, calibration=calib)
    gains = output_gains(model, plans, sites, stats, calib)
    a, b = (p.name for p in plans)
    # ~10^2 for small cuts (1 - cos is quadratic in a small change); the 25 % cut is not small
    assert gains[a] == pytest.approx(2.14658e-07, rel=1e-4) and gains[b] == pytest.approx(4.76677e-05, rel=1e-4)
    with pytest.raises(InputError, match="at least one calibration batch"):
        output_gains(model, plans, sites, stats, [])
    with pytest.raises(InputError, match="allocation 'output' needs the groups' error curves"):
        allocate(plans, 0.5, "output")
