# SPDX-License-Identifier: Apache-2.0
"""Inline SVG charts (no scripts, no external assets): range charts and line charts."""

from __future__ import annotations

import math
from dataclasses import dataclass
from html import escape

PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
           "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]
FONT = 'font-family="sans-serif" font-size="11"'


@dataclass
class Range:
    """One bar of a range chart: min..max with a median tick."""

    name: str
    color: str
    low: float
    median: float
    high: float


def _fmt(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 100:
        return f"{v:.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    if abs(v) >= 1:
        return f"{v:.2f}"
    return f"{v:.3g}"


def _tick(v: float) -> str:
    return f"{v:.6g}"


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values covering lo..hi (linear scale)."""
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / count
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    start = math.floor(lo / step) * step
    ticks = [round(start, 12)]
    while ticks[-1] < hi:
        ticks.append(round(ticks[-1] + step, 12))
    return ticks


def log_ticks(lo: float, hi: float) -> list[float]:
    """Decades (and 2x, 5x when few decades) covering lo..hi (log scale)."""
    lo_e, hi_e = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    mults = (1, 2, 5) if hi_e - lo_e <= 3 else (1,)
    return [m * 10.0 ** e for e in range(lo_e, hi_e + 1) for m in mults
            if lo / 1.0001 <= m * 10.0 ** e <= hi * 1.0001] or [lo, hi]


class _Scale:
    def __init__(self, lo: float, hi: float, x0: float, x1: float, log: bool) -> None:
        self.log = log and lo > 0
        if self.log:
            self.ticks = log_ticks(lo, hi)
            self.lo, self.hi = min(lo, self.ticks[0]), max(hi, self.ticks[-1])
        else:
            self.ticks = nice_ticks(min(0.0, lo), hi)
            self.lo, self.hi = self.ticks[0], self.ticks[-1]
        self.x0, self.x1 = x0, x1

    def __call__(self, v: float) -> float:
        if self.log:
            v = max(v, self.lo)
            f = (math.log10(v) - math.log10(self.lo)) / (math.log10(self.hi)
                                                          - math.log10(self.lo) or 1)
        else:
            f = (v - self.lo) / ((self.hi - self.lo) or 1)
        return self.x0 + f * (self.x1 - self.x0)


def legend(items: list[tuple[str, str]]) -> str:
    """A small HTML legend (color swatch + name) shown above a chart."""
    parts = [f'<span class="swatch" style="background:{c}"></span>{escape(n)}'
             for n, c in items]
    return '<div class="legend">' + " &nbsp; ".join(parts) + "</div>"


def range_chart(title: str, groups: list[tuple[str, list[Range]]], unit: str,
                log: bool = False) -> str:
    """Horizontal min..max bars with a median tick, one row per series, grouped."""
    label_w, plot_w, row_h, gap, top, bottom = 190, 480, 15, 10, 26, 34
    rows = sum(len(g[1]) for g in groups)
    height = top + rows * row_h + len(groups) * gap + bottom
    width = label_w + plot_w + 30
    values = [v for _, rs in groups for r in rs for v in (r.low, r.high)]
    if not values:
        return ""
    lo, hi = min(values), max(values)
    scale = _Scale(lo if log else 0.0, hi * 1.05 if hi > 0 else 1.0, label_w, label_w + plot_w,
                   log)
    out = [f'<svg class="chart" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" role="img" {FONT}>',
           f"<title>{escape(title)}</title>",
           f'<text x="{label_w}" y="14" font-weight="bold">{escape(title)}</text>']
    axis_y = height - bottom + 4
    for t in scale.ticks:
        x = scale(t)
        out.append(f'<line x1="{x:.1f}" y1="{top - 4}" x2="{x:.1f}" y2="{axis_y}" '
                   'stroke="#ddd"/>')
        out.append(f'<text x="{x:.1f}" y="{axis_y + 12}" text-anchor="middle">'
                   f"{_tick(t)}</text>")
    out.append(f'<text x="{label_w + plot_w / 2}" y="{height - 4}" text-anchor="middle">'
               f"{escape(unit)}{' (log scale)' if scale.log else ''}</text>")
    y = float(top)
    for group, ranges in groups:
        out.append(f'<text x="4" y="{y + row_h - 4:.1f}" font-weight="bold">'
                   f"{escape(group)}</text>")
        for r in ranges:
            cy = y + row_h / 2
            x_lo, x_med, x_hi = scale(r.low), scale(r.median), scale(r.high)
            out.append(f'<text x="{label_w - 6}" y="{cy + 4:.1f}" text-anchor="end">'
                       f"{escape(r.name)}</text>")
            out.append(f'<rect x="{x_lo:.1f}" y="{cy - 4:.1f}" '
                       f'width="{max(x_hi - x_lo, 1.5):.1f}" height="8" fill="{r.color}" '
                       f'fill-opacity="0.35" stroke="{r.color}"/>')
            out.append(f'<line x1="{x_med:.1f}" y1="{cy - 6:.1f}" x2="{x_med:.1f}" '
                       f'y2="{cy + 6:.1f}" stroke="{r.color}" stroke-width="2.5">'
                       f"<title>{escape(r.name)}: median {_fmt(r.median)} "
                       f"[{_fmt(r.low)}–{_fmt(r.high)}] {escape(unit)}</title></line>")
            y += row_h
        y += gap
    out.append("</svg>")
    return "".join(out)


def line_chart(title: str, xs: list[float], series: list[tuple[str, str, list[float | None]]],
               x_label: str, y_label: str) -> str:
    """Lines over shared x values (both axes log scale); None marks a missing point."""
    width, height, left, right, top, bottom = 640, 300, 60, 30, 26, 40
    ys = [v for _, _, vals in series for v in vals if v is not None and v > 0]
    if not ys or not xs:
        return ""
    xs_pos = [x for x in xs if x > 0]
    sx = _Scale(min(xs_pos), max(xs_pos), left, width - right, log=True)
    sy = _Scale(min(ys), max(ys), height - bottom, top, log=True)
    out = [f'<svg class="chart" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" role="img" {FONT}>',
           f"<title>{escape(title)}</title>",
           f'<text x="{left}" y="14" font-weight="bold">{escape(title)}</text>']
    for t in sy.ticks:
        y = sy(t)
        out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{width - right}" y2="{y:.1f}" '
                   'stroke="#ddd"/>')
        out.append(f'<text x="{left - 4}" y="{y + 4:.1f}" text-anchor="end">{_tick(t)}</text>')
    for x in xs_pos:
        px = sx(x)
        out.append(f'<text x="{px:.1f}" y="{height - bottom + 14}" text-anchor="middle">'
                   f"{_tick(x)}</text>")
    out.append(f'<text x="{(left + width - right) / 2}" y="{height - 6}" '
               f'text-anchor="middle">{escape(x_label)} (log scale)</text>')
    out.append(f'<text x="12" y="{(top + height - bottom) / 2}" text-anchor="middle" '
               f'transform="rotate(-90 12 {(top + height - bottom) / 2})">'
               f"{escape(y_label)} (log scale)</text>")
    for name, color, vals in series:
        pts = [(sx(x), sy(v)) for x, v in zip(xs, vals, strict=True)
               if v is not None and v > 0 and x > 0]
        if len(pts) > 1:
            path = " ".join(f"{px:.1f},{py:.1f}" for px, py in pts)
            out.append(f'<polyline points="{path}" fill="none" stroke="{color}" '
                       'stroke-width="2"/>')
        for (px, py), (x, v) in zip(pts, [(x, v) for x, v in zip(xs, vals, strict=True)
                                          if v is not None and v > 0 and x > 0],
                                    strict=True):
            out.append(f'<circle cx="{px:.1f}" cy="{py:.1f}" r="3.5" fill="{color}">'
                       f"<title>{escape(name)}: {_fmt(x)} → {_fmt(v)}</title></circle>")
    out.append("</svg>")
    return "".join(out)
