"""The drivers a config names, each running as a task: started, compared, stopped.

A reload restarts only the drivers whose configuration changed (type, ``enabled`` or
any option): a driver whose options are unchanged keeps its port open and its scan
running, so nothing in flight is put at risk by a change of rules. A driver that cannot
even be built (unknown type, a library missing, bad options) is reported, with a
``driver_error`` event, and the others run.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from agent.config import DriverConfig
from agent.exc import ColdgateError
from agent.intake import Intake
from agent.timebase import rfc3339
from drivers import registry
from drivers.base import Driver

log = logging.getLogger("coldgate")

#: How long a stopping driver may take to return from its read (then its task is cancelled).
STOP_TIMEOUT_S = 5.0


def _identity(dc: DriverConfig) -> tuple[Any, ...]:
    return (dc.type, dc.enabled, json.dumps(dc.options, sort_keys=True, default=str))


class DriverSet:
    """The running drivers; ``load_state(name)`` gives a driver its persisted state."""

    def __init__(self, intake: Intake, load_state: Callable[[str], Awaitable[Mapping[str, Any] | None]]) -> None:
        self.intake = intake
        self.load_state = load_state
        self.drivers: dict[str, Driver] = {}
        self.errors: dict[str, str] = {}
        self._configs: dict[str, DriverConfig] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def declare(self, configs: Sequence[DriverConfig]) -> None:
        """Name the drivers about to start: a status asked meanwhile lists them as starting."""
        self._configs.update((dc.name, dc) for dc in configs)

    async def start(self, configs: Sequence[DriverConfig]) -> None:
        self.declare(configs)
        for dc in configs:
            await self._start_one(dc)

    async def apply(self, configs: Sequence[DriverConfig]) -> dict[str, list[str]]:
        """Bring the running set to ``configs``; what was started, stopped, restarted, kept."""
        new = {dc.name: dc for dc in configs}
        old = self._configs
        stopped = [n for n in old if n not in new]
        changed = [n for n in new if n in old and _identity(new[n]) != _identity(old[n])]
        started = [n for n in new if n not in old]
        kept = [n for n in new if n in old and n not in changed]
        await self._stop([*stopped, *changed])
        for name in stopped:
            self._configs.pop(name, None)
        for name in [*changed, *started]:
            await self._start_one(new[name])
        return {"started": started, "stopped": stopped, "restarted": changed, "kept": kept}

    async def _start_one(self, dc: DriverConfig) -> None:
        self._configs[dc.name] = dc
        self.errors.pop(dc.name, None)
        if not dc.enabled:
            return
        try:
            cls = registry.get(dc.type)
            driver = cls(dc.name, cls.Options.model_validate(dc.options))
        except (ColdgateError, KeyError, ValueError) as exc:
            msg = str(exc.args[0]) if isinstance(exc, KeyError) else str(exc)
            self.errors[dc.name] = msg
            log.error("driver %s (%s) cannot start: %s", dc.name, dc.type, msg)
            self.intake.put_item(self.intake.stamper.event("driver_error", {
                "driver": dc.name, "type": dc.type, "error": "DriverUnavailable", "message": msg, "phase": "load"}))
            return
        state = await self.load_state(dc.name)
        if state:
            try:
                driver.load_state(state)
            except Exception as exc:  # noqa: BLE001 - a state it cannot read is not fatal
                log.warning("driver %s could not take its saved state (%s); starting without it", dc.name, exc)
        self.drivers[dc.name] = driver
        self._tasks[dc.name] = asyncio.create_task(driver.run(self.intake.sink(dc.name)), name=f"driver:{dc.name}")

    async def _stop(self, names: Sequence[str]) -> None:
        drivers = [self.drivers[n] for n in names if n in self.drivers]
        for d in drivers:
            d.stop()
        tasks = [self._tasks[n] for n in names if n in self._tasks]
        if tasks:
            _, still = await asyncio.wait(tasks, timeout=STOP_TIMEOUT_S)
            for t in still:  # stuck in a read: cancelled; what it delivered so far is kept
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for n in names:
            self.drivers.pop(n, None)
            self._tasks.pop(n, None)
            self.errors.pop(n, None)

    async def stop_all(self) -> None:
        await self._stop(list(self._configs))

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, dc in self._configs.items():
            d = self.drivers.get(name)
            if d is not None:
                out[name] = {"type": d.type_name, **_dated(d.status.as_dict())}
            elif name in self.errors:
                out[name] = {"type": dc.type, "state": "unavailable", "last_error": self.errors[name]}
            else:  # enabled but not built yet: its saved state is being loaded
                out[name] = {"type": dc.type, "state": "starting" if dc.enabled else "disabled"}
        return out

    def all_running(self) -> bool:
        return all(t.done() is False for t in self._tasks.values())


#: the keys of a driver's status, at any depth of its details, that hold a wall time: epoch
#: seconds inside the driver, RFC 3339 in what ``status`` answers (``--json`` included)
TIME_KEYS = frozenset({"last_error_at", "failing_since", "recovered_at", "next_retry_at", "last_heard",
                       "last_reading_at", "last_advertisement_at", "at"})


def _dated(value: Any, key: str | None = None) -> Any:
    """A copy of a driver's status with every wall time in it as RFC 3339."""
    if isinstance(value, dict):
        return {k: _dated(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_dated(v) for v in value]
    if key in TIME_KEYS and isinstance(value, (int, float)) and not isinstance(value, bool):
        return rfc3339(value)
    return value


__all__ = ["TIME_KEYS", "DriverSet"]
