"""What ``coldgate status`` reports, whether the daemon runs or not.

While the daemon runs it writes ``<store>.status.json`` every two seconds (drivers, sync,
clock, sensors, alarms); without it, the store itself is read. Either way the store's
queue depth and oldest unsent record come from the database.
"""

from __future__ import annotations

import json
import time
from typing import Any

from agent.config import Config
from agent.daemon import running_pid, status_path
from agent.exc import StoreError
from agent.store import Store
from agent.timebase import Clock, rfc3339


def collect(cfg: Config) -> dict[str, Any]:
    path = cfg.store.path
    pid = running_pid(path)
    data: dict[str, Any] = {}
    if pid:
        try:
            data = json.loads(status_path(path).read_text())
        except (OSError, ValueError):
            data = {"gateway_id": cfg.gateway_id, "sync": {"result": "starting"}, "drivers": {},
                    "note": "agent starting: no status file yet"}
        data["running"] = True
        data["pid"] = pid
    else:
        data = {"running": False, "gateway_id": cfg.gateway_id, "drivers": {
            d.name: {"type": d.type, "state": "not running" if d.enabled else "disabled"} for d in cfg.drivers}}
        try:
            last = json.loads(status_path(path).read_text())
            data["sync"] = {**last.get("sync", {}), "note": f"as of {last.get('updated_at')} (agent not running)"}
        except (OSError, ValueError):
            data["sync"] = {"result": "unknown", "note": "agent not running"}
        clock = Clock(cfg.time.sync_source)
        data["clock"] = {"synced": clock.synced(), "source": cfg.time.sync_source}
    try:
        with Store.open(path, gateway_id=cfg.gateway_id, create=False, check=False) as store:
            data["store"] = {**data.get("store", {}), **store.stats()}
            if not pid:
                now = time.time()
                sensors: dict[str, Any] = {}
                for row in store.latest():
                    s = sensors.setdefault(row["sensor_id"], {"readings": {}})
                    s["readings"][row["quantity"]] = {"value": row["value"], "unit": row["unit"],
                                                      "ts": rfc3339(row["ts"]), "age_s": round(now - row["ts"], 1)}
                    s["last_ts"] = max(s.get("last_ts") or "", rfc3339(row["ts"]))
                data["sensors"] = sensors
    except StoreError as exc:
        data["store"] = {"error": str(exc)}
    data["uplink"] = cfg.uplink.masked_url()
    return data


def render(data: dict[str, Any]) -> str:
    lines = []
    state = f"running (pid {data['pid']})" if data.get("running") else "NOT RUNNING"
    lines.append(f"coldgate {data.get('version', '')} gateway {data.get('gateway_id')}: {state}")
    clock = data.get("clock", {})
    lines.append(f"clock: {'synchronised' if clock.get('synced') else 'NOT synchronised'} ({clock.get('source')})")
    st = data.get("store", {})
    if "error" in st and st["error"]:
        lines.append(f"store: ERROR {st['error']}")
    if "head_seq" in st:
        age = st.get("oldest_pending_age_s")
        lines.append(
            f"store: {st['path']} seq {st['head_seq']}, {st['pending']} unsent"
            f" ({st.get('pending_alarms_events', 0)} alarms/events)"
            + (f", oldest unsent {_age(age)} old" if age is not None else "")
            + (f", {st['set_aside']} set aside" if st.get("set_aside") else "")
            + f", {st['disk_bytes'] / 2**20:.1f}/{st['quota_bytes'] / 2**20:.0f} MiB"
            + (" — QUOTA FULL, refusing readings" if st.get("refusing_readings") else ""))
    sync = data.get("sync", {})
    line = f"uplink: {data.get('uplink') or 'none'}: {sync.get('result')}"
    if sync.get("last_error"):
        line += f" — {sync['last_error']}"
    if sync.get("next_retry_at"):
        line += f"; next retry {sync['next_retry_at']}"
    if sync.get("last_success_at"):
        line += f"; last success {sync['last_success_at']}"
    if sync.get("note"):
        line += f" ({sync['note']})"
    lines.append(line)
    for name, d in sorted(data.get("drivers", {}).items()):
        line = f"driver {name} ({d.get('type', '?')}): {d.get('state')}"
        counters = d.get("counters") or {}
        if counters:
            line += " " + " ".join(f"{k}={v}" for k, v in sorted(counters.items()))
        if d.get("last_error"):
            line += f" — last error: {d['last_error']}"
        lines.append(line)
    for sid, s in sorted(data.get("sensors", {}).items()):
        vals = ", ".join(f"{q}={r['value']}{r['unit']}" + (f" rssi {r['rssi']}" if r.get("rssi") is not None else "")
                         for q, r in sorted(s.get("readings", {}).items()))
        age = s.get("age_s")
        miss = " MISSING" if s.get("missing") else ""
        lines.append(f"sensor {sid}:{miss} {vals or 'no reading yet'}" + (f" ({_age(age)} ago)" if age is not None else ""))
    for a in data.get("alarms", []) or []:
        lines.append(f"ALARM {a.get('alarm_id')} {a.get('severity')} {a.get('rule')} {a.get('state')} "
                     f"since {a.get('started_at')}")
    return "\n".join(lines)


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    s = int(seconds)
    if s < 120:
        return f"{s} s"
    if s < 7200:
        return f"{s // 60} min"
    return f"{s // 3600} h {s % 3600 // 60} min"
