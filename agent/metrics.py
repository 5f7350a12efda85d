"""Prometheus metrics, built at scrape time from what the parts already report.

Off unless ``[metrics] listen`` (a loopback ``HOST:PORT`` serving ``/metrics``) or
``[metrics] textfile`` (a ``*.prom`` file for node_exporter's textfile collector) is set;
needs the extra ``coldgate[metrics]`` (``prometheus_client``, pure Python).

Nothing is counted on the readings' hot path for metrics except one dict increment per
reading (readings per driver and sensor, in :class:`agent.ingest.Ingest`). Everything
else is asked of the parts when a scrape comes: one custom collector
(:class:`AgentCollector`) calls the supervisor's snapshot — ``status`` (drivers, writer,
store, uplink, clock, alarms, fleet config), the ingest's counts and the store's
committed-event counts — on the event loop, and turns it into metric families. A scrape
costs one ``status`` (a few SQL counts on the store); an agent that does not answer
gives ``coldgate_up 0`` rather than an error page.

The textfile is rewritten every ``textfile_interval_s`` (default 60 s) to a temporary
name and renamed into place (``prometheus_client.write_to_textfile``), without fsync:
a metrics file lost at a power cut costs nothing, and a sync per write would cost the
SD card a flash write each time. About 3 KiB plus 200 bytes per sensor a write (22 KiB
with 100 sensors: 31 MiB a day at the default interval): put it on a tmpfs (``/run/...``)
where node_exporter allows, or raise the interval. It is removed at
a clean stop, so ``absent(coldgate_up)`` fires; a crash leaves it stale, which
``node_textfile_mtime_seconds`` shows.
"""

from __future__ import annotations

import contextlib
import logging
import platform
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from agent import __version__
from agent.config import MetricsConfig
from agent.exc import ColdgateError

log = logging.getLogger("coldgate.metrics")

Snapshot = Callable[[], Mapping[str, Any]]

UPLINK_STATES = ("never", "ok", "idle", "transient", "auth_refused", "rejected", "config_error", "offline")
ANSWERS = ("ok", "rejected", "too_large", "auth_refused", "transient")
SEVERITIES = ("warning", "alarm")


def _import() -> Any:
    try:
        import prometheus_client
    except ImportError:
        raise ColdgateError("metrics need prometheus_client: pip install 'coldgate[metrics]'") from None
    return prometheus_client


