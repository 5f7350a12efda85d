"""The writer and the intake: group commit, backpressure, a failing store, held records.

Real SQLite in ``tmp_path``. A full disk is made where SQLite meets it: the store opener
caps each new connection's ``max_page_count`` while the "disk" is full, so SQLite answers
``SQLITE_FULL`` exactly as on a full card (a real full filesystem is in the e2e tests).
"""

from __future__ import annotations

import json
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from agent import config as configmod
from agent.ingest import Ingest
from agent.intake import Intake
from agent.stamp import Stamper
from agent.store import Store
from agent.timebase import Clock
from agent.writer import Writer, spill_path
from drivers.base import Reading

CFG = configmod.loads('gateway_id = "gw"\n[recording]\nrecord_interval_s = 0\n')
T0 = 1_790_000_000.0


class Disk:
    """Opens the store; ``full``/``broken`` make the next connections fail as a disk would."""

    def __init__(self, path: Path, stamper: Stamper) -> None:
        self.path, self.stamper = path, stamper
        self.full = False
        self.broken: str | None = None
        self.opened = 0

    def open(self) -> Store:
        self.opened += 1
        if self.broken:
            from agent.exc import StoreError

            raise StoreError(self.broken)
        store = Store.open(self.path, gateway_id="gw", stamper=self.stamper)
        if self.full:
            pages = store.conn.execute("PRAGMA page_count").fetchone()[0]
            store.conn.execute(f"PRAGMA max_page_count = {pages}")
        return store


def make(tmp_path: Path, **kw: Any) -> tuple[Writer, Intake, Disk]:
    stamper = Stamper(Clock("assume_synced"))
    intake = Intake(stamper, capacity=kw.pop("capacity", 4096))
    ingest = Ingest(CFG, stamper)
    disk = Disk(tmp_path / "store.db", stamper)
    writer = Writer(disk.open, intake, ingest, stamper, commit_interval_s=kw.pop("interval", 0.02),
                    commit_max=kw.pop("commit_max", 500), spill=spill_path(disk.path), **kw)
    writer.max_wait_s = 0.05
    return writer, intake, disk


def readings(n: int, start: int = 0) -> list[Reading]:
    return [Reading("p1", "temperature", 4.0 + (i % 100) / 100, "Cel", T0 + i) for i in range(start, start + n)]


def stored(path: Path, **kw: Any) -> list[dict[str, Any]]:
    with Store.open(path, gateway_id="gw", create=False, check=False) as s:
        return s.records(**kw)


