"""The trip report as one self-contained HTML file (tables and inline SVG charts, no scripts)."""

from __future__ import annotations

import html
from typing import Any

from agent.report.pdf import COLOURS, dur, exposure_paragraphs, mkt_window, num, when


def _e(v: Any) -> str:
    return html.escape("" if v is None else str(v))


def _table(head: list[str], rows: list[list[Any]]) -> str:
    th = "".join(f"<th>{_e(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{th}</tr>{body}</table>"


def _svg(chart: dict[str, Any], w: int = 900, h: int = 260) -> str:
    t0, t1 = chart["t0"], max(chart["t1"], chart["t0"] + 1)
    vals = [v for pts in chart["series"].values() for b in pts for v in b[1:]] + [x["value"] for x in chart["limits"]]
    if not vals:
        return ""
    lo, hi = min(vals), max(vals)
    pad = (hi - lo) * 0.08 or 1.0
    lo, hi = lo - pad, hi + pad

    def px(t: float) -> float:
        return 40 + (t - t0) / (t1 - t0) * (w - 50)

    def py(v: float) -> float:
        return h - 20 - (v - lo) / (hi - lo) * (h - 30)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-size="10">']
    for a, b, _ in chart["shaded"]:
        parts.append(f'<rect x="{px(a):.1f}" y="10" width="{max(1, px(b) - px(a)):.1f}" height="{h - 30}" fill="#fdd"/>')
    for x in chart["limits"]:
        parts.append(f'<line x1="40" x2="{w - 10}" y1="{py(x["value"]):.1f}" y2="{py(x["value"]):.1f}" stroke="#c00" '
                     f'stroke-dasharray="4 3"/><text x="{w - 12}" y="{py(x["value"]) - 2:.1f}" text-anchor="end" '
                     f'fill="#c00">{_e(x["label"])}</text>')
    colours = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2"]
    for i, (sid, pts) in enumerate(chart["series"].items()):
        line = " ".join(f"{px(b[0]):.1f},{py(v):.1f}" for b in pts for v in (b[1], b[2]))
        parts.append(f'<polyline fill="none" stroke="{colours[i % 6]}" points="{line}"/>'
                     f'<text x="{45 + 60 * i}" y="20" fill="{colours[i % 6]}">{_e(sid)}</text>')
    parts.append(f'<rect x="40" y="10" width="{w - 50}" height="{h - 30}" fill="none" stroke="#888"/>'
                 f'<text x="2" y="{py(hi - pad):.0f}">{hi - pad:.1f}</text><text x="2" y="{py(lo + pad):.0f}">'
                 f'{lo + pad:.1f}</text><text x="40" y="{h - 5}">{_e(when_short(t0))}</text>'
                 f'<text x="{w - 10}" y="{h - 5}" text-anchor="end">{_e(when_short(t1))}</text></svg>')
    return "".join(parts)


def when_short(t: float) -> str:
    from agent.timebase import rfc3339

    return when(rfc3339(t))


def render(m: dict[str, Any]) -> str:
    sh, v, integ = m["shipment"], m["verdict"], m["integrity"]
    colour = "#" + "".join(f"{c:02x}" for c in COLOURS[v["status"]])
    out = [f"<!doctype html><html><head><meta charset='utf-8'><title>Trip report {_e(sh['id'])}</title><style>"
           "body{font-family:sans-serif;font-size:13px;margin:2em}table{border-collapse:collapse;margin:.5em 0}"
           "td,th{border-bottom:1px solid #ddd;padding:2px 8px;text-align:left;vertical-align:top}"
           "th{background:#eee}</style></head><body>",
           f"<h1>Trip report {_e(sh['id'])}</h1>",
           f"<div style='background:{colour};color:#fff;padding:.6em 1em'><b style='font-size:2em'>{_e(v['status'])}"
           f"</b><br>{_e(v['headline'])}</div><h3>Why</h3><ul>"
           + "".join(f"<li>{_e(r)}</li>" for r in v["reasons"]) + "</ul>",
           _table(["field", "value"], [["gateway", sh["gateway"]], ["agent version", sh.get("agent_version")],
                                       ["started", when(sh["started_at"])], ["stopped", when(sh["stopped_at"])],
                                       ["duration", dur(sh["duration_s"])], ["time base", m["time_base"]],
                                       ["report", m["generated_by"]], ["source", m["source"]]]),
           "<h2>Legs</h2>", _table(["#", "leg", "kind", "mode", "start", "end", "duration"],
                                   [[x["index"], x["name"], x["kind"], x.get("mode"), when(x["start"]), when(x["end"]),
                                     dur(x["duration_s"])] for x in m["legs"]]),
           "<h2>Sensors</h2>", _table(
               ["sensor", "label", "profile", "interval set/used (s)", "calibration", "due", "min", "max", "mean",
                "points", "MKT"],
               [[s["id"], s.get("label"), s.get("profile"), f"{s.get('record_interval_s')}/{s.get('interval_used_s')}",
                 s["calibration"].get("certificate"), (s["calibration"].get("due") or "-")
                 + (" PAST DUE" if s["calibration"].get("past_due") else ""),
                 num(q.get("min")), num(q.get("max")), num(q.get("mean")), q.get("count"),
                 _mkt(q.get("mkt"))] for s in m["sensors"] for q in [s["quantities"].get("temperature", {})]]),
           "<h2>Alarms per rule</h2>", _table(
               ["sensor", "rule", "type", "allowed", "time out", "excursions", "status", "acknowledged"],
               [[a["sensor_id"], a["rule"], a["kind"], dur(a["allowed_s"]), dur(a["time_out_s"]),
                 "; ".join(f"{when(x['start'])} - {when(x['end'])} ({dur(x['duration_s'])}, peak {num(x['peak'])})"
                           for x in a["excursions"]), a["status"],
                 "; ".join(f"{x['by']} {when(x['at'])}: {x['reason']}" for x in a["acknowledgements"])]
                for a in m["alarms"]])]
    for chart in m["charts"]:
        out.append(f"<h2>{_e(chart['quantity'])} ({_e(chart['unit'])})</h2>{_svg(chart)}")
    out += ["<h2>Exposure and standards</h2>", *(f"<p>{_e(p)}</p>" for p in exposure_paragraphs(m))]
    out += ["<h2>Chain of custody</h2>", _table(["#", "when", "from", "to", "signed by", "where"],
                                                [[c["index"], when(c["at"]), c["from"], c["to"], c["signed_by"],
                                                  c.get("where")] for c in m["custody"]]),
            "<h2>Completeness and integrity</h2>", _table(["check", "result"], [
                ["verdict", integ.get("verdict")], ["reasons", "; ".join(integ.get("reasons", [])) or "-"],
                ["stream", integ.get("stream")], ["seq range", f"{integ.get('first_seq')}-{integ.get('last_seq')}"],
                ["gaps", integ.get("gaps") or "none"], ["time_quality", integ.get("time_quality")],
                ["clock steps", len(integ.get("clock_steps", []))], ["data loss", integ.get("data_loss") or "none"],
                ["head hash", integ.get("head_hash")], ["verification", integ.get("verification")]]),
            "</body></html>"]
    return "\n".join(out)


def _mkt(mkt: dict[str, Any] | None) -> str:
    if not mkt:
        return "-"
    usp = mkt.get("usp")
    text = f"trip {num(mkt['trip']['mkt'])}"
    if usp:
        text += f"; {mkt_window(usp['window_s'])} window {num(usp['mkt'])}"
    return text + f" (ΔH {mkt['dH_kJ_per_mol']} kJ/mol)"
