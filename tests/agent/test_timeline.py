"""The agent timeline: elapsed time that never steps, resumed across restarts and reboots."""

from __future__ import annotations

import json
import logging

import pytest

from agent.timeline import STEP_S, Timeline, WallMap

T0 = 1_795_000_000.0
BOOT_A, BOOT_B = "boot-a", "boot-b"
S = 1_000_000_000  # ns


def saved(tl: Timeline) -> dict:
    return json.loads(json.dumps(tl.state(), allow_nan=False))  # strict JSON, as stored


def test_a_new_timeline_starts_at_the_wall_time_and_runs_with_the_boot_time_clock():
    tl = Timeline.start(boot_id=BOOT_A, mono_ns=100 * S, wall=T0, synced=True)
    assert tl.at(100 * S) == T0
    assert tl.at(160 * S) == T0 + 60.0


def test_a_restart_in_the_same_boot_resumes_exactly_whatever_the_wall_clock_did():
    tl = Timeline.start(boot_id=BOOT_A, mono_ns=100 * S, wall=T0, synced=True)
    tl.note(tl.at(200 * S), T0 + 100.0, True)
    # down for 50 s of boot time; meanwhile the wall clock stepped back 3 h
    resumed, info = Timeline.resume(saved(tl), boot_id=BOOT_A, mono_ns=250 * S, wall=T0 + 150.0 - 10800, synced=True)
    assert resumed.at(250 * S) == T0 + 150.0
    assert info == {"resumed": "same_boot", "downtime_s": 50.0, "counted": True, "elapsed": T0 + 150.0}


def test_a_reboot_with_the_clock_synchronised_then_and_now_counts_the_downtime_by_the_wall_clock():
    tl = Timeline.start(boot_id=BOOT_A, mono_ns=100 * S, wall=T0, synced=True)
    tl.note(tl.at(700 * S), T0 + 600.0, True)
    # a reboot: the boot-time clock starts again; the wall clock says 1 h went by
    resumed, info = Timeline.resume(saved(tl), boot_id=BOOT_B, mono_ns=20 * S, wall=T0 + 4200.0, synced=True)
    assert resumed.at(20 * S) == T0 + 4200.0
    assert info["resumed"] == "reboot" and info["counted"] is True and info["downtime_s"] == 3600.0
    assert resumed.at(30 * S) == T0 + 4210.0


@pytest.mark.parametrize(("then", "now", "wall_later"), [
    (True, False, 3600.0),   # after the reboot the clock is not synchronised (no RTC)
    (False, True, 3600.0),   # it was not when the time was saved
    (True, True, -600.0),    # synchronised both times but running back: no measurement
])
def test_a_reboot_the_clock_cannot_vouch_for_counts_its_downtime_as_nothing(then, now, wall_later):
    tl = Timeline.start(boot_id=BOOT_A, mono_ns=100 * S, wall=T0, synced=then)
    tl.note(tl.at(700 * S), T0 + 600.0, then)
    resumed, info = Timeline.resume(saved(tl), boot_id=BOOT_B, mono_ns=20 * S, wall=T0 + 600.0 + wall_later,
                                    synced=now)
    assert resumed.at(20 * S) == T0 + 600.0  # time goes on from where it was saved, never back
    assert info["counted"] is False and info["downtime_s"] == 0.0 and info["wall_downtime_s"] == wall_later


@pytest.mark.parametrize("bad", [
    {"version": 99}, {"version": 1, "boot_id": BOOT_A}, {"version": 1, "boot_id": BOOT_A, "base": "x",
                                                         "elapsed": 1.0, "wall": 1.0, "synced": True},
    {"version": 1, "boot_id": BOOT_A, "base": 0.0, "elapsed": float("nan"), "wall": 1.0, "synced": True},
    {"version": 1, "boot_id": BOOT_A, "base": 0.0, "elapsed": 1.0, "wall": 1.0, "synced": True,
     "walls": [[5.0, 0.0], [1.0, 0.0]]},
    "not a mapping",
])
def test_an_unreadable_saved_timeline_is_logged_and_replaced_never_a_crash(bad, caplog):
    with caplog.at_level(logging.ERROR, "coldgate.timeline"):
        tl, info = Timeline.resume(bad, boot_id=BOOT_A, mono_ns=100 * S, wall=T0, synced=True)  # type: ignore[arg-type]
    assert info["resumed"] == "unreadable" and tl.at(100 * S) == T0
    assert "saved timeline unreadable" in caplog.text