class AgentCollector:
    """One collector over the agent's snapshot (see the module docstring)."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot

    def describe(self) -> list[Any]:
        return []  # built at scrape time: nothing is collected at registration

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily

        yield InfoMetricFamily("coldgate_build", "coldgate's version and Python's",
                               value={"version": __version__, "python": platform.python_version()})
        try:
            d = self.snapshot()
        except Exception as exc:  # noqa: BLE001 - a scrape never fails: it says the agent did not answer
            log.warning("metrics: the agent did not answer the scrape: %s", exc)
            yield GaugeMetricFamily("coldgate_up", "1 when the agent answered this scrape", value=0)
            return
        yield GaugeMetricFamily("coldgate_up", "1 when the agent answered this scrape", value=1)
        yield from _readings(d)
        yield from _store(d)
        yield from _uplink(d)
        yield from _state(d)
        yield from _config(d)
        counters = d.get("store_counters") or {}

        loss_events = CounterMetricFamily("coldgate_data_loss_events", "data_loss events committed since start, by reason",
                                          labels=["reason"])
        lost = CounterMetricFamily("coldgate_data_lost_readings", "readings recorded as lost since start, by reason",
                                   labels=["reason"])
        events = CounterMetricFamily("coldgate_events", "event records committed since start, by event",
                                     labels=["event"])
        for (kind, key), n in sorted(counters.items()):
            if kind == "loss_events":
                loss_events.add_metric([key], n)
            elif kind == "lost":
                lost.add_metric([key], n)
            elif kind == "events":
                events.add_metric([key], n)
        yield loss_events
        yield lost
        yield events


def _readings(d: Mapping[str, Any]) -> Iterator[Any]:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    readings = CounterMetricFamily("coldgate_readings", "readings received since start, per driver and sensor",
                                   labels=["driver", "sensor"])
    for driver, sensors in sorted((d.get("received") or {}).items(), key=lambda kv: str(kv[0])):
        for sensor, n in sorted(sensors.items()):
            readings.add_metric([str(driver or ""), str(sensor)], n)
    yield readings
    up = GaugeMetricFamily("coldgate_driver_up", "1 while the driver runs (0: starting, backoff, unavailable)",
                           labels=["driver", "type"])
    errors = CounterMetricFamily("coldgate_driver_errors", "driver failures since it started", labels=["driver"])
    for name, st in sorted((d.get("drivers") or {}).items()):
        if st.get("state") == "disabled":
            continue
        up.add_metric([name, str(st.get("type"))], 1 if st.get("state") == "running" else 0)
        errors.add_metric([name], (st.get("counters") or {}).get("errors", 0))
    yield up
    yield errors
    missing = GaugeMetricFamily("coldgate_sensor_missing", "1 when a configured sensor has not been heard for "
                                "longer than its missing_after_s", labels=["sensor"])
    age = GaugeMetricFamily("coldgate_sensor_last_reading_age_seconds", "age of the sensor's newest sample",
                            labels=["sensor"])
    for sid, s in sorted((d.get("sensors") or {}).items()):
        missing.add_metric([sid], 1 if s.get("missing") else 0)
        if s.get("age_s") is not None:
            age.add_metric([sid], s["age_s"])
    yield missing
    yield age


def _store(d: Mapping[str, Any]) -> Iterator[Any]:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    w = d.get("writer") or {}
    st = d.get("store") or {}
    if "committed" in w:
        yield CounterMetricFamily("coldgate_records_committed", "records committed to the store since start",
                                  value=w["committed"])
        yield GaugeMetricFamily("coldgate_records_in_memory", "records taken but not yet committed (held while "
                                "the store fails, or pending the group commit)",
                                value=w.get("held", 0) + w.get("pending", 0))
        yield CounterMetricFamily("coldgate_intake_waits", "times a driver waited for room in the intake",
                                  value=w.get("intake_waits", 0))
    yield GaugeMetricFamily("coldgate_store_writable", "1 when the last commit succeeded",
                            value=0 if w.get("error") or st.get("error") else 1)
    if "head_seq" not in st:
        return
    yield GaugeMetricFamily("coldgate_store_head_seq", "seq of the newest record", value=st["head_seq"])
    yield GaugeMetricFamily("coldgate_store_unsent_records", "records not yet acknowledged by the central side",
                            value=st["pending"])
    yield GaugeMetricFamily("coldgate_store_set_aside_records", "records the server refused, kept locally",
                            value=st.get("set_aside", 0))
    yield GaugeMetricFamily("coldgate_store_oldest_unsent_age_seconds", "age of the oldest unsent record (0: none)",
                            value=st.get("oldest_pending_age_s") or 0)
    yield GaugeMetricFamily("coldgate_store_disk_bytes", "disk the store uses (database and WAL)",
                            value=st.get("disk_bytes", 0))
    yield GaugeMetricFamily("coldgate_store_quota_bytes", "the store's quota",
                            value=st.get("quota_bytes") or d.get("quota_bytes") or 0)
    yield GaugeMetricFamily("coldgate_store_refusing_readings", "1 while the quota is full of unsent records",
                            value=1 if st.get("refusing_readings") else 0)


def _uplink(d: Mapping[str, Any]) -> Iterator[Any]:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    sync = d.get("sync") or {}
    answers = CounterMetricFamily("coldgate_uplink_batches", "batches sent since start, by the answer",
                                  labels=["answer"])
    got = sync.get("answers") or {}
    for a in ANSWERS:
        answers.add_metric([a], got.get(a, 0))
    yield answers
    yield CounterMetricFamily("coldgate_uplink_acked_records", "records acknowledged since start",
                              value=sync.get("acked_total", 0))
    state = GaugeMetricFamily("coldgate_uplink_state", "1 for the uplink's current state", labels=["state"])
    for s in UPLINK_STATES:
        state.add_metric([s], 1 if sync.get("result") == s else 0)
    yield state
    yield GaugeMetricFamily("coldgate_uplink_consecutive_failures", "failed passes in a row (the backoff step)",
                            value=sync.get("failures", 0))
    yield GaugeMetricFamily("coldgate_uplink_backoff_seconds", "seconds until the next retry (0: not backing off)",
                            value=sync.get("next_retry_in_s") or 0)


def _state(d: Mapping[str, Any]) -> Iterator[Any]:
    from prometheus_client.core import GaugeMetricFamily

    alarms = GaugeMetricFamily("coldgate_alarms_active", "active alarms, by severity", labels=["severity"])
    counts: dict[str, int] = dict.fromkeys(SEVERITIES, 0)
    for a in d.get("alarms") or []:
        sev = str(a.get("severity") or "unknown")
        counts[sev] = counts.get(sev, 0) + 1
    for sev, n in counts.items():
        alarms.add_metric([sev], n)
    yield alarms
    clock = d.get("clock") or {}
    yield GaugeMetricFamily("coldgate_clock_synced", "1 when the system clock is synchronised",
                            value=1 if clock.get("synced") else 0)
    yield GaugeMetricFamily("coldgate_stuck", "1 when a part makes no progress (the watchdog is not fed)",
                            value=1 if d.get("stuck") else 0)


def _config(d: Mapping[str, Any]) -> Iterator[Any]:
    from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily

    fleet = d.get("fleet") or {}
    running = fleet.get("running") or {}
    yield InfoMetricFamily("coldgate_config", "the config that runs: version, SHA-256, signer key id",
                           value={"version": str(running.get("version")), "sha256": str(running.get("sha256") or ""),
                                  "signer": str(running.get("signer") or "")})
    version = str(running.get("version", "0")).split(".")[0]
    yield GaugeMetricFamily("coldgate_config_version", "the running config_version (its first number)",
                            value=int(version) if version.isdigit() else 0)
    yield GaugeMetricFamily("coldgate_config_signed", "1 when the running config is signed by a trusted key",
                            value=1 if running.get("signer") else 0)
    yield GaugeMetricFamily("coldgate_config_on_trial", "1 while a new config's health check runs",
                            value=1 if fleet.get("trial") else 0)


class Metrics:
    """The HTTP endpoint and the textfile writer over one registry."""

    def __init__(self, config: MetricsConfig, snapshot: Snapshot) -> None:
        pc = _import()
        self.config = config
        self.registry = pc.CollectorRegistry(auto_describe=False)
        self.registry.register(AgentCollector(snapshot))
        self.registry.register(pc.ProcessCollector(registry=None))
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.address: tuple[str, int] | None = None

    def scrape(self) -> bytes:
        """The exposition text, as ``/metrics`` serves it."""
        out: bytes = _import().generate_latest(self.registry)
        return out

    def start(self) -> None:
        pc = _import()
        cfg = self.config
        if cfg.listen is not None:
            host, _, port = cfg.listen.rpartition(":")
            try:
                self._server, _ = pc.start_http_server(int(port), addr=host.strip("[]"), registry=self.registry)
            except OSError as exc:
                raise ColdgateError(f"cannot serve metrics on {cfg.listen}: {exc.strerror or exc}") from None
            self.address = self._server.server_address[:2]
            log.info("metrics on http://%s/metrics", cfg.listen)
        if cfg.textfile is not None:
            self._thread = threading.Thread(target=self._textfile_loop, name="coldgate-metrics-textfile", daemon=True)
            self._thread.start()

    def write_textfile(self) -> None:
        assert self.config.textfile is not None
        _import().write_to_textfile(str(self.config.textfile), self.registry)

    def _textfile_loop(self) -> None:
        complained = False
        while True:
            try:
                self.write_textfile()
                complained = False
            except OSError as exc:
                if not complained:
                    log.error("metrics textfile %s cannot be written: %s", self.config.textfile, exc)
                complained = True
            if self._stop.wait(self.config.textfile_interval_s):
                return

    def stop(self) -> None:
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5.0)
            self._thread = None
            if self.config.textfile is not None:
                with contextlib.suppress(OSError):
                    Path(self.config.textfile).unlink()


__all__ = ["AgentCollector", "Metrics"]
