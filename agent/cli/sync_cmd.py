"""``coldgate sync --now``: send what is pending now, through the daemon if it runs."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from typing import Any

from agent.cli.common import add_config_arg, add_json_arg, emit, load_config


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser("sync", help="send pending records to the uplink")
    add_config_arg(p)
    p.add_argument("--now", action="store_true", required=True, help="now, ignoring any backoff")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the running agent's answer")
    add_json_arg(p)
    p.set_defaults(func=cmd_sync)


def cmd_sync(args: argparse.Namespace) -> int:
    from agent.daemon import running_pid, status_path
    from agent.store import Store
    from agent.sync import Syncer

    cfg = load_config(args)
    pid = running_pid(cfg.store.path)
    if pid:
        before = _attempt(status_path(cfg.store.path))
        try:
            os.kill(pid, signal.SIGUSR1)
        except ProcessLookupError:
            print(f"coldgate: the agent (pid {pid}) has just exited; run this again", file=sys.stderr)
            return 1
        deadline = time.monotonic() + args.timeout
        while time.monotonic() < deadline:
            time.sleep(0.2)
            after = _attempt(status_path(cfg.store.path))
            if after is not None and after.get("last_attempt_at") != (before or {}).get("last_attempt_at"):
                with Store.open(cfg.store.path, gateway_id=cfg.gateway_id, create=False, check=False) as store:
                    pending = store.stats()["pending"]
                result = {"via": f"agent pid {pid}", **after, "pending": pending}
                emit(args, result, _text)
                return 0 if after.get("result") in ("ok", "idle") else 1
        emit(args, {"via": f"agent pid {pid}", "result": "no answer", "pending": None},
             lambda d: f"agent (pid {pid}) did not report a sync within {args.timeout:g} s")
        return 1
    with Store.open(cfg.store.path, gateway_id=cfg.gateway_id, create=False, check=False) as store:
        syncer = Syncer(store, cfg.uplink, store.gateway_id)
        try:
            state = syncer.sync_once()
        finally:
            syncer.close()
        pending = store.stats()["pending"]
    result = {"via": "this process (agent not running)", **state.as_dict(), "pending": pending}
    emit(args, result, _text)
    return 0 if state.result in ("ok", "idle") else 1


def _attempt(path: Any) -> dict[str, Any] | None:
    try:
        return dict(json.loads(path.read_text()).get("sync", {}))
    except (OSError, ValueError):
        return None


def _text(d: dict[str, Any]) -> str:
    line = f"sync ({d['via']}): {d.get('result')}, {d.get('pending')} record(s) still pending"
    if d.get("last_error"):
        line += f"\n  last error: {d['last_error']}"
    if d.get("next_retry_at"):
        line += f"\n  next retry: {d['next_retry_at']}"
    return line
