"""Pipelines in their three forms: text spec (parse -> print identical), named
pipelines, YAML, and the errors a bad spec gets."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from graphopt.errors import PipelineSpecError
from graphopt.passmanager import (
    NAMED_PIPELINES, Fixpoint, Named, Pass, PassResult, Pipeline, Step, register_pass, registered_passes,
)

registered_passes()  # import the built-in passes (and any named pipelines they register) before parametrizing

ROUND_TRIP_SPECS = [
    "dce",
    "eliminate-identity,dce",
    "dce{functions=false}",
    "dce{functions=false,opsets=true}",
    "dce{opsets=false,functions=true}",  # option order as written
    "fixpoint(eliminate-identity,dce)",
    "fixpoint{max-iters=3}(eliminate-identity,dce{functions=false})",
    "topological-sort,fixpoint{max-iters=2}(eliminate-dropout,fixpoint{max-iters=4}(eliminate-identity,dce))",
    "O1",
    "O1,dce",
    "eliminate-identity,fixpoint{max-iters=2}(O1)",
]


@pytest.mark.parametrize("spec", ROUND_TRIP_SPECS)
def test_spec_prints_back_identically(spec: str) -> None:
    assert Pipeline.parse(spec).to_spec() == spec


def test_parsed_structure() -> None:
    p = Pipeline.parse("topological-sort,fixpoint{max-iters=3}(dce{functions=false},O1)")
    assert len(p.items) == 2
    step, group = p.items
    assert isinstance(step, Step) and step.name == "topological-sort" and step.options == {}
    assert isinstance(group, Fixpoint) and group.max_iters == 3 and group.iterations == 3
    inner_step, named = group.steps
    assert isinstance(inner_step, Step) and inner_step.options == {"functions": False}  # typed, not "false"
    assert isinstance(named, Named) and named.name == "O1"


def test_fixpoint_default_iterations_is_not_printed() -> None:
    group = Pipeline.parse("fixpoint(dce)").items[0]
    assert isinstance(group, Fixpoint)
    assert group.max_iters is None and group.iterations == 8
    assert group.to_spec() == "fixpoint(dce)"


def test_whitespace_is_tolerated_and_normalized() -> None:
    assert Pipeline.parse(" eliminate-identity , fixpoint{ max-iters=2 }( dce ) ").to_spec() == \
        "eliminate-identity,fixpoint{max-iters=2}(dce)"


def test_option_values_are_normalized() -> None:
    assert Pipeline.parse("dce{functions=0}").to_spec() == "dce{functions=false}"
    assert Pipeline.parse("dce{functions=True}").to_spec() == "dce{functions=true}"


def test_python_objects_print_the_same_spec() -> None:
    p = Pipeline([Step("topological-sort"), Fixpoint([Step("eliminate-identity"), Step("dce", {"opsets": False})], 4)])
    spec = "topological-sort,fixpoint{max-iters=4}(eliminate-identity,dce{opsets=false})"
    assert p.to_spec() == spec
    assert Pipeline.parse(spec) == p


@pytest.mark.parametrize("name", sorted(NAMED_PIPELINES))
def test_named_pipeline_reference_prints_its_name(name: str) -> None:
    p = Pipeline.parse(name)
    assert p.to_spec() == name
    assert isinstance(p.items[0], Named)


@pytest.mark.parametrize("name", sorted(NAMED_PIPELINES))
def test_named_pipeline_expansion_round_trips(name: str) -> None:
    spec = Pipeline.named(name).to_spec()
    assert Pipeline.parse(spec).to_spec() == spec
    assert spec == Pipeline.parse(NAMED_PIPELINES[name][0]).to_spec()


def test_o1_expansion() -> None:
    assert Pipeline.parse("O1").expanded().to_spec() == \
        "topological-sort,fixpoint{max-iters=8}(inline,canonicalize-einsum,fold-constants,fold-shapes,eliminate-noops," \
        "eliminate-reshape-pairs,fold-bias,fold-batchnorm,merge-sibling-matmuls,cse,dce)"


def test_expanded_replaces_nested_references() -> None:
    p = Pipeline.parse("fixpoint{max-iters=2}(O1),dce")
    assert p.expanded().to_spec() == (
        "fixpoint{max-iters=2}(topological-sort,fixpoint{max-iters=8}"
        "(inline,canonicalize-einsum,fold-constants,fold-shapes,eliminate-noops,eliminate-reshape-pairs,fold-bias,fold-batchnorm,"
        "merge-sibling-matmuls,cse,dce)),dce"
    )
    assert p.to_spec() == "fixpoint{max-iters=2}(O1),dce"  # the original keeps its reference


def test_unknown_named_pipeline() -> None:
    with pytest.raises(PipelineSpecError, match="named pipelines: .*O1"):
        Pipeline.named("O9")


@dataclass(frozen=True)
class TypedOptions:
    ops: tuple[str, ...] = field(default=(), metadata={"doc": "op types"})
    ratio: float = 0.5
    count: int = 1
    label: str = "x"
    strict: bool = False


@register_pass("test-pipe-typed")
class Typed(Pass):
    """Test pass with one option of each supported type."""

    Options = TypedOptions

    def run(self, model: object, ctx: object) -> PassResult:
        return PassResult(modified=False)


TYPED_SPEC = "test-pipe-typed{ops=Conv|MatMul,ratio=1e-05,count=3,label=abc,strict=true}"


def test_typed_options_parse_and_print() -> None:
    p = Pipeline.parse(TYPED_SPEC)
    step = p.items[0]
    assert step.options == {"ops": ("Conv", "MatMul"), "ratio": 1e-05, "count": 3, "label": "abc", "strict": True}
    assert p.to_spec() == TYPED_SPEC
    assert step.build().options == TypedOptions(("Conv", "MatMul"), 1e-05, 3, "abc", True)
    assert Pipeline.from_yaml(p.to_yaml()).to_spec() == TYPED_SPEC


@pytest.mark.parametrize("spec, message", [
    ("test-pipe-typed{count=3.5}", "option 'count' got '3.5'"),
    ("test-pipe-typed{ratio=half}", "option 'ratio' got 'half'"),
    ("test-pipe-typed{strict=2}", "option 'strict' got '2'"),
])
def test_typed_option_bad_values(spec: str, message: str) -> None:
    with pytest.raises(PipelineSpecError, match=message):
        Pipeline.parse(spec)


# YAML -----------------------------------------------------------------

YAML_SPECS = [
    "dce",
    "O1",
    "topological-sort,fixpoint{max-iters=3}(eliminate-identity,dce{functions=false,opsets=false}),O1",
    "fixpoint(eliminate-dropout,fixpoint{max-iters=2}(dce))",
]


@pytest.mark.parametrize("spec", YAML_SPECS)
def test_yaml_round_trip(spec: str) -> None:
    text = Pipeline.parse(spec).to_yaml()
    assert text.startswith("pipeline:")
    assert Pipeline.from_yaml(text).to_spec() == spec


@pytest.mark.parametrize("suffix", [".yaml", ".yml"])
def test_yaml_file_round_trip(tmp_path, suffix: str) -> None:
    spec = "topological-sort,fixpoint{max-iters=3}(eliminate-identity,dce{functions=false}),O1"
    path = tmp_path / f"pipe{suffix}"
    path.write_text(Pipeline.parse(spec).to_yaml())
    assert Pipeline.from_yaml(path).to_spec() == spec
    assert Pipeline.from_yaml(str(path)).to_spec() == spec


def test_yaml_written_by_hand(tmp_path) -> None:
    path = tmp_path / "pipe.yaml"
    path.write_text(
        "pipeline:\n"
        "  - topological-sort\n"
        "  - fixpoint:\n"
        "      max-iters: 2\n"
        "      steps:\n"
        "        - eliminate-identity\n"
        "        - dce: {functions: false}\n"
        "  - O1\n"
    )
    assert Pipeline.from_yaml(path).to_spec() == \
        "topological-sort,fixpoint{max-iters=2}(eliminate-identity,dce{functions=false}),O1"


def test_yaml_data_shape() -> None:
    data = Pipeline.parse("dce{functions=false},fixpoint{max-iters=2}(eliminate-identity),O1").to_data()
    assert data == [
        {"dce": {"functions": False}},
        {"fixpoint": {"max-iters": 2, "steps": ["eliminate-identity"]}},
        "O1",
    ]


@pytest.mark.parametrize("text, message", [
    ("steps: [dce]\n", "top-level 'pipeline:'"),
    ("pipeline: dce\n", "must be a list"),
    ("pipeline: [dcee]\n", "Did you mean dce"),
    ("pipeline:\n  - dce: {bogus: 1}\n", "Valid options: functions, opsets"),
    ("pipeline:\n  - fixpoint: {max-iters: 2}\n", "non-empty 'steps'"),
    ("pipeline:\n  - fixpoint: {max-iters: 0, steps: [dce]}\n", "at least 1"),
    ("pipeline: [dce\n", "does not parse"),
    ("pipeline:\n  - [dce]\n", "pipeline\\[0\\]"),
])
def test_yaml_errors(text: str, message: str) -> None:
    with pytest.raises(PipelineSpecError, match=message):
        Pipeline.from_yaml(text)


def test_yaml_missing_file(tmp_path) -> None:
    with pytest.raises(PipelineSpecError, match="does not exist"):
        Pipeline.from_yaml(tmp_path / "nope.yaml")


# errors ---------------------------------------------------------------

def _caret_column(message: str) -> int:
    """Index into the spec of the caret under the quoted spec line."""
    lines = message.splitlines()
    assert lines[-1].strip() == "^", message
    assert lines[-2].startswith("  ") and lines[-1].startswith("  ")
    return lines[-1].index("^") - 2


def test_unknown_pass_suggests_and_lists_candidates() -> None:
    with pytest.raises(PipelineSpecError) as info:
        Pipeline.parse("topological-sort,elim-identity")
    msg = str(info.value)
    assert "unknown pass 'elim-identity'" in msg
    assert "Did you mean eliminate-identity" in msg
    for name in ("dce", "eliminate-dropout", "eliminate-identity", "topological-sort"):
        assert name in msg


def test_unknown_pass_inside_fixpoint() -> None:
    with pytest.raises(PipelineSpecError, match="unknown pass 'dcee'.*Did you mean dce"):
        Pipeline.parse("fixpoint{max-iters=2}(eliminate-identity,dcee)")


def test_unknown_option_lists_valid_options() -> None:
    with pytest.raises(PipelineSpecError) as info:
        Pipeline.parse("dce{function=false}")
    msg = str(info.value)
    assert "no option 'function'" in msg
    assert "Did you mean functions" in msg
    assert "Valid options: functions, opsets" in msg


def test_option_on_pass_without_options() -> None:
    with pytest.raises(PipelineSpecError, match="no option 'x'.*Valid options: none"):
        Pipeline.parse("eliminate-identity{x=1}")


@pytest.mark.parametrize("spec, message", [
    ("dce{functions=maybe}", "option 'functions' got 'maybe': expected true or false"),
    ("fixpoint{max-iters=many}(dce)", "max-iters must be an integer, got 'many'"),
    ("fixpoint{max-iters=2.5}(dce)", "max-iters must be an integer"),
])
def test_bad_option_value(spec: str, message: str) -> None:
    with pytest.raises(PipelineSpecError, match=message):
        Pipeline.parse(spec)


@pytest.mark.parametrize("spec, column, message", [
    ("dce,,eliminate-identity", 4, "expected a pass name"),
    ("dce;eliminate-identity", 3, "expected ',' or the end of the spec"),
    ("dce)", 3, "expected ',' or the end of the spec"),
    ("fixpoint(dce", 12, "expected ',' or '\\)'"),
    ("fixpoint()", 9, "expected a pass name"),
    ("dce{functions=}", 14, "missing option value"),
    ("dce{functions=false", 19, "unclosed '\\{'"),
    ("dce{=false}", 4, "expected an option name"),
    ("dce{functions=true}}", 19, "expected ',' or the end of the spec"),
    ("dce{functions=true,functions=false}", 29, "option 'functions' given twice"),
])
def test_syntax_error_has_caret(spec: str, column: int, message: str) -> None:
    with pytest.raises(PipelineSpecError, match=message) as info:
        Pipeline.parse(spec)
    msg = str(info.value)
    assert msg.splitlines()[-2] == "  " + spec  # the spec is quoted on its own line
    assert _caret_column(msg) == column


@pytest.mark.parametrize("spec", ["", "   ", "\t"])
def test_empty_spec(spec: str) -> None:
    with pytest.raises(PipelineSpecError, match="pipeline spec is empty"):
        Pipeline.parse(spec)


def test_fixpoint_without_group() -> None:
    with pytest.raises(PipelineSpecError, match="'fixpoint' needs a group"):
        Pipeline.parse("dce,fixpoint{max-iters=2}")


def test_fixpoint_max_iters_zero() -> None:
    with pytest.raises(PipelineSpecError, match="max-iters must be at least 1"):
        Pipeline.parse("fixpoint{max-iters=0}(dce)")


def test_fixpoint_unknown_option() -> None:
    with pytest.raises(PipelineSpecError, match="'fixpoint' has no option 'iters'. Valid options: max-iters"):
        Pipeline.parse("fixpoint{iters=2}(dce)")


def test_pass_is_not_a_group() -> None:
    with pytest.raises(PipelineSpecError, match="'dce' is not a group"):
        Pipeline.parse("dce(eliminate-identity)")


def test_named_pipeline_takes_no_options() -> None:
    with pytest.raises(PipelineSpecError, match="named pipeline 'O1' takes no options"):
        Pipeline.parse("O1{max-iters=2}")


def test_errors_are_input_errors() -> None:
    from graphopt.errors import InputError

    with pytest.raises(InputError) as info:
        Pipeline.parse("nope")
    assert info.value.exit_code == 2