def wait_for(pred: Any, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def test_a_full_disk_holds_records_until_space_returns_then_commits_them_all(tmp_path: Path) -> None:
    writer, intake, disk = make(tmp_path)
    writer.start()
    intake.put_readings("sim", readings(10))
    wait_for(lambda: writer.committed >= 10)
    disk.full = True
    intake.call(writer._reopen).result(5)  # the writer opens a new connection, on a full disk
    intake.put_readings("sim", readings(300, 10))
    wait_for(lambda: writer.store_error is not None)
    assert "full" in writer.store_error.lower()
    st = intake.call(writer.status).result(5)
    assert st["held"] + st["pending"] >= 300 and st["error"]
    disk.full = False  # space again: the retry reopens and commits
    wait_for(lambda: writer.store_error is None and not writer._held)  # noqa: SLF001
    writer.stop()
    values = [r["ts"] for r in stored(disk.path, type="reading")]
    assert len(values) == 310 and not [r for r in stored(disk.path, type="event") if r["event"] == "data_loss"]


def test_records_beyond_the_hold_are_dropped_oldest_first_and_counted_in_one_data_loss(tmp_path: Path) -> None:
    writer, intake, disk = make(tmp_path, max_held=100)
    disk.broken = "disk I/O error"
    writer.start()
    for k in range(0, 400, 50):
        intake.put_readings("sim", readings(50, k))
    intake.put_item(writer.stamper.event("agent_started", {}))
    wait_for(lambda: len(writer._held) == 100 and not len(intake))  # noqa: SLF001
    disk.broken = None
    wait_for(lambda: writer.store_error is None and not writer._held)  # noqa: SLF001
    writer.stop()
    kept = stored(disk.path, type="reading")
    losses = [r for r in stored(disk.path, type="event") if r["event"] == "data_loss"]
    assert len(losses) == 1
    d = losses[0]["details"]
    assert d["reason"] == "store_unwritable" and d["count"] == 400 - len(kept) and d["sensors"] == {"p1": d["count"]}
    assert "disk I/O error" in d["error"]
    assert [r["event"] for r in stored(disk.path, type="event")].count("agent_started") == 1  # events never dropped
    # the newest readings were kept, the oldest dropped: the loss is one contiguous span
    kept_ts = sorted(json.loads(json.dumps(r["ts"])) for r in kept)
    assert kept_ts == sorted(kept_ts) and d["from"] < kept_ts[0]


def test_an_unexpected_error_in_a_commit_keeps_the_records_and_the_writer_goes_on(tmp_path: Path) -> None:
    writer, intake, disk = make(tmp_path)
    real_open = disk.open
    failures = {"left": 3}

    def flaky_open() -> Store:
        store = real_open()
        real_append = store.append

        def append(items: Any, **kw: Any) -> Any:
            if failures["left"]:
                failures["left"] -= 1
                raise RuntimeError("a bug, not a disk")
            return real_append(items, **kw)

        store.append = append  # type: ignore[method-assign]
        return store

    writer._open_store = flaky_open  # noqa: SLF001
    writer.start()
    intake.put_readings("sim", readings(500))
    wait_for(lambda: failures["left"] == 0 and writer.store_error is None and writer.committed >= 500)
    writer.stop()
    assert len(stored(disk.path, type="reading")) == 500


def test_a_backlog_goes_back_in_bounded_transactions_not_one_huge_one(tmp_path: Path) -> None:
    """Finding 9.6: one transaction flushing 77,000 buffered readings grew the WAL past the disk."""
    from agent import writer as writer_mod

    writer, intake, disk = make(tmp_path, max_held=50_000)
    sizes: list[int] = []
    real_open = disk.open

    def counting_open() -> Store:
        store = real_open()
        real_append = store.append

        def append(items: Any, **kw: Any) -> Any:
            sizes.append(len(items))
            return real_append(items, **kw)

        store.append = append  # type: ignore[method-assign]
        return store

    writer._open_store = counting_open  # noqa: SLF001
    disk.broken = "read-only file system"
    writer.start()
    for k in range(0, 12_000, 1000):
        intake.put_readings("sim", readings(1000, k))
    wait_for(lambda: len(writer._held) >= 12_000)  # noqa: SLF001
    disk.broken = None
    wait_for(lambda: writer.store_error is None and not writer._held)  # noqa: SLF001
    writer.stop()
    assert max(sizes) <= writer_mod.TX_MAX and sum(sizes) >= 12_000
    assert len(stored(disk.path, type="reading")) == 12_000


def test_records_held_at_stop_are_spilled_and_committed_first_by_the_next_start(tmp_path: Path) -> None:
    writer, intake, disk = make(tmp_path)
    disk.broken = "attempt to write a readonly database"
    writer.start()
    intake.put_readings("sim", readings(50))
    intake.put_item(writer.stamper.event("agent_stopped", {"reason": "signal"}))
    wait_for(lambda: len(writer._held) >= 51)  # noqa: SLF001
    writer.stop()
    spill = spill_path(disk.path)
    assert spill.exists() and len(spill.read_text().splitlines()) == 51

    again, intake2, disk2 = make(tmp_path)
    again.start()
    intake2.put_item(again.stamper.event("agent_started", {}))
    wait_for(lambda: again.committed >= 52)
    again.stop()
    assert not spill.exists()
    recs = stored(disk.path)
    assert [r["type"] for r in recs].count("reading") == 50
    names = [r["event"] for r in recs if r["type"] == "event"]
    # the previous run's records come first, then this run's
    assert names.index("agent_stopped") < names.index("agent_started")


def test_a_driver_waits_when_the_intake_is_full_so_memory_stays_bounded(tmp_path: Path) -> None:
    """Finding 8.1: nothing slowed the reader when input outran the store (RSS 364 MB)."""
    stamper = Stamper(Clock("assume_synced"))
    intake = Intake(stamper, capacity=100)
    done = threading.Event()

    def flood() -> None:
        for k in range(0, 1000, 10):
            intake.put_readings("sim", readings(10, k))
        done.set()

    t = threading.Thread(target=flood)
    t.start()
    wait_for(lambda: intake.readings >= 100)
    assert not done.wait(0.3) and intake.readings <= 100 and intake.waits >= 1  # the producer waits
    taken = 0
    while taken < 1000:
        taken += sum(len(e[2]) for e in intake.take(50, 1.0, wake_on_any=True) if e[0] == "r")
        assert intake.readings <= 100
    t.join(5)
    assert done.is_set() and taken == 1000


def test_a_commit_comes_at_commit_max_without_waiting_out_the_interval(tmp_path: Path) -> None:
    writer, intake, disk = make(tmp_path, interval=30.0, commit_max=100)
    writer.start()
    intake.put_readings("sim", readings(100))  # commit_max reached: at once, not in 30 s
    wait_for(lambda: writer.committed >= 100, timeout=10)
    intake.put_readings("sim", readings(5, 100))  # a few: they wait for the interval (group commit)
    wait_for(lambda: len(writer.ingest.items) == 5)
    assert writer.committed == 100
    writer.stop()  # and stopping commits them
    assert len(stored(disk.path, type="reading")) == 105


def test_driver_state_is_committed_with_the_readings_delivered_before_it(tmp_path: Path) -> None:
    writer, intake, disk = make(tmp_path)
    writer.start()
    intake.put_readings("ble", readings(3))
    intake.put(("s", "ble", {"counters": {"A4:C1": 7}}))
    wait_for(lambda: writer.committed >= 3)
    writer.stop()
    with Store.open(disk.path, gateway_id="gw", create=False, check=False) as s:
        assert s.load_state("driver:ble") == {"counters": {"A4:C1": 7}}
        assert len(s.records(type="reading")) == 3


def test_driver_state_given_with_its_readings_is_never_committed_behind_them(tmp_path: Path) -> None:
    """At every commit, however an event cuts the stream, the state covers every stored reading."""
    seen: list[tuple[int, int]] = []  # (newest stored reading, the stored state's counter)

    def check(head: int) -> None:
        with Store.open(disk.path, gateway_id="gw", create=False, check=False) as s:
            newest = max((round(datetime.fromisoformat(r["ts"]).timestamp() - T0) for r in s.records(type="reading")),
                         default=-1)
            seen.append((newest, (s.load_state("driver:ble") or {}).get("c", -1)))

    writer, intake, disk = make(tmp_path, interval=1.0, on_commit=check)
    writer.start()
    for batch in range(40):
        intake.put_readings("ble", readings(5, batch * 5), state={"c": batch * 5 + 4})
        if batch % 3 == 0:  # an event commits at once, whatever is waiting behind it
            intake.put_item(writer.stamper.event("ble_counter_reset", {"batch": batch}))
    wait_for(lambda: writer.committed >= 200 + 14)
    writer.stop()
    assert seen and all(newest <= counter for newest, counter in seen), seen
    with Store.open(disk.path, gateway_id="gw", create=False, check=False) as s:
        assert s.load_state("driver:ble") == {"c": 199}


def test_latest_driver_state_is_the_one_taken_even_before_it_is_committed(tmp_path: Path) -> None:
    writer, intake, disk = make(tmp_path, interval=1.0)
    writer.start()
    intake.put_readings("ble", readings(2), state={"c": 1})
    # asked through the intake, behind the readings: the writer has taken them, committed or not
    assert intake.call(lambda: writer.driver_state("ble")).result(timeout=10) == {"c": 1}
    assert intake.call(lambda: writer.driver_state("other")).result(timeout=10) is None
    writer.stop()
    with Store.open(disk.path, gateway_id="gw", create=False, check=False) as s:
        assert s.load_state("driver:ble") == {"c": 1}


def test_a_reading_after_a_quiet_spell_is_committed_at_once_not_after_the_interval(tmp_path: Path) -> None:
    writer, intake, disk = make(tmp_path, interval=30.0)
    writer.max_wait_s = 1.0
    writer.start()
    try:
        intake.put_readings("sim", readings(3))  # nothing committed yet: no commit to keep apart from
        wait_for(lambda: writer.committed >= 3, timeout=10)
    finally:
        writer.stop()


def test_commits_are_kept_one_interval_apart_so_what_follows_a_commit_waits_for_the_next(tmp_path: Path) -> None:
    writer, intake, disk = make(tmp_path, interval=30.0)
    writer.start()
    intake.put_readings("sim", readings(3))
    wait_for(lambda: writer.committed >= 3, timeout=10)
    commits = writer.commits
    intake.put_readings("sim", readings(2, 3))  # within 30 s of the last commit: held for the next
    wait_for(lambda: len(writer.ingest.items) == 2)
    assert writer.commits == commits and writer.committed == 3
    writer.stop()
    assert len(stored(disk.path, type="reading")) == 5
