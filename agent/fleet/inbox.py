"""The drop directory: a fleet tool drops a config (and its signature) and nothing else.

``[fleet] inbox`` (e.g. ``/var/lib/coldgate/inbox``) is looked at every
``inbox_poll_s`` seconds (a directory listing: it reads, it never writes, so an idle
gateway writes nothing to its SD card; inotify would save a few listings an hour at the
cost of a dependency). For each drop ``NAME.toml`` the agent verifies and applies it
through the same path as ``coldgate config apply`` (the supervisor's ``reload``), waits
for its health check, and moves it (with ``NAME.toml.sig``) to::

    applied/<UTC time>-NAME.toml   applied and passed its health check
    rejected/<UTC time>-NAME.toml  refused (unsigned, bad signature, downgrade, invalid …)
                                   or rolled back after its health check failed

each with ``…-NAME.toml.result.json`` beside it: the verdict, the reason, every problem,
the version, the SHA-256 and the signer.

**A half-written drop is never taken.** Only a regular file named ``*.toml`` (not
hidden: ``rsync`` and most tools write ``.NAME.toml.XXXX`` first) is considered, and only
once it has been seen unchanged (size, modification time, inode) at two looks one
interval apart, together with its ``.sig``. The safe way for a fleet tool: write the
``.sig`` first, then the ``.toml`` under a temporary name, and rename it into place
(atomic). A ``.sig`` that arrives after its ``.toml`` has settled is too late (the drop
is refused as unsigned where a signature is required): put the signature first.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import stat
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

log = logging.getLogger("coldgate.fleet.inbox")

Apply = Callable[[Path, Path], Awaitable[dict[str, Any]]]


def _identity(p: Path) -> tuple[int, int, int] | None:
    """``(size, mtime_ns, inode)`` of a regular file (never following a link), else None."""
    try:
        st = p.lstat()
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    return st.st_size, st.st_mtime_ns, st.st_ino


class Inbox:
    """Watches one folder; see the module docstring."""

    def __init__(self, folder: Path, poll_s: float, apply: Apply) -> None:
        self.folder = folder
        self.poll_s = poll_s
        self.apply = apply
        self._seen: dict[str, tuple[Any, Any]] = {}
        self._stop = asyncio.Event()
        self._complained = False
        self._done: set[tuple[str, Any]] = set()
        #: drops handled since start: ``{"applied": n, "rejected": n}`` (metrics, status)
        self.handled: dict[str, int] = {"applied": 0, "rejected": 0}

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        while not self._stop.is_set():
            for path in await asyncio.to_thread(self.ready):
                if self._stop.is_set():
                    break
                await self.handle(path)
            try:
                await asyncio.wait_for(self._stop.wait(), self.poll_s)
            except TimeoutError:
                pass

    def ready(self) -> list[Path]:
        """The drops seen unchanged since the previous look (with their signature)."""
        try:
            names = sorted(e.name for e in os.scandir(self.folder)
                           if e.name.endswith(".toml") and not e.name.startswith("."))
        except FileNotFoundError:
            self._create()
            return []
        except OSError as exc:
            if not self._complained:
                log.error("inbox %s cannot be read: %s", self.folder, exc.strerror or exc)
                self._complained = True
            return []
        self._complained = False
        out, seen = [], {}
        for name in names:
            p = self.folder / name
            now = (_identity(p), _identity(p.with_name(name + ".sig")))
            if now[0] is None or (name, now[0]) in self._done:
                continue
            seen[name] = now
            if self._seen.get(name) == now:
                out.append(p)
        self._seen = seen
        return out

    def _create(self) -> None:
        try:
            self.folder.mkdir(mode=0o750, exist_ok=True)
            for sub in ("applied", "rejected"):
                (self.folder / sub).mkdir(mode=0o750, exist_ok=True)
        except OSError as exc:
            if not self._complained:
                log.error("inbox %s cannot be created: %s", self.folder, exc.strerror or exc)
                self._complained = True

    async def handle(self, path: Path) -> dict[str, Any]:
        sig = path.with_name(path.name + ".sig")
        log.info("inbox: %s dropped; verifying and applying", path.name)
        try:
            result = await self.apply(path, sig)
        except Exception as exc:  # noqa: BLE001 - a drop that breaks the apply is refused, not retried forever
            log.exception("inbox: applying %s failed", path.name)
            result = {"applied": False, "reason": "error", "problems": [f"{type(exc).__name__}: {exc}"]}
        health = result.get("health") or {}
        ok = bool(result.get("applied")) and health.get("passed") is not False
        if result.get("applied") and health.get("passed") is False:
            result = {**result, "reason": "rolled_back", "problems": health.get("failures", [])}
        where = "applied" if ok else "rejected"
        self.handled[where] += 1
        self._seen.pop(path.name, None)
        await asyncio.to_thread(self._file, path, sig, where, result)
        return result

    def _file(self, path: Path, sig: Path, where: str, result: dict[str, Any]) -> None:
        folder = self.folder / where
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        try:
            folder.mkdir(mode=0o750, exist_ok=True)
            dest = folder / f"{stamp}-{path.name}"
            n = 1
            while dest.exists():
                dest = folder / f"{stamp}-{n}-{path.name}"
                n += 1
            os.replace(path, dest)
            if sig.exists():
                os.replace(sig, dest.with_name(dest.name + ".sig"))
            report = {"verdict": where, "file": path.name, "at": stamp, **result}
            tmp = dest.with_name(f".{dest.name}.result.json.tmp")
            tmp.write_text(json.dumps(report, indent=1, default=str) + "\n")
            os.replace(tmp, dest.with_name(dest.name + ".result.json"))
        except OSError as exc:
            # never taken again while it stays as it is (no event storm); a changed file is new
            self._done.add((path.name, _identity(path)))
            log.error("inbox: cannot move %s to %s/ (%s); left in place and not taken again", path.name, where, exc)
            return
        log.info("inbox: %s %s (%s)", path.name, where, result.get("reason") or f"version {result.get('version')}")


__all__ = ["Inbox"]
