"""Reconstruction after pruning: refit each consumer whose input rows shrank.

Choices (:data:`RECONSTRUCTIONS`), all from :mod:`graphopt.calibrate.reconstruct`:

- ``least-squares``: Kwon et al. 2022's layer-wise reconstruction,
  ``W' = (G_SS + lam I)^-1 G_S: W`` with ``G = X^T X`` of the consumer's
  unpruned input on the calibration data (float64), fitted with an
  unpenalized intercept into the bias when the consumer has one (so the
  removed channels' mean moves into it); MatMul, Gemm and 1x1 Conv only
  (a ``k x k`` Conv gets bias compensation);
- ``bias``: FLAP's bias compensation (An et al. 2024), the removed channels'
  mean contribution added to the bias (a ``k x k`` Conv's kernel summed);
- ``none``: the kept rows as they were.

:func:`error_curve` evaluates the consumer output error of a group at a
ladder of kept counts from the same Grams (:func:`~graphopt.calibrate.reconstruct.output_error`),
for the ``error`` allocation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from graphopt import ir
from graphopt.calibrate.reconstruct import bias_compensation, refit_kept, solve_ridge
from graphopt.deadline import check
from graphopt.errors import InputError
from graphopt.passes.pruning.plan import GroupPlan, Site, rows_to_weight, weight_rows

__all__ = ["RECONSTRUCTIONS", "SiteRefit", "centered_gram", "kept_channels", "removed_outputs", "refit_sites",
           "error_curve"]

RECONSTRUCTIONS = ("least-squares", "bias", "none")
"""Reconstruction choices by name."""


@dataclass
class SiteRefit:
    """What one consumer got: ``how`` (``least-squares``, ``bias``, ``none``, or why not), channels before/after."""

    node: str
    how: str
    channels_before: int
    channels_after: int


def kept_channels(site: Site, plans: Sequence[GroupPlan], keeps: Mapping[str, Sequence[int]]) -> np.ndarray:
    """The site weight's input rows that stay (sorted), given every group's kept units."""
    removed: set[int] = set()
    for p in plans:
        idx = p.rows.get(site.node)
        if idx is None or p.name not in keeps:
            continue
        gone = np.setdiff1d(np.arange(p.size), np.asarray(keeps[p.name], dtype=np.int64))
        removed.update(int(i) for i in idx[gone].reshape(-1))
    return np.array([c for c in range(site.channels) if c not in removed], dtype=np.int64)


def removed_outputs(site: Site, plans: Sequence[GroupPlan], keeps: Mapping[str, Sequence[int]]) -> np.ndarray:
    """The site weight's output channels removed by the groups the site *produces* for (a Conv that both reads a
    pruned group and feeds another), sorted; empty for most consumers."""
    out_axis = 0 if site.op == "Conv" else (1 - site.in_axis)
    removed: set[int] = set()
    for p in plans:
        if p.name not in keeps:
            continue
        gone = np.setdiff1d(np.arange(p.size), np.asarray(keeps[p.name], dtype=np.int64))
        for s in p.group.slices:
            if s.role == "out" and s.tensor == site.weight and s.axis == out_axis and \
                    (not s.readers or site.node in s.readers):
                removed.update(int(i) for i in (s.start + gone[:, None] * s.unit + np.arange(s.unit)).reshape(-1))
    return np.array(sorted(removed), dtype=np.int64)


def centered_gram(st: object) -> np.ndarray:
    """``X^T X - R m m^T`` ``[C, C]`` float64 from a :class:`~graphopt.calibrate.stats.ChannelStats` with a Gram:
    the Gram of the centered input, what a least-squares fit with an intercept sees."""
    return st.gram - st.rows * np.outer(st.mean, st.mean)


def _bias_value(node: ir.Node, site: Site) -> ir.Value | None:
    if site.bias is None:
        return None
    if site.op == "MatMul":
        add = next(iter(node.outputs[0].uses()))[0]
        return next((v for v in add.inputs if v is not None and v.name == site.bias), None)
    return node.inputs[2] if len(node.inputs) > 2 and node.inputs[2] is not None else None


def _set_const(graph: ir.Graph, node: ir.Node, value: ir.Value, array: np.ndarray) -> None:
    """Give ``node``'s read of ``value`` the data ``array`` (in place when only ``node`` reads it, else a copy)."""
    users = {id(u[0]) for u in value.uses()}
    if users == {id(node)} and value.name in graph.initializers:
        value.const_value = ir.Tensor(array, name=value.name)
        value.shape = ir.Shape(array.shape)
        return
    new = ir.add_initializer(graph, array, f"{value.name}_refit")
    for i, v in enumerate(node.inputs):
        if v is value:
            node.replace_input_with(i, new)


