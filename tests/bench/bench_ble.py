"""BLE throughput: decoded advertisements per second, and CPU µs per advertisement.

Two runs, both with advertisements injected at bleak's backend seam (drivers.ble.fake,
through the real ``BleakScanner``); a mix of plain BTHome, encrypted BTHome (AES-CCM),
Ruuvi RAWv2 and pvvx frames, each with a fresh packet id / sequence / counter so none
is dropped as a duplicate:

driver
    ``BleDriver.run(sink)`` into a counting sink: the decode + dispatch path alone;
theengs
    the same, for ``format = "theengs"`` sensors: Theengs Decoder's published frames of
    17 models (tests/data/ble/theengs.json) through the driver (needs coldgate[theengs]);
store, store-theengs
    the whole agent (``agent.daemon.Agent`` in this process: intake, writer thread, group
    commit, ``record_interval_s = 0``) into its SQLite store, until every reading is
    committed; the mix above, then the Theengs models.

CPU is the whole process's (every thread), per advertisement.

    .venv/bin/python tests/bench/bench_ble.py [--ads 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from drivers.base import Reading  # noqa: E402
from drivers.ble import bthome  # noqa: E402
from drivers.ble.fake import FakeAir, air  # noqa: E402
from drivers.ble.scanner import BleDriver, BleOptions  # noqa: E402

KEY = bytes.fromhex("231d39c1d7cc1ab1aee224cd096db932")
SENSORS: list[dict[str, Any]] = [
    {"mac": "A4:C1:38:8D:18:B2", "sensor_id": "bt"},
    {"mac": "54:48:E6:8F:80:A5", "sensor_id": "enc", "bindkey": KEY.hex()},
    {"mac": "CB:B8:33:4C:88:4F", "sensor_id": "ruuvi", "format": "ruuvi"},
    {"mac": "A4:C1:38:02:83:F4", "sensor_id": "pvvx", "format": "atc"},
]
# readings per advertisement of each kind (bt: temp+hum; enc: temp+hum; ruuvi: 8; pvvx: 4)
PER_AD = [2, 2, 8, 4]


def cpu() -> float:
    t = os.times()
    return t.user + t.system


def make_ads(n: int) -> list[tuple[str, dict[str, Any]]]:
    ads: list[tuple[str, dict[str, Any]]] = []
    ruuvi = bytearray.fromhex("0512fc5394c37c0004fffc040cac364200cdcbb8334c884f")
    pvvx = bytearray.fromhex("f4830238c1a4a9066911b60b58f70d")
    for i in range(n):
        kind = i % 4
        if kind == 0:
            ads.append(
                (
                    "A4:C1:38:8D:18:B2",
                    {"service_data": {0xFCD2: bytes([0x40, 0x00, i & 0xFF, 0x02, 0xC4, 0x09, 0x03, 0xBF, 0x13])}},
                )
            )
        elif kind == 1:
            frame = bthome.encrypt(bytes.fromhex("02ca0903bf13"), "54:48:E6:8F:80:A5", KEY, i + 1)
            ads.append(("54:48:E6:8F:80:A5", {"service_data": {0xFCD2: frame}}))
        elif kind == 2:
            ruuvi[16:18] = (i % 65535).to_bytes(2, "big")
            ads.append(("CB:B8:33:4C:88:4F", {"manufacturer_data": {0x0499: bytes(ruuvi)}}))
        else:
            pvvx[13] = i & 0xFF  # the frame counter
            ads.append(("A4:C1:38:02:83:F4", {"service_data": {0x181A: bytes(pvvx)}}))
    return ads


def expected_readings(n: int) -> int:
    return sum(PER_AD[i % 4] for i in range(n))


class CountingSink:
    def __init__(self) -> None:
        self.n = 0
        self.done = asyncio.Event()
        self.target = 0

    def reading(self, reading: Reading) -> None:
        self.n += 1
        if self.n >= self.target:
            self.done.set()

    def driver_event(self, driver: str, event: str, details: Any) -> None:
        print(f"  event: {event} {dict(details)}", file=sys.stderr)


async def inject(the_air: FakeAir, ads: list[tuple[str, dict[str, Any]]], chunk: int = 200) -> None:
    for start in range(0, len(ads), chunk):
        for mac, kw in ads[start : start + chunk]:
            the_air.advertise(mac, rssi=-60, **kw)
        await asyncio.sleep(0)  # let the driver drain, as the radio would between events


async def bench_driver(n: int) -> dict[str, float]:
    the_air = air("bench-driver")
    ads = make_ads(n)
    opts = BleOptions.model_validate({"sensors": SENSORS, "scanning_mode": "active", "queue_size": n + 1})
    driver = BleDriver("ble", opts, scanner_backend=the_air.backend)
    sink = CountingSink()
    sink.target = expected_readings(n)
    task = asyncio.create_task(driver.run(sink))
    await the_air.wait_started()
    t0, c0 = time.perf_counter(), cpu()
    await inject(the_air, ads)
    await asyncio.wait_for(sink.done.wait(), 120)
    wall, cpu_s = time.perf_counter() - t0, cpu() - c0
    driver.stop()
    await task
    assert driver.status.counters["duplicates"] == 0 and driver.status.counters["decode_errors"] == 0
    return {"ads": n, "readings": sink.n, "wall_s": wall, "cpu_s": cpu_s}


def stored_readings(db: Path) -> int:
    """Readings committed, read as any other process would (a read-only connection)."""
    import sqlite3

    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return int(conn.execute("SELECT count(*) FROM records WHERE type = 'reading'").fetchone()[0])
    except sqlite3.OperationalError:  # not created yet
        return 0
    finally:
        conn.close()


async def bench_store(n: int, kind: str = "mix") -> dict[str, float]:
    """The whole agent, in this process: fake radio → driver → intake → writer → SQLite."""
    from agent import config as configmod
    from agent.daemon import Agent

    the_air = air(f"bench-store-{kind}")
    if kind == "theengs":
        sensors_list, ads, want = theengs_ads(n)
    else:
        sensors_list, ads, want = SENSORS, make_ads(n), expected_readings(n)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "c.toml"
        sensors = ",\n".join("{ " + ", ".join(f'{k} = "{v}"' for k, v in s.items()) + " }" for s in sensors_list)
        cfg.write_text(
            'gateway_id = "gw-bench"\n[store]\npath = "store.db"\ncommit_interval_s = 0.5\n'
            '[control]\nsocket = "control.sock"\n'
            '[time]\nsync_source = "assume_synced"\n[recording]\nrecord_interval_s = 0\n'
            f'[[drivers]]\nname = "ble"\ntype = "ble"\nbackend = "fake"\nfake_air = "{the_air.name}"\n'
            f'scanning_mode = "active"\nqueue_size = {n + 1}\nsensors = [\n{sensors}\n]\n'
        )
        db = Path(tmp) / "store.db"
        agent = Agent(configmod.load(cfg), config_path=cfg)
        task = asyncio.create_task(agent.run())
        await asyncio.wait_for(agent.ready.wait(), 30)
        await the_air.wait_started(timeout=30)
        t0, c0 = time.perf_counter(), cpu()
        await inject(the_air, ads)
        # until every reading is committed (a count every 50 ms costs well under 1 % here)
        deadline = time.monotonic() + 300
        while (stored := stored_readings(db)) < want:
            assert time.monotonic() < deadline, (stored, want)
            await asyncio.sleep(0.05)
        wall, cpu_s = time.perf_counter() - t0, cpu() - c0
        assert stored == want, (stored, want)
        agent.stop()
        assert await task == 0
    return {"ads": n, "readings": want, "wall_s": wall, "cpu_s": cpu_s}


THEENGS = Path(__file__).resolve().parents[1] / "data" / "ble" / "theengs.json"


def theengs_ads(n: int) -> tuple[list[dict[str, Any]], list[tuple[str, dict[str, Any]]], int]:
    """Sensors and ``n`` advertisements cycling through the Theengs vectors; readings expected."""
    vectors = json.loads(THEENGS.read_text(encoding="utf-8"))["vectors"]
    sensors, kinds = [], []
    for i, vec in enumerate(vectors):
        mac = f"C0:FF:EE:00:01:{i:02X}"
        sensors.append({"mac": mac, "sensor_id": vec["id"], "format": "theengs"})
        if "manufacturer_hex" in vec:
            raw = bytes.fromhex(vec["manufacturer_hex"])
            kw: dict[str, Any] = {"manufacturer_data": {int.from_bytes(raw[:2], "little"): raw[2:]}}
        else:
            kw = {"service_data": {int(vec["service_uuid16"], 16): bytes.fromhex(vec["hex"])}}
        kinds.append((mac, {**kw, "local_name": vec["name"]}, len(vec["readings"])))
    ads = [(kinds[i % len(kinds)][0], kinds[i % len(kinds)][1]) for i in range(n)]
    return sensors, ads, sum(kinds[i % len(kinds)][2] for i in range(n))


async def bench_theengs(n: int) -> dict[str, float] | None:
    from drivers.ble import theengs

    if not theengs.available():
        return None
    the_air = air("bench-theengs")
    sensors, ads, want = theengs_ads(n)
    opts = BleOptions.model_validate({"sensors": sensors, "scanning_mode": "active", "queue_size": n + 1})
    driver = BleDriver("ble", opts, scanner_backend=the_air.backend)
    sink = CountingSink()
    sink.target = want
    task = asyncio.create_task(driver.run(sink))
    await the_air.wait_started()
    t0, c0 = time.perf_counter(), cpu()
    await inject(the_air, ads)
    await asyncio.wait_for(sink.done.wait(), 300)
    wall, cpu_s = time.perf_counter() - t0, cpu() - c0
    driver.stop()
    await task
    assert driver.status.counters["decode_errors"] == 0
    return {"ads": n, "readings": sink.n, "wall_s": wall, "cpu_s": cpu_s}


def bench_theengs_decode(rounds: int = 200) -> dict[str, float] | None:
    """Theengs Decoder itself, a fresh decode every call (the driver decodes a repeated frame once)."""
    from drivers.ble import theengs
    from drivers.ble.fake import uuid16

    if not theengs.available():
        return None
    vectors = json.loads(THEENGS.read_text(encoding="utf-8"))["vectors"]
    per: dict[str, float] = {}
    for vec in vectors:
        if "manufacturer_hex" in vec:
            raw = bytes.fromhex(vec["manufacturer_hex"])
            sd: dict[str, bytes] = {}
            md = {int.from_bytes(raw[:2], "little"): raw[2:]}
        else:
            sd, md = {uuid16(int(vec["service_uuid16"], 16)): bytes.fromhex(vec["hex"])}, {}
        c0 = time.process_time()  # finer than os.times() for this short a loop
        for _ in range(rounds):
            theengs.decode(sd, md, name=vec["name"])
        per[vec["id"]] = (time.process_time() - c0) / rounds * 1e6
    return per


def report(name: str, r: dict[str, float]) -> None:
    print(
        f"{name:<13} {r['ads']:>7.0f} ads  {r['readings']:>7.0f} readings  "
        f"{r['ads'] / r['wall_s']:>9.0f} ads/s  {r['readings'] / r['wall_s']:>9.0f} readings/s  "
        f"{r['cpu_s'] / r['ads'] * 1e6:>7.1f} µs CPU/ad"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ads", type=int, default=20_000, help="advertisements per run (default 20000)")
    args = ap.parse_args()
    report("driver", asyncio.run(bench_driver(args.ads)))
    t = asyncio.run(bench_theengs(args.ads))
    if t is None:
        print("theengs (Theengs Decoder not installed: pip install 'coldgate[theengs]'; skipped)")
    else:
        report("theengs", t)
        per = bench_theengs_decode()
        assert per is not None
        mean = sum(per.values()) / len(per)
        print(f"theengs decode (every call fresh): mean {mean:.0f} µs CPU, "
              f"min {min(per.values()):.0f} ({min(per, key=per.__getitem__)}), "
              f"max {max(per.values()):.0f} ({max(per, key=per.__getitem__)})")
    report("store", asyncio.run(bench_store(args.ads)))
    if t is not None:
        report("store-theengs", asyncio.run(bench_store(args.ads, "theengs")))


if __name__ == "__main__":
    main()
