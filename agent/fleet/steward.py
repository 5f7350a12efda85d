"""The steward of the running config: what runs, the one on trial, the way back.

The supervisor (:mod:`agent.daemon`) applies configs; the steward decides and remembers
around each apply:

- at start, which config to run (:meth:`Steward.choose_start`, after
  :meth:`agent.fleet.keeper.Keeper.choose`), and its :class:`Provenance`;
- for each candidate, the verdict of :func:`agent.fleet.gate.examine` against the running
  config (signature under the running keyring, version order, files that rolled back);
- after each apply, the trial: a baseline, then a :class:`~agent.fleet.health.Trial`
  judged every moment until it passes (``config_confirmed``; the config becomes the last
  good one) or fails (the supervisor re-applies the last good config, ``config_rolled_back``
  records what failed and where the bad file is kept).

Its :attr:`Steward.provenance` is what status, the events and every uplink batch report.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

from agent.config import Config
from agent.exc import ColdgateError, ConfigError
from agent.fleet.gate import Candidate, Provenance, examine, read_bytes
from agent.fleet.health import FAILED, PASSED, Snapshot, Trial, uplink_answered
from agent.fleet.keeper import Keeper, Kept, default_state_dir
from agent.fleet.trust import read_signature, signature_path
from agent.timebase import rfc3339

log = logging.getLogger("coldgate.fleet")

#: Fixed while running: a config that changes them needs a restart (also at start: a kept
#: config for another store or socket is not taken).
FIXED = ("gateway_id", "store.path", "control.socket")


def fixed_changes(a: Config, b: Config) -> list[str]:
    return [k for k, x, y in (("gateway_id", a.gateway_id, b.gateway_id), ("store.path", a.store.path, b.store.path),
                              ("control.socket", a.control.socket, b.control.socket)) if x != y]


class Steward:
    """See the module docstring."""

    def __init__(self, config: Config, *, post: Callable[[str, Mapping[str, Any]], None],
                 snapshot: Callable[[], Awaitable[Snapshot]],
                 rollback: Callable[[Kept, list[str]], Awaitable[dict[str, Any]]],
                 trusted_uid: int = 0) -> None:
        self.keeper = Keeper(config.fleet.state_dir or default_state_dir(config.store.path))
        self.post = post
        self.snapshot = snapshot
        self.rollback = rollback
        self.trusted_uid = trusted_uid
        self.provenance = Provenance(config.config_version, None, None, None)
        self.candidate: Candidate | None = None
        self.trial: Trial | None = None
        self.last_rollback: dict[str, Any] | None = None
        self.last_confirmed: dict[str, Any] | None = None
        self._task: asyncio.Task[None] | None = None
        self._outcome: asyncio.Future[dict[str, Any]] | None = None
        self._start_note: dict[str, Any] | None = None

    def provenance_batch(self) -> dict[str, Any]:
        """The ``config`` member of every uplink batch (called on the uplink's thread)."""
        return self.provenance.batch()

    # -- start -------------------------------------------------------------------------
    def choose_start(self, config: Config, path: Path | None) -> tuple[Config, Path | None]:
        """The config to start with (the given one, or a kept one) and its file."""
        if path is None:
            return config, None
        try:
            data = read_bytes(path)
        except ConfigError as exc:
            log.warning("config %s cannot be read again (%s); running what was loaded", path, exc)
            return config, path
        sig = read_signature(signature_path(path))
        signer = None
        if sig is not None:
            try:
                signer = self._keyring(config).verify(data, sig, source=str(path))
            except ConfigError as exc:
                log.warning("the signature beside %s does not verify (%s); it runs as unsigned",
                            path, "; ".join(str(p) for p in exc.problems))
        base = Candidate(config, data, sig, Provenance(config.config_version, hashlib.sha256(data).hexdigest(),
                                                       signer, str(path)))
        self.candidate, self.provenance = base, base.provenance
        try:
            kept, note = self.keeper.choose(base)
        except OSError as exc:
            log.error("fleet state in %s not usable (%s); starting on %s", self.keeper.folder, exc, path)
            return config, path
        self._start_note = note
        if kept is None:
            return config, path
        try:
            cand = examine(kept.path, base_dir=path.parent, kept=kept.provenance, signature=kept.signature,
                           source=kept.provenance.source)
        except ConfigError as exc:
            log.error("kept config %s not usable (%s); starting on %s", kept.path, exc, path)
            return config, path
        if changed := fixed_changes(cand.config, config):
            log.warning("kept config %s differs in %s from %s; starting on the latter", kept.path,
                        ", ".join(changed), path)
            return config, path
        log.info("starting on the kept config %s (version %s) rather than %s (version %s)", kept.path,
                 cand.config.config_version, path, config.config_version)
        self.candidate, self.provenance = cand, cand.provenance
        return cand.config, kept.path

    def _keyring(self, config: Config) -> Any:
        from agent.fleet.trust import Keyring

        return Keyring.load(config.fleet.trusted_keys, trusted_uid=self.trusted_uid)

    def started(self, window_s: float) -> None:
        """After the store lock is held: record the start, keep the start config as good."""
        if self._start_note is not None:
            self.last_rollback = {**self._start_note, "to": self.provenance.batch(), "at": rfc3339(time.time())}
            self.post("config_rolled_back", {**self._start_note, "to": self.provenance.batch(),
                                             "at": "start", "reason": "agent_restarted"})
        cand = self.candidate
        if cand is None:
            return
        try:
            trial = self.keeper.trial()
            if trial is not None and trial.provenance.sha256 == cand.provenance.sha256:
                return  # a trial interrupted by a clean stop: the supervisor runs it again
            good = self.keeper.last_good()
            if good is None or good.provenance.sha256 != cand.provenance.sha256:
                self.keeper.remember_good(cand, why="the agent started on it")
        except OSError as exc:
            log.error("cannot keep the start config in %s (%s): no rollback target", self.keeper.folder, exc)

    def resumed_trial(self) -> bool:
        """Whether the start config is a trial a clean stop interrupted (to be checked again)."""
        trial = self.keeper.trial()
        return trial is not None and self.candidate is not None and \
            trial.provenance.sha256 == self.candidate.provenance.sha256

    # -- candidates --------------------------------------------------------------------
    def examine(self, path: Path, running: Config, *, base_dir: Path, signature: Path | None = None,
                allow_downgrade: bool = False, source: str | None = None) -> Candidate:
        return examine(path, base_dir=base_dir, running=running, running_version=self.provenance.version,
                       signature=signature, allow_downgrade=allow_downgrade, rolled_back=self.keeper.rolled_back,
                       trusted_uid=self.trusted_uid, source=source)

    def examine_kept(self, kept: Kept, *, base_dir: Path) -> Candidate:
        return examine(kept.path, base_dir=base_dir, kept=kept.provenance, signature=kept.signature,
                       source=kept.provenance.source)

    # -- after an apply ------------------------------------------------------------------
    async def applied(self, cand: Candidate, *, window_s: float, drivers: list[str], rollback: bool = False,
                      uplink: bool = True) -> None:
        """``cand`` now runs: start its trial (or, for a rollback or no window, keep it as good)."""
        self.cancel_trial(superseded=True)
        self.candidate, self.provenance = cand, cand.provenance
        if rollback or window_s <= 0:
            await asyncio.to_thread(self._keep_good, cand, "rolled back to" if rollback else "applied, no health check")
            return
        try:
            await asyncio.to_thread(self.keeper.start_trial, cand, window_s)
        except OSError as exc:
            log.error("cannot keep the config on trial in %s (%s)", self.keeper.folder, exc)
        await self.begin_trial(drivers, window_s, uplink=uplink)

    async def begin_trial(self, drivers: list[str], window_s: float, *, uplink: bool = True) -> None:
        """Judge the config that runs now. ``uplink``: it has one (a config that removes the
        uplink on purpose is not failed for the silence)."""
        base = await self.snapshot()
        self.trial = Trial(drivers, base, time.monotonic(), window_s, uplink and uplink_answered(base))
        self._outcome = asyncio.get_running_loop().create_future()
        self._task = asyncio.get_running_loop().create_task(self._watch(self.trial, self._outcome), name="trial")

    def _keep_good(self, cand: Candidate, why: str) -> None:
        try:
            self.keeper.remember_good(cand, why=why)
        except OSError as exc:
            log.error("cannot keep the config as last good in %s (%s)", self.keeper.folder, exc)

    def outcome(self) -> asyncio.Future[dict[str, Any]] | None:
        """The verdict of the trial running now (None when none runs)."""
        return self._outcome

    def cancel_trial(self, *, superseded: bool = False) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
        if self._outcome is not None and not self._outcome.done():
            self._outcome.set_result({"passed": None, "superseded": superseded})
        self._task = self._outcome = None
        self.trial = None

    async def stopping(self) -> None:
        """The agent stops: a trial in progress is run again at the next start."""
        if self.trial is not None:
            self.cancel_trial()
            with contextlib.suppress(OSError):
                await asyncio.to_thread(self.keeper.trial_stopped_cleanly)

    async def _watch(self, trial: Trial, outcome: asyncio.Future[dict[str, Any]]) -> None:
        step = max(0.05, min(1.0, trial.window_s / 20))
        prov = self.provenance
        while True:
            await asyncio.sleep(step)
            try:
                snap = await self.snapshot()
            except Exception as exc:  # noqa: BLE001 - a part that does not answer is unhealthy
                snap = Snapshot({}, trial.baseline.committed, f"no answer: {exc}", trial.baseline.uplink_ok_passes)
            verdict = trial.judge(snap, time.monotonic())
            if verdict == PASSED:
                after = round(time.monotonic() - trial.started, 3)
                with contextlib.suppress(OSError):
                    await asyncio.to_thread(self.keeper.promote)
                log.info("config version %s passed its health check in %.1f s", prov.version, after)
                self.last_confirmed = {**prov.batch(), "after_s": after, "at": rfc3339(time.time())}
                self.post("config_confirmed", {**prov.batch(), "after_s": after, "window_s": trial.window_s})
                self._finish(outcome, {"passed": True, "after_s": after})
                return
            if verdict == FAILED:
                log.error("config version %s failed its health check: %s", prov.version, "; ".join(trial.failures))
                self._finish(outcome, await self._roll_back(prov, trial))
                return

    def _finish(self, outcome: asyncio.Future[dict[str, Any]], result: dict[str, Any]) -> None:
        self.trial = None
        self._task = None
        if not outcome.done():
            outcome.set_result(result)
        if self._outcome is outcome:
            self._outcome = None

    async def _roll_back(self, bad: Provenance, trial: Trial) -> dict[str, Any]:
        failures = trial.failures
        good = self.keeper.last_good()
        aside = None
        try:
            aside = await asyncio.to_thread(self.keeper.set_aside, failures, "health_check_failed")
        except OSError as exc:
            log.error("cannot keep the failed config aside in %s: %s", self.keeper.folder, exc)
        base = {"from": bad.batch(), "failures": failures, "window_s": trial.window_s,
                "kept_aside": str(aside) if aside else None}
        if good is None or good.provenance.sha256 == bad.sha256:
            self.post("config_rolled_back", {**base, "rolled_back": False,
                                             "problems": ["no last good config is kept to return to"]})
            return {"passed": False, "failures": failures, "rolled_back": False}
        self._task = self._outcome = None  # the rollback's own apply must not cancel this task
        try:
            result = await self.rollback(good, failures)
        except ColdgateError as exc:
            result = {"applied": False, "problems": [str(exc)]}
        if not result.get("applied"):
            self.post("config_rolled_back", {**base, "rolled_back": False, "problems": result.get("problems", [])})
            return {"passed": False, "failures": failures, "rolled_back": False}
        self.last_rollback = {**base, "to": self.provenance.batch(), "at": rfc3339(time.time())}
        self.post("config_rolled_back", {**base, "rolled_back": True, "to": self.provenance.batch(),
                                         "drivers": result.get("drivers")})
        log.warning("returned to config version %s (%s)", self.provenance.version, good.path)
        return {"passed": False, "failures": failures, "rolled_back": True, "to": self.provenance.batch()}

    # -- status --------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        trial = self.trial
        out: dict[str, Any] = {"running": self.provenance.as_dict(), "signed": self.provenance.signer is not None,
                               "last_rollback": self.last_rollback, "last_confirmed": self.last_confirmed}
        if trial is not None:
            out["trial"] = {"window_s": trial.window_s,
                            "remaining_s": round(max(0.0, trial.deadline - time.monotonic()), 1),
                            "waiting_for": trial.waiting_for}
        else:
            out["trial"] = None
        with contextlib.suppress(OSError):
            out.update(self.keeper.status())
        return out


__all__ = ["FIXED", "Steward", "fixed_changes"]
