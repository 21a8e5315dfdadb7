"""canonicalize-einsum keeps Einsums whose element type MatMul lacks (ONNX backend case
test_einsum_batch_matmul_bfloat16: a bfloat16 MatMul does not load in onnxruntime's CPU EP)."""

from __future__ import annotations

import pytest

from graphopt import ir
from graphopt.passmanager import PassContext, PassManager


@pytest.mark.parametrize(("dtype", "ops"), [("bfloat16", ["Einsum"]), ("int8", ["Einsum"]),
                                            ("float16", ["MatMul"]), ("float", ["MatMul"])])
def test_einsum_becomes_matmul_only_for_matmul_types(dtype, ops):
    model = ir.from_text(f"""<ir_version: 10, opset_import: ["" : 17]>
        g ({dtype}[2,3,4] x, {dtype}[2,4,5] w) => ({dtype}[2,3,5] y) {{
          y = Einsum<equation = "bij,bjk->bik">(x, w)
        }}""")
    result = PassManager("canonicalize-einsum", PassContext()).run(model)
    assert [n.op_type for n in result.model.graph] == ops
    stats = next(r.stats for r in result.report.records if r.name == "canonicalize-einsum")
    assert stats == {"rewritten": int(ops == ["MatMul"]), "kept": int(ops == ["Einsum"])}
