"""``coldgate run``: the agent's event loop, and what holds it together.

One asyncio loop; blocking work is kept off it. The store's writes run on one dedicated
thread (SQLite connections stay on their thread), each sync pass on a daemon thread of
its own with its own connection (so a hung request never holds up a reading or a
shutdown). The tasks:

drivers
    each configured driver's :meth:`drivers.base.Driver.run`, delivering to
    :class:`agent.ingest.Ingest` (stamp, calibrate, judge, decimate);
writer
    group commit: every ``store.commit_interval_s`` (≤ 1 s) the buffered items and the
    rule engine's state go into the store in one transaction;
sync
    drains the store to the uplink when there is something to send and the backoff
    allows; an alarm or ``SIGUSR1`` (``coldgate sync --now``) sends at once;
housekeeping
    once a second: time-driven rules, commands from the CLI (alarm acknowledgements),
    clock supervision, the status file, pruning of acknowledged records.

Signals: ``SIGTERM``/``SIGINT`` commit what is held and exit 0; ``SIGHUP`` re-reads the
config, applies it only if it is valid (``config_applied``), else keeps the running one
and records ``config_rejected`` with every reason; ``SIGUSR1`` syncs now.

Time correction (append-only): records taken while the clock was unsynchronised keep
their stamp and ``time_quality: unsynced``. When the clock becomes synchronised, a
``clock_step`` event is appended that gives, per run of such records of this boot
(``first_seq``..``last_seq``), the ``offset_s`` to add: computed from the monotonic
clock (``CLOCK_BOOTTIME``), as ``(wall - boottime)`` now minus ``(wall - boottime)`` when
they were stamped. Readings not yet committed are stamped right and marked
``corrected``. Nothing already chained is rewritten.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from agent import __version__
from agent import config as configmod
from agent.config import Config
from agent.exc import ColdgateError, ConfigError, StoreError
from agent.ingest import Ingest
from agent.store import Store, loss_details, tally_loss
from agent.sync import Syncer
from agent.timebase import Clock, rfc3339
from drivers import registry
from drivers.base import Driver, Reading, wait_event

log = logging.getLogger("coldgate")

T = TypeVar("T")

#: Items kept in memory while the store cannot take them (disk full); beyond, the
#: oldest readings are dropped and counted in a data_loss event.
MAX_BUFFER = 200_000
STATUS_EVERY_S = 2.0
STORE_STATS_EVERY_S = 10.0
CLOCK_CHECK_EVERY_S = 2.0
CLOCK_STEP_THRESHOLD_S = 2.0
#: The rule state is committed at least this often while every sensor is in range.
STATE_EVERY_S = 10.0
#: How long a stopping agent may spend sending what is pending.
FINAL_SYNC_S = 3.0


def status_path(store_path: Path) -> Path:
    return store_path.with_name(store_path.name + ".status.json")


def pid_path(store_path: Path) -> Path:
    return store_path.with_name(store_path.name + ".pid")


def running_pid(store_path: Path) -> int | None:
    """The pid of the daemon that holds this store, or None when none runs."""
    p = pid_path(store_path)
    try:
        fd = os.open(p, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                return int(Path(p).read_text().strip() or 0) or None
            except (OSError, ValueError):
                return None
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def config_digest(path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


class _DriverSink:
    """The sink one driver delivers to: tags readings and events with the driver's name."""

    def __init__(self, agent: Agent, name: str) -> None:
        self.agent, self.name = agent, name

    def reading(self, reading: Reading) -> None:
        self.agent.ingest.reading(reading, driver=self.name)

    def reading_batch(self, batch: list[Reading]) -> None:
        self.agent.ingest.readings(batch, driver=self.name)

    def driver_event(self, driver: str, event: str, details: Mapping[str, Any]) -> None:
        self.agent.ingest.event(event, {"driver": driver, **details})


