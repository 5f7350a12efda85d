"""``coldgate config check|show|schema|apply``."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

from agent.cli.common import add_config_arg, add_json_arg, emit, load_config


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser("config", help="validate, show and apply config files")
    csub = p.add_subparsers(dest="config_command", metavar="ACTION", required=True)

    check = csub.add_parser("check", help="validate a config file: exit 0, or 1 with every problem listed")
    check.add_argument("file", help="the config file to check")
    add_json_arg(check)
    check.set_defaults(func=cmd_check)

    show = csub.add_parser("show", help="print the effective config, defaults filled in, secrets masked")
    add_config_arg(show)
    add_json_arg(show)
    show.set_defaults(func=cmd_show)

    schema = csub.add_parser(
        "schema", help="print the config's JSON Schema, every driver's options included (JSON, with or without --json)")
    add_json_arg(schema)
    schema.set_defaults(func=cmd_schema)

    apply = csub.add_parser(
        "apply", help="validate FILE, then install it as the live config and tell the running agent to reload"
    )
    apply.add_argument("file", help="the new config file (e.g. pushed by fleet management)")
    add_config_arg(apply)
    add_json_arg(apply)
    apply.set_defaults(func=cmd_apply)


def cmd_check(args: argparse.Namespace) -> int:
    from agent import config
    from agent.exc import ConfigError

    try:
        cfg = config.load(Path(args.file))
    except ConfigError as exc:
        report = exc.report()
        emit(args, {"valid": False, "file": args.file, "problems": [p.__dict__ for p in exc.problems]},
             lambda _: report)
        return 1
    emit(args, {"valid": True, "file": args.file, "gateway_id": cfg.gateway_id},
         lambda d: f"{d['file']}: valid (gateway {d['gateway_id']}, {len(cfg.drivers)} driver(s), "
                   f"{len(cfg.sensors)} sensor(s))")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    data = cfg.masked()
    emit(args, data, lambda d: json.dumps(d, indent=2, default=str))
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    from agent.config import json_schema

    json.dump(json_schema(), sys.stdout, indent=2)  # JSON is its text form too
    sys.stdout.write("\n")
    return 0


def cmd_apply(args: argparse.Namespace) -> int:
    """Validate first; only a valid file replaces the live one (atomically), then SIGHUP."""
    from agent import config
    from agent.daemon import running_pid
    from agent.exc import ColdgateError, ConfigError

    new, live = Path(args.file), Path(args.config)
    try:
        cfg = config.loads(new.read_text(encoding="utf-8"), source=str(new), base_dir=live.parent)
    except OSError as exc:
        raise ColdgateError(f"cannot read {new}: {exc.strerror}") from exc
    except ConfigError as exc:
        report = exc.report() + f"\n{live} left unchanged."
        emit(args, {"applied": False, "problems": [p.__dict__ for p in exc.problems]}, lambda _: report)
        return 1
    fd, tmp = tempfile.mkstemp(dir=live.parent, prefix=f".{live.name}.")
    os.close(fd)
    shutil.copyfile(new, tmp)
    if live.exists():
        shutil.copymode(live, tmp)
    os.replace(tmp, live)
    pid = running_pid(cfg.store.path)
    if pid:
        os.kill(pid, signal.SIGHUP)
    emit(args, {"applied": True, "live": str(live), "reloaded_pid": pid},
         lambda d: f"{d['live']} replaced; " + (f"agent (pid {pid}) told to reload" if pid else
                                                "no agent running: it takes effect at the next start"))
    return 0
