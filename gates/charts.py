"""Report charts drawn by matplotlib as inline SVG: no JavaScript, no network, no files.

Only the object-oriented API (``Figure``) is used, never pyplot, so no global figure state
or GUI backend is involved. Titles stay in the HTML around the chart (the page wraps them);
the SVG holds axes, ticks and legend. Text stays text (``svg.fonttype = none``), so the page
font renders it and a browser can search it.

The x axis of every chart is the sequence of evidence runs, evenly spaced and labelled with
their times: runs come in bursts days apart, and a time-proportional axis would pile each
burst onto one spot.
"""
from __future__ import annotations

import io
from datetime import datetime

import matplotlib
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

COLORS = ("#1f6feb", "#bf3989", "#1a7f37", "#9a6700", "#8250df", "#57606a")
# the report's badge colours, so a status looks the same in the chart and in the tables
STATUS_COLORS = {"verified": "#1a7f37", "cpu-only": "#8250df", "partial": "#0969da", "stale": "#9a6700",
                 "failing": "#cf222e", "not-started": "#57606a"}
MAX_X_LABELS = 9      # labels that fit under a 6-inch chart; the 12-inch one takes twice as many
_STYLE = {"svg.fonttype": "none", "font.size": 9, "axes.spines.top": False, "axes.spines.right": False,
          "axes.grid": True, "grid.color": "#d0d7de", "grid.linewidth": 0.6, "axes.axisbelow": True}


def _svg(fig: Figure, uid: str) -> str:
    """The figure as an <svg> element. ``uid`` salts matplotlib's element ids so that the
    clip paths of several charts inlined in one page never share an id."""
    buf = io.StringIO()
    with matplotlib.rc_context({**_STYLE, "svg.hashsalt": uid}):
        fig.savefig(buf, format="svg")   # constrained layout already fits the figure
    text = buf.getvalue()
    return text[text.index("<svg"):]


def _figure(width_in: float, height_in: float) -> Figure:
    with matplotlib.rc_context(_STYLE):
        return Figure(figsize=(width_in, height_in), layout="constrained")


def run_label(when: datetime | None) -> str:
    return "now" if when is None else when.strftime("%b %d\n%H:%M")


def _run_axis(ax, runs: list[datetime | None], max_labels: int = MAX_X_LABELS) -> None:
    """At most ``max_labels`` runs carry a tick and a label: every k-th, counted back from the
    newest (which is always labelled), so the labelled runs are evenly spaced."""
    n = len(runs)
    stride = -(-n // max_labels)          # ceil(n / max_labels)
    ticks = sorted(range(n - 1, -1, -stride))
    ax.set_xticks(ticks, [run_label(runs[i]) for i in ticks])
    ax.set_xlim(-0.5, n - 0.5)
    ax.set_xlabel("evidence runs, oldest to newest", fontsize=8, color="#57606a")


def _legend_below(fig, ax, ncols: int) -> None:
    # below the axes, so it never covers a line or the bar
    fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncols=ncols, fontsize=8, frameon=False)


def trend_chart(uid: str, runs: list[datetime], series: dict[str, list[tuple[int, float]]], ylabel: str,
                target: float | None = None, target_label: str = "bar", hollow=frozenset()) -> str:
    """Lines of (run index, value) per series label over ``runs``; ``target`` is a dashed line
    named in the legend (never written on the data). Points of the runs in ``hollow`` (evidence
    that does not count toward gates) get open markers, named in the legend. The y axis starts
    at 0 so that ratios are not magnified."""
    fig = _figure(6.0, 2.5)
    with matplotlib.rc_context(_STYLE):
        ax = fig.add_subplot()
        top = 0.0
        for k, (label, pts) in enumerate(series.items()):
            ys = [p[1] for p in pts]
            color = COLORS[k % len(COLORS)]
            ax.plot([p[0] for p in pts], ys, marker="o", markersize=4, linewidth=1.6, color=color, label=label,
                    markevery=[i for i, p in enumerate(pts) if p[0] not in hollow])
            open_pts = [p for p in pts if p[0] in hollow]
            if open_pts:
                ax.plot([p[0] for p in open_pts], [p[1] for p in open_pts], linestyle="none", marker="o",
                        markersize=4.5, markerfacecolor="white", markeredgecolor=color, markeredgewidth=1.3)
            top = max(top, *ys)
        if hollow:
            ax.plot([], [], linestyle="none", marker="o", markersize=4.5, markerfacecolor="white",
                    markeredgecolor="#57606a", label="does not count")
        if target is not None:
            ax.axhline(target, color="#cf222e", linestyle="--", linewidth=1.2, label=target_label)
            top = max(top, target)
        ax.set_ylim(0, top * 1.15 or 1.0)
        ax.yaxis.set_major_locator(MaxNLocator(nbins=5, steps=[1, 2, 2.5, 5, 10]))
        ax.set_ylabel(ylabel)
        _run_axis(ax, runs)
        _legend_below(fig, ax, len(series) + bool(hollow) + (target is not None))
    return _svg(fig, uid)


def stories_over_time(uid: str, points: list[tuple[datetime | None, dict[str, int]]], total: int,
                      shown: tuple[str, ...]) -> str:
    """How many stories had each status in ``shown`` after each evidence run, and the number
    of stories as a dashed ceiling. A point whose time is None is the working tree now."""
    fig = _figure(12.0, 2.8)
    with matplotlib.rc_context(_STYLE):
        ax = fig.add_subplot()
        xs = list(range(len(points)))
        for k, status in enumerate(shown):
            ax.step(xs, [c.get(status, 0) for _, c in points], where="post", marker="o", markersize=3.5,
                    linewidth=1.8, color=STATUS_COLORS.get(status, COLORS[k % len(COLORS)]), label=status)
        ax.axhline(total, color="#57606a", linestyle="--", linewidth=1, label=f"all {total} stories")
        ax.set_ylim(0, total * 1.08 or 1)
        ax.yaxis.set_major_locator(MaxNLocator(nbins=6, integer=True, steps=[1, 2, 2.5, 5, 10]))
        ax.set_ylabel("stories")
        _run_axis(ax, [t for t, _ in points], 2 * MAX_X_LABELS)
        _legend_below(fig, ax, len(shown) + 1)
    return _svg(fig, uid)
