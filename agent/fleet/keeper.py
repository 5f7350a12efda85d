"""The state directory of fleet configs: the last good one, the one on trial, those rolled back.

``[fleet] state_dir`` (default ``<store folder>/fleet``, in the service's state directory;
written only when a config changes, never while idle)::

    last-good.toml  last-good.toml.sig  last-good.json    the config that passed its check
    trial.toml      trial.toml.sig      trial.json        applied, health check running
    rolled-back/<sha256[:16]>.toml .sig .json              failed its check; kept aside

The ``.json`` beside each holds its provenance (version, SHA-256, signer, source) and,
for a file rolled back, what failed. Each file is written to a temporary name and
renamed into place; the ``.json`` last, so a half-written entry has no ``.json`` and is
not taken.

Which config a starting agent runs (:func:`Keeper.choose`):

- a ``trial.json`` left by a process that died during its health check (a config that
  crashes the agent): the trial is rolled back and the last good config runs;
- the file systemd names (``--config``), unless a last good config with a strictly higher
  ``config_version`` is kept (one the inbox applied, which cannot rewrite ``/etc``), or
  the file's own SHA-256 rolled back (``config apply`` installed it before its check
  failed).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.fleet.gate import Candidate, Provenance
from agent.fleet.version import Version
from agent.timebase import rfc3339

log = logging.getLogger("coldgate.fleet")


def default_state_dir(store_path: Path) -> Path:
    return store_path.parent / "fleet"


@dataclass(frozen=True)
class Kept:
    """A kept config: its file, its signature file (if any), its provenance and notes."""

    path: Path
    signature: Path | None
    provenance: Provenance
    info: dict[str, Any]


class Keeper:
    """See the module docstring."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    # -- reading -------------------------------------------------------------------------
    def _kept(self, stem: str, folder: Path | None = None) -> Kept | None:
        base = folder or self.folder
        meta = base / f"{stem}.json"
        try:
            info = json.loads(meta.read_text(encoding="utf-8"))
            prov = Provenance.from_dict(info["provenance"])
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.error("kept config %s unreadable (%s); ignored", meta, exc)
            return None
        sig = base / f"{stem}.toml.sig"
        return Kept(base / f"{stem}.toml", sig if sig.exists() else None, prov, info)

    def last_good(self) -> Kept | None:
        return self._kept("last-good")

    def trial(self) -> Kept | None:
        return self._kept("trial")

    def rolled_back(self, sha256: str) -> str | None:
        """Why the file with this SHA-256 rolled back, or None if it never did."""
        kept = self._kept(sha256[:16], self.folder / "rolled-back")
        if kept is None or kept.provenance.sha256 != sha256:
            return None
        when = kept.info.get("at", "?")
        return f"at {when}: {'; '.join(kept.info.get('failures') or []) or kept.info.get('reason', '?')}"

    # -- writing -------------------------------------------------------------------------
    def _write(self, stem: str, data: bytes, sig: bytes | None, info: dict[str, Any],
               folder: Path | None = None) -> Path:
        base = folder or self.folder
        base.mkdir(parents=True, exist_ok=True, mode=0o750)
        (base / f"{stem}.json").unlink(missing_ok=True)  # the entry is invalid until its .json is back
        _atomic(base / f"{stem}.toml", data)
        sig_path = base / f"{stem}.toml.sig"
        if sig is not None:
            _atomic(sig_path, sig)
        else:
            sig_path.unlink(missing_ok=True)
        _atomic(base / f"{stem}.json", json.dumps(info, indent=1, default=str).encode())
        return base / f"{stem}.toml"

    def _drop(self, stem: str) -> None:
        for suffix in (".json", ".toml.sig", ".toml"):
            (self.folder / f"{stem}{suffix}").unlink(missing_ok=True)

    def remember_good(self, candidate: Candidate, *, why: str) -> Path:
        """``candidate`` is the last good config (it passed, or it is what the agent started on)."""
        return self._write("last-good", candidate.data, candidate.signature,
                           {"provenance": candidate.provenance.as_dict(), "at": rfc3339(time.time()), "why": why})

    def start_trial(self, candidate: Candidate, window_s: float) -> Path:
        return self._write("trial", candidate.data, candidate.signature,
                           {"provenance": candidate.provenance.as_dict(), "at": rfc3339(time.time()),
                            "window_s": window_s})

    def trial_stopped_cleanly(self) -> None:
        """The agent stops during a trial: the next start runs it again (a crash does not)."""
        meta = self.folder / "trial.json"
        try:
            info = json.loads(meta.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return
        info["stopped_cleanly"] = True
        _atomic(meta, json.dumps(info, indent=1).encode())

    def promote(self) -> Kept | None:
        """The trial passed: it becomes the last good config."""
        trial = self.trial()
        if trial is None:
            return None
        data = trial.path.read_bytes()
        sig = trial.signature.read_bytes() if trial.signature is not None else None
        self._write("last-good", data, sig, {"provenance": trial.provenance.as_dict(), "at": rfc3339(time.time()),
                                             "why": "passed its health check"})
        self._drop("trial")
        return self.last_good()

    def set_aside(self, failures: list[str], reason: str) -> Path | None:
        """The trial failed: keep it in ``rolled-back/`` with what failed; None if no trial."""
        trial = self.trial()
        if trial is None:
            return None
        data = trial.path.read_bytes()
        sig = trial.signature.read_bytes() if trial.signature is not None else None
        stem = (trial.provenance.sha256 or hashlib.sha256(data).hexdigest())[:16]
        path = self._write(stem, data, sig,
                           {"provenance": trial.provenance.as_dict(), "at": rfc3339(time.time()),
                            "reason": reason, "failures": failures}, self.folder / "rolled-back")
        self._drop("trial")
        return path

    def status(self) -> dict[str, Any]:
        good, trial = self.last_good(), self.trial()
        return {"state_dir": str(self.folder),
                "last_good": good.provenance.as_dict() if good else None,
                "trial": trial.provenance.as_dict() if trial else None}

    # -- at start ------------------------------------------------------------------------
    def choose(self, base: Candidate) -> tuple[Kept | None, dict[str, Any] | None]:
        """Which config to start with instead of ``base`` (None: base), and the event to
        record if a trial the last run left is rolled back now."""
        note = None
        trial = self.trial()
        if trial is not None:
            if trial.info.get("stopped_cleanly"):
                return trial, None
            aside = self.set_aside(["the agent stopped during the health check (crashed or was killed)"],
                                   "agent_restarted")
            note = {"from": trial.provenance.batch(), "failures": [
                "the agent stopped during the health check (crashed or was killed)"], "kept_aside": str(aside)}
        good = self.last_good()
        if good is None:
            return None, note
        if base.provenance.sha256 and self.rolled_back(base.provenance.sha256) is not None:
            log.warning("the config file %s rolled back before; starting on the last good one", base.provenance.source)
            return good, note
        if Version(good.provenance.version) > Version(base.provenance.version) \
                and good.provenance.sha256 != base.provenance.sha256:
            return good, note
        return None, note


def _atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


__all__ = ["Keeper", "Kept", "default_state_dir"]
