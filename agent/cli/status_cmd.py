"""``coldgate status``: drivers, sensors, store, uplink, clock, alarms."""

from __future__ import annotations

import argparse
from typing import Any

from agent.cli.common import add_config_arg, add_json_arg, emit, load_config


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "status", help="what the agent is doing: drivers, sensors, store depth, uplink, clock, alarms")
    add_config_arg(p)
    p.add_argument("--timeout", type=float, default=5.0,
                   help="seconds to wait for the running agent's answer before calling it not answering")
    add_json_arg(p)
    p.set_defaults(func=cmd_status)


#: exit codes, after systemctl status: 0 running and well, 1 running but not answering or
#: stuck, 3 not running
NOT_RUNNING = 3


def cmd_status(args: argparse.Namespace) -> int:
    from agent import status

    cfg = load_config(args)
    data = status.collect(cfg, timeout=args.timeout)
    emit(args, data, status.render)
    if not data.get("running"):
        return NOT_RUNNING
    if not data.get("answering", True) or data.get("stuck"):
        return 1
    return 0
