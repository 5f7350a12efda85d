"""BLE through the running agent into the store: advertisements injected at bleak's backend seam."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from agent import config as configmod
from agent.daemon import Agent
from agent.store import Store
from drivers.ble import bthome
from tests.drivers.ble_helpers import BTHOME, RUUVI, VECTORS, fresh_air

CONFIG = """
gateway_id = "gw-ble"
[store]
path = "store.db"
commit_interval_s = 0.05
[control]
socket = "control.sock"
[time]
sync_source = "assume_synced"
[recording]
record_interval_s = 0

[[drivers]]
name = "ble"
type = "ble"
backend = "fake"
fake_air = "{air}"
scanning_mode = "active"
silence_timeout_s = 0.3
sensors = [
  {{ mac = "A4:C1:38:8D:18:B2", sensor_id = "shipper-bt" }},
  {{ mac = "CB:B8:33:4C:88:4F", sensor_id = "shipper-ruuvi", format = "ruuvi" }},
  {{ mac = "54:48:E6:8F:80:A5", sensor_id = "shipper-enc", bindkey = "{key}" }},
]
"""
KEY_HEX = "231d39c1d7cc1ab1aee224cd096db932"


async def poll(predicate: Any, timeout: float = 15.0) -> Any:
    """Poll the store (another thread writes it) until ``predicate`` holds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        await asyncio.sleep(0.02)
    raise AssertionError("condition not met in time")


def records(path: Path, **kw: Any) -> list[dict[str, Any]]:
    with Store.open(path, gateway_id="gw-ble", create=False, check=False) as s:
        return s.records(**kw)


def test_ble_advertisements_reach_the_store_deduplicated_and_survive_an_adapter_reset(tmp_path: Path) -> None:
    air = fresh_air()
    cfg_path = tmp_path / "c.toml"
    cfg_path.write_text(CONFIG.format(air=air.name, key=KEY_HEX))
    store_path = tmp_path / "store.db"

    def bt(payload: bytes) -> dict:
        return {"service_data": {BTHOME: payload}}

    async def scenario() -> None:
        agent = Agent(configmod.load(cfg_path), config_path=cfg_path)
        task = asyncio.create_task(agent.run())
        await air.wait_started(timeout=10)
        air.advertise("A4:C1:38:8D:18:B2", rssi=-48, **bt(bytes.fromhex("40" + "0001" + "02c409")))
        air.advertise("A4:C1:38:8D:18:B2", rssi=-48, **bt(bytes.fromhex("40" + "0001" + "02c409")))  # duplicate
        air.advertise(
            "CB:B8:33:4C:88:4F", rssi=-66, manufacturer_data={RUUVI: bytes.fromhex(VECTORS["ruuvi"][1]["hex"])}
        )
        air.advertise(
            "54:48:E6:8F:80:A5",
            **bt(bthome.encrypt(bytes.fromhex("02ca09"), "54:48:E6:8F:80:A5", bytes.fromhex(KEY_HEX), 5)),
        )
        air.advertise(
            "54:48:E6:8F:80:A5", **bt(bthome.encrypt(bytes.fromhex("020000"), "54:48:E6:8F:80:A5", bytes(16), 6))
        )  # wrong key
        await poll(lambda: len(records(store_path, type="reading")) >= 2)
        await poll(lambda: any(r["event"] == "ble_wrong_key" for r in records(store_path, type="event")))
        status = (await agent.status())["drivers"]["ble"]
        assert status["details"]["sensors"]["shipper-bt"]["rssi"] == -48
        assert status["counters"]["duplicates"] == 1 and status["counters"]["wrong_key"] == 1

        air.reset_adapter()  # the scan goes silent; the watchdog restarts it
        await air.wait_started(2, timeout=10)
        air.advertise("A4:C1:38:8D:18:B2", rssi=-50, **bt(bytes.fromhex("40" + "0002" + "02d009")))
        await poll(lambda: any(r["value"] == 25.12 for r in records(store_path, type="reading")))
        agent.stop()
        assert await asyncio.wait_for(task, 10) == 0

    asyncio.run(scenario())
    readings = records(store_path, type="reading")
    got = [(r["sensor_id"], r["quantity"], r["value"], r["unit"], r.get("rssi")) for r in readings]
    assert got == [
        ("shipper-bt", "temperature", 25.0, "Cel", -48),
        ("shipper-enc", "temperature", 25.06, "Cel", -60),
        ("shipper-bt", "temperature", 25.12, "Cel", -50),
    ], "the duplicate is stored once, the all-invalid Ruuvi frame stores nothing, the wrong key nothing"
    events = [(r["event"], r["details"]) for r in records(store_path, type="event")]
    errors = [d for e, d in events if e == "driver_error"]
    assert errors and errors[0]["driver"] == "ble" and errors[0]["error"] == "DriverIOError"
    assert "driver_recovered" in [e for e, _ in events]
