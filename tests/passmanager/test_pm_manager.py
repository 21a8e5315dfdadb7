"""The pass manager: invariants, fixpoint groups, crashes and the reproducer,
and the pass context's checks."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import pytest

from graphopt import ir
from graphopt.errors import InputError, PassError, PipelineSpecError
from graphopt.passmanager import (
    Instrument, Pass, PassContext, PassManager, PassResult, Reproducer, register_pass,
)

# Test passes (names unique to this module) ------------------------------

SEEN_ORDERS: list[list[str]] = []


def _is_sorted(graph: ir.Graph) -> bool:
    seen: set[int] = set()
    for node in graph:
        for value in node.inputs:
            producer = value.producer() if value is not None else None
            if producer is not None and producer.graph is graph and id(producer) not in seen:
                return False
        seen.add(id(node))
    return True


@register_pass("test-pm-needs-topo")
class NeedsTopo(Pass):
    """Test pass: requires topo-sorted, checks it holds, changes nothing."""

    requires = frozenset({"topo-sorted"})

    def run(self, model: ir.Model, ctx: object) -> PassResult:
        assert _is_sorted(model.graph), "the manager ran a topo-sorted pass on an unsorted graph"
        SEEN_ORDERS.append([n.op_type for n in model.graph])
        return PassResult(modified=False)


@register_pass("test-pm-reverse")
class ReverseNodes(Pass):
    """Test pass: reverses the node list (modifies; preserves nothing)."""

    def run(self, model: ir.Model, ctx: object) -> PassResult:
        nodes = list(model.graph)
        if len(nodes) < 2:
            return PassResult(modified=False)
        for node in nodes:
            model.graph.remove(node, safe=False)
        model.graph.extend(reversed(nodes))
        return PassResult(modified=True, stats={"moved": len(nodes)})


@register_pass("test-pm-touch-preserving")
class TouchPreserving(Pass):
    """Test pass: reports a modification that keeps the order (preserves topo-sorted)."""

    preserves = frozenset({"topo-sorted"})

    def run(self, model: ir.Model, ctx: object) -> PassResult:
        model.graph.doc_string = "touched"
        return PassResult(modified=True)


@register_pass("test-pm-always-modify")
class AlwaysModify(Pass):
    """Test pass: claims a change every time, so a fixpoint never converges."""

    def run(self, model: ir.Model, ctx: object) -> PassResult:
        return PassResult(modified=True, stats={"calls": 1})


@dataclass(frozen=True)
class CrashOptions:
    message: str = "boom"


@register_pass("test-pm-crash")
class Crash(Pass):
    """Test pass: raises."""

    Options = CrashOptions

    def run(self, model: ir.Model, ctx: object) -> PassResult:
        raise RuntimeError(self.options.message)


@register_pass("test-pm-bad-result")
class BadResult(Pass):
    """Test pass: returns something that is not a PassResult."""

    def run(self, model: ir.Model, ctx: object):  # noqa: ANN201
        return True


@register_pass("test-pm-unknown-invariant")
class UnknownInvariant(Pass):
    """Test pass: requires an invariant nothing establishes."""

    requires = frozenset({"all-nodes-blue"})

    def run(self, model: ir.Model, ctx: object) -> PassResult:
        return PassResult(modified=False)


UNSORTED = """<ir_version: 10, opset_import: ["" : 17]>
g (float[4] x) => (float[4] y) {
  y = Add(b, a)
  b = Exp(a)
  a = Relu(x)
}"""

SORTED = """<ir_version: 10, opset_import: ["" : 17]>
g (float[4] x) => (float[4] y) {
  a = Relu(x)
  b = Exp(a)
  y = Add(b, a)
}"""


def names(report) -> list[tuple[str, bool]]:  # noqa: ANN001
    return [(r.name, r.auto) for r in report.records]


# invariants -----------------------------------------------------------

def test_required_invariant_runs_topological_sort_automatically() -> None:
    SEEN_ORDERS.clear()
    result = PassManager("test-pm-needs-topo").run(ir.from_text(UNSORTED))
    records = result.report.records
    assert names(result.report) == [("topological-sort", True), ("test-pm-needs-topo", False)]
    assert records[0].modified and records[0].spec == "topological-sort"
    assert [r.index for r in records] == [1, 2]
    assert SEEN_ORDERS == [["Relu", "Exp", "Add"]]


def test_auto_sort_recorded_even_when_already_sorted() -> None:
    result = PassManager("test-pm-needs-topo,test-pm-needs-topo").run(ir.from_text(SORTED))
    # sorted once (nothing moved), then the invariant holds for the second run
    assert names(result.report) == [("topological-sort", True), ("test-pm-needs-topo", False),
                                    ("test-pm-needs-topo", False)]
    assert not result.report.records[0].modified


def test_explicit_sort_establishes_the_invariant() -> None:
    result = PassManager("topological-sort,test-pm-needs-topo").run(ir.from_text(UNSORTED))
    assert names(result.report) == [("topological-sort", False), ("test-pm-needs-topo", False)]


def test_modifying_pass_that_does_not_preserve_invalidates() -> None:
    SEEN_ORDERS.clear()
    result = PassManager("test-pm-needs-topo,test-pm-reverse,test-pm-needs-topo").run(ir.from_text(SORTED))
    assert names(result.report) == [
        ("topological-sort", True), ("test-pm-needs-topo", False),
        ("test-pm-reverse", False),
        ("topological-sort", True), ("test-pm-needs-topo", False),
    ]
    assert result.report.records[3].modified  # the reversed graph really was re-sorted
    assert SEEN_ORDERS == [["Relu", "Exp", "Add"]] * 2


def test_modifying_pass_that_preserves_keeps_the_invariant() -> None:
    result = PassManager("test-pm-needs-topo,test-pm-touch-preserving,test-pm-needs-topo").run(ir.from_text(SORTED))
    assert names(result.report) == [("topological-sort", True), ("test-pm-needs-topo", False),
                                    ("test-pm-touch-preserving", False), ("test-pm-needs-topo", False)]


def test_non_modifying_pass_keeps_the_invariant() -> None:
    # one node: test-pm-reverse reports no change, so topo-sorted still holds
    one = '<ir_version: 10, opset_import: ["" : 17]> g (float[4] x) => (float[4] y) { y = Relu(x) }'
    result = PassManager("test-pm-needs-topo,test-pm-reverse,test-pm-needs-topo").run(ir.from_text(one))
    assert names(result.report) == [("topological-sort", True), ("test-pm-needs-topo", False),
                                    ("test-pm-reverse", False), ("test-pm-needs-topo", False)]


def test_invariants_reset_between_runs() -> None:
    pm = PassManager("test-pm-needs-topo")
    pm.run(ir.from_text(SORTED))
    second = pm.run(ir.from_text(UNSORTED))
    assert names(second.report) == [("topological-sort", True), ("test-pm-needs-topo", False)]
    assert second.report.records[0].modified


def test_unknown_invariant_is_a_pass_error() -> None:
    with pytest.raises(PassError, match="requires unknown invariant 'all-nodes-blue'") as info:
        PassManager("test-pm-unknown-invariant").run(ir.from_text(SORTED))
    assert info.value.pass_name == "test-pm-unknown-invariant"


# records and reports ----------------------------------------------------

def test_records_count_nodes_and_stats() -> None:
    model = ir.from_text("""<ir_version: 10, opset_import: ["" : 17]>
