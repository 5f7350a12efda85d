"""The health check of a config on trial: pure judgement over snapshots of the agent.

After an apply, the new config must show within ``[fleet] health_window_s`` that:

- every enabled driver it names **started and delivered** at least one reading since the
  apply (a driver kept running counts what it delivered since; a restarted one starts
  from zero);
- the **store is writable**: no store error, and a commit since the apply;
- the **uplink answered**, if it answered before the apply (a gateway that was offline
  is not failed for being offline still).

The check passes as soon as all hold at once, and fails if the window ends first; the
failures name each unmet condition with what the part says (a driver's last error).
Deadlines are monotonic. The supervisor takes a :class:`Snapshot` every moment or so
(:meth:`agent.daemon.Agent.health_snapshot`) and acts on the verdict.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

PENDING, PASSED, FAILED = "pending", "passed", "failed"


@dataclass(frozen=True)
class Snapshot:
    """What the health check needs of the agent at one moment."""

    #: ``{driver: {"state", "readings", "last_error"}}`` of the running driver set
    drivers: Mapping[str, Mapping[str, Any]]
    committed: int
    store_error: str | None
    #: uplink passes that succeeded so far, and whether the uplink is configured at all
    uplink_ok_passes: int
    uplink_result: str = "never"
    uplink_error: str | None = None


@dataclass
class Trial:
    """One config on trial: the baseline taken right after it was applied."""

    drivers: Sequence[str]
    baseline: Snapshot
    started: float  # monotonic
    window_s: float
    uplink_answered_before: bool
    failures: list[str] = field(default_factory=list)
    #: what the last judgement still waited for (status)
    waiting_for: list[str] = field(default_factory=list)

    @property
    def deadline(self) -> float:
        return self.started + self.window_s

    def unmet(self, snap: Snapshot) -> list[str]:
        """The conditions not (yet) met, in words."""
        out = []
        for name in self.drivers:
            d = snap.drivers.get(name)
            if d is None:
                out.append(f"driver {name}: not running")
                continue
            before = self.baseline.drivers.get(name, {}).get("readings", 0)
            if d.get("readings", 0) <= before or d.get("state") not in ("running", None):
                err = d.get("last_error")
                out.append(f"driver {name}: no reading since the apply (state {d.get('state')}"
                           + (f"; {err}" if err else "") + ")")
        if snap.store_error is not None:
            out.append(f"store not writable: {snap.store_error}")
        elif snap.committed <= self.baseline.committed:
            out.append("store: nothing committed since the apply")
        if self.uplink_answered_before and snap.uplink_ok_passes <= self.baseline.uplink_ok_passes:
            out.append(f"uplink: no successful exchange since the apply (it answered before; now "
                       f"{snap.uplink_result}" + (f": {snap.uplink_error}" if snap.uplink_error else "") + ")")
        return out

    def judge(self, snap: Snapshot, now: float) -> str:
        """PASSED, FAILED (``failures`` says why) or PENDING."""
        unmet = self.waiting_for = self.unmet(snap)
        if not unmet:
            return PASSED
        if now >= self.deadline:
            self.failures = unmet
            return FAILED
        return PENDING


def uplink_answered(snap: Snapshot) -> bool:
    """Whether the uplink answered before an apply (it had a successful pass and is not failing)."""
    return snap.uplink_ok_passes > 0 and snap.uplink_result in ("ok", "idle")


__all__ = ["FAILED", "PASSED", "PENDING", "Snapshot", "Trial", "uplink_answered"]
