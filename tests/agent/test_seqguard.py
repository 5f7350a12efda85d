"""Seq never reused (issue 9 item 8): the high-water mark, a really damaged WAL, a restored image.

Real SQLite files in ``tmp_path``; the WAL is damaged by flipping one byte of a frame in a
copy taken while the writer holds the database (no checkpoint ran, so the frames are
live); the central side is the reference receiver (``agent.receiver.Receiver``) on
loopback, reached through the real HTTP transport.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from freezegun import freeze_time

from agent import config as configmod
from agent.daemon import Agent
from agent.receiver import Receiver
from agent.seqguard import SLOT_STRIDE, ConflictWatch, HighWater, read_mark
from agent.store import Store
from agent.timebase import Clock
from agent.uplink import transport_for
from agent.uplink.base import Answer, Batch
from agent.uplink.fake import FakeTransport
from tests.agent.uplink_helpers import drain

T0 = 1_790_000_000.0
GW = "gw-seq"


def reading(i: int) -> dict[str, Any]:
    return {"type": "reading", "ts": T0 + i, "time_quality": "synced", "sensor_id": "p1",
            "quantity": "temperature", "value": 4.0 + (i % 10) / 10, "unit": "Cel"}


@contextlib.contextmanager
def receiver(path: Path) -> Iterator[tuple[Receiver, str]]:
    """The reference receiver on a free loopback port."""
    rx = Receiver(path)
    server = rx.make_server("127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield rx, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
        rx.close()


def uplink_config(url: str) -> Any:
    return configmod.loads(f'gateway_id = "{GW}"\n[uplink]\nurl = "{url}"\nbatch_size = 100\n').uplink


def keep_the_wal(store: Store) -> None:
    """No checkpoint on this connection: every commit stays a live frame of the WAL."""
    store.conn.execute("PRAGMA wal_autocheckpoint = 0")
    store._checkpoint = lambda: None  # type: ignore[method-assign]  # noqa: SLF001 - nor a truncation


def copy_store(src: Path, dst: Path) -> None:
    """The database, its WAL and its side file as they are now (the writer holds them)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    for suffix in ("", "-wal", ".stream"):
        if Path(str(src) + suffix).exists():
            shutil.copyfile(str(src) + suffix, str(dst) + suffix)


def flip_a_byte_in_frame(wal: Path, frame: int, page_size: int = 4096) -> None:
    """One flipped byte in the page image of WAL frame ``frame`` (0-based): its checksum fails."""
    offset = 32 + frame * (24 + page_size) + 24 + 1000
    data = bytearray(wal.read_bytes())
    assert offset < len(data), "the WAL has fewer frames"
    data[offset] ^= 0x40
    wal.write_bytes(bytes(data))


def frames(wal: Path, page_size: int = 4096) -> int:
    return (wal.stat().st_size - 32) // (24 + page_size)


def head_sqlite_replays(db: Path, tmp: Path) -> int:
    """The head seq SQLite itself finds in (a copy of) the damaged store."""
    probe = tmp / "probe.db"
    for suffix in ("", "-wal"):
        shutil.copyfile(str(db) + suffix, str(probe) + suffix)
    with contextlib.closing(sqlite3.connect(probe)) as c:
        assert c.execute("PRAGMA quick_check").fetchone()[0] == "ok"  # the damage does not show here
        return int(c.execute("SELECT value FROM meta WHERE key = 'head_seq'").fetchone()[0])


# -- the mark itself ---------------------------------------------------------------------
def test_the_mark_keeps_the_older_slot_when_the_newer_is_torn_and_reads_the_old_format(tmp_path: Path) -> None:
    path = tmp_path / "s.db.stream"
    path.write_text('{"stream": "old", "last_seq": 41}')  # what coldgate 0.1 wrote
    assert read_mark(path).last_seq == 41
    hw = HighWater(path, every_s=0)
    hw.set("s1", 100)
    hw.set("s1", 200)
    assert read_mark(path).last_seq == 200
    data = bytearray(path.read_bytes())
    newest = 0 if data[0:1] == b"{" and b'"last_seq":200' in data[:256] else SLOT_STRIDE
    data[newest + 20] ^= 0x01  # a power cut tore the slot being written
    path.write_bytes(bytes(data))
    assert read_mark(path).last_seq == 100  # the other slot still stands: never above the truth
    hw.close()


