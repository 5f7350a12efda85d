"""BLE through the running agent into the store: replay state, battery swaps, Theengs, adapters.

In-process agents (``agent.daemon.Agent``) on the shipped fake radio, and one real agent
process (``python -m agent run``) fed through the fake radio's socket
(:func:`drivers.ble.fake.feed`) and SIGKILLed while encrypted readings flow. Every
outcome is read from the store the agent committed (or from ``coldgate status``), never
from the driver's memory.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from agent import config as configmod
from agent.control import ControlClient
from agent.daemon import Agent
from agent.store import Store
from drivers.ble import bthome, fake
from drivers.ble.scanner import BleDriver
from tests.drivers.ble_helpers import BTHOME, DATA, fresh_air
from tests.e2e.harness import AgentProcess, kill_leftovers, wait_until

MAC = "54:48:E6:8F:80:A5"
KEY_HEX = "231d39c1d7cc1ab1aee224cd096db932"
KEY = bytes.fromhex(KEY_HEX)
ENC_SENSOR = f'{{ mac = "{MAC}", sensor_id = "box-enc", bindkey = "{KEY_HEX}" }}'
THEENGS = json.loads((DATA / "theengs.json").read_text(encoding="utf-8"))["vectors"]


def write_config(tmp_path: Path, sensors: list[str], *, air: str = "default", commit_interval_s: float = 0.05,
                 driver_extra: str = "", gateway_id: str = "gw-ble") -> Path:
    cfg = tmp_path / "coldgate.toml"
    cfg.write_text(f"""
gateway_id = "{gateway_id}"
[store]
path = "store.db"
commit_interval_s = {commit_interval_s}
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
{driver_extra}
sensors = [
  {(',' + chr(10) + '  ').join(sensors)},
]
""")
    return cfg


def enc(counter: int, centi_c: int) -> dict[str, Any]:
    """An encrypted BTHome temperature frame with this counter (as the device sends it)."""
    objects = bytes([0x02]) + centi_c.to_bytes(2, "little", signed=True)
    return {"service_data": {BTHOME: bthome.encrypt(objects, MAC, KEY, counter)}}


def open_store(path: Path) -> Store:
    return Store.open(path, gateway_id="gw-ble", create=False, check=False)


def readings(path: Path, sensor_id: str | None = None) -> list[dict[str, Any]]:
    with open_store(path) as s:
        return s.records(type="reading", sensor_id=sensor_id)


def events(path: Path, name: str) -> list[dict[str, Any]]:
    with open_store(path) as s:
        return [e["details"] for e in s.records(type="event") if e["event"] == name]


def driver_state(path: Path) -> dict[str, Any]:
    with open_store(path) as s:
        return s.load_state("driver:ble") or {}


async def poll(predicate: Any, timeout: float = 20.0, what: str = "condition") -> Any:
    """Poll an observable outcome (the store, status) until it holds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.02)


@asynccontextmanager
async def running(cfg: Path) -> AsyncIterator[Agent]:
    """An agent running in this process until the block ends; it must stop cleanly."""
    agent = Agent(configmod.load(cfg), config_path=cfg)
    task = asyncio.create_task(agent.run())
    try:
        await asyncio.wait_for(agent.ready.wait(), 20)
        yield agent
    finally:
        agent.stop()
        assert await asyncio.wait_for(task, 20) == 0


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 90))


# -- 1. a battery swap --------------------------------------------------------------------
def test_battery_swap_through_the_agent_keeps_readings_flowing_with_exactly_one_counter_reset_record(
        tmp_path: Path) -> None:
    air = fresh_air()
    cfg = write_config(tmp_path, [ENC_SENSOR], air=air.name)
    store = tmp_path / "store.db"
    # before the swap 5000..5002, after it the device counts again from 1; each frame is
    # sent twice, as a BTHome device repeats its advertisement
    frames = [(5000, 410), (5001, 420), (5002, 430), (1, 440), (2, 450), (3, 460)]

    async def scenario() -> None:
        async with running(cfg):
            await air.wait_started(timeout=10)
            for counter, centi in frames:
                for _ in range(2):
                    air.advertise(MAC, **enc(counter, centi))
                await asyncio.sleep(0)  # radio timing: let the driver read between frames
            await poll(lambda: len(readings(store)) == len(frames), what="every reading committed")

    run(scenario())
    assert [r["value"] for r in readings(store)] == [4.1, 4.2, 4.3, 4.4, 4.5, 4.6], \
        "every frame before and after the swap is stored once"
    assert events(store, "ble_counter_reset") == [
        {"driver": "ble", "sensor_id": "box-enc", "mac": MAC, "old_counter": 5002, "new_counter": 1}]
    assert events(store, "ble_counter_refused") == []
    state = driver_state(store)["sensors"]["box-enc"]
    assert (state["c"], state["r"], state["b"]) == (3, 1, 5002), "the restart is in the committed state"


