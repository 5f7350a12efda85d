"""``coldgate run``: the daemon."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path
from typing import Any

from agent.cli.common import add_config_arg

#: sysexits EX_CONFIG: the unit file does not restart the service in a loop on it.
EX_CONFIG = 78


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser("run", help="run the agent (what the systemd service starts)")
    add_config_arg(p)
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"], help="override [log_level]")
    p.add_argument("--json", action="store_true", help="log one JSON object a line to stderr (for a log shipper)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from agent import config
    from agent.daemon import Agent, setup_logging
    from agent.exc import ConfigError

    path = Path(args.config)
    try:
        cfg = config.load(path)
        problems = config.preflight(cfg)  # what the machine lacks: said now, not at every retry
        if fatal := [p for p in problems if not p.transient]:
            raise ConfigError(str(path), fatal)
    except ConfigError as exc:
        print(exc.report(), file=sys.stderr)
        return EX_CONFIG
    setup_logging(args.log_level or ("debug" if args.verbose else cfg.log_level), json_lines=args.json)
    for p in problems:  # the transient ones: the agent starts, and says what it meets
        logging.getLogger("coldgate").warning("%s", p)
    agent = Agent(cfg, config_path=path)
    code = asyncio.run(agent.run())
    if agent.uplink.alive:
        # Everything is committed and the store is closed; a request still hanging on the
        # uplink's daemon thread must not hold the exit up, nor run while the interpreter
        # unloads the modules under it.
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code
