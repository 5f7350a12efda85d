"""Where a shipment's records come from: the gateway's store, or the reference receiver.

Both give the records exactly as chained; only ``source`` in the report differs. The
store is read through its public reader API (``Store.open(..., create=False)``), the
receiver through its facade (``Receiver(db).records(...)``).
"""

from __future__ import annotations

from typing import Any

from agent.report.select import ReportError, Selection, find_bounds, seal_of, select, shipments_in

#: how far after a shipment's stop the export looks for the checkpoint that seals it
SEAL_LOOKAHEAD = 5000


def from_store(store: Any, shipment: str) -> Selection:
    """The shipment's range from a :class:`agent.store.Store`, reading only that range."""
    events = store.records(type="event")
    started, stopped = find_bounds(events, shipment)
    lo = int(started["seq"])
    hi = int(stopped["seq"]) if stopped else None
    records = store.records(since_seq=lo - 1, limit=None if hi is None else hi - lo + 1)
    seal: list[dict[str, Any]] = []
    if hi is not None:
        records = [r for r in records if int(r["seq"]) <= hi]
        # the checkpoint sealing the shipment follows its stop within a commit or two
        seal = seal_of(store.records(since_seq=hi, limit=SEAL_LOOKAHEAD), hi)
    return Selection(shipment, started["stream"], records, started, stopped, seal)


def from_receiver(receiver: Any, shipment: str, gateway: str | None = None) -> Selection:
    """The shipment's range from a :class:`agent.receiver.Receiver`'s copy.

    A shipment id is unique per gateway, not across a fleet: if two gateways (or two
    streams) hold it, ``gateway`` must say which.
    """
    records = receiver.records(gateway)
    found = [s for s in shipments_in(r for r in records if r.get("type") == "event") if s["shipment"] == shipment]
    if not found:
        raise ReportError(f"the receiver holds no shipment {shipment!r}" + (f" of gateway {gateway!r}" if gateway else ""))
    if len(found) > 1:
        raise ReportError(f"shipment {shipment!r} is in {len(found)} streams; name the gateway (--gateway)")
    stream = found[0]["stream"]
    return select((r for r in records if r.get("stream") == stream), shipment)


def source_of_store(store: Any) -> dict[str, Any]:
    return {"kind": "gateway store", "path": str(store.path), "gateway": store.gateway_id}


def source_of_receiver(db: str, gateway: str | None) -> dict[str, Any]:
    return {"kind": "reference receiver", "path": str(db), **({"gateway": gateway} if gateway else {})}


__all__ = ["ReportError", "from_receiver", "from_store", "source_of_receiver", "source_of_store"]
