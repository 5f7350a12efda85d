"""The trip report as PDF, drawn from the report model with fpdf2 (pure Python).

Page 1 is the page a person reads in under a minute: the status in a coloured box, why,
the key facts and the QR code of the verification data. Then the header (legs, sensors,
calibration, limits), the summary per sensor, the alarm table, a chart per quantity, the
GPS track, the chain of custody, exposure and standards, and completeness and integrity.

Fonts are PDF core fonts (Helvetica; Symbol for the Δ of ΔH): nothing to ship, nothing
found on the system, the same file everywhere, and ``pdftotext`` reads it back.
Charts and the QR code are vector drawings (lines, polylines, rectangles).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fpdf import FPDF

from agent.report.charts import draw_chart, draw_qr, draw_track

COLOURS = {"OK": (24, 128, 56), "REVIEW": (196, 132, 0), "NOT VERIFIED": (96, 96, 96), "ALARM": (190, 30, 30)}
_SUBST = {"≥": ">=", "≤": "<=", "–": "-", "—": "-", "→": "->", "…": "...", "‘": "'", "’": "'", "“": '"', "”": '"',
          "·": ".", "‖": "||", "⟨": "<", "⟩": ">"}


def latin(text: Any) -> str:
    """Text the core fonts can show (latin-1): a few typographic signs spelled out, others '?'."""
    s = "" if text is None else str(text)
    for k, v in _SUBST.items():
        s = s.replace(k, v)
    return s.encode("latin-1", "replace").decode("latin-1")


def dur(seconds: Any) -> str:
    """``1 h 05 min`` / ``12 min 30 s`` / ``45 s``: durations as a QA person reads them."""
    if seconds is None:
        return "-"
    s = int(round(float(seconds)))
    d, rem = divmod(s, 86400)
    h, rem = divmod(rem, 3600)
    m, sec = divmod(rem, 60)
    if d:
        return f"{d} d {h} h {m:02d} min"
    if h:
        return f"{h} h {m:02d} min"
    return f"{m} min {sec:02d} s" if m else f"{sec} s"


def num(v: Any, digits: int = 2) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def when(iso: Any) -> str:
    """RFC 3339 as ``2026-11-18 13:06:40 UTC`` (the report's time base is UTC)."""
    if not iso:
        return "-"
    return str(iso).replace("T", " ").replace(".000Z", "").replace("Z", "") + " UTC"


def short(iso: Any) -> str:
    """``when`` without the zone, for table cells (their heading says UTC)."""
    return when(iso).removesuffix(" UTC")


class Report(FPDF):
    def __init__(self, model: dict[str, Any]) -> None:
        super().__init__(orientation="P", unit="mm", format="A4")
        self.model = model
        self.set_margins(15, 15, 15)
        self.set_auto_page_break(True, 16)
        self.set_title(latin(f"Trip report {model['shipment']['id']}"))
        self.set_author(latin(model.get("generated_by")))
        self.set_creation_date(datetime.now(UTC))

    def footer(self) -> None:
        self.set_y(-11)
        self.set_font("Helvetica", size=7)
        self.set_text_color(100)
        sh = self.model["shipment"]
        self.cell(0, 4, latin(f"Trip report {sh['id']}  |  gateway {sh['gateway']}  |  {self.model['generated_by']}"
                              f"  |  generated {when(self.model['generated_at'])}  |  time base UTC  |  page "
                              f"{self.page_no()}/{{nb}}"), align="C")
        self.set_text_color(0)

    # -- text helpers --------------------------------------------------------------------

    def rich(self, w: float, h: float, text: str, *, bold: bool = False, size: float = 8.5, align: str = "L") -> None:
        """One cell; a 'Δ' is drawn from the Symbol font, the rest in Helvetica."""
        style = "B" if bold else ""
        self.set_font("Helvetica", style, size)
        text = text.replace("\x01", "Δ")
        parts = latin(text.replace("Δ", "\x00")).split("\x00") if "Δ" in text else [latin(text)]
        if len(parts) == 1:
            self.cell(w, h, parts[0], align=align)
            return
        x0 = self.get_x()
        for i, part in enumerate(parts):
            if i:
                self.set_font("Symbol", "", size)
                self.cell(self.get_string_width("D"), h, "D")
                self.set_font("Helvetica", style, size)
            self.cell(self.get_string_width(part), h, part)
        used = self.get_x() - x0
        if w > used:
            self.cell(w - used, h, "")

    def heading(self, text: str) -> None:
        if self.get_y() > self.h - 40:
            self.add_page()
        self.ln(2)
        self.set_font("Helvetica", "B", 12)
        self.cell(0, 7, latin(text), new_x="LMARGIN", new_y="NEXT")
        self.set_draw_color(180)
        self.line(self.l_margin, self.get_y(), self.w - self.r_margin, self.get_y())
        self.ln(1.5)

    def para(self, text: str, size: float = 8.5) -> None:
        self.set_font("Helvetica", "", size)
        self.multi_cell(0, 4.2, latin(text), new_x="LMARGIN", new_y="NEXT")

    def grid(self, cols: list[tuple[str, float]], rows: list[list[str]], *, size: float = 7.5) -> None:
        """A plain table; the header is repeated after a page break."""
        total = self.w - self.l_margin - self.r_margin
        scale = total / sum(w for _, w in cols)
        widths = [w * scale for _, w in cols]
        line_h = 4.2

        def header() -> None:
            self.set_fill_color(230)
            self.set_font("Helvetica", "B", size)
            for (title, _), w in zip(cols, widths, strict=True):
                self.cell(w, 5, latin(title), fill=True)
            self.ln(5)

        header()
        for row in rows:
            # wrap each cell to its width, the row as tall as its tallest cell
            self.set_font("Helvetica", "", size)
            wrapped: list[list[str]] = [
                self.multi_cell(w, line_h, latin(v.replace("Δ", "\x01")), dry_run=True, output="LINES")  # type: ignore[misc]
                for v, w in zip(row, widths, strict=True)]
            height = line_h * max(len(x) for x in wrapped)
            if self.get_y() + height > self.page_break_trigger:
                self.add_page()
                header()
            y0 = self.get_y()
            x = self.l_margin
            for lines, w in zip(wrapped, widths, strict=True):
                for i, text in enumerate(lines):
                    self.set_xy(x, y0 + i * line_h)
                    self.rich(w, line_h, text, size=size)
                x += w
            self.set_xy(self.l_margin, y0 + height)
            self.set_draw_color(225)
            self.line(self.l_margin, self.get_y(), self.l_margin + total, self.get_y())
        self.ln(1)


#: alarm ids listed in a rule's row of the summary table; the rest are counted (every one
#: is in report.json, and each excursion has its own row in the table below)
IDS_SHOWN = 6


def _ids(ids: list[str]) -> str:
    """A rule's alarm ids for its row: the first few and how many in all (a rule firing
    every hour of a long trip had a row of hundreds of ids spread over some 300 pages)."""
    if not ids:
        return "-"
    if len(ids) <= IDS_SHOWN:
        return ", ".join(ids)
    return ", ".join(ids[:IDS_SHOWN]) + f", … ({len(ids)} in all)"


def exposure_paragraphs(m: dict[str, Any]) -> list[str]:
    """The "Exposure and standards" section as paragraphs: the stability budget, freeze-thaw
    cycles, the EN 12830 interval check and the MKT reference (the PDF and the HTML both)."""
    sh, st, ft, en = m["shipment"], m.get("stability"), m.get("freeze_thaw"), m["standards"]["en12830"]
    out = []
    if st:
        out.append(f"Stability budget: {dur(st.get('budget_s'))} allowed out of range "
                   f"({'>= ' + num(st.get('above')) if st.get('above') is not None else ''}"
                   f"{' or <= ' + num(st.get('below')) if st.get('below') is not None else ''} Cel) across the "
                   f"supply chain; {dur(st.get('spent_upstream_s'))} spent upstream, {dur(st.get('spent_s'))} in this "
                   f"shipment, {dur(st.get('remaining_s'))} remaining" + (" - EXHAUSTED" if st.get("exhausted") else "")
                   + ".")
    if ft:
        out.append(f"Freeze-thaw cycles (frozen <= {ft['freeze_at']} Cel, thawed >= {ft['thaw_at']} Cel): "
                   + ", ".join(f"{k} {v}" for k, v in ft["cycles"].items())
                   + f"; allowed {'no limit set' if ft.get('max_cycles') is None else ft['max_cycles']}.")
    out.append(f"{en['standard']}: a trip of {dur(en['planned_duration_s'] or sh['duration_s'])} allows a recording "
               f"interval of at most {dur(en['max_interval_s'])}. " + "; ".join(
                   f"{x['id']} {num(x['used_s'], 0)} s {'OK' if x['ok'] else 'TOO LONG'}" for x in en["sensors"]))
    out.append(f"MKT: {m['standards']['mkt']['reference']}; dH {m['standards']['mkt']['dH_kJ_per_mol']} kJ/mol "
               f"(dH/R = {m['standards']['mkt']['dH_R_K']:g} K).")
    return out


def mkt_window(window_s: float) -> str:
    """An MKT window as the standards name it: ``24 h``, ``30 days``."""
    return "24 h" if window_s == 86400 else f"{window_s / 86400:g} days"


def _mkt_text(mkt: dict[str, Any] | None) -> str:
    if not mkt:
        return "-"
    parts = [f"trip {num(mkt['trip']['mkt'])} Cel"]
    usp = mkt.get("usp")
    if usp:
        span = mkt_window(usp["window_s"])
        tail = "" if usp["complete"] else f", trip shorter: over {dur(usp['span_s'])}"
        parts.append(f"USP <1079.2> {span} window {num(usp['mkt'])} Cel (worst window from {when(usp['start'])}{tail})")
    return "; ".join(parts) + f"; ΔH {mkt['dH_kJ_per_mol']} kJ/mol"


def _first_page(pdf: Report, m: dict[str, Any]) -> None:
    sh, v = m["shipment"], m["verdict"]
    pdf.add_page()
    pdf.set_font("Helvetica", "B", 16)
    pdf.cell(0, 8, latin(f"Trip report  {sh['id']}"), new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("Helvetica", "", 9)
    route = " -> ".join(x for x in (sh.get("origin"), sh.get("destination")) if x) or "-"
    pdf.cell(0, 5, latin(f"{sh.get('product') or ''}   route {route}   gateway {sh['gateway']}"),
             new_x="LMARGIN", new_y="NEXT")
    pdf.ln(2)
    colour = COLOURS[v["status"]]
    pdf.set_fill_color(*colour)
    pdf.set_text_color(255)
    pdf.set_font("Helvetica", "B", 20)
    pdf.cell(0, 14, latin(f"  {v['status']}"), fill=True, new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("Helvetica", "B", 10)
    pdf.cell(0, 7, latin(f"  {v['headline']}"), fill=True, new_x="LMARGIN", new_y="NEXT")
    pdf.set_text_color(0)
    pdf.ln(2)
    pdf.set_font("Helvetica", "B", 10)
    pdf.cell(0, 6, "Why", new_x="LMARGIN", new_y="NEXT")
    for reason in v["reasons"][:14]:
        pdf.set_font("Helvetica", "", 9)
        pdf.multi_cell(125, 4.6, latin(f"- {reason}"), new_x="LMARGIN", new_y="NEXT")
    if len(v["reasons"]) > 14:
        pdf.para(f"... and {len(v['reasons']) - 14} more (see the alarm table)")
    y_after = pdf.get_y()
    qr_size = 42
    draw_qr(pdf, m["integrity"].get("verification", ""), pdf.w - pdf.r_margin - qr_size, 52, qr_size)
    pdf.set_xy(pdf.w - pdf.r_margin - qr_size, 52 + qr_size + 1)
    pdf.set_font("Helvetica", "", 6.5)
    pdf.multi_cell(qr_size, 3, "verification data: stream, seq range, anchor and head hash", align="C")
    pdf.set_y(max(y_after, 52 + qr_size + 10) + 2)
    integ = m["integrity"]
    temps = [q["temperature"] for s in m["sensors"] for q in [s["quantities"]] if "temperature" in q]
    lo = min((t for t in temps if t.get("count")), key=lambda t: t["min"], default=None)
    hi = max((t for t in temps if t.get("count")), key=lambda t: t["max"], default=None)
    worst_mkt = max((t["mkt"]["usp"]["mkt"] if t["mkt"].get("usp") else t["mkt"]["trip"]["mkt"] for t in temps
                     if t.get("mkt") and t["mkt"]["trip"]["mkt"] is not None), default=None)
    st = m.get("stability") or {}
    facts = [
        ("Shipment", f"{sh['id']}" + (f" (ref. {sh['reference']})" if sh.get("reference") else "")),
        ("Started", f"{when(sh['started_at'])} by {sh.get('started_by') or '-'}"),
        ("Stopped", f"{when(sh['stopped_at'])} ({sh.get('stop_reason') or 'not stopped'})"),
        ("Duration", f"{dur(sh['duration_s'])}" + (f" (planned {dur(sh['planned_duration_s'])})"
                                                   if sh.get("planned_duration_s") else "")),
        ("Legs", ", ".join(f"{x['name']} ({x.get('mode') or x['kind']})" for x in m["legs"]) or "-"),
        ("Sensors", ", ".join(s["id"] for s in m["sensors"])),
        ("Temperature", f"min {num(lo['min'])} Cel ({when(lo['min_at'])}), max {num(hi['max'])} Cel "
                        f"({when(hi['max_at'])})" if lo and hi else "-"),
        ("Highest MKT", f"{num(worst_mkt)} Cel" if worst_mkt is not None else "-"),
        ("Stability budget", f"{dur(st.get('remaining_s'))} left of {dur(st.get('budget_s'))} "
                             f"({dur(st.get('spent_upstream_s'))} spent upstream, {dur(st.get('spent_s'))} here)"
         if st.get("remaining_s") is not None else (f"{dur(st.get('budget_s'))} (shipment in progress)" if st else "-")),
        ("Custody", " -> ".join([m["custody"][0]["from"]] + [c["to"] for c in m["custody"]]) if m["custody"] else "-"),
        ("Record", f"{integ.get('verdict')}: stream {integ.get('stream')}, seq {integ.get('first_seq')}-"
                   f"{integ.get('last_seq')}, {integ.get('records')} records"),
        ("Head hash", str(integ.get("head_hash"))),
    ]
    for k, val in facts:
        pdf.set_font("Helvetica", "B", 8.5)
        pdf.cell(32, 4.8, latin(k))
        pdf.set_font("Helvetica", "", 8.5)
        pdf.multi_cell(0, 4.8, latin(val), new_x="LMARGIN", new_y="NEXT")


def render(model: dict[str, Any], path: str) -> None:
    """Write the PDF of ``model`` to ``path``."""
    m = model
    pdf = Report(m)
    _first_page(pdf, m)
    sh = m["shipment"]

    pdf.add_page()
    pdf.heading("Shipment")
    pdf.grid([("field", 30), ("value", 150)], [
        ["shipment id", sh["id"]], ["gateway", sh["gateway"]], ["agent version", sh.get("agent_version") or "-"],
        ["report made by", m["generated_by"]], ["source", ", ".join(f"{k} {v}" for k, v in m["source"].items())],
        ["time base", m["time_base"]], ["state", sh.get("state") or "-"],
        ["ignore period", dur(sh.get("ignore_s"))],
        ["stop conditions", "manual" + "".join(f", {k} {v}" for k, v in (sh.get("stop") or {}).items() if v)],
    ])
    pdf.heading("Legs (times UTC)")
    pdf.grid([("#", 6), ("leg", 30), ("kind", 20), ("mode", 16), ("start", 36), ("end", 36), ("duration", 22),
               ("muted rules", 24)],
              [[str(x["index"]), x["name"], x["kind"], x.get("mode") or "-", short(x["start"]), short(x["end"]),
                dur(x["duration_s"]), ", ".join(x.get("mute") or []) or "-"] for x in m["legs"]] or [["-"] * 8])
    pdf.heading("Sensors, calibration and limits")
    rows = []
    for s in m["sensors"]:
        cal = s["calibration"]
        due = cal.get("due") or "-"
        if cal.get("past_due"):
            due = f"{due} PAST DUE"
        rows.append([s["id"], s.get("label") or "-", s.get("profile") or "-",
                     f"{num(s.get('record_interval_s'), 0)} s / {num(s.get('interval_used_s'), 0)} s",
                     cal.get("certificate") or "-", due])
    pdf.grid([("sensor", 18), ("label", 34), ("profile", 20), ("interval set / used", 30), ("calibration", 30),
               ("cal. due", 30)], rows)
    for s in m["sensors"]:
        lim = [f"{x['rule']}: {x['type']} " + " ".join(f"{k} {v}" for k, v in x.items() if k not in ("rule", "type",
                                                                                                   "quantity"))
               for x in s["limits"]]
        pdf.para(f"{s['id']} limits ({s.get('profile')}): " + ("; ".join(lim) or "none"), size=7.5)

    pdf.heading("Summary per sensor (times UTC)")
    rows = []
    for s in m["sensors"]:
        for q, f in s["quantities"].items():
            if not f.get("count"):
                continue
            zones = "; ".join(f"{z['zone']}: {dur(z['time_s'])}" for z in f.get("zones", []) if z["time_s"])
            rows.append([s["id"], f"{q} ({f['unit']})", num(f["min"]), short(f["min_at"]), num(f["max"]),
                         short(f["max_at"]), num(f["mean"]), str(f["count"]), dur(f["elapsed_s"]), zones or "-"])
    pdf.grid([("sensor", 8), ("quantity", 20), ("min", 8), ("at", 27), ("max", 8), ("at", 27), ("mean", 8),
              ("points", 8), ("elapsed", 18), ("time in each zone", 48)], rows, size=6.5)
    pdf.grid([("MKT", 180)], [[f"{s['id']}: {_mkt_text(s['quantities']['temperature'].get('mkt'))}"]
                               for s in m["sensors"] if "temperature" in s["quantities"]])

    pdf.heading("Alarms per rule (times UTC)")
    rows = []
    for a in m["alarms"]:
        limit = " ".join(f"{k} {v}" for k, v in a["limit"].items())
        rows.append([a["sensor_id"], a["rule"], a["kind"], limit or "-", dur(a["allowed_s"]),
                     dur(a["time_out_s"]) if a["time_out_s"] is not None else "-", str(a["count"]), a["status"],
                     _ids(a["alarm_ids"])])
    pdf.grid([("sensor", 10), ("rule", 24), ("type", 16), ("limit", 20), ("allowed", 18), ("time out", 18),
              ("excursions", 13), ("status", 15), ("alarms", 46)], rows, size=6.5)
    rows = [[a["sensor_id"], a["rule"], str(i), short(x["start"]), short(x["end"]) if x["end"] else "open",
             dur(x["duration_s"]), num(x["peak"])]
            for a in m["alarms"] if a["status"] != "OK" or a["kind"] in ("single", "cumulative")
            for i, x in enumerate(a["excursions"], 1)]
    if rows:
        pdf.para("Excursions (from the first reading at or beyond the limit to the first back inside it):", size=7.5)
        pdf.grid([("sensor", 10), ("rule", 26), ("#", 6), ("start", 34), ("end", 34), ("duration", 20), ("peak", 14)],
                 rows, size=6.5)
    rows = [[x["alarm_id"], x["by"], short(x["at"]), x["reason"]] for a in m["alarms"] for x in a["acknowledgements"]]
    pdf.para("Acknowledgements:" + ("" if rows else " none"), size=7.5)
    if rows:
        pdf.grid([("alarm", 30), ("by", 24), ("when", 34), ("why", 92)], rows, size=6.5)

    for chart in m["charts"]:
        if pdf.get_y() > pdf.h - 90:
            pdf.add_page()
        pdf.heading(f"Chart: {chart['quantity']} ({chart['unit']})")
        draw_chart(pdf, chart, pdf.l_margin, pdf.get_y() + 2, pdf.w - pdf.l_margin - pdf.r_margin, 62)
        pdf.set_y(pdf.get_y() + 72)
    if m.get("track"):
        if pdf.get_y() > pdf.h - 100:
            pdf.add_page()
        tr = m["track"]
        pdf.heading(f"GPS track ({tr['sensor_id']}, {tr['fixes']} fixes, {short(tr['first_at'])} - {short(tr['last_at'])})")
        draw_track(pdf, tr, pdf.l_margin, pdf.get_y() + 2, pdf.w - pdf.l_margin - pdf.r_margin, 80)
        pdf.set_y(pdf.get_y() + 88)

    pdf.heading("Chain of custody (times UTC)")
    rows = [[str(c["index"]), short(c["at"]), c["from"], c["to"], c["signed_by"],
             (f"{c['where']['lat']:.5f}, {c['where']['lon']:.5f}" if isinstance(c.get("where"), dict) and "lat" in
              c["where"] else str((c.get("where") or {}).get("place", "-")) if c.get("where") else "unknown"),
             c.get("leg") or "-"] for c in m["custody"]]
    pdf.grid([("#", 6), ("when", 36), ("from", 28), ("to", 28), ("signed by", 26), ("where", 34), ("leg", 22)],
              rows or [["-", "no handover recorded", "", "", "", "", ""]])

    pdf.heading("Exposure and standards")
    for text in exposure_paragraphs(m):
        pdf.para(text)

    pdf.heading("Completeness and integrity")
    integ = m["integrity"]
    gaps = ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in integ.get("gaps", [])) or "none"
    tq = ", ".join(f"{k} {v}" for k, v in integ.get("time_quality", {}).items())
    pdf.grid([("check", 36), ("result", 144)], [
        ["verdict", f"{integ.get('verdict')}" + ("".join(f"; {r}" for r in integ.get("reasons", [])))],
        ["stream", str(integ.get("stream"))],
        ["seq range", f"{integ.get('first_seq')} - {integ.get('last_seq')} ({integ.get('records')} records: "
                      + ", ".join(f"{k} {v}" for k, v in integ.get("by_type", {}).items()) + ")"],
        ["gaps", gaps],
        ["chain", "; ".join(f"seq {b['seq']}: {b['why']}" for b in integ.get("chain_breaks", [])) or
         "every hash verified; every link between present records verified"],
        ["time_quality", tq or "-"],
        ["clock_step corrections", "; ".join(
            f"seq {c['first_seq']}-{c['last_seq']}: {c['offset_s']:+g} s" for s in integ.get("clock_steps", [])
            for c in s["corrections"]) + f" ({integ.get('corrected_records', 0)} readings corrected)"
         if integ.get("clock_steps") else "none"],
        ["data loss", "; ".join(f"seq {x['seq']}: {x['reason']} ({x.get('count') or '?'} {x.get('what') or ''})"
                                for x in integ.get("data_loss", [])) or "none"],
        ["anchor (prev_hash of first)", str(integ.get("anchor_prev_hash"))],
        ["head hash", str(integ.get("head_hash"))],
        ["verification data (QR)", str(integ.get("verification"))],
    ])
    pdf.output(path)


__all__ = ["dur", "latin", "render"]