def test_the_wall_map_stamps_each_instant_with_the_clock_as_it_read_then():
    m = WallMap()
    m.note(100.0, T0 + 100.0)
    m.note(200.0, T0 + 200.0 + STEP_S / 2)  # slewing: the same piece, newest offset
    m.note(300.0, T0 + 300.0 - 10800)  # a step back
    assert m.ts_of(250.0) == pytest.approx(T0 + 250.0 + STEP_S / 2)
    assert m.ts_of(300.0) == T0 + 300.0 - 10800
    assert m.ts_of(50.0) == pytest.approx(T0 + 50.0 + STEP_S / 2)  # before the oldest piece: its offset
    assert WallMap(m.state()).state() == m.state()


def test_the_wall_map_is_bounded():
    m = WallMap(limit=4)
    for k in range(10):
        m.note(100.0 * k, 1000.0 * k)
    assert len(m.state()) == 4 and m.ts_of(900.0) == 9000.0


def test_a_device_stamped_sensor_is_timed_by_the_devices_clock_not_the_gateways():
    tl = Timeline.start(boot_id=BOOT_A, mono_ns=100 * S, wall=T0, synced=True)
    # a logger's memory: a reading taken 1 h before it arrived is placed 1 h back
    first = tl.place("logger", T0 - 3600.0, tl.at(100 * S), T0)
    assert first == tl.at(100 * S) - 3600.0
    # the gateway's clock steps 3 h back; the device's does not: its differences are kept
    later = tl.place("logger", T0 + 10.0, tl.at(110 * S), T0 + 10.0 - 10800)
    assert later - first == 3610.0
    # a device clock ahead of the gateway's: placed at arrival, never after it
    assert tl.place("fast", T0 + 500.0, tl.at(100 * S), T0) == tl.at(100 * S)


def test_the_shipment_book_fed_the_timeline_needs_no_rebase_and_agrees_with_one():
    """The book on raw boot time must be rebased after a reboot; on the agent timeline it
    goes on as it is, with the same figures (the same downtime counted)."""
    from agent.shipment import ShipmentBook, ShipmentSpec, stamp

    spec = ShipmentSpec.model_validate({"id": "SHP-1", "sensors": ["p1"], "profile": "2-8C", "ignore_s": 0,
                                        "stability": {"budget_s": 7200, "above": 8.0}})
    tl = Timeline.start(boot_id=BOOT_A, mono_ns=100 * S, wall=T0, synced=True)
    on_timeline, on_boot = ShipmentBook(), ShipmentBook()
    on_timeline.start(spec, elapsed=tl.at(100 * S))
    on_boot.start(spec, elapsed=100.0)
    tl.note(tl.at(1100 * S), T0 + 1000.0, True)
    on_timeline.observe("p1", "temperature", 9.0, tl.at(1100 * S))
    on_boot.observe("p1", "temperature", 9.0, 1100.0)
    # a reboot after 600 s of downtime by a synchronised clock; the agent runs again 30 s into the boot
    resumed, info = Timeline.resume(saved(tl), boot_id=BOOT_B, mono_ns=30 * S, wall=T0 + 1600.0, synced=True)
    a = ShipmentBook(state=json.loads(json.dumps(on_timeline.snapshot())))
    b = ShipmentBook(state=json.loads(json.dumps(on_boot.snapshot())))
    b.rebase(elapsed_now=30.0, downtime_s=info["downtime_s"])
    assert a.status(resumed.at(30 * S)) == b.status(30.0)
    assert a.status(resumed.at(30 * S))[0]["stability"]["spent_s"] == pytest.approx(600.0)  # down while out
    # and its records are stamped through the timeline's wall map
    resumed.note(resumed.at(40 * S), T0 + 1610.0 - 10800, True)  # the clock steps back 3 h
    (rec,) = stamp([{"type": "event", "_elapsed": resumed.at(35 * S)}], wall_now=T0 + 1610.0 - 10800,
                   elapsed_now=resumed.at(40 * S), ts_of=resumed.ts_of)
    assert rec["ts"] == pytest.approx(T0 + 1605.0)  # before the step: the clock as it read then
