"""``coldgate run``: the supervisor of the agent's parts, one job each.

::

    drivers ──► intake (bounded) ──► writer ──────────────► store (SQLite)
    (threads, or       ▲            ingest + rules,             │
     the event loop)   │            group commit                │ wakes
                       │                                        ▼
    clock watch ───────┤                                 uplink loop ──► transport ──► central
    control socket ────┘  (status, sync, apply, ack…)    (thread)        (http | fake | mqtt)
    systemd notify + watchdog

The supervisor builds the parts with what they need and wires their seams; no part
reaches into another. Threads: the writer owns the store's write connection, the ingest
and the rule engine (one thread, so every commit holds the records *and* the state that
made them); the uplink loop owns a second connection and the transport; each blocking
driver has its own read thread. The event loop runs the asyncio drivers (BLE), the
control socket, the clock watch, alarm actions and the systemd watchdog. Anything that
must touch what the writer owns is posted to it (``intake.call``).

Signals are aliases for systemd: ``SIGTERM``/``SIGINT`` stop (everything taken is
committed, what cannot be is spilled for the next start, pending records are sent if
the uplink answers within ``FINAL_SYNC_S``), ``SIGHUP`` reloads, ``SIGUSR1`` syncs now.
The CLI uses the control socket (:mod:`agent.control`), never signals.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import signal
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

from agent import __version__
from agent import config as configmod
from agent.clockwatch import CHECK_EVERY_S, ClockWatch
from agent.config import Config
from agent.control import ControlServer
from agent.driverset import DriverSet
from agent.exc import ColdgateError, ConfigError, ConfigRefused, ControlRefused, IdentityError, StoreError
from agent.fleet.health import Snapshot
from agent.fleet.inbox import Inbox
from agent.fleet.keeper import Kept
from agent.fleet.steward import Steward, fixed_changes
from agent.identity import Identity, load_or_create
from agent.identity import default_path as identity_default_path
from agent.ingest import Ingest
from agent.intake import Intake
from agent.notify import Notifier
from agent.stamp import Stamper
from agent.store import Store
from agent.timebase import Clock, rfc3339
from agent.uplink import transport_for
from agent.uplink.base import Transport
from agent.uplink.loop import UplinkLoop
from agent.writer import Writer, spill_path

log = logging.getLogger("coldgate")

T = TypeVar("T")

#: How long a stopping agent may spend sending what is pending.
FINAL_SYNC_S = 3.0
#: How long a control request may wait for the writer (a stuck writer makes status say so).
WRITER_ANSWER_S = 3.0
#: A part that has not made progress for this long is stuck (no watchdog feed).
STUCK_AFTER_S = 30.0


def config_digest(path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def lock_path(store_path: Path) -> Path:
    return store_path.with_name(store_path.name + ".lock")


class Agent:
    """The running agent. ``await Agent(config).run()`` until stopped."""

    def __init__(self, config: Config, *, config_path: Path | None = None, clock: Clock | None = None,
                 transport: Callable[[], Transport] | None = None, env: Mapping[str, str] | None = None,
                 trusted_uid: int = 0) -> None:
        #: the fleet's side of every config: provenance, verdicts, trials, rollback
        self.steward = Steward(config, post=self._post_event, snapshot=self.health_snapshot,
                               rollback=self._roll_back_to, trusted_uid=trusted_uid)
        #: the file systemd names; a kept config may run instead (agent.fleet.keeper)
        self.base_path = config_path
        config, config_path = self.steward.choose_start(config, config_path)
        self.config = config
        self.config_path = config_path
        self.stamper = Stamper(clock or Clock(config.time.sync_source))
        self.intake = Intake(self.stamper)
        self.ingest = Ingest(config, self.stamper, on_alarm=self._on_alarm)
        self.writer = Writer(self._open_store, self.intake, self.ingest, self.stamper,
                             commit_interval_s=config.store.commit_interval_s, commit_max=config.store.commit_max,
                             spill=[spill_path(config.store.path),
                                    config.control.socket.parent / spill_path(config.store.path).name])
        self._transport_factory = transport
        self.uplink = UplinkLoop(self._open_uplink_store, self._make_transport(config), config.uplink, config.gateway_id,
                                 self.stamper, self.intake.put_item, batch_config=self.steward.provenance_batch)
        self.writer.on_commit = self.uplink.wake
        self.drivers = DriverSet(self.intake, self._driver_state)
        self.clock_watch = ClockWatch(self.stamper, on_synced=self._clock_synced, post=self.intake.put_item)
        self.notifier = Notifier(env)
        #: a part that makes no progress for this long is stuck: half the watchdog interval,
        #: so that systemd restarts the agent within one interval of it getting stuck
        self.stuck_after_s = self.notifier.watchdog_s / 2 if self.notifier.watchdog_s else STUCK_AFTER_S
        self.writer.max_wait_s = self.uplink.max_wait_s = min(1.0, self.stuck_after_s / 4)
        self.control = ControlServer(config.control.socket, {
            "ping": self._cmd_ping, "status": self._cmd_status, "sync": self._cmd_sync,
            "apply": self._cmd_apply, "reload": self._cmd_reload, "alarm_ack": self._cmd_alarm_ack,
            "retry_set_aside": self._cmd_retry_set_aside, "shipment": self._cmd_shipment,
        })
        #: committed events by name and data_loss by reason (metrics), across reopened stores
        self.store_counters: dict[tuple[str, str], int] = {}
        self.identity: Identity | None = None
        self.identity_error: str | None = None
        self.metrics: Any = None
        self._inbox: Inbox | None = None
        self.engine: Any = None
        self.started_at = time.time()
        self.loop_heartbeat = time.monotonic()
        self._stop = asyncio.Event()
        #: set once the store is open and the drivers started (when systemd hears READY=1)
        self.ready = asyncio.Event()
        self._reload_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._lock_fd: int | None = None
        self._status_store: Store | None = None
        self.stuck: str | None = None
        self._event_loop: asyncio.AbstractEventLoop | None = None

    # -- construction helpers --------------------------------------------------------
    def _open_store(self) -> Store:
        cfg = self.config.store
        return Store.open(cfg.path, gateway_id=self.config.gateway_id, quota_bytes=int(cfg.quota_mb * (1 << 20)),
                          reserve_pct=cfg.reserve_pct, keep_acked=cfg.keep_acked, stamper=self.stamper,
                          counters=self.store_counters)

    def _open_reader(self) -> Store:
        cfg = self.config.store
        return Store.open(cfg.path, gateway_id=self.config.gateway_id, keep_acked=cfg.keep_acked, check=False,
                          create=False, stamper=self.stamper)

    def _open_uplink_store(self) -> Store:
        """The uplink's connection. Its writes are acknowledgements and set-asides only, so it
        commits without waiting for the disk (``synchronous = NORMAL``): an acknowledgement
        a power cut takes away only makes the batch go again, and the receiver counts it a
        duplicate. An fsync per batch was a third of the agent's CPU at 100 lines/s."""
        store = self._open_reader()
        store.conn.execute("PRAGMA synchronous = NORMAL")
        return store

    def _make_transport(self, config: Config) -> Callable[[], Transport] | None:
        """The configured transport, watched for conflicts: a receiver that holds some of
        a batch's seqs with other content means seqs were reused (a store written back from
        an image): the writer starts a new stream (:mod:`agent.seqguard`)."""
        from agent.seqguard import ConflictWatch

        make = self._transport_factory or transport_for(config.uplink, config.gateway_id)
        if make is None:
            return None
        inner = make
        return lambda: ConflictWatch(inner(), self.writer.conflict_reporter())

    async def _writer_call(self, fn: Callable[[], T], timeout: float = WRITER_ANSWER_S) -> T:
        """Run ``fn`` on the writer's thread (it owns the store, the ingest, the rules)."""
        fut: Future[T] = self.intake.call(fn)
        return await asyncio.wait_for(asyncio.wrap_future(fut), timeout)

    async def _driver_state(self, name: str) -> Mapping[str, Any] | None:
        def load() -> Any:
            return self.writer.driver_state(name)

        try:
            return await self._writer_call(load, timeout=30.0)
        except Exception as exc:  # noqa: BLE001 - a driver starts without its state rather than not at all
            log.warning("state of driver %s could not be loaded: %s", name, exc)
            return None

    # -- lifecycle ---------------------------------------------------------------------
    async def run(self) -> int:
        loop = self._event_loop = asyncio.get_running_loop()
        cfg = self.config
        # first of all, so that a SIGTERM during start-up still commits and exits cleanly
        for sig, handler in ((signal.SIGTERM, self.stop), (signal.SIGINT, self.stop),
                             (signal.SIGHUP, self._on_sighup), (signal.SIGUSR1, self._on_sigusr1)):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, handler)
        self._take_lock(cfg.store.path)
        self.drivers.declare(cfg.drivers)  # status shows them "starting" until they run
        try:
            await self.control.start()
        except BaseException:
            self._release_lock()
            raise
        try:
            self.writer.start()
            store = await asyncio.wrap_future(self.writer.opened)
            if store is not None and store.gateway_id != cfg.gateway_id:
                log.warning("store %s belongs to gateway %r, config says %r; keeping the store's id",
                            cfg.store.path, store.gateway_id, cfg.gateway_id)
            self.uplink.gateway_id = store.gateway_id if store is not None else cfg.gateway_id
            await self._start_engine(cfg)
            self.intake.put_item(self.stamper.event("agent_started", {
                "version": __version__, "pid": os.getpid(),
                "config": str(self.config_path) if self.config_path else None}))
            resumed = self.steward.resumed_trial()
            await asyncio.to_thread(self.steward.started, cfg.fleet.health_window_s)
            self.intake.put_item(self.stamper.event("config_applied", {
                **self.steward.provenance.as_dict(), "at": "start", "resumed_trial": resumed or None}))
            await self._start_identity()
            self.uplink.start()
            await self.drivers.start(cfg.drivers)
            if resumed:  # a clean stop interrupted its health check: checked again from the start
                await self.steward.begin_trial(self._enabled_drivers(cfg), cfg.fleet.health_window_s)
            for coro, name in ((self._clock_loop(), "clock"), (self._watchdog_loop(), "watchdog"),
                               (self._checkpoint_loop(), "checkpoint")):
                self._spawn(coro, name)
            self._start_inbox(cfg)
            await self._start_metrics(cfg)
            log.info("coldgate %s running: gateway %s, store %s, %d driver(s), uplink %s, control %s",
                     __version__, cfg.gateway_id, cfg.store.path, len(self.drivers.drivers),
                     cfg.uplink.endpoint() or "none", cfg.control.socket)
            self.notifier.ready(self.one_line())
            self.ready.set()
            await self._stop.wait()
            await self._shutdown()
            return 1 if self.writer.lost_at_exit else 0
        finally:
            await self.control.close()
            if self.writer.alive:  # start-up failed half-way: still commit what was taken
                await asyncio.to_thread(self.writer.stop)
            self.uplink.stop(timeout=1.0)
            if self.metrics is not None:
                await asyncio.to_thread(self.metrics.stop)
            if self._status_store is not None:
                self._status_store.close(sidecar=False)
            self.notifier.close()
            self._release_lock()

    async def _shutdown(self) -> None:
        log.info("stopping: committing what is held")
        self.notifier.stopping()
        await self.steward.stopping()
        await self.drivers.stop_all()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        make = self._checkpoint_maker()

        def last_words() -> None:
            self.ingest.report_invalid()
            self.ingest.event("agent_stopped", {"reason": "signal"})
            self.writer.flush()
            if make is not None:  # the stop is signed: records 1..N, agent_stopped included
                try:
                    self.writer.checkpoint(make, force=True)
                except Exception as exc:  # noqa: BLE001 - the records are committed; only the signature is missing
                    log.error("no checkpoint at stop: %s", exc)

        with contextlib.suppress(Exception):
            await self._writer_call(last_words, timeout=30.0)
        await self._final_sync()
        await asyncio.to_thread(self.writer.stop)

    def stop(self) -> None:
        self._stop.set()

    def _spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)  # held until done: a task nobody references may be collected
        task.add_done_callback(self._tasks.discard)
        return task

    def _on_sighup(self) -> None:
        self._spawn(self.reload(), "reload")

    def _on_sigusr1(self) -> None:
        self.uplink.sync_now()

    def _take_lock(self, store_path: Path) -> None:
        """One agent per store (an flock, not a channel: nobody reads a pid from it)."""
        try:
            store_path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock_path(store_path), os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            if exc.errno != errno.EROFS:
                raise
            try:  # a read-only filesystem: an flock works on a file opened to read
                fd = os.open(lock_path(store_path), os.O_RDONLY)
            except OSError:
                log.warning("no lock on %s (read-only filesystem); the control socket keeps a second agent out",
                            store_path)
                return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StoreError(f"another coldgate already runs on {store_path}") from None
        self._lock_fd = fd

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    async def _final_sync(self) -> None:
        """On the way out, send what is pending if the uplink answers at once (bounded)."""
        if not self.uplink.alive:
            return
        try:
            await asyncio.wait_for(asyncio.wrap_future(self.uplink.sync_now()), FINAL_SYNC_S)
        except TimeoutError:
            log.info("final sync did not finish within %.0f s; the rest goes at the next start", FINAL_SYNC_S)

    # -- rules -------------------------------------------------------------------------
    async def _start_engine(self, cfg: Config) -> None:
        from agent.rules.engine import RuleEngine, Sample

        def build() -> Any:
            store = self.writer.store
            state = store.load_state("rules") if store is not None else None
            if store is None:
                log.warning("the store could not be opened: rules start without their saved state")
            assignments = {s.id: s.profile for s in cfg.sensors if s.profile}
            try:
                engine = RuleEngine(cfg.rules, assignments, state=state)
            except ValueError as exc:
                log.error("saved rules state not usable (%s); rules start afresh", exc)
                engine = RuleEngine(cfg.rules, assignments)
            self.ingest.set_judge(engine, Sample)
            self._start_book(cfg, store.load_state("shipments") if store is not None else None)
            return engine

        self.engine = await self._writer_call(build, timeout=60.0)

    def _start_book(self, cfg: Config, state: Any) -> None:
        """On the writer's thread: the shipment book, resumed, and the config's autostart shipments."""
        from agent.shipment.book import ShipmentBook

        if self.ingest.book is None:
            try:
                self.ingest.book = ShipmentBook(gateway_id=cfg.gateway_id, agent_version=__version__, state=state)
            except (ValueError, KeyError, TypeError) as exc:
                log.error("saved shipments state not usable (%s); shipments start afresh", exc)
                self.ingest.book = ShipmentBook(gateway_id=cfg.gateway_id, agent_version=__version__)
        book = self.ingest.book
        known = {s["shipment"] for s in book.shipments()}
        for spec in cfg.shipments:
            if spec.autostart and spec.id not in known:
                try:
                    self._book_start(spec, by="config")
                except ColdgateError as exc:
                    log.error("shipment %s from the config not started: %s", spec.id, exc)

    def _book_start(self, spec: Any, *, by: str | None) -> list[dict[str, Any]]:
        """Start ``spec`` in the book (writer's thread); its records are taken at once."""
        from agent.shipment.info import describe

        sensors, profiles = describe(self.config, spec)
        wall, elapsed = self.ingest.elapsed_now()
        records = self.ingest.book.start(spec, elapsed=elapsed, wall=wall, by=by, sensors=sensors, profiles=profiles,
                                         default_interval_s=self.config.recording.record_interval_s)
        out = self.ingest.book_records(records, wall, elapsed)
        started: dict[str, Any] = next((r["details"] for r in out if r.get("event") == "shipment_started"), {})
        for w in started.get("en12830", {}).get("warnings", []):
            log.warning("shipment %s: %s", spec.id, w)
        log.info("shipment %s started (%s) by %s", spec.id, ", ".join(spec.sensors), by)
        return out

    def _on_alarm(self, alarm: dict[str, Any]) -> None:
        """On the writer's thread: an alarm changed. Commit and send at once; run the action."""
        self.writer.note_alarm(alarm)
        engine = self.engine
        if engine is not None and not alarm.get("muted") and engine.wants_action(alarm):
            loop = self._event_loop
            if loop is not None:
                loop.call_soon_threadsafe(self._run_action, dict(alarm))

    def _run_action(self, alarm: dict[str, Any]) -> None:
        from agent.rules.actions import run_action

        action = self.config.rules.action
        if action.command is None:
            return
        record = {k: (rfc3339(v) if k in ("ts", "started_at") and isinstance(v, (int, float)) else v)
                  for k, v in alarm.items() if k not in ("mono_ns", "boot_id")}
        record["gateway_id"] = self.config.gateway_id
        self._spawn(run_action(action.command, record, action.timeout_s), "action")

    # -- the clock and the watchdog ----------------------------------------------------
    async def _clock_loop(self) -> None:
        while True:
            self.loop_heartbeat = time.monotonic()
            try:
                self.clock_watch.check()
            except Exception:  # noqa: BLE001 - the next look may work
                log.exception("clock check failed")
            await asyncio.sleep(min(CHECK_EVERY_S, self.stuck_after_s / 2))

    def _clock_synced(self, rel: float) -> None:
        self.intake.call(lambda: self.writer.correct_clock(rel))

    def healthy(self) -> str | None:
        """None when the loop, the writer and the uplink each make progress, else what is stuck."""
        now = time.monotonic()
        limit = self.stuck_after_s
        if now - self.loop_heartbeat > limit:
            return f"event loop stuck for {now - self.loop_heartbeat:.1f} s"
        if self.writer.alive and now - self.writer.heartbeat > limit:
            return f"writer stuck for {now - self.writer.heartbeat:.1f} s"
        up = self.uplink
        if up.alive:
            busy = up.busy_since
            allowed = self.config.uplink.connect_timeout_s + self.config.uplink.read_timeout_s + limit
            if busy is not None and now - busy > allowed:
                return f"uplink stuck in one request for {now - busy:.1f} s"
            if busy is None and now - up.heartbeat > limit:
                return f"uplink loop stuck for {now - up.heartbeat:.1f} s"
        return None

    async def _watchdog_loop(self) -> None:
        every = self.notifier.watchdog_s / 2 if self.notifier.watchdog_s else None
        while True:
            self.loop_heartbeat = time.monotonic()
            stuck = self.healthy()
            if stuck != self.stuck:
                if stuck:
                    log.error("%s: not feeding the watchdog", stuck)
                    self.notifier.status(f"STUCK: {stuck}")
                else:
                    log.warning("all parts make progress again")
                    self.notifier.status(self.one_line())
                self.stuck = stuck
            if every is not None and stuck is None:
                self.notifier.watchdog()
            await asyncio.sleep(min(every or 5.0, 5.0, self.stuck_after_s / 2))

    # -- reload ------------------------------------------------------------------------
    async def reload(self, path: Path | None = None, *, signature: Path | None = None,
                     allow_downgrade: bool = False, origin: str = "reload", source: str | None = None,
                     kept: Kept | None = None) -> dict[str, Any]:
        """Verify ``path`` (the live config by default) and apply it only when it passes.

        Reloads run one at a time. The candidate passes the fleet gate first
        (:mod:`agent.fleet.gate`: signature, version, not rolled back before), then
        validation and preflight. Only what changed restarts: drivers with unchanged
        options keep running; rules are re-assigned with their state kept. Then its
        health check runs (:mod:`agent.fleet.steward`). ``kept``: a rollback to the
        agent's own copy of the last good config.
        """
        async with self._reload_lock:
            self.notifier.reloading()
            try:
                return await self._reload(path or self.base_path or self.config_path, signature=signature,
                                          allow_downgrade=allow_downgrade, origin=origin, source=source, kept=kept)
            finally:
                self.notifier.ready(self.one_line())

    def _reject(self, path: Path | None, problems: list[str], *, reason: str = "invalid",
                candidate: Mapping[str, Any] | None = None, source: str | None = None) -> dict[str, Any]:
        running = self.steward.provenance.batch()
        self.intake.put_item(self.stamper.event("config_rejected", {
            "source": source or (str(path) if path else None), "sha256": config_digest(path), "reason": reason,
            "problems": problems, **({"candidate": dict(candidate)} if candidate else {}), "running": running}))
        return {"applied": False, "reason": reason, "problems": problems, "running": running}

    async def _reload(self, path: Path | None, *, signature: Path | None = None, allow_downgrade: bool = False,
                      origin: str = "reload", source: str | None = None, kept: Kept | None = None) -> dict[str, Any]:
        if path is None:
            return {"applied": False, "problems": ["the agent runs without a config file"]}
        base = self.base_path.parent if self.base_path is not None else path.parent
        try:
            if kept is not None:
                cand = await asyncio.to_thread(self.steward.examine_kept, kept, base_dir=base)
            else:
                cand = await asyncio.to_thread(self.steward.examine, path, self.config, base_dir=base,
                                               signature=signature, allow_downgrade=allow_downgrade, source=source)
        except ConfigRefused as exc:
            log.error("config %s refused (%s), keeping the running one:\n%s", source or path, exc.reason, exc.report())
            return self._reject(path, [str(p) for p in exc.problems], reason=exc.reason, source=source)
        except ConfigError as exc:
            log.error("config %s rejected, keeping the running one:\n%s", source or path, exc.report())
            return self._reject(path, [str(p) for p in exc.problems], source=source)
        new = cand.config
        missing = await asyncio.to_thread(configmod.preflight, new)
        if missing:  # what this machine lacks for it (token file, certificates, …): said now
            log.error("config %s rejected: %s", path, "; ".join(str(p) for p in missing))
            return self._reject(path, [str(p) for p in missing], reason="preflight",
                                candidate=cand.provenance.batch(), source=source)
        old = self.config
        fixed = fixed_changes(new, old)
        if fixed:
            problems = [f"{k}: cannot change while running; restart the service to apply" for k in fixed]
            log.error("config %s rejected: %s", path, "; ".join(problems))
            return self._reject(path, problems, reason="needs_restart", candidate=cand.provenance.batch(),
                                source=source)
        from agent.rules.engine import RuleEngine, Sample

        def rejudge() -> Any:
            assignments = {s.id: s.profile for s in new.sensors if s.profile}
            engine = RuleEngine(new.rules, assignments,
                                state=self.engine.snapshot() if self.engine is not None else None)
            self.ingest.configure(new)
            self.ingest.set_judge(engine, Sample)
            self.writer.commit_interval_s = new.store.commit_interval_s
            self.writer.commit_max = new.store.commit_max
            self.config = new  # the book describes shipments from the new config
            self._start_book(new, None)
            return engine

        self.engine = await self._writer_call(rejudge, timeout=30.0)
        self.config = new
        self.stamper.clock.sync_source = new.time.sync_source
        if new.uplink != old.uplink:
            self.uplink.reconfigure(new.uplink, self._make_transport(new))
        drivers = await self.drivers.apply(new.drivers)
        previous = self.steward.provenance.batch()
        rollback = kept is not None
        window = new.fleet.health_window_s
        await self.steward.applied(cand, window_s=window, drivers=self._enabled_drivers(new), rollback=rollback,
                                   uplink=new.uplink.url is not None or self._transport_factory is not None)
        if new.fleet.inbox != old.fleet.inbox or new.fleet.inbox_poll_s != old.fleet.inbox_poll_s:
            self._start_inbox(new)
        if new.metrics != old.metrics:
            await self._start_metrics(new)
        prov = cand.provenance
        if not rollback:
            self.intake.put_item(self.stamper.event("config_applied", {
                **prov.as_dict(), "at": origin, "previous": previous, "drivers": drivers,
                "health_window_s": window or None}))
        log.info("config %s (version %s, %s) applied (drivers restarted: %s)", prov.source, prov.version,
                 f"signed by {prov.signer}" if prov.signer else "unsigned", ", ".join(drivers["restarted"]) or "none")
        return {"applied": True, **prov.batch(), "drivers": drivers, "health_window_s": window or None}

    async def _roll_back_to(self, kept: Kept, failures: list[str]) -> dict[str, Any]:
        """The steward's way back: re-apply the last good config, kept in the state directory."""
        return await self.reload(kept.path, kept=kept, origin="rollback")

    @staticmethod
    def _enabled_drivers(cfg: Config) -> list[str]:
        return [d.name for d in cfg.drivers if d.enabled]

    def _post_event(self, name: str, details: Mapping[str, Any]) -> None:
        self.intake.put_item(self.stamper.event(name, details))

    async def health_snapshot(self) -> Snapshot:
        """What the health check of a config on trial looks at (agent.fleet.health)."""
        drivers = {name: {"state": d.get("state"), "readings": (d.get("counters") or {}).get("readings", 0),
                          "last_error": d.get("last_error")} for name, d in self.drivers.status().items()}
        try:
            committed, store_error = await self._writer_call(lambda: (self.writer.committed, self.writer.store_error))
        except TimeoutError:
            committed, store_error = 0, f"the writer did not answer within {WRITER_ANSWER_S:g} s"
        st = self.uplink.state
        return Snapshot(drivers, committed, store_error, st.ok_passes, st.result, st.last_error)

    # -- identity and checkpoints ---------------------------------------------------------
    async def _start_identity(self) -> None:
        path = self.config.identity.key or identity_default_path(self.config.store.path)
        try:
            identity, created = await asyncio.to_thread(load_or_create, path)
        except IdentityError as exc:
            self.identity, self.identity_error = None, str(exc)
            log.error("no signed checkpoints: %s", exc)
            self.intake.put_item(self.stamper.event("identity_unusable", {"error": str(exc)}))
            return
        self.identity, self.identity_error = identity, None
        self.writer.make_checkpoint = self._checkpoint_maker()
        if created:
            self.intake.put_item(self.stamper.event("identity_created", {
                "key_id": identity.key_id, "algorithm": "ed25519",
                "public_key_hex": identity.describe()["public_key_hex"]}))

    def _checkpoint_maker(self) -> Callable[[str, int, str], dict[str, Any]] | None:
        ident = self.identity
        if ident is None:
            return None
        gateway = self.uplink.gateway_id
        stamper = self.stamper
        return lambda stream, seq, head: stamper.event("chain_checkpoint", ident.checkpoint(gateway, stream, seq, head))

    async def checkpoint(self, *, force: bool = False) -> int | None:
        """Append a signed checkpoint over the store's head now (on the writer's thread)."""
        make = self._checkpoint_maker()
        if make is None:
            return None
        return await self._writer_call(lambda: self.writer.checkpoint(make, force=force), timeout=30.0)

    async def _checkpoint_loop(self) -> None:
        while True:
            every = self.config.identity.checkpoint_interval_s
            await asyncio.sleep(every if every > 0 else 60.0)
            if every <= 0 or self.identity is None:
                continue
            try:
                await self.checkpoint()
            except Exception as exc:  # noqa: BLE001 - the next one may work; records are kept regardless
                log.error("checkpoint failed: %s", exc)

    # -- inbox and metrics ----------------------------------------------------------------
    def _start_inbox(self, cfg: Config) -> None:
        if self._inbox is not None:
            self._inbox.stop()
            self._inbox = None
        if cfg.fleet.inbox is None:
            return
        self._inbox = Inbox(cfg.fleet.inbox, cfg.fleet.inbox_poll_s, self._inbox_apply)
        self._spawn(self._inbox.run(), "inbox")

    async def _inbox_apply(self, path: Path, signature: Path) -> dict[str, Any]:
        """A drop in the inbox: applied as ``config apply`` would, then awaited through its
        health check (the file goes to ``applied/`` only once it passed)."""
        result = await self.reload(path, signature=signature, origin="inbox")
        outcome = self.steward.outcome()
        if result.get("applied") and outcome is not None:
            result["health"] = await asyncio.shield(outcome)
        return result

    async def _start_metrics(self, cfg: Config) -> None:
        if self.metrics is not None:
            await asyncio.to_thread(self.metrics.stop)
            self.metrics = None
        if cfg.metrics.listen is None and cfg.metrics.textfile is None:
            return
        try:
            from agent.metrics import Metrics

            loop = asyncio.get_running_loop()
            self.metrics = Metrics(cfg.metrics, lambda: asyncio.run_coroutine_threadsafe(
                self.metrics_snapshot(), loop).result(10.0))
            await asyncio.to_thread(self.metrics.start)
        except (ColdgateError, OSError, ImportError) as exc:
            log.error("metrics not served: %s", exc)
            self.metrics = None

    async def metrics_snapshot(self) -> dict[str, Any]:
        """Everything the metrics show, asked of each part at scrape time (agent.metrics)."""
        data = await self.status()

        def counts() -> dict[str, Any]:
            return {"received": {d: dict(c) for d, c in self.ingest.received.items()},
                    "store_counters": dict(self.store_counters)}

        try:
            data.update(await self._writer_call(counts))
        except TimeoutError:
            pass
        return data

    # -- control commands ----------------------------------------------------------------
    async def _cmd_ping(self, req: Mapping[str, Any]) -> dict[str, Any]:
        return {"pid": os.getpid(), "version": __version__, "gateway_id": self.config.gateway_id,
                "store": str(self.config.store.path)}

    async def _cmd_sync(self, req: Mapping[str, Any]) -> dict[str, Any]:
        timeout = float(req.get("timeout", 30.0))
        try:
            state = await asyncio.wait_for(asyncio.wrap_future(self.uplink.sync_now()), timeout)
        except TimeoutError:
            raise ControlRefused(f"the sync pass did not finish within {timeout:g} s (still running)") from None
        try:
            pending = (await asyncio.wait_for(asyncio.to_thread(self._store_stats), 10.0))["pending"]
        except Exception:  # noqa: BLE001 - the pass is what was asked; the count is a courtesy
            pending = None
        return {**state, "pending": pending}

    async def _cmd_apply(self, req: Mapping[str, Any]) -> dict[str, Any]:
        path, sig, source = req.get("path"), req.get("signature"), req.get("source")
        if not isinstance(path, str):
            raise ControlRefused("apply needs a 'path'")
        return await self.reload(Path(path), signature=Path(sig) if isinstance(sig, str) else None,
                                 allow_downgrade=req.get("allow_downgrade") is True, origin="apply",
                                 source=source if isinstance(source, str) else None)

    async def _cmd_reload(self, req: Mapping[str, Any]) -> dict[str, Any]:
        return await self.reload()

    async def _until_ready(self) -> None:
        """A command that needs the rules and the book waits for the start-up to finish."""
        try:
            await asyncio.wait_for(self.ready.wait(), 60.0)
        except TimeoutError:
            raise ControlRefused("the agent is still starting; try again in a moment") from None

    async def _cmd_alarm_ack(self, req: Mapping[str, Any]) -> dict[str, Any]:
        alarm_id, by, reason = req.get("alarm_id"), req.get("by"), req.get("reason")
        if not all(isinstance(v, str) and v.strip() for v in (alarm_id, by, reason)):
            raise ControlRefused("alarm_ack needs a non-empty alarm_id, by and reason")
        await self._until_ready()

        def ack() -> dict[str, Any]:
            book = self.ingest.book
            if book is not None and book.knows_alarm(alarm_id):  # a shipment's own alarm (budget, freeze–thaw)
                wall, elapsed = self.ingest.elapsed_now()
                try:
                    rec = book.acknowledge(alarm_id, by=by, reason=reason, elapsed=elapsed)
                except KeyError:
                    raise ControlRefused(f"alarm {alarm_id!r} is acknowledged already") from None
                (item,) = self.ingest.book_records([rec], wall, elapsed)
                self.writer.flush()
                return {k: v for k, v in item.items() if k not in ("mono_ns", "boot_id")}
            if self.engine is None:
                raise ControlRefused("the rules are not running")
            try:
                change = self.engine.acknowledge(alarm_id, by, reason, self.stamper.now())
            except KeyError:
                raise ControlRefused(f"no active alarm {alarm_id!r} (see `coldgate alarms`)") from None
            self.ingest.alarm(change)
            self.writer.flush()
            return dict(change)

        return await self._writer_call(ack, timeout=30.0)

    async def _cmd_retry_set_aside(self, req: Mapping[str, Any]) -> dict[str, Any]:
        def release() -> dict[str, Any]:
            store = self.writer.store
            if store is None:
                raise ControlRefused("the store is not open")
            released = store.release_set_aside()
            if released["count"]:  # nothing released, nothing to record
                self.ingest.event("set_aside_released", {"count": released["count"], "ranges": released["ranges"],
                                                         "by": req.get("by")})
                self.writer.flush()
            return released

        result = await self._writer_call(release, timeout=30.0)
        self.uplink.sync_now()
        return result

    async def _cmd_shipment(self, req: Mapping[str, Any]) -> Any:
        """``shipment`` with ``action`` start|stop|cancel|leg|handover|status|list (see agent.cli.shipment_cmd)."""
        from agent.shipment.config import ShipmentSpec

        action = req.get("action")
        args = {k: v for k, v in req.items() if k not in ("cmd", "action")}
        await self._until_ready()
        spec = None
        if action == "start":
            try:
                spec = ShipmentSpec.model_validate({**args.get("spec", {}), "autostart": False})
            except ValueError as exc:
                raise ControlRefused(f"shipment not valid: {exc}") from None

        def run() -> Any:
            book = self.ingest.book
            if book is None:
                raise ControlRefused("the shipment book is not running")
            wall, elapsed = self.ingest.elapsed_now()
            by = args.get("by")
            if action == "status":
                return book.get(args["shipment"], elapsed) if args.get("shipment") else book.status(elapsed)
            if action == "list":
                return book.shipments()
            if action == "start":
                out = self._book_start(spec, by=by)
            elif action == "stop":
                out = self.ingest.book_records(book.stop(args["shipment"], elapsed=elapsed, by=by, wall=wall),
                                               wall, elapsed)
            elif action == "cancel":
                out = self.ingest.book_records(book.cancel(args["shipment"], elapsed=elapsed, by=by, wall=wall,
                                                           why=args.get("why")), wall, elapsed)
            elif action == "leg":
                out = self.ingest.book_records(book.leg(args["shipment"], elapsed=elapsed, name=args.get("name"),
                                                        kind=args.get("kind"), mode=args.get("mode"),
                                                        mute=args.get("mute"), by=by), wall, elapsed)
            elif action == "handover":
                out = self.ingest.book_records(book.handover(
                    args["shipment"], from_party=args.get("from", ""), to_party=args.get("to", ""),
                    signed_by=args.get("signed_by", ""), elapsed=elapsed, where=args.get("where"),
                    note=args.get("note")), wall, elapsed)
            else:
                raise ControlRefused(f"unknown shipment action {action!r}")
            self.writer.flush()
            return {"records": [{k: v for k, v in r.items() if k not in ("mono_ns", "boot_id")} for r in out],
                    "shipment": book.get(spec.id if spec else args["shipment"], elapsed)}

        return await self._writer_call(run, timeout=30.0)

    async def _cmd_status(self, req: Mapping[str, Any]) -> dict[str, Any]:
        return await self.status()

    # -- status ------------------------------------------------------------------------
    async def status(self) -> dict[str, Any]:
        """Everything ``coldgate status`` shows, asked of each part; a part that does not
        answer is said so (``stale``) rather than hiding behind old figures."""
        cfg = self.config
        out: dict[str, Any] = {
            "running": True, "answering": True, "ready": self.ready.is_set(), "pid": os.getpid(),
            "version": __version__,
            "gateway_id": cfg.gateway_id, "config": str(self.config_path) if self.config_path else None,
            "started_at": rfc3339(self.started_at), "generated_at": rfc3339(time.time()),
            "clock": {"synced": self.stamper.synced, "source": self.stamper.clock.sync_source,
                      "boot_id": self.stamper.boot_id, "steps": self.clock_watch.steps},
            "drivers": self.drivers.status(), "uplink_url": cfg.uplink.endpoint(),
            "sync": self.uplink.status(), "stale": [], "stuck": self.stuck,
            "quota_bytes": int(cfg.store.quota_mb * (1 << 20)),
            "fleet": self.steward.status(),
            "identity": ({"key_id": self.identity.key_id} if self.identity is not None
                         else {"error": self.identity_error}),
        }

        def inside() -> dict[str, Any]:
            engine, book = self.engine, self.ingest.book
            _, elapsed = self.ingest.elapsed_now()
            return {"writer": self.writer.status(), "sensors": self._sensors(),
                    "alarms": engine.active() if engine is not None else [],
                    "shipments": book.status(elapsed) if book is not None else []}

        try:
            out.update(await self._writer_call(inside))
        except TimeoutError:
            out["stale"].append("writer")
            out["writer"] = {"error": f"the writer did not answer within {WRITER_ANSWER_S:g} s"}
        try:
            out["store"] = await asyncio.wait_for(asyncio.to_thread(self._store_stats), 10.0)
        except TimeoutError:
            out["stale"].append("store")
            out["store"] = {"error": "store statistics did not come within 10 s"}
        except (StoreError, ColdgateError, OSError) as exc:
            out["store"] = {"error": str(exc)}
        return out

    def _store_stats(self) -> dict[str, Any]:
        if self._status_store is None:
            self._status_store = self._open_reader()
        stats = self._status_store.stats()
        stats["quota_bytes"] = int(self.config.store.quota_mb * (1 << 20))
        return stats

    def _sensors(self) -> dict[str, Any]:
        """Each sensor's newest sample (on the writer's thread, where the ingest lives)."""
        now = self.stamper.now()
        out: dict[str, Any] = {}
        from agent.rules.config import DEFAULT_MISSING_AFTER_S

        for sid, quantities in self.ingest.last_seen.items():
            sc = self.config.sensor(sid)
            newest = max(q[2] for q in quantities.values())
            limit = sc.missing_after_s if sc is not None and sc.missing_after_s else DEFAULT_MISSING_AFTER_S
            out[sid] = {
                "last_ts": rfc3339(newest), "age_s": round(now - newest, 1), "missing": now - newest > limit,
                "readings": {q: {"value": value, "unit": unit, "ts": rfc3339(ts), "age_s": round(now - ts, 1),
                                 "rssi": rssi} for q, (value, unit, ts, rssi) in quantities.items()},
            }
        for sc in self.config.sensors:
            out.setdefault(sc.id, {"last_ts": None, "age_s": None, "missing": True, "readings": {}})
        return out

    def one_line(self) -> str:
        """``STATUS=`` for systemd: the gist in one line."""
        up = self.uplink.state
        return (f"gateway {self.config.gateway_id}: {len(self.drivers.drivers)} driver(s), "
                f"uplink {up.result}, store {'ERROR ' + self.writer.store_error if self.writer.store_error else 'ok'}")


def setup_logging(level: str = "info", *, json_lines: bool = False) -> None:
    """Log to stderr for journald: syslog priority prefixes under systemd, plain otherwise;
    ``json_lines``: one JSON object a line (``ts``, ``level``, ``logger``, ``message``)."""
    import sys

    handler = logging.StreamHandler(sys.stderr)
    if json_lines:
        handler.setFormatter(_JsonFormatter())
    elif os.environ.get("JOURNAL_STREAM") or os.environ.get("INVOCATION_ID"):
        handler.setFormatter(_JournalFormatter("%(name)s: %(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


class _JsonFormatter(logging.Formatter):
    """A log record as one JSON line, for a log shipper (``coldgate run --json``)."""

    def format(self, record: logging.LogRecord) -> str:
        import json

        out = {"ts": rfc3339(record.created), "level": record.levelname.lower(), "logger": record.name,
               "message": record.getMessage()}
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


class _JournalFormatter(logging.Formatter):
    """``<N>message``: journald reads the syslog priority from the prefix (sd-daemon(3))."""

    PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}

    def format(self, record: logging.LogRecord) -> str:
        prio = self.PRIORITY.get(record.levelno, 6)
        return "\n".join(f"<{prio}>{line}" for line in super().format(record).splitlines())
