"""Vector drawings for the PDF: a chart per quantity, the GPS track, the QR code.

Drawn with the PDF library's own lines and rectangles: no plotting stack on a gateway.
A chart shows each sensor's min–max per column (so a one-minute peak in a week survives),
the limit lines, and the excursions that raised an alarm or warning, shaded.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

import segno

PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (148, 103, 189), (140, 86, 75), (227, 119, 194),
           (127, 127, 127), (188, 189, 34)]


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    span = hi - lo
    if span <= 0:
        return [lo]
    raw = span / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step) + 1)]


def draw_chart(pdf: Any, chart: dict[str, Any], x: float, y: float, w: float, h: float) -> None:
    t0, t1 = float(chart["t0"]), float(chart["t1"])
    if t1 <= t0:
        t1 = t0 + 1.0
    values = [v for pts in chart["series"].values() for b in pts for v in (b[1], b[2])]
    values += [lim["value"] for lim in chart["limits"]]
    if not values:
        return
    lo, hi = min(values), max(values)
    pad = (hi - lo) * 0.08 or 1.0
    lo, hi = lo - pad, hi + pad
    left, bottom = x + 12, y + h - 8
    pw, ph = w - 14, h - 10

    def px(t: float) -> float:
        return left + (t - t0) / (t1 - t0) * pw

    def py(v: float) -> float:
        return bottom - (v - lo) / (hi - lo) * ph

    pdf.set_fill_color(253, 222, 222)
    for a, b, _sid in chart["shaded"]:
        xa, xb = px(max(t0, a)), px(min(t1, b))
        if xb > xa:
            pdf.rect(xa, bottom - ph, max(0.3, xb - xa), ph, style="F")
    pdf.set_draw_color(120)
    pdf.set_line_width(0.2)
    pdf.rect(left, bottom - ph, pw, ph)
    pdf.set_font("Helvetica", "", 6)
    for v in _ticks(lo, hi):
        pdf.set_draw_color(230)
        pdf.line(left, py(v), left + pw, py(v))
        pdf.set_xy(x, py(v) - 1.5)
        pdf.cell(11, 3, f"{v:g}", align="R")
    for t in _ticks(t0, t1, 6):
        pdf.set_xy(px(t) - 10, bottom + 0.5)
        pdf.cell(20, 3, datetime.fromtimestamp(t, UTC).strftime("%m-%d %H:%M"), align="C")
    pdf.set_draw_color(200, 30, 30)
    pdf.set_line_width(0.3)
    pdf.set_text_color(200, 30, 30)
    for lim in chart["limits"]:
        yy = py(lim["value"])
        pdf.set_dash_pattern(dash=1.2, gap=0.8)
        pdf.line(left, yy, left + pw, yy)
        pdf.set_dash_pattern()
        pdf.set_xy(left + pw - 30, yy - 3)
        pdf.cell(30, 3, lim["label"], align="R")
    pdf.set_text_color(0)
    pdf.set_line_width(0.25)
    for i, (sid, pts) in enumerate(chart["series"].items()):
        colour = PALETTE[i % len(PALETTE)]
        pdf.set_draw_color(*colour)
        line = []
        for b in pts:
            line += [(px(b[0]), py(b[1])), (px(b[0]), py(b[2]))] if b[1] != b[2] else [(px(b[0]), py(b[1]))]
        if len(line) > 1:
            pdf.polyline(line)
        pdf.set_text_color(*colour)
        pdf.set_xy(left + 2 + i * 22, bottom - ph + 0.5)
        pdf.cell(20, 3, str(sid))
    pdf.set_text_color(0)
    pdf.set_draw_color(0)
    pdf.set_line_width(0.2)


def draw_track(pdf: Any, track: dict[str, Any], x: float, y: float, w: float, h: float) -> None:
    """Equirectangular projection (longitude scaled by cos of the mid latitude); no map tiles offline."""
    pts = track["points"]
    lats, lons = [p[0] for p in pts], [p[1] for p in pts]
    mid = math.radians((min(lats) + max(lats)) / 2)
    kx = max(math.cos(mid), 0.05)
    xs, ys = [lon * kx for lon in lons], lats
    span = max(max(xs) - min(xs), max(ys) - min(ys), 1e-4)
    scale = min((w - 10) / span, (h - 10) / span)
    cx, cy = (max(xs) + min(xs)) / 2, (max(ys) + min(ys)) / 2

    def proj(lat: float, lon: float) -> tuple[float, float]:
        return x + w / 2 + (lon * kx - cx) * scale, y + h / 2 - (lat - cy) * scale

    pdf.set_draw_color(160)
    pdf.rect(x, y, w, h)
    pdf.set_draw_color(31, 119, 180)
    pdf.set_line_width(0.4)
    line = [proj(a, b) for a, b in pts]
    if len(line) > 1:
        pdf.polyline(line)
    pdf.set_line_width(0.2)
    for (lat, lon), colour, label in ((track["start"], (44, 160, 44), "start"), (track["end"], (200, 30, 30), "end")):
        px, py = proj(lat, lon)
        pdf.set_fill_color(*colour)
        pdf.circle(x=px, y=py, radius=1.2, style="F")
        pdf.set_font("Helvetica", "", 6)
        pdf.set_xy(px + 1.5, py - 1.5)
        pdf.cell(20, 3, f"{label} {lat:.4f}, {lon:.4f}")
    pdf.set_fill_color(148, 103, 189)
    for i, where in enumerate(track.get("handovers", []), 1):
        px, py = proj(where["lat"], where["lon"])
        pdf.rect(px - 1, py - 1, 2, 2, style="F")
        pdf.set_xy(px + 1.5, py - 1.5)
        pdf.cell(20, 3, f"handover {i}")


def draw_qr(pdf: Any, payload: str, x: float, y: float, size: float) -> None:
    """The QR code as filled squares (segno makes the matrix; error correction M)."""
    if not payload:
        return
    qr = segno.make(payload, error="m", micro=False)
    matrix = qr.matrix
    n = len(matrix) + 8  # the quiet zone, 4 modules each side
    cell = size / n
    pdf.set_fill_color(0)
    for r, row in enumerate(matrix):
        run = None
        for c, dark in enumerate([*row, 0]):
            if dark and run is None:
                run = c
            elif not dark and run is not None:
                pdf.rect(x + (run + 4) * cell, y + (r + 4) * cell, (c - run) * cell, cell, style="F")
                run = None
    pdf.set_fill_color(255)
