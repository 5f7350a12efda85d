"""What ``coldgate status`` reports, whether the agent runs or not, in words a technician reads.

While the agent runs, status is asked of it over the control socket (every part
answers for itself; nothing is written to the SD card on a timer). When nothing answers,
the store is read directly. When the socket accepts but nobody answers (a frozen or
stopped process), status says so and shows what the store holds.

Units are shown as people write them (°C, %RH, %, V), times as dates in UTC, never as
epoch seconds; ``--json`` gives every time as RFC 3339.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from agent.config import Config
from agent.control import ControlClient
from agent.exc import AgentNotAnswering, AgentNotRunning, ControlRefused, StoreError
from agent.store import Store
from agent.timebase import Clock, rfc3339

#: SenML unit → how a technician writes it
UNITS = {"Cel": "°C", "%RH": "%RH", "%EL": "%", "V": "V", "m/s2": "m/s²", "lat": "°", "lon": "°", "deg": "°",
         "count": "", "lx": "lx", "Pa": "Pa", "m": "m", "m/s": "m/s", "dBm": "dBm", "%": "%"}

#: quantities whose value is a count shown without a unit, with a word instead
COUNT_WORDS = {"satellites": "satellites", "gnss_fix": "fix", "movement_count": "movements", "motion": "motion"}


def collect(cfg: Config, *, timeout: float = 5.0) -> dict[str, Any]:
    """The status dict: from the running agent, else from the store."""
    client = ControlClient(cfg.control.socket, timeout=timeout)
    note = None
    try:
        data = client.request("status")
        if data.get("store", {}).get("path") not in (None, str(cfg.store.path)):
            note = f"the agent answering on {cfg.control.socket} runs another store ({data['store']['path']})"
            raise AgentNotRunning(note)
        data["control"] = str(cfg.control.socket)
        return dict(data)
    except AgentNotRunning as exc:
        data = offline(cfg)
        data["note"] = note or str(exc)
    except AgentNotAnswering as exc:
        data = offline(cfg)
        data["running"] = True
        data["answering"] = False
        data["note"] = str(exc)
    except ControlRefused as exc:
        data = offline(cfg)
        data["note"] = f"the agent refused the status request: {exc}"
    return data


def offline(cfg: Config) -> dict[str, Any]:
    """What the store and the config tell without the agent."""
    data: dict[str, Any] = {
        "running": False, "answering": False, "gateway_id": cfg.gateway_id, "generated_at": rfc3339(time.time()),
        "drivers": {d.name: {"type": d.type, "state": "not running" if d.enabled else "disabled"}
                    for d in cfg.drivers},
        "uplink_url": cfg.uplink.endpoint(), "control": str(cfg.control.socket),
        "quota_bytes": int(cfg.store.quota_mb * (1 << 20)),
    }
    clock = Clock(cfg.time.sync_source)
    data["clock"] = {"synced": clock.synced(), "source": cfg.time.sync_source}
    try:
        with Store.open(cfg.store.path, gateway_id=cfg.gateway_id, create=False, check=False) as store:
            data["store"] = {**store.stats(), "quota_bytes": data["quota_bytes"]}
            now = time.time()
            sensors: dict[str, Any] = {}
            for row in store.latest():
                s = sensors.setdefault(row["sensor_id"], {"readings": {}})
                s["readings"][row["quantity"]] = {"value": row["value"], "unit": row["unit"],
                                                  "ts": rfc3339(row["ts"]), "age_s": round(now - row["ts"], 1)}
                s["last_ts"] = max(s.get("last_ts") or "", rfc3339(row["ts"]))
                s["age_s"] = min(s.get("age_s", 1e18), round(now - row["ts"], 1))
            data["sensors"] = sensors
            state = store.load_state("rules") or {}
            data["alarms"] = _active_from_state(state)
            data["shipments"] = _shipments_from_state(store.load_state("shipments"))
    except StoreError as exc:
        data["store"] = {"error": str(exc)}
    return data


def _active_from_state(state: dict[str, Any]) -> list[dict[str, Any]]:
    alarms = state.get("book", {}).get("alarms", {})
    return [a for a in alarms.values() if isinstance(a, dict)]


def _shipments_from_state(state: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The active shipments as last committed (the book's own view of its saved state)."""
    from agent.shipment.book import ShipmentBook

    if not state:
        return []
    try:
        book = ShipmentBook(state=state)
    except (ValueError, KeyError, TypeError):  # a state this version cannot read: the agent says so at start
        return []
    return book.status(float(state.get("elapsed", 0.0)))


