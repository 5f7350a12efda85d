"""The running agent's rules across clock steps, restarts and reboots (issue 9, items 4-5).

In-process agents (``agent.daemon.Agent``) on a real store in ``tmp_path`` with the shipped
simulated logger at real speed, whose readings the agent stamps on arrival. The clock is
the nearest boundary the machine lets a test move: :class:`StepClock` is the agent's
``Clock`` with a wall time that steps when told and a boot-time clock that a "reboot"
starts again from a few seconds (the kernel's boot id, read by ``agent.stamp``, is
replaced for the reboot).
"""

from __future__ import annotations

import asyncio
import csv
import time
from pathlib import Path
from typing import Any

import pytest

from agent import config as configmod
from agent.daemon import Agent
from agent.rules.replay import read_csv, replay
from agent.store import Store
from agent.timebase import Clock, boottime_ns, parse_rfc3339

STEP = 3 * 3600.0

BASE = """
gateway_id = "gw-time"
[store]
path = "store.db"
commit_interval_s = 0.05
[control]
socket = "control.sock"
[time]
sync_source = "assume_synced"
[recording]
record_interval_s = 0

[[sensors]]
id = "p1"
profile = "lane"
{rules}
[[drivers]]
name = "sim"
type = "sim"
seed = 1
speed = 1
{extra}
sensors = [{{ id = "p1", interval_s = {interval}, noise = 0, excursions = [{excursion}] }}]
"""
WARM = "{ at_s = 0, duration_s = 100000, to = 12.0, ramp_s = 0 }"


def rule(name: str, **fields: Any) -> str:
    body = "\n".join(f"{k} = {v!r}" if not isinstance(v, str) else f'{k} = "{v}"' for k, v in fields.items())
    return f"[rules.profiles.lane.rules.{name}]\n{body}\n"


class StepClock(Clock):
    """The agent's clock with a wall time that steps and a boot-time clock a reboot restarts."""

    def __init__(self) -> None:
        super().__init__("assume_synced")
        self.wall_offset = 0.0
        self.boot_start_ns = 0
        self.is_synced = True

    def now(self) -> float:
        return time.time() + self.wall_offset

    def mono_ns(self) -> int:
        return boottime_ns() - self.boot_start_ns

    def synced(self) -> bool:
        return self.is_synced

    def step(self, seconds: float) -> None:
        self.wall_offset += seconds

    def reboot(self, downtime_s: float, *, synced: bool) -> None:
        """The machine was down ``downtime_s`` (by the wall clock): boot time starts at 5 s."""
        self.wall_offset += downtime_s
        self.boot_start_ns = boottime_ns() - 5_000_000_000
        self.is_synced = synced


def config(tmp_path: Path, rules: str, *, interval: float = 0.25, extra: str = "", excursion: str = WARM) -> Any:
    path = tmp_path / "c.toml"
    path.write_text(BASE.format(rules=rules, interval=interval, extra=extra, excursion=excursion))
    return configmod.load(path)