def test_the_mark_never_goes_down_for_its_stream(tmp_path: Path) -> None:
    path = tmp_path / "s.db.stream"
    a, b = HighWater(path, every_s=0), HighWater(path, every_s=0)
    a.set("s1", 500)
    b.set("s1", 300)  # a second process that knows less
    assert read_mark(path).last_seq == 500
    b.set("s2", 1)  # a new stream starts low
    assert read_mark(path).stream == "s2" and read_mark(path).last_seq == 1
    a.close()
    b.close()


def test_the_mark_is_made_durable_at_most_every_few_seconds_while_the_head_moves_and_at_close(tmp_path: Path) -> None:
    with freeze_time("2026-11-23 08:00:00") as frozen:
        s = Store.open(tmp_path / "s.db", gateway_id=GW, clock=Clock("assume_synced"))
        writes = s.mark.writes
        for i in range(200):  # 200 commits in 2 s
            s.append([reading(i)])
            frozen.tick(0.01)
        assert s.mark.writes - writes <= 2
        frozen.tick(2.0)
        s.append([reading(1000)])
        assert read_mark(s.sidecar).last_seq == s.head()[0]
        s.append([reading(1001)])
        s.close()
        assert read_mark(tmp_path / "s.db.stream").last_seq == 203  # stream_started, 201, and 1 at close


