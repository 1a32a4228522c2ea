"""Inline SVG line charts (no JS, no network) for metric trends across runs."""
from __future__ import annotations

from html import escape


def _fmt(v: float) -> str:
    return f"{v:.3g}"


def line_chart(title: str, series: dict[str, list[tuple[str, float]]], unit: str,
               target: float | None = None, width: int = 420, height: int = 180) -> str:
    """series: label -> [(x label, y)] in time order. `target` draws a dashed bar line."""
    pad_l, pad_r, pad_t, pad_b = 48, 12, 24, 34
    pts = [y for s in series.values() for _, y in s]
    if target is not None:
        pts.append(target)
    if not pts:
        return ""
    lo, hi = min(0.0, min(pts)), max(pts)
    hi = hi * 1.1 if hi > 0 else 1.0
    xs = sorted({x for s in series.values() for x, _ in s})
    n = max(1, len(xs) - 1)
    w, h = width - pad_l - pad_r, height - pad_t - pad_b

    def px(x):
        return pad_l + (xs.index(x) / n * w if len(xs) > 1 else w / 2)

    def py(y):
        return pad_t + h - (y - lo) / (hi - lo) * h

    colors = ["#1f6feb", "#d1242f", "#1a7f37", "#9a6700", "#8250df", "#bf3989"]
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}">',
           f'<text x="{pad_l}" y="15" font-size="12" font-weight="600">{escape(title)} ({escape(unit)})</text>',
           f'<line x1="{pad_l}" y1="{pad_t + h}" x2="{pad_l + w}" y2="{pad_t + h}" stroke="#888"/>',
           f'<line x1="{pad_l}" y1="{pad_t}" x2="{pad_l}" y2="{pad_t + h}" stroke="#888"/>']
    for frac in (0.0, 0.5, 1.0):
        y = lo + frac * (hi - lo)
        out.append(f'<text x="{pad_l - 4}" y="{py(y) + 4:.1f}" font-size="10" text-anchor="end">{_fmt(y)}</text>')
    if target is not None:
        out.append(f'<line x1="{pad_l}" y1="{py(target):.1f}" x2="{pad_l + w}" y2="{py(target):.1f}" stroke="#d1242f" stroke-dasharray="4 3"/>'
                   f'<text x="{pad_l + w}" y="{py(target) - 3:.1f}" font-size="10" text-anchor="end" fill="#d1242f">target {_fmt(target)}</text>')
    for i, x in enumerate(xs):
        if len(xs) <= 6 or i in (0, len(xs) - 1):
            anchor = "end" if i == len(xs) - 1 and len(xs) > 1 else ("start" if i == 0 and len(xs) > 1 else "middle")
            out.append(f'<text x="{px(x):.1f}" y="{pad_t + h + 14}" font-size="9" text-anchor="{anchor}">{escape(x)}</text>')
    for k, (label, s) in enumerate(series.items()):
        c = colors[k % len(colors)]
        coords = [(px(x), py(y)) for x, y in s]
        if len(coords) > 1:
            out.append(f'<polyline fill="none" stroke="{c}" stroke-width="2" points="' +
                       " ".join(f"{a:.1f},{b:.1f}" for a, b in coords) + '"/>')
        for (a, b), (_, y) in zip(coords, s):
            out.append(f'<circle cx="{a:.1f}" cy="{b:.1f}" r="3" fill="{c}"><title>{escape(label)}: {_fmt(y)}</title></circle>')
        out.append(f'<text x="{pad_l + 6 + 180 * k}" y="{height - 4}" font-size="10" fill="{c}">{escape(label[:30])}</text>')
    out.append("</svg>")
    return "".join(out)
