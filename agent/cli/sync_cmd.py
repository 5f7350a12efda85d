"""``coldgate sync --now``: send what is pending now, through the agent if it runs."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from agent.cli.common import add_config_arg, add_json_arg, emit, load_config


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser("sync", help="send pending records to the uplink")
    add_config_arg(p)
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--now", action="store_true", help="now, ignoring any backoff")
    what.add_argument("--retry-set-aside", action="store_true",
                      help="put the batches the server refused (set aside) back in the queue, then sync")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the running agent's answer")
    add_json_arg(p)
    p.set_defaults(func=cmd_sync)


def cmd_sync(args: argparse.Namespace) -> int:
    from agent.control import ControlClient
    from agent.exc import AgentNotRunning

    cfg = load_config(args)
    client = ControlClient(cfg.control.socket, timeout=args.timeout + 5)
    try:
        released = None
        if args.retry_set_aside:
            released = client.request("retry_set_aside", wait=args.timeout)
        state = client.request("sync", wait=args.timeout + 5, timeout=args.timeout)
        result = {"via": "the running agent", **state, "released": released}
    except AgentNotRunning:
        result = _in_process(cfg, args.retry_set_aside, Path(args.config))
    emit(args, result, _text)
    return 0 if result.get("result") in ("ok", "idle") else 1


def _provenance(cfg: Any, path: Path) -> dict[str, Any] | None:
    """The ``config`` member of the batches: the live file's version and SHA-256 (its
    signer is what the running agent verified; offline it is not claimed)."""
    import hashlib

    try:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None
    return {"version": cfg.config_version, "sha256": digest, "signer": None}


def _in_process(cfg: Any, retry_set_aside: bool, path: Path) -> dict[str, Any]:
    """No agent runs: drain the store from this process (the records it makes are stamped
    by the configured clock and appended directly)."""
    from agent.stamp import Stamper
    from agent.store import Store
    from agent.uplink import transport_for
    from agent.uplink.loop import UplinkLoop

    stamper = Stamper.for_source(cfg.time.sync_source)
    with Store.open(cfg.store.path, gateway_id=cfg.gateway_id, create=False, check=False, stamper=stamper) as store:
        released = None
        if retry_set_aside:
            released = store.release_set_aside()
            if released["count"]:
                store.append([stamper.event("set_aside_released", {"count": released["count"],
                                                                    "ranges": released["ranges"]})])
        make = transport_for(cfg.uplink, store.gateway_id)
        loop = UplinkLoop(lambda: store, make, cfg.uplink, store.gateway_id, stamper,
                          lambda item: _append(store, item), batch_config=lambda: _provenance(cfg, path))
        try:
            state = loop.drain()
        finally:
            if loop.transport is not None:
                loop.transport.close()
        pending = store.stats()["pending"]
    return {"via": "this process (agent not running)", **state.as_dict(), "pending": pending, "released": released}


def _append(store: Any, item: Any) -> None:
    store.append([item])


def _text(d: dict[str, Any]) -> str:
    line = f"sync ({d['via']}): {d.get('result')}"
    if d.get("pending") is not None:
        line += f", {d.get('pending')} record(s) still pending"
    rel = d.get("released")
    if rel is not None and rel.get("count"):
        seqs = ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in rel.get("ranges") or [])
        line += f"\n  {rel['count']} set-aside record(s) put back in the queue (seq {seqs})"
    elif rel is not None:
        line += "\n  nothing was set aside: no record to release"
    if d.get("last_error"):
        line += f"\n  last error: {d['last_error']}"
    if d.get("next_retry_at"):
        line += f"\n  next retry: {d['next_retry_at']}"
    return line