class Agent:
    """The running agent. ``await Agent(config).run()`` until stopped."""

    def __init__(self, config: Config, *, config_path: Path | None = None, clock: Clock | None = None) -> None:
        self.config = config
        self.config_path = config_path
        self.clock = clock or Clock(config.time.sync_source)
        self.store: Store | None = None
        self.drivers: dict[str, Driver] = {}
        self.driver_errors: dict[str, str] = {}
        self._driver_tasks: dict[str, asyncio.Task[None]] = {}
        self._stop = asyncio.Event()
        self._flush_now = asyncio.Event()
        self._flush_lock = asyncio.Lock()
        self._reload_lock = asyncio.Lock()
        self._sync_now = asyncio.Event()
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="coldgate-store")
        self._pending_retry: list[dict[str, Any]] = []
        self._lost: dict[str, Any] = {}
        self._store_error: str | None = None
        self._store_stats: dict[str, Any] = {}
        self._lock_fd: int | None = None
        self.engine: Any = None
        self.syncer: Syncer | None = None
        self.started_at = time.time()
        self._actions: set[asyncio.Task[Any]] = set()
        self._corrected_upto = 0  # unsynced records up to this seq have had their clock_step
        self._state_saved_at = 0.0
        self._rel = 0.0  # wall - boottime at the last clock check
        self._stats_at = -STORE_STATS_EVERY_S
        self._out_of_range: frozenset[str] = frozenset()
        self.ingest = Ingest(config, self.clock)

    # -- lifecycle ---------------------------------------------------------------------
    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        cfg = self.config
        # first of all, so that a SIGTERM during start-up still commits and exits cleanly
        for sig, handler in ((signal.SIGTERM, self.stop), (signal.SIGINT, self.stop),
                             (signal.SIGHUP, self.request_reload), (signal.SIGUSR1, self.request_sync)):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, handler)
        self._take_lock(cfg.store.path)
        try:
            self.store = await self._in_writer(lambda: Store.open(
                cfg.store.path, gateway_id=cfg.gateway_id, quota_bytes=int(cfg.store.quota_mb * (1 << 20)),
                reserve_pct=cfg.store.reserve_pct, keep_acked=cfg.store.keep_acked, clock=self.clock))
            if self.store.gateway_id != cfg.gateway_id:
                log.warning("store %s belongs to gateway %r, config says %r; keeping the store's id",
                            cfg.store.path, self.store.gateway_id, cfg.gateway_id)
            await self._start_engine(cfg)
            self.ingest.event("agent_started", {"version": __version__, "pid": os.getpid(),
                                                "config": str(self.config_path) if self.config_path else None})
            self.ingest.event("config_applied", {"source": str(self.config_path) if self.config_path else None,
                                                 "sha256": config_digest(self.config_path), "at": "start"})
            self._start_drivers(cfg)
            tasks = [asyncio.create_task(c, name=n) for n, c in (
                ("writer", self._writer_loop()), ("sync", self._sync_loop()),
                ("housekeeping", self._housekeeping_loop()))]
            log.info("coldgate %s running: gateway %s, store %s, %d driver(s), uplink %s", __version__,
                     cfg.gateway_id, cfg.store.path, len(self.drivers), cfg.uplink.masked_url() or "none")
            await self._stop.wait()
            log.info("stopping: committing what is held")
            await self._stop_drivers()
            writer, sync_task, housekeeping = tasks
            housekeeping.cancel()
            self._flush_now.set()  # the writer sees the stop, commits and returns
            await asyncio.gather(writer, housekeeping, return_exceptions=True)
            self._state_saved_at = -STATE_EVERY_S  # the last commit carries the state
            self.ingest.report_invalid()
            self.ingest.event("agent_stopped", {"reason": "signal"})
            await self.flush()
            await self._final_sync()
            sync_task.cancel()
            await asyncio.gather(sync_task, return_exceptions=True)
            self._stats_at = -STORE_STATS_EVERY_S
            await self._write_status()
            return 0
        finally:
            if self.store is not None:
                await self._in_writer(self.store.close)
            self._writer.shutdown(wait=True)
            self._release_lock(cfg.store.path)

    def stop(self) -> None:
        self._stop.set()

    def request_sync(self) -> None:
        if self.syncer is not None:
            self.syncer.retry_now()
        self._sync_now.set()

    def request_reload(self) -> None:
        task = asyncio.get_running_loop().create_task(self.reload())
        self._actions.add(task)  # held until done: a task nobody references may be collected
        task.add_done_callback(self._actions.discard)

    def _take_lock(self, store_path: Path) -> None:
        store_path.parent.mkdir(parents=True, exist_ok=True)
        p = pid_path(store_path)
        fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StoreError(f"another coldgate (pid {running_pid(store_path)}) already runs on {store_path}") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._lock_fd = fd

    def _release_lock(self, store_path: Path) -> None:
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                pid_path(store_path).unlink()
            os.close(self._lock_fd)
            self._lock_fd = None

    async def _in_writer(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._writer, fn)

    # -- rules -------------------------------------------------------------------------
    async def _start_engine(self, cfg: Config) -> None:
        from agent.rules.engine import RuleEngine, Sample

        assert self.store is not None
        state = await self._in_writer(lambda: self.store.load_state("rules") if self.store else None)
        assignments = {s.id: s.profile for s in cfg.sensors if s.profile}
        self.engine = RuleEngine(cfg.rules, assignments, state=state)
        self.ingest.judge = self.engine
        self.ingest.judged = frozenset(self.engine.sensors())
        self.ingest.sample_factory = Sample
        self.ingest.on_alarm = self._on_alarm

    def _on_alarm(self, alarm: dict[str, Any]) -> None:
        self._flush_now.set()
        self._sync_now.set()
        if self.engine is not None and self.engine.wants_action(alarm):
            from agent.rules.actions import run_action

            action = self.config.rules.action
            command = action.command
            assert command is not None  # wants_action() checked it
            record = {k: (rfc3339(v) if k in ("ts", "started_at") and isinstance(v, (int, float)) else v)
                      for k, v in alarm.items() if k not in ("mono_ns", "boot_id")}
            record["gateway_id"] = self.config.gateway_id
            task = asyncio.get_running_loop().create_task(run_action(command, record, action.timeout_s))
            self._actions.add(task)
            task.add_done_callback(self._actions.discard)

    # -- drivers -----------------------------------------------------------------------
    def _start_drivers(self, cfg: Config) -> None:
        for dc in cfg.drivers:
            if not dc.enabled:
                continue
            try:
                cls = registry.get(dc.type)
                driver = cls(dc.name, cls.Options.model_validate(dc.options))
            except (ColdgateError, KeyError, ValueError) as exc:
                msg = str(exc.args[0]) if isinstance(exc, KeyError) else str(exc)
                self.driver_errors[dc.name] = msg
                log.error("driver %s (%s) cannot start: %s", dc.name, dc.type, msg)
                self.ingest.event("driver_error", {"driver": dc.name, "type": dc.type, "error": "DriverUnavailable",
                                                   "message": msg, "phase": "load"})
                continue
            self.drivers[dc.name] = driver
            self._driver_tasks[dc.name] = asyncio.create_task(driver.run(_DriverSink(self, dc.name)),
                                                              name=f"driver:{dc.name}")

    async def _stop_drivers(self) -> None:
        for d in self.drivers.values():
            d.stop()
        tasks = list(self._driver_tasks.values())
        if tasks:
            _, still = await asyncio.wait(tasks, timeout=5.0)
            for t in still:  # a driver stuck in a read: cancel it, its readings so far are kept
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        self.drivers.clear()
        self._driver_tasks.clear()
        self.driver_errors.clear()

    # -- config reload -----------------------------------------------------------------
    async def reload(self) -> bool:
        """Re-read the config file; apply it only when valid. Returns whether it was applied.

        Reloads run one at a time: a burst of SIGHUPs applies the newest file, in order.
        """
        async with self._reload_lock:
            return await self._reload()

    async def _reload(self) -> bool:
        path = self.config_path
        if path is None:
            return False
        try:
            new = await asyncio.to_thread(configmod.load, path)
        except ConfigError as exc:
            log.error("config %s rejected, keeping the running one:\n%s", path, exc.report())
            self.ingest.event("config_rejected", {"source": str(path), "sha256": config_digest(path),
                                                  "problems": [str(p) for p in exc.problems]})
            return False
        fixed = [k for k in ("gateway_id",) if getattr(new, k) != getattr(self.config, k)]
        if new.store.path != self.config.store.path:
            fixed.append("store.path")
        if fixed:
            problems = [f"{k}: cannot change while running; restart the service to apply" for k in fixed]
            log.error("config %s rejected: %s", path, "; ".join(problems))
            self.ingest.event("config_rejected", {"source": str(path), "sha256": config_digest(path),
                                                  "problems": problems})
            return False
        await self._stop_drivers()
        self.config = new
        self.ingest.configure(new)
        self.clock.sync_source = new.time.sync_source
        assignments = {s.id: s.profile for s in new.sensors if s.profile}
        from agent.rules.engine import RuleEngine

        self.engine = RuleEngine(new.rules, assignments, state=self.engine.snapshot() if self.engine else None)
        self.ingest.judge = self.engine
        self.ingest.judged = frozenset(self.engine.sensors())
        if self.syncer is not None:
            self.syncer.config = new.uplink
            self.syncer.reset_uplink()
        self._start_drivers(new)
        self.ingest.event("config_applied", {"source": str(path), "sha256": config_digest(path), "at": "reload"})
        log.info("config %s applied", path)
        self._flush_now.set()
        return True

    # -- writer ------------------------------------------------------------------------
    async def _writer_loop(self) -> None:
        # Not cancelled at shutdown: it returns after its last commit, so that a commit is
        # never abandoned half-way with its records' fate unknown.
        while not self._stop.is_set():
            await wait_event(self._flush_now, self.config.store.commit_interval_s)
            self._flush_now.clear()
            await self.flush()

    async def flush(self) -> None:
        """Commit everything buffered, with the rule state, in one transaction.

        Flushes never overlap: a second one waits for the first, so "flushed" means
        committed (or kept for retry), whoever asked.
        """
        async with self._flush_lock:
            await self._flush()

    async def _flush(self) -> None:
        assert self.store is not None
        items = self._pending_retry + self.ingest.take()
        self._pending_retry = []
        if not items:
            return
        loss = self._loss_event() if self._lost else None  # cleared only once committed
        batch = items + [loss] if loss is not None else items
        state = {"rules": self.engine.snapshot()} if self._state_due(items) else None
        store = self.store
        try:
            await self._in_writer(lambda: store.append(batch, state=state))
        except Exception as exc:  # noqa: BLE001 - whatever failed, nothing taken may be lost
            if not isinstance(exc, StoreError):
                log.exception("unexpected error committing %d records; keeping them in memory", len(items))
            elif self._store_error is None:
                log.error("store cannot take records (%s): keeping them in memory", exc)
            self._store_error = str(exc)
            self._keep_for_retry(items)
            return
        if loss is not None:
            self._lost = {}
        if state is not None:
            self._state_saved_at = time.monotonic()
        if self._store_error is not None:
            log.warning("store writable again")
            self._store_error = None
        if any(i["type"] != "reading" for i in items):
            self._sync_now.set()

    def _state_due(self, items: list[dict[str, Any]]) -> bool:
        """Whether this commit carries the rule engine's state.

        Always when it holds an alarm change (so an alarm is never raised twice after a
        crash), while any sensor is out of range or one just came back (so an excursion
        and its budget are timed exactly across a crash), and otherwise every
        ``STATE_EVERY_S``: in range, a stale snapshot only re-weighs the last seconds,
        and the engine holds the last value across the gap. Saves most of the writes.
        """
        if self.engine is None:
            return False
        out = frozenset(sid for sid in self.ingest.last_seen if self.engine.out_of_range(sid))
        changed = out != self._out_of_range
        self._out_of_range = out
        return (changed or bool(out) or any(i["type"] == "alarm" for i in items)
                or time.monotonic() - self._state_saved_at >= STATE_EVERY_S)

    def _keep_for_retry(self, items: list[dict[str, Any]]) -> None:
        overflow = len(items) - MAX_BUFFER
        if overflow > 0:
            dropped = [i for i in items if i["type"] == "reading"][:overflow]
            drop_ids = {id(i) for i in dropped}
            items = [i for i in items if id(i) not in drop_ids]
            tally_loss(self._lost, dropped)
        self._pending_retry = items

    def _loss_event(self) -> dict[str, Any]:
        lost = self._lost
        return {"type": "event", "event": "data_loss", "ts": self.clock.now(),
                "time_quality": self.ingest.time_quality(),
                "details": {"reason": "store_unwritable", **loss_details(lost), "error": self._store_error}}

    # -- sync --------------------------------------------------------------------------
    async def _sync_loop(self) -> None:
        cfg = self.config
        # opened on the writer's thread (joined at exit), never on a daemon thread
        sync_store = await self._in_writer(lambda: Store.open(
            cfg.store.path, gateway_id=cfg.gateway_id, keep_acked=cfg.store.keep_acked, check=False, create=False))
        sync_store.clock = self.clock
        self.syncer = Syncer(sync_store, cfg.uplink, self.store.gateway_id if self.store else cfg.gateway_id,
                             clock=self.clock)
        try:
            while True:
                wait = self.config.uplink.interval_s
                nxt = self.syncer.state.next_retry_at
                if nxt is not None:
                    wait = max(0.0, nxt - time.time())
                await wait_event(self._sync_now, wait)
                self._sync_now.clear()
                if not self.syncer.due():
                    continue
                try:
                    await _in_daemon_thread(self.syncer.sync_once)
                except Exception:  # noqa: BLE001 - the uplink keeps trying; the readings are safe
                    log.exception("sync pass failed unexpectedly; retrying after %.0f s", self.config.uplink.interval_s)
        finally:
            # A sync pass may still run on its daemon thread (a slow server). Store.close
            # waits for any statement in progress, so the connection is never closed under
            # one; a late acknowledgement then fails, and the batch is re-sent next time.
            sync_store.close(sidecar=False)
            if not self.syncer.busy:
                self.syncer.close()

    async def _final_sync(self) -> None:
        """On the way out, send what is pending if the uplink answers at once (bounded)."""
        syncer = self.syncer
        if syncer is None or self.config.uplink.url is None or not syncer.due():
            return
        try:
            async with asyncio.timeout(FINAL_SYNC_S):
                await _in_daemon_thread(lambda: syncer.sync_once(max_batches=20))
        except TimeoutError:
            log.info("final sync did not finish within %.0f s; the rest goes at the next start", FINAL_SYNC_S)

    # -- housekeeping ------------------------------------------------------------------
    async def _housekeeping_loop(self) -> None:
        due = {"clock": 0.0, "prune": 0.0, "status": 0.0}
        self._rel = self._wall_minus_boot()
        while True:
            await asyncio.sleep(1.0)
            try:
                await self._housekeeping(due)
            except Exception:  # noqa: BLE001 - one failed chore must not stop the others for good
                log.exception("housekeeping failed; trying again in a second")

    async def _housekeeping(self, last: dict[str, float]) -> None:
        """Once a second: time-driven rules and CLI commands; every few: clock, pruning, status."""
        if self.engine is not None:
            for change in self.engine.tick(self.clock.now()):
                self.ingest.alarm(change)
        await self._run_commands()
        mono = time.monotonic()
        if mono - last["clock"] >= CLOCK_CHECK_EVERY_S:
            last["clock"] = mono
            self._rel = await self._watch_clock(self._rel)
        if mono - last["prune"] >= 60.0 and self.store is not None:
            last["prune"] = mono
            await self._in_writer(self.store.prune)
        if mono - last["status"] >= STATUS_EVERY_S:
            last["status"] = mono
            await self._write_status()

    async def _run_commands(self) -> None:
        store = self.store
        if store is None:
            return
        commands = await self._in_writer(store.take_commands)
        for _cid, kind, payload in commands:
            if kind == "alarm_ack" and self.engine is not None:
                try:
                    change = self.engine.acknowledge(payload["alarm_id"], payload["by"], payload["reason"],
                                                     self.clock.now())
                except KeyError:
                    log.warning("acknowledgement for unknown alarm %s ignored", payload.get("alarm_id"))
                    continue
                self.ingest.alarm(change)
            elif kind == "sync_now":
                self.request_sync()
            elif kind == "reload":
                await self.reload()

    def _wall_minus_boot(self) -> float:
        return self.clock.now() - self.clock.mono_ns() / 1e9

    async def _watch_clock(self, previous_rel: float) -> float:
        synced = await asyncio.to_thread(self.clock.synced)
        rel = self._wall_minus_boot()
        was = self.ingest.synced
        if synced and not was:
            await self._correct_unsynced(rel)
        elif abs(rel - previous_rel) > CLOCK_STEP_THRESHOLD_S:
            log.warning("system clock stepped by %.3f s", rel - previous_rel)
            self.ingest.event("clock_step", {"offset_s": round(rel - previous_rel, 3), "synced": synced,
                                             "boot_id": self.ingest.boot_id, "corrections": []})
        if was and not synced:
            log.warning("system clock lost synchronisation; records are stamped 'unsynced'")
        self.ingest.synced = synced
        return rel

    async def _correct_unsynced(self, rel_now: float) -> None:
        """The clock just became synchronised: say how to correct this boot's records."""
        boot = self.ingest.boot_id
        self.ingest.synced = True  # from here on, stamps are right
        for item in self.ingest.items + self._pending_retry:
            if item.get("time_quality") == "unsynced" and item.get("mono_ns") is not None:
                item["ts"] = rel_now + item["mono_ns"] / 1e9
                item["time_quality"] = "corrected"
        await asyncio.shield(self.flush())  # housekeeping may be cancelled; a commit may not
        store = self.store
        assert store is not None
        after = self._corrected_upto
        segments = await self._in_writer(lambda: store.unsynced_segments(boot, after))
        if segments:
            self._corrected_upto = max(b for _, b, _, _ in segments)
        corrections = [{"first_seq": a, "last_seq": b, "count": n, "offset_s": round(rel_now - base, 3)}
                       for a, b, n, base in segments]
        log.info("system clock synchronised; %d run(s) of unsynced records corrected by event", len(corrections))
        self.ingest.event("clock_step", {
            "synced": True, "boot_id": boot, "corrections": corrections, "method": "monotonic (CLOCK_BOOTTIME)",
            "rule": "for records of this stream with seq in [first_seq, last_seq] and time_quality 'unsynced', "
                    "the corrected time is ts + offset_s",
        })
        self._flush_now.set()

    # -- status ------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        now = self.clock.now()
        drivers = {name: {"type": d.type_name, **d.status.as_dict()} for name, d in self.drivers.items()}
        for name, err in self.driver_errors.items():
            drivers[name] = {"state": "unavailable", "last_error": err}
        sensors: dict[str, Any] = {}
        missing_default = 3 * max(self.config.recording.record_interval_s, 60.0)
        for sid, quantities in self.ingest.last_seen.items():
            sc = self.config.sensor(sid)
            newest = max(q[2] for q in quantities.values())
            limit = sc.missing_after_s if sc is not None and sc.missing_after_s else missing_default
            sensors[sid] = {
                "last_ts": rfc3339(newest), "age_s": round(now - newest, 1), "missing": now - newest > limit,
                "readings": {q: {"value": value, "unit": unit, "ts": rfc3339(ts), "age_s": round(now - ts, 1),
                                 "rssi": rssi}
                             for q, (value, unit, ts, rssi) in quantities.items()},
            }
        for sc in self.config.sensors:
            sensors.setdefault(sc.id, {"last_ts": None, "age_s": None, "missing": True, "readings": {}})
        return {
            "running": True, "pid": os.getpid(), "version": __version__, "gateway_id": self.config.gateway_id,
            "config": str(self.config_path) if self.config_path else None,
            "started_at": rfc3339(self.started_at), "updated_at": rfc3339(now),
            "clock": {"synced": self.ingest.synced, "source": self.clock.sync_source, "boot_id": self.ingest.boot_id},
            "drivers": drivers, "sensors": sensors,
            "store": {**self._store_stats, "buffered": len(self.ingest.items) + len(self._pending_retry),
                      "error": self._store_error},
            "sync": self.syncer.state.as_dict() if self.syncer else {"result": "starting"},
            "alarms": self.engine.active() if self.engine is not None else [],
        }

    async def _write_status(self) -> None:
        store = self.store
        if store is None:
            return
        try:
            if time.monotonic() - self._stats_at >= STORE_STATS_EVERY_S:
                # counting a large backlog reads the whole table: not every status write
                self._store_stats = await self._in_writer(store.stats)
                self._stats_at = time.monotonic()
        except Exception as exc:  # noqa: BLE001 - status must not stop the agent
            log.debug("store stats failed: %s", exc)
        data = self.status()
        path = status_path(self.config.store.path)

        def write() -> None:
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(data, indent=1, default=str))
            os.replace(tmp, path)

        try:
            await asyncio.to_thread(write)
        except OSError as exc:
            log.warning("cannot write status file %s: %s", path, exc)