async def poll(predicate: Any, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        await asyncio.sleep(0.02)
    raise AssertionError("condition not met in time")


async def start(agent: Agent) -> asyncio.Task[int]:
    task = asyncio.create_task(agent.run())
    await poll(lambda: agent.ready.is_set() or task.done())
    if task.done():
        task.result()
    return task


async def stop(agent: Agent, task: asyncio.Task[int]) -> None:
    agent.stop()
    assert await task == 0


def records(tmp_path: Path, **kw: Any) -> list[dict[str, Any]]:
    path = tmp_path / "store.db"
    if not path.exists():
        return []
    with Store.open(path, gateway_id="gw-time", create=False, check=False) as s:
        return s.records(**kw)


def temps(tmp_path: Path) -> list[dict[str, Any]]:
    return [r for r in records(tmp_path, type="reading") if r["quantity"] == "temperature"]


def raised(tmp_path: Path) -> dict[str, dict[str, Any]]:
    return {a["rule"]: a for a in records(tmp_path, type="alarm") if a["state"] == "raised"}


def events(tmp_path: Path, name: str) -> list[dict[str, Any]]:
    return [r for r in records(tmp_path, type="event") if r["event"] == name]


def t(rec: dict[str, Any], key: str = "ts") -> float:
    return parse_rfc3339(rec[key])


def test_a_backward_step_while_synced_during_an_excursion_raises_high_after_its_delay_and_mkt_and_budget_count(
        tmp_path: Path) -> None:
    """0.1.0: 63 readings at 12 °C stored after the step and no alarm (every sample clamped
    to the last time before the step)."""
    cfg = config(tmp_path, rule("high", type="above", limit=8.0, delay_s=3.0)
                 + rule("tor", type="budget", above=8.0, budget_s=4.0)
                 + rule("mkt", type="mkt", limit=8.0, min_span_s=2.0))
    clock = StepClock()

    async def scenario() -> None:
        agent = Agent(cfg, clock=clock)
        task = await start(agent)
        await poll(lambda: temps(tmp_path))
        clock.step(-STEP)  # at once: well before the 3 s delay runs out
        await poll(lambda: {"high", "tor", "mkt"} <= set(raised(tmp_path)))
        await stop(agent, task)

    asyncio.run(scenario())
    first = temps(tmp_path)[0]
    alarms = raised(tmp_path)
    high, tor, mkt = alarms["high"], alarms["tor"], alarms["mkt"]
    assert first["value"] == 12.0 and t(high, "started_at") == pytest.approx(t(first), abs=1e-3)
    # 3 s of elapsed time after the excursion began, stamped on the clock as it read then
    assert high["duration_s"] == 3.0
    assert t(high) == pytest.approx(t(first) + 3.0 - STEP, abs=0.05)
    assert tor["spent_s"] == 4.0 and t(tor) == pytest.approx(t(first) + 4.0 - STEP, abs=0.05)
    assert mkt["span_s"] >= 2.0 and mkt["mkt"] >= 8.0
    assert events(tmp_path, "clock_step")  # and the step itself is in the record


def test_a_forward_step_raises_no_missing_for_a_sensor_sending_every_half_second_but_a_real_silence_does(
        tmp_path: Path) -> None:
    """0.1.0: the first tick after a 3 h forward step raised ``missing`` (severity alarm),
    cleared by the next sample with ``duration_s`` equal to the step."""
    # 3 readings per sample (temperature, humidity, battery): 12 samples, 6 s, then silence
    cfg = config(tmp_path, rule("silent", type="missing", timeout_s=1.5), interval=0.5, extra="limit = 36",
                 excursion="")
    clock = StepClock()

    async def scenario() -> None:
        agent = Agent(cfg, clock=clock)
        task = await start(agent)
        await poll(lambda: temps(tmp_path))
        clock.step(+STEP)
        last = (await poll(lambda: (r := temps(tmp_path)) and len(r) == 12 and r))[-1]
        await poll(lambda: any(a["seq"] > last["seq"] for a in records(tmp_path, type="alarm")))
        await stop(agent, task)

    asyncio.run(scenario())
    readings = temps(tmp_path)
    assert len(readings) == 12 and t(readings[-1]) > t(readings[0]) + STEP  # the step took effect
    missing = [(a["state"], a["duration_s"]) for a in records(tmp_path, type="alarm") if a["rule"] == "silent"]
    assert missing == [("raised", 1.5)]  # the silence only: no alarm at the step, none cleared
    (alarm,) = records(tmp_path, type="alarm")
    last = readings[-1]
    assert alarm["state"] == "raised" and alarm["severity"] == "alarm" and alarm["duration_s"] == 1.5
    assert t(alarm, "started_at") == pytest.approx(t(last), abs=1e-3)
    assert t(alarm) == pytest.approx(t(last) + 1.5, abs=1e-3)


def test_a_restart_in_the_same_boot_resumes_the_delay_exactly_even_if_the_clock_stepped_meanwhile(
        tmp_path: Path) -> None:
    """The boot-time clock counted the downtime: the delay runs out 4 s after the excursion
    began, not 4 s of samples after the restart, and not never (0.1.0: the samples after
    the restart were 3 h before the last one and clamped)."""
    cfg = config(tmp_path, rule("high", type="above", limit=8.0, delay_s=4.0))
    clock = StepClock()

    async def scenario() -> None:
        agent = Agent(cfg, clock=clock)
        task = await start(agent)
        await poll(lambda: len(temps(tmp_path)) >= 4)  # about 1 s into the excursion
        await stop(agent, task)
        assert raised(tmp_path) == {}
        clock.step(-STEP)  # the clock is set back while the agent is down
        agent = Agent(cfg, clock=clock)
        task = await start(agent)
        await poll(lambda: "high" in raised(tmp_path))
        await stop(agent, task)

    asyncio.run(scenario())
    first = temps(tmp_path)[0]
    (high,) = [a for a in records(tmp_path, type="alarm") if a["state"] == "raised"]
    assert high["duration_s"] == 4.0 and t(high, "started_at") == pytest.approx(t(first), abs=1e-3)
    # the instant is 4 s of elapsed time in; it is stamped on the clock of the sample before
    # it: after the restart (set back), or before it should the restart have taken > 3 s
    gap = t(high) - t(first)
    assert gap == pytest.approx(4.0 - STEP, abs=0.05) or gap == pytest.approx(4.0, abs=0.05)
    assert events(tmp_path, "timeline_resumed") == []  # same boot: nothing to say


def test_a_reboot_with_a_synchronised_clock_counts_its_downtime(tmp_path: Path, monkeypatch) -> None:
    """The clock stepped back 3 h at sync, then the gateway was off for an hour: the delay
    of 10 min and the budget of 15 min ran out during the downtime (sample and hold), and
    are raised at once, at their instants. 0.1.0 compared wall stamps: the samples after
    the reboot were still before the last one before the step, and nothing was raised."""
    cfg = config(tmp_path, rule("high", type="above", limit=8.0, delay_s=600.0)
                 + rule("tor", type="budget", above=8.0, budget_s=900.0))
    clock = StepClock()

    async def scenario() -> None:
        monkeypatch.setattr("agent.stamp.boot_id", lambda: "boot-1")
        agent = Agent(cfg, clock=clock)
        task = await start(agent)
        await poll(lambda: temps(tmp_path))
        clock.step(-STEP)
        await poll(lambda: len(temps(tmp_path)) >= 4)
        await stop(agent, task)
        clock.reboot(3600.0, synced=True)
        monkeypatch.setattr("agent.stamp.boot_id", lambda: "boot-2")
        agent = Agent(cfg, clock=clock)
        task = await start(agent)
        await poll(lambda: {"high", "tor"} <= set(raised(tmp_path)))
        await stop(agent, task)

    asyncio.run(scenario())
    first = temps(tmp_path)[0]
    alarms = raised(tmp_path)
    assert alarms["high"]["duration_s"] == 600.0 and alarms["tor"]["spent_s"] == 900.0
    assert t(alarms["high"]) == pytest.approx(t(first) + 600.0 - STEP, abs=0.05)
    assert t(alarms["tor"]) == pytest.approx(t(first) + 900.0 - STEP, abs=0.05)
    (resumed,) = events(tmp_path, "timeline_resumed")
    d = resumed["details"]
    assert d["resumed"] == "reboot" and d["previous_boot_id"] == "boot-1" and d["counted"] is True
    assert d["downtime_s"] == pytest.approx(3600.0, abs=5.0)


def test_a_reboot_without_a_synchronised_clock_counts_its_downtime_as_nothing_and_says_so(
        tmp_path: Path, monkeypatch) -> None:
    """After a reboot without RTC the clock is not synchronised: its figure for the downtime
    is no measurement. 0.1.0 counted it (the wall clock said 1 h): the 3 s delay had run
    out at the first sample after the restart."""
    cfg = config(tmp_path, rule("high", type="above", limit=8.0, delay_s=3.0))
    clock = StepClock()

    async def scenario() -> None:
        monkeypatch.setattr("agent.stamp.boot_id", lambda: "boot-1")
        agent = Agent(cfg, clock=clock)
        task = await start(agent)
        await poll(lambda: len(temps(tmp_path)) >= 3)
        await stop(agent, task)
        clock.reboot(3600.0, synced=False)
        monkeypatch.setattr("agent.stamp.boot_id", lambda: "boot-2")
        agent = Agent(cfg, clock=clock)
        task = await start(agent)
        await poll(lambda: "high" in raised(tmp_path))
        await stop(agent, task)

    asyncio.run(scenario())
    high = raised(tmp_path)["high"]
    assert high["duration_s"] == 3.0
    before_reboot = [r for r in temps(tmp_path) if r["time_quality"] == "synced"]
    after_reboot = [r for r in temps(tmp_path) if r["time_quality"] == "unsynced" and r["seq"] < high["seq"]]
    # the rest of the delay ran after the restart, on samples: 3 s in all, ~0.25 s apart
    assert 0.25 * (len(before_reboot) - 1 + len(after_reboot)) >= 3.0 - 0.3
    (resumed,) = events(tmp_path, "timeline_resumed")
    d = resumed["details"]
    assert d["counted"] is False and d["downtime_s"] == 0.0 and d["synced_now"] is False
    assert d["wall_downtime_s"] == pytest.approx(3600.0, abs=5.0)


def test_replay_of_the_stored_readings_gives_the_live_alarms_at_the_same_times(tmp_path: Path) -> None:
    """Without clock steps the timeline and the wall clock run together: replay (wall
    times from CSV) and live (elapsed time) agree to the millisecond the CSV keeps."""
    rules = (rule("high", type="above", limit=8.0, delay_s=1.0)
             + rule("tor", type="budget", above=8.0, budget_s=1.5)
             + rule("mkt", type="mkt", limit=7.0, min_span_s=0.5))
    cfg = config(tmp_path, rules, interval=0.1, excursion="{ at_s = 0.5, duration_s = 2.0, to = 12.0, ramp_s = 0 }")

    async def scenario() -> None:
        agent = Agent(cfg)
        task = await start(agent)
        await poll(lambda: any(a["rule"] == "high" and a["state"] == "cleared"
                               for a in records(tmp_path, type="alarm")))
        await stop(agent, task)

    asyncio.run(scenario())
    csv_path = tmp_path / "trip.csv"
    with csv_path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["ts", "sensor_id", "quantity", "value", "unit"])
        for r in records(tmp_path, type="reading"):
            w.writerow([r["ts"], r["sensor_id"], r["quantity"], r["value"], r["unit"]])
    result = replay(cfg.rules, "lane", read_csv(csv_path))
    live = {}
    for a in records(tmp_path, type="alarm"):
        entry = live.setdefault(a["alarm_id"], {"started_at": t(a, "started_at")})
        entry[a["state"]] = t(a)
    assert {"p1:high:1", "p1:tor:1", "p1:mkt:1"} <= set(live)
    replayed = {a["alarm_id"]: a for a in result.alarms}
    assert set(replayed) == set(live)
    for alarm_id, entry in live.items():
        again = replayed[alarm_id]
        assert parse_rfc3339(again["started_at"]) == pytest.approx(entry["started_at"], abs=2e-3), alarm_id
        assert parse_rfc3339(again["raised_at"]) == pytest.approx(entry["raised"], abs=2e-3), alarm_id
        if "cleared" in entry:
            assert again["cleared_at"] is not None
            assert parse_rfc3339(again["cleared_at"]) == pytest.approx(entry["cleared"], abs=2e-3), alarm_id