def refit_sites(model: ir.Model, sites: Mapping[str, Site], plans: Sequence[GroupPlan],
                keeps: Mapping[str, Sequence[int]], stats: Mapping[str, object], reconstruction: str,
                ridge: float) -> list[SiteRefit]:
    """Refit every site that lost input rows, in ``model`` (already pruned by
    :func:`~graphopt.analysis.groups.apply_pruning`; nodes found by name).

    Args:
        model: the pruned model (changed in place).
        sites: consumer sites by node name, with the *original* weights and biases.
        plans, keeps: the groups and their kept units.
        stats: ``{site data value: ChannelStats}`` of the unpruned model (Grams for least squares).
        reconstruction: one of :data:`RECONSTRUCTIONS`.
        ridge: relative ridge of the least squares.

    Returns:
        One :class:`SiteRefit` per site that lost rows.

    Raises:
        InputError: an unknown reconstruction, or a pruned weight of an unexpected shape.
    """
    if reconstruction not in RECONSTRUCTIONS:
        raise InputError(f"unknown reconstruction {reconstruction!r}; choose one of {', '.join(RECONSTRUCTIONS)}")
    graph = model.graph
    nodes = {n.name: n for n in graph if n.name}
    done: list[SiteRefit] = []
    for site in sites.values():
        check("reconstruction")
        keep = kept_channels(site, plans, keeps)
        if keep.size == site.channels:
            continue
        node = nodes.get(site.node)
        rep = SiteRefit(site.node, "none", site.channels, int(keep.size))
        done.append(rep)
        if reconstruction == "none" or node is None:
            continue
        st = stats.get(site.data)
        if st is None or st.channels != site.channels:
            rep.how = "none (no statistics of its input)"
            continue
        w_value = node.inputs[site.weight_index]
        current = ir.const_array(w_value)
        out_axis = 0 if site.op == "Conv" else (1 - site.in_axis)
        gone_out = removed_outputs(site, plans, keeps)
        expected = list(site.array.shape)
        expected[site.in_axis] = int(keep.size)
        expected[out_axis] -= int(gone_out.size)
        if current is None or list(current.shape) != expected:
            raise InputError(f"pruned weight {w_value.name} of {site.node} has shape "
                             f"{None if current is None else current.shape}, expected {expected}")
        rows = weight_rows(site.array, site.in_axis)
        b_value = _bias_value(node, site)
        bias = None if site.bias_array is None else site.bias_array.astype(np.float64).reshape(-1)
        if reconstruction == "least-squares" and site.pointwise and st.gram is not None:
            fitted = bias if site.intercept else None
            fit = refit_kept(st.gram, keep, rows, ridge=ridge, bias=fitted,
                             mean=st.mean if fitted is not None else None,
                             rows=st.rows if fitted is not None else None, where=site.node)
            new_w = rows_to_weight(fit.weight, site.array, site.in_axis, current.dtype)
            _set_const(graph, node, w_value, np.ascontiguousarray(np.delete(new_w, gone_out, axis=out_axis)))
            if b_value is not None and fit.bias is not None:
                _set_const(graph, _bias_reader(node, site), b_value,
                           np.delete(fit.bias, gone_out).astype(site.bias_array.dtype))
            rep.how = "least-squares"
        elif bias is not None and b_value is not None:
            kernel = rows.reshape(rows.shape[0], bias.size, -1).sum(axis=2)  # a k x k Conv: the kernel summed
            if site.op == "ConvTranspose":  # each output position receives prod(kernel) / prod(strides) taps
                kernel = kernel / _stride_product(node)
            new_b = bias_compensation(kernel, st.mean, keep, bias)
            _set_const(graph, _bias_reader(node, site), b_value, np.delete(new_b, gone_out).astype(site.bias_array.dtype))
            rep.how = "bias"
        else:
            rep.how = "none (no bias to compensate into)"
    return done


