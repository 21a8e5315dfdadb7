"""One parametrized test over every golden case (see tests/golden_cases.py)."""

from __future__ import annotations

import pytest

from golden_cases import collect, diff
from graphopt import ir
from graphopt.passmanager import ModelRunner, PassContext, PassManager, Pipeline, Step
from graphopt.pattern import RuleEnv, explain, find_rule
from graphopt.verify import compare_outputs

CASES = collect()


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_golden(case, request):
    model = case.load_input()
    before_text = ir.to_text(model)
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
    if case.path.name.startswith("kept_"):  # a "nothing changes" case
        assert actual == before_text, "a kept_ case changed the model:\n" + diff(before_text, actual, case.id)
    # Idempotence: a second run changes nothing.
    again = PassManager(case.pipeline, PassContext(target=case.target)).run(result.model)
    assert ir.to_text(again.model) == actual, "pipeline is not idempotent:\n" + diff(actual, ir.to_text(again.model), case.id)
    # Numerics: outputs within the case's rtol of the input's on the same inputs.
    got = ModelRunner(inputs=reference.inputs).run(again.model)
    scale = case.rtol if case.rtol > 1e-5 else 0.0
    report = compare_outputs(ref_out, got, rtol=case.rtol, atol=1e-6, atol_scale=scale)
    assert report.ok, report.summary()
    # Asserted explain reasons (the "nothing changes" cases say why).
    for rule_name, text in case.reasons:
        pass_name, rule = find_rule(rule_name)
        options = _options(case.pipeline, pass_name, PassContext(target=case.target))
        result = explain(RuleEnv(again.model, case.target, options), rule, pass_name)
        found = [s.reason for s in result.sites] + [result.inapplicable]
        assert any(text in r for r in found), f"no site of {rule_name} says {text!r}; reasons: {found}"


def _options(pipeline: str, pass_name: str, ctx: PassContext):  # noqa: ANN202 - the pass's options dataclass
    """The options ``pass_name``'s rules see in ``pipeline`` (its first
    top-level step; the defaults when the pipeline does not name it)."""
    steps = [i for i in Pipeline.parse(pipeline).expanded().items if isinstance(i, Step) and i.name == pass_name]
    return (steps[0] if steps else Step(pass_name)).build().rule_options(ctx)
