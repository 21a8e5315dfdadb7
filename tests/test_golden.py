"""One parametrized test over every golden case (see tests/golden_cases.py)."""

from __future__ import annotations

import pytest

from golden_cases import collect, diff
from graphopt import ir
from graphopt.passmanager import ModelRunner, PassContext, PassManager
from graphopt.verify import compare_outputs

CASES = collect()


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_golden(case, request):
    model = case.load_input()
    reference = ModelRunner(seed=0)
    ref_out = reference.run(model)
    result = PassManager(case.pipeline, PassContext(target=case.target)).run(model)
    actual = ir.to_text(result.model)
    if request.config.getoption("--update-golden"):
        if actual != case.expected:
            case.write_expected(actual)
            request.config._golden_updated.append(str(case.path))
    else:
        assert case.expected is not None, f"{case.path} has no expected section; run pytest --update-golden"
        assert actual == case.expected, "golden mismatch:\n" + diff(case.expected, actual, case.id)
    # Idempotence: a second run changes nothing.
    again = PassManager(case.pipeline, PassContext(target=case.target)).run(result.model)
    assert ir.to_text(again.model) == actual, "pipeline is not idempotent:\n" + diff(actual, ir.to_text(again.model), case.id)
    # Numerics: outputs within 1e-5 relative of the input's on the same inputs.
    got = ModelRunner(inputs=reference.inputs).run(again.model)
    report = compare_outputs(ref_out, got, rtol=1e-5, atol=1e-6)
    assert report.ok, report.summary()
