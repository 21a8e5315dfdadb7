"""The report's figures: matplotlib drawings embedded as PNG ``data:`` URIs.

Figures are drawn on a bare :class:`matplotlib.figure.Figure` with the Agg
canvas (no pyplot state, no display needed). matplotlib is imported when a
figure is drawn; without it a figure becomes a note saying so and the
section's tables still carry every number.
"""

from __future__ import annotations

import base64
import io
from typing import Any, Mapping, Sequence

from graphopt.report.html import esc

__all__ = ["frontier_plot", "grouped_barh", "img", "kept_fraction"]

BEFORE = "#8da0cb"
AFTER = "#1b6fd1"
PALETTE = ["#8da0cb", "#1b6fd1", "#e78ac3", "#66c2a5", "#fc8d62", "#a6d854", "#ffd92f", "#b3b3b3"]


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def img(fig: Any, alt: str, caption: str = "") -> str:
    """``<figure>`` with ``fig`` as an embedded PNG (``data:image/png;base64``)
    and an escaped ``alt`` text and caption."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    cap = f"<figcaption>{esc(caption)}</figcaption>" if caption else ""
    return f'<figure><img alt="{esc(alt)}" src="data:image/png;base64,{data}">{cap}</figure>'


def _unavailable(what: str, error: Exception) -> str:
    return f'<p class="note">({esc(what)} not drawn: matplotlib is not available: {esc(error)})</p>'


def grouped_barh(series: Mapping[str, Mapping[str, float]], *, xlabel: str, title: str, alt: str,
                 top: int = 30, caption: str = "", width: float = 9.5, ascending: bool = False,
                 keep_order: bool = False) -> str:
    """Horizontal grouped bars: one group per category (keys of the inner
    maps, union over series), one bar per series (e.g. ``{"before": {"MatMul":
    12}, "after": {...}}``), categories ordered by their largest value, at
    most ``top`` (the rest summed as ``(other N)``; ``ascending``: smallest
    first, the rest dropped; ``keep_order``: the first series' key order); ``width`` in inches (100 px each). Returns the ``<figure>``
    HTML, or a note when matplotlib is missing."""
    try:
        fig = _figure(9.5, 2.0)
    except ImportError as e:
        return _unavailable(alt, e)
    names = list(series)
    sign = 1 if ascending else -1
    cats = sorted({c for s in series.values() for c in s}, key=lambda c: (sign * max(s.get(c, 0) for s in
                                                                                  series.values()), c))
    if keep_order:
        cats = list(dict.fromkeys(c for s in series.values() for c in s))
    rest = [] if ascending else cats[top:]
    cats = cats[:top]
    values = {n: [float(series[n].get(c, 0)) for c in cats] for n in names}
    if rest:
        cats.append(f"(other {len(rest)})")
        for n in names:
            values[n].append(float(sum(series[n].get(c, 0) for c in rest)))
    height = max(2.2, 0.9 + 0.2 * len(cats) * max(1, len(names)) ** 0.6)
    fig.set_size_inches(width, height)
    ax = fig.add_subplot(1, 1, 1)
    bar = 0.8 / max(1, len(names))
    for i, n in enumerate(names):
        ys = [j + (i - (len(names) - 1) / 2) * bar for j in range(len(cats))]
        color = PALETTE[i % len(PALETTE)] if len(names) > 2 else (BEFORE, AFTER)[i] if i < 2 else PALETTE[i]
        ax.barh(ys, values[n], height=bar, label=n, color=color)
        for y, v in zip(ys, values[n]):
            if v:
                ax.text(v, y, f" {v:g}" if v >= 1 or v == 0 else f" {v:.3g}", va="center", fontsize=7)
    ax.set_yticks(range(len(cats)))
    ax.set_yticklabels(cats, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize=10)
    ax.margins(x=0.12)
    ax.spines[["top", "right"]].set_visible(False)
    if len(names) > 1:
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return img(fig, alt, caption)


def kept_fraction(labels: Sequence[str], total: Sequence[float], kept: Sequence[float], *, title: str,
                  alt: str) -> str:
    """Horizontal bars of ``kept / total`` per label (0..1, one row per layer,
    annotated ``kept/total``), so layers of different sizes (2 heads, 512
    neurons) compare. Returns the ``<figure>`` HTML, or a note when
    matplotlib is missing."""
    try:
        fig = _figure(8.0, max(1.8, 0.8 + 0.24 * len(labels)))
    except ImportError as e:
        return _unavailable(alt, e)
    ax = fig.add_subplot(1, 1, 1)
    ys = range(len(labels))
    shares = [k / t if t else 1.0 for k, t in zip(kept, total)]
    ax.barh(list(ys), [1.0] * len(labels), color="#e4e8ef", height=0.7)
    ax.barh(list(ys), shares, color=AFTER, height=0.7)
    for y, k, t in zip(ys, kept, total):
        ax.text(1.01, y, f"{k:g}/{t:g}", va="center", fontsize=7)
    ax.set_yticks(list(ys))
    ax.set_yticklabels(labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.12)
    ax.set_xlabel("share kept")
    ax.set_title(title, fontsize=10)
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    return img(fig, alt)


def frontier_plot(points: Sequence[Mapping[str, Any]], chosen: int | None, *, x: str, y: str, xlabel: str,
                  ylabel: str, alt: str, budget: float | None = None) -> str:
    """Scatter of candidate ``points`` (dicts with numeric ``x`` and ``y``
    keys, e.g. latency in ms and a quality metric), the Pareto frontier (lowest
    ``x`` for the highest ``y``) as a step line, the ``chosen`` point (index into
    ``points``) as a large star, and ``budget`` as a dashed horizontal line.
    Returns the ``<figure>`` HTML, or a note when matplotlib is missing."""
    try:
        fig = _figure(9.0, 4.6)
    except ImportError as e:
        return _unavailable(alt, e)
    ax = fig.add_subplot(1, 1, 1)
    pts = [(float(p[x]), float(p[y]), i) for i, p in enumerate(points)]
    ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=28, color="#9aa3b2", label="candidates", zorder=2)
    front = []
    best = float("-inf")
    for px, py, i in sorted(pts, key=lambda p: (p[0], -p[1])):
        if py > best:
            front.append((px, py))
            best = py
    if len(front) > 1:
        ax.step([p[0] for p in front], [p[1] for p in front], where="post", color=AFTER, lw=1.5,
                label="Pareto frontier", zorder=3)
    if budget is not None:
        ax.axhline(budget, color="#b3261e", ls="--", lw=1, label=f"budget {budget:g}")
    if chosen is not None and 0 <= chosen < len(points):
        cx, cy = float(points[chosen][x]), float(points[chosen][y])
        ax.scatter([cx], [cy], s=260, marker="*", color="#f2a900", edgecolor="#1d2330", zorder=4, label="chosen")
        ax.annotate(str(points[chosen].get("label", f"#{chosen}")), (cx, cy), textcoords="offset points",
                    xytext=(10, -14), fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.spines[["top", "right"]].set_visible(False)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return img(fig, alt)
