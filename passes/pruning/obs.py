"""Structured Optimal Brain Surgeon importance (method ``obs``): units ranked by the error they add *after* the
least-squares reconstruction compensates for them.

For a consumer ``Y = X W`` (``W`` ``[C, N]``, input rows first) with ``H = X^T X + lam I`` over the calibration
rows, removing the input rows ``U`` and re-solving the remaining rows by least squares adds

    ``dE_U = tr(W_U^T (H^-1_UU)^-1 W_U)``

to ``||X_S W' - X W||^2``, and the optimal update of the rows that stay is ``dW = -H^-1_:U (H^-1_UU)^-1 W_U``
(Hassibi & Stork 1993, "Optimal Brain Surgeon"; for a block of rows: Frantar & Alistarh 2022, "Optimal Brain
Compression", and Kurtic et al. 2023, "ZipLM", its structured form for heads and neurons). Removing ``U`` takes
it out of the inverse by the Schur complement ``H^-1 <- H^-1 - H^-1_:U (H^-1_UU)^-1 H^-1_U:``.

:func:`obs_scores` removes units greedily: at each step the ``step`` units of least ``dE`` (one attention head,
or ``align`` neurons / channels, the granularity kept counts come in), summed over the group's consumer sites,
then updates every site's weight and inverse and goes on until none is left. A unit's score is the step at which
it went (higher = kept longer), so the top ``k`` by score are the greedy solution at ``k`` kept units, the subset
the least-squares refit (:mod:`.refit`) then reconstructs.

The difference to ``sensitivity`` (``||X_u W_u||^2``, the error with *no* compensation): a unit the others can
reproduce (a duplicated neuron, a head whose output the other heads span) costs nothing here and goes first.

The Gram is the centered one when the consumer has a bias (the refit fits an intercept, as
:func:`~.refit.error_curve` assumes). The refit is a *ridge* least squares, ``min ||X_S W' - X W||^2 + lam
||W'||^2`` (``lam = ridge * mean(diag(G))``, :func:`~graphopt.calibrate.reconstruct.solve_ridge`), a quadratic
in ``W'`` with Hessian ``H = G + lam I`` whose minimum is ``W* = H^-1 G W``, not ``W``; the greedy walk starts
from ``W*``, so that every ``dE`` is the increase of exactly that objective. (Starting from ``W`` charges
``lam ||W_U||^2`` for zeroing the removed rows themselves: a head with large weights and no output then looked
expensive.) Only MatMul / Gemm / 1x1 Conv consumers with a Gram take part; a group without one is scored by
``sensitivity``'s consumer-level change, then magnitude.

Cost: ``size / step`` rank-``step`` downdates of the ``[C, C]`` inverse per site, ~1.6 s for a 1536-neuron FFN
(step 8) on 2 cores, growing with ``C^3 / step``. Measured on all-MiniLM-L6-v2 (heads + FFN, least squares;
``tools/benchmarks/pruning.md``): rank fidelity at 0.6 of the block FLOPs 0.9030 against wanda's 0.8960
(uniform allocation), 0.9198 against 0.9103 with the ``error`` allocation. Without reconstruction it ranks
worse than wanda (the compensation it assumes does not happen).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import numpy as np
import scipy.linalg

from graphopt.deadline import check
from graphopt.errors import InputError
from graphopt.passes.pruning.plan import GroupPlan, Site, weight_rows
from graphopt.passes.pruning.refit import centered_gram

__all__ = ["obs_order", "obs_scores"]

_MEMO: OrderedDict[tuple, tuple[list[Any], np.ndarray]] = OrderedDict()
_MEMO_SIZE = 64


def _inverse(gram: np.ndarray, ridge: float, where: str) -> np.ndarray:
    """``(G + lam I)^-1`` by Cholesky, the ridge raised tenfold (up to 4 times) when ``G`` is not positive
    definite enough; ``lam`` is at least ``1e-12`` times the largest diagonal entry (a Gram of zeros gets 1)."""
    g = np.array(gram, dtype=np.float64)
    d = np.diag(g)
    scale = float(d.mean()) if d.size and d.mean() > 0 else 1.0
    lam = max(ridge * scale, 1e-12 * float(d.max(initial=0.0)), 1e-300)
    for _ in range(5):
        try:
            factor = scipy.linalg.cho_factor(g + lam * np.eye(g.shape[0]), lower=False, check_finite=False)
            # C order: the rank-k downdates below write it row by row (Fortran order made them ~10x slower)
            return np.ascontiguousarray(scipy.linalg.cho_solve(factor, np.eye(g.shape[0]), check_finite=False))
        except np.linalg.LinAlgError:
            lam = max(lam * 10.0, 1e-8 * scale)
    raise InputError(f"the activation Gram of {where} is not positive definite even with ridge {lam:.3g}; "
                     "check the calibration data (NaN-free, more than a handful of rows) or use --method wanda")


def obs_order(weight: np.ndarray | list[np.ndarray], gram: np.ndarray | list[np.ndarray],
              units: np.ndarray | list[np.ndarray], *, step: int = 1, ridge: float = 1e-4,
              where: str = "") -> tuple[np.ndarray, np.ndarray]:
    """The greedy OBS removal order of a group's units, over one or several consumer sites.

    Args:
        weight: ``[C, N]`` a consumer's weight, input rows first (any float), or a list, one per site.
        gram: ``[C, C]`` ``X^T X`` of that consumer's input (float64 sums; centered for an intercept fit), or a
            list matching ``weight``.
        units: ``[U, unit]`` int: each unit's input rows in that consumer, or a list matching ``weight``; every
            site has the same ``U``.
        step: units removed per greedy step (the lowest ``dE`` first), ``>= 1``.
        ridge: relative ridge, ``>= 0``.
        where: names the group in errors.

    Returns:
        ``(order, added)``: ``[U]`` unit indices in removal order (first = least important) and ``[U]`` float64
        aligned with ``order``: the ``dE`` added when that unit went (a step's total on its first position, 0 on
        the others); ``added[:k].sum()`` is the compensated output error ``||X_S W' - X W||^2`` with the first
        ``k`` of ``order`` removed (``k`` a multiple of ``step``); with ``ridge > 0`` the increase of the ridge
        objective ``||X_S W' - X W||^2 + lam ||W'||^2`` over its value with every row kept.

    Raises:
        InputError: shapes disagree, ``step < 1``, ``ridge < 0``, or a Gram that no ridge makes definite.
    """
    ws = weight if isinstance(weight, list) else [weight]
    gs = gram if isinstance(gram, list) else [gram]
    us = units if isinstance(units, list) else [units]
    if not (len(ws) == len(gs) == len(us)) or not ws:
        raise InputError(f"obs_order of {where}: give one weight, Gram and unit table per site")
    if int(step) != step or step < 1 or not ridge >= 0:
        raise InputError(f"obs_order of {where}: step must be a positive integer and ridge >= 0")
    sites = []
    count = None
    for w, g, u in zip(ws, gs, us):
        w = np.array(w, dtype=np.float64)
        u = np.asarray(u, dtype=np.int64)
        if w.ndim != 2 or u.ndim != 2 or np.shape(g) != (w.shape[0], w.shape[0]):
            raise InputError(f"obs_order of {where}: weight [C, N], Gram [C, C] and units [U, unit] expected, got "
                             f"{w.shape}, {np.shape(g)}, {u.shape}")
        if u.size and (u.min() < 0 or u.max() >= w.shape[0]):
            raise InputError(f"obs_order of {where}: unit rows out of range [0, {w.shape[0]})")
        if count is not None and u.shape[0] != count:
            raise InputError(f"obs_order of {where}: every site needs the same number of units")
        count = u.shape[0]
        hinv = _inverse(g, ridge, where)
        sites.append([hinv @ (np.asarray(g, dtype=np.float64) @ w), hinv, u])  # W* = H^-1 G W, the ridge optimum
    alive = np.ones(count, dtype=bool)
    order: list[int] = []
    added = np.zeros(count)
    while alive.any():
        check("the OBS ordering")
        cand = np.flatnonzero(alive)
        cost = np.zeros(cand.size)
        for w, hinv, u in sites:
            rows = u[cand]  # [A, unit]
            if rows.shape[1] == 1:
                r = rows[:, 0]
                cost += np.einsum("an,an->a", w[r], w[r]) / np.maximum(hinv[r, r], 1e-300)
            else:
                blocks = hinv[rows[:, :, None], rows[:, None, :]]  # [A, unit, unit]
                wb = w[rows]  # [A, unit, N]
                cost += np.einsum("aun,aun->a", wb, np.linalg.solve(blocks, wb))
        k = min(int(step), cand.size)
        pick = cand[np.argsort(cost, kind="stable")[:k]]
        picked = [int(p) for p in pick]
        total = 0.0
        for site in sites:
            w, hinv, u = site
            r = u[picked].reshape(-1)
            block = hinv[np.ix_(r, r)]
            wr = w[r]
            solved = np.linalg.solve(block, np.hstack([wr, hinv[r, :]]))  # (H^-1_UU)^-1 [W_U | H^-1_U:]
            total += float(np.sum(wr * solved[:, :wr.shape[1]]))
            cols = hinv[:, r]
            w -= cols @ solved[:, :wr.shape[1]]
            hinv -= cols @ solved[:, wr.shape[1]:]
            w[r] = 0.0
            hinv[r, :] = 0.0
            hinv[:, r] = 0.0
            hinv[r, r] = 1.0  # removed rows: inert (never candidates again)
        added[len(order)] = max(total, 0.0)
        order.extend(picked)
        alive[pick] = False
    return np.asarray(order, dtype=np.int64), added


def obs_scores(plan: GroupPlan, sites: Mapping[str, Site], stats: Mapping[str, Any], *, ridge: float = 1e-4,
               centered: bool = True) -> np.ndarray | None:
    """``plan``'s units scored by their greedy OBS removal step (``[size]`` float64, higher = removed later =
    keep), over the group's MatMul / Gemm / 1x1 Conv / non-overlapping ConvTranspose sites with a Gram
    (:func:`obs_order`, ``step`` = ``plan.step``). A group that also feeds a ``k x k`` Conv (with a Gram) gets
    None: least squares does not compensate there, and an order over the other consumers alone ignores it.

    Args:
        plan: a planned group.
        sites: consumer sites by node name.
        stats: ``{site data value: ChannelStats}`` with Grams.
        ridge: the refit's relative ridge.
        centered: a site with a bias uses the centered Gram (the refit fits an intercept); False: uncentered
            everywhere (reconstruction ``none``/``bias`` does not refit, but the order still assumes it would).

    Returns:
        The scores, or None when no site of the group has a Gram or one of its sites is a ``k x k`` Conv (the
        caller falls back to the consumers' output-change scores).

    Raises:
        InputError: as :func:`obs_order`.
    """
    ws, gs, us, used, key = [], [], [], [], [plan.name, plan.size, plan.step, ridge, centered]
    for node, idx in plan.rows.items():
        site = sites[node]
        st = stats.get(site.data)
        if st is None or st.gram is None or st.channels != site.channels:
            continue
        if not site.pointwise:
            # a k x k Conv consumer takes no least-squares compensation, so OBS's order (which assumes it) would
            # rank the units by the group's 1x1 consumers alone: the caller's Gram-based scores see every consumer
            # (PaddleOCR det, obs uniform at 0.75: box F1 0.32 before, 0.98 with this fallback)
            return None
        ws.append(weight_rows(site.array, site.in_axis))
        gs.append(centered_gram(st) if centered and site.bias is not None and site.intercept else st.gram)
        us.append(idx)
        used.append(st)
        key.append((node, id(st), site.array.shape, float(np.sum(site.array, dtype=np.float64)),
                    float(np.sum(np.square(site.array, dtype=np.float64))), idx.tobytes()))
    if not ws:
        return None
    # compress prunes one model at many ratios with cached statistics (the same ChannelStats objects): the order
    # is computed once; the memo holds the statistics it was computed from, so their ids cannot be reused
    hit = _MEMO.get(tuple(key))
    if hit is not None:
        _MEMO.move_to_end(tuple(key))
        return hit[1].copy()
    order, _ = obs_order(ws, gs, us, step=plan.step, ridge=ridge, where=plan.name)
    scores = np.empty(plan.size)
    scores[order] = np.arange(plan.size, dtype=np.float64)
    _MEMO[tuple(key)] = (used, scores.copy())
    while len(_MEMO) > _MEMO_SIZE:
        _MEMO.popitem(last=False)
    return scores
