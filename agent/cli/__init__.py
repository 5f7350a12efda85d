"""The ``coldgate`` command line: a thin layer over library code.

Each command lives in its own module with a ``register(subparsers)`` function; add the
module to :data:`COMMAND_MODULES`. Modules import what they need inside the command
function, so ``coldgate --help`` stays fast and a missing optional library breaks only
the command that needs it. Our errors become one line and an exit code, never a
traceback.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from agent import __version__
from agent.exc import ColdgateError, ConfigError, UsageError

COMMAND_MODULES: list[str] = [
    "agent.cli.run_cmd",
    "agent.cli.config_cmd",
    "agent.cli.status_cmd",
    "agent.cli.readings_cmd",
    "agent.cli.events_cmd",
    "agent.cli.sync_cmd",
    "agent.cli.decode_cmd",
    "agent.cli.demo_cmd",
    "agent.cli.receiver_cmd",
    "agent.cli.verify_cmd",
    "agent.cli.serial_cmd",
    "agent.cli.ble_cmd",
    "agent.cli.rules_cmd",
    "agent.cli.report_cmd",
    "agent.cli.shipment_cmd",
    "agent.cli.fleet_cmd",
]


class Parser(argparse.ArgumentParser):
    """argparse, with usage errors raised to :func:`main` (sub-parsers inherit the class)."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message, prog=self.prog, usage=self.format_usage())


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="coldgate", description="Cold-chain gateway agent: sensors in, proven records out.")
    parser.add_argument("--version", action="version", version=f"coldgate {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages to stderr")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


#: Exit codes (README, CLI): success, a problem said in one line, a command line argparse
#: refused, the output pipe closed (as a tool killed by SIGPIPE), interrupted.
EX_OK, EX_PROBLEM, EX_USAGE, EX_PIPE, EX_INTERRUPTED = 0, 1, 2, 141, 130


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command. Our errors are one line on stderr, or with ``--json`` one JSON
    object on stdout (``{"error", "error_type", "exit_code"}``); never a traceback."""
    argv = list(sys.argv[1:] if argv is None else argv)
    as_json = "--json" in argv[: argv.index("--")] if "--" in argv else "--json" in argv
    parser = build_parser()
    try:
        try:
            args = parser.parse_args(argv)
        except UsageError as exc:
            if not as_json:
                sys.stderr.write(exc.usage)
                print(f"{exc.prog}: error: {exc}", file=sys.stderr)
                return EX_USAGE
            return _fail(True, EX_USAGE, f"{exc.prog}: {exc}", "UsageError")
        as_json = bool(getattr(args, "json", False))
        if args.verbose:
            logging.basicConfig(level=logging.DEBUG, stream=sys.stderr,
                                format="%(levelname)s %(name)s: %(message)s")
        try:
            code = int(args.func(args) or 0)
        except UsageError as exc:  # a command's own check of its arguments
            return _fail(as_json, EX_USAGE, f"{exc.prog}: {exc}", "UsageError")
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's exit
        return code
    except BrokenPipeError:
        # The reader went away (``coldgate readings | head -1``): stop quietly. Point
        # stdout at /dev/null so the interpreter's own flush at exit cannot fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EX_PIPE
    except ConfigError as exc:
        return _fail(as_json, EX_PROBLEM, exc.report(), "ConfigError",
                     source=exc.source, problems=[p.__dict__ for p in exc.problems])
    except ColdgateError as exc:
        return _fail(as_json, EX_PROBLEM, f"coldgate: {exc}", type(exc).__name__)
    except KeyboardInterrupt:
        return _fail(as_json, EX_INTERRUPTED, "coldgate: interrupted", "KeyboardInterrupt", quiet=True)
    except PermissionError as exc:
        return _fail(as_json, EX_PROBLEM, f"coldgate: permission denied: {exc.filename or exc} "
                     "(run as the coldgate user or root)", "PermissionError")
    except OSError as exc:
        return _fail(as_json, EX_PROBLEM, f"coldgate: {exc.strerror or exc}"
                     + (f": {exc.filename}" if exc.filename else ""), type(exc).__name__)


def _fail(as_json: bool, code: int, message: str, error_type: str, *, quiet: bool = False,
          **fields: Any) -> int:
    """Say what went wrong: one JSON object on stdout with ``--json``, else text on stderr."""
    if as_json:
        text = message.removeprefix("coldgate: ")
        try:
            json.dump({"error": text, "error_type": error_type, "exit_code": code, **fields}, sys.stdout,
                      default=str)
            sys.stdout.write("\n")
            sys.stdout.flush()
        except BrokenPipeError:
            pass
    elif not quiet:
        print(message, file=sys.stderr)
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
