"""A small SVG renderer for the console's charts, drawn on the server: stacked bars over
time and horizontal bars by name. Every label is escaped; the SVG has a title and a
description for assistive technology, and the page shows the same numbers in a table.
Colours are attributes (no `style`), so the console's CSP needs nothing extra."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from markupsafe import Markup, escape

# Distinguishable, and dark enough on white for the 3:1 that graphics need.
PALETTE = ("#1f4fa8", "#b3541e", "#2e7d32", "#7b1fa2", "#00695c", "#ad1457", "#5d4037")
OTHER = "#616161"
_FONT = 'font-family="system-ui, sans-serif" font-size="12" fill="#1b1b1f"'


def colour(index: int) -> str:
    return PALETTE[index] if index < len(PALETTE) else OTHER


def _nice_top(value: int) -> int:
    """A round axis maximum at or above `value` (1, 2, 5 times a power of ten)."""
    top = 1
    while True:
        for step in (1, 2, 5):
            if step * top >= value:
                return step * top
        top *= 10


def stacked_bars(
    ident: str,
    title: str,
    labels: Sequence[str],
    series: Mapping[str, Sequence[int]],
    *,
    width: int = 720,
    height: int = 240,
) -> Markup:
    """Bars for each of `labels` (time buckets), each stacked from `series` (name to one
    value per label), a y axis from 0 and the first and last labels under it."""
    left, bottom, top_pad = 44, 36, 12
    plot_w, plot_h = width - left - 8, height - bottom - top_pad
    totals = [sum(values[i] for values in series.values()) for i in range(len(labels))]
    top = _nice_top(max(totals, default=0) or 1)
    step = plot_w / max(len(labels), 1)
    bar = max(step * 0.8, 1.0)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
        f'role="img" aria-labelledby="{ident}-t {ident}-d" class="chart">',
        f'<title id="{ident}-t">{escape(title)}</title>',
        f'<desc id="{ident}-d">{len(labels)} bars, the highest {max(totals, default=0)}; '
        "the table below has every number.</desc>",
        f'<line x1="{left}" y1="{top_pad + plot_h}" x2="{width - 8}" y2="{top_pad + plot_h}" '
        'stroke="#4a4a55"/>',
        f'<text x="{left - 6}" y="{top_pad + 4}" text-anchor="end" {_FONT}>{top}</text>',
        f'<text x="{left - 6}" y="{top_pad + plot_h}" text-anchor="end" {_FONT}>0</text>',
    ]
    for i in range(len(labels)):
        y: float = top_pad + plot_h
        for index, values in enumerate(series.values()):
            if not values[i]:
                continue
            h = values[i] / top * plot_h
            y -= h
            parts.append(
                f'<rect x="{left + i * step:.1f}" y="{y:.1f}" width="{bar:.1f}" '
                f'height="{h:.1f}" fill="{colour(index)}"/>'
            )
    if labels:
        base = top_pad + plot_h + 16
        parts.append(f'<text x="{left}" y="{base}" {_FONT}>{escape(labels[0])}</text>')
        parts.append(
            f'<text x="{width - 8}" y="{base}" text-anchor="end" {_FONT}>'
            f"{escape(labels[-1])}</text>"
        )
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 (every label above is escaped)


def horizontal_bars(
    ident: str, title: str, items: Sequence[tuple[str, int]], *, width: int = 720
) -> Markup:
    """One bar per (name, value), longest first as given, the name and value beside it."""
    row, label_w = 26, 240
    height = max(len(items), 1) * row + 8
    top = max((value for _, value in items), default=0) or 1
    plot_w = width - label_w - 60
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
        f'role="img" aria-labelledby="{ident}-t {ident}-d" class="chart">',
        f'<title id="{ident}-t">{escape(title)}</title>',
        f'<desc id="{ident}-d">{len(items)} bars; the table below has every number.</desc>',
    ]
    for i, (name, value) in enumerate(items):
        y = 4 + i * row
        shown = name if len(name) <= 34 else name[:33] + "…"
        w = value / top * plot_w
        parts.append(
            f'<text x="{label_w - 6}" y="{y + 16}" text-anchor="end" {_FONT}>{escape(shown)}</text>'
            f'<rect x="{label_w}" y="{y + 3}" width="{w:.1f}" height="{row - 8}" '
            f'fill="{PALETTE[0]}"/>'
            f'<text x="{label_w + w + 6:.1f}" y="{y + 16}" {_FONT}>{value}</text>'
        )
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 (every label above is escaped)
