"""canonicalize-einsum's equation analysis (``matmul_form``): each accepted
form with its operand order and B permutation, and the reason given for each
equation that is not a matrix product. The rewrites themselves are golden
cases in tests/golden/cleanup/canonicalize-einsum/."""

from __future__ import annotations

import pytest

from graphopt.passes.cleanup.einsum import MatMulForm, matmul_form


@pytest.mark.parametrize("equation, ranks, form", [
    ("bi,io->bo", (2, 2), MatMulForm()),
    ("...i,io->...o", (4, 2), MatMulForm()),
    ("... i , i o -> ... o", (3, 2), MatMulForm()),  # spaces are allowed by the ONNX spec
    ("bsi,io->bso", (3, 2), MatMulForm()),
    ("ij,jk->ik", (2, 2), MatMulForm()),
    ("ij,jk", (2, 2), MatMulForm()),  # implicit output 'ik'
    ("k,kn->n", (1, 2), MatMulForm()),
    ("bi,oi->bo", (2, 2), MatMulForm(perm=(1, 0))),
    ("io,bi->bo", (2, 2), MatMulForm(swap=True)),
    ("oi,bsi->bso", (2, 3), MatMulForm(swap=True, perm=(1, 0))),
    ("bij,bjk->bik", (3, 3), MatMulForm()),
    ("...ij,...jk->...ik", (4, 4), MatMulForm()),
    ("bhqd,bhkd->bhqk", (4, 4), MatMulForm(perm=(0, 1, 3, 2))),
    ("bi,io->bo", (None, None), MatMulForm()),  # ranks unknown (function bodies): the equation decides
])
def test_matmul_forms(equation, ranks, form):
    assert matmul_form(equation, ranks) == form


@pytest.mark.parametrize("equation, ranks, reason", [
    ("ii->i", (2, None), "1 operands, not 2"),
    ("bij->bji", (3, None), "1 operands, not 2"),
    ("bi,ij,jk->bk", (2, 2), "3 operands, not 2"),
    ("bi,bi->b", (2, 2), "not a matrix product"),
    ("i,j->ij", (1, 1), "not a matrix product"),
    ("bi,io->ob", (2, 2), "not a matrix product"),
    ("bij,bjk->bki", (3, 3), "not a matrix product"),
    ("bij,cjk->bik", (3, 3), "not a matrix product"),  # different batch letters: a sum over c
    ("bii,io->bo", (3, 2), "not a matrix product"),  # a repeated letter is a diagonal
    ("...ij,...kj->...ik", (3, 3), "not a matrix product"),  # a Transpose perm cannot name the ellipsis' dims
    ("bi,io->bo", (3, 2), "an operand's rank does not match its term"),
    ("b.i,io->bo", (2, 2), "does not parse"),
])
def test_not_matmul_forms_say_why(equation, ranks, reason):
    got = matmul_form(equation, ranks)
    assert isinstance(got, str) and reason in got
