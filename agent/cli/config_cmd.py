"""``coldgate config check|show|schema|apply``."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from agent.cli.common import add_config_arg, add_json_arg, emit, load_config


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser("config", help="validate, show and apply config files")
    csub = p.add_subparsers(dest="config_command", metavar="ACTION", required=True)

    check = csub.add_parser(
        "check", help="validate a config file and what it needs of this machine: exit 0, or 1 with every problem")
    check.add_argument("file", help="the config file to check")
    check.add_argument(
        "--schema-only", action="store_true",
        help="check the file alone, not this machine's files (token, certificates, store path, action "
             "allow-list): for a config meant for another gateway")
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
    apply.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the running agent's verdict")
    apply.add_argument("--signature", metavar="SIG", help="its detached signature (default: FILE.sig, if there)")
    apply.add_argument("--allow-downgrade", action="store_true",
                       help="accept a config_version lower than the running one (going back on purpose)")
    add_config_arg(apply)
    add_json_arg(apply)
    apply.set_defaults(func=cmd_apply)

    from agent.cli.fleet_cmd import register_sign

    register_sign(csub)


def cmd_check(args: argparse.Namespace) -> int:
    """The file first (schema), then, unless ``--schema-only``, what it needs of this machine
    (:func:`agent.config.preflight`): what ``coldgate run`` would refuse, said before."""
    from agent import config
    from agent.exc import ConfigError

    try:
        cfg = config.load(Path(args.file))
        problems = [] if args.schema_only else config.preflight(cfg)
        if problems:
            raise ConfigError(args.file, problems)
    except ConfigError as exc:
        report = exc.report()
        emit(args, {"valid": False, "file": args.file, "problems": [p.__dict__ for p in exc.problems]},
             lambda _: report)
        return 1
    scope = "the file alone" if args.schema_only else "the file and this machine"
    emit(args, {"valid": True, "file": args.file, "gateway_id": cfg.gateway_id, "checked": scope},
         lambda d: f"{d['file']}: valid (gateway {d['gateway_id']}, {len(cfg.drivers)} driver(s), "
                   f"{len(cfg.sensors)} sensor(s); checked {scope})")
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
    """Validate, have the running agent apply it, and only then install it as the live file.

    The candidate is copied beside the live file (so relative paths resolve alike), with
    the live file's owner, group and mode, and so is its signature (``FILE.sig``); the
    running agent verifies it (signature, version: docs/fleet.md), loads it and answers
    with its verdict. Only an applied file replaces the live one (atomically), with its
    signature. With no agent running, the file is verified against the live config's
    policy here, installed, and takes effect at the next start.
    """
    from agent import config
    from agent.control import ControlClient
    from agent.exc import AgentNotRunning, ConfigError
    from agent.fleet.trust import signature_path

    new, live = Path(args.file), Path(args.config)
    sig = Path(args.signature) if args.signature else signature_path(new)
    try:
        cfg = config.load(new, base_dir=live.parent)
        problems = config.preflight(cfg)
        if problems:
            raise ConfigError(str(new), problems)
    except ConfigError as exc:
        report = exc.report() + f"\n{live} left unchanged."
        emit(args, {"applied": False, "problems": [p.__dict__ for p in exc.problems]}, lambda _: report)
        return 1
    fd, tmp_name = tempfile.mkstemp(dir=live.parent, prefix=f".{live.name}.", suffix=".candidate")
    tmp = Path(tmp_name)
    tmp_sig = signature_path(tmp)
    try:
        os.close(fd)
        shutil.copyfile(new, tmp)
        _keep_owner_and_mode(live, tmp)
        if sig.exists():
            shutil.copyfile(sig, tmp_sig)
            _keep_owner_and_mode(live, tmp_sig)
        try:
            verdict = ControlClient(cfg.control.socket, timeout=args.timeout).request(
                "apply", path=str(tmp), signature=str(tmp_sig), allow_downgrade=args.allow_downgrade,
                source=str(live))
            via = "the running agent"
        except AgentNotRunning:
            verdict, via = _offline_verdict(tmp, tmp_sig, live, args.allow_downgrade), None
        if verdict.get("applied"):
            if tmp_sig.exists():
                os.replace(tmp_sig, signature_path(live))
            else:
                signature_path(live).unlink(missing_ok=True)  # a stale signature of the old file
            os.replace(tmp, live)
    finally:
        tmp.unlink(missing_ok=True)
        tmp_sig.unlink(missing_ok=True)
    result = {"live": str(live), "via": via, **verdict}
    if not verdict.get("applied"):
        emit(args, result, lambda d: "the running agent rejected the file; "
             f"{live} left unchanged:\n" + "\n".join(f"  - {p}" for p in d.get("problems", [])))
        return 1
    emit(args, result, lambda d: f"{d['live']} replaced; " + (
        "applied by the running agent" + _drivers_text(d.get("drivers")) if via else d["note"]))
    return 0


def _offline_verdict(tmp: Path, tmp_sig: Path, live: Path, allow_downgrade: bool) -> dict[str, Any]:
    """No agent runs: verify the candidate against the live config's policy (signature
    under its keyring, version order) as the agent would, before installing it."""
    from agent import config
    from agent.exc import ConfigError
    from agent.fleet.gate import examine

    try:
        running = config.load(live) if live.exists() else None
    except ConfigError:
        running = None  # a broken live file is being replaced: the candidate's own rules apply
    try:
        cand = examine(tmp, base_dir=live.parent, running=running,
                       running_version=running.config_version if running is not None else None,
                       signature=tmp_sig, allow_downgrade=allow_downgrade, source=str(live))
    except ConfigError as exc:
        return {"applied": False, "reason": getattr(exc, "reason", "invalid"),
                "problems": [str(p) for p in exc.problems]}
    return {"applied": True, **cand.provenance.batch(), "note": "no agent running: it takes effect at the next start"}


def _drivers_text(drivers: dict[str, list[str]] | None) -> str:
    if not drivers:
        return ""
    parts = [f"{k} {', '.join(v)}" for k, v in drivers.items() if v and k != "kept"]
    return f" (drivers: {'; '.join(parts)})" if parts else " (no driver restarted)"


def _keep_owner_and_mode(live: Path, tmp: Path) -> None:
    """The candidate gets the live file's owner, group and mode (so does the file it replaces)."""
    try:
        st = live.stat()
    except FileNotFoundError:
        return
    os.chmod(tmp, st.st_mode & 0o7777)
    try:
        os.chown(tmp, st.st_uid, st.st_gid)
    except PermissionError:
        pass  # not root: the file stays ours, as the live one was ours to replace