g (float[4] x) => (float[4] y) {
  a = Identity(x)
  dead = Exp(a)
  y = Relu(a)
}""")
    report = PassManager("eliminate-identity,dce").run(model).report
    ident, dce = report.records
    assert (ident.nodes_before, ident.nodes_after, ident.stats) == (3, 2, {"removed": 1, "kept": 0})
    assert (dce.nodes_before, dce.nodes_after, dce.stats["nodes"]) == (2, 1, 1)
    assert report.spec == "eliminate-identity,dce"
    doc = report.to_dict()
    assert [p["name"] for p in doc["passes"]] == ["eliminate-identity", "dce"]


def test_pass_options_reach_the_pass() -> None:
    model = ir.from_text("""<ir_version: 10, opset_import: ["" : 17, "custom" : 1]>
g (float[4] x) => (float[4] y) { y = Relu(x) }""")
    kept = PassManager("dce{opsets=false}").run(model)
    assert "custom" in kept.model.opset_imports and not kept.report.records[0].modified
    removed = PassManager("dce").run(model)
    assert "custom" not in removed.model.opset_imports and removed.report.records[0].stats["opsets"] == 1


def test_bad_option_fails_at_construction() -> None:
    from graphopt.passmanager import Pipeline, Step

    with pytest.raises(PipelineSpecError, match="no option 'bogus'"):
        PassManager(Pipeline([Step("dce", {"bogus": True})]))


def test_named_pipeline_runs_its_expansion() -> None:
    model = ir.from_text("""<ir_version: 10, opset_import: ["" : 17]>