def _stride_product(node: ir.Node) -> int:
    strides = node.attributes.get("strides")
    return int(np.prod([int(x) for x in strides.value])) if strides is not None else 1


def _bias_reader(node: ir.Node, site: Site) -> ir.Node:
    return next(iter(node.outputs[0].uses()))[0] if site.op == "MatMul" else node


def error_curve(plan: GroupPlan, sites: Mapping[str, Site], stats: Mapping[str, object], counts: Sequence[int],
                reconstruction: str, ridge: float, relative: bool = False) -> list[float]:
    """The consumers' output error ``||X_S W' - X W||^2`` (summed over calibration rows and sites) when ``plan``
    keeps its top ``k`` units, for each ``k`` of ``counts``, after ``reconstruction`` (the intercept fit and bias
    compensation seen through the centered Gram). Sites without a Gram add the removed units' scores instead.
    ``relative``: each error divided by the consumers' output energy ``sum tr(W^T G W)`` (the ``relative``
    allocation; unchanged when no site has a Gram)."""
    check("the error allocation's curves")
    order = np.argsort(-np.asarray(plan.scores, dtype=np.float64), kind="stable")
    out = []
    prepared = []
    for node, idx in plan.rows.items():
        site = sites[node]
        st = stats.get(site.data)
        if st is None or st.gram is None or st.channels != site.channels:
            continue
        rows = weight_rows(site.array, site.in_axis)
        if not site.pointwise:
            rows = rows.reshape(rows.shape[0], -1)
        centered = site.bias is not None and (reconstruction == "bias" or
                                              (reconstruction == "least-squares" and site.intercept))
        g = centered_gram(st) if centered else st.gram
        gw = g @ rows  # G W once per site: the right-hand sides of every level are its rows
        prepared.append((idx, rows, g, gw, float(np.sum(rows * gw)), site.pointwise))
    for k in counts:
        keep_units = np.sort(order[:k])
        total = 0.0
        if not prepared:
            total = float(np.sum(np.asarray(plan.scores)[order[k:]]))
        for idx, rows, g, gw, energy, pointwise in prepared:
            gone = np.setdiff1d(np.arange(plan.size), keep_units)
            removed = idx[gone].reshape(-1)
            keep = np.setdiff1d(np.arange(rows.shape[0]), removed)
            if reconstruction == "least-squares" and pointwise and removed.size:
                # ||X_S W' - X W||^2 = tr(W'^T G_SS W') - 2 tr(W'^T (G W)_S) + tr(W^T G W), W' the ridge solution
                g_ss = g[np.ix_(keep, keep)]
                w_new = solve_ridge(g_ss, gw[keep], ridge, where=plan.name)[0]
                total += float(np.sum(w_new * (g_ss @ w_new)) - 2.0 * np.sum(w_new * gw[keep]) + energy)
            elif removed.size:
                w_r = rows[removed]
                total += float(np.sum(w_r * (g[np.ix_(removed, removed)] @ w_r)))
        out.append(max(total, 0.0))
    energy = sum(p[4] for p in prepared)
    return [e / energy for e in out] if relative and energy > 0 else out
