"""The health check's judgement and the state directory's start rules, on their own."""

from __future__ import annotations

import hashlib
from pathlib import Path

from agent import config as configmod
from agent.fleet.gate import Candidate, Provenance
from agent.fleet.health import FAILED, PASSED, PENDING, Snapshot, Trial
from agent.fleet.keeper import Keeper


def snap(readings: int = 0, *, state: str = "running", committed: int = 10, store_error: str | None = None,
         ok: int = 3, result: str = "ok") -> Snapshot:
    return Snapshot({"a": {"state": state, "readings": readings, "last_error": None if state == "running"
                           else "DriverUnavailable: no port"}}, committed, store_error, ok, result)


def trial(uplink: bool = True) -> Trial:
    return Trial(["a"], snap(5), started=100.0, window_s=10.0, uplink_answered_before=uplink)


def test_the_check_passes_once_every_driver_delivered_the_store_committed_and_the_uplink_answered() -> None:
    t = trial()
    assert t.judge(snap(5, committed=11, ok=4), 101.0) == PENDING  # a has delivered nothing since
    assert t.waiting_for == ["driver a: no reading since the apply (state running)"]
    assert t.judge(snap(6, committed=11, ok=3), 101.0) == PENDING  # the uplink has not answered since
    assert t.judge(snap(6, committed=11, ok=4), 102.0) == PASSED


def test_the_check_fails_at_the_end_of_the_window_naming_each_unmet_condition_with_its_error() -> None:
    t = trial()
    assert t.judge(snap(5, state="backoff", store_error="disk I/O error", ok=3, result="transient"), 110.0) == FAILED
    assert t.failures[0] == "driver a: no reading since the apply (state backoff; DriverUnavailable: no port)"
    assert t.failures[1] == "store not writable: disk I/O error"
    assert t.failures[2].startswith("uplink: no successful exchange since the apply (it answered before; now transient")


def test_an_uplink_that_did_not_answer_before_the_apply_is_not_required_to_answer_after() -> None:
    t = trial(uplink=False)
    assert t.judge(snap(6, committed=11, ok=3, result="transient"), 101.0) == PASSED


def candidate(tmp: Path, name: str, version: int) -> Candidate:
    p = tmp / name
    p.write_text(f'gateway_id = "gw"\nconfig_version = {version}\n')
    data = p.read_bytes()
    return Candidate(configmod.load(p), data, None, Provenance(version, hashlib.sha256(data).hexdigest(), None, str(p)))


def test_a_start_takes_the_kept_config_only_when_its_version_is_higher_or_the_named_file_rolled_back(
        tmp_path: Path) -> None:
    keeper = Keeper(tmp_path / "fleet")
    v1, v2, v3 = (candidate(tmp_path, f"v{n}.toml", n) for n in (1, 2, 3))
    keeper.remember_good(v2, why="test")
    kept, note = keeper.choose(v1)
    assert kept is not None and kept.provenance.version == 2 and note is None  # the inbox's newer config
    assert keeper.choose(v3) == (None, None)  # the administrator's newer file wins
    assert keeper.choose(v2) == (None, None)  # the same
    keeper.start_trial(v3, 60)
    kept, note = keeper.choose(v3)  # the last run died during v3's check (config apply installed it)
    assert kept is not None and kept.provenance.version == 2
    assert note is not None and note["from"]["version"] == 3 and keeper.trial() is None
    assert keeper.rolled_back(v3.provenance.sha256) is not None
    keeper.start_trial(v3, 60)
    keeper.trial_stopped_cleanly()
    kept, note = keeper.choose(v1)  # a clean stop: the trial runs again
    assert kept is not None and kept.provenance.version == 3 and note is None
