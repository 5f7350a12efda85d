"""The running set of drivers: what status shows while they start, what a reload restarts."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from agent.config import DriverConfig
from agent.driverset import DriverSet
from agent.intake import Intake
from agent.stamp import Stamper
from agent.timebase import Clock


def sim(name: str, **extra: Any) -> DriverConfig:
    return DriverConfig.model_validate({"name": name, "type": "sim", "sensors": [{"id": f"{name}-1"}], **extra})


def test_status_lists_every_configured_driver_while_the_first_is_still_loading_its_state() -> None:
    async def scenario() -> None:
        intake = Intake(Stamper(Clock("assume_synced")))
        loading = asyncio.Event()
        release = asyncio.Event()

        async def load_state(name: str) -> Mapping[str, Any] | None:
            loading.set()
            await release.wait()
            return None

        ds = DriverSet(intake, load_state)
        starting = asyncio.create_task(ds.start([sim("a"), sim("b"), sim("c", enabled=False)]))
        await asyncio.wait_for(loading.wait(), 5)
        assert {n: d["state"] for n, d in ds.status().items()} == {
            "a": "starting", "b": "starting", "c": "disabled"}
        release.set()
        await asyncio.wait_for(starting, 5)
        assert set(ds.drivers) == {"a", "b"}
        await ds.stop_all()

    asyncio.run(scenario())


def test_apply_restarts_only_the_driver_whose_options_changed() -> None:
    async def scenario() -> None:
        intake = Intake(Stamper(Clock("assume_synced")))

        async def load_state(name: str) -> Mapping[str, Any] | None:
            return None

        ds = DriverSet(intake, load_state)
        await ds.start([sim("a"), sim("b")])
        kept = ds.drivers["a"]
        verdict = await ds.apply([sim("a"), sim("b", seed=7), sim("d")])
        assert verdict == {"started": ["d"], "stopped": [], "restarted": ["b"], "kept": ["a"]}
        assert ds.drivers["a"] is kept
        await ds.stop_all()

    asyncio.run(scenario())


def test_status_gives_every_wall_time_in_a_drivers_details_as_rfc3339_and_leaves_other_numbers() -> None:
    # A BLE driver keeps epoch seconds at several depths of its details (per sensor, per
    # adapter, in the last reset); status --json promises RFC 3339 for every time.
    from agent.timebase import rfc3339

    async def scenario() -> None:
        intake = Intake(Stamper(Clock("assume_synced")))

        async def load_state(name: str) -> Mapping[str, Any] | None:
            return None

        ds = DriverSet(intake, load_state)
        await ds.start([sim("a")])
        t = 1_796_000_000.25
        st = ds.drivers["a"].status
        st.details.update({
            "last_advertisement_at": t, "sensors": {"box-1": {"last_heard": t, "last_reading_at": t, "rssi": -71}},
            "adapters": {"hci0": {"resets": 1, "last_reset": {"at": t, "step": "power_cycle", "ok": True}}}})
        d = ds.status()["a"]["details"]
        assert d["last_advertisement_at"] == rfc3339(t) and d["last_advertisement_at"].endswith("Z")
        assert d["sensors"]["box-1"] == {"last_heard": rfc3339(t), "last_reading_at": rfc3339(t), "rssi": -71}
        assert d["adapters"]["hci0"] == {"resets": 1, "last_reset": {"at": rfc3339(t), "step": "power_cycle",
                                                                      "ok": True}}
        assert isinstance(st.details["sensors"]["box-1"]["last_heard"], float), "the driver's own copy is untouched"
        await ds.stop_all()

    asyncio.run(scenario())
