"""The BLE driver's adapters: one scanner each, watched, and recovered when they stall.

Each configured adapter (``adapters = ["hci0", "hci1"]``, or the one ``adapter``, or
the system default) gets a :class:`Radio`: its bleak scanner, when it last heard
anything, and its reset :class:`~drivers.ble.adapter.Ladder`. :meth:`Radios.watch`, run
after every read, declares an adapter stalled when it has been silent for
``silence_timeout_s`` or BlueZ says it is gone, off or no longer discovering (asked
every ``adapter_check_s`` in the background, never blocking a read). A stalled or
failing adapter is recovered before its scanner starts again (:meth:`Radios._recover`:
power cycle, then controller reset, each a ``ble_adapter_reset`` event). While another
adapter still scans, a stalled one is restarted in the background; when none scans, the
driver's read raises :class:`DriverIOError` and the base loop reopens with backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from drivers.ble.adapter import AdapterControl, Ladder, reset_worthy
from drivers.exc import DriverIOError, DriverUnavailable

if TYPE_CHECKING:
    from drivers.ble.scanner import BleDriver

#: How long one recovery step may take before it is given up.
_STEP_TIMEOUT_S = 60.0


@dataclass
class Radio:
    """One adapter and its scanner."""

    index: int
    adapter: str | None
    ladder: Ladder
    scanner: Any = None
    mode: str | None = None
    since_mono: float = 0.0
    last_adv_mono: float = 0.0
    last_check_mono: float = 0.0
    trouble: str | None = None
    resets: int = 0
    failures: int = 0  # background restarts that failed in a row
    task: asyncio.Task[None] | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return self.adapter or "default"

    @property
    def bluez_name(self) -> str:
        return self.adapter or "hci0"


class Radios:
    """The driver's adapters (see the module docstring)."""

    def __init__(self, driver: BleDriver, control: AdapterControl | None) -> None:
        self.driver = driver
        opts = driver.options
        self.list = [
            Radio(i, name, Ladder(base_s=opts.reset_backoff_s, cap_s=opts.reset_backoff_cap_s,
                                  stable_s=max(600.0, 5 * opts.silence_timeout_s)))
            for i, name in enumerate(opts.adapter_names())
        ]
        for r in self.list:
            r.detail.update({"state": "starting", "scanning_mode": None, "last_advertisement_at": None, "resets": 0,
                             "last_reset": None, "bluez": None, "last_error": None})
        self.details = {r.label: r.detail for r in self.list}
        self.many = len(self.list) > 1
        self._control = control
        self._control_resolved = control is not None
        self._tasks: set[asyncio.Task[None]] = set()
        self._last_stall: str | None = None

    # -- the BlueZ boundary ------------------------------------------------------------
    def control(self) -> AdapterControl | None:
        """The adapter control: given, the fake radio's, or BlueZ's on Linux; None without recovery."""
        if not self.driver.options.recovery:
            return None
        if not self._control_resolved:
            self._control_resolved = True
            if self.driver.options.backend == "fake":
                from drivers.ble.fake import air

                self._control = air(self.driver.options.fake_air).control
            elif self.driver._backend is None and sys.platform.startswith("linux"):
                from drivers.ble.adapter import BluezAdapterControl

                self._control = BluezAdapterControl()
        return self._control

    # -- lifecycle -----------------------------------------------------------------------
    async def open(self) -> None:
        """Start every adapter not scanning (recovering it first where it is in trouble)."""
        errors: list[DriverUnavailable] = []
        for r in self.list:
            if r.scanner is None and (r.task is None or r.task.done()):
                try:
                    await self._start(r)
                except DriverUnavailable as exc:
                    errors.append(exc)
        if not any(r.scanner is not None for r in self.list):
            raise errors[-1] if errors else DriverUnavailable("no BLE adapter could start", driver=self.driver.name)

    async def _start(self, r: Radio) -> None:
        from drivers.ble.radio import start_scanner

        if r.trouble is not None and self.control() is not None:
            await self._recover(r)
        on_advertisement, index = self.driver.on_advertisement, r.index

        def callback(device: Any, adv: Any) -> None:  # bleak wants exactly two parameters
            on_advertisement(device, adv, index)

        try:
            scanner, mode = await start_scanner(
                callback,
                mode=self.driver.scanning_mode(),
                adapter=r.adapter,
                backend=self.driver._resolve_backend(),
                driver=self.driver.name,
            )
        except DriverUnavailable as exc:
            message = str(exc.__cause__ or exc)
            r.detail.update({"state": "down", "last_error": str(exc)})
            if reset_worthy(message):
                r.trouble = message[:200]
            raise
        now = time.monotonic()
        r.scanner, r.mode, r.trouble, r.failures = scanner, mode, None, 0
        r.since_mono = r.last_adv_mono = r.last_check_mono = now  # the silence window starts now
        r.detail.update({"state": "scanning", "scanning_mode": mode, "last_error": None})
        first = next((x for x in self.list if x.scanner is not None), r)
        self.driver.status.details["scanning_mode"] = first.mode

    async def _recover(self, r: Radio) -> None:
        """One step of the reset ladder, if it is due; recorded as a ``ble_adapter_reset`` event."""
        control = self.control()
        now = time.monotonic()
        if control is None or not r.ladder.due(now):
            return
        step = r.ladder.next_step(now)
        reason = r.trouble or ""
        if "vanished" in reason or "not found" in reason:
            step = "reset"  # gone from BlueZ: a power cycle cannot reach it, a controller (USB) reset may
        name = r.bluez_name
        r.detail["state"] = "recovering"
        self.driver.log.warning("%s: adapter %s in trouble (%s): %s", self.driver.name, name, reason,
                                "power cycling it" if step == "power_cycle" else "resetting the controller")
        error: str | None = None
        try:
            async with asyncio.timeout(_STEP_TIMEOUT_S):
                if step == "power_cycle":
                    await control.power_cycle(name)
                else:
                    await control.reset(name)
        except DriverUnavailable as exc:
            error = str(exc)
        except TimeoutError:
            error = f"no answer within {_STEP_TIMEOUT_S:g} s"
        except Exception as exc:  # noqa: BLE001 - the BlueZ boundary must never stop the driver
            error = f"{type(exc).__name__}: {exc}"
        r.ladder.done(time.monotonic())
        with contextlib.suppress(Exception):  # what BlueZ says now, for status
            async with asyncio.timeout(5.0):
                r.detail["bluez"] = (await control.state(name)).as_dict()
        r.resets += 1
        last = {"at": time.time(), "step": step, "reason": reason, "ok": error is None, "error": error}
        r.detail.update({"resets": r.resets, "last_reset": last})
        if error:
            self.driver.log.warning("%s: %s of %s failed: %s", self.driver.name, step, name, error)
        self.driver._event("ble_adapter_reset", {"adapter": name, "step": step, "reason": r.trouble, "ok": error is None,
                                                 "error": error, "resets": r.resets})

    async def close(self) -> None:
        """Stop every scanner (the adapter may be gone: never raises)."""
        for r in self.list:
            await self._stop_scanner(r)

    async def stop(self) -> None:
        """Close, and end the background checks and restarts."""
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.close()

    async def _stop_scanner(self, r: Radio) -> None:
        scanner, r.scanner = r.scanner, None
        if scanner is None:
            return
        try:
            await scanner.stop()
        except Exception as exc:  # noqa: BLE001 - closing must not raise; the adapter may be gone
            self.driver.log.debug("%s: stopping the scanner on %s failed: %s", self.driver.name, r.label, exc)

    # -- after every read ------------------------------------------------------------------
    def heard(self, index: int, now: float) -> None:
        self.list[index].last_adv_mono = now

    def silence_deadline(self) -> float:
        """When the next adapter would count as silent (the read waits no longer than that)."""
        silence = self.driver.options.silence_timeout_s
        deadlines = [r.last_adv_mono + silence for r in self.list if r.scanner is not None]
        return min(deadlines) if deadlines else time.monotonic() + 1.0

    def watch(self, *, have_readings: bool) -> None:
        """Find stalled adapters; raise DriverIOError when none scans (and nothing was read)."""
        opts = self.driver.options
        now = time.monotonic()
        wall = time.time()
        control = self.control()
        for r in self.list:
            if r.scanner is None:
                if self.many and (r.task is None or r.task.done()) and any(x.scanner is not None for x in self.list):
                    r.task = self._spawn(self._restart(r))
                continue
            r.detail["last_advertisement_at"] = wall - (now - r.last_adv_mono) if r.last_adv_mono > r.since_mono \
                else r.detail["last_advertisement_at"]
            r.ladder.healthy(r.since_mono, now)
            if now - r.last_adv_mono >= opts.silence_timeout_s:
                self._stall(r, f"no BLE advertisement heard for {opts.silence_timeout_s:g} s on {r.label}: "
                               "scanner silent (adapter reset or powered off?)")
            elif control is not None and now - r.last_check_mono >= opts.adapter_check_s:
                r.last_check_mono = now
                self._spawn(self._check(r, control))
        if not have_readings and not any(r.scanner is not None for r in self.list):
            if any(r.task is not None and not r.task.done() for r in self.list):
                return  # a restart is under way
            message = self._last_stall or "no BLE adapter is scanning"
            self._last_stall = None
            raise DriverIOError(message if not self.many else f"no BLE adapter is scanning ({message})",
                                driver=self.driver.name)

    def _stall(self, r: Radio, why: str) -> None:
        self.driver.log.warning("%s: %s", self.driver.name, why)
        r.trouble = why
        r.detail.update({"state": "down", "last_error": why})
        self._last_stall = why
        scanner, r.scanner = r.scanner, None
        if scanner is not None:
            self._spawn(_stop_quietly(scanner))

    async def _check(self, r: Radio, control: AdapterControl) -> None:
        try:
            async with asyncio.timeout(10.0):
                st = await control.state(r.bluez_name)
        except (DriverUnavailable, TimeoutError) as exc:
            r.detail["bluez"] = {"error": str(exc) or "no answer"}
            return
        r.detail["bluez"] = st.as_dict()
        if r.scanner is None:
            return
        if not st.present:
            self._stall(r, f"adapter {r.bluez_name} vanished from BlueZ")
        elif st.powered is False:
            self._stall(r, f"adapter {r.bluez_name} is powered off")
        elif st.discovering is False and r.mode == "active":
            # (a passive scan runs through BlueZ's advertisement monitor, which never sets Discovering)
            self._stall(r, f"adapter {r.bluez_name} stopped discovering (BlueZ lost the scan)")

    async def _restart(self, r: Radio) -> None:
        """Bring one adapter back while others scan (several adapters only)."""
        delay = min(60.0, 0.5 * 2 ** r.failures) if r.failures else 0.0
        if delay:
            await asyncio.sleep(delay)  # backoff between failed restarts, not a poll
        try:
            await self._start(r)
        except DriverUnavailable as exc:
            r.failures += 1
            self.driver.noisy.warning(f"restart:{r.label}", "%s: adapter %s could not restart: %s", self.driver.name,
                                      r.label, exc)

    def _spawn(self, coro: Any) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task


async def _stop_quietly(scanner: Any) -> None:
    with contextlib.suppress(Exception):
        await scanner.stop()
