"""What `coldgate status` says of an agent in each phase of its life."""

from __future__ import annotations

from agent.status import render


def base(**over: object) -> dict[str, object]:
    return {"running": True, "answering": True, "pid": 4242, "gateway_id": "gw", "clock": {},
            "started_at": "2026-12-01T10:00:00.000Z", **over}


def test_an_agent_still_opening_its_store_and_drivers_is_shown_starting_not_running() -> None:
    text = render(base(ready=False))
    assert "starting (pid 4242" in text
    assert "running (pid" not in text


def test_a_ready_agent_is_shown_running_with_its_pid() -> None:
    text = render(base(ready=True))
    assert "running (pid 4242)" in text
    assert "starting" not in text.split("\n")[0]


def test_units_are_written_as_people_write_them_and_never_as_senml_symbols() -> None:
    text = render(base(ready=True, sensors={"box-1": {"age_s": 3.0, "readings": {
        "temperature": {"value": 5.25, "unit": "Cel"}, "humidity": {"value": 45.5, "unit": "%RH"},
        "battery": {"value": 80, "unit": "%EL"}, "voltage": {"value": 3.1, "unit": "V"}}}}))
    line = next(x for x in text.splitlines() if x.startswith("sensor box-1"))
    assert "temperature 5.25 °C" in line and "humidity 45.5 %RH" in line
    assert "battery 80%" in line and "voltage 3.1 V" in line
    assert "Cel" not in text and "%EL" not in text and "3 s ago" in line


def test_the_store_line_gives_the_configured_quota_not_a_default() -> None:
    text = render(base(ready=True, store={"path": "/var/lib/coldgate/store.db", "head_seq": 12, "pending": 2,
                                          "disk_bytes": 3 << 20, "quota_bytes": 64 << 20}))
    assert "3.0 of 64 MiB" in text


def test_an_alarm_and_a_drivers_resolved_error_are_given_with_dates_not_epoch_seconds() -> None:
    text = render(base(ready=True,
                       alarms=[{"alarm_id": "a-1", "severity": "alarm", "rule": "high", "sensor_id": "p1",
                                "state": "raised", "started_at": "2026-12-01T20:15:02.000Z"}],
                       drivers={"modbus": {"type": "modbus", "state": "running", "last_error": "timeout",
                                           "last_error_at": "2026-12-01T19:00:00.000Z",
                                           "recovered_at": "2026-12-01T19:00:30.000Z"}}))
    assert "ALARM a-1: alarm high on p1, raised, since 2026-12-01 20:15:02 UTC" in text
    assert ("driver modbus (modbus): running — last error at 2026-12-01 19:00:00 UTC, "
            "resolved 2026-12-01 19:00:30 UTC: timeout") in text


def test_a_part_that_did_not_answer_in_time_is_flagged_stale() -> None:
    text = render(base(ready=True, stale=["uplink"]))
    assert "STALE: uplink did not answer in time; figures for it may be old" in text
