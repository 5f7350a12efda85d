"""The rules' state is committed with every alarm change, whatever else is going on.

Issue 10 item 12: the writer saves the rule state while a sensor is out of range, when
one comes back, every ``STATE_EVERY_S`` — and always with an alarm change, so an alarm is
never raised twice and an acknowledgement never forgotten after a crash. These tests
make alarm changes while every sensor is in range and the periodic save is not due
(``STATE_EVERY_S`` set beyond the test's length, so no timing decides the outcome), then
restart from the store exactly as a SIGKILL leaves it (a copy of its committed
transactions taken while the writer still runs) the way the agent does: the timeline,
then the rule engine from ``Store.load_state("rules")``.

Real parts: the writer on its thread, the intake, the ingest, the rule engine, SQLite in
``tmp_path``; the clock is a manual one so a sensor goes silent without waiting.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from agent import config as configmod
from agent import writer as writer_mod
from agent.ingest import Ingest
from agent.intake import Intake
from agent.rules.engine import RuleEngine, Sample
from agent.stamp import Stamper
from agent.store import Store
from agent.timebase import Clock
from agent.writer import Writer, spill_path
from drivers.base import Reading

CFG = configmod.loads("""
gateway_id = "gw"
[recording]
record_interval_s = 0
[rules.profiles.watch.rules.high]
type = "above"
limit = 8.0
[rules.profiles.watch.rules.silent]
type = "missing"
timeout_s = 60
[[sensors]]
id = "p1"
profile = "watch"
""")
T0 = 1_790_000_000.0


class ManualClock(Clock):
    """Synced wall and boottime clocks that move only when told."""

    def __init__(self) -> None:
        super().__init__("assume_synced")
        self.wall, self.mono = T0, 5_000 * 10**9

    def now(self) -> float:
        return self.wall

    def mono_ns(self) -> int:
        return self.mono

    def synced(self) -> bool:
        return True

    def advance(self, seconds: float) -> None:
        self.wall += seconds
        self.mono += round(seconds * 1e9)


@pytest.fixture(autouse=True)
def periodic_save_never_due(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the first commit of a run is due by the clock: every later state save has a reason."""
    monkeypatch.setattr(writer_mod, "STATE_EVERY_S", 10**9)


class Gateway:
    """The writer and its rules wired as the agent wires them, on ``path``."""

    def __init__(self, path: Path, clock: ManualClock) -> None:
        self.path, self.clock = path, clock
        self.stamper = Stamper(clock)
        self.intake = Intake(self.stamper, capacity=4096)
        self.ingest = Ingest(CFG, self.stamper)
        self.writer = Writer(self._open, self.intake, self.ingest, self.stamper, commit_interval_s=30.0,
                             commit_max=500, spill=spill_path(path))
        self.ingest.on_alarm = self.writer.note_alarm
        self.writer.max_wait_s = 0.05
        self.writer.start()
        self.writer.opened.result(10)  # the timeline resumed from the store, as at the agent's start
        self.engine: RuleEngine = self.on_writer(self._build_engine)

    def _open(self) -> Store:
        return Store.open(self.path, gateway_id="gw", stamper=self.stamper)

    def _build_engine(self) -> RuleEngine:  # as Agent._start_engine does
        store = self.writer.store
        assert store is not None
        engine = RuleEngine(CFG.rules, {"p1": "watch"}, state=store.load_state("rules"))
        self.ingest.set_judge(engine, Sample)
        return engine

    def on_writer(self, fn: Any) -> Any:
        return self.intake.call(fn).result(10)

    def read(self, value: float) -> None:
        """A reading of p1 arrives now and is committed."""
        self.intake.put_readings("sim", [Reading("p1", "temperature", value, "Cel", self.clock.wall)])
        self.on_writer(self.writer.flush)

    def tick(self) -> None:
        """Time-driven rules look at the clock now, and what they raise is committed."""
        self.on_writer(lambda: (self.ingest.tick(), self.writer.flush()))

    def ack(self, alarm_id: str) -> dict[str, Any]:  # as Agent._cmd_alarm_ack does
        def ack() -> dict[str, Any]:
            change = self.engine.acknowledge(alarm_id, "qa", "probe checked", self.stamper.now())
            self.ingest.alarm(change)
            self.writer.flush()
            return dict(change)

        return self.on_writer(ack)

    def crash_copy(self) -> Path:
        """The store as a SIGKILL now would leave it: its committed transactions."""
        copy = self.path.with_name("after-crash.db")
        with sqlite3.connect(self.path) as src, sqlite3.connect(copy) as dst:
            src.backup(dst)
        return copy

    def stop(self) -> None:
        self.writer.stop()


def committed_rules(path: Path) -> dict[str, Any]:
    with Store.open(path, gateway_id="gw", create=False, check=False) as s:
        state = s.load_state("rules")
    assert state is not None
    return state


def alarms(path: Path) -> list[tuple[str, str]]:
    with Store.open(path, gateway_id="gw", create=False, check=False) as s:
        return [(r["alarm_id"], r["state"]) for r in s.records(type="alarm")]


def test_an_acknowledgement_after_the_excursion_cleared_is_committed_with_the_rules_state(tmp_path: Path) -> None:
    clock = ManualClock()
    gw = Gateway(tmp_path / "store.db", clock)
    gw.read(9.0)  # out of range: raised
    clock.advance(30)
    gw.read(5.0)  # back in range: cleared, still active until acknowledged
    assert [a["alarm_id"] for a in gw.engine.active()] == ["p1:high:1"]
    clock.advance(5)
    assert gw.ack("p1:high:1")["state"] == "acknowledged"  # every sensor in range, no save due by time
    assert gw.engine.active() == []
    assert committed_rules(gw.path)["book"]["alarms"] == {}, "the acknowledgement is in the committed state"
    crashed = gw.crash_copy()
    gw.stop()

    again = Gateway(crashed, clock)
    assert again.engine.active() == [], "the restarted agent has not forgotten the acknowledgement"
    with pytest.raises(KeyError):  # `alarms ack` again: "no active alarm"
        again.on_writer(lambda: again.engine.acknowledge("p1:high:1", "qa", "again", clock.now()))
    clock.advance(30)
    again.read(9.5)
    again.stop()
    assert alarms(crashed) == [("p1:high:1", "raised"), ("p1:high:1", "cleared"), ("p1:high:1", "acknowledged"),
                               ("p1:high:2", "raised")], "a new excursion is a new alarm; the old one is done"


def test_a_missing_alarm_for_a_silent_sensor_is_committed_with_the_rules_state(tmp_path: Path) -> None:
    clock = ManualClock()
    gw = Gateway(tmp_path / "store.db", clock)
    gw.read(5.0)  # in range: the first commit of the run saves the state
    clock.advance(61)  # silent past the 60 s timeout; nothing out of range
    gw.tick()
    assert alarms(gw.path) == [("p1:silent:1", "raised")]
    (saved,) = committed_rules(gw.path)["book"]["alarms"].values()
    assert (saved["alarm_id"], saved["state"]) == ("p1:silent:1", "raised")
    crashed = gw.crash_copy()
    gw.stop()

    again = Gateway(crashed, clock)
    clock.advance(30)  # still silent after the restart
    again.tick()
    assert [a["alarm_id"] for a in again.engine.active()] == ["p1:silent:1"]
    assert alarms(crashed) == [("p1:silent:1", "raised")], "the restarted agent does not raise it again"
    again.read(5.0)  # the sensor speaks: the same alarm clears
    again.stop()
    assert alarms(crashed) == [("p1:silent:1", "raised"), ("p1:silent:1", "cleared")]
