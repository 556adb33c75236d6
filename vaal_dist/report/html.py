"""Self-contained HTML pieces: every string escaped, charts as inline SVG drawn here, images as data: URLs.

Nothing on a page loads anything from elsewhere (no script, stylesheet, font or image URL), so a report
opens as it was written: from a bucket, attached to a ticket, years later.
"""
from __future__ import annotations

import html
from dataclasses import dataclass

import numpy as np

from vaal_dist.round_files import SELECTION

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf")

STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; max-width: 1200px; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 1.6em; }
table { border-collapse: collapse; } td, th { padding: 2px 10px; border-bottom: 1px solid #ddd; text-align: left; }
th { background: #f4f4f4; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.sheet { display: flex; flex-wrap: wrap; gap: 6px; }
.thumb { margin: 0; width: 104px; font-size: 11px; overflow-wrap: anywhere; }
.thumb img, .thumb .missing { width: 96px; height: 96px; object-fit: contain; background: #000;
  image-rendering: pixelated; display: block; }
.thumb .missing { background: #eee; color: #a00; font-size: 10px; overflow: hidden; }
.note { color: #555; }
svg text { font: 11px system-ui, sans-serif; fill: #333; }
"""


def esc(value) -> str:
    """``value`` as text safe anywhere in a page, attribute values included."""
    return html.escape(str(value), quote=True)


def page(title: str, body: list[str]) -> str:
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
            f"<style>{STYLE}</style></head><body>\n<h1>{esc(title)}</h1>\n" + "\n".join(body) + "\n</body></html>\n")


def table(header: list[str], rows: list[list], element_id: str) -> str:
    """A table of escaped cells; numbers are right-aligned."""
    def cell(value) -> str:
        numeric = isinstance(value, (int, float, np.number)) and not isinstance(value, bool)
        return f'<td class="num">{esc(value)}</td>' if numeric else f"<td>{esc(value)}</td>"

    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join(f"<tr>{''.join(cell(v) for v in row)}</tr>" for row in rows)
    return f'<table id="{esc(element_id)}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


@dataclass(frozen=True)
class Fact:
    """One row of a facts table: a label, the value as shown, and optionally the exact value and an element id
    (what a reader or a test takes from the page)."""

    label: str
    shown: str
    value: float | None = None
    element_id: str | None = None


def facts(rows: list[Fact]) -> str:
    def row(f: Fact) -> str:
        ident = f' id="{esc(f.element_id)}"' if f.element_id else ""
        value = f' data-value="{esc(repr(float(f.value)))}"' if f.value is not None else ""
        return f"<tr><th>{esc(f.label)}</th><td{ident}{value}>{esc(f.shown)}</td></tr>"

    return "<table class=\"facts\">" + "".join(row(f) for f in rows) + "</table>"


@dataclass(frozen=True)
class Thumb:
    """A selected image as shown: its rank, score and id, and a data: URL (or why there is none)."""

    rank: int
    score: float
    id: str
    data_url: str | None
    problem: str = ""


def contact_sheet(thumbs: list[Thumb], total: int) -> str:
    """The thumbnails in rank order, then how many selected images are not shown (``total`` in all)."""
    figures = "".join(_figure(t) for t in thumbs)
    rest = total - len(thumbs)
    more = (f'<p id="more" data-count="{rest}">… and {rest:,} more selected images (ranks {len(thumbs) + 1:,} to '
            f"{total:,}), listed in {SELECTION}.</p>") if rest > 0 else ""
    return f'<div class="sheet" id="contact-sheet">{figures}</div>{more}'


def _figure(t: Thumb) -> str:
    if t.data_url is None:
        picture = f'<div class="missing">cannot show: {esc(t.problem)}</div>'
    else:
        picture = f'<img src="{esc(t.data_url)}" alt="{esc(t.id)}">'
    return (f'<figure class="thumb" data-rank="{t.rank}">{picture}<figcaption>#{t.rank} · {t.score:.4g}<br>'
            f"{esc(t.id)}</figcaption></figure>")


def histogram_svg(scores: np.ndarray, cut_off: float, bins: int = 40, width: int = 640, height: int = 220) -> str:
    """Bars of the scores' histogram, those at or above ``cut_off`` in another colour, and the cut-off as a
    vertical line (id ``cut-off``). About ``bins`` bars of one width over the scores and the cut-off, one
    edge on the cut-off itself: no bar mixes scores on both sides of it."""
    scores = np.asarray(scores, np.float64)
    lo, hi = min(scores.min(), cut_off), max(scores.max(), cut_off)
    bin_width = (hi - lo) / bins or 1.0 / bins
    below, above = int(np.ceil((cut_off - lo) / bin_width)), max(1, int(np.ceil((hi - cut_off) / bin_width)))
    counts, edges = np.histogram(scores, bins=cut_off + bin_width * np.arange(-below, above + 1))
    lo, hi = edges[0], edges[-1]
    left, right, top, bottom = 50, 20, 10, 30
    plot_w, plot_h = width - left - right, height - top - bottom
    x = _scale(lo, hi, left, left + plot_w)
    y = _scale(0, max(counts.max(), 1), top + plot_h, top)
    bars = "".join(
        f'<rect x="{x(a):.2f}" y="{y(c):.2f}" width="{max(x(b) - x(a) - 1, 0.5):.2f}" height="{y(0) - y(c):.2f}" '
        f'fill="{"#d62728" if a >= cut_off else "#1f77b4"}"><title>{esc(f"{a:.4g} to {b:.4g}: {c}")}</title></rect>'
        for a, b, c in zip(edges[:-1], edges[1:], counts))
    cx = x(cut_off)
    return (f'<svg width="{width}" height="{height}" role="img" '
            f'id="score-histogram">{bars}'
            f'<line x1="{left}" y1="{y(0):.2f}" x2="{left + plot_w}" y2="{y(0):.2f}" stroke="#333"/>'
            f'<line id="cut-off" data-value="{esc(repr(float(cut_off)))}" x1="{cx:.2f}" y1="{top}" x2="{cx:.2f}" '
            f'y2="{y(0):.2f}" stroke="#000" stroke-width="2" stroke-dasharray="4 3"/>'
            f'<text x="{cx + 4:.2f}" y="{top + 10}">cut-off {cut_off:.4g}</text>'
            f'<text x="{left}" y="{height - 8}">{lo:.4g}</text>'
            f'<text x="{left + plot_w}" y="{height - 8}" text-anchor="end">{hi:.4g}</text>'
            f'<text x="{left - 4}" y="{top + 10}" text-anchor="end">{counts.max()}</text>'
            f'<text x="{left - 4}" y="{y(0):.2f}" text-anchor="end">0</text></svg>')


@dataclass(frozen=True)
class Series:
    name: str
    x: list[float]
    y: list[float]


def line_chart_svg(series: list[Series], x_label: str, y_label: str, width: int = 720, height: int = 360) -> str:
    """One polyline with markers per series, a legend on the right, axes with the x values as ticks."""
    xs = sorted({v for s in series for v in s.x})
    ys = [v for s in series for v in s.y if np.isfinite(v)]
    if not xs or not ys:
        return '<p class="note">no points to draw</p>'
    x_lo, x_hi = (xs[0] - 0.5, xs[0] + 0.5) if len(xs) == 1 else (xs[0], xs[-1])
    y_lo, y_hi = min(ys), max(ys)
    pad = (y_hi - y_lo) * 0.05 or 0.01
    y_lo, y_hi = y_lo - pad, y_hi + pad
    left, right, top, bottom = 55, 170, 10, 40
    x = _scale(x_lo, x_hi, left, width - right)
    y = _scale(y_lo, y_hi, height - bottom, top)
    parts = [f'<line x1="{left}" y1="{height - bottom}" x2="{width - right}" y2="{height - bottom}" stroke="#333"/>',
             f'<line x1="{left}" y1="{top}" x2="{left}" y2="{height - bottom}" stroke="#333"/>']
    parts += [f'<text x="{x(v):.2f}" y="{height - bottom + 14}" text-anchor="middle">{v:g}</text>' for v in xs]
    for v in np.linspace(y_lo + pad, y_hi - pad, 5) if y_hi - y_lo > 2 * pad else [y_lo + pad]:
        parts.append(f'<text x="{left - 4}" y="{y(v) + 4:.2f}" text-anchor="end">{v:.3g}</text>'
                     f'<line x1="{left}" y1="{y(v):.2f}" x2="{width - right}" y2="{y(v):.2f}" stroke="#eee"/>')
    parts.append(f'<text x="{(left + width - right) / 2:.0f}" y="{height - 6}" text-anchor="middle">{esc(x_label)}</text>')
    parts.append(f'<text x="12" y="{(top + height - bottom) / 2:.0f}" text-anchor="middle" '
                 f'transform="rotate(-90 12 {(top + height - bottom) / 2:.0f})">{esc(y_label)}</text>')
    for i, s in enumerate(series):
        colour = PALETTE[i % len(PALETTE)]
        points = [(x(a), y(b)) for a, b in zip(s.x, s.y) if np.isfinite(b)]
        path = " ".join(f"{a:.2f},{b:.2f}" for a, b in points)
        parts.append(f'<g class="series" data-name="{esc(s.name)}"><polyline points="{path}" fill="none" '
                     f'stroke="{colour}" stroke-width="2"/>'
                     + "".join(f'<circle cx="{a:.2f}" cy="{b:.2f}" r="3" fill="{colour}"/>' for a, b in points)
                     + "</g>")
        ly = top + 14 * i + 8
        parts.append(f'<rect x="{width - right + 10}" y="{ly - 8}" width="10" height="10" fill="{colour}"/>'
                     f'<text x="{width - right + 24}" y="{ly + 1}">{esc(s.name)}</text>')
    return (f'<svg width="{width}" height="{max(height, top + 14 * len(series) + 20)}" '
            f'role="img" id="learning-curves">{"".join(parts)}</svg>')


def _scale(lo: float, hi: float, to_lo: float, to_hi: float):
    return lambda v: to_lo + (v - lo) / (hi - lo) * (to_hi - to_lo)
