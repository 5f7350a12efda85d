"""The trip report: a shipment's records → a report model (a JSON-able dict) → PDF or HTML.

::

    records = store.records(...)                  # or Receiver(db).records(gateway)
    sel = select(records, "SHP-1")                # the chained range start..stop
    model = build(sel, source={"kind": "gateway", "path": "..."})
    render_pdf(model, "SHP-1.pdf")                # needs the 'report' extra (fpdf2, segno)

:func:`agent.report.source.from_store` and :func:`~agent.report.source.from_receiver` find
the range without loading a whole store; :func:`agent.report.export.export` writes the
records as chained, the report and a README for auditors. Design: ``docs/shipments.md``.
"""

from agent.report.model import FORMAT, build
from agent.report.select import ReportError, Selection, select

__all__ = ["FORMAT", "ReportError", "Selection", "build", "render_html", "render_pdf", "select"]


def render_pdf(model: dict, path: str) -> None:  # type: ignore[type-arg]
    """Write the PDF (imported lazily: a gateway that never prints needs no PDF library)."""
    from agent.report.pdf import render

    render(model, path)


def render_html(model: dict) -> str:  # type: ignore[type-arg]
    from agent.report.html import render

    return render(model)
