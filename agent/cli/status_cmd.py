"""``coldgate status``: drivers, sensors, store, uplink, clock, alarms."""

from __future__ import annotations

import argparse
from typing import Any

from agent.cli.common import add_config_arg, add_json_arg, emit, load_config


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "status", help="what the agent is doing: drivers, sensors, store depth, uplink, clock, alarms")
    add_config_arg(p)
    add_json_arg(p)
    p.set_defaults(func=cmd_status)


def cmd_status(args: argparse.Namespace) -> int:
    from agent import status

    cfg = load_config(args)
    data = status.collect(cfg)
    emit(args, data, status.render)
    return 0
