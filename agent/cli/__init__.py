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
import logging
import sys
from collections.abc import Sequence

from agent import __version__
from agent.exc import ColdgateError, ConfigError

COMMAND_MODULES: list[str] = [
    "agent.cli.run_cmd",
    "agent.cli.config_cmd",
    "agent.cli.status_cmd",
    "agent.cli.readings_cmd",
    "agent.cli.sync_cmd",
    "agent.cli.decode_cmd",
    "agent.cli.demo_cmd",
    "agent.cli.receiver_cmd",
    "agent.cli.serial_cmd",
    "agent.cli.ble_cmd",
    "agent.cli.rules_cmd",
    "agent.cli.report_cmd",
    "agent.cli.fleet_cmd",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="coldgate", description="Cold-chain gateway agent: sensors in, proven records out."
    )
    parser.add_argument("--version", action="version", version=f"coldgate {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages to stderr")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.verbose:
        logging.basicConfig(level=logging.DEBUG, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(exc.report(), file=sys.stderr)
        return 1
    except ColdgateError as exc:
        print(f"coldgate: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except PermissionError as exc:
        print(f"coldgate: permission denied: {exc.filename or exc} (run as the coldgate user or root)",
              file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"coldgate: {exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else ""), file=sys.stderr)
        return 1
    except BrokenPipeError:
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
