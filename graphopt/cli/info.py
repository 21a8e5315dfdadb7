"""``graphopt inspect``, ``graphopt passes`` and ``graphopt verify``."""

from __future__ import annotations

import argparse
import json
from typing import Any

from rich.table import Table
from rich.text import Text

from graphopt import ir
from graphopt.analysis import model_stats
from graphopt.cli.common import add_dim_options, input_request, stdout
from rich.markup import escape

from graphopt.passmanager import NAMED_PIPELINES, option_fields_of, registered_passes

__all__ = ["add_parsers"]


def _dims_text(dims: list[Any] | None) -> Text:
    """``[batch,sequence]`` as plain text: rich would read the brackets as markup."""
    return Text("?" if dims is None else "[" + ",".join("?" if d is None else str(d) for d in dims) + "]")


def cmd_inspect(args: argparse.Namespace) -> int:
    """Print opsets, signature, op histogram, parameters and FLOPs."""
    model = ir.load(args.input)
    request = input_request(args, args.input)
    # --dim and the dims --shape names; whole --shape sizes for unnamed dims; MatMul/Gemm/Conv shapes inference
    # cannot follow are measured in one onnxruntime run
    stats = model_stats(model, with_flops=True, dims=request.bound, shapes=request.shapes, measure=True)
    if args.json:
        doc = stats.to_dict()
        doc.update({"ir_version": model.ir_version, "producer": model.producer_name or ""})
        stdout.print_json(json.dumps(doc))
        return 0
    stdout.print(f"[bold]{escape(args.input)}[/]  ir_version {model.ir_version}, producer "
                 f"{model.producer_name or '?'} {model.producer_version or ''}")
    stdout.print("opsets: " + ", ".join(f"{d}={v}" for d, v in stats.opsets.items()))
    sig = Table(title="signature", show_edge=False)
    for col in ("", "name", "dtype", "dims"):
        sig.add_column(col, overflow="fold")
    for kind in ("inputs", "outputs"):
        for v in stats.signature[kind]:
            sig.add_row(kind[:-1], Text(v["name"]), v["dtype"], _dims_text(v["dims"]))
    stdout.print(sig)
    ops = Table(title=f"{stats.nodes} nodes", show_edge=False)
    ops.add_column("op", overflow="fold")
    ops.add_column("count", justify="right")
    for op, n in stats.ops.items():
        ops.add_row(op, str(n))
    stdout.print(ops)
    where = f"{stats.initializers} initializers" + (
        f" and {stats.constant_weights} Constant nodes" if stats.constant_weights else "")
    stdout.print(f"parameters: {stats.parameters:,} in {where} ({stats.bytes:,} bytes)")
    unknown = (f"; {stats.flops_unknown} MatMul/Gemm/Conv/ConvTranspose nodes with unknown shapes not counted"
               if stats.flops_unknown else "")
    if stats.flops_approximate:
        unknown += f"; {stats.flops_approximate} with a data-dependent dim taken as 1"
    stdout.print(f"FLOPs (MatMul/Gemm/Conv/ConvTranspose, one inference): {stats.flops:,}{unknown}")
    return 0


def _rule_doc(rule: Any) -> dict[str, Any]:
    """A rule's first doc line, targets and opset range, for ``graphopt passes``."""
    lo, hi = rule.opsets
    first = (type(rule).__doc__ or "").strip().split("\n\n")[0]
    return {"doc": " ".join(first.split()), "targets": ",".join(sorted(rule.targets)),
            "opsets": f"{lo or 1}..{hi or ''}", "variants": len(rule.variants)}


def cmd_passes(args: argparse.Namespace) -> int:
    """List every registered pass with its one-line doc and options, and the named pipelines."""
    passes = registered_passes()
    if args.json:
        doc = {
            "passes": {name: {"doc": cls.summary(), "options": {
                key: {"default": f.default, "doc": f.metadata.get("doc", "")}
                for key, f in option_fields_of(cls).items()},
                "rules": {r.name: _rule_doc(r) for r in getattr(cls, "rules", ())}} for name, cls in passes.items()},
            "pipelines": {name: {"spec": spec, "doc": doc} for name, (spec, doc) in NAMED_PIPELINES.items()},
        }
        stdout.print_json(json.dumps(doc, default=str))
        return 0
    table = Table(title="passes", show_edge=False, show_lines=False)
    table.add_column("pass", style="bold", overflow="fold")
    table.add_column("what it does", overflow="fold")
    table.add_column("options", overflow="fold")
    table.add_column("rules (graphopt explain RULE)", overflow="fold")
    for name, cls in passes.items():
        opts = "\n".join(f"{key}={f.default} {f.metadata.get('doc', '')}" for key, f in option_fields_of(cls).items())
        rules = "\n".join(f"{r.name}: {_rule_doc(r)['targets']}" for r in getattr(cls, "rules", ()))
        table.add_row(name, cls.summary(), opts, rules)
    stdout.print(table)
    named = Table(title="named pipelines", show_edge=False)
    named.add_column("name", style="bold")
    named.add_column("spec")
    named.add_column("what it does")
    for name, (spec, doc) in NAMED_PIPELINES.items():
        named.add_row(name, spec, doc)
    stdout.print(named)
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    """Compare two models' outputs in onnxruntime; exit 1 when they differ."""
    from graphopt.verify import compare
    from graphopt.verify.feed import runnable_inputs

    feed = runnable_inputs(args.a, input_request(args, args.a))  # inputs the reference runs on, or exit 2
    report = compare(args.a, args.b, inputs=feed.inputs, rtol=args.rtol, atol=args.atol)
    if args.json:
        stdout.print_json(json.dumps(report.to_dict(), default=str))
    else:
        table = Table(title=Text(f"{args.a} vs {args.b}"), show_edge=False)
        for col in ("output", "shape", "max abs", "max rel", "cosine", "argmax agree", "ok"):
            table.add_column(col, justify="right" if col not in ("output",) else "left", overflow="fold")
        for o in report.outputs:
            agree = "" if o.argmax_agreement is None else f"{o.argmax_agreement:.4f}"
            table.add_row(Text(o.name), Text(str(list(o.shape))), f"{o.max_abs_err:.3g}", f"{o.max_rel_err:.3g}",
                          "" if o.cosine is None else f"{o.cosine:.6f}", agree, "yes" if o.ok else "[red]no[/]")
        stdout.print(table)
        stdout.print("outputs match" if report.ok else f"[red]outputs differ:[/] {escape(report.summary())}")
    return 0 if report.ok else 1


def add_parsers(sub: Any) -> None:
    """Register ``inspect``, ``passes`` and ``verify``."""
    p = sub.add_parser("inspect", help="opsets, signature, op histogram, parameters, FLOPs")
    p.add_argument("input")
    add_dim_options(p, inputs=False, values=False)  # --dim, --shape: the sizes of the FLOPs estimate
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_inspect)
    p = sub.add_parser("passes", help="every registered pass and named pipeline")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_passes)
    p = sub.add_parser("verify", help="compare two models' outputs in onnxruntime")
    p.add_argument("a", help="reference model")
    p.add_argument("b", help="model to check")
    add_dim_options(p)
    p.add_argument("--rtol", type=float, default=1e-5)
    p.add_argument("--atol", type=float, default=1e-6)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_verify)

