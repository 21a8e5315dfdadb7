"""canonicalize-einsum: an ``Einsum`` that is a matrix product becomes ``MatMul``."""

from __future__ import annotations

from dataclasses import dataclass

from graphopt import ir
from graphopt.passmanager import Pass, PassResult, register_pass

__all__ = ["CanonicalizeEinsum", "MatMulForm", "matmul_form"]

RULE = "canonicalize-einsum"
ELLIPSIS = "."  # "..." is read as one symbol, spelled "."
#: element types MatMul is defined for (ONNX MatMul-13) less bfloat16, which onnxruntime's CPU EP has no
#: MatMul kernel for (backend case test_einsum_batch_matmul_bfloat16); Einsum with others (int8, bf16) stays
_MATMUL_TYPES = frozenset({ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.DOUBLE, ir.DataType.INT32,
                           ir.DataType.INT64, ir.DataType.UINT32, ir.DataType.UINT64})


@dataclass(frozen=True)
class MatMulForm:
    """How an Einsum is computed as ``MatMul(a, b)``.

    Attributes:
        swap: the operands are given weight first (``io,bi->bo``): MatMul reads
            them in the other order.
        perm: the permutation of the right operand (``b``) that brings its
            contracted axis next to last (``bi,oi->bo``: ``[1, 0]``), or None.
    """

    swap: bool = False
    perm: tuple[int, ...] | None = None


def _terms(equation: str) -> tuple[list[list[str]], list[str]] | str:
    """Split ``'bi,io->bo'`` into input terms and the output term, each a list
    of symbols (``'...'`` is one symbol, ``'.'``); implicit mode (no ``->``)
    gets the ONNX spec's output: the letters used once, in alphabetical order,
    after the ellipsis when one appears."""
    text = equation.replace(" ", "")
    if "->" in text:
        lhs, out = text.split("->", 1)
    else:
        lhs, out = text, None

    def symbols(term: str) -> list[str] | None:
        if term.count("...") > 1 or term.replace("...", "").count(".") > 0:
            return None
        marked = term.replace("...", ELLIPSIS)
        if not all(c.isalpha() or c == ELLIPSIS for c in marked):
            return None
        return list(marked)

    ins = [symbols(t) for t in lhs.split(",")]
    if any(t is None for t in ins):
        return f"equation {equation!r} does not parse"
    if out is None:
        letters = [c for t in ins for c in t if c != ELLIPSIS]
        once = sorted(c for c in set(letters) if letters.count(c) == 1)
        output = ([ELLIPSIS] if any(ELLIPSIS in t for t in ins) else []) + once
    else:
        output = symbols(out)
        if output is None:
            return f"equation {equation!r} does not parse"
    return ins, output


def matmul_form(equation: str, ranks: tuple[int | None, int | None]) -> MatMulForm | str:
    """The :class:`MatMulForm` of a two-operand Einsum, or why it is not a MatMul.

    An Einsum is ``MatMul(A, B)`` (ONNX MatMul: numpy ``matmul`` semantics,
    batch dims broadcast) when, naming the contracted letter ``k``:

    * *dense*: ``A = P k``, ``B = k n`` (2-D), output ``P n``: ``P`` is any
      run of distinct letters, possibly starting with ``...`` (jax2tf's Dense
      layers: ``bi,io->bo``, ``...i,io->...o``, ``bsi,io->bso``; ``ij,jk->ik``);
      ``B = n k`` is the same with B transposed (``bi,oi->bo``);
    * *batched*: ``A = Q m k``, ``B = Q k n`` (or ``Q n k``), output
      ``Q m n`` with the same batch letters ``Q`` (or both ``...`` first) in
      the same order (``bij,bjk->bik``, ``bhqd,bhkd->bhqk``);
    * either of the above with the operands given in the other order
      (``io,bi->bo``).

    Each letter appears at most once per term, ``k`` only in the inputs, the
    other letters exactly where the form puts them; anything else (a trace
    ``ii->i``, a transpose ``bij->bji``, a row-wise dot ``bi,bi->b``, an outer
    product, a permuted output) is not a MatMul. Source: the ONNX ``Einsum``
    operator spec (opset 12) for the equation grammar.

    Args:
        equation: the Einsum's ``equation`` attribute.
        ranks: the operands' ranks where known (an ellipsis is then checked to
            cover at least zero dims; ``None`` when unknown).

    Returns:
        The form, or a reason string.
    """
    parsed = _terms(equation)
    if isinstance(parsed, str):
        return parsed
    ins, out = parsed
    if len(ins) != 2:
        return f"{len(ins)} operands, not 2"
    for term, rank in zip(ins, ranks):
        named = len([c for c in term if c != ELLIPSIS])
        if rank is not None and (rank < named or (ELLIPSIS not in term and rank != named)):
            return "an operand's rank does not match its term"
    for swap in (False, True):
        a, b = (ins[1], ins[0]) if swap else (ins[0], ins[1])
        form = _dense(a, b, out) or _batched(a, b, out)
        if form is not None:
            return MatMulForm(swap=swap, perm=form[1])
    return "not a matrix product (contracted letter, batch letters or output order)"


def _distinct(term: list[str]) -> bool:
    return len(set(term)) == len(term)