g (float[4] x) => (float[4] y) {
  y = Relu(a)
  a = Identity(x)
}""")
    result = PassManager("O1").run(model)
    simplify = ["inline", "canonicalize-einsum", "fold-constants", "fold-shapes", "eliminate-noops", "eliminate-reshape-pairs", "fold-bias",
                "fold-batchnorm", "merge-sibling-matmuls", "cse", "dce"]
    names = [r.name for r in result.report.records]
    # Round 2 stops after eliminate-noops: the passes behind it found nothing in
    # round 1 after the last change, so they are not run again.
    assert names == ["topological-sort", *simplify, *simplify[:5]]  # fold-shapes establishes shapes-inferred
    assert [r.modified for r in result.report.records if r.name == "eliminate-noops"] == [True, False]
    assert [n.op_type for n in result.model.graph] == ["Relu"]
    assert result.report.spec == "O1"


# fixpoint -------------------------------------------------------------

MASK_CHAIN = """<ir_version: 10, opset_import: ["" : 17]>
g (float[2, 8] x) => (float[2, 8] y) {
  d, mask = Dropout(x)
  dead = Not(mask)
  y = Relu(d)
}"""


def test_fixpoint_stops_when_nothing_changes() -> None:
    # round 1: the Dropout stays (its mask is read), dce removes the reader;
    # round 2: the Dropout goes, dce finds nothing; round 3: nothing changes ->
    # stop. dce is not run in round 3: it found nothing and the model has not
    # changed since.
    result = PassManager("fixpoint{max-iters=8}(eliminate-dropout,dce)").run(ir.from_text(MASK_CHAIN))
    records = result.report.records
    assert [r.name for r in records] == ["eliminate-dropout", "dce"] * 2 + ["eliminate-dropout"]
    assert [r.modified for r in records] == [False, True, True, False, False]
    assert [n.op_type for n in result.model.graph] == ["Relu"]


def test_fixpoint_converged_in_one_round_runs_once(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        result = PassManager("fixpoint{max-iters=5}(eliminate-identity,dce)").run(ir.from_text(SORTED))
    assert [r.name for r in result.report.records] == ["eliminate-identity", "dce"]
    assert not any("did not converge" in r.getMessage() for r in caplog.records)


def test_fixpoint_stops_at_max_iters_and_warns(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="graphopt.passmanager.manager"):
        result = PassManager("fixpoint{max-iters=3}(test-pm-always-modify,dce)").run(ir.from_text(SORTED))
    assert [r.name for r in result.report.records] == ["test-pm-always-modify", "dce"] * 3
    warnings = [r for r in caplog.records if "did not converge" in r.getMessage()]
    assert len(warnings) == 1
    assert "fixpoint{max-iters=3}(test-pm-always-modify,dce)" in warnings[0].getMessage()
    assert "3 iterations" in warnings[0].getMessage()


def test_fixpoint_default_max_iters() -> None:
    result = PassManager("fixpoint(test-pm-always-modify)").run(ir.from_text(SORTED))
    assert len(result.report.records) == 8


def test_fixpoint_warning_can_be_disabled(caplog: pytest.LogCaptureFixture) -> None:
    ctx = PassContext(config={"fixpoint.warn": False})
    with caplog.at_level(logging.WARNING):
        result = PassManager("fixpoint{max-iters=2}(test-pm-always-modify)", ctx).run(ir.from_text(SORTED))
    assert len(result.report.records) == 2
    assert not any("did not converge" in r.getMessage() for r in caplog.records)


def test_nested_fixpoint_counts() -> None:
    # the inner group runs to its own limit in each of the outer group's rounds
    result = PassManager("fixpoint{max-iters=2}(fixpoint{max-iters=3}(test-pm-always-modify))").run(
        ir.from_text(SORTED))
    assert len(result.report.records) == 6


# crashes and the reproducer ---------------------------------------------

CRASH_INPUT = """<ir_version: 10, opset_import: ["" : 17]>
g (float[4] x) => (float[4] y) {
  a = Identity(x)
  y = Relu(a)
}"""


def test_crash_raises_pass_error_naming_the_pass() -> None:
    with pytest.raises(PassError) as info:
        PassManager("eliminate-identity,test-pm-crash").run(ir.from_text(CRASH_INPUT))
    err = info.value
    assert err.pass_name == "test-pm-crash"
    assert "pass 'test-pm-crash' crashed: boom" in str(err)
    assert isinstance(err.__cause__, RuntimeError)
    assert err.reproducer is None  # no reproducer instrument


def test_bad_result_is_a_pass_error() -> None:
    with pytest.raises(PassError, match="'test-pm-bad-result' returned bool, not PassResult"):
        PassManager("test-pm-bad-result").run(ir.from_text(SORTED))


def test_reproducer_writes_model_before_the_pass_and_spec(tmp_path) -> None:
    expected = PassManager("eliminate-identity").run(ir.from_text(CRASH_INPUT)).model
    ctx = PassContext(instruments=[Reproducer(tmp_path)])
    with pytest.raises(PassError) as info:
        PassManager("eliminate-identity,test-pm-crash{message=kaput}", ctx).run(ir.from_text(CRASH_INPUT))
    err = info.value
    assert err.reproducer is not None
    folder = tmp_path / err.reproducer.rsplit("/", 1)[-1]
    assert str(folder) == err.reproducer and folder.is_dir()
    assert f"reproducer written to {folder}" in str(err)
    assert sorted(p.name for p in folder.iterdir()) == ["README.txt", "model.onnx", "pipeline.txt"]
    assert (folder / "pipeline.txt").read_text() == "test-pm-crash{message=kaput}\n"
    reloaded = ir.load(folder / "model.onnx")
    assert ir.to_text(reloaded) == ir.to_text(expected)
    assert "Identity" not in ir.to_text(reloaded)  # the model as the crashing pass received it
    readme = (folder / "README.txt").read_text()
    assert "RuntimeError: kaput" in readme and "graphopt optimize" in readme
    assert "-p 'test-pm-crash{message=kaput}'" in readme


def test_reproducer_not_written_without_crash(tmp_path) -> None:
    repro = Reproducer(tmp_path / "repro")
    PassManager("eliminate-identity", PassContext(instruments=[repro])).run(ir.from_text(CRASH_INPUT))
    assert repro.path is None and not (tmp_path / "repro").exists()


def test_instruments_see_every_hook_in_order() -> None:
    calls: list[str] = []

    class Spy(Instrument):
        def before_pipeline(self, model, ctx, pipeline):  # noqa: ANN001, ANN201
            calls.append(f"start:{pipeline.to_spec()}")

        def before_pass(self, pass_, model, ctx):  # noqa: ANN001, ANN201
            calls.append(f"before:{pass_.name}")

        def after_pass(self, pass_, model, result, ctx, record):  # noqa: ANN001, ANN201
            calls.append(f"after:{pass_.name}:{record.index}")

        def committed(self, pass_, model, record, ctx):  # noqa: ANN001, ANN201
            calls.append(f"committed:{pass_.name}")

        def after_pipeline(self, model, ctx, report):  # noqa: ANN001, ANN201
            calls.append(f"end:{len(report.records)}")

    PassManager("test-pm-needs-topo", PassContext(instruments=[Spy()])).run(ir.from_text(UNSORTED))
    assert calls == [
        "start:test-pm-needs-topo",
        "before:topological-sort", "after:topological-sort:1", "committed:topological-sort",
        "before:test-pm-needs-topo", "after:test-pm-needs-topo:2", "committed:test-pm-needs-topo",
        "end:2",
    ]


# the pass context -------------------------------------------------------

def test_context_defaults() -> None:
    ctx = PassContext()
    assert ctx.target == "ort"
    assert ctx.get("verify.rtol") == 1e-5
    assert ctx.get("fixpoint.warn") is True


def test_context_rejects_unknown_target() -> None:
    with pytest.raises(InputError) as info:
        PassContext(target="tpu")
    msg = str(info.value)
    assert "unknown target 'tpu'" in msg
    for target in ("onnx", "ort", "tensorrt"):
        assert target in msg


def test_context_rejects_unknown_config_key() -> None:
    with pytest.raises(InputError) as info:
        PassContext(config={"verify.rtl": 1e-3})
    msg = str(info.value)
    assert "unknown config key 'verify.rtl'" in msg
    assert "Did you mean verify.rtol" in msg
    for key in ("fixpoint.warn", "verify.atol", "verify.rtol", "verify.seed"):
        assert key in msg


def test_context_converts_and_checks_values() -> None:
    ctx = PassContext(config={"verify.rtol": "1e-3", "verify.seed": 7, "fixpoint.warn": "false"})
    assert ctx.get("verify.rtol") == 1e-3 and ctx.get("verify.seed") == 7 and ctx.get("fixpoint.warn") is False
    with pytest.raises(InputError, match="'verify.seed' expects int, got 'abc'"):
        PassContext(config={"verify.seed": "abc"})


@pytest.mark.parametrize("raw, value", [(True, True), ("true", True), ("1", True), (1, True), ("yes", True),
                                        (False, False), ("False", False), (0, False), ("off", False)])
def test_context_bool_values(raw: object, value: bool) -> None:
    assert PassContext(config={"fixpoint.warn": raw}).get("fixpoint.warn") is value


def test_context_rejects_a_bool_that_is_not_one() -> None:
    with pytest.raises(InputError, match="'fixpoint.warn' expects bool, got 'maybe'"):
        PassContext(config={"fixpoint.warn": "maybe"})


def test_context_does_not_modify_the_callers_config() -> None:
    config = {"verify.rtol": "1e-3"}
    ctx = PassContext(config=config)
    assert config == {"verify.rtol": "1e-3"} and ctx.get("verify.rtol") == 1e-3


def test_context_get_unregistered_key() -> None:
    with pytest.raises(KeyError):
        PassContext().get("nope")