# -- a damaged WAL -------------------------------------------------------------------------
def test_a_damaged_wal_that_loses_committed_records_starts_a_new_stream_that_says_so(tmp_path: Path) -> None:
    """0.1: one flipped byte in a live WAL frame; the next start continued at seq 5,026 after a
    committed head of 5,934: 909 committed records gone, their seqs reused, no event."""
    live, damaged = tmp_path / "live" / "store.db", tmp_path / "card" / "store.db"
    with receiver(tmp_path / "rx.db") as (rx, url):
        s = Store.open(live, gateway_id=GW, clock=Clock("assume_synced"), mark_every_s=0)
        keep_the_wal(s)
        for k in range(30):
            s.append([reading(k * 10 + j) for j in range(10)])
        old = s.stream_id
        assert drain(s, uplink_config(url), GW).result == "ok"  # the central side has seq 1..301
        sent_head = s.head()[0]
        for k in range(30, 120):
            s.append([reading(k * 10 + j) for j in range(10)])
        mark = s.head()[0]
        assert read_mark(s.sidecar).last_seq == mark
        copy_store(live, damaged)  # the card as a power cut left it
        s.close(sidecar=False)
        wal = Path(str(damaged) + "-wal")
        n = frames(wal)
        flip_a_byte_in_frame(wal, n * 3 // 4)
        as_found = wal.read_bytes()
        found = head_sqlite_replays(damaged, tmp_path)
        assert sent_head < found < mark  # committed records are gone, and nothing says so

        cfg = configmod.loads(f'gateway_id = "{GW}"\n[store]\npath = "{damaged}"\n[control]\n'
                              f'socket = "{tmp_path}/c.sock"\n[time]\nsync_source = "assume_synced"\n'
                              f'[uplink]\nurl = "{url}"\ninterval_s = 0.05\n')

        async def start_the_agent() -> str:
            agent = Agent(cfg)
            task = asyncio.create_task(agent.run())
            deadline = time.monotonic() + 30
            while not agent.ready.is_set():
                assert not task.done() and time.monotonic() < deadline
                await asyncio.sleep(0.02)
            new = agent.writer.store.stream_id
            while len(rx.records(GW, new)) < found - sent_head + 1:  # its stream_started and the carried
                assert time.monotonic() < deadline, "the new stream did not reach the receiver"
                await asyncio.sleep(0.05)
            agent.stop()
            assert await task == 0
            return str(new)

        new = asyncio.run(start_the_agent())
        assert new != old
        first = rx.records(GW, new)[0]
        assert first["seq"] == 1 and first["event"] == "stream_started"
        d = first["details"]
        assert d["reason"] == "records_lost" and d["detected_by"] == "high_water_mark"
        assert d["previous_stream"] == old and d["previous_last_seq"] == mark and d["head_found"] == found
        assert d["lost"] == {"first_seq": found + 1, "last_seq": mark, "count": mark - found}
        assert Path(d["wal_copy"]).read_bytes() == as_found  # the frames past the damage, kept as found
        # the survivors never sent are carried into the new stream, content unchanged
        carried = d["carried_over"]
        assert (carried["first_seq"], carried["last_seq"]) == (sent_head + 1, found)
        with Store.open(live, gateway_id=GW, create=False, check=False) as src:
            originals = {r["seq"]: r for r in src.records()}
        again = rx.records(GW, new)[1:carried["count"] + 1]
        for src_seq, rec in zip(range(sent_head + 1, found + 1), again, strict=True):
            o = originals[src_seq]
            assert (rec["type"], rec.get("value"), rec["ts"]) == (o["type"], o.get("value"), o["ts"])
        # no seq of the old stream is used again, at the receiver or in the store
        assert max(r["seq"] for r in rx.records(GW, old)) == sent_head
        with Store.open(damaged, gateway_id=GW, create=False, check=False) as after:
            assert after.stream_id == new and all(r["stream"] == new for r in after.records())
        report = rx.report(GW)["gateways"][GW]["streams"]
        assert report[old]["continued_by"] == new  # the old stream's end, explained
        assert report[old]["gaps"] == [[sent_head + 1, mark]] and not report[old]["conflicts"]
        assert report[new]["stream_started"]["reason"] == "records_lost"
        assert report[new]["verdict"] == "complete-and-verified"


def test_a_store_found_below_its_mark_takes_no_records_from_a_reader(tmp_path: Path) -> None:
    """The CLI (a reader) appends while the agent is stopped: it must not reuse the lost seqs."""
    path = tmp_path / "s.db"
    s = Store.open(path, gateway_id=GW, clock=Clock("assume_synced"), mark_every_s=0)
    s.append([reading(i) for i in range(10)])
    s.close()
    HighWater(s.sidecar, every_s=0).set(s.stream_id, 50)  # 39 committed records lost since
    with Store.open(path, gateway_id=GW, create=False, check=False) as reader:
        try:
            reader.append([reading(99)])
        except Exception as exc:  # noqa: BLE001 - the message is what the CLI shows
            assert "lost committed records" in str(exc)
        else:
            raise AssertionError("a reader appended below the high-water mark")
        assert reader.head()[0] == 11


def test_a_crash_between_a_new_stream_and_its_mark_is_not_taken_for_a_loss(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    with Store.open(path, gateway_id=GW) as s:
        old = s.stream_id
    path.unlink()
    Path(str(path) + "-wal").unlink(missing_ok=True)
    mark = read_mark(s.sidecar)
    with Store.open(path, gateway_id=GW) as s2:  # a new stream; its mark written after
        new = s2.stream_id
    HighWater(s.sidecar, every_s=0).set(old, mark.last_seq + 5)  # as if the crash came before the mark
    with Store.open(path, gateway_id=GW) as s3:
        assert s3.stream_id == new  # no third stream


# -- a restored image: the receiver says so --------------------------------------------------
def test_a_store_written_back_from_an_image_is_caught_by_the_receivers_conflicts(tmp_path: Path) -> None:
    """The image holds the side file too, so the mark cannot see it; the receiver can: it
    holds the seqs that follow with other content."""
    path, image = tmp_path / "card" / "store.db", tmp_path / "image" / "store.db"
    with receiver(tmp_path / "rx.db") as (rx, url):
        s = Store.open(path, gateway_id=GW, clock=Clock("assume_synced"))
        s.append([reading(i) for i in range(300)])
        drain(s, uplink_config(url), GW)
        s.close()
        copy_store(path, image)  # the image, taken at seq 301
        with Store.open(path, gateway_id=GW, clock=Clock("assume_synced")) as s:
            old = s.stream_id
            s.append([reading(1000 + i) for i in range(200)])
            drain(s, uplink_config(url), GW)  # the central side has 1..501
        for suffix in ("", "-wal", ".stream"):  # the card is written back from the image
            Path(str(path) + suffix).unlink(missing_ok=True)
            if Path(str(image) + suffix).exists():
                shutil.copyfile(str(image) + suffix, str(path) + suffix)
        cfg = configmod.loads(f'gateway_id = "{GW}"\n[store]\npath = "{path}"\n[control]\n'
                              f'socket = "{tmp_path}/c.sock"\n[time]\nsync_source = "assume_synced"\n'
                              f'[uplink]\nurl = "{url}"\ninterval_s = 0.05\n')

        async def run_the_agent() -> str:
            agent: Agent
            http = transport_for(cfg.uplink, cfg.gateway_id)
            assert http is not None
            # the wiring the daemon is to get: the watch around the configured transport
            agent = Agent(cfg, transport=lambda: ConflictWatch(http(), agent.writer.conflict_reporter()))
            task = asyncio.create_task(agent.run())
            deadline = time.monotonic() + 30
            while agent.writer.stream_restarts == 0 or not rx.records(GW, agent.writer.store.stream_id):
                assert not task.done() and time.monotonic() < deadline, "no new stream after the conflicts"
                await asyncio.sleep(0.05)
            new = agent.writer.store.stream_id
            agent.stop()
            assert await task == 0
            return str(new)

        new = asyncio.run(run_the_agent())
        first = rx.records(GW, new)[0]
        d = first["details"]
        assert d["reason"] == "records_lost" and d["detected_by"] == "receiver_conflicts"
        assert d["previous_stream"] == old and d["conflicts"] >= 1
        # what the restored store wrote at the reused seqs is carried into the new stream
        events = [r["event"] for r in rx.records(GW, new) if r["type"] == "event"]
        assert "agent_started" in events
        report = rx.report(GW)["gateways"][GW]["streams"]
        assert report[old]["continued_by"] == new and report[old]["conflicts"]


def test_the_conflict_watch_reports_a_batch_the_receiver_holds_with_other_content() -> None:
    seen: list[tuple[int, int, int]] = []
    fake = FakeTransport()
    fake.stored[("s", 2)] = ("{}", "f" * 64)
    watch = ConflictWatch(fake, lambda b, a: seen.append((b.first, b.last, a.conflicts)))
    answer = watch.send(Batch("gw", "s", [(1, "{}", "a" * 64), (2, "{}", "b" * 64)]))
    assert answer == Answer(1, 0, 1) and seen == [(1, 2, 1)]
    watch.send(Batch("gw", "s", [(3, "{}", "c" * 64)]))
    assert seen == [(1, 2, 1)]


def test_the_conflict_watch_keeps_the_transports_link_visible_to_status() -> None:
    class WithLink(FakeTransport):
        def link(self) -> dict[str, Any]:
            return {"connected": False, "broker": "mqtt://127.0.0.1:1"}

    watch = ConflictWatch(WithLink(), lambda b, a: None)
    assert watch.link() == {"connected": False, "broker": "mqtt://127.0.0.1:1"}  # type: ignore[attr-defined]
    assert not hasattr(ConflictWatch(FakeTransport(), lambda b, a: None), "link")


def test_records_carried_into_a_new_stream_go_over_once_even_across_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    s = Store.open(path, gateway_id=GW, clock=Clock("assume_synced"))
    for k in range(5):
        s.append([reading(k * 1000 + j) for j in range(1000)])
    old, head = s.stream_id, s.head()[0]
    before = [(r["type"], r["ts"]) for r in s.records()]
    real = s._append_locked  # noqa: SLF001
    calls = {"n": 0}

    def crash_on_the_third_transaction(items: Any, state: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 3:  # stream_started, one chunk carried, then the power goes
            raise sqlite3.OperationalError("disk I/O error (test)")
        return real(items, state)

    s._append_locked = crash_on_the_third_transaction  # type: ignore[method-assign]  # noqa: SLF001
    try:
        s.restart_stream({"detected_by": "high_water_mark"})
    except sqlite3.Error:
        pass
    s.conn.close()
    with Store.open(path, gateway_id=GW) as again:  # the next start carries the rest
        recs = again.records()
        assert again.stream_id != old and recs[0]["details"]["carried_over"]["count"] == head
        assert [r["seq"] for r in recs] == list(range(1, head + 2))
        assert [(r["type"], r["ts"]) for r in recs[1:]] == before  # each once, in order


def test_a_retired_stream_gives_its_room_back_but_keeps_what_was_set_aside(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    s = Store.open(path, gateway_id=GW, quota_bytes=2 << 20, clock=Clock("assume_synced"))
    try:
        s.append([reading(i) for i in range(2000)])
        s.set_aside([5], "422 from the server (test)")
        s.ack(seq for seq in range(1, 2002) if seq != 5)
        s.restart_stream({"detected_by": "receiver_conflicts"}, carry_from=10**6)
        table = s.stats()["retired_streams"] and "retired_1_records"
        freed = s._free_acked(1 << 20)  # noqa: SLF001 - what the quota does when it needs room
        assert freed > 0
        left = s.conn.execute(f"SELECT seq, state FROM {table}").fetchall()
        assert left == [(5, 2)]  # the set-aside record is never deleted
    finally:
        s.close()