def _dense(a: list[str], b: list[str], out: list[str]) -> tuple[bool, tuple[int, ...] | None] | None:
    """``A = P k``, ``B = k n`` or ``n k``, out ``P n``; ``(True, perm)`` or None."""
    if len(a) < 1 or len(b) != 2 or ELLIPSIS in b or not (_distinct(a) and _distinct(b) and _distinct(out)):
        return None
    k, prefix = a[-1], a[:-1]
    if k == ELLIPSIS or k not in b or k in out or ELLIPSIS in a[1:]:
        return None
    n = b[1] if b[0] == k else b[0]
    if n == k or n in prefix or out != prefix + [n]:
        return None
    return True, None if b[0] == k else (1, 0)


def _batched(a: list[str], b: list[str], out: list[str]) -> tuple[bool, tuple[int, ...] | None] | None:
    """``A = Q m k``, ``B = Q k n`` or ``Q n k``, out ``Q m n``; ``(True, perm)`` or None."""
    if len(a) < 3 or len(a) != len(b) or not (_distinct(a) and _distinct(b) and _distinct(out)):
        return None
    batch = a[:-2]
    if b[:-2] != batch or ELLIPSIS in a[-2:] or ELLIPSIS in b[-2:] or (ELLIPSIS in batch and batch[0] != ELLIPSIS):
        return None
    m, k = a[-2], a[-1]
    if b[-2:] == [k, b[-1]]:
        n, perm = b[-1], None
    elif b[-2:] == [b[-2], k]:
        n = b[-2]
        perm = tuple(range(len(b) - 2)) + (len(b) - 1, len(b) - 2)
    else:
        return None
    if len({m, k, n}) != 3 or {m, k, n} & set(batch) or out != batch + [m, n]:
        return None
    if ELLIPSIS in batch:
        return None if perm is not None else (True, None)  # a Transpose perm cannot name the ellipsis' dims
    return True, perm


def _rank(value: ir.Value) -> int | None:
    if value.shape is not None:
        return len(value.shape)
    tensor = ir.const_tensor(value)
    return len(tensor.shape) if tensor is not None else None


@register_pass("canonicalize-einsum")
class CanonicalizeEinsum(Pass):
    """Rewrite an ``Einsum`` that is a matrix product into ``MatMul`` (with a ``Transpose`` of B where its
    contracted axis comes last).

    jax2tf exports Flax/Haiku ``Dense`` layers as ``Einsum`` (``bi,io->bo``,
    ``...i,io->...o``, ``bsi,io->bso``), and attention scores as
    ``bhqd,bhkd->bhqk``. Fusions, bias folding and quantization placement
    see MatMuls only, so the Einsum form leaves those layers float and
    unfused; onnxruntime's Einsum kernel is also slower than its MatMul. The
    forms accepted are listed in :func:`matmul_form` (dense, batched,
    transposed B, operands in either order); every other Einsum is left as it
    is and counted (``kept``), e.g. ``ii->i`` or ``bij->bji``. The rewrite is
    exact: MatMul computes the same sums (onnxruntime's Einsum itself lowers
    such equations to MatMul).

    A transposed B gets a ``Transpose`` node; when B is a constant,
    ``fold-constants`` folds it (same size: it never grows data). The MatMul
    takes the Einsum's output value name, so the graph signature does not
    change, and records the rule in ``metadata_props["graphopt.rule"]``.
    Graphs, subgraphs and function bodies are all rewritten. Source: the ONNX
    ``Einsum`` spec (opset 12+), jax2tf's ``dot_general`` lowering.
    """

    preserves = frozenset({"topo-sorted", "shapes-inferred"})

    def run(self, model: ir.Model, ctx: object) -> PassResult:
        stats = {"rewritten": 0, "kept": 0}
        for container in ir.graphs_and_functions(model):
            for node in list(container):
                if node.op_type != "Einsum" or node.domain not in ("", "ai.onnx"):
                    continue
                if self._rewrite(container, node):
                    stats["rewritten"] += 1
                else:
                    stats["kept"] += 1
        return PassResult(modified=stats["rewritten"] > 0, stats=stats)

    @staticmethod
    def _rewrite(container: ir.Graph | ir.Function, node: ir.Node) -> bool:
        attr = node.attributes.get("equation")
        if attr is None or attr.is_ref() or len(node.inputs) != 2 or any(v is None for v in node.inputs):
            return False
        a, b = node.inputs
        if a.dtype is not None and a.dtype not in _MATMUL_TYPES:  # Einsum takes every numeric type; MatMul fewer
            return False
        form = matmul_form(attr.as_string(), (_rank(a), _rank(b)))
        if isinstance(form, str):
            return False
        if form.swap:
            a, b = b, a
        base = node.name or "einsum"
        if form.perm is not None:
            transpose = ir.Node("", "Transpose", [b], attributes=[ir.Attr("perm", ir.AttributeType.INTS, list(form.perm))],
                                name=f"{base}/transpose_b", num_outputs=1)
            transposed = transpose.outputs[0]
            transposed.type = b.type
            if b.shape is not None:
                transposed.shape = ir.Shape([b.shape[i] for i in form.perm])
            transpose.metadata_props["graphopt.rule"] = RULE
            container.insert_before(node, transpose)
            b = transposed
        matmul = ir.Node("", "MatMul", [a, b], name=base, num_outputs=1)
        matmul.metadata_props["graphopt.rule"] = RULE
        old = node.outputs[0]
        new = matmul.outputs[0]
        new.type, new.shape = old.type, old.shape
        name = old.name
        container.insert_before(node, matmul)
        old.name = None
        new.name = name
        old.replace_all_uses_with(new, replace_graph_outputs=True)
        container.remove(node, safe=True)
        return True
