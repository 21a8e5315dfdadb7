"""``graphopt explain RULE IN``: why a rewrite rule fires or not at each candidate site."""

from __future__ import annotations

import argparse
import json
from typing import Any

from rich.table import Table
from rich.text import Text

from graphopt import ir
from graphopt.cli.common import stdout
from graphopt.passmanager import PROVIDERS, TARGETS, PassContext, PassManager, Pipeline, Step

__all__ = ["add_parsers", "prefix_pipeline"]


def prefix_pipeline(pass_name: str, spec: str | None) -> Pipeline | None:
    """The pipeline to run before explaining a rule of ``pass_name``: ``spec``
    when given (``none``: nothing), else ``O2`` up to that pass's first
    top-level occurrence (``O1`` when O2 does not run it)."""
    if spec is not None:
        return None if spec.strip().lower() == "none" else Pipeline.parse(spec)
    expanded = Pipeline.parse("O2").expanded().items
    for i, item in enumerate(expanded):
        if isinstance(item, Step) and item.name == pass_name:
            return Pipeline(expanded[:i]) if i else None
    return Pipeline.parse("O1")


def cmd_explain(args: argparse.Namespace) -> int:
    """Run the prefix pipeline, then report every candidate site of the rule."""
    from graphopt.analysis.shapes import symbolic_shapes
    from graphopt.pattern import RuleEnv, explain, find_rule

    pass_name, rule = find_rule(args.rule)
    model = ir.load(args.input)
    config: dict[str, Any] = {"opset.upgrade": args.opset} if args.opset else {}
    if args.provider is not None:
        config["ort.provider"] = args.provider
    ctx = PassContext(target=args.target, config=config)
    prefix = prefix_pipeline(pass_name, args.pipeline)
    if prefix is not None:
        model = PassManager(prefix, ctx).run(model).model
    options = Step(pass_name).build().rule_options(ctx)  # as the pass hands them to its rules
    env = RuleEnv(model, args.target, options, shapes=symbolic_shapes(model), pass_ctx=ctx)
    result = explain(env, rule, pass_name)
    if args.json:
        doc = result.to_dict()
        doc["pipeline"] = prefix.to_spec() if prefix is not None else ""
        stdout.print_json(json.dumps(doc, default=str))
        return 0
    head = f"rule [bold]{rule.name}[/] (pass {pass_name}, target {args.target})"
    if prefix is not None:
        head += f" after: {prefix.to_spec()}"
    stdout.print(head)
    if result.inapplicable:
        stdout.print(f"[yellow]{result.inapplicable}[/]")
    table = Table(show_edge=False)
    for col in ("#", "node", "op", "verdict", "about"):
        table.add_column(col, overflow="fold")
    for i, site in enumerate(result.sites, 1):
        verdict = Text("fires", style="green") if site.fires else Text(site.reason)
        table.add_row(str(i), Text(site.node.name or ""), site.node.op_type, verdict, Text(site.where()))
    stdout.print(table)
    stdout.print(f"{result.fired} of {len(result.sites)} candidate sites match")
    return 0


def add_parsers(sub: Any) -> None:
    """Register ``explain``."""
    p = sub.add_parser("explain", help="why a rewrite rule fires or not at each candidate site of a model")
    p.add_argument("rule", help="rule name (see `graphopt passes`), e.g. attention, layernorm, gelu-erf")
    p.add_argument("input", help="input .onnx model (never modified)")
    p.add_argument("--target", choices=sorted(TARGETS), default="ort", help="target to explain for (default: ort)")
    p.add_argument("-p", "--pipeline", help=(
        "pipeline to run first (default: O2 up to the rule's pass; 'none' for the model as it is)"))
    p.add_argument("--opset", type=int, metavar="N", help="allow an opset upgrade to N, as graphopt optimize --opset")
    p.add_argument("--provider", choices=PROVIDERS, help="the onnxruntime execution provider, as graphopt optimize "
                   "--provider (default cpu)")
    p.add_argument("--json", action="store_true", help="print a machine-readable report on stdout")
    p.set_defaults(func=cmd_explain)
