"""Charts as inline SVG strings (matplotlib, Agg): no JavaScript, no external or data: URLs.

Argo serves artifacts with `img-src 'self'` under a script-less sandbox, so `<img src="data:...">`
would be blocked while inline `<svg>` elements are part of the document and always render.
"""

from __future__ import annotations

import io
import re
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import matplotlib.ticker
from matplotlib.figure import Figure

from reports.html_util import esc

PALETTE = ["#2563eb", "#dc2626", "#059669", "#d97706", "#7c3aed", "#0891b2", "#be185d", "#4b5563"]
STYLE = {
    "svg.fonttype": "none",  # text stays text: smaller, crisp and searchable
    "font.family": "sans-serif",
    "font.size": 9,
    "axes.edgecolor": "#9ca3af",
    "axes.grid": True,
    "grid.color": "#e5e7eb",
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.prop_cycle": matplotlib.cycler(color=PALETTE),
    "legend.frameon": False,
}
FIGSIZE = (6.4, 3.4)

Series = Mapping[str, tuple[Sequence[float], Sequence[float]]]


def figure_svg(fig: Figure) -> str:
    """The figure as an `<svg class="chart">` element (the figure is closed)."""
    buffer = io.StringIO()
    try:
        fig.savefig(buffer, format="svg")
    except (ValueError, OverflowError) as exc:
        # Values such as 1e308 leave matplotlib no finite axis (ticker: "arange: cannot compute
        # length"); the numbers are still in the tables, the chart is replaced by a note.
        title = fig.axes[0].get_title(loc="left") if fig.axes else "chart"
        return f'<p class="note warn">{esc(title)}: not drawn, values out of range ({esc(str(exc))})</p>'
    finally:
        plt.close(fig)
    svg = buffer.getvalue()
    svg = svg[svg.index("<svg") :]  # drop the XML prolog and DOCTYPE: not allowed inside HTML
    return re.sub(r"^<svg ", '<svg class="chart" role="img" ', svg, count=1)


def new_figure() -> tuple[Figure, plt.Axes]:
    """A figure and axes in the report's style."""
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=FIGSIZE, layout="constrained")  # one draw, no bbox pass
    return fig, ax


def _finish(fig: Figure, ax: plt.Axes, title: str, xlabel: str, ylabel: str) -> str:
    ax.set_title(title, loc="left", fontsize=10, fontweight="bold", color="#111827")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="best")
    return figure_svg(fig)


def line_chart(
    series: Series,
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    steps: bool = False,
    vlines: Mapping[str, float] | None = None,
    logx: bool = False,
    annotate: Mapping[str, Sequence[str]] | None = None,
    styles: Mapping[str, Mapping[str, Any]] | None = None,
    integer_x: bool = False,
) -> str:
    """One line per series (x, y); optional step lines, labelled vertical markers, point labels,
    per-series matplotlib styles (e.g. {"p95": {"linestyle": "--"}}), ticks at each integer x."""
    with plt.rc_context(STYLE):
        fig, ax = new_figure()
        for name, (xs, ys) in series.items():
            style = {"linewidth": 1.6, **(styles or {}).get(name, {})}
            if steps:
                ax.step(xs, ys, where="post", label=name, **style)
            else:
                ax.plot(xs, ys, marker="o", markersize=4, label=name, **style)
            for x, y, text in zip(xs, ys, (annotate or {}).get(name, ()), strict=False):
                ax.annotate(
                    text, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7, color="#4b5563"
                )
        for label, x in (vlines or {}).items():
            ax.axvline(x, color="#6b7280", linestyle="--", linewidth=1)
            ax.annotate(
                label,
                (x, 1),
                xycoords=("data", "axes fraction"),
                rotation=90,
                fontsize=7,
                va="top",
                ha="right",
                color="#374151",
            )
        if logx:
            ax.set_xscale("log", base=2)
            ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        if integer_x:
            ax.set_xticks(sorted({x for xs, _ in series.values() for x in xs}))
            ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        return _finish(fig, ax, title, xlabel, ylabel)


def pareto_front(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points not dominated in (x higher is better, y higher is better), sorted by x."""
    front = []
    for x, y in sorted(points, key=lambda p: (-p[0], -p[1])):
        if not front or y > front[-1][1]:
            front.append((x, y))
    return sorted(front)


def pareto_chart(
    series: Series,
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    annotate: Mapping[str, Sequence[str]] | None = None,
) -> str:
    """Throughput vs per-user speed per ISL/OSL, with the Pareto front of all points drawn behind."""
    with plt.rc_context(STYLE):
        fig, ax = new_figure()
        everything = [(x, y) for xs, ys in series.values() for x, y in zip(xs, ys, strict=True)]
        front = pareto_front(everything)
        if len(front) > 1:
            ax.plot(
                *zip(*front, strict=True),
                color="#9ca3af",
                linewidth=6,
                alpha=0.35,
                solid_capstyle="round",
                label="Pareto front",
            )
        for name, (xs, ys) in series.items():
            ax.plot(xs, ys, marker="o", markersize=4, linewidth=1.4, label=name)
            for x, y, text in zip(xs, ys, (annotate or {}).get(name, ()), strict=False):
                ax.annotate(
                    text, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7, color="#4b5563"
                )
        return _finish(fig, ax, title, xlabel, ylabel)
