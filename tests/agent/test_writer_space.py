"""The writer on a store that runs out of room (issue 9 item 6): nothing refused or held is lost unsaid.

Real SQLite; the full disk is a real tmpfs filled with a ballast file, or (where only one
connection must fail) ``max_page_count`` capped on it, which makes SQLite answer
``SQLITE_FULL`` as a full card does.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from agent import config as configmod
from agent.exc import StoreError
from agent.ingest import Ingest
from agent.intake import Intake
from agent.stamp import Stamper
from agent.store import Store
from agent.timebase import Clock
from agent.writer import Writer, spill_path
from drivers.base import Reading
from tests.agent.disk_helpers import fill, tmpfs

CFG = configmod.loads('gateway_id = "gw"\n[recording]\nrecord_interval_s = 0\n')
T0 = 1_790_000_000.0


def readings(n: int, start: int = 0) -> list[Reading]:
    return [Reading("p1", "temperature", 4.0 + (i % 100) / 100, "Cel", T0 + i * 0.01) for i in range(start, start + n)]


def wait_for(pred: Any, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


class Opener:
    """Opens the store; ``broken`` fails the next opens, ``cap`` caps a new connection's pages."""

    def __init__(self, path: Path, stamper: Stamper, **kw: Any) -> None:
        self.path, self.stamper, self.kw = path, stamper, kw
        self.broken: str | None = None
        self.cap = False

    def __call__(self) -> Store:
        if self.broken:
            raise StoreError(self.broken)
        store = Store.open(self.path, gateway_id="gw", stamper=self.stamper, **self.kw)
        if self.cap:
            pages = store.conn.execute("PRAGMA page_count").fetchone()[0]
            store.conn.execute(f"PRAGMA max_page_count = {pages}")
        return store


def make(path: Path, **kw: Any) -> tuple[Writer, Intake, Opener]:
    stamper = Stamper(Clock("assume_synced"))
    intake = Intake(stamper, capacity=20_000)
    opener = Opener(path, stamper, **kw)
    writer = Writer(opener, intake, Ingest(CFG, stamper), stamper, commit_interval_s=0.02, commit_max=500,
                    spill=spill_path(path))
    writer.max_wait_s = 0.05
    return writer, intake, opener


def losses(path: Path) -> list[dict[str, Any]]:
    with Store.open(path, gateway_id="gw", create=False, check=False) as s:
        return [r["details"] for r in s.records(type="event") if r["event"] == "data_loss"]


def test_records_held_at_stop_on_a_full_disk_leave_at_least_the_record_of_their_loss(tmp_path: Path) -> None:
    """0.1: ~120,000 readings held on a full disk were discarded at SIGTERM with no record."""
    with tmpfs(tmp_path / "disk", 4 << 20) as disk:
        path = disk / "store.db"
        writer, intake, opener = make(path, quota_bytes=4 << 20)
        writer.start()
        intake.put_readings("sim", readings(100))
        wait_for(lambda: writer.committed >= 100)
        opener.broken = "disk I/O error"
        intake.call(writer._reopen).result(5)  # noqa: SLF001 - the store fails from now on
        for k in range(0, 6000, 1000):
            intake.put_readings("sim", readings(1000, 100 + k))
        wait_for(lambda: len(writer._held) >= 6000)  # noqa: SLF001
        ballast = fill(disk)
        writer.stop()  # SIGTERM: nothing fits on the disk
        spill = spill_path(path)
        assert spill.exists()
        ballast.unlink()
        opener.broken = None
        again, intake2, _ = make(path, quota_bytes=4 << 20)
        again.start()
        wait_for(lambda: not spill.exists())
        again.stop()
        with Store.open(path, gateway_id="gw", create=False, check=False) as s:
            kept = len(s.records(type="reading"))
        lost = sum(d.get("readings", d["count"]) for d in losses(path) if d["reason"] == "store_unwritable")
        assert kept + lost == 6100  # every reading committed, or counted in a data_loss record


def test_a_refusal_counted_by_a_connection_that_fails_is_said_by_the_next(tmp_path: Path) -> None:
    """0.1: the reopened store started its count afresh; the refused readings of the failed
    connection were in no data_loss event (and each reopen began a new episode)."""
    path = tmp_path / "store.db"
    writer, intake, opener = make(path, quota_bytes=1 << 20, reserve_pct=10)
    writer.start()
    sent = 0
    while not (writer.store is not None and writer.store.refusals.active):
        intake.put_readings("sim", readings(500, sent))
        sent += 500
        wait_for(lambda n=sent: writer.committed + (writer.store.refusals.total if writer.store else 0) >= n - 5)
        assert sent < 100_000
    intake.put_readings("sim", readings(300, sent))  # refused, counted, not yet said
    sent += 300
    wait_for(lambda: writer.store is not None and writer.store.refusals.total >= 300 and not len(intake))
    opener.cap = True  # the next connection is on a full disk
    intake.call(writer._reopen).result(5)  # noqa: SLF001
    intake.put_item(writer.stamper.event("operator_note", {}))
    wait_for(lambda: writer.store_error is not None)
    opener.cap = False
    wait_for(lambda: writer.store_error is None and not writer._held)  # noqa: SLF001
    intake.put_readings("sim", readings(200, sent))
    sent += 200
    writer.stop()
    with Store.open(path, gateway_id="gw", create=False, check=False) as s:
        kept = len(s.records(type="reading"))
    d = losses(path)
    assert kept + sum(x["count"] for x in d) == sent
    assert len({x["episode"]["started_at"] for x in d}) == 1  # one episode across the reopen
