"""Report charts drawn by matplotlib as inline SVG: no JavaScript, no network, no files.

Only the object-oriented API (``Figure``) is used, never pyplot, so no global figure state
or GUI backend is involved. Titles stay in the HTML around the chart (the page wraps them);
the SVG holds axes, ticks and legend. Text stays text (``svg.fonttype = none``), so the page
font renders it and a browser can search it.
"""
from __future__ import annotations

import io
from datetime import datetime

import matplotlib
from matplotlib.dates import AutoDateLocator, ConciseDateFormatter
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

COLORS = ("#1f6feb", "#bf3989", "#1a7f37", "#9a6700", "#8250df", "#57606a")
# the report's badge colours, so a status looks the same in the chart and in the tables
STATUS_COLORS = {"verified": "#1a7f37", "cpu-only": "#8250df", "partial": "#0969da", "stale": "#9a6700",
                 "failing": "#cf222e", "not-started": "#57606a"}
_STYLE = {"svg.fonttype": "none", "font.size": 9, "axes.spines.top": False, "axes.spines.right": False,
          "axes.grid": True, "grid.color": "#d0d7de", "grid.linewidth": 0.6, "axes.axisbelow": True}


def _svg(fig: Figure, uid: str) -> str:
    """The figure as an <svg> element. ``uid`` salts matplotlib's element ids so that the
    clip paths of several charts inlined in one page never share an id."""
    buf = io.StringIO()
    with matplotlib.rc_context({**_STYLE, "svg.hashsalt": uid}):
        fig.savefig(buf, format="svg", bbox_inches="tight", pad_inches=0.04)
    text = buf.getvalue()
    return text[text.index("<svg"):]


def _time_axis(ax) -> None:
    loc = AutoDateLocator(minticks=2, maxticks=5)
    ax.xaxis.set_major_locator(loc)
    ax.xaxis.set_major_formatter(ConciseDateFormatter(loc))


def _nice_y(ax) -> None:
    ax.yaxis.set_major_locator(MaxNLocator(nbins=5, steps=[1, 2, 2.5, 5, 10]))


def _legend_below(fig, ax, ncols: int) -> None:
    # below the axes, so it never covers a line or the bar
    fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncols=ncols, fontsize=8, frameon=False)


def _figure(width_in: float, height_in: float) -> Figure:
    with matplotlib.rc_context(_STYLE):
        return Figure(figsize=(width_in, height_in), layout="constrained")


def trend_chart(uid: str, series: dict[str, list[tuple[datetime, float]]], ylabel: str,
                target: float | None = None, target_label: str = "bar") -> str:
    """Lines of (time, value) per series label; ``target`` is drawn as a dashed line named in
    the legend (never written on the data). The y axis starts at 0 so ratios are not magnified."""
    fig = _figure(6.0, 2.4)
    with matplotlib.rc_context(_STYLE):
        ax = fig.add_subplot()
        top = 0.0
        for k, (label, pts) in enumerate(series.items()):
            xs, ys = [p[0] for p in pts], [p[1] for p in pts]
            ax.plot(xs, ys, marker="o", markersize=4, linewidth=1.6, color=COLORS[k % len(COLORS)], label=label)
            top = max(top, *ys)
        if target is not None:
            ax.axhline(target, color="#cf222e", linestyle="--", linewidth=1.2, label=target_label)
            top = max(top, target)
        ax.set_ylim(0, top * 1.15 or 1.0)
        _nice_y(ax)
        ax.set_ylabel(ylabel)
        _time_axis(ax)
        _legend_below(fig, ax, len(series) + (target is not None))
    return _svg(fig, uid)


def stories_over_time(uid: str, points: list[tuple[datetime | None, dict[str, int]]], total: int,
                      shown: tuple[str, ...]) -> str:
    """How many stories had each status in ``shown`` after each evidence run (evenly spaced,
    so runs close in time stay apart), and the number of stories as a dashed ceiling. A point
    whose time is None is labelled "now"."""
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
        n = len(points)
        ticks = sorted({round(i * (n - 1) / 9) for i in range(10)}) if n > 10 else xs
        ax.set_xticks(ticks, ["now" if points[i][0] is None else points[i][0].strftime("%b %d\n%H:%M")
                              for i in ticks])
        ax.set_xlabel("evidence runs, oldest to newest", fontsize=8, color="#57606a")
        _legend_below(fig, ax, len(shown) + 1)
    return _svg(fig, uid)