async def _in_daemon_thread(fn: Callable[[], T]) -> T:
    """Run ``fn`` on a daemon thread: a hung network call never blocks exit."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[T] = loop.create_future()

    def target() -> None:
        try:
            result = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting task
            with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits any more
                loop.call_soon_threadsafe(_set_exception, fut, exc)
        else:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_set_result, fut, result)

    threading.Thread(target=target, daemon=True, name="coldgate-sync").start()
    return await fut


def _set_result(fut: asyncio.Future[Any], value: Any) -> None:
    if not fut.done():
        fut.set_result(value)


def _set_exception(fut: asyncio.Future[Any], exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)


def sync_threads_alive() -> bool:
    """Whether a sync pass is still running on its daemon thread (a hung server)."""
    return any(t.name == "coldgate-sync" and t.is_alive() for t in threading.enumerate())


def setup_logging(level: str = "info") -> None:
    """Log to stderr for journald: syslog priority prefixes under systemd, plain otherwise."""
    import sys

    handler = logging.StreamHandler(sys.stderr)
    if os.environ.get("JOURNAL_STREAM") or os.environ.get("INVOCATION_ID"):
        handler.setFormatter(_JournalFormatter("%(name)s: %(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


class _JournalFormatter(logging.Formatter):
    """``<N>message``: journald reads the syslog priority from the prefix (sd-daemon(3))."""

    PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}

    def format(self, record: logging.LogRecord) -> str:
        prio = self.PRIORITY.get(record.levelno, 6)
        return "\n".join(f"<{prio}>{line}" for line in super().format(record).splitlines())