def seed(tmp_path: Path, **state: Any) -> None:
    """A store as an earlier agent left it, with ``state`` saved."""
    from agent.stamp import Stamper

    stamper = Stamper(Clock("assume_synced"))
    with Store.open(tmp_path / "store.db", gateway_id="gw-time", stamper=stamper) as store:
        store.append([stamper.event("agent_stopped", {"reason": "signal"})], state=state)


def test_a_rules_state_saved_by_0_1_is_migrated_and_its_excursion_raises_on_time(tmp_path: Path, caplog) -> None:
    since = time.time() - 1.0  # 0.1.0 saved wall-clock times: an excursion 1 s old
    v1 = {"version": 1, "book": {"alarms": {}, "open": {}, "counters": {}, "pending": []}, "sensors": {"p1": {
        "profile": "lane", "last_ts": since + 0.5,
        "mkt": {"sum_we": 0.0, "sum_w": 0.0, "last_ts": None, "last_e": 0.0, "gaps": 0, "gap_s": 0.0, "buckets": []},
        "rules": {"high": {"type": "above", "since": since, "raised": False, "value": 12.0, "peak": 12.0}}}}}
    seed(tmp_path, rules=v1)
    cfg = config(tmp_path, rule("high", type="above", limit=8.0, delay_s=3.0))

    async def scenario() -> None:
        agent = Agent(cfg)
        task = await start(agent)
        await poll(lambda: "high" in raised(tmp_path))
        await stop(agent, task)

    with caplog.at_level("INFO"):
        asyncio.run(scenario())
    high = raised(tmp_path)["high"]
    assert t(high, "started_at") == pytest.approx(since, abs=1e-3)
    assert t(high) == pytest.approx(since + 3.0, abs=0.05) and high["duration_s"] == 3.0
    assert "version 1 (wall-clock times) migrated" in caplog.text


def test_an_unreadable_rules_state_or_timeline_is_logged_and_the_agent_runs_with_fresh_rules(
        tmp_path: Path, caplog) -> None:
    """0.1.0 crashed at start (a KeyError out of the engine) on a damaged rule state."""
    seed(tmp_path, rules={"version": 1, "sensors": {"p1": {"profile": "lane"}}}, timeline={"version": 1})
    cfg = config(tmp_path, rule("high", type="above", limit=8.0, delay_s=0.5))

    async def scenario() -> None:
        agent = Agent(cfg)
        task = await start(agent)
        await poll(lambda: "high" in raised(tmp_path))
        await stop(agent, task)

    with caplog.at_level("INFO"):
        asyncio.run(scenario())
    assert "saved rules state not usable (rules state unreadable" in caplog.text
    assert "saved timeline unreadable" in caplog.text
    first = temps(tmp_path)[0]
    assert t(raised(tmp_path)["high"]) == pytest.approx(t(first) + 0.5, abs=0.05)
    (resumed,) = events(tmp_path, "timeline_resumed")
    assert resumed["details"]["resumed"] == "unreadable"
