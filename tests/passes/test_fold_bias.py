"""fold-bias beyond the golden cases: chained with fold-batchnorm, dtypes
without a Gemm kernel, the ``gemm`` option, Gemm with a full C, stats."""

from __future__ import annotations

from graphopt import ir
from graphopt.passmanager import PassContext, PassManager
from helpers import check_numerics, ops, pass_stats

HEAD = '<ir_version: 10, opset_import: ["" : 17]>'


def run(model: ir.Model, spec: str):
    return PassManager(spec, PassContext()).run(model)


def stats(result, name: str = "fold-bias") -> dict:
    return pass_stats(result, name)


def test_conv_bn_add_chain_and_float16_matmul_stays():
    model = ir.from_text(HEAD + """
g (float[1, 2, 3, 3] x, float16[4, 3] a) => (float[1, 2, 3, 3] y, float16[4, 2] z) {
  w = Constant<value = float[2, 2, 1, 1] {1.0, 2.0, 3.0, 4.0}>()
  s = Constant<value = float[2] {2.0, 0.5}>()
  t = Constant<value = float[2] {1.0, -1.0}>()
  c = Conv(x, w)
  n = BatchNormalization(c, s, t, t, s)
  k = Constant<value = float[2, 1, 1] {0.25, 0.75}>()
  y = Add(n, k)
  whf = Constant<value = float[3, 2] {1.0, 2.0, 3.0, 4.0, 5.0, 6.0}>()
  wh = Cast<to = 10>(whf)
  bhf = Constant<value = float[2] {1.0, 2.0}>()
  bh = Cast<to = 10>(bhf)
  m = MatMul(a, wh)
  z = Add(m, bh)
}""")
    before = ir.clone(model)
    result = run(model, "fold-constants,fold-batchnorm,fold-bias,dce")
    assert ops(result.model) == ["Conv", "MatMul", "Add"]  # no float16 Gemm: onnxruntime's CPU Gemm has none
    assert stats(result)["conv"] == 1
    check_numerics(before, result.model)


def test_gemm_option_off_and_full_c():
    text = HEAD + """
g (float[4, 3] x) => (float[4, 2] y, float[4, 2] z) {
  w = Constant<value = float[3, 2] {1.0, 2.0, 3.0, 4.0, 5.0, 6.0}>()
  r = Constant<value = float[2] {0.5, -0.5}>()
  m = MatMul(x, w)
  y = Add(r, m)
  full = Constant<value = float[4, 2] {1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0}>()
  g1 = Gemm<beta = 0.5>(x, w, full)
  z = Sub(g1, r)
}"""
    off = run(ir.from_text(text), "fold-bias{gemm=false},dce")
    assert ops(off.model) == ["MatMul", "Add", "Gemm"]
    assert stats(off) == {"conv": 0, "convtranspose": 0, "gemm": 1, "matmul": 0, "kept": 1}
    model = ir.from_text(text)
    before = ir.clone(model)
    on = run(model, "fold-bias,dce")
    assert ops(on.model) == ["Gemm", "Gemm"]
    gemm = [n for n in on.model.graph if n.op_type == "Gemm"][1]
    assert ir.const_array(gemm.inputs[2]).tolist() == [[0.0, 1.5], [1.0, 2.5], [2.0, 3.5], [3.0, 4.5]]
    check_numerics(before, on.model)


def test_nothing_to_do_reports_unmodified():
    model = ir.from_text(HEAD + """
g (float[1, 2, 3, 3] x, float[1, 2, 1, 1] b) => (float[1, 2, 3, 3] y) {
  w = Constant<value = float[2, 2, 1, 1] {1.0, 2.0, 3.0, 4.0}>()
  c = Conv(x, w)
  y = Add(c, b)
}""")
    result = run(model, "fold-bias")
    assert not result.report.records[-1].modified
    assert ops(result.model) == ["Conv", "Add"]