# -- text ---------------------------------------------------------------------------


def unit(u: str | None) -> str:
    return UNITS.get(u or "", u or "")


def value_text(quantity: str, value: Any, u: str | None) -> str:
    if quantity in COUNT_WORDS and u == "count":
        return f"{_num(value)} {COUNT_WORDS[quantity]}"
    shown = unit(u)
    if not shown:
        return _num(value)
    sep = "" if shown in ("%", "°") else " "  # 5.2 °C, 45 %RH, 3.1 V; but 80%, 50.11°
    return f"{_num(value)}{sep}{shown}"


def _num(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def when(ts: Any) -> str:
    """A time as a date a person reads: ``2026-12-01 20:15:02 UTC``."""
    if ts is None:
        return "never"
    if isinstance(ts, (int, float)):
        return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    text = str(ts)
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).strftime("%Y-%m-%d %H:%M:%S UTC")
    except ValueError:
        return text


def age(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    if seconds < 0:  # a device's own clock ahead of ours
        return f"{age(-seconds)} in the future (the device's clock is ahead)"
    s = int(seconds)
    if s < 120:
        return f"{s} s"
    if s < 7200:
        return f"{s // 60} min"
    if s < 172800:
        return f"{s // 3600} h {s % 3600 // 60} min"
    return f"{s // 86400} d {s % 86400 // 3600} h"


def render(data: dict[str, Any]) -> str:
    lines = []
    if data.get("running") and data.get("answering", True):
        state = f"running (pid {data.get('pid')}), up since {when(data.get('started_at'))}"
        if data.get("ready") is False:
            state = f"starting (pid {data.get('pid')}, since {when(data.get('started_at'))}): opening the store and drivers"
    elif data.get("running"):
        state = "NOT ANSWERING — the process accepts connections but does not answer (frozen, stopped or overloaded)"
    else:
        state = "NOT RUNNING"
    version = data.get("version")
    lines.append(f"coldgate{' ' + version if version else ''} gateway {data.get('gateway_id')}: {state}")
    if data.get("note") and not data.get("answering", True):
        lines.append(f"  ({data['note']})")
    if data.get("stuck"):
        lines.append(f"STUCK: {data['stuck']} (the systemd watchdog is not fed; the service will be restarted)")
    if data.get("stale"):
        lines.append(f"STALE: {', '.join(data['stale'])} did not answer in time; figures for it may be old")
    clock = data.get("clock", {})
    lines.append(f"clock: {'synchronised' if clock.get('synced') else 'NOT synchronised'} ({clock.get('source')})")
    lines += _fleet_lines(data)
    lines += _store_lines(data)
    lines += _uplink_lines(data)
    for name, d in sorted(data.get("drivers", {}).items()):
        lines.append(_driver_line(name, d))
        lines += _adapter_lines(d)
    for sid, s in sorted(data.get("sensors", {}).items()):
        vals = ", ".join(f"{q} {value_text(q, r.get('value'), r.get('unit'))}"
                         + (f" (rssi {r['rssi']} dBm)" if r.get("rssi") is not None else "")
                         for q, r in sorted(s.get("readings", {}).items()))
        miss = " MISSING," if s.get("missing") else ""
        a = s.get("age_s")
        ago = "" if a is None else (f" — {age(a)} ago" if a >= 0 else f" — {age(a)}")
        lines.append(f"sensor {sid}:{miss} {vals or 'no reading yet'}{ago}")
    lines += _shipment_lines(data)
    for a in data.get("alarms", []) or []:
        lines.append(f"ALARM {a.get('alarm_id')}: {a.get('severity')} {a.get('rule')} on {a.get('sensor_id')}, "
                     f"{a.get('state')}, since {when(a.get('started_at'))}")
    return "\n".join(lines)


def span(seconds: float | None) -> str:
    """A length of time as :func:`age` writes it, without a trailing zero (``4 h``, not ``4 h 0 min``)."""
    return age(seconds).removesuffix(" 0 min").removesuffix(" 0 h")


def _shipment_lines(data: dict[str, Any]) -> list[str]:
    """One line per active shipment: state, leg, sensors, and the stability budget left, live."""
    lines = []
    for s in data.get("shipments") or []:
        leg = s.get("leg") or {}
        line = (f"shipment {s.get('shipment')}: {s.get('state')}, leg {leg.get('name', '-')}"
                + (f" ({leg['mode']})" if leg.get("mode") else "")
                + f", sensors {', '.join(s.get('sensors') or []) or '-'}")
        if s.get("ignore_remaining_s"):
            line += f", settling (judged in {span(s['ignore_remaining_s'])})"
        b = s.get("stability")
        if b:
            line += f", budget {span(b.get('remaining_s'))} of {span(b.get('budget_s'))} left"
            if b.get("exhausted") or b.get("remaining_s") == 0:
                line += " — EXHAUSTED"
            elif b.get("out_of_range_now"):
                line += ", being spent (out of range now)"
        if s.get("alarms"):
            line += f"; unacknowledged alarms: {', '.join(s['alarms'])}"
        lines.append(line)
    return lines


def _fleet_lines(data: dict[str, Any]) -> list[str]:
    """The config that runs (version, hash, signer), a trial in progress, the last rollback."""
    fleet = data.get("fleet")
    if not fleet:
        return []
    run = fleet.get("running") or {}
    sha = run.get("sha256")
    signer = f"signed by key {run['signer']}" if run.get("signer") else "UNSIGNED"
    lines = [f"config: version {run.get('version')}, sha256 {sha[:16] + '…' if sha else '?'}, {signer}"
             + (f" ({run['source']})" if run.get("source") else "")]
    trial = fleet.get("trial")
    if trial:
        waiting = "; ".join(trial.get("waiting_for") or []) or "the first look"
        lines.append(f"  ON TRIAL: health check for {trial.get('remaining_s')} s more; waiting for: {waiting}")
    rb = fleet.get("last_rollback")
    if rb:
        lines.append(f"  ROLLED BACK at {when(rb.get('at'))} from version {(rb.get('from') or {}).get('version')}: "
                     + "; ".join(rb.get("failures") or []))
    ident = data.get("identity") or {}
    if ident.get("key_id"):
        lines.append(f"identity: key {ident['key_id']} signs the chain checkpoints")
    elif ident.get("error"):
        lines.append(f"identity: NONE, no signed checkpoints: {ident['error']}")
    return lines


def _store_lines(data: dict[str, Any]) -> list[str]:
    st = data.get("store", {}) or {}
    w = data.get("writer", {}) or {}
    lines = []
    if st.get("error"):
        lines.append(f"store: ERROR {st['error']}")
    if "head_seq" in st:
        quota = st.get("quota_bytes") or data.get("quota_bytes") or 0
        oldest = st.get("oldest_pending_age_s")
        lines.append(
            f"store: {st['path']}: seq {st['head_seq']}, {st['pending']} unsent"
            f" ({st.get('pending_alarms_events', 0)} alarms/events)"
            + (f", oldest unsent {age(oldest)} old (since {when(st.get('oldest_pending_ts'))})"
               if oldest is not None else "")
            + (f", {st['set_aside']} set aside" if st.get("set_aside") else "")
            + f", {st['disk_bytes'] / 2**20:.1f} of {quota / 2**20:.0f} MiB"
            + (" — QUOTA FULL, refusing readings" if st.get("refusing_readings") else ""))
    if w:
        if w.get("error"):
            since = f" since {when(w['error_since'])}" if w.get("error_since") else ""
            lines.append(f"store writes FAILING{since}: {w['error']}")
        held = w.get("held", 0) + w.get("pending", 0)
        lines.append(f"in memory: {held} record(s) not yet committed"
                     + (f" ({w['held']} held while the store fails)" if w.get("held") else "")
                     + f", intake {w.get('intake', 0)} of {w.get('intake_capacity', '?')} readings"
                     + (f"; {w['lost_unsaid']} reading(s) dropped, to be recorded as data_loss"
                        if w.get("lost_unsaid") else "")
                     + (f"; records of a previous run waiting in {w['spill']}" if w.get("spill") else ""))
    return lines


def _uplink_lines(data: dict[str, Any]) -> list[str]:
    sync = data.get("sync")
    url = data.get("uplink_url") or "none"
    if not sync:
        return [f"uplink: {url}"]
    line = f"uplink: {url}: {sync.get('result')}"
    link = sync.get("link") or {}
    if link.get("transport") == "mqtt" and not link.get("connected") and sync.get("result") != "auth_refused":
        down = f" for {age(link['down_for_s'])}" if link.get("down_for_s") is not None else ""
        line += f" — broker unreachable{down}: {link.get('error') or sync.get('last_error') or 'not connected'}"
    elif link.get("waiting_for_answer"):
        limit = link.get("answer_timeout_s")
        of = f" of {limit:g} s" if isinstance(limit, int | float) else ""
        line += f" — waiting for the consumer's answer to batch {link['waiting_for_answer']} ({age(link.get('waiting_s'))}{of})"
        if sync.get("last_error"):
            line += f"; last failure: {sync['last_error']}"
    elif sync.get("last_error"):
        line += f" — {sync['last_error']}"
    if sync.get("next_retry_at"):
        line += f"; next retry {when(sync['next_retry_at'])}"
    if sync.get("last_success_at"):
        line += f"; last success {when(sync['last_success_at'])}"
    return [line]


def _driver_line(name: str, d: dict[str, Any]) -> str:
    line = f"driver {name} ({d.get('type', '?')}): {d.get('state')}"
    counters = d.get("counters") or {}
    if counters:
        line += " " + " ".join(f"{k}={v}" for k, v in sorted(counters.items()))
    if d.get("failing_since"):
        line += f" — FAILING since {when(d['failing_since'])}, {d.get('retries', 0)} retries: {d.get('last_error')}"
    elif d.get("last_error"):
        at = f" at {when(d['last_error_at'])}" if d.get("last_error_at") else ""
        resolved = f", resolved {when(d['recovered_at'])}" if d.get("recovered_at") else ""
        line += f" — last error{at}{resolved}: {d['last_error']}"
    return line


def _adapter_lines(d: dict[str, Any]) -> list[str]:
    """A BLE driver's adapters: scanning or not, and how often they had to be reset."""
    adapters = (d.get("details") or {}).get("adapters")
    if not isinstance(adapters, dict):
        return []
    lines = []
    for name, a in sorted(adapters.items()):
        if not isinstance(a, dict):
            continue
        state = a.get("state")
        line = f"  adapter {name}: {state}" + (f" ({a['scanning_mode']})" if state == "scanning" and a.get(
            "scanning_mode") else "")
        resets = a.get("resets") or 0
        line += f", {resets} reset{'' if resets == 1 else 's'}"
        last = a.get("last_reset")
        if isinstance(last, dict):
            outcome = "ok" if last.get("ok") else f"FAILED: {last.get('error')}"
            line += f" (last {last.get('step')} at {when(last.get('at'))}, {outcome})"
        if a.get("last_error") and a.get("state") != "scanning":
            line += f" — {a['last_error']}"
        lines.append(line)
    return lines


__all__ = ["collect", "offline", "render", "value_text", "when"]
