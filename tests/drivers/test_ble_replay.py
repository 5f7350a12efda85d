"""Replay protection that survives restarts, and counter restarts (battery swaps) accepted as one.

Driver-level tests on the fake radio; the state a SIGKILLed agent would have committed is
the last ``driver_state`` the test sink received, handed to a new driver instance.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from drivers.ble import bthome, replay
from tests.drivers.ble_helpers import BTHOME, Running, fresh_air, make_driver

MAC = "54:48:E6:8F:80:A5"
KEY_HEX = "231d39c1d7cc1ab1aee224cd096db932"
KEY = bytes.fromhex(KEY_HEX)
SENSOR = {"mac": MAC, "sensor_id": "box-1", "bindkey": KEY_HEX}


def frame(counter: int, centi_c: int, key: bytes = KEY) -> dict:
    objects = bytes([0x02]) + centi_c.to_bytes(2, "little", signed=True)
    return {"service_data": {BTHOME: bthome.encrypt(objects, MAC, key, counter)}}


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


# -- the rule, pure -----------------------------------------------------------------------
POLICY = replay.CounterPolicy(restart_below=100, max_rate_hz=1.0)


def mem_at(counter: int, accepted_mono: float = 0.0, **kw) -> replay.Memory:
    return replay.Memory(counter=counter, digest="d", accepted_mono=accepted_mono, **kw)


@pytest.mark.parametrize(
    ("last", "counter", "unheard_s", "kind"),
    [
        (5000, 5001, 1, "accept"),
        (5000, 90_000, 1, "accept"),  # frames missed: the MIC proves the key holder made it
        (5000, 5000, 1, "refuse"),  # same counter, other bytes
        (5000, 1, 1, "reset"),  # battery swap: back to a low value
        (5000, 99, 1, "reset"),
        (5000, 150, 1, "refuse"),  # not low enough to be a restart a second after the last frame
        (5000, 150, 3600, "reset"),  # … but an hour unheard, the device may have counted to 150
        (5000, 4999, 1, "refuse"),
    ],
)
def test_counter_rule_accepts_progress_and_plausible_restarts_and_refuses_the_rest(last, counter, unheard_s, kind):
    assert replay.judge(mem_at(last), counter, "other", unheard_s, POLICY).kind == kind


def test_repeat_of_the_last_frame_is_a_duplicate_not_a_replay():
    assert replay.judge(mem_at(7), 7, "d", 1.0, POLICY).kind == "duplicate"


def test_after_a_restart_a_jump_back_into_the_old_counters_is_refused_until_passed():
    mem = mem_at(5000)
    replay.admit(mem, 3, "x", replay.Verdict("reset"), now_mono=10.0, now_wall=time.time())
    assert (mem.counter, mem.before_reset, mem.resets) == (3, 5000, 1)
    assert replay.judge(mem, 4000, "y", 11.0, POLICY) == replay.Verdict("refuse", "jump_into_counters_before_restart")
    assert replay.judge(mem, 4, "y", 11.0, POLICY).kind == "accept"
    assert replay.judge(mem, 5001, "y", 11.0, POLICY).kind == "accept", "beyond the old counters: nothing to mistake"
    replay.admit(mem, 5001, "y", replay.Verdict("accept"), now_mono=11.0, now_wall=time.time())
    assert mem.before_reset is None


def test_a_recently_accepted_frame_sent_again_after_a_long_silence_is_refused_not_taken_for_a_restart():
    # Record frames 4993-5000, silence the device for 5000 s (the restart window grows to
    # 5100), send frame 4995 again: by counter alone it could be a restart; it is not.
    mem = mem_at(4992)
    for c in range(4993, 5001):
        replay.admit(mem, c, f"frame-{c}-digest", replay.Verdict("accept"), now_mono=float(c - 4993),
                     now_wall=time.time())
    later = 7.0 + 5000
    assert replay.judge(mem, 4995, "frame-4995-digest", later, POLICY) == replay.Verdict("refuse", "replayed")
    # the device itself, restarted and counted to 4995 meanwhile, sends other bytes
    assert replay.judge(mem, 4995, "a-new-frame-digest", later, POLICY).kind == "reset"
    # only the last RECENT are remembered
    assert len(mem.recent) == replay.RECENT


def test_memory_round_trips_through_json_and_its_restart_window_counts_the_time_offline():
    mem = replay.Memory(counter=5000, digest="ab", accepted_wall=int(time.time()) - 3600, resets=2, key_fp="k",
                        address=MAC, model="H5074", recent=["4999:12345678", "5000:abcdef01"])
    back = replay.Memory.from_json(mem.to_json(), now_mono=100.0, now_wall=time.time())
    assert (back.counter, back.digest, back.resets, back.key_fp, back.address, back.model) == (5000, "ab", 2, "k",
                                                                                                MAC, "H5074")
    assert back.recent == ["4999:12345678", "5000:abcdef01"]
    assert back.accepted_mono == pytest.approx(100.0 - 3600, abs=5)


@pytest.mark.parametrize(
    "state",
    [
        {"sensors": {"box-1": {"c": "5000"}}},
        {"sensors": {"box-1": {"c": -1}}},
        {"sensors": {"box-1": {"c": True}}},
        {"sensors": {"box-1": {"c": 5, "h": "5:abcd"}}},
        {"sensors": {"box-1": []}},
        {"sensors": []},
        {"unrelated": 1},
    ],
)
def test_state_that_is_not_what_the_driver_wrote_is_ignored_not_fatal(state):
    assert replay.load(state, now_mono=0.0, now_wall=0.0) == {}


def test_state_is_bounded_to_configured_sensors_and_the_latest_others():
    memories = {f"old-{i}": replay.Memory(counter=i) for i in range(200)}
    memories["box-1"] = replay.Memory(counter=7)
    dumped = replay.dump(memories, {"box-1"})["sensors"]
    assert dumped["box-1"] == {"c": 7}
    assert len(dumped) == replay.MAX_UNCONFIGURED + 1 and "old-199" in dumped and "old-0" not in dumped


# -- through the driver --------------------------------------------------------------------
def test_battery_swap_keeps_readings_flowing_with_one_counter_reset_event():
    async def main():
        air = fresh_air()
        driver = make_driver(air, [SENSOR])
        async with Running(driver) as sink:
            await air.wait_started()
            air.advertise(MAC, **frame(5000, 500))
            air.advertise(MAC, **frame(5001, 510))
            # batteries out and in: the counter starts again
            for counter, temp in ((1, 520), (2, 530), (3, 540)):
                air.advertise(MAC, **frame(counter, temp))
            await sink.wait_for(lambda: len(sink.readings) == 5)
        assert [r.value for r in sink.readings] == [5.0, 5.1, 5.2, 5.3, 5.4]
        resets = [d for e, d in sink.events if e == "ble_counter_reset"]
        assert resets == [{"driver": "ble", "sensor_id": "box-1", "mac": MAC, "old_counter": 5001, "new_counter": 1}]
        assert driver.status.counters["replayed"] == 0
        assert driver.status.details["sensors"]["box-1"]["counter_resets"] == 1

    run(main())


def test_replayed_frame_after_a_restart_is_refused_with_the_committed_state():
    async def main():
        air = fresh_air()
        captured = frame(5000, 0)  # 0.00 °C, recorded off the air by someone
        first = make_driver(air, [SENSOR])
        async with Running(first) as sink:
            await air.wait_started()
            air.advertise(MAC, **captured)
            air.advertise(MAC, **frame(5001, 500))
            await sink.wait_for(lambda: len(sink.readings) == 2 and sink.committed().get("sensors", {})
                                .get("box-1", {}).get("c") == 5001)
        committed = sink.committed()  # what the agent has in its store when it is SIGKILLed now

        second = make_driver(air, [SENSOR])
        second.load_state(committed)
        async with Running(second) as sink2:
            await air.wait_started(2)
            air.advertise(MAC, **captured)  # the replay
            air.advertise(MAC, **frame(5002, 510))
            await sink2.wait_for(lambda: len(sink2.readings) == 1)
        assert [r.value for r in sink2.readings] == [5.1], "the old 0.00 °C frame must not be recorded"
        assert second.status.counters["replayed"] == 1
        refused = [d for e, d in sink2.events if e == "ble_counter_refused"]
        assert refused and refused[0]["last_counter"] == 5001 and refused[0]["counter"] == 5000

    run(main())


def test_state_is_given_only_after_the_readings_it_admitted():
    async def main():
        air = fresh_air()
        driver = make_driver(air, [SENSOR])
        async with Running(driver) as sink:
            await air.wait_started()
            for counter in range(100, 130):
                air.advertise(MAC, **frame(counter, counter))
                if counter % 7 == 0:
                    await asyncio.sleep(0)  # let some reads happen in between
            await sink.wait_for(lambda: sink.committed().get("sensors", {}).get("box-1", {}).get("c") == 129)
        delivered: set[int] = set()
        for kind, item in sink.log:
            if kind == "reading":
                delivered.add(int(round(item.value * 100)))
            else:
                counter = item["sensors"]["box-1"]["c"]
                assert counter in delivered, f"state with counter {counter} given before its reading"

    run(main())


def test_state_survives_a_second_restart_and_a_restart_window_grows_with_time_offline():
    async def main():
        air = fresh_air()
        driver = make_driver(air, [SENSOR])
        # committed an hour ago at counter 5000; meanwhile the batteries were swapped and the
        # device counted to 600 while the gateway was off
        driver.load_state({"v": 1, "sensors": {"box-1": {"c": 5000, "p": "00", "t": int(time.time()) - 3600,
                                                         "k": replay.key_fingerprint(KEY)}}})
        async with Running(driver) as sink:
            await air.wait_started()
            air.advertise(MAC, **frame(600, 420))
            await sink.wait_for(lambda: len(sink.readings) == 1)
        assert [e for e, _ in sink.events] == ["ble_counter_reset"]

    run(main())


def test_frames_recorded_before_a_long_silence_are_refused_after_a_restart_of_the_gateway():
    async def main():
        air = fresh_air()
        recorded = [frame(c, 100 + c - 4990) for c in range(4990, 4998)]  # taken off the air
        first = make_driver(air, [SENSOR])
        async with Running(first) as sink:
            await air.wait_started()
            for f in recorded:
                air.advertise(MAC, **f)
            await sink.wait_for(lambda: sink.committed().get("sensors", {}).get("box-1", {}).get("c") == 4997)
        committed = sink.committed()
        # the device is kept silent for two hours (the gateway off meanwhile): the restart
        # window has grown past every recorded counter
        committed["sensors"]["box-1"]["t"] -= 7200
        second = make_driver(air, [SENSOR])
        second.load_state(committed)
        async with Running(second) as sink2:
            await air.wait_started(2)
            air.advertise(MAC, **recorded[3])  # counter 4993, sent again as a "restart"
            air.advertise(MAC, **frame(2, 450))  # the real device, batteries swapped meanwhile
            await sink2.wait_for(lambda: len(sink2.readings) == 1)
        assert [r.value for r in sink2.readings] == [4.5]
        refused = [d for e, d in sink2.events if e == "ble_counter_refused"]
        assert [(d["counter"], d["reason"]) for d in refused] == [(4993, "replayed")]
        assert [d["new_counter"] for e, d in sink2.events if e == "ble_counter_reset"] == [2]

    run(main())


def test_a_jump_back_into_the_counters_used_before_a_restart_is_refused_and_recorded_by_the_driver():
    async def main():
        air = fresh_air()
        old = frame(4000, 0)  # recorded long ago, 0.00 °C: not among the frames remembered
        driver = make_driver(air, [SENSOR])
        async with Running(driver) as sink:
            await air.wait_started()
            for c in range(4990, 5000):
                air.advertise(MAC, **frame(c, 500))
            air.advertise(MAC, **frame(1, 510))  # battery swap
            await sink.wait_for(lambda: len(sink.readings) == 11)
            air.advertise(MAC, **old)
            air.advertise(MAC, **frame(2, 520))
            await sink.wait_for(lambda: len(sink.readings) == 12)
        assert sink.readings[-1].value == 5.2 and all(r.value != 0.0 for r in sink.readings)
        refused = [d for e, d in sink.events if e == "ble_counter_refused"]
        assert [(d["last_counter"], d["counter"], d["reason"]) for d in refused] == [
            (1, 4000, "jump_into_counters_before_restart")]

    run(main())


def test_a_new_bind_key_starts_the_counter_afresh():
    async def main():
        air = fresh_air()
        new_key = bytes(range(16))
        driver = make_driver(air, [{**SENSOR, "bindkey": new_key.hex()}])
        driver.load_state({"sensors": {"box-1": {"c": 5000, "k": replay.key_fingerprint(KEY)}}})
        async with Running(driver) as sink:
            await air.wait_started()
            air.advertise(MAC, **frame(10, 250, key=new_key))
            await sink.wait_for(lambda: len(sink.readings) == 1)
        assert driver.status.counters["replayed"] == 0

    run(main())


def test_state_never_contains_the_bind_key():
    async def main():
        air = fresh_air()
        driver = make_driver(air, [SENSOR])
        async with Running(driver) as sink:
            await air.wait_started()
            air.advertise(MAC, **frame(1, 1))
            await sink.wait_for(lambda: bool(sink.states))
        assert KEY_HEX not in str(sink.states)

    run(main())