def test_state_is_committed_in_the_transaction_of_the_readings_it_admitted_when_an_event_cuts_in(
        tmp_path: Path) -> None:
    """The driver's state goes to the writer with its batch, so no commit holds a reading
    without the state that admitted it: here the battery swap's own event forces a commit
    while the driver waits for room in a full intake (the moment a state given *after*
    the readings was still missing)."""
    from agent.ingest import Ingest
    from agent.intake import Intake
    from agent.stamp import Stamper
    from agent.timebase import Clock
    from agent.writer import Writer, spill_path
    from tests.drivers.ble_helpers import make_driver

    frames = {5000: 410, 1: 420, 2: 430, 3: 440}
    counter_at = {centi / 100: counter for counter, centi in frames.items()}
    path = tmp_path / "store.db"
    commits: list[tuple[int | None, int | None]] = []  # (newest stored reading's counter, stored counter)

    def check(head: int) -> None:
        with Store.open(path, gateway_id="gw", create=False, check=False) as s:
            stored = s.records(type="reading")
            state = (s.load_state("driver:ble") or {}).get("sensors", {}).get("box-enc", {})
        commits.append((counter_at[stored[-1]["value"]] if stored else None, state.get("c")))

    stamper = Stamper(Clock("assume_synced"))
    intake = Intake(stamper, capacity=1)  # every delivery fills it: the driver waits for room
    cfg = configmod.loads('gateway_id = "gw"\n[recording]\nrecord_interval_s = 0\n')
    writer = Writer(lambda: Store.open(path, gateway_id="gw", stamper=stamper), intake, Ingest(cfg, stamper),
                    stamper, commit_interval_s=1.0, commit_max=500, spill=spill_path(path), on_commit=check)
    writer.max_wait_s = 0.05

    async def scenario() -> None:
        air = fresh_air()
        driver = make_driver(air, [{"mac": MAC, "sensor_id": "box-enc", "bindkey": KEY_HEX}])
        task = asyncio.create_task(driver.run(intake.sink("ble")))
        await air.wait_started()
        for i, (counter, centi) in enumerate(frames.items()):
            air.advertise(MAC, **enc(counter, centi))
            await poll(lambda i=i: driver.status.counters["readings"] > i and not intake.readings,
                       what="the writer taking the reading")
        driver.stop()
        await asyncio.wait_for(task, 10)

    writer.start()
    try:
        asyncio.run(asyncio.wait_for(scenario(), 30))
    finally:
        writer.stop()
    with_readings = [c for c in commits if c[0] is not None]
    assert with_readings and all(newest == state for newest, state in with_readings), commits
    assert [r["value"] for r in readings(path)] == [4.1, 4.2, 4.3, 4.4]


# -- 2. SIGKILL and restart: a real agent process -------------------------------------------
@pytest.fixture()
def no_leftovers() -> Iterator[None]:
    yield
    kill_leftovers()


def counter_of(value: float) -> int:
    """The frames of the process test carry their counter in their value (see below)."""
    return 5000 + round(value * 100) - 100


def enc_feed(sock: str, counter: int) -> None:
    fake.feed(sock, MAC, **enc(counter, counter - 5000 + 100))  # 1.00 °C at 5000, +0.01 a frame


def status_of(proc: AgentProcess) -> dict[str, Any]:
    return dict(ControlClient(proc.socket, timeout=10).request("status"))


def scanning(proc: AgentProcess) -> bool:
    adapters = status_of(proc)["drivers"]["ble"].get("details", {}).get("adapters", {})
    return any(a["state"] == "scanning" for a in adapters.values())


@pytest.mark.slow
def test_sigkilled_agent_restarted_refuses_a_replayed_old_frame_and_never_stores_a_counter_behind_a_reading(
        tmp_path: Path, no_leftovers: None) -> None:
    sock = str(tmp_path / "air.sock")
    cfg = write_config(tmp_path, [ENC_SENSOR], air="process", gateway_id="gw-e2e",
                       driver_extra=f'fake_feed = "{sock}"')
    store = tmp_path / "store.db"
    proc = AgentProcess(cfg).start()
    wait_until(lambda: scanning(proc), 20, "the agent scanning")

    # frames flow (paced as a busy radio) and the agent is killed in the middle of them
    counter = 5000
    while len(readings(store)) < 60:
        for _ in range(10):
            enc_feed(sock, counter)
            counter += 1
            time.sleep(0.002)  # radio pacing, not waiting for an outcome
        assert counter < 8000, "readings are not being committed"
    proc.kill()  # SIGKILL

    stored = [counter_of(r["value"]) for r in readings(store)]
    committed = driver_state(store)["sensors"]["box-enc"]["c"]
    assert committed >= max(stored), f"stored counter {committed} behind a stored reading ({max(stored)})"
    assert len(stored) == len(set(stored)) and stored == sorted(stored)

    proc.start()
    wait_until(lambda: scanning(proc), 20, "the restarted agent scanning")
    replayed = stored[len(stored) // 2]  # a frame recorded off the air before the kill
    enc_feed(sock, replayed)
    enc_feed(sock, committed + 1)  # then the device's next frame
    wait_until(lambda: counter_of(readings(store)[-1]["value"]) == committed + 1, 20, "the next frame stored")
    wait_until(lambda: events(store, "ble_counter_refused"), 20, "the refusal recorded")
    assert proc.stop() == 0

    after = [counter_of(r["value"]) for r in readings(store)]
    assert after == [*stored, committed + 1], "the replayed frame is not stored again"
    refused = events(store, "ble_counter_refused")
    assert [(e["counter"], e["last_counter"], e["reason"]) for e in refused] == [(replayed, committed, "went_back")]
    assert driver_state(store)["sensors"]["box-enc"]["c"] >= max(after)


# -- 3. Theengs Decoder's published frames into the store -------------------------------------
def test_theengs_vectors_through_the_agent_are_stored_with_model_and_brand(tmp_path: Path) -> None:
    pytest.importorskip("TheengsDecoder")
    assert len({v["model_id"] for v in THEENGS}) >= 10
    air = fresh_air()
    macs = [f"C0:FF:EE:00:02:{i:02X}" for i in range(len(THEENGS))]
    sensors = [f'{{ mac = "{mac}", sensor_id = "{v["id"]}", format = "theengs" }}'
               for mac, v in zip(macs, THEENGS, strict=True)]
    cfg = write_config(tmp_path, sensors, air=air.name)
    store = tmp_path / "store.db"
    want = sum(len(v["readings"]) for v in THEENGS)

    async def scenario() -> None:
        async with running(cfg):
            await air.wait_started(timeout=10)
            for mac, vec in zip(macs, THEENGS, strict=True):
                if "manufacturer_hex" in vec:
                    raw = bytes.fromhex(vec["manufacturer_hex"])
                    kw: dict[str, Any] = {"manufacturer_data": {int.from_bytes(raw[:2], "little"): raw[2:]}}
                else:
                    kw = {"service_data": {int(vec["service_uuid16"], 16): bytes.fromhex(vec["hex"])}}
                air.advertise(mac, rssi=-57, local_name=vec["name"], **kw)
            await poll(lambda: len(readings(store)) == want, what="every Theengs reading committed")

    run(scenario())
    got = readings(store)
    for vec in THEENGS:
        mine = [r for r in got if r["sensor_id"] == vec["id"]]
        assert {r["quantity"]: (r["value"], r["unit"]) for r in mine} == {
            q: (pytest.approx(v, rel=1e-9, abs=1e-9), u) for q, (v, u) in vec["readings"].items()}, vec["id"]
        assert {(r["model"], r["brand"]) for r in mine} == {(vec["model"], vec["brand"])}, vec["id"]
        assert {r["rssi"] for r in mine} == {-57}
    identified = {e["sensor_id"]: e["model_id"] for e in events(store, "ble_sensor_identified")}
    assert identified == {v["id"]: v["model_id"] for v in THEENGS}
    assert driver_state(store)["sensors"][THEENGS[0]["id"]]["m"] == THEENGS[0]["model_id"]


# -- 4. a stalled adapter, in the store and in `coldgate status` --------------------------------
def test_stalled_adapter_leaves_a_reset_record_and_shows_in_coldgate_status_json_and_text(tmp_path: Path) -> None:
    air = fresh_air()
    bt_mac = "A4:C1:38:8D:18:B2"
    cfg = write_config(tmp_path, [f'{{ mac = "{bt_mac}", sensor_id = "box-bt" }}'], air=air.name,
                       driver_extra='adapter = "hci0"\nsilence_timeout_s = 0.3')
    store = tmp_path / "store.db"

    def bt(packet_id: int, centi: int) -> dict[str, Any]:
        return {"service_data": {BTHOME: bytes([0x40, 0x00, packet_id, 0x02]) + centi.to_bytes(2, "little")}}

    async def cli(*args: str) -> tuple[int, str]:
        p = await asyncio.create_subprocess_exec(sys.executable, "-m", "agent", *args, "--config", str(cfg),
                                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = await asyncio.wait_for(p.communicate(), 30)
        assert p.returncode is not None
        return p.returncode, out.decode() + err.decode()

    async def scenario() -> tuple[dict[str, Any], str]:
        # a neighbour's device advertising all the time: a well adapter is never silent
        air.add_beacon("11:22:33:44:55:66", manufacturer_data={0x004C: b"\x02\x15"}, interval_s=0.03)
        async with running(cfg) as agent:
            await air.wait_started(timeout=10)
            air.advertise(bt_mac, **bt(1, 500))
            await poll(lambda: len(readings(store)) == 1, what="the first reading")
            air.stall_adapter("hci0")  # silent, and every new scan refused (InProgress)
            await poll(lambda: events(store, "ble_adapter_reset"), what="the reset record")
            await air.wait_started(2, timeout=20)
            air.advertise(bt_mac, **bt(2, 510))
            await poll(lambda: len(readings(store)) == 2, what="readings after the reset")

            async def scanning_again() -> bool:
                a = (await agent.status())["drivers"]["ble"]["details"]["adapters"]["hci0"]
                return bool(a["state"] == "scanning")

            deadline = time.monotonic() + 20
            while not await scanning_again():
                assert time.monotonic() < deadline, "adapter not scanning again"
                await asyncio.sleep(0.05)
            code, out = await cli("status", "--json")
            assert code == 0, out
            code, text = await cli("status")
            assert code == 0, text
            return json.loads(out), text

    data, text = run(scenario())
    [reset] = events(store, "ble_adapter_reset")
    assert (reset["adapter"], reset["step"], reset["ok"]) == ("hci0", "power_cycle", True)
    assert "no BLE advertisement heard for 0.3 s" in reset["reason"]
    adapter = data["drivers"]["ble"]["details"]["adapters"]["hci0"]
    assert adapter["state"] == "scanning" and adapter["resets"] == 1
    assert adapter["last_reset"]["step"] == "power_cycle" and adapter["last_reset"]["ok"] is True
    line = next(x for x in text.splitlines() if "adapter hci0" in x)
    assert "scanning (active)" in line and "1 reset" in line and "(last power_cycle at " in line and ", ok)" in line, line


# -- 5. the stored state reaches the driver before it runs ----------------------------------
def test_driver_gets_the_stored_state_before_it_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    air = fresh_air()
    cfg = write_config(tmp_path, [ENC_SENSOR], air=air.name)
    store = tmp_path / "store.db"

    async def first() -> None:
        async with running(cfg):
            await air.wait_started(timeout=10)
            air.advertise(MAC, **enc(7000, 400))
            await poll(lambda: driver_state(store).get("sensors", {}).get("box-enc", {}).get("c") == 7000,
                       what="the state committed")

    run(first())
    committed = driver_state(store)
    calls: list[tuple[str, Any]] = []
    load, start = BleDriver.load_state, BleDriver.run

    def spy_load(self: BleDriver, state: Any) -> None:
        calls.append(("load_state", json.loads(json.dumps(state))))
        load(self, state)

    async def spy_run(self: BleDriver, sink: Any) -> None:
        calls.append(("run", None))
        await start(self, sink)

    monkeypatch.setattr(BleDriver, "load_state", spy_load)
    monkeypatch.setattr(BleDriver, "run", spy_run)

    async def second() -> None:
        async with running(cfg):
            await air.wait_started(2, timeout=10)
            air.advertise(MAC, **enc(6999, 390))  # older than the stored counter: refused
            await poll(lambda: events(store, "ble_counter_refused"), what="the refusal")

    run(second())
    assert calls[:2] == [("load_state", committed), ("run", None)]
    assert [r["value"] for r in readings(store)] == [4.0]


# -- the agent's wiring: a reload does not lose a state not yet committed ----------------------
def test_driver_restarted_by_a_reload_takes_its_latest_state_even_before_it_is_committed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # a driver that stops at once (its reads are short), so the reload does not wait out a commit
    monkeypatch.setattr(BleDriver, "read_timeout_s", 0.02)
    air = fresh_air()
    # the longest commit interval: the readings and their state are (almost always) still
    # uncommitted at the reload; committed or not, the restarted driver must have them
    cfg = write_config(tmp_path, [ENC_SENSOR], air=air.name, commit_interval_s=1)
    store = tmp_path / "store.db"

    async def scenario() -> None:
        async with running(cfg) as agent:
            await air.wait_started(timeout=10)
            air.advertise(MAC, **enc(5000, 400))
            air.advertise(MAC, **enc(5001, 410))
            await poll(lambda: agent.drivers.status()["ble"]["counters"].get("readings") == 2, what="delivery")
            await agent.status()  # a call through the writer: everything delivered before it is taken
            cfg.write_text(cfg.read_text().replace('scanning_mode = "active"',
                                                   'scanning_mode = "active"\nsilence_timeout_s = 600'))
            result = await agent.reload()
            assert result["applied"] and result["drivers"]["restarted"] == ["ble"]
            await air.wait_started(2, timeout=10)
            air.advertise(MAC, **enc(5000, 400))  # the first frame again, replayed
            air.advertise(MAC, **enc(5002, 420))
            await poll(lambda: agent.drivers.status()["ble"]["counters"].get("advertisements") == 2,
                       what="both frames handled by the restarted driver")

    run(scenario())
    assert [r["value"] for r in readings(store)] == [4.0, 4.1, 4.2]
    assert [(e["counter"], e["last_counter"]) for e in events(store, "ble_counter_refused")] == [(5000, 5001)]


# -- the fake radio's feed, and the status text ------------------------------------------------
def test_fake_feed_takes_advertisements_and_faults_from_outside_and_skips_malformed_messages(tmp_path: Path) -> None:
    from drivers.ble.options import BleOptions
    from tests.drivers.ble_helpers import CollectingSink, FastBle

    air = fresh_air()
    sock = str(tmp_path / "feed.sock")
    opts = BleOptions.model_validate({"sensors": [{"mac": MAC, "sensor_id": "box-enc", "bindkey": KEY_HEX}],
                                      "backend": "fake", "fake_air": air.name, "fake_feed": sock,
                                      "scanning_mode": "active", "silence_timeout_s": 600})

    async def scenario() -> CollectingSink:
        driver = FastBle("ble", opts)
        sink = CollectingSink()
        task = asyncio.create_task(driver.run(sink))
        await air.wait_started()
        import socket as sockets

        with sockets.socket(sockets.AF_UNIX, sockets.SOCK_DGRAM) as raw:
            for junk in (b"not json", b"[1, 2]", b'{"address": 5}', b'{"address": "AA", "service_data": {"fcd2": "zz"}}',
                         b'{"fault": "explode"}'):
                raw.sendto(junk, sock)
        fake.feed(sock, MAC, rssi=-70, **enc(9000, 555))
        await sink.wait_for(lambda: len(sink.readings) == 1)
        fake.feed_fault(sock, "remove_adapter")
        await poll(lambda: not air.scanning, what="the adapter gone")
        driver.stop()
        await asyncio.wait_for(task, 10)
        return sink

    sink = run(scenario())
    assert [(r.value, r.rssi) for r in sink.readings] == [(5.55, -70)]
    assert air.feed_errors == 5


def test_fake_feed_needs_the_fake_backend() -> None:
    from drivers.ble.options import BleOptions

    with pytest.raises(ValueError, match="fake_feed feeds the fake radio"):
        BleOptions.model_validate({"sensors": [{"mac": MAC, "sensor_id": "s"}], "fake_feed": "/tmp/x.sock"})


def test_status_text_shows_each_adapter_its_state_and_resets() -> None:
    from agent.status import render

    data = {"running": True, "pid": 1, "gateway_id": "gw", "drivers": {"ble": {
        "type": "ble", "state": "running", "details": {"adapters": {
            "hci0": {"state": "scanning", "scanning_mode": "passive", "resets": 0, "last_reset": None},
            "hci1": {"state": "down", "scanning_mode": "active", "resets": 2,
                     "last_error": "adapter hci1 vanished from BlueZ",
                     "last_reset": {"at": 1_796_000_000.0, "step": "reset", "ok": False,
                                    "error": "hci1 did not come back after a controller reset"}}}}}}}
    lines = render(data).splitlines()
    assert "  adapter hci0: scanning (passive), 0 resets" in lines
    assert ("  adapter hci1: down, 2 resets (last reset at 2026-11-30 00:53:20 UTC, FAILED: hci1 did not come back "
            "after a controller reset) — adapter hci1 vanished from BlueZ") in lines
